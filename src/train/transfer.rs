//! Transfer learning on MNIST (issue #7, part 3): LeNet-1 is pretrained in plaintext on the
//! **public** digits 0-4, its convolutional part is frozen, and a new linear head for the
//! **private** digits 5-9 is trained on encrypted features and labels with the MSE loss.
//!
//! # Pipeline
//! 1. [`pretrain`]: plaintext LeNet-1 on digits 0-4 ([`pretrain_config`]).
//! 2. [`FeatureExtractor`]: the layers up to the last square; the per-channel feature
//!    standardization (measured on the public digits) is folded into `conv2`'s weights and
//!    the 2x2 average pooling becomes a sum, so the encrypted extraction costs 4 levels
//!    (conv1, square, conv2, square) and no extra multiplication.
//! 3. The data owner encrypts its images (batched: one image per slot) and one-hot labels;
//!    the server extracts the 192 features encrypted ([`FeatureExtractor::extract_encrypted`]):
//!    one ciphertext per feature, samples in slots — **feature-major**.
//! 4. The key holder refreshes the features once (decrypt + re-encrypt at level 3,
//!    [`refresh_features`]): the extraction ends at level 2, one short of a training step.
//! 5. [`train_head_encrypted`]: mini-batch SGD with momentum on the encrypted head. Each weight
//!    `w_cj` (and its velocity) is one ciphertext holding the value in every slot, so
//!    * logits `Z_c = Σ_j w_cj ⊙ X_j + b_c`: ciphertext products summed **before** one
//!      relinearization and one rescale per class — no rotation;
//!    * error `E_c = Z_c − Y_c`;
//!    * gradient `G_cj = Σ_t E_c[t]·(η/|B|)·X_j[t]·[t ∈ B]`: the learning rate, the 1/|B| and
//!      the mini-batch mask are one plaintext multiplying `X_j` (the batch is a subset of
//!      slots, so the data is encrypted once), then `log2(N/2)` rotate-and-adds leave the sum
//!      **in every slot** — exactly the layout of the weights, no mask or replication needed;
//!    * `v ← μv + G`, `w ← w − v` (PyTorch momentum with `v` pre-multiplied by η).
//!
//! # Levels, the refresh and precision
//! CKKS N = 2^13, 6 levels of 2^26, one 30-bit special prime ([`transfer_params`], 128-bit).
//! A step takes the weights from level 3 to 0: logits (3 → 2), gradient product (2 → 1,
//! rotations at level 1: 2 limbs, ~2 ms each against ~14 ms at the top), and a last exact
//! rescale onto the weights' scale (1 → 0). The **key holder refreshes** weights and
//! velocities before every step (decrypt + re-encrypt straight to levels 3 and 1,
//! [`KeyHolder::refresh_at`]): `2·classes·(d+1)` ciphertexts per step, counted and reported.
//! Bootstrapping would replace it.
//!
//! Precision, measured: a rescale to 2^26 adds ~1e-4 per slot and a rotation ~1e-3 at
//! scale 2^26, so every small quantity is kept at a large scale until the last rescale —
//! `η/|B|` (~3e-5) is encoded in the mask at scale ~2^48, the rotation sums run at ~2^48 —
//! and the remaining error is the last rescale's ~1e-4 per weight and step (updates ~1e-2).
//!
//! The plaintext reference ([`train_head_plain`]) runs the same [`Sequential`] head with the
//! same [`TrainConfig`] on the same mini-batches (drawn from `cfg.seed`).
//!
//! # Without a key holder
//! [`train_head_steps`] runs the same steps with any [`Refresh`] and a base level
//! ([`HeadRun`]): with the collective refresh of [`crate::mhe`] (two key-share holders,
//! `hetensor train mnist-transfer --parties 2`) the masks need room, so the weights stop at
//! level 1 of [`transfer_parties_params`] (N = 2^14, a 60-bit base) instead of 0, the features
//! need no refresh, and the trained head is re-encrypted to the data owner
//! ([`crate::workers::session::Coordinator::reencrypt_to`]) instead of being decrypted.

use std::time::Instant;

use ndarray::{Array1, Array2, Axis, Ix2, Ix4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use super::{encrypt_public, KeyHolder, PublicEval, Refresh, StepStats};
use crate::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use crate::lower::{CkksBatched, LayerTiming, Plan};
use crate::nn::train::{batch_gradients, sgd_step};
use crate::nn::{
    Dataset as ImageSet, Gradients, Layer, Linear, Loss, Sequential, Tensor, TrainConfig,
};
use crate::progress::ProgressEvent;
use crate::rlwe::{Ciphertext, Security};
use crate::tensor::{CipherTensor, EncryptionKey};
use crate::{Error, Result};

/// Digits of the public pretraining task.
pub const PUBLIC_DIGITS: std::ops::Range<usize> = 0..5;
/// Digits of the private fine-tuning task.
pub const PRIVATE_DIGITS: std::ops::Range<usize> = 5..10;

/// CKKS parameters of the transfer workload: N = 2^13 (4096 images per ciphertext), 6 levels
/// of 2^26 over a 30-bit base prime, one 30-bit special prime (log2 QP = 216 ≤ 218,
/// 128-bit). Four levels go to the feature extraction, two to each training step.
pub fn transfer_params() -> Result<CkksParams> {
    CkksParams::single_prime(SinglePrimeChain {
        log_n: 13,
        levels: 6,
        scale_bits: 26,
        dnum: 7,
        security: Security::Bits128,
        ..Default::default()
    })
}

/// CKKS parameters of the transfer workload **without a key holder** (`--parties`): N = 2^14
/// (one block of 8192 images), a 60-bit base (two primes), 8 levels of 2^26, 128-bit (the
/// builder picks the digits). The collective refresh masks each weight and velocity with
/// λ = 40 bits: `⌈40 + log2 N + 26 + HEAD_VALUE_LOG2 + 2⌉ = 82`-bit masks, and two parties
/// need `log2 Q_ℓ ≥ 85` at the refresh level ([`crate::mhe::RefreshParams::min_log_q`]): the
/// base plus one level (86 bits) is the lowest, so a step leaves the weights at level 1
/// ([`HeadRun::base`]) and the features, extracted from level 8 in 4 levels, sit exactly at
/// level 4 = 1 + 3 without a refresh. N = 2^13 has no such chain: its 218 bits hold 6 levels
/// over a 30-bit base, and the features would need a refresh at level 2 (82 bits).
pub fn transfer_parties_params() -> Result<CkksParams> {
    CkksParams::builder()
        .log_n(14)
        .depth(8)
        .scale_bits(26)
        .base_bits(60)
        .build()
}

/// log2 of the bound on the head's weights and velocities the refresh masks are sized for
/// (|w|, |v| < 1; the trained head's largest weight is ~0.07, BENCHMARKS.md).
pub const HEAD_VALUE_LOG2: f64 = 0.0;

/// The samples of `data` whose label is in `digits`, relabelled `0..digits.len()`.
pub fn digits_subset(data: &ImageSet, digits: std::ops::Range<usize>) -> Result<ImageSet> {
    let idx: Vec<usize> = (0..data.len())
        .filter(|&i| digits.contains(&data.labels[i]))
        .collect();
    let sub = data.select(&idx)?;
    let labels = sub.labels.iter().map(|l| l - digits.start).collect();
    ImageSet::new(sub.inputs, labels, digits.len())
}

/// The pretraining recipe: LeNet-1's ([`TrainConfig::lenet1`]: momentum SGD, cosine decay,
/// augmentation) shortened to 10 epochs, which reach 99.6 % on the test digits 0-4.
pub fn pretrain_config() -> TrainConfig {
    TrainConfig {
        epochs: 10,
        eval_every: 10,
        ..TrainConfig::lenet1()
    }
}

/// Pretrains LeNet-1 on `public` (labels `0..5`) and balances its square activations
/// ([`Sequential::balance_squares`], target 3) so that the encrypted values stay small.
pub fn pretrain(public: &ImageSet, cfg: &TrainConfig) -> Result<Sequential> {
    let (mut model, _) = crate::nn::train::train_lenet1(public, None, cfg)?;
    model.balance_squares(&public.inputs, 3.0)?;
    Ok(model)
}

/// The frozen convolutional part of a pretrained model, with the feature standardization
/// folded in. For a model ending `Conv2d, Square, AvgPool2d(k), Flatten, Linear` (LeNet-1):
/// feature `j` of channel `c` is `a_c·(avgpool_j − μ_j)` with `μ_j` the mean and `a_c` the
/// inverse RMS standard deviation of channel `c`'s features on the **public** data (nothing
/// about the private digits is used). `a_c/k²` is folded into the last convolution
/// (`√a_c/k` on its weights and bias, squared by the activation), the pooling becomes a sum,
/// and `a_c μ_j` is subtracted after it: no level is spent on the standardization.
#[derive(Clone, Debug)]
pub struct FeatureExtractor {
    /// The layers up to the last square, last convolution rescaled.
    pub conv: Sequential,
    /// Pooling window `k` (summed, not averaged).
    pub pool: usize,
    /// `a_c μ_j`, subtracted from each summed feature.
    pub shift: Vec<f64>,
}

impl FeatureExtractor {
    /// Builds the extractor from a pretrained model and the public inputs (`[n, 1, 28, 28]`).
    pub fn new(model: &Sequential, public_inputs: &Tensor) -> Result<Self> {
        let layers: Vec<(&str, &Layer)> = model.iter().collect();
        let m = layers.len();
        let (conv_idx, k) = match &layers[m.saturating_sub(5)..] {
            [(_, Layer::Conv2d(_)), (_, Layer::Square(_)), (_, Layer::AvgPool2d(p)), (_, Layer::Flatten(_)), (_, Layer::Linear(_))] => {
                (m - 5, p.kernel)
            }
            _ => {
                return Err(Error::Model(
                    "transfer learning needs a model ending Conv2d, Square, AvgPool2d, Flatten, \
                     Linear (like LeNet-1)"
                        .into(),
                ))
            }
        };
        // Raw features (average-pooled, flattened) on the public data.
        let mut feat = Sequential::new();
        for (name, layer) in &layers[..m - 1] {
            feat.push(*name, (*layer).clone())?;
        }
        let raw = feat
            .forward_par(public_inputs, 64)?
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::Shape("features must be [n, d]".into()))?;
        let mean = raw
            .mean_axis(Axis(0))
            .ok_or_else(|| Error::Data("no public samples to measure the features on".into()))?;
        let var = raw.var_axis(Axis(0), 0.0);
        let Layer::Conv2d(c2) = layers[conv_idx].1 else {
            return Err(Error::Model("internal: expected Conv2d".into()));
        };
        let channels = c2.out_ch;
        let per = raw.ncols() / channels;
        let mut conv = Sequential::new();
        for (name, layer) in &layers[..conv_idx + 2] {
            conv.push(*name, (*layer).clone())?;
        }
        let mut shift = vec![0.0; raw.ncols()];
        let mut scales = vec![1.0; channels];
        for (c, scale) in scales.iter_mut().enumerate() {
            let v = var
                .slice(ndarray::s![c * per..(c + 1) * per])
                .mean()
                .unwrap_or(1.0);
            let a = if v > 1e-18 { 1.0 / v.sqrt() } else { 1.0 };
            *scale = a.sqrt() / k as f64;
            for j in c * per..(c + 1) * per {
                shift[j] = a * mean[j];
            }
        }
        if let Some(Layer::Conv2d(c)) = conv.layers_mut().get_mut(conv_idx) {
            for (o, s) in scales.iter().enumerate() {
                c.weight.index_axis_mut(Axis(0), o).mapv_inplace(|w| w * s);
                c.bias[o] *= s;
            }
        }
        Ok(Self {
            conv,
            pool: k,
            shift,
        })
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.shift.len()
    }

    /// Levels the encrypted extraction uses.
    pub fn levels(&self) -> Result<usize> {
        Ok(Plan::from_sequential(&self.conv, &[1, 28, 28])?.depth())
    }

    /// Indices `(c·H·W + y·W + x)` of the inputs of each pooled feature, in flatten order.
    fn pool_windows(&self, shape: &[usize]) -> Result<Vec<Vec<usize>>> {
        let [ch, h, w] = shape else {
            return Err(Error::Shape(format!(
                "feature maps must be [C, H, W], got {shape:?}"
            )));
        };
        let k = self.pool;
        let (oh, ow) = (h / k, w / k);
        if ch * oh * ow != self.features() {
            return Err(Error::Shape(format!(
                "{} feature maps pool to {} features, expected {}",
                shape.iter().product::<usize>(),
                ch * oh * ow,
                self.features()
            )));
        }
        Ok((0..ch * oh * ow)
            .map(|o| {
                let (c, y, x) = (o / (oh * ow), (o / ow) % oh, o % ow);
                (0..k * k)
                    .map(|d| c * h * w + (y * k + d / k) * w + x * k + d % k)
                    .collect()
            })
            .collect())
    }

    /// Standardized features `[n, d]` of images `[n, 1, 28, 28]`, in plaintext.
    pub fn extract(&self, x: &Tensor) -> Result<Array2<f64>> {
        let maps = self
            .conv
            .forward_par(x, 64)?
            .into_dimensionality::<Ix4>()
            .map_err(|_| Error::Shape("the convolutional part must output [n, C, H, W]".into()))?;
        let (n, c, h, w) = maps.dim();
        let windows = self.pool_windows(&[c, h, w])?;
        let flat = maps
            .into_shape_with_order((n, c * h * w))
            .map_err(|e| Error::Shape(e.to_string()))?;
        let mut out = Array2::zeros((n, self.features()));
        for (mut row, src) in out.axis_iter_mut(Axis(0)).zip(flat.axis_iter(Axis(0))) {
            for (j, win) in windows.iter().enumerate() {
                row[j] = win.iter().map(|&i| src[i]).sum::<f64>() - self.shift[j];
            }
        }
        Ok(out)
    }

    /// The same features computed on an encrypted batch (batched layout, top level): one
    /// relinearized ciphertext per feature at level `top − 4`.
    pub fn extract_encrypted(
        &self,
        ev: &PublicEval,
        images: CipherTensor,
        timing: &mut LayerTiming,
    ) -> Result<Vec<Ciphertext>> {
        let ctx = &ev.ctx;
        let plan = Plan::from_sequential(&self.conv, images.shape())?;
        let maps = CkksBatched::new(&plan, ctx, &ev.relin)?.forward_with(
            &images,
            &crate::progress::Progress::none(),
            Some(timing),
        )?;
        let t = Instant::now();
        let windows = self.pool_windows(maps.shape())?;
        let cts = maps.ciphertexts();
        let out = windows
            .par_iter()
            .zip(&self.shift)
            .map(|(win, &sh)| {
                let mut acc = cts[win[0]].clone();
                for &i in &win[1..] {
                    acc = ctx.add(&acc, &cts[i])?;
                }
                ctx.relinearize(&ctx.add_scalar(&acc, -sh)?, &ev.relin)
            })
            .collect::<Result<Vec<_>>>()?;
        timing
            .layers
            .push(("pool+standardize".into(), t.elapsed().as_secs_f64()));
        Ok(out)
    }
}

/// A new head `Linear(d → classes)` named `head`, zero-initialised.
pub fn head(features: usize, classes: usize) -> Result<Sequential> {
    Sequential::new().with(
        "head",
        Linear::from_weights(Array2::zeros((classes, features)), Array1::zeros(classes))?,
    )
}

fn head_linear(model: &Sequential) -> Result<&Linear> {
    match model.layers() {
        [Layer::Linear(l)] => Ok(l),
        _ => Err(Error::Model(
            "a transfer head is a model with exactly one Linear layer".into(),
        )),
    }
}

/// The head's `(weight [classes, d], bias [classes])`.
pub fn head_weights(model: &Sequential) -> Result<(Array2<f64>, Array1<f64>)> {
    let l = head_linear(model)?;
    Ok((l.weight.clone(), l.bias.clone()))
}

/// Accuracy of a head on features `[n, d]`.
pub fn head_accuracy(model: &Sequential, x: &Array2<f64>, labels: &[usize]) -> Result<f64> {
    let pred = model.predict(&x.clone().into_dyn())?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len().max(1) as f64)
}

/// The mini-batches of one epoch: `0..n` shuffled by `rng`, cut into `batch`-sized pieces.
/// Both trainers draw them the same way from `ChaCha20Rng::seed_from_u64(cfg.seed)`.
pub fn epoch_batches(n: usize, batch: usize, rng: &mut ChaCha20Rng) -> Vec<Vec<usize>> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    perm.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}

fn check_cfg(cfg: &TrainConfig, n: usize) -> Result<()> {
    check_sgd(n, cfg.batch_size, cfg.epochs, cfg.lr, cfg.momentum)
}

/// The head trainers' shared check of their SGD settings ([`super::packed_head`] too).
pub(crate) fn check_sgd(
    n: usize,
    batch: usize,
    epochs: usize,
    lr: f64,
    momentum: f64,
) -> Result<()> {
    if n == 0 || batch == 0 || epochs == 0 {
        return Err(Error::InvalidInput(
            "head training needs samples, a batch size ≥ 1 and epochs ≥ 1".into(),
        ));
    }
    if !(lr.is_finite() && lr > 0.0 && (0.0..1.0).contains(&momentum)) {
        return Err(Error::InvalidInput(format!(
            "learning rate must be > 0 and momentum in [0, 1), got {lr} and {momentum}"
        )));
    }
    Ok(())
}

/// Trains the head in plaintext with the MSE loss on one-hot labels: the reference of
/// [`train_head_encrypted`] (same batches, constant `cfg.lr`, `cfg.momentum`, no weight
/// decay). Returns the mean loss and accuracy of each step's batch (before its update).
pub fn train_head_plain(
    model: &mut Sequential,
    x: &Array2<f64>,
    labels: &[usize],
    cfg: &TrainConfig,
) -> Result<Vec<(f64, f64)>> {
    check_cfg(cfg, labels.len())?;
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let batches: Vec<Vec<usize>> = (0..cfg.epochs)
        .flat_map(|_| epoch_batches(labels.len(), cfg.batch_size, &mut rng))
        .collect();
    train_head_plain_batches(model, x, labels, &batches, cfg)
}

/// [`train_head_plain`] on given mini-batches (sample indices, all epochs in turn): the
/// reference of a trainer that draws its batches differently
/// ([`super::packed_head::epoch_ranges`]). `cfg`'s epochs, batch size and seed are not used.
pub fn train_head_plain_batches(
    model: &mut Sequential,
    x: &Array2<f64>,
    labels: &[usize],
    batches: &[Vec<usize>],
    cfg: &TrainConfig,
) -> Result<Vec<(f64, f64)>> {
    check_cfg(cfg, labels.len())?;
    let mut vel = Gradients::zeros_like(model);
    let mut out = Vec::new();
    for b in batches {
        if b.iter().any(|&i| i >= labels.len()) || b.is_empty() {
            return Err(Error::InvalidInput(format!(
                "a mini-batch of {} samples with an index beyond the {} samples",
                b.len(),
                labels.len()
            )));
        }
        let xb = x.select(Axis(0), b).into_dyn();
        let lb: Vec<usize> = b.iter().map(|&i| labels[i]).collect();
        let (l, c, mut g) = batch_gradients(model, &xb, &lb, Loss::Mse, cfg.chunk)?;
        g.scale(1.0 / b.len() as f64);
        sgd_step(model, &mut vel, &g, cfg.lr, cfg.momentum, 0.0);
        out.push((l / b.len() as f64, c as f64 / b.len() as f64));
    }
    Ok(out)
}

/// The private training set as the server holds it: feature-major ciphertexts.
pub struct EncryptedSet {
    /// Per block of `N/2` samples: the `d` features, then the constant 1 (0 in unused slots)
    /// of the bias; all relinearized, at one level and scale.
    pub features: Vec<Vec<Ciphertext>>,
    /// Per block: one ciphertext per class holding the one-hot labels.
    pub labels: Vec<Vec<Ciphertext>>,
    /// Number of samples (sample `i` is slot `i mod N/2` of block `i / (N/2)`).
    pub samples: usize,
}

/// What the data owner sends: its images encrypted under the public key (one block of
/// `N/2` images per [`CipherTensor`]) and the one-hot labels (one ciphertext per class and
/// block).
pub struct OwnerUpload {
    /// Encrypted images per block.
    pub images: Vec<CipherTensor>,
    /// Encrypted one-hot labels per block.
    pub labels: Vec<Vec<Ciphertext>>,
    /// Number of samples.
    pub samples: usize,
}

/// The data owner's side: encrypts images `[n, 1, 28, 28]` and labels `< classes` with the
/// public key.
pub fn encrypt_upload(
    ev: &PublicEval,
    images: &Tensor,
    labels: &[usize],
    classes: usize,
) -> Result<OwnerUpload> {
    let n = labels.len();
    if images.shape().first() != Some(&n) || n == 0 {
        return Err(Error::Shape(format!(
            "{} labels for images of shape {:?}",
            n,
            images.shape()
        )));
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::Data(format!("label {l} ≥ {classes} classes")));
    }
    let s = ev.ctx.slots();
    let mut out = OwnerUpload {
        images: Vec::new(),
        labels: Vec::new(),
        samples: n,
    };
    for lo in (0..n).step_by(s) {
        let hi = (lo + s).min(n);
        let x = images.slice_axis(Axis(0), (lo..hi).into()).to_owned();
        out.images.push(CipherTensor::encrypt_batched(
            &ev.ctx,
            EncryptionKey::Public(&ev.public),
            &x,
        )?);
        let y = (0..classes)
            .into_par_iter()
            .map(|c| {
                let v: Vec<f64> = (lo..hi).map(|i| f64::from(labels[i] == c)).collect();
                encrypt_public(ev, &v)
            })
            .collect::<Result<Vec<_>>>()?;
        out.labels.push(y);
    }
    Ok(out)
}

/// The server's side of step 3: extracts the encrypted features of every block and adds the
/// bias's constant-1 ciphertext (encrypted by the server under the public key).
pub fn extract_set(
    fx: &FeatureExtractor,
    ev: &PublicEval,
    upload: OwnerUpload,
    timing: &mut LayerTiming,
) -> Result<EncryptedSet> {
    let mut features = Vec::new();
    for img in upload.images {
        let b = img.batch();
        let mut f = fx.extract_encrypted(ev, img, timing)?;
        let (l, sc) = (f[0].level(), f[0].scale());
        let ones: Vec<f64> = vec![1.0; b];
        let one = ev.ctx.match_scale(&encrypt_public(ev, &ones)?, l, sc)?;
        f.push(one);
        features.push(f);
    }
    Ok(EncryptedSet {
        features,
        labels: upload.labels,
        samples: upload.samples,
    })
}

/// Level the features are refreshed to before training: a step needs 3 (logits, gradient
/// product, learning rate).
pub const FEATURE_LEVEL: usize = 3;

/// The key holder's one-time refresh of the extracted features (decrypt + re-encrypt at
/// [`FEATURE_LEVEL`]): the extraction ends at level 2, one short of a training step. Returns
/// the number of ciphertexts refreshed.
pub fn refresh_features(holder: &KeyHolder, set: &mut EncryptedSet) -> Result<usize> {
    let mut count = 0;
    for blk in &mut set.features {
        *blk = holder.refresh_at(blk, FEATURE_LEVEL)?;
        count += blk.len();
    }
    Ok(count)
}

/// Options of [`train_head_encrypted`] beyond the [`TrainConfig`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadOptions<'a> {
    /// The labels, known to the key holder (the data owner): when given, it decrypts each
    /// step's logits to report the batch loss and accuracy (monitoring only; the training
    /// never uses them).
    pub monitor_labels: Option<&'a [usize]>,
}

/// What [`train_head_encrypted`] reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HeadReport {
    /// One entry per step (loss/accuracy from the key-holder monitor, NaN without it).
    pub steps: Vec<StepStats>,
    /// Seconds of encrypted computation per epoch (server side, without refreshes and monitor).
    pub epoch_seconds: Vec<f64>,
    /// Seconds of key-holder refreshes per epoch.
    pub epoch_refresh_seconds: Vec<f64>,
    /// Key-holder refreshes (each of all weights and velocities).
    pub refreshes: usize,
    /// Ciphertexts per refresh.
    pub ciphertexts_per_refresh: usize,
    /// Rotations per step.
    pub rotations_per_step: usize,
    /// Levels each step consumes.
    pub levels_per_step: usize,
    /// Level of the features (the weights are refreshed to it).
    pub feature_level: usize,
}

/// The encrypted weights and velocities of the head, index `c·(d+1) + j` (`j = d`: bias),
/// each value replicated in every slot.
struct HeadState {
    w: Vec<Ciphertext>,
    v: Vec<Ciphertext>,
}

/// The gradient's rotation sums sit at scale `q_1·Δ/C_G` on level 1: `|G|` and its partial
/// sums (at most `η·max|E·x|`) must stay under `C_G·q_0/(2Δ) ≈ 128`; an exact integer, so the
/// last rescale lands exactly on the weights' scale.
const C_G: f64 = 16.0;

/// One encrypted SGD step on the samples `batch`. `w` is at the features' level
/// `lx ≥ base + 3`, `v` at level `base + 1`, both at the default scale; returns the new state
/// at level `base` and the logits per block (at `lx − 1`, for the monitor). `base` is 0 with a
/// key holder; a collective refresh needs room for its masks there.
#[allow(clippy::too_many_arguments)]
fn encrypted_step(
    ev: &PublicEval,
    set: &EncryptedSet,
    y_matched: &[Vec<Ciphertext>],
    st: &HeadState,
    batch: &[usize],
    lr: f64,
    momentum: f64,
    steps: &[i64],
    base: usize,
) -> Result<(HeadState, Vec<Option<Vec<Ciphertext>>>)> {
    let ctx: &CkksContext = &ev.ctx;
    let s = ctx.slots();
    let classes = set.labels[0].len();
    let d1 = set.features[0].len();
    let lx = set.features[0][0].level();
    let sx = set.features[0][0].scale();
    let sw = st.w[0].scale();
    // Mini-batch masks per block.
    let mut masks: Vec<Option<Vec<f64>>> = vec![None; set.features.len()];
    let f = lr / batch.len() as f64;
    for &i in batch {
        masks[i / s].get_or_insert_with(|| vec![0.0; s])[i % s] = f;
    }
    // Logits and errors of the blocks that hold batch samples.
    let active: Vec<usize> = (0..masks.len()).filter(|&k| masks[k].is_some()).collect();
    let jobs: Vec<(usize, usize)> = active
        .iter()
        .flat_map(|&k| (0..classes).map(move |c| (k, c)))
        .collect();
    let ze = jobs
        .par_iter()
        .map(|&(k, c)| {
            let x = &set.features[k];
            let ws = &st.w[c * d1..(c + 1) * d1];
            let mut acc = ctx.multiply(&ws[0], &x[0])?;
            for (w, xj) in ws.iter().zip(x).skip(1) {
                acc = ctx.add(&acc, &ctx.multiply(w, xj)?)?;
            }
            let z = ctx.relinearize_rescale(&acc, &ev.relin)?;
            let e = ctx.sub(&z, &y_matched[k][c])?;
            Ok((z, e))
        })
        .collect::<Result<Vec<_>>>()?;
    // Xm_j = X_j ⊙ (η/|B|)·batch mask: one plaintext per block, encoded at a large scale so
    // that the small factor keeps its precision (rescaled: level lx − 1, scale t_x).
    // Scales are chained so that the rotation sums land on σ_S = q_{b+1}·s_w/C_G at level
    // b + 1 (room for |S| < 128 there) and G = S·C_G/q_{b+1} exactly on the weights' scale s_w.
    let q = |l: usize| ctx.level_modulus(l);
    let se = sw * sx / q(lx);
    let sigma_s = q(base + 1) * sw / C_G;
    let t_x = sigma_s * q(base + 2) / se;
    let pts = active
        .iter()
        .map(|&k| ctx.encode(masks[k].as_deref().unwrap_or(&[]), q(lx) * t_x / sx, lx))
        .collect::<Result<Vec<_>>>()?;
    let xm: Vec<Vec<Ciphertext>> = active
        .iter()
        .zip(&pts)
        .map(|(&k, pt)| {
            set.features[k]
                .par_iter()
                .map(|x| ctx.rescale(&ctx.multiply_plain(x, pt)?))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    // Gradients and updates, one independent job per weight.
    let updated = (0..classes * d1)
        .into_par_iter()
        .map(|idx| {
            let (c, j) = (idx / d1, idx % d1);
            let mut p: Option<Ciphertext> = None;
            for (a, _) in active.iter().enumerate() {
                let e = &ze[a * classes + c].1;
                let t = ctx.multiply(e, &xm[a][j])?;
                p = Some(match p {
                    None => t,
                    Some(acc) => ctx.add(&acc, &t)?,
                });
            }
            let p = p.ok_or_else(|| Error::InvalidInput("empty mini-batch".into()))?;
            // Down to level b + 2 (cheaper relinearization), rescale to level b + 1, where the
            // rotations cost the fewest limbs and run at scale σ_S ≈ 2^48, far above their
            // key-switching noise (~2^16): G = Σ_t (η/|B|)·E_c[t]·X_j[t]·[t ∈ B] in every slot.
            let p = ctx.relinearize(&ctx.mod_switch_to(&p, base + 2)?, &ev.relin)?;
            let sum = ctx.rotate_and_add(&ctx.rescale(&p)?, steps, &ev.galois)?;
            let g = ctx.rescale(&ctx.multiply_scalar(&sum, 1.0, C_G)?)?;
            let v = if momentum > 0.0 {
                let vl = &st.v[idx];
                let q = ctx.level_modulus(vl.level());
                let mv =
                    ctx.rescale(&ctx.multiply_scalar(vl, momentum, q * g.scale() / vl.scale())?)?;
                ctx.add(&mv, &g)?
            } else {
                g
            };
            let w = ctx.sub(&st.w[idx], &v)?;
            Ok((w, v))
        })
        .collect::<Result<Vec<_>>>()?;
    let (w, v) = updated.into_iter().unzip();
    let mut zs: Vec<Option<Vec<Ciphertext>>> = vec![None; set.features.len()];
    for (a, &k) in active.iter().enumerate() {
        zs[k] = Some(
            (0..classes)
                .map(|c| ze[a * classes + c].0.clone())
                .collect(),
        );
    }
    Ok((HeadState { w, v }, zs))
}

/// Trains `model` (a head from [`head`], its current weights as the start) on the encrypted
/// set with mini-batch SGD + momentum on the MSE loss, the same steps as
/// [`train_head_plain`] with the same `cfg`. The key holder encrypts the initial weights,
/// refreshes weights and velocities before every step after the first (see the module
/// docs), and at the end decrypts the trained weights into `model`.
pub fn train_head_encrypted(
    model: &mut Sequential,
    set: &EncryptedSet,
    cfg: &TrainConfig,
    opts: &HeadOptions<'_>,
    ev: &PublicEval,
    holder: &KeyHolder,
) -> Result<HeadReport> {
    let run = HeadRun {
        ev,
        refresher: holder,
        base: 0,
        encrypt: &|v: &[f64], l: usize| holder.encrypt_at(v, l),
        monitor: opts.monitor_labels.map(|l| (holder, l)),
    };
    let (w, report) = train_head_steps(model, set, cfg, &run)?;
    // The key holder decrypts the trained head (slot 0 of every weight).
    let vals = w
        .par_iter()
        .map(|c| Ok(holder.decrypt(c)?[0]))
        .collect::<Result<Vec<f64>>>()?;
    set_head_weights(model, &vals)?;
    Ok(report)
}

/// Sets the head's weights from `vals[c·(d+1) + j]` (`j = d`: the bias), the order of the
/// encrypted state.
pub fn set_head_weights(model: &mut Sequential, vals: &[f64]) -> Result<()> {
    let [Layer::Linear(l)] = model.layers_mut() else {
        return Err(Error::Model("a transfer head has one Linear layer".into()));
    };
    let (classes, d) = l.weight.dim();
    if vals.len() != classes * (d + 1) {
        return Err(Error::Shape(format!(
            "{} values for a {classes}×{d} head with biases",
            vals.len()
        )));
    }
    for c in 0..classes {
        for j in 0..d {
            l.weight[[c, j]] = vals[c * (d + 1) + j];
        }
        l.bias[c] = vals[c * (d + 1) + d];
    }
    Ok(())
}

/// Who does what in [`train_head_steps`].
pub struct HeadRun<'a> {
    /// The server's public material.
    pub ev: &'a PublicEval,
    /// Brings weights and velocities back up before every step after the first.
    pub refresher: &'a dyn Refresh,
    /// The level a step leaves the weights at (at least `refresher.min_level()`): velocities
    /// live one above it, weights and features at `base + 3` or higher.
    pub base: usize,
    /// Encrypts the initial weights (slot values) at a level.
    pub encrypt: &'a (dyn Fn(&[f64], usize) -> Result<Ciphertext> + Sync),
    /// The key holder and the labels, to decrypt each step's logits for the batch loss and
    /// accuracy (monitoring only; a run without a key holder has none).
    pub monitor: Option<(&'a KeyHolder, &'a [usize])>,
}

/// The encrypted steps of [`train_head_encrypted`] with any refresh: returns the trained
/// weights, encrypted (index `c·(d+1) + j`, each value in every slot, at level `run.base`),
/// for whoever may decrypt them.
pub fn train_head_steps(
    model: &Sequential,
    set: &EncryptedSet,
    cfg: &TrainConfig,
    run: &HeadRun<'_>,
) -> Result<(Vec<Ciphertext>, HeadReport)> {
    check_cfg(cfg, set.samples)?;
    let ev = run.ev;
    let ctx = &ev.ctx;
    let s = ctx.slots();
    let (w0, b0) = head_weights(model)?;
    let classes = w0.nrows();
    let d = w0.ncols();
    let (Some(f0), Some(y0)) = (set.features.first(), set.labels.first()) else {
        return Err(Error::InvalidInput("empty encrypted set".into()));
    };
    if f0.len() != d + 1 || y0.len() != classes {
        return Err(Error::Shape(format!(
            "the head is {classes}×{d} but the set has {} features (+1) and {} classes",
            f0.len().saturating_sub(1),
            y0.len()
        )));
    }
    let base = run.base;
    if base < run.refresher.min_level() {
        return Err(Error::InvalidParameters(format!(
            "a step may leave the weights at level {base}, but {} needs level {} or higher",
            run.refresher.describe(),
            run.refresher.min_level()
        )));
    }
    let lx = f0[0].level();
    if lx < base + 3 {
        return Err(Error::OutOfLevels {
            op: "encrypted head step (needs features 3 levels above the weights' lowest; see refresh_features)",
            level: lx,
        });
    }
    let steps = CkksContext::power_of_two_steps(s);
    // Labels brought to the logits' level and scale once (the weights are refreshed to the
    // default scale every step, so that scale never changes).
    let sz = ctx.default_scale() * f0[0].scale() / ctx.level_modulus(lx);
    let y_matched = set
        .labels
        .iter()
        .map(|ys| {
            ys.par_iter()
                .map(|y| ctx.match_scale(y, lx - 1, sz))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let replicate = |v: f64| vec![v; s];
    let init_w: Vec<f64> = (0..classes)
        .flat_map(|c| (0..=d).map(move |j| (c, j)))
        .map(|(c, j)| if j < d { w0[[c, j]] } else { b0[c] })
        .collect();
    let mut st = HeadState {
        w: init_w
            .par_iter()
            .map(|&v| (run.encrypt)(&replicate(v), lx))
            .collect::<Result<_>>()?,
        v: (0..init_w.len())
            .into_par_iter()
            .map(|_| (run.encrypt)(&replicate(0.0), base + 1))
            .collect::<Result<_>>()?,
    };
    let n = set.samples;
    let spe = n.div_ceil(cfg.batch_size);
    cfg.progress.emit(ProgressEvent::Start {
        total: (spe * cfg.epochs) as u64,
        unit: "encrypted steps",
    });
    let mut report = HeadReport {
        ciphertexts_per_refresh: 2 * init_w.len(),
        rotations_per_step: init_w.len() * steps.len(),
        levels_per_step: 3,
        feature_level: lx,
        ..HeadReport::default()
    };
    let refresh_to = |cts: &[Ciphertext], level: usize| -> Result<Vec<Ciphertext>> {
        run.refresher
            .refresh_to(cts, level)?
            .iter()
            .map(|c| ctx.mod_switch_to(c, level))
            .collect()
    };
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let (mut epoch_s, mut refresh_s) = (0.0, 0.0);
        for batch in epoch_batches(n, cfg.batch_size, &mut rng) {
            step += 1;
            let refreshed = step > 1;
            if refreshed {
                let t = Instant::now();
                st = HeadState {
                    w: refresh_to(&st.w, lx)?,
                    v: refresh_to(&st.v, base + 1)?,
                };
                report.refreshes += 1;
                refresh_s += t.elapsed().as_secs_f64();
            }
            let level_before = st.w[0].level();
            let t = Instant::now();
            let (next, zs) = encrypted_step(
                ev,
                set,
                &y_matched,
                &st,
                &batch,
                cfg.lr,
                cfg.momentum,
                &steps,
                base,
            )?;
            let seconds = t.elapsed().as_secs_f64();
            epoch_s += seconds;
            st = next;
            let (loss, accuracy) = if let Some((holder, labels)) = run.monitor {
                monitor(holder, &zs, &batch, labels, s)?
            } else {
                (f64::NAN, f64::NAN)
            };
            let stats = StepStats {
                step,
                epoch,
                samples: batch.len(),
                loss,
                accuracy,
                level_before,
                level_after: st.w[0].level(),
                refreshed,
                seconds,
                // One process computes the whole step.
                shard_seconds: seconds,
            };
            if cfg.progress.is_active() {
                cfg.progress.emit(ProgressEvent::Status(&format!(
                    "epoch {epoch}: batch loss {loss:.4}, acc {:.1}%",
                    100.0 * accuracy
                )));
            }
            cfg.progress.emit(ProgressEvent::Advance);
            report.steps.push(stats);
        }
        report.epoch_seconds.push(epoch_s);
        report.epoch_refresh_seconds.push(refresh_s);
        if cfg.progress.is_active() {
            cfg.progress.emit(ProgressEvent::Line(&format!(
                "epoch {epoch}/{}: {epoch_s:.1} s encrypted + {refresh_s:.1} s refresh",
                cfg.epochs
            )));
        }
    }
    cfg.progress.emit(ProgressEvent::Finish);
    Ok((st.w, report))
}

/// Key-holder monitor: mean MSE loss and accuracy of the batch from the decrypted logits.
fn monitor(
    holder: &KeyHolder,
    zs: &[Option<Vec<Ciphertext>>],
    batch: &[usize],
    labels: &[usize],
    s: usize,
) -> Result<(f64, f64)> {
    let dec: Vec<Option<Vec<Vec<f64>>>> = zs
        .iter()
        .map(|z| {
            z.as_ref()
                .map(|cs| {
                    cs.par_iter()
                        .map(|c| holder.decrypt(c))
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()
        })
        .collect::<Result<_>>()?;
    let (mut loss, mut correct) = (0.0, 0usize);
    for &i in batch {
        let (k, t) = (i / s, i % s);
        let (Some(z), Some(&label)) = (&dec[k], labels.get(i)) else {
            return Err(Error::Shape(format!("no logits or label for sample {i}")));
        };
        let mut best = 0;
        for c in 0..z.len() {
            let y = f64::from(c == label);
            loss += 0.5 * (z[c][t] - y).powi(2);
            if z[c][t] > z[best][t] {
                best = c;
            }
        }
        correct += usize::from(best == label);
    }
    let b = batch.len().max(1) as f64;
    Ok((loss / b, correct as f64 / b))
}
