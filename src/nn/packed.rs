//! Encrypted inference of one image with low latency: the **packed** layout.
//!
//! Each channel of an activation map is one CKKS ciphertext holding the map's values in its
//! slots, value `(y, x)` at slot `row_stride·y + col_stride·x` (the input image: strides 28
//! and 1). Rotations move neighbours onto each other:
//! * `Conv2d` (stride 1, no padding): one rotation per kernel tap and input channel, shared by
//!   all output channels, then one linear combination per output channel — 1 level;
//! * `Square`: ciphertext square, relinearized — 1 level;
//! * `AvgPool2d(k)`: the sum of `k²` rotations; the strides grow by `k` (no data movement) and
//!   the `1/k²` is folded into the next layer's weights — no level;
//! * `Flatten` + `Linear`: each output is `Σ_c ct_c · mask_{j,c}` (the weights placed at the
//!   slots that hold valid values, zero elsewhere), then a rotate-and-sum collects it in slot 0
//!   — 1 level.
//!
//! Slots that hold no valid value carry garbage that never reaches a valid output: a valid
//! output only reads valid inputs, and the final masks zero everything else.

use rayon::prelude::*;

use crate::ckks::CkksContext;
use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential};
use crate::rlwe::{Ciphertext, GaloisKeys, RelinKey};

/// One image as per-channel ciphertexts with a strided slot layout.
#[derive(Clone, Debug)]
pub struct PackedImage {
    channels: Vec<Ciphertext>,
    height: usize,
    width: usize,
    row_stride: usize,
    col_stride: usize,
}

impl PackedImage {
    /// The channels' ciphertexts.
    pub fn channels(&self) -> &[Ciphertext] {
        &self.channels
    }
}

/// Walks the model and collects every rotation step the packed evaluation needs, so the key
/// owner can generate exactly those Galois keys.
pub fn rotation_steps(model: &Sequential, input_shape: [usize; 3]) -> Result<Vec<i64>> {
    let mut steps = Vec::new();
    plan(model, input_shape, |s| steps.push(s as i64))?;
    steps.sort_unstable();
    steps.dedup();
    steps.retain(|&s| s != 0);
    Ok(steps)
}

/// Slot index one past the last valid value of a `h × w` map with the given strides.
fn span(h: usize, w: usize, rs: usize, cs: usize) -> usize {
    (h - 1) * rs + (w - 1) * cs + 1
}

/// Dry run of the layout over the model: calls `need` for every rotation step.
fn plan(model: &Sequential, [_, h0, w0]: [usize; 3], mut need: impl FnMut(usize)) -> Result<()> {
    let (mut h, mut w, mut rs, mut cs) = (h0, w0, w0, 1usize);
    for (name, layer) in model.iter() {
        match layer {
            Layer::Conv2d(c) => {
                check_conv(name, c)?;
                for ky in 0..c.kernel {
                    for kx in 0..c.kernel {
                        need(ky * rs + kx * cs);
                    }
                }
                h = h + 1 - c.kernel;
                w = w + 1 - c.kernel;
            }
            Layer::AvgPool2d(p) => {
                for d in 0..p.kernel * p.kernel {
                    need((d / p.kernel) * rs + (d % p.kernel) * cs);
                }
                (h, w, rs, cs) = (h / p.kernel, w / p.kernel, rs * p.kernel, cs * p.kernel);
            }
            Layer::Linear(_) => {
                let mut s = 1;
                while s < span(h, w, rs, cs) {
                    need(s);
                    s *= 2;
                }
                (h, w, rs, cs) = (1, 1, 1, 1);
            }
            Layer::Square(_) | Layer::Flatten(_) | Layer::Poly(_) => {}
        }
    }
    Ok(())
}

fn check_conv(name: &str, c: &crate::nn::Conv2d) -> Result<()> {
    if c.stride != 1 || c.padding != 0 {
        return Err(Error::Model(format!(
            "layer '{name}': the packed layout supports convolutions with stride 1 and no \
             padding (got stride {}, padding {}); use the batched layout",
            c.stride, c.padding
        )));
    }
    Ok(())
}

/// Encrypts one `[channels, h, w]` image (given row-major) in the packed layout.
pub fn encrypt_image(
    ctx: &CkksContext,
    sk: &crate::rlwe::SecretKey,
    pixels: &[f64],
    shape: [usize; 3],
) -> Result<PackedImage> {
    let [ch, h, w] = shape;
    if pixels.len() != ch * h * w {
        return Err(Error::Shape(format!(
            "{} pixels for shape {shape:?}",
            pixels.len()
        )));
    }
    if h * w > ctx.slots() {
        return Err(Error::TooManyValues {
            got: h * w,
            slots: ctx.slots(),
        });
    }
    let channels = pixels
        .chunks(h * w)
        .map(|c| {
            let pt = ctx.encode(c, ctx.default_scale(), ctx.max_level())?;
            ctx.encrypt_symmetric(&pt, sk)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PackedImage {
        channels,
        height: h,
        width: w,
        row_stride: w,
        col_stride: 1,
    })
}

/// Runs `model` on one packed image; returns one ciphertext per output with the value in
/// slot 0. `output_bound` bounds the output magnitude (see `lower::CkksBatched::with_output_bound`).
pub fn forward(
    ctx: &CkksContext,
    model: &Sequential,
    image: PackedImage,
    rk: &RelinKey,
    gk: &GaloisKeys,
    output_bound: f64,
) -> Result<Vec<Ciphertext>> {
    check_levels(ctx, model)?;
    let PackedImage {
        mut channels,
        height: mut h,
        width: mut w,
        row_stride: mut rs,
        col_stride: mut cs,
    } = image;
    let mut fold = 1.0;
    let layers: Vec<(&str, &Layer)> = model.iter().collect();
    let last_affine = layers
        .iter()
        .rposition(|(_, l)| matches!(l, Layer::Conv2d(_) | Layer::Linear(_)));
    for (idx, (name, layer)) in layers.iter().enumerate() {
        match layer {
            Layer::Conv2d(c) => {
                check_conv(name, c)?;
                if channels.len() != c.in_ch {
                    return Err(Error::Shape(format!(
                        "layer '{name}' expects {} channels, got {}",
                        c.in_ch,
                        channels.len()
                    )));
                }
                let taps: Vec<(usize, usize, usize)> = (0..c.in_ch)
                    .flat_map(|ci| {
                        (0..c.kernel * c.kernel).map(move |d| (ci, d / c.kernel, d % c.kernel))
                    })
                    .collect();
                // Hoisted: each input channel is decomposed once for all its kernel taps.
                let per_channel: Vec<i64> = (0..c.kernel * c.kernel)
                    .map(|d| ((d / c.kernel) * rs + (d % c.kernel) * cs) as i64)
                    .collect();
                let rotated: Vec<Ciphertext> = channels
                    .par_iter()
                    .map(|ct| ctx.rotate_many(ct, &per_channel, gk))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .collect();
                let weights: Vec<Vec<f64>> = (0..c.out_ch)
                    .map(|o| {
                        taps.iter()
                            .map(|&(ci, ky, kx)| c.weight[[o, ci, ky, kx]] * fold)
                            .collect()
                    })
                    .collect();
                let refs: Vec<&Ciphertext> = rotated.iter().collect();
                let (const_scale, _) =
                    affine_scale(ctx, &rotated[0], idx, last_affine, output_bound)?;
                let outs = ctx.linear_combinations(&refs, &weights, const_scale)?;
                channels = outs
                    .into_par_iter()
                    .zip(c.bias.to_vec())
                    .map(|(acc, b)| ctx.add_scalar(&ctx.rescale(&acc)?, b))
                    .collect::<Result<Vec<_>>>()?;
                fold = 1.0;
                h = h + 1 - c.kernel;
                w = w + 1 - c.kernel;
            }
            Layer::Square(_) => {
                channels = channels
                    .par_iter()
                    .map(|c| ctx.rescale(&ctx.relinearize(&ctx.square(c)?, rk)?))
                    .collect::<Result<Vec<_>>>()?;
                // (f·x)² = f²·x²: an unapplied pooling factor squares with the values.
                fold *= fold;
            }
            Layer::Poly(p) => {
                // p(f·x) = Σ c_k f^k x^k.
                let coeffs: Vec<f64> = p
                    .coeffs
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c * fold.powi(k as i32))
                    .collect();
                fold = 1.0;
                channels = channels
                    .par_iter()
                    .map(|c| ctx.evaluate_polynomial(c, &coeffs, rk))
                    .collect::<Result<Vec<_>>>()?;
            }
            Layer::AvgPool2d(p) => {
                let k = p.kernel;
                channels = channels
                    .par_iter()
                    .map(|c| {
                        let steps: Vec<i64> = (1..k * k)
                            .map(|d| ((d / k) * rs + (d % k) * cs) as i64)
                            .collect();
                        let mut acc = c.clone();
                        for r in ctx.rotate_many(c, &steps, gk)? {
                            acc = ctx.add(&acc, &r)?;
                        }
                        Ok(acc)
                    })
                    .collect::<Result<Vec<_>>>()?;
                fold /= (k * k) as f64;
                (h, w, rs, cs) = (h / k, w / k, rs * k, cs * k);
            }
            Layer::Flatten(_) => {}
            Layer::Linear(l) => {
                let per_channel = h * w;
                if channels.len() * per_channel != l.in_features() {
                    return Err(Error::Shape(format!(
                        "layer '{name}' expects {} inputs, got {} channels of {h}x{w}",
                        l.in_features(),
                        channels.len()
                    )));
                }
                let (const_scale, level) =
                    affine_scale(ctx, &channels[0], idx, last_affine, output_bound)?;
                let slots = ctx.slots();
                let total = span(h, w, rs, cs).next_power_of_two();
                channels = (0..l.out_features())
                    .into_par_iter()
                    .map(|j| {
                        let mut acc: Option<Ciphertext> = None;
                        for (ci, ct) in channels.iter().enumerate() {
                            let mut mask = vec![0.0; slots.min(total.max(1))];
                            for y in 0..h {
                                for x in 0..w {
                                    let f = ci * per_channel + y * w + x;
                                    mask[y * rs + x * cs] = l.weight[[j, f]] * fold;
                                }
                            }
                            let pt = ctx.encode(&mask, const_scale, level)?;
                            let term = ctx.multiply_plain(ct, &pt)?;
                            acc = Some(match acc {
                                None => term,
                                Some(a) => ctx.add(&a, &term)?,
                            });
                        }
                        let mut sum = ctx.rescale(&acc.ok_or_else(|| {
                            Error::Shape(format!("layer '{name}' has no inputs"))
                        })?)?;
                        let mut s = 1;
                        while s < total {
                            sum = ctx.add(&sum, &ctx.rotate(&sum, s as i64, gk)?)?;
                            s *= 2;
                        }
                        ctx.add_scalar(&sum, l.bias[j])
                    })
                    .collect::<Result<Vec<_>>>()?;
                fold = 1.0;
                (h, w, rs, cs) = (1, 1, 1, 1);
            }
        }
    }
    if fold != 1.0 {
        channels = channels
            .par_iter()
            .map(|c| ctx.rescale(&ctx.multiply_scalar(c, fold, ctx.level_modulus(c.level()))?))
            .collect::<Result<Vec<_>>>()?;
    }
    Ok(channels)
}

/// The constant scale for an affine layer's weights at the input's level: the prime the next
/// rescale drops, lowered for the last affine layer so that level 0 can hold `output_bound`.
fn affine_scale(
    ctx: &CkksContext,
    input: &Ciphertext,
    idx: usize,
    last_affine: Option<usize>,
    output_bound: f64,
) -> Result<(f64, usize)> {
    let level = input.level();
    if level == 0 {
        return Err(Error::OutOfLevels {
            op: "affine layer",
            level,
        });
    }
    let mut target = input.scale();
    if Some(idx) == last_affine {
        target = target.min(ctx.capacity(level - 1, 1.0) / (2.0 * output_bound.max(1.0)));
    }
    Ok((ctx.level_modulus(level) * target / input.scale(), level))
}

/// Levels this layout needs: one per affine layer and square, `ceil(log2 d) + 1` per
/// polynomial of degree d, and one for a trailing pooling's `1/k²`.
fn check_levels(ctx: &CkksContext, model: &Sequential) -> Result<()> {
    let mut need = 0;
    for (name, layer) in model.iter() {
        need += match layer {
            Layer::Conv2d(_) | Layer::Linear(_) | Layer::Square(_) => 1,
            Layer::AvgPool2d(_) | Layer::Flatten(_) => 0,
            Layer::Poly(p) => {
                if p.coeffs.iter().any(|c| !c.is_finite()) {
                    return Err(Error::Model(format!(
                        "layer '{name}': non-finite coefficient"
                    )));
                }
                CkksContext::polynomial_depth(p.degree())
            }
        };
    }
    if let Some((_, Layer::AvgPool2d(_))) = model.iter().last() {
        need += 1;
    }
    if need > ctx.max_level() {
        return Err(Error::InvalidParameters(format!(
            "the model needs {need} levels in the packed layout but the CKKS parameters have {}",
            ctx.max_level()
        )));
    }
    Ok(())
}
