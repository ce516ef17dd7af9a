//! The transfer head trained with **no key holder**: a sample-major packed layout whose
//! weights are short-period vectors, refreshed by **sparse-slot bootstrapping** (issue #15).
//!
//! # Why a second layout
//! [`super::transfer`] keeps one ciphertext per weight with the value in every slot, so its
//! logits need no rotation; but a refresh then has 1,930 ciphertexts to renew every step, and
//! bootstrapping each one would take hours. Here a sample takes `P` consecutive slots, so
//! every chunk of a class's weights is a **`P`-periodic** vector: the shape a sparse-slot
//! bootstrap ([`BootstrapParams::sparse`]) refreshes. All weight and velocity chunks
//! (2 · 5 classes · 4 chunks = 40 at `P = 64`) are masked into one `40·P → 4096`-periodic
//! ciphertext, bootstrapped **once**, and masked back out.
//!
//! # Layout ([`PackedLayout`]; `P = 64`, `S = N/2/P` samples per ciphertext: 512 at 2^16)
//! * The data owner shuffles its samples once ([`sample_order`]); the sample at position `p`
//!   lives in group `g = p / S`, block `s = p mod S`. Its coordinate `j` — the `d` features,
//!   then the constant 1 of the bias (`j = d`), then the one-hot label of class `c`
//!   (`j = d + 1 + c`) — sits in chunk `a = j / P`, slot `s·P + j mod P`.
//! * The weights of class `c`, chunk `a`: `w_{c,j}` in every slot `≡ j mod P`; the label
//!   coordinate of class `c` holds **−1**, so the block sum of `X ⊙ W_c` is `z_c − y_c`
//!   directly. A second copy of the label chunk without the labels feeds the gradient, so
//!   that −1 never moves.
//!
//! # One step (weights at level `ℓ` → `ℓ − 3`)
//! 1. Per group and class: `Σ_a X_{g,a} ⊙ W_{c,a}`, one relinearization and rescale, then a
//!    block sum (`log2 P` rotations by 1, 2, …): the error `e = z − y` at offset 0 of a block.
//! 2. Times `(η/|B|)·[sample in batch]` at offset 0 (the mini-batch is a range of positions),
//!    then copied over its block (`log2 P` rotations by −1, −2, …).
//! 3. Per class and chunk: `Σ_g E_{c,g} ⊙ X'_{g,a}`, one relinearization and rescale, and the
//!    sum over the `S` blocks (`log2 S` rotations by `P, 2P, …`): the gradient comes out
//!    `P`-periodic, the layout of the weights. The mask's scale is solved for so that it lands
//!    exactly on the weights' scale.
//! 4. `v ← μv + g`, `w ← w − v` (the momentum product runs off the critical path).
//!
//! With 8 levels out of the bootstrap: unpack (1), two steps (6), pack (1) — a refresh every
//! two steps.
//!
//! # Who computes what
//! The features come from the public frozen extractor, which the data owner runs in
//! plaintext before encrypting (HETAL's split; the key-holder mode of [`super::transfer`]
//! extracts them encrypted instead, feature-major, and a homomorphic transpose into this
//! layout is not built). [`train_packed`] takes public material only — the server has no
//! way to decrypt, which is why its report counts 0 decryptions; the data owner decrypts
//! the trained head once at the end ([`decrypt_head`]).

use std::ops::Range;
use std::time::Instant;

use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use super::{KeyHolder, PublicEval};
use crate::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
use crate::ckks::{CkksContext, Plaintext};
use crate::progress::{Progress, ProgressEvent};
use crate::rlwe::Ciphertext;
use crate::{Error, Result};

/// Slots per sample at `N ≥ 2^14` (192 features + bias + 5 labels = 198 coordinates in 4
/// chunks): the size that minimizes a step's rotations at the transfer workload's batch.
pub const DEFAULT_BLOCK: usize = 64;

/// Where samples, features, labels and weights sit in the slots (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PackedLayout {
    /// Slots per sample and per weight period (`P`, a power of two).
    pub block: usize,
    /// Chunks per sample: `⌈(d + 1 + classes) / P⌉`.
    pub chunks: usize,
    /// Samples per ciphertext: `N/2 / P`.
    pub samples_per_ct: usize,
    /// Features `d` (without the bias).
    pub features: usize,
    /// Classes (one-hot labels).
    pub classes: usize,
    /// Slots `N/2`.
    pub slots: usize,
}

impl PackedLayout {
    /// The layout for `slots` slots, `features` features and `classes` classes, `block` slots
    /// per sample.
    pub fn new(slots: usize, block: usize, features: usize, classes: usize) -> Result<Self> {
        if !block.is_power_of_two() || block < 2 || block > slots / 2 {
            return Err(Error::InvalidParameters(format!(
                "a packed head's block is a power of two in 2..={}, not {block}",
                slots / 2
            )));
        }
        if features == 0 || classes < 2 {
            return Err(Error::InvalidInput(format!(
                "a packed head needs features and at least 2 classes, got {features} and {classes}"
            )));
        }
        Ok(Self {
            block,
            chunks: (features + 1 + classes).div_ceil(block),
            samples_per_ct: slots / block,
            features,
            classes,
            slots,
        })
    }

    /// The coordinate of class `c`'s label.
    fn label_coord(&self, c: usize) -> usize {
        self.features + 1 + c
    }

    /// Ciphertext groups for `n` samples.
    pub fn groups(&self, n: usize) -> usize {
        n.div_ceil(self.samples_per_ct)
    }

    /// Weight and velocity chunks: `2 · classes · chunks`.
    pub fn state_ciphertexts(&self) -> usize {
        2 * self.classes * self.chunks
    }

    /// The period of a refresh's packed ciphertext: all state chunks side by side, at most
    /// the largest sparse period `N/4`; the bootstrapping keys are made for it.
    pub fn refresh_period(&self) -> usize {
        (self.state_ciphertexts() * self.block)
            .next_power_of_two()
            .min(self.slots / 2)
    }

    /// Bootstraps per refresh.
    pub fn bootstraps_per_refresh(&self) -> usize {
        self.state_ciphertexts()
            .div_ceil(self.refresh_period() / self.block)
    }

    /// The rotations a step and a refresh need: block sums (1, 2, …, P/2), block copies
    /// (−1, …, −P/2) and sums over blocks (P, 2P, …, N/4), which also serve the unpacking.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let within = CkksContext::power_of_two_steps(self.block);
        let mut steps: Vec<i64> = within.to_vec();
        steps.extend(within.iter().map(|s| -s));
        let p = self.block as i64;
        steps.extend(
            CkksContext::power_of_two_steps(self.samples_per_ct)
                .iter()
                .map(|s| s * p),
        );
        steps
    }

    /// Rotations of one step over `groups` ciphertext groups.
    pub fn rotations_per_step(&self, groups: usize) -> usize {
        let lp = self.block.trailing_zeros() as usize;
        let ls = self.samples_per_ct.trailing_zeros() as usize;
        groups * self.classes * 2 * lp + self.classes * self.chunks * ls
    }

    /// Slot values of one chunk of a P-periodic vector `coord → value` repeated over every
    /// block.
    fn periodic(&self, chunk: usize, value: impl Fn(usize) -> f64) -> Vec<f64> {
        let row: Vec<f64> = (0..self.block)
            .map(|r| value(chunk * self.block + r))
            .collect();
        (0..self.slots).map(|i| row[i % self.block]).collect()
    }
}

/// The once-shuffled order the data owner packs its samples in (positions → sample index);
/// every epoch's mini-batches are consecutive ranges of it.
pub fn sample_order(n: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
    perm
}

/// The mini-batches of one epoch: consecutive ranges of `batch` positions.
pub fn epoch_ranges(n: usize, batch: usize) -> Vec<Range<usize>> {
    (0..n.div_ceil(batch.max(1)))
        .map(|k| k * batch..((k + 1) * batch).min(n))
        .collect()
}

/// The training set as the server holds it.
pub struct PackedSet {
    /// The layout.
    pub layout: PackedLayout,
    /// Per group, per chunk: features, bias and labels.
    pub x: Vec<Vec<Ciphertext>>,
    /// Per group, per chunk: the same without the labels (what the gradient multiplies).
    /// Chunks with no label coordinate are not stored twice (`None`: use `x`).
    pub x_grad: Vec<Vec<Option<Ciphertext>>>,
    /// Samples.
    pub n: usize,
}

impl PackedSet {
    fn grad_chunk(&self, g: usize, a: usize) -> &Ciphertext {
        self.x_grad[g][a].as_ref().unwrap_or(&self.x[g][a])
    }
}

/// What the data owner uploads: `x[p]` (features of the sample at position `p`) and its
/// label, encrypted under the public key at `level` (the state level: a step brings the
/// data down with it).
pub fn encrypt_packed(
    ev: &PublicEval,
    layout: &PackedLayout,
    x: &Array2<f64>,
    labels: &[usize],
    level: usize,
) -> Result<PackedSet> {
    let (n, d) = x.dim();
    if d != layout.features || labels.len() != n || n == 0 {
        return Err(Error::Shape(format!(
            "{n}×{d} features and {} labels for a packed layout of {} features",
            labels.len(),
            layout.features
        )));
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= layout.classes) {
        return Err(Error::InvalidInput(format!(
            "label {l} for {} classes",
            layout.classes
        )));
    }
    let ctx = &ev.ctx;
    let (p, s) = (layout.block, layout.samples_per_ct);
    let label_chunks: Vec<bool> = (0..layout.chunks)
        .map(|a| (0..layout.classes).any(|c| layout.label_coord(c) / p == a))
        .collect();
    let encrypt = |vals: &[f64]| -> Result<Ciphertext> {
        let pt = ctx.encode(vals, ctx.default_scale(), level)?;
        ctx.encrypt(&pt, &ev.public)
    };
    let label_chunks = &label_chunks;
    let jobs: Vec<(usize, usize, bool)> = (0..layout.groups(n))
        .flat_map(|g| {
            (0..layout.chunks).flat_map(move |a| {
                [(g, a, true)]
                    .into_iter()
                    .chain(label_chunks[a].then_some((g, a, false)))
            })
        })
        .collect();
    let cts = jobs
        .par_iter()
        .map(|&(g, a, with_labels)| {
            let mut vals = vec![0.0; layout.slots];
            for (sb, pos) in (g * s..((g + 1) * s).min(n)).enumerate() {
                for r in 0..p {
                    let j = a * p + r;
                    // The bias's constant 1, and the one-hot label where it is kept.
                    let one = j == d || (with_labels && j > d && j - d - 1 == labels[pos]);
                    vals[sb * p + r] = if j < d {
                        x[[pos, j]]
                    } else {
                        f64::from(u8::from(one))
                    };
                }
            }
            encrypt(&vals)
        })
        .collect::<Result<Vec<_>>>()?;
    let groups = layout.groups(n);
    let mut xs = vec![Vec::with_capacity(layout.chunks); groups];
    let mut xg = vec![Vec::with_capacity(layout.chunks); groups];
    for (&(g, _, with_labels), ct) in jobs.iter().zip(cts) {
        if with_labels {
            xs[g].push(ct);
            xg[g].push(None);
        } else {
            *xg[g].last_mut().expect("the labelled chunk comes first") = Some(ct);
        }
    }
    Ok(PackedSet {
        layout: *layout,
        x: xs,
        x_grad: xg,
        n,
    })
}

/// The encrypted head: weights and velocities, index `c·chunks + a`.
pub struct PackedHead {
    /// Weight chunks (with −1 at each class's label coordinate).
    pub w: Vec<Ciphertext>,
    /// Velocity chunks.
    pub v: Vec<Ciphertext>,
}

impl PackedHead {
    /// The state's level.
    pub fn level(&self) -> usize {
        self.w[0].level()
    }
}

/// The initial head `weight [classes, d]`, `bias [classes]` encrypted under the public key
/// at `level`, velocities 0.
pub fn encrypt_head(
    ev: &PublicEval,
    layout: &PackedLayout,
    weight: &Array2<f64>,
    bias: &Array1<f64>,
    level: usize,
) -> Result<PackedHead> {
    if weight.dim() != (layout.classes, layout.features) || bias.len() != layout.classes {
        return Err(Error::Shape(format!(
            "a {:?} head with {} biases for {} classes × {} features",
            weight.dim(),
            bias.len(),
            layout.classes,
            layout.features
        )));
    }
    let ctx = &ev.ctx;
    let d = layout.features;
    let jobs: Vec<(usize, usize, bool)> = [true, false]
        .into_iter()
        .flat_map(|is_w| {
            (0..layout.classes).flat_map(move |c| (0..layout.chunks).map(move |a| (c, a, is_w)))
        })
        .collect();
    let mut cts = jobs
        .par_iter()
        .map(|&(c, a, is_w)| {
            let vals = layout.periodic(a, |j| match j {
                _ if !is_w => 0.0,
                j if j < d => weight[[c, j]],
                j if j == d => bias[c],
                j if j == layout.label_coord(c) => -1.0,
                _ => 0.0,
            });
            let pt = ctx.encode(&vals, ctx.default_scale(), level)?;
            ctx.encrypt(&pt, &ev.public)
        })
        .collect::<Result<Vec<_>>>()?;
    let v = cts.split_off(layout.classes * layout.chunks);
    Ok(PackedHead { w: cts, v })
}

/// The data owner's one decryption: the trained `(weight, bias)`.
pub fn decrypt_head(
    holder: &KeyHolder,
    layout: &PackedLayout,
    head: &PackedHead,
) -> Result<(Array2<f64>, Array1<f64>)> {
    let (d, p) = (layout.features, layout.block);
    let mut w = Array2::zeros((layout.classes, d));
    let mut b = Array1::zeros(layout.classes);
    for c in 0..layout.classes {
        for a in 0..layout.chunks {
            let vals = holder.decrypt(&head.w[c * layout.chunks + a])?;
            for (r, &v) in vals.iter().take(p).enumerate() {
                match a * p + r {
                    j if j < d => w[[c, j]] = v,
                    j if j == d => b[c] = v,
                    _ => {}
                }
            }
        }
    }
    Ok((w, b))
}

/// Options of [`train_packed`].
#[derive(Clone, Debug)]
pub struct PackedConfig {
    /// Epochs over the set.
    pub epochs: usize,
    /// Samples per mini-batch (consecutive positions).
    pub batch: usize,
    /// Learning rate η.
    pub lr: f64,
    /// Momentum μ.
    pub momentum: f64,
    /// Where step and refresh progress goes.
    pub progress: Progress,
}

/// One step of [`PackedReport`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct PackedStep {
    /// Global step (1-based).
    pub step: usize,
    /// Epoch (1-based).
    pub epoch: usize,
    /// Samples in the step.
    pub samples: usize,
    /// Ciphertext groups the batch touches.
    pub groups: usize,
    /// Level of the weights before and after.
    pub level_before: usize,
    /// Level of the weights after.
    pub level_after: usize,
    /// Whether the state was bootstrapped before this step.
    pub refreshed: bool,
    /// Seconds of the step (without the refresh).
    pub seconds: f64,
    /// Seconds of the refresh before it (0 without).
    pub refresh_seconds: f64,
}

/// What [`train_packed`] reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PackedReport {
    /// The layout.
    pub layout: PackedLayout,
    /// Per step.
    pub steps: Vec<PackedStep>,
    /// Refreshes (each of all weights and velocities).
    pub refreshes: usize,
    /// Bootstraps per refresh.
    pub bootstraps_per_refresh: usize,
    /// Weight and velocity ciphertexts per refresh.
    pub ciphertexts_per_refresh: usize,
    /// Rotations over all steps (without the bootstraps' own).
    pub rotations: usize,
    /// Decryptions during training: the trainer holds no secret key, so 0 by construction.
    pub decryptions: usize,
    /// Seconds of steps and of refreshes.
    pub step_seconds: f64,
    /// Seconds of refreshes.
    pub refresh_seconds: f64,
}

/// Trains the encrypted head on the encrypted set with mini-batch SGD + momentum on the MSE
/// loss, bootstrapping weights and velocities whenever the next step would leave no level for
/// the packing. Public material only: `ev` (relinearization and the
/// [`PackedLayout::rotation_steps`] Galois keys) and the bootstrapping keys made for
/// [`PackedLayout::refresh_period`].
pub fn train_packed(
    ev: &PublicEval,
    boot: &BootstrapKeys,
    set: &PackedSet,
    init: PackedHead,
    cfg: &PackedConfig,
) -> Result<(PackedHead, PackedReport)> {
    let layout = &set.layout;
    super::transfer::check_sgd(set.n, cfg.batch, cfg.epochs, cfg.lr, cfg.momentum)?;
    if boot.plan().params().slots != layout.refresh_period() {
        return Err(Error::InvalidParameters(format!(
            "bootstrapping keys for {} slots; this layout refreshes {}-periodic vectors",
            boot.plan().params().slots,
            layout.refresh_period()
        )));
    }
    let ranges = epoch_ranges(set.n, cfg.batch);
    let total = ranges.len() * cfg.epochs;
    let mut report = PackedReport {
        layout: *layout,
        steps: Vec::new(),
        refreshes: 0,
        bootstraps_per_refresh: layout.bootstraps_per_refresh(),
        ciphertexts_per_refresh: layout.state_ciphertexts(),
        rotations: 0,
        decryptions: 0,
        step_seconds: 0.0,
        refresh_seconds: 0.0,
    };
    let mut st = init;
    cfg.progress.emit(ProgressEvent::Start {
        total: total as u64,
        unit: "encrypted steps",
    });
    for epoch in 1..=cfg.epochs {
        for r in &ranges {
            let step = report.steps.len() + 1;
            // A step takes 3 levels and the packing one more.
            let refreshed = st.level() < STEP_LEVELS + 1;
            let t = Instant::now();
            if refreshed {
                st = refresh(ev, boot, layout, &st)?;
                report.refreshes += 1;
            }
            let refresh_seconds = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let before = st.level();
            let (next, groups) = step_once(ev, set, &st, r.clone(), cfg)?;
            st = next;
            let seconds = t.elapsed().as_secs_f64();
            report.rotations += layout.rotations_per_step(groups);
            report.step_seconds += seconds;
            report.refresh_seconds += refresh_seconds;
            report.steps.push(PackedStep {
                step,
                epoch,
                samples: r.len(),
                groups,
                level_before: before,
                level_after: st.level(),
                refreshed,
                seconds,
                refresh_seconds,
            });
            if cfg.progress.is_active() {
                cfg.progress.emit(ProgressEvent::Status(&format!(
                    "step {step}/{total}: {seconds:.1} s{}",
                    if refreshed {
                        format!(" after a {refresh_seconds:.1} s bootstrap refresh")
                    } else {
                        String::new()
                    }
                )));
            }
            cfg.progress.emit(ProgressEvent::Advance);
        }
    }
    cfg.progress.emit(ProgressEvent::Finish);
    Ok((st, report))
}

/// Levels a step consumes.
pub const STEP_LEVELS: usize = 3;

/// One step on the positions `batch` (module docs); returns the new state and the number of
/// groups the batch touched.
fn step_once(
    ev: &PublicEval,
    set: &PackedSet,
    st: &PackedHead,
    batch: Range<usize>,
    cfg: &PackedConfig,
) -> Result<(PackedHead, usize)> {
    let ctx: &CkksContext = &ev.ctx;
    let layout = &set.layout;
    let (p, s, chunks, classes) = (
        layout.block,
        layout.samples_per_ct,
        layout.chunks,
        layout.classes,
    );
    let l = st.level();
    if l < STEP_LEVELS {
        return Err(Error::OutOfLevels {
            op: "packed head step",
            level: l,
        });
    }
    let q = |lv: usize| ctx.level_modulus(lv);
    let groups: Vec<usize> = (batch.start / s..batch.end.div_ceil(s)).collect();
    let sw = st.w[0].scale();
    let sx = set.x[0][0].scale();
    let sum_block = CkksContext::power_of_two_steps(p);
    let copy_block: Vec<i64> = sum_block.iter().map(|s| -s).collect();
    let sum_samples: Vec<i64> = CkksContext::power_of_two_steps(s)
        .iter()
        .map(|k| k * p as i64)
        .collect();
    // The mask's scale makes the gradient land exactly on the weights' scale:
    // s_z = s_x·s_w/q_ℓ, s_e = s_z·s_M/q_{ℓ−1}, s_g = s_e·s_x/q_{ℓ−2} = s_w.
    let sz = sx * sw / q(l);
    let sm = sw * q(l - 1) * q(l - 2) / (sz * sx);
    let f = cfg.lr / batch.len() as f64;
    let masks = groups
        .iter()
        .map(|&g| {
            let mut m = vec![0.0; layout.slots];
            for pos in batch.start.max(g * s)..batch.end.min((g + 1) * s) {
                m[(pos - g * s) * p] = f;
            }
            ctx.encode(&m, sm, l - 1)
        })
        .collect::<Result<Vec<Plaintext>>>()?;
    // 1-2. Errors, masked and copied over their blocks, per (group, class).
    let jobs: Vec<(usize, usize)> = (0..groups.len())
        .flat_map(|gi| (0..classes).map(move |c| (gi, c)))
        .collect();
    let errors = jobs
        .par_iter()
        .map(|&(gi, c)| {
            let x = &set.x[groups[gi]];
            let ws = &st.w[c * chunks..(c + 1) * chunks];
            let mut acc = ctx.multiply(&x[0], &ws[0])?;
            for (xa, wa) in x.iter().zip(ws).skip(1) {
                acc = ctx.add(&acc, &ctx.multiply(xa, wa)?)?;
            }
            let z = ctx.relinearize_rescale(&acc, &ev.relin)?;
            let e = ctx.rotate_and_add(&z, &sum_block, &ev.galois)?;
            let e = ctx.rescale(&ctx.multiply_plain(&e, &masks[gi])?)?;
            ctx.rotate_and_add(&e, &copy_block, &ev.galois)
        })
        .collect::<Result<Vec<_>>>()?;
    // 3-4. Gradients and updates per (class, chunk).
    let updated = (0..classes * chunks)
        .into_par_iter()
        .map(|idx| {
            let (c, a) = (idx / chunks, idx % chunks);
            let mut acc: Option<Ciphertext> = None;
            for (gi, &g) in groups.iter().enumerate() {
                let t = ctx.multiply(&errors[gi * classes + c], set.grad_chunk(g, a))?;
                acc = Some(match acc {
                    None => t,
                    Some(prev) => ctx.add(&prev, &t)?,
                });
            }
            let acc = acc.ok_or_else(|| Error::InvalidInput("empty mini-batch".into()))?;
            let g = ctx.relinearize_rescale(&acc, &ev.relin)?;
            let g = ctx.rotate_and_add(&g, &sum_samples, &ev.galois)?;
            let v = if cfg.momentum > 0.0 {
                let v = &st.v[idx];
                let mv = ctx.multiply_scalar(v, cfg.momentum, q(v.level()))?;
                ctx.add(&ctx.rescale(&mv)?, &g)?
            } else {
                g
            };
            let w = ctx.sub(&st.w[idx], &v)?;
            Ok((w, v))
        })
        .collect::<Result<Vec<_>>>()?;
    let (w, v) = updated.into_iter().unzip();
    Ok((PackedHead { w, v }, groups.len()))
}

/// Bootstraps every weight and velocity chunk: masked side by side into
/// [`PackedLayout::refresh_period`]-periodic ciphertexts (1 level), bootstrapped, and each
/// masked back out and copied over the period (1 level, `log2(period/P)` rotations).
fn refresh(
    ev: &PublicEval,
    boot: &BootstrapKeys,
    layout: &PackedLayout,
    st: &PackedHead,
) -> Result<PackedHead> {
    let ctx: &CkksContext = &ev.ctx;
    let (p, period) = (layout.block, layout.refresh_period());
    let per = period / p;
    let mask = |k: usize, level: usize| {
        let vals: Vec<f64> = (0..layout.slots)
            .map(|i| f64::from(u8::from((i % period) / p == k)))
            .collect();
        ctx.encode(&vals, ctx.level_modulus(level), level)
    };
    let spread: Vec<i64> = CkksContext::power_of_two_steps(per)
        .iter()
        .map(|k| k * p as i64)
        .collect();
    let all: Vec<&Ciphertext> = st.w.iter().chain(&st.v).collect();
    let mut out = Vec::with_capacity(all.len());
    for part in all.chunks(per) {
        let level = part[0].level();
        if level == 0 {
            return Err(Error::OutOfLevels {
                op: "packing for a bootstrap",
                level,
            });
        }
        let terms = part
            .par_iter()
            .enumerate()
            .map(|(k, ct)| ctx.multiply_plain(ct, &mask(k, level)?))
            .collect::<Result<Vec<_>>>()?;
        let packed = terms[1..]
            .iter()
            .try_fold(terms[0].clone(), |acc, t| ctx.add(&acc, t))?;
        let fresh = ctx.bootstrap(&ctx.rescale(&packed)?, boot)?;
        let top = fresh.level();
        let unpacked = (0..part.len())
            .into_par_iter()
            .map(|k| {
                let e = ctx.rescale(&ctx.multiply_plain(&fresh, &mask(k, top)?)?)?;
                ctx.rotate_and_add(&e, &spread, &ev.galois)
            })
            .collect::<Result<Vec<_>>>()?;
        out.extend(unpacked);
    }
    let v = out.split_off(st.w.len());
    Ok(PackedHead { w: out, v })
}

/// The bootstrapping parameters for a layout: `base` made sparse to the layout's refresh
/// period.
pub fn bootstrap_params(base: BootstrapParams, layout: &PackedLayout) -> Result<BootstrapParams> {
    base.sparse(layout.refresh_period())
}

/// The level fresh state and data are encrypted at: one below the bootstrap's output (the
/// level a refresh leaves the state at, after unpacking).
pub fn state_level(boot: &BootstrapKeys) -> usize {
    boot.output_level().saturating_sub(1)
}
