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

use std::io::Read;
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

/// Upper bound on a decompressed file (1 GiB): protects against corrupt headers and gzip bombs.
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Reads a file, transparently gunzipping it if it starts with the gzip magic.
pub fn read_maybe_gz(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let raw = std::fs::read(path)
        .map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
    gunzip_if_needed(raw).map_err(|e| match e {
        Error::Data(m) => Error::Data(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Decompresses `bytes` if they start with the gzip magic `1f 8b`, else returns them as is.
pub fn gunzip_if_needed(bytes: Vec<u8>) -> Result<Vec<u8>> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Data(format!("corrupt or truncated gzip stream: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Error::Data(format!(
            "decompressed data exceeds {MAX_DECOMPRESSED} bytes; not an MNIST file"
        )));
    }
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize, what: &str) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| {
            Error::Data(format!(
                "truncated IDX header: {what} needs bytes {at}..{}, file has {}",
                at + 4,
                bytes.len()
            ))
        })
}

/// Parses an (uncompressed) IDX header with magic `magic` and `ndim` dimensions; returns the
/// dimensions and the payload, checking that the payload has exactly the announced size.
fn parse_idx<'a>(bytes: &'a [u8], magic: u32, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let got = be_u32(bytes, 0, "the magic number")?;
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
        dims.push(be_u32(bytes, 4 + 4 * d, "a dimension")? as usize);
    }
    let header = 4 + 4 * ndim;
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Data(format!("IDX dimensions {dims:?} overflow")))?;
    let payload = &bytes[header..];
    if payload.len() < expected {
        return Err(Error::Data(format!(
            "truncated IDX {what} file: dimensions {dims:?} need {expected} bytes of data, \
             found {}",
            payload.len()
        )));
    }
    if payload.len() > expected {
        return Err(Error::Data(format!(
            "IDX {what} file has {} trailing bytes after the {expected} announced by its \
             dimensions {dims:?}",
            payload.len() - expected
        )));
    }
    Ok((dims, payload))
}

/// Parses uncompressed IDX image bytes into `[count, rows, cols]` raw pixels.
pub fn parse_images(bytes: &[u8]) -> Result<Array3<u8>> {
    let (dims, payload) = parse_idx(bytes, IMAGES_MAGIC, "images")?;
    Array3::from_shape_vec((dims[0], dims[1], dims[2]), payload.to_vec())
        .map_err(|e| Error::Data(format!("IDX images: {e}")))
}

/// Parses uncompressed IDX label bytes.
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>> {
    let (_, payload) = parse_idx(bytes, LABELS_MAGIC, "labels")?;
    Ok(payload.to_vec())
}

/// Loads an IDX image file (gzip or not) as `[count, rows, cols]` raw pixels.
pub fn load_images(path: impl AsRef<Path>) -> Result<Array3<u8>> {
    let path = path.as_ref();
    parse_images(&read_maybe_gz(path)?).map_err(|e| prefix_path(path, e))
}

/// Loads an IDX label file (gzip or not).
pub fn load_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    parse_labels(&read_maybe_gz(path)?).map_err(|e| prefix_path(path, e))
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
