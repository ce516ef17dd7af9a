//! `hetensor train`: its options, the flags each workload reads, and titanic|credit|
//! credit-federated: encrypted logistic regression next to the same model trained in
//! plaintext (true sigmoid and the same polynomial sigmoid), with the shards of each step in
//! this process or on `hetensor worker` processes (mnist-transfer: [`super::transfer`]).

use std::sync::Arc;
use std::time::Instant;

use hetensor::ckks::bootstrap::BootstrapParams;
use hetensor::ckks::CkksContext;
use hetensor::data::{self, Dataset};
use hetensor::nn::{PolyActivation, TrainConfig};
use hetensor::serialize::DecodeOptions;
use hetensor::train::federated::train_federated;
use hetensor::train::logistic::{self, EncryptedOptions, InProcess, RefreshBy, ShardRunner};
use hetensor::train::{training_params, KeyHolder, TrainDefaults};
use hetensor::workers::{WorkerLimits, WorkerPool};
use hetensor::{Error, Result};

use super::args::{at_least, momentum, one_of, positive};
use super::options::{OutputSmudging, Refresh, Workload};

/// Options of `hetensor train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// titanic, credit, credit-federated or mnist-transfer (which reads only --images,
    /// --epochs, --batch, --lr, --momentum, --seed, --refresh, --insecure-test-ring,
    /// --parties and --json; it runs on all cores). A flag the workload does not read is an
    /// error.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Data file (default: the bundled copy).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Data-parallel shards per step, each on its own `hetensor worker` process (holding
    /// only the public context); data owners for credit-federated (at least 2). Default:
    /// one shard, in this process; 2 owners for credit-federated.
    #[arg(long, value_parser = at_least(1))]
    pub workers: Option<usize>,
    /// Run the --workers shards on rayon threads of this process instead of processes.
    #[arg(long, requires = "workers")]
    pub in_process: bool,
    /// Degree of the least-squares sigmoid fit: 3, 5 or 7 [default: 7].
    #[arg(long, value_parser = one_of(&[3, 5, 7]))]
    pub degree: Option<usize>,
    /// The fit interval is [-A, A] [default: 12].
    #[arg(long, value_parser = positive)]
    pub interval: Option<f64>,
    /// Epochs (local epochs per round for credit-federated) [default: titanic 8, credit
    /// 10, credit-federated 3, mnist-transfer 3].
    #[arg(long, value_parser = at_least(1))]
    pub epochs: Option<usize>,
    /// Learning rate [default: titanic 0.5, credit 0.2, credit-federated 0.2, mnist-transfer
    /// 0.04].
    #[arg(long, value_parser = positive)]
    pub lr: Option<f64>,
    /// Momentum, in [0, 1) [default: 0.9].
    #[arg(long, value_parser = momentum)]
    pub momentum: Option<f64>,
    /// Mini-batch size [default: 128; mnist-transfer: 1250].
    #[arg(long, value_parser = at_least(1))]
    pub batch: Option<usize>,
    /// mnist-transfer: private training images (digits 5-9 of data/mnist/train-10k) to
    /// use [default: all 4,869].
    #[arg(long, value_parser = at_least(1))]
    pub images: Option<usize>,
    /// Federated rounds (credit-federated only) [default: 5].
    #[arg(long, value_parser = at_least(1))]
    pub rounds: Option<usize>,
    /// credit-federated with no key holder: K party processes, each with its slice of the
    /// data and a key share, train by federated SGD with collective keys and refreshes;
    /// only the final model is decrypted, collectively, to party 0. Also runs the same
    /// steps with one key holder for comparison. Takes --epochs [default: 10], --lr
    /// [default: 0.2], --batch, --degree, --interval, --log-n, --seed, --data; no
    /// --workers, --in-process or --rounds. mnist-transfer --parties 2: two key-share
    /// holders, collective refreshes, the head re-encrypted to the data owner (N = 2^14).
    #[arg(long, value_parser = at_least(2))]
    pub parties: Option<usize>,
    /// credit-federated --parties: how the final model's collective decryption hides the
    /// ciphertext's noise. `statistical`: 40-bit statistical smudging, on a chain precise
    /// enough to keep the weights within ~1e-2 of the single-key run under it (scale 2^84
    /// in composite levels, N = 2^15; ~5x slower); `weak`: 2^14 per share on the 2^26 chain
    /// at N = 2^14 (the noise is hidden far below 40 bits) [default: statistical].
    #[arg(long, value_enum)]
    pub output_smudging: Option<OutputSmudging>,
    /// log2 of the ring degree, 13 to 16 [default: 16 when refreshing by bootstrapping;
    /// 14 (13 levels, two steps per refresh) with --refresh key-holder and for
    /// credit-federated; 15 for credit-federated --parties; not for mnist-transfer].
    #[arg(long, value_parser = clap::value_parser!(u32).range(13..=16))]
    pub log_n: Option<u32>,
    /// Seed of the split and the batches [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// How the weights get their levels back when a step would run out: `bootstrap`
    /// bootstraps them on public keys (no decryption during training; 128-bit at N = 2^16,
    /// which it implies; titanic and credit: weights and velocity in one sparse bootstrap of
    /// the layout's period, 4-5 s per refresh on 2 cores, 4-5 min per run; mnist-transfer:
    /// the packed head, one sparse bootstrap per refresh, features extracted by the data
    /// owner), `key-holder` decrypts and re-encrypts them (seconds per run, at --log-n 14;
    /// but the key holder sees the model every refresh) [default: bootstrap;
    /// credit-federated needs no refresh].
    #[arg(long, value_enum)]
    pub refresh: Option<Refresh>,
    /// With bootstrapping refreshes and --log-n 13..15: run the same pipeline on an
    /// INSECURE test ring (no 128-bit bootstrapping chain exists below 2^16). Tests only.
    #[arg(long)]
    pub insecure_test_ring: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn load(o: &TrainArgs) -> Result<Dataset> {
    let flag = "--data";
    match o.workload {
        Workload::Titanic => data::titanic::load(super::data_path(
            o.data.as_deref(),
            data::DEFAULT_TITANIC,
            flag,
        )?),
        Workload::Credit | Workload::CreditFederated => data::credit::load(super::data_path(
            o.data.as_deref(),
            data::DEFAULT_CREDIT,
            flag,
        )?),
        Workload::MnistTransfer => Err(Error::InvalidInput(
            "mnist-transfer trains on the bundled MNIST digits, not on a data file".into(),
        )),
    }
}

/// Fails on a flag that `o.workload` would ignore, naming the flag and the workloads that
/// read it. (Combinations within a workload, e.g. `--parties` with `--rounds`, are checked
/// where they are read.)
fn reject_unused(o: &TrainArgs) -> Result<()> {
    use Workload::{Credit, CreditFederated, MnistTransfer, Titanic};
    const LOGISTIC: &[Workload] = &[Titanic, Credit, CreditFederated];
    super::options::reject_unused(
        "",
        &[o.workload],
        &[
            ("--data", o.data.is_some(), LOGISTIC),
            ("--workers", o.workers.is_some(), LOGISTIC),
            ("--in-process", o.in_process, &[Titanic, Credit]),
            ("--degree", o.degree.is_some(), LOGISTIC),
            ("--interval", o.interval.is_some(), LOGISTIC),
            ("--images", o.images.is_some(), &[MnistTransfer]),
            ("--rounds", o.rounds.is_some(), &[CreditFederated]),
            (
                "--output-smudging",
                o.output_smudging.is_some(),
                &[CreditFederated],
            ),
            (
                "--parties",
                o.parties.is_some(),
                &[CreditFederated, MnistTransfer],
            ),
            ("--log-n", o.log_n.is_some(), LOGISTIC),
            (
                "--insecure-test-ring",
                o.insecure_test_ring,
                &[Titanic, Credit, MnistTransfer],
            ),
        ],
    )
}

/// Runs a workload and prints a text or JSON report. Unset options take the workload's
/// defaults ([`TrainDefaults`]; mnist-transfer: [`super::transfer`]'s).
pub fn run(o: TrainArgs) -> Result<()> {
    reject_unused(&o)?;
    if o.workload != Workload::MnistTransfer {
        return run_logistic(o);
    }
    if o.parties.is_some_and(|k| k != 2) {
        return Err(Error::InvalidInput(
            "mnist-transfer runs with --parties 2 (two servers holding key shares)".into(),
        ));
    }
    // Bootstrapping by default; --parties refreshes collectively.
    let bootstrap = o.parties.is_none() && o.refresh != Some(Refresh::KeyHolder);
    if o.parties.is_some() && o.refresh.is_some() {
        return Err(Error::InvalidInput(
            "mnist-transfer --parties 2 refreshes collectively: no --refresh".into(),
        ));
    }
    if o.insecure_test_ring && !bootstrap {
        return Err(Error::InvalidInput(
            "--insecure-test-ring only applies to bootstrapping refreshes".into(),
        ));
    }
    super::transfer::run(super::transfer::TransferOptions {
        images: o.images,
        epochs: o.epochs.unwrap_or(3),
        lr: o.lr.unwrap_or(0.04),
        momentum: o.momentum.unwrap_or(0.9),
        batch: o.batch.unwrap_or(1250),
        seed: o.seed.unwrap_or(1),
        json: o.json,
        parties: o.parties,
        bootstrap,
        insecure_test_ring: o.insecure_test_ring,
    })
}

/// titanic, credit and credit-federated: encrypted logistic regression.
fn run_logistic(mut o: TrainArgs) -> Result<()> {
    // titanic and credit refresh by bootstrapping unless told otherwise; credit-federated
    // starts every round from fresh encryptions, and --parties refreshes collectively.
    let bootstrap = o.workload != Workload::CreditFederated
        && o.parties.is_none()
        && o.refresh != Some(Refresh::KeyHolder);
    if o.output_smudging.is_some() && o.parties.is_none() {
        return Err(Error::InvalidInput(
            "--output-smudging applies to credit-federated --parties K (the final model's collective decryption)".into(),
        ));
    }
    let output = o.output_smudging.unwrap_or(OutputSmudging::Statistical);
    if o.parties.is_some() && output == OutputSmudging::Statistical && o.log_n.is_none() {
        o.log_n = Some(15);
    }
    // `reject_unused` let --parties through for credit-federated only.
    if let Some(k) = o.parties {
        if o.workers.is_some() || o.in_process || o.rounds.is_some() {
            return Err(Error::InvalidInput(format!(
                "--parties {k}: the parties are the data owners and train by federated SGD for --epochs; no --workers, --in-process or --rounds"
            )));
        }
    }
    if o.refresh.is_some() && (o.parties.is_some() || o.workload == Workload::CreditFederated) {
        return Err(Error::InvalidInput(
            "--refresh is for titanic and credit: credit-federated starts every round from fresh encryptions (no refresh), and --parties refreshes collectively".into(),
        ));
    }
    if o.insecure_test_ring && !bootstrap {
        return Err(Error::InvalidInput(
            "--insecure-test-ring only applies to bootstrapping refreshes".into(),
        ));
    }
    if o.insecure_test_ring && o.log_n.is_none_or(|l| l >= 16) {
        return Err(Error::InvalidInput(
            "--insecure-test-ring runs the bootstrapping pipeline on a ring below 2^16: add --log-n 13, 14 or 15".into(),
        ));
    }
    if bootstrap {
        match o.log_n {
            None => o.log_n = Some(16),
            Some(16) => {}
            Some(l) if o.insecure_test_ring => {
                eprintln!("WARNING: --insecure-test-ring: bootstrapping at N = 2^{l} is NOT SECURE (no 128-bit bootstrapping chain exists below 2^16); for testing only");
            }
            Some(l) => {
                return Err(Error::InvalidInput(format!(
                    "refreshing by bootstrapping (the default) is 128-bit only at --log-n 16 (N = 2^{l} holds no secure bootstrapping chain); add --refresh key-holder to train at 2^{l} with key-holder refreshes, or --insecure-test-ring to run the bootstrapping pipeline at 2^{l} for testing"
                )))
            }
        }
    }
    let workload_name = o.workload.to_string();
    // With --parties the model trains encrypted step by step, as `credit` does: its defaults.
    let d = TrainDefaults::for_workload(if o.parties.is_some() {
        "credit"
    } else {
        &workload_name
    })?;
    let degree = *o.degree.get_or_insert(d.degree);
    let interval = *o.interval.get_or_insert(d.interval);
    let epochs = *o.epochs.get_or_insert(d.epochs);
    let lr = *o.lr.get_or_insert(d.lr);
    let batch = *o.batch.get_or_insert(d.batch);
    let momentum = *o.momentum.get_or_insert(d.momentum);
    let log_n = *o.log_n.get_or_insert(d.log_n);
    let seed = *o.seed.get_or_insert(d.seed);
    let federated = o.workload == Workload::CreditFederated;
    let rounds = *o.rounds.get_or_insert(d.rounds);
    if ![3, 5, 7].contains(&degree) {
        return Err(Error::InvalidInput(format!(
            "--degree must be 3, 5 or 7, got {degree}"
        )));
    }
    if !(interval.is_finite() && interval > 0.0) {
        return Err(Error::InvalidInput(format!(
            "--interval must be > 0, got {interval}"
        )));
    }
    if o.workers == Some(0) {
        return Err(Error::InvalidInput("--workers must be ≥ 1".into()));
    }
    if federated && (o.workers.is_some_and(|k| k < 2) || o.in_process) {
        return Err(Error::InvalidInput(
            "credit-federated needs --workers ≥ 2 data owners (they train in this process; no --in-process)".into(),
        ));
    }
    let all = load(&o)?;
    let (train, test) = all.split(0.2, seed)?;
    let sigmoid = PolyActivation::sigmoid(degree, (-interval, interval))?;
    // The workload's defaults with the flags applied: what the tests train with, overridden.
    let cfg = TrainConfig {
        progress: super::progress_bar(!o.json),
        ..TrainDefaults {
            degree,
            interval,
            epochs,
            lr,
            momentum,
            batch,
            rounds,
            owners: d.owners,
            log_n,
            seed,
        }
        .train_config()
    };
    let t = Instant::now();
    // Bootstrapping brings its own chain (computation levels under its own).
    let bootstrap_params = if bootstrap {
        let bp = if log_n == 16 {
            BootstrapParams::n16()?
        } else {
            BootstrapParams::insecure_test_ring(log_n, 8)?
        };
        // The weights repeat with a short period in the layout this chooses: a sparse
        // bootstrap of that period.
        Some(logistic::sparse_refresh(
            bp,
            train.num_features(),
            batch,
            o.workers.unwrap_or(1),
        )?)
    } else {
        None
    };
    let params = match &bootstrap_params {
        Some(bp) => bp.ckks().clone(),
        None if o.parties.is_some() => super::parties::credit_params(
            log_n,
            output,
            logistic::levels_per_step(degree) + logistic::MIN_WEIGHT_LEVEL,
        )?,
        None => training_params(log_n)?,
    };
    let ctx = Arc::new(CkksContext::new(params)?);
    let setup_s = t.elapsed().as_secs_f64();
    if !o.json {
        eprintln!(
            "{}: {} train / {} test rows, {} features; CKKS N = 2^{}, {} levels, scale 2^{}; sigmoid: degree {} least-squares fit on [-{}, {}]",
            o.workload,
            train.len(),
            test.len(),
            train.num_features(),
            log_n,
            ctx.max_level(),
            ctx.params().scale_bits(),
            degree,
            interval,
            interval
        );
    }
    // Plaintext references: true sigmoid, and the same polynomial sigmoid.
    let mut quiet = cfg.clone();
    quiet.progress = hetensor::progress::Progress::none();
    let mut plain = logistic::model(train.num_features())?;
    logistic::train_plain(&mut plain, &train, None, &quiet, None)?;
    let (plain_acc, plain_loss) = logistic::evaluate(&plain, &test)?;
    let mut plain_poly = logistic::model(train.num_features())?;
    logistic::train_plain(&mut plain_poly, &train, None, &quiet, Some(&sigmoid))?;
    let (poly_acc, _) = logistic::evaluate(&plain_poly, &test)?;

    if let Some(parties) = o.parties {
        return super::parties::run_credit(&super::parties::CreditRun {
            parties,
            data: o.data.as_deref(),
            train: &train,
            test: &test,
            cfg: &cfg,
            sigmoid: &sigmoid,
            ctx,
            log_n,
            output,
            json: o.json,
            plain_acc: (plain_acc, poly_acc),
        });
    }
    let t = Instant::now();
    let holder = KeyHolder::new(ctx.clone())?;
    let setup_s = setup_s + t.elapsed().as_secs_f64();

    if federated {
        let owners = o.workers.unwrap_or(d.owners);
        let shards = train.shards(owners)?;
        let mut fed = logistic::model(train.num_features())?;
        let rep = train_federated(
            &mut fed,
            &shards,
            Some(&test),
            &cfg,
            rounds,
            Some(&sigmoid),
            &holder,
        )?;
        let (acc, loss) = logistic::evaluate(&fed, &test)?;
        if o.json {
            let v = serde_json::json!({
                "workload": workload_name, "owners": owners, "rounds": rounds,
                "local_epochs": epochs, "degree": degree, "interval": interval, "lr": lr,
                "momentum": momentum, "batch": batch, "log_n": log_n, "seed": seed, "test_accuracy": acc, "test_loss": loss,
                "plaintext_test_accuracy": plain_acc, "plaintext_poly_test_accuracy": poly_acc,
                "report": rep, "setup_seconds": setup_s,
            });
            println!("{v}");
        } else {
            println!(
                "federated ({owners} owners, {} rounds × {} local epochs, encrypted aggregation): test accuracy {:.2}% (loss {loss:.4}); centralized plaintext: {:.2}% (true sigmoid), {:.2}% (polynomial) — {:.2} s",
                rounds,
                epochs,
                100.0 * acc,
                100.0 * plain_acc,
                100.0 * poly_acc,
                rep.seconds
            );
        }
        return Ok(());
    }

    let bootstrap_slots = bootstrap_params.as_ref().map(|bp| bp.slots());
    let refresh = match bootstrap_params {
        Some(bp) => RefreshBy::Bootstrap(bp),
        None => RefreshBy::KeyHolder,
    };
    // Up to --workers shards, one per ciphertext of the batch at most.
    let layout = logistic::layout_for_refresh(&ctx, train.num_features(), &refresh)?;
    let shards = logistic::shards_per_step(&layout, batch, o.workers.unwrap_or(1));
    let opts = EncryptedOptions {
        sigmoid: sigmoid.clone(),
        workers: shards,
        // Monitoring decrypts every batch's logits: not in a run that must decrypt nothing.
        monitor: !bootstrap,
        refresh,
    };
    let processes = o.workers.is_some() && !o.in_process;
    if let Some(k) = o.workers.filter(|&k| k > shards) {
        if !o.json {
            eprintln!(
                "note: a batch of {} samples fills {shards} ciphertext(s) of {}; using {shards} of the {k} requested workers",
                batch, layout.block
            );
        }
    }
    let mut enc = logistic::model(train.num_features())?;
    let t = Instant::now();
    let mut runner: Box<dyn ShardRunner> = if processes {
        // The cores are shared out between the workers (the parent only aggregates).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // An insecure test ring's context reaches the workers marked insecure: they accept
        // it only when told to.
        let limits = WorkerLimits {
            decode: if o.insecure_test_ring {
                DecodeOptions::allow_insecure()
            } else {
                DecodeOptions::default()
            },
            ..WorkerLimits::default()
        };
        Box::new(WorkerPool::spawn_with(
            &WorkerPool::default_exe()?,
            shards,
            (cores / shards).max(1),
            &limits,
        )?)
    } else {
        Box::new(InProcess)
    };
    let rep = logistic::train_encrypted_with(
        &mut enc,
        &train,
        Some(&test),
        &cfg,
        &opts,
        &holder,
        runner.as_mut(),
    )?;
    drop(runner);
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
            "workload": workload_name, "rows_train": train.len(), "rows_test": test.len(),
            "features": train.feature_names, "log_n": log_n, "levels": ctx.max_level(),
            "insecure_test_ring": bootstrap && log_n < 16,
            "refresh": if bootstrap { "bootstrap" } else { "key-holder" },
            "bootstrap_slots": bootstrap_slots, "layout_slots": layout.slots(),
            "degree": degree, "interval": interval, "epochs": epochs, "batch": batch,
            "lr": lr, "momentum": momentum, "workers": shards,
            "workers_requested": o.workers,
            "worker_processes": processes,
            "encrypted_test_accuracy": enc_acc, "encrypted_test_loss": enc_loss,
            "plaintext_test_accuracy": plain_acc, "plaintext_test_loss": plain_loss,
            "plaintext_poly_test_accuracy": poly_acc,
            "max_weight_diff_vs_plaintext_poly": max_diff,
            "setup_seconds": setup_s, "total_seconds": total_s, "report": rep,
        });
        println!("{v}");
    } else {
        let how = match bootstrap_slots {
            Some(n) if n < ctx.slots() => format!(
                "{}; sparse, the weights' period of {n} of {} slots",
                rep.refreshed_by,
                ctx.slots()
            ),
            _ => rep.refreshed_by.clone(),
        };
        for s in rep.steps.iter().filter(|s| s.refreshed) {
            eprintln!(
                "  refresh before step {} ({how}: weights and velocity)",
                s.step
            );
        }
        println!(
            "encrypted ({shards} shard{} per step, {}): test accuracy {:.2}% (loss {enc_loss:.4}) after {} steps; {} levels per step, {} rotations per step, {} refreshes by {}; {} decryptions during training",
            if shards == 1 { "" } else { "s" },
            if processes { "worker processes" } else { "in this process" },
            100.0 * enc_acc,
            rep.steps.len(),
            rep.levels_per_step,
            rep.rotations_per_step,
            rep.refreshes,
            rep.refreshed_by,
            rep.decryptions
        );
        println!(
            "plaintext, same batches: {:.2}% (true sigmoid, loss {plain_loss:.4}), {:.2}% (same polynomial sigmoid); max |w_enc − w_plain,poly| = {max_diff:.2e}",
            100.0 * plain_acc,
            100.0 * poly_acc
        );
        println!(
            "time: keys+context {:.2} s, Galois keys {:.2} s, encrypt {} ciphertexts {:.2} s, train {:.2} s ({:.3} s/step, of which the slowest shard's compute {:.3} s), total {:.2} s",
            setup_s,
            rep.keygen_seconds,
            rep.data_ciphertexts,
            rep.encrypt_seconds,
            rep.train_seconds,
            rep.steps.iter().map(|s| s.seconds).sum::<f64>() / rep.steps.len().max(1) as f64,
            rep.steps.iter().map(|s| s.shard_seconds).sum::<f64>() / rep.steps.len().max(1) as f64,
            total_s
        );
    }
    Ok(())
}
