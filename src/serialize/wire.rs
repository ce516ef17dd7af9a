//! The byte level of the format: header, little-endian scalars, bit-packed residues, and a
//! reader that never allocates more than the parameters (not the input's length fields) allow.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};
use crate::math::Modulus;

/// First bytes of every hetensor object.
pub const MAGIC: [u8; 4] = *b"HETN";
/// The format version this build writes and reads. Version 2 added the key-set identifier to
/// the header and the CRC-32C trailer; version-1 objects are refused with a message saying so.
pub const FORMAT_VERSION: u16 = 2;
/// Header bytes: magic, version (u16), kind (u8), flags (u8), parameter fingerprint (u64),
/// key-set identifier (u64).
pub const HEADER_LEN: usize = 24;
/// Trailer bytes: CRC-32C (Castagnoli) of everything before it, header included.
pub const CHECKSUM_LEN: usize = 4;
/// Header flag: the body is one zstd frame of the length that follows the header (u64).
pub(crate) const FLAG_ZSTD: u8 = 1;

/// What a serialized object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Scheme parameters.
    Params = 1,
    /// A ciphertext.
    Ciphertext = 2,
    /// A CKKS plaintext (encoded, NTT form).
    Plaintext = 3,
    /// A public (encryption) key.
    PublicKey = 4,
    /// A relinearization key.
    RelinKey = 5,
    /// A set of Galois (rotation) keys.
    GaloisKeys = 6,
    /// A secret key.
    SecretKey = 7,
    /// Parameters plus public, relinearization and Galois keys.
    PublicContext = 8,
    /// Parameters plus the secret key.
    SecretContext = 9,
    /// A multiparty protocol message ([`crate::mhe::Share`]).
    MheShare = 10,
    /// CKKS bootstrapping keys ([`crate::ckks::bootstrap::BootstrapKeys`]).
    BootstrapKeys = 11,
}

impl Kind {
    fn from_u8(b: u8) -> Result<Self> {
        Ok(match b {
            1 => Self::Params,
            2 => Self::Ciphertext,
            3 => Self::Plaintext,
            4 => Self::PublicKey,
            5 => Self::RelinKey,
            6 => Self::GaloisKeys,
            7 => Self::SecretKey,
            8 => Self::PublicContext,
            9 => Self::SecretContext,
            10 => Self::MheShare,
            11 => Self::BootstrapKeys,
            other => return Err(Error::Decode(format!("unknown object kind {other}"))),
        })
    }
}

/// The fixed-size prefix of every object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What follows.
    pub kind: Kind,
    /// Whether the body is zstd-compressed.
    pub compressed: bool,
    /// [`crate::rlwe::RlweParams::fingerprint`] of the parameters the object belongs to.
    pub fingerprint: u64,
    /// Identifier of the key set the object belongs to (fixed when its secret key was
    /// generated); 0 for objects that belong to no key set (parameters, plaintexts).
    pub key_id: u64,
}

impl Header {
    pub(crate) fn write(&self, w: &mut dyn Write) -> Result<()> {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[6] = self.kind as u8;
        b[7] = if self.compressed { FLAG_ZSTD } else { 0 };
        b[8..16].copy_from_slice(&self.fingerprint.to_le_bytes());
        b[16..24].copy_from_slice(&self.key_id.to_le_bytes());
        w.write_all(&b)?;
        Ok(())
    }

    pub(crate) fn read(r: &mut dyn Read) -> Result<Self> {
        let mut b = [0u8; HEADER_LEN];
        read_exact(r, &mut b, "header")?;
        if b[..4] != MAGIC {
            return Err(Error::Decode(
                "not a hetensor object (bad magic bytes)".into(),
            ));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != FORMAT_VERSION {
            return Err(Error::FormatVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let kind = Kind::from_u8(b[6])?;
        if b[7] & !FLAG_ZSTD != 0 {
            return Err(Error::Decode(format!("unknown header flags {:#04x}", b[7])));
        }
        Ok(Self {
            kind,
            compressed: b[7] & FLAG_ZSTD != 0,
            fingerprint: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            key_id: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        })
    }
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| map_read_error(e, what))
}

/// An error of the stream the object is read from (a file, a pipe), as opposed to an error in
/// the object's bytes: only these stay [`Error::Io`].
#[derive(Debug)]
pub(crate) struct SourceError(pub(crate) io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

/// Truncation and malformed data (a corrupt zstd frame, reported by the decompressor as an I/O
/// error) are [`Error::Decode`]; a failing source stays [`Error::Io`].
pub(crate) fn map_read_error(e: io::Error, what: &str) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
        let inner = e
            .into_inner()
            .and_then(|b| b.downcast::<SourceError>().ok())
            .map(|b| b.0)
            .unwrap_or_else(|| io::Error::other("source error"));
        return Error::Io(inner);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated { what: what.into() },
        io::ErrorKind::InvalidData | io::ErrorKind::Other => {
            Error::Decode(format!("corrupt input (in {what}): {e}"))
        }
        _ => Error::Io(e),
    }
}

/// Bits needed for residues of `q` (its bit length): how tightly a limb is packed.
pub(crate) fn residue_bits(q: u32) -> u32 {
    32 - q.leading_zeros()
}

/// Writes scalars and bit-packed residues to a stream.
pub struct Encoder<'a> {
    w: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(w: &'a mut dyn Write) -> Self {
        Self { w, buf: Vec::new() }
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        Ok(())
    }

    pub(crate) fn u8(&mut self, x: u8) -> Result<()> {
        self.bytes(&[x])
    }

    pub(crate) fn u32(&mut self, x: u32) -> Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, x: u64) -> Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    pub(crate) fn f64(&mut self, x: f64) -> Result<()> {
        self.bytes(&x.to_le_bytes())
    }

    /// Packs residues of `q` at `bits(q)` bits each, least significant bit first.
    /// `words.len()` is a multiple of 8 (ring degrees are), so every limb ends on a byte.
    pub(crate) fn residues(&mut self, words: &[u32], q: u32) -> Result<()> {
        let bits = residue_bits(q);
        let len = (words.len() * bits as usize).div_ceil(8);
        self.buf.clear();
        self.buf.resize(len.next_multiple_of(4) + 4, 0);
        // 32 bits leave the accumulator at a time (bits ≤ 30, so it never holds more than 61).
        let (mut acc, mut have, mut pos) = (0u64, 0u32, 0usize);
        for &w in words {
            acc |= (w as u64) << have;
            have += bits;
            if have >= 32 {
                self.buf[pos..pos + 4].copy_from_slice(&(acc as u32).to_le_bytes());
                pos += 4;
                acc >>= 32;
                have -= 32;
            }
        }
        self.buf[pos..pos + 4].copy_from_slice(&(acc as u32).to_le_bytes());
        self.w.write_all(&self.buf[..len])?;
        Ok(())
    }
}

/// Reads scalars and residues; every count it is asked to read has been bounded by the caller
/// against the parameters, so a lying length field cannot make it allocate.
///
/// It also keeps a byte budget: each object's decoder first allows (`allow`) the most bytes its
/// header and counts can legitimately need (computed from the parameters), and no read goes
/// past the budget, nor past `cap` (for compressed bodies, a bound from the compressed length).
/// Because the zstd decoder only inflates what is read, decompression stops there too.
pub struct Decoder<'a> {
    r: &'a mut dyn Read,
    buf: Vec<u8>,
    /// Bytes read so far.
    used: u64,
    /// Bytes the decoders have allowed so far.
    budget: u64,
    /// Absolute bound (the compressed body's expansion limit; `u64::MAX` when uncompressed).
    cap: u64,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(r: &'a mut dyn Read, cap: u64) -> Self {
        Self {
            r,
            buf: Vec::new(),
            used: 0,
            budget: 0,
            cap,
        }
    }

    /// Allows `n` more bytes: what the part about to be read can legitimately need.
    pub(crate) fn allow(&mut self, n: u64) {
        self.budget = self.budget.saturating_add(n);
    }

    /// Refuses now (before anything is allocated for it) if a part that needs at least `n`
    /// more bytes cannot fit under the cap (a compressed body's expansion limit).
    pub(crate) fn require(&mut self, n: u64, what: &str) -> Result<()> {
        let room = self.cap.saturating_sub(self.used);
        if n > room {
            return Err(Error::Decode(format!(
                "{what} needs at least {n} more bytes, beyond the {room} this compressed body \
                 may expand to (key material and ciphertexts do not compress)"
            )));
        }
        Ok(())
    }

    fn cap_note(&self) -> &'static str {
        if self.cap < u64::MAX && self.cap <= self.budget {
            " (a compressed body may expand at most by the format's limit: key material and \
             ciphertexts do not compress)"
        } else {
            ""
        }
    }

    fn take(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let n = buf.len() as u64;
        if self.used + n > self.budget.min(self.cap) {
            return Err(Error::Decode(format!(
                "{what}: the object is larger than its parameters allow ({} bytes){}",
                self.budget.min(self.cap),
                self.cap_note()
            )));
        }
        read_exact(self.r, buf, what)?;
        self.used += n;
        Ok(())
    }

    pub(crate) fn bytes<const K: usize>(&mut self, what: &str) -> Result<[u8; K]> {
        let mut b = [0u8; K];
        self.take(&mut b, what)?;
        Ok(b)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    pub(crate) fn f64(&mut self, what: &str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.bytes(what)?))
    }

    /// A flag byte that must be 0 or 1.
    pub(crate) fn bool(&mut self, what: &str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Error::Decode(format!(
                "{what}: flag byte {b} is not 0 or 1"
            ))),
        }
    }

    /// Reads `count` residues of `m` packed by [`Encoder::residues`] into `out`, rejecting any
    /// residue `≥ q` (`count` is a ring degree from validated parameters).
    pub(crate) fn residues_into(
        &mut self,
        out: &mut Vec<u32>,
        count: usize,
        m: &Modulus,
    ) -> Result<()> {
        let q = m.value();
        let bits = residue_bits(q);
        let len = (count * bits as usize).div_ceil(8);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        let read = self.take(&mut buf, "residues");
        self.buf = buf;
        read?;
        let mask = (1u64 << bits) - 1;
        self.buf.resize(len.next_multiple_of(4) + 4, 0);
        let (mut acc, mut have, mut pos) = (0u64, 0u32, 0usize);
        out.reserve(count);
        let mut bad = false;
        for _ in 0..count {
            if have < bits {
                let next = u32::from_le_bytes(self.buf[pos..pos + 4].try_into().expect("4 bytes"));
                acc |= (next as u64) << have;
                have += 32;
                pos += 4;
            }
            let w = (acc & mask) as u32;
            acc >>= bits;
            have -= bits;
            bad |= w >= q;
            out.push(w);
        }
        if bad {
            let w = out
                .iter()
                .rev()
                .take(count)
                .find(|&&w| w >= q)
                .copied()
                .unwrap_or(q);
            return Err(Error::Decode(format!(
                "residue {w} is not reduced modulo {q}"
            )));
        }
        Ok(())
    }

    /// Succeeds only at the end of the stream (no trailing bytes).
    pub(crate) fn expect_end(&mut self) -> Result<()> {
        let mut b = [0u8; 1];
        match self
            .r
            .read(&mut b)
            .map_err(|e| map_read_error(e, "end of body"))?
        {
            0 => Ok(()),
            _ => Err(Error::Decode("trailing bytes after the object".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The format's definition, one bit at a time: residue `i`'s bit `b` is bit `i·bits + b`
    /// of the byte string, least significant bit of each byte first.
    fn pack_bitwise(words: &[u32], bits: u32) -> Vec<u8> {
        let mut out = vec![0u8; (words.len() * bits as usize).div_ceil(8)];
        for (i, &w) in words.iter().enumerate() {
            for b in 0..bits as usize {
                if w >> b & 1 == 1 {
                    let at = i * bits as usize + b;
                    out[at / 8] |= 1 << (at % 8);
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn residues_pack_as_the_bitwise_definition_and_read_back(
            bits in 2u32..=Modulus::MAX_BITS,
            count in 0usize..80,
            seed in any::<u64>(),
        ) {
            // An odd modulus of exactly `bits` bits, and residues below it (its top included).
            let q = (1u32 << (bits - 1)) | (seed as u32 & ((1 << (bits - 1)) - 1)) | 1;
            let m = Modulus::new(q).unwrap();
            let words: Vec<u32> = (0..count as u64)
                .map(|i| {
                    let x = (seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(i as u32 % 64);
                    if i == 3 { q - 1 } else { (x % q as u64) as u32 }
                })
                .collect();
            let mut packed = Vec::new();
            Encoder::new(&mut packed).residues(&words, q).unwrap();
            prop_assert_eq!(&packed, &pack_bitwise(&words, bits));
            let mut src = &packed[..];
            let mut d = Decoder::new(&mut src, u64::MAX);
            d.allow(packed.len() as u64);
            let mut back = vec![7u32];
            d.residues_into(&mut back, count, &m).unwrap();
            prop_assert_eq!(&back[1..], &words[..]);
            prop_assert_eq!(back[0], 7);
            // A residue ≥ q anywhere is refused.
            if count > 0 {
                let mut bad = words.clone();
                bad[count / 2] = q;
                let bytes = pack_bitwise(&bad, bits);
                let mut src = &bytes[..];
                let mut d = Decoder::new(&mut src, u64::MAX);
                d.allow(bytes.len() as u64);
                prop_assert!(matches!(
                    d.residues_into(&mut Vec::new(), count, &m),
                    Err(Error::Decode(_))
                ));
            }
        }
    }
}
