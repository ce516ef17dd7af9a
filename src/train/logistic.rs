//! Logistic regression, trained in plaintext or on encrypted data with the same model
//! ([`Sequential`] with one `Linear(d → 1)` layer, see [`model`]) and the same optimizer
//! settings ([`TrainConfig`]: epochs, batch size, learning rate, momentum, seed).
//!
//! * [`train_plain`]: mini-batch gradient descent with momentum on plaintext, with the true
//!   sigmoid or a polynomial one — the reference the encrypted run is checked against.
//! * [`train_encrypted`]: the same steps on CKKS ciphertexts — encrypted features and
//!   labels, encrypted weights and velocity, polynomial sigmoid, block layout (see
//!   [`super`]), data-parallel shards, and a refresh when the weights run out of levels:
//!   by bootstrapping ([`RefreshBy::Bootstrap`], nobody decrypts; with [`sparse_refresh`]'s
//!   parameters the layout is one period of a feature block per batch, tiled over the ring,
//!   and each refresh a sparse-slot bootstrap of that period) or by the key holder
//!   ([`RefreshBy::KeyHolder`], decrypt + re-encrypt).
//!
//! The gradient of both is the one of encrypted logistic regression (Kim et al. 2018):
//! `g = Xᵀ(p(Xw + b) − y)/n` with `p` the sigmoid (or its polynomial fit) — the gradient of
//! the cross-entropy with `p` in place of `σ`. Momentum follows PyTorch's SGD with a constant
//! learning rate: `v ← μv + g, w ← w − ηv`; the encrypted run keeps `v' = ηv`
//! (`v' ← μv' + ηg, w ← w − v'`), the same iterates.
//!
//! Batches are fixed once from `cfg.seed` (the data owner packs and encrypts each batch
//! once); each epoch visits them in a fresh order drawn from the same generator, in both runs.

use std::time::Instant;

use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use super::{
    bce_logit, encrypt_public, eval_poly, poly_depth, BlockLayout, Eval, KeyHolder, PublicEval,
    Refresh, StepStats,
};
use crate::ckks::CkksContext;
use crate::data::Dataset;
use crate::nn::{Gradients, Layer, Linear, PolyActivation, Sequential, TrainConfig};
use crate::progress::ProgressEvent;
use crate::rlwe::Ciphertext;
use crate::{Error, Result};

/// Lowest level the weights may reach (level 0 holds only `q_0/(2Δ)` = 8).
pub const MIN_WEIGHT_LEVEL: usize = 1;

/// A logistic-regression model: one `Linear(d → 1)` layer named `fc`, zero-initialised.
pub fn model(num_features: usize) -> Result<Sequential> {
    let mut m = Sequential::new();
    m.push(
        "fc",
        Linear::from_weights(Array2::zeros((1, num_features)), Array1::zeros(1))?,
    )?;
    Ok(m)
}

/// `(weights, bias)` of a logistic-regression model.
pub fn weights(model: &Sequential) -> Result<(Vec<f64>, f64)> {
    match model.layers() {
        [Layer::Linear(l)] if l.out_features() == 1 => Ok((l.weight.row(0).to_vec(), l.bias[0])),
        _ => Err(Error::Model(
            "logistic regression needs a model with exactly one Linear(d → 1) layer".into(),
        )),
    }
}

/// Sets the weights and bias of a logistic-regression model.
pub fn set_weights(model: &mut Sequential, w: &[f64], b: f64) -> Result<()> {
    match model.layers_mut() {
        [Layer::Linear(l)] if l.out_features() == 1 && l.in_features() == w.len() => {
            l.weight.row_mut(0).assign(&ndarray::ArrayView1::from(w));
            l.bias[0] = b;
            Ok(())
        }
        _ => Err(Error::Model(
            "logistic regression needs a model with exactly one Linear(d → 1) layer".into(),
        )),
    }
}

/// Logits `Xw + b` of a logistic-regression model.
pub fn logits(model: &Sequential, x: &Array2<f64>) -> Result<Vec<f64>> {
    let (w, b) = weights(model)?;
    if x.ncols() != w.len() {
        return Err(Error::Shape(format!(
            "{} features but the model has {} inputs",
            x.ncols(),
            w.len()
        )));
    }
    Ok(x.rows()
        .into_iter()
        .map(|r| r.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + b)
        .collect())
}

/// Accuracy (`z > 0` ⇔ class 1) and mean cross-entropy (true sigmoid) on a data set.
pub fn evaluate(model: &Sequential, data: &Dataset) -> Result<(f64, f64)> {
    let z = logits(model, &data.features)?;
    let n = data.len().max(1) as f64;
    let acc = z
        .iter()
        .zip(&data.labels)
        .filter(|(z, &y)| (**z > 0.0) == (y == 1))
        .count() as f64
        / n;
    let loss = z
        .iter()
        .zip(&data.labels)
        .map(|(&z, &y)| bce_logit(z, y as f64))
        .sum::<f64>()
        / n;
    Ok((acc, loss))
}

/// The fixed mini-batches (index lists) and, per epoch, their visiting order.
pub fn batch_plan(n: usize, cfg: &TrainConfig) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    let batches: Vec<Vec<usize>> = idx
        .chunks(cfg.batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    let orders = (0..cfg.epochs)
        .map(|_| {
            let mut o: Vec<usize> = (0..batches.len()).collect();
            o.shuffle(&mut rng);
            o
        })
        .collect();
    (batches, orders)
}

fn validate(cfg: &TrainConfig, data: &Dataset) -> Result<()> {
    if data.is_empty() {
        return Err(Error::Data("cannot train on an empty data set".into()));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(Error::Model("batch size and epochs must be ≥ 1".into()));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && (0.0..1.0).contains(&cfg.momentum)) {
        return Err(Error::Model(format!(
            "learning rate must be > 0 and momentum in [0, 1); got {} and {}",
            cfg.lr, cfg.momentum
        )));
    }
    Ok(())
}

/// One plaintext step on the samples `idx`: returns the batch logits.
fn plain_step(
    model: &mut Sequential,
    velocity: &mut Gradients,
    data: &Dataset,
    idx: &[usize],
    sigmoid: Option<&PolyActivation>,
    cfg: &TrainConfig,
) -> Result<Vec<f64>> {
    let x = data.features.select(ndarray::Axis(0), idx);
    let z = logits(model, &x)?;
    let d = data.num_features();
    let mut gw = Array2::<f64>::zeros((1, d));
    let mut gb = 0.0;
    for (t, (&zt, &i)) in z.iter().zip(idx).enumerate() {
        let p = match sigmoid {
            Some(poly) => poly.eval(zt),
            None => 1.0 / (1.0 + (-zt).exp()),
        };
        let e = p - data.labels[i] as f64;
        for j in 0..d {
            gw[[0, j]] += e * x[[t, j]];
        }
        gb += e;
    }
    let n = idx.len() as f64;
    let grads = Gradients {
        per_layer: vec![vec![
            (gw / n).into_dyn(),
            Array1::from_elem(1, gb / n).into_dyn(),
        ]],
    };
    crate::nn::train::sgd_step(model, velocity, &grads, cfg.lr, cfg.momentum, 0.0);
    Ok(z)
}

/// Per-epoch statistics.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EpochStats {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean cross-entropy of the training batches (for encrypted runs: from the logits the
    /// key holder decrypted; NaN if not monitored).
    pub train_loss: f64,
    /// Accuracy on the training batches, as for the loss.
    pub train_accuracy: f64,
    /// Accuracy of the (decrypted) weights on the evaluation set, if one was given.
    pub eval_accuracy: Option<f64>,
    /// Seconds since the start of training.
    pub elapsed_s: f64,
}

/// Report of [`train_plain`] / [`train_encrypted`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    /// Per step (encrypted runs only).
    pub steps: Vec<StepStats>,
    /// Per epoch.
    pub epochs: Vec<EpochStats>,
    /// Refreshes performed (by the key holder or by bootstrapping, see `refreshed_by`).
    pub refreshes: usize,
    /// Who refreshed: [`super::Refresh::describe`].
    pub refreshed_by: String,
    /// Ciphertexts the key holder decrypted during training (refreshes and monitoring: each
    /// batch's logits and the weights for the between-epoch evaluation; the final weights,
    /// decrypted after training, are not counted). 0 with bootstrapping and
    /// no monitoring.
    pub decryptions: usize,
    /// Levels one step consumes (encrypted runs).
    pub levels_per_step: usize,
    /// Shards each step was cut into, at most (encrypted runs).
    pub shards: usize,
    /// Rotations one step performs (encrypted runs).
    pub rotations_per_step: usize,
    /// Seconds to encrypt the training set (encrypted runs).
    pub encrypt_seconds: f64,
    /// Seconds of key generation (encrypted runs).
    pub keygen_seconds: f64,
    /// Seconds of training (steps + refreshes + monitor).
    pub train_seconds: f64,
    /// Ciphertexts holding the training set.
    pub data_ciphertexts: usize,
}

fn start_progress(cfg: &TrainConfig, total: usize) {
    cfg.progress.emit(ProgressEvent::Start {
        total: total as u64,
        unit: "steps",
    });
}

fn epoch_line(cfg: &TrainConfig, s: &EpochStats) {
    if !cfg.progress.is_active() {
        return;
    }
    let train = if s.train_loss.is_finite() {
        format!(
            "loss {:.4}, train acc {:.2}%",
            s.train_loss,
            100.0 * s.train_accuracy
        )
    } else {
        "not monitored (no decryptions during training)".into()
    };
    let msg = format!(
        "epoch {}/{}: {train}{}",
        s.epoch,
        cfg.epochs,
        s.eval_accuracy
            .map(|a| format!(", eval acc {:.2}%", 100.0 * a))
            .unwrap_or_default()
    );
    cfg.progress.emit(ProgressEvent::Line(&msg));
}

/// Trains `model` in plaintext with the true sigmoid (`sigmoid = None`) or a polynomial one,
/// with the batches and order of [`batch_plan`].
pub fn train_plain(
    model: &mut Sequential,
    data: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
    sigmoid: Option<&PolyActivation>,
) -> Result<Report> {
    validate(cfg, data)?;
    weights(model)?;
    let (batches, orders) = batch_plan(data.len(), cfg);
    let mut velocity = Gradients::zeros_like(model);
    let start = Instant::now();
    let mut report = Report::default();
    start_progress(cfg, batches.len() * cfg.epochs);
    for (e, order) in orders.iter().enumerate() {
        let (mut loss, mut correct) = (0.0, 0usize);
        for (s, &b) in order.iter().enumerate() {
            let idx = &batches[b];
            let z = plain_step(model, &mut velocity, data, idx, sigmoid, cfg)?;
            check_finite(model, &z, e + 1, s + 1, sigmoid, cfg)?;
            for (&zt, &i) in z.iter().zip(idx) {
                let y = data.labels[i] as f64;
                loss += bce_logit(zt, y);
                correct += usize::from((zt > 0.0) == (y == 1.0));
            }
            cfg.progress.emit(ProgressEvent::Advance);
        }
        let stats = EpochStats {
            epoch: e + 1,
            train_loss: loss / data.len() as f64,
            train_accuracy: correct as f64 / data.len() as f64,
            eval_accuracy: eval.map(|d| evaluate(model, d).map(|r| r.0)).transpose()?,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        epoch_line(cfg, &stats);
        report.epochs.push(stats);
    }
    cfg.progress.emit(ProgressEvent::Finish);
    report.train_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Fails once a step has left the weights non-finite. With a polynomial sigmoid that is how
/// too large a learning rate shows: logits leave the fit interval, where an odd fit turns
/// away from the sigmoid (degree 3 on [-8, 8] is negative beyond z ≈ 11), the error
/// `p(z) − y` grows with `|z|` and each step pushes the logits further out, until they
/// overflow. The error names the step and the largest logit of the batch before it.
fn check_finite(
    model: &Sequential,
    z: &[f64],
    epoch: usize,
    step: usize,
    sigmoid: Option<&PolyActivation>,
    cfg: &TrainConfig,
) -> Result<()> {
    let (w, b) = weights(model)?;
    if w.iter().all(|v| v.is_finite()) && b.is_finite() {
        return Ok(());
    }
    let zmax = z.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let fit = match sigmoid.and_then(|p| p.interval) {
        Some((lo, hi)) => format!(
            "; the polynomial sigmoid is fitted on [{lo}, {hi}] only: lower the learning rate or widen the interval"
        ),
        None => "; lower the learning rate".into(),
    };
    Err(Error::Model(format!(
        "plaintext training diverged: the weights are not finite after step {step} of epoch {epoch} \
         (learning rate {}, momentum {}, largest |logit| of that batch {zmax:.3e}){fit}",
        cfg.lr, cfg.momentum
    )))
}

/// Settings of the encrypted run besides the optimizer's.
#[derive(Clone, Debug)]
pub struct EncryptedOptions {
    /// The polynomial sigmoid (e.g. `PolyActivation::sigmoid(3, (-8.0, 8.0))`).
    pub sigmoid: PolyActivation,
    /// Data-parallel shards per mini-batch, at most (each computes an encrypted partial
    /// gradient). Shards are whole ciphertexts of `B` samples: a batch in fewer ciphertexts
    /// than `workers` uses fewer shards, since splitting one ciphertext's samples over two
    /// would double the work instead of sharing it.
    pub workers: usize,
    /// The key holder decrypts each batch's encrypted logits to report loss and accuracy.
    pub monitor: bool,
    /// How the weights get their levels back.
    pub refresh: RefreshBy,
}

/// Who refreshes the weights when a step would run out of levels.
#[derive(Clone, Debug, Default)]
pub enum RefreshBy {
    /// The key holder decrypts and re-encrypts them (counted as decryptions).
    #[default]
    KeyHolder,
    /// Bootstrapping with these parameters (the context's); the key holder only makes the
    /// public bootstrapping keys at the start.
    Bootstrap(crate::ckks::bootstrap::BootstrapParams),
}

/// One encrypted ciphertext of a batch: features and replicated labels.
#[derive(Clone)]
pub struct BatchCt {
    /// Features divided by the sigmoid's bound `A`: `x[t][j]/A` in slot `j·B + t` (bias
    /// column `1/A` at block `d`), so that the logits come out as `z/A`, the input
    /// [`super::eval_poly`] needs.
    pub x: Ciphertext,
    /// Labels `y[t]` in slot `t` of every block (`p(0)` in the slots without a sample).
    pub y: Ciphertext,
    /// Samples held.
    pub count: usize,
}

/// What one shard (worker) returns for a step: its encrypted partial gradient
/// `(p(z_t) − y_t)·x_t/A` per slot (not yet summed over slots, not yet rescaled) and its
/// encrypted logits.
pub struct ShardOutput {
    /// Partial gradient, one ciphertext in the block layout.
    pub partial: Ciphertext,
    /// Encrypted logits divided by the sigmoid's bound, one per batch ciphertext (for the
    /// key-holder monitor).
    pub logits: Vec<Ciphertext>,
    /// Seconds the shard's computation took where it ran (without any transfer).
    pub compute_seconds: f64,
}

/// The per-shard computation of a data-parallel step: a plain function of public material,
/// encrypted weights and the shard's encrypted batch (what a worker process runs).
///
/// `bound` is the half-width `A` of the sigmoid's fit interval, which the features in `shard`
/// are divided by (see [`BatchCt`]); the returned logits hold `z/A`.
pub fn shard_gradient(
    ev: Eval<'_>,
    layout: &BlockLayout,
    sigmoid: &[f64],
    bound: f64,
    w: &Ciphertext,
    shard: &[BatchCt],
) -> Result<ShardOutput> {
    let start = Instant::now();
    let ctx = ev.ctx;
    let target = ctx.default_scale();
    let per_ct = shard
        .par_iter()
        .map(|b| {
            // Summed over blocks before the rescale (at scale ≈ Δ², where the rotations' noise
            // is negligible): after it, the sum would add `k` rescale errors.
            let prod = ctx.relinearize(&ctx.multiply(w, &b.x)?, ev.relin)?;
            let z = ctx.rescale(&layout.sum_blocks(ev, &prod)?)?;
            let p = eval_poly(ctx, &z, sigmoid, ev.relin, target, bound)?;
            let e = ctx.sub(&p, &b.y)?;
            Ok((ctx.multiply(&e, &b.x)?, z))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut it = per_ct.into_iter();
    let (mut acc, z0) = it
        .next()
        .ok_or_else(|| Error::InvalidInput("empty shard".into()))?;
    let mut logits = vec![z0];
    for (q, z) in it {
        acc = ctx.add(&acc, &q)?;
        logits.push(z);
    }
    // Not rescaled: the slot sums run at scale Δ² (see BlockLayout::reduce_blocks).
    let partial = ctx.relinearize(&acc, ev.relin)?;
    Ok(ShardOutput {
        partial,
        logits,
        compute_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The server's update from the summed partial gradients: reduce over slots times
/// `step = (η/n)·A` (learning rate over batch size, times the bound the features were divided
/// by), then momentum. Returns the new `(w, v)`.
pub fn apply_update(
    ev: Eval<'_>,
    layout: &BlockLayout,
    partials: &[Ciphertext],
    w: &Ciphertext,
    v: Option<&Ciphertext>,
    momentum: f64,
    step: f64,
) -> Result<(Ciphertext, Ciphertext)> {
    let ctx = ev.ctx;
    let mut p = partials
        .first()
        .ok_or_else(|| Error::InvalidInput("no partial gradients".into()))?
        .clone();
    for q in &partials[1..] {
        p = ctx.add(&p, q)?;
    }
    let g = layout.reduce_blocks(ev, &p, ctx.default_scale(), step)?;
    let v = match v {
        Some(v) if momentum != 0.0 => {
            let l = v.level();
            let mv = ctx.rescale(&ctx.multiply_scalar(v, momentum, ctx.level_modulus(l))?)?;
            ctx.add(&mv, &g)?
        }
        _ => g,
    };
    let w = ctx.sub(w, &v)?;
    Ok((w, v))
}

/// [`apply_update`] for a step of `samples` samples with `cfg`'s learning rate and momentum
/// (step size `(η/n)·A`, `A` the bound the features were divided by); `wv`: weights and
/// velocity.
pub fn sgd_update(
    ev: Eval<'_>,
    layout: &BlockLayout,
    partials: &[Ciphertext],
    wv: (&Ciphertext, Option<&Ciphertext>),
    cfg: &TrainConfig,
    samples: usize,
    bound: f64,
) -> Result<(Ciphertext, Ciphertext)> {
    let step = cfg.lr / samples.max(1) as f64 * bound;
    apply_update(ev, layout, partials, wv.0, wv.1, cfg.momentum, step)
}

/// Where the shards of a data-parallel step run: [`InProcess`] (rayon threads of this
/// process) or worker processes (`crate::workers::WorkerPool`, one shard per worker). Every
/// runner computes [`shard_gradient`]; only the transport differs.
pub trait ShardRunner {
    /// Called once with the public material before the first step (a pool sends it to its
    /// workers).
    fn setup(&mut self, ev: &PublicEval) -> Result<()>;
    /// The [`shard_gradient`] output of every shard, in shard order. `batch` names the data:
    /// the same key always comes with the same shards, so a runner may keep them (a worker
    /// pool stores them on its workers the first time and sends only `w` after that).
    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &mut self,
        ev: Eval<'_>,
        layout: &BlockLayout,
        sigmoid: &[f64],
        bound: f64,
        w: &Ciphertext,
        batch: usize,
        shards: &[Vec<BatchCt>],
    ) -> Result<Vec<ShardOutput>>;
}

/// Shards on rayon threads in this process.
pub struct InProcess;

impl ShardRunner for InProcess {
    fn setup(&mut self, _: &PublicEval) -> Result<()> {
        Ok(())
    }

    fn run_step(
        &mut self,
        ev: Eval<'_>,
        layout: &BlockLayout,
        sigmoid: &[f64],
        bound: f64,
        w: &Ciphertext,
        _batch: usize,
        shards: &[Vec<BatchCt>],
    ) -> Result<Vec<ShardOutput>> {
        shards
            .par_iter()
            .map(|s| shard_gradient(ev, layout, sigmoid, bound, w, s))
            .collect()
    }
}

/// The block layout an encrypted run on `d` features uses in `ctx`.
pub fn layout_for(ctx: &CkksContext, d: usize) -> Result<BlockLayout> {
    BlockLayout::new(ctx.slots(), d + 1, 1)
}

/// The block layout of a run refreshed by `refresh`: [`layout_for`], or with a sparse-slot
/// bootstrap a layout of the bootstrap's period, tiled over the ring
/// ([`BlockLayout::tile`]), so that the weights repeat with that period.
pub fn layout_for_refresh(ctx: &CkksContext, d: usize, refresh: &RefreshBy) -> Result<BlockLayout> {
    match refresh {
        RefreshBy::Bootstrap(bp) if bp.is_sparse() => BlockLayout::new(bp.slots(), d + 1, 1),
        _ => layout_for(ctx, d),
    }
}

/// `bp` made sparse for training `d` features in batches of `batch` samples over up to
/// `workers` shards: the period holds one block per feature (and the bias), each of the
/// smallest power of two of samples that still lets a batch split into `workers`
/// ciphertexts. A sparse bootstrap is cheaper (transforms of `log2` period stages, one
/// EvalMod) and more precise; with the layout of [`layout_for_refresh`] the steps rotate
/// over shorter blocks too. `bp` unchanged where the period would exceed `N/4`.
pub fn sparse_refresh(
    bp: crate::ckks::bootstrap::BootstrapParams,
    d: usize,
    batch: usize,
    workers: usize,
) -> Result<crate::ckks::bootstrap::BootstrapParams> {
    let block = batch.div_ceil(workers.max(1)).max(1).next_power_of_two();
    let period = (d + 1).next_power_of_two().saturating_mul(block);
    if period <= bp.ckks().n() / 4 {
        bp.sparse(period)
    } else {
        Ok(bp)
    }
}

/// Shards a step of `batch` samples is cut into with up to `workers` workers: one per
/// ciphertext of `B` samples at most (see [`EncryptedOptions::workers`]).
pub fn shards_per_step(layout: &BlockLayout, batch: usize, workers: usize) -> usize {
    workers.clamp(1, batch.div_ceil(layout.block).max(1))
}

/// The half-width `A` of the sigmoid's fit interval (8 without one): the logits are
/// evaluated as `z/A` (see [`super::eval_poly`]).
pub fn sigmoid_bound(sigmoid: &PolyActivation) -> f64 {
    sigmoid
        .interval
        .map(|(lo, hi)| lo.abs().max(hi.abs()))
        .unwrap_or(8.0)
}

/// Levels an encrypted step consumes with a sigmoid of this degree.
pub fn levels_per_step(degree: usize) -> usize {
    3 + poly_depth(degree)
}

/// Trains `model` on encrypted data. The key holder encrypts the initial weights, performs
/// the refreshes and (if `opts.monitor`) decrypts each batch's logits to report loss and
/// accuracy; the data are packed in the block layout and encrypted under the public key;
/// every step runs on ciphertexts only. At the end the key holder decrypts the weights into
/// `model`. The shards run in this process; see [`train_encrypted_with`] for workers.
pub fn train_encrypted(
    model: &mut Sequential,
    data: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
    opts: &EncryptedOptions,
    holder: &KeyHolder,
) -> Result<Report> {
    train_encrypted_with(model, data, eval, cfg, opts, holder, &mut InProcess)
}

/// [`train_encrypted`] with the shards of each step run by `runner` (e.g. a
/// `crate::workers::WorkerPool`): same steps, same ciphertexts.
pub fn train_encrypted_with(
    model: &mut Sequential,
    data: &Dataset,
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
    opts: &EncryptedOptions,
    holder: &KeyHolder,
    runner: &mut dyn ShardRunner,
) -> Result<Report> {
    validate(cfg, data)?;
    let (w0, b0) = weights(model)?;
    let d = data.num_features();
    if w0.len() != d {
        return Err(Error::Shape(format!(
            "{d} features but the model has {} inputs",
            w0.len()
        )));
    }
    opts.sigmoid.validate()?;
    let ctx: &CkksContext = holder.ctx();
    let layout = layout_for_refresh(ctx, d, &opts.refresh)?;
    let shards = shards_per_step(&layout, cfg.batch_size, opts.workers);
    let per_shard = layout.block * cfg.batch_size.div_ceil(layout.block).div_ceil(shards);
    let need = levels_per_step(opts.sigmoid.degree());
    // With bootstrapping, refreshed weights come back below the top of the chain.
    let refreshed_level = match &opts.refresh {
        RefreshBy::KeyHolder => ctx.max_level(),
        RefreshBy::Bootstrap(bp) => bp.output_level(),
    };
    if refreshed_level < need + MIN_WEIGHT_LEVEL {
        return Err(Error::InvalidParameters(format!(
            "an encrypted step with a degree-{} sigmoid needs {need} levels above level \
             {MIN_WEIGHT_LEVEL}, a refreshed ciphertext has {refreshed_level}; use log2 N ≥ 14 or a lower degree",
            opts.sigmoid.degree(),
        )));
    }
    let mut report = Report {
        levels_per_step: need,
        shards,
        ..Report::default()
    };
    let t = Instant::now();
    let ev = holder.public_eval(&layout)?;
    let bootstrapper = match &opts.refresh {
        RefreshBy::KeyHolder => None,
        RefreshBy::Bootstrap(bp) => Some(holder.bootstrapper(bp)?),
    };
    let refresher: &dyn Refresh = match &bootstrapper {
        Some(b) => b,
        None => holder,
    };
    report.refreshed_by = refresher.describe().to_string();
    report.keygen_seconds = t.elapsed().as_secs_f64();
    runner.setup(&ev)?;

    let bound = sigmoid_bound(&opts.sigmoid);
    // The data owner packs and encrypts every batch once: shards of ≤ per_shard samples, each
    // in ⌈·/B⌉ ciphertexts, features divided by the sigmoid's bound (see `BatchCt`).
    let t = Instant::now();
    let (batches, orders) = batch_plan(data.len(), cfg);
    let slots = ctx.slots();
    let mut enc_batches: Vec<Vec<Vec<BatchCt>>> = Vec::with_capacity(batches.len());
    for idx in &batches {
        let shards = idx
            .chunks(per_shard)
            .map(|part| {
                part.par_chunks(layout.block)
                    .map(|chunk| {
                        let rows: Vec<Vec<f64>> = chunk
                            .iter()
                            .map(|&i| {
                                let mut r: Vec<f64> =
                                    data.features.row(i).iter().map(|v| v / bound).collect();
                                r.push(1.0 / bound);
                                r
                            })
                            .collect();
                        let ys: Vec<f64> = chunk.iter().map(|&i| data.labels[i] as f64).collect();
                        let x =
                            encrypt_public(&ev, &layout.tile(&layout.pack_rows(&rows)?, slots)?)?;
                        // Padding slots (no sample: z = 0) get the label p(0), so their error
                        // p(0) − y is 0 and the noise of x there adds nothing.
                        let y = layout.replicate_samples(&ys, opts.sigmoid.coeffs[0])?;
                        let y = encrypt_public(&ev, &layout.tile(&y, slots)?)?;
                        Ok(BatchCt {
                            x,
                            y,
                            count: chunk.len(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        enc_batches.push(shards);
    }
    report.data_ciphertexts = 2 * enc_batches.iter().flatten().flatten().count();
    report.encrypt_seconds = t.elapsed().as_secs_f64();

    let mut wb = w0.clone();
    wb.push(b0);
    let mut w = holder.encrypt(&layout.tile(&layout.replicate_blocks(&wb)?, slots)?)?;
    let mut v: Option<Ciphertext> = None;
    let coeffs = opts.sigmoid.coeffs.clone();
    let log_b = layout.block.trailing_zeros() as usize;
    let log_k = layout.blocks.trailing_zeros() as usize;
    let start = Instant::now();
    start_progress(cfg, batches.len() * cfg.epochs);
    let mut step = 0usize;
    for (e, order) in orders.iter().enumerate() {
        let (mut loss, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for &bi in order {
            step += 1;
            let shards = &enc_batches[bi];
            let mut refreshed = false;
            if w.level() < need + MIN_WEIGHT_LEVEL {
                let mut cts = vec![w.clone()];
                cts.extend(v.iter().cloned());
                let fresh = refresher.refresh(&cts)?;
                if bootstrapper.is_none() {
                    report.decryptions += cts.len();
                }
                w = fresh[0].clone();
                v = fresh.get(1).cloned();
                refreshed = true;
                report.refreshes += 1;
            }
            let level_before = w.level();
            let ts = Instant::now();
            let outs = runner.run_step(ev.eval(), &layout, &coeffs, bound, &w, bi, shards)?;
            let partials: Vec<Ciphertext> = outs.iter().map(|o| o.partial.clone()).collect();
            let (nw, nv) = sgd_update(
                ev.eval(),
                &layout,
                &partials,
                (&w, v.as_ref()),
                cfg,
                batches[bi].len(),
                bound,
            )?;
            w = nw;
            v = Some(nv);
            let seconds = ts.elapsed().as_secs_f64();
            let n_cts: usize = shards.iter().map(|s| s.len()).sum();
            report.rotations_per_step = n_cts * log_k + 2 * log_b;
            let (mut bl, mut bc) = (f64::NAN, f64::NAN);
            if opts.monitor {
                let idx = &batches[bi];
                let mut zs = Vec::with_capacity(idx.len());
                for (o, s) in outs.iter().zip(shards) {
                    for (zc, b) in o.logits.iter().zip(s) {
                        let dec = holder.decrypt(zc)?;
                        report.decryptions += 1;
                        zs.extend(dec[..b.count].iter().map(|z| z * bound));
                    }
                }
                let (mut l, mut c) = (0.0, 0usize);
                for (&z, &i) in zs.iter().zip(idx) {
                    let y = data.labels[i] as f64;
                    l += bce_logit(z, y);
                    c += usize::from((z > 0.0) == (y == 1.0));
                }
                loss += l;
                correct += c;
                seen += idx.len();
                bl = l / idx.len() as f64;
                bc = c as f64 / idx.len() as f64;
            }
            report.steps.push(StepStats {
                step,
                epoch: e + 1,
                samples: batches[bi].len(),
                loss: bl,
                accuracy: bc,
                level_before,
                level_after: w.level(),
                refreshed,
                seconds,
                shard_seconds: outs.iter().map(|o| o.compute_seconds).fold(0.0, f64::max),
            });
            cfg.progress.emit(ProgressEvent::Advance);
        }
        // Evaluating between epochs decrypts the weights: monitoring, not done in a run that
        // must decrypt nothing during training, and counted.
        let eval_accuracy = match eval.filter(|_| opts.monitor) {
            Some(d) => {
                let (wd, bd) = decrypt_weights(holder, &layout, &w, data.num_features())?;
                report.decryptions += 1;
                let mut m = model.clone();
                set_weights(&mut m, &wd, bd)?;
                Some(evaluate(&m, d)?.0)
            }
            None => None,
        };
        let stats = EpochStats {
            epoch: e + 1,
            train_loss: if seen > 0 {
                loss / seen as f64
            } else {
                f64::NAN
            },
            train_accuracy: if seen > 0 {
                correct as f64 / seen as f64
            } else {
                f64::NAN
            },
            eval_accuracy,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        epoch_line(cfg, &stats);
        report.epochs.push(stats);
    }
    cfg.progress.emit(ProgressEvent::Finish);
    let (wd, bd) = decrypt_weights(holder, &layout, &w, d)?;
    set_weights(model, &wd, bd)?;
    report.train_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The key holder reads the weights: the mean of each block (all its slots hold `w_j`).
pub fn decrypt_weights(
    holder: &KeyHolder,
    layout: &BlockLayout,
    w: &Ciphertext,
    d: usize,
) -> Result<(Vec<f64>, f64)> {
    Ok(block_means(layout, &holder.decrypt(w)?, d))
}

/// The weights in decrypted slots `v` of the weights' layout: the mean of each block (all
/// its slots hold `w_j`), `d` weights and the bias.
pub fn block_means(layout: &BlockLayout, v: &[f64], d: usize) -> (Vec<f64>, f64) {
    let mean = |j: usize| {
        v[j * layout.block..(j + 1) * layout.block]
            .iter()
            .sum::<f64>()
            / layout.block as f64
    };
    ((0..d).map(mean).collect(), mean(d))
}
