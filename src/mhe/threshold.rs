//! t-out-of-N thresholds with Shamir shares (Mouchet et al.'s extension, ePrint 2022/780, as in
//! Lattigo's `threshold.go`): after the N-out-of-N key generation, each party Shamir-shares its
//! `s_i` with a random polynomial of degree `t − 1` over `R_QP`; party `j` sums what it receives
//! into its threshold secret `Σ_i P_i(x_j)`. Any `t` parties then turn that into additive shares
//! of the same ideal key, `λ_j·Σ_i P_i(x_j)` with the Lagrange coefficients of the active set,
//! and run the ordinary N-out-of-N protocols among themselves: training survives absent parties.

use zeroize::Zeroizing;

use super::Party;
use crate::backend::Repr;
use crate::error::{Error, Result};
use crate::rlwe::keys::SecretPoly;
use crate::rlwe::{RlweContext, SecretKey};

/// One Shamir share `P_i(x_j)` of a party's secret, for the party at point `x_j`: secret
/// material for one recipient over a private channel (never serialized here; wiped on drop).
pub struct ShamirShare {
    pub(crate) point: u64,
    pub(crate) value: SecretPoly,
    pub(crate) fingerprint: u64,
    pub(crate) key_id: u64,
}

impl std::fmt::Debug for ShamirShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShamirShare(<redacted>, for point {})", self.point)
    }
}

impl ShamirShare {
    /// The recipient's public point.
    pub fn point(&self) -> u64 {
        self.point
    }
}

/// A party's threshold secret `Σ_i P_i(x_j)` at its public point `x_j` (wiped on drop).
pub struct ThresholdSecret {
    point: u64,
    value: SecretPoly,
    fingerprint: u64,
    key_id: u64,
}

impl std::fmt::Debug for ThresholdSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThresholdSecret(<redacted>, point {})", self.point)
    }
}

impl ThresholdSecret {
    /// This party's public point.
    pub fn point(&self) -> u64 {
        self.point
    }
}

/// Points must be distinct, nonzero and below every prime (so they stay distinct and
/// invertible differences mod each `q`).
fn check_points(ctx: &RlweContext, points: &[u64]) -> Result<()> {
    let q_min = ctx
        .qp_limbs(ctx.max_level())
        .iter()
        .map(|&l| ctx.ring().modulus(l).value() as u64)
        .min()
        .unwrap_or(0);
    let mut seen = std::collections::HashSet::new();
    for &x in points {
        if x == 0 || x >= q_min || !seen.insert(x) {
            return Err(Error::Multiparty(format!(
                "Shamir points must be distinct, nonzero and below {q_min}; got {points:?}"
            )));
        }
    }
    Ok(())
}

impl Party {
    /// Setup round of a `t`-out-of-`points.len()` threshold: this party's share `s_i` is the
    /// constant term of a random polynomial `P_i` of degree `t − 1` over `R_QP`; returns
    /// `P_i(x)` for every public point `x` (one per party, this one's included), each to be
    /// sent privately to that party. Run once per party (a second run would leak through the
    /// differences of the polynomials).
    pub fn shamir_shares(&mut self, t: usize, points: &[u64]) -> Result<Vec<ShamirShare>> {
        let ctx = self.ctx.clone();
        check_points(&ctx, points)?;
        if t == 0 || t > points.len() {
            return Err(Error::Multiparty(format!(
                "threshold t = {t} must be in 1..={} parties",
                points.len()
            )));
        }
        if self.shamir_done {
            return Err(Error::Multiparty(
                "this party already Shamir-shared its secret; a second sharing with fresh \
                 polynomials would reveal it"
                    .into(),
            ));
        }
        self.shamir_done = true;
        let be = ctx.backend();
        let ring = ctx.ring();
        let limbs = ctx.qp_limbs(ctx.max_level());
        let moduli: Vec<_> = limbs.iter().map(|&l| *ring.modulus(l)).collect();
        // Coefficients a_1..a_{t−1}, uniform in R_QP (uniform NTT values are uniform elements).
        let mut coeffs: Vec<SecretPoly> = Vec::with_capacity(t - 1);
        for _ in 1..t {
            let words = Zeroizing::new(self.sampler.uniform(&moduli, ctx.n()));
            coeffs.push(Zeroizing::new(be.upload(
                words.to_vec(),
                limbs.clone(),
                1,
                ctx.n(),
                Repr::Ntt,
            )?));
        }
        points
            .iter()
            .map(|&x| {
                // Horner: ((a_{t−1}·x + a_{t−2})·x + … + a_1)·x + s_i.
                let xs: Vec<u32> = moduli.iter().map(|m| m.reduce_u64(x)).collect();
                let mut acc: SecretPoly =
                    Zeroizing::new(be.zeros(limbs.clone(), 1, ctx.n(), Repr::Ntt)?);
                for a in coeffs.iter().rev() {
                    be.add_assign(ring, &mut acc, a)?;
                    be.mul_scalar_assign(ring, &mut acc, &xs)?;
                }
                be.add_assign(ring, &mut acc, &self.secret.ntt)?;
                Ok(ShamirShare {
                    point: x,
                    value: acc,
                    fingerprint: ctx.fingerprint(),
                    key_id: self.crs.key_id(),
                })
            })
            .collect()
    }

    /// This party's threshold secret at `point` from the Shamir shares every party sent it
    /// (its own included).
    pub fn threshold_secret(
        &self,
        point: u64,
        received: &[ShamirShare],
    ) -> Result<ThresholdSecret> {
        let ctx = &self.ctx;
        let be = ctx.backend();
        let mut acc: SecretPoly =
            Zeroizing::new(be.zeros(ctx.qp_limbs(ctx.max_level()), 1, ctx.n(), Repr::Ntt)?);
        if received.is_empty() {
            return Err(Error::Multiparty("no Shamir shares received".into()));
        }
        for s in received {
            ctx.check_fingerprint(s.fingerprint, "Shamir share")?;
            crate::rlwe::ciphertext::check_key_id(self.crs.key_id(), s.key_id, "Shamir share")?;
            if s.point != point {
                return Err(Error::Multiparty(format!(
                    "Shamir share for point {} received by the party at point {point}",
                    s.point
                )));
            }
            be.add_assign(ctx.ring(), &mut acc, &s.value)?;
        }
        Ok(ThresholdSecret {
            point,
            value: acc,
            fingerprint: ctx.fingerprint(),
            key_id: self.crs.key_id(),
        })
    }

    /// A party of the active set `active` (the public points of the `t` parties taking part,
    /// this one's included): its share becomes `λ_j·Σ_i P_i(x_j)`, an additive share of the
    /// same ideal key, so every N-out-of-N protocol runs unchanged among the active parties.
    /// The share is uniform modulo `QP` (not small, not ternary): it cannot be serialized as a
    /// secret key. The record of answered runs is kept.
    pub fn activate_threshold(&mut self, tsk: &ThresholdSecret, active: &[u64]) -> Result<()> {
        let ctx = self.ctx.clone();
        ctx.check_fingerprint(tsk.fingerprint, "threshold secret")?;
        crate::rlwe::ciphertext::check_key_id(self.crs.key_id(), tsk.key_id, "threshold secret")?;
        check_points(&ctx, active)?;
        if !active.contains(&tsk.point) {
            return Err(Error::Multiparty(format!(
                "the active set {active:?} does not include this party's point {}",
                tsk.point
            )));
        }
        let ring = ctx.ring();
        let lambda: Vec<u32> = ctx
            .qp_limbs(ctx.max_level())
            .iter()
            .map(|&l| {
                let m = ring.modulus(l);
                let xj = m.reduce_u64(tsk.point);
                active
                    .iter()
                    .filter(|&&x| x != tsk.point)
                    .fold(1u32, |acc, &x| {
                        let xk = m.reduce_u64(x);
                        let inv = m.inv(m.sub(xk, xj)).unwrap_or(0);
                        m.mul(acc, m.mul(xk, inv))
                    })
            })
            .collect();
        // Becomes the secret key's own buffer, wiped with it.
        let mut ntt = (*tsk.value).clone();
        ctx.backend().mul_scalar_assign(ring, &mut ntt, &lambda)?;
        self.secret = SecretKey {
            coeffs: Vec::new(),
            ntt,
            fingerprint: ctx.fingerprint(),
            key_id: self.crs.key_id(),
        };
        self.rkg_u = None;
        Ok(())
    }
}

/// Draws fresh public points `1..=n` (the convention: party `j` sits at `j + 1`).
pub fn shamir_points(n: usize) -> Vec<u64> {
    (1..=n as u64).collect()
}
