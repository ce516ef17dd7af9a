//! Kaggle "Titanic: Machine Learning from Disaster" training file (`train.csv`, 891
//! passengers, with a header row; columns are found by name, so their order may vary).
//!
//! Label: `Survived` (0/1). Features, in this order (13 columns):
//!
//! | name | from | encoding |
//! |---|---|---|
//! | `sex_female` | `Sex` | 1 for `female`, 0 for `male` |
//! | `pclass_1`, `pclass_2` | `Pclass` | indicators of 1st and 2nd class (3rd class = both 0) |
//! | `age` | `Age` | missing ages (177) replaced by the median of the known ones; standardized |
//! | `sibsp` | `SibSp` | siblings/spouses aboard; standardized |
//! | `parch` | `Parch` | parents/children aboard; standardized |
//! | `log_fare` | `Fare` | `ln(1 + fare)` (fares are heavy-tailed, up to 512); missing → median; standardized |
//! | `embarked_c`, `embarked_q` | `Embarked` | indicators of Cherbourg and Queenstown (Southampton, and the 2 missing values, = both 0) |
//! | `title_master`, `title_miss`, `title_mrs`, `title_rare` | `Name` | the title between `", "` and `"."` (`"Braund, Mr. Owen"` → Mr): Master; Miss, Mlle, Ms; Mrs, Mme; any other (Dr, Rev, Col, ...). Mr, and a name without a title, = all 0 |
//!
//! The title carries what sex and age alone miss (boys are "Master", unmarried women
//! "Miss"): with it a converged plaintext logistic regression scores 82.2 % instead of 79.9 %
//! on the 20 % test rows, averaged over the split seeds 1-10. Ticket and cabin are not used. Indicators stay 0/1; the four numeric columns are
//! standardized over the rows of the file (see [`super`]).

use ndarray::Array2;

use super::{parse_csv, parse_number, read_file, standardize_columns, Dataset};
use crate::{Error, Result};

/// Names of the feature columns, in order.
pub const FEATURES: [&str; 13] = [
    "sex_female",
    "pclass_1",
    "pclass_2",
    "age",
    "sibsp",
    "parch",
    "log_fare",
    "embarked_c",
    "embarked_q",
    "title_master",
    "title_miss",
    "title_mrs",
    "title_rare",
];

/// Indices of the standardized (numeric) columns.
const NUMERIC: [usize; 4] = [3, 4, 5, 6];

/// Loads and encodes `train.csv` (see the module docs for the features).
pub fn load(path: impl AsRef<std::path::Path>) -> Result<Dataset> {
    parse(&read_file(path)?)
}

/// Parses the bytes of a Titanic CSV file (header row required).
pub fn parse(bytes: &[u8]) -> Result<Dataset> {
    let records = parse_csv(bytes)?;
    let (header, rows) = records
        .split_first()
        .ok_or_else(|| Error::Data("Titanic CSV is empty (no header row)".into()))?;
    let col = |name: &str| -> Result<usize> {
        header
            .1
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::Data(format!("Titanic CSV header has no {name:?} column")))
    };
    let (c_surv, c_name, c_class, c_sex, c_age, c_sibsp, c_parch, c_fare, c_emb) = (
        col("Survived")?,
        col("Name")?,
        col("Pclass")?,
        col("Sex")?,
        col("Age")?,
        col("SibSp")?,
        col("Parch")?,
        col("Fare")?,
        col("Embarked")?,
    );
    if rows.is_empty() {
        return Err(Error::Data("Titanic CSV has a header but no rows".into()));
    }
    let width = header.1.len();
    let mut x = Array2::<f64>::zeros((rows.len(), FEATURES.len()));
    let mut labels = Vec::with_capacity(rows.len());
    let mut ages: Vec<Option<f64>> = Vec::with_capacity(rows.len());
    let mut fares: Vec<Option<f64>> = Vec::with_capacity(rows.len());
    for (r, (line, f)) in rows.iter().enumerate() {
        let line = *line;
        if f.len() != width {
            return Err(Error::Data(format!(
                "line {line}: {} fields, the header has {width}",
                f.len()
            )));
        }
        labels.push(match f[c_surv].trim() {
            "0" => 0u8,
            "1" => 1u8,
            s => {
                return Err(Error::Data(format!(
                    "line {line}: Survived {s:?} is not 0 or 1"
                )))
            }
        });
        match f[c_class].trim() {
            "1" => x[[r, 1]] = 1.0,
            "2" => x[[r, 2]] = 1.0,
            "3" => {}
            s => {
                return Err(Error::Data(format!(
                    "line {line}: Pclass {s:?} is not 1, 2 or 3"
                )))
            }
        }
        match f[c_sex].trim() {
            "female" => x[[r, 0]] = 1.0,
            "male" => {}
            s => {
                return Err(Error::Data(format!(
                    "line {line}: Sex {s:?} is not male or female"
                )))
            }
        }
        let opt_nonneg = |s: &str, what: &str| -> Result<Option<f64>> {
            if s.trim().is_empty() {
                return Ok(None);
            }
            let v = parse_number(s, line, what)?;
            if v < 0.0 {
                return Err(Error::Data(format!("line {line}: {what} {v} is negative")));
            }
            Ok(Some(v))
        };
        ages.push(opt_nonneg(&f[c_age], "Age")?);
        fares.push(opt_nonneg(&f[c_fare], "Fare")?);
        x[[r, 4]] = opt_nonneg(&f[c_sibsp], "SibSp")?
            .ok_or_else(|| Error::Data(format!("line {line}: SibSp is missing")))?;
        x[[r, 5]] = opt_nonneg(&f[c_parch], "Parch")?
            .ok_or_else(|| Error::Data(format!("line {line}: Parch is missing")))?;
        match f[c_emb].trim() {
            "C" => x[[r, 7]] = 1.0,
            "Q" => x[[r, 8]] = 1.0,
            "S" | "" => {}
            s => {
                return Err(Error::Data(format!(
                    "line {line}: Embarked {s:?} is not C, Q or S"
                )))
            }
        }
        if let Some(j) = title_column(&f[c_name]) {
            x[[r, j]] = 1.0;
        }
    }
    let age_median = median(&ages).unwrap_or(0.0);
    let fare_median = median(&fares).unwrap_or(0.0);
    for r in 0..rows.len() {
        x[[r, 3]] = ages[r].unwrap_or(age_median);
        x[[r, 6]] = fares[r].unwrap_or(fare_median).ln_1p();
    }
    standardize_columns(&mut x, &NUMERIC);
    Dataset::new(x, labels, FEATURES.iter().map(|s| s.to_string()).collect())
}

/// The feature column of the title in a `"Surname, Title. Given names"` field (`None` for Mr
/// and for a name without a title).
fn title_column(name: &str) -> Option<usize> {
    let (_, rest) = name.split_once(", ")?;
    let (title, _) = rest.split_once('.')?;
    match title.trim() {
        "Mr" => None,
        "Master" => Some(9),
        "Miss" | "Mlle" | "Ms" => Some(10),
        "Mrs" | "Mme" => Some(11),
        _ => Some(12),
    }
}

/// Median of the present values, `None` if there are none.
fn median(v: &[Option<f64>]) -> Option<f64> {
    let mut known: Vec<f64> = v.iter().flatten().copied().collect();
    if known.is_empty() {
        return None;
    }
    known.sort_by(f64::total_cmp);
    let m = known.len() / 2;
    Some(if known.len().is_multiple_of(2) {
        0.5 * (known[m - 1] + known[m])
    } else {
        known[m]
    })
}
