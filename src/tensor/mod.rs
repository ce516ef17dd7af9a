//! Encrypted tensors.
//!
//! [`CipherTensor`] in the **batched** layout (CryptoNets style) holds one CKKS ciphertext per
//! feature (pixel, activation); slot `b` of every ciphertext belongs to sample `b`. A whole
//! batch of up to N/2 samples then costs the same as one sample, and every linear layer is a
//! set of ciphertext × scalar multiply-adds with no rotations. The packed single-sample layout
//! (one image's channels in the slots of a few ciphertexts, rotations) is in
//! [`crate::nn::packed`].

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
    /// One sample's channels packed into the slots of few ciphertexts (latency; see
    /// [`crate::nn::packed`]).
    Packed,
}

/// An encrypted tensor: `batch` samples of shape `shape`, batched layout.
#[derive(Clone, Debug)]
pub struct CipherTensor {
    shape: Vec<usize>,
    batch: usize,
    cts: Vec<Ciphertext>,
}

/// Who encrypts: the key owner (secret key: seeded, lower noise) or anyone (public key).
pub enum EncryptionKey<'a> {
    /// Symmetric, seeded encryption.
    Secret(&'a SecretKey),
    /// Public-key encryption.
    Public(&'a PublicKey),
}

impl CipherTensor {
    /// Encrypts `x` (`[batch, ...features]`, batch ≤ slots) in the batched layout at the
    /// context's top level and default scale, in parallel over features.
    pub fn encrypt_batched(
        ctx: &CkksContext,
        key: EncryptionKey<'_>,
        x: &ArrayD<f64>,
    ) -> Result<Self> {
        if x.ndim() < 2 {
            return Err(Error::Shape(format!(
                "expected [batch, ...features], got shape {:?}",
                x.shape()
            )));
        }
        let batch = x.shape()[0];
        if batch == 0 || batch > ctx.slots() {
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
        let (scale, level) = (ctx.default_scale(), ctx.max_level());
        let cts = columns
            .par_iter()
            .map(|col| {
                let pt = ctx.encode(col, scale, level)?;
                match key {
                    EncryptionKey::Secret(sk) => ctx.encrypt_symmetric(&pt, sk),
                    EncryptionKey::Public(pk) => ctx.encrypt(&pt, pk),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shape, batch, cts })
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
        for (f, col) in cols.iter().enumerate() {
            for b in 0..self.batch {
                out[[b, f]] = col[b];
            }
        }
        let mut full = vec![self.batch];
        full.extend(&self.shape);
        out.into_shape_with_order(IxDyn(&full))
            .map_err(|e| Error::Shape(e.to_string()))
    }

    /// Builds a tensor from ciphertexts (one per feature, row-major over `shape`).
    pub fn from_ciphertexts(shape: Vec<usize>, batch: usize, cts: Vec<Ciphertext>) -> Result<Self> {
        if shape.iter().product::<usize>() != cts.len() {
            return Err(Error::Shape(format!(
                "{} ciphertexts for shape {shape:?}",
                cts.len()
            )));
        }
        Ok(Self { shape, batch, cts })
    }

    /// Per-sample feature shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of samples (used slots).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The ciphertexts, one per feature.
    pub fn ciphertexts(&self) -> &[Ciphertext] {
        &self.cts
    }

    /// Consumes the tensor into its ciphertexts.
    pub fn into_ciphertexts(self) -> Vec<Ciphertext> {
        self.cts
    }

    /// Level of the ciphertexts (all equal).
    pub fn level(&self) -> usize {
        self.cts.first().map(|c| c.level()).unwrap_or(0)
    }

    /// Scale of the ciphertexts (all equal).
    pub fn scale(&self) -> f64 {
        self.cts.first().map(|c| c.scale()).unwrap_or(1.0)
    }

    /// Reinterprets the per-sample shape (same number of features).
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self> {
        if shape.iter().product::<usize>() != self.cts.len() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }
}
