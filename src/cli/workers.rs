//! `hetensor titanic-workers`: encrypted per-feature sums/means and a logistic-regression
//! gradient over the Titanic data, computed by K worker processes that only ever see the
//! public context, checked against the plaintext computation; and `hetensor worker`, the
//! worker process itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use hetensor::backend::Backend;
use hetensor::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use hetensor::data::{self, Dataset};
use hetensor::nn::activation::PolyActivation;
use hetensor::rlwe::{Ciphertext, SecretKey, Security};
use hetensor::serialize::{self, PublicContext, WriteOptions};
use hetensor::workers::{self, RowLayout, ShardResult, Task, WorkerPool};
use hetensor::{Error, Result};

use super::args::{at_least, one_of};
use super::options::Backend as CliBackend;

use super::mnist::{emit, peak_memory_mb};

/// Options of `hetensor titanic-workers`.
#[derive(clap::Args, Debug)]
pub struct TitanicWorkersArgs {
    /// Worker processes (and shards).
    #[arg(long, default_value_t = 2, value_parser = at_least(1))]
    pub workers: usize,
    /// Rayon threads per worker process (1 = one core each; 0 = all cores).
    #[arg(long, default_value_t = 1)]
    pub threads_per_worker: usize,
    /// Titanic train.csv (default: the bundled copy).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Degree of the least-squares sigmoid fit on [-8, 8]: 3, 5 or 7.
    #[arg(long, default_value_t = 3, value_parser = one_of(&[3, 5, 7]))]
    pub degree: usize,
    /// cpu, cuda, wgpu or auto.
    #[arg(long, value_enum, default_value_t = CliBackend::Cpu)]
    pub backend: CliBackend,
    /// Timed repetitions of each step (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = at_least(1))]
    pub reps: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `hetensor worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// cpu, cuda, wgpu or auto.
    #[arg(long, value_enum, default_value_t = CliBackend::Cpu)]
    pub backend: CliBackend,
    /// Accept a public context whose parameters are below 128-bit security (marked
    /// insecure-for-testing by their writer). Tests and experiments only.
    #[arg(long)]
    pub allow_insecure: bool,
    /// Most slots of stored ciphertexts; a STORE into one more is answered ERROR.
    #[arg(long, default_value_t = workers::WorkerLimits::default().max_slots)]
    pub max_slots: usize,
    /// Most MiB of stored ciphertexts (in memory); a STORE beyond is answered ERROR.
    #[arg(long, default_value_t = workers::WorkerLimits::default().max_stored_bytes >> 20)]
    pub max_stored_mb: u64,
    /// Largest CONTEXT or JOB frame, in MiB.
    #[arg(long, default_value_t = workers::WorkerLimits::default().max_frame_bytes >> 20)]
    pub max_frame_mb: u64,
    /// Seconds within which the rest of a started frame must arrive (0: no limit).
    #[arg(long, default_value_t = 30.0)]
    pub frame_timeout_secs: f64,
}

/// One way of running the job (1 process, K processes, K rayon shards in-process).
#[derive(Serialize, Debug)]
pub struct ModeTiming {
    pub mode: String,
    pub shards: usize,
    /// Median wall time of the gradient step: send shards, compute, receive, aggregate, finish.
    pub gradient_seconds: f64,
    /// Median wall time of the column sums.
    pub sums_seconds: f64,
    /// Median over reps of the largest worker compute time in the gradient step.
    pub max_worker_compute_seconds: f64,
    /// Once, before the steps: sending the shards to the workers, which keep them (0 for
    /// the in-process modes).
    pub store_seconds: f64,
    /// Every rep's gradient step, in order (the spread shows how noisy the machine was).
    pub gradient_seconds_per_rep: Vec<f64>,
}

/// Report (also the `--json` object).
#[derive(Serialize, Debug)]
pub struct TitanicReport {
    pub rows: usize,
    pub features: Vec<String>,
    pub ring_degree: usize,
    pub levels: usize,
    pub log_qp: f64,
    pub sigmoid_degree: usize,
    pub sigmoid_interval: (f64, f64),
    pub rows_per_ciphertext: usize,
    pub public_context_bytes: usize,
    pub seconds_encrypt: f64,
    pub encrypted_bytes: usize,
    pub means_encrypted: Vec<f64>,
    pub means_plain: Vec<f64>,
    pub gradient_encrypted: Vec<f64>,
    pub gradient_plain: Vec<f64>,
    pub max_abs_error_means: f64,
    pub max_abs_error_gradient: f64,
    pub modes: Vec<ModeTiming>,
    /// Gradient step: 1 process on 1 thread / K worker processes (ratio of the medians).
    pub speedup_processes: f64,
    /// Gradient step: 1 worker process / K worker processes (same aggregator on both).
    pub speedup_vs_one_worker: f64,
    /// The median over reps of each rep's own ratio, 1 process on 1 thread / K worker
    /// processes: the two ran a fraction of a second apart, so a machine whose speed drifts
    /// over seconds moves both alike (the ratio of medians pairs times minutes apart).
    pub speedup_processes_paired: f64,
    pub peak_memory_mb: f64,
}

/// Rows `[features..., 1 (bias)]` and labels of `ds`.
fn rows(ds: &Dataset) -> (Vec<Vec<f64>>, Vec<f64>) {
    let rows = ds
        .features
        .rows()
        .into_iter()
        .map(|r| r.iter().copied().chain([1.0]).collect())
        .collect();
    (rows, ds.labels_f64())
}

/// The key owner's encryption of a shard: (features, labels) ciphertext pairs, seeded.
fn encrypt_shard(
    ctx: &CkksContext,
    sk: &SecretKey,
    layout: &RowLayout,
    ds: &Dataset,
) -> Result<Vec<Ciphertext>> {
    let (x, y) = rows(ds);
    let enc = |v: &Vec<f64>| {
        ctx.encrypt_symmetric(&ctx.encode(v, ctx.default_scale(), ctx.max_level())?, sk)
    };
    layout
        .pack(&x)
        .iter()
        .zip(layout.pack_replicated(&y).iter())
        .flat_map(|(a, b)| [enc(a), enc(b)])
        .collect()
}

/// How a mode runs its shards.
enum Runner {
    /// Everything in this process on one thread: the serial baseline.
    SingleThread,
    /// Worker processes (one shard each); the aggregation and finish run here on every core.
    Processes(WorkerPool),
    /// Shards on this process's rayon threads.
    Rayon,
}

/// A mode, its shards, and its timings so far.
struct Mode {
    name: String,
    shards: Vec<Vec<Ciphertext>>,
    /// Column sums take the feature ciphertexts only (every other one of the pairs).
    features: Vec<Vec<Ciphertext>>,
    runner: Runner,
    sums_times: Vec<f64>,
    gradient_times: Vec<f64>,
    max_compute_times: Vec<f64>,
    store_seconds: f64,
}

impl Mode {
    fn new(name: &str, shards: &[Vec<Ciphertext>], runner: Runner) -> Self {
        Self {
            name: name.to_string(),
            shards: shards.to_vec(),
            features: shards
                .iter()
                .map(|s| s.iter().step_by(2).cloned().collect())
                .collect(),
            runner,
            sums_times: Vec::new(),
            gradient_times: Vec::new(),
            max_compute_times: Vec::new(),
            store_seconds: 0.0,
        }
    }

    fn timing(self) -> ModeTiming {
        ModeTiming {
            mode: self.name,
            shards: self.shards.len(),
            gradient_seconds_per_rep: self.gradient_times.clone(),
            gradient_seconds: median(self.gradient_times),
            sums_seconds: median(self.sums_times),
            max_worker_compute_seconds: median(self.max_compute_times),
            store_seconds: self.store_seconds,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `hetensor titanic-workers`.
pub fn run(opts: TitanicWorkersArgs) -> Result<()> {
    let path = super::data_path(opts.data.as_deref(), data::DEFAULT_TITANIC, "--data")?;
    let backend = opts.backend.create()?;
    let ds = data::titanic::load(&path)?;
    let n_rows = ds.len();
    let k = opts.workers.max(1);
    let sigmoid = PolyActivation::sigmoid(opts.degree, (-8.0, 8.0))?;
    let (x, y) = rows(&ds);
    let d = x[0].len();

    // Parameters: N = 2^14 (8,192 slots), enough levels for the gradient plus one of headroom.
    let probe = Task::LogisticGradient {
        layout: RowLayout::new(d, 8192)?,
        weights: vec![0.0; d],
        sigmoid: sigmoid.coeffs.clone(),
    };
    let levels = probe.depth() + 1;
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n: 14,
        levels,
        scale_bits: 25,
        dnum: 3,
        security: Security::Bits128,
        ..Default::default()
    })?;
    let log_qp = params.rlwe().log_qp();
    let ctx = CkksContext::with_backend(params, backend.clone())?;
    let layout = RowLayout::new(d, ctx.slots())?;

    // Plaintext reference weights: a few gradient steps with the same polynomial sigmoid, so
    // the encrypted gradient is checked at a non-trivial point.
    let gradient_task = |weights: Vec<f64>| Task::LogisticGradient {
        layout,
        weights,
        sigmoid: sigmoid.coeffs.clone(),
    };
    let mut weights = vec![0.0; d];
    for _ in 0..10 {
        let g = workers::compute_plain(&gradient_task(weights.clone()), &x, &y);
        for (w, g) in weights.iter_mut().zip(g) {
            *w -= g / n_rows as f64;
        }
    }
    let grad_task = gradient_task(weights);
    let sums_task = Task::ColumnSums { layout };

    let keys = ctx.keygen()?;
    // Workers get keys for their own rotations only; the aggregator (here, the key owner) keeps
    // the keys for the row-block sums of `Task::finish`.
    let mut steps = grad_task.rotation_steps();
    steps.extend(sums_task.rotation_steps());
    let worker_gk = ctx.gen_galois_keys(&keys.secret, &steps, false)?;
    let finish_gk = ctx.gen_galois_keys(&keys.secret, &grad_task.finish_steps(), false)?;
    let mut public_bytes = Vec::new();
    PublicContext::write_parts(
        &mut public_bytes,
        &ctx,
        &keys.public,
        Some(&keys.relin),
        Some(&worker_gk),
        WriteOptions::default(),
    )?;

    // The key owner encrypts both layouts it hands out (one shard, and K shards).
    let t = Instant::now();
    let one = vec![encrypt_shard(&ctx, &keys.secret, &layout, &ds)?];
    let seconds_encrypt = t.elapsed().as_secs_f64();
    let many = ds
        .shards(k)?
        .iter()
        .map(|p| encrypt_shard(&ctx, &keys.secret, &layout, p))
        .collect::<Result<Vec<_>>>()?;
    let encrypted_bytes = one[0]
        .iter()
        .map(|c| serialize::to_bytes(ctx.rlwe(), c, WriteOptions::default()).map(|b| b.len()))
        .sum::<Result<usize>>()?;

    let exe = WorkerPool::default_exe()?;
    // The in-process modes also work from the serialized public context, like a worker.
    let in_process = PublicContext::<CkksContext>::from_bytes(&public_bytes, backend.clone())?;
    let single_thread = hetensor::threads::thread_pool(Some(1))?;
    let mut modes: Vec<Mode> = vec![
        Mode::new("1 process, 1 thread", &one, Runner::SingleThread),
        Mode::new(
            "1 worker process",
            &one,
            Runner::Processes(WorkerPool::spawn(&exe, 1, opts.threads_per_worker)?),
        ),
        Mode::new(
            &format!("{k} worker processes"),
            &many,
            Runner::Processes(WorkerPool::spawn(&exe, k, opts.threads_per_worker)?),
        ),
        Mode::new(&format!("in-process, {k} shards"), &many, Runner::Rayon),
    ];
    // Workers get the public context and keep their shards (both slots) from the start, as
    // a job of many steps would; a step then sends only the task.
    const PAIRS: u32 = 0;
    const FEATURES: u32 = 1;
    for m in &mut modes {
        if let Runner::Processes(pool) = &mut m.runner {
            pool.send_context(&public_bytes)?;
            let t = Instant::now();
            pool.store(ctx.rlwe(), PAIRS, &m.shards)?;
            pool.store(ctx.rlwe(), FEATURES, &m.features)?;
            m.store_seconds = t.elapsed().as_secs_f64();
        }
    }
    // One step of one mode: compute, receive, aggregate and finish.
    let step = |m: &mut Mode, task: &Task| -> Result<(Vec<ShardResult>, Ciphertext)> {
        let (inputs, slot) = match task {
            Task::ColumnSums { .. } => (&m.features, FEATURES),
            _ => (&m.shards, PAIRS),
        };
        let run = |parts: Vec<ShardResult>| -> Result<(Vec<ShardResult>, Ciphertext)> {
            let total = workers::reduce(&ctx, task, &finish_gk, &parts)?.swap_remove(0);
            Ok((parts, total))
        };
        match &mut m.runner {
            Runner::SingleThread => {
                single_thread.install(|| run(workers::run_in_process(&in_process, task, inputs)?))
            }
            Runner::Processes(pool) => {
                run(pool.run_stored(ctx.rlwe(), task, &[], slot, inputs.len())?)
            }
            Runner::Rayon => run(workers::run_in_process(&in_process, task, inputs)?),
        }
    };
    // Modes take turns rep by rep (A B C D A B C D …), so drift in machine load hits all alike.
    let mut last = None;
    for _ in 0..opts.reps.max(1) {
        for m in modes.iter_mut() {
            let t = Instant::now();
            let (_, sums) = step(m, &sums_task)?;
            m.sums_times.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let (parts, grad) = step(m, &grad_task)?;
            m.gradient_times.push(t.elapsed().as_secs_f64());
            m.max_compute_times
                .push(parts.iter().map(|g| g.compute_seconds).fold(0.0, f64::max));
            last = Some((sums, grad));
        }
    }
    let modes: Vec<ModeTiming> = modes.into_iter().map(Mode::timing).collect();
    let (sums, grad) = last.expect("every mode ran");
    let decrypt = |c: &Ciphertext| -> Result<Vec<f64>> {
        Ok(ctx.decrypt_decode(c, &keys.secret)?[..d].to_vec())
    };
    let means_encrypted: Vec<f64> = decrypt(&sums)?.iter().map(|s| s / n_rows as f64).collect();
    let means_plain: Vec<f64> = workers::compute_plain(&sums_task, &x, &y)[..d]
        .iter()
        .map(|s| s / n_rows as f64)
        .collect();
    let gradient_encrypted = decrypt(&grad)?;
    let gradient_plain = workers::compute_plain(&grad_task, &x, &y)[..d].to_vec();
    let max_err = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
    };
    let mut names = ds.feature_names.clone();
    names.push("bias".into());
    let speedup = modes[0].gradient_seconds / modes[2].gradient_seconds;
    let speedup_vs_one_worker = modes[1].gradient_seconds / modes[2].gradient_seconds;
    let speedup_processes_paired = median(
        modes[0]
            .gradient_seconds_per_rep
            .iter()
            .zip(&modes[2].gradient_seconds_per_rep)
            .map(|(one, k)| one / k)
            .collect(),
    );
    let report = TitanicReport {
        rows: n_rows,
        features: names,
        ring_degree: ctx.rlwe().n(),
        levels,
        log_qp,
        sigmoid_degree: opts.degree,
        sigmoid_interval: (-8.0, 8.0),
        rows_per_ciphertext: layout.rows_per_ciphertext(),
        public_context_bytes: public_bytes.len(),
        seconds_encrypt,
        encrypted_bytes,
        max_abs_error_means: max_err(&means_encrypted, &means_plain),
        max_abs_error_gradient: max_err(&gradient_encrypted, &gradient_plain),
        means_encrypted,
        means_plain,
        gradient_encrypted,
        gradient_plain,
        modes,
        speedup_processes: speedup,
        speedup_vs_one_worker,
        speedup_processes_paired,
        peak_memory_mb: peak_memory_mb(),
    };
    emit(opts.json, &report, print_text)
}

fn print_text(r: &TitanicReport) {
    println!(
        "Encrypted Titanic statistics across workers (CKKS N = {}, {} levels, log2 QP = {:.0}, 128-bit; sigmoid degree {} on [{}, {}])",
        r.ring_degree, r.levels, r.log_qp, r.sigmoid_degree, r.sigmoid_interval.0, r.sigmoid_interval.1
    );
    println!(
        "{} rows x {} columns + labels, packed {} rows per ciphertext, encrypted (seeded) in {:.3} s: {:.2} MiB; public context {:.1} MiB (no secret key)",
        r.rows,
        r.features.len(),
        r.rows_per_ciphertext,
        r.seconds_encrypt,
        r.encrypted_bytes as f64 / 1048576.0,
        r.public_context_bytes as f64 / 1048576.0
    );
    println!("\n| column | mean (encrypted) | mean (plain) | gradient (encrypted) | gradient (plain) |\n|---|---|---|---|---|");
    for (i, name) in r.features.iter().enumerate() {
        println!(
            "| {name} | {:.5} | {:.5} | {:.4} | {:.4} |",
            r.means_encrypted[i], r.means_plain[i], r.gradient_encrypted[i], r.gradient_plain[i]
        );
    }
    println!(
        "\nmax |error|: means {:.2e}, gradient {:.2e}\n\n| mode | shards | shards to workers s (once) | slot sums s | gradient step s | slowest worker compute s |\n|---|---|---|---|---|---|",
        r.max_abs_error_means, r.max_abs_error_gradient
    );
    for m in &r.modes {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            m.mode,
            m.shards,
            m.store_seconds,
            m.sums_seconds,
            m.gradient_seconds,
            m.max_worker_compute_seconds
        );
    }
    println!(
        "\nspeed-up of the gradient step with {} worker processes: {:.2}x over 1 process on 1 thread ({:.2}x as the median of each rep's ratio), {:.2}x over 1 worker process; peak memory {:.0} MB",
        r.modes[2].shards,
        r.speedup_processes,
        r.speedup_processes_paired,
        r.speedup_vs_one_worker,
        r.peak_memory_mb
    );
    println!("(times are medians over --reps, modes taking turns; workers keep their shards and compute on them, the parent adds the shards and sums the row blocks on all its threads)");
}

/// `hetensor worker`: serve jobs on stdin/stdout (started by [`WorkerPool`]) within the
/// limits of `args`.
pub fn serve(args: WorkerArgs) -> Result<()> {
    let limits = workers::WorkerLimits {
        max_slots: args.max_slots,
        max_stored_bytes: args.max_stored_mb.saturating_mul(1 << 20),
        max_frame_bytes: args.max_frame_mb.saturating_mul(1 << 20),
        frame_timeout: frame_timeout(args.frame_timeout_secs)?,
        decode: hetensor::serialize::DecodeOptions {
            allow_insecure: args.allow_insecure,
        },
    };
    let backend: Arc<dyn Backend> = args.backend.create()?;
    // The error is already typed (`Error::Protocol`, `Error::Decode`, ...): wrapping it as a
    // backend error would misname it.
    workers::serve_with(std::io::stdin(), std::io::stdout().lock(), backend, limits)
}

/// `--frame-timeout-secs`: 0 is no timeout; negative or not finite is an error.
pub fn frame_timeout(secs: f64) -> Result<Option<std::time::Duration>> {
    if secs == 0.0 {
        return Ok(None);
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| {
            Error::InvalidInput(format!(
                "--frame-timeout-secs must be a non-negative number of seconds, got {secs}"
            ))
        })
}
