//! Encrypted inference of a [`Sequential`] model with CKKS, batched layout.
//!
//! The model is compiled into a plan of ciphertext operations:
//! * `Conv2d` / `Linear` → one [`CkksContext::linear_combination`] per output feature (weights
//!   encoded at the scale of the prime that the following rescale drops, so the scale is
//!   restored exactly), then rescale and bias addition — 1 level;
//! * `Square` → ciphertext square **without relinearization** (3 polynomials) — 1 level;
//! * `AvgPool2d` → sums of ciphertexts; the `1/k²` is folded into the next affine layer's
//!   weights, so pooling costs no level and no multiplication;
//! * the rescale after a square is postponed past the pooling sums (4x fewer rescales), and a
//!   degree-2 result stays degree 2 through the next linear layer: only that layer's outputs are
//!   relinearized, and only if another square follows (lazy relinearization).
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
            Layer::Poly(_) => {
                return Err(Error::Model(format!(
                    "layer '{name}': polynomial activations are not yet supported in encrypted \
                     evaluation (use Square, or expand the polynomial into Linear/Square layers)"
                )))
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

/// A sparse affine map: `out[j] = Σ w·in[i] + bias[j]`.
struct AffineMap {
    rows: Vec<Vec<(usize, f64)>>,
    bias: Vec<f64>,
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
            let oh = (h + 2 * c.padding - c.kernel) / c.stride + 1;
            let ow = (w + 2 * c.padding - c.kernel) / c.stride + 1;
            let mut rows = Vec::with_capacity(c.out_ch * oh * ow);
            let mut bias = Vec::with_capacity(rows.capacity());
            for o in 0..c.out_ch {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut row = Vec::new();
                        for ci in 0..c.in_ch {
                            for ky in 0..c.kernel {
                                for kx in 0..c.kernel {
                                    let iy = (y * c.stride + ky) as isize - c.padding as isize;
                                    let ix = (x * c.stride + kx) as isize - c.padding as isize;
                                    let wv = c.weight[[o, ci, ky, kx]] * fold;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= *h as isize
                                        || ix >= *w as isize
                                        || wv == 0.0
                                    {
                                        continue;
                                    }
                                    row.push((ci * h * w + iy as usize * w + ix as usize, wv));
                                }
                            }
                        }
                        rows.push(row);
                        bias.push(c.bias[o]);
                    }
                }
            }
            Ok(AffineMap {
                rows,
                bias,
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
            let rows = (0..l.out_features())
                .map(|j| {
                    (0..features)
                        .map(|i| (i, l.weight[[j, i]] * fold))
                        .filter(|&(_, w)| w != 0.0)
                        .collect()
                })
                .collect();
            Ok(AffineMap {
                rows,
                bias: l.bias.to_vec(),
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
    let mut pending_rescale = false;
    let layers: Vec<(&str, &Layer)> = model.iter().collect();
    let last_affine = layers
        .iter()
        .rposition(|(_, l)| matches!(l, Layer::Conv2d(_) | Layer::Linear(_)));
    for (idx, (name, layer)) in layers.iter().enumerate() {
        let t0 = std::time::Instant::now();
        match layer {
            Layer::Conv2d(_) | Layer::Linear(_) => {
                if pending_rescale {
                    cts = par_map(&cts, |c| ctx.rescale(c))?;
                    pending_rescale = false;
                }
                let map = affine_map(layer, &shape, fold)?;
                fold = 1.0;
                let level = cts.first().map(|c| c.level()).unwrap_or(0);
                if level == 0 {
                    return Err(Error::OutOfLevels { op: "affine layer", level });
                }
                let in_scale = cts[0].scale();
                let q = ctx.scale_prime(level) as f64;
                // Keep the scale, unless this is the last affine layer and its output would not
                // fit at the next level: then lower the output scale.
                let mut target = in_scale;
                if Some(idx) == last_affine {
                    let cap_scale = ctx.capacity(level - 1, 1.0) / (2.0 * output_bound.max(1.0));
                    target = target.min(cap_scale);
                }
                let const_scale = q * target / in_scale;
                let relin_after = matches!(layers.get(idx + 1), Some((_, Layer::Square(_))));
                let inputs = &cts;
                cts = map
                    .rows
                    .par_iter()
                    .zip(&map.bias)
                    .map(|(row, &b)| {
                        let refs: Vec<&Ciphertext> = row.iter().map(|&(i, _)| &inputs[i]).collect();
                        let ws: Vec<f64> = row.iter().map(|&(_, w)| w).collect();
                        let acc = ctx.linear_combination(&refs, &ws, const_scale)?;
                        let mut out = ctx.rescale(&acc)?;
                        if b != 0.0 {
                            out = ctx.add_scalar(&out, b)?;
                        }
                        if relin_after && out.size() == 3 {
                            out = ctx.relinearize(&out, rk)?;
                        }
                        Ok(out)
                    })
                    .collect::<Result<Vec<_>>>()?;
                shape = map.out_shape;
            }
            Layer::Square(_) => {
                if pending_rescale {
                    cts = par_map(&cts, |c| ctx.rescale(c))?;
                }
                cts = par_map(&cts, |c| {
                    let c = if c.size() == 3 { ctx.relinearize(c, rk)? } else { c.clone() };
                    ctx.square(&c)
                })?;
                pending_rescale = true;
            }
            Layer::AvgPool2d(p) => {
                let [ch, h, w] = shape[..] else {
                    return Err(Error::Shape(format!("pool input must be [C, H, W], got {shape:?}")));
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
            Layer::Poly(_) => {
                return Err(Error::Model(format!(
                    "layer '{name}': polynomial activations are not yet supported in encrypted evaluation"
                )))
            }
        }
        timing
            .layers
            .push((name.to_string(), t0.elapsed().as_secs_f64()));
    }
    if pending_rescale {
        cts = par_map(&cts, |c| ctx.rescale(c))?;
    }
    if fold != 1.0 {
        cts = par_map(&cts, |c| {
            let l = c.level();
            if l == 0 {
                return Err(Error::OutOfLevels {
                    op: "trailing pool",
                    level: 0,
                });
            }
            ctx.rescale(&ctx.multiply_scalar(c, fold, ctx.scale_prime(l) as f64)?)
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
