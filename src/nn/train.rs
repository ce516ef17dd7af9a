//! Plaintext training: mini-batch SGD with momentum, rayon-parallel over the batch.
//!
//! * **Determinism.** One ChaCha20 generator seeded from [`TrainConfig::seed`] drives the
//!   shuffling and the augmentation; each mini-batch is cut into fixed chunks of
//!   [`TrainConfig::chunk`] samples whose gradients are computed in parallel and then added
//!   **in chunk order**, so a run gives the same weights whatever the number of threads.
//! * **Update rule** (PyTorch's `SGD(momentum, weight_decay)`): `g ← ∇L + λ·w`,
//!   `v ← μ·v + g`, `w ← w − η_t·v`, where `∇L` is the gradient of the mean loss over the
//!   mini-batch, optionally clipped to a global norm first.
//! * **Learning rate** `η_t`: linear warm-up over [`TrainConfig::warmup_epochs`], then the
//!   [`LrSchedule`].
//! * Progress (one step per mini-batch, one line per epoch) goes to [`TrainConfig::progress`];
//!   the library draws nothing itself.

use std::time::Instant;

use ndarray::{ArrayViewD, Axis, Ix2};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use super::loss::{argmax_rows, Loss};
use super::{Dataset, Gradients, Sequential, Tensor};
use crate::progress::{Progress, ProgressEvent};
use crate::{Error, Result};

/// Random affine augmentation of `NCHW` images, drawn independently per image: rotation by
/// `θ ∈ U(−max_rotation_deg, max_rotation_deg)` degrees and scaling by
/// `s ∈ U(1 − max_scale, 1 + max_scale)` about the image centre, then a shift by
/// `U(−max_shift, max_shift)` pixels on each axis; bilinear resampling, zero outside the image.
/// With rotation and scale 0, integer shifts are exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Largest shift, in pixels, on each axis.
    pub max_shift: f64,
    /// Largest rotation, in degrees.
    pub max_rotation_deg: f64,
    /// Largest relative change of size (0.1 = ±10 %).
    pub max_scale: f64,
    /// Round the shifts to whole pixels (no blurring from the interpolation when there is
    /// no rotation/scaling).
    pub integer_shifts: bool,
}

impl Augment {
    /// Shifts only, by up to `max_shift` whole pixels.
    pub fn shifts(max_shift: usize) -> Self {
        Self {
            max_shift: max_shift as f64,
            max_rotation_deg: 0.0,
            max_scale: 0.0,
            integer_shifts: true,
        }
    }
}

/// Learning-rate schedule after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// Constant `lr`.
    Constant,
    /// Cosine decay from `lr` to `lr · final_factor` over the remaining steps.
    Cosine {
        /// Final learning rate as a fraction of the initial one.
        final_factor: f64,
    },
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays (≥ 1).
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
}

/// Hyper-parameters of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per mini-batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Momentum `μ ∈ [0, 1)`.
    pub momentum: f64,
    /// L2 weight decay `λ ≥ 0`, applied to all parameters.
    pub weight_decay: f64,
    /// Loss to minimise.
    pub loss: Loss,
    /// Clip the mini-batch gradient to this global L2 norm (recommended with square
    /// activations, whose gradients can explode).
    pub clip_grad_norm: Option<f64>,
    /// Schedule after the warm-up.
    pub schedule: LrSchedule,
    /// Epochs of linear warm-up from ~0 to `lr` (fractional allowed).
    pub warmup_epochs: f64,
    /// Augmentation of image (`NCHW`) inputs, if any.
    pub augment: Option<Augment>,
    /// Seed of the shuffling/augmentation generator.
    pub seed: u64,
    /// Samples per parallel work item.
    pub chunk: usize,
    /// Where progress goes (default: nowhere).
    pub progress: Progress,
    /// Evaluate on the evaluation set (if given) every this many epochs, and after the last.
    pub eval_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
            loss: Loss::CrossEntropy,
            clip_grad_norm: Some(5.0),
            schedule: LrSchedule::Constant,
            warmup_epochs: 0.0,
            augment: None,
            seed: 0,
            chunk: 16,
            progress: Progress::none(),
            eval_every: 1,
        }
    }
}

impl TrainConfig {
    /// The recipe that produced `data/lenet1.safetensors` (see `examples/train_lenet1.rs`,
    /// which afterwards calls [`Sequential::balance_squares`] on the training inputs).
    ///
    /// 40 epochs of momentum SGD (batch 64, peak lr 0.05, 1 warm-up epoch, cosine decay to
    /// 1 %), gradients clipped to norm 2, weight decay 5e-4, random shifts (±2 px), rotations
    /// (±10°) and scaling (±10 %). Label smoothing 0.03 keeps the logits moderate (|z| ≲ 25
    /// on the test set instead of ≈ 70 with the plain cross-entropy) for a small cost in
    /// accuracy (≈ 0.1-0.2 %).
    pub fn lenet1() -> Self {
        Self {
            epochs: 40,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            loss: Loss::SmoothedCrossEntropy(0.03),
            clip_grad_norm: Some(2.0),
            schedule: LrSchedule::Cosine { final_factor: 0.01 },
            warmup_epochs: 1.0,
            augment: Some(Augment {
                max_shift: 2.0,
                max_rotation_deg: 10.0,
                max_scale: 0.1,
                integer_shifts: false,
            }),
            seed: 2024,
            chunk: 16,
            progress: Progress::stderr_lines(),
            eval_every: 5,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Model(format!("invalid training configuration: {m}")));
        if self.batch_size == 0 {
            return bad("batch_size must be >= 1".into());
        }
        if self.chunk == 0 {
            return bad("chunk must be >= 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be finite and > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be finite and >= 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("clip_grad_norm must be finite and > 0, got {c}"));
            }
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad(format!(
                "warmup_epochs must be >= 0, got {}",
                self.warmup_epochs
            ));
        }
        if let LrSchedule::Step { every: 0, .. } = self.schedule {
            return bad("LrSchedule::Step needs every >= 1".into());
        }
        if let Some(a) = self.augment {
            if !(a.max_shift >= 0.0
                && a.max_rotation_deg >= 0.0
                && (0.0..1.0).contains(&a.max_scale))
            {
                return bad(format!(
                    "augmentation bounds must be >= 0 (scale < 1), got {a:?}"
                ));
            }
        }
        Ok(())
    }

    /// Learning rate at global step `step` (0-based) of `steps_per_epoch · epochs`.
    pub fn lr_at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        let t = step as f64 / spe; // epochs done
        let warm = self.warmup_epochs;
        if t < warm {
            return self.lr * (step as f64 + 1.0) / (warm * spe).max(1.0);
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine { final_factor } => {
                let span = (self.epochs as f64 - warm).max(1e-12);
                let p = ((t - warm) / span).clamp(0.0, 1.0);
                let f = final_factor
                    + (1.0 - final_factor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                self.lr * f
            }
            LrSchedule::Step { every, gamma } => {
                self.lr * gamma.powi((t.floor() as usize / every.max(1)) as i32)
            }
        }
    }
}

/// Statistics of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch (on augmented inputs, weights changing).
    pub train_loss: f64,
    /// Training accuracy over the epoch (same caveats).
    pub train_accuracy: f64,
    /// Accuracy on the evaluation set, when it was evaluated this epoch.
    pub eval_accuracy: Option<f64>,
    /// Wall-clock seconds since training started.
    pub elapsed_s: f64,
}

/// What [`train`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainReport {
    /// One entry per epoch.
    pub epochs: Vec<EpochStats>,
    /// Total wall-clock seconds.
    pub seconds: f64,
}

/// Sum of the loss over `x`, number of correct arg-max predictions, and the gradients of the
/// **summed** loss, computed in parallel over chunks of `chunk` samples and added in order.
pub fn batch_gradients(
    model: &Sequential,
    x: &Tensor,
    labels: &[usize],
    loss: Loss,
    chunk: usize,
) -> Result<(f64, usize, Gradients)> {
    if x.ndim() == 0 || x.shape()[0] != labels.len() {
        return Err(Error::Shape(format!(
            "batch of shape {:?} does not match {} labels",
            x.shape(),
            labels.len()
        )));
    }
    let chunk = chunk.max(1);
    let parts: Vec<(ArrayViewD<'_, f64>, &[usize])> = x
        .axis_chunks_iter(Axis(0), chunk)
        .zip(labels.chunks(chunk))
        .collect();
    let results: Vec<(f64, usize, Gradients)> = parts
        .into_par_iter()
        .map(|(xv, lv)| {
            let trace = model.forward_trace(&xv.to_owned())?;
            let out = &trace[trace.len() - 1];
            let (l, g) = loss.eval(out, lv)?;
            let pred = argmax_rows(out.view().into_dimensionality::<Ix2>().map_err(|_| {
                Error::Shape(format!(
                    "model outputs must be [batch, classes], got {:?}",
                    out.shape()
                ))
            })?);
            let correct = pred.iter().zip(lv).filter(|(p, l)| p == l).count();
            let (_, grads) = model.backward(&trace, &g)?;
            Ok((l, correct, grads))
        })
        .collect::<Result<_>>()?;
    let mut total = Gradients::zeros_like(model);
    let (mut loss_sum, mut correct) = (0.0, 0);
    for (l, c, g) in &results {
        loss_sum += l;
        correct += c;
        total.add_assign(g)?;
    }
    Ok((loss_sum, correct, total))
}

/// Applies random affine augmentation (see [`Augment`]) to every image of an `NCHW` batch,
/// drawing the parameters from `rng` (sequentially, so the result is deterministic) and
/// resampling in parallel.
pub fn augment_batch<R: Rng + ?Sized>(x: &mut Tensor, aug: &Augment, rng: &mut R) -> Result<()> {
    let &[n, c, h, w] = x.shape() else {
        return Err(Error::Shape(format!(
            "augmentation needs image inputs [batch, channels, height, width], got shape {:?}",
            x.shape()
        )));
    };
    // Per image: inverse affine map from output to input coordinates (about the centre).
    let params: Vec<[f64; 6]> = (0..n)
        .map(|_| {
            let theta = (2.0 * rng.random::<f64>() - 1.0) * aug.max_rotation_deg.to_radians();
            let s = 1.0 + (2.0 * rng.random::<f64>() - 1.0) * aug.max_scale;
            let mut dx = (2.0 * rng.random::<f64>() - 1.0) * aug.max_shift;
            let mut dy = (2.0 * rng.random::<f64>() - 1.0) * aug.max_shift;
            if aug.integer_shifts {
                dx = dx.round();
                dy = dy.round();
            }
            let (sn, cs) = theta.sin_cos();
            // in = R(−θ)·(out − centre − shift)/s + centre
            [cs / s, sn / s, -sn / s, cs / s, dx, dy]
        })
        .collect();
    let mut data = x.as_standard_layout().into_owned();
    let src = data.clone();
    let plane = h * w;
    let (src, dst) = match (src.as_slice(), data.as_slice_mut()) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err(Error::Shape("augmentation needs a contiguous batch".into())),
    };
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    dst.par_chunks_mut(c * plane)
        .zip(src.par_chunks(c * plane))
        .zip(params.par_iter())
        .for_each(|((d, s), &[a, b, cc, dd, dx, dy])| {
            for ch in 0..c {
                let sp = &s[ch * plane..(ch + 1) * plane];
                let dp = &mut d[ch * plane..(ch + 1) * plane];
                for oy in 0..h {
                    for ox in 0..w {
                        let (u, v) = (ox as f64 - cx - dx, oy as f64 - cy - dy);
                        let ix = a * u + b * v + cx;
                        let iy = cc * u + dd * v + cy;
                        dp[oy * w + ox] = bilinear(sp, h, w, iy, ix);
                    }
                }
            }
        });
    *x = data;
    Ok(())
}

/// Bilinear sample of an `h × w` plane at `(y, x)`, zero outside.
fn bilinear(p: &[f64], h: usize, w: usize, y: f64, x: f64) -> f64 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f64, xx: f64| -> f64 {
        if yy < 0.0 || xx < 0.0 || yy >= h as f64 || xx >= w as f64 {
            0.0
        } else {
            p[yy as usize * w + xx as usize]
        }
    };
    (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1.0))
        + fy * ((1.0 - fx) * at(y0 + 1.0, x0) + fx * at(y0 + 1.0, x0 + 1.0))
}

/// Trains `model` in place on `data`; if `eval` is given, its accuracy is reported every
/// [`TrainConfig::eval_every`] epochs and after the last (it is never used to pick weights).
///
/// Fails with [`Error::Model`] if the loss becomes NaN/infinite (lower the learning rate or
/// set [`TrainConfig::clip_grad_norm`]); the model then holds the weights of the last update,
/// the ones that produced the non-finite loss.
pub fn train(
    model: &mut Sequential,
    data: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
) -> Result<TrainReport> {
    cfg.validate()?;
    if data.is_empty() {
        return Err(Error::Data("cannot train on an empty data set".into()));
    }
    let out_shape = model.output_shape(data.inputs.shape())?;
    if out_shape.len() != 2 || out_shape[1] < data.num_classes {
        return Err(Error::Shape(format!(
            "the model outputs shape {out_shape:?} but the data set has {} classes; the last \
             layer must produce [batch, {}]",
            data.num_classes, data.num_classes
        )));
    }
    let n = data.len();
    let spe = n.div_ceil(cfg.batch_size);
    let total = spe * cfg.epochs;
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let mut velocity = Gradients::zeros_like(model);
    cfg.progress.emit(ProgressEvent::Start {
        total: total as u64,
        unit: "steps",
    });
    let start = Instant::now();
    let mut report = TrainReport::default();
    let mut step = 0usize;
    let mut perm: Vec<usize> = (0..n).collect();
    for epoch in 1..=cfg.epochs {
        perm.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        let mut lr = cfg.lr;
        for idx in perm.chunks(cfg.batch_size) {
            let mut x = data.inputs.select(Axis(0), idx);
            if let Some(aug) = &cfg.augment {
                augment_batch(&mut x, aug, &mut rng)?;
            }
            let labels: Vec<usize> = idx.iter().map(|&i| data.labels[i]).collect();
            let (l, c, mut g) = batch_gradients(model, &x, &labels, cfg.loss, cfg.chunk)?;
            if !l.is_finite() {
                cfg.progress.emit(ProgressEvent::Finish);
                return Err(Error::Model(format!(
                    "training diverged at epoch {epoch}, step {step}: the loss is {l}; lower the \
                     learning rate, clip gradients (clip_grad_norm) or scale the inputs down"
                )));
            }
            loss_sum += l;
            correct += c;
            g.scale(1.0 / idx.len() as f64);
            if let Some(max) = cfg.clip_grad_norm {
                let norm = g.norm();
                if norm > max {
                    g.scale(max / norm);
                }
            }
            lr = cfg.lr_at(step, spe);
            sgd_step(model, &mut velocity, &g, lr, cfg.momentum, cfg.weight_decay);
            step += 1;
            cfg.progress.emit(ProgressEvent::Advance);
        }
        let eval_accuracy = match eval {
            Some(e) if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs => {
                Some(model.accuracy(e)?)
            }
            _ => None,
        };
        let stats = EpochStats {
            epoch,
            lr,
            train_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            eval_accuracy,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        let msg = format!(
            "epoch {epoch}/{}: loss {:.4}, train acc {:.2}%{}",
            cfg.epochs,
            stats.train_loss,
            100.0 * stats.train_accuracy,
            stats
                .eval_accuracy
                .map(|a| format!(", eval acc {:.2}%", 100.0 * a))
                .unwrap_or_default()
        );
        cfg.progress.emit(ProgressEvent::Line(&msg));
        report.epochs.push(stats);
    }
    cfg.progress.emit(ProgressEvent::Finish);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// One SGD-with-momentum update (PyTorch semantics): `g ← g + λw; v ← μv + g; w ← w − η v`.
pub fn sgd_step(
    model: &mut Sequential,
    velocity: &mut Gradients,
    grads: &Gradients,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    for ((layer, vs), gs) in model
        .layers_mut()
        .iter_mut()
        .zip(&mut velocity.per_layer)
        .zip(&grads.per_layer)
    {
        for ((mut p, v), g) in layer.params_mut().into_iter().zip(vs.iter_mut()).zip(gs) {
            ndarray::Zip::from(&mut p)
                .and(v)
                .and(g)
                .for_each(|w, v, &g| {
                    *v = momentum * *v + g + weight_decay * *w;
                    *w -= lr * *v;
                });
        }
    }
}

/// Trains a fresh [`Sequential::lenet1`] (initial weights from `cfg.seed`) on `train_set`,
/// reporting accuracy on `eval` if given.
pub fn train_lenet1(
    train_set: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
) -> Result<(Sequential, TrainReport)> {
    let mut model = Sequential::lenet1_with_rng(&mut ChaCha20Rng::seed_from_u64(cfg.seed ^ 0x5eed));
    let report = train(&mut model, train_set, eval, cfg)?;
    Ok((model, report))
}
