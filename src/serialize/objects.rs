//! Bodies of the individual objects. Every decoder validates each count against the
//! parameters before it reads (or allocates for) what the count describes.

use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::wire::{Decoder, Encoder, Kind};
use super::WriteOptions;
use crate::backend::{PolyBatch, Repr};
use crate::bfv::{self, BfvParams};
use crate::ckks::{self, CkksParams};
use crate::error::{Error, Result};
use crate::math::sampler::Sampler;
use crate::rlwe::{
    Ciphertext, GaloisKeys, KeySwitchKey, PublicKey, RelinKey, RlweContext, RlweParams, SecretKey,
    Security,
};

/// An object that can be written in the hetensor format under an RLWE context.
pub trait Encode {
    /// Header kind.
    const KIND: Kind;
    /// Parameter fingerprint the object carries.
    fn fingerprint(&self) -> u64;
    /// Writes the body.
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()>;
}

/// An object that can be read back under an RLWE context (onto that context's backend).
pub trait Decode: Sized {
    /// Header kind.
    const KIND: Kind;
    /// Reads and validates the body.
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self>;
}

/// Writes polynomials `polys` of `p` (all limbs of each), each limb at its modulus' width.
fn write_polys(
    ctx: &RlweContext,
    e: &mut Encoder,
    p: &PolyBatch,
    polys: std::ops::Range<usize>,
) -> Result<()> {
    let words = ctx.backend().download(p)?;
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
    for _ in 0..count {
        for &l in limbs {
            d.residues_into(out, ctx.n(), ctx.ring().modulus(l))?;
        }
    }
    Ok(())
}

/// The uniform polynomial a seed expands to over `limbs`, exactly as key generation and
/// symmetric encryption drew it.
fn expand_seed(ctx: &RlweContext, seed: [u8; 32], limbs: &[usize]) -> Vec<u32> {
    let moduli: Vec<_> = limbs.iter().map(|&l| *ctx.ring().modulus(l)).collect();
    Sampler::uniform_from_seed(seed, &moduli, ctx.n())
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
    let seeded = d.bool("seed flag")?;
    let mut words = Vec::new();
    let seed = if seeded {
        let s: [u8; 32] = d.bytes("seed")?;
        read_polys(ctx, d, &limbs, 1, &mut words)?;
        words.extend(expand_seed(ctx, s, &limbs));
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
    match ct.seed.filter(|_| opts.seeded && ct.size() == 2) {
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

fn read_ciphertext(ctx: &RlweContext, d: &mut Decoder) -> Result<(Ciphertext, u64)> {
    let t = d.u64("plaintext modulus")?;
    let limbs = level_limbs(ctx, d.u8("level")?)?;
    let size = d.u8("size")? as usize;
    if !(2..=3).contains(&size) {
        return Err(Error::Decode(format!(
            "ciphertext of {size} polynomials (expected 2 or 3)"
        )));
    }
    let scale = d.f64("scale")?;
    if !scale.is_finite() || scale <= 0.0 {
        return Err(Error::Decode(format!(
            "scale {scale} is not a positive number"
        )));
    }
    let seeded = d.bool("seed flag")?;
    let mut words = Vec::new();
    let seed = if seeded {
        if size != 2 {
            return Err(Error::Decode(
                "only size-2 ciphertexts can be seeded".into(),
            ));
        }
        let s: [u8; 32] = d.bytes("seed")?;
        read_polys(ctx, d, &limbs, 1, &mut words)?;
        words.extend(expand_seed(ctx, s, &limbs));
        Some(s)
    } else {
        read_polys(ctx, d, &limbs, size, &mut words)?;
        None
    };
    let polys = ctx
        .backend()
        .upload(words, limbs, size, ctx.n(), Repr::Ntt)?;
    let mut ct = Ciphertext::new(polys, scale, ctx.fingerprint());
    ct.seed = seed;
    Ok((ct, t))
}

impl Encode for Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_ciphertext(ctx, e, self, 0, opts)
    }
}

impl Decode for Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        let (ct, t) = read_ciphertext(ctx, d)?;
        if t != 0 {
            return Err(Error::Decode(
                "this is a BFV ciphertext; load it as bfv::Ciphertext".into(),
            ));
        }
        Ok(ct)
    }
}

impl Encode for bfv::Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn fingerprint(&self) -> u64 {
        self.inner.fingerprint
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_ciphertext(ctx, e, &self.inner, self.plain_modulus, opts)
    }
}

impl Decode for bfv::Ciphertext {
    const KIND: Kind = Kind::Ciphertext;
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        let (inner, t) = read_ciphertext(ctx, d)?;
        if t == 0 {
            return Err(Error::Decode(
                "this is a CKKS ciphertext, not a BFV one".into(),
            ));
        }
        Ok(bfv::Ciphertext {
            inner,
            plain_modulus: t,
        })
    }
}

impl Encode for ckks::Plaintext {
    const KIND: Kind = Kind::Plaintext;
    fn fingerprint(&self) -> u64 {
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
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        let limbs = level_limbs(ctx, d.u8("level")?)?;
        let repr = if d.bool("representation")? {
            Repr::Ntt
        } else {
            Repr::Coeff
        };
        let scale = d.f64("scale")?;
        if !scale.is_finite() || scale <= 0.0 {
            return Err(Error::Decode(format!(
                "scale {scale} is not a positive number"
            )));
        }
        let mut words = Vec::new();
        read_polys(ctx, d, &limbs, 1, &mut words)?;
        let poly = ctx.backend().upload(words, limbs, 1, ctx.n(), repr)?;
        Ok(ckks::Plaintext { poly, scale })
    }
}

impl Encode for PublicKey {
    const KIND: Kind = Kind::PublicKey;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_pair(ctx, e, &self.polys, self.seed, opts)
    }
}

impl Decode for PublicKey {
    const KIND: Kind = Kind::PublicKey;
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        let (polys, seed) = read_pair(ctx, d, ctx.qp_limbs(ctx.max_level()))?;
        Ok(PublicKey {
            polys,
            fingerprint: ctx.fingerprint(),
            seed,
        })
    }
}

fn write_ksk(
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

fn read_ksk(ctx: &RlweContext, d: &mut Decoder) -> Result<KeySwitchKey> {
    let count = d.u8("digit count")? as usize;
    let expected = ctx.digits().len();
    if count != expected {
        return Err(Error::Decode(format!(
            "key-switching key with {count} digits; the parameters have {expected}"
        )));
    }
    let limbs = ctx.qp_limbs(ctx.max_level());
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
    })
}

impl Encode for RelinKey {
    const KIND: Kind = Kind::RelinKey;
    fn fingerprint(&self) -> u64 {
        self.0.fingerprint
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
        write_ksk(ctx, e, &self.0, opts)
    }
}

impl Decode for RelinKey {
    const KIND: Kind = Kind::RelinKey;
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        Ok(RelinKey(read_ksk(ctx, d)?))
    }
}

impl Encode for GaloisKeys {
    const KIND: Kind = Kind::GaloisKeys;
    fn fingerprint(&self) -> u64 {
        self.keys.values().next().map_or(0, |k| k.fingerprint)
    }
    fn encode(&self, ctx: &RlweContext, e: &mut Encoder, opts: &WriteOptions) -> Result<()> {
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
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        let count = d.u32("Galois key count")? as usize;
        let two_n = 2 * ctx.n();
        // Distinct odd elements below 2N: at most N keys.
        if count > ctx.n() {
            return Err(Error::Decode(format!(
                "{count} Galois keys for N = {} (at most N exist)",
                ctx.n()
            )));
        }
        let mut keys = std::collections::HashMap::new();
        let mut last = 0usize;
        for _ in 0..count {
            let g = d.u32("Galois element")? as usize;
            if g % 2 == 0 || g >= two_n || g <= last {
                return Err(Error::Decode(format!(
                    "Galois element {g} is not odd, below 2N and increasing"
                )));
            }
            last = g;
            keys.insert(g, read_ksk(ctx, d)?);
        }
        Ok(GaloisKeys { keys })
    }
}

impl Encode for SecretKey {
    const KIND: Kind = Kind::SecretKey;
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    /// Two bits per ternary coefficient (0, 1, −1 ↦ 0, 1, 2); the staging buffer is wiped.
    fn encode(&self, _ctx: &RlweContext, e: &mut Encoder, _opts: &WriteOptions) -> Result<()> {
        let mut packed = Zeroizing::new(vec![0u8; self.coeffs.len().div_ceil(4)]);
        for (i, &c) in self.coeffs.iter().enumerate() {
            let code = match c {
                0 => 0u8,
                1 => 1,
                _ => 2,
            };
            packed[i / 4] |= code << (2 * (i % 4));
        }
        e.bytes(&packed)
    }
}

impl Decode for SecretKey {
    const KIND: Kind = Kind::SecretKey;
    fn decode(ctx: &RlweContext, d: &mut Decoder) -> Result<Self> {
        let n = ctx.n();
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
        SchemeParams::Ckks(c) => e.u8(c.scale_bits as u8),
        SchemeParams::Bfv(b) => e.u64(b.plain_modulus),
    }
}

pub(crate) fn read_params(d: &mut Decoder) -> Result<SchemeParams> {
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
        let len = d.u8("prime count")? as usize;
        if len > MAX_PRIMES {
            return Err(Error::Decode(format!(
                "{len} primes (at most {MAX_PRIMES})"
            )));
        }
        for _ in 0..len {
            list.push(d.u32("prime")?);
        }
    }
    let [q, p, aux] = lists;
    let rlwe = RlweParams::new(1 << log_n, q, p, aux, dnum, security)
        .map_err(|e| Error::Decode(format!("the stored parameters are rejected: {e}")))?;
    match scheme {
        1 => {
            let scale_bits = d.u8("scale bits")? as u32;
            if !(1..30).contains(&scale_bits) {
                return Err(Error::Decode(format!("scale of 2^{scale_bits}")));
            }
            Ok(SchemeParams::Ckks(CkksParams { rlwe, scale_bits }))
        }
        2 => {
            let plain_modulus = d.u64("plaintext modulus")?;
            Ok(SchemeParams::Bfv(BfvParams {
                rlwe,
                plain_modulus,
            }))
        }
        s => Err(Error::Decode(format!("unknown scheme {s}"))),
    }
}
