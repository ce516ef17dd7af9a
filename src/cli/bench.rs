//! `hetensor bench`: per-operation timings for every scheme and ring size, as Markdown or JSON
//! (the same schema the peer-library scripts in `scripts/peers/` write, so they can be merged).

use std::time::Instant;

use serde::Serialize;

use std::sync::Arc;

use hetensor::backend::{create_backend, Backend, BackendKind};
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
    pub op: String,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub reps: usize,
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

/// Times `f` `reps` times after one warm-up; returns (median, min, max) in µs.
pub fn time_op<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<(f64, f64, f64)> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
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
    reps: usize,
}

impl Recorder<'_> {
    fn run<F: FnMut() -> Result<()>>(&mut self, op: &str, mut f: F) -> Result<()> {
        let be = self.backend;
        let (median_us, min_us, max_us) = time_op(self.reps, || {
            f()?;
            be.synchronize()
        })?;
        eprintln!(
            "  {:<5} 2^{} {:<18} {:>12.1} µs",
            self.scheme, self.log_n, op, median_us
        );
        self.rows.push(BenchRow {
            config: self.config.clone(),
            scheme: self.scheme.into(),
            log_n: self.log_n,
            limbs: self.limbs,
            log_qp: (self.log_qp * 10.0).round() / 10.0,
            op: op.into(),
            median_us,
            min_us,
            max_us,
            reps: self.reps,
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
/// the same total modulus as the peers' chains, so more (25-bit) levels.
pub fn bench_ckks(
    log_n: u32,
    reps: usize,
    max_chain: bool,
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
        reps,
    };
    let rlwe = ctx.rlwe().clone();
    let plan = rlwe.ring().plan(0).clone();
    let mut limb: Vec<u32> = (0..rlwe.n() as u32).collect();
    r.run("ntt_limb", || {
        plan.forward(&mut limb);
        Ok(())
    })?;
    r.run("intt_limb", || {
        plan.inverse(&mut limb);
        Ok(())
    })?;
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
    let be = rlwe.backend();
    let d = be.slice_polys(a.polys(), 1, 1)?;
    r.run("key_switch", || {
        keys.relin.key_switch_key().switch(&rlwe, &d).map(drop)
    })?;
    // Backend throughput on one polynomial over the top level's limbs and on a batch of 16
    // (one trait call each, so a GPU pays its dispatch overhead once per batch).
    let one = be.slice_polys(a.polys(), 0, 1)?;
    for batch in [1usize, 16] {
        let mut x = be.concat(&vec![&one; batch])?;
        let y = x.clone();
        r.run(&format!("intt+ntt x{batch}"), || {
            be.ntt_inverse(rlwe.ring(), &mut x)?;
            be.ntt_forward(rlwe.ring(), &mut x)
        })?;
        r.run(&format!("mul x{batch}"), || {
            be.mul_assign(rlwe.ring(), &mut x, &y)
        })?;
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
    backend: &str,
    json: bool,
    out: Option<&std::path::Path>,
) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .map_err(|e| hetensor::Error::Backend(format!("thread pool: {e}")))?;
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
                "ckks" => bench_ckks(log_n, reps, max_chain, &be, &mut rows)?,
                "bfv" => bench_bfv(log_n, reps, &be, &mut rows, &mut notes)?,
                other => {
                    return Err(hetensor::Error::InvalidInput(format!(
                        "unknown scheme '{other}' (use ckks, bfv)"
                    )))
                }
            }
        }
    }
    let report = BenchReport {
        engine: "hetensor".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        machine: machine(),
        threads,
        backend: be.name().into(),
        results: rows,
        notes,
    };
    let text = if json {
        serde_json::to_string_pretty(&report)
            .map_err(|e| hetensor::Error::InvalidInput(e.to_string()))?
    } else {
        markdown(&report)
    };
    match out {
        Some(p) => std::fs::write(p, text)?,
        None => println!("{text}"),
    }
    Ok(())
}

fn markdown(r: &BenchReport) -> String {
    let mut s = format!(
        "hetensor {} on {} ({} thread(s), backend {})\n\n| scheme | N | limbs | log2 QP | op | median µs | min–max µs |\n|---|---|---|---|---|---|---|\n",
        r.version, r.machine, r.threads, r.backend
    );
    for x in &r.results {
        s += &format!(
            "| {} | 2^{} | {} | {:.0} | {} | {:.1} | {:.1}–{:.1} |\n",
            x.scheme, x.log_n, x.limbs, x.log_qp, x.op, x.median_us, x.min_us, x.max_us
        );
    }
    s
}

/// BFV operations with each size's 128-bit preset (the longest chain, like SEAL's
/// `BFVDefault`) and a 20-bit batching plaintext modulus.
pub fn bench_bfv(
    log_n: u32,
    reps: usize,
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
        reps,
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
