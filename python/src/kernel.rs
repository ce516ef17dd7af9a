//! What a tensor needs from a scheme, slot-wise on single ciphertexts: CKKS (real values, with
//! rescaling and level/scale alignment) and BFV (integers mod t). The tensor logic
//! (broadcasting, axes, pickling) is written once over this trait.

use std::borrow::Cow;
use std::sync::Arc;

use hetensor::bfv::{self, BfvContext};
use hetensor::ckks::CkksContext;
use hetensor::rlwe::Ciphertext;
use hetensor::serialize::{self, Decode, Encode, WriteOptions};
use hetensor::{Error, Result};

use crate::context::{Inner, Scheme};

pub(crate) trait Kernel: Clone + Send + Sync + Sized + 'static {
    type Ct: Clone + Send + Sync + Encode + Decode;
    type Value: Copy
        + Send
        + Sync
        + Default
        + PartialEq
        + numpy::Element
        + std::ops::Neg<Output = Self::Value>;
    /// Tag in the tensor byte format.
    const TAG: u8;
    const NAME: &'static str;
    /// numpy dtype of the values, and the dtype kinds accepted as input.
    const DTYPE: &'static str;
    const KINDS: &'static [&'static str];

    fn new(inner: &Arc<Inner>) -> Result<Self>;
    fn inner(&self) -> &Arc<Inner>;
    fn one() -> Self::Value;
    /// Samples one ciphertext holds.
    fn slots(&self) -> usize;
    fn encrypt(&self, col: &[Self::Value]) -> Result<Self::Ct>;
    fn decrypt(&self, ct: &Self::Ct) -> Result<Vec<Self::Value>>;
    fn add(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct>;
    fn sub(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct>;
    fn neg(&self, a: &Self::Ct) -> Result<Self::Ct>;
    /// Product, relinearized (and rescaled for CKKS).
    fn mul(&self, a: &Self::Ct, b: &Self::Ct) -> Result<Self::Ct>;
    /// `a + c` in every slot.
    fn add_const(&self, a: &Self::Ct, c: Self::Value) -> Result<Self::Ct>;
    fn mul_const(&self, a: &Self::Ct, c: Self::Value) -> Result<Self::Ct>;
    /// `a + col` slot-wise (slots past `col` add 0).
    fn add_col(&self, a: &Self::Ct, col: &[Self::Value]) -> Result<Self::Ct>;
    fn mul_col(&self, a: &Self::Ct, col: &[Self::Value]) -> Result<Self::Ct>;
    /// Rotates the samples left by `step`.
    fn rotate(&self, a: &Self::Ct, step: i64) -> Result<Self::Ct>;
    /// Slot 0 ← the sum of slots `0..width` (other slots: partial sums).
    fn sum_slots(&self, a: &Self::Ct, width: usize) -> Result<Self::Ct>;
    /// `out[k] = Σ_i w[k][i]·cts[i]` (CKKS: rescaled back to the inputs' scale).
    fn dot(&self, cts: &[&Self::Ct], w: &[Vec<Self::Value>]) -> Result<Vec<Self::Ct>>;
    fn add_all(&self, cts: &[&Self::Ct]) -> Result<Self::Ct>;
    /// `Σ a_i·b_i` with one relinearization (and one rescale) for the whole sum.
    fn mul_sum(&self, pairs: &[(&Self::Ct, &Self::Ct)]) -> Result<Self::Ct>;
    /// `Σ coeffs[k]·a^k`, lowest degree first.
    fn polyval(&self, a: &Self::Ct, coeffs: &[Self::Value]) -> Result<Self::Ct>;
    fn level(&self, a: &Self::Ct) -> usize;
    fn scale(&self, a: &Self::Ct) -> f64;
    fn key_id(a: &Self::Ct) -> u64;

    fn encode_ct(&self, ct: &Self::Ct) -> Result<Vec<u8>> {
        serialize::to_bytes(self.inner().rlwe(), ct, WriteOptions::default())
    }
    fn decode_ct(&self, bytes: &[u8]) -> Result<Self::Ct> {
        serialize::from_bytes(self.inner().rlwe(), bytes)
    }
}

/// `rotate(a, step)` with the key for `step`, or, when there is none, composed from the
/// power-of-two keys (left rotations modulo the rotation's `period`).
fn compose_rotation<C: Clone>(
    a: &C,
    step: i64,
    period: usize,
    rotate: impl Fn(&C, i64) -> Result<C>,
) -> Result<C> {
    match rotate(a, step) {
        Err(Error::MissingGaloisKey { .. }) => {
            let mut s = step.rem_euclid(period as i64);
            let (mut acc, mut bit) = (a.clone(), 1i64);
            while s > 0 {
                if s & 1 == 1 {
                    acc = rotate(&acc, bit)?;
                }
                s >>= 1;
                bit <<= 1;
            }
            Ok(acc)
        }
        other => other,
    }
}

/// `Σ mul(a_i, b_i)` over unrelinearized products (relinearization is linear: one at the end).
fn sum_products<C>(
    pairs: &[(&C, &C)],
    mul: impl Fn(&C, &C) -> Result<C>,
    add: impl Fn(&C, &C) -> Result<C>,
) -> Result<C> {
    let ((a, b), rest) = pairs
        .split_first()
        .ok_or_else(|| Error::InvalidInput("dot product over an empty axis".into()))?;
    rest.iter()
        .try_fold(mul(a, b)?, |acc, (x, y)| add(&acc, &mul(x, y)?))
}

fn wrong_scheme(want: &str) -> Error {
    Error::InvalidInput(format!("this operation needs a {want} context"))
}

#[derive(Clone)]
pub(crate) struct Ckks {
    inner: Arc<Inner>,
    ctx: Arc<CkksContext>,
}

impl Ckks {
    /// `a`, `b` brought to one level and scale: ciphertexts at the same scale meet at the
    /// lower level (`add` does it); otherwise the higher one is lifted onto the lower one's
    /// level and exact scale (`match_scale`, one level of the higher one).
    /// `a` and `b` at one level and scale: borrowed as they are when they already agree (no
    /// copies of their words), else the higher one brought down to the other.
    fn align<'a>(
        &self,
        a: &'a Ciphertext,
        b: &'a Ciphertext,
    ) -> Result<(Cow<'a, Ciphertext>, Cow<'a, Ciphertext>)> {
        let same = ((a.scale() - b.scale()) / a.scale()).abs() < 1e-9;
        Ok(if same || a.level() == b.level() {
            (Cow::Borrowed(a), Cow::Borrowed(b))
        } else if a.level() > b.level() {
            let a = self.ctx.match_scale(a, b.level(), b.scale())?;
            (Cow::Owned(a), Cow::Borrowed(b))
        } else {
            let b = self.ctx.match_scale(b, a.level(), a.scale())?;
            (Cow::Borrowed(a), Cow::Owned(b))
        })
    }

    fn rescaled(&self, ct: Ciphertext) -> Result<Ciphertext> {
        self.ctx.rescale(&ct)
    }
}

impl Kernel for Ckks {
    type Ct = Ciphertext;
    type Value = f64;
    const TAG: u8 = 0;
    const NAME: &'static str = "CKKSTensor";
    const DTYPE: &'static str = "float64";
    const KINDS: &'static [&'static str] = &["b", "i", "u", "f"];

    fn new(inner: &Arc<Inner>) -> Result<Self> {
        match &inner.scheme {
            Scheme::Ckks(ctx) => Ok(Self {
                inner: inner.clone(),
                ctx: ctx.clone(),
            }),
            Scheme::Bfv(_) => Err(wrong_scheme("CKKS")),
        }
    }
    fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
    fn one() -> f64 {
        1.0
    }
    fn slots(&self) -> usize {
        self.ctx.slots()
    }
    fn encrypt(&self, col: &[f64]) -> Result<Ciphertext> {
        let pt = self
            .ctx
            .encode(col, self.ctx.default_scale(), self.ctx.max_level())?;
        match &self.inner.secret {
            Some(sk) => self.ctx.encrypt_symmetric(&pt, sk),
            None => self.ctx.encrypt(&pt, &self.inner.keys.public),
        }
    }
    fn decrypt(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        self.ctx.decrypt_decode(ct, self.inner.secret()?)
    }
    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (a, b) = self.align(a, b)?;
        self.ctx.add(&a, &b)
    }
    fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (a, b) = self.align(a, b)?;
        self.ctx.sub(&a, &b)
    }
    fn neg(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.ctx.negate(a)
    }
    fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        // Relinearization and rescale in one key switch (one ModDown by P·q_l, one rounding);
        // device backends never write the size-3 product.
        self.ctx
            .multiply_relinearize_rescale(a, b, &self.inner.keys.relin)
    }
    fn add_const(&self, a: &Ciphertext, c: f64) -> Result<Ciphertext> {
        self.ctx.add_scalar(a, c)
    }
    fn mul_const(&self, a: &Ciphertext, c: f64) -> Result<Ciphertext> {
        let q = self.ctx.level_modulus(a.level());
        self.rescaled(self.ctx.multiply_scalar(a, c, q)?)
    }
    fn add_col(&self, a: &Ciphertext, col: &[f64]) -> Result<Ciphertext> {
        let pt = self.ctx.encode(col, a.scale(), a.level())?;
        self.ctx.add_plain(a, &pt)
    }
    fn mul_col(&self, a: &Ciphertext, col: &[f64]) -> Result<Ciphertext> {
        let q = self.ctx.level_modulus(a.level());
        let pt = self.ctx.encode(col, q, a.level())?;
        self.rescaled(self.ctx.multiply_plain(a, &pt)?)
    }
    fn rotate(&self, a: &Ciphertext, step: i64) -> Result<Ciphertext> {
        let gk = self.inner.galois()?;
        compose_rotation(a, step, self.slots(), |c, s| self.ctx.rotate(c, s, gk))
    }
    fn sum_slots(&self, a: &Ciphertext, width: usize) -> Result<Ciphertext> {
        self.ctx.sum_slots(a, width, self.inner.galois()?)
    }
    fn dot(&self, cts: &[&Ciphertext], w: &[Vec<f64>]) -> Result<Vec<Ciphertext>> {
        let level = cts.first().map(|c| c.level()).unwrap_or(0);
        self.ctx
            .linear_combinations(cts, w, self.ctx.level_modulus(level))?
            .into_iter()
            .map(|c| self.rescaled(c))
            .collect()
    }
    fn add_all(&self, cts: &[&Ciphertext]) -> Result<Ciphertext> {
        self.ctx.linear_combination(cts, &vec![1.0; cts.len()], 1.0)
    }
    fn mul_sum(&self, pairs: &[(&Ciphertext, &Ciphertext)]) -> Result<Ciphertext> {
        let sum = sum_products(
            pairs,
            |a, b| self.ctx.multiply(a, b),
            |a, b| self.ctx.add(a, b),
        )?;
        self.ctx.relinearize_rescale(&sum, &self.inner.keys.relin)
    }
    fn polyval(&self, a: &Ciphertext, coeffs: &[f64]) -> Result<Ciphertext> {
        self.ctx
            .evaluate_polynomial(a, coeffs, &self.inner.keys.relin)
    }
    fn level(&self, a: &Ciphertext) -> usize {
        a.level()
    }
    fn scale(&self, a: &Ciphertext) -> f64 {
        a.scale()
    }
    fn key_id(a: &Ciphertext) -> u64 {
        a.key_id()
    }
}

#[derive(Clone)]
pub(crate) struct Bfv {
    inner: Arc<Inner>,
    ctx: Arc<BfvContext>,
}

impl Kernel for Bfv {
    type Ct = bfv::Ciphertext;
    type Value = i64;
    const TAG: u8 = 1;
    const NAME: &'static str = "BFVTensor";
    const DTYPE: &'static str = "int64";
    const KINDS: &'static [&'static str] = &["b", "i", "u"];

    fn new(inner: &Arc<Inner>) -> Result<Self> {
        match &inner.scheme {
            Scheme::Bfv(ctx) => Ok(Self {
                inner: inner.clone(),
                ctx: ctx.clone(),
            }),
            Scheme::Ckks(_) => Err(wrong_scheme("BFV")),
        }
    }
    fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
    fn one() -> i64 {
        1
    }
    fn slots(&self) -> usize {
        self.ctx.slots()
    }
    fn encrypt(&self, col: &[i64]) -> Result<bfv::Ciphertext> {
        let pt = self.ctx.encode_signed(col)?;
        match &self.inner.secret {
            Some(sk) => self.ctx.encrypt_symmetric(&pt, sk),
            None => self.ctx.encrypt(&pt, &self.inner.keys.public),
        }
    }
    fn decrypt(&self, ct: &bfv::Ciphertext) -> Result<Vec<i64>> {
        let pt = self.ctx.decrypt(ct, self.inner.secret()?)?;
        self.ctx.decode_signed(&pt)
    }
    fn add(&self, a: &bfv::Ciphertext, b: &bfv::Ciphertext) -> Result<bfv::Ciphertext> {
        self.ctx.add(a, b)
    }
    fn sub(&self, a: &bfv::Ciphertext, b: &bfv::Ciphertext) -> Result<bfv::Ciphertext> {
        self.ctx.sub(a, b)
    }
    fn neg(&self, a: &bfv::Ciphertext) -> Result<bfv::Ciphertext> {
        self.ctx.negate(a)
    }
    fn mul(&self, a: &bfv::Ciphertext, b: &bfv::Ciphertext) -> Result<bfv::Ciphertext> {
        self.ctx.multiply_relin(a, b, &self.inner.keys.relin)
    }
    fn add_const(&self, a: &bfv::Ciphertext, c: i64) -> Result<bfv::Ciphertext> {
        self.add_col(a, &vec![c; self.slots()])
    }
    fn mul_const(&self, a: &bfv::Ciphertext, c: i64) -> Result<bfv::Ciphertext> {
        self.ctx.multiply_scalar(a, c)
    }
    fn add_col(&self, a: &bfv::Ciphertext, col: &[i64]) -> Result<bfv::Ciphertext> {
        self.ctx.add_plain(a, &self.ctx.encode_signed(col)?)
    }
    fn mul_col(&self, a: &bfv::Ciphertext, col: &[i64]) -> Result<bfv::Ciphertext> {
        self.ctx.multiply_plain(a, &self.ctx.encode_signed(col)?)
    }
    fn rotate(&self, a: &bfv::Ciphertext, step: i64) -> Result<bfv::Ciphertext> {
        let gk = self.inner.galois()?;
        compose_rotation(a, step, self.slots() / 2, |c, s| {
            self.ctx.rotate_rows(c, s, gk)
        })
    }
    fn sum_slots(&self, a: &bfv::Ciphertext, width: usize) -> Result<bfv::Ciphertext> {
        let gk = self.inner.galois()?;
        let row = self.slots() / 2;
        let mut acc = a.clone();
        for s in CkksContext::power_of_two_steps(width.min(row)) {
            acc = self.ctx.add(&acc, &self.ctx.rotate_rows(&acc, s, gk)?)?;
        }
        if width > row {
            acc = self.ctx.add(&acc, &self.ctx.rotate_columns(&acc, gk)?)?;
        }
        Ok(acc)
    }
    fn dot(&self, cts: &[&bfv::Ciphertext], w: &[Vec<i64>]) -> Result<Vec<bfv::Ciphertext>> {
        w.iter()
            .map(|row| {
                let terms = cts
                    .iter()
                    .zip(row)
                    .map(|(c, &k)| self.ctx.multiply_scalar(c, k))
                    .collect::<Result<Vec<_>>>()?;
                self.add_all(&terms.iter().collect::<Vec<_>>())
            })
            .collect()
    }
    fn mul_sum(&self, pairs: &[(&bfv::Ciphertext, &bfv::Ciphertext)]) -> Result<bfv::Ciphertext> {
        let sum = sum_products(
            pairs,
            |a, b| self.ctx.multiply(a, b),
            |a, b| self.ctx.add(a, b),
        )?;
        self.ctx.relinearize(&sum, &self.inner.keys.relin)
    }
    fn add_all(&self, cts: &[&bfv::Ciphertext]) -> Result<bfv::Ciphertext> {
        let (first, rest) = cts
            .split_first()
            .ok_or_else(|| Error::InvalidInput("sum of no ciphertexts".into()))?;
        rest.iter()
            .try_fold((*first).clone(), |acc, c| self.ctx.add(&acc, c))
    }
    fn polyval(&self, a: &bfv::Ciphertext, coeffs: &[i64]) -> Result<bfv::Ciphertext> {
        // Horner: degree − 1 sequential products.
        let degree = coeffs.iter().rposition(|&c| c != 0).unwrap_or(0);
        if degree == 0 {
            let zero = self.mul_const(a, 0)?;
            return self.add_const(&zero, coeffs.first().copied().unwrap_or(0));
        }
        let mut acc = self.add_const(&self.mul_const(a, coeffs[degree])?, coeffs[degree - 1])?;
        for &c in coeffs[..degree - 1].iter().rev() {
            acc = self.add_const(&self.mul(&acc, a)?, c)?;
        }
        Ok(acc)
    }
    fn level(&self, a: &bfv::Ciphertext) -> usize {
        a.level()
    }
    fn scale(&self, _: &bfv::Ciphertext) -> f64 {
        1.0
    }
    fn key_id(a: &bfv::Ciphertext) -> u64 {
        a.inner().key_id()
    }
}
