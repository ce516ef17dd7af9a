//! `CKKSTensor` and `BFVTensor`: numpy arrays in the batched layout. Axis 0 is the samples,
//! one per slot; every other element (feature) is one ciphertext. A broadcast tensor holds one
//! sample in every slot and has no batch axis.

use std::sync::{Arc, Mutex};

use hetensor::{Error, Result};
use ndarray::{ArrayD, Axis, IxDyn};
use numpy::{IntoPyArray, PyReadonlyArrayDyn};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rayon::prelude::*;

use crate::context::{lookup, Context, Inner, Scheme};
use crate::kernel::{sum_slots_many, Bfv, Ckks, Kernel};
use crate::{heavy, light, to_py};

/// The scheme-independent part of a tensor.
/// What [`Core::pair`] returns: the merged batch, the broadcast shape, and each output
/// feature's index into `self` and into `other`.
type Paired = (Option<usize>, Vec<usize>, Vec<usize>, Vec<usize>);

/// One axis of an index: the positions kept, and whether the axis stays (a slice) or goes (an
/// integer).
type AxisPick = (Vec<usize>, bool);

pub(crate) struct Core<K: Kernel> {
    pub k: K,
    /// Per-sample shape.
    pub shape: Vec<usize>,
    /// Samples in slots `0..batch`; `None`: one sample replicated in every slot.
    pub batch: Option<usize>,
    /// Slots past `batch` hold (approximately) zero, so a sum over the samples needs no mask.
    pub clean: bool,
    pub cts: Arc<Vec<K::Ct>>,
}

impl<K: Kernel> Clone for Core<K> {
    fn clone(&self) -> Self {
        Self {
            k: self.k.clone(),
            shape: self.shape.clone(),
            batch: self.batch,
            clean: self.clean,
            cts: self.cts.clone(),
        }
    }
}

/// What every method of a donated tensor raises: like I/O on a closed file, a `ValueError`.
fn donated(class: &str) -> PyErr {
    PyValueError::new_err(format!(
        "this {class} was donated to a model call (donate=True); its ciphertexts are freed"
    ))
}

fn shape_err(msg: String) -> Error {
    Error::Shape(msg)
}

/// numpy broadcasting of two per-sample shapes: the result shape and, per result element,
/// the flat index into each operand.
fn broadcast(a: &[usize], b: &[usize]) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let nd = a.len().max(b.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; nd - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(a), pad(b));
    let mut out = Vec::with_capacity(nd);
    for (&x, &y) in pa.iter().zip(&pb) {
        out.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => {
                return Err(shape_err(format!(
                    "per-sample shapes {a:?} and {b:?} do not broadcast"
                )))
            }
        });
    }
    let total: usize = out.iter().product();
    let strides = |p: &[usize]| -> Vec<usize> {
        let mut s = vec![0; nd];
        let mut acc = 1;
        for d in (0..nd).rev() {
            s[d] = if p[d] == 1 { 0 } else { acc };
            acc *= p[d];
        }
        s
    };
    let (sa, sb) = (strides(&pa), strides(&pb));
    let (mut ia, mut ib) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for flat in 0..total {
        let (mut rem, mut xa, mut xb) = (flat, 0, 0);
        for d in (0..nd).rev() {
            let i = rem % out[d];
            rem /= out[d];
            xa += i * sa[d];
            xb += i * sb[d];
        }
        ia.push(xa);
        ib.push(xb);
    }
    Ok((out, ia, ib))
}

fn merge_batch(a: Option<usize>, b: Option<usize>) -> Result<Option<usize>> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(shape_err(format!(
            "batch sizes {x} and {y} differ (axis 0 is the samples)"
        ))),
        (Some(x), _) | (_, Some(x)) => Ok(Some(x)),
        _ => Ok(None),
    }
}

/// How an operation treats the slots past the batch.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
}

impl<K: Kernel> Core<K> {
    pub fn encrypt(k: K, x: ArrayD<K::Value>, broadcast: bool) -> Result<Self> {
        let slots = k.slots();
        let (batch, shape) = if broadcast {
            (None, x.shape().to_vec())
        } else {
            if x.ndim() == 0 {
                return Err(shape_err(
                    "expected [batch, ...features] (axis 0 = samples); use broadcast=True for one \
                     sample in every slot"
                        .into(),
                ));
            }
            let b = x.shape()[0];
            if b == 0 {
                return Err(shape_err(
                    "an empty batch: axis 0 (the samples) has length 0, nothing to encrypt".into(),
                ));
            }
            if b > slots {
                return Err(Error::TooManyValues { got: b, slots });
            }
            (Some(b), x.shape()[1..].to_vec())
        };
        let rows = batch.unwrap_or(1);
        let features: usize = shape.iter().product();
        if features == 0 {
            return Err(shape_err(format!(
                "per-sample shape {shape:?} holds no values: a tensor holds at least one \
                 ciphertext"
            )));
        }
        let flat = x
            .to_shape((rows, features))
            .map_err(|e| shape_err(e.to_string()))?;
        let cols: Vec<Vec<K::Value>> = flat
            .axis_iter(Axis(1))
            .map(|c| match batch {
                Some(_) => c.to_vec(),
                None => vec![c[0]; slots],
            })
            .collect();
        let cts = k.encrypt_many(&cols)?;
        Ok(Self {
            k,
            shape,
            batch,
            clean: batch.is_some(),
            cts: Arc::new(cts),
        })
    }

    fn with(&self, shape: Vec<usize>, batch: Option<usize>, clean: bool, cts: Vec<K::Ct>) -> Self {
        Self {
            k: self.k.clone(),
            shape,
            clean: clean && batch.is_some(),
            batch,
            cts: Arc::new(cts),
        }
    }

    fn map(&self, clean: bool, f: impl Fn(&K::Ct) -> Result<K::Ct> + Sync + Send) -> Result<Self> {
        let cts = self.cts.par_iter().map(f).collect::<Result<Vec<_>>>()?;
        Ok(self.with(self.shape.clone(), self.batch, clean, cts))
    }

    /// Indexing (`x[...]`): the first `batch` samples (`None`: unchanged) and, per feature
    /// axis, the positions kept and whether the axis stays (a slice) or goes (an integer).
    /// The ciphertexts are copied, as numpy copies for fancy indexing; no HE operation runs.
    pub fn select(&self, batch: Option<usize>, axes: &[AxisPick]) -> Result<Self> {
        let shape: Vec<usize> = axes
            .iter()
            .filter(|(_, keep)| *keep)
            .map(|(ix, _)| ix.len())
            .collect();
        let mut picks: Vec<usize> = vec![0];
        for ((ix, _), &len) in axes.iter().zip(&self.shape) {
            picks = picks
                .iter()
                .flat_map(|&base| ix.iter().map(move |&i| base * len + i))
                .collect();
        }
        let cts = picks.iter().map(|&i| self.cts[i].clone()).collect();
        // Samples past a shortened batch still hold the dropped ones' values.
        let clean = self.clean && batch.is_none_or(|b| Some(b) == self.batch);
        Ok(self.with(shape, batch.or(self.batch), clean, cts))
    }

    pub fn decrypt(&self) -> Result<ArrayD<K::Value>> {
        let cols = self
            .cts
            .par_iter()
            .map(|c| self.k.decrypt(c))
            .collect::<Result<Vec<_>>>()?;
        let rows = self.batch.unwrap_or(1);
        let mut out = ArrayD::<K::Value>::default(IxDyn(&[rows, cols.len()]));
        for (f, col) in cols.iter().enumerate() {
            for b in 0..rows {
                out[[b, f]] = col[b];
            }
        }
        let mut full = Vec::new();
        if self.batch.is_some() {
            full.push(rows);
        }
        full.extend(&self.shape);
        out.into_shape_with_order(IxDyn(&full))
            .map_err(|e| shape_err(e.to_string()))
    }

    pub fn binary(&self, other: &Self, op: Op) -> Result<Self> {
        let (batch, shape, ia, ib) = self.pair(other)?;
        let one = |(&i, &j): (&usize, &usize)| {
            let (x, y) = (&self.cts[i], &other.cts[j]);
            match op {
                Op::Add => self.k.add(x, y),
                Op::Sub => self.k.sub(x, y),
                Op::Mul => self.k.mul(x, y),
            }
        };
        let cts = if ia.len() == 1 {
            ia.iter().zip(&ib).map(one).collect::<Result<Vec<_>>>()?
        } else {
            ia.par_iter()
                .zip(&ib)
                .map(one)
                .collect::<Result<Vec<_>>>()?
        };
        let clean = match op {
            Op::Mul => self.clean || other.clean,
            _ => self.clean && other.clean,
        };
        Ok(self.with(shape, batch, clean, cts))
    }

    /// `self (op) x` for a plaintext array under numpy broadcasting over `[batch, ...shape]`:
    /// an axis 0 of length 1 (or absent) is the same value for every sample, otherwise one
    /// value per sample.
    pub fn plain(&self, x: &ArrayD<K::Value>, op: Op) -> Result<Self> {
        let nd = 1 + self.shape.len();
        if x.ndim() > nd {
            return Err(shape_err(format!(
                "a plaintext of shape {:?} has more axes than the tensor's [batch, {:?}]",
                x.shape(),
                self.shape
            )));
        }
        let mut padded = vec![1; nd - x.ndim()];
        padded.extend_from_slice(x.shape());
        let rows = padded[0];
        let (shape, ia, ib) = broadcast(&self.shape, &padded[1..])?;
        let per_sample = rows != 1;
        let batch = if per_sample {
            merge_batch(self.batch, Some(rows))?
        } else {
            self.batch
        };
        if rows > self.k.slots() {
            return Err(Error::TooManyValues {
                got: rows,
                slots: self.k.slots(),
            });
        }
        let feats: usize = padded[1..].iter().product();
        let flat = x
            .to_shape((rows, feats))
            .map_err(|e| shape_err(e.to_string()))?;
        let cts = ia
            .par_iter()
            .zip(&ib)
            .map(|(&i, &j)| {
                let ct = &self.cts[i];
                if per_sample {
                    let mut col: Vec<K::Value> = flat.column(j).to_vec();
                    if let Op::Sub = op {
                        col.iter_mut().for_each(|v| *v = -*v);
                    }
                    match op {
                        Op::Mul => self.k.mul_col(ct, &col),
                        _ => self.k.add_col(ct, &col),
                    }
                } else {
                    let v = flat[[0, j]];
                    match op {
                        Op::Add => self.k.add_const(ct, v),
                        Op::Sub => self.k.add_const(ct, -v),
                        Op::Mul => self.k.mul_const(ct, v),
                    }
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let clean = match op {
            Op::Mul => self.clean || per_sample,
            _ => self.clean && per_sample && self.batch.is_some(),
        };
        Ok(self.with(shape, batch, clean, cts))
    }

    /// Σ over the last axis of `self * other` (broadcast), relinearized once per output.
    pub fn dot(&self, other: &Self) -> Result<Self> {
        let (batch, shape, ia, ib) = self.pair(other)?;
        let d = *shape.last().ok_or_else(|| {
            shape_err("dot contracts the last feature axis: these tensors have none".into())
        })?;
        let pairs: Vec<(&K::Ct, &K::Ct)> = ia
            .iter()
            .zip(&ib)
            .map(|(&i, &j)| (&self.cts[i], &other.cts[j]))
            .collect();
        let cts = pairs
            .par_chunks(d.max(1))
            .map(|chunk| self.k.mul_sum(chunk))
            .collect::<Result<Vec<_>>>()?;
        let clean = self.clean || other.clean;
        Ok(self.with(shape[..shape.len() - 1].to_vec(), batch, clean, cts))
    }

    /// Whether `self op other` is one addition or subtraction of two ciphertexts already at
    /// one level and scale: element-wise work small enough to run on the caller's thread
    /// ([`crate::light`]) instead of being handed to the pool.
    pub fn is_light(&self, other: &Self, op: Op) -> bool {
        match (op, self.cts.as_slice(), other.cts.as_slice()) {
            (Op::Add | Op::Sub, [a], [b]) => {
                self.k.level(a) == self.k.level(b) && self.k.scale(a) == self.k.scale(b)
            }
            _ => false,
        }
    }

    /// The batch, shape and per-operand feature indices of `self ∘ other` (broadcast), after
    /// checking that both belong to one key set.
    fn pair(&self, other: &Self) -> Result<Paired> {
        let (a, b) = (self.k.inner(), other.k.inner());
        if a.key_id() != b.key_id() || a.fingerprint() != b.fingerprint() {
            return Err(Error::KeyMismatch(
                "the tensors were encrypted under different key sets".into(),
            ));
        }
        let batch = merge_batch(self.batch, other.batch)?;
        let (shape, ia, ib) = broadcast(&self.shape, &other.shape)?;
        Ok((batch, shape, ia, ib))
    }

    pub fn neg(&self) -> Result<Self> {
        self.map(self.clean, |c| self.k.neg(c))
    }

    pub fn square(&self) -> Result<Self> {
        self.map(self.clean, |c| self.k.mul(c, c))
    }

    /// `self ** n` (`n ≥ 1`) in ⌈log₂ n⌉ products deep: the squares `x^(2^i)` for the bits of
    /// `n`, multiplied shallowest first (`x^7 = x^4 · (x^2 · x)`, 3 levels).
    pub fn power(&self, n: u64) -> Result<Self> {
        if n == 0 {
            return Err(Error::InvalidInput(
                "x ** 0 would be an encryption of ones: encrypt np.ones_like(...) instead".into(),
            ));
        }
        // CKKS spends a level per product: refuse up front what the levels cannot hold (BFV's
        // noise budget is checked by each product).
        let need = (u64::BITS - (n - 1).leading_zeros()) as usize;
        if K::DTYPE == "float64" && need > self.level() {
            return Err(Error::TooDeep {
                op: format!("x ** {n}"),
                need,
                level: self.level(),
            });
        }
        self.map(self.clean, |c| {
            let (mut terms, mut square, mut depth, mut rest) = (Vec::new(), c.clone(), 0, n);
            loop {
                if rest & 1 == 1 {
                    terms.push((depth, square.clone()));
                }
                rest >>= 1;
                if rest == 0 {
                    break;
                }
                square = self.k.mul(&square, &square)?;
                depth += 1;
            }
            while terms.len() > 1 {
                terms.sort_by_key(|t| std::cmp::Reverse(t.0));
                let (da, a) = terms.pop().expect("two terms");
                let (db, b) = terms.pop().expect("two terms");
                terms.push((da.max(db) + 1, self.k.mul(&a, &b)?));
            }
            Ok(terms.pop().expect("n >= 1 leaves one term").1)
        })
    }

    pub fn rotate(&self, step: i64) -> Result<Self> {
        self.map(false, |c| self.k.rotate(c, step))
    }

    pub fn polyval(&self, coeffs: &[K::Value], shallow: bool) -> Result<Self> {
        let keeps_zero = coeffs.first().is_none_or(|c| *c == K::Value::default());
        self.map(self.clean && keeps_zero, |c| {
            self.k.polyval(c, coeffs, shallow)
        })
    }

    /// `self @ w` for a plaintext matrix `[d, k]` (or vector `[d]`) on the last feature axis.
    pub fn matmul(&self, w: &ArrayD<K::Value>) -> Result<Self> {
        let d = *self.shape.last().ok_or_else(|| {
            shape_err("matmul needs a feature axis: the tensor is one value per sample".into())
        })?;
        let (rows, cols, vector) = match w.shape() {
            [r] => (*r, 1, true),
            [r, c] => (*r, *c, false),
            s => {
                return Err(shape_err(format!(
                    "matmul takes a 1-D or 2-D matrix, got {s:?}"
                )))
            }
        };
        if rows != d {
            return Err(shape_err(format!(
                "matmul: the tensor's last axis has {d} features but the matrix has {rows} rows"
            )));
        }
        let w2 = w
            .to_shape((rows, cols))
            .map_err(|e| shape_err(e.to_string()))?;
        let wt: Vec<Vec<K::Value>> = w2.columns().into_iter().map(|c| c.to_vec()).collect();
        let groups: Vec<Vec<&K::Ct>> = self.cts.chunks(d).map(|g| g.iter().collect()).collect();
        let out = groups
            .par_iter()
            .map(|g| self.k.dot(g, &wt))
            .collect::<Result<Vec<_>>>()?;
        let mut shape = self.shape[..self.shape.len() - 1].to_vec();
        if !vector {
            shape.push(cols);
        }
        Ok(self.with(
            shape,
            self.batch,
            self.clean,
            out.into_iter().flatten().collect(),
        ))
    }

    /// `m @ self` for a plaintext `m` (`[k, n]` or `[n]`), numpy's semantics: `m` contracts
    /// the tensor's second-to-last axis (its only axis when it has one). That axis must be a
    /// feature axis: the feature axes are reordered (no HE work) so that it comes last, the
    /// product is [`Self::matmul`] with `mᵀ`, and the result's axis goes back in its place.
    pub fn rmatmul(&self, m: &ArrayD<K::Value>) -> Result<Self> {
        let has_batch = self.batch.is_some();
        let nd = self.shape.len() + has_batch as usize;
        let axis = nd.saturating_sub(2);
        if nd == 0 || (has_batch && axis == 0) {
            return Err(shape_err(
                "m @ x contracts the tensor's second-to-last axis, here axis 0, the samples \
                 (one per slot); x @ m.T contracts the features instead"
                    .into(),
            ));
        }
        if m.ndim() > 2 {
            return Err(shape_err(format!(
                "m @ x takes a 1-D or 2-D plaintext m, got shape {:?}",
                m.shape()
            )));
        }
        let f = axis - has_batch as usize; // the contracted feature axis
        let n = m.shape().last().copied().unwrap_or(0);
        if n != self.shape[f] {
            return Err(shape_err(format!(
                "m @ x: m has {n} columns but the tensor's axis {axis} has {} elements",
                self.shape[f]
            )));
        }
        let last = self.shape.len() - 1;
        let mut to_end: Vec<usize> = (0..self.shape.len()).filter(|&a| a != f).collect();
        to_end.push(f);
        let product = self.permuted(&to_end).matmul(&m.t().to_owned())?;
        if m.ndim() == 1 || f == last {
            // The contracted axis is gone (1-D m), or the new one is already in its place.
            return Ok(product);
        }
        // The new axis (last) goes back to position f.
        let mut back: Vec<usize> = (0..last).collect();
        back.insert(f, last);
        Ok(product.permuted(&back))
    }

    /// The feature axes reordered: axis `a` of the result is axis `perm[a]` of `self`.
    fn permuted(&self, perm: &[usize]) -> Self {
        let shape: Vec<usize> = perm.iter().map(|&a| self.shape[a]).collect();
        let mut strides = vec![1; self.shape.len()];
        for a in (0..self.shape.len().saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * self.shape[a + 1];
        }
        let total: usize = shape.iter().product();
        let cts = (0..total)
            .map(|flat| {
                let (mut rem, mut src) = (flat, 0);
                for a in (0..shape.len()).rev() {
                    src += (rem % shape[a]) * strides[perm[a]];
                    rem /= shape[a];
                }
                self.cts[src].clone()
            })
            .collect();
        self.with(shape, self.batch, self.clean, cts)
    }

    /// Sums over `axes` of the full shape (axis 0 = samples when there is a batch axis; the
    /// sum over samples lands in slot 0 and keeps a batch axis of length 1).
    pub fn sum(&self, axes: Option<Vec<isize>>) -> Result<Self> {
        let has_batch = self.batch.is_some() as usize;
        let nd = self.shape.len() + has_batch;
        let axes: Vec<usize> = match axes {
            None => (0..nd).collect(),
            Some(a) => a
                .into_iter()
                .map(|x| {
                    let v = if x < 0 { x + nd as isize } else { x };
                    if v < 0 || v as usize >= nd {
                        Err(shape_err(format!("axis {x} out of range for {nd} axes")))
                    } else {
                        Ok(v as usize)
                    }
                })
                .collect::<Result<_>>()?,
        };
        let over_samples = has_batch == 1 && axes.contains(&0);
        let feature_axes: Vec<usize> = axes
            .iter()
            .filter(|&&a| a >= has_batch)
            .map(|&a| a - has_batch)
            .collect();
        let out_shape: Vec<usize> = (0..self.shape.len())
            .filter(|a| !feature_axes.contains(a))
            .map(|a| self.shape[a])
            .collect();
        let mut groups: Vec<Vec<&K::Ct>> = vec![Vec::new(); out_shape.iter().product()];
        for (flat, ct) in self.cts.iter().enumerate() {
            let (mut rem, mut out, mut mul) = (flat, 0, 1);
            for a in (0..self.shape.len()).rev() {
                let i = rem % self.shape[a];
                rem /= self.shape[a];
                if !feature_axes.contains(&a) {
                    out += i * mul;
                    mul *= self.shape[a];
                }
            }
            groups[out].push(ct);
        }
        let mut cts = groups
            .par_iter()
            .map(|g| self.k.add_all(g))
            .collect::<Result<Vec<_>>>()?;
        let (mut batch, mut clean) = (self.batch, self.clean);
        if let (true, Some(b)) = (over_samples, self.batch) {
            if !clean {
                // Slots past the batch may hold anything: zeroed before they are summed.
                let ones = vec![K::one(); b];
                cts = cts
                    .par_iter()
                    .map(|c| self.k.mul_col(c, &ones))
                    .collect::<Result<Vec<_>>>()?;
            }
            cts = sum_slots_many(&self.k, &cts, b)?;
            batch = Some(1);
            clean = false;
        }
        Ok(self.with(out_shape, batch, clean, cts))
    }

    /// The same ciphertexts under another context of the same key set (e.g. the key holder's).
    pub fn under(&self, inner: &Arc<Inner>) -> Result<Self> {
        let mine = self.k.inner();
        if inner.key_id() != mine.key_id() || inner.fingerprint() != mine.fingerprint() {
            return Err(Error::KeyMismatch(
                "the tensor belongs to another key set than this context".into(),
            ));
        }
        Ok(Self {
            k: K::new(inner)?,
            ..self.clone()
        })
    }

    pub fn level(&self) -> usize {
        self.cts.first().map(|c| self.k.level(c)).unwrap_or(0)
    }

    pub fn scale(&self) -> f64 {
        self.cts.first().map(|c| self.k.scale(c)).unwrap_or(1.0)
    }

    /// The header [`Self::write_into`] writes: `HETT`, version, scheme tag, flags (1: clean,
    /// 2: has batch), fingerprint, key set, batch, shape.
    fn header(&self) -> Vec<u8> {
        let inner = self.k.inner();
        let mut out = Vec::with_capacity(MAGIC.len() + 3 + 8 * (4 + self.shape.len()));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(K::TAG);
        out.push(self.clean as u8 | (self.batch.is_some() as u8) << 1);
        out.extend_from_slice(&inner.fingerprint().to_le_bytes());
        out.extend_from_slice(&inner.key_id().to_le_bytes());
        out.extend_from_slice(&(self.batch.unwrap_or(0) as u64).to_le_bytes());
        out.extend_from_slice(&(self.shape.len() as u64).to_le_bytes());
        for &d in &self.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out
    }

    /// Bytes of the tensor in its format: the header, then each ciphertext's length and
    /// compact encoding.
    pub fn encoded_len(&self) -> usize {
        self.header().len() + self.cts.iter().map(|c| 8 + self.k.ct_len(c)).sum::<usize>()
    }

    /// Writes the tensor into `out` ([`Self::encoded_len`] bytes), its ciphertexts in parallel
    /// straight into their places: no per-ciphertext buffers to gather afterwards.
    pub fn write_into(&self, out: &mut [u8]) -> Result<()> {
        let given = out.len();
        let short = || {
            Error::InvalidInput(format!(
                "a tensor of {} bytes written into a buffer of {given}",
                self.encoded_len()
            ))
        };
        let head = self.header();
        let Some((h, mut rest)) = out.split_at_mut_checked(head.len()) else {
            return Err(short());
        };
        h.copy_from_slice(&head);
        let mut places = Vec::with_capacity(self.cts.len());
        for c in self.cts.iter() {
            let len = self.k.ct_len(c);
            let Some((frame, tail)) = std::mem::take(&mut rest).split_at_mut_checked(8 + len)
            else {
                return Err(short());
            };
            let (prefix, body) = frame.split_at_mut(8);
            prefix.copy_from_slice(&(len as u64).to_le_bytes());
            places.push((c, body));
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(short());
        }
        places
            .into_par_iter()
            .try_for_each(|(c, body)| self.k.write_ct(c, body))
    }

    pub fn from_bytes(k: K, h: Header, body: &[u8]) -> Result<Self> {
        let count: usize = h
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        // Every ciphertext frame takes more than its 8-byte length: bound the count first.
        if count > body.len() / 9 + 1 {
            return Err(Error::Decode(format!(
                "shape {:?} claims more ciphertexts than the {} bytes hold",
                h.shape,
                body.len()
            )));
        }
        if let Some(b) = h.batch {
            if b == 0 || b > k.slots() {
                return Err(Error::Decode(format!(
                    "batch {b} outside 1..={}",
                    k.slots()
                )));
            }
        }
        let mut r = Reader(body);
        let mut frames = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.u64()?;
            frames.push(r.take(len)?);
        }
        if !r.0.is_empty() {
            return Err(Error::Decode(format!(
                "{} trailing bytes after the tensor",
                r.0.len()
            )));
        }
        let cts = frames
            .par_iter()
            .map(|f| k.decode_ct(f))
            .collect::<Result<Vec<_>>>()?;
        if cts.iter().any(|c| K::key_id(c) != h.key_id) {
            return Err(Error::Decode(
                "a ciphertext of another key set in the tensor".into(),
            ));
        }
        Ok(Self {
            k,
            shape: h.shape,
            batch: h.batch,
            clean: h.clean && h.batch.is_some(),
            cts: Arc::new(cts),
        })
    }
}

const MAGIC: &[u8; 4] = b"HETT";
const FORMAT: u8 = 1;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.0.len() as u64 {
            return Err(Error::Decode("tensor bytes truncated".into()));
        }
        let (a, b) = self.0.split_at(n as usize);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
}

pub(crate) struct Header {
    tag: u8,
    clean: bool,
    fingerprint: u64,
    key_id: u64,
    batch: Option<usize>,
    shape: Vec<usize>,
}

/// The tensor header, and the rest of the bytes.
fn read_header(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return Err(Error::Decode("not a hetensor tensor (bad magic)".into()));
    }
    let v = r.take(3)?;
    if v[0] != FORMAT {
        return Err(Error::Decode(format!(
            "tensor format version {} (this reads {FORMAT})",
            v[0]
        )));
    }
    if v[2] & !3 != 0 {
        return Err(Error::Decode(format!("unknown tensor flags {:#04x}", v[2])));
    }
    let (fingerprint, key_id, batch) = (r.u64()?, r.u64()?, r.u64()?);
    let nd = r.u64()?;
    if nd > 32 {
        return Err(Error::Decode(format!("{nd} axes")));
    }
    let shape = (0..nd)
        .map(|_| r.u64().map(|d| d as usize))
        .collect::<Result<Vec<_>>>()?;
    let has_batch = v[2] & 2 != 0;
    let h = Header {
        tag: v[1],
        clean: v[2] & 1 != 0,
        fingerprint,
        key_id,
        batch: has_batch.then_some(batch as usize),
        shape,
    };
    Ok((h, r.0))
}

fn decode<K: Kernel>(inner: Option<&Arc<Inner>>, bytes: &[u8]) -> Result<Core<K>> {
    let (h, body) = read_header(bytes)?;
    if h.tag != K::TAG {
        return Err(Error::Decode(format!("these bytes are not a {}", K::NAME)));
    }
    let inner = match inner {
        Some(i) if i.key_id() != h.key_id || i.fingerprint() != h.fingerprint => {
            return Err(Error::KeyMismatch(
                "the tensor belongs to another key set than this context".into(),
            ))
        }
        Some(i) => i.clone(),
        None => lookup(h.fingerprint, h.key_id)?,
    };
    Core::from_bytes(K::new(&inner)?, h, body)
}

/// A `TypeError` naming both kinds when `other` is a tensor of the other scheme (instead of
/// numpy's complaint about an array of objects).
fn refuse_other_scheme(name: &str, other: &Bound<'_, PyAny>) -> PyResult<()> {
    let theirs = if other.is_instance_of::<CKKSTensor>() {
        "CKKSTensor"
    } else if other.is_instance_of::<BFVTensor>() {
        "BFVTensor"
    } else {
        return Ok(());
    };
    Err(PyTypeError::new_err(format!(
        "cannot combine a {name} with a {theirs}: they are encrypted under different schemes"
    )))
}

/// `1 / other` for a plaintext divisor, as a numpy float array: CKKS divides by multiplying.
/// BFV (integers mod t), an encrypted divisor and a zero are refused.
fn plain_reciprocal<'py, K: Kernel>(
    py: Python<'py>,
    other: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if K::DTYPE != "float64" {
        return Err(PyTypeError::new_err(format!(
            "{} holds integers modulo t: `/` is not defined (multiply by an integer instead)",
            K::NAME
        )));
    }
    if other.is_instance_of::<CKKSTensor>() || other.is_instance_of::<BFVTensor>() {
        return Err(PyTypeError::new_err(
            "division by an encrypted tensor is not supported: approximate 1/x with `polyval` \
             on a known interval",
        ));
    }
    let x = to_array::<K>(py, other)?;
    if x.iter().any(|&v| v == K::Value::default()) {
        return Err(pyo3::exceptions::PyZeroDivisionError::new_err(format!(
            "{} divided by zero",
            K::NAME
        )));
    }
    let np = py.import("numpy")?;
    np.call_method1("reciprocal", (x.into_pyarray(py),))
}

/// Converts an array-like to the kernel's element type; BFV takes integers only.
fn to_array<K: Kernel>(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<ArrayD<K::Value>> {
    let np = py.import("numpy")?;
    let a = np.call_method1("asarray", (obj,))?;
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    // BFV takes floats that hold integers (`x * 2.0`, a float array of counts) and nothing else.
    let whole_floats = K::DTYPE == "int64" && kind == "f";
    if whole_floats {
        let f = np.call_method1("ascontiguousarray", (&a, "float64"))?;
        let f: PyReadonlyArrayDyn<'_, f64> = f.extract()?;
        let limit = 2f64.powi(63);
        if let Some(v) = f
            .as_array()
            .iter()
            .find(|v| !(v.is_finite() && v.trunc() == **v && v.abs() < limit))
        {
            return Err(PyTypeError::new_err(format!(
                "{} holds integers modulo t: the value {v} is not a 64-bit integer",
                K::NAME
            )));
        }
    } else if !K::KINDS.contains(&kind.as_str()) {
        let hint = if kind == "O" {
            " (an object array: Python integers beyond 64 bits, or values of mixed types)"
        } else {
            ""
        };
        return Err(PyTypeError::new_err(format!(
            "{} cannot take an array of dtype kind {kind:?}{hint} (accepted: {:?})",
            K::NAME,
            K::KINDS
        )));
    }
    // numpy casts uint64 above 2^63 - 1 to int64 by wrapping (2^64 - 1 becomes -1): refuse it.
    if K::DTYPE == "int64" && kind == "u" && a.getattr("size")?.extract::<usize>()? > 0 {
        let max: u64 = a.call_method0("max")?.extract()?;
        if max > i64::MAX as u64 {
            return Err(to_py(Error::InvalidInput(format!(
                "value {max} is beyond the 64-bit signed integers {} takes",
                K::NAME
            ))));
        }
    }
    let a = np.call_method1("ascontiguousarray", (a, K::DTYPE))?;
    let ro: PyReadonlyArrayDyn<'_, K::Value> = a.extract()?;
    Ok(ro.as_array().to_owned())
}

pub(crate) fn encrypt_any(
    py: Python<'_>,
    inner: &Arc<Inner>,
    data: &Bound<'_, PyAny>,
    broadcast: bool,
) -> PyResult<PyObject> {
    Ok(match inner.scheme {
        Scheme::Ckks(_) => {
            let t = CKKSTensor::encrypt(py, inner, data, broadcast)?;
            Bound::new(py, t)?.into_any().unbind()
        }
        Scheme::Bfv(_) => {
            let t = BFVTensor::encrypt(py, inner, data, broadcast)?;
            Bound::new(py, t)?.into_any().unbind()
        }
    })
}

/// Unpickles a tensor: finds its key set among the contexts loaded in this process.
#[pyfunction]
pub(crate) fn _tensor_from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<PyObject> {
    let (h, _) = read_header(data).map_err(to_py)?;
    Ok(match h.tag {
        Ckks::TAG => Bound::new(py, CKKSTensor::from_core(heavy(py, || decode(None, data))?))?
            .into_any()
            .unbind(),
        Bfv::TAG => Bound::new(py, BFVTensor::from_core(heavy(py, || decode(None, data))?))?
            .into_any()
            .unbind(),
        t => {
            return Err(to_py(Error::Decode(format!(
                "unknown tensor scheme tag {t}"
            ))))
        }
    })
}

/// numpy's basic indexing (integers, slices, `...`) over `[batch, *shape]`, resolved to what
/// [`Core::select`] takes. Axis 0 is the samples, one per slot: only a prefix `x[:k]` keeps
/// them in place, so anything else there is refused rather than rotated.
fn resolve_index(
    key: &Bound<'_, PyAny>,
    batch: Option<usize>,
    shape: &[usize],
) -> PyResult<(Option<usize>, Vec<AxisPick>)> {
    use pyo3::exceptions::PyIndexError;
    use pyo3::types::{PySlice, PyTuple};
    let items: Vec<Bound<'_, PyAny>> = match key.downcast::<PyTuple>() {
        Ok(t) => t.iter().collect(),
        Err(_) => vec![key.clone()],
    };
    let lens: Vec<usize> = batch.iter().copied().chain(shape.iter().copied()).collect();
    let ellipses = items.iter().filter(|i| i.is(key.py().Ellipsis())).count();
    if ellipses > 1 {
        return Err(PyIndexError::new_err(
            "an index can only have a single ellipsis ('...')",
        ));
    }
    let given = items.len() - ellipses;
    if given > lens.len() {
        return Err(PyIndexError::new_err(format!(
            "too many indices: the tensor has {} axes, {given} were indexed",
            lens.len()
        )));
    }
    // Every axis's selection: (positions, axis kept); axes not named keep everything.
    let mut sel: Vec<AxisPick> = Vec::with_capacity(lens.len());
    for item in &items {
        if item.is(key.py().Ellipsis()) {
            for _ in 0..lens.len() - given {
                let len = lens[sel.len()];
                sel.push(((0..len).collect(), true));
            }
            continue;
        }
        let (axis, len) = (sel.len(), lens[sel.len()]);
        if let Ok(slice) = item.downcast::<PySlice>() {
            let r = slice.indices(len as isize)?;
            if r.slicelength == 0 {
                return Err(PyIndexError::new_err(format!(
                    "the slice selects nothing on axis {axis} (size {len}): a tensor holds at \
                     least one ciphertext"
                )));
            }
            let picks = (0..r.slicelength)
                .map(|k| (r.start + k as isize * r.step) as usize)
                .collect();
            sel.push((picks, true));
        } else if item.is_none() {
            return Err(PyIndexError::new_err(
                "np.newaxis (None) is not supported in a tensor index",
            ));
        } else if let Ok(i) = item.extract::<isize>() {
            let at = if i < 0 { i + len as isize } else { i };
            if at < 0 || at >= len as isize {
                return Err(PyIndexError::new_err(format!(
                    "index {i} is out of bounds for axis {axis} with size {len}"
                )));
            }
            sel.push((vec![at as usize], false));
        } else {
            return Err(PyTypeError::new_err(format!(
                "a tensor is indexed with integers, slices and '...', not {}",
                item.get_type().name()?
            )));
        }
    }
    while sel.len() < lens.len() {
        let len = lens[sel.len()];
        sel.push(((0..len).collect(), true));
    }
    let new_batch = match batch {
        None => None,
        Some(b) => {
            let (picks, kept) = sel.remove(0);
            let prefix = kept && picks.iter().enumerate().all(|(k, &i)| k == i);
            if !prefix {
                return Err(to_py(shape_err(format!(
                    "axis 0 holds the {b} samples, one per slot: an index there can only keep \
                     a prefix (x[:k]); moving samples to other slots takes rotations \
                     (x.rotate), and one sample alone is x[:1]"
                ))));
            }
            (picks.len() < b).then_some(picks.len())
        }
    };
    Ok((new_batch, sel))
}

macro_rules! tensor_class {
    ($name:ident, $kernel:ty, $pyname:literal, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(frozen, module = "hetensor", name = $pyname)]
        pub struct $name {
            /// `None` once donated to a model call (`model(x, donate=True)`), which freed the
            /// ciphertexts.
            core: Mutex<Option<Core<$kernel>>>,
        }

        impl $name {
            pub(crate) fn from_core(core: Core<$kernel>) -> Self {
                Self {
                    core: Mutex::new(Some(core)),
                }
            }

            /// A handle on the contents: the shape and an `Arc` of the ciphertexts.
            pub(crate) fn core(&self) -> PyResult<Core<$kernel>> {
                let guard = self.core.lock().unwrap_or_else(|e| e.into_inner());
                guard.clone().ok_or_else(|| donated($pyname))
            }

            /// Takes the contents out, leaving a donated tensor that every method refuses:
            /// the ciphertexts go once the taker drops its handle. (No model takes BFV tensors
            /// yet, so `BFVTensor`'s is unused.)
            #[allow(dead_code)]
            pub(crate) fn donate(&self) -> PyResult<Core<$kernel>> {
                let mut guard = self.core.lock().unwrap_or_else(|e| e.into_inner());
                guard.take().ok_or_else(|| donated($pyname))
            }

            fn encrypt(
                py: Python<'_>,
                inner: &Arc<Inner>,
                data: &Bound<'_, PyAny>,
                broadcast: bool,
            ) -> PyResult<Self> {
                let k = <$kernel>::new(inner).map_err(to_py)?;
                let x = to_array::<$kernel>(py, data)?;
                Ok(Self::from_core(heavy(py, || {
                    Core::encrypt(k, x, broadcast)
                })?))
            }

            fn op(&self, py: Python<'_>, other: &Bound<'_, PyAny>, op: Op) -> PyResult<Self> {
                let c = self.core()?;
                let core = if let Ok(t) = other.downcast::<Self>() {
                    let o = t.get().core()?;
                    if c.is_light(&o, op) {
                        light(py, || c.binary(&o, op))?
                    } else {
                        heavy(py, || c.binary(&o, op))?
                    }
                } else {
                    refuse_other_scheme($pyname, other)?;
                    let x = to_array::<$kernel>(py, other)?;
                    heavy(py, || c.plain(&x, op))?
                };
                Ok(Self::from_core(core))
            }

            /// Runs `f` on the contents without the GIL, wrapping its result.
            fn unary(
                &self,
                py: Python<'_>,
                f: impl FnOnce(&Core<$kernel>) -> Result<Core<$kernel>> + Send,
            ) -> PyResult<Self> {
                let c = self.core()?;
                Ok(Self::from_core(heavy(py, || f(&c))?))
            }
        }

        #[pymethods]
        impl $name {
            /// `None`: numpy's operators defer to the tensor's own, so `ndarray + tensor` and
            /// `np.float64(2) * tensor` give a tensor (not an object array of tensors, one per
            /// element, which is what numpy builds otherwise).
            #[classattr]
            fn __array_ufunc__() -> Option<bool> {
                None
            }

            /// Encrypts `data` (axis 0 = samples) under `ctx`; `broadcast=True` puts one
            /// sample (no batch axis) in every slot. With a public context, public-key
            /// encryption; with the secret key, seeded symmetric encryption (half the bytes).
            #[new]
            #[pyo3(signature = (ctx, data, broadcast=false))]
            fn py_new(
                py: Python<'_>,
                ctx: &Context,
                data: &Bound<'_, PyAny>,
                broadcast: bool,
            ) -> PyResult<Self> {
                Self::encrypt(py, &ctx.inner, data, broadcast)
            }

            /// Decrypts to a numpy array `[batch, *shape]` (`[*shape]` for a broadcast
            /// tensor). Needs the secret key: the tensor's own context, or `ctx` from the
            /// key holder (e.g. for a tensor computed by a worker).
            #[pyo3(signature = (ctx=None))]
            fn decrypt<'py>(
                &self,
                py: Python<'py>,
                ctx: Option<&Context>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let core = match ctx {
                    None => self.core()?,
                    Some(c) => self.core()?.under(&c.inner).map_err(to_py)?,
                };
                let arr = heavy(py, || core.decrypt())?;
                Ok(arr.into_pyarray(py).into_any())
            }

            fn __add__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.op(py, other, Op::Add)
            }
            fn __radd__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.op(py, other, Op::Add)
            }
            fn __sub__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.op(py, other, Op::Sub)
            }
            fn __rsub__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.unary(py, |c| c.neg())?.op(py, other, Op::Add)
            }
            fn __mul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.op(py, other, Op::Mul)
            }
            fn __rmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.op(py, other, Op::Mul)
            }
            fn __neg__(&self, py: Python<'_>) -> PyResult<Self> {
                self.unary(py, |c| c.neg())
            }
            /// `tensor ** n` for an integer `n ≥ 1`: repeated squaring, ⌈log₂ n⌉ levels.
            fn __pow__(
                &self,
                py: Python<'_>,
                exponent: &Bound<'_, PyAny>,
                modulo: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Self> {
                if modulo.is_some_and(|m| !m.is_none()) {
                    return Err(PyTypeError::new_err(
                        "pow() with a modulus is not supported",
                    ));
                }
                let n: u64 = exponent.extract().map_err(|_| {
                    PyTypeError::new_err(
                        "a tensor's power takes an integer exponent n >= 1 (other functions: \
                         `polyval` on a known interval)",
                    )
                })?;
                self.unary(py, |c| c.power(n))
            }
            /// `x / tensor`: refused, with what to do instead.
            fn __rtruediv__(&self, _other: &Bound<'_, PyAny>) -> PyResult<Self> {
                Err(PyTypeError::new_err(
                    "division by an encrypted tensor is not supported: approximate 1/x with \
                     `polyval` on a known interval",
                ))
            }
            /// Iterating would take one sample out of its slot per step (rotations and masks):
            /// refused, rather than failing at the first index.
            fn __iter__(&self) -> PyResult<Py<PyAny>> {
                Err(PyTypeError::new_err(format!(
                    "a {} is not iterable: its samples share ciphertexts (one per slot); \
                     decrypt() first, or index features with x[:, i]",
                    $pyname
                )))
            }
            /// `np.asarray(tensor)` would make an object array holding the tensor: refused.
            #[pyo3(signature = (dtype=None, copy=None))]
            fn __array__(
                &self,
                dtype: Option<&Bound<'_, PyAny>>,
                copy: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Py<PyAny>> {
                let _ = (dtype, copy);
                Err(PyTypeError::new_err(format!(
                    "a {} is encrypted: call decrypt() for a numpy array",
                    $pyname
                )))
            }
            /// `tensor / x` for plaintext `x` (CKKS only): a product with `1 / x`.
            fn __truediv__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                let inverse = plain_reciprocal::<$kernel>(py, other)?;
                self.op(py, &inverse, Op::Mul)
            }
            /// `tensor @ matrix` with a plaintext `[d, k]` matrix (or `[d]` vector) on the
            /// last feature axis: one linear combination per output, no rotations.
            fn __matmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                if other.is_instance_of::<CKKSTensor>() || other.is_instance_of::<BFVTensor>() {
                    return Err(PyTypeError::new_err(
                        "`@` takes a plaintext matrix; for Σ of products of two encrypted \
                         tensors over the last axis use `a.dot(b)`",
                    ));
                }
                let w = to_array::<$kernel>(py, other)?;
                self.unary(py, |c| c.matmul(&w))
            }
            /// `matrix @ tensor` with a plaintext `[k, n]` matrix (or `[n]` vector): numpy's
            /// contraction of the tensor's second-to-last axis, which must be a feature axis
            /// (for a `[batch, d]` tensor it is the samples: refused, `x @ m.T` is meant).
            fn __rmatmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                let m = to_array::<$kernel>(py, other)?;
                self.unary(py, |c| c.rmatmul(&m))
            }
            /// `Σ self * other` over the last feature axis (numpy broadcasting before it): one
            /// relinearization and one rescale per output instead of one per product.
            fn dot(&self, py: Python<'_>, other: &Self) -> PyResult<Self> {
                let o = other.core()?;
                self.unary(py, |c| c.dot(&o))
            }
            /// `self * self`.
            fn square(&self, py: Python<'_>) -> PyResult<Self> {
                self.unary(py, |c| c.square())
            }
            /// Sums over `axis` (int, tuple or None = all). Axis 0 is the samples: that sum
            /// uses rotations and keeps a batch axis of length 1.
            /// `dtype` and `out` exist for `numpy.sum(tensor)`, which passes them: only `None`.
            #[pyo3(signature = (axis=None, dtype=None, out=None))]
            fn sum(
                &self,
                py: Python<'_>,
                axis: Option<&Bound<'_, PyAny>>,
                dtype: Option<&Bound<'_, PyAny>>,
                out: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Self> {
                if dtype.is_some() || out.is_some() {
                    return Err(PyTypeError::new_err(
                        "a tensor's sum takes no dtype or out: the result is a new tensor of the \
                         same scheme",
                    ));
                }
                let axes: Option<Vec<isize>> = match axis {
                    None => None,
                    Some(a) => Some(match a.extract::<isize>() {
                        Ok(x) => vec![x],
                        Err(_) => a.extract::<Vec<isize>>()?,
                    }),
                };
                self.unary(py, |c| c.sum(axes))
            }
            /// Rotates the samples left by `steps` (sample `i` receives sample `i + steps`;
            /// BFV: within each row of N/2 slots).
            fn rotate(&self, py: Python<'_>, steps: i64) -> PyResult<Self> {
                self.unary(py, |c| c.rotate(steps))
            }
            /// Evaluates `Σ coeffs[k]·x^k` element-wise, lowest degree first (like
            /// `numpy.polynomial.polynomial.polyval` and TenSEAL), in ⌈log₂ d⌉ + 1 levels.
            /// `shallow=True` (CKKS): ⌈log₂(d + 1)⌉ levels (a cubic: 2), the rounding of a
            /// coefficient's rescale then multiplied by up to `|x|^s` (`s` the largest power of
            /// two ≤ d): for inputs near `|x| ≤ 1`, or scales of 2^40 and more.
            #[pyo3(signature = (coeffs, shallow=false))]
            fn polyval(
                &self,
                py: Python<'_>,
                coeffs: &Bound<'_, PyAny>,
                shallow: bool,
            ) -> PyResult<Self> {
                let c = to_array::<$kernel>(py, coeffs)?;
                let c: Vec<_> = c.iter().copied().collect();
                self.unary(py, |t| t.polyval(&c, shallow))
            }
            /// The tensor in the compact format (what pickling uses).
            fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
                let c = self.core()?;
                PyBytes::new_with(py, c.encoded_len(), |out| heavy(py, || c.write_into(out)))
            }
            /// Loads a tensor written by `to_bytes` under `ctx` (or, without it, under the
            /// context of its key set already loaded in this process).
            #[staticmethod]
            #[pyo3(signature = (data, ctx=None))]
            fn from_bytes(py: Python<'_>, data: &[u8], ctx: Option<&Context>) -> PyResult<Self> {
                let inner = ctx.map(|c| c.inner.clone());
                Ok(Self::from_core(heavy(py, || decode(inner.as_ref(), data))?))
            }
            fn __reduce__<'py>(
                &self,
                py: Python<'py>,
            ) -> PyResult<(PyObject, (Bound<'py, PyBytes>,))> {
                let f = py
                    .import("hetensor._hetensor")?
                    .getattr("_tensor_from_bytes")?
                    .unbind();
                Ok((f, (self.to_bytes(py)?,)))
            }
            /// `(batch, *shape)`, or the per-sample shape of a broadcast tensor.
            #[getter]
            fn shape(&self) -> PyResult<Vec<usize>> {
                let c = self.core()?;
                let mut s: Vec<usize> = c.batch.into_iter().collect();
                s.extend(&c.shape);
                Ok(s)
            }
            /// Samples in the tensor (None when one sample fills every slot).
            #[getter]
            fn batch(&self) -> PyResult<Option<usize>> {
                Ok(self.core()?.batch)
            }
            /// Levels left (CKKS: rescalings before level 0).
            #[getter]
            fn level(&self) -> PyResult<usize> {
                Ok(self.core()?.level())
            }
            /// The CKKS scale (1.0 for BFV).
            #[getter]
            fn scale(&self) -> PyResult<f64> {
                Ok(self.core()?.scale())
            }
            /// Number of ciphertexts (features).
            #[getter]
            fn ciphertexts(&self) -> PyResult<usize> {
                Ok(self.core()?.cts.len())
            }
            /// Whether the tensor was donated to a model call (`model(x, donate=True)`): its
            /// ciphertexts are freed, and every other method raises `ValueError`.
            #[getter]
            fn donated(&self) -> bool {
                self.core
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none()
            }
            /// The context the tensor was made under.
            #[getter]
            fn context(&self) -> PyResult<Context> {
                Ok(Context {
                    inner: self.core()?.k.inner().clone(),
                })
            }
            /// numpy's basic indexing: `x[:, 2]`, `x[..., 1:3]`, `x[:k]` (the first `k`
            /// samples). The features picked are copied; no HE operation runs. Axis 0 (the
            /// samples, one per slot) takes only a prefix slice.
            fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<Self> {
                let c = self.core()?;
                let (batch, axes) = resolve_index(key, c.batch, &c.shape)?;
                Ok(Self::from_core(c.select(batch, &axes).map_err(to_py)?))
            }
            fn __len__(&self) -> PyResult<usize> {
                Ok(self.core()?.batch.unwrap_or(1))
            }
            fn __repr__(&self) -> String {
                match self.core() {
                    Ok(c) => format!(
                        "{}(shape={:?}, level={}, ciphertexts={})",
                        $pyname,
                        self.shape().unwrap_or_default(),
                        c.level(),
                        c.cts.len()
                    ),
                    Err(_) => format!("{}(donated)", $pyname),
                }
            }
        }
    };
}

tensor_class!(
    CKKSTensor,
    Ckks,
    "CKKSTensor",
    "Real-valued encrypted tensor (CKKS) in the batched layout: axis 0 = samples (one per \
     slot), one ciphertext per feature. Products are relinearized and rescaled at once; \
     operands at different levels or scales are aligned automatically."
);
tensor_class!(
    BFVTensor,
    Bfv,
    "BFVTensor",
    "Integer encrypted tensor (BFV, exact modulo the plaintext modulus t, values centered) in \
     the batched layout: axis 0 = samples, one ciphertext per feature."
);
