//! Collective key switching (CKS: to another secret, or to 0 = decryption) and public-key
//! switching (PCKS: re-encryption under a receiver's public key), with smudging.

use zeroize::Zeroizing;

use super::share::{Protocol, Share};
use super::{Party, Smudging};
use crate::backend::PolyBatch;
use crate::bfv::{self, BfvContext};
use crate::error::{Error, Result};
use crate::rlwe::ciphertext::check_key_id;
use crate::rlwe::keys::SecretPoly;
use crate::rlwe::{Ciphertext, PublicKey, RlweContext, SecretKey};

/// Checks that a ciphertext can enter a collective key switch: this context, the collective key
/// set, relinearized (a size-3 ciphertext would need shares of `s²`).
fn check_input(ctx: &RlweContext, key_id: u64, ct: &Ciphertext) -> Result<()> {
    ctx.check_fingerprint(ct.fingerprint, "ciphertext")?;
    check_key_id(key_id, ct.key_id, "ciphertext")?;
    if ct.size() != 2 {
        return Err(Error::CiphertextSize(
            "collective key switching needs a relinearized (size-2) ciphertext".into(),
        ));
    }
    Ok(())
}

/// Refuses smudging that cannot fit under the ciphertext's modulus (the result would wrap).
fn check_room(ctx: &RlweContext, level: usize, smudging: &Smudging) -> Result<()> {
    let log_q: f64 = ctx
        .q_limbs(level)
        .iter()
        .map(|&l| (ctx.ring().modulus(l).value() as f64).log2())
        .sum();
    if smudging.bound_bits() as f64 + 2.0 > log_q {
        return Err(Error::Multiparty(format!(
            "smudging noise of 2^{} does not fit under the level-{level} modulus 2^{log_q:.1}; \
             switch keys at a higher level or lower the bound",
            smudging.bound_bits()
        )));
    }
    Ok(())
}

impl Party {
    /// CKS share for `ct` (size 2, collective key set): `(s_i − s'_i)·c_1 + e_smudge` at the
    /// ciphertext's level, where `s'_i` is this party's part of the target key (`None`: 0).
    /// With every target part `None` the aggregate gives the phase `m + e`
    /// ([`decrypt_finalize`]); for decryption to one party, the others send `None` shares and
    /// that party finishes with [`Party::decrypt_with`].
    pub fn cks_share(
        &mut self,
        ct: &Ciphertext,
        target: Option<&SecretKey>,
        smudging: &Smudging,
        run: u64,
    ) -> Result<Share> {
        let ctx = self.ctx.clone();
        check_input(&ctx, self.crs.key_id(), ct)?;
        check_room(&ctx, ct.level(), smudging)?;
        if let Some(t) = target {
            ctx.check_fingerprint(t.fingerprint, "target key")?;
        }
        let protocol = Protocol::Cks { run };
        protocol.validate(ctx.n())?;
        self.begin(protocol)?;
        let be = ctx.backend();
        let ring = ctx.ring();
        let limbs = ct.polys.limbs_arc();
        let mut diff: SecretPoly = self.share_on(limbs.clone())?;
        if let Some(t) = target {
            be.sub_assign(ring, &mut diff, &*t.on_limbs(&ctx, limbs.clone())?)?;
        }
        let mut h = smudging.sample(&ctx, limbs, &mut self.sampler)?;
        be.mul_acc(ring, &mut h, &be.slice_polys(&ct.polys, 1, 1)?, &diff)?;
        Ok(Share {
            protocol,
            level: ct.level(),
            parts: vec![h],
            fingerprint: ctx.fingerprint(),
            key_id: self.crs.key_id(),
        })
    }

    /// Decryption to this party: the phase `c_0 + Σ_{others} h_j + c_1·s_i` (coefficient
    /// form, as [`crate::rlwe::ciphertext::decrypt_to_poly`] returns it) from the aggregate of
    /// every *other* party's [`Self::cks_share`] with target `None`. This party's own part
    /// never leaves it, so it needs no smudging.
    pub fn decrypt_with(&self, ct: &Ciphertext, others: &Share) -> Result<PolyBatch> {
        let ctx = &self.ctx;
        check_input(ctx, self.crs.key_id(), ct)?;
        let Protocol::Cks { .. } = others.protocol else {
            return Err(Error::Multiparty(format!(
                "expected decryption shares, got {:?}",
                others.protocol
            )));
        };
        others.expect(ctx, others.protocol, ct.level(), self.crs.key_id())?;
        let be = ctx.backend();
        let ring = ctx.ring();
        let s: SecretPoly = self.share_on(ct.polys.limbs_arc())?;
        let mut x = be.slice_polys(&ct.polys, 0, 1)?;
        be.add_assign(ring, &mut x, &others.parts[0])?;
        be.mul_acc(ring, &mut x, &be.slice_polys(&ct.polys, 1, 1)?, &s)?;
        be.ntt_inverse(ring, &mut x)?;
        Ok(x)
    }

    /// PCKS share: `(s_i·c_1 + u_i·p_0 + e_smudge, u_i·p_1 + e)` at the ciphertext's level,
    /// with a fresh ternary `u_i`, re-encrypting `ct` to the holder of `pk` (any key set).
    pub fn pcks_share(
        &mut self,
        ct: &Ciphertext,
        pk: &PublicKey,
        smudging: &Smudging,
        run: u64,
    ) -> Result<Share> {
        let ctx = self.ctx.clone();
        check_input(&ctx, self.crs.key_id(), ct)?;
        check_room(&ctx, ct.level(), smudging)?;
        ctx.check_fingerprint(pk.fingerprint, "receiver's public key")?;
        let protocol = Protocol::Pcks { run };
        protocol.validate(ctx.n())?;
        self.begin(protocol)?;
        let be = ctx.backend();
        let ring = ctx.ring();
        let n = ctx.n();
        let limbs = ct.polys.limbs_arc();
        let u_small = Zeroizing::new(self.sampler.ternary(n));
        let u_wide = Zeroizing::new(u_small.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let u: SecretPoly = Zeroizing::new(ctx.upload_signed_ntt(&u_wide, limbs.clone())?);
        let e0 = smudging.sample(&ctx, limbs.clone(), &mut self.sampler)?;
        let e1_small = Zeroizing::new(self.sampler.cbd(n));
        let e1: Zeroizing<Vec<i64>> = Zeroizing::new(e1_small.iter().map(|&x| x as i64).collect());
        let e1 = Zeroizing::new(ctx.upload_signed_ntt(&e1, limbs.clone())?);
        let mut out = be.concat(&[&e0, &e1])?;
        be.mul_acc(
            ring,
            &mut out,
            &be.select_limbs(&pk.polys, limbs.clone())?,
            &u,
        )?;
        let mut h0 = be.slice_polys(&out, 0, 1)?;
        let s: SecretPoly = self.share_on(limbs)?;
        be.mul_acc(ring, &mut h0, &be.slice_polys(&ct.polys, 1, 1)?, &s)?;
        let h1 = be.slice_polys(&out, 1, 1)?;
        Ok(Share {
            protocol,
            level: ct.level(),
            parts: vec![be.concat(&[&h0, &h1])?],
            fingerprint: ctx.fingerprint(),
            key_id: self.crs.key_id(),
        })
    }
}

/// The ciphertext `(c_0 + Σ h_i, c_1)` under the target key `Σ s'_i` (key set
/// `target_key_id`) from the aggregated CKS shares.
pub fn cks_finalize(
    ctx: &RlweContext,
    ct: &Ciphertext,
    agg: &Share,
    target_key_id: u64,
) -> Result<Ciphertext> {
    let is_cks = matches!(agg.protocol, Protocol::Cks { .. });
    check_aggregate(ctx, ct, agg, is_cks, "key-switching")?;
    let c1 = ctx.backend().slice_polys(&ct.polys, 1, 1)?;
    switched(ctx, ct, &agg.parts[0], c1, target_key_id)
}

/// Checks that `agg` aggregates shares of the expected kind for `ct`.
fn check_aggregate(
    ctx: &RlweContext,
    ct: &Ciphertext,
    agg: &Share,
    right_kind: bool,
    kind: &str,
) -> Result<()> {
    check_input(ctx, agg.key_id, ct)?;
    if !right_kind {
        return Err(Error::Multiparty(format!(
            "expected {kind} shares, got {:?}",
            agg.protocol
        )));
    }
    agg.expect(ctx, agg.protocol, ct.level(), ct.key_id)
}

/// `(c_0 + h0, c1)` under key set `key_id`: how both key-switching protocols finish.
fn switched(
    ctx: &RlweContext,
    ct: &Ciphertext,
    h0: &PolyBatch,
    c1: PolyBatch,
    key_id: u64,
) -> Result<Ciphertext> {
    let be = ctx.backend();
    let mut c0 = be.slice_polys(&ct.polys, 0, 1)?;
    be.add_assign(ctx.ring(), &mut c0, h0)?;
    let mut out = ct.derive(be.concat(&[&c0, &c1])?, ct.scale);
    out.key_id = key_id;
    Ok(out)
}

/// Collective decryption: the phase `c_0 + Σ h_i = m + e + Σ e_smudge` (coefficient form, as
/// [`crate::rlwe::ciphertext::decrypt_to_poly`] returns it) from the aggregate of *every*
/// party's [`Party::cks_share`] with target `None`. Decode it with
/// [`crate::ckks::CkksContext::decode_poly`] or [`BfvContext::decode_phase`]. Whoever holds the
/// aggregate learns the plaintext.
pub fn decrypt_finalize(ctx: &RlweContext, ct: &Ciphertext, agg: &Share) -> Result<PolyBatch> {
    let switched = cks_finalize(ctx, ct, agg, 0)?;
    let mut x = ctx.backend().slice_polys(&switched.polys, 0, 1)?;
    ctx.backend().ntt_inverse(ctx.ring(), &mut x)?;
    Ok(x)
}

/// `ct` re-encrypted under `pk` from the aggregated PCKS shares: `(c_0 + Σ h0_i, Σ h1_i)`.
pub fn pcks_finalize(
    ctx: &RlweContext,
    ct: &Ciphertext,
    agg: &Share,
    pk: &PublicKey,
) -> Result<Ciphertext> {
    let is_pcks = matches!(agg.protocol, Protocol::Pcks { .. });
    check_aggregate(ctx, ct, agg, is_pcks, "re-encryption")?;
    let be = ctx.backend();
    let h0 = be.slice_polys(&agg.parts[0], 0, 1)?;
    let c1 = be.slice_polys(&agg.parts[0], 1, 1)?;
    switched(ctx, ct, &h0, c1, pk.key_id)
}

/// Smudging for decrypting (CKS) or re-encrypting (PCKS) the CKKS ciphertext `ct` at `λ` bits
/// of statistical security, with `2^noise_log2` a bound on its noise `‖e‖∞` (coefficient
/// units, before the division by the scale) under the ideal key of `parties` shares:
/// `b = ⌈λ + log2 N + noise_log2⌉` ([`Smudging::statistical`]), which hides `e` within
/// statistical distance `2^−λ`. The `K` shares put up to `K·2^b` into the result, read at the
/// scale Δ, so the bound leaves `log2 Δ − b − log2 K` bits of precision; fewer than
/// `min_precision_bits` is an [`Error::InvalidParameters`] (the result would be noise), and a
/// bound that does not fit under `Q_ℓ` is refused when the shares are made.
///
/// CKKS rarely has that room: a fresh encryption's noise is ~2^12 at N = 2^13, so λ = 40 needs
/// `log2 Δ ≥ 65 + precision`, beyond the 2^62 this crate encodes at, and every rescale adds
/// ~2^8 that the smudging must cover as well. The error says so instead of returning garbage.
pub fn ckks_smudging(
    ctx: &RlweContext,
    ct: &Ciphertext,
    lambda: u32,
    parties: usize,
    noise_log2: f64,
    min_precision_bits: f64,
) -> Result<Smudging> {
    let smudging = Smudging::statistical(lambda, ctx.n(), noise_log2)?;
    let left = ct.scale.log2() - smudging.bound_bits() as f64 - (parties.max(1) as f64).log2();
    if left.is_nan() || left < min_precision_bits {
        return Err(Error::InvalidParameters(format!(
            "{lambda}-bit smudging of a ciphertext with noise up to 2^{noise_log2:.1} needs              2^{} per share, which leaves {left:.1} bits under its scale 2^{:.1} for {parties}              parties, fewer than the {min_precision_bits} asked for: decrypt at a larger scale              with less noise, or accept a weaker bound (Smudging::bits, whose guarantee is              Smudging::lambda_for)",
            smudging.bound_bits(),
            ct.scale.log2()
        )));
    }
    Ok(smudging)
}

/// Smudging for a BFV ciphertext at `λ` bits from the noise bound its evaluator carries: the
/// estimated invariant noise `‖v‖∞ ≤ 2^{−1−budget}` is `‖e‖∞ ≤ 2^{−1−budget}·Q_ℓ/t` in the
/// phase. The estimate models a ternary secret; the ideal key of `parties` shares has `parties`
/// times its variance, which `log2 parties` extra bits cover up to degree 2.
pub fn bfv_smudging(
    ctx: &BfvContext,
    ct: &bfv::Ciphertext,
    lambda: u32,
    parties: usize,
) -> Result<Smudging> {
    let rlwe = ctx.rlwe();
    let log_q: f64 = rlwe
        .q_limbs(ct.level())
        .iter()
        .map(|&l| (rlwe.ring().modulus(l).value() as f64).log2())
        .sum();
    let budget = ctx.noise_budget_estimate(ct);
    let noise_log2 =
        log_q - (ctx.plain_modulus() as f64).log2() - 1.0 - budget + (parties.max(1) as f64).log2();
    Smudging::statistical(lambda, rlwe.n(), noise_log2)
}
