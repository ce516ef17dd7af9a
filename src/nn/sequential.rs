//! [`Sequential`]: a chain of named layers, and the LeNet-1 architecture.

use ndarray::{ArrayViewD, Axis, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use super::layers::{AvgPool2d, Conv2d, Flatten, Layer, Linear, Square};
use super::loss::argmax_rows;
use super::{Dataset, Tensor};
use crate::{Error, Result};

/// Samples per parallel work item in [`Sequential::forward_par`] and friends.
pub const DEFAULT_CHUNK: usize = 64;

/// Seed of the initial weights produced by [`Sequential::lenet1`].
pub const LENET1_INIT_SEED: u64 = 0x1e2e_7001;

/// Layers applied one after another. Each layer has a name; parameter tensors are called
/// `"{layer name}.{param}"` (e.g. `conv1.weight`), as in a PyTorch `state_dict`.
/// [`Sequential::from_layers`] names layers by position (`"0"`, `"1"`, ...), exactly like
/// PyTorch's `nn.Sequential`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequential {
    layers: Vec<Layer>,
    names: Vec<String>,
}

/// Gradients of a scalar loss with respect to every parameter of a [`Sequential`]:
/// `per_layer[i][j]` belongs to `layers()[i].params()[j]` and has its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// One entry per layer (empty for layers without parameters).
    pub per_layer: Vec<Vec<Tensor>>,
}

impl Gradients {
    /// All-zero gradients shaped like `model`'s parameters.
    pub fn zeros_like(model: &Sequential) -> Self {
        Self {
            per_layer: model
                .layers
                .iter()
                .map(|l| {
                    l.params()
                        .iter()
                        .map(|p| Tensor::zeros(p.raw_dim()))
                        .collect()
                })
                .collect(),
        }
    }

    /// `self += other` (shapes must agree; they do for gradients of the same model).
    pub fn add_assign(&mut self, other: &Gradients) -> Result<()> {
        if self.per_layer.len() != other.per_layer.len() {
            return Err(Error::Shape(
                "gradients of different models cannot be added".into(),
            ));
        }
        for (a, b) in self.per_layer.iter_mut().zip(&other.per_layer) {
            if a.len() != b.len() {
                return Err(Error::Shape(
                    "gradients of different models cannot be added".into(),
                ));
            }
            for (x, y) in a.iter_mut().zip(b) {
                if x.shape() != y.shape() {
                    return Err(Error::Shape(format!(
                        "gradient shapes {:?} and {:?} differ",
                        x.shape(),
                        y.shape()
                    )));
                }
                *x += y;
            }
        }
        Ok(())
    }

    /// Multiplies every gradient by `s`.
    pub fn scale(&mut self, s: f64) {
        for t in self.per_layer.iter_mut().flatten() {
            t.mapv_inplace(|v| v * s);
        }
    }

    /// Euclidean norm over all entries.
    pub fn norm(&self) -> f64 {
        self.per_layer
            .iter()
            .flatten()
            .flat_map(|t| t.iter())
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
    }
}

/// Range of the values one layer outputs over a data set (see
/// [`Sequential::activation_ranges`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationRange {
    /// The layer's name (`"input"` for the model input).
    pub name: String,
    /// The layer's kind (`"Conv2d"`, ...; `"Input"` for the model input).
    pub kind: &'static str,
    /// Smallest value seen.
    pub min: f64,
    /// Largest value seen.
    pub max: f64,
}

impl ActivationRange {
    /// `max(|min|, |max|)`.
    pub fn max_abs(&self) -> f64 {
        self.min.abs().max(self.max.abs())
    }
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// A model from layers, named by position `"0"`, `"1"`, ... (PyTorch `nn.Sequential`
    /// naming, so `"0.weight"` is the first layer's weight).
    pub fn from_layers(layers: Vec<Layer>) -> Self {
        let names = (0..layers.len()).map(|i| i.to_string()).collect();
        Self { layers, names }
    }

    /// Appends a named layer. Names must be non-empty, unique and free of `'.'` (the
    /// separator in parameter names).
    pub fn push(&mut self, name: impl Into<String>, layer: impl Into<Layer>) -> Result<()> {
        let name = name.into();
        if name.is_empty() || name.contains('.') {
            return Err(Error::Model(format!(
                "layer name {name:?} is invalid: it must be non-empty and contain no '.'"
            )));
        }
        if self.names.contains(&name) {
            return Err(Error::Model(format!("duplicate layer name {name:?}")));
        }
        self.names.push(name);
        self.layers.push(layer.into());
        Ok(())
    }

    /// Builder form of [`Sequential::push`].
    pub fn with(mut self, name: impl Into<String>, layer: impl Into<Layer>) -> Result<Self> {
        self.push(name, layer)?;
        Ok(self)
    }

    /// LeNet-1 with square activations, for `[batch, 1, 28, 28]` inputs:
    ///
    /// | name    | layer                 | output shape  |
    /// |---------|-----------------------|---------------|
    /// | `conv1` | Conv2d(1→4, 5×5)      | `[n, 4, 24, 24]` |
    /// | `act1`  | Square                | `[n, 4, 24, 24]` |
    /// | `pool1` | AvgPool2d(2)          | `[n, 4, 12, 12]` |
    /// | `conv2` | Conv2d(4→12, 5×5)     | `[n, 12, 8, 8]`  |
    /// | `act2`  | Square                | `[n, 12, 8, 8]`  |
    /// | `pool2` | AvgPool2d(2)          | `[n, 12, 4, 4]`  |
    /// | `flatten` | Flatten             | `[n, 192]`       |
    /// | `fc`    | Linear(192→10)        | `[n, 10]`        |
    ///
    /// Parameters: `conv1.{weight,bias}`, `conv2.{weight,bias}`, `fc.{weight,bias}` (3,246
    /// scalars). The weights are initialised from the fixed seed [`LENET1_INIT_SEED`] (see
    /// [`Sequential::lenet1_with_rng`]); load trained ones with
    /// [`weights::load`](super::weights::load) or use
    /// [`weights::pretrained_lenet1`](super::weights::pretrained_lenet1).
    pub fn lenet1() -> Self {
        Self::lenet1_with_rng(&mut ChaCha20Rng::seed_from_u64(LENET1_INIT_SEED))
    }

    /// [`Sequential::lenet1`] with weights drawn from `rng`: every parameter of a layer with
    /// fan-in `f` from `U(−1/√f, 1/√f)` (PyTorch's default), which keeps the square
    /// activations of 28×28 inputs in `[0, 1]` well below 1 at the start of training.
    pub fn lenet1_with_rng<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        let mut conv1 = Conv2d {
            in_ch: 1,
            out_ch: 4,
            kernel: 5,
            stride: 1,
            padding: 0,
            weight: ndarray::Array4::zeros((4, 1, 5, 5)),
            bias: ndarray::Array1::zeros(4),
        };
        let mut conv2 = Conv2d {
            in_ch: 4,
            out_ch: 12,
            kernel: 5,
            stride: 1,
            padding: 0,
            weight: ndarray::Array4::zeros((12, 4, 5, 5)),
            bias: ndarray::Array1::zeros(12),
        };
        let mut fc = Linear {
            weight: ndarray::Array2::zeros((10, 192)),
            bias: ndarray::Array1::zeros(10),
        };
        conv1.init_uniform(rng, 1.0 / (conv1.fan_in() as f64).sqrt());
        conv2.init_uniform(rng, 1.0 / (conv2.fan_in() as f64).sqrt());
        fc.init_uniform(rng, 1.0 / (fc.in_features() as f64).sqrt());
        let layers: Vec<(&str, Layer)> = vec![
            ("conv1", conv1.into()),
            ("act1", Square.into()),
            ("pool1", AvgPool2d { kernel: 2 }.into()),
            ("conv2", conv2.into()),
            ("act2", Square.into()),
            ("pool2", AvgPool2d { kernel: 2 }.into()),
            ("flatten", Flatten.into()),
            ("fc", fc.into()),
        ];
        let (names, layers) = layers.into_iter().map(|(n, l)| (n.to_string(), l)).unzip();
        Self { layers, names }
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Mutable access to the layers (e.g. to replace weights). Names cannot change.
    pub fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }

    /// The layer names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `(name, layer)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Layer)> {
        self.names.iter().map(String::as_str).zip(&self.layers)
    }

    /// The layer called `name`.
    pub fn get(&self, name: &str) -> Option<&Layer> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.layers[i])
    }

    /// The layer called `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Layer> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(move |i| &mut self.layers[i])
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True without layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(Layer::num_params).sum()
    }

    /// Every parameter as `("{layer}.{param}", view)`, in layer order.
    pub fn named_params(&self) -> Vec<(String, ArrayViewD<'_, f64>)> {
        let mut out = Vec::new();
        for (name, layer) in self.iter() {
            for (pname, p) in layer.param_names().iter().zip(layer.params()) {
                out.push((format!("{name}.{pname}"), p));
            }
        }
        out
    }

    /// Shape after every layer, for an input shape; fails with the first mismatch, naming
    /// the layer.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let mut s = input.to_vec();
        for (name, layer) in self.iter() {
            s = layer.output_shape(&s).map_err(|e| self.at_layer(name, e))?;
        }
        Ok(s)
    }

    fn at_layer(&self, name: &str, e: Error) -> Error {
        match e {
            Error::Shape(m) => Error::Shape(format!("layer {name:?}: {m}")),
            Error::Model(m) => Error::Model(format!("layer {name:?}: {m}")),
            Error::InputShape { op, expected, got } => Error::InputShape {
                op: format!("layer {name:?} ({op})"),
                expected,
                got,
            },
            other => other,
        }
    }

    /// Forward pass through every layer (single-threaded; see [`Sequential::forward_par`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.output_shape(x.shape())?;
        let mut a = x.clone();
        for (name, layer) in self.iter() {
            a = layer.forward(&a).map_err(|e| self.at_layer(name, e))?;
        }
        Ok(a)
    }

    /// Forward pass that keeps every intermediate tensor: `trace[0]` is the input and
    /// `trace[i + 1]` the output of layer `i`. Feed it to [`Sequential::backward`].
    pub fn forward_trace(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.output_shape(x.shape())?;
        let mut trace = Vec::with_capacity(self.len() + 1);
        trace.push(x.clone());
        for (name, layer) in self.iter() {
            let a = layer
                .forward(&trace[trace.len() - 1])
                .map_err(|e| self.at_layer(name, e))?;
            trace.push(a);
        }
        Ok(trace)
    }

    /// Backward pass: given the trace of [`Sequential::forward_trace`] and `∂L/∂output`,
    /// returns `∂L/∂input` and the gradients of every parameter.
    pub fn backward(&self, trace: &[Tensor], grad_out: &Tensor) -> Result<(Tensor, Gradients)> {
        if trace.len() != self.len() + 1 {
            return Err(Error::Shape(format!(
                "backward needs a trace of {} tensors (input + one per layer), got {}",
                self.len() + 1,
                trace.len()
            )));
        }
        let mut per_layer = vec![Vec::new(); self.len()];
        let mut g = grad_out.clone();
        for i in (0..self.len()).rev() {
            let (gx, gp) = self.layers[i]
                .backward(&trace[i], &g)
                .map_err(|e| self.at_layer(&self.names[i], e))?;
            per_layer[i] = gp;
            g = gx;
        }
        Ok((g, Gradients { per_layer }))
    }

    /// Forward pass over a large batch, split into chunks of `chunk` samples that run in
    /// parallel on the rayon pool. Same result as [`Sequential::forward`], bit for bit. Takes
    /// `&Tensor` or a view (the Python binding runs it on numpy's buffer, without a copy).
    pub fn forward_par<'a>(
        &self,
        x: impl Into<ArrayViewD<'a, f64>>,
        chunk: usize,
    ) -> Result<Tensor> {
        let x = x.into();
        self.output_shape(x.shape())?;
        let chunk = chunk.max(1);
        let parts: Vec<ArrayViewD<'_, f64>> = x.axis_chunks_iter(Axis(0), chunk).collect();
        let outs: Vec<Tensor> = parts
            .into_par_iter()
            .map(|p| self.forward(&p.to_owned()))
            .collect::<Result<_>>()?;
        let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
        if views.is_empty() {
            return self.forward(&x.to_owned());
        }
        ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape(e.to_string()))
    }

    /// Predicted class (arg-max of the outputs) of every sample; parallel.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<usize>> {
        let out = self.forward_par(x, DEFAULT_CHUNK)?;
        let out = out.view().into_dimensionality::<Ix2>().map_err(|_| {
            Error::Shape(format!(
                "predict needs model outputs of shape [batch, classes], got {:?}",
                out.shape()
            ))
        })?;
        Ok(argmax_rows(out))
    }

    /// Fraction of `data` classified correctly, in `[0, 1]`.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64> {
        if data.is_empty() {
            return Err(Error::Data(
                "accuracy of an empty data set is undefined".into(),
            ));
        }
        let pred = self.predict(&data.inputs)?;
        let correct = pred
            .iter()
            .zip(&data.labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok(correct as f64 / data.len() as f64)
    }

    /// Rescales the weights, **without changing the function the model computes**, so that
    /// every affine layer that feeds a [`Square`] outputs values of at most `target` in
    /// magnitude on the calibration batch `x` (use training data).
    ///
    /// For each chain `A → Square → (AvgPool2d | Flatten)* → B` with `A`, `B` each a
    /// [`Conv2d`] or [`Linear`]: `A`'s weight and bias are multiplied by `s = target / m`
    /// (`m` = largest `|A(·)|` on `x`), so the square's output scales by `s²`, and `B`'s
    /// weight (not its bias) is divided by `s²`. Pools and flattening are linear and
    /// bias-free, so `B`'s output is unchanged up to rounding. Use it to keep the values an
    /// encrypted evaluation must hold moderate: the square of a large pre-activation is
    /// where a square-activated network's magnitudes blow up.
    ///
    /// Returns the scale `s` applied to each chain, in order.
    pub fn balance_squares(&mut self, x: &Tensor, target: f64) -> Result<Vec<f64>> {
        if !(target.is_finite() && target > 0.0) {
            return Err(Error::Model(format!(
                "balance target must be finite and > 0, got {target}"
            )));
        }
        let ranges = self.activation_ranges(x)?;
        let is_affine = |l: &Layer| matches!(l, Layer::Conv2d(_) | Layer::Linear(_));
        let mut scales = Vec::new();
        for i in 0..self.len() {
            if !(is_affine(&self.layers[i])
                && matches!(self.layers.get(i + 1), Some(Layer::Square(_))))
            {
                continue;
            }
            let mut j = i + 2;
            while matches!(
                self.layers.get(j),
                Some(Layer::AvgPool2d(_) | Layer::Flatten(_))
            ) {
                j += 1;
            }
            if !self.layers.get(j).is_some_and(is_affine) {
                continue;
            }
            let m = ranges[i + 1].max_abs(); // ranges[0] is the input
            if !(m.is_finite() && m > 0.0) {
                continue;
            }
            let s = target / m;
            for mut p in self.layers[i].params_mut() {
                p.mapv_inplace(|v| v * s);
            }
            if let Some(mut w) = self.layers[j].params_mut().into_iter().next() {
                w.mapv_inplace(|v| v / (s * s));
            }
            scales.push(s);
        }
        Ok(scales)
    }

    /// Smallest and largest value of the input and of every layer's output over the batch
    /// `x` (parallel). This is what bounds the plaintext values an encrypted (CKKS) evaluation
    /// must hold, and where a [`PolyActivation`](super::PolyActivation) must be accurate.
    pub fn activation_ranges(&self, x: &Tensor) -> Result<Vec<ActivationRange>> {
        self.output_shape(x.shape())?;
        let parts: Vec<ArrayViewD<'_, f64>> = x.axis_chunks_iter(Axis(0), DEFAULT_CHUNK).collect();
        let per_chunk: Vec<Vec<(f64, f64)>> = parts
            .into_par_iter()
            .map(|p| {
                let trace = self.forward_trace(&p.to_owned())?;
                Ok(trace
                    .iter()
                    .map(|t| {
                        t.iter()
                            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                                (lo.min(v), hi.max(v))
                            })
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        let mut out: Vec<ActivationRange> = std::iter::once(("input", "Input"))
            .chain(self.iter().map(|(n, l)| (n, l.kind())))
            .map(|(name, kind)| ActivationRange {
                name: name.to_string(),
                kind,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            })
            .collect();
        for chunk in &per_chunk {
            for (r, &(lo, hi)) in out.iter_mut().zip(chunk) {
                r.min = r.min.min(lo);
                r.max = r.max.max(hi);
            }
        }
        Ok(out)
    }
}
