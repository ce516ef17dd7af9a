//! RLWE ciphertexts and the scheme-independent operations on them: encryption, decryption,
//! addition, relinearization, Galois automorphisms.

use std::sync::Arc;

use crate::backend::{PolyBatch, Repr};
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::rlwe::context::RlweContext;
use crate::rlwe::keys::{
    rlwe_sample, GaloisKeys, KeySwitchKey, PublicKey, RelinKey, SecretKey, SecretPoly,
};
use crate::rlwe::params::LevelShape;

/// A ciphertext `(c_0, c_1[, c_2])` in the NTT domain over the primes of its level.
#[derive(Clone, Debug)]
pub struct Ciphertext {
    pub(crate) polys: PolyBatch,
    /// CKKS scale Δ (1.0 for BFV).
    pub(crate) scale: f64,
    pub(crate) fingerprint: u64,
    /// Identifier of the key set the ciphertext was encrypted under (see
    /// [`SecretKey::key_id`]); every operation that combines it with another ciphertext or a
    /// key checks it, so key sets cannot be mixed silently.
    pub(crate) key_id: u64,
    /// Seed of `c_1` for fresh symmetric encryptions (lets serialization store 32 bytes
    /// instead of a polynomial). Cleared by any operation that changes `c_1`.
    pub(crate) seed: Option<[u8; 32]>,
    /// How its parameters group primes into levels (so that [`Ciphertext::level`] counts
    /// rescalings, not primes).
    pub(crate) shape: LevelShape,
}

impl Ciphertext {
    /// Level: how many rescalings (CKKS) or modulus switches (BFV) are left. With a composite
    /// CKKS chain a level holds several primes ([`LevelShape`]).
    pub fn level(&self) -> usize {
        let limbs = self.polys.limbs().len();
        let level = self.shape.level_of(limbs);
        debug_assert!(level.is_some(), "{limbs} limbs off the chain");
        level.unwrap_or(0)
    }

    /// Number of polynomials (2 after relinearization, 3 after a multiplication).
    pub fn size(&self) -> usize {
        self.polys.count()
    }

    /// CKKS scale (1.0 for BFV).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The polynomials (backend-resident).
    pub fn polys(&self) -> &PolyBatch {
        &self.polys
    }

    /// Identifier of the key set it was encrypted under.
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// Whether `c_1` is still the expansion of a stored 32-byte seed.
    pub fn is_seeded(&self) -> bool {
        self.seed.is_some()
    }

    /// A fresh ciphertext of `ctx` (fingerprint and level shape from the context).
    pub(crate) fn fresh(ctx: &RlweContext, polys: PolyBatch, scale: f64, key_id: u64) -> Self {
        Self {
            polys,
            scale,
            fingerprint: ctx.fingerprint(),
            key_id,
            seed: None,
            shape: ctx.params().level_shape(),
        }
    }

    /// A ciphertext computed from this one: same parameters and key set, new polynomials.
    pub(crate) fn derive(&self, polys: PolyBatch, scale: f64) -> Self {
        Self {
            polys,
            scale,
            fingerprint: self.fingerprint,
            key_id: self.key_id,
            seed: None,
            shape: self.shape,
        }
    }
}

/// Checks that an object of key set `other` (`what`) may be combined with one of key set
/// `expected`.
pub(crate) fn check_key_id(expected: u64, other: u64, what: &str) -> Result<()> {
    if expected != other {
        return Err(Error::KeyMismatch(format!(
            "{what} belongs to key set {other:016x}, the other operand to {expected:016x}; \
             objects of different key sets cannot be combined"
        )));
    }
    Ok(())
}

/// Symmetric encryption of an encoded message (NTT domain, limbs of the target level);
/// `c_1` comes from a 32-byte seed that the ciphertext remembers.
pub fn encrypt_symmetric(
    ctx: &RlweContext,
    sk: &SecretKey,
    m: &PolyBatch,
    scale: f64,
    sampler: &mut Sampler,
) -> Result<Ciphertext> {
    ctx.check_fingerprint(sk.fingerprint, "secret key")?;
    let s: SecretPoly = sk.on_limbs(ctx, m.limbs_arc())?;
    let seed = sampler.seed();
    let polys = rlwe_sample(ctx, &s, Some(m), seed, sampler)?;
    let mut ct = Ciphertext::fresh(ctx, polys, scale, sk.key_id);
    ct.seed = Some(seed);
    Ok(ct)
}

/// Public-key encryption: `(pk_0·u + e_0 + P·m, pk_1·u + e_1)` with ternary `u`, computed over
/// the ciphertext and special primes and then divided by `P` (as SEAL does), which shrinks the
/// fresh noise from `|e·u + e_1·s|` (~2^8 per coefficient) to a rounding error.
pub fn encrypt_public(
    ctx: &RlweContext,
    pk: &PublicKey,
    m: &PolyBatch,
    scale: f64,
    sampler: &mut Sampler,
) -> Result<Ciphertext> {
    ctx.check_fingerprint(pk.fingerprint, "public key")?;
    let be = ctx.backend();
    let ring = ctx.ring();
    let q_limbs = m.limbs_arc();
    let limbs = ctx.qp_first(q_limbs.len());
    let n = ctx.n();
    let wide = |v: Vec<i8>| v.into_iter().map(|x| x as i64).collect::<Vec<i64>>();
    // u (with pk and the ciphertext) reveals the message: its copies are wiped on drop.
    let u_small = zeroize::Zeroizing::new(sampler.ternary(n));
    let u_wide = zeroize::Zeroizing::new(u_small.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let u: SecretPoly = zeroize::Zeroizing::new(ctx.upload_signed_ntt(&u_wide, limbs.clone())?);
    let e0 = ctx.upload_signed_ntt(&wide(sampler.cbd(n)), limbs.clone())?;
    let e1 = ctx.upload_signed_ntt(&wide(sampler.cbd(n)), limbs.clone())?;
    let pk_here = be.select_limbs(&pk.polys, limbs.clone())?;
    let mut out = be.concat(&[&e0, &e1])?;
    be.mul_acc(ring, &mut out, &pk_here, &u)?;
    // P·m on the ciphertext primes, 0 on the special primes.
    let mut pm = m.clone();
    let p_mod_q: Vec<u32> = q_limbs
        .iter()
        .map(|&l| {
            let md = ring.modulus(l);
            ctx.p_limbs().iter().fold(1u32, |acc, &p| {
                md.mul(acc, ring.modulus(p).value() % md.value())
            })
        })
        .collect();
    be.mul_scalar_assign(ring, &mut pm, &p_mod_q)?;
    let zeros_p = be.zeros(ctx.p_limbs(), 1, n, Repr::Ntt)?;
    let pm = be.concat_limbs(&pm, &zeros_p)?;
    let zero_poly = be.zeros(limbs, 1, n, Repr::Ntt)?;
    let m2 = be.concat(&[&pm, &zero_poly])?;
    be.add_assign(ring, &mut out, &m2)?;
    let out = ctx.mod_down(&out, q_limbs, ctx.p_limbs())?;
    Ok(Ciphertext::fresh(ctx, out, scale, pk.key_id))
}

/// `c_0 + c_1·s (+ c_2·s²)` in coefficient form at the ciphertext's level.
pub fn decrypt_to_poly(ctx: &RlweContext, sk: &SecretKey, ct: &Ciphertext) -> Result<PolyBatch> {
    ctx.check_fingerprint(sk.fingerprint, "secret key")?;
    ctx.check_fingerprint(ct.fingerprint, "ciphertext")?;
    check_key_id(ct.key_id, sk.key_id, "secret key used to decrypt")?;
    let be = ctx.backend();
    let ring = ctx.ring();
    if ct.size() == 2 {
        return be.decrypt_phase(ring, &ct.polys, &sk.ntt);
    }
    // s and its powers are wiped on drop (SecretPoly); acc is the phase, not the key.
    let s: SecretPoly = sk.on_limbs(ctx, ct.polys.limbs_arc())?;
    let mut acc = be.slice_polys(&ct.polys, 0, 1)?;
    let mut s_pow: SecretPoly = s.clone();
    for i in 1..ct.size() {
        let c = be.slice_polys(&ct.polys, i, 1)?;
        be.mul_acc(ring, &mut acc, &c, &s_pow)?;
        if i + 1 < ct.size() {
            be.mul_assign(ring, &mut s_pow, &s)?;
        }
    }
    be.ntt_inverse(ring, &mut acc)?;
    Ok(acc)
}

fn check_pair(ctx: &RlweContext, a: &Ciphertext, b: &Ciphertext, op: &'static str) -> Result<()> {
    ctx.check_fingerprint(a.fingerprint, "left operand")?;
    ctx.check_fingerprint(b.fingerprint, "right operand")?;
    check_key_id(a.key_id, b.key_id, "right operand")?;
    if a.level() != b.level() {
        return Err(Error::LevelMismatch {
            op,
            left: a.level(),
            right: b.level(),
        });
    }
    Ok(())
}

/// `a + b` (or `a − b` when `subtract`); sizes may differ (the result has the larger size).
pub fn add_ciphertexts(
    ctx: &RlweContext,
    a: &Ciphertext,
    b: &Ciphertext,
    subtract: bool,
) -> Result<Ciphertext> {
    let op = if subtract { "sub" } else { "add" };
    check_pair(ctx, a, b, op)?;
    let be = ctx.backend();
    let ring = ctx.ring();
    let (big, small, swapped) = if a.size() >= b.size() {
        (a, b, false)
    } else {
        (b, a, true)
    };
    if big.size() == small.size() {
        // The common case (then `big` is `a`): one pass into a new batch.
        let out = be.add_new(ring, &big.polys, &small.polys, subtract)?;
        return Ok(a.derive(out, a.scale));
    }
    let mut out = big.polys.clone();
    let mut head = be.slice_polys(&out, 0, small.size())?;
    if subtract && swapped {
        // out = b - a: negate big part first.
        be.neg_assign(ring, &mut out)?;
        head = be.slice_polys(&out, 0, small.size())?;
        be.add_assign(ring, &mut head, &small.polys)?;
    } else if subtract {
        be.sub_assign(ring, &mut head, &small.polys)?;
    } else {
        be.add_assign(ring, &mut head, &small.polys)?;
    }
    if big.size() > small.size() {
        let tail = be.slice_polys(&out, small.size(), big.size() - small.size())?;
        out = be.concat(&[&head, &tail])?;
    } else {
        out = head;
    }
    Ok(a.derive(out, a.scale))
}

/// Negation.
pub fn negate(ctx: &RlweContext, a: &Ciphertext) -> Result<Ciphertext> {
    let mut out = a.polys.clone();
    ctx.backend().neg_assign(ctx.ring(), &mut out)?;
    Ok(a.derive(out, a.scale))
}

/// The tensor product `(a0 b0, a0 b1 + a1 b0, a1 b1)` of two size-2 ciphertexts, NTT domain.
pub fn tensor(ctx: &RlweContext, a: &Ciphertext, b: &Ciphertext) -> Result<PolyBatch> {
    check_factors(a, b)?;
    tensor_polys(ctx, &a.polys, &b.polys)
}

/// The operands of a product: both of size 2, under one key.
fn check_factors(a: &Ciphertext, b: &Ciphertext) -> Result<()> {
    if a.size() != 2 || b.size() != 2 {
        return Err(Error::CiphertextSize(format!(
            "multiply needs relinearized (size-2) operands, got sizes {} and {}",
            a.size(),
            b.size()
        )));
    }
    check_key_id(a.key_id, b.key_id, "right operand")
}

/// A size-3 ciphertext and the key that relinearizes it.
fn check_relinearizable(ct: &Ciphertext, rk: &RelinKey) -> Result<()> {
    if ct.size() != 3 {
        return Err(Error::CiphertextSize(format!(
            "cannot relinearize a size-{} ciphertext",
            ct.size()
        )));
    }
    check_key_id(ct.key_id, rk.0.key_id, "relinearization key")
}

/// Tensor product of two batches of 2 polynomials each (same limbs, NTT domain).
pub(crate) fn tensor_polys(ctx: &RlweContext, a: &PolyBatch, b: &PolyBatch) -> Result<PolyBatch> {
    ctx.backend().tensor_product(ctx.ring(), a, b)
}

/// Relinearizes a size-3 ciphertext to size 2 with the relinearization key.
pub fn relinearize(ctx: &RlweContext, ct: &Ciphertext, rk: &RelinKey) -> Result<Ciphertext> {
    if ct.size() == 2 {
        return Ok(ct.clone());
    }
    check_relinearizable(ct, rk)?;
    let c2 = ctx.backend().slice_polys(&ct.polys, 2, 1)?;
    let out = rk.0.switch_onto(ctx, &c2, Some(&ct.polys))?;
    Ok(ct.derive(out, ct.scale))
}

/// [`relinearize`] whose ModDown divides by more than `P`: `ModDown(P·(c_0, c_1) + KS(c_2))`
/// over `keep`, the first limbs of `ct`'s, dividing out `P` and `ct`'s limbs after `keep`
/// (CKKS's relinearize-and-rescale). One ModDown for both, and on device backends `c_2` is
/// read in place ([`crate::backend::Backend::relinearize_mod_down`]).
pub fn relinearize_mod_down(
    ctx: &RlweContext,
    ct: &Ciphertext,
    rk: &RelinKey,
    keep: Arc<[usize]>,
) -> Result<PolyBatch> {
    ctx.check_fingerprint(ct.fingerprint, "ciphertext")?;
    check_relinearizable(ct, rk)?;
    rk.0.switch_product_mod_down(ctx, &ct.polys, keep)
}

/// [`relinearize_mod_down`] of the product `a·b` of two size-2 ciphertexts at the same level:
/// the words of `relinearize_mod_down(tensor(a, b))`, without the size-3 product on device
/// backends that fuse it ([`crate::backend::Backend::multiply_relinearize_mod_down`]).
pub fn multiply_relinearize_mod_down(
    ctx: &RlweContext,
    (a, b): (&Ciphertext, &Ciphertext),
    rk: &RelinKey,
    keep: Arc<[usize]>,
) -> Result<PolyBatch> {
    ctx.check_fingerprint(a.fingerprint, "ciphertext")?;
    ctx.check_fingerprint(b.fingerprint, "ciphertext")?;
    check_factors(a, b)?;
    check_key_id(a.key_id, rk.0.key_id, "relinearization key")?;
    rk.0.switch_tensor_mod_down(ctx, (&a.polys, &b.polys), keep)
}

/// Applies the automorphism `X → X^g` and switches back to `s` with the Galois key. Works in
/// the NTT domain: `c_0` and the decomposed digits of `c_1` are permuted, not transformed.
pub fn apply_galois(
    ctx: &RlweContext,
    ct: &Ciphertext,
    g: usize,
    gk: &GaloisKeys,
    step: Option<i64>,
) -> Result<Ciphertext> {
    apply_galois_many(ctx, ct, &[(g, step)], gk)?
        .pop()
        .ok_or_else(|| Error::InvalidInput("internal: no rotation computed".into()))
}

/// Several automorphisms of one ciphertext that share a single decomposition of `c_1`
/// (hoisting): the digits are extended and transformed once, then only permuted (in the NTT
/// domain) per element. Each entry is `(Galois element, rotation step for error messages)`.
pub fn apply_galois_many(
    ctx: &RlweContext,
    ct: &Ciphertext,
    elements: &[(usize, Option<i64>)],
    gk: &GaloisKeys,
) -> Result<Vec<Ciphertext>> {
    use rayon::prelude::*;
    let q = ct.polys.limbs_arc();
    apply_galois_many_ext(ctx, ct, elements, gk)?
        .par_iter()
        .map(|ext| Ok(ct.derive(ctx.mod_down(ext, q.clone(), ctx.p_limbs())?, ct.scale)))
        .collect()
}

/// [`apply_galois_many`] before its ModDowns: each result is `(P·σ_g(c_0) + u_0, u_1)` over
/// `ct`'s limbs and the special primes, `P` times the rotated ciphertext (plus key-switching
/// noise). Products with plaintexts over the same limbs and sums stay in that basis, and one
/// ModDown finishes them all (a ModDown of `(P·a + u)` is exactly `a` plus that of `u`).
pub fn apply_galois_many_ext(
    ctx: &RlweContext,
    ct: &Ciphertext,
    elements: &[(usize, Option<i64>)],
    gk: &GaloisKeys,
) -> Result<Vec<PolyBatch>> {
    use rayon::prelude::*;
    let keys = galois_keys_for(ctx, ct, elements, gk)?;
    let be = ctx.backend();
    let ring = ctx.ring();
    if let ([(g, _)], [key]) = (elements, keys.as_slice()) {
        // One element: nothing to share, so permute the ciphertext and switch `σ_g(c_1)`
        // directly (one fused key switch, `σ_g(c_0)` lifted into its result).
        let rotated = be.automorphism_ntt(ring, &ct.polys, *g)?;
        let c1 = be.slice_polys(&rotated, 1, 1)?;
        let c0 = be.slice_polys(&rotated, 0, 1)?;
        return Ok(vec![key.switch_ext(ctx, &c1, Some(&c0))?]);
    }
    let c1 = be.slice_polys(&ct.polys, 1, 1)?;
    let digits = crate::rlwe::keys::decompose(ctx, &c1)?;
    let c0 = be.slice_polys(&ct.polys, 0, 1)?;
    elements
        .par_iter()
        .zip(keys)
        .map(|(&(g, _), key)| key.switch_hoisted(ctx, &digits, Some(g), Some(&c0)))
        .collect()
}

/// The sum of [`apply_galois_many_ext`]'s results, computed in one pass
/// ([`crate::backend::Backend::key_inner_hoisted_sum`]): `Σ_g (P·σ_g(c_0) + u_0^g, u_1^g)`,
/// which one ModDown turns into `Σ_g σ_g(ct)` (the rounds of
/// [`crate::ckks::CkksContext::sum_slots`]).
pub fn apply_galois_sum_ext(
    ctx: &RlweContext,
    ct: &Ciphertext,
    elements: &[(usize, Option<i64>)],
    gk: &GaloisKeys,
) -> Result<PolyBatch> {
    let keys = galois_keys_for(ctx, ct, elements, gk)?;
    if keys.is_empty() {
        return Err(Error::InvalidInput("a sum of no automorphisms".into()));
    }
    let be = ctx.backend();
    let c1 = be.slice_polys(&ct.polys, 1, 1)?;
    let digits = crate::rlwe::keys::decompose(ctx, &c1)?;
    let c0 = be.slice_polys(&ct.polys, 0, 1)?;
    let rotations: Vec<_> = keys
        .iter()
        .zip(elements)
        .map(|(&key, &(g, _))| (key, Some(g)))
        .collect();
    crate::rlwe::keys::switch_hoisted_sum(ctx, &digits, &rotations, Some(&c0))
}

/// The Galois key of every element of `elements` (`(element, step for errors)`), checked
/// against `ct`'s context and key, for a relinearized `ct`.
fn galois_keys_for<'a>(
    ctx: &RlweContext,
    ct: &Ciphertext,
    elements: &[(usize, Option<i64>)],
    gk: &'a GaloisKeys,
) -> Result<Vec<&'a KeySwitchKey>> {
    ctx.check_fingerprint(ct.fingerprint, "ciphertext")?;
    if ct.size() != 2 {
        return Err(Error::CiphertextSize(
            "rotate a relinearized (size-2) ciphertext".into(),
        ));
    }
    let keys = elements
        .iter()
        .map(|&(g, step)| {
            gk.get(g).ok_or(Error::MissingGaloisKey {
                galois_element: g,
                step,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for key in &keys {
        check_key_id(ct.key_id, key.key_id, "Galois key")?;
    }
    Ok(keys)
}

/// `P·x` over `x`'s limbs and the special primes (NTT form): `x` moved exactly into the
/// basis of [`apply_galois_many_ext`] (its special-prime limbs are 0).
pub fn lift_to_ext(ctx: &RlweContext, x: &PolyBatch) -> Result<PolyBatch> {
    crate::backend::lift_reference(ctx.backend(), ctx.ring(), x, &ctx.p_limbs())
}

/// Drops the ciphertext's top primes (no division): for BFV mod switching and for bringing
/// CKKS operands to a common level when scales allow it.
pub fn drop_to_level(ctx: &RlweContext, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
    if level > ct.level() {
        return Err(Error::InvalidInput(format!(
            "cannot raise a ciphertext from level {} to {level}",
            ct.level()
        )));
    }
    let polys = ctx.backend().select_limbs(&ct.polys, ctx.q_limbs(level))?;
    Ok(ct.derive(polys, ct.scale))
}
