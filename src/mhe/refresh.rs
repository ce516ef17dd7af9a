//! Collective refresh (masked re-encryption, Lattigo's `RefreshProtocol`): a ciphertext at a
//! low level comes back at the top level, and no party (nor the combiner) sees its plaintext.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::share::{Protocol, Share};
use super::{Crs, Party};
use crate::backend::Repr;
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::rlwe::ciphertext::check_key_id;
use crate::rlwe::keys::{rlwe_sample, SecretPoly};
use crate::rlwe::{Ciphertext, RlweContext};

/// How a refresh masks the message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefreshParams {
    /// Statistical security of the masking (bits); 40 by default.
    pub lambda: u32,
    /// log2 of a bound on the coefficients of the phase `m + e` (CKKS: about
    /// `log2(scale · max |value|)` plus a bit or two; the encoder's coefficients are at most
    /// `scale · max |value|`).
    pub message_log2: f64,
    /// Number of parties (each adds a mask).
    pub parties: usize,
}

impl RefreshParams {
    /// `λ = 40` masking for `parties` parties and phase coefficients below `2^message_log2`.
    pub fn new(parties: usize, message_log2: f64) -> Self {
        Self {
            lambda: super::Smudging::DEFAULT_LAMBDA,
            message_log2,
            parties,
        }
    }

    /// Bits of each party's mask: `⌈λ + log2 N + message_log2⌉`, so that `M_i` hides `m + e`
    /// within statistical distance `2^−λ` (smudging lemma, union bound over N coefficients).
    pub fn mask_bits(&self, n: usize) -> Result<u32> {
        let b = (self.lambda as f64 + (n as f64).log2() + self.message_log2.max(0.0)).ceil();
        if !b.is_finite() || b > 120.0 || self.parties == 0 {
            return Err(Error::InvalidInput(format!(
                "refresh masks of 2^{b} bits for {} parties",
                self.parties
            )));
        }
        Ok(b as u32)
    }

    /// Least `log2 Q_ℓ` the input level needs: `mask_bits + log2 K + 2`, so that
    /// `m + e − Σ M_i` stays inside `(−Q_ℓ/4, Q_ℓ/4)` and lifts to the top exactly.
    pub fn min_log_q(&self, n: usize) -> Result<f64> {
        Ok(self.mask_bits(n)? as f64 + (self.parties as f64).log2() + 2.0)
    }
}

fn log_q(ctx: &RlweContext, level: usize) -> f64 {
    ctx.q_limbs(level)
        .iter()
        .map(|&l| (ctx.ring().modulus(l).value() as f64).log2())
        .sum()
}

/// The lowest level a refresh with `params` can start from, or `None` if even the top level
/// is too small (more primes, fewer bits of message, or fewer parties).
pub fn min_refresh_level(ctx: &RlweContext, params: &RefreshParams) -> Result<Option<usize>> {
    let need = params.min_log_q(ctx.n())?;
    Ok((0..=ctx.max_level()).find(|&l| log_q(ctx, l) >= need))
}

impl Party {
    /// Refresh share for `ct` (size 2, collective key set, at level ℓ) in run `run`:
    /// `h0 = c_1·s_i − M_i + e` over `Q_ℓ` and `h1 = −a·s_i + M_i + e'` over `Q_L`, with `a`
    /// from the CRS for this run and a fresh mask `M_i` ([`RefreshParams::mask_bits`]).
    pub fn refresh_share(
        &mut self,
        ct: &Ciphertext,
        run: u64,
        params: &RefreshParams,
    ) -> Result<Share> {
        let ctx = self.ctx.clone();
        ctx.check_fingerprint(ct.fingerprint, "ciphertext")?;
        check_key_id(self.crs.key_id(), ct.key_id, "ciphertext")?;
        if ct.size() != 2 {
            return Err(Error::CiphertextSize(
                "refresh needs a relinearized (size-2) ciphertext".into(),
            ));
        }
        let level = ct.level();
        let need = params.min_log_q(ctx.n())?;
        if log_q(&ctx, level) < need {
            return Err(Error::Multiparty(format!(
                "refresh at level {level} (log2 Q = {:.1}) cannot mask the message: {} \
                 parties with {}-bit masks need log2 Q ≥ {need:.1}; refresh earlier (level {})",
                log_q(&ctx, level),
                params.parties,
                params.mask_bits(ctx.n())?,
                min_refresh_level(&ctx, params)?
                    .map_or("none: the chain is too short".into(), |l| l.to_string())
            )));
        }
        let protocol = Protocol::Refresh { run };
        protocol.validate(ctx.n())?;
        self.begin(protocol)?;
        let be = ctx.backend();
        let ring = ctx.ring();
        let top = ctx.q_limbs(ctx.max_level());
        let limbs = ct.polys.limbs_arc();
        let mask = Zeroizing::new(
            self.sampler
                .uniform_signed_bits(ctx.n(), params.mask_bits(ctx.n())?),
        );
        let m_top: SecretPoly = Zeroizing::new(ctx.upload_wide_ntt(&mask, top.clone())?);
        // h1 = −a·s_i + e' + M_i over Q_L (the single-key sampling path with the run's CRP).
        let s_top: SecretPoly = self.share_on(top)?;
        let h1 = rlwe_sample(
            &ctx,
            &s_top,
            Some(&m_top),
            self.crs.refresh_seed(run),
            &mut self.sampler,
        )?;
        let h1 = be.slice_polys(&h1, 0, 1)?;
        // h0 = c_1·s_i − M_i + e over Q_ℓ.
        let e_small = Zeroizing::new(self.sampler.cbd(ctx.n()));
        let e: Zeroizing<Vec<i64>> = Zeroizing::new(e_small.iter().map(|&x| x as i64).collect());
        let mut h0 = ctx.upload_signed_ntt(&e, limbs.clone())?;
        be.sub_assign(ring, &mut h0, &be.select_limbs(&m_top, limbs.clone())?)?;
        let s: SecretPoly = self.share_on(limbs)?;
        be.mul_acc(ring, &mut h0, &be.slice_polys(&ct.polys, 1, 1)?, &s)?;
        Ok(Share {
            protocol,
            level,
            parts: vec![h0, h1],
            fingerprint: ctx.fingerprint(),
            key_id: self.crs.key_id(),
        })
    }
}

/// The refreshed ciphertext at the top level from the aggregated refresh shares of run `run`:
/// `x = c_0 + Σ h0_i = m + e − Σ M_i` (small enough to lift exactly from `Q_ℓ` to `Q_L`), then
/// `(x + Σ h1_i, a)`, which decrypts to `m + e + Σ(e_i + e'_i)`. The value and scale are kept;
/// `c_1 = a` is the CRS expansion, so the result serializes seeded.
pub fn refresh_finalize(
    ctx: &RlweContext,
    crs: &Crs,
    ct: &Ciphertext,
    agg: &Share,
    run: u64,
) -> Result<Ciphertext> {
    ctx.check_fingerprint(ct.fingerprint, "ciphertext")?;
    check_key_id(crs.key_id(), ct.key_id, "ciphertext")?;
    agg.expect(ctx, Protocol::Refresh { run }, ct.level(), crs.key_id())?;
    let be = ctx.backend();
    let ring = ctx.ring();
    let level = ct.level();
    let top_level = ctx.max_level();
    let top = ctx.q_limbs(top_level);
    let mut x = be.slice_polys(&ct.polys, 0, 1)?;
    be.add_assign(ring, &mut x, &agg.parts[0])?;
    let mut x_top = if level == top_level {
        x
    } else {
        // Centered (exact) base extension of the masked phase to the primes above ℓ (by limb,
        // not by level: a level may be several primes).
        let from = ctx.q_limbs(level);
        let rest: Arc<[usize]> = top.iter().copied().filter(|l| !from.contains(l)).collect();
        be.ntt_inverse(ring, &mut x)?;
        let conv = ctx.converter(&from, &rest);
        let mut ext = be.base_convert(ring, &x, rest, &conv, true)?;
        be.ntt_forward(ring, &mut ext)?;
        be.ntt_forward(ring, &mut x)?;
        be.concat_limbs(&x, &ext)?
    };
    be.add_assign(ring, &mut x_top, &agg.parts[1])?;
    let seed = crs.refresh_seed(run);
    let moduli: Vec<_> = top.iter().map(|&l| *ring.modulus(l)).collect();
    let a = be.upload(
        Sampler::uniform_from_seed(seed, &moduli, ctx.n()),
        top,
        1,
        ctx.n(),
        Repr::Ntt,
    )?;
    let mut out = ct.derive(be.concat(&[&x_top, &a])?, ct.scale);
    out.seed = Some(seed);
    Ok(out)
}
