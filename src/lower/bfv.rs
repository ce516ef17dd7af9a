//! The BFV back end of a [`Plan`]: the plan quantized to integers and run exactly, one sample
//! per slot, over several plaintext primes combined by CRT ([`BfvCrt`]).
//!
//! [`QuantizedPlan::new`] turns the plan's instructions into integer ones:
//! * inputs in `[0, 1]` become `round(x · (2^input_bits − 1))`;
//! * a dense map's (or an alignment's) weights become `round(w · T / S_in)` for its inputs'
//!   scales `S_in` and one output scale `T = 2^k · max S_in`, `k` the largest that keeps
//!   `|w_int| ≤ 2^(weight_bits−1) − 1`; biases are quantized at `T`, so they add exactly;
//! * products multiply scales; free sums (pooling, layout changes) keep their integer
//!   coefficients (no division: the plan carries `1/k²` as a factor, as it does for CKKS);
//! * rescales cost nothing (BFV has no scale to drop), products are relinearized at once.
//!
//! Every tensor is integers at a known scale; the output is `value = fold · X / scale`
//! ([`QuantizedPlan::dequantize`]). [`QuantizedPlan::bound`] is the worst-case magnitude of any
//! intermediate value (from the weights' L1 norms and the input range), which sets how many
//! bits the CRT plaintext modulus needs so that nothing wraps
//! ([`QuantizedPlan::plain_modulus_bits`], [`QuantizedPlan::check_modulus`]).
//!
//! One generic evaluator over [`QuantOps`] runs both the exact `i128` plaintext model
//! ([`QuantizedPlan::forward_int`], the reference) and the encrypted one ([`Bfv::forward`]), so
//! the two perform the same integer operations in the same order. Polynomials of degree ≥ 3
//! are not quantized ([`Error::UnsupportedOp`] naming the node).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::{fused_is_batched, Instr, LayerTiming, Plan};
use crate::bfv::{BfvCrt, CrtCiphertext};
use crate::error::{Error, Result};
use crate::nn::Tensor;
use crate::progress::{Progress, ProgressEvent};
use crate::rlwe::{PublicKey, RelinKey, SecretKey};
use crate::tensor::CipherTensor;

/// Default input precision for MNIST (pixels become integers in `0..=63`).
pub const DEFAULT_INPUT_BITS: u32 = 6;
/// Default weight precision (signed, `|w| ≤ 2^(bits−1) − 1`).
pub const DEFAULT_WEIGHT_BITS: u32 = 6;
/// The most bits a CRT plaintext modulus may have here (values are decoded to `i128`).
pub const MAX_MODULUS_BITS: f64 = 126.0;
/// Largest plaintext prime size [`QuantizedPlan::plain_modulus_bits`] uses.
pub const MAX_PRIME_BITS: u32 = 30;

/// One integer output: `Σ w · x[i] + bias` over the instruction's inputs' concatenated
/// features (squared first when the instruction says so).
#[derive(Clone, Debug)]
struct QRow {
    terms: Vec<(u32, i64)>,
    bias: i128,
}

#[derive(Clone, Debug)]
enum QInstr {
    /// `square`: each input feature is squared as it is read (a square whose only reader is
    /// this sum: the tensor of squares, as large as the sum's input, never exists).
    Affine {
        args: Vec<usize>,
        rows: Vec<QRow>,
        dst: usize,
        square: bool,
    },
    Mul {
        a: usize,
        b: usize,
        pairs: Vec<(u32, u32)>,
        dst: usize,
    },
}

/// The integer operations a [`QuantizedPlan`] needs, on one value per feature (all slots).
pub trait QuantOps: Sync {
    /// A feature: all samples of the batch.
    type Value: Send + Sync;
    /// `Σ weights[i] · inputs[i] + bias`.
    fn affine(&self, inputs: &[&Self::Value], weights: &[i64], bias: i128) -> Result<Self::Value>;
    /// `a · b`.
    fn mul(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
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

    fn mul(&self, a: &Vec<i128>, b: &Vec<i128>) -> Result<Vec<i128>> {
        Ok(a.iter().zip(b).map(|(&x, &y)| x * y).collect())
    }
}

fn check_bias(name: &str, b: f64) -> Result<i128> {
    let r = b.round();
    if !r.is_finite() || r.abs() >= 2f64.powi(120) {
        return Err(Error::InvalidParameters(format!(
            "node {name:?}: a bias quantizes to {b:e}, beyond 120 bits; use fewer input/weight bits"
        )));
    }
    Ok(r as i128)
}

/// What the quantizer tracks per stored tensor: its integer scale and each feature's
/// worst-case magnitude.
#[derive(Clone, Debug)]
struct QState {
    scale: f64,
    bounds: Vec<f64>,
}

/// A [`Plan`] with integer weights (see the module documentation).
#[derive(Clone, Debug)]
pub struct QuantizedPlan {
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    input_bits: u32,
    weight_bits: u32,
    instrs: Vec<(usize, QInstr)>,
    node_names: Vec<String>,
    frees: Vec<Vec<usize>>,
    slots: usize,
    output_slot: usize,
    output_fold: Vec<f64>,
    output_scale: f64,
    /// (node, worst-case |value| of what it computes).
    node_bounds: Vec<(String, f64)>,
    bound: f64,
}

impl QuantizedPlan {
    /// Quantizes `plan` for inputs in `[0, 1]` at `input_bits` and weights at `weight_bits`.
    pub fn new(plan: &Plan, input_bits: u32, weight_bits: u32) -> Result<Self> {
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
        let features: usize = plan.input_shape().iter().product();
        let mut states: Vec<Option<QState>> = vec![None; plan.slots];
        states[0] = Some(QState {
            scale: in_max,
            bounds: vec![in_max; features],
        });
        let mut slots = plan.slots;
        let mut instrs: Vec<(usize, QInstr)> = Vec::new();
        let mut node_bounds: Vec<(String, f64)> = Vec::new();
        let st = |states: &[Option<QState>], s: usize| -> Result<QState> {
            states[s]
                .clone()
                .ok_or_else(|| Error::Model(format!("plan slot {s} read before it is written")))
        };
        // A square read only by the next instruction, a sum over it: fused into that sum.
        let mut fused: Option<(usize, usize)> = None;
        for (k, (node, ins)) in plan.instrs.iter().enumerate() {
            let name = &plan.node_names[*node];
            let (dst, state) = match ins {
                Instr::Rescale { .. } => continue,
                Instr::Align {
                    src, dst, factors, ..
                } => {
                    let s = st(&states, *src)?;
                    let rows: Vec<(Vec<(u32, f64)>, f64)> = factors
                        .iter()
                        .enumerate()
                        .map(|(j, &f)| (vec![(j as u32, f)], 0.0))
                        .collect();
                    let (rows, state) = quantize_rows(name, &rows, &[s], w_max)?;
                    instrs.push((*node, affine(vec![*src], rows, *dst)));
                    (*dst, state)
                }
                Instr::Sum { args, rows, dst, .. } => {
                    let (args, ins, square) = match fused.take() {
                        Some((sq_src, sq_dst)) if args[..] == [sq_dst] => {
                            let s = st(&states, sq_src)?;
                            let sq = QState {
                                scale: s.scale * s.scale,
                                bounds: s.bounds.iter().map(|b| b * b).collect(),
                            };
                            (vec![sq_src], vec![sq], true)
                        }
                        _ => (
                            args.clone(),
                            args.iter().map(|&a| st(&states, a)).collect::<Result<_>>()?,
                            false,
                        ),
                    };
                    let target = ins.iter().map(|s| s.scale).fold(0.0f64, f64::max);
                    let scales: Vec<f64> = ins
                        .iter()
                        .flat_map(|s| std::iter::repeat_n(s.scale, s.bounds.len()))
                        .collect();
                    let bounds: Vec<f64> = ins.iter().flat_map(|s| s.bounds.iter().copied()).collect();
                    let mut out_bounds = Vec::with_capacity(rows.len());
                    let qrows = rows
                        .iter()
                        .map(|r| {
                            let terms = r
                                .terms
                                .iter()
                                .map(|&(i, kk)| {
                                    let m = kk as f64 * target / scales[i as usize];
                                    if m.fract() != 0.0 || m.abs() > 2f64.powi(40) {
                                        return Err(Error::UnsupportedOp {
                                            node: name.clone(),
                                            op: "sum".into(),
                                            hint: "BFV adds tensors whose integer scales are not multiples of each other only through a dense map; use CKKS".into(),
                                        });
                                    }
                                    Ok((i, m as i64))
                                })
                                .collect::<Result<Vec<_>>>()?;
                            let bias = check_bias(name, r.add * target)?;
                            out_bounds.push(
                                terms.iter().map(|&(i, w)| (w as f64).abs() * bounds[i as usize]).sum::<f64>()
                                    + (bias as f64).abs(),
                            );
                            Ok(QRow { terms, bias })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    instrs.push((
                        *node,
                        QInstr::Affine {
                            args,
                            rows: qrows,
                            dst: *dst,
                            square,
                        },
                    ));
                    (
                        *dst,
                        QState {
                            scale: target,
                            bounds: out_bounds,
                        },
                    )
                }
                Instr::Dense {
                    args,
                    groups,
                    bias,
                    outputs,
                    dst,
                    ..
                } => {
                    let rows = super::dense_rows(groups, bias, *outputs);
                    let ins: Vec<QState> = args.iter().map(|&a| st(&states, a)).collect::<Result<_>>()?;
                    let (rows, state) = quantize_rows(name, &rows, &ins, w_max)?;
                    instrs.push((*node, affine(args.clone(), rows, *dst)));
                    (*dst, state)
                }
                Instr::Mul { a, b, pairs, dst } => {
                    let (sa, sb) = (st(&states, *a)?, st(&states, *b)?);
                    instrs.push((
                        *node,
                        QInstr::Mul {
                            a: *a,
                            b: *b,
                            pairs: pairs.clone(),
                            dst: *dst,
                        },
                    ));
                    let bounds = pairs
                        .iter()
                        .map(|&(i, j)| sa.bounds[i as usize] * sb.bounds[j as usize])
                        .collect();
                    (
                        *dst,
                        QState {
                            scale: sa.scale * sb.scale,
                            bounds,
                        },
                    )
                }
                Instr::Quad { src, rows, dst } => {
                    let s = st(&states, *src)?;
                    let n = s.bounds.len();
                    let sq = QState {
                        scale: s.scale * s.scale,
                        bounds: s.bounds.iter().map(|b| b * b).collect(),
                    };
                    let only_square = rows.iter().all(|&(b, c)| b == 0.0 && c == 0.0);
                    let next_sums_it = matches!(
                        plan.instrs.get(k + 1),
                        Some((_, Instr::Sum { args, .. })) if args[..] == [*dst]
                    ) && plan.frees.get(k + 1).is_some_and(|f| f.contains(dst));
                    if only_square && next_sums_it {
                        fused = Some((*src, *dst));
                        states[*dst] = Some(sq);
                        continue;
                    }
                    let pairs: Vec<(u32, u32)> = (0..n as u32).map(|j| (j, j)).collect();
                    if only_square {
                        instrs.push((
                            *node,
                            QInstr::Mul {
                                a: *src,
                                b: *src,
                                pairs,
                                dst: *dst,
                            },
                        ));
                        (*dst, sq)
                    } else {
                        // x² + b·x + c at scale S²: b at S, c at S².
                        let tmp = slots;
                        slots += 1;
                        instrs.push((
                            *node,
                            QInstr::Mul {
                                a: *src,
                                b: *src,
                                pairs,
                                dst: tmp,
                            },
                        ));
                        let mut bounds = Vec::with_capacity(n);
                        let qrows = rows
                            .iter()
                            .enumerate()
                            .map(|(j, &(b, c))| {
                                let bq = (b * s.scale).round();
                                if !bq.is_finite() || bq.abs() > 2f64.powi(62) {
                                    return Err(Error::InvalidParameters(format!(
                                        "node {name:?}: a coefficient quantizes beyond 62 bits"
                                    )));
                                }
                                let bias = check_bias(name, c * sq.scale)?;
                                bounds.push(sq.bounds[j] + bq.abs() * s.bounds[j] + (bias as f64).abs());
                                Ok(QRow {
                                    terms: vec![(j as u32, 1), ((n + j) as u32, bq as i64)],
                                    bias,
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        instrs.push((*node, affine(vec![tmp, *src], qrows, *dst)));
                        (
                            *dst,
                            QState {
                                scale: sq.scale,
                                bounds,
                            },
                        )
                    }
                }
                Instr::Fused { .. } => return Err(fused_is_batched()),
                Instr::Poly { .. } => {
                    return Err(Error::UnsupportedOp {
                        node: name.clone(),
                        op: "Poly".into(),
                        hint: "BFV quantizes polynomials of degree 2 at most; use CKKS or a quadratic activation".into(),
                    })
                }
            };
            let max = state.bounds.iter().fold(0.0f64, |m, &b| m.max(b));
            match node_bounds.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 = e.1.max(max),
                None => node_bounds.push((name.clone(), max)),
            }
            states[dst] = Some(state);
        }
        let out = st(&states, plan.output_slot)?;
        let bound = node_bounds.iter().fold(in_max, |m, b| m.max(b.1));
        let frees = frees(&instrs, slots, plan.output_slot);
        Ok(Self {
            input_shape: plan.input_shape().to_vec(),
            output_shape: plan.output_shape().to_vec(),
            input_bits,
            weight_bits,
            instrs,
            node_names: plan.node_names.clone(),
            frees,
            slots,
            output_slot: plan.output_slot,
            output_fold: plan.output_fold.clone(),
            output_scale: out.scale,
            node_bounds,
            bound,
        })
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
        self.output_shape.iter().product()
    }

    /// Scale of the inputs (`2^input_bits − 1`).
    pub fn input_scale(&self) -> f64 {
        ((1u64 << self.input_bits) - 1) as f64
    }

    /// Scale of the integer outputs: `output = fold · output_int / output_scale`.
    pub fn output_scale(&self) -> f64 {
        self.output_scale
    }

    /// Worst-case magnitude of any value in the evaluation (inputs included).
    pub fn bound(&self) -> f64 {
        self.bound
    }

    /// (node, worst-case |value| it computes), in execution order.
    pub fn node_bounds(&self) -> &[(String, f64)] {
        &self.node_bounds
    }

    /// Integer outputs (batch-major `[batch × outputs]`) as the model's real outputs.
    pub fn dequantize(&self, ints: &[i128]) -> Vec<f64> {
        let o = self.output_features().max(1);
        ints.iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * self.output_fold[i % o] / self.output_scale)
            .collect()
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
    /// `0..2^input_bits`); returns the integer outputs batch-major (`[batch × outputs]`).
    pub fn forward_int(&self, pixels: &[i64], batch: usize) -> Result<Vec<i128>> {
        self.check_fits_i128()?;
        let feats = self.features_of(pixels, batch)?;
        let out = self.evaluate(&PlainOps { batch }, feats, &Progress::none(), None)?;
        let o = out.len();
        let mut res = vec![0i128; batch * o];
        for (j, v) in out.iter().enumerate() {
            for (b, &x) in v.iter().enumerate() {
                res[b * o + j] = x;
            }
        }
        Ok(res)
    }

    /// Encrypts batch-major integer inputs (`pixels`, `batch ≤ N` samples) as one
    /// [`CrtCiphertext`] per feature, sample `b` in slot `b`.
    pub fn encrypt(
        &self,
        crt: &BfvCrt,
        pk: &PublicKey,
        pixels: &[i64],
        batch: usize,
    ) -> Result<CipherTensor<CrtCiphertext>> {
        if batch > crt.slots() {
            return Err(Error::TooManyValues {
                got: batch,
                slots: crt.slots(),
            });
        }
        let feats = self.features_of(pixels, batch)?;
        let cts = feats
            .par_iter()
            .map(|v| crt.encrypt(v, pk))
            .collect::<Result<Vec<_>>>()?;
        CipherTensor::from_ciphertexts(self.input_shape.clone(), batch, cts)
    }

    /// Decrypts the output of [`Bfv::forward`] into batch-major integers (`[batch × outputs]`).
    pub fn decrypt(
        &self,
        crt: &BfvCrt,
        sk: &SecretKey,
        out: &CipherTensor<CrtCiphertext>,
    ) -> Result<Vec<i128>> {
        let (o, batch) = (out.ciphertexts().len(), out.batch());
        let dec = out
            .ciphertexts()
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

    /// The distinct biases (what the encrypted evaluation encrypts up front).
    fn biases(&self) -> Vec<i128> {
        let mut v: Vec<i128> = self
            .instrs
            .iter()
            .flat_map(|(_, i)| match i {
                QInstr::Affine { rows, .. } => rows.iter().map(|r| r.bias).collect::<Vec<_>>(),
                QInstr::Mul { .. } => Vec::new(),
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Runs the integer schedule on one value per input feature with `ops`, rayon-parallel
    /// over the outputs of each instruction.
    pub fn evaluate<O: QuantOps>(
        &self,
        ops: &O,
        input: Vec<O::Value>,
        progress: &Progress,
        mut timing: Option<&mut LayerTiming>,
    ) -> Result<Vec<O::Value>> {
        if input.len() != self.input_features() {
            return Err(Error::Shape(format!(
                "the model takes {} input features, got {}",
                self.input_features(),
                input.len()
            )));
        }
        type T<V> = Vec<Arc<V>>;
        let mut slots: Vec<Option<T<O::Value>>> = (0..self.slots).map(|_| None).collect();
        slots[0] = Some(input.into_iter().map(Arc::new).collect());
        progress.emit(ProgressEvent::Start {
            total: self.instrs.len() as u64,
            unit: "steps",
        });
        for (k, (node, ins)) in self.instrs.iter().enumerate() {
            let name = &self.node_names[*node];
            let t0 = Instant::now();
            let (dst, out) = match ins {
                QInstr::Affine {
                    args,
                    rows,
                    dst,
                    square,
                } => {
                    let mut feats: Vec<&Arc<O::Value>> = Vec::new();
                    for &a in args {
                        feats.extend(super::ckks::get(&slots, a)?.iter());
                    }
                    let out = rows
                        .par_iter()
                        .map(|r| {
                            let (ids, ws): (Vec<u32>, Vec<i64>) = r.terms.iter().copied().unzip();
                            if *square {
                                let sq = ids
                                    .iter()
                                    .map(|&i| ops.mul(feats[i as usize], feats[i as usize]))
                                    .collect::<Result<Vec<_>>>()?;
                                ops.affine(&sq.iter().collect::<Vec<_>>(), &ws, r.bias)
                            } else {
                                let refs: Vec<&O::Value> =
                                    ids.iter().map(|&i| &**feats[i as usize]).collect();
                                ops.affine(&refs, &ws, r.bias)
                            }
                            .map(Arc::new)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (*dst, out)
                }
                QInstr::Mul { a, b, pairs, dst } => {
                    let (xa, xb) = (super::ckks::get(&slots, *a)?, super::ckks::get(&slots, *b)?);
                    let out = pairs
                        .par_iter()
                        .map(|&(i, j)| ops.mul(&xa[i as usize], &xb[j as usize]).map(Arc::new))
                        .collect::<Result<Vec<_>>>()?;
                    (*dst, out)
                }
            };
            slots[dst] = Some(out);
            for &s in &self.frees[k] {
                slots[s] = None;
            }
            if let Some(t) = timing.as_deref_mut() {
                t.add(name, t0.elapsed().as_secs_f64());
            }
            progress.emit(ProgressEvent::Advance);
        }
        progress.emit(ProgressEvent::Finish);
        super::ckks::take(&mut slots, self.output_slot)?
            .into_iter()
            .map(|v| {
                Arc::try_unwrap(v)
                    .map_err(|_| Error::Model("an output value is still shared".into()))
            })
            .collect()
    }
}

fn affine(args: Vec<usize>, rows: Vec<QRow>, dst: usize) -> QInstr {
    QInstr::Affine {
        args,
        rows,
        dst,
        square: false,
    }
}

/// Quantizes real rows over inputs at the given scales: one output scale `2^k · max S_in`,
/// weights `round(w · T / S_in)` within `w_max`, biases at `T`.
fn quantize_rows(
    name: &str,
    rows: &[(Vec<(u32, f64)>, f64)],
    ins: &[QState],
    w_max: f64,
) -> Result<(Vec<QRow>, QState)> {
    let scales: Vec<f64> = ins
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.scale, s.bounds.len()))
        .collect();
    let bounds: Vec<f64> = ins.iter().flat_map(|s| s.bounds.iter().copied()).collect();
    let top = scales.iter().fold(0.0f64, |m, &s| m.max(s));
    let max_w = rows
        .iter()
        .flat_map(|r| {
            r.0.iter()
                .map(|&(i, w)| (w * top / scales[i as usize]).abs())
        })
        .fold(0.0f64, f64::max);
    if !max_w.is_finite() {
        return Err(Error::Model(format!(
            "node {name:?}: a weight is not finite"
        )));
    }
    let k = if max_w > 0.0 {
        (w_max / max_w).log2().floor() as i32
    } else {
        0
    };
    let target = top * 2f64.powi(k);
    let mut out_bounds = Vec::with_capacity(rows.len());
    let rows = rows
        .iter()
        .map(|(terms, b)| {
            let terms: Vec<(u32, i64)> = terms
                .iter()
                .map(|&(i, w)| (i, (w * target / scales[i as usize]).round() as i64))
                .collect();
            let bias = check_bias(name, b * target)?;
            out_bounds.push(
                terms
                    .iter()
                    .map(|&(i, w)| (w as f64).abs() * bounds[i as usize])
                    .sum::<f64>()
                    + (bias as f64).abs(),
            );
            Ok(QRow { terms, bias })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        rows,
        QState {
            scale: target,
            bounds: out_bounds,
        },
    ))
}

/// Which slots die after each instruction (the output's never does).
fn frees(instrs: &[(usize, QInstr)], slots: usize, output: usize) -> Vec<Vec<usize>> {
    let mut last = vec![None; slots];
    for (k, (_, i)) in instrs.iter().enumerate() {
        match i {
            QInstr::Affine { args, .. } => args.iter().for_each(|&a| last[a] = Some(k)),
            QInstr::Mul { a, b, .. } => {
                last[*a] = Some(k);
                last[*b] = Some(k);
            }
        }
    }
    let mut out = vec![Vec::new(); instrs.len()];
    for (s, l) in last.into_iter().enumerate() {
        if let (Some(k), true) = (l, s != output) {
            out[k].push(s);
        }
    }
    out
}

/// Encrypted evaluation with [`BfvCrt`]: affine layers as scalar multiply-adds, squares with
/// relinearized products, pooling as sums. Biases are encrypted once per distinct value.
struct BfvOps<'a> {
    crt: &'a BfvCrt,
    rk: &'a RelinKey,
    consts: HashMap<i128, CrtCiphertext>,
}

impl<'a> BfvOps<'a> {
    /// Prepares the evaluation of `model` (encrypts its distinct biases, and 0, under `pk`).
    fn new(
        crt: &'a BfvCrt,
        pk: &PublicKey,
        rk: &'a RelinKey,
        model: &QuantizedPlan,
    ) -> Result<Self> {
        model.check_modulus(crt.plain_modulus_product())?;
        let mut vals = model.biases();
        vals.push(0);
        vals.sort_unstable();
        vals.dedup();
        let n = crt.slots();
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

    fn mul(&self, a: &CrtCiphertext, b: &CrtCiphertext) -> Result<CrtCiphertext> {
        self.crt.multiply_relin(a, b, self.rk)
    }
}

/// A [`QuantizedPlan`] bound to a [`BfvCrt`] context and keys: exact encrypted inference.
pub struct Bfv<'a> {
    plan: &'a QuantizedPlan,
    ops: BfvOps<'a>,
}

impl<'a> Bfv<'a> {
    /// Checks that the CRT modulus holds the plan's worst case and encrypts its distinct
    /// biases under `pk`.
    pub fn new(
        plan: &'a QuantizedPlan,
        crt: &'a BfvCrt,
        pk: &PublicKey,
        rk: &'a RelinKey,
    ) -> Result<Self> {
        Ok(Self {
            plan,
            ops: BfvOps::new(crt, pk, rk, plan)?,
        })
    }

    /// Runs the plan on an encrypted batch ([`QuantizedPlan::encrypt`]).
    pub fn forward(&self, x: &CipherTensor<CrtCiphertext>) -> Result<CipherTensor<CrtCiphertext>> {
        self.forward_with(x, &Progress::none(), None)
    }

    /// [`Self::forward`], reporting each instruction to `progress` and the seconds per graph
    /// node to `timing`.
    pub fn forward_with(
        &self,
        x: &CipherTensor<CrtCiphertext>,
        progress: &Progress,
        timing: Option<&mut LayerTiming>,
    ) -> Result<CipherTensor<CrtCiphertext>> {
        if x.shape() != self.plan.input_shape {
            return Err(Error::Shape(format!(
                "the model takes samples of shape {:?}, the encrypted input has {:?}",
                self.plan.input_shape,
                x.shape()
            )));
        }
        let out = self
            .plan
            .evaluate(&self.ops, x.ciphertexts().to_vec(), progress, timing)?;
        CipherTensor::from_ciphertexts(self.plan.output_shape.clone(), x.batch(), out)
    }
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
