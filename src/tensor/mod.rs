//! Encrypted tensors.
//!
//! [`CipherTensor`] in the **batched** layout (CryptoNets style) holds one CKKS ciphertext per
//! feature (pixel, activation); slot `b` of every ciphertext belongs to sample `b`. A whole
//! batch of up to N/2 samples then costs the same as one sample, and every linear layer is a
//! set of ciphertext × scalar multiply-adds with no rotations. In the **packed** layout one
//! sample's features sit at (ciphertext, slot) positions (an image: one ciphertext per
//! channel, row-major in the slots), and the back end ([`crate::lower::CkksPacked`]) moves
//! them with rotations. The ciphertext type is a parameter: BFV's CRT ciphertexts
//! ([`crate::bfv::CrtCiphertext`]) make the tensors of the exact back end.

use ndarray::{ArrayD, Axis, IxDyn};
use rayon::prelude::*;

use crate::ckks::CkksContext;
use crate::error::{Error, Result};
use crate::rlwe::{Ciphertext, PublicKey, SecretKey};

/// How samples and features map to ciphertexts and slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One ciphertext per feature, one slot per sample (throughput).
    Batched,
    /// One sample's features at (ciphertext, slot) positions (latency; see
    /// [`crate::lower::CkksPacked`]).
    Packed,
}

/// An encrypted tensor: `batch` samples of shape `shape`.
#[derive(Clone, Debug)]
pub struct CipherTensor<C = Ciphertext> {
    shape: Vec<usize>,
    batch: usize,
    cts: Vec<C>,
    /// Packed layout: (ciphertext, slot) of each feature, row-major; `None`: batched.
    positions: Option<Vec<(u32, u32)>>,
}

/// Where the packed layout puts a fresh sample of `shape`: channel `c` (axis 0 when the shape
/// has two or more axes) in ciphertext `c`, its elements row-major from slot 0.
pub fn packed_input_positions(shape: &[usize], slots: usize) -> Result<Vec<(u32, u32)>> {
    let features: usize = shape.iter().product();
    let per = if shape.len() >= 2 {
        features / shape[0].max(1)
    } else {
        features
    };
    if per > slots {
        return Err(Error::TooManyValues { got: per, slots });
    }
    Ok((0..features)
        .map(|f| ((f / per.max(1)) as u32, (f % per.max(1)) as u32))
        .collect())
}

/// Who encrypts: the key owner (secret key: seeded, lower noise) or anyone (public key).
pub enum EncryptionKey<'a> {
    /// Symmetric, seeded encryption.
    Secret(&'a SecretKey),
    /// Public-key encryption.
    Public(&'a PublicKey),
}

/// One ciphertext per column (values in slots `0..len`) at the top level and default scale:
/// encoded and encrypted in parallel (one seeded stream per ciphertext,
/// [`CkksContext::encrypt_symmetric_many`]). The tensors here and the Python package's
/// share it.
pub fn encrypt_columns(
    ctx: &CkksContext,
    key: EncryptionKey<'_>,
    columns: &[Vec<f64>],
) -> Result<Vec<Ciphertext>> {
    let (scale, level) = (ctx.default_scale(), ctx.max_level());
    let pts = columns
        .par_iter()
        .map(|col| ctx.encode(col, scale, level))
        .collect::<Result<Vec<_>>>()?;
    let pts: Vec<_> = pts.iter().collect();
    match key {
        EncryptionKey::Secret(sk) => ctx.encrypt_symmetric_many(&pts, sk),
        EncryptionKey::Public(pk) => ctx.encrypt_many(&pts, pk),
    }
}

impl CipherTensor<Ciphertext> {
    /// Encrypts `x` (`[batch, ...features]`, batch ≤ slots) in the batched layout at the
    /// context's top level and default scale, in parallel over features.
    pub fn encrypt_batched(
        ctx: &CkksContext,
        key: EncryptionKey<'_>,
        x: &ArrayD<f64>,
    ) -> Result<Self> {
        if x.ndim() < 2 {
            return Err(Error::InputShape {
                op: "batched encryption".into(),
                expected: "[batch, ...features]".into(),
                got: x.shape().to_vec(),
            });
        }
        let batch = x.shape()[0];
        if batch == 0 {
            return Err(Error::InputShape {
                op: "batched encryption".into(),
                expected: "at least one sample on axis 0".into(),
                got: x.shape().to_vec(),
            });
        }
        if batch > ctx.slots() {
            return Err(Error::TooManyValues {
                got: batch,
                slots: ctx.slots(),
            });
        }
        let shape = x.shape()[1..].to_vec();
        let features: usize = shape.iter().product();
        let flat = x
            .to_shape((batch, features))
            .map_err(|e| Error::Shape(e.to_string()))?;
        let columns: Vec<Vec<f64>> = flat.axis_iter(Axis(1)).map(|c| c.to_vec()).collect();
        let cts = encrypt_columns(ctx, key, &columns)?;
        Ok(Self {
            shape,
            batch,
            cts,
            positions: None,
        })
    }

    /// Encrypts one sample `x` (`[1, ...features]`) in the packed layout
    /// ([`packed_input_positions`]) at the top level and default scale.
    pub fn encrypt_packed(
        ctx: &CkksContext,
        key: EncryptionKey<'_>,
        x: &ArrayD<f64>,
    ) -> Result<Self> {
        if x.ndim() < 2 || x.shape()[0] != 1 {
            return Err(Error::InputShape {
                op: "packed encryption".into(),
                expected: "one sample [1, ...features]".into(),
                got: x.shape().to_vec(),
            });
        }
        let shape = x.shape()[1..].to_vec();
        let positions = packed_input_positions(&shape, ctx.slots())?;
        let count = positions.last().map_or(0, |p| p.0 as usize + 1);
        let mut vals = vec![Vec::new(); count];
        for (&(c, s), &v) in positions.iter().zip(x.iter()) {
            let col = &mut vals[c as usize];
            col.resize(col.len().max(s as usize + 1), 0.0);
            col[s as usize] = v;
        }
        let cts = encrypt_columns(ctx, key, &vals)?;
        Ok(Self {
            shape,
            batch: 1,
            cts,
            positions: Some(positions),
        })
    }

    /// Decrypts to `[batch, ...shape]`.
    pub fn decrypt(&self, ctx: &CkksContext, sk: &SecretKey) -> Result<ArrayD<f64>> {
        let features: usize = self.shape.iter().product();
        let cols = self
            .cts
            .par_iter()
            .map(|c| ctx.decrypt_decode(c, sk))
            .collect::<Result<Vec<_>>>()?;
        let mut out = ArrayD::<f64>::zeros(IxDyn(&[self.batch, features]));
        match &self.positions {
            None => {
                for (f, col) in cols.iter().enumerate() {
                    for b in 0..self.batch {
                        out[[b, f]] = col[b];
                    }
                }
            }
            Some(pos) => {
                for (f, &(c, s)) in pos.iter().enumerate() {
                    out[[0, f]] = cols[c as usize][s as usize];
                }
            }
        }
        let mut full = vec![self.batch];
        full.extend(&self.shape);
        out.into_shape_with_order(IxDyn(&full))
            .map_err(|e| Error::Shape(e.to_string()))
    }

    /// Level of the ciphertexts (all equal).
    pub fn level(&self) -> usize {
        self.cts.first().map(|c| c.level()).unwrap_or(0)
    }

    /// Scale of the ciphertexts (all equal).
    pub fn scale(&self) -> f64 {
        self.cts.first().map(|c| c.scale()).unwrap_or(1.0)
    }
}

impl<C> CipherTensor<C> {
    /// Builds a batched tensor from ciphertexts (one per feature, row-major over `shape`).
    pub fn from_ciphertexts(shape: Vec<usize>, batch: usize, cts: Vec<C>) -> Result<Self> {
        if shape.iter().product::<usize>() != cts.len() {
            return Err(Error::Shape(format!(
                "{} ciphertexts for shape {shape:?}",
                cts.len()
            )));
        }
        Ok(Self {
            shape,
            batch,
            cts,
            positions: None,
        })
    }

    /// Builds a packed tensor of one sample: feature `f` (row-major over `shape`) at slot
    /// `positions[f].1` of `cts[positions[f].0]`.
    pub fn from_packed(shape: Vec<usize>, cts: Vec<C>, positions: Vec<(u32, u32)>) -> Result<Self> {
        if shape.iter().product::<usize>() != positions.len()
            || positions.iter().any(|p| p.0 as usize >= cts.len())
        {
            return Err(Error::Shape(format!(
                "{} positions in {} ciphertexts for shape {shape:?}",
                positions.len(),
                cts.len()
            )));
        }
        Ok(Self {
            shape,
            batch: 1,
            cts,
            positions: Some(positions),
        })
    }

    /// How samples and features map to ciphertexts and slots.
    pub fn layout(&self) -> Layout {
        match self.positions {
            None => Layout::Batched,
            Some(_) => Layout::Packed,
        }
    }

    /// Packed layout: the (ciphertext, slot) of each feature; `None` when batched.
    pub fn positions(&self) -> Option<&[(u32, u32)]> {
        self.positions.as_deref()
    }

    /// Per-sample feature shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of samples (used slots).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The ciphertexts: one per feature (batched), or those the positions point into.
    pub fn ciphertexts(&self) -> &[C] {
        &self.cts
    }

    /// Consumes the tensor into its ciphertexts.
    pub fn into_ciphertexts(self) -> Vec<C> {
        self.cts
    }

    /// Reinterprets the per-sample shape (same number of features).
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self> {
        if shape.iter().product::<usize>() != self.shape.iter().product::<usize>() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }
}
