//! What a tensor needs from a scheme, slot-wise on single ciphertexts: CKKS (real values, with
//! rescaling and level/scale alignment) and BFV (integers mod t). The tensor logic
//! (broadcasting, axes, pickling) is written once over this trait.

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;

use hetensor::bfv::{self, BfvContext};
use hetensor::ckks::CkksContext;
use hetensor::rlwe::Ciphertext;
use hetensor::serialize::{self, Decode, Encode, WriteOptions};
use hetensor::tensor::{encrypt_columns, EncryptionKey};
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
    /// One ciphertext per column (values in slots `0..len`), encrypted in parallel.
    fn encrypt_many(&self, cols: &[Vec<Self::Value>]) -> Result<Vec<Self::Ct>>;
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
    /// Key switches [`Self::rotate`]`(step)` costs with this context's keys (1 with the
    /// step's own key, one per set bit when composed from power-of-two keys), or `None` where
    /// it cannot rotate by `step` or [`sum_slots_many`] should not pack (BFV).
    fn rotation_cost(&self, _step: i64) -> Option<usize> {
        None
    }
    /// `out[k] = Σ_i w[k][i]·cts[i]` (CKKS: rescaled back to the inputs' scale).
    fn dot(&self, cts: &[&Self::Ct], w: &[Vec<Self::Value>]) -> Result<Vec<Self::Ct>>;
    fn add_all(&self, cts: &[&Self::Ct]) -> Result<Self::Ct>;
    /// `Σ a_i·b_i` with one relinearization (and one rescale) for the whole sum.
    fn mul_sum(&self, pairs: &[(&Self::Ct, &Self::Ct)]) -> Result<Self::Ct>;
    /// `Σ coeffs[k]·a^k`, lowest degree first; `shallow`: CKKS's depth-optimal evaluation.
    fn polyval(&self, a: &Self::Ct, coeffs: &[Self::Value], shallow: bool) -> Result<Self::Ct>;
    fn level(&self, a: &Self::Ct) -> usize;
    fn scale(&self, a: &Self::Ct) -> f64;
    fn key_id(a: &Self::Ct) -> u64;

    /// Bytes [`Self::write_ct`] writes for `ct` (the compact format, uncompressed: exact).
    fn ct_len(&self, ct: &Self::Ct) -> usize {
        serialize::uncompressed_len(self.inner().rlwe(), ct, &WriteOptions::default())
    }
    /// Writes `ct` in the compact format into `out`, which must be [`Self::ct_len`] long.
    fn write_ct(&self, ct: &Self::Ct, mut out: &mut [u8]) -> Result<()> {
        serialize::write(self.inner().rlwe(), ct, &mut out, WriteOptions::default())?;
        if !out.is_empty() {
            return Err(Error::InvalidInput(format!(
                "a ciphertext encoded {} bytes short of its announced length",
                out.len()
            )));
        }
        Ok(())
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

/// [`Kernel::sum_slots`] of each of `cts`, whose slots from `width` on are zero (clean
/// tensors), in shared sums where that saves key switches: the ciphertexts of a group are
/// rotated into disjoint windows `[r, r + W)` of one ciphertext (`W`: `width` rounded up to a
/// power of two), that one is summed once, and each window's sum is rotated back to slot 0.
/// A window is used only where its two rotations cost fewer key switches than a sum of its
/// own (`log2 W`), so with only a sum's keys nothing is packed. Titanic's 9 gradient sums over
/// 891 passengers take 2 sums and ~22 rotations instead of 9 sums of 10 rotations each.
pub(crate) fn sum_slots_many<K: Kernel>(k: &K, cts: &[K::Ct], width: usize) -> Result<Vec<K::Ct>> {
    let slots = k.slots();
    let w = width.max(1).next_power_of_two().min(slots);
    let own = w.trailing_zeros() as usize;
    // The windows other than [0, W) worth their two rotations, cheapest first.
    let mut windows: Vec<(usize, i64)> = (1..slots / w)
        .filter_map(|j| {
            let r = (j * w) as i64;
            let cost = k.rotation_cost(-r)? + k.rotation_cost(r)?;
            (cost < own).then_some((cost, r))
        })
        .collect();
    windows.sort_unstable();
    let per_group = 1 + windows.len();
    // A packed ciphertext adds its group: only ciphertexts at one level and scale share one.
    let alike = cts
        .windows(2)
        .all(|p| k.level(&p[0]) == k.level(&p[1]) && k.scale(&p[0]) == k.scale(&p[1]));
    if cts.len() < 2 || per_group < 2 || !alike {
        return cts.par_iter().map(|c| k.sum_slots(c, width)).collect();
    }
    // Balanced groups (9 → 5 + 4, not 8 + 1): the groups run in parallel.
    let size = cts.len().div_ceil(cts.len().div_ceil(per_group));
    let offsets: Vec<i64> = std::iter::once(0)
        .chain(windows.iter().map(|&(_, r)| r))
        .collect();
    let groups = cts
        .par_chunks(size)
        .map(|group| -> Result<Vec<K::Ct>> {
            let offsets = &offsets[..group.len()];
            let moved = group
                .par_iter()
                .zip(offsets)
                .map(|(c, &r)| {
                    if r == 0 {
                        Ok(c.clone())
                    } else {
                        k.rotate(c, -r)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let packed = k.add_all(&moved.iter().collect::<Vec<_>>())?;
            let summed = k.sum_slots(&packed, width)?;
            offsets
                .par_iter()
                .map(|&r| {
                    if r == 0 {
                        Ok(summed.clone())
                    } else {
                        k.rotate(&summed, r)
                    }
                })
                .collect()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(groups.into_iter().flatten().collect())
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
    /// `a` and `b` ready to meet: borrowed as they are (no copies of their words) when their
    /// scales or levels agree (ciphertexts at one scale meet at the lower level: `add` does
    /// it); otherwise the higher one is lifted onto the lower one's level and exact scale
    /// (`match_scale`, one level of the higher one).
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
    fn encrypt_many(&self, cols: &[Vec<f64>]) -> Result<Vec<Ciphertext>> {
        let key = match &self.inner.secret {
            Some(sk) => EncryptionKey::Secret(sk),
            None => EncryptionKey::Public(&self.inner.keys.public),
        };
        encrypt_columns(&self.ctx, key, cols)
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
        // An integer is exact at scale 1: no rescale, no level (`x * 2`, `-1 * x`); the
        // noise grows by |c| either way.
        if c.fract() == 0.0 && c.abs() < 2f64.powi(53) {
            return self.ctx.multiply_scalar(a, c, 1.0);
        }
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
    fn rotation_cost(&self, step: i64) -> Option<usize> {
        let gk = self.inner.galois().ok()?;
        let have = |s: i64| gk.get(self.ctx.galois_element(s)).is_some();
        let s = step.rem_euclid(self.slots() as i64);
        if s == 0 || have(s) {
            return Some((s != 0) as usize);
        }
        // As `compose_rotation` does it: one key switch per set bit of `s`.
        (0..63)
            .filter(|b| s >> b & 1 == 1)
            .all(|b| have(1 << b))
            .then_some(s.count_ones() as usize)
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
    fn polyval(&self, a: &Ciphertext, coeffs: &[f64], shallow: bool) -> Result<Ciphertext> {
        let rk = &self.inner.keys.relin;
        if shallow {
            self.ctx
                .evaluate_polynomial_shallow(a, coeffs, rk, a.scale())
        } else {
            self.ctx.evaluate_polynomial(a, coeffs, rk)
        }
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
    fn encrypt_many(&self, cols: &[Vec<i64>]) -> Result<Vec<bfv::Ciphertext>> {
        cols.par_iter()
            .map(|col| {
                let pt = self.ctx.encode_signed(col)?;
                match &self.inner.secret {
                    Some(sk) => self.ctx.encrypt_symmetric(&pt, sk),
                    None => self.ctx.encrypt(&pt, &self.inner.keys.public),
                }
            })
            .collect()
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
    fn polyval(
        &self,
        a: &bfv::Ciphertext,
        coeffs: &[i64],
        shallow: bool,
    ) -> Result<bfv::Ciphertext> {
        if shallow {
            return Err(Error::InvalidInput(
                "shallow=True is CKKS's depth-optimal evaluation; BFV evaluates by Horner".into(),
            ));
        }
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
