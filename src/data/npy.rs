//! NumPy `.npy` files (format 1.0–3.0) of little-endian floats or integers, C order: what
//! `numpy.save` writes for a batch of samples.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::{Error, Result};

/// Largest file read (1 GiB): a bound on what an untrusted file can make us allocate.
pub const MAX_NPY_BYTES: u64 = 1 << 30;

/// Reads an `.npy` array as `f64` (`<f4`, `<f8`, `<i8`, `<i4`, `|u1`; C order).
pub fn load(path: impl AsRef<Path>) -> Result<ArrayD<f64>> {
    let path = path.as_ref();
    let err = |m: String| Error::Data(format!("{}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_NPY_BYTES {
        return Err(err(format!(
            "{} bytes, more than the {MAX_NPY_BYTES} read",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    parse(&bytes).map_err(err)
}

/// Parses the bytes of an `.npy` file.
pub fn parse(bytes: &[u8]) -> std::result::Result<ArrayD<f64>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or(format!("header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .get(1..)
        .and_then(|d| d.split('\'').next())
        .ok_or("bad descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not read; save with np.ascontiguousarray".into());
    }
    // `(2, 3)`: split at ASCII characters only, so no slice falls inside a character.
    let inner = field("shape")?
        .strip_prefix('(')
        .and_then(|t| t.split_once(')'))
        .map(|(inner, _)| inner)
        .ok_or("bad shape")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let width = match descr {
        "<f8" | "<i8" => 8,
        "<f4" | "<i4" => 4,
        "|u1" | "<u1" => 1,
        other => {
            return Err(format!(
                "element type {other:?} is not read (use float32, float64, int32, int64 or uint8)"
            ))
        }
    };
    let data = &bytes[end..];
    if count.checked_mul(width) != Some(data.len()) {
        return Err(format!(
            "shape {shape:?} of {descr} needs {} data bytes, the file has {}",
            count.saturating_mul(width),
            data.len()
        ));
    }
    let values: Vec<f64> = data
        .chunks_exact(width)
        .map(|c| match descr {
            "<f8" => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            "<i8" => i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64,
            "<f4" => f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64,
            "<i4" => i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64,
            _ => c[0] as f64,
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())
}

/// The bytes of an `.npy` file (version 1.0, `<f8`, C order) holding `a`.
pub fn to_bytes(a: &ArrayD<f64>) -> Vec<u8> {
    let dims: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for v in a.iter() {
        out.extend(v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let a =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]).unwrap();
        assert_eq!(parse(&to_bytes(&a)).unwrap(), a);
        let v = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, 2.0, 3.0]).unwrap();
        assert_eq!(parse(&to_bytes(&v)).unwrap(), v);
        let mut short = to_bytes(&a);
        short.pop();
        assert!(parse(&short).unwrap_err().contains("data bytes"));
        assert!(parse(b"not numpy at all").is_err());
        let mut f = to_bytes(&a);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        assert!(parse(&f).unwrap_err().contains("Fortran"));
    }
}
