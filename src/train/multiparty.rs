//! Federated credit approval with **no key holder**: `K` data owners, each with its own slice
//! of the data and a share of the collective key ([`crate::mhe`]), train one encrypted
//! logistic-regression model by federated SGD.
//!
//! * Key generation is collective ([`crate::workers::session::Coordinator::keygen`]).
//! * Each step aggregates one mini-batch from every owner ([`FedPlan`]): owner `k` packs its
//!   samples of the step in its own slot range of each block (offset: the samples of owners
//!   `< k`) and encrypts them under the collective public key; the server adds the owners'
//!   ciphertexts, which gives one batch ciphertext in the usual layout ([`combine_groups`]),
//!   and runs the encrypted step of [`super::logistic`] ([`train_fedsgd`]).
//! * When the weights run low, they are refreshed by the collective protocol
//!   ([`CollectiveRefresh`]); no one decrypts.
//! * Only the final weights are decrypted, collectively, to one designated owner.
//!
//! The same steps run with a single [`super::KeyHolder`] (its public key for the owners, its
//! decrypt + re-encrypt as the refresh): the single-key reference the multiparty run is
//! measured against.

use std::sync::Mutex;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::logistic::{
    batch_plan, levels_per_step, sgd_update, shard_gradient, sigmoid_bound, BatchCt, Report,
    MIN_WEIGHT_LEVEL,
};
use super::{BlockLayout, PublicEval, Refresh, StepStats};
use crate::backend::PolyBatch;
use crate::ckks::CkksContext;
use crate::data::Dataset;
use crate::mhe::RefreshParams;
use crate::nn::{PolyActivation, TrainConfig};
use crate::progress::ProgressEvent;
use crate::rlwe::{Ciphertext, PublicKey};
use crate::serialize::{self, WriteOptions};
use crate::workers::session::{Coordinator, PartyApp};
use crate::{Error, Result};

/// The steps of a federated run: `groups[g][k]` are owner `k`'s sample indices (into its own
/// shard) in step group `g`, and `orders[e]` the order epoch `e` visits the groups in. Public:
/// it depends only on the shard sizes and the optimizer settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FedPlan {
    /// Per group, per owner, indices into that owner's shard.
    pub groups: Vec<Vec<Vec<usize>>>,
    /// Per epoch, the groups in visiting order.
    pub orders: Vec<Vec<usize>>,
}

impl FedPlan {
    /// Samples in group `g`.
    pub fn count(&self, g: usize) -> usize {
        self.groups[g].iter().map(|b| b.len()).sum()
    }

    /// Owner `k`'s first slot in group `g` (the samples of owners before it).
    pub fn offset(&self, g: usize, k: usize) -> usize {
        self.groups[g][..k].iter().map(|b| b.len()).sum()
    }
}

/// The plan for owners with `shard_sizes` samples: each owner cuts its shard into batches of
/// its share of `cfg.batch_size` (proportional to its size, rounded down, so that a step holds
/// at most `cfg.batch_size` samples), shuffled from its own seed; step
/// group `g` takes every owner's batch `g`, and each epoch visits the groups in a fresh order.
pub fn fed_plan(shard_sizes: &[usize], cfg: &TrainConfig) -> Result<FedPlan> {
    let total: usize = shard_sizes.iter().sum();
    if shard_sizes.is_empty() || shard_sizes.contains(&0) || cfg.batch_size == 0 {
        return Err(Error::Data(format!(
            "federated training needs non-empty shards and batches, got {shard_sizes:?}"
        )));
    }
    let per: Vec<Vec<Vec<usize>>> = shard_sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let c = TrainConfig {
                batch_size: (cfg.batch_size * n / total).max(1),
                epochs: 1,
                seed: cfg.seed ^ ((k as u64 + 1) << 40),
                ..TrainConfig::default()
            };
            batch_plan(n, &c).0
        })
        .collect();
    let groups_n = per.iter().map(|b| b.len()).max().unwrap_or(0);
    let groups = (0..groups_n)
        .map(|g| {
            per.iter()
                .map(|b| b.get(g).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(cfg.seed);
    let orders = (0..cfg.epochs)
        .map(|_| {
            let mut o: Vec<usize> = (0..groups_n).collect();
            o.shuffle(&mut rng);
            o
        })
        .collect();
    Ok(FedPlan { groups, orders })
}

/// Owner `k`'s part of every step group, encrypted under `public` at the top level: features
/// divided by `bound` (bias column `1/bound`) at slots `j·B + offset + t`, labels at
/// `offset + t` of every block, zeros elsewhere. Returns `(x, y)` per group.
pub fn encrypt_groups(
    ckks: &CkksContext,
    public: &PublicKey,
    layout: &BlockLayout,
    plan: &FedPlan,
    k: usize,
    shard: &Dataset,
    bound: f64,
) -> Result<Vec<(Ciphertext, Ciphertext)>> {
    use rayon::prelude::*;
    let enc = |v: &[f64]| {
        ckks.encrypt(
            &ckks.encode(v, ckks.default_scale(), ckks.max_level())?,
            public,
        )
    };
    (0..plan.groups.len())
        .into_par_iter()
        .map(|g| {
            let idx = plan.groups[g]
                .get(k)
                .ok_or_else(|| Error::Data(format!("the plan has no owner {k}")))?;
            let off = plan.offset(g, k);
            let mut rows = vec![Vec::new(); off];
            let mut ys = vec![0.0; off];
            for &i in idx {
                if i >= shard.len() {
                    return Err(Error::Data(format!(
                        "the plan names sample {i} of a shard of {}",
                        shard.len()
                    )));
                }
                let mut r: Vec<f64> = shard.features.row(i).iter().map(|v| v / bound).collect();
                r.push(1.0 / bound);
                rows.push(r);
                ys.push(shard.labels[i] as f64);
            }
            Ok((
                enc(&layout.pack_rows(&rows)?)?,
                enc(&layout.replicate_samples(&ys, 0.0)?)?,
            ))
        })
        .collect()
}

/// The server's batch ciphertexts: per group, the sum of the owners' `(x, y)` and, in the
/// label slots without a sample, the constant `pad` (the sigmoid's `p(0)`, so that their
/// error is 0; see [`BatchCt`]).
pub fn combine_groups(
    ckks: &CkksContext,
    layout: &BlockLayout,
    plan: &FedPlan,
    owners: &[Vec<(Ciphertext, Ciphertext)>],
    pad: f64,
) -> Result<Vec<BatchCt>> {
    (0..plan.groups.len())
        .map(|g| {
            let mut parts = owners.iter().map(|o| {
                o.get(g)
                    .ok_or_else(|| Error::Data(format!("an owner sent no batch for group {g}")))
            });
            let first = parts
                .next()
                .ok_or_else(|| Error::Data("no owners".into()))??;
            let (mut x, mut y) = first.clone();
            for p in parts {
                let (px, py) = p?;
                x = ckks.add(&x, px)?;
                y = ckks.add(&y, py)?;
            }
            let count = plan.count(g);
            if count > layout.block {
                return Err(Error::TooManyValues {
                    got: count,
                    slots: layout.block,
                });
            }
            let mut fill = vec![pad; layout.block];
            fill[..count].fill(0.0);
            let padding = layout.replicate_samples(&fill, pad)?;
            let y = ckks.add_plain(&y, &ckks.encode(&padding, y.scale(), y.level())?)?;
            Ok(BatchCt { x, y, count })
        })
        .collect()
}

/// Federated SGD on the server: every step group is one encrypted step of
/// [`super::logistic`] ([`super::logistic::shard_gradient`], [`super::logistic::apply_update`]) on the combined batch, the
/// weights refreshed by `refresher` when the next step would take them below its lowest
/// level. Returns the encrypted weights (nobody decrypts here) and the counts.
#[allow(clippy::too_many_arguments)]
pub fn train_fedsgd(
    ev: &PublicEval,
    layout: &BlockLayout,
    plan: &FedPlan,
    batches: &[BatchCt],
    w0: Ciphertext,
    cfg: &TrainConfig,
    sigmoid: &PolyActivation,
    refresher: &dyn Refresh,
) -> Result<(Ciphertext, Report)> {
    sigmoid.validate()?;
    let ctx = &ev.ctx;
    let need = levels_per_step(sigmoid.degree());
    let floor = MIN_WEIGHT_LEVEL.max(refresher.min_level());
    if ctx.max_level() < need + floor {
        return Err(Error::InvalidParameters(format!(
            "a step needs {need} levels above level {floor} ({}), the chain has {}",
            refresher.describe(),
            ctx.max_level()
        )));
    }
    if batches.len() != plan.groups.len() {
        return Err(Error::Data(format!(
            "{} batches for {} step groups",
            batches.len(),
            plan.groups.len()
        )));
    }
    let bound = sigmoid_bound(sigmoid);
    let log_b = layout.block.trailing_zeros() as usize;
    let log_k = layout.blocks.trailing_zeros() as usize;
    let mut report = Report {
        levels_per_step: need,
        shards: 1,
        rotations_per_step: log_k + 2 * log_b,
        data_ciphertexts: 2 * batches.len(),
        ..Report::default()
    };
    let mut w = w0;
    let mut v: Option<Ciphertext> = None;
    let start = Instant::now();
    cfg.progress.emit(ProgressEvent::Start {
        total: (plan.groups.len() * plan.orders.len()) as u64,
        unit: "steps",
    });
    let mut step = 0;
    for (e, order) in plan.orders.iter().enumerate() {
        for &g in order {
            step += 1;
            let refreshed = w.level() < need + floor;
            if refreshed {
                let mut cts = vec![w.clone()];
                cts.extend(v.iter().cloned());
                let fresh = refresher.refresh(&cts)?;
                w = fresh[0].clone();
                v = fresh.get(1).cloned();
                report.refreshes += 1;
            }
            let level_before = w.level();
            let ts = Instant::now();
            let out = shard_gradient(
                ev.eval(),
                layout,
                &sigmoid.coeffs,
                bound,
                &w,
                std::slice::from_ref(&batches[g]),
            )?;
            let (nw, nv) = sgd_update(
                ev.eval(),
                layout,
                &[out.partial],
                (&w, v.as_ref()),
                cfg,
                batches[g].count,
                bound,
            )?;
            w = nw;
            v = Some(nv);
            report.steps.push(StepStats {
                step,
                epoch: e + 1,
                samples: batches[g].count,
                loss: f64::NAN,
                accuracy: f64::NAN,
                level_before,
                level_after: w.level(),
                refreshed,
                seconds: ts.elapsed().as_secs_f64(),
                shard_seconds: out.compute_seconds,
            });
            cfg.progress.emit(ProgressEvent::Advance);
        }
    }
    cfg.progress.emit(ProgressEvent::Finish);
    report.train_seconds = start.elapsed().as_secs_f64();
    Ok((w, report))
}

/// The refresh of a multiparty session: each ciphertext in its own collective run (all in one
/// exchange), masked for `params` (λ bits over the message bound); never below `min_level`,
/// and the result brought down to `level` (a step costs less on fewer primes, and a refresh
/// every step, as the masks' room demands, leaves the levels above unused).
pub struct CollectiveRefresh<'a> {
    coordinator: Mutex<&'a mut Coordinator>,
    ckks: &'a CkksContext,
    params: RefreshParams,
    min_level: usize,
    level: usize,
}

impl<'a> CollectiveRefresh<'a> {
    /// The refresh for ciphertexts of `ckks` in `coordinator`'s session, to the level `steps`
    /// steps of `levels_per_step` levels need above the lowest refreshable level (capped at the
    /// top); an error if even the top level cannot hold the masks.
    pub fn new(
        coordinator: &'a mut Coordinator,
        ckks: &'a CkksContext,
        params: RefreshParams,
        levels_per_step: usize,
    ) -> Result<Self> {
        let min_level = crate::mhe::min_refresh_level(ckks.rlwe(), &params)?.ok_or_else(|| {
            Error::InvalidParameters(format!(
                "no level of this chain can hold {}-bit refresh masks for {} parties",
                params.mask_bits(ckks.rlwe().n()).unwrap_or(0),
                params.parties
            ))
        })?;
        let floor = min_level.max(MIN_WEIGHT_LEVEL);
        let steps = (ckks.max_level().saturating_sub(floor) / levels_per_step.max(1)).max(1);
        Ok(Self {
            coordinator: Mutex::new(coordinator),
            ckks,
            params,
            min_level,
            level: (floor + steps * levels_per_step).min(ckks.max_level()),
        })
    }

    /// The level refreshed ciphertexts come back at.
    pub fn level(&self) -> usize {
        self.level
    }
}

impl Refresh for CollectiveRefresh<'_> {
    fn refresh(&self, cts: &[Ciphertext]) -> Result<Vec<Ciphertext>> {
        self.refresh_to(cts, self.level)
    }

    fn describe(&self) -> &'static str {
        "collective refresh (masked re-encryption, no key holder)"
    }

    fn refresh_to(&self, cts: &[Ciphertext], level: usize) -> Result<Vec<Ciphertext>> {
        let mut c = self
            .coordinator
            .lock()
            .map_err(|_| Error::Multiparty("the session's lock is poisoned".into()))?;
        c.refresh_all(cts, &self.params)?
            .iter()
            .map(|ct| {
                self.ckks
                    .mod_switch_to(ct, level.min(self.ckks.max_level()))
            })
            .collect()
    }

    fn min_level(&self) -> usize {
        self.min_level
    }
}

/// The refresh masks' message bound for weights of magnitude below `2^value_log2` at
/// `ckks`'s scale, plus two bits for the noise and rounding.
pub fn weights_refresh_params(
    ckks: &CkksContext,
    parties: usize,
    value_log2: f64,
) -> RefreshParams {
    RefreshParams::new(parties, ckks.default_scale().log2() + value_log2 + 2.0)
}

/// What a data owner is asked to do ([`CreditParty`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum CreditJob {
    /// Encrypt its part of every step group under the collective public key.
    EncryptBatches {
        /// Seed of the train/test split and the batches.
        seed: u64,
        /// Global mini-batch size.
        batch: usize,
        /// Epochs (only the group orders depend on it).
        epochs: usize,
        /// The sigmoid's bound the features are divided by.
        bound: f64,
        /// Every owner's shard size (the plan is public).
        shard_sizes: Vec<usize>,
    },
    /// Report the process's peak resident memory (bytes; 0 where unknown).
    PeakMemory,
}

/// A data owner's application: its data file (it keeps only its own slice of the training
/// split) and what it does with a plaintext it receives (publishes the slot values: the
/// designated owner publishes the final model).
pub struct CreditParty {
    ckks: std::sync::Arc<CkksContext>,
    data: std::path::PathBuf,
    index: usize,
    parties: usize,
}

impl CreditParty {
    /// Owner `index` of `parties`, reading the UCI credit file at `data`.
    pub fn new(
        ckks: std::sync::Arc<CkksContext>,
        data: std::path::PathBuf,
        index: usize,
        parties: usize,
    ) -> Self {
        Self {
            ckks,
            data,
            index,
            parties,
        }
    }

    /// Owner `index`'s slice of the training split of `all` (split with `seed`).
    pub fn slice(all: &Dataset, seed: u64, index: usize, parties: usize) -> Result<Dataset> {
        let (train, _) = all.split(0.2, seed)?;
        let mut shards = train.shards(parties)?;
        if index >= shards.len() {
            return Err(Error::Data(format!("no owner {index} of {parties}")));
        }
        Ok(shards.swap_remove(index))
    }
}

impl PartyApp for CreditParty {
    fn job(&mut self, public: Option<&PublicKey>, payload: &[u8]) -> Result<Vec<u8>> {
        let job: CreditJob = serde_json::from_slice(payload)
            .map_err(|e| Error::Decode(format!("credit job: {e}")))?;
        match job {
            CreditJob::EncryptBatches {
                seed,
                batch,
                epochs,
                bound,
                shard_sizes,
            } => {
                let public = public.ok_or_else(|| {
                    Error::Multiparty("asked to encrypt before key generation".into())
                })?;
                let shard = Self::slice(
                    &crate::data::credit::load(&self.data)?,
                    seed,
                    self.index,
                    self.parties,
                )?;
                if shard_sizes.get(self.index) != Some(&shard.len())
                    || shard_sizes.len() != self.parties
                {
                    return Err(Error::Data(format!(
                        "the plan's shard sizes {shard_sizes:?} do not match owner {}'s {} samples",
                        self.index,
                        shard.len()
                    )));
                }
                let cfg = TrainConfig {
                    batch_size: batch,
                    epochs,
                    seed,
                    ..TrainConfig::default()
                };
                let plan = fed_plan(&shard_sizes, &cfg)?;
                let layout = super::logistic::layout_for(&self.ckks, shard.num_features())?;
                let cts = encrypt_groups(
                    &self.ckks, public, &layout, &plan, self.index, &shard, bound,
                )?;
                let flat: Vec<&Ciphertext> = cts.iter().flat_map(|(x, y)| [x, y]).collect();
                pack_ciphertexts(&self.ckks, &flat)
            }
            CreditJob::PeakMemory => Ok(peak_memory().to_le_bytes().to_vec()),
        }
    }

    fn plaintext(&mut self, ct: &Ciphertext, phase: &PolyBatch) -> Result<Vec<u8>> {
        let slots = self.ckks.decode_poly(phase, ct.scale())?;
        Ok(slots.iter().flat_map(|c| c.re.to_le_bytes()).collect())
    }
}

/// A party that holds only its key share, no data (the two servers of `mnist-transfer
/// --parties 2`): it answers the protocols and one job, [`ShareHolder::REPORT`]. It counts
/// every plaintext a collective decryption hands it, and publishes none of them.
#[derive(Debug, Default)]
pub struct ShareHolder {
    plaintexts: usize,
}

/// What a [`ShareHolder`] reports at the end of a session.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShareHolderReport {
    /// Plaintexts (decrypted phases) this process received.
    pub plaintexts_seen: usize,
    /// Peak resident memory of the process (bytes; 0 where unknown).
    pub peak_memory_bytes: u64,
}

impl ShareHolder {
    /// The job payload that asks for a [`ShareHolderReport`].
    pub const REPORT: &'static [u8] = b"report";
}

impl PartyApp for ShareHolder {
    fn job(&mut self, _public: Option<&PublicKey>, payload: &[u8]) -> Result<Vec<u8>> {
        if payload != Self::REPORT {
            return Err(Error::Multiparty(
                "a key-share holder takes no jobs but its report".into(),
            ));
        }
        serde_json::to_vec(&ShareHolderReport {
            plaintexts_seen: self.plaintexts,
            peak_memory_bytes: peak_memory(),
        })
        .map_err(|e| Error::InvalidInput(e.to_string()))
    }

    fn plaintext(&mut self, _ct: &Ciphertext, _phase: &PolyBatch) -> Result<Vec<u8>> {
        self.plaintexts += 1;
        Err(Error::Multiparty(
            "a key-share holder publishes no plaintext".into(),
        ))
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`; 0 elsewhere).
pub fn peak_memory() -> u64 {
    crate::memory::peak_rss_bytes()
}

/// `u32` count, then each ciphertext as `u64` length and its serialized bytes.
pub fn pack_ciphertexts(ckks: &CkksContext, cts: &[&Ciphertext]) -> Result<Vec<u8>> {
    let mut out = (cts.len() as u32).to_le_bytes().to_vec();
    for ct in cts {
        let b = serialize::to_bytes(ckks.rlwe(), *ct, WriteOptions::default())?;
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// The inverse of [`pack_ciphertexts`], each ciphertext validated against `ckks`.
pub fn unpack_ciphertexts(ckks: &CkksContext, bytes: &[u8]) -> Result<Vec<Ciphertext>> {
    let short = || Error::Decode("ciphertext list shorter than its lengths".into());
    let (head, mut rest) = bytes.split_at_checked(4).ok_or_else(short)?;
    let count = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(8).ok_or_else(short)?;
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let len = usize::try_from(len).map_err(|_| short())?;
        let (ct, r) = r.split_at_checked(len).ok_or_else(short)?;
        out.push(serialize::from_bytes(ckks.rlwe(), ct)?);
        rest = r;
    }
    if !rest.is_empty() {
        return Err(Error::Decode(format!(
            "{} bytes after the ciphertext list",
            rest.len()
        )));
    }
    Ok(out)
}

/// Slot values published as `f64` little-endian (what [`CreditParty::plaintext`] sends).
pub fn published_values(bytes: &[u8]) -> Result<Vec<f64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(Error::Decode(format!(
            "{} bytes of published values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}
