//! `hetensor train mnist-transfer`: LeNet-1 pretrained in plaintext on digits 0-4, a new head
//! for digits 5-9 trained on encrypted features and labels (see `hetensor::train::transfer`),
//! next to the same head trained in plaintext on the same batches.

use std::sync::Arc;
use std::time::Instant;

use hetensor::ckks::CkksContext;
use hetensor::lower::LayerTiming;
use hetensor::nn::{mnist, TrainConfig};
use hetensor::train::transfer::{self as tr, HeadOptions};
use hetensor::train::KeyHolder;
use hetensor::{Error, Result};

/// Options of `hetensor train mnist-transfer`.
pub struct TransferOptions {
    pub images: Option<usize>,
    pub epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub batch: usize,
    pub seed: u64,
    pub json: bool,
    /// Key-share holders (`--parties`): no key holder.
    pub parties: Option<usize>,
    /// `--refresh bootstrap`: the packed head, refreshed by bootstrapping.
    pub bootstrap: bool,
    /// With `bootstrap`: the insecure N = 2^13 test ring instead of the 128-bit 2^16.
    pub insecure_test_ring: bool,
}

/// What both runs (one key holder, or `--parties`) start from: the data, the pretrained
/// extractor, the plaintext features and the plaintext reference head.
pub struct Prepared {
    pub private: hetensor::nn::Dataset,
    pub test: hetensor::nn::Dataset,
    pub public_len: usize,
    pub public_acc: f64,
    pub pretrain_s: f64,
    pub fx: tr::FeatureExtractor,
    pub cfg: TrainConfig,
    pub x_train: ndarray::Array2<f64>,
    pub x_test: ndarray::Array2<f64>,
    pub plain: hetensor::nn::Sequential,
    pub plain_acc: f64,
}

/// Checks the options, loads the digits, pretrains, and trains the plaintext reference head.
pub fn prepare(o: &TransferOptions) -> Result<Prepared> {
    let say = |m: String| {
        if !o.json {
            eprintln!("{m}");
        }
    };
    // Fail before the minutes of pretraining and extraction.
    if o.batch == 0 || o.epochs == 0 {
        return Err(Error::InvalidInput(
            "--batch and --epochs must be at least 1".into(),
        ));
    }
    if !(o.lr.is_finite() && o.lr > 0.0 && (0.0..1.0).contains(&o.momentum)) {
        return Err(Error::InvalidInput(format!(
            "--lr must be > 0 and --momentum in [0, 1), got {} and {}",
            o.lr, o.momentum
        )));
    }
    let train_all = mnist::load_train(mnist::DEFAULT_DIR)?;
    let test_all = mnist::load_test(mnist::DEFAULT_DIR)?;
    let public = tr::digits_subset(&train_all, tr::PUBLIC_DIGITS)?;
    let mut private = tr::digits_subset(&train_all, tr::PRIVATE_DIGITS)?;
    if let Some(n) = o.images {
        if n == 0 {
            return Err(Error::InvalidInput("--images must be at least 1".into()));
        }
        private = private.take(n);
    }
    let test = tr::digits_subset(&test_all, tr::PRIVATE_DIGITS)?;
    let public_test = tr::digits_subset(&test_all, tr::PUBLIC_DIGITS)?;

    // 1. Plaintext pretraining on the public digits.
    let t = Instant::now();
    let mut pcfg = tr::pretrain_config();
    pcfg.progress = super::progress_bar(!o.json);
    let model = tr::pretrain(&public, &pcfg)?;
    let pretrain_s = t.elapsed().as_secs_f64();
    let public_acc = model.accuracy(&public_test)?;
    say(format!(
        "pretrained LeNet-1 on {} public digits 0-4 in {pretrain_s:.1} s: {:.2}% on the {} test digits 0-4",
        public.len(),
        100.0 * public_acc,
        public_test.len()
    ));
    let fx = tr::FeatureExtractor::new(&model, &public.inputs)?;

    // 2. Plaintext reference head on the same batches.
    let cfg = TrainConfig {
        epochs: o.epochs,
        batch_size: o.batch,
        lr: o.lr,
        momentum: o.momentum,
        seed: o.seed,
        progress: super::progress_bar(!o.json),
        ..TrainConfig::default()
    };
    let x_train = fx.extract(&private.inputs)?;
    let x_test = fx.extract(&test.inputs)?;
    let mut plain = tr::head(fx.features(), 5)?;
    tr::train_head_plain(&mut plain, &x_train, &private.labels, &cfg)?;
    let plain_acc = tr::head_accuracy(&plain, &x_test, &test.labels)?;
    Ok(Prepared {
        private,
        test,
        public_len: public.len(),
        public_acc,
        pretrain_s,
        fx,
        cfg,
        x_train,
        x_test,
        plain,
        plain_acc,
    })
}

/// Runs the workload and prints a text or JSON report.
pub fn run(o: TransferOptions) -> Result<()> {
    let say = |m: String| {
        if !o.json {
            eprintln!("{m}");
        }
    };
    let p = prepare(&o)?;
    if let Some(k) = o.parties {
        return super::parties::run_transfer(&o, k, &p);
    }
    if o.bootstrap {
        return run_bootstrap(&o, &p);
    }
    let (private, test, fx, cfg) = (&p.private, &p.test, &p.fx, &p.cfg);
    let (x_train, x_test, plain) = (&p.x_train, &p.x_test, &p.plain);
    let (public_acc, pretrain_s, plain_acc) = (p.public_acc, p.pretrain_s, p.plain_acc);

    // 3. Keys (key holder = data owner), upload, encrypted feature extraction.
    let t = Instant::now();
    let ctx = Arc::new(CkksContext::new(tr::transfer_params()?)?);
    let holder = KeyHolder::new(ctx.clone())?;
    let ev = holder.public_eval_steps(&CkksContext::power_of_two_steps(ctx.slots()))?;
    let keygen_s = t.elapsed().as_secs_f64();
    say(format!(
        "CKKS N = 2^13, {} levels, scale 2^{}, log2 QP = {:.0}; keys {keygen_s:.1} s; {} private images (digits 5-9), {} features",
        ctx.max_level(),
        ctx.params().scale_bits(),
        ctx.params().rlwe().log_qp(),
        private.len(),
        fx.features()
    ));
    let t = Instant::now();
    let upload = tr::encrypt_upload(&ev, &private.inputs, &private.labels, 5)?;
    let encrypt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut timing = LayerTiming::default();
    let mut set = tr::extract_set(fx, &ev, upload, &mut timing)?;
    let extract_s = t.elapsed().as_secs_f64();
    let extract_level = set.features[0][0].level();
    let t = Instant::now();
    let feature_refreshes = tr::refresh_features(&holder, &mut set)?;
    let feature_refresh_s = t.elapsed().as_secs_f64();
    // Diagnostic (key holder = data owner): the decrypted features, to compare them with the
    // plaintext ones and to train a plaintext head on exactly what the server trained on.
    let s = ctx.slots();
    let cols = set
        .features
        .iter()
        .map(|blk| {
            blk[..fx.features()]
                .iter()
                .map(|c| holder.decrypt(c))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let x_dec = ndarray::Array2::from_shape_fn((private.len(), fx.features()), |(i, j)| {
        cols[i / s][j][i % s]
    });
    let feat_err = (&x_dec - x_train)
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let feat_rms = ((&x_dec - x_train).mapv(|v| v * v).mean().unwrap_or(0.0)).sqrt();
    say(format!(
        "encrypted {} images in {encrypt_s:.1} s; extracted the features encrypted in {extract_s:.1} s (down to level {extract_level}; error vs plaintext: max {feat_err:.1e}, rms {feat_rms:.1e}); key-holder refresh of the {feature_refreshes} feature ciphertexts to level {}: {feature_refresh_s:.1} s",
        private.len(),
        tr::FEATURE_LEVEL
    ));

    // 4. Encrypted head training.
    let mut enc = tr::head(fx.features(), 5)?;
    let t = Instant::now();
    let rep = tr::train_head_encrypted(
        &mut enc,
        &set,
        cfg,
        &HeadOptions {
            monitor_labels: Some(&private.labels),
        },
        &ev,
        &holder,
    )?;
    let train_s = t.elapsed().as_secs_f64();
    let enc_acc = tr::head_accuracy(&enc, x_test, &test.labels)?;
    let (we, be) = tr::head_weights(&enc)?;
    let (wp, bp) = tr::head_weights(plain)?;
    let diff = |w: &ndarray::Array2<f64>, b: &ndarray::Array1<f64>| {
        (&we - w)
            .iter()
            .chain((&be - b).iter())
            .fold(0.0f64, |m, v| m.max(v.abs()))
    };
    let max_diff = diff(&wp, &bp);
    let mut plain_dec = tr::head(fx.features(), 5)?;
    tr::train_head_plain(&mut plain_dec, &x_dec, &private.labels, cfg)?;
    let (wd, bd) = tr::head_weights(&plain_dec)?;
    let max_diff_dec = diff(&wd, &bd);
    let wmax = wp
        .iter()
        .chain(bp.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    if o.json {
        let v = serde_json::json!({
            "workload": "mnist-transfer", "public_train": p.public_len,
            "public_test_accuracy": public_acc, "pretrain_seconds": pretrain_s,
            "private_train": private.len(), "private_test": test.len(),
            "features": fx.features(), "log_n": 13, "levels": ctx.max_level(),
            "epochs": o.epochs, "batch": o.batch, "lr": o.lr, "momentum": o.momentum,
            "seed": o.seed, "loss": "mse",
            "encrypted_test_accuracy": enc_acc, "plaintext_test_accuracy": plain_acc,
            "max_weight_diff_vs_plaintext": max_diff,
            "max_weight_diff_vs_plaintext_on_decrypted_features": max_diff_dec,
            "max_plaintext_weight": wmax, "feature_rms_error": feat_rms,
            "keygen_seconds": keygen_s, "encrypt_seconds": encrypt_s,
            "extract_seconds": extract_s, "extract_layers": timing.layers,
            "feature_max_error": feat_err, "train_seconds": train_s,
            "feature_refresh_ciphertexts": feature_refreshes,
            "feature_refresh_seconds": feature_refresh_s,
            "report": rep,
        });
        println!("{v}");
    } else {
        for s in &rep.steps {
            println!(
                "  step {:>2} (epoch {}): {} images, batch loss {:.4}, batch acc {:.2}% (key-holder monitor), levels {} → {}, {:.1} s{}",
                s.step,
                s.epoch,
                s.samples,
                s.loss,
                100.0 * s.accuracy,
                s.level_before,
                s.level_after,
                s.seconds,
                if s.refreshed { ", after a key-holder refresh" } else { "" }
            );
        }
        for (e, (sec, rs)) in rep
            .epoch_seconds
            .iter()
            .zip(&rep.epoch_refresh_seconds)
            .enumerate()
        {
            println!(
                "epoch {}: {sec:.1} s encrypted + {rs:.1} s key-holder refresh ({} images, {} steps)",
                e + 1,
                private.len(),
                private.len().div_ceil(o.batch)
            );
        }
        println!(
            "encrypted head: {:.2}% on the {} held-out test digits 5-9 (plaintext head, same batches: {:.2}%)",
            100.0 * enc_acc,
            test.len(),
            100.0 * plain_acc
        );
        println!(
            "max |w_enc − w_plain| = {max_diff:.2e} (weights up to {wmax:.2}); against a plaintext head trained on the decrypted encrypted features: {max_diff_dec:.2e}"
        );
        println!(
            "{} steps, {} levels and {} rotations per step, {} key-holder refreshes of {} weight/velocity ciphertexts (decrypt + re-encrypt) + 1 of the features; pretrain {pretrain_s:.1} s, keys {keygen_s:.1} s, encrypt {encrypt_s:.1} s, encrypted features {extract_s:.1} s, encrypted training {train_s:.1} s",
            rep.steps.len(),
            rep.levels_per_step,
            rep.rotations_per_step,
            rep.refreshes,
            rep.ciphertexts_per_refresh
        );
    }
    Ok(())
}

/// `--refresh bootstrap`: the data owner extracts the features with the public frozen
/// extractor, encrypts them in the packed layout and generates the public keys; the server
/// trains the packed head with bootstrapping refreshes and no secret key
/// ([`hetensor::train::packed_head`]); the data owner decrypts the trained head once.
fn run_bootstrap(o: &TransferOptions, p: &Prepared) -> Result<()> {
    use hetensor::ckks::bootstrap::BootstrapParams;
    use hetensor::train::packed_head::{self as ph, PackedConfig, PackedLayout};
    let say = |m: String| {
        if !o.json {
            eprintln!("{m}");
        }
    };
    let (private, test, fx) = (&p.private, &p.test, &p.fx);
    let (d, classes) = (fx.features(), 5);
    let t = Instant::now();
    let (base, log_n) = if o.insecure_test_ring {
        (BootstrapParams::insecure_test_ring(13, 8)?, 13)
    } else {
        (BootstrapParams::n16()?, 16)
    };
    let ctx = Arc::new(CkksContext::new(base.ckks().clone())?);
    let layout = PackedLayout::new(ctx.slots(), ph::DEFAULT_BLOCK, d, classes)?;
    let holder = KeyHolder::new(ctx.clone())?;
    let boot = holder.bootstrapper(&ph::bootstrap_params(base, &layout)?)?;
    let ev =
        holder.public_eval_steps_below(&layout.rotation_steps(), ph::state_level(boot.keys()))?;
    let keygen_s = t.elapsed().as_secs_f64();
    let key_bytes = boot.keys().memory_bytes() + ev.galois.memory_bytes();
    say(format!(
        "CKKS N = 2^{log_n}{}, bootstraps to level {} at scale 2^{}; packed layout: {} slots per sample ({} chunks), {} samples per ciphertext; refresh: {} state ciphertexts in {} sparse bootstrap(s) of {} slots; keys {keygen_s:.1} s, {:.2} GB",
        if o.insecure_test_ring { " (INSECURE test ring)" } else { ", 128-bit" },
        boot.output_level(),
        ctx.params().scale_bits(),
        layout.block,
        layout.chunks,
        layout.samples_per_ct,
        layout.state_ciphertexts(),
        layout.bootstraps_per_refresh(),
        layout.refresh_period(),
        key_bytes as f64 / 1e9
    ));
    // The data owner: features in plaintext (public extractor), packed in a once-shuffled
    // order, encrypted under the public key.
    let t = Instant::now();
    let order = ph::sample_order(private.len(), o.seed);
    let x = p.x_train.select(ndarray::Axis(0), &order);
    let labels: Vec<usize> = order.iter().map(|&i| private.labels[i]).collect();
    let level = ph::state_level(boot.keys());
    let set = ph::encrypt_packed(&ev, &layout, &x, &labels, level)?;
    let init = ph::encrypt_head(
        &ev,
        &layout,
        &ndarray::Array2::zeros((classes, d)),
        &ndarray::Array1::zeros(classes),
        level,
    )?;
    let encrypt_s = t.elapsed().as_secs_f64();
    say(format!(
        "data owner: {} images' features encrypted in {} ciphertexts at level {level} in {encrypt_s:.1} s",
        private.len(),
        set.x.iter().map(Vec::len).sum::<usize>()
            + set.x_grad.iter().flatten().filter(|c| c.is_some()).count()
    ));
    // The server: public material only.
    let cfg = PackedConfig {
        epochs: o.epochs,
        batch: o.batch,
        lr: o.lr,
        momentum: o.momentum,
        progress: super::progress_bar(!o.json),
    };
    let t = Instant::now();
    let (head, rep) = ph::train_packed(&ev, boot.keys(), &set, init, &cfg)?;
    let train_s = t.elapsed().as_secs_f64();
    // The data owner's one decryption, and the same steps in plaintext.
    let (w, b) = ph::decrypt_head(&holder, &layout, &head)?;
    let mut enc = tr::head(d, classes)?;
    let vals: Vec<f64> = (0..classes)
        .flat_map(|c| {
            (0..d)
                .map(move |j| (c, j))
                .map(|(c, j)| w[[c, j]])
                .chain([b[c]])
        })
        .collect();
    tr::set_head_weights(&mut enc, &vals)?;
    let enc_acc = tr::head_accuracy(&enc, &p.x_test, &test.labels)?;
    let batches: Vec<Vec<usize>> = (0..o.epochs)
        .flat_map(|_| {
            ph::epoch_ranges(private.len(), o.batch)
                .into_iter()
                .map(|r| r.collect())
        })
        .collect();
    let mut plain = tr::head(d, classes)?;
    tr::train_head_plain_batches(&mut plain, &x, &labels, &batches, &p.cfg)?;
    let plain_acc = tr::head_accuracy(&plain, &p.x_test, &test.labels)?;
    let (wp, bp) = tr::head_weights(&plain)?;
    let max_diff = (&w - &wp)
        .iter()
        .chain((&b - &bp).iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    if o.json {
        let v = serde_json::json!({
            "workload": "mnist-transfer", "refresh": "bootstrap",
            "insecure_test_ring": o.insecure_test_ring, "log_n": log_n,
            "public_train": p.public_len, "public_test_accuracy": p.public_acc,
            "pretrain_seconds": p.pretrain_s,
            "private_train": private.len(), "private_test": test.len(), "features": d,
            "epochs": o.epochs, "batch": o.batch, "lr": o.lr, "momentum": o.momentum,
            "seed": o.seed, "loss": "mse",
            "encrypted_test_accuracy": enc_acc,
            "plaintext_test_accuracy_same_batches": plain_acc,
            "plaintext_test_accuracy_shuffled_batches": p.plain_acc,
            "max_weight_diff_vs_plaintext": max_diff,
            "decryptions_during_training": rep.decryptions,
            "keygen_seconds": keygen_s, "key_bytes": key_bytes,
            "encrypt_seconds": encrypt_s, "train_seconds": train_s,
            "report": rep,
        });
        println!("{v}");
    } else {
        for s in &rep.steps {
            println!(
                "  step {:>2} (epoch {}): {} images in {} ciphertext groups, levels {} → {}, {:.1} s{}",
                s.step,
                s.epoch,
                s.samples,
                s.groups,
                s.level_before,
                s.level_after,
                s.seconds,
                if s.refreshed {
                    format!(", after a {:.1} s bootstrap refresh", s.refresh_seconds)
                } else {
                    String::new()
                }
            );
        }
        println!(
            "encrypted head (bootstrapped {} times, {} decryptions during training): {:.2}% on {} held-out digits 5-9; plaintext head on the same batches {:.2}% (max |w_enc − w_plain| {max_diff:.1e}); training {train_s:.1} s ({:.1} s steps + {:.1} s refreshes)",
            rep.refreshes,
            rep.decryptions,
            100.0 * enc_acc,
            test.len(),
            100.0 * plain_acc,
            rep.step_seconds,
            rep.refresh_seconds
        );
    }
    Ok(())
}
