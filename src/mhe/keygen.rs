//! Collective key generation: public key (CKG), relinearization key (RKG, two rounds) and
//! Galois keys (RTG), in the single-key formats of [`crate::rlwe::keys`].

use std::collections::HashMap;

use zeroize::Zeroizing;

use super::share::{Protocol, Share};
use super::{Crs, Party};
use crate::backend::Repr;
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::rlwe::keys::{gadget_samples, rlwe_sample, SecretPoly};
use crate::rlwe::{GaloisKeys, KeySwitchKey, PublicKey, RelinKey, RlweContext};

/// The common random polynomial a seed expands to over the full `QP` (NTT domain), exactly as
/// [`rlwe_sample`] expands it.
fn crp(ctx: &RlweContext, seed: [u8; 32]) -> Result<crate::backend::PolyBatch> {
    let limbs = ctx.qp_limbs(ctx.max_level());
    let moduli: Vec<_> = limbs.iter().map(|&l| *ctx.ring().modulus(l)).collect();
    let words = Sampler::uniform_from_seed(seed, &moduli, ctx.n());
    ctx.backend().upload(words, limbs, 1, ctx.n(), Repr::Ntt)
}

impl Party {
    fn share(&self, protocol: Protocol, parts: Vec<crate::backend::PolyBatch>) -> Share {
        Share {
            protocol,
            level: self.ctx.max_level(),
            parts,
            fingerprint: self.ctx.fingerprint(),
            key_id: self.crs.key_id(),
        }
    }

    /// CKG: `−a·s_i + e` over `QP` with `a` from the CRS. One polynomial.
    pub fn ckg_share(&mut self) -> Result<Share> {
        self.begin(Protocol::Ckg)?;
        let ctx = self.ctx.clone();
        let sample = rlwe_sample(
            &ctx,
            &self.secret.ntt,
            None,
            self.crs.ckg_seed(),
            &mut self.sampler,
        )?;
        let b = ctx.backend().slice_polys(&sample, 0, 1)?;
        Ok(self.share(Protocol::Ckg, vec![b]))
    }

    /// RKG round 1: per digit `j`, `(−u_i·a_j + s_i·w_j + e, s_i·a_j + e')` with a fresh
    /// ephemeral ternary `u_i`, kept (wiped on drop) for round 2.
    pub fn rkg_round1(&mut self) -> Result<Share> {
        self.begin(Protocol::RkgRound1)?;
        let ctx = self.ctx.clone();
        let be = ctx.backend();
        let limbs = ctx.qp_limbs(ctx.max_level());
        let u_small = Zeroizing::new(self.sampler.ternary(ctx.n()));
        let u_wide = Zeroizing::new(u_small.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let u: SecretPoly = Zeroizing::new(ctx.upload_signed_ntt(&u_wide, limbs)?);
        let crs = self.crs;
        // h0_j: an encryption of the gadget message of s_i under u_i (the single-key path).
        let h0 = gadget_samples(
            &ctx,
            &u,
            &self.secret.ntt,
            |j, _| crs.rkg_seed(j),
            &mut self.sampler,
        )?;
        let mut neg_s: SecretPoly = Zeroizing::new(self.secret.ntt.clone());
        be.neg_assign(ctx.ring(), &mut neg_s)?;
        let mut parts = Vec::with_capacity(h0.len());
        for (j, (pair, _)) in h0.into_iter().enumerate() {
            // h1_j = −a_j·(−s_i) + e = s_i·a_j + e.
            let h1 = rlwe_sample(&ctx, &neg_s, None, crs.rkg_seed(j), &mut self.sampler)?;
            parts.push(be.concat(&[&be.slice_polys(&pair, 0, 1)?, &be.slice_polys(&h1, 0, 1)?])?);
        }
        self.rkg_u = Some(u);
        Ok(self.share(Protocol::RkgRound1, parts))
    }

    /// RKG round 2, from the aggregate of every party's round 1 `(h0_j, h1_j)`:
    /// `s_i·h0_j + (u_i − s_i)·h1_j + e` per digit (one polynomial per digit, where Lattigo
    /// sends two and sums them at the combiner).
    pub fn rkg_round2(&mut self, round1: &Share) -> Result<Share> {
        let ctx = self.ctx.clone();
        round1.expect(
            &ctx,
            Protocol::RkgRound1,
            ctx.max_level(),
            self.crs.key_id(),
        )?;
        if self.rkg_u.is_none() {
            return Err(Error::Multiparty(
                "RKG round 2 before this party's round 1".into(),
            ));
        }
        self.begin(Protocol::RkgRound2)?;
        let u = self.rkg_u.take().expect("checked above");
        let be = ctx.backend();
        let ring = ctx.ring();
        let mut u_minus_s: SecretPoly = u;
        be.sub_assign(ring, &mut u_minus_s, &self.secret.ntt)?;
        let limbs = ctx.qp_limbs(ctx.max_level());
        let mut parts = Vec::with_capacity(round1.parts.len());
        for pair in &round1.parts {
            let e_small = Zeroizing::new(self.sampler.cbd(ctx.n()));
            let e: Zeroizing<Vec<i64>> =
                Zeroizing::new(e_small.iter().map(|&x| x as i64).collect());
            let mut out = ctx.upload_signed_ntt(&e, limbs.clone())?;
            be.mul_acc(
                ring,
                &mut out,
                &be.slice_polys(pair, 0, 1)?,
                &self.secret.ntt,
            )?;
            be.mul_acc(ring, &mut out, &be.slice_polys(pair, 1, 1)?, &u_minus_s)?;
            parts.push(out);
        }
        Ok(self.share(Protocol::RkgRound2, parts))
    }

    /// RTG for Galois element `galois`: per digit, `−a_j·s_i + s_i(X^g)·w_j + e` with `a_j`
    /// from the CRS (the single-key generation's code path with common seeds).
    pub fn rtg_share(&mut self, galois: usize) -> Result<Share> {
        let protocol = Protocol::Rtg { galois };
        protocol.validate(self.ctx.n())?;
        self.begin(protocol)?;
        let ctx = self.ctx.clone();
        let be = ctx.backend();
        let sg = self.secret.automorphism(&ctx, galois)?;
        let crs = self.crs;
        let samples = gadget_samples(
            &ctx,
            &self.secret.ntt,
            &sg,
            |j, _| crs.rtg_seed(galois, j),
            &mut self.sampler,
        )?;
        let parts = samples
            .iter()
            .map(|(pair, _)| be.slice_polys(pair, 0, 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.share(protocol, parts))
    }
}

/// The collective public key `(Σ_i (−a·s_i + e_i), a)` from the aggregated CKG shares; it
/// keeps the CRS seed of `a`, so it serializes as compactly as a single-key public key.
pub fn ckg_finalize(ctx: &RlweContext, crs: &Crs, agg: &Share) -> Result<PublicKey> {
    agg.expect(ctx, Protocol::Ckg, ctx.max_level(), crs.key_id())?;
    let seed = crs.ckg_seed();
    let a = crp(ctx, seed)?;
    Ok(PublicKey {
        polys: ctx.backend().concat(&[&agg.parts[0], &a])?,
        fingerprint: ctx.fingerprint(),
        seed: Some(seed),
        key_id: crs.key_id(),
    })
}

/// The collective relinearization key from the aggregated rounds: digit `j` is
/// `(Σ round2_j, Σ h1_j)`, and `b + a·s = s²·w_j + s·e_0 + u·e_1 + e_2` with `s = Σ s_i`,
/// `u = Σ u_i`: the single-key format, so [`crate::rlwe::ciphertext::relinearize`] uses it.
pub fn rkg_finalize(ctx: &RlweContext, round1: &Share, round2: &Share) -> Result<RelinKey> {
    let key_id = round1.key_id;
    round1.expect(ctx, Protocol::RkgRound1, ctx.max_level(), key_id)?;
    round2.expect(ctx, Protocol::RkgRound2, ctx.max_level(), key_id)?;
    let be = ctx.backend();
    let digits = round2
        .parts
        .iter()
        .zip(&round1.parts)
        .map(|(b, pair)| be.concat(&[b, &be.slice_polys(pair, 1, 1)?]))
        .collect::<Result<Vec<_>>>()?;
    Ok(RelinKey(KeySwitchKey {
        seeds: vec![None; digits.len()],
        digits,
        fingerprint: ctx.fingerprint(),
        key_id,
    }))
}

/// Galois keys from the aggregated RTG shares (one aggregate per element); the digits keep
/// their CRS seeds.
pub fn rtg_finalize(ctx: &RlweContext, crs: &Crs, aggs: &[Share]) -> Result<GaloisKeys> {
    let be = ctx.backend();
    let mut keys = HashMap::new();
    for agg in aggs {
        let Protocol::Rtg { galois } = agg.protocol else {
            return Err(Error::Multiparty(format!(
                "expected Galois key shares, got {:?}",
                agg.protocol
            )));
        };
        agg.expect(ctx, agg.protocol, ctx.max_level(), crs.key_id())?;
        let mut digits = Vec::with_capacity(agg.parts.len());
        let mut seeds = Vec::with_capacity(agg.parts.len());
        for (j, b) in agg.parts.iter().enumerate() {
            let seed = crs.rtg_seed(galois, j);
            digits.push(be.concat(&[b, &crp(ctx, seed)?])?);
            seeds.push(Some(seed));
        }
        keys.insert(
            galois,
            KeySwitchKey {
                digits,
                fingerprint: ctx.fingerprint(),
                seeds,
                key_id: crs.key_id(),
            },
        );
    }
    Ok(GaloisKeys { keys })
}
