//! Homomorphic operations on BFV ciphertexts.
//!
//! Operands at different levels are brought to the lower one by modulus switching (which is
//! exact for BFV: it scales the ciphertext by `Q'/Q` with rounding and keeps the plaintext), so
//! callers never have to align levels by hand.
//!
//! Every operation updates the ciphertext's noise estimate ([`crate::bfv::noise`]) and returns
//! `Error::NoiseBudgetExhausted` rather than a ciphertext that would no longer decrypt; only
//! [`BfvContext::multiply_relin_unchecked`] skips the check.

use std::sync::Arc;

use crate::backend::{PolyBatch, Repr};
use crate::bfv::context::{BfvContext, Ciphertext, Plaintext};
use crate::error::{Error, Result};
use crate::math::{Modulus, ScaleRounder};
use crate::rlwe::ciphertext as rct;
use crate::rlwe::keys::{galois_element_conjugate, galois_element_for_step};
use crate::rlwe::{GaloisKeys, RelinKey};

impl BfvContext {
    /// Brings two operands to a common level (the lower one).
    fn align<'a>(
        &self,
        a: &'a Ciphertext,
        b: &'a Ciphertext,
    ) -> Result<(
        std::borrow::Cow<'a, Ciphertext>,
        std::borrow::Cow<'a, Ciphertext>,
    )> {
        use std::borrow::Cow;
        self.check_ct(a, "left operand")?;
        self.check_ct(b, "right operand")?;
        crate::rlwe::ciphertext::check_key_id(a.inner.key_id, b.inner.key_id, "right operand")?;
        Ok(match a.level().cmp(&b.level()) {
            std::cmp::Ordering::Equal => (Cow::Borrowed(a), Cow::Borrowed(b)),
            std::cmp::Ordering::Greater => (
                Cow::Owned(self.mod_switch_to(a, b.level())?),
                Cow::Borrowed(b),
            ),
            std::cmp::Ordering::Less => (
                Cow::Borrowed(a),
                Cow::Owned(self.mod_switch_to(b, a.level())?),
            ),
        })
    }

    /// `a + b` (sizes may differ; the result has the larger one).
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (a, b) = self.align(a, b)?;
        let noise = self.noise.add(a.noise_log2, b.noise_log2);
        let out = rct::add_ciphertexts(&self.rlwe, &a.inner, &b.inner, false)?;
        self.wrap_checked(out, noise, "add")
    }

    /// `a − b`.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (a, b) = self.align(a, b)?;
        let noise = self.noise.add(a.noise_log2, b.noise_log2);
        let out = rct::add_ciphertexts(&self.rlwe, &a.inner, &b.inner, true)?;
        self.wrap_checked(out, noise, "sub")
    }

    /// `−a`.
    pub fn negate(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.check_ct(a, "ciphertext")?;
        Ok(self.wrap(rct::negate(&self.rlwe, &a.inner)?, a.noise_log2))
    }

    /// Adds `p` (NTT domain, one polynomial at the ciphertext's level) to `c_0`.
    fn add_to_c0(&self, ct: &Ciphertext, p: &PolyBatch, subtract: bool) -> Result<Ciphertext> {
        let noise = self.noise.add_plain(ct.noise_log2, ct.level());
        let be = self.rlwe.backend();
        let ring = self.rlwe.ring();
        let polys = &ct.inner.polys;
        let mut c0 = be.slice_polys(polys, 0, 1)?;
        if subtract {
            be.sub_assign(ring, &mut c0, p)?;
        } else {
            be.add_assign(ring, &mut c0, p)?;
        }
        let rest = be.slice_polys(polys, 1, ct.size() - 1)?;
        let out = be.concat(&[&c0, &rest])?;
        let op = if subtract { "sub_plain" } else { "add_plain" };
        self.wrap_checked(ct.inner.derive(out, 1.0), noise, op)
    }

    /// `ct + pt` (adds no noise beyond rounding).
    pub fn add_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let m = self.scaled_message(pt, ct.level())?;
        self.add_to_c0(ct, &m, false)
    }

    /// `ct − pt`.
    pub fn sub_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let m = self.scaled_message(pt, ct.level())?;
        self.add_to_c0(ct, &m, true)
    }

    /// `ct · pt` slot-wise. The noise is multiplied by `‖p‖₂` (about `√N·t/√12` for random
    /// slots, much less than a ciphertext product) and no relinearization is needed.
    pub fn multiply_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let (p, norm2_sq) = self.lifted_plain(pt, ct.level())?;
        let mut out = ct.inner.polys.clone();
        self.rlwe
            .backend()
            .mul_assign(self.rlwe.ring(), &mut out, &p)?;
        let noise = self.noise.mul_plain(ct.noise_log2, norm2_sq);
        self.wrap_checked(ct.inner.derive(out, 1.0), noise, "multiply_plain")
    }

    /// `ct · k` in every slot, `k` taken mod t (centered, so small negative scalars add little
    /// noise).
    pub fn multiply_scalar(&self, ct: &Ciphertext, k: i64) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let t = self.t as i128;
        let mut r = (k as i128).rem_euclid(t);
        if r > t / 2 {
            r -= t;
        }
        let ring = self.rlwe.ring();
        let s: Vec<u32> = ct
            .inner
            .polys
            .limbs()
            .iter()
            .map(|&l| ring.modulus(l).reduce_i64(r as i64))
            .collect();
        let mut out = ct.inner.polys.clone();
        self.rlwe.backend().mul_scalar_assign(ring, &mut out, &s)?;
        let noise = self.noise.mul_scalar(ct.noise_log2, r);
        self.wrap_checked(ct.inner.derive(out, 1.0), noise, "multiply_scalar")
    }

    /// The HPS scale-and-round tables of `level` (built once).
    fn rounder(&self, level: usize) -> Arc<ScaleRounder> {
        self.mul_tables[level]
            .get_or_init(|| {
                let ring = self.rlwe.ring();
                let m = |ls: &[usize]| {
                    ls.iter()
                        .map(|&i| *ring.modulus(i))
                        .collect::<Vec<Modulus>>()
                };
                Arc::new(ScaleRounder::new(
                    &m(&self.rlwe.q_limbs(level)),
                    &m(&self.rlwe.aux_limbs()),
                    self.t,
                ))
            })
            .clone()
    }

    /// Extends an NTT-domain batch over `Q_l` to `Q_l ∪ B` (NTT domain): the centered
    /// coefficients are converted exactly, so the tensor product below is the integer one.
    fn extend_to_aux(&self, polys: &PolyBatch) -> Result<PolyBatch> {
        let be = self.rlwe.backend();
        let ring = self.rlwe.ring();
        let q = polys.limbs_arc();
        let aux = self.rlwe.aux_limbs();
        let mut c = polys.clone();
        be.ntt_inverse(ring, &mut c)?;
        let conv = self.rlwe.converter(&q, &aux);
        let mut ext = be.base_convert(ring, &c, aux, &conv, true)?;
        be.ntt_forward(ring, &mut ext)?;
        be.concat_limbs(polys, &ext)
    }

    /// Ciphertext product without relinearization (the result has 3 polynomials; relinearize
    /// it, or keep accumulating degree-2 terms and relinearize once).
    ///
    /// Halevi-Polyakov-Shoup, integers only: both operands are extended exactly from `Q` to
    /// `Q ∪ B`, multiplied there (NTT), and `round(t·d/Q)` is computed in `B` by the backend's
    /// [`crate::backend::Backend::scale_and_round`], then converted exactly back to `Q`.
    pub fn multiply(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (inner, noise) = self.multiply_impl(a, b)?;
        self.wrap_checked(inner, noise, "multiply")
    }

    /// The product and its noise estimate, unchecked.
    fn multiply_impl(&self, a: &Ciphertext, b: &Ciphertext) -> Result<(rct::Ciphertext, f64)> {
        let (a, b) = self.align(a, b)?;
        if a.size() != 2 || b.size() != 2 {
            return Err(Error::CiphertextSize(format!(
                "multiply needs relinearized (size-2) operands, got sizes {} and {}; call `relinearize` first",
                a.size(),
                b.size()
            )));
        }
        let level = a.level();
        let be = self.rlwe.backend();
        let ring = self.rlwe.ring();
        let ea = self.extend_to_aux(&a.inner.polys)?;
        let eb = if std::ptr::eq(a.as_ref(), b.as_ref()) {
            ea.clone()
        } else {
            self.extend_to_aux(&b.inner.polys)?
        };
        let mut d = rct::tensor_polys(&self.rlwe, &ea, &eb)?;
        be.ntt_inverse(ring, &mut d)?;
        let aux = self.rlwe.aux_limbs();
        let z = be.scale_and_round(ring, &d, aux.clone(), &self.rounder(level))?;
        let q = self.rlwe.q_limbs(level);
        let conv = self.rlwe.converter(&aux, &q);
        let mut out = be.base_convert(ring, &z, q, &conv, true)?;
        be.ntt_forward(ring, &mut out)?;
        let noise = self.noise.multiply(a.noise_log2, b.noise_log2, level);
        Ok((a.inner.derive(out, 1.0), noise))
    }

    /// `a²` (size 3).
    pub fn square(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.multiply(a, a)
    }

    /// Relinearizes a size-3 ciphertext back to size 2 (a size-2 one is returned unchanged).
    pub fn relinearize(&self, ct: &Ciphertext, rk: &RelinKey) -> Result<Ciphertext> {
        let (inner, noise) = self.relinearize_impl(ct, rk)?;
        self.wrap_checked(inner, noise, "relinearize")
    }

    fn relinearize_impl(&self, ct: &Ciphertext, rk: &RelinKey) -> Result<(rct::Ciphertext, f64)> {
        self.check_ct(ct, "ciphertext")?;
        self.rlwe
            .check_fingerprint(rk.0.fingerprint, "relinearization key")?;
        if ct.size() == 2 {
            return Ok((ct.inner.clone(), ct.noise_log2));
        }
        let noise = self.noise.key_switch(ct.noise_log2, ct.level());
        Ok((rct::relinearize(&self.rlwe, &ct.inner, rk)?, noise))
    }

    /// `relinearize(multiply(a, b))`.
    pub fn multiply_relin(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
        rk: &RelinKey,
    ) -> Result<Ciphertext> {
        self.relinearize(&self.multiply(a, b)?, rk)
    }

    /// [`Self::multiply_relin`] that records the noise estimate but never refuses the result
    /// for it, even when the estimate says it will not decrypt. For experiments that measure
    /// the real budget with the secret key ([`Self::invariant_noise_budget`]) past the point the
    /// conservative estimate gives up; [`Self::decrypt`] still refuses a result whose measured
    /// noise is too large, and every checked operation refuses to continue from it.
    pub fn multiply_relin_unchecked(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
        rk: &RelinKey,
    ) -> Result<Ciphertext> {
        let (inner, noise) = self.multiply_impl(a, b)?;
        let prod = self.wrap(inner, noise);
        let (inner, noise) = self.relinearize_impl(&prod, rk)?;
        Ok(self.wrap(inner, noise))
    }

    /// Rotates both rows of the slot matrix cyclically by `step` (positive = left: slot `i`
    /// receives slot `i + step`). Needs the Galois key for that step
    /// ([`Self::gen_galois_keys`]); `Error::MissingGaloisKey` otherwise.
    pub fn rotate_rows(&self, ct: &Ciphertext, step: i64, gk: &GaloisKeys) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let g = galois_element_for_step(self.n(), step);
        if g == 1 {
            return Ok(ct.clone());
        }
        let noise = self.noise.key_switch(ct.noise_log2, ct.level());
        let out = rct::apply_galois(&self.rlwe, &ct.inner, g, gk, Some(step))?;
        self.wrap_checked(out, noise, "rotate_rows")
    }

    /// Swaps the two rows of the slot matrix (Galois element 2N − 1).
    pub fn rotate_columns(&self, ct: &Ciphertext, gk: &GaloisKeys) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let g = galois_element_conjugate(self.n());
        let noise = self.noise.key_switch(ct.noise_log2, ct.level());
        let out = rct::apply_galois(&self.rlwe, &ct.inner, g, gk, None)?;
        self.wrap_checked(out, noise, "rotate_columns")
    }

    /// Modulus switching to a lower `level`: `c ↦ round(c·Q'/Q)`, dropping the top primes.
    /// The plaintext is unchanged; the noise shrinks with Q (plus a small rounding term), so
    /// the budget is kept while ciphertexts get smaller and later operations cheaper.
    pub fn mod_switch_to(&self, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
        self.check_ct(ct, "ciphertext")?;
        let cur = ct.level();
        if level > cur {
            return Err(Error::InvalidInput(format!(
                "cannot mod-switch a ciphertext up from level {cur} to {level}"
            )));
        }
        if level == cur {
            return Ok(ct.clone());
        }
        let drop: Arc<[usize]> = (level + 1..=cur).collect();
        let polys = self
            .rlwe
            .mod_down(&ct.inner.polys, self.rlwe.q_limbs(level), drop)?;
        debug_assert_eq!(polys.repr(), Repr::Ntt);
        let noise = self.noise.mod_switch(ct.noise_log2, level, ct.size());
        self.wrap_checked(ct.inner.derive(polys, 1.0), noise, "mod_switch_to")
    }

    /// Modulus switching down by one prime; `Error::OutOfLevels` at level 0.
    pub fn mod_switch_to_next(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        if ct.level() == 0 {
            return Err(Error::OutOfLevels {
                op: "mod_switch_to_next",
                level: 0,
            });
        }
        self.mod_switch_to(ct, ct.level() - 1)
    }
}
