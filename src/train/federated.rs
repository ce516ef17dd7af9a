//! Federated training of a logistic-regression model with encrypted aggregation
//! (federated averaging, the credit-approval scenario).
//!
//! Parties: `K` **data owners** each hold a shard of the data; an **aggregator** adds
//! ciphertexts; the **key holder** owns the secret key. Every round:
//! 1. each owner starts from the current global model, runs `cfg.epochs` local epochs of
//!    mini-batch gradient descent with momentum on its own shard
//!    ([`super::logistic::train_plain`], with the chosen polynomial or the true sigmoid), and
//!    encrypts its **update** `n_k·(w_k − w)` (weights and bias packed in the slots of one
//!    ciphertext) under the key holder's public key;
//! 2. the aggregator adds the `K` ciphertexts and multiplies by `1/Σ n_k`, never seeing an
//!    individual update (nor the sum: it only holds ciphertexts);
//! 3. the key holder decrypts **only the average** `Σ n_k (w_k − w) / Σ n_k`, adds it to the
//!    global model and publishes the new model.
//!
//! One multiplication per round, so every round starts from fresh encryptions: no refresh
//! is needed.

use std::time::Instant;

use rayon::prelude::*;

use super::logistic::{evaluate, train_plain, weights};
use super::{encrypt_public, KeyHolder};
use crate::data::Dataset;
use crate::nn::{Layer, PolyActivation, Sequential, TrainConfig};
use crate::progress::{Progress, ProgressEvent};
use crate::rlwe::Ciphertext;
use crate::{Error, Result};

/// One round of [`train_federated`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RoundStats {
    /// Round (1-based).
    pub round: usize,
    /// Accuracy of the new global model on the evaluation set, if given.
    pub eval_accuracy: Option<f64>,
    /// Mean cross-entropy of the new global model on the evaluation set, if given.
    pub eval_loss: Option<f64>,
    /// Seconds of local training (all owners, in parallel).
    pub local_seconds: f64,
    /// Seconds to encrypt the updates, aggregate and decrypt the average.
    pub crypto_seconds: f64,
}

/// Report of [`train_federated`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FederatedReport {
    /// Per round.
    pub rounds: Vec<RoundStats>,
    /// Samples per owner.
    pub shard_sizes: Vec<usize>,
    /// Total seconds.
    pub seconds: f64,
}

/// Trains `model` by federated averaging over `shards` (one per data owner) for `rounds`
/// rounds of `cfg.epochs` local epochs each; updates are aggregated encrypted.
pub fn train_federated(
    model: &mut Sequential,
    shards: &[Dataset],
    eval: Option<&Dataset>,
    cfg: &TrainConfig,
    rounds: usize,
    sigmoid: Option<&PolyActivation>,
    holder: &KeyHolder,
) -> Result<FederatedReport> {
    if shards.is_empty() || shards.iter().any(|s| s.is_empty()) {
        return Err(Error::Data(
            "federated training needs at least one non-empty shard".into(),
        ));
    }
    let (w0, _) = weights(model)?;
    let d = w0.len();
    let ctx = holder.ctx().clone();
    if d + 1 > ctx.slots() {
        return Err(Error::TooManyValues {
            got: d + 1,
            slots: ctx.slots(),
        });
    }
    // Aggregation needs no rotation: no Galois keys.
    let ev = holder.public_eval_steps(&[])?;
    let total: usize = shards.iter().map(|s| s.len()).sum();
    let mut report = FederatedReport {
        shard_sizes: shards.iter().map(|s| s.len()).collect(),
        ..FederatedReport::default()
    };
    let start = Instant::now();
    for round in 1..=rounds {
        let (gw, gb) = weights(model)?;
        let t = Instant::now();
        // 1. Local training (plaintext, at each owner), in parallel.
        let locals = shards
            .par_iter()
            .enumerate()
            .map(|(k, shard)| {
                let mut m = model.clone();
                let mut c = cfg.clone();
                c.progress = Progress::none();
                c.seed = cfg.seed ^ ((round as u64) << 32) ^ k as u64;
                let owner = |m: String| Error::Model(format!("round {round}, data owner {k}: {m}"));
                train_plain(&mut m, shard, None, &c, sigmoid).map_err(|e| match e {
                    Error::Model(m) => owner(m),
                    other => other,
                })?;
                let (w, b) = weights(&m)?;
                let nk = shard.len() as f64;
                let mut upd: Vec<f64> = w.iter().zip(&gw).map(|(a, g)| nk * (a - g)).collect();
                upd.push(nk * (b - gb));
                // A non-finite update cannot be encoded; say whose it is, not "NaN in encode".
                if upd.iter().any(|v| !v.is_finite()) {
                    return Err(owner("the local update is not finite".into()));
                }
                Ok(upd)
            })
            .collect::<Result<Vec<_>>>()?;
        let local_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        // Each owner encrypts its update under the public key.
        let cts = locals
            .par_iter()
            .map(|u| encrypt_public(&ev, u))
            .collect::<Result<Vec<Ciphertext>>>()?;
        // 2. The aggregator: sum, then multiply by 1/Σ n_k.
        let mut sum = cts[0].clone();
        for c in &cts[1..] {
            sum = ctx.add(&sum, c)?;
        }
        let l = sum.level();
        let avg =
            ctx.rescale(&ctx.multiply_scalar(&sum, 1.0 / total as f64, ctx.level_modulus(l))?)?;
        // 3. The key holder decrypts only the average.
        let dec = holder.decrypt(&avg)?;
        if let [Layer::Linear(lin)] = model.layers_mut() {
            for (j, dj) in dec.iter().take(d).enumerate() {
                lin.weight[[0, j]] += dj;
            }
            lin.bias[0] += dec[d];
        }
        let crypto_seconds = t.elapsed().as_secs_f64();
        let ev_stats = eval.map(|e| evaluate(model, e)).transpose()?;
        report.rounds.push(RoundStats {
            round,
            eval_accuracy: ev_stats.map(|s| s.0),
            eval_loss: ev_stats.map(|s| s.1),
            local_seconds,
            crypto_seconds,
        });
        if cfg.progress.is_active() {
            cfg.progress.emit(ProgressEvent::Line(&format!(
                "round {round}/{rounds}: {} owners, encrypted aggregation {:.3} s{}",
                shards.len(),
                crypto_seconds,
                ev_stats
                    .map(|s| format!(", eval acc {:.2}%", 100.0 * s.0))
                    .unwrap_or_default()
            )));
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
