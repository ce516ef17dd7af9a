//! Public and secret contexts: what a key owner hands to workers, and what only it keeps.

use std::io::{Read, Write};
use std::sync::Arc;

use super::objects::{read_params, write_params, Decode, Encode, SchemeParams};
use super::wire::Kind;
use super::{read_framed, write_framed, DecodeOptions, WriteOptions};
use crate::backend::Backend;
use crate::bfv::BfvContext;
use crate::ckks::CkksContext;
use crate::error::{Error, Result};
use crate::rlwe::{GaloisKeys, PublicKey, RelinKey, RlweContext, SecretKey};

/// A scheme context that can be rebuilt from its serialized parameters.
pub trait SchemeContext: Sized {
    /// The RLWE context underneath.
    fn rlwe_context(&self) -> &Arc<RlweContext>;
    /// The parameters, for writing.
    fn scheme_params(&self) -> SchemeParams;
    /// Rebuilds a context on `backend` (fresh OS randomness for new encryptions).
    fn from_scheme_params(params: SchemeParams, backend: Arc<dyn Backend>) -> Result<Self>;
}

impl SchemeContext for CkksContext {
    fn rlwe_context(&self) -> &Arc<RlweContext> {
        self.rlwe()
    }
    fn scheme_params(&self) -> SchemeParams {
        SchemeParams::Ckks(self.params().clone())
    }
    fn from_scheme_params(params: SchemeParams, backend: Arc<dyn Backend>) -> Result<Self> {
        match params {
            SchemeParams::Ckks(p) => CkksContext::with_backend(p, backend),
            SchemeParams::Bfv(_) => Err(Error::WrongObject {
                expected: "a CKKS context".into(),
                found: BFV_CONTEXT.into(),
            }),
        }
    }
}

impl SchemeContext for BfvContext {
    fn rlwe_context(&self) -> &Arc<RlweContext> {
        self.rlwe()
    }
    fn scheme_params(&self) -> SchemeParams {
        SchemeParams::Bfv(self.params().clone())
    }
    fn from_scheme_params(params: SchemeParams, backend: Arc<dyn Backend>) -> Result<Self> {
        match params {
            SchemeParams::Bfv(p) => BfvContext::with_backend(p, backend),
            SchemeParams::Ckks(_) => Err(Error::WrongObject {
                expected: BFV_CONTEXT.into(),
                found: "a CKKS context".into(),
            }),
        }
    }
}

/// How [`Error::WrongObject`] names a BFV context (what a caller holding a context's bytes of
/// unknown scheme matches on to try the other).
pub const BFV_CONTEXT: &str = "a BFV context";

/// Reads the parameters at the start of a context body and rebuilds the context, checking that
/// they match the header's fingerprint.
fn rebuild<C: SchemeContext>(
    d: &mut super::Decoder,
    fingerprint: u64,
    backend: Arc<dyn Backend>,
    opts: &DecodeOptions,
) -> Result<C> {
    let params = read_params(d, opts)?;
    if params.rlwe().fingerprint() != fingerprint {
        return Err(Error::Decode(
            "parameters do not match the header's fingerprint".into(),
        ));
    }
    C::from_scheme_params(params, backend)
}

/// Writes parameters only (no keys): enough to agree on a context, e.g. in a handshake.
pub fn write_params_only(w: &mut dyn Write, params: &SchemeParams) -> Result<()> {
    write_framed(
        w,
        Kind::Params,
        params.rlwe().fingerprint(),
        0,
        &WriteOptions::default(),
        |e| write_params(e, params),
    )
}

/// Reads a parameter object written by [`write_params_only`] (parameters below 128-bit
/// security are [`Error::InsecureParameters`]; see [`read_params_only_with`]).
pub fn read_params_only(r: &mut dyn Read) -> Result<SchemeParams> {
    read_params_only_with(r, DecodeOptions::default())
}

/// [`read_params_only`] with explicit [`DecodeOptions`].
pub fn read_params_only_with(r: &mut dyn Read, opts: DecodeOptions) -> Result<SchemeParams> {
    read_framed(r, Kind::Params, None, |d, h| {
        if h.key_id != 0 {
            return Err(Error::Decode(
                "parameters belong to no key set (key-set identifier must be 0)".into(),
            ));
        }
        let p = read_params(d, &opts)?;
        if p.rlwe().fingerprint() != h.fingerprint {
            return Err(Error::Decode(
                "parameters do not match the header's fingerprint".into(),
            ));
        }
        Ok(p)
    })
}

/// Parameters plus the keys anyone may hold: the public key, and optionally the
/// relinearization and Galois keys. Never contains the secret key.
#[derive(Debug)]
pub struct PublicContext<C> {
    /// The scheme context (on the backend it was loaded onto).
    pub context: C,
    /// Encryption key.
    pub public_key: PublicKey,
    /// Relinearization key, if the owner shared one.
    pub relin_key: Option<RelinKey>,
    /// Rotation keys, if the owner shared them.
    pub galois_keys: Option<GaloisKeys>,
}

impl<C: SchemeContext> PublicContext<C> {
    /// Writes a public context from borrowed parts (the key owner need not clone its keys).
    pub fn write_parts(
        w: &mut dyn Write,
        context: &C,
        public_key: &PublicKey,
        relin_key: Option<&RelinKey>,
        galois_keys: Option<&GaloisKeys>,
        opts: WriteOptions,
    ) -> Result<()> {
        let ctx = context.rlwe_context();
        ctx.check_fingerprint(public_key.fingerprint, "public key")?;
        let id = public_key.key_id;
        if let Some(r) = relin_key {
            ctx.check_fingerprint(r.0.fingerprint, "relinearization key")?;
            crate::rlwe::ciphertext::check_key_id(id, r.0.key_id, "relinearization key")?;
        }
        if let Some(g) = galois_keys {
            for k in g.keys.values() {
                ctx.check_fingerprint(k.fingerprint, "Galois key")?;
                crate::rlwe::ciphertext::check_key_id(id, k.key_id, "Galois key")?;
            }
        }
        write_framed(w, Kind::PublicContext, ctx.fingerprint(), id, &opts, |e| {
            write_params(e, &context.scheme_params())?;
            e.u8(relin_key.is_some() as u8 | (galois_keys.is_some() as u8) << 1)?;
            public_key.encode(ctx, e, &opts)?;
            if let Some(r) = relin_key {
                r.encode(ctx, e, &opts)?;
            }
            if let Some(g) = galois_keys {
                g.encode(ctx, e, &opts)?;
            }
            Ok(())
        })
    }

    /// Writes this context.
    pub fn write_to(&self, mut w: impl Write, opts: WriteOptions) -> Result<()> {
        Self::write_parts(
            &mut w,
            &self.context,
            &self.public_key,
            self.relin_key.as_ref(),
            self.galois_keys.as_ref(),
            opts,
        )
    }

    /// Reads a public context and rebuilds it on `backend` (parameters below 128-bit security
    /// are [`Error::InsecureParameters`]; see [`Self::read_from_with`]).
    pub fn read_from(r: impl Read, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::read_from_with(r, backend, DecodeOptions::default())
    }

    /// [`Self::read_from`] with explicit [`DecodeOptions`].
    pub fn read_from_with(
        mut r: impl Read,
        backend: Arc<dyn Backend>,
        opts: DecodeOptions,
    ) -> Result<Self> {
        read_framed(&mut r, Kind::PublicContext, None, |d, h| {
            let context: C = rebuild(d, h.fingerprint, backend, &opts)?;
            let ctx = context.rlwe_context().clone();
            d.allow(1);
            let flags = d.u8("key flags")?;
            if flags & !3 != 0 {
                return Err(Error::Decode(format!("unknown key flags {flags:#04x}")));
            }
            let public_key = PublicKey::decode(&ctx, d, h.key_id)?;
            let relin_key = (flags & 1 != 0)
                .then(|| RelinKey::decode(&ctx, d, h.key_id))
                .transpose()?;
            let galois_keys = (flags & 2 != 0)
                .then(|| GaloisKeys::decode(&ctx, d, h.key_id))
                .transpose()?;
            Ok(Self {
                context,
                public_key,
                relin_key,
                galois_keys,
            })
        })
    }

    /// This context as bytes.
    pub fn to_bytes(&self, opts: WriteOptions) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v, opts)?;
        Ok(v)
    }

    /// Decodes exactly one public context from `bytes` (parameters below 128-bit security are
    /// [`Error::InsecureParameters`]; see [`Self::from_bytes_with`]).
    pub fn from_bytes(bytes: &[u8], backend: Arc<dyn Backend>) -> Result<Self> {
        Self::from_bytes_with(bytes, backend, DecodeOptions::default())
    }

    /// [`Self::from_bytes`] with explicit [`DecodeOptions`].
    pub fn from_bytes_with(
        bytes: &[u8],
        backend: Arc<dyn Backend>,
        opts: DecodeOptions,
    ) -> Result<Self> {
        let mut r = bytes;
        let v = Self::read_from_with(&mut r, backend, opts)?;
        no_trailing(r)?;
        Ok(v)
    }
}

fn no_trailing(rest: &[u8]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Error::Decode(format!(
            "{} trailing bytes after the context",
            rest.len()
        )))
    }
}

/// Parameters plus the secret key: what only the key owner keeps. Written uncompressed (no
/// copies of the key in compressor buffers); 2 bits per coefficient.
pub struct SecretContext<C> {
    /// The scheme context.
    pub context: C,
    /// The secret key (zeroized on drop).
    pub secret_key: SecretKey,
}

impl<C> std::fmt::Debug for SecretContext<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretContext({:?})", self.secret_key)
    }
}

impl<C: SchemeContext> SecretContext<C> {
    /// Writes a secret context from borrowed parts.
    pub fn write_parts(w: &mut dyn Write, context: &C, secret_key: &SecretKey) -> Result<()> {
        let ctx = context.rlwe_context();
        ctx.check_fingerprint(secret_key.fingerprint, "secret key")?;
        let opts = WriteOptions::default();
        let id = secret_key.key_id;
        write_framed(w, Kind::SecretContext, ctx.fingerprint(), id, &opts, |e| {
            write_params(e, &context.scheme_params())?;
            secret_key.encode(ctx, e, &opts)
        })
    }

    /// Writes this context.
    pub fn write_to(&self, mut w: impl Write) -> Result<()> {
        Self::write_parts(&mut w, &self.context, &self.secret_key)
    }

    /// Reads a secret context and rebuilds it on `backend` (parameters below 128-bit security
    /// are [`Error::InsecureParameters`]; see [`Self::read_from_with`]).
    pub fn read_from(r: impl Read, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::read_from_with(r, backend, DecodeOptions::default())
    }

    /// [`Self::read_from`] with explicit [`DecodeOptions`].
    pub fn read_from_with(
        mut r: impl Read,
        backend: Arc<dyn Backend>,
        opts: DecodeOptions,
    ) -> Result<Self> {
        read_framed(&mut r, Kind::SecretContext, None, |d, h| {
            let context: C = rebuild(d, h.fingerprint, backend, &opts)?;
            let secret_key = SecretKey::decode(context.rlwe_context(), d, h.key_id)?;
            Ok(Self {
                context,
                secret_key,
            })
        })
    }

    /// Decodes exactly one secret context from `bytes` (parameters below 128-bit security are
    /// [`Error::InsecureParameters`]; see [`Self::from_bytes_with`]).
    pub fn from_bytes(bytes: &[u8], backend: Arc<dyn Backend>) -> Result<Self> {
        Self::from_bytes_with(bytes, backend, DecodeOptions::default())
    }

    /// [`Self::from_bytes`] with explicit [`DecodeOptions`].
    pub fn from_bytes_with(
        bytes: &[u8],
        backend: Arc<dyn Backend>,
        opts: DecodeOptions,
    ) -> Result<Self> {
        let mut r = bytes;
        let v = Self::read_from_with(&mut r, backend, opts)?;
        no_trailing(r)?;
        Ok(v)
    }
}
