//! `hetensor bench`: per-operation timings for every scheme and ring size, as Markdown or JSON
//! (the same schema the peer-library scripts in `scripts/peers/` write, so they can be merged).

use std::time::Instant;

use serde::Serialize;

use std::sync::Arc;

use hetensor::backend::{create_backend, Backend, BackendKind, TraceCounts};
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::Result;

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

/// Times `f` `reps` times after one warm-up; returns (median, min, max) in µs. Each repetition
/// first builds its input with `setup`, untimed (an in-place operation such as an NTT needs a
/// fresh operand every time).
pub fn time_with_setup<T, S, F>(reps: usize, mut setup: S, mut f: F) -> Result<(f64, f64, f64)>
where
    S: FnMut() -> Result<T>,
    F: FnMut(T) -> Result<()>,
{
    f(setup()?)?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let x = setup()?;
        let t = Instant::now();
        f(x)?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok((v[v.len() / 2], v[0], v[v.len() - 1]))
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
    trace: bool,
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
        let (median_us, min_us, max_us) = time_with_setup(
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
            self.scheme, self.log_n, op, median_us
        );
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
                        "--trace: the {} backend does not count its work (use --backend cuda)",
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
            median_us,
            min_us,
            max_us,
            reps: self.reps,
            trace,
        });
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

/// CKKS operations at one ring size: `levels` scale primes of 25 bits over a 30-bit base, one
/// 30-bit special prime per digit and dnum = levels + 1 (SEAL's key-switching layout).
/// With `max_chain`, uses instead the deepest 128-bit chain ([`CkksParams::preset`], dnum 3):
/// the same total modulus as the peers' chains, so more (25-bit) levels. Every operation runs
/// on `backend`; the `xB` rows process `batch` polynomials or ciphertexts in one call.
pub fn bench_ckks(
    log_n: u32,
    reps: usize,
    max_chain: bool,
    batch: usize,
    trace: bool,
    backend: &Arc<dyn Backend>,
    rows: &mut Vec<BenchRow>,
) -> Result<()> {
    let levels = peer_depth(log_n);
    let params = if max_chain {
        CkksParams::preset(log_n, 25)?
    } else {
        CkksParams::new(
            log_n,
            levels,
            25,
            30,
            levels + 1,
            hetensor::rlwe::Security::Bits128,
        )?
    };
    let ctx = CkksContext::with_backend(params.clone(), backend.clone())?;
    let keys = ctx.keygen()?;
    let gk = ctx.gen_galois_keys(&keys.secret, &[1], false)?;
    let top = ctx.max_level();
    let vals: Vec<f64> = (0..ctx.slots()).map(|i| (i % 17) as f64 / 17.0).collect();
    let pt = ctx.encode(&vals, ctx.default_scale(), top)?;
    let a = ctx.encrypt(&pt, &keys.public)?;
    let b = ctx.encrypt(&pt, &keys.public)?;
    let prod = ctx.relinearize(&ctx.multiply(&a, &b)?, &keys.relin)?;
    let mut r = Recorder {
        rows,
        backend: ctx.rlwe().backend(),
        config: format!("ckks-{log_n}{}", if max_chain { "-max" } else { "" }),
        scheme: "ckks",
        log_n,
        limbs: top + 1,
        log_qp: params.rlwe.log_qp(),
        dnum: params.rlwe.dnum(),
        reps,
        trace,
    };
    let rlwe = ctx.rlwe().clone();
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
        ctx.encode(&vals, ctx.default_scale(), top).map(drop)
    })?;
    r.run("encrypt", || ctx.encrypt(&pt, &keys.public).map(drop))?;
    r.run("encrypt_symmetric", || {
        ctx.encrypt_symmetric(&pt, &keys.secret).map(drop)
    })?;
    r.run("decrypt", || {
        hetensor::rlwe::ciphertext::decrypt_to_poly(&rlwe, &keys.secret, &a).map(drop)
    })?;
    r.run("add", || ctx.add(&a, &b).map(drop))?;
    r.run("mul_relin_rescale", || {
        ctx.rescale(&ctx.relinearize(&ctx.multiply(&a, &b)?, &keys.relin)?)
            .map(drop)
    })?;
    r.run("rescale", || ctx.rescale(&prod).map(drop))?;
    r.run("rotate", || ctx.rotate(&a, 1, &gk).map(drop))?;
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
    if batch > 1 {
        let cts = be.concat(&vec![prod.polys(); batch])?;
        let (keep, drop) = (rlwe.q_limbs(top - 1), Arc::<[usize]>::from(vec![top]));
        r.run_batch(
            &format!("rescale x{batch}"),
            batch,
            || Ok(()),
            |()| rlwe.mod_down(&cts, keep.clone(), drop.clone()).map(|_| ()),
        )?;
    }
    Ok(())
}

/// Runs the benchmark suite and prints or writes the report.
#[allow(clippy::too_many_arguments)] // one per CLI flag
pub fn run(
    log_ns: &[u32],
    schemes: &[String],
    reps: usize,
    threads: usize,
    max_chain: bool,
    batch: usize,
    backend: &str,
    json: bool,
    trace: bool,
    out: Option<&std::path::Path>,
) -> Result<()> {
    if threads == 0 || reps == 0 || batch == 0 {
        return Err(hetensor::Error::InvalidInput(format!(
            "--threads, --reps and --batch must be at least 1, got {threads}, {reps} and {batch}"
        )));
    }
    // `main` already runs every command on rayon's global pool, so the global pool cannot
    // be resized here: the benchmark runs on a pool of its own with `threads` threads, and
    // every parallel loop it starts stays on that pool.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| hetensor::Error::Backend(format!("thread pool of {threads} threads: {e}")))?;
    // `threads` in the report is the pool's own count, i.e. what the timings ran on.
    let report =
        pool.install(|| report(log_ns, schemes, reps, max_chain, batch, backend, trace))?;
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
    schemes: &[String],
    reps: usize,
    max_chain: bool,
    batch: usize,
    backend: &str,
    trace: bool,
) -> Result<BenchReport> {
    let be = create_backend(backend.parse::<BackendKind>()?)?;
    let mut rows = Vec::new();
    let mut notes = vec![
        format!("backend: {be:?}"),
        "hetensor uses 30-bit RNS primes; CKKS runs the peers' depth (2/6/16/22 levels at \
         N = 2^13/14/15/16) with a 30-bit base prime, 25-bit scale primes, one 30-bit special \
         prime and dnum = levels + 1; precision is ~2^-12 per fresh slot vs ~2^-25 for the \
         peers' 40-bit scales"
            .to_string(),
    ];
    for &log_n in log_ns {
        for s in schemes {
            eprintln!("{s} N = 2^{log_n}");
            match s.as_str() {
                "ckks" => bench_ckks(log_n, reps, max_chain, batch, trace, &be, &mut rows)?,
                "bfv" => bench_bfv(log_n, reps, trace, &be, &mut rows, &mut notes)?,
                other => {
                    return Err(hetensor::Error::InvalidInput(format!(
                        "unknown scheme '{other}' (use ckks, bfv)"
                    )))
                }
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
        "hetensor {} on {} ({} thread(s), backend {})\n\n| scheme | N | limbs | log2 QP | dnum | batch | op | median µs | min–max µs |\n|---|---|---|---|---|---|---|---|---|\n",
        r.version, r.machine, r.threads, r.backend
    );
    for x in &r.results {
        s += &format!(
            "| {} | 2^{} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1}–{:.1} |\n",
            x.scheme,
            x.log_n,
            x.limbs,
            x.log_qp,
            x.dnum,
            x.batch,
            x.op,
            x.median_us,
            x.min_us,
            x.max_us
        );
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
    let sk = ctx.gen_secret_key()?;
    let pk = ctx.gen_public_key(&sk)?;
    let rk = ctx.gen_relin_key(&sk)?;
    let gk = ctx.gen_galois_keys(&sk, &[1])?;
    let t = ctx.plain_modulus();
    let vals: Vec<u64> = (0..ctx.slot_count() as u64)
        .map(|i| (i * 7919) % t)
        .collect();
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
        log_qp: params.rlwe.log_qp(),
        dnum: params.rlwe.dnum(),
        reps,
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
        params.rlwe.q_primes().len(),
        params.rlwe.p_primes().len(),
        params.rlwe.aux_primes().len(),
        params.rlwe.dnum()
    ));
    Ok(())
}
