//! Compact, validated, versioned binary serialization.
//!
//! Every object starts with a 24-byte header: magic `HETN`, format version (u16), kind (u8),
//! flags (u8; bit 0 = zstd body), the 64-bit fingerprint of the RLWE parameters it belongs
//! to and the 64-bit identifier of its key set, and ends with a CRC-32C of all its bytes. Residues are bit-packed at the width of their prime (≤ 30 bits, no padding to 32 or 64),
//! and the uniform halves of fresh symmetric ciphertexts and of keys are stored as their 32-byte
//! seeds, which halves them.
//!
//! Decoding is strict: wrong magic, version, kind or parameters, truncation, trailing bytes,
//! a wrong checksum, counts that the parameters do not allow and residues `≥ q` are all
//! typed errors ([`Error::Truncated`] for bytes that end early, [`Error::ChecksumMismatch`],
//! [`Error::FormatVersion`], [`Error::ParameterMismatch`] for another context's object,
//! [`Error::WrongObject`] for another kind of object, [`Error::Decode`] for the rest;
//! [`Error::is_decode_failure`] groups those the bytes caused), never a
//! panic, and nothing is allocated on the strength of a length field alone: sizes come from
//! the validated parameters, and a compressed body may inflate at most [`MAX_EXPANSION`]-fold.
//!
//! What this protects against: accidental corruption (the checksum), objects of other
//! parameters or key sets, insecure parameters without the opt-in ([`DecodeOptions`]) and
//! oversized inputs. What it does not: a checksum is not a MAC, and HE ciphertexts are
//! malleable, so anyone can craft or modify an object that decodes (see the README).
//!
//! ```
//! use hetensor::ckks::{CkksContext, CkksParams};
//! use hetensor::rlwe::Ciphertext;
//! use hetensor::serialize::{self, WriteOptions};
//!
//! # fn main() -> hetensor::Result<()> {
//! let ctx = CkksContext::new(CkksParams::preset(13, 25)?)?;
//! let keys = ctx.keygen()?;
//! let pt = ctx.encode(&[1.0, 2.0, 3.0], ctx.default_scale(), ctx.max_level())?;
//! let ct = ctx.encrypt_symmetric(&pt, &keys.secret)?;
//! let bytes = serialize::to_bytes(ctx.rlwe(), &ct, WriteOptions::default())?;
//! let back: Ciphertext = serialize::from_bytes(ctx.rlwe(), &bytes)?;
//! assert!((ctx.decrypt_decode(&back, &keys.secret)?[2] - 3.0).abs() < 1e-2);
//! # Ok(()) }
//! ```

mod context;
pub(crate) mod objects;
mod wire;

use std::io::{Read, Write};
use std::marker::PhantomData;

pub use context::{
    read_params_only, read_params_only_with, write_params_only, PublicContext, SchemeContext,
    SecretContext, BFV_CONTEXT,
};
pub use objects::{Decode, Encode, SchemeParams};
pub use wire::{Decoder, Encoder, Header, Kind, CHECKSUM_LEN, FORMAT_VERSION, HEADER_LEN, MAGIC};

use crate::error::{Error, Result};
use crate::rlwe::RlweContext;

/// How objects are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// zstd level (1..=19) for the body, or `None` for raw packed words. Residues are close to
    /// uniform, so compression gains little on ciphertexts; it helps on sparse plaintexts.
    pub compression: Option<i32>,
    /// Store seeds instead of uniform polynomials where the object has them (default `true`).
    pub seeded: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            compression: None,
            seeded: true,
        }
    }
}

/// The zstd window the decoder accepts (2^23 = 8 MiB): what levels ≤ 19 produce, and a bound
/// on what a hostile frame can make the decoder allocate.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// How much a compressed body may expand. Ciphertexts and keys are uniform residues (plus
/// 32-byte seeds), which zstd cannot shrink by more than a few percent, so a body that inflates
/// by more than this is not a legitimate object of those kinds: the reader stops decompressing
/// there, and the writer stores such bodies (a ciphertext of zeros, say) uncompressed instead.
/// Without this bound a 2 MB frame of zeros could claim gigabytes of Galois keys.
pub const MAX_EXPANSION: u64 = 2;
/// Bytes a compressed body may have beyond `MAX_EXPANSION ×` its compressed length (the small
/// fixed fields: counts, flags, scale, parameters).
pub const EXPANSION_SLACK: u64 = 1024;

/// The most bytes a compressed body of `kind` and `compressed_len` bytes may inflate to.
/// Plaintexts, parameters and secret keys are legitimately compressible (a sparse plaintext
/// shrinks a lot) and are bounded by their parameters alone, which keep them small (one
/// polynomial at most).
pub(crate) fn expansion_cap(kind: Kind, compressed_len: u64) -> u64 {
    match kind {
        Kind::Plaintext | Kind::Params | Kind::SecretKey | Kind::SecretContext => u64::MAX,
        _ => compressed_len
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(EXPANSION_SLACK),
    }
}

/// How serialized input is trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Accept parameters marked [`crate::rlwe::Security::InsecureForTestingOnly`] that do not
    /// meet 128-bit security (the same opt-in the constructors need). Without it, such
    /// parameters are [`Error::InsecureParameters`], exactly as when they are constructed.
    pub allow_insecure: bool,
}

impl DecodeOptions {
    /// Options that accept insecure test parameters (tests and experiments only).
    pub fn allow_insecure() -> Self {
        Self {
            allow_insecure: true,
        }
    }
}

/// The writer's end of an object: passes bytes through and keeps their CRC-32C.
struct Sink<'a> {
    w: &'a mut dyn Write,
    crc: u32,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Counts the bytes written through it (the uncompressed body's length).
struct Counting<W>(W, u64);

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Writes a header, a body produced by `body` (compressed if asked and if the result stays
/// within [`MAX_EXPANSION`]; `body` then runs a second time, uncompressed) and the CRC-32C of
/// all of it.
pub(crate) fn write_framed(
    w: &mut dyn Write,
    kind: Kind,
    fingerprint: u64,
    key_id: u64,
    opts: &WriteOptions,
    body: impl Fn(&mut Encoder) -> Result<()>,
) -> Result<()> {
    let mut sink = Sink { w, crc: 0 };
    let header = |compressed| Header {
        kind,
        compressed,
        fingerprint,
        key_id,
    };
    let mut compressed = None;
    if let Some(level) = opts.compression {
        if !(1..=19).contains(&level) {
            return Err(Error::InvalidInput(format!(
                "zstd level {level} outside 1..=19"
            )));
        }
        let mut z = Counting(zstd::stream::Encoder::new(Vec::new(), level)?, 0);
        body(&mut Encoder::new(&mut z))?;
        let raw = z.1;
        let bytes = z.0.finish()?;
        if raw <= expansion_cap(kind, bytes.len() as u64) {
            compressed = Some(bytes);
        }
    }
    match compressed {
        Some(bytes) => {
            header(true).write(&mut sink)?;
            sink.write_all(&(bytes.len() as u64).to_le_bytes())?;
            sink.write_all(&bytes)?;
        }
        None => {
            header(false).write(&mut sink)?;
            body(&mut Encoder::new(&mut sink))?;
        }
    }
    let crc = sink.crc;
    sink.w.write_all(&crc.to_le_bytes())?;
    Ok(())
}

/// The reader's source: keeps the CRC-32C of the bytes read, and marks its own errors as
/// [`wire::SourceError`] so that only they become [`Error::Io`] (a corrupt zstd frame is also
/// reported as an I/O error by the decompressor, but is [`Error::Decode`]).
struct Source<'a> {
    r: &'a mut dyn Read,
    crc: u32,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .r
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), wire::SourceError(e)))?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

/// Reads a header, checks its kind (and fingerprint, when `expect_fingerprint` is given),
/// decodes the body with `body` (which must consume all of it, and which may read no more than
/// its decoders allow), and checks the CRC-32C trailer.
pub(crate) fn read_framed<T>(
    r: &mut dyn Read,
    kind: Kind,
    expect_fingerprint: Option<u64>,
    body: impl FnOnce(&mut Decoder, &Header) -> Result<T>,
) -> Result<T> {
    let mut src = Source { r, crc: 0 };
    let h = Header::read(&mut src)?;
    if h.kind != kind {
        return Err(Error::WrongObject {
            expected: format!("a {kind:?}"),
            found: format!("a {:?}", h.kind),
        });
    }
    if let Some(fp) = expect_fingerprint {
        if h.fingerprint != fp {
            return Err(Error::ParameterMismatch(format!(
                "{kind:?} was made for parameters {:016x}, this context has {fp:016x}",
                h.fingerprint
            )));
        }
    }
    let value = if h.compressed {
        let mut len = [0u8; 8];
        src.read_exact(&mut len)
            .map_err(|e| wire::map_read_error(e, "compressed length"))?;
        let len = u64::from_le_bytes(len);
        let mut limited = (&mut src).take(len);
        let value = {
            let z = zstd::stream::Decoder::new(&mut limited)
                .map_err(|e| Error::Decode(format!("zstd: {e}")))?;
            let mut z = z.single_frame();
            z.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| Error::Decode(format!("zstd: {e}")))?;
            let mut d = Decoder::new(&mut z, expansion_cap(kind, len));
            let v = body(&mut d, &h)?;
            d.expect_end()?;
            v
        };
        if limited.limit() != 0 {
            return Err(Error::Decode(
                "bytes left in the compressed body after the object".into(),
            ));
        }
        value
    } else {
        body(&mut Decoder::new(&mut src, u64::MAX), &h)?
    };
    let computed = src.crc;
    let mut stored = [0u8; CHECKSUM_LEN];
    // Read through `src` so that a failing source stays an I/O error (the CRC it then keeps
    // is not used).
    src.read_exact(&mut stored)
        .map_err(|e| wire::map_read_error(e, "checksum"))?;
    if u32::from_le_bytes(stored) != computed {
        return Err(Error::ChecksumMismatch {
            what: format!("{kind:?}"),
            stored: u32::from_le_bytes(stored),
            computed,
        });
    }
    Ok(value)
}

/// Writes `obj` (made under `ctx`) to a stream.
pub fn write<T: Encode>(
    ctx: &RlweContext,
    obj: &T,
    mut w: impl Write,
    opts: WriteOptions,
) -> Result<()> {
    ctx.check_fingerprint(obj.fingerprint_or(ctx), "object to serialize")?;
    write_framed(
        &mut w,
        T::KIND,
        ctx.fingerprint(),
        obj.key_id(),
        &opts,
        |e| obj.encode(ctx, e, &opts),
    )
}

/// Reads one object for `ctx` from a stream (which may hold more objects after it).
pub fn read<T: Decode>(ctx: &RlweContext, mut r: impl Read) -> Result<T> {
    read_framed(&mut r, T::KIND, Some(ctx.fingerprint()), |d, h| {
        T::decode(ctx, d, h.key_id)
    })
}

/// The bytes [`write()`] produces for `obj` without compression, header and checksum included:
/// exact for the objects whose [`Encode::body_len`] is known (ciphertexts).
pub fn uncompressed_len<T: Encode>(ctx: &RlweContext, obj: &T, opts: &WriteOptions) -> usize {
    HEADER_LEN + obj.body_len(ctx, opts) + CHECKSUM_LEN
}

/// `obj` as bytes.
pub fn to_bytes<T: Encode>(ctx: &RlweContext, obj: &T, opts: WriteOptions) -> Result<Vec<u8>> {
    let reserve = match opts.compression {
        None => uncompressed_len(ctx, obj, &opts),
        Some(_) => HEADER_LEN + CHECKSUM_LEN,
    };
    let mut out = Vec::with_capacity(reserve);
    write(ctx, obj, &mut out, opts)?;
    Ok(out)
}

/// Decodes exactly one object from `bytes` (trailing bytes are an error).
pub fn from_bytes<T: Decode>(ctx: &RlweContext, bytes: &[u8]) -> Result<T> {
    let mut r = bytes;
    let v = read(ctx, &mut r)?;
    if !r.is_empty() {
        return Err(Error::Decode(format!(
            "{} trailing bytes after the object",
            r.len()
        )));
    }
    Ok(v)
}

/// Objects without a fingerprint of their own (plaintexts) take the context's.
trait FingerprintOr {
    fn fingerprint_or(&self, ctx: &RlweContext) -> u64;
}

impl<T: Encode> FingerprintOr for T {
    fn fingerprint_or(&self, ctx: &RlweContext) -> u64 {
        match self.fingerprint() {
            0 => ctx.fingerprint(),
            f => f,
        }
    }
}

/// An encoded object that can sit inside user structures serialized with `serde` (as bytes), and
/// be decoded under a context later:
///
/// ```
/// # use hetensor::ckks::{CkksContext, CkksParams};
/// # use hetensor::rlwe::Ciphertext;
/// use hetensor::serialize::{Serialized, WriteOptions};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Message {
///     round: u32,
///     update: Serialized<Ciphertext>,
/// }
/// # fn main() -> hetensor::Result<()> {
/// # let ctx = CkksContext::new(CkksParams::preset(13, 25)?)?;
/// # let keys = ctx.keygen()?;
/// # let ct = ctx.encrypt(&ctx.encode(&[0.5], ctx.default_scale(), 1)?, &keys.public)?;
/// let msg = Message { round: 3, update: Serialized::encode(ctx.rlwe(), &ct, WriteOptions::default())? };
/// let json = serde_json::to_string(&msg).unwrap();
/// let back: Message = serde_json::from_str(&json).unwrap();
/// let ct2: Ciphertext = back.update.decode(ctx.rlwe())?;
/// # assert_eq!(ct2.level(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serialized<T> {
    bytes: Vec<u8>,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Serialized<T> {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Wraps bytes (checked when decoded).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            _kind: PhantomData,
        }
    }
}

impl<T: Encode> Serialized<T> {
    /// Encodes `obj` made under `ctx`.
    pub fn encode(ctx: &RlweContext, obj: &T, opts: WriteOptions) -> Result<Self> {
        Ok(Self::from_vec(to_bytes(ctx, obj, opts)?))
    }
}

impl<T: Decode> Serialized<T> {
    /// Decodes under `ctx` (errors if made under other parameters).
    pub fn decode(&self, ctx: &RlweContext) -> Result<T> {
        from_bytes(ctx, &self.bytes)
    }
}

impl<T> serde::Serialize for Serialized<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.bytes)
    }
}

impl<'de, T> serde::Deserialize<'de> for Serialized<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("hetensor object bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Vec<u8>, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V).map(Self::from_vec)
    }
}
