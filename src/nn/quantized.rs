//! Integer (quantized) version of a [`Sequential`], evaluated exactly in BFV.
//!
//! [`QuantizedModel::from_sequential`] turns a float model into integer operations:
//! * inputs in `[0, 1]` become `round(x · (2^input_bits − 1))`;
//! * every affine layer's weights become `round(w · 2^k)` with one `k` per layer, the largest
//!   that keeps `|w_int| ≤ 2^(weight_bits−1) − 1`; its biases are quantized to the accumulated
//!   scale of the layer's output (`input scale · 2^k`), so they add exactly;
//! * `Square` squares (the scale squares), `AvgPool2d` becomes a **sum** (no division: the
//!   scale is multiplied by `k²`), `Flatten` is free.
//!
//! The logits come out as integers at [`QuantizedModel::output_scale`]; the argmax does not
//! depend on that positive scale. [`QuantizedModel::bound`] is the worst-case magnitude of any
//! intermediate value (from the weights' L1 norms and the input range), which sets how many
//! bits the CRT plaintext modulus of [`BfvCrt`] needs so that nothing wraps:
//! [`QuantizedModel::plain_modulus_bits`] picks the primes, [`QuantizedModel::check_modulus`]
//! checks a given product.
//!
//! One generic evaluator ([`QuantizedModel::evaluate`] over a [`QuantOps`]) runs both the exact
//! `i128` plaintext model ([`QuantizedModel::forward_int`]) and the encrypted one
//! ([`forward_bfv`]), in the batched layout (one value per feature, one image per slot), so the
//! two perform the same integer operations in the same order.

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;

use crate::bfv::{BfvCrt, CrtCiphertext};
use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential, Tensor};
use crate::rlwe::{PublicKey, RelinKey, SecretKey};

/// Default input precision for MNIST (pixels become integers in `0..=63`).
pub const DEFAULT_INPUT_BITS: u32 = 6;
/// Default weight precision (signed, `|w| ≤ 2^(bits−1) − 1`).
pub const DEFAULT_WEIGHT_BITS: u32 = 6;
/// The most bits a CRT plaintext modulus may have here (values are decoded to `i128`).
pub const MAX_MODULUS_BITS: f64 = 126.0;
/// Largest plaintext prime size [`QuantizedModel::plain_modulus_bits`] uses.
pub const MAX_PRIME_BITS: u32 = 30;

#[derive(Clone, Debug)]
struct QOutput {
    index: usize,
    weights: Vec<i64>,
    bias: i128,
}

#[derive(Clone, Debug)]
struct QGroup {
    inputs: Vec<usize>,
    outputs: Vec<QOutput>,
}

#[derive(Clone, Debug)]
enum QOp {
    Affine { groups: Vec<QGroup>, outputs: usize },
    Square,
    SumPool { windows: Vec<Vec<usize>> },
    Flatten,
}

/// One layer of a [`QuantizedModel`].
#[derive(Clone, Debug)]
pub struct QLayer {
    /// The name of the float layer it came from.
    pub name: String,
    /// "affine", "square", "sum-pool" or "flatten".
    pub kind: &'static str,
    /// Output shape (without the batch axis).
    pub out_shape: Vec<usize>,
    /// Fixed-point scale of the outputs: `value_int ≈ value_float · scale`.
    pub scale: f64,
    /// Power-of-two exponent of the weights (affine layers; 0 otherwise).
    pub weight_shift: i32,
    /// Worst-case `max |value|` of the outputs.
    pub bound: f64,
    op: QOp,
}

/// A [`Sequential`] with integer weights (see the module documentation).
#[derive(Clone, Debug)]
pub struct QuantizedModel {
    input_shape: Vec<usize>,
    input_bits: u32,
    weight_bits: u32,
    layers: Vec<QLayer>,
}

/// The integer operations a [`QuantizedModel`] needs, on one value per feature (all slots).
pub trait QuantOps: Sync {
    /// A feature: all samples of the batch.
    type Value: Send + Sync;
    /// `Σ weights[i] · inputs[i] + bias`.
    fn affine(&self, inputs: &[&Self::Value], weights: &[i64], bias: i128) -> Result<Self::Value>;
    /// `x²`.
    fn square(&self, x: &Self::Value) -> Result<Self::Value>;
    /// `Σ xs` (at least one term).
    fn sum(&self, xs: &[&Self::Value]) -> Result<Self::Value>;
}

/// Exact `i128` arithmetic on `batch` samples per feature.
#[derive(Clone, Copy, Debug)]
pub struct PlainOps {
    /// Samples per feature.
    pub batch: usize,
}

impl QuantOps for PlainOps {
    type Value = Vec<i128>;

    fn affine(&self, inputs: &[&Vec<i128>], weights: &[i64], bias: i128) -> Result<Vec<i128>> {
        let mut acc = vec![bias; self.batch];
        for (x, &w) in inputs.iter().zip(weights) {
            if w == 0 {
                continue;
            }
            let w = w as i128;
            for (a, &v) in acc.iter_mut().zip(x.iter()) {
                *a += w * v;
            }
        }
        Ok(acc)
    }

    fn square(&self, x: &Vec<i128>) -> Result<Vec<i128>> {
        Ok(x.iter().map(|&v| v * v).collect())
    }

    fn sum(&self, xs: &[&Vec<i128>]) -> Result<Vec<i128>> {
        let mut acc = vec![0i128; self.batch];
        for x in xs {
            for (a, &v) in acc.iter_mut().zip(x.iter()) {
                *a += v;
            }
        }
        Ok(acc)
    }
}

fn pow2(k: i32) -> f64 {
    2f64.powi(k)
}

fn check_bias(name: &str, b: f64) -> Result<i128> {
    let r = b.round();
    if !r.is_finite() || r.abs() >= 2f64.powi(120) {
        return Err(Error::InvalidParameters(format!(
            "layer '{name}': a bias quantizes to {b:e}, beyond 120 bits; use fewer input/weight bits"
        )));
    }
    Ok(r as i128)
}

impl QuantizedModel {
    /// Quantizes an MNIST model (inputs `[1, 28, 28]`).
    pub fn from_sequential(model: &Sequential, input_bits: u32, weight_bits: u32) -> Result<Self> {
        Self::with_input_shape(model, &[1, 28, 28], input_bits, weight_bits)
    }

    /// Quantizes `model` for inputs of shape `input_shape` (without the batch axis) with
    /// values in `[0, 1]`.
    pub fn with_input_shape(
        model: &Sequential,
        input_shape: &[usize],
        input_bits: u32,
        weight_bits: u32,
    ) -> Result<Self> {
        if !(1..=16).contains(&input_bits) {
            return Err(Error::InvalidParameters(format!(
                "input_bits = {input_bits} must be in 1..=16"
            )));
        }
        if !(2..=16).contains(&weight_bits) {
            return Err(Error::InvalidParameters(format!(
                "weight_bits = {weight_bits} must be in 2..=16"
            )));
        }
        let in_max = ((1u64 << input_bits) - 1) as f64;
        let w_max = ((1i64 << (weight_bits - 1)) - 1) as f64;
        let mut shape = input_shape.to_vec();
        let mut scale = in_max;
        let mut bounds: Vec<f64> = vec![in_max; shape.iter().product()];
        let mut layers = Vec::new();
        for (name, layer) in model.iter() {
            let (kind, op, shift, new_shape, new_bounds) = match layer {
                Layer::Conv2d(_) | Layer::Linear(_) => {
                    let max_w = layer
                        .params()
                        .first()
                        .map(|w| w.iter().fold(0.0f64, |m, v| m.max(v.abs())))
                        .unwrap_or(0.0);
                    let k = if max_w > 0.0 && max_w.is_finite() {
                        (w_max / max_w).log2().floor() as i32
                    } else {
                        0
                    };
                    let (groups, outputs, out_shape) =
                        quantize_affine(name, layer, &shape, pow2(k), scale * pow2(k))?;
                    let mut nb = vec![0.0f64; outputs];
                    for g in &groups {
                        for o in &g.outputs {
                            nb[o.index] = g
                                .inputs
                                .iter()
                                .zip(&o.weights)
                                .map(|(&i, &w)| (w as f64).abs() * bounds[i])
                                .sum::<f64>()
                                + (o.bias as f64).abs();
                        }
                    }
                    scale *= pow2(k);
                    ("affine", QOp::Affine { groups, outputs }, k, out_shape, nb)
                }
                Layer::Square(_) => {
                    scale *= scale;
                    let nb = bounds.iter().map(|b| b * b).collect();
                    ("square", QOp::Square, 0, shape.clone(), nb)
                }
                Layer::AvgPool2d(p) => {
                    let [ch, h, w] = shape[..] else {
                        return Err(Error::Shape(format!(
                            "layer '{name}': pool input must be [C, H, W], got {shape:?}"
                        )));
                    };
                    let k = p.kernel;
                    if k == 0 || h < k || w < k {
                        return Err(Error::Shape(format!(
                            "layer '{name}': pool kernel {k} does not fit {h}x{w}"
                        )));
                    }
                    let (oh, ow) = (h / k, w / k);
                    let windows: Vec<Vec<usize>> = (0..ch * oh * ow)
                        .map(|o| {
                            let (c, y, x) = (o / (oh * ow), (o / ow) % oh, o % ow);
                            (0..k * k)
                                .map(|d| c * h * w + (y * k + d / k) * w + x * k + d % k)
                                .collect()
                        })
                        .collect();
                    let nb = windows
                        .iter()
                        .map(|ids| ids.iter().map(|&i| bounds[i]).sum())
                        .collect();
                    scale *= (k * k) as f64;
                    (
                        "sum-pool",
                        QOp::SumPool { windows },
                        0,
                        vec![ch, oh, ow],
                        nb,
                    )
                }
                Layer::Flatten(_) => (
                    "flatten",
                    QOp::Flatten,
                    0,
                    vec![shape.iter().product()],
                    bounds.clone(),
                ),
                Layer::Poly(_) => {
                    let msg = "polynomial activations cannot be quantized yet (use Square)";
                    return Err(Error::Model(format!("layer '{name}': {msg}")));
                }
            };
            shape = new_shape;
            bounds = new_bounds;
            layers.push(QLayer {
                name: name.to_string(),
                kind,
                out_shape: shape.clone(),
                scale,
                weight_shift: shift,
                bound: bounds.iter().fold(0.0f64, |m, &b| m.max(b)),
                op,
            });
        }
        Ok(Self {
            input_shape: input_shape.to_vec(),
            input_bits,
            weight_bits,
            layers,
        })
    }

    /// The layers.
    pub fn layers(&self) -> &[QLayer] {
        &self.layers
    }

    /// Input bits.
    pub fn input_bits(&self) -> u32 {
        self.input_bits
    }

    /// Weight bits.
    pub fn weight_bits(&self) -> u32 {
        self.weight_bits
    }

    /// Number of input features.
    pub fn input_features(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of outputs.
    pub fn output_features(&self) -> usize {
        self.layers
            .last()
            .map(|l| l.out_shape.iter().product())
            .unwrap_or_else(|| self.input_features())
    }

    /// Scale of the inputs (`2^input_bits − 1`).
    pub fn input_scale(&self) -> f64 {
        ((1u64 << self.input_bits) - 1) as f64
    }

    /// Scale of the integer outputs: `logit ≈ output_int / output_scale`.
    pub fn output_scale(&self) -> f64 {
        self.layers
            .last()
            .map(|l| l.scale)
            .unwrap_or_else(|| self.input_scale())
    }

    /// Worst-case magnitude of any value in the evaluation (inputs included).
    pub fn bound(&self) -> f64 {
        self.layers
            .iter()
            .fold(self.input_scale(), |m, l| m.max(l.bound))
    }

    /// `log2` of [`Self::bound`].
    pub fn bound_bits(&self) -> f64 {
        self.bound().log2()
    }

    /// Bits the CRT plaintext modulus T needs so that `±bound` fits in `±(T−1)/2`, with a
    /// small margin for the floating-point bound computation.
    pub fn modulus_bits_needed(&self) -> f64 {
        (2.0 * self.bound() + 1.0).log2() + 1e-6
    }

    /// Errors unless the model fits an `i128` CRT modulus (at most [`MAX_MODULUS_BITS`]).
    pub fn check_fits_i128(&self) -> Result<()> {
        let need = self.modulus_bits_needed();
        if need > MAX_MODULUS_BITS {
            return Err(Error::InvalidParameters(format!(
                "the quantized model ({} input bits, {} weight bits) can reach 2^{:.1} in the worst \
                 case, so its CRT plaintext modulus would need {need:.1} bits, more than the {MAX_MODULUS_BITS} \
                 supported; use fewer input or weight bits",
                self.input_bits,
                self.weight_bits,
                self.bound_bits()
            )));
        }
        Ok(())
    }

    /// Errors unless a CRT modulus with product `product` holds every value without wrapping.
    pub fn check_modulus(&self, product: u128) -> Result<()> {
        self.check_fits_i128()?;
        let have = (product as f64).log2();
        if have < self.modulus_bits_needed() {
            return Err(Error::InvalidParameters(format!(
                "the CRT plaintext modulus has {have:.1} bits but the quantized model needs {:.1} \
                 (worst-case |value| = 2^{:.1}); add plaintext primes or use fewer input/weight bits",
                self.modulus_bits_needed(),
                self.bound_bits()
            )));
        }
        Ok(())
    }

    /// Sizes of plaintext primes (at most [`MAX_PRIME_BITS`] bits each, as few as possible) for
    /// [`BfvCrt::new`]: batching primes of `b` bits are at least `2^(b−1)`, so k primes of `b`
    /// bits give at least `k·(b−1)` bits.
    pub fn plain_modulus_bits(&self) -> Result<Vec<u32>> {
        self.check_fits_i128()?;
        let need = self.modulus_bits_needed().ceil() as u32;
        let k = need.div_ceil(MAX_PRIME_BITS - 1).max(1);
        let b = need.div_ceil(k) + 1;
        Ok(vec![b; k as usize])
    }

    /// Quantizes a batch `[n, ...]` of inputs in `[0, 1]` to integers, batch-major.
    pub fn quantize_inputs(&self, x: &Tensor) -> Result<Vec<i64>> {
        let f = self.input_features();
        let n = x.shape().first().copied().unwrap_or(0);
        if x.len() != n * f {
            return Err(Error::Shape(format!(
                "inputs of shape {:?} do not have {f} features per sample",
                x.shape()
            )));
        }
        let s = self.input_scale();
        x.iter()
            .map(|&v| {
                if !v.is_finite() {
                    return Err(Error::InvalidInput(format!(
                        "input value {v} is not finite"
                    )));
                }
                Ok((v.clamp(0.0, 1.0) * s).round() as i64)
            })
            .collect()
    }

    /// Transposes batch-major integer inputs `[batch × features]` to one vector per feature,
    /// checking their range.
    pub fn features_of(&self, pixels: &[i64], batch: usize) -> Result<Vec<Vec<i128>>> {
        let f = self.input_features();
        if pixels.len() != batch * f {
            return Err(Error::Shape(format!(
                "{} input values are not {batch} samples of {f} features",
                pixels.len()
            )));
        }
        let max = (1i64 << self.input_bits) - 1;
        if let Some(v) = pixels.iter().find(|&&v| !(0..=max).contains(&v)) {
            return Err(Error::InvalidInput(format!(
                "input value {v} outside 0..={max} ({} input bits)",
                self.input_bits
            )));
        }
        Ok((0..f)
            .map(|j| (0..batch).map(|b| pixels[b * f + j] as i128).collect())
            .collect())
    }

    /// The exact integer forward pass of `batch` samples (`pixels` batch-major, integers in
    /// `0..2^input_bits`); returns the integer logits batch-major (`[batch × outputs]`).
    pub fn forward_int(&self, pixels: &[i64], batch: usize) -> Result<Vec<i128>> {
        self.check_fits_i128()?;
        let feats = self.features_of(pixels, batch)?;
        let out = self.evaluate(&PlainOps { batch }, feats, &mut Vec::new())?;
        let o = out.len();
        let mut res = vec![0i128; batch * o];
        for (j, v) in out.iter().enumerate() {
            for (b, &x) in v.iter().enumerate() {
                res[b * o + j] = x;
            }
        }
        Ok(res)
    }

    /// The distinct biases of all layers (what [`BfvOps`] encrypts up front).
    pub fn biases(&self) -> Vec<i128> {
        let mut v: Vec<i128> = self
            .layers
            .iter()
            .flat_map(|l| match &l.op {
                QOp::Affine { groups, .. } => groups
                    .iter()
                    .flat_map(|g| g.outputs.iter().map(|o| o.bias))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Runs the model on one value per input feature with `ops`, rayon-parallel over the
    /// outputs of each layer; appends `(layer name, seconds)` to `timing`.
    pub fn evaluate<O: QuantOps>(
        &self,
        ops: &O,
        input: Vec<O::Value>,
        timing: &mut Vec<(String, f64)>,
    ) -> Result<Vec<O::Value>> {
        if input.len() != self.input_features() {
            return Err(Error::Shape(format!(
                "the model takes {} input features, got {}",
                self.input_features(),
                input.len()
            )));
        }
        let mut cur = input;
        let mut skip_next = false;
        for (idx, l) in self.layers.iter().enumerate() {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            let t0 = Instant::now();
            // A square followed by sum pooling is fused: each window's squares are summed as
            // they are made, so the k² times larger tensor of squares never exists at once
            // (with BFV ciphertexts it dominated peak memory).
            if let (QOp::Square, Some(QOp::SumPool { windows })) =
                (&l.op, self.layers.get(idx + 1).map(|n| &n.op))
            {
                let inputs = &cur;
                cur = windows
                    .par_iter()
                    .map(|ids| {
                        let squares = ids
                            .iter()
                            .map(|&i| ops.square(&inputs[i]))
                            .collect::<Result<Vec<_>>>()?;
                        ops.sum(&squares.iter().collect::<Vec<_>>())
                    })
                    .collect::<Result<_>>()?;
                let secs = t0.elapsed().as_secs_f64();
                timing.push((format!("{}+{}", l.name, self.layers[idx + 1].name), secs));
                skip_next = true;
                continue;
            }
            cur = match &l.op {
                QOp::Affine { groups, outputs } => {
                    let inputs = &cur;
                    let computed = groups
                        .par_iter()
                        .map(|g| {
                            let refs: Vec<&O::Value> =
                                g.inputs.iter().map(|&i| &inputs[i]).collect();
                            g.outputs
                                .par_iter()
                                .map(|o| Ok((o.index, ops.affine(&refs, &o.weights, o.bias)?)))
                                .collect::<Result<Vec<_>>>()
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let mut slots: Vec<Option<O::Value>> = (0..*outputs).map(|_| None).collect();
                    for (j, v) in computed.into_iter().flatten() {
                        slots[j] = Some(v);
                    }
                    slots
                        .into_iter()
                        .map(|v| {
                            v.ok_or_else(|| {
                                Error::Model(format!(
                                    "layer '{}': an output was not computed",
                                    l.name
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?
                }
                QOp::Square => cur
                    .par_iter()
                    .map(|x| ops.square(x))
                    .collect::<Result<_>>()?,
                QOp::SumPool { windows } => {
                    let inputs = &cur;
                    windows
                        .par_iter()
                        .map(|ids| {
                            let refs: Vec<&O::Value> = ids.iter().map(|&i| &inputs[i]).collect();
                            ops.sum(&refs)
                        })
                        .collect::<Result<_>>()?
                }
                QOp::Flatten => cur,
            };
            timing.push((l.name.clone(), t0.elapsed().as_secs_f64()));
        }
        Ok(cur)
    }
}

/// Quantizes one affine layer into groups of outputs sharing inputs.
fn quantize_affine(
    name: &str,
    layer: &Layer,
    in_shape: &[usize],
    w_scale: f64,
    out_scale: f64,
) -> Result<(Vec<QGroup>, usize, Vec<usize>)> {
    let qw = |w: f64| -> Result<i64> {
        let r = (w * w_scale).round();
        if !r.is_finite() {
            return Err(Error::Model(format!(
                "layer '{name}': weight {w} is not finite"
            )));
        }
        Ok(r as i64)
    };
    match layer {
        Layer::Conv2d(c) => {
            let [ch, h, w] = in_shape else {
                return Err(Error::Shape(format!(
                    "layer '{name}': conv input must be [C, H, W], got {in_shape:?}"
                )));
            };
            if *ch != c.in_ch {
                return Err(Error::Shape(format!(
                    "layer '{name}': conv expects {} channels, got {ch}",
                    c.in_ch
                )));
            }
            let (oh, ow) = c
                .output_hw(*h, *w)
                .map_err(|e| Error::Shape(format!("layer '{name}': {e}")))?;
            let bias: Vec<i128> = c
                .bias
                .iter()
                .map(|&b| check_bias(name, b * out_scale))
                .collect::<Result<_>>()?;
            let mut groups = Vec::with_capacity(oh * ow);
            for y in 0..oh {
                for x in 0..ow {
                    let taps = c.taps_at(*h, *w, y, x);
                    let outputs = (0..c.out_ch)
                        .map(|o| {
                            let weights = taps
                                .iter()
                                .map(|&(ci, ky, kx, _)| qw(c.weight[[o, ci, ky, kx]]))
                                .collect::<Result<Vec<_>>>()?;
                            Ok(QOutput {
                                index: o * oh * ow + y * ow + x,
                                weights,
                                bias: bias[o],
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    groups.push(QGroup {
                        inputs: taps.iter().map(|t| t.3).collect(),
                        outputs,
                    });
                }
            }
            Ok((groups, c.out_ch * oh * ow, vec![c.out_ch, oh, ow]))
        }
        Layer::Linear(l) => {
            let features: usize = in_shape.iter().product();
            if features != l.in_features() {
                return Err(Error::Shape(format!(
                    "layer '{name}': linear layer expects {} inputs, got {features}",
                    l.in_features()
                )));
            }
            let outputs = (0..l.out_features())
                .map(|j| {
                    Ok(QOutput {
                        index: j,
                        weights: (0..features)
                            .map(|i| qw(l.weight[[j, i]]))
                            .collect::<Result<_>>()?,
                        bias: check_bias(name, l.bias[j] * out_scale)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((
                vec![QGroup {
                    inputs: (0..features).collect(),
                    outputs,
                }],
                l.out_features(),
                vec![l.out_features()],
            ))
        }
        _ => Err(Error::Model(format!(
            "layer '{name}': {} is not an affine layer",
            layer.kind()
        ))),
    }
}

/// Encrypted evaluation with [`BfvCrt`]: affine layers as scalar multiply-adds, squares with
/// relinearized products, pooling as sums. Biases are encrypted once per distinct value.
pub struct BfvOps<'a> {
    crt: &'a BfvCrt,
    rk: &'a RelinKey,
    consts: HashMap<i128, CrtCiphertext>,
}

impl<'a> BfvOps<'a> {
    /// Prepares the evaluation of `model` (encrypts its distinct biases, and 0, under `pk`).
    pub fn new(
        crt: &'a BfvCrt,
        pk: &PublicKey,
        rk: &'a RelinKey,
        model: &QuantizedModel,
    ) -> Result<Self> {
        model.check_modulus(crt.plain_modulus_product())?;
        let mut vals = model.biases();
        vals.push(0);
        vals.sort_unstable();
        vals.dedup();
        let n = crt.slot_count();
        let consts = vals
            .par_iter()
            .map(|&b| Ok((b, crt.encrypt(&vec![b; n], pk)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Self { crt, rk, consts })
    }

    fn constant(&self, b: i128) -> Result<&CrtCiphertext> {
        self.consts
            .get(&b)
            .ok_or_else(|| Error::Model(format!("bias {b} was not prepared")))
    }
}

impl QuantOps for BfvOps<'_> {
    type Value = CrtCiphertext;

    fn affine(
        &self,
        inputs: &[&CrtCiphertext],
        weights: &[i64],
        bias: i128,
    ) -> Result<CrtCiphertext> {
        let mut acc: Option<CrtCiphertext> = None;
        for (x, &w) in inputs.iter().zip(weights) {
            if w == 0 {
                continue;
            }
            let term = if w == 1 {
                (*x).clone()
            } else {
                self.crt.multiply_scalar(x, w as i128)?
            };
            acc = Some(match acc {
                Some(a) => self.crt.add(&a, &term)?,
                None => term,
            });
        }
        match acc {
            Some(a) if bias == 0 => Ok(a),
            Some(a) => self.crt.add(&a, self.constant(bias)?),
            None => Ok(self.constant(bias)?.clone()),
        }
    }

    fn square(&self, x: &CrtCiphertext) -> Result<CrtCiphertext> {
        self.crt.multiply_relin(x, x, self.rk)
    }

    fn sum(&self, xs: &[&CrtCiphertext]) -> Result<CrtCiphertext> {
        let (first, rest) = xs
            .split_first()
            .ok_or_else(|| Error::Model("empty sum".into()))?;
        let mut acc = (*first).clone();
        for x in rest {
            acc = self.crt.add(&acc, x)?;
        }
        Ok(acc)
    }
}

/// Encrypts batch-major integer inputs (`pixels`, `batch ≤ N` samples) as one
/// [`CrtCiphertext`] per feature, sample `b` in slot `b`.
pub fn encrypt_batch(
    crt: &BfvCrt,
    pk: &PublicKey,
    model: &QuantizedModel,
    pixels: &[i64],
    batch: usize,
) -> Result<Vec<CrtCiphertext>> {
    if batch > crt.slot_count() {
        return Err(Error::TooManyValues {
            got: batch,
            slots: crt.slot_count(),
        });
    }
    let feats = model.features_of(pixels, batch)?;
    feats.par_iter().map(|v| crt.encrypt(v, pk)).collect()
}

/// Runs `model` on encrypted features (see [`encrypt_batch`]).
pub fn forward_bfv(
    crt: &BfvCrt,
    pk: &PublicKey,
    rk: &RelinKey,
    model: &QuantizedModel,
    input: Vec<CrtCiphertext>,
    timing: &mut Vec<(String, f64)>,
) -> Result<Vec<CrtCiphertext>> {
    let ops = BfvOps::new(crt, pk, rk, model)?;
    model.evaluate(&ops, input, timing)
}

/// Decrypts the outputs of [`forward_bfv`] into batch-major integer logits (`[batch × outputs]`).
pub fn decrypt_batch(
    crt: &BfvCrt,
    sk: &SecretKey,
    outputs: &[CrtCiphertext],
    batch: usize,
) -> Result<Vec<i128>> {
    let o = outputs.len();
    let dec = outputs
        .par_iter()
        .map(|c| crt.decrypt(c, sk))
        .collect::<Result<Vec<_>>>()?;
    let mut res = vec![0i128; batch * o];
    for (j, v) in dec.iter().enumerate() {
        if v.len() < batch {
            return Err(Error::Shape(format!(
                "a ciphertext holds {} slots, fewer than the batch {batch}",
                v.len()
            )));
        }
        for b in 0..batch {
            res[b * o + j] = v[b];
        }
    }
    Ok(res)
}

/// Index of the largest value of each row of a batch-major `[rows × width]` array.
pub fn argmax_rows_i128(values: &[i128], width: usize) -> Vec<usize> {
    if width == 0 {
        return Vec::new();
    }
    values
        .chunks(width)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, i128::MIN),
                    |m, (i, &v)| if v > m.1 { (i, v) } else { m },
                )
                .0
        })
        .collect()
}
