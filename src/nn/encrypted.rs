//! Encrypted inference of a [`Sequential`] model with CKKS, batched layout.
//!
//! The model is compiled into a plan of ciphertext operations:
//! * `Conv2d` / `Linear` → one [`CkksContext::linear_combination`] per output feature (weights
//!   encoded at the scale of the prime that the following rescale drops, so the scale is
//!   restored exactly), then rescale and bias addition — 1 level;
//! * `Square` → ciphertext square **without relinearization** (3 polynomials) — 1 level;
//! * `AvgPool2d` → sums of ciphertexts; the `1/k²` is folded into the next affine layer's
//!   weights, so pooling costs no level and no multiplication;
//! * a square's rescale waits past the pooling sums: 4x fewer rescales;
//! * degree-2 results are relinearized where the tensor is smallest: before a layer that does
//!   not shrink it (conv2: 576 inputs < 768 outputs), after one that does, and never before
//!   decryption (the last layer's outputs are decrypted with `s²`).
//!
//! * `PolyActivation` → [`CkksContext::evaluate_polynomial`] — `ceil(log2 d) + 1` levels.
//!
//! LeNet-1 therefore needs 5 levels: conv, square, conv, square, linear.

use rayon::prelude::*;

use crate::ckks::CkksContext;
use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential};
use crate::rlwe::{Ciphertext, RelinKey};
use crate::tensor::CipherTensor;

/// Levels (rescalings) the model needs in the batched CKKS evaluation.
pub fn levels_needed(model: &Sequential) -> Result<usize> {
    let mut n = 0;
    for (name, layer) in model.iter() {
        match layer {
            Layer::Conv2d(_) | Layer::Linear(_) | Layer::Square(_) => n += 1,
            Layer::AvgPool2d(_) | Layer::Flatten(_) => {}
            Layer::Poly(p) => {
                if p.coeffs.iter().any(|c| !c.is_finite()) {
                    return Err(Error::Model(format!(
                        "layer '{name}': non-finite coefficient"
                    )));
                }
                n += CkksContext::polynomial_depth(p.degree())
            }
        }
    }
    // A trailing pooling needs one multiplication by 1/k².
    if let Some((_, Layer::AvgPool2d(_))) = model.iter().last() {
        n += 1;
    }
    Ok(n)
}

/// Checks that a model fits a context: levels, slots, and the magnitude of its outputs.
pub fn check_fits(ctx: &CkksContext, model: &Sequential, batch: usize) -> Result<()> {
    let need = levels_needed(model)?;
    if need > ctx.max_level() {
        return Err(Error::InvalidParameters(format!(
            "the model needs {need} levels but the CKKS parameters have {}; use a longer chain \
             (e.g. CkksParams::preset with a larger N) or a shallower model",
            ctx.max_level()
        )));
    }
    if batch > ctx.slots() {
        return Err(Error::TooManyValues {
            got: batch,
            slots: ctx.slots(),
        });
    }
    Ok(())
}

/// Outputs of an affine layer that read the same inputs (a convolution's output channels at one
/// position; all outputs of a dense layer): computed together, reading each input once.
struct OutputGroup {
    inputs: Vec<usize>,
    /// (output index, one weight per input, bias).
    outputs: Vec<(usize, Vec<f64>, f64)>,
}

/// An affine layer as groups of outputs with shared inputs.
struct AffineMap {
    groups: Vec<OutputGroup>,
    outputs: usize,
    out_shape: Vec<usize>,
}

fn affine_map(layer: &Layer, in_shape: &[usize], fold: f64) -> Result<AffineMap> {
    match layer {
        Layer::Conv2d(c) => {
            let [ch, h, w] = in_shape else {
                return Err(Error::Shape(format!(
                    "conv input must be [C, H, W], got {in_shape:?}"
                )));
            };
            if *ch != c.in_ch {
                return Err(Error::Shape(format!(
                    "conv expects {} channels, got {ch}",
                    c.in_ch
                )));
            }
            let (oh, ow) = c.output_hw(*h, *w)?;
            let mut groups = Vec::with_capacity(oh * ow);
            for y in 0..oh {
                for x in 0..ow {
                    let taps = c.taps_at(*h, *w, y, x);
                    let outputs = (0..c.out_ch)
                        .map(|o| {
                            let ws = taps
                                .iter()
                                .map(|&(ci, ky, kx, _)| c.weight[[o, ci, ky, kx]] * fold)
                                .collect();
                            (o * oh * ow + y * ow + x, ws, c.bias[o])
                        })
                        .collect();
                    groups.push(OutputGroup {
                        inputs: taps.iter().map(|t| t.3).collect(),
                        outputs,
                    });
                }
            }
            Ok(AffineMap {
                groups,
                outputs: c.out_ch * oh * ow,
                out_shape: vec![c.out_ch, oh, ow],
            })
        }
        Layer::Linear(l) => {
            let features: usize = in_shape.iter().product();
            if features != l.in_features() {
                return Err(Error::Shape(format!(
                    "linear layer expects {} inputs, got {features} (shape {in_shape:?})",
                    l.in_features()
                )));
            }
            let outputs = (0..l.out_features())
                .map(|j| {
                    let ws = (0..features).map(|i| l.weight[[j, i]] * fold).collect();
                    (j, ws, l.bias[j])
                })
                .collect();
            Ok(AffineMap {
                groups: vec![OutputGroup {
                    inputs: (0..features).collect(),
                    outputs,
                }],
                outputs: l.out_features(),
                out_shape: vec![l.out_features()],
            })
        }
        _ => Err(Error::Model(format!(
            "{} is not an affine layer",
            layer.kind()
        ))),
    }
}

/// Per-layer timing of an encrypted forward pass.
#[derive(Clone, Debug, Default)]
pub struct LayerTiming {
    /// (layer name, seconds).
    pub layers: Vec<(String, f64)>,
}

/// Runs `model` on an encrypted batch. `output_bound` is the largest output magnitude to
/// expect (e.g. twice the largest plaintext logit on training data): the last affine layer
/// picks its output scale so that level 0 can hold it.
pub fn forward(
    ctx: &CkksContext,
    model: &Sequential,
    input: CipherTensor,
    rk: &RelinKey,
    output_bound: f64,
    timing: &mut LayerTiming,
) -> Result<CipherTensor> {
    check_fits(ctx, model, input.batch())?;
    let batch = input.batch();
    let mut shape = input.shape().to_vec();
    let mut cts: Vec<Ciphertext> = input.into_ciphertexts();
    let mut fold = 1.0;
    // Rescales owed by the ciphertexts: a square's rescale waits until after the pooling sums
    // and is paid before the next affine layer, on 4x fewer ciphertexts. (Skipping an affine
    // layer's rescale before a square would not pay: the square doubles the unrescaled factor,
    // which then costs an extra level.)
    let mut pending = 0usize;
    let layers: Vec<(&str, &Layer)> = model.iter().collect();
    let last_affine = layers
        .iter()
        .rposition(|(_, l)| matches!(l, Layer::Conv2d(_) | Layer::Linear(_)));
    let pay = |cts: Vec<Ciphertext>, pending: &mut usize| -> Result<Vec<Ciphertext>> {
        let mut cts = cts;
        while *pending > 0 {
            cts = par_map(&cts, |c| ctx.rescale(c))?;
            *pending -= 1;
        }
        Ok(cts)
    };
    for (idx, (name, layer)) in layers.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let next_is_square = matches!(layers.get(idx + 1), Some((_, Layer::Square(_))));
        match layer {
            Layer::Conv2d(_) | Layer::Linear(_) => {
                cts = pay(cts, &mut pending)?;
                let map = affine_map(layer, &shape, fold)?;
                fold = 1.0;
                // Relinearize where there are fewer ciphertexts: degree-2 inputs are cheaper
                // to relinearize before a layer that does not shrink the tensor (and then the
                // layer multiplies 2 polynomials instead of 3).
                if cts.first().is_some_and(|c| c.size() == 3) && map.outputs >= cts.len() {
                    cts = par_map(&cts, |c| ctx.relinearize(c, rk))?;
                }
                let level = cts.first().map(|c| c.level()).unwrap_or(0);
                if level == 0 {
                    return Err(Error::OutOfLevels {
                        op: "affine layer",
                        level,
                    });
                }
                let in_scale = cts[0].scale();
                let q = ctx.level_modulus(level);
                // Keep the scale, unless this is the last affine layer and its output would not
                // fit at the next level: then lower the output scale.
                let mut target = in_scale;
                if Some(idx) == last_affine {
                    let cap_scale = ctx.capacity(level - 1, 1.0) / (2.0 * output_bound.max(1.0));
                    target = target.min(cap_scale);
                }
                let const_scale = q * target / in_scale;
                let inputs = &cts;
                let computed = map
                    .groups
                    .par_iter()
                    .map(|g| {
                        let refs: Vec<&Ciphertext> = g.inputs.iter().map(|&i| &inputs[i]).collect();
                        let ws: Vec<Vec<f64>> = g.outputs.iter().map(|o| o.1.clone()).collect();
                        let accs = ctx.linear_combinations(&refs, &ws, const_scale)?;
                        accs.into_iter()
                            .zip(&g.outputs)
                            .map(|(acc, &(j, _, b))| {
                                let mut out = ctx.rescale(&acc)?;
                                if b != 0.0 {
                                    out = ctx.add_scalar(&out, b)?;
                                }
                                if next_is_square && out.size() == 3 {
                                    out = ctx.relinearize(&out, rk)?;
                                }
                                Ok((j, out))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut slots: Vec<Option<Ciphertext>> = vec![None; map.outputs];
                for (j, ct) in computed.into_iter().flatten() {
                    slots[j] = Some(ct);
                }
                cts = slots
                    .into_iter()
                    .map(|c| {
                        c.ok_or_else(|| {
                            Error::Model(format!("layer '{name}': an output was not computed"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                shape = map.out_shape;
            }
            Layer::Square(_) => {
                cts = par_map(&cts, |c| {
                    let c = if c.size() == 3 {
                        ctx.relinearize(c, rk)?
                    } else {
                        c.clone()
                    };
                    ctx.square(&c)
                })?;
                pending += 1;
                // (f·x)² = f²·x²: an unapplied pooling factor squares with the values.
                fold *= fold;
            }
            Layer::Poly(p) => {
                cts = pay(cts, &mut pending)?;
                // p(f·x) = Σ c_k f^k x^k: fold an unapplied pooling factor into the coefficients.
                let coeffs: Vec<f64> = p
                    .coeffs
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c * fold.powi(k as i32))
                    .collect();
                fold = 1.0;
                cts = par_map(&cts, |c| ctx.evaluate_polynomial(c, &coeffs, rk))?;
            }
            Layer::AvgPool2d(p) => {
                let [ch, h, w] = shape[..] else {
                    return Err(Error::Shape(format!(
                        "pool input must be [C, H, W], got {shape:?}"
                    )));
                };
                let k = p.kernel;
                let (oh, ow) = (h / k, w / k);
                let idx: Vec<Vec<usize>> = (0..ch * oh * ow)
                    .map(|o| {
                        let (c, y, x) = (o / (oh * ow), (o / ow) % oh, o % ow);
                        (0..k * k)
                            .map(|d| c * h * w + (y * k + d / k) * w + x * k + d % k)
                            .collect()
                    })
                    .collect();
                let inputs = &cts;
                cts = idx
                    .par_iter()
                    .map(|ids| {
                        let mut acc = inputs[ids[0]].clone();
                        for &i in &ids[1..] {
                            acc = ctx.add(&acc, &inputs[i])?;
                        }
                        Ok(acc)
                    })
                    .collect::<Result<Vec<_>>>()?;
                fold /= (k * k) as f64;
                shape = vec![ch, oh, ow];
            }
            Layer::Flatten(_) => shape = vec![shape.iter().product()],
        }
        timing
            .layers
            .push((name.to_string(), t0.elapsed().as_secs_f64()));
    }
    cts = pay(cts, &mut pending)?;
    if fold != 1.0 {
        cts = par_map(&cts, |c| {
            let l = c.level();
            if l == 0 {
                return Err(Error::OutOfLevels {
                    op: "trailing pool",
                    level: 0,
                });
            }
            ctx.rescale(&ctx.multiply_scalar(c, fold, ctx.level_modulus(l))?)
        })?;
    }
    CipherTensor::from_ciphertexts(shape, batch, cts)
}

fn par_map<F>(cts: &[Ciphertext], f: F) -> Result<Vec<Ciphertext>>
where
    F: Fn(&Ciphertext) -> Result<Ciphertext> + Sync + Send,
{
    cts.par_iter().map(f).collect()
}
