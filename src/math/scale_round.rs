//! Exact integer scale-and-round across RNS bases: given `x` in a basis `Q ∪ C`, compute
//! `round(t·x/Q)` in the basis `C` — the heart of BFV multiplication (Halevi-Polyakov-Shoup,
//! "An Improved RNS Variant of the BFV Homomorphic Encryption Scheme", CT-RSA 2019).
//!
//! With `D = Q·C`, `w_i = [(D/q_i)^{-1}]_{q_i}` and `u_j = [(D/c_j)^{-1}]_{c_j}`, CRT gives
//! `x = Σ_i x_i·w_i·(D/q_i) + Σ_j x_{c_j}·u_j·(D/c_j) − v·D`, so
//!
//! ```text
//! t·x/Q = Σ_i x_i·(t·C·w_i/q_i) + Σ_j x_{c_j}·u_j·t·(C/c_j) − v·t·C .
//! ```
//!
//! Modulo `c_j` the last term vanishes, the middle sum keeps only its own term
//! `x_{c_j}·λ_j` with `λ_j = [t·(C/c_j)·u_j]_{c_j}`, and splitting `t·C·w_i/q_i` into its integer
//! part `F_i` and fraction `θ_i` leaves
//!
//! ```text
//! [round(t·x/Q)]_{c_j} = [ Σ_i x_i·[F_i]_{c_j} + round(Σ_i x_i·θ_i) + x_{c_j}·λ_j ]_{c_j} .
//! ```
//!
//! The fractional sum is the only non-modular part. It is computed as
//! `R = floor((Σ_i x_i·Θ_i + 2^63) / 2^64)` with `Θ_i = floor(θ_i·2^64)`, exact integer arithmetic
//! (u128 on the CPU, multi-word on devices), so every backend produces the same words. `R` can
//! differ from the true rounding only when `Σ x_i θ_i` lies within `k·2^-34` of a half-integer;
//! for BFV that is one unit of extra noise, never a wrong plaintext.

use num_bigint::BigUint;
use num_traits::{One, ToPrimitive, Zero};

use crate::math::modular::Modulus;

/// Tables for `x (over Q ∪ C) ↦ round(t·x/Q) (over C)`.
#[derive(Clone, Debug)]
pub struct ScaleRounder {
    q: Vec<Modulus>,
    c: Vec<Modulus>,
    multiplier: u64,
    /// `[F_i]_{c_j}`, indexed `[j * q.len() + i]`.
    int_part: Vec<u32>,
    /// `Θ_i = floor(frac(t·C·w_i/q_i)·2^64)`.
    frac: Vec<u64>,
    /// `(λ_j, shoup(λ_j))`.
    lambda: Vec<(u32, u32)>,
}

impl ScaleRounder {
    /// Precomputes the tables for dividing by `Q = Π q` and multiplying by `multiplier` (the
    /// BFV plaintext modulus `t`), with the result in basis `c`. All primes must be distinct.
    pub fn new(q: &[Modulus], c: &[Modulus], multiplier: u64) -> Self {
        let prod = |ms: &[Modulus]| ms.iter().fold(BigUint::one(), |acc, m| acc * m.value());
        let big_q = prod(q);
        let big_c = prod(c);
        let d = &big_q * &big_c;
        let t = BigUint::from(multiplier);
        let inv_mod =
            |x: &BigUint, m: &Modulus| m.inv((x % m.value()).to_u32().unwrap_or(0)).unwrap_or(0);
        let mut int_part = vec![0u32; q.len() * c.len()];
        let mut frac = Vec::with_capacity(q.len());
        for (i, qi) in q.iter().enumerate() {
            let w = inv_mod(&(&d / qi.value()), qi);
            let num = &t * &big_c * w;
            let whole = &num / qi.value();
            let rem = (&num % qi.value()).to_u64().unwrap_or(0);
            frac.push((((rem as u128) << 64) / qi.value() as u128) as u64);
            for (j, cj) in c.iter().enumerate() {
                int_part[j * q.len() + i] = (&whole % cj.value()).to_u32().unwrap_or(0);
            }
        }
        let lambda = c
            .iter()
            .map(|cj| {
                let u = inv_mod(&(&d / cj.value()), cj);
                let c_hat = ((&big_c / cj.value()) % cj.value()).to_u32().unwrap_or(0);
                let l = cj.mul(cj.mul(c_hat, (multiplier % cj.value() as u64) as u32), u);
                (l, cj.shoup(l))
            })
            .collect();
        debug_assert!(!big_q.is_zero());
        Self {
            q: q.to_vec(),
            c: c.to_vec(),
            multiplier,
            int_part,
            frac,
            lambda,
        }
    }

    /// The divided-out basis `Q`.
    pub fn from_q(&self) -> &[Modulus] {
        &self.q
    }

    /// The basis of the result (`C`).
    pub fn to(&self) -> &[Modulus] {
        &self.c
    }

    /// The multiplier `t`.
    pub fn multiplier(&self) -> u64 {
        self.multiplier
    }

    /// `[F_i]_{c_j}` table, indexed `[j * from_q().len() + i]` (for device upload).
    pub fn int_part_table(&self) -> &[u32] {
        &self.int_part
    }

    /// `Θ_i` table (for device upload).
    pub fn frac_table(&self) -> &[u64] {
        &self.frac
    }

    /// `λ_j` table (for device upload).
    pub fn lambda_table(&self) -> Vec<u32> {
        self.lambda.iter().map(|&(l, _)| l).collect()
    }

    /// The rounding terms `R[k] = floor((Σ_i x_i[k]·Θ_i + 2^63) / 2^64)` of one polynomial whose
    /// first `q.len()` limbs (of `n` words each) are the residues modulo `Q`.
    pub fn rounding_terms(&self, input: &[u32], n: usize) -> Vec<u64> {
        let mut acc = vec![0u128; n];
        for (i, &th) in self.frac.iter().enumerate() {
            for (a, &x) in acc.iter_mut().zip(&input[i * n..(i + 1) * n]) {
                *a += x as u128 * th as u128;
            }
        }
        acc.into_iter()
            .map(|a| ((a + (1u128 << 63)) >> 64) as u64)
            .collect()
    }

    /// Output limb `j` (`n` words) of one polynomial, given its input (`q.len() + c.len()` limbs,
    /// Q first) and its rounding terms.
    pub fn output_limb(&self, j: usize, input: &[u32], round: &[u64], out: &mut [u32], n: usize) {
        let k = self.q.len();
        let cj = &self.c[j];
        let cv = cj.value();
        let row = &self.int_part[j * k..(j + 1) * k];
        out.iter_mut().for_each(|o| *o = 0);
        // Blocks of coefficients keep the accumulator in L1 across all source limbs.
        const BLOCK: usize = 1024;
        for start in (0..n).step_by(BLOCK) {
            let end = (start + BLOCK).min(n);
            let acc = &mut out[start..end];
            for (i, &f) in row.iter().enumerate() {
                let x = &input[i * n + start..i * n + end];
                // x_i < q_i may exceed c_j: reduce it first when the source prime is larger
                // (32-bit-lane Barrett needs reduced operands; this keeps the loop vectorizable).
                let qv = self.q[i].value();
                if qv <= cv {
                    for (o, &xk) in acc.iter_mut().zip(x) {
                        *o = cj.mul_add_reduced(xk, f, *o);
                    }
                } else if qv < 2 * cv {
                    for (o, &xk) in acc.iter_mut().zip(x) {
                        *o = cj.mul_add_reduced(xk.min(xk.wrapping_sub(cv)), f, *o);
                    }
                } else {
                    for (o, &xk) in acc.iter_mut().zip(x) {
                        *o = cj.mul_add_reduced(cj.reduce_u64(xk as u64), f, *o);
                    }
                }
            }
        }
        let (l, ls) = self.lambda[j];
        let own = &input[(k + j) * n..(k + j + 1) * n];
        for ((o, &r), &x) in out.iter_mut().zip(round).zip(own) {
            let s = cj.add(*o, cj.reduce_u64(r));
            *o = cj.add(s, cj.mul_shoup(x, l, ls));
        }
    }

    /// Scales and rounds one polynomial: `input` holds `q.len() + c.len()` limbs (Q first),
    /// `output` receives `c.len()` limbs.
    pub fn apply(&self, input: &[u32], output: &mut [u32], n: usize) {
        debug_assert_eq!(input.len(), (self.q.len() + self.c.len()) * n);
        debug_assert_eq!(output.len(), self.c.len() * n);
        let round = self.rounding_terms(input, n);
        for (j, out) in output.chunks_mut(n).enumerate() {
            self.output_limb(j, input, &round, out, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::ntt_primes;
    use crate::math::rns::RnsBasis;
    use num_bigint::BigInt;
    use num_traits::Signed;
    use proptest::prelude::*;

    /// round(a / b) for b > 0 (ties cannot occur: t and Q are odd, so t·x/Q is never a half-integer).
    fn div_round(a: &BigInt, b: &BigInt) -> BigInt {
        let num = a * 2 + if a.is_negative() { -b } else { b.clone() };
        num / (b * 2)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn matches_bigint_rounding(
            seed in any::<u64>(),
            kq in 1usize..5,
            kc in 2usize..6,
            tb in 16u32..61,
            layout in 0usize..3,
        ) {
            // Layouts cover every reduction path of `output_limb`: Q primes above the C primes
            // (q < 2c), below them (q <= c), and far above them (20-bit C primes, q > 2c).
            let mut ps = ntt_primes(30, 1 << 12, kq + kc, &[]).unwrap();
            match layout {
                1 => ps.reverse(),
                2 => {
                    let small = ntt_primes(20, 1 << 12, kc, &[]).unwrap();
                    ps.truncate(kq);
                    ps.extend(small);
                }
                _ => {}
            }
            let ms: Vec<Modulus> = ps.iter().map(|&p| Modulus::new(p).unwrap()).collect();
            let (q, c) = ms.split_at(kq);
            let t = (1u64 << (tb - 1)) + (seed % (1u64 << (tb - 2))) * 2 + 1;
            let sr = ScaleRounder::new(q, c, t);
            let all = RnsBasis::new(&ms);
            let bq = BigInt::from(RnsBasis::new(q).product().clone());
            let bc = RnsBasis::new(c);
            let n = 16;
            let mut input = vec![0u32; (kq + kc) * n];
            let mut xs = Vec::new();
            let mut s = seed | 1;
            for k in 0..n {
                let mut x = BigInt::zero();
                for _ in 0..(kq + kc) {
                    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                    x = (x << 30usize) + BigInt::from(s & ((1 << 30) - 1));
                }
                let half = BigInt::from(all.product().clone()) >> 1usize;
                let x = x % &half * if s & 1 == 1 { -1 } else { 1 };
                for (i, r) in all.decompose_signed(&x).into_iter().enumerate() {
                    input[i * n + k] = r;
                }
                xs.push(x);
            }
            let mut out = vec![0u32; kc * n];
            sr.apply(&input, &mut out, n);
            for (k, x) in xs.iter().enumerate() {
                let want = bc.decompose_signed(&div_round(&(x * BigInt::from(t)), &bq));
                let got: Vec<u32> = (0..kc).map(|j| out[j * n + k]).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
