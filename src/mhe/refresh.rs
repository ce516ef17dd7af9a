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
        if !b.is_finite() || b > MAX_MASK_BITS as f64 || self.parties == 0 {
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

/// Widest mask [`sample_mask`] draws (a 128-bit high part over 64 low bits).
const MAX_MASK_BITS: u32 = 188;

/// A uniform mask in `[−2^bits, 2^bits)` on `limbs` (NTT domain). Up to 2^126 it is one
/// 128-bit integer per coefficient; wider (the phase of a CKKS ciphertext at Δ ≥ 2^72) it is
/// a uniform high part times 2^64 plus 64 uniform low bits, which is uniform on the same range.
fn sample_mask(
    ctx: &RlweContext,
    sampler: &mut Sampler,
    bits: u32,
    limbs: Arc<[usize]>,
) -> Result<crate::backend::PolyBatch> {
    let n = ctx.n();
    if bits <= 126 {
        let mask = Zeroizing::new(sampler.uniform_signed_bits(n, bits));
        return ctx.upload_wide_ntt(&mask, limbs);
    }
    let high = Zeroizing::new(sampler.uniform_signed_bits(n, bits - 64));
    let low: Zeroizing<Vec<u64>> = Zeroizing::new(
        (0..n)
            .map(|_| rand::RngCore::next_u64(sampler.rng()))
            .collect(),
    );
    ctx.upload_wider_ntt(&high, &low, limbs)
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
        let bits = params.mask_bits(ctx.n())?;
        let m_top: SecretPoly =
            Zeroizing::new(sample_mask(&ctx, &mut self.sampler, bits, top.clone())?);
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

#[cfg(test)]
mod tests {
    use num_bigint::BigInt;
    use num_traits::{Signed, ToPrimitive};

    use super::*;
    use crate::ckks::{CkksContext, CkksParams};
    use crate::math::RnsBasis;
    use crate::rlwe::Security;

    /// Masks wider than 126 bits are uniform on `[−2^b, 2^b)`: every coefficient is an
    /// integer in range (the same one on every limb), the largest reach the top bits, and the
    /// low 64 bits are random too (a mask without them would leave the phase's low bits bare).
    #[test]
    fn wide_masks_are_integers_in_range_with_random_low_bits() {
        let params = CkksParams::builder()
            .log_n(10)
            .depth(2)
            .scale_bits(84)
            .security(Security::InsecureForTestingOnly)
            .build()
            .unwrap();
        let ckks = CkksContext::with_seed(params, [3; 32]).unwrap();
        let ctx = ckks.rlwe();
        let limbs = ctx.q_limbs(ctx.max_level());
        let bits = 150;
        let mut sampler = Sampler::from_seed([8; 32]);
        let mut m = sample_mask(ctx, &mut sampler, bits, limbs.clone()).unwrap();
        ctx.backend().ntt_inverse(ctx.ring(), &mut m).unwrap();
        let words = ctx.backend().download(&m).unwrap();
        let moduli: Vec<_> = limbs.iter().map(|&l| *ctx.ring().modulus(l)).collect();
        let basis = RnsBasis::new(&moduli);
        let n = ctx.n();
        let values: Vec<BigInt> = (0..n)
            .map(|k| {
                let r: Vec<u32> = (0..moduli.len()).map(|i| words[i * n + k]).collect();
                basis.compose_centered(&r)
            })
            .collect();
        let bound = BigInt::from(1) << bits;
        assert!(
            values.iter().all(|v| v.abs() <= bound),
            "a mask out of range"
        );
        let top = values.iter().filter(|v| v.abs() >= &bound >> 2).count();
        assert!(top > n / 2, "{top} of {n} in the top two bits' range");
        let low = BigInt::from(1) << 16;
        let low_zero = values
            .iter()
            .filter(|&v| {
                let r: BigInt = v % &low;
                r.to_i64() == Some(0)
            })
            .count();
        assert!(low_zero < 4, "{low_zero} masks with 16 zero low bits");
        let negative = values.iter().filter(|v| v.is_negative()).count();
        assert!(
            n / 3 < negative && negative < 2 * n / 3,
            "{negative} negative"
        );
    }
}
