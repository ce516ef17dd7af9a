//! The `hetensor` command-line tool.

mod cli;

/// See [`hetensor::alloc`].
#[global_allocator]
static GLOBAL: hetensor::alloc::MiMalloc = hetensor::alloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Mnist(cli::mnist::MnistArgs),
    /// Encrypted inference of an ONNX model (any graph the lowering accepts: convolutions,
    /// dense layers, average pooling, residual sums, polynomial activations), with parameters
    /// chosen from the model and a calibration set, checked against the plaintext graph.
    Infer(cli::infer::InferArgs),
    /// A short encrypted computation with CKKS, checked against plaintext.
    Demo(cli::demo::DemoArgs),
    /// Encrypted Titanic per-feature means and a logistic-regression gradient, computed by K
    /// worker processes holding only the public context; checked against plaintext.
    TitanicWorkers(cli::workers::TitanicWorkersArgs),
    /// Serialization benchmark: a seed-sized public context and 891 encrypted Titanic rows.
    IoBench(cli::io_bench::IoBenchArgs),
    /// Encrypted training: logistic regression on Titanic or UCI credit approval (CKKS,
    /// encrypted features, labels and weights), federated averaging on credit approval, or
    /// MNIST transfer learning (a new LeNet-1 head for digits 5-9 on encrypted features).
    Train(cli::train::TrainArgs),
    /// Serve encrypted jobs on stdin/stdout (started by `titanic-workers` and the workers API).
    #[command(hide = true)]
    Worker(cli::workers::WorkerArgs),
    /// One party of `train credit-federated --parties K` (started by it): holds its own key
    /// share and data slice, answers the coordinator's requests over TCP.
    #[command(hide = true)]
    Party(cli::parties::PartyArgs),
    /// Per-operation benchmarks as Markdown, or JSON with --json.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    // SAFETY: first in `main`, before any other thread exists.
    unsafe { hetensor::alloc::keep_freed_memory() };
    // No subcommand: `mnist` with its defaults.
    let command = match Cli::parse().command {
        Some(c) => c,
        None => Cli::parse_from(["hetensor", "mnist"])
            .command
            .expect("`mnist` parses"),
    };
    // The whole command runs on a thread of rayon's pool: a parallel loop started from a
    // thread outside it hands its work over and sleeps until it is done (two context switches),
    // and an encrypted operation starts dozens of them.
    let result = rayon::scope(move |_| match command {
        Command::Mnist(args) => cli::mnist::run(args),
        Command::Infer(args) => cli::infer::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::TitanicWorkers(args) => cli::workers::run(args),
        Command::Worker(args) => cli::workers::serve(args),
        Command::Train(args) => cli::train::run(args),
        Command::Party(args) => cli::parties::serve(args),
        Command::IoBench(args) => cli::io_bench::run(args),
        Command::Bench(args) => cli::bench::run(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
