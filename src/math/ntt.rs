//! Negacyclic number-theoretic transform over `Z_q[X]/(X^N + 1)` with Harvey's lazy butterflies.
//!
//! Forward: Cooley-Tukey, natural-order input, bit-reversed-order output (no bit-reversal pass).
//! Inverse: Gentleman-Sande, bit-reversed input, natural output, scaled by `N^{-1}`.
//! Pointwise products in the NTT domain are negacyclic convolutions, which is all the schemes
//! need, so the bit-reversed order is never undone. GPU kernels use the same tables and order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::math::modular::Modulus;
use crate::math::primes::primitive_root_of_unity;
#[cfg(target_arch = "x86_64")]
use crate::math::{ntt_avx512, simd};

/// Precomputed tables for one prime and one ring degree.
#[derive(Clone, Debug)]
pub struct NttPlan {
    n: usize,
    log_n: u32,
    modulus: Modulus,
    /// psi^{bitrev(k)} for k in 0..n, psi a primitive 2N-th root of unity.
    psi_rev: Vec<u32>,
    psi_rev_shoup: Vec<u32>,
    /// psi^{-bitrev(k)}.
    ipsi_rev: Vec<u32>,
    ipsi_rev_shoup: Vec<u32>,
    n_inv: u32,
    n_inv_shoup: u32,
}

/// Reverses the low `bits` bits of `x`.
#[inline]
pub fn bit_reverse(x: usize, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        x.reverse_bits() >> (usize::BITS - bits)
    }
}

impl NttPlan {
    /// Smallest and largest supported ring degrees.
    pub const MIN_LOG_N: u32 = 1;
    pub const MAX_LOG_N: u32 = 17;

    /// Builds the plan; `q` must be a prime ≡ 1 (mod 2n).
    pub fn new(n: usize, modulus: Modulus) -> Result<Self> {
        if !n.is_power_of_two() || !(2..=(1 << Self::MAX_LOG_N)).contains(&n) {
            return Err(Error::InvalidParameters(format!(
                "ring degree {n} must be a power of two in [2, 2^{}]",
                Self::MAX_LOG_N
            )));
        }
        let q = modulus.value();
        let psi = primitive_root_of_unity(q as u64, 2 * n as u64)? as u32;
        let psi_inv = modulus.inv(psi).expect("root is nonzero");
        let log_n = n.trailing_zeros();
        let mut pows = vec![0u32; n];
        let mut ipows = vec![0u32; n];
        let (mut p, mut ip) = (1u32, 1u32);
        for i in 0..n {
            pows[i] = p;
            ipows[i] = ip;
            p = modulus.mul(p, psi);
            ip = modulus.mul(ip, psi_inv);
        }
        let mut psi_rev = vec![0u32; n];
        let mut ipsi_rev = vec![0u32; n];
        for k in 0..n {
            psi_rev[k] = pows[bit_reverse(k, log_n)];
            ipsi_rev[k] = ipows[bit_reverse(k, log_n)];
        }
        let psi_rev_shoup = psi_rev.iter().map(|&w| modulus.shoup(w)).collect();
        let ipsi_rev_shoup = ipsi_rev.iter().map(|&w| modulus.shoup(w)).collect();
        let n_inv = modulus.inv(n as u32 % q).expect("n invertible mod odd q");
        Ok(Self {
            n,
            log_n,
            modulus,
            psi_rev,
            psi_rev_shoup,
            ipsi_rev,
            ipsi_rev_shoup,
            n_inv,
            n_inv_shoup: modulus.shoup(n_inv),
        })
    }

    /// Ring degree.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The prime.
    pub fn modulus(&self) -> &Modulus {
        &self.modulus
    }

    /// Twiddle tables (for device upload): (psi_rev, psi_rev_shoup, ipsi_rev, ipsi_rev_shoup).
    pub fn tables(&self) -> (&[u32], &[u32], &[u32], &[u32]) {
        (
            &self.psi_rev,
            &self.psi_rev_shoup,
            &self.ipsi_rev,
            &self.ipsi_rev_shoup,
        )
    }

    /// `(N^{-1}, shoup(N^{-1}))`.
    pub fn n_inv(&self) -> (u32, u32) {
        (self.n_inv, self.n_inv_shoup)
    }

    /// In-place forward NTT; input in `[0, 4q)`, output fully reduced in `[0, q)`.
    pub fn forward(&self, a: &mut [u32]) {
        assert_eq!(a.len(), self.n, "NTT input length");
        #[cfg(target_arch = "x86_64")]
        if self.n >= 32 && simd::wide_now() {
            let q = self.modulus.value();
            // SAFETY: `wide_now` holds only where the CPU has AVX-512.
            unsafe { ntt_avx512::forward(a, &self.psi_rev, &self.psi_rev_shoup, q) };
            return;
        }
        self.forward_words(a)
    }

    /// The portable forward transform (LLVM vectorizes its long stages 8 words wide).
    fn forward_words(&self, a: &mut [u32]) {
        let q = self.modulus.value();
        let two_q = 2 * q;
        let mut t = self.n;
        let mut m = 1;
        while m < self.n {
            t >>= 1;
            let w = &self.psi_rev[m..2 * m];
            let ws = &self.psi_rev_shoup[m..2 * m];
            // Long blocks: the inner loop over j vectorizes. The last stages have blocks of
            // 1, 2 or 4 butterflies: a compile-time block size removes the per-block overhead.
            match t {
                1 => ct_stage::<1>(a, w, ws, q),
                2 => ct_stage::<2>(a, w, ws, q),
                4 => ct_stage::<4>(a, w, ws, q),
                _ => {
                    for ((block, &w), &ws) in a.chunks_exact_mut(2 * t).zip(w).zip(ws) {
                        let (x, y) = block.split_at_mut(t);
                        for (xj, yj) in x.iter_mut().zip(y.iter_mut()) {
                            (*xj, *yj) = ct_butterfly(*xj, *yj, w, ws, q);
                        }
                    }
                }
            }
            m <<= 1;
        }
        for x in a.iter_mut() {
            let v = (*x).min(x.wrapping_sub(two_q));
            *x = v.min(v.wrapping_sub(q));
        }
    }

    /// In-place inverse NTT; input in `[0, 2q)`, output fully reduced in `[0, q)`.
    pub fn inverse(&self, a: &mut [u32]) {
        assert_eq!(a.len(), self.n, "NTT input length");
        #[cfg(target_arch = "x86_64")]
        if self.n >= 32 && simd::wide_now() {
            let (q, n_inv) = (self.modulus.value(), self.n_inv());
            // SAFETY: `wide_now` holds only where the CPU has AVX-512.
            unsafe { ntt_avx512::inverse(a, &self.ipsi_rev, &self.ipsi_rev_shoup, q, n_inv) };
            return;
        }
        self.inverse_words(a)
    }

    /// The portable inverse transform.
    fn inverse_words(&self, a: &mut [u32]) {
        let q = self.modulus.value();
        let mut t = 1;
        let mut m = self.n;
        while m > 1 {
            let h = m >> 1;
            let w = &self.ipsi_rev[h..m];
            let ws = &self.ipsi_rev_shoup[h..m];
            match t {
                1 => gs_stage::<1>(a, w, ws, q),
                2 => gs_stage::<2>(a, w, ws, q),
                4 => gs_stage::<4>(a, w, ws, q),
                _ => {
                    for ((block, &w), &ws) in a.chunks_exact_mut(2 * t).zip(w).zip(ws) {
                        let (x, y) = block.split_at_mut(t);
                        let y = &mut y[..x.len()];
                        for j in 0..x.len() {
                            let (u, v) = (x[j], y[j]);
                            let s = u + v;
                            x[j] = s.min(s.wrapping_sub(2 * q));
                            y[j] = mul_shoup_lazy(u + 2 * q - v, w, ws, q);
                        }
                    }
                }
            }
            t <<= 1;
            m = h;
        }
        let (ni, nis) = (self.n_inv, self.n_inv_shoup);
        for x in a.iter_mut() {
            let v = mul_shoup_lazy(*x, ni, nis, q);
            *x = v.min(v.wrapping_sub(q));
        }
    }

    /// Log2 of the ring degree.
    pub fn log_n(&self) -> u32 {
        self.log_n
    }
}

/// Shoup product in `[0, 2q)`, written so that LLVM vectorizes it (vpmuludq on AVX2).
#[inline(always)]
fn mul_shoup_lazy(a: u32, w: u32, ws: u32, q: u32) -> u32 {
    let qhat = ((a as u64 * ws as u64) >> 32) as u32;
    a.wrapping_mul(w).wrapping_sub(qhat.wrapping_mul(q))
}

/// Cooley-Tukey butterfly on lazy values in `[0, 4q)`.
#[inline(always)]
fn ct_butterfly(x: u32, y: u32, w: u32, ws: u32, q: u32) -> (u32, u32) {
    let two_q = 2 * q;
    let u = x.min(x.wrapping_sub(two_q));
    let v = mul_shoup_lazy(y, w, ws, q);
    (u + v, u + two_q - v)
}

/// Gentleman-Sande butterfly on lazy values in `[0, 2q)`.
#[inline(always)]
fn gs_butterfly(x: u32, y: u32, w: u32, ws: u32, q: u32) -> (u32, u32) {
    let two_q = 2 * q;
    let s = x + y;
    (
        s.min(s.wrapping_sub(two_q)),
        mul_shoup_lazy(x + two_q - y, w, ws, q),
    )
}

#[inline(always)]
fn ct_stage<const T: usize>(a: &mut [u32], w: &[u32], ws: &[u32], q: u32) {
    for ((block, &w), &ws) in a.chunks_exact_mut(2 * T).zip(w).zip(ws) {
        for j in 0..T {
            (block[j], block[j + T]) = ct_butterfly(block[j], block[j + T], w, ws, q);
        }
    }
}

#[inline(always)]
fn gs_stage<const T: usize>(a: &mut [u32], w: &[u32], ws: &[u32], q: u32) {
    for ((block, &w), &ws) in a.chunks_exact_mut(2 * T).zip(w).zip(ws) {
        for j in 0..T {
            (block[j], block[j + T]) = gs_butterfly(block[j], block[j + T], w, ws, q);
        }
    }
}

/// The Galois automorphism `X → X^g` (g odd) on an NTT-domain polynomial as a permutation:
/// `out[k] = in[map[k]]`, since position `k` holds the evaluation at `ψ^(2·br(k)+1)`. Every
/// backend permutes with this map, so their words agree.
pub fn automorphism_ntt_map(n: usize, g: usize) -> Vec<u32> {
    let log_n = n.trailing_zeros();
    let two_n = 2 * n;
    (0..n)
        .map(|k| {
            let e = 2 * bit_reverse(k, log_n) + 1;
            let ge = (e * (g % two_n)) % two_n;
            bit_reverse((ge - 1) / 2, log_n) as u32
        })
        .collect()
}

/// [`automorphism_ntt_map`], computed once per `(n, g)` and shared: a rotation costs a few
/// NTTs, and building its map costs about one, so the CPU backend keeps the maps it has used
/// (up to 2^24 words in all, ~64 MiB; past that the cache starts over).
pub fn automorphism_ntt_map_shared(n: usize, g: usize) -> Arc<[u32]> {
    type Maps = HashMap<(usize, usize), Arc<[u32]>>;
    static MAPS: OnceLock<Mutex<(Maps, usize)>> = OnceLock::new();
    const MAX_WORDS: usize = 1 << 24;
    let cache = MAPS.get_or_init(Default::default);
    if let Some(m) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .get(&(n, g))
    {
        return m.clone();
    }
    let map: Arc<[u32]> = automorphism_ntt_map(n, g).into();
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    let (maps, words) = &mut *guard;
    if *words + n > MAX_WORDS {
        maps.clear();
        *words = 0;
    }
    if maps.insert((n, g), map.clone()).is_none() {
        *words += n;
    }
    map
}

/// Schoolbook negacyclic product `a * b mod (X^N + 1, q)`: the independent reference for tests.
#[allow(clippy::needless_range_loop)] // index arithmetic is the point of a reference
pub fn negacyclic_schoolbook(a: &[u32], b: &[u32], m: &Modulus) -> Vec<u32> {
    let n = a.len();
    let mut out = vec![0u32; n];
    for i in 0..n {
        for j in 0..n {
            let p = m.mul(a[i], b[j]);
            let k = i + j;
            if k < n {
                out[k] = m.add(out[k], p);
            } else {
                out[k - n] = m.sub(out[k - n], p);
            }
        }
    }
    out
}
