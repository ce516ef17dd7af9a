//! Losses on `[batch, classes]` model outputs and integer labels.
//!
//! Every loss returns the **sum** over the batch and the gradient of that sum with respect to
//! the outputs, so that chunks of a mini-batch can be evaluated independently (in parallel)
//! and added; the trainer divides by the mini-batch size to get the mean.

use ndarray::{Array2, ArrayView2, Axis, Ix2};

use super::Tensor;
use crate::{Error, Result};

/// Which loss the trainer minimises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Cross-entropy of the softmax of the logits: `−log softmax(z)[label]`.
    CrossEntropy,
    /// Cross-entropy against smoothed targets `(1 − ε)·onehot + ε/K` (label smoothing,
    /// `ε ∈ [0, 1)`). Besides regularising, it stops the logits from growing without bound,
    /// which keeps them in the range an encrypted evaluation can hold.
    SmoothedCrossEntropy(f64),
    /// Squared error against the one-hot label: `½ Σ_k (z_k − onehot_k)²`. Useful where the
    /// softmax cannot be evaluated (encrypted training) or is replaced by a polynomial.
    Mse,
}

impl Loss {
    /// Loss summed over the batch and `∂(sum)/∂outputs`.
    pub fn eval(&self, outputs: &Tensor, labels: &[usize]) -> Result<(f64, Tensor)> {
        let z = outputs.view().into_dimensionality::<Ix2>().map_err(|_| {
            Error::Shape(format!(
                "losses expect model outputs of shape [batch, classes], got {:?}",
                outputs.shape()
            ))
        })?;
        let (l, g) = match self {
            Loss::CrossEntropy => softmax_cross_entropy(z, labels)?,
            Loss::SmoothedCrossEntropy(eps) => smoothed_cross_entropy(z, labels, *eps)?,
            Loss::Mse => mse_one_hot(z, labels)?,
        };
        Ok((l, g.into_dyn()))
    }
}

fn check_labels(z: &ArrayView2<'_, f64>, labels: &[usize]) -> Result<()> {
    let (n, k) = z.dim();
    if labels.len() != n {
        return Err(Error::Shape(format!(
            "loss got {n} outputs but {} labels",
            labels.len()
        )));
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= k) {
        return Err(Error::Data(format!(
            "label {l} is out of range for {k} outputs"
        )));
    }
    Ok(())
}

/// Row-wise softmax, computed stably (the row maximum is subtracted first).
pub fn softmax(z: ArrayView2<'_, f64>) -> Array2<f64> {
    let mut p = z.to_owned();
    for mut row in p.axis_iter_mut(Axis(0)) {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    p
}

/// Softmax cross-entropy summed over the batch, and its gradient `softmax(z) − onehot`.
pub fn softmax_cross_entropy(
    z: ArrayView2<'_, f64>,
    labels: &[usize],
) -> Result<(f64, Array2<f64>)> {
    check_labels(&z, labels)?;
    let mut g = softmax(z);
    let mut loss = 0.0;
    for (mut row, &l) in g.axis_iter_mut(Axis(0)).zip(labels) {
        loss -= row[l].max(f64::MIN_POSITIVE).ln();
        row[l] -= 1.0;
    }
    Ok((loss, g))
}

/// Cross-entropy against `(1 − eps)·onehot + eps/K`, summed over the batch, and its
/// gradient `softmax(z) − target`.
pub fn smoothed_cross_entropy(
    z: ArrayView2<'_, f64>,
    labels: &[usize],
    eps: f64,
) -> Result<(f64, Array2<f64>)> {
    check_labels(&z, labels)?;
    if !(0.0..1.0).contains(&eps) {
        return Err(Error::Model(format!(
            "label smoothing must be in [0, 1), got {eps}"
        )));
    }
    let k = z.ncols() as f64;
    let mut g = softmax(z);
    let mut loss = 0.0;
    for (mut row, &l) in g.axis_iter_mut(Axis(0)).zip(labels) {
        for (j, p) in row.iter_mut().enumerate() {
            let t = eps / k + if j == l { 1.0 - eps } else { 0.0 };
            loss -= t * p.max(f64::MIN_POSITIVE).ln();
            *p -= t;
        }
    }
    Ok((loss, g))
}

/// `½ Σ_k (z_k − onehot_k)²` summed over the batch, and its gradient `z − onehot`.
pub fn mse_one_hot(z: ArrayView2<'_, f64>, labels: &[usize]) -> Result<(f64, Array2<f64>)> {
    check_labels(&z, labels)?;
    let mut g = z.to_owned();
    for (mut row, &l) in g.axis_iter_mut(Axis(0)).zip(labels) {
        row[l] -= 1.0;
    }
    let loss = 0.5 * g.iter().map(|v| v * v).sum::<f64>();
    Ok((loss, g))
}

/// Index of the largest entry of each row (ties: the first).
pub fn argmax_rows(z: ArrayView2<'_, f64>) -> Vec<usize> {
    z.axis_iter(Axis(0))
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}
