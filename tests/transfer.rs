//! MNIST transfer learning: the standardization folded into the frozen convolutions equals
//! the explicit one, the encrypted head steps equal the plaintext steps within CKKS
//! precision, and a tiny end-to-end run (encrypted images → encrypted features → encrypted
//! head) matches its plaintext twin.

use std::sync::Arc;

use hetensor::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use hetensor::lower::LayerTiming;
use hetensor::nn::{mnist, Layer, Sequential, TrainConfig};
use hetensor::rlwe::Security;
use hetensor::train::transfer::{self as tr, EncryptedSet, HeadOptions};
use hetensor::train::KeyHolder;
use hetensor::Error;
use ndarray::{Array2, Axis, Ix2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn cfg(epochs: usize, batch: usize, lr: f64, momentum: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        lr,
        momentum,
        seed: 5,
        progress: hetensor::progress::Progress::none(),
        ..TrainConfig::default()
    }
}

fn holder(params: CkksParams) -> KeyHolder {
    let ctx = CkksContext::with_seed(params, [9; 32]).expect("ctx");
    KeyHolder::new(Arc::new(ctx)).expect("keys")
}

/// Small synthetic problem: `n` samples, `d` features in [-2, 2], labels < `classes`.
fn synthetic(n: usize, d: usize, classes: usize) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let x: Array2<f64> = Array2::from_shape_fn((n, d), |_| rng.random_range(-2.0..2.0));
    // Labels from a random linear rule, so the head has something to learn.
    let w: Array2<f64> = Array2::from_shape_fn((classes, d), |_| rng.random_range(-1.0..1.0));
    let labels = (0..n)
        .map(|i| {
            let z = w.dot(&x.row(i));
            (0..classes)
                .max_by(|&a, &b| z[a].total_cmp(&z[b]))
                .unwrap_or(0)
        })
        .collect();
    (x, labels)
}

/// The server's encrypted set for plaintext features (features at `level`, labels on top),
/// packed the way [`tr::extract_set`] packs them.
fn encrypt_set(
    h: &KeyHolder,
    x: &Array2<f64>,
    labels: &[usize],
    classes: usize,
    level: usize,
) -> EncryptedSet {
    let s = h.ctx().slots();
    let n = labels.len();
    let mut set = EncryptedSet {
        features: vec![],
        labels: vec![],
        samples: n,
    };
    for lo in (0..n).step_by(s) {
        let hi = (lo + s).min(n);
        let mut f: Vec<_> = (0..x.ncols())
            .map(|j| {
                let v: Vec<f64> = (lo..hi).map(|i| x[[i, j]]).collect();
                h.encrypt_at(&v, level).expect("enc")
            })
            .collect();
        f.push(h.encrypt_at(&vec![1.0; hi - lo], level).expect("enc"));
        set.features.push(f);
        set.labels.push(
            (0..classes)
                .map(|c| {
                    let v: Vec<f64> = (lo..hi).map(|i| f64::from(labels[i] == c)).collect();
                    h.encrypt(&v).expect("enc")
                })
                .collect(),
        );
    }
    set
}

fn max_weight_diff(a: &Sequential, b: &Sequential) -> (f64, f64) {
    let (wa, ba) = tr::head_weights(a).expect("head");
    let (wb, bb) = tr::head_weights(b).expect("head");
    let diff = (&wa - &wb)
        .iter()
        .chain((&ba - &bb).iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let size = wb
        .iter()
        .chain(bb.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    (diff, size)
}

#[test]
fn encrypted_head_steps_equal_plaintext_steps() {
    // 128-bit parameters of the workload; 6 features, 3 classes, 40 samples in batches of 16:
    // 6 steps over 2 epochs, momentum, a key-holder refresh before each step after the first.
    let h = holder(tr::transfer_params().expect("params"));
    let ev = h
        .public_eval_steps(&CkksContext::power_of_two_steps(h.ctx().slots()))
        .expect("eval");
    let (n, d, classes) = (40, 6, 3);
    let (x, labels) = synthetic(n, d, classes);
    let set = encrypt_set(&h, &x, &labels, classes, 3);
    let c = cfg(2, 16, 0.3, 0.8);
    // A random start (zero weights would tie all logits, and the arg-max of ties is noise).
    let mut start = tr::head(d, classes).expect("head");
    if let [Layer::Linear(l)] = start.layers_mut() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        l.weight.mapv_inplace(|_| rng.random_range(-0.3..0.3));
    }
    let mut plain = start.clone();
    let plain_steps = tr::train_head_plain(&mut plain, &x, &labels, &c).expect("plain");
    let mut enc = start.clone();
    let rep = tr::train_head_encrypted(
        &mut enc,
        &set,
        &c,
        &HeadOptions {
            monitor_labels: Some(&labels),
        },
        &ev,
        &h,
    )
    .expect("encrypted");
    assert_eq!(rep.steps.len(), 6);
    assert_eq!(rep.refreshes, 5);
    assert_eq!(rep.levels_per_step, 3);
    for (s, (loss, acc)) in rep.steps.iter().zip(&plain_steps) {
        assert_eq!((s.level_before, s.level_after), (3, 0));
        assert!(
            (s.loss - loss).abs() < 1e-3 * loss.max(1.0),
            "step {}: encrypted batch loss {} vs plaintext {loss}",
            s.step,
            s.loss
        );
        assert_eq!(s.accuracy, *acc, "step {}", s.step);
    }
    let (diff, size) = max_weight_diff(&enc, &plain);
    assert!(size > 0.05, "the head did not move ({size})");
    // Each rescale to the 2^26 scale adds ~1e-4 per slot (measured), and the gradient's last
    // rescale lands on the weights: ~1e-4 per weight and step (3e-4 measured after 6 steps),
    // against updates of ~1e-2.
    assert!(
        diff < 1e-3,
        "max |w_enc − w_plain| = {diff:e} (weights up to {size})"
    );
}

#[test]
fn encrypted_head_rejects_bad_inputs() {
    let h = holder(tr::transfer_params().expect("params"));
    let ev = h.public_eval_steps(&[1]).expect("eval");
    let (x, labels) = synthetic(8, 3, 2);
    // Features at level 2 (as the extraction leaves them) leave no room for a step.
    let low = encrypt_set(&h, &x, &labels, 2, 2);
    let mut head = tr::head(3, 2).expect("head");
    let r = tr::train_head_encrypted(
        &mut head,
        &low,
        &cfg(1, 4, 0.1, 0.0),
        &HeadOptions::default(),
        &ev,
        &h,
    );
    assert!(matches!(r, Err(Error::OutOfLevels { .. })), "{r:?}");
    // A head of the wrong shape.
    let set = encrypt_set(&h, &x, &labels, 2, 3);
    let mut wrong = tr::head(4, 2).expect("head");
    let r = tr::train_head_encrypted(
        &mut wrong,
        &set,
        &cfg(1, 4, 0.1, 0.0),
        &HeadOptions::default(),
        &ev,
        &h,
    );
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    // Bad hyper-parameters.
    let r = tr::train_head_encrypted(
        &mut head,
        &set,
        &cfg(1, 0, 0.1, 0.0),
        &HeadOptions::default(),
        &ev,
        &h,
    );
    assert!(r.is_err());
    assert!(tr::train_head_plain(&mut head, &x, &labels, &cfg(1, 4, 0.1, 1.5)).is_err());
}

/// Public digits 0-4 and private 5-9 from the bundled MNIST subset, a few of each.
fn digits(n_public: usize, n_private: usize) -> (hetensor::nn::Dataset, hetensor::nn::Dataset) {
    let all = mnist::load_train(mnist::DEFAULT_DIR).expect("mnist");
    let public = tr::digits_subset(&all, tr::PUBLIC_DIGITS).expect("0-4");
    let private = tr::digits_subset(&all, tr::PRIVATE_DIGITS).expect("5-9");
    assert!(public.labels.iter().all(|&l| l < 5) && private.labels.iter().all(|&l| l < 5));
    (public.take(n_public), private.take(n_private))
}

fn short_pretrain(public: &hetensor::nn::Dataset) -> Sequential {
    let pcfg = TrainConfig {
        epochs: 1,
        progress: hetensor::progress::Progress::none(),
        augment: None,
        ..tr::pretrain_config()
    };
    tr::pretrain(public, &pcfg).expect("pretrain")
}

#[test]
fn folded_standardization_equals_explicit_one() {
    let (public, private) = digits(300, 50);
    let model = short_pretrain(&public);
    let fx = tr::FeatureExtractor::new(&model, &public.inputs).expect("extractor");
    assert_eq!(fx.features(), 192);
    assert_eq!(fx.levels().expect("levels"), 4);
    // Reference: the unmodified model up to Flatten (average pooling), then
    // (x − μ)·a_c with μ, a_c from the public digits.
    let mut feat = Sequential::new();
    for (name, layer) in model.iter().take(model.len() - 1) {
        feat.push(name, layer.clone()).expect("push");
    }
    let raw = |x| {
        feat.forward(x)
            .expect("forward")
            .into_dimensionality::<Ix2>()
            .expect("2d")
    };
    let pub_raw = raw(&public.inputs);
    let mean = pub_raw.mean_axis(Axis(0)).expect("mean");
    let var = pub_raw.var_axis(Axis(0), 0.0);
    let want = {
        let mut r = raw(&private.inputs);
        for mut row in r.axis_iter_mut(Axis(0)) {
            for j in 0..192 {
                let c = j / 16;
                let a = 1.0 / (var.slice(ndarray::s![c * 16..(c + 1) * 16]).sum() / 16.0).sqrt();
                row[j] = (row[j] - mean[j]) * a;
            }
        }
        r
    };
    let got = fx.extract(&private.inputs).expect("extract");
    let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(err < 1e-9, "folded standardization differs by {err:e}");
    // Standardized on the public data: mean ≈ 0, RMS std per channel = 1.
    let pub_std = fx.extract(&public.inputs).expect("extract");
    let m = pub_std.mean_axis(Axis(0)).expect("mean");
    assert!(m.iter().all(|v| v.abs() < 1e-9));
    // A model that does not end in conv → square → pool → flatten → linear is refused.
    let mut bad = Sequential::new();
    for (name, layer) in model
        .iter()
        .filter(|(_, l)| !matches!(l, Layer::Flatten(_)))
    {
        bad.push(name, layer.clone()).expect("push");
    }
    assert!(tr::FeatureExtractor::new(&bad, &public.inputs).is_err());
}

#[test]
fn tiny_end_to_end_run_matches_plaintext() {
    // N = 2^10 with the workload's 6-level chain: INSECURE, for test speed only (the CLI and
    // the benchmarks use tr::transfer_params(), N = 2^13 at 128-bit security).
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n: 10,
        levels: 6,
        scale_bits: 26,
        dnum: 7,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .expect("params");
    let h = holder(params);
    let ev = h
        .public_eval_steps(&CkksContext::power_of_two_steps(h.ctx().slots()))
        .expect("eval");
    let (public, private) = digits(300, 40);
    let model = short_pretrain(&public);
    let fx = tr::FeatureExtractor::new(&model, &public.inputs).expect("extractor");
    let upload = tr::encrypt_upload(&ev, &private.inputs, &private.labels, 5).expect("upload");
    let mut timing = LayerTiming::default();
    let mut set = tr::extract_set(&fx, &ev, upload, &mut timing).expect("features");
    assert_eq!(set.features[0].len(), 193);
    assert_eq!(set.features[0][0].level(), 2);
    assert_eq!(tr::refresh_features(&h, &mut set).expect("refresh"), 193);
    assert_eq!(set.features[0][0].level(), tr::FEATURE_LEVEL);
    // Encrypted features against the plaintext ones.
    let x = fx.extract(&private.inputs).expect("extract");
    let fmax = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut ferr = 0.0f64;
    for (j, ct) in set.features[0].iter().take(192).enumerate() {
        let v = h.decrypt(ct).expect("dec");
        for t in 0..private.len() {
            ferr = ferr.max((v[t] - x[[t, j]]).abs());
        }
    }
    assert!(
        ferr < 1e-3 * fmax.max(1.0),
        "feature error {ferr:e} (max |x| {fmax})"
    );
    // One epoch of two batches, encrypted and plaintext.
    let c = cfg(1, 20, 0.05, 0.9);
    let mut plain = tr::head(192, 5).expect("head");
    tr::train_head_plain(&mut plain, &x, &private.labels, &c).expect("plain");
    let mut enc = tr::head(192, 5).expect("head");
    let rep = tr::train_head_encrypted(&mut enc, &set, &c, &HeadOptions::default(), &ev, &h)
        .expect("enc");
    assert_eq!((rep.steps.len(), rep.refreshes), (2, 1));
    assert!(
        rep.steps.iter().all(|s| s.loss.is_nan()),
        "no monitor was asked for"
    );
    let (diff, size) = max_weight_diff(&enc, &plain);
    assert!(size > 1e-3, "the head did not move");
    assert!(
        diff < 2e-2 * size,
        "max |w_enc − w_plain| = {diff:e} (weights up to {size})"
    );
}
