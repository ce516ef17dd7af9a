//! Tabular data sets for encrypted training: the Kaggle Titanic passengers ([`titanic`]) and
//! the UCI Credit Approval records ([`credit`]).
//!
//! Each loader turns a file into a [`Dataset`]: an `f64` feature matrix (one row per sample),
//! 0/1 labels and the names of the feature columns. Categorical attributes become 0/1
//! indicator columns; continuous attributes are **standardized** (zero mean, unit variance
//! over the rows of the file, so the statistics use no labels) after the per-loader
//! transforms documented in each module. Values stay small (|x| ≲ 5 for almost every row),
//! which keeps the logits of a linear model inside the interval a polynomial sigmoid was
//! fitted on.
//!
//! Parsers never panic on malformed input: anything they cannot read is an
//! [`Error::Data`] naming the line and field.
//!
//! ```no_run
//! use hetensor::data::titanic;
//! let data = titanic::load("data/titanic/train.csv")?;
//! let (train, test) = data.split(0.2, 42)?;
//! println!("{} features: {:?}; {} train / {} test rows", data.num_features(),
//!          data.feature_names, train.len(), test.len());
//! # Ok::<(), hetensor::Error>(())
//! ```

pub mod credit;
pub mod npy;
pub mod titanic;

use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::{Error, Result};

/// Where the bundled copies of the data sets live, relative to the crate root.
pub const DEFAULT_TITANIC: &str = "data/titanic/train.csv";
/// See [`DEFAULT_TITANIC`].
pub const DEFAULT_CREDIT: &str = "data/credit/crx.data";

/// A binary-classification data set: `features` is `[samples, num_features]`, `labels[i]` is
/// 0 or 1, and `feature_names[j]` names column `j`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Feature matrix, one row per sample.
    pub features: Array2<f64>,
    /// Labels, each 0 or 1.
    pub labels: Vec<u8>,
    /// One name per feature column.
    pub feature_names: Vec<String>,
}

impl Dataset {
    /// Builds a data set, checking shapes, finiteness and that the labels are 0/1.
    pub fn new(features: Array2<f64>, labels: Vec<u8>, feature_names: Vec<String>) -> Result<Self> {
        if features.nrows() != labels.len() {
            return Err(Error::Data(format!(
                "{} feature rows but {} labels",
                features.nrows(),
                labels.len()
            )));
        }
        if features.ncols() != feature_names.len() {
            return Err(Error::Data(format!(
                "{} feature columns but {} feature names",
                features.ncols(),
                feature_names.len()
            )));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(Error::Data("a feature value is not finite".into()));
        }
        if let Some(i) = labels.iter().position(|&l| l > 1) {
            return Err(Error::Data(format!(
                "label {} of sample {i} is not 0 or 1",
                labels[i]
            )));
        }
        Ok(Self {
            features,
            labels,
            feature_names,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature columns.
    pub fn num_features(&self) -> usize {
        self.features.ncols()
    }

    /// Labels as `f64` (0.0 / 1.0).
    pub fn labels_f64(&self) -> Vec<f64> {
        self.labels.iter().map(|&l| l as f64).collect()
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Data(format!(
                "sample index {i} out of range for {} samples",
                self.len()
            )));
        }
        Ok(Self {
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            feature_names: self.feature_names.clone(),
        })
    }

    /// Deterministic shuffled split: a fraction `test_fraction ∈ [0, 1)` of the samples
    /// (rounded) goes to the second set; the order comes from ChaCha20 seeded with `seed`.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Self, Self)> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(Error::Data(format!(
                "test fraction must be in [0, 1), got {test_fraction}"
            )));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
        let n_test = (self.len() as f64 * test_fraction).round() as usize;
        let (test, train) = idx.split_at(n_test);
        Ok((self.select(train)?, self.select(test)?))
    }

    /// Splits into `k` nearly equal contiguous shards (for data-parallel or federated
    /// training); `k` must be between 1 and the number of samples.
    pub fn shards(&self, k: usize) -> Result<Vec<Self>> {
        if k == 0 || k > self.len() {
            return Err(Error::Data(format!(
                "cannot cut {} samples into {k} shards",
                self.len()
            )));
        }
        let n = self.len();
        (0..k)
            .map(|i| {
                let idx: Vec<usize> = (i * n / k..(i + 1) * n / k).collect();
                self.select(&idx)
            })
            .collect()
    }

    /// Fraction of positive labels.
    pub fn positive_rate(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.labels.iter().map(|&l| l as f64).sum::<f64>() / self.len() as f64
    }
}

/// Standardizes the given columns in place (zero mean, unit population variance over the
/// rows); a constant column becomes all zeros.
pub(crate) fn standardize_columns(x: &mut Array2<f64>, cols: &[usize]) {
    let n = x.nrows().max(1) as f64;
    for &j in cols {
        let mut col = x.column_mut(j);
        let mean = col.sum() / n;
        let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let sd = var.sqrt();
        col.mapv_inplace(|v| if sd > 1e-12 { (v - mean) / sd } else { 0.0 });
    }
}

/// Largest CSV file the loaders read (64 MiB; the bundled files are 61 KB and 32 KB).
pub const MAX_CSV_BYTES: u64 = 64 << 20;
/// Most fields a CSV record may hold (the formats read here have 12 and 16).
pub const MAX_CSV_FIELDS: usize = 256;
/// Most fields a CSV file may hold in all (4 M: 330,000 Titanic rows; the bundled files have
/// 11,000 each). Each field costs a `String` whatever its length, so this, not the byte count,
/// bounds what the parsed records take (~100 MB).
pub const MAX_CSV_CELLS: usize = 4 << 20;

/// Reads at most `limit` bytes from `r` (fewer at the end of the stream), with `reserve` bytes
/// (at most `limit`) reserved up front, for a size the caller knows can arrive. Beyond that
/// the buffer grows with the bytes that actually arrive, at most doubling and never past
/// `limit`, so a length that the bytes never fill costs nothing, and the capacity never
/// exceeds `limit` (`read_to_end`'s doubling can reserve twice what arrives). Memory is
/// touched only as bytes arrive, reserved or not.
pub(crate) fn read_growing(
    r: &mut dyn std::io::Read,
    limit: u64,
    reserve: u64,
) -> std::io::Result<Vec<u8>> {
    const FIRST: usize = 64 << 10;
    let oom = |e| std::io::Error::new(std::io::ErrorKind::OutOfMemory, e);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(usize::try_from(reserve).map_or(limit, |r| r.min(limit)))
        .map_err(oom)?;
    let mut filled = 0usize;
    while filled < limit {
        if filled == buf.len() {
            let grow = (limit - filled).min(filled.max(FIRST));
            if buf.capacity() < filled + grow {
                buf.try_reserve_exact(grow).map_err(oom)?;
            }
            buf.resize(filled + grow, 0);
        }
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Reads a whole CSV file of at most [`MAX_CSV_BYTES`], mapping I/O failures to errors that
/// name the path. A larger file is refused before it is read.
pub(crate) fn read_file(path: impl AsRef<std::path::Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let cannot = |e: std::io::Error| {
        Error::Data(format!(
            "cannot read {}: {e} (the bundled copies are in data/titanic and data/credit)",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let too_big = || {
        Error::Data(format!(
            "{} is larger than the {MAX_CSV_BYTES} bytes a CSV data file may have",
            path.display()
        ))
    };
    let len = file.metadata().map_err(cannot)?.len();
    if len > MAX_CSV_BYTES {
        return Err(too_big());
    }
    // The file may grow between the check and the read: read one byte past the limit at most.
    let bytes = read_growing(
        &mut std::io::Read::take(file, MAX_CSV_BYTES + 1),
        MAX_CSV_BYTES + 1,
        len + 1,
    )
    .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CSV_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Splits CSV bytes into records of fields (RFC 4180: `,` separators, `"` quoting with `""`
/// escapes, `\n` or `\r\n` line ends). Fields are decoded as UTF-8 with invalid bytes
/// replaced (the Titanic file has a few Latin-1 names). Blank lines are skipped. Returns the
/// 1-based line number of each record with it.
///
/// Input of more than [`MAX_CSV_BYTES`], more than [`MAX_CSV_CELLS`] fields in all or a record
/// of more than [`MAX_CSV_FIELDS`] fields is an error: together they bound what the records
/// take in memory, whatever the bytes.
pub(crate) fn parse_csv(bytes: &[u8]) -> Result<Vec<(usize, Vec<String>)>> {
    if bytes.len() as u64 > MAX_CSV_BYTES {
        return Err(Error::Data(format!(
            "{} bytes of CSV, more than the {MAX_CSV_BYTES} a data file may have",
            bytes.len()
        )));
    }
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    let mut in_quotes = false;
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut i = 0;
    let mut cells = 0usize;
    let mut finish_field = |field: &mut Vec<u8>, fields: &mut Vec<String>, line: usize| {
        if fields.len() == MAX_CSV_FIELDS {
            return Err(Error::Data(format!(
                "line {line}: more than {MAX_CSV_FIELDS} fields in one record"
            )));
        }
        if cells == MAX_CSV_CELLS {
            return Err(Error::Data(format!(
                "line {line}: more than {MAX_CSV_CELLS} fields in the file"
            )));
        }
        cells += 1;
        fields.push(String::from_utf8_lossy(field).into_owned());
        field.clear();
        Ok(())
    };
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            match b {
                b'"' if bytes.get(i + 1) == Some(&b'"') => {
                    field.push(b'"');
                    i += 1;
                }
                b'"' => in_quotes = false,
                b'\n' => {
                    line += 1;
                    field.push(b);
                }
                _ => field.push(b),
            }
        } else {
            match b {
                b'"' if field.is_empty() => in_quotes = true,
                b',' => finish_field(&mut field, &mut fields, record_line)?,
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {}
                b'\n' => {
                    finish_field(&mut field, &mut fields, record_line)?;
                    if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                        records.push((record_line, std::mem::take(&mut fields)));
                    }
                    fields.clear();
                    line += 1;
                    record_line = line;
                }
                _ => field.push(b),
            }
        }
        i += 1;
    }
    if in_quotes {
        return Err(Error::Data(format!(
            "unterminated quoted field starting on line {record_line}"
        )));
    }
    if !field.is_empty() || !fields.is_empty() {
        finish_field(&mut field, &mut fields, record_line)?;
        if !(fields.len() == 1 && fields[0].trim().is_empty()) {
            records.push((record_line, fields));
        }
    }
    Ok(records)
}

/// Parses a finite number, with an error naming the line and the column.
pub(crate) fn parse_number(s: &str, line: usize, what: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| Error::Data(format!("line {line}: {what} {s:?} is not a number")))?;
    if !v.is_finite() {
        return Err(Error::Data(format!(
            "line {line}: {what} {s:?} is not finite"
        )));
    }
    Ok(v)
}

/// The first sample (index along axis 0) of `x` holding a NaN or an infinity, with that value.
/// Callers name the sample in their refusal: a NaN would otherwise vanish from a maximum
/// (`f64::max` skips it) or surface later as an unrelated error.
///
/// ```
/// use hetensor::data::first_non_finite_sample;
/// let mut x = ndarray::Array3::<f64>::zeros((4, 2, 3));
/// assert_eq!(first_non_finite_sample(&x), None);
/// x[[2, 1, 0]] = f64::INFINITY;
/// x[[3, 0, 0]] = f64::NAN;
/// assert_eq!(first_non_finite_sample(&x), Some((2, f64::INFINITY)));
/// ```
pub fn first_non_finite_sample<D: ndarray::Dimension>(
    x: &ndarray::ArrayBase<impl ndarray::Data<Elem = f64>, D>,
) -> Option<(usize, f64)> {
    let per_sample = (x.len() / x.shape().first().copied().unwrap_or(1).max(1)).max(1);
    x.iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .map(|(i, &v)| (i / per_sample, v))
}
