//! Encrypted training: the encrypted steps equal the plaintext steps run with the same
//! polynomial sigmoid (within CKKS precision), and a short end-to-end run per workload.

use std::sync::Arc;

use hetensor::ckks::CkksContext;
use hetensor::data::{credit, titanic, Dataset, DEFAULT_CREDIT, DEFAULT_TITANIC};
use hetensor::nn::{PolyActivation, TrainConfig};
use hetensor::train::federated::train_federated;
use hetensor::train::logistic::{self, EncryptedOptions};
use hetensor::train::{eval_poly, training_params, KeyHolder, TrainDefaults};

fn cfg(epochs: usize, batch: usize, lr: f64, momentum: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        lr,
        momentum,
        seed: 3,
        progress: hetensor::progress::Progress::none(),
        ..TrainConfig::default()
    }
}

fn holder(log_n: u32) -> KeyHolder {
    let ctx =
        CkksContext::with_seed(training_params(log_n).expect("params"), [7; 32]).expect("ctx");
    KeyHolder::new(Arc::new(ctx)).expect("keys")
}

/// `eval_poly` on `u = x/A` matches `p(x)` over the whole fit interval `[-A, A]`. The bound
/// is the measured CKKS noise at Δ = 2^26 (N = 2^13, 4096 points: max 2.4e-4 / 3.0e-4 /
/// 4.2e-4 for degrees 3 / 5 / 7, rms 3e-5 to 7e-5 — rescale errors of ~2e-5 each, times
/// coefficients `c_k·A^k` up to ~5), with 2.4x margin.
#[test]
fn eval_poly_matches_plaintext_at_minimal_depth() {
    let h = holder(13);
    let ev = h.public_eval_steps(&[]).expect("eval");
    let ctx = h.ctx();
    let a = 8.0;
    let xs: Vec<f64> = (0..128).map(|i| -a + 2.0 * a * i as f64 / 127.0).collect();
    let us: Vec<f64> = xs.iter().map(|x| x / a).collect();
    for degree in [3usize, 5, 7] {
        let p = PolyActivation::sigmoid(degree, (-a, a)).expect("fit");
        let ct = h.encrypt(&us).expect("enc");
        let out = eval_poly(ctx, &ct, &p.coeffs, &ev.relin, ctx.default_scale(), a).expect("poly");
        assert_eq!(
            ctx.max_level() - out.level(),
            hetensor::train::poly_depth(degree)
        );
        let dec = h.decrypt(&out).expect("dec");
        for (x, y) in xs.iter().zip(&dec) {
            assert!(
                (p.eval(*x) - y).abs() < 1e-3,
                "degree {degree}: p({x}) = {} vs {y}",
                p.eval(*x)
            );
        }
    }
}

#[test]
fn encrypted_steps_equal_plaintext_steps() {
    let data = titanic::load(DEFAULT_TITANIC)
        .expect("titanic")
        .select(&(0..200).collect::<Vec<_>>())
        .expect("subset");
    let sig = PolyActivation::sigmoid(3, (-8.0, 8.0)).expect("fit");
    let c = cfg(1, 50, 0.5, 0.9);
    let mut plain = logistic::model(data.num_features()).expect("model");
    logistic::train_plain(&mut plain, &data, None, &c, Some(&sig)).expect("plain");
    let mut enc = logistic::model(data.num_features()).expect("model");
    let h = holder(14);
    let opts = EncryptedOptions {
        sigmoid: sig.clone(),
        workers: 2,
        monitor: true,
        refresh: Default::default(),
    };
    let rep = logistic::train_encrypted(&mut enc, &data, None, &c, &opts, &h).expect("encrypted");
    assert_eq!(rep.steps.len(), 4);
    assert!(
        rep.refreshes >= 1,
        "4 steps of 5 levels need a refresh on a 13-level chain"
    );
    let (wp, bp) = logistic::weights(&plain).expect("w");
    let (we, be) = logistic::weights(&enc).expect("w");
    let err = wp
        .iter()
        .zip(&we)
        .map(|(a, b)| (a - b).abs())
        .fold((bp - be).abs(), f64::max);
    let scale = wp.iter().fold(bp.abs(), |m, a| m.max(a.abs()));
    eprintln!(
        "max |w_enc - w_plain| = {err:.2e} (max |w| = {scale:.3}); report {:?}",
        rep.steps
    );
    assert!(err < 5e-4, "weights differ by {err}");
}

/// Trains `all` (80/20 split, seed 1) for 2 epochs in plaintext and encrypted with the same
/// polynomial sigmoid; the test accuracies must agree within 2 points.
fn end_to_end(
    name: &str,
    all: Dataset,
    sigmoid: (usize, f64),
    lr: f64,
    min_acc: f64,
    levels: usize,
) {
    let (train, test) = all.split(0.2, 1).expect("split");
    let sig = PolyActivation::sigmoid(sigmoid.0, (-sigmoid.1, sigmoid.1)).expect("fit");
    let c = cfg(2, 128, lr, 0.9);
    let mut plain = logistic::model(train.num_features()).expect("model");
    logistic::train_plain(&mut plain, &train, None, &c, Some(&sig)).expect("plain");
    let mut enc = logistic::model(train.num_features()).expect("model");
    let opts = EncryptedOptions {
        sigmoid: sig,
        workers: 1,
        monitor: false,
        refresh: Default::default(),
    };
    let rep = logistic::train_encrypted(&mut enc, &train, Some(&test), &c, &opts, &holder(14))
        .expect("enc");
    let (pa, _) = logistic::evaluate(&plain, &test).expect("eval");
    let (ea, _) = logistic::evaluate(&enc, &test).expect("eval");
    eprintln!(
        "{name}: encrypted {ea:.4}, plaintext (same polynomial) {pa:.4}, {} refreshes",
        rep.refreshes
    );
    assert!(
        ea > min_acc && (ea - pa).abs() <= 0.02,
        "{name}: {ea} vs {pa}"
    );
    assert_eq!(rep.levels_per_step, levels);
}

#[test]
fn titanic_end_to_end_matches_plaintext_accuracy() {
    let all = titanic::load(DEFAULT_TITANIC).expect("titanic");
    end_to_end("titanic", all, (3, 8.0), 0.5, 0.7, 5);
}

/// Credit approval with the CLI's sigmoid (degree 7 on [-12, 12], 6 levels per step).
#[test]
fn credit_end_to_end_matches_plaintext_accuracy() {
    let all = credit::load(DEFAULT_CREDIT).expect("credit");
    end_to_end("credit", all, (7, 12.0), 0.2, 0.75, 6);
}

/// Federated averaging with exactly the settings `hetensor train credit-federated` ships
/// ([`TrainDefaults`], which the CLI reads): every round's encrypted aggregate equals the
/// plaintext federated average (same local training, averaged in the clear) within CKKS
/// precision, and the model ends within 3 points of the centralized plaintext model.
#[test]
fn credit_federated_with_the_cli_defaults() {
    let d = TrainDefaults::for_workload("credit-federated").expect("defaults");
    let all = credit::load(DEFAULT_CREDIT).expect("credit");
    let (train, test) = all.split(0.2, d.seed).expect("split");
    let sig = PolyActivation::sigmoid(d.degree, (-d.interval, d.interval)).expect("fit");
    let c = d.train_config();
    let shards = train.shards(d.owners).expect("shards");
    let mut fed = logistic::model(train.num_features()).expect("model");
    let rep = train_federated(
        &mut fed,
        &shards,
        Some(&test),
        &c,
        d.rounds,
        Some(&sig),
        &holder(d.log_n),
    )
    .expect("federated training with the CLI's defaults");
    assert_eq!(rep.rounds.len(), d.rounds);

    // Reference: the same rounds with the average computed in plaintext.
    let mut plain = logistic::model(train.num_features()).expect("model");
    let total: usize = shards.iter().map(Dataset::len).sum();
    for round in 1..=d.rounds {
        let (gw, gb) = logistic::weights(&plain).expect("weights");
        let mut avg = vec![0.0; gw.len() + 1];
        for (k, shard) in shards.iter().enumerate() {
            let mut m = plain.clone();
            let mut ck = c.clone();
            ck.seed = c.seed ^ ((round as u64) << 32) ^ k as u64;
            logistic::train_plain(&mut m, shard, None, &ck, Some(&sig)).expect("local");
            let (w, b) = logistic::weights(&m).expect("weights");
            let share = shard.len() as f64 / total as f64;
            for (a, (wj, gj)) in avg.iter_mut().zip(w.iter().zip(&gw)) {
                *a += share * (wj - gj);
            }
            avg[gw.len()] += share * (b - gb);
        }
        if let [hetensor::nn::Layer::Linear(lin)] = plain.layers_mut() {
            for (j, a) in avg.iter().take(gw.len()).enumerate() {
                lin.weight[[0, j]] += a;
            }
            lin.bias[0] += avg[gw.len()];
        }
    }
    let (wf, bf) = logistic::weights(&fed).expect("weights");
    let (wp, bp) = logistic::weights(&plain).expect("weights");
    let diff = wf
        .iter()
        .zip(&wp)
        .map(|(a, b)| (a - b).abs())
        .fold((bf - bp).abs(), f64::max);
    let (acc, _) = logistic::evaluate(&fed, &test).expect("eval");
    let (acc_plain_fed, _) = logistic::evaluate(&plain, &test).expect("eval");
    let mut central = logistic::model(train.num_features()).expect("model");
    let mut cc = c.clone();
    cc.epochs = d.epochs * d.rounds;
    logistic::train_plain(&mut central, &train, None, &cc, None).expect("central");
    let (acc_central, _) = logistic::evaluate(&central, &test).expect("eval");
    eprintln!(
        "credit federated (defaults {d:?}): encrypted {acc:.4}, plaintext federated {acc_plain_fed:.4}, centralized {acc_central:.4}; max |w_enc - w_plain| {diff:.2e}"
    );
    assert!(
        diff < 1e-2,
        "encrypted vs plaintext federated weights differ by {diff}"
    );
    assert!(
        acc > acc_central - 0.03,
        "federated {acc} vs centralized {acc_central}"
    );
}

/// The former `credit-federated` defaults (degree 3 on [-8, 8], rate 0.5) diverge in round 2
/// on this split: a typed error that says so, not a NaN handed to the encoder.
#[test]
fn diverging_federated_training_is_a_clear_error() {
    let all = credit::load(DEFAULT_CREDIT).expect("credit");
    let (train, _) = all.split(0.2, 1).expect("split");
    let sig = PolyActivation::sigmoid(3, (-8.0, 8.0)).expect("fit");
    let mut c = cfg(3, 128, 0.5, 0.9);
    c.seed = 1;
    let shards = train.shards(2).expect("shards");
    let mut fed = logistic::model(train.num_features()).expect("model");
    let err = train_federated(&mut fed, &shards, None, &c, 5, Some(&sig), &holder(13))
        .expect_err("lr 0.5 with a cubic on [-8, 8] diverges");
    let msg = err.to_string();
    assert!(
        msg.contains("round 2, data owner") && msg.contains("diverged") && msg.contains("[-8, 8]"),
        "{msg}"
    );
}

#[test]
fn bad_settings_are_errors() {
    let data = titanic::load(DEFAULT_TITANIC).expect("titanic");
    let sig = PolyActivation::sigmoid(7, (-8.0, 8.0)).expect("fit");
    let mut m = logistic::model(data.num_features()).expect("model");
    let opts = EncryptedOptions {
        sigmoid: sig,
        workers: 1,
        monitor: false,
        refresh: Default::default(),
    };
    // N = 2^13 has 6 levels: a degree-7 step needs 6 above level 1.
    assert!(logistic::train_encrypted(
        &mut m,
        &data,
        None,
        &cfg(1, 64, 0.5, 0.9),
        &opts,
        &holder(13)
    )
    .is_err());
    let mut wrong = logistic::model(3).expect("model");
    assert!(logistic::train_plain(&mut wrong, &data, None, &cfg(1, 64, 0.5, 0.9), None).is_err());
    assert!(logistic::train_plain(&mut m, &data, None, &cfg(1, 0, 0.5, 0.9), None).is_err());
}

#[test]
fn shards_are_whole_ciphertexts() {
    let layout = hetensor::train::BlockLayout::new(8192, 14, 1).expect("layout");
    assert_eq!(layout.block, 512);
    // A batch in one ciphertext is not split (that would double the work); larger batches
    // give one shard per ciphertext at most.
    assert_eq!(logistic::shards_per_step(&layout, 128, 2), 1);
    assert_eq!(logistic::shards_per_step(&layout, 1024, 2), 2);
    assert_eq!(logistic::shards_per_step(&layout, 1024, 8), 2);
    assert_eq!(logistic::shards_per_step(&layout, 1500, 2), 2);
    assert_eq!(logistic::shards_per_step(&layout, 100, 0), 1);
}

/// A layout smaller than the ring is tiled over it; the sparse refresh's period is the
/// smallest that holds a feature block per shard's samples, and none above `N/4`.
#[test]
fn sparse_refresh_layouts_tile_the_ring() {
    use hetensor::ckks::bootstrap::BootstrapParams;
    let layout = hetensor::train::BlockLayout::new(8, 3, 1).expect("layout");
    assert_eq!((layout.blocks, layout.block), (4, 2));
    let v: Vec<f64> = (0..8).map(f64::from).collect();
    let t = layout.tile(&v, 32).expect("tile");
    assert_eq!(t.len(), 32);
    assert!((0..32).all(|i| t[i] == v[i % 8]));
    assert!(layout.tile(&v, 20).is_err(), "8 does not divide 20");
    assert!(layout.tile(&v[..7], 32).is_err(), "not one period");
    // N = 2^12 (2048 slots): 13 features + bias in 16 blocks.
    let bp = || BootstrapParams::insecure_test_ring(12, 6).expect("params");
    let sparse = |batch, workers| {
        logistic::sparse_refresh(bp(), 13, batch, workers)
            .expect("params")
            .slots()
    };
    assert_eq!(sparse(50, 1), 16 * 64);
    assert_eq!(sparse(50, 2), 16 * 32);
    assert_eq!(sparse(1, 1), 16);
    // 16 · 128 = 2048 > N/4: the full-slot bootstrap.
    assert_eq!(sparse(128, 1), 2048);
    assert!(!logistic::sparse_refresh(bp(), 13, 128, 1)
        .expect("params")
        .is_sparse());
}

/// Refresh by bootstrapping: the same steps as the plaintext run with the same polynomial
/// sigmoid, every refresh a (sparse-slot) bootstrap, and the key holder decrypts nothing
/// during training.
/// Insecure test ring (N = 2^12) so that it runs in seconds; `hetensor train --refresh
/// bootstrap` uses the 128-bit N = 2^16 preset with the same pipeline.
#[test]
fn bootstrapped_training_decrypts_nothing_and_matches_plaintext() {
    use hetensor::ckks::bootstrap::BootstrapParams;
    use hetensor::train::logistic::RefreshBy;
    let data = titanic::load(DEFAULT_TITANIC)
        .expect("titanic")
        .select(&(0..200).collect::<Vec<_>>())
        .expect("subset");
    let sig = PolyActivation::sigmoid(3, (-8.0, 8.0)).expect("fit");
    let c = cfg(1, 50, 0.5, 0.9);
    let mut plain = logistic::model(data.num_features()).expect("model");
    logistic::train_plain(&mut plain, &data, None, &c, Some(&sig)).expect("plain");
    // Batches of 50 in blocks of 64: the 16 blocks repeat with period 1024, half the
    // ring's 2048 slots, and refresh by a sparse bootstrap of that period.
    let bp = BootstrapParams::insecure_test_ring(12, 6).expect("params");
    let bp = logistic::sparse_refresh(bp, data.num_features(), 50, 1).expect("sparse");
    assert_eq!(bp.slots(), 1024);
    let ctx = CkksContext::with_seed(bp.ckks().clone(), [7; 32]).expect("ctx");
    let h = KeyHolder::new(Arc::new(ctx)).expect("keys");
    let opts = EncryptedOptions {
        sigmoid: sig,
        workers: 1,
        monitor: false,
        refresh: RefreshBy::Bootstrap(bp),
    };
    let mut enc = logistic::model(data.num_features()).expect("model");
    // An evaluation set must not bring in a decryption (the weights between epochs) either.
    let rep =
        logistic::train_encrypted(&mut enc, &data, Some(&data), &c, &opts, &h).expect("encrypted");
    assert_eq!(rep.steps.len(), 4);
    assert_eq!(rep.decryptions, 0);
    assert!(rep.epochs.iter().all(|e| e.eval_accuracy.is_none()));
    assert!(rep.refreshes >= 3, "{} refreshes", rep.refreshes);
    assert!(rep.refreshed_by.contains("bootstrapping"));
    let (wp, bp) = logistic::weights(&plain).expect("w");
    let (we, be) = logistic::weights(&enc).expect("w");
    let err = wp
        .iter()
        .zip(&we)
        .map(|(a, b)| (a - b).abs())
        .fold((bp - be).abs(), f64::max);
    eprintln!(
        "bootstrapped: max |w_enc - w_plain| = {err:.2e}, {} refreshes",
        rep.refreshes
    );
    assert!(err < 5e-4, "weights differ by {err}");
}
