//! Bodies of the individual objects. Every decoder validates each count against the
//! parameters before it reads (or allocates for) what the count describes.

use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::wire::{Decoder, Encoder, Kind};
use super::{DecodeOptions, WriteOptions};
use crate::backend::{PolyBatch, Repr};
use crate::bfv::{self, BfvParams};
use crate::ckks::{self, CkksParams, MAX_SCALE_BITS};
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::rlwe::{
    Ciphertext, GaloisKeys, KeySwitchKey, LevelShape, PublicKey, RelinKey, RlweContext, RlweParams,
    SecretKey, Security,
};

/// An object that can be written in the hetensor format under an RLWE context.
pub trait Encode {
    /// Header kind.
    const KIND: Kind;
    /// Parameter fingerprint the object carries.
    fn fingerprint(&self) -> u64;
    /// Key-set identifier the object carries (0 for objects of no key set: plaintexts).
    fn key_id(&self) -> u64;
    /// Writes the body.
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()>;
    /// The uncompressed body's length in bytes, where it is cheap to know (0 otherwise), so
    /// that writers reserve their output once instead of growing it.
    fn body_len(&self, _ctx: &RlweContext, _opts: &WriteOptions) -> usize {
        0
    }
}

/// An object that can be read back under an RLWE context (onto that context's backend).
pub trait Decode: Sized {
    /// Header kind.
    const KIND: Kind;
    /// Reads and validates the body; `key_id` is the header's key-set identifier.
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self>;
}

/// Packed bytes of one polynomial over `limbs` (each limb at its prime's bit width).
fn poly_bytes(ctx: &RlweContext, limbs: &[usize]) -> u64 {
    limbs
        .iter()
        .map(|&l| {
            (ctx.n() as u64 * super::wire::residue_bits(ctx.ring().modulus(l).value()) as u64)
                .div_ceil(8)
        })
        .sum()
}

/// Objects of a key set (ciphertexts, keys) must name one: 0 is reserved for plaintexts.
pub(crate) fn key_set(key_id: u64, what: &str) -> Result<u64> {
    if key_id == 0 {
        return Err(Error::Decode(format!(
            "{what} without a key-set identifier"
        )));
    }
    Ok(key_id)
}

/// Writes polynomials `polys` of `p` (all limbs of each), each limb at its modulus' width.
fn write_polys(
    ctx: &RlweContext,
    e: &mut Encoder,
    p: &PolyBatch,
    polys: std::ops::Range<usize>,
) -> Result<()> {
    let downloaded;
    let words = match p.host_words() {
        Some(w) => w,
        None => {
            downloaded = ctx.backend().download(p)?;
            &downloaded[..]
        }
    };
    let n = p.n();
    let limbs = p.limbs();
    for i in polys {
        for (j, &l) in limbs.iter().enumerate() {
            let off = (i * limbs.len() + j) * n;
            e.residues(&words[off..off + n], ctx.ring().modulus(l).value())?;
        }
    }
    Ok(())
}

/// Reads `count` polynomials over `limbs` (host words, limb-major), appending to `out`.
fn read_polys(
    ctx: &RlweContext,
    d: &mut Decoder,
    limbs: &[usize],
    count: usize,
    out: &mut Vec<u32>,
) -> Result<()> {
    d.allow(count as u64 * poly_bytes(ctx, limbs));
    for _ in 0..count {
        for &l in limbs {
            d.residues_into(out, ctx.n(), ctx.ring().modulus(l))?;
        }
    }
    Ok(())
}

/// Appends to `words` the uniform polynomial a seed expands to over `limbs`, exactly as key
/// generation and symmetric encryption drew it.
fn expand_seed(ctx: &RlweContext, seed: [u8; 32], limbs: &[usize], words: &mut Vec<u32>) {
    let moduli: Vec<_> = limbs.iter().map(|&l| *ctx.ring().modulus(l)).collect();
    let start = words.len();
    words.resize(start + limbs.len() * ctx.n(), 0);
    Sampler::from_seed(seed).uniform_into(&moduli, ctx.n(), &mut words[start..]);
}

/// `(b, a)` pairs with an optional seed for `a`: public keys and key-switching digits.
fn write_pair(
    ctx: &RlweContext,
    e: &mut Encoder,
    pair: &PolyBatch,
    seed: Option<[u8; 32]>,
    opts: &WriteOptions,
) -> Result<()> {
    match seed.filter(|_| opts.seeded) {
        Some(s) => {
            e.u8(1)?;
            e.bytes(&s)?;
            write_polys(ctx, e, pair, 0..1)
        }
        None => {
            e.u8(0)?;
            write_polys(ctx, e, pair, 0..2)
        }
    }
}

fn read_pair(
    ctx: &RlweContext,
    d: &mut Decoder,
    limbs: Arc<[usize]>,
) -> Result<(PolyBatch, Option<[u8; 32]>)> {
    d.allow(1);
    let seeded = d.bool("seed flag")?;
    // Two polynomials over the parameters' limbs: what the pair can legitimately hold.
    let mut words = Vec::with_capacity(2 * limbs.len() * ctx.n());
    let seed = if seeded {
        d.allow(32);
        let s: [u8; 32] = d.bytes("seed")?;
        read_polys(ctx, d, &limbs, 1, &mut words)?;
        expand_seed(ctx, s, &limbs, &mut words);
        Some(s)
    } else {
        read_polys(ctx, d, &limbs, 2, &mut words)?;
        None
    };
    let p = ctx.backend().upload(words, limbs, 2, ctx.n(), Repr::Ntt)?;
    Ok((p, seed))
}

fn level_limbs(ctx: &RlweContext, level: u8) -> Result<Arc<[usize]>> {
    let level = level as usize;
    if level > ctx.max_level() {
        return Err(Error::Decode(format!(
            "level {level} above the parameters' maximum {}",
            ctx.max_level()
        )));
    }
    Ok(ctx.q_limbs(level))
}

/// Writes an RLWE ciphertext; `plain_modulus` is 0 for CKKS and `t` for BFV, so the schemes'
/// ciphertexts cannot be loaded as each other.
fn write_ciphertext(
    ctx: &RlweContext,
    e: &mut Encoder,
    ct: &Ciphertext,
    plain_modulus: u64,
    opts: &WriteOptions,
) -> Result<()> {
    let p = &ct.polys;
    if p.repr() != Repr::Ntt || *p.limbs() != *ctx.q_limbs(ct.level()) {
        return Err(Error::InvalidInput(
            "only NTT-form ciphertexts over their level's primes can be serialized".into(),
        ));
    }
    e.u64(plain_modulus)?;
    e.u8(ct.level() as u8)?;
    e.u8(ct.size() as u8)?;
    e.f64(ct.scale)?;
    match written_seed(ct, opts) {
        Some(s) => {
            e.u8(1)?;
            e.bytes(&s)?;
            write_polys(ctx, e, p, 0..1)
        }
        None => {
            e.u8(0)?;
            write_polys(ctx, e, p, 0..ct.size())
        }
    }
}

/// The seed [`write_ciphertext`] stores instead of the second polynomial, if any.
fn written_seed(ct: &Ciphertext, opts: &WriteOptions) -> Option<[u8; 32]> {
    ct.seed.filter(|_| opts.seeded && ct.size() == 2)
}

/// The body [`write_ciphertext`] writes, in bytes: plain modulus, level, size, scale, seed
/// flag, the seed if any, and the packed polynomials.
fn ciphertext_body_len(ctx: &RlweContext, ct: &Ciphertext, opts: &WriteOptions) -> usize {
    let (seed, polys) = match written_seed(ct, opts) {
        Some(s) => (s.len(), 1),
        None => (0, ct.size()),
    };
    8 + 1 + 1 + 8 + 1 + seed + polys * poly_bytes(ctx, ct.polys.limbs()) as usize
}

/// What scales a CKKS ciphertext at `level` can legitimately have, from how `ckks` tracks
/// them: at most `Q_level / 4` — every operation that raises a scale (multiply,
/// multiply_plain/scalar, linear_combination) refuses results with `capacity < 4`, i.e.
/// scale > `Q_level / 8`, and rescaling by `q_level` keeps that bound one level down; one bit of
/// slack is left here. At least 1 — encoding refuses Δ < 1, and the pipelines rescale only
/// what a multiplication first scaled up (checked on tests/ckks, train, transfer, encrypted_nn,
/// packed and workers with this check on every add, relinearize, rescale and decrypt).
/// A scale outside this range cannot come from this library and would decrypt wrongly. One
/// inside it is accepted: a deliberate edit there (checksum recomputed) goes unnoticed, as
/// any deliberate edit of a malleable ciphertext does.
pub(crate) fn check_ckks_scale(ctx: &RlweContext, level: usize, scale: f64) -> Result<()> {
    let log_q: f64 = ctx
        .q_limbs(level)
        .iter()
        .map(|&i| (ctx.ring().modulus(i).value() as f64).log2())
        .sum();
    if !scale.is_finite() || scale < 1.0 || scale.log2() > log_q - 2.0 {
        return Err(Error::Decode(format!(
            "scale {scale:e} is impossible at level {level}: it must lie in [1, Q/4] = [1, 2^{:.1}]",
            log_q - 2.0
        )));
    }
    Ok(())
}

fn read_ciphertext(ctx: &RlweContext, d: &mut Decoder) -> Result<(Ciphertext, u64)> {
    d.allow(8 + 1 + 1 + 8 + 1);
    let t = d.u64("plaintext modulus")?;
    let limbs = level_limbs(ctx, d.u8("level")?)?;
    let size = d.u8("size")? as usize;
    if !(2..=3).contains(&size) {
        return Err(Error::Decode(format!(
            "ciphertext of {size} polynomials (expected 2 or 3)"
        )));
    }
    let scale = d.f64("scale")?;
    if t == 0 {
        check_ckks_scale(ctx, ctx.level_of_limbs(limbs.len())?, scale)?;
    } else if scale != 1.0 {
        return Err(Error::Decode(format!(
            "BFV ciphertext with scale {scale} (always 1)"
        )));
    }
    let seeded = d.bool("seed flag")?;
    // `size` (2 or 3, checked) polynomials over the level's limbs.
    let mut words = Vec::with_capacity(size * limbs.len() * ctx.n());
    let seed = if seeded {
        if size != 2 {
            return Err(Error::Decode(
                "only size-2 ciphertexts can be seeded".into(),
            ));
        }
        d.allow(32);
        let s: [u8; 32] = d.bytes("seed")?;
        read_polys(ctx, d, &limbs, 1, &mut words)?;
        expand_seed(ctx, s, &limbs, &mut words);
        Some(s)
    } else {
        read_polys(ctx, d, &limbs, size, &mut words)?;
        None
    };
    let polys = ctx
        .backend()
        .upload(words, limbs, size, ctx.n(), Repr::Ntt)?;
    let mut ct = Ciphertext::fresh(ctx, polys, scale, 0);
    ct.seed = seed;
    Ok((ct, t))
}

impl Encode for Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn key_id(&self) -> u64 {
        self.key_id
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_ciphertext(ctx, e, self, 0, opts)
    }
    fn body_len(&self, ctx: &RlweContext, opts: &WriteOptions) -> usize {
        ciphertext_body_len(ctx, self, opts)
    }
}

impl Decode for Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "ciphertext")?;
        let (mut ct, t) = read_ciphertext(ctx, d)?;
        ct.key_id = key_id;
        if t != 0 {
            return Err(Error::WrongObject {
                expected: "a CKKS ciphertext".into(),
                found: "a BFV ciphertext (read it as bfv::Ciphertext)".into(),
            });
        }
        Ok(ct)
    }
}

impl Encode for bfv::Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn fingerprint(&self) -> u64 {
        self.inner.fingerprint
    }
    fn key_id(&self) -> u64 {
        self.inner.key_id
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_ciphertext(ctx, e, &self.inner, self.plain_modulus, opts)?;
        // The evaluator's noise estimate, so a loaded ciphertext is refused as soon as it would
        // be (see bfv::noise).
        e.f64(self.noise_log2)
    }
    fn body_len(&self, ctx: &RlweContext, opts: &WriteOptions) -> usize {
        ciphertext_body_len(ctx, &self.inner, opts) + 8
    }
}

impl Decode for bfv::Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "ciphertext")?;
        let (mut inner, t) = read_ciphertext(ctx, d)?;
        inner.key_id = key_id;
        if t == 0 {
            return Err(Error::WrongObject {
                expected: "a BFV ciphertext".into(),
                found: "a CKKS ciphertext".into(),
            });
        }
        d.allow(8);
        let noise_log2 = crate::bfv::noise::validate_noise_log2(d.f64("noise estimate")?)?;
        Ok(bfv::Ciphertext {
            inner,
            plain_modulus: t,
            noise_log2,
        })
    }
}

impl Encode for ckks::Plaintext {
    const KIND: Kind = Kind::Plaintext;
    fn fingerprint(&self) -> u64 {
        0
    }
    fn key_id(&self) -> u64 {
        0
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, _opts: &WriteOptions) -> Result<()> {
        let p = &self.poly;
        if *p.limbs() != *ctx.q_limbs(self.level()) || p.count() != 1 {
            return Err(Error::InvalidInput(
                "plaintext is not one polynomial over its level's primes".into(),
            ));
        }
        e.u8(self.level() as u8)?;
        e.u8(matches!(p.repr(), Repr::Ntt) as u8)?;
        e.f64(self.scale)?;
        write_polys(ctx, e, p, 0..1)
    }
}

impl Decode for ckks::Plaintext {
    const KIND: Kind = Kind::Plaintext;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        if key_id != 0 {
            return Err(Error::Decode(
                "a plaintext belongs to no key set (its key-set identifier must be 0)".into(),
            ));
        }
        d.allow(1 + 1 + 8);
        let level = d.u8("level")?;
        let limbs = level_limbs(ctx, level)?;
        let repr = if d.bool("representation")? {
            Repr::Ntt
        } else {
            Repr::Coeff
        };
        let scale = d.f64("scale")?;
        // Encoding needs scale ≥ 1; a plaintext at a scale of Q_level / 2 or more could hold
        // no value of magnitude ≥ 1.
        let log_q: f64 = limbs
            .iter()
            .map(|&l| (ctx.ring().modulus(l).value() as f64).log2())
            .sum();
        if !scale.is_finite() || scale < 1.0 || scale.log2() > log_q - 1.0 {
            return Err(Error::Decode(format!(
                "plaintext scale {scale:e} outside [1, Q/2] at level {level}"
            )));
        }
        let mut words = Vec::new();
        read_polys(ctx, d, &limbs, 1, &mut words)?;
        let poly = ctx.backend().upload(words, limbs, 1, ctx.n(), repr)?;
        Ok(ckks::Plaintext {
            poly,
            scale,
            level: level as usize,
        })
    }
}

impl Encode for PublicKey {
    const KIND: Kind = Kind::PublicKey;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn key_id(&self) -> u64 {
        self.key_id
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_pair(ctx, e, &self.polys, self.seed, opts)
    }
}

impl Decode for PublicKey {
    const KIND: Kind = Kind::PublicKey;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "public key")?;
        let (polys, seed) = read_pair(ctx, d, ctx.qp_limbs(ctx.max_level()))?;
        Ok(PublicKey {
            polys,
            fingerprint: ctx.fingerprint(),
            seed,
            key_id,
        })
    }
}

pub(crate) fn write_ksk(
    ctx: &RlweContext,
    e: &mut Encoder,
    k: &KeySwitchKey,
    opts: &WriteOptions,
) -> Result<()> {
    e.u8(k.digits.len() as u8)?;
    for (i, digit) in k.digits.iter().enumerate() {
        write_pair(ctx, e, digit, k.seeds.get(i).copied().flatten(), opts)?;
    }
    Ok(())
}

/// The fewest bytes a key-switching key can take (every digit seeded).
fn min_ksk_bytes(ctx: &RlweContext) -> u64 {
    1 + ctx.digits().len() as u64 * (1 + 32 + poly_bytes(ctx, &ctx.qp_limbs(ctx.max_level())))
}

fn read_ksk(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<KeySwitchKey> {
    read_ksk_over(
        ctx,
        d,
        key_id,
        ctx.qp_limbs(ctx.max_level()),
        ctx.digits().len(),
    )
}

/// A key-switching key of `expected` digits over `limbs` (a full key: every digit over the
/// whole `QP`; a low one, like bootstrapping's switch to its sparse key: fewer of both).
pub(crate) fn read_ksk_over(
    ctx: &RlweContext,
    d: &mut Decoder,
    key_id: u64,
    limbs: Arc<[usize]>,
    expected: usize,
) -> Result<KeySwitchKey> {
    d.allow(1);
    let count = d.u8("digit count")? as usize;
    if count != expected {
        return Err(Error::Decode(format!(
            "key-switching key with {count} digits; the parameters have {expected}"
        )));
    }
    d.require(
        count as u64 * (1 + 32 + poly_bytes(ctx, &limbs)),
        &format!("a key-switching key of {count} digits"),
    )?;
    let mut digits = Vec::with_capacity(count);
    let mut seeds = Vec::with_capacity(count);
    for _ in 0..count {
        let (p, s) = read_pair(ctx, d, limbs.clone())?;
        digits.push(p);
        seeds.push(s);
    }
    Ok(KeySwitchKey {
        digits,
        fingerprint: ctx.fingerprint(),
        seeds,
        key_id,
    })
}

impl Encode for RelinKey {
    const KIND: Kind = Kind::RelinKey;
    fn fingerprint(&self) -> u64 {
        self.0.fingerprint
    }
    fn key_id(&self) -> u64 {
        self.0.key_id
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_ksk(ctx, e, &self.0, opts)
    }
}

impl Decode for RelinKey {
    const KIND: Kind = Kind::RelinKey;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "relinearization key")?;
        Ok(RelinKey(read_ksk(ctx, d, key_id)?))
    }
}

impl Encode for GaloisKeys {
    const KIND: Kind = Kind::GaloisKeys;
    fn fingerprint(&self) -> u64 {
        self.keys.values().next().map_or(0, |k| k.fingerprint)
    }
    /// The key set of the keys (a set mixing key sets cannot be written, see `encode`).
    fn key_id(&self) -> u64 {
        self.keys.values().next().map_or(0, |k| k.key_id)
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        let id = self.key_id();
        if self.keys.values().any(|k| k.key_id != id) {
            return Err(Error::KeyMismatch(
                "a Galois key set mixing keys of different key sets cannot be serialized".into(),
            ));
        }
        // The format holds full keys; keys below the top level (`generate_below`) would not
        // read back. Bootstrapping keys write theirs with their prime counts.
        let all = ctx.q_limbs(ctx.max_level()).len();
        if let Some((g, q)) = self.q_counts(ctx).into_iter().find(|&(_, q)| q != all) {
            return Err(Error::InvalidInput(format!(
                "the Galois key for element {g} covers {q} of the chain's {all} ciphertext primes; a serialized Galois key set holds full keys (make them with gen_galois_keys)"
            )));
        }
        let elements = self.elements();
        e.u32(elements.len() as u32)?;
        for g in elements {
            e.u32(g as u32)?;
            write_ksk(ctx, e, &self.keys[&g], opts)?;
        }
        Ok(())
    }
}

impl Decode for GaloisKeys {
    const KIND: Kind = Kind::GaloisKeys;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        d.allow(4);
        let count = d.u32("Galois key count")? as usize;
        let two_n = 2 * ctx.n();
        // Distinct odd elements below 2N: at most N keys.
        if count > ctx.n() {
            return Err(Error::Decode(format!(
                "{count} Galois keys for N = {} (at most N exist)",
                ctx.n()
            )));
        }
        // Refuse before allocating if the body cannot hold that many keys (a small compressed
        // frame claiming thousands of all-zero keys).
        d.require(
            count as u64 * (4 + min_ksk_bytes(ctx)),
            &format!("a set of {count} Galois keys"),
        )?;
        let key_id = if count == 0 {
            key_id
        } else {
            key_set(key_id, "Galois keys")?
        };
        let mut keys = std::collections::HashMap::new();
        let mut last = 0usize;
        for _ in 0..count {
            d.allow(4);
            let g = d.u32("Galois element")? as usize;
            if g.is_multiple_of(2) || g >= two_n || g <= last {
                return Err(Error::Decode(format!(
                    "Galois element {g} is not odd, below 2N and increasing"
                )));
            }
            last = g;
            keys.insert(g, read_ksk(ctx, d, key_id)?);
        }
        Ok(GaloisKeys { keys })
    }
}

impl Encode for SecretKey {
    const KIND: Kind = Kind::SecretKey;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn key_id(&self) -> u64 {
        self.key_id
    }
    /// Two bits per ternary coefficient (0, 1, −1 ↦ 0, 1, 2); the staging buffer is wiped.
    /// A key that is not ternary (the sum of multiparty shares) is refused.
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, _opts: &WriteOptions) -> Result<()> {
        if self.coeffs.len() != ctx.n() {
            return Err(Error::InvalidInput(
                "this secret key has no ternary coefficients (a multiparty threshold share) and \
                 cannot be serialized"
                    .into(),
            ));
        }
        let mut packed = Zeroizing::new(vec![0u8; self.coeffs.len().div_ceil(4)]);
        for (i, &c) in self.coeffs.iter().enumerate() {
            let code = match c {
                0 => 0u8,
                1 => 1,
                -1 => 2,
                _ => {
                    return Err(Error::InvalidInput(
                        "only ternary secret keys can be serialized (this one is a sum of \
                         multiparty shares)"
                            .into(),
                    ))
                }
            };
            packed[i / 4] |= code << (2 * (i % 4));
        }
        e.bytes(&packed)
    }
}

impl Decode for SecretKey {
    const KIND: Kind = Kind::SecretKey;
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "secret key")?;
        let n = ctx.n();
        d.allow(n as u64 / 4);
        let mut coeffs = Zeroizing::new(vec![0i8; n]);
        let mut wide = Zeroizing::new(vec![0i64; n]);
        for chunk in 0..n / 4 {
            let mut b: [u8; 1] = d.bytes("secret key")?;
            for k in 0..4 {
                let c = match (b[0] >> (2 * k)) & 3 {
                    0 => 0i8,
                    1 => 1,
                    2 => -1,
                    _ => {
                        return Err(Error::Decode(
                            "secret key coefficient is not ternary".into(),
                        ))
                    }
                };
                coeffs[chunk * 4 + k] = c;
                wide[chunk * 4 + k] = c as i64;
            }
            b.zeroize();
        }
        let ntt = ctx.upload_signed_ntt(&wide, ctx.qp_limbs(ctx.max_level()))?;
        Ok(SecretKey {
            coeffs: std::mem::take(&mut *coeffs),
            ntt,
            fingerprint: ctx.fingerprint(),
            key_id,
        })
    }
}

impl Encode for crate::mhe::Share {
    const KIND: Kind = Kind::MheShare;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn key_id(&self) -> u64 {
        self.key_id
    }
    /// Protocol tag (u8), index (u64: Galois element or run), level (u8), then the parts'
    /// polynomials, whose number and primes the protocol and level fix.
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, _opts: &WriteOptions) -> Result<()> {
        self.expect(ctx, self.protocol, self.level, self.key_id)?;
        let (tag, index) = self.protocol.to_wire();
        e.u8(tag)?;
        e.u64(index)?;
        e.u8(self.level as u8)?;
        for p in &self.parts {
            write_polys(ctx, e, p, 0..p.count())?;
        }
        Ok(())
    }
}

impl Decode for crate::mhe::Share {
    const KIND: Kind = Kind::MheShare;
    /// Allocates only what the protocol's shape at the stated level needs (at most
    /// `2·dnum` polynomials over `QP`, for RKG round 1).
    fn decode(ctx: &RlweContext, d: &mut Decoder, key_id: u64) -> Result<Self> {
        let key_id = key_set(key_id, "multiparty share")?;
        d.allow(1 + 8 + 1);
        let tag = d.u8("protocol")?;
        let index = d.u64("protocol index")?;
        let protocol = crate::mhe::Protocol::from_wire(tag, index, ctx.n())?;
        let level = d.u8("level")? as usize;
        let shape = crate::mhe::share_shape(ctx, protocol, level)
            .map_err(|e| Error::Decode(e.to_string()))?;
        let total: u64 = shape
            .iter()
            .map(|(limbs, count)| *count as u64 * poly_bytes(ctx, limbs))
            .sum();
        d.require(total, &format!("a {protocol:?} share"))?;
        let mut parts = Vec::with_capacity(shape.len());
        for (limbs, count) in shape {
            let mut words = Vec::new();
            read_polys(ctx, d, &limbs, count, &mut words)?;
            parts.push(
                ctx.backend()
                    .upload(words, limbs, count, ctx.n(), Repr::Ntt)?,
            );
        }
        Ok(crate::mhe::Share {
            protocol,
            level,
            parts,
            fingerprint: ctx.fingerprint(),
            key_id,
        })
    }
}

/// Parameters of either scheme, as stored in parameter objects and contexts.
#[derive(Clone, Debug)]
pub enum SchemeParams {
    /// CKKS.
    Ckks(CkksParams),
    /// BFV.
    Bfv(BfvParams),
}

impl SchemeParams {
    /// The RLWE parameters underneath.
    pub fn rlwe(&self) -> &RlweParams {
        match self {
            Self::Ckks(p) => &p.rlwe,
            Self::Bfv(p) => &p.rlwe,
        }
    }
}

/// Top bit of the CKKS scale byte: a level shape (base primes, primes per level) follows.
const COMPOSITE_FLAG: u8 = 0x80;
/// Next bit: the shape has a low segment; its level count, width and the upper scale follow.
const SEGMENTED_FLAG: u8 = 0x40;
/// The scale byte's other bits: log2 Δ, or 0 where a composite chain's wider scale
/// (above 2^63) follows the level shape in a byte of its own.
const SCALE_BITS_MASK: u8 = !(COMPOSITE_FLAG | SEGMENTED_FLAG);

/// Largest prime lists a parameter object may declare (2^16 at 128 bits needs ~60 primes).
const MAX_PRIMES: usize = 128;

pub(crate) fn write_params(e: &mut Encoder, p: &SchemeParams) -> Result<()> {
    let r = p.rlwe();
    e.u8(match p {
        SchemeParams::Ckks(_) => 1,
        SchemeParams::Bfv(_) => 2,
    })?;
    e.u8(r.n.trailing_zeros() as u8)?;
    e.u8(r.dnum as u8)?;
    e.u8(match r.security {
        Security::Bits128 => 0,
        Security::InsecureForTestingOnly => 1,
    })?;
    for list in [&r.q, &r.p, &r.aux] {
        e.u8(list.len() as u8)?;
        for &x in list.iter() {
            e.u32(x)?;
        }
    }
    match p {
        // A composite chain sets the top bit of the scale byte and appends its level shape,
        // so single-prime parameter objects keep their bytes.
        SchemeParams::Ckks(c) if r.shape == LevelShape::SINGLE => e.u8(c.scale_bits as u8),
        SchemeParams::Ckks(c) => {
            let segmented = r.shape.is_segmented();
            let flags = COMPOSITE_FLAG | if segmented { SEGMENTED_FLAG } else { 0 };
            // Six bits hold scales up to 2^63; a wider one writes 0 there and its own byte.
            let wide = c.scale_bits > SCALE_BITS_MASK as u32;
            e.u8(if wide { 0 } else { c.scale_bits as u8 } | flags)?;
            e.u8(r.shape.base as u8)?;
            e.u8(r.shape.width as u8)?;
            if wide {
                e.u8(c.scale_bits as u8)?;
            }
            if segmented {
                e.u8(r.shape.low_levels as u8)?;
                e.u8(r.shape.low_width as u8)?;
                e.u8(c.upper_scale_bits.unwrap_or(c.scale_bits) as u8)?;
            }
            Ok(())
        }
        SchemeParams::Bfv(b) => e.u64(b.plain_modulus),
    }
}

/// Reads parameters and validates them as the constructors do, 128-bit check included: a
/// parameter set marked insecure is accepted only with [`DecodeOptions::allow_insecure`]
/// (or if it meets 128-bit security anyway).
pub(crate) fn read_params(d: &mut Decoder, opts: &DecodeOptions) -> Result<SchemeParams> {
    d.allow(4);
    let scheme = d.u8("scheme")?;
    let log_n = d.u8("ring degree")?;
    if !(10..=16).contains(&log_n) {
        return Err(Error::Decode(format!("log2 N = {log_n} outside 10..=16")));
    }
    let dnum = d.u8("dnum")? as usize;
    let security = match d.u8("security")? {
        0 => Security::Bits128,
        1 => Security::InsecureForTestingOnly,
        s => return Err(Error::Decode(format!("unknown security setting {s}"))),
    };
    let mut lists: [Vec<u32>; 3] = Default::default();
    for list in lists.iter_mut() {
        d.allow(1);
        let len = d.u8("prime count")? as usize;
        if len > MAX_PRIMES {
            return Err(Error::Decode(format!(
                "{len} primes (at most {MAX_PRIMES})"
            )));
        }
        d.allow(4 * len as u64);
        for _ in 0..len {
            list.push(d.u32("prime")?);
        }
    }
    let [q, p, aux] = lists;
    let checked = if opts.allow_insecure {
        security
    } else {
        Security::Bits128
    };
    let rejected = |e: Error| match e {
        e @ Error::InsecureParameters { .. } => e,
        e => Error::Decode(format!("the stored parameters are rejected: {e}")),
    };
    d.allow(8);
    match scheme {
        1 => {
            let byte = d.u8("scale bits")?;
            let mut scale_bits = (byte & SCALE_BITS_MASK) as u32;
            let (shape, upper) = if byte & COMPOSITE_FLAG != 0 {
                d.allow(6);
                let base = d.u8("base primes")? as usize;
                let width = d.u8("primes per level")? as usize;
                if scale_bits == 0 {
                    scale_bits = d.u8("wide scale bits")? as u32;
                    if scale_bits <= SCALE_BITS_MASK as u32 {
                        return Err(Error::Decode(format!(
                            "a wide scale byte of {scale_bits} (it follows only scales above 2^63)"
                        )));
                    }
                }
                if byte & SEGMENTED_FLAG != 0 {
                    let low_levels = d.u8("computation levels")? as usize;
                    let low_width = d.u8("primes per computation level")? as usize;
                    let upper = d.u8("upper scale bits")? as u32;
                    (
                        LevelShape::two_segment(base, low_levels, low_width, width),
                        Some(upper),
                    )
                } else {
                    (LevelShape::uniform(base, width), None)
                }
            } else {
                (LevelShape::SINGLE, None)
            };
            if ![Some(scale_bits), upper]
                .iter()
                .flatten()
                .all(|b| (1..=MAX_SCALE_BITS).contains(b))
            {
                return Err(Error::Decode(format!(
                    "scale of 2^{scale_bits} or {upper:?}"
                )));
            }
            let rlwe = RlweParams::with_shape(1 << log_n, q, p, aux, dnum, checked, shape)
                .map_err(rejected)?;
            // Keep the setting the writer declared (it is part of what gets written back).
            let rlwe = RlweParams { security, ..rlwe };
            Ok(SchemeParams::Ckks(CkksParams {
                rlwe,
                scale_bits,
                upper_scale_bits: upper.filter(|_| shape.is_segmented()),
            }))
        }
        2 => {
            let plain_modulus = d.u64("plaintext modulus")?;
            let rlwe = RlweParams::new(1 << log_n, q, p, aux, dnum, checked).map_err(rejected)?;
            let rlwe = RlweParams { security, ..rlwe };
            Ok(SchemeParams::Bfv(BfvParams {
                rlwe,
                plain_modulus,
            }))
        }
        s => Err(Error::Decode(format!("unknown scheme {s}"))),
    }
}
