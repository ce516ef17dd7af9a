//! UCI "Credit Approval" (`crx.data`, Quinlan): 690 applications, 15 anonymised attributes
//! `A1..A15` and the class `A16` (`+` approved → label 1, `-` → 0), comma-separated, no
//! header. Rows with a missing value (`?`, 37 rows) are dropped: the bundled copy has 691 rows
//! (one row appears twice; UCI lists 690), leaving 654.
//!
//! Features (categories as listed in UCI's `crx.names`):
//! * binary attributes as one indicator each: `a1_b` (A1 = b), `a9_t`, `a10_t`, `a12_t`;
//! * the other categoricals one-hot, one 0/1 column per category, named `a4_u`, `a5_g`,
//!   `a6_c`, `a7_v`, `a13_g`, ... — A4 ∈ {u, y, l, t}, A5 ∈ {g, p, gg},
//!   A6 ∈ {c, d, cc, i, j, k, m, r, q, w, x, e, aa, ff}, A7 ∈ {v, h, bb, j, n, z, dd, ff, o},
//!   A13 ∈ {g, p, s};
//! * the continuous attributes standardized: `a2` as is, and `a3`, `a8`, `a11`, `a14`, `a15`
//!   (non-negative and heavy-tailed: A15 goes up to 100,000) as `ln(1 + x)` first.
//!
//! Columns that are constant over the kept rows (in `crx.data`: `a4_t`, which never occurs)
//! are removed, so the bundled file gives 42 features. A category outside the lists, a
//! malformed number or a wrong field count is an [`Error::Data`].

use ndarray::Array2;

use super::{parse_csv, parse_number, read_file, standardize_columns, Dataset};
use crate::{Error, Result};

/// One-hot categorical attributes: (field index, name, categories).
const CATEGORICAL: [(usize, &str, &[&str]); 5] = [
    (3, "a4", &["u", "y", "l", "t"]),
    (4, "a5", &["g", "p", "gg"]),
    (
        5,
        "a6",
        &[
            "c", "d", "cc", "i", "j", "k", "m", "r", "q", "w", "x", "e", "aa", "ff",
        ],
    ),
    (6, "a7", &["v", "h", "bb", "j", "n", "z", "dd", "ff", "o"]),
    (12, "a13", &["g", "p", "s"]),
];

/// Binary attributes: (field index, name, the value encoded as 1, the value encoded as 0).
const BINARY: [(usize, &str, &str, &str); 4] = [
    (0, "a1_b", "b", "a"),
    (8, "a9_t", "t", "f"),
    (9, "a10_t", "t", "f"),
    (11, "a12_t", "t", "f"),
];

/// Continuous attributes: (field index, name, log-transformed).
const CONTINUOUS: [(usize, &str, bool); 6] = [
    (1, "a2", false),
    (2, "a3", true),
    (7, "a8", true),
    (10, "a11", true),
    (13, "a14", true),
    (14, "a15", true),
];

/// Loads and encodes `crx.data` (see the module docs for the features).
pub fn load(path: impl AsRef<std::path::Path>) -> Result<Dataset> {
    parse(&read_file(path)?)
}

/// Parses the bytes of a `crx.data` file.
pub fn parse(bytes: &[u8]) -> Result<Dataset> {
    let records = parse_csv(bytes)?;
    let mut names: Vec<String> = BINARY.iter().map(|b| b.1.to_string()).collect();
    for (_, name, cats) in CATEGORICAL {
        names.extend(cats.iter().map(|c| format!("{name}_{c}")));
    }
    let first_cont = names.len();
    names.extend(CONTINUOUS.iter().map(|c| c.1.to_string()));
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut labels = Vec::new();
    for (line, f) in &records {
        let line = *line;
        if f.len() != 16 {
            return Err(Error::Data(format!(
                "line {line}: {} fields, crx.data rows have 16",
                f.len()
            )));
        }
        if f.iter().any(|v| v.trim() == "?") {
            continue;
        }
        let mut row = Vec::with_capacity(names.len());
        for (i, name, one, zero) in BINARY {
            row.push(match f[i].trim() {
                v if v == one => 1.0,
                v if v == zero => 0.0,
                v => {
                    return Err(Error::Data(format!(
                        "line {line}: {name} value {v:?} is not {one} or {zero}"
                    )))
                }
            });
        }
        for (i, name, cats) in CATEGORICAL {
            let v = f[i].trim();
            let k = cats.iter().position(|c| *c == v).ok_or_else(|| {
                Error::Data(format!(
                    "line {line}: {name} value {v:?} is not one of {cats:?}"
                ))
            })?;
            row.extend((0..cats.len()).map(|j| if j == k { 1.0 } else { 0.0 }));
        }
        for (i, name, log) in CONTINUOUS {
            let v = parse_number(&f[i], line, name)?;
            row.push(if log {
                if v < 0.0 {
                    return Err(Error::Data(format!("line {line}: {name} {v} is negative")));
                }
                v.ln_1p()
            } else {
                v
            });
        }
        labels.push(match f[15].trim() {
            "+" => 1u8,
            "-" => 0u8,
            v => {
                return Err(Error::Data(format!(
                    "line {line}: class {v:?} is not + or -"
                )))
            }
        });
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::Data(
            "crx.data has no complete rows (rows with '?' are dropped)".into(),
        ));
    }
    let mut x = Array2::<f64>::zeros((rows.len(), names.len()));
    for (r, row) in rows.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            x[[r, j]] = v;
        }
    }
    let cont: Vec<usize> = (first_cont..names.len()).collect();
    standardize_columns(&mut x, &cont);
    // Drop columns that are constant over the kept rows (they carry no information).
    let keep: Vec<usize> = (0..names.len())
        .filter(|&j| {
            let c = x.column(j);
            let first = c[0];
            c.iter().any(|&v| (v - first).abs() > 1e-12)
        })
        .collect();
    let x = x.select(ndarray::Axis(1), &keep);
    let names = keep.iter().map(|&j| names[j].clone()).collect();
    Dataset::new(x, labels, names)
}
