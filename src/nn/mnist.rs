//! MNIST in the IDX format (optionally gzip-compressed), as distributed by LeCun et al.
//!
//! IDX layout: a big-endian `u32` magic (`0x00000803` for images = unsigned bytes, 3
//! dimensions; `0x00000801` for labels = unsigned bytes, 1 dimension), one big-endian `u32`
//! per dimension, then the raw bytes, row-major. Files starting with the gzip magic
//! `1f 8b` are decompressed first, whatever their name.
//!
//! **Normalisation:** pixels become `f64` in `[0, 1]` by dividing by 255, with no mean/std
//! standardisation: inputs stay small and non-negative, which is what the encrypted (CKKS)
//! evaluation wants, and `0.0` is the background, so zero padding/shifts are exact.
//!
//! The copies in `data/mnist/` (see `data/README.md`, CC BY-SA 3.0) are
//! `train-10k-*` (10,000 digits of the MNIST training set, roughly but not exactly 1,000 per
//! class) and `t10k-*` (the official 10,000-digit test set).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ndarray::Array3;

use super::{Dataset, Tensor};
use crate::{Error, Result};

/// The directory with the MNIST files shipped in this repository (absolute, fixed at build
/// time; pass your own directory to [`load_split`] to use other files).
pub const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist");

/// IDX magic of an unsigned-byte, 3-dimensional file (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte, 1-dimensional file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Largest payload (pixels or labels) an IDX file may announce: 1 GiB, 20x the full MNIST
/// training set. The loader computes the payload's size from the header and refuses a header
/// that announces more before reading any of it.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Upper bound on what [`gunzip_if_needed`] decompresses (it does not know the IDX header).
const MAX_DECOMPRESSED: u64 = MAX_IDX_BYTES + 4 + 4 * 255;

/// Deflate's largest compression ratio (1032:1: a 258-byte match coded in 2 bits): what a
/// gzip stream of `n` bytes decompresses to is at most about `n` times this.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Where IDX bytes come from, and so the most bytes the stream can hold.
#[derive(Clone, Copy)]
enum Source {
    /// Uncompressed, exactly this many bytes.
    Raw(u64),
    /// A gzip stream of this many compressed bytes.
    Gzip(u64),
}

impl Source {
    fn gz(self) -> bool {
        matches!(self, Source::Gzip(_))
    }

    /// The most bytes the (decompressed) stream can hold.
    fn max_len(self) -> u64 {
        match self {
            Source::Raw(n) => n,
            Source::Gzip(n) => n.saturating_mul(DEFLATE_MAX_RATIO).saturating_add(1 << 10),
        }
    }
}

/// Opens `path` as a stream, gunzipping it on the fly if it starts with the gzip magic.
fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read>, Source)> {
    let cannot = |e: std::io::Error| Error::Data(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    let mut file = BufReader::new(file);
    let gz = file.fill_buf().map_err(cannot)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        (
            Box::new(flate2::bufread::GzDecoder::new(file)),
            Source::Gzip(len),
        )
    } else {
        (Box::new(file), Source::Raw(len))
    })
}

/// Reads a file, transparently gunzipping it if it starts with the gzip magic. Refuses a file
/// that decompresses to more than [`MAX_IDX_BYTES`] plus a header, without holding more.
pub fn read_maybe_gz(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let (mut r, src) = open_maybe_gz(path)?;
    read_at_most(&mut r, MAX_DECOMPRESSED, src.gz()).map_err(|e| prefix_path(path, e))
}

/// Decompresses `bytes` if they start with the gzip magic `1f 8b`, else returns them as is.
/// Decompression stops past [`MAX_IDX_BYTES`] plus a header (an error).
pub fn gunzip_if_needed(bytes: Vec<u8>) -> Result<Vec<u8>> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Ok(bytes);
    }
    read_at_most(
        &mut flate2::read::GzDecoder::new(bytes.as_slice()),
        MAX_DECOMPRESSED,
        true,
    )
}

fn stream_error(e: std::io::Error, gz: bool) -> Error {
    if gz {
        Error::Data(format!("corrupt or truncated gzip stream: {e}"))
    } else {
        Error::Data(format!("read error: {e}"))
    }
}

/// All of `r`, which must not hold more than `limit` bytes.
fn read_at_most(r: &mut dyn Read, limit: u64, gz: bool) -> Result<Vec<u8>> {
    let out = crate::data::read_growing(&mut r.take(limit + 1), limit + 1, 0)
        .map_err(|e| stream_error(e, gz))?;
    if out.len() as u64 > limit {
        return Err(Error::Data(format!(
            "decompressed data exceeds {limit} bytes; not an MNIST file"
        )));
    }
    Ok(out)
}

/// Reads a big-endian `u32` of the header; `at` is its offset, for the message.
fn be_u32(r: &mut dyn Read, at: usize, what: &str, gz: bool) -> Result<u32> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut b[got..]) {
            Ok(0) => {
                return Err(Error::Data(format!(
                    "truncated IDX header: {what} needs bytes {at}..{}, file has {}",
                    at + 4,
                    at + got
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(e, gz)),
        }
    }
    Ok(u32::from_be_bytes(b))
}

/// Reads an IDX stream from `src` with magic `magic` and `ndim` dimensions; returns the
/// dimensions and the payload. The payload's size is computed from the header first: a header
/// that announces nothing, more than [`MAX_IDX_BYTES`], or more than `src` can hold (its
/// length; for gzip, its length times deflate's largest ratio) is refused before any of it is
/// read. Then exactly that many bytes are read into one buffer reserved up front (memory is
/// touched only as they arrive), and a stream that ends early or goes on is an error. So a
/// gzip bomb decompresses at most the announced size plus one byte.
fn read_idx(
    r: &mut dyn Read,
    src: Source,
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let gz = src.gz();
    let got = be_u32(r, 0, "the magic number", gz)?;
    if got != magic {
        return Err(Error::Data(format!(
            "bad IDX magic 0x{got:08x} for an {what} file, expected 0x{magic:08x}{}",
            if got == IMAGES_MAGIC || got == LABELS_MAGIC {
                " (images and labels swapped?)"
            } else {
                ""
            }
        )));
    }
    let ndim = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndim);
    for d in 0..ndim {
        dims.push(be_u32(r, 4 + 4 * d, "a dimension", gz)? as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            Error::Data(format!(
                "IDX {what} header announces dimensions {dims:?}, more than the \
                 {MAX_IDX_BYTES} bytes of data an IDX file may hold"
            ))
        })?;
    if expected == 0 {
        return Err(Error::Data(format!(
            "the IDX {what} file holds no {what}: its header announces dimensions {dims:?}"
        )));
    }
    let available = src.max_len().saturating_sub(4 + 4 * ndim as u64);
    if expected > available {
        return Err(Error::Data(match src {
            Source::Raw(_) => format!(
                "truncated IDX {what} file: dimensions {dims:?} need {expected} bytes of \
                 data, found {available}"
            ),
            Source::Gzip(n) => format!(
                "truncated IDX {what} file: dimensions {dims:?} need {expected} bytes of \
                 data, more than a gzip stream of {n} bytes can hold"
            ),
        }));
    }
    let payload = crate::data::read_growing(&mut *r, expected + 1, expected + 1)
        .map_err(|e| stream_error(e, gz))?;
    if (payload.len() as u64) < expected {
        return Err(Error::Data(format!(
            "truncated IDX {what} file: dimensions {dims:?} need {expected} bytes of data, \
             found {}",
            payload.len()
        )));
    }
    if payload.len() as u64 > expected {
        return Err(Error::Data(format!(
            "IDX {what} file has trailing bytes after the {expected} announced by its \
             dimensions {dims:?}"
        )));
    }
    Ok((dims, payload))
}

fn images_from(r: &mut dyn Read, src: Source) -> Result<Array3<u8>> {
    let (dims, payload) = read_idx(r, src, IMAGES_MAGIC, "images")?;
    Array3::from_shape_vec((dims[0], dims[1], dims[2]), payload)
        .map_err(|e| Error::Data(format!("IDX images: {e}")))
}

fn labels_from(r: &mut dyn Read, src: Source) -> Result<Vec<u8>> {
    Ok(read_idx(r, src, LABELS_MAGIC, "labels")?.1)
}

/// Parses uncompressed IDX image bytes into `[count, rows, cols]` raw pixels (at least one
/// image of at least one pixel).
pub fn parse_images(bytes: &[u8]) -> Result<Array3<u8>> {
    images_from(&mut &bytes[..], Source::Raw(bytes.len() as u64))
}

/// Parses uncompressed IDX label bytes (at least one label).
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>> {
    labels_from(&mut &bytes[..], Source::Raw(bytes.len() as u64))
}

/// The bytes of an IDX source that may be gzip-compressed, as a stream.
fn maybe_gz(bytes: &[u8]) -> (Box<dyn Read + '_>, Source) {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        (
            Box::new(flate2::read::GzDecoder::new(bytes)),
            Source::Gzip(bytes.len() as u64),
        )
    } else {
        (Box::new(bytes), Source::Raw(bytes.len() as u64))
    }
}

/// Decodes the bytes of an IDX image file, gzip or not (what [`load_images`] does with a
/// file's bytes): decompression stops at the size the header announces.
pub fn decode_images(bytes: &[u8]) -> Result<Array3<u8>> {
    let (mut r, src) = maybe_gz(bytes);
    images_from(&mut r, src)
}

/// Decodes the bytes of an IDX label file, gzip or not (see [`decode_images`]).
pub fn decode_labels(bytes: &[u8]) -> Result<Vec<u8>> {
    let (mut r, src) = maybe_gz(bytes);
    labels_from(&mut r, src)
}

/// Loads an IDX image file (gzip or not) as `[count, rows, cols]` raw pixels, streaming: it
/// holds the announced pixels (at most [`MAX_IDX_BYTES`]) and a read buffer, never the whole
/// decompressed file.
pub fn load_images(path: impl AsRef<Path>) -> Result<Array3<u8>> {
    let path = path.as_ref();
    let (mut r, src) = open_maybe_gz(path)?;
    images_from(&mut r, src).map_err(|e| prefix_path(path, e))
}

/// Loads an IDX label file (gzip or not), streaming as [`load_images`] does.
pub fn load_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let (mut r, src) = open_maybe_gz(path)?;
    labels_from(&mut r, src).map_err(|e| prefix_path(path, e))
}

fn prefix_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Data(m) if !m.contains(&path.display().to_string()) => {
            Error::Data(format!("{}: {m}", path.display()))
        }
        other => other,
    }
}

/// Builds a data set from raw images `[n, rows, cols]` and labels: inputs
/// `[n, 1, rows, cols]` with pixels `v / 255`, 10 classes. Fails if the counts differ or a
/// label is above 9.
pub fn to_dataset(images: &Array3<u8>, labels: &[u8]) -> Result<Dataset> {
    let (n, r, c) = images.dim();
    if n != labels.len() {
        return Err(Error::Data(format!(
            "MNIST image file has {n} images but the label file has {} labels",
            labels.len()
        )));
    }
    let pixels: Vec<f64> = images.iter().map(|&p| f64::from(p) / 255.0).collect();
    let inputs = Tensor::from_shape_vec(vec![n, 1, r, c], pixels)
        .map_err(|e| Error::Data(format!("MNIST images: {e}")))?;
    Dataset::new(inputs, labels.iter().map(|&l| usize::from(l)).collect(), 10)
}

/// Loads an image file and a label file into a [`Dataset`] (see [`to_dataset`]).
pub fn load(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Dataset> {
    to_dataset(&load_images(images)?, &load_labels(labels)?)
}

/// Loads `{dir}/{prefix}-images-idx3-ubyte.gz` and `{dir}/{prefix}-labels-idx1-ubyte.gz`
/// (falling back to the names without `.gz`), e.g. `prefix = "t10k"`.
pub fn load_split(dir: impl AsRef<Path>, prefix: &str) -> Result<Dataset> {
    let dir = dir.as_ref();
    let pick = |stem: String| -> PathBuf {
        let gz = dir.join(format!("{stem}.gz"));
        if gz.exists() {
            gz
        } else {
            dir.join(stem)
        }
    };
    load(
        pick(format!("{prefix}-images-idx3-ubyte")),
        pick(format!("{prefix}-labels-idx1-ubyte")),
    )
}

/// The official 10,000-digit MNIST test set (`t10k-*`) from `dir`.
pub fn load_test(dir: impl AsRef<Path>) -> Result<Dataset> {
    load_split(dir, "t10k")
}

/// The 10,000 training digits shipped here (`train-10k-*`) from `dir`; falls back to the
/// full training set's names (`train-*`) if those are what `dir` holds.
pub fn load_train(dir: impl AsRef<Path>) -> Result<Dataset> {
    let dir = dir.as_ref();
    if dir.join("train-10k-images-idx3-ubyte.gz").exists()
        || dir.join("train-10k-images-idx3-ubyte").exists()
    {
        load_split(dir, "train-10k")
    } else {
        load_split(dir, "train")
    }
}
