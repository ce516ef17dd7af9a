//! A noise estimate for BFV ciphertexts that needs no secret key, so the evaluator can refuse an
//! operation whose result would no longer decrypt.
//!
//! # What is tracked
//!
//! For a ciphertext at level `l` (modulus `Q = Q_l`) with phase `x = c_0 + c_1·s (+ c_2·s²)`
//! over the integers (centered residues), `t·x/Q = m + v + t·k` with `m` the centered plaintext
//! polynomial, `k` an integer polynomial and `v` the *invariant noise*. Decryption
//! (`round(t·x/Q) mod t`) is right while `‖v‖∞ < 1/2`, and the budget SEAL reports (and
//! [`crate::bfv::BfvContext::invariant_noise_budget`] measures with the secret key) is
//! `−log2(2·‖v‖∞) = log2 Q − log2 ‖[t·x]_Q‖∞ − 1`.
//!
//! Each ciphertext carries `noise_log2`, log2 of a bound `σ` on the standard deviation of the
//! coefficients of `v`, and the estimated budget is `−log2(2·τ·σ)` with the tail factor
//! `τ = sqrt(2·(ln N + 40·ln 2))`: a coefficient that is (by the central limit theorem) close to
//! a Gaussian of deviation `σ` exceeds `τ·σ` with probability below `exp(−τ²/2) = 2^−40/N`, so all
//! N coefficients stay below it except with probability `2^−40`. This is the average-case
//! ("CLT heuristic") analysis used by SEAL's and OpenFHE's noise estimators and in
//! Costache–Smart, "Which ring based somewhat homomorphic encryption scheme is best?" (CT-RSA
//! 2016) and Kim–Polyakov–Zucca, "Revisiting homomorphic encryption schemes for finite fields"
//! (ASIACRYPT 2021, §3 and appendix for the HPS variant implemented here).
//!
//! Two choices keep it an upper bound where the heuristic would need independence that may not
//! hold: deviations of sums are *added* (`sd(a + b) ≤ sd(a) + sd(b)` holds for any correlation,
//! e.g. `x + x` or the two cross terms of a square), and the plaintext in a product is taken at
//! its worst case (`|m_i| ≤ t/2`). Ciphertext coefficients are taken as uniform mod `Q` (RLWE
//! security says they are indistinguishable from it), the secret as uniform ternary (variance
//! 2/3) and errors as CBD(21) (variance 10.5), as [`crate::math::sampler::Sampler`] draws them.
//!
//! # Formulas (σ's are deviations of `v`, `N` the ring degree, `ε` roundings in `[−1/2, 1/2]`)
//!
//! - fresh symmetric: `x = e + ε_m`, so `σ = (t/Q)·(sqrt(10.5) + 1/2)`.
//! - fresh public key (computed over `QP`, divided by `P`): `x = (e·u + e_0 + e_1·s)/P + ε_0 +
//!   ε_1·s + ε_m`, so `σ = (t/Q)·(sqrt((14N + 10.5)/P² + (1 + 2N/3)/12) + 1/2)`.
//! - `a ± b`: `σ_a + σ_b`; `± pt`: `σ + (t/Q)/2` (the rounding of `Q·m/t`); `−a`: `σ_a`.
//! - `a · k` (scalar, centered): `|k|·σ_a`; `a · p` (plaintext, centered coefficients
//!   `p_j`): `v·p`, so `σ_a·‖p‖₂`.
//! - `a · b` (HPS): `t·x_3/Q = (m_1 + v_1 + t k_1)(m_2 + v_2 + t k_2) + (t/Q)·(ε_0 + ε_1 s + ε_2 s²)`,
//!   so `v_3 = m_1 v_2 + m_2 v_1 + v_1 v_2 + t·(v_1 k_2 + v_2 k_1) + (t/Q)·ε(s)` with
//!   `sd(k) = sqrt(1/12 + N/18) + 1/2` (`k ≈ x/Q`, `c_i/Q` uniform in `[−1/2, 1/2]`). The noise
//!   and `k` both depend on the same secret `s`, so their product is *not* the product of
//!   independent polynomials the coefficient CLT assumes: in the canonical embedding (slot `ζ`)
//!   `v(ζ)` carries a factor `s(ζ)^d` after d products and `k(ζ)` one more, and the moments of
//!   `|s(ζ)|` grow like `d!` (measured: each product spends 0.5–1 bit more than the CLT
//!   predicts, more with depth). The terms with `k` and `v` are therefore bounded as in the
//!   canonical-embedding analysis (Costache–Smart; Iliashenko's thesis; Gentry–Halevi–Smart):
//!   `rms(a·b) ≤ rms(a)·‖b‖^can` with `‖b‖^can ≤ τ_c·√N·sd(b)`, `τ_c = sqrt(ln(N/2) + 40·ln 2)`
//!   (a Gaussian slot exceeds it with probability `2^−40/(N/2)`; Costache–Smart use 6, this is
//!   6.0 at N = 2^13). The plaintext `m` does not depend on `s`, so its terms keep the CLT:
//!   `σ_3 = √N·((t/2)(σ_1 + σ_2) + τ_c·σ_1 σ_2 + τ_c·t·sd(k)·(σ_1 + σ_2)) + (t/Q)·sqrt((1 + 2N/3 + 4N²/9)/12)`.
//!   The `t·√N·τ_c·sd(k)·σ ≈ 1.4·t·N·σ` terms dominate: a product spends about
//!   `log2 t + log2 N + 1.5` bits by the estimate (~2 bits more than measured at depth 1, ~1 bit
//!   at depth 5).
//! - relinearization / rotation (hybrid key switching, digits `D_j` of up to `α_j` primes with
//!   product `Q_j`, special modulus `P`): `x` gains `Σ_j D_j e_j / P + ε_0 + ε_1 s`, so `σ` gains
//!   `(t/Q)·sqrt(Σ_j N·(α_j Q_j)²·10.5/P² + (1 + 2N/3)/12)` (the approximate ModUp leaves
//!   `|D_j| < α_j Q_j`); an automorphism only permutes `v`'s coefficients.
//! - modulus switching to `Q'`: `c' = Q'/Q·c + ε`, so `σ` gains `(t/Q')·sqrt((1 + 2N/3)/12)`
//!   (`+ 4N²/9` inside for size 3).
//!
//! `tests/bfv.rs` checks the estimate against the measured budget after every product of a
//! squaring chain and of the other operations: never more than the measured budget, and within
//! a few bits of it.

use crate::error::{Error, Result};

/// Variance of a CBD(21) error coefficient.
const ERR_VAR: f64 = 10.5;
/// Variance of a uniform ternary secret coefficient.
const SECRET_VAR: f64 = 2.0 / 3.0;
/// Probability (as −log2) that some coefficient exceeds the tail bound.
const TAIL_SECURITY_BITS: f64 = 40.0;

/// Smallest `noise_log2` stored (a product with the zero plaintext has no noise at all; the
/// floor keeps the value finite).
pub(crate) const NOISE_LOG2_MIN: f64 = -4096.0;
/// Largest `noise_log2` accepted when decoding: far beyond any decryptable ciphertext (whose
/// `σ` is below 1/2), so only garbage is refused.
pub(crate) const NOISE_LOG2_MAX: f64 = 64.0;

/// Checks a decoded `noise_log2` (finite, within `[NOISE_LOG2_MIN, NOISE_LOG2_MAX]`).
pub(crate) fn validate_noise_log2(x: f64) -> Result<f64> {
    if !x.is_finite() || !(NOISE_LOG2_MIN..=NOISE_LOG2_MAX).contains(&x) {
        return Err(Error::Decode(format!(
            "BFV noise estimate 2^{x} is not a finite value in 2^{NOISE_LOG2_MIN}..=2^{NOISE_LOG2_MAX}"
        )));
    }
    Ok(x)
}

/// `log2(2^a + 2^b)` without leaving the log domain (σ's reach 2^−1800 at N = 2^16).
pub(crate) fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (1.0 + (lo - hi).exp2()).log2()
}

fn floor(x: f64) -> f64 {
    if x.is_nan() {
        NOISE_LOG2_MAX
    } else {
        x.max(NOISE_LOG2_MIN)
    }
}

/// Per-context constants of the noise formulas (all logs base 2).
#[derive(Clone, Debug)]
pub(crate) struct NoiseModel {
    log_n: f64,
    log_t: f64,
    /// log2 τ, the coefficient tail factor.
    tail_log2: f64,
    /// log2 τ_c, the canonical-embedding (slot) tail factor.
    slot_tail_log2: f64,
    /// log2 Q_l per level.
    log_q: Vec<f64>,
    /// Per level: log2 of the deviation of key-switching noise in the phase (before `t/Q`).
    ks_log2: Vec<f64>,
    /// log2 deviation of the fresh phase noise (public-key / symmetric encryption).
    fresh_pk_log2: f64,
    fresh_sk_log2: f64,
    /// log2 sd(k).
    k_log2: f64,
    /// log2 deviation of `ε_0 + ε_1 s` and of `ε_0 + ε_1 s + ε_2 s²`.
    round2_log2: f64,
    round3_log2: f64,
}

impl NoiseModel {
    /// `log_q[l]` = log2 Q_l; `digits[l]` = per key-switching digit at level `l`, (number of
    /// primes, log2 of their product); `log_p` = log2 P.
    pub(crate) fn new(
        n: usize,
        t: u64,
        log_q: Vec<f64>,
        digits: &[Vec<(usize, f64)>],
        log_p: f64,
    ) -> Self {
        let nf = n as f64;
        let log_n = nf.log2();
        let tail = (2.0 * (nf.ln() + TAIL_SECURITY_BITS * std::f64::consts::LN_2)).sqrt();
        let slot_tail = ((nf / 2.0).ln() + TAIL_SECURITY_BITS * std::f64::consts::LN_2).sqrt();
        let round2 = (1.0 + nf * SECRET_VAR) / 12.0;
        let round3 = round2 + nf * nf * SECRET_VAR * SECRET_VAR / 12.0;
        let p2 = (2.0 * log_p).exp2();
        let fresh_pk = ((2.0 * nf * ERR_VAR * SECRET_VAR + ERR_VAR) / p2 + round2).sqrt() + 0.5;
        let ks_log2 = digits
            .iter()
            .map(|ds| {
                // N·(α Q_j)²·10.5/P², summed in the log domain.
                let sum = ds.iter().fold(f64::NEG_INFINITY, |acc, &(alpha, log_qj)| {
                    let term = log_n + 2.0 * ((alpha as f64).log2() + log_qj) + ERR_VAR.log2()
                        - 2.0 * log_p;
                    log_add(acc, term)
                });
                0.5 * log_add(sum, round2.log2())
            })
            .collect();
        Self {
            log_n,
            log_t: (t as f64).log2(),
            tail_log2: tail.log2(),
            slot_tail_log2: slot_tail.log2(),
            log_q,
            ks_log2,
            fresh_pk_log2: fresh_pk.log2(),
            fresh_sk_log2: (ERR_VAR.sqrt() + 0.5).log2(),
            k_log2: ((1.0 / 12.0 + nf / 18.0).sqrt() + 0.5).log2(),
            round2_log2: 0.5 * round2.log2(),
            round3_log2: 0.5 * round3.log2(),
        }
    }

    /// Phase deviation (log2) → invariant-noise deviation at `level`: times `t/Q_l`.
    fn inv(&self, level: usize, phase_log2: f64) -> f64 {
        self.log_t - self.log_q[level] + phase_log2
    }

    /// Estimated budget in bits, `−log2(2·τ·σ)`, comparable with the measured
    /// `invariant_noise_budget` (but not clamped at 0).
    pub(crate) fn budget(&self, noise_log2: f64) -> f64 {
        -1.0 - self.tail_log2 - noise_log2
    }

    pub(crate) fn fresh_public(&self, level: usize) -> f64 {
        floor(self.inv(level, self.fresh_pk_log2))
    }

    pub(crate) fn fresh_symmetric(&self, level: usize) -> f64 {
        floor(self.inv(level, self.fresh_sk_log2))
    }

    pub(crate) fn add(&self, a: f64, b: f64) -> f64 {
        floor(log_add(a, b))
    }

    pub(crate) fn add_plain(&self, a: f64, level: usize) -> f64 {
        floor(log_add(a, self.inv(level, -1.0)))
    }

    /// `k` centered mod t.
    pub(crate) fn mul_scalar(&self, a: f64, k: i128) -> f64 {
        if k == 0 {
            return NOISE_LOG2_MIN;
        }
        floor(a + (k.unsigned_abs() as f64).log2())
    }

    /// `norm2_sq` = `Σ p_j²` over the centered plaintext coefficients.
    pub(crate) fn mul_plain(&self, a: f64, norm2_sq: f64) -> f64 {
        if norm2_sq <= 0.0 {
            return NOISE_LOG2_MIN;
        }
        floor(a + 0.5 * norm2_sq.log2())
    }

    /// HPS product of two size-2 ciphertexts at `level`.
    pub(crate) fn multiply(&self, a: f64, b: f64, level: usize) -> f64 {
        let half_n = 0.5 * self.log_n;
        let m_sd = self.log_t - 1.0;
        let can = half_n + self.slot_tail_log2;
        let terms = [
            half_n + m_sd + a,
            half_n + m_sd + b,
            can + a + b,
            can + self.log_t + self.k_log2 + a,
            can + self.log_t + self.k_log2 + b,
            self.inv(level, self.round3_log2),
        ];
        floor(terms.into_iter().fold(f64::NEG_INFINITY, log_add))
    }

    /// Relinearization or a rotation (one key switch) at `level`.
    pub(crate) fn key_switch(&self, a: f64, level: usize) -> f64 {
        floor(log_add(a, self.inv(level, self.ks_log2[level])))
    }

    /// Modulus switching of a size-`size` ciphertext down to level `to`.
    pub(crate) fn mod_switch(&self, a: f64, to: usize, size: usize) -> f64 {
        let r = if size > 2 {
            self.round3_log2
        } else {
            self.round2_log2
        };
        floor(log_add(a, self.inv(to, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_add_matches_direct_sum() {
        for (a, b) in [
            (0.0f64, 0.0f64),
            (3.0, -2.0),
            (-1500.0, -1501.0),
            (10.0, -1e9),
        ] {
            let want = if a > -1000.0 {
                (a.exp2() + b.exp2()).log2()
            } else {
                // 2^a (1 + 2^(b−a)) with b − a = −1
                a + 1.5f64.log2()
            };
            assert!((log_add(a, b) - want).abs() < 1e-9, "{a} {b}");
        }
        assert_eq!(log_add(f64::NEG_INFINITY, 2.0), 2.0);
    }

    #[test]
    fn decoded_estimates_are_validated() {
        assert!(validate_noise_log2(-30.0).is_ok());
        for bad in [f64::NAN, f64::INFINITY, -1e6, 100.0] {
            assert!(matches!(validate_noise_log2(bad), Err(Error::Decode(_))));
        }
    }
}
