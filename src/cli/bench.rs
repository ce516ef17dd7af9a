//! `hetensor bench`: per-operation timings for every scheme and ring size, as Markdown or JSON
//! (the same schema the peer-library scripts in `scripts/peers/` write, so they can be merged).

use std::time::Instant;

use serde::Serialize;

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use hetensor::backend::{Backend, TraceCounts};
use hetensor::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use hetensor::rlwe::{Ciphertext, SecretKey};
use hetensor::Result;

use super::options::{Backend as CliBackend, BenchScheme};

/// One timed operation.
#[derive(Serialize, Clone, Debug)]
pub struct BenchRow {
    pub config: String,
    pub scheme: String,
    pub log_n: u32,
    pub limbs: usize,
    pub log_qp: f64,
    /// Key-switching digits of the parameters.
    pub dnum: usize,
    /// Ciphertexts (or, for the backend primitives, polynomials) per timed call.
    pub batch: usize,
    pub op: String,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub reps: usize,
    /// Thread CPU time (µs) of the same repetitions, recorded with one thread on the CPU
    /// backend only (where it is the op's whole cost): on a loaded machine it leaves out the
    /// time spent waiting for a core, like the peers' `cpu_*` fields (`merge.py --metric cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_median_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_min_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_max_us: Option<f64>,
    /// CKKS: log2 of the scale Δ the chain was built for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_bits: Option<u32>,
    /// CKKS: primes per level (composite scaling when > 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub composition: Option<usize>,
    /// With `--precision`: log2 of the largest slot error of one output of the operation,
    /// decrypted and compared with the plaintext computation over all slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_err_log2: Option<f64>,
    /// With `--precision`: log2 of the mean absolute slot error of the same output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_err_log2: Option<f64>,
    /// Bootstrapping: levels left for computation after the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub levels_left: Option<usize>,
    /// With `--trace`: the device work of one call (one more, untimed call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceCounts>,
}

/// A whole report.
#[derive(Serialize, Debug)]
pub struct BenchReport {
    pub engine: String,
    pub version: String,
    pub machine: String,
    pub threads: usize,
    pub backend: String,
    pub results: Vec<BenchRow>,
    pub notes: Vec<String>,
}

/// Median, min and max of some samples.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(|a, b| a.total_cmp(b));
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// CPU time the calling thread has used, in µs (`None` where the clock is unavailable).
fn thread_cpu_us() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that the call only writes to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3)
}

/// Times `f` `reps` times after one warm-up; returns the wall-clock spread in µs and the
/// calling thread's CPU time spread (if its clock works). Each repetition first builds its
/// input with `setup`, untimed (an in-place operation such as an NTT needs a fresh operand
/// every time).
pub fn time_with_setup<T, S, F>(
    reps: usize,
    mut setup: S,
    mut f: F,
) -> Result<(Spread, Option<Spread>)>
where
    S: FnMut() -> Result<T>,
    F: FnMut(T) -> Result<()>,
{
    f(setup()?)?;
    let mut wall = Vec::with_capacity(reps);
    let mut cpu = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let x = setup()?;
        let c = thread_cpu_us();
        let t = Instant::now();
        f(x)?;
        wall.push(t.elapsed().as_secs_f64() * 1e6);
        if let (Some(c0), Some(c1)) = (c, thread_cpu_us()) {
            cpu.push(c1 - c0);
        }
    }
    let cpu = (cpu.len() == wall.len()).then(|| Spread::of(cpu));
    Ok((Spread::of(wall), cpu))
}

/// Machine description for reports.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu}, {} logical cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

struct Recorder<'a> {
    rows: &'a mut Vec<BenchRow>,
    /// Waited on after every repetition, so that asynchronous device backends are timed to
    /// completion (a no-op on the CPU).
    backend: &'a dyn hetensor::backend::Backend,
    config: String,
    scheme: &'static str,
    log_n: u32,
    limbs: usize,
    log_qp: f64,
    dnum: usize,
    reps: usize,
    /// CKKS chain, copied into every row (`None` for BFV).
    scale_bits: Option<u32>,
    composition: Option<usize>,
    trace: bool,
}

/// What `--precision` compares a CKKS output with: the context and secret key that decrypt
/// it, and the plaintext result.
struct Expect<'a> {
    ctx: &'a CkksContext,
    sk: &'a SecretKey,
    want: Vec<f64>,
}

/// log2 of the max and of the mean absolute slot error of `ct` against `want`, over all slots
/// (an exact result reads as 2^-1022 rather than −∞, which JSON cannot carry).
fn slot_error(
    ctx: &CkksContext,
    sk: &SecretKey,
    ct: &Ciphertext,
    want: &[f64],
) -> Result<(f64, f64)> {
    let got = ctx.decrypt_decode(ct, sk)?;
    let errs: Vec<f64> = want.iter().zip(&got).map(|(w, g)| (w - g).abs()).collect();
    let max = errs.iter().copied().fold(0.0f64, f64::max);
    let mean = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
    let log2 = |e: f64| e.max(f64::MIN_POSITIVE).log2();
    Ok((log2(max), log2(mean)))
}

impl Recorder<'_> {
    /// Times one call of `f` (batch 1).
    fn run<F: FnMut() -> Result<()>>(&mut self, op: &str, mut f: F) -> Result<()> {
        self.run_batch(op, 1, || Ok(()), |()| f())
    }

    /// Times `f` on a fresh input from `setup` (untimed) per repetition; `batch` is how many
    /// ciphertexts or polynomials one call processes. The backend is synchronized after both,
    /// so queued setup work is not timed and asynchronous device work is timed to completion.
    fn run_batch<T, S, F>(&mut self, op: &str, batch: usize, mut setup: S, mut f: F) -> Result<()>
    where
        S: FnMut() -> Result<T>,
        F: FnMut(T) -> Result<()>,
    {
        let be = self.backend;
        let (wall, cpu) = time_with_setup(
            self.reps,
            || {
                let x = setup()?;
                be.synchronize()?;
                Ok(x)
            },
            |x| {
                f(x)?;
                be.synchronize()
            },
        )?;
        eprintln!(
            "  {:<5} 2^{} {:<18} {:>12.1} µs",
            self.scheme, self.log_n, op, wall.median
        );
        // Thread CPU time is the op's cost only when the op runs on this one thread.
        let cpu = cpu.filter(|_| rayon::current_num_threads() == 1 && be.name() == "cpu");
        let trace = if self.trace {
            let x = setup()?;
            be.synchronize()?;
            let before = be.trace_counts();
            f(x)?;
            be.synchronize()?;
            match (before, be.trace_counts()) {
                (Some(b), Some(a)) => Some(a.since(&b)),
                _ => {
                    return Err(hetensor::Error::InvalidInput(format!(
                    "--trace: the {} backend does not count its work (use --backend cuda or wgpu)",
                    be.name()
                )))
                }
            }
        } else {
            None
        };
        self.rows.push(BenchRow {
            config: self.config.clone(),
            scheme: self.scheme.into(),
            log_n: self.log_n,
            limbs: self.limbs,
            log_qp: (self.log_qp * 10.0).round() / 10.0,
            dnum: self.dnum,
            batch,
            op: op.into(),
            median_us: wall.median,
            min_us: wall.min,
            max_us: wall.max,
            reps: self.reps,
            cpu_median_us: cpu.map(|c| c.median),
            cpu_min_us: cpu.map(|c| c.min),
            cpu_max_us: cpu.map(|c| c.max),
            scale_bits: self.scale_bits,
            composition: self.composition,
            max_err_log2: None,
            mean_err_log2: None,
            levels_left: None,
            trace,
        });
        Ok(())
    }

    /// Times a CKKS operation like [`Self::run`]; with `expect` (`--precision`), runs it once
    /// more, decrypts that output and records its slot error against the plaintext result.
    fn run_ckks<F>(&mut self, op: &str, expect: Option<&Expect>, mut f: F) -> Result<()>
    where
        F: FnMut() -> Result<Ciphertext>,
    {
        self.run(op, || f().map(drop))?;
        if let Some(e) = expect {
            let (max, mean) = slot_error(e.ctx, e.sk, &f()?, &e.want)?;
            eprintln!("        error: max 2^{max:.1}, mean 2^{mean:.1}");
            if let Some(row) = self.rows.last_mut() {
                row.max_err_log2 = Some((max * 100.0).round() / 100.0);
                row.mean_err_log2 = Some((mean * 100.0).round() / 100.0);
            }
        }
        Ok(())
    }
}

/// Multiplicative depth of the peer configurations (`scripts/peers/configs.json`), so that
/// hetensor runs the same number of levels as SEAL and OpenFHE at each ring size.
pub fn peer_depth(log_n: u32) -> usize {
    match log_n {
        13 => 2,
        14 => 6,
        15 => 16,
        _ => 22,
    }
}

/// Which CKKS chain `bench` runs, and whether it measures precision.
#[derive(Clone, Copy, Debug, Default)]
pub struct CkksChain {
    /// The deepest 128-bit chain ([`CkksParams::preset`], dnum 3) at the scale (default 2^25).
    pub max_chain: bool,
    /// A chain from [`CkksParams::builder`] at scale 2^bits (composite levels from 2^30 on);
    /// `None` keeps single 25-bit scale primes over a 30-bit base.
    pub scale_bits: Option<u32>,
    /// Rescalings (default: the peers' depth, [`peer_depth`]).
    pub depth: Option<usize>,
    /// With `scale_bits`: the builder's special primes beyond one digit's worth
    /// ([`hetensor::ckks::CkksParamsBuilder::extra_special_primes`]; `None`: its default).
    pub extra_special: Option<usize>,
    /// Decrypt one output of the ops that produce a ciphertext and report its slot error.
    pub precision: bool,
    /// The bootstrap rows: a sparse-slot bootstrap of this period (`None`: all slots).
    pub boot_slots: Option<usize>,
    /// The bootstrap rows: with the arcsine correction.
    pub boot_arcsine: bool,
}

impl CkksChain {
    /// The parameters at N = 2^`log_n`. Without a scale: 25-bit scale primes over a 30-bit
    /// base, one 30-bit special prime per digit and dnum = levels + 1 (SEAL's key-switching
    /// layout), as before composite levels existed, so earlier rows stay comparable.
    pub fn params(&self, log_n: u32) -> Result<CkksParams> {
        let depth = self.depth.unwrap_or_else(|| peer_depth(log_n));
        match (self.max_chain, self.scale_bits) {
            (true, bits) => CkksParams::preset(log_n, bits.unwrap_or(25)),
            (false, Some(bits)) => {
                let b = CkksParams::builder()
                    .log_n(log_n)
                    .depth(depth)
                    .scale_bits(bits)
                    .security(hetensor::rlwe::Security::Bits128);
                match self.extra_special {
                    Some(k) => b.extra_special_primes(k),
                    None => b,
                }
                .build()
            }
            (false, None) => CkksParams::single_prime(SinglePrimeChain {
                log_n,
                levels: depth,
                scale_bits: 25,
                dnum: depth + 1,
                security: hetensor::rlwe::Security::Bits128,
                ..Default::default()
            }),
        }
    }

    /// Config id of the rows, e.g. `ckks-14`, `ckks-14-max`, `ckks-14-s40`, `ckks-13-s40-x0`.
    fn id(&self, log_n: u32) -> String {
        let max = if self.max_chain { "-max" } else { "" };
        let scale = self
            .scale_bits
            .map(|b| format!("-s{b}"))
            .unwrap_or_default();
        let extra = self
            .extra_special
            .map(|k| format!("-x{k}"))
            .unwrap_or_default();
        format!("ckks-{log_n}{max}{scale}{extra}")
    }
}

/// CKKS operations at one ring size on the chain `chain` picks. Inputs are uniform in
/// [-1, 1] in every slot. Every operation runs on `backend`; the `xB` rows process `batch`
/// polynomials or ciphertexts in one call. With `chain.precision`, the ops that produce a
/// ciphertext also report their slot error, and `depth_chain` times (and measures) the whole
/// chain: one mul+relin+rescale per level, by a fresh ciphertext at that level's natural
/// scale, from the top down to level 0.
pub fn bench_ckks(
    log_n: u32,
    (reps, trace): (usize, bool),
    chain: CkksChain,
    batch: usize,
    backend: &Arc<dyn Backend>,
    rows: &mut Vec<BenchRow>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let params = chain.params(log_n)?;
    notes.push(format!("{}: {params}", chain.id(log_n)));
    let ctx = CkksContext::with_backend(params.clone(), backend.clone())?;
    let keys = ctx.keygen()?;
    // Steps 1..=4: `rotate` uses 1, `rotate_hoisted x4` all four (one shared ModUp).
    let gk = ctx.gen_galois_keys(&keys.secret, &HOISTED_STEPS, false)?;
    let top = ctx.max_level();
    let slots = ctx.slots();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1234 + log_n as u64);
    let mut uniform = || -> Vec<f64> { (0..slots).map(|_| rng.random_range(-1.0..=1.0)).collect() };
    let (x, y) = (uniform(), uniform());
    let pt = ctx.encode(&x, ctx.default_scale(), top)?;
    let pt_y = ctx.encode(&y, ctx.default_scale(), top)?;
    let a = ctx.encrypt(&pt, &keys.public)?;
    let b = ctx.encrypt(&pt_y, &keys.public)?;
    let prod = ctx.relinearize(&ctx.multiply(&a, &b)?, &keys.relin)?;
    let rlwe = ctx.rlwe().clone();
    let expect = |want: Vec<f64>| {
        chain.precision.then_some(Expect {
            ctx: &ctx,
            sk: &keys.secret,
            want,
        })
    };
    let mut r = Recorder {
        rows,
        backend: rlwe.backend(),
        config: chain.id(log_n),
        scheme: "ckks",
        log_n,
        limbs: rlwe.q_limbs(top).len(),
        log_qp: params.rlwe().log_qp(),
        dnum: params.rlwe().dnum(),
        reps,
        scale_bits: Some(params.scale_bits()),
        composition: Some(params.composition()),
        trace,
    };
    let (be, ring) = (rlwe.backend(), rlwe.ring());
    // One polynomial over one limb (the peers' `ntt_limb`), on the backend.
    let limb_ntt = be.select_limbs(&be.slice_polys(a.polys(), 0, 1)?, vec![0].into())?;
    let mut limb_coeff = limb_ntt.clone();
    be.ntt_inverse(ring, &mut limb_coeff)?;
    r.run_batch(
        "ntt_limb",
        1,
        || Ok(limb_coeff.clone()),
        |mut x| be.ntt_forward(ring, &mut x),
    )?;
    r.run_batch(
        "intt_limb",
        1,
        || Ok(limb_ntt.clone()),
        |mut x| be.ntt_inverse(ring, &mut x),
    )?;
    r.run("encode", || {
        ctx.encode(&x, ctx.default_scale(), top).map(drop)
    })?;
    r.run_ckks("encrypt", expect(x.clone()).as_ref(), || {
        ctx.encrypt(&pt, &keys.public)
    })?;
    r.run_ckks("encrypt_symmetric", expect(x.clone()).as_ref(), || {
        ctx.encrypt_symmetric(&pt, &keys.secret)
    })?;
    r.run("decrypt", || {
        hetensor::rlwe::ciphertext::decrypt_to_poly(&rlwe, &keys.secret, &a).map(drop)
    })?;
    r.run("add", || ctx.add(&a, &b).map(drop))?;
    let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
    r.run_ckks("mul_relin_rescale", expect(xy.clone()).as_ref(), || {
        ctx.rescale(&ctx.relinearize(&ctx.multiply(&a, &b)?, &keys.relin)?)
    })?;
    // What bootstrapping and Python's products run: the product relinearized and rescaled in
    // one key switch, one ModDown by P·q_l, the size-3 product never written on a device
    // (`multiply_relinearize_rescale`; the row above is the peers' three calls).
    r.run_ckks("mul_relin_rescale_fused", expect(xy).as_ref(), || {
        ctx.multiply_relinearize_rescale(&a, &b, &keys.relin)
    })?;
    r.run("rescale", || ctx.rescale(&prod).map(drop))?;
    let rotated: Vec<f64> = (0..slots).map(|i| x[(i + 1) % slots]).collect();
    r.run_ckks("rotate", expect(rotated).as_ref(), || {
        ctx.rotate(&a, 1, &gk)
    })?;
    // Several steps of one ciphertext sharing one decomposition (what linear transforms and
    // bootstrapping's baby steps run).
    r.run("rotate_hoisted x4", || {
        ctx.rotate_many(&a, &HOISTED_STEPS, &gk).map(drop)
    })?;
    if chain.precision {
        // x·y^top: one factor y per level, each encrypted at its level's natural scale so
        // that every rescale lands on the next level's natural scale (no scale fix-ups).
        let factors = (1..=top)
            .rev()
            .map(|l| ctx.encrypt(&ctx.encode(&y, ctx.natural_scale(l), l)?, &keys.public))
            .collect::<Result<Vec<_>>>()?;
        let want = x
            .iter()
            .zip(&y)
            .map(|(p, q)| p * q.powi(top as i32))
            .collect();
        r.run_ckks("depth_chain", expect(want).as_ref(), || {
            factors.iter().try_fold(a.clone(), |c, f| {
                ctx.rescale(&ctx.relinearize(&ctx.multiply(&c, f)?, &keys.relin)?)
            })
        })?;
    }
    let d = be.slice_polys(a.polys(), 1, 1)?;
    r.run("key_switch", || {
        keys.relin.key_switch_key().switch(&rlwe, &d).map(drop)
    })?;
    // Backend primitives over the top level's limbs, on one polynomial and on `batch` of them
    // in one trait call (a GPU pays its dispatch overhead once per call), and the rescale of
    // `batch` ciphertexts as one ModDown of all their polynomials.
    let one = be.slice_polys(a.polys(), 0, 1)?;
    let mut sizes = vec![1];
    if batch > 1 {
        sizes.push(batch);
    }
    for b in sizes {
        let x = be.concat(&vec![&one; b])?;
        let mut xc = x.clone();
        be.ntt_inverse(ring, &mut xc)?;
        r.run_batch(
            &format!("ntt x{b}"),
            b,
            || Ok(xc.clone()),
            |mut y| be.ntt_forward(ring, &mut y),
        )?;
        r.run_batch(
            &format!("intt x{b}"),
            b,
            || Ok(x.clone()),
            |mut y| be.ntt_inverse(ring, &mut y),
        )?;
        r.run_batch(
            &format!("mul x{b}"),
            b,
            || Ok(x.clone()),
            |mut y| be.mul_assign(ring, &mut y, &x),
        )?;
    }
    if batch > 1 && top > 0 {
        let cts = be.concat(&vec![prod.polys(); batch])?;
        // A rescale keeps the level below and drops the top level's primes (all `t` of a
        // composite level), as `CkksContext::rescale` does.
        let keep = rlwe.q_limbs(top - 1);
        let drop = Arc::<[usize]>::from(&rlwe.q_limbs(top)[keep.len()..]);
        r.run_batch(
            &format!("rescale x{batch}"),
            batch,
            || Ok(()),
            |()| rlwe.mod_down(&cts, keep.clone(), drop.clone()).map(|_| ()),
        )?;
    }
    Ok(())
}

/// Options of `hetensor bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Ring sizes (log2 N, each 13 to 16).
    #[arg(long, value_delimiter = ',', default_values_t = vec![13u32, 14],
          value_parser = clap::value_parser!(u32).range(13..=16))]
    pub log_n: Vec<u32>,
    /// Schemes to run. `bootstrap` times CKKS bootstrapping (128-bit at 2^16; below, where no
    /// 128-bit chain fits, an insecure test ring) with its output precision and the levels it leaves.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = vec![BenchScheme::Ckks, BenchScheme::Bfv])]
    pub scheme: Vec<BenchScheme>,
    /// Repetitions per operation (after one warm-up).
    #[arg(long, default_value_t = 10, value_parser = super::args::at_least(1))]
    pub reps: usize,
    /// Worker threads (1 = single-threaded, comparable with SEAL).
    #[arg(long, default_value_t = 1, value_parser = super::args::thread_count)]
    pub threads: usize,
    /// CKKS on the deepest 128-bit chain instead of the peers' depth.
    #[arg(long, conflicts_with = "depth")]
    pub max_chain: bool,
    /// CKKS scale 2^B, from the parameter builder: composite levels (several primes per
    /// level) from 2^30 on [default: single 25-bit scale primes].
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=62))]
    pub scale_bits: Option<u32>,
    /// CKKS rescalings [default: the peers' depth, 2/6/16/22 at N = 2^13/14/15/16].
    #[arg(long, value_parser = super::args::at_least(1))]
    pub depth: Option<usize>,
    /// With --scale-bits: special primes beyond one digit's worth [default: 1]. 0 keeps a
    /// rotation's precision at SEAL's level (~20 bits at 2^40) and may fit fewer, faster
    /// key-switching digits; 1 keeps it at a fresh encryption's.
    #[arg(long, requires = "scale_bits", value_parser = clap::value_parser!(u32).range(0..=8))]
    pub extra_special_primes: Option<u32>,
    /// Also report each CKKS op's slot error against the plaintext result (log2 of the
    /// max and mean over all slots) and time a chain of mul+relin+rescale to level 0.
    #[arg(long)]
    pub precision: bool,
    /// cpu, cuda, wgpu or auto.
    #[arg(long, value_enum, default_value_t = CliBackend::Cpu)]
    pub backend: CliBackend,
    /// Polynomials / ciphertexts per call in the batched (`xB`) CKKS rows [default: 16].
    #[arg(long, value_parser = super::args::at_least(1))]
    pub batch: Option<usize>,
    /// Bootstrap a ciphertext whose slots repeat with this period (a power of two ≤ N/4):
    /// the sparse-slot bootstrap [default: all N/2 slots].
    #[arg(long)]
    pub boot_slots: Option<usize>,
    /// Bootstrap with the arcsine correction (2 levels fewer left for computation, precision
    /// kept for messages with large coefficients, e.g. constants).
    #[arg(long)]
    pub boot_arcsine: bool,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Also count each operation's device work (kernel launches, copies, allocations) on
    /// one more untimed call (ckks and bfv); needs a backend that counts it (cuda).
    #[arg(long)]
    pub trace: bool,
    /// Write the report to this file instead of stdout.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// The steps of the `rotate_hoisted x4` row (the CKKS rows' Galois keys).
const HOISTED_STEPS: [i64; 4] = [1, 2, 3, 4];

/// Runs the benchmark suite and prints or writes the report.
pub fn run(args: BenchArgs) -> Result<()> {
    use BenchScheme::{Bfv, Bootstrap, Ckks};
    // A flag that none of the --scheme list reads is an error, not ignored.
    super::options::reject_unused(
        "--scheme ",
        &args.scheme,
        &[
            ("--max-chain", args.max_chain, &[Ckks]),
            ("--scale-bits", args.scale_bits.is_some(), &[Ckks]),
            ("--depth", args.depth.is_some(), &[Ckks]),
            (
                "--extra-special-primes",
                args.extra_special_primes.is_some(),
                &[Ckks],
            ),
            ("--precision", args.precision, &[Ckks]),
            ("--batch", args.batch.is_some(), &[Ckks]),
            ("--trace", args.trace, &[Ckks, Bfv]),
            ("--boot-slots", args.boot_slots.is_some(), &[Bootstrap]),
            ("--boot-arcsine", args.boot_arcsine, &[Bootstrap]),
        ],
    )?;
    let (log_ns, schemes, reps, threads) = (&args.log_n, &args.scheme, args.reps, args.threads);
    let (backend, json, trace, out) = (args.backend, args.json, args.trace, args.out.as_deref());
    let batch = args.batch.unwrap_or(16);
    let chain = CkksChain {
        max_chain: args.max_chain,
        scale_bits: args.scale_bits,
        depth: args.depth,
        extra_special: args.extra_special_primes.map(|k| k as usize),
        precision: args.precision,
        boot_slots: args.boot_slots,
        boot_arcsine: args.boot_arcsine,
    };
    if threads == 0 || reps == 0 || batch == 0 {
        return Err(hetensor::Error::InvalidInput(format!(
            "--threads, --reps and --batch must be at least 1, got {threads}, {reps} and {batch}"
        )));
    }
    // `main` already runs every command on rayon's global pool, so the global pool cannot
    // be resized here: the benchmark runs on a pool of its own with `threads` threads, and
    // every parallel loop it starts stays on that pool.
    let pool = hetensor::threads::thread_pool(Some(threads))?;
    // `threads` in the report is the pool's own count, i.e. what the timings ran on.
    let report = pool.install(|| report(log_ns, schemes, reps, chain, batch, backend, trace))?;
    let text = if json {
        serde_json::to_string_pretty(&report)
            .map_err(|e| hetensor::Error::InvalidInput(e.to_string()))?
    } else {
        markdown(&report)
    };
    match out {
        Some(p) => super::write_file(p, "--out", text.as_bytes())?,
        None => println!("{text}"),
    }
    Ok(())
}

/// Runs every benchmark on the current rayon pool.
fn report(
    log_ns: &[u32],
    schemes: &[BenchScheme],
    reps: usize,
    chain: CkksChain,
    batch: usize,
    backend: CliBackend,
    trace: bool,
) -> Result<BenchReport> {
    let be = backend.create()?;
    let mut rows = Vec::new();
    let mut notes = vec![format!("backend: {be:?}")];
    if chain.scale_bits.is_none() && !chain.max_chain {
        notes.push(
            "hetensor uses 30-bit RNS primes; CKKS runs the peers' depth (2/6/16/22 levels at \
             N = 2^13/14/15/16, unless --depth) with a 30-bit base prime, 25-bit scale primes, \
             one 30-bit special prime and dnum = levels + 1; precision is ~2^-12 per fresh slot \
             vs ~2^-25 for the peers' 40-bit scales (--scale-bits 40 for composite levels)"
                .to_string(),
        );
    }
    if chain.precision {
        notes.push(
            "precision: inputs uniform in [-1, 1] in all slots; max_err_log2 / mean_err_log2 \
             are log2 of the max / mean |decrypted − plaintext result| over all slots of one \
             output of the op; depth_chain = one mul+relin+rescale per level by a fresh \
             ciphertext at that level's natural scale, from the top down to level 0 (x·y^depth)"
                .to_string(),
        );
    }
    for &log_n in log_ns {
        for s in schemes {
            eprintln!("{s} N = 2^{log_n}");
            match s {
                BenchScheme::Ckks => bench_ckks(
                    log_n,
                    (reps, trace),
                    chain,
                    batch,
                    &be,
                    &mut rows,
                    &mut notes,
                )?,
                BenchScheme::Bfv => bench_bfv(log_n, reps, trace, &be, &mut rows, &mut notes)?,
                BenchScheme::Bootstrap => bench_bootstrap(
                    log_n,
                    reps,
                    (chain.boot_slots, chain.boot_arcsine),
                    &be,
                    &mut rows,
                    &mut notes,
                )?,
            }
        }
    }
    Ok(BenchReport {
        engine: "hetensor".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        machine: machine(),
        threads: rayon::current_num_threads(),
        backend: be.name().into(),
        results: rows,
        notes,
    })
}

fn markdown(r: &BenchReport) -> String {
    let mut s = format!(
        "hetensor {} on {} ({} thread(s), backend {})\n\n| scheme | N | limbs | log2 QP | dnum | Δ (primes/level) | batch | op | median µs | min–max µs | log2 max err | log2 mean err |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        r.version, r.machine, r.threads, r.backend
    );
    let opt = |v: Option<f64>| v.map_or("—".to_string(), |e| format!("{e:.1}"));
    for x in &r.results {
        let scale = match (x.scale_bits, x.composition) {
            (Some(b), Some(t)) => format!("2^{b} ({t})"),
            _ => "—".into(),
        };
        s += &format!(
            "| {} | 2^{} | {} | {:.0} | {} | {scale} | {} | {} | {:.1} | {:.1}–{:.1} | {} | {} |\n",
            x.scheme,
            x.log_n,
            x.limbs,
            x.log_qp,
            x.dnum,
            x.batch,
            x.op,
            x.median_us,
            x.min_us,
            x.max_us,
            opt(x.max_err_log2),
            opt(x.mean_err_log2),
        );
    }
    for x in r.results.iter().filter(|x| x.levels_left.is_some()) {
        s += &format!(
            "\n{} at 2^{}: {} levels left for computation after it.\n",
            x.op,
            x.log_n,
            x.levels_left.unwrap_or(0)
        );
    }
    for n in r.notes.iter().filter(|n| n.starts_with("bootstrap")) {
        s += &format!("\n{n}\n");
    }
    if r.results.iter().any(|x| x.trace.is_some()) {
        s += "\nDevice work per call (`--trace`; kernel traffic is a model, see kernels/README.md):\n\n\
              | scheme | N | batch | op | launches | kernel MB (est.) | uploads (KB) | download KB | copies + memsets (MB) | allocations (MB) |\n\
              |---|---|---|---|---|---|---|---|---|---|\n";
        for x in &r.results {
            if let Some(t) = &x.trace {
                s += &format!(
                    "| {} | 2^{} | {} | {} | {} | {:.1} | {} ({:.1}) | {:.1} | {} ({:.1}) | {} ({:.1}) |\n",
                    x.scheme,
                    x.log_n,
                    x.batch,
                    x.op,
                    t.launches,
                    t.kernel_bytes as f64 / 1e6,
                    t.uploads,
                    t.upload_bytes as f64 / 1e3,
                    t.download_bytes as f64 / 1e3,
                    t.device_copies,
                    t.device_copy_bytes as f64 / 1e6,
                    t.allocations,
                    t.alloc_bytes as f64 / 1e6
                );
            }
        }
    }
    s
}

/// CKKS bootstrapping: key generation (once) and one bootstrap per repetition, with the
/// output's precision over all slots and the levels it leaves. N = 2^15 and 2^16 run the 128-bit
/// presets ([`BootstrapParams::preset`]); smaller rings (no 128-bit chain fits them) run the
/// insecure test ring (same code, labelled `bootstrap-insecure-test-ring`). With
/// `sparse_slots`, the sparse-slot bootstrap of a message with that period; with `arcsine`,
/// the arcsine correction.
pub fn bench_bootstrap(
    log_n: u32,
    reps: usize,
    (sparse_slots, arcsine): (Option<usize>, bool),
    be: &std::sync::Arc<dyn hetensor::backend::Backend>,
    rows: &mut Vec<BenchRow>,
    notes: &mut Vec<String>,
) -> Result<()> {
    use hetensor::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
    let (bp, config) = match log_n {
        15 | 16 => (BootstrapParams::preset(log_n)?, "bootstrap-128"),
        // Smaller rings hold no 128-bit bootstrapping chain: the same pipeline on an
        // insecure ring, labelled as such in every row.
        _ => (
            BootstrapParams::insecure_test_ring(log_n, 2)?,
            "bootstrap-insecure-test-ring",
        ),
    };
    let (bp, config) = match sparse_slots {
        Some(s) => (bp.sparse(s)?, format!("{config}-sparse-{s}")),
        None => (bp, config.to_string()),
    };
    let (bp, config) = match arcsine {
        true => (bp.with_arcsine()?, format!("{config}-arcsine")),
        false => (bp, config),
    };
    let config = config.as_str();
    let ctx = CkksContext::with_backend(bp.ckks().clone(), be.clone())?;
    let p = &bp.ckks();
    let mut rec = Recorder {
        rows,
        backend: be.as_ref(),
        config: config.into(),
        scheme: "ckks",
        log_n,
        limbs: p.rlwe().q_primes().len(),
        log_qp: p.rlwe().log_qp(),
        dnum: p.rlwe().dnum(),
        reps,
        scale_bits: Some(p.scale_bits()),
        composition: Some(p.composition()),
        trace: false,
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let keys = ctx.keygen()?;
    let t0 = std::time::Instant::now();
    let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin)?;
    let keygen_s = t0.elapsed().as_secs_f64();
    let rss_keys = hetensor::memory::rss_bytes();
    let want: Vec<f64> = {
        let mut rng = rand::rng();
        let period: Vec<f64> = (0..bp.slots())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        (0..ctx.slots()).map(|i| period[i % bp.slots()]).collect()
    };
    let ct = ctx.encrypt(&ctx.encode(&want, ctx.natural_scale(0), 0)?, &keys.public)?;
    // The first call also encodes and caches the transforms' diagonals: time it apart.
    let t0 = std::time::Instant::now();
    let first = ctx.bootstrap(&ct, &bk)?;
    let first_s = t0.elapsed().as_secs_f64();
    let rss_cached = hetensor::memory::rss_bytes();
    let expect = Expect {
        ctx: &ctx,
        sk: &keys.secret,
        want,
    };
    rec.run_ckks("bootstrap", Some(&expect), || ctx.bootstrap(&ct, &bk))?;
    if let Some(row) = rec.rows.last_mut() {
        row.levels_left = Some(first.level());
    }
    // Where the memory is: after key generation, with the diagonals cached, and the peak
    // (taken before the serialized size is counted below).
    notes.push(format!(
        "bootstrap 2^{log_n} ({config}): resident memory {:.2} GiB after key generation, {:.2} GiB with the diagonals cached, peak {:.2} GiB",
        gib(rss_keys),
        gib(rss_cached),
        gib(hetensor::memory::peak_rss_bytes())
    ));
    // The serialized size, counted without holding the bytes (so the peak memory is the
    // bootstrap's own).
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    hetensor::serialize::write(ctx.rlwe(), &bk, &mut count, Default::default())?;
    notes.push(format!(
        "bootstrap 2^{log_n} ({config}): keys {:.2} GB in memory, {:.2} GB serialized (seeded)",
        bk.memory_bytes() as f64 / 1e9,
        count.0 as f64 / 1e9
    ));
    notes.push(format!(
        "bootstrap 2^{log_n} ({config}): {} CoeffsToSlots + {} EvalMod + {} arcsine + {} SlotsToCoeffs levels, {} slots, {} rotation keys, Hamming weight {} ephemeral secret; key generation {keygen_s:.1} s; first bootstrap (encodes and caches the diagonals) {first_s:.1} s; {} levels left",
        bp.cts_levels(),
        bp.eval_mod_levels(),
        bp.arcsine_levels(),
        bp.stc_levels(),
        bp.slots(),
        bk.galois().elements().len(),
        bp.ephemeral_hamming(),
        first.level()
    ));
    Ok(())
}

/// BFV operations with each size's 128-bit preset (the longest chain, like SEAL's
/// `BFVDefault`) and a 20-bit batching plaintext modulus.
pub fn bench_bfv(
    log_n: u32,
    reps: usize,
    trace: bool,
    backend: &Arc<dyn Backend>,
    rows: &mut Vec<BenchRow>,
    notes: &mut Vec<String>,
) -> Result<()> {
    use hetensor::bfv::{BfvContext, BfvParams, PlainModulus};
    let params = BfvParams::preset(log_n, PlainModulus::Bits(20))?;
    let ctx = BfvContext::with_backend(params.clone(), backend.clone())?;
    let keys = ctx.keygen()?;
    let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
    let gk = ctx.gen_galois_keys(&sk, &[1])?;
    let t = ctx.plain_modulus();
    let vals: Vec<u64> = (0..ctx.slots() as u64).map(|i| (i * 7919) % t).collect();
    let pt = ctx.encode(&vals)?;
    let a = ctx.encrypt(&pt, &pk)?;
    let b = ctx.encrypt(&pt, &pk)?;
    let mut r = Recorder {
        rows,
        backend: ctx.rlwe().backend(),
        config: format!("bfv-{log_n}"),
        scheme: "bfv",
        log_n,
        limbs: ctx.max_level() + 1,
        log_qp: params.rlwe().log_qp(),
        dnum: params.rlwe().dnum(),
        reps,
        scale_bits: None,
        composition: None,
        trace,
    };
    r.run("encrypt", || ctx.encrypt(&pt, &pk).map(drop))?;
    r.run("encrypt_symmetric", || {
        ctx.encrypt_symmetric(&pt, &sk).map(drop)
    })?;
    r.run("decrypt", || ctx.decrypt(&a, &sk).map(drop))?;
    r.run("add", || ctx.add(&a, &b).map(drop))?;
    r.run("mul_relin", || {
        ctx.relinearize(&ctx.multiply(&a, &b)?, &rk).map(drop)
    })?;
    r.run("rotate", || ctx.rotate_rows(&a, 1, &gk).map(drop))?;
    notes.push(format!(
        "bfv-{log_n}: {} ciphertext primes, {} special, {} auxiliary (HPS), dnum {}, t = {t}",
        params.rlwe().q_primes().len(),
        params.rlwe().p_primes().len(),
        params.rlwe().aux_primes().len(),
        params.rlwe().dnum()
    ));
    Ok(())
}
