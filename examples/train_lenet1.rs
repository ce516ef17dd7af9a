//! Trains LeNet-1 with square activations on the 10,000 MNIST training digits in `data/mnist`
//! (plaintext), reports test accuracy and the largest activation per layer on the 10,000 test
//! digits, and writes the weights as safetensors (f64).
//!
//! ```text
//! cargo run --release --example train_lenet1 -- [--out data/lenet1.safetensors]
//!     [--epochs N] [--seed S] [--threads T] [--weight-decay W] [--label-smoothing E]
//!     [--balance T] [--data DIR]
//! ```
//!
//! The recipe is [`TrainConfig::lenet1`]. After training, the weights are rescaled with
//! [`Sequential::balance_squares`] (target `--balance`, default 3; 0 turns it off) so that the
//! inputs of both square activations stay within about ±3 on the training digits: this does
//! not change the function, only where its magnitudes sit (the squares' outputs drop from
//! ≈ 55 to ≈ 9), which is what the encrypted CKKS evaluation wants.
//!
//! `data/lenet1.safetensors` was produced by running this example with no arguments (on 2 CPU
//! cores).
//!
//! [`Sequential::balance_squares`]: hetensor::nn::Sequential::balance_squares

use std::process::ExitCode;

use hetensor::nn::train::{train_lenet1, TrainConfig};
use hetensor::nn::{mnist, weights};

struct Args {
    out: String,
    data: String,
    epochs: Option<usize>,
    seed: Option<u64>,
    threads: Option<usize>,
    weight_decay: Option<f64>,
    smoothing: Option<f64>,
    balance: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: "data/lenet1.safetensors".into(),
        data: mnist::DEFAULT_DIR.into(),
        epochs: None,
        seed: None,
        threads: None,
        weight_decay: None,
        smoothing: None,
        balance: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = val()?,
            "--data" => a.data = val()?,
            "--epochs" => a.epochs = Some(val()?.parse().map_err(|e| format!("--epochs: {e}"))?),
            "--seed" => a.seed = Some(val()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--threads" => a.threads = Some(val()?.parse().map_err(|e| format!("--threads: {e}"))?),
            "--weight-decay" => {
                a.weight_decay = Some(val()?.parse().map_err(|e| format!("--weight-decay: {e}"))?)
            }
            "--label-smoothing" => {
                a.smoothing = Some(
                    val()?
                        .parse()
                        .map_err(|e| format!("--label-smoothing: {e}"))?,
                )
            }
            "--balance" => a.balance = val()?.parse().map_err(|e| format!("--balance: {e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: train_lenet1 [--out FILE] [--data DIR] [--epochs N] \
                            [--seed S] [--threads T] [--weight-decay W] [--label-smoothing E] [--balance T]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn run(args: Args) -> hetensor::Result<()> {
    if let Some(t) = args.threads {
        // Ignore the error if a global pool already exists.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    let train = mnist::load_train(&args.data)?;
    let test = mnist::load_test(&args.data)?;
    eprintln!(
        "training LeNet-1 on {} digits, testing on {} ({} threads)",
        train.len(),
        test.len(),
        rayon::current_num_threads()
    );
    let mut cfg = TrainConfig::lenet1();
    if let Some(e) = args.epochs {
        cfg.epochs = e;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if let Some(w) = args.weight_decay {
        cfg.weight_decay = w;
    }
    if let Some(e) = args.smoothing {
        cfg.loss = hetensor::nn::Loss::SmoothedCrossEntropy(e);
    }
    let (mut model, report) = train_lenet1(&train, Some(&test), &cfg)?;
    if args.balance > 0.0 {
        let before = model.accuracy(&test)?;
        let scales = model.balance_squares(&train.inputs, args.balance)?;
        eprintln!(
            "balanced the square activations with scales {scales:?} (target {})",
            args.balance
        );
        let after = model.accuracy(&test)?;
        if before != after {
            eprintln!("note: balancing changed the test accuracy by rounding: {before} -> {after}");
        }
    }
    let acc = model.accuracy(&test)?;
    let acc1k = model.accuracy(&test.take(1000))?;
    println!(
        "training time: {:.1} s ({} epochs)",
        report.seconds, cfg.epochs
    );
    println!(
        "test accuracy: {:.2}% (first 1000: {:.2}%)",
        100.0 * acc,
        100.0 * acc1k
    );
    println!("activation ranges on the test set:");
    for r in model.activation_ranges(&test.inputs)? {
        println!(
            "  {:<8} {:<15} min {:>10.4}  max {:>10.4}  max|.| {:>10.4}",
            r.name,
            r.kind,
            r.min,
            r.max,
            r.max_abs()
        );
    }
    weights::save(&model, &args.out, weights::DType::F64)?;
    println!("weights written to {}", args.out);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
