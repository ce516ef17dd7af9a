//! `hetensor train titanic|credit|credit-federated`: encrypted logistic regression next to
//! the same model trained in plaintext (true sigmoid and the same polynomial sigmoid).

use std::sync::Arc;
use std::time::Instant;

use hetensor::ckks::CkksContext;
use hetensor::data::{self, Dataset};
use hetensor::nn::{PolyActivation, TrainConfig};
use hetensor::train::federated::train_federated;
use hetensor::train::logistic::{self, EncryptedOptions};
use hetensor::train::{training_params, KeyHolder};
use hetensor::{Error, Result};

/// Options of `hetensor train`.
pub struct TrainOptions {
    pub workload: String,
    pub data: Option<std::path::PathBuf>,
    pub workers: usize,
    pub degree: usize,
    pub interval: f64,
    pub epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub batch: usize,
    pub rounds: usize,
    pub log_n: u32,
    pub seed: u64,
    pub json: bool,
}

fn load(o: &TrainOptions) -> Result<Dataset> {
    match o.workload.as_str() {
        "titanic" => {
            data::titanic::load(o.data.as_deref().unwrap_or(data::DEFAULT_TITANIC.as_ref()))
        }
        "credit" | "credit-federated" => {
            data::credit::load(o.data.as_deref().unwrap_or(data::DEFAULT_CREDIT.as_ref()))
        }
        w => Err(Error::InvalidInput(format!(
            "unknown workload {w:?}: use titanic, credit, credit-federated or mnist-transfer"
        ))),
    }
}

/// Runs a workload and prints a text or JSON report.
pub fn run(o: TrainOptions) -> Result<()> {
    if ![3, 5, 7].contains(&o.degree) {
        return Err(Error::InvalidInput(format!(
            "--degree must be 3, 5 or 7, got {}",
            o.degree
        )));
    }
    if !(o.interval.is_finite() && o.interval > 0.0) {
        return Err(Error::InvalidInput(format!(
            "--interval must be > 0, got {}",
            o.interval
        )));
    }
    let all = load(&o)?;
    let (train, test) = all.split(0.2, o.seed)?;
    let sigmoid = PolyActivation::sigmoid(o.degree, (-o.interval, o.interval))?;
    let cfg = TrainConfig {
        epochs: o.epochs,
        batch_size: o.batch,
        lr: o.lr,
        momentum: o.momentum,
        weight_decay: 0.0,
        seed: o.seed,
        progress: !o.json,
        ..TrainConfig::default()
    };
    let t = Instant::now();
    let ctx = Arc::new(CkksContext::new(training_params(o.log_n)?)?);
    let holder = KeyHolder::new(ctx.clone())?;
    let setup_s = t.elapsed().as_secs_f64();
    if !o.json {
        eprintln!(
            "{}: {} train / {} test rows, {} features; CKKS N = 2^{}, {} levels, scale 2^{}; sigmoid: degree {} least-squares fit on [-{}, {}]",
            o.workload,
            train.len(),
            test.len(),
            train.num_features(),
            o.log_n,
            ctx.max_level(),
            ctx.params().scale_bits,
            o.degree,
            o.interval,
            o.interval
        );
    }
    // Plaintext references: true sigmoid, and the same polynomial sigmoid.
    let mut quiet = cfg.clone();
    quiet.progress = false;
    let mut plain = logistic::model(train.num_features())?;
    logistic::train_plain(&mut plain, &train, None, &quiet, None)?;
    let (plain_acc, plain_loss) = logistic::evaluate(&plain, &test)?;
    let mut plain_poly = logistic::model(train.num_features())?;
    logistic::train_plain(&mut plain_poly, &train, None, &quiet, Some(&sigmoid))?;
    let (poly_acc, _) = logistic::evaluate(&plain_poly, &test)?;

    if o.workload == "credit-federated" {
        let owners = o.workers.max(2);
        let shards = train.shards(owners)?;
        let mut fed = logistic::model(train.num_features())?;
        let rep = train_federated(
            &mut fed,
            &shards,
            Some(&test),
            &cfg,
            o.rounds,
            Some(&sigmoid),
            &holder,
        )?;
        let (acc, loss) = logistic::evaluate(&fed, &test)?;
        if o.json {
            let v = serde_json::json!({
                "workload": o.workload, "owners": owners, "rounds": o.rounds,
                "local_epochs": o.epochs, "test_accuracy": acc, "test_loss": loss,
                "plaintext_test_accuracy": plain_acc, "plaintext_poly_test_accuracy": poly_acc,
                "report": rep, "setup_seconds": setup_s,
            });
            println!("{v}");
        } else {
            println!(
                "federated ({owners} owners, {} rounds × {} local epochs, encrypted aggregation): test accuracy {:.2}% (loss {loss:.4}); centralized plaintext: {:.2}% (true sigmoid), {:.2}% (polynomial) — {:.2} s",
                o.rounds,
                o.epochs,
                100.0 * acc,
                100.0 * plain_acc,
                100.0 * poly_acc,
                rep.seconds
            );
        }
        return Ok(());
    }

    let opts = EncryptedOptions {
        sigmoid: sigmoid.clone(),
        workers: o.workers.max(1),
        monitor: true,
    };
    let mut enc = logistic::model(train.num_features())?;
    let t = Instant::now();
    let rep = logistic::train_encrypted(&mut enc, &train, Some(&test), &cfg, &opts, &holder)?;
    let total_s = t.elapsed().as_secs_f64() + setup_s;
    let (enc_acc, enc_loss) = logistic::evaluate(&enc, &test)?;
    let (wp, bp) = logistic::weights(&plain_poly)?;
    let (we, be) = logistic::weights(&enc)?;
    let max_diff = wp
        .iter()
        .zip(&we)
        .map(|(a, b)| (a - b).abs())
        .fold((bp - be).abs(), f64::max);
    if o.json {
        let v = serde_json::json!({
            "workload": o.workload, "rows_train": train.len(), "rows_test": test.len(),
            "features": train.feature_names, "log_n": o.log_n, "levels": ctx.max_level(),
            "degree": o.degree, "interval": o.interval, "epochs": o.epochs, "batch": o.batch,
            "lr": o.lr, "momentum": o.momentum, "workers": o.workers,
            "encrypted_test_accuracy": enc_acc, "encrypted_test_loss": enc_loss,
            "plaintext_test_accuracy": plain_acc, "plaintext_test_loss": plain_loss,
            "plaintext_poly_test_accuracy": poly_acc,
            "max_weight_diff_vs_plaintext_poly": max_diff,
            "setup_seconds": setup_s, "total_seconds": total_s, "report": rep,
        });
        println!("{v}");
    } else {
        for s in rep.steps.iter().filter(|s| s.refreshed) {
            eprintln!(
                "  refresh before step {} (key holder: decrypt + re-encrypt weights and velocity)",
                s.step
            );
        }
        println!(
            "encrypted: test accuracy {:.2}% (loss {enc_loss:.4}) after {} steps; {} levels per step, {} rotations per step, {} key-holder refreshes",
            100.0 * enc_acc,
            rep.steps.len(),
            rep.levels_per_step,
            rep.rotations_per_step,
            rep.refreshes
        );
        println!(
            "plaintext, same batches: {:.2}% (true sigmoid, loss {plain_loss:.4}), {:.2}% (same polynomial sigmoid); max |w_enc − w_plain,poly| = {max_diff:.2e}",
            100.0 * plain_acc,
            100.0 * poly_acc
        );
        println!(
            "time: keys+context {:.2} s, Galois keys {:.2} s, encrypt {} ciphertexts {:.2} s, train {:.2} s ({:.3} s/step), total {:.2} s",
            setup_s,
            rep.keygen_seconds,
            rep.data_ciphertexts,
            rep.encrypt_seconds,
            rep.train_seconds,
            rep.steps.iter().map(|s| s.seconds).sum::<f64>() / rep.steps.len().max(1) as f64,
            total_s
        );
    }
    Ok(())
}
