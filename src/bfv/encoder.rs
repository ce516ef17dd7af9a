//! The batch encoder: N integers mod t ↔ one plaintext polynomial, through the negacyclic NTT
//! modulo t (t ≡ 1 mod 2N splits `X^N + 1` into N linear factors, one slot each).
//!
//! Slots form a 2 × N/2 matrix as in SEAL: values `0..N/2` fill the first row, `N/2..N` the
//! second. Slot-wise products are plaintext products, rotations rotate each row cyclically and
//! the column swap exchanges the rows (see `slot_index_map` in `bfv::context`).

use crate::bfv::context::{BfvContext, Plaintext};
use crate::error::{Error, Result};

impl BfvContext {
    /// Encodes up to N values, each in `[0, t)`, into slots (missing slots are 0).
    pub fn encode(&self, values: &[u64]) -> Result<Plaintext> {
        let n = self.n();
        if values.len() > n {
            return Err(Error::TooManyValues {
                got: values.len(),
                slots: n,
            });
        }
        if let Some((i, v)) = values.iter().enumerate().find(|(_, &v)| v >= self.t) {
            return Err(Error::InvalidInput(format!(
                "value {v} at slot {i} is not below the plaintext modulus t = {}; reduce it mod t or use \
                 `encode_signed` for negative numbers",
                self.t
            )));
        }
        let mut evals = vec![0u64; n];
        for (&v, &pos) in values.iter().zip(&self.slot_index) {
            evals[pos] = v;
        }
        self.plan_t.inverse(&mut evals);
        Ok(Plaintext {
            coeffs: evals,
            plain_modulus: self.t,
        })
    }

    /// Encodes up to N signed values in `[-(t-1)/2, (t-1)/2]` (stored as `v mod t`), so that
    /// [`Self::decode_signed`] returns them unchanged as long as results stay in that range.
    pub fn encode_signed(&self, values: &[i64]) -> Result<Plaintext> {
        let half = ((self.t - 1) / 2) as i64;
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| v > half || v < -half)
        {
            return Err(Error::InvalidInput(format!(
                "value {v} at slot {i} is outside the signed range ±{half} of plaintext modulus t = {}",
                self.t
            )));
        }
        let t = self.t as i64;
        let unsigned: Vec<u64> = values.iter().map(|&v| v.rem_euclid(t) as u64).collect();
        self.encode(&unsigned)
    }

    /// Decodes all N slots, each in `[0, t)`.
    pub fn decode(&self, pt: &Plaintext) -> Result<Vec<u64>> {
        self.check_pt(pt)?;
        let mut evals = pt.coeffs.clone();
        self.plan_t.forward(&mut evals);
        Ok(self.slot_index.iter().map(|&pos| evals[pos]).collect())
    }

    /// Decodes all N slots as centered values in `(-t/2, t/2]`.
    pub fn decode_signed(&self, pt: &Plaintext) -> Result<Vec<i64>> {
        let t = self.t;
        Ok(self
            .decode(pt)?
            .into_iter()
            .map(|v| {
                if v > t / 2 {
                    v as i64 - t as i64
                } else {
                    v as i64
                }
            })
            .collect())
    }

    /// A plaintext with the given polynomial coefficients (each in `[0, t)`, up to N of them),
    /// bypassing the batch encoder: for polynomial-coefficient encodings.
    pub fn plaintext_from_coeffs(&self, coeffs: &[u64]) -> Result<Plaintext> {
        let n = self.n();
        if coeffs.len() > n {
            return Err(Error::TooManyValues {
                got: coeffs.len(),
                slots: n,
            });
        }
        if let Some(v) = coeffs.iter().find(|&&v| v >= self.t) {
            return Err(Error::InvalidInput(format!(
                "coefficient {v} is not below the plaintext modulus t = {}",
                self.t
            )));
        }
        let mut c = coeffs.to_vec();
        c.resize(n, 0);
        Ok(Plaintext {
            coeffs: c,
            plain_modulus: self.t,
        })
    }
}
