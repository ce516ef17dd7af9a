//! Randomness for keys and encryption, all from ChaCha20 (`rand_chacha`), seeded from the OS by
//! default. Tests may fix the seed; production code never should.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::math::modular::Modulus;

/// Standard deviation of the centered binomial error distribution CBD(21): sqrt(21/2) ≈ 3.24,
/// the HE-standard σ ≈ 3.2.
pub const ERROR_STD_DEV: f64 = 3.24;
const CBD_ETA: u32 = 21;

/// A ChaCha20 stream with the samplers the schemes need.
pub struct Sampler {
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sampler(ChaCha20, state hidden)")
    }
}

impl Sampler {
    /// A sampler seeded from the operating system's CSPRNG.
    pub fn from_os() -> Self {
        Self {
            rng: ChaCha20Rng::from_os_rng(),
        }
    }

    /// A deterministic sampler (tests, reproducible key generation: never in production).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// A sampler of its own, seeded with 32 bytes drawn from this one (a ChaCha20 stream
    /// keyed by CSPRNG output): work that needs randomness then runs without holding the shared
    /// sampler, i.e. a context's lock, so encryptions and key generations on several threads
    /// run at once. A seeded context still repeats its words.
    pub fn fork(&mut self) -> Sampler {
        let seed = zeroize::Zeroizing::new(self.seed());
        Self::from_seed(*seed)
    }

    /// A fresh 32-byte seed (e.g. to expand a uniform polynomial later).
    pub fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// Uniform ternary coefficients in {-1, 0, 1}.
    pub fn ternary(&mut self, n: usize) -> Vec<i8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut buf = [0u8; 64];
            self.rng.fill_bytes(&mut buf);
            for &b in &buf {
                // 255 = 3 * 85: reject the last value so that b % 3 is uniform.
                if b < 255 && out.len() < n {
                    out.push((b % 3) as i8 - 1);
                }
            }
            // The bytes determine the secret's coefficients.
            zeroize::Zeroize::zeroize(&mut buf);
        }
        out
    }

    /// A sparse ternary vector: exactly `hamming` nonzero coefficients, each ±1, at uniformly
    /// chosen positions (`rand`'s index sampling over the CSPRNG). Bootstrapping's ephemeral
    /// key uses it: the modular reduction it needs grows with the secret's weight.
    pub fn sparse_ternary(&mut self, n: usize, hamming: usize) -> Vec<i8> {
        let mut out = vec![0i8; n];
        let h = hamming.min(n);
        let positions = rand::seq::index::sample(&mut self.rng, n, h);
        for i in positions.iter() {
            out[i] = if self.rng.next_u32() & 1 == 0 { 1 } else { -1 };
        }
        out
    }

    /// Centered binomial errors CBD(21), σ ≈ 3.24, |e| ≤ 21.
    pub fn cbd(&mut self, n: usize) -> Vec<i8> {
        let mask = (1u64 << CBD_ETA) - 1;
        (0..n)
            .map(|_| {
                let r = self.rng.next_u64();
                ((r & mask).count_ones() as i32 - ((r >> CBD_ETA) & mask).count_ones() as i32) as i8
            })
            .collect()
    }

    /// Uniform limb-major residues for each modulus (rejection sampling, no modulo bias).
    /// Words come from the key stream in order, 256 at a time (the same values one `next_u32`
    /// per word would give; only the stream position after the call differs).
    pub fn uniform(&mut self, moduli: &[Modulus], n: usize) -> Vec<u32> {
        let mut out = vec![0u32; moduli.len() * n];
        self.uniform_into(moduli, n, &mut out);
        out
    }

    /// [`Self::uniform`] into `out` (`moduli.len() · n` words), the same words: a decoder
    /// expands a seed straight into the ciphertext it builds.
    pub fn uniform_into(&mut self, moduli: &[Modulus], n: usize, out: &mut [u32]) {
        let out = &mut out[..moduli.len() * n];
        let mut bytes = [0u8; 1024];
        let mut next = bytes.len();
        let mut k = 0;
        for m in moduli {
            let q = m.value();
            let mask = u32::MAX >> q.leading_zeros();
            let end = k + n;
            while k < end {
                if next == bytes.len() {
                    self.rng.fill_bytes(&mut bytes);
                    next = 0;
                }
                // Branch-free compaction: every word is stored, and kept by advancing `k`.
                for w in bytes[next..].chunks_exact(4) {
                    if k == end {
                        break;
                    }
                    next += 4;
                    let r = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) & mask;
                    out[k] = r;
                    k += (r < q) as usize;
                }
            }
        }
    }

    /// A 32-byte seed derived from `seed` for one purpose: the first 32 bytes of ChaCha20 keyed
    /// by `seed` on stream `stream` (the cipher's 64-bit nonce). Different streams are
    /// independent pseudorandom outputs, so one shared 32-byte seed (a multiparty common
    /// reference string) yields a distinct common random polynomial per protocol and digit.
    pub fn derive_seed(seed: [u8; 32], stream: u64) -> [u8; 32] {
        let mut rng = ChaCha20Rng::from_seed(seed);
        rng.set_stream(stream);
        let mut out = [0u8; 32];
        rng.fill_bytes(&mut out);
        out
    }

    /// Uniform integers in `[−2^bits, 2^bits)` (`bits ≤ 126`, which its callers guarantee): the
    /// smudging noise and masks of the multiparty protocols, too wide for `i64`.
    pub(crate) fn uniform_signed_bits(&mut self, n: usize, bits: u32) -> Vec<i128> {
        assert!(bits <= 126, "uniform_signed_bits: {bits} bits > 126");
        let mask = (1u128 << (bits + 1)) - 1;
        (0..n)
            .map(|_| {
                let mut b = [0u8; 16];
                self.rng.fill_bytes(&mut b);
                let r = (u128::from_le_bytes(b) & mask) as i128 - (1i128 << bits);
                zeroize::Zeroize::zeroize(&mut b);
                r
            })
            .collect()
    }

    /// The uniform polynomial a 32-byte seed expands to: what seeded ciphertexts and keys store.
    pub fn uniform_from_seed(seed: [u8; 32], moduli: &[Modulus], n: usize) -> Vec<u32> {
        Self::from_seed(seed).uniform(moduli, n)
    }

    /// Direct access for callers needing other distributions (e.g. test data).
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time rejection sampler `uniform` must stay identical to: seeded
    /// ciphertexts and keys on disk expand through it.
    fn uniform_reference(s: &mut Sampler, moduli: &[Modulus], n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut bytes = [0u8; 1024];
        let mut next = bytes.len();
        for m in moduli {
            let mask = u32::MAX >> m.value().leading_zeros();
            let end = out.len() + n;
            while out.len() < end {
                if next == bytes.len() {
                    s.rng.fill_bytes(&mut bytes);
                    next = 0;
                }
                let w = &bytes[next..next + 4];
                next += 4;
                let r = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) & mask;
                if r < m.value() {
                    out.push(r);
                }
            }
        }
        out
    }

    #[test]
    fn uniform_matches_the_reference_stream() {
        // 257 rejects ~half the words, so buffer refills land mid-modulus.
        let moduli: Vec<Modulus> = [257, 1_073_479_681, 40_961, 65_537]
            .iter()
            .map(|&q| Modulus::new(q).unwrap())
            .collect();
        for seed in 0..8u8 {
            for n in [1, 7, 256, 1000] {
                let (mut a, mut b) = (
                    Sampler::from_seed([seed; 32]),
                    Sampler::from_seed([seed; 32]),
                );
                assert_eq!(a.uniform(&moduli, n), uniform_reference(&mut b, &moduli, n));
            }
        }
    }

    /// Derived seeds are deterministic per (seed, stream) and differ across streams and seeds;
    /// wide uniform integers stay in `[−2^b, 2^b)` and reach both ends of it.
    #[test]
    fn derived_seeds_and_wide_uniforms() {
        let a = Sampler::derive_seed([1; 32], 7);
        assert_eq!(a, Sampler::derive_seed([1; 32], 7));
        assert_ne!(a, Sampler::derive_seed([1; 32], 8));
        assert_ne!(a, Sampler::derive_seed([2; 32], 7));
        assert_ne!(a, [1; 32]);
        let mut s = Sampler::from_seed([3; 32]);
        for bits in [5u32, 63, 100, 126] {
            let v = s.uniform_signed_bits(4000, bits);
            let b = 1i128 << bits;
            assert!(v.iter().all(|&x| (-b..b).contains(&x)), "{bits} bits");
            assert!(v.iter().any(|&x| x < -b / 2) && v.iter().any(|&x| x >= b / 2 - 1));
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / b as f64;
            assert!(mean.abs() < 0.05, "{bits} bits: mean {mean}");
        }
    }

    #[test]
    fn distributions_have_expected_moments() {
        let mut s = Sampler::from_seed([7; 32]);
        let t = s.ternary(30000);
        let counts = [-1i8, 0, 1].map(|v| t.iter().filter(|&&x| x == v).count());
        for c in counts {
            assert!((9000..11000).contains(&c), "{counts:?}");
        }
        let e = s.cbd(50000);
        let var = e.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / e.len() as f64;
        assert!(
            (var.sqrt() - ERROR_STD_DEV).abs() < 0.1,
            "sigma {}",
            var.sqrt()
        );
        let m = [Modulus::new(1_073_479_681).unwrap()];
        let u = s.uniform(&m, 20000);
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
        assert!((mean / 1_073_479_681.0 - 0.5).abs() < 0.01);
        assert_eq!(
            Sampler::uniform_from_seed([1; 32], &m, 16),
            Sampler::uniform_from_seed([1; 32], &m, 16)
        );
    }
}
