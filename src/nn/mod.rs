//! Neural-network layers with a plaintext (`f64`, [`ndarray`]) forward and backward pass.
//!
//! This module is the **plaintext reference** for the encrypted layers: every encrypted
//! evaluation (CKKS, BFV) of a model is checked against [`Sequential::forward`] on the same
//! inputs, which is why everything here is `f64` and deliberately simple (direct loops, no
//! im2col, no fused kernels).
//!
//! # Layout
//! * Tensors are [`Tensor`] = `ndarray::ArrayD<f64>` with a leading **batch** axis. Image
//!   tensors are `NCHW` (`[batch, channels, height, width]`), flat tensors `[batch, features]`.
//! * Parameters follow PyTorch's layout and names, so weights trained there load unchanged
//!   (see [`weights`]): `Conv2d.weight` is `[out, in, k, k]`, `Linear.weight` is `[out, in]`,
//!   and [`Flatten`] orders features as `(channel, row, column)`, row-major.
//!
//! # Pieces
//! * [`layers`]: [`Conv2d`], [`AvgPool2d`], [`Flatten`], [`Linear`], [`Square`] and the
//!   [`Layer`] enum that a [`Sequential`] holds.
//! * [`activation`]: [`PolyActivation`], a polynomial `c0 + c1 x + ...`, with least-squares
//!   fits of the sigmoid and the ReLU ([`PolyActivation::sigmoid`], [`PolyActivation::relu`]).
//! * [`sequential`]: [`Sequential`] (forward, traced forward, backward, batched parallel
//!   inference, activation ranges) and [`Sequential::lenet1`].
//! * [`loss`]: softmax cross-entropy and mean squared error with their gradients.
//! * [`train`]: mini-batch SGD with momentum, rayon-parallel over the batch, seeded.
//! * [`mnist`]: the IDX (gzip) loader; [`weights`]: safetensors import/export.
//!
//! # Example
//! ```no_run
//! use hetensor::nn::{mnist, weights};
//! let model = weights::pretrained_lenet1()?;            // the LeNet-1 shipped in data/
//! let test = mnist::load_test(mnist::DEFAULT_DIR)?;     // 10,000 digits, pixels in [0, 1]
//! println!("accuracy {:.2}%", 100.0 * model.accuracy(&test)?);
//! # Ok::<(), hetensor::Error>(())
//! ```

pub mod activation;
pub mod layers;
pub mod loss;
pub mod mnist;
pub mod sequential;
pub mod train;
pub mod weights;

pub use activation::PolyActivation;
pub use layers::{AvgPool2d, Conv2d, Flatten, Layer, Linear, Square};
pub use loss::Loss;
pub use sequential::{ActivationRange, Gradients, Sequential};
pub use train::{Augment, LrSchedule, TrainConfig, TrainReport};

use crate::{Error, Result};

/// The plaintext tensor type: a dynamically shaped `f64` array whose first axis is the batch.
pub type Tensor = ndarray::ArrayD<f64>;

/// A labelled data set: `inputs` with a leading batch axis (`[n, ...]`) and one class label
/// per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Inputs, `[n, ...]` (MNIST: `[n, 1, 28, 28]`, pixels in `[0, 1]`).
    pub inputs: Tensor,
    /// Class labels, `labels.len() == n`, each `< num_classes`.
    pub labels: Vec<usize>,
    /// Number of classes (MNIST: 10).
    pub num_classes: usize,
}

impl Dataset {
    /// Builds a data set, checking that the counts agree and every label is `< num_classes`.
    pub fn new(inputs: Tensor, labels: Vec<usize>, num_classes: usize) -> Result<Self> {
        if inputs.ndim() < 2 {
            return Err(Error::Shape(format!(
                "data set inputs need a batch axis and at least one feature axis, got shape {:?}",
                inputs.shape()
            )));
        }
        if inputs.shape()[0] != labels.len() {
            return Err(Error::Shape(format!(
                "data set has {} inputs but {} labels",
                inputs.shape()[0],
                labels.len()
            )));
        }
        if num_classes == 0 {
            return Err(Error::Data("a data set needs at least one class".into()));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
            return Err(Error::Data(format!(
                "label {l} of sample {i} is out of range for {num_classes} classes"
            )));
        }
        Ok(Self {
            inputs,
            labels,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the data set has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The samples `range` (clamped to the data set) as a new data set.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        Self {
            inputs: self
                .inputs
                .slice_axis(ndarray::Axis(0), (start..end).into())
                .to_owned(),
            labels: self.labels[start..end].to_vec(),
            num_classes: self.num_classes,
        }
    }

    /// The first `n` samples (or all, if there are fewer).
    pub fn take(&self, n: usize) -> Self {
        self.slice(0..n)
    }

    /// The samples at `indices`, in that order; an index out of range is an error.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Shape(format!(
                "sample index {i} out of range for a data set of {} samples",
                self.len()
            )));
        }
        Ok(Self {
            inputs: self.inputs.select(ndarray::Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
        })
    }
}
