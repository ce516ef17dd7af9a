//! The `hetensor` command-line tool.

mod cli;

/// See [`hetensor::alloc`].
#[global_allocator]
static GLOBAL: hetensor::alloc::MiMalloc = hetensor::alloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::args::{at_least, momentum, one_of, positive};

/// GPU-accelerated homomorphic tensor engine.
#[derive(Parser)]
#[command(name = "hetensor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Batched encrypted MNIST inference with LeNet-1 on the bundled test set (the default).
    Mnist {
        /// Only the first N test images, at most the file's count (default: all 10,000 for
        /// ckks batched, 8,192 = one batch for bfv, 20 for packed).
        #[arg(long, value_parser = at_least(1))]
        limit: Option<usize>,
        /// Images per batch, at most the slots: 4096 for ckks, 8192 for bfv (default: all
        /// slots). Batched layout only.
        #[arg(long, value_parser = at_least(1))]
        batch: Option<usize>,
        /// ckks, or bfv (LeNet-1 quantized to integers, exact, CRT over 3 plaintext primes).
        #[arg(long, default_value = "ckks", value_parser = ["ckks", "bfv"])]
        scheme: String,
        /// cpu, cuda, wgpu or auto.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// batched (4096 images per ciphertext) or packed (one image, low latency; ckks only).
        #[arg(long, default_value = "batched", value_parser = ["batched", "packed"])]
        layout: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// LeNet-1 weights in safetensors (default: the bundled data/lenet1.safetensors).
        #[arg(long)]
        weights: Option<std::path::PathBuf>,
        /// Directory with the MNIST IDX files.
        #[arg(long, default_value = hetensor::nn::mnist::DEFAULT_DIR)]
        data_dir: std::path::PathBuf,
        /// CKKS chain (batched layout): fast (one 25-bit prime per level, 30-bit base,
        /// N = 2^13) or high (one 29-bit prime per level, 2-prime base, N = 2^14: logits
        /// ~10 times more precise, 8192 images per batch, about 1.7 times the CPU time).
        #[arg(long, default_value = "fast", value_parser = ["fast", "high"])]
        precision: String,
    },
    /// Encrypted inference of an ONNX model (any graph the lowering accepts: convolutions,
    /// dense layers, average pooling, residual sums, polynomial activations), with parameters
    /// chosen from the model and a calibration set, checked against the plaintext graph.
    Infer(cli::infer::InferArgs),
    /// A short encrypted computation with CKKS, checked against plaintext.
    Demo {
        /// A deep chain instead: sequential multiplications that bootstrap along the way.
        #[arg(long)]
        deep: bool,
        /// With --deep: how many sequential multiplications.
        #[arg(long, default_value_t = 50, value_parser = at_least(1), requires = "deep")]
        multiplications: usize,
        /// With --deep: ring size (16 = the 128-bit preset; 10..=13 = an insecure test ring).
        #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(10..=16), requires = "deep")]
        log_n: u32,
    },
    /// Encrypted Titanic per-feature means and a logistic-regression gradient, computed by K
    /// worker processes holding only the public context; checked against plaintext.
    TitanicWorkers {
        /// Worker processes (and shards).
        #[arg(long, default_value_t = 2, value_parser = at_least(1))]
        workers: usize,
        /// Rayon threads per worker process (1 = one core each; 0 = all cores).
        #[arg(long, default_value_t = 1)]
        threads_per_worker: usize,
        /// Titanic train.csv (default: the bundled copy).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Degree of the least-squares sigmoid fit on [-8, 8]: 3, 5 or 7.
        #[arg(long, default_value_t = 3, value_parser = one_of(&[3, 5, 7]))]
        degree: usize,
        /// cpu, cuda, wgpu or auto.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Timed repetitions of each step (the median is reported).
        #[arg(long, default_value_t = 3, value_parser = at_least(1))]
        reps: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serialization benchmark: a seed-sized public context and 891 encrypted Titanic rows.
    IoBench {
        /// Titanic train.csv (default: the bundled copy).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Only the first N rows (default: all 891).
        #[arg(long, value_parser = at_least(1))]
        rows: Option<usize>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Encrypted training: logistic regression on Titanic or UCI credit approval (CKKS,
    /// encrypted features, labels and weights), federated averaging on credit approval, or
    /// MNIST transfer learning (a new LeNet-1 head for digits 5-9 on encrypted features).
    Train {
        /// titanic, credit, credit-federated or mnist-transfer (which reads only --images,
        /// --epochs, --batch, --lr, --momentum, --seed and --json; it runs on all cores).
        #[arg(value_parser = ["titanic", "credit", "credit-federated", "mnist-transfer"])]
        workload: String,
        /// Data file (default: the bundled copy).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// Data-parallel shards per step, each on its own `hetensor worker` process (holding
        /// only the public context); data owners for credit-federated (at least 2). Default:
        /// one shard, in this process; 2 owners for credit-federated.
        #[arg(long, value_parser = at_least(1))]
        workers: Option<usize>,
        /// Run the --workers shards on rayon threads of this process instead of processes.
        #[arg(long)]
        in_process: bool,
        /// Degree of the least-squares sigmoid fit: 3, 5 or 7 [default: 7].
        #[arg(long, value_parser = one_of(&[3, 5, 7]))]
        degree: Option<usize>,
        /// The fit interval is [-A, A] [default: 12].
        #[arg(long, value_parser = positive)]
        interval: Option<f64>,
        /// Epochs (local epochs per round for credit-federated) [default: titanic 8, credit
        /// 10, credit-federated 3, mnist-transfer 3].
        #[arg(long, value_parser = at_least(1))]
        epochs: Option<usize>,
        /// Learning rate [default: titanic 0.5, credit 0.2, credit-federated 0.2, mnist-transfer
        /// 0.04].
        #[arg(long, value_parser = positive)]
        lr: Option<f64>,
        /// Momentum, in [0, 1) [default: 0.9].
        #[arg(long, value_parser = momentum)]
        momentum: Option<f64>,
        /// Mini-batch size [default: 128; mnist-transfer: 1250].
        #[arg(long, value_parser = at_least(1))]
        batch: Option<usize>,
        /// mnist-transfer: private training images (digits 5-9 of data/mnist/train-10k) to
        /// use [default: all 4,869].
        #[arg(long, value_parser = at_least(1))]
        images: Option<usize>,
        /// Federated rounds (credit-federated only) [default: 5].
        #[arg(long, value_parser = at_least(1))]
        rounds: Option<usize>,
        /// credit-federated with no key holder: K party processes, each with its slice of the
        /// data and a key share, train by federated SGD with collective keys and refreshes;
        /// only the final model is decrypted, collectively, to party 0. Also runs the same
        /// steps with one key holder for comparison. Takes --epochs [default: 10], --lr
        /// [default: 0.2], --batch, --degree, --interval, --log-n, --seed, --data; no
        /// --workers, --in-process or --rounds. mnist-transfer --parties 2: two key-share
        /// holders, collective refreshes, the head re-encrypted to the data owner (N = 2^14).
        #[arg(long, value_parser = at_least(2))]
        parties: Option<usize>,
        /// log2 of the ring degree, 13 to 16 (14: 13 levels, two steps per refresh)
        /// [default: 14; not for mnist-transfer].
        #[arg(long, value_parser = clap::value_parser!(u32).range(13..=16))]
        log_n: Option<u32>,
        /// Seed of the split and the batches [default: 1].
        #[arg(long)]
        seed: Option<u64>,
        /// How the weights get their levels back when a step would run out: `key-holder`
        /// decrypts and re-encrypts them (fast; the key holder sees the model every refresh),
        /// `bootstrap` (titanic and credit) bootstraps them on public keys (no decryption
        /// during training; 128-bit at --log-n 16, which it implies; ~25 s per ciphertext
        /// on 2 cores) [default: key-holder].
        #[arg(long, value_parser = ["key-holder", "bootstrap"])]
        refresh: Option<String>,
        /// With --refresh bootstrap and --log-n 13..15: run the same pipeline on an
        /// INSECURE test ring (no 128-bit bootstrapping chain exists below 2^16). Tests only.
        #[arg(long)]
        insecure_test_ring: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve encrypted jobs on stdin/stdout (started by `titanic-workers` and the workers API).
    #[command(hide = true)]
    Worker {
        /// cpu, cuda, wgpu or auto.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Accept a public context whose parameters are below 128-bit security (marked
        /// insecure-for-testing by their writer). Tests and experiments only.
        #[arg(long)]
        allow_insecure: bool,
        /// Most slots of stored ciphertexts; a STORE into one more is answered ERROR.
        #[arg(long, default_value_t = hetensor::workers::WorkerLimits::default().max_slots)]
        max_slots: usize,
        /// Most MiB of stored ciphertexts (in memory); a STORE beyond is answered ERROR.
        #[arg(long, default_value_t = hetensor::workers::WorkerLimits::default().max_stored_bytes >> 20)]
        max_stored_mb: u64,
        /// Largest CONTEXT or JOB frame, in MiB.
        #[arg(long, default_value_t = hetensor::workers::WorkerLimits::default().max_frame_bytes >> 20)]
        max_frame_mb: u64,
        /// Seconds within which the rest of a started frame must arrive (0: no limit).
        #[arg(long, default_value_t = 30.0)]
        frame_timeout_secs: f64,
    },
    /// One party of `train credit-federated --parties K` (started by it): holds its own key
    /// share and data slice, answers the coordinator's requests over TCP.
    #[command(hide = true)]
    Party(cli::parties::PartyOptions),
    /// Per-operation benchmarks as Markdown, or JSON with --json.
    Bench {
        /// Ring sizes (log2 N, each 13 to 16).
        #[arg(long, value_delimiter = ',', default_values_t = vec![13u32, 14],
              value_parser = clap::value_parser!(u32).range(13..=16))]
        log_n: Vec<u32>,
        /// Schemes to run. `bootstrap` times CKKS bootstrapping (128-bit at 2^16; below, where no
        /// 128-bit chain fits, an insecure test ring) with its output precision and the levels it leaves.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["ckks".to_string(), "bfv".to_string()],
              value_parser = ["ckks", "bfv", "bootstrap"])]
        scheme: Vec<String>,
        /// Repetitions per operation (after one warm-up).
        #[arg(long, default_value_t = 10, value_parser = at_least(1))]
        reps: usize,
        /// Worker threads (1 = single-threaded, comparable with SEAL).
        #[arg(long, default_value_t = 1, value_parser = at_least(1))]
        threads: usize,
        /// CKKS on the deepest 128-bit chain instead of the peers' depth.
        #[arg(long, conflicts_with = "depth")]
        max_chain: bool,
        /// CKKS scale 2^B, from the parameter builder: composite levels (several primes per
        /// level) from 2^30 on [default: single 25-bit scale primes].
        #[arg(long, value_parser = clap::value_parser!(u32).range(10..=62))]
        scale_bits: Option<u32>,
        /// CKKS rescalings [default: the peers' depth, 2/6/16/22 at N = 2^13/14/15/16].
        #[arg(long, value_parser = at_least(1))]
        depth: Option<usize>,
        /// Also report each CKKS op's slot error against the plaintext result (log2 of the
        /// max and mean over all slots) and time a chain of mul+relin+rescale to level 0.
        #[arg(long)]
        precision: bool,
        /// cpu, cuda, wgpu or auto.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Polynomials / ciphertexts per call in the batched (`xB`) rows.
        #[arg(long, default_value_t = 16, value_parser = at_least(1))]
        batch: usize,
        /// Print JSON instead of Markdown.
        #[arg(long)]
        json: bool,
        /// Also count each operation's device work (kernel launches, copies, allocations) on
        /// one more untimed call; needs a backend that counts it (cuda).
        #[arg(long)]
        trace: bool,
        /// Write the report to this file instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    // SAFETY: first in `main`, before any other thread exists.
    unsafe { hetensor::alloc::keep_freed_memory() };
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Mnist {
        limit: None,
        batch: None,
        scheme: "ckks".into(),
        backend: "cpu".into(),
        layout: "batched".into(),
        json: false,
        weights: None,
        data_dir: hetensor::nn::mnist::DEFAULT_DIR.into(),
        precision: "fast".into(),
    });
    // The whole command runs on a thread of rayon's pool: a parallel loop started from a
    // thread outside it hands its work over and sleeps until it is done (two context switches),
    // and an encrypted operation starts dozens of them.
    let result = rayon::scope(move |_| match command {
        Command::Mnist {
            limit,
            batch,
            scheme,
            backend,
            layout,
            json,
            weights,
            data_dir,
            precision,
        } => cli::mnist::run(cli::mnist::MnistOptions {
            limit,
            batch,
            scheme,
            backend,
            layout,
            json,
            weights,
            data_dir,
            precision,
        }),
        Command::Infer(args) => cli::infer::run(args),
        Command::Demo { deep: false, .. } => cli::demo::run(),
        Command::Demo {
            deep: true,
            multiplications,
            log_n,
        } => cli::demo::run_deep(multiplications, log_n),
        Command::TitanicWorkers {
            workers,
            threads_per_worker,
            data,
            degree,
            backend,
            reps,
            json,
        } => cli::workers::run(cli::workers::TitanicOptions {
            workers,
            threads_per_worker,
            data: cli::data_path(data.as_deref(), hetensor::data::DEFAULT_TITANIC, "--data")?,
            degree,
            backend,
            reps,
            json,
        }),
        Command::Worker {
            backend,
            allow_insecure,
            max_slots,
            max_stored_mb,
            max_frame_mb,
            frame_timeout_secs,
        } => cli::workers::serve(
            &backend,
            hetensor::workers::WorkerLimits {
                max_slots,
                max_stored_bytes: max_stored_mb.saturating_mul(1 << 20),
                max_frame_bytes: max_frame_mb.saturating_mul(1 << 20),
                frame_timeout: cli::workers::frame_timeout(frame_timeout_secs)?,
                decode: hetensor::serialize::DecodeOptions { allow_insecure },
            },
        ),
        Command::Train {
            workload,
            data,
            epochs,
            lr,
            momentum,
            batch,
            seed,
            json,
            images,
            workers,
            in_process,
            degree,
            interval,
            rounds,
            log_n,
            parties,
            refresh,
            insecure_test_ring,
        } if workload == "mnist-transfer" => {
            if refresh.as_deref().is_some_and(|r| r != "key-holder") || insecure_test_ring {
                return Err(hetensor::Error::InvalidInput(
                    "mnist-transfer takes --refresh key-holder only (its default): bootstrapping its ~2,000 head ciphertexts per step is not built yet; --parties 2 trains it without a key holder".into(),
                ));
            }
            if parties.is_some_and(|k| k != 2) {
                return Err(hetensor::Error::InvalidInput(
                    "mnist-transfer runs with --parties 2 (two servers holding key shares)".into(),
                ));
            }
            if data.is_some()
                || workers.is_some()
                || in_process
                || degree.is_some()
                || interval.is_some()
                || rounds.is_some()
                || log_n.is_some()
            {
                return Err(hetensor::Error::InvalidInput("mnist-transfer takes no --data, --workers, --in-process, --degree, --interval, --rounds or --log-n (it runs in one process with an MSE head on the bundled MNIST digits)".into()));
            }
            cli::transfer::run(cli::transfer::TransferOptions {
                images,
                epochs: epochs.unwrap_or(3),
                lr: lr.unwrap_or(0.04),
                momentum: momentum.unwrap_or(0.9),
                batch: batch.unwrap_or(1250),
                seed: seed.unwrap_or(1),
                json,
                parties,
            })
        }
        Command::Train {
            workload,
            data,
            workers,
            in_process,
            degree,
            interval,
            epochs,
            lr,
            momentum,
            batch,
            rounds,
            log_n,
            seed,
            json,
            images,
            parties,
            refresh,
            insecure_test_ring,
        } => {
            if images.is_some() {
                return Err(hetensor::Error::InvalidInput(format!(
                    "--images is for mnist-transfer; {workload} trains on all rows of its data file"
                )));
            }
            cli::train::run(cli::train::TrainOptions {
                workload,
                data,
                workers,
                in_process,
                degree,
                interval,
                epochs,
                lr,
                momentum,
                batch,
                rounds,
                log_n,
                seed,
                json,
                parties,
                bootstrap: refresh.as_deref() == Some("bootstrap"),
                refresh_flag: refresh.is_some(),
                insecure_test_ring,
            })
        }
        Command::Party(o) => cli::parties::serve(o),
        Command::IoBench { data, rows, json } => cli::io_bench::run(
            &cli::data_path(data.as_deref(), hetensor::data::DEFAULT_TITANIC, "--data")?,
            rows,
            json,
        ),
        Command::Bench {
            log_n,
            scheme,
            reps,
            threads,
            max_chain,
            scale_bits,
            depth,
            precision,
            backend,
            batch,
            json,
            trace,
            out,
        } => cli::bench::run(
            &log_n,
            &scheme,
            reps,
            threads,
            cli::bench::CkksChain {
                max_chain,
                scale_bits,
                depth,
                precision,
            },
            batch,
            &backend,
            json,
            trace,
            out.as_deref(),
        ),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
