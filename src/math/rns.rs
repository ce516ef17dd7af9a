//! Residue number system: CRT composition to big integers (host side) and fast base conversion
//! between bases of 32-bit primes (the core of BFV multiplication and hybrid key switching).

use num_bigint::{BigInt, BigUint};
use num_traits::{One, ToPrimitive, Zero};

use crate::math::modular::Modulus;
use crate::math::simd;

/// A basis of distinct primes `q_0..q_{k-1}` with the CRT constants for composition.
#[derive(Clone, Debug)]
pub struct RnsBasis {
    moduli: Vec<Modulus>,
    product: BigUint,
    /// Q / q_i.
    q_hat: Vec<BigUint>,
    /// [(Q/q_i)^{-1}]_{q_i}.
    q_hat_inv: Vec<u32>,
}

impl RnsBasis {
    /// Builds the basis (the moduli must be distinct primes).
    pub fn new(moduli: &[Modulus]) -> Self {
        let product = moduli.iter().fold(BigUint::one(), |acc, m| acc * m.value());
        let q_hat: Vec<BigUint> = moduli.iter().map(|m| &product / m.value()).collect();
        let q_hat_inv = moduli
            .iter()
            .zip(&q_hat)
            .map(|(m, h)| {
                let r = (h % m.value()).to_u32().unwrap_or(0);
                m.inv(r).unwrap_or(0)
            })
            .collect();
        Self {
            moduli: moduli.to_vec(),
            product,
            q_hat,
            q_hat_inv,
        }
    }

    /// The primes.
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli
    }

    /// Number of primes.
    pub fn len(&self) -> usize {
        self.moduli.len()
    }

    /// Whether the basis is empty.
    pub fn is_empty(&self) -> bool {
        self.moduli.is_empty()
    }

    /// The product Q of the primes.
    pub fn product(&self) -> &BigUint {
        &self.product
    }

    /// Residues of `x` in this basis.
    pub fn decompose(&self, x: &BigUint) -> Vec<u32> {
        self.moduli
            .iter()
            .map(|m| (x % m.value()).to_u32().unwrap_or(0))
            .collect()
    }

    /// Residues of a signed `x`.
    pub fn decompose_signed(&self, x: &BigInt) -> Vec<u32> {
        let q = BigInt::from(self.product.clone());
        let mut r = x % &q;
        if r < BigInt::zero() {
            r += &q;
        }
        self.decompose(&r.to_biguint().unwrap_or_default())
    }

    /// CRT composition of one residue per prime into `[0, Q)`.
    pub fn compose(&self, residues: &[u32]) -> BigUint {
        let mut acc = BigUint::zero();
        for (i, m) in self.moduli.iter().enumerate() {
            let y = m.mul(residues[i] % m.value(), self.q_hat_inv[i]);
            acc += &self.q_hat[i] * y;
        }
        acc % &self.product
    }

    /// CRT composition into the centered range `(-Q/2, Q/2]`.
    pub fn compose_centered(&self, residues: &[u32]) -> BigInt {
        let x = self.compose(residues);
        let half = &self.product >> 1usize;
        if x > half {
            BigInt::from(x) - BigInt::from(self.product.clone())
        } else {
            BigInt::from(x)
        }
    }
}

/// CRT composition into the centered range `(-Q/2, Q/2]` as an `f64`, with word arithmetic
/// only (CKKS decoding): Garner's mixed-radix digits `x = a_0 + a_1·q_0 + a_2·q_0·q_1 + …`
/// (`0 ≤ a_k < q_k`), compared digit by digit with those of `(Q − 1)/2`, and `x` or `Q − x`
/// evaluated by Horner's rule from the top digit. Why: [`RnsBasis::compose_centered`] builds a
/// big integer per coefficient (allocations, divisions), ~10 ms for a 2^14 polynomial over 12
/// primes; this takes `L(L − 1)/2` Shoup products per coefficient. The result is the exact
/// value rounded to `f64` within a few ulps (each Horner step rounds once).
#[derive(Clone, Debug)]
pub struct CenteredLift {
    moduli: Vec<Modulus>,
    /// `[(q_0·…·q_{k−1})^{-1}]_{q_k}` with its Shoup companion, for `k ≥ 1`.
    inv: Vec<(u32, u32)>,
    /// `[q_j]_{q_k}` with its Shoup companion, at `[k·(k−1)/2 + j]` for `j < k`.
    radix: Vec<(u32, u32)>,
    /// The mixed-radix digits of `(Q − 1)/2`.
    half: Vec<u32>,
    /// `shoup(1)` per prime: a Shoup product with 1 reduces any word without a division.
    one: Vec<u32>,
}

impl CenteredLift {
    /// The tables for distinct primes `moduli` (at least one).
    pub fn new(moduli: &[Modulus]) -> Self {
        let mut inv = vec![(0, 0)];
        let mut radix = Vec::new();
        for (k, mk) in moduli.iter().enumerate().skip(1) {
            let prefix = moduli[..k]
                .iter()
                .fold(1u32, |acc, mj| mk.mul(acc, mj.value() % mk.value()));
            let c = mk.inv(prefix).unwrap_or(0);
            inv.push((c, mk.shoup(c)));
            for mj in &moduli[..k] {
                let w = mj.value() % mk.value();
                radix.push((w, mk.shoup(w)));
            }
        }
        let mut lift = Self {
            moduli: moduli.to_vec(),
            inv,
            radix,
            half: vec![0; moduli.len()],
            one: moduli.iter().map(|m| m.shoup(1)).collect(),
        };
        let basis = RnsBasis::new(moduli);
        let half = basis.decompose(&((basis.product() - 1u32) >> 1usize));
        let mut digits = vec![0; moduli.len()];
        lift.digits(&half, &mut digits);
        lift.half = digits;
        lift
    }

    /// Garner's digits of the residues' `x ∈ [0, Q)` into `digits`.
    fn digits(&self, residues: &[u32], digits: &mut [u32]) {
        for (k, mk) in self.moduli.iter().enumerate() {
            let one = self.one[k];
            let reduce = |x: u32| mk.mul_shoup(x, 1, one);
            let xk = reduce(residues[k]);
            if k == 0 {
                digits[0] = xk;
                continue;
            }
            // (a_0 + a_1·q_0 + … + a_{k−1}·q_0…q_{k−2}) mod q_k, by Horner from a_{k−1}.
            let row = &self.radix[k * (k - 1) / 2..][..k];
            let mut t = reduce(digits[k - 1]);
            for j in (0..k - 1).rev() {
                let (w, ws) = row[j];
                t = mk.add(mk.mul_shoup(t, w, ws), reduce(digits[j]));
            }
            let (c, cs) = self.inv[k];
            digits[k] = mk.mul_shoup(mk.sub(xk, t), c, cs);
        }
    }

    /// The centered value of one coefficient's residues (one per prime, in the basis' order);
    /// `scratch` holds at least one word per prime.
    pub fn to_f64(&self, residues: &[u32], scratch: &mut [u32]) -> f64 {
        let l = self.moduli.len();
        let d = &mut scratch[..l];
        self.digits(residues, d);
        // x > (Q − 1)/2: the most significant differing digit decides.
        let above = (0..l)
            .rev()
            .find(|&k| d[k] != self.half[k])
            .is_some_and(|k| d[k] > self.half[k]);
        if above {
            // Q − x = (Q − 1 − x) + 1: digits q_k − 1 − a_k (no borrows), then one carry.
            for (dk, m) in d.iter_mut().zip(&self.moduli) {
                *dk = m.value() - 1 - *dk;
            }
            for (dk, m) in d.iter_mut().zip(&self.moduli) {
                *dk += 1;
                if *dk < m.value() {
                    break;
                }
                *dk = 0;
            }
        }
        let magnitude = (0..l - 1).rev().fold(d[l - 1] as f64, |v, k| {
            v * self.moduli[k].value() as f64 + d[k] as f64
        });
        if above {
            -magnitude
        } else {
            magnitude
        }
    }
}

/// Fast base conversion from basis B to basis C, on limb-major coefficient arrays.
///
/// `x = Σ_i [x_i·(B/b_i)^{-1}]_{b_i} · (B/b_i) − v·B`; the approximate variant takes `v = 0`
/// (result off by a small multiple of B, fine for key switching), the exact variant computes
/// `v = round(Σ y_i / b_i)` in 32.32 fixed point, giving the centered representative of `x` —
/// all in integers, so every backend gets the same words.
#[derive(Clone, Debug)]
pub struct BaseConverter {
    from: Vec<Modulus>,
    to: Vec<Modulus>,
    /// ([(B/b_i)^{-1}]_{b_i}, shoup)
    b_hat_inv: Vec<(u32, u32)>,
    /// [B/b_i]_{c_j}, indexed [j * from.len() + i].
    b_hat_mod_c: Vec<u32>,
    /// Shoup companions of `b_hat_mod_c`.
    b_hat_mod_c_shoup: Vec<u32>,
    /// [B]_{c_j}.
    b_mod_c: Vec<u32>,
    /// Shoup companions of `b_mod_c`.
    b_mod_c_shoup: Vec<u32>,
    /// floor(2^62 / b_i).
    frac: Vec<u64>,
}

impl BaseConverter {
    /// Precomputes the conversion tables.
    pub fn new(from: &[Modulus], to: &[Modulus]) -> Self {
        let basis = RnsBasis::new(from);
        let b_hat_inv = from
            .iter()
            .zip(&basis.q_hat_inv)
            .map(|(m, &v)| (v, m.shoup(v)))
            .collect();
        let mut b_hat_mod_c = Vec::with_capacity(to.len() * from.len());
        for c in to {
            for h in &basis.q_hat {
                b_hat_mod_c.push((h % c.value()).to_u32().unwrap_or(0));
            }
        }
        let b_hat_mod_c_shoup = b_hat_mod_c
            .iter()
            .enumerate()
            .map(|(idx, &h)| to[idx / from.len().max(1)].shoup(h))
            .collect();
        let b_mod_c: Vec<u32> = to
            .iter()
            .map(|c| (&basis.product % c.value()).to_u32().unwrap_or(0))
            .collect();
        let b_mod_c_shoup = to.iter().zip(&b_mod_c).map(|(c, &b)| c.shoup(b)).collect();
        let frac = from
            .iter()
            .map(|m| (1u64 << 62) / m.value() as u64)
            .collect();
        Self {
            from: from.to_vec(),
            to: to.to_vec(),
            b_hat_inv,
            b_hat_mod_c,
            b_hat_mod_c_shoup,
            b_mod_c,
            b_mod_c_shoup,
            frac,
        }
    }

    /// Source basis.
    pub fn from(&self) -> &[Modulus] {
        &self.from
    }

    /// Target basis.
    pub fn to(&self) -> &[Modulus] {
        &self.to
    }

    /// `([(B/b_i)^{-1}]_{b_i}, shoup)` per source prime (for device upload).
    pub fn b_hat_inv_table(&self) -> &[(u32, u32)] {
        &self.b_hat_inv
    }

    /// `[B/b_i]_{c_j}`, indexed `[j * from().len() + i]` (for device upload).
    pub fn b_hat_mod_c_table(&self) -> &[u32] {
        &self.b_hat_mod_c
    }

    /// `[B]_{c_j}` per target prime (for device upload).
    pub fn b_mod_c_table(&self) -> &[u32] {
        &self.b_mod_c
    }

    /// `floor(2^62 / b_i)` per source prime (for device upload).
    pub fn frac_table(&self) -> &[u64] {
        &self.frac
    }

    /// Converts `input` (`from.len()` limbs of `n` words) into `output` (`to.len()` limbs);
    /// `exact` picks the centered exact variant.
    pub fn convert(&self, input: &[u32], output: &mut [u32], n: usize, exact: bool) {
        debug_assert_eq!(output.len(), self.to.len() * n);
        let mut scratch = ConvertScratch::default();
        for (lo, mut block) in convert_blocks(output, n) {
            self.convert_block(input, n, lo, &mut block, exact, &mut scratch);
        }
    }

    /// [`Self::convert`] of the coefficients `lo..lo + out[0].len()` of `input` (all
    /// `from.len()` limbs of `n` words) into one slice per target limb: blocks are independent,
    /// so a single polynomial's conversion spreads over threads, and a block's residues and
    /// accumulators stay in cache while every target limb is produced.
    ///
    /// Each target word is `Σ_i y_i·[B/b_i]_{c_j}` as a lazy sum of Shoup products in `[0, 2c)`
    /// in 32-bit lanes: twice as many per vector as 64-bit products, and no 64-bit reduction
    /// per word (1.3-1.6× faster key switching at 2^13-2^15 than a 64-bit sum reduced once,
    /// still ahead at 16 source limbs).
    pub fn convert_block(
        &self,
        input: &[u32],
        n: usize,
        lo: usize,
        out: &mut [&mut [u32]],
        exact: bool,
        scratch: &mut ConvertScratch,
    ) {
        simd::dispatch(
            #[inline(always)]
            || self.convert_block_words(input, n, lo, out, exact, scratch),
        )
    }

    #[inline(always)]
    fn convert_block_words(
        &self,
        input: &[u32],
        n: usize,
        lo: usize,
        out: &mut [&mut [u32]],
        exact: bool,
        scratch: &mut ConvertScratch,
    ) {
        let k = self.from.len();
        debug_assert_eq!(input.len(), k * n);
        debug_assert_eq!(out.len(), self.to.len());
        let len = out.first().map_or(0, |o| o.len());
        let ConvertScratch { y, v } = scratch;
        y.resize(k * len, 0);
        for (i, m) in self.from.iter().enumerate() {
            let (w, ws) = self.b_hat_inv[i];
            let x = &input[i * n + lo..i * n + lo + len];
            for (yk, &xk) in y[i * len..(i + 1) * len].iter_mut().zip(x) {
                *yk = m.mul_shoup(xk, w, ws);
            }
        }
        if exact {
            v.clear();
            v.resize(len, 0);
            for (i, &f) in self.frac.iter().enumerate() {
                for (vk, &yk) in v.iter_mut().zip(&y[i * len..(i + 1) * len]) {
                    *vk += (yk as u64 * f) >> 30;
                }
            }
            for vk in v.iter_mut() {
                *vk = (*vk + (1 << 31)) >> 32;
            }
        }
        // Lazy sums stay below 4c ≤ 2^32 because every modulus is below 2^30.
        const _: () = assert!(Modulus::MAX_BITS <= 30);
        for (j, (c, o)) in self.to.iter().zip(out.iter_mut()).enumerate() {
            let row = &self.b_hat_mod_c[j * k..(j + 1) * k];
            let row_s = &self.b_hat_mod_c_shoup[j * k..(j + 1) * k];
            let (cv, two_c) = (c.value(), 2 * c.value());
            for (t, (&h, &hs)) in row.iter().zip(row_s).enumerate() {
                let yt = &y[t * len..(t + 1) * len];
                if t == 0 {
                    for (ok, &yk) in o.iter_mut().zip(yt) {
                        *ok = c.mul_shoup_lazy(yk, h, hs);
                    }
                } else {
                    for (ok, &yk) in o.iter_mut().zip(yt) {
                        let s = *ok + c.mul_shoup_lazy(yk, h, hs);
                        *ok = s.min(s.wrapping_sub(two_c));
                    }
                }
            }
            if exact {
                let (bm, bms) = (self.b_mod_c[j], self.b_mod_c_shoup[j]);
                for (ok, &vk) in o.iter_mut().zip(v.iter()) {
                    // v ≤ number of source primes < c_j.
                    let r = (*ok).min(ok.wrapping_sub(cv));
                    *ok = c.sub(r, c.mul_shoup(vk as u32, bm, bms));
                }
            } else {
                o.iter_mut()
                    .for_each(|ok| *ok = (*ok).min(ok.wrapping_sub(cv)));
            }
        }
    }
}

/// Coefficients per block of [`BaseConverter::convert_block`]: a block's source residues
/// (e.g. 17 limbs × 2 KiB) and 64-bit accumulators fit in L1/L2.
pub const CONVERT_BLOCK: usize = 512;

/// `output` (limb-major, limbs of `n` words) cut into [`CONVERT_BLOCK`]-coefficient blocks:
/// `(first coefficient, one slice per limb)`, what [`BaseConverter::convert_block`] fills.
pub fn convert_blocks(output: &mut [u32], n: usize) -> Vec<(usize, Vec<&mut [u32]>)> {
    let mut limbs: Vec<_> = output
        .chunks_mut(n)
        .map(|l| l.chunks_mut(CONVERT_BLOCK))
        .collect();
    (0..n)
        .step_by(CONVERT_BLOCK)
        .map(|lo| (lo, limbs.iter_mut().filter_map(|l| l.next()).collect()))
        .collect()
}

/// Reusable buffers of [`BaseConverter::convert_block`].
#[derive(Default)]
pub struct ConvertScratch {
    y: Vec<u32>,
    v: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::ntt_primes;
    use proptest::prelude::*;

    fn moduli(count: usize, exclude: &[u32]) -> Vec<Modulus> {
        ntt_primes(30, 1 << 11, count, exclude)
            .unwrap()
            .into_iter()
            .map(|q| Modulus::new(q).unwrap())
            .collect()
    }

    /// `Σ_i [x_i·(B/b_i)^-1]_{b_i} · (B/b_i) mod c`, word by word in u128: the approximate
    /// conversion's definition.
    fn convert_reference(from: &[Modulus], c: &Modulus, x: &[u64]) -> u64 {
        let pow = |a: u128, mut e: u128, m: u128| {
            let (mut r, mut a) = (1u128, a % m);
            while e > 0 {
                if e & 1 == 1 {
                    r = r * a % m;
                }
                a = a * a % m;
                e >>= 1;
            }
            r
        };
        let hat = |i: usize, m: u128| {
            from.iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .fold(1u128, |p, (_, b)| p * b.value() as u128 % m)
        };
        let cv = c.value() as u128;
        let mut acc = 0u128;
        for (i, &xi) in x.iter().enumerate() {
            let bi = from[i].value() as u128;
            let y = xi as u128 * pow(hat(i, bi), bi - 2, bi) % bi;
            acc = (acc + y * hat(i, cv)) % cv;
        }
        acc as u64
    }

    #[test]
    fn conversion_into_much_smaller_primes_matches_the_definition() {
        // 30-bit sources into 25- and 20-bit targets: the path that reduces y_i before use.
        let from = moduli(3, &[]);
        let excl: Vec<u32> = from.iter().map(|m| m.value()).collect();
        for bits in [25, 20] {
            let to: Vec<Modulus> = ntt_primes(bits, 1 << 11, 2, &excl)
                .unwrap()
                .into_iter()
                .map(|q| Modulus::new(q).unwrap())
                .collect();
            let n = 512;
            let input: Vec<u32> = (0..3 * n)
                .map(|i| ((i as u64 * 2_654_435_761) % from[i / n].value() as u64) as u32)
                .collect();
            let mut out = vec![0u32; 2 * n];
            BaseConverter::new(&from, &to).convert(&input, &mut out, n, false);
            for (j, c) in to.iter().enumerate() {
                for k in 0..n {
                    let x: Vec<u64> = (0..3).map(|i| input[i * n + k] as u64).collect();
                    assert_eq!(
                        out[j * n + k] as u64,
                        convert_reference(&from, c, &x),
                        "{bits} bits, word {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_sums_and_small_primes_match_the_definition() {
        // 64 30-bit sources (a long lazy sum), 13-bit and 30-bit targets; 1000 words end in a
        // partial block.
        let from = moduli(64, &[]);
        let excl: Vec<u32> = from.iter().map(|m| m.value()).collect();
        let mut to: Vec<Modulus> = ntt_primes(13, 1 << 4, 2, &excl)
            .unwrap()
            .into_iter()
            .map(|q| Modulus::new(q).unwrap())
            .collect();
        to.extend(moduli(66, &excl).into_iter().skip(64));
        let n = 1000;
        let input: Vec<u32> = (0..64 * n)
            .map(|i| (from[i / n].value() as u64 - 1 - (i as u64 * 2_654_435_761) % 7) as u32)
            .collect();
        let mut out = vec![0u32; to.len() * n];
        BaseConverter::new(&from, &to).convert(&input, &mut out, n, false);
        for (j, c) in to.iter().enumerate() {
            for k in 0..n {
                let x: Vec<u64> = (0..64).map(|i| input[i * n + k] as u64).collect();
                assert_eq!(
                    out[j * n + k] as u64,
                    convert_reference(&from, c, &x),
                    "limb {j}, word {k}"
                );
            }
        }
    }

    proptest! {
        /// The word-arithmetic lift against the big-integer composition: the same sign, the
        /// same value within 4 ulps, exactly the same below 2^53, at both ends of the range.
        #[test]
        fn centered_lift_matches_the_big_integer_composition(
            seed in any::<u64>(), k in 1usize..13, small in any::<i32>(), edge in 0u32..4,
        ) {
            let ms = moduli(k, &[]);
            let basis = RnsBasis::new(&ms);
            let lift = CenteredLift::new(&ms);
            let q = basis.product().clone();
            let big = BigUint::from(seed).pow(6) * BigUint::from(seed | 3) % &q;
            let half = (&q - 1u32) >> 1usize;
            let candidates = [
                big,
                (BigInt::from(small) % BigInt::from(q.clone()) + BigInt::from(q.clone()))
                    .to_biguint()
                    .unwrap()
                    % &q,
                &half + edge,
                (&q - 1u32 - edge) % &q,
            ];
            let mut scratch = vec![0; k];
            for x in candidates {
                let residues = basis.decompose(&x);
                let want = basis.compose_centered(&residues).to_f64().unwrap();
                let got = lift.to_f64(&residues, &mut scratch);
                if want.abs() < 2f64.powi(53) {
                    prop_assert_eq!(got, want);
                } else {
                    prop_assert!(got.signum() == want.signum() && ((got - want) / want).abs() < 1e-15,
                        "{} vs {}", got, want);
                }
            }
        }

        #[test]
        fn crt_roundtrip(seed in any::<u64>(), k in 1usize..6) {
            let ms = moduli(k, &[]);
            let basis = RnsBasis::new(&ms);
            let x = (BigUint::from(seed) * BigUint::from(seed ^ 0xdead_beef) * BigUint::from(seed | 1)) % basis.product();
            prop_assert_eq!(basis.compose(&basis.decompose(&x)), x);
        }

        #[test]
        fn exact_conversion_is_centered_crt(vals in proptest::collection::vec(any::<i64>(), 8), k in 1usize..5) {
            let from = moduli(k, &[]);
            let excl: Vec<u32> = from.iter().map(|m| m.value()).collect();
            let to = moduli(k + 1, &excl);
            let n = vals.len();
            let bf = RnsBasis::new(&from);
            let bt = RnsBasis::new(&to);
            let half = BigInt::from(bf.product().clone() >> 2usize);
            // Values within |x| < Q/4 (away from the rounding boundary).
            let xs: Vec<BigInt> = vals.iter().map(|&v| (BigInt::from(v) * BigInt::from(v)) % &half * if v < 0 { -1 } else { 1 }).collect();
            let mut input = vec![0u32; k * n];
            for (c, x) in xs.iter().enumerate() {
                for (i, r) in bf.decompose_signed(x).into_iter().enumerate() {
                    input[i * n + c] = r;
                }
            }
            let conv = BaseConverter::new(&from, &to);
            let mut out = vec![0u32; (k + 1) * n];
            conv.convert(&input, &mut out, n, true);
            for (c, x) in xs.iter().enumerate() {
                let want = bt.decompose_signed(x);
                let got: Vec<u32> = (0..k + 1).map(|j| out[j * n + c]).collect();
                prop_assert_eq!(got, want);
            }
            // The approximate variant is off by u·Q with 0 <= u < k.
            conv.convert(&input, &mut out, n, false);
            for (c, x) in xs.iter().enumerate() {
                let got: Vec<u32> = (0..k + 1).map(|j| out[j * n + c]).collect();
                let ok = (0..=k as i64).any(|u| {
                    let cand = x + BigInt::from(u) * BigInt::from(bf.product().clone());
                    bt.decompose_signed(&cand) == got
                });
                prop_assert!(ok);
            }
        }
    }
}
