//! The `hetensor` command-line tool.

mod cli;

/// mimalloc keeps freed polynomial buffers for reuse; glibc returns large blocks to the OS and
/// page-faults them back in, which cost up to 5x on element-wise operations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// A short encrypted computation with CKKS, checked against plaintext (the default).
    Demo,
    /// Per-operation benchmarks as Markdown, or JSON with --json.
    Bench {
        /// Ring sizes (log2 N).
        #[arg(long, value_delimiter = ',', default_values_t = vec![13u32, 14])]
        log_n: Vec<u32>,
        /// Schemes to run.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["ckks".to_string(), "bfv".to_string()])]
        scheme: Vec<String>,
        /// Repetitions per operation (after one warm-up).
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Worker threads (1 = single-threaded, comparable with SEAL).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print JSON instead of Markdown.
        #[arg(long)]
        json: bool,
        /// Write the report to this file instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => cli::demo::run(),
        Command::Bench {
            log_n,
            scheme,
            reps,
            threads,
            json,
            out,
        } => cli::bench::run(&log_n, &scheme, reps, threads, json, out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
