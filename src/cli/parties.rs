//! `hetensor train credit-federated --parties K` (federated credit approval with no key
//! holder: `K` party processes, each with its slice of the data and a key share, and this
//! process as the coordinator, which holds none), and the hidden `hetensor party` those
//! processes run.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hetensor::ckks::CkksContext;
use hetensor::data::{self, Dataset};
use hetensor::math::sampler::Sampler;
use hetensor::mhe::{Crs, Party, Smudging};
use hetensor::nn::{PolyActivation, TrainConfig};
use hetensor::rlwe::keys::ckks_galois_element;
use hetensor::rlwe::SecretKey;
use hetensor::train::logistic::{self, sigmoid_bound};
use hetensor::train::multiparty::{
    combine_groups, encrypt_groups, fed_plan, peak_memory, published_values, train_fedsgd,
    unpack_ciphertexts, weights_refresh_params, CollectiveRefresh, CreditJob, CreditParty, FedPlan,
};
use hetensor::train::{training_params, BlockLayout, KeyHolder, PublicEval};
use hetensor::workers::parties::{CombinerHub, NetConfig, PartyLink};
use hetensor::workers::session::{serve_party, Coordinator};
use hetensor::workers::WorkerPool;
use hetensor::{serialize, Error, Result};

/// Bits of smudging on the final model's decryption shares. CKKS at Δ = 2^26 cannot hide the
/// noise at 40 bits and keep any precision (see `hetensor::mhe`); 2^14 per share keeps the
/// averaged weights within ~1e-3.
pub const FINAL_SMUDGING_BITS: u32 = 14;

/// Largest weight magnitude the refresh masks are sized for (`2^8`).
const WEIGHT_LOG2: f64 = 8.0;

/// Options of the hidden `hetensor party`.
#[derive(clap::Args)]
pub struct PartyOptions {
    /// The coordinator's address.
    #[arg(long)]
    pub connect: SocketAddr,
    /// This party's index, 0 to K−1.
    #[arg(long)]
    pub index: usize,
    /// Number of parties K.
    #[arg(long, value_parser = super::args::at_least(2))]
    pub parties: usize,
    /// The session's public common reference string (64 hex digits).
    #[arg(long)]
    pub crs: String,
    /// log2 of the ring degree of the training parameters.
    #[arg(long, value_parser = clap::value_parser!(u32).range(13..=16))]
    pub log_n: u32,
    /// UCI credit data file (default: the bundled copy); the party keeps its slice.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// This party's secret share (a serialized secret key of the session's key set), from
    /// its owner's disk; default: a fresh one that never leaves this process.
    #[arg(long)]
    pub share: Option<PathBuf>,
    /// Longest wait for the coordinator's next message, in seconds.
    #[arg(long, default_value_t = 600.0, value_parser = super::args::positive)]
    pub timeout_secs: f64,
}

fn parse_crs(hex: &str) -> Result<Crs> {
    let bad = || Error::InvalidInput(format!("--crs must be 64 hex digits, got {hex:?}"));
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Crs::new(seed))
}

fn crs_hex(crs: &Crs) -> String {
    crs.seed().iter().map(|b| format!("{b:02x}")).collect()
}

/// One party: its own key share (fresh from the OS, or `--share` from its owner's disk),
/// connected to the coordinator, answering its requests until the session ends.
pub fn serve(o: PartyOptions) -> Result<()> {
    if o.index >= o.parties {
        return Err(Error::InvalidInput(format!(
            "--index {} of --parties {}",
            o.index, o.parties
        )));
    }
    let crs = parse_crs(&o.crs)?;
    let ckks = Arc::new(CkksContext::new(training_params(o.log_n)?)?);
    let rlwe = ckks.rlwe().clone();
    let mut party = match &o.share {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot read --share {}: {e}", path.display()),
                ))
            })?;
            let share: SecretKey = serialize::from_bytes(&rlwe, &bytes)?;
            Party::from_share(rlwe.clone(), crs, share, Sampler::from_os())?
        }
        None => Party::new(rlwe.clone(), crs, Sampler::from_os())?,
    };
    let cfg = NetConfig {
        timeout: Duration::from_secs_f64(o.timeout_secs),
        ..NetConfig::default()
    };
    let mut link = PartyLink::connect(o.connect, rlwe, &crs, o.index as u32, cfg)?;
    let data = super::data_path(o.data.as_deref(), data::DEFAULT_CREDIT, "--data")?;
    let mut app = CreditParty::new(ckks, data, o.index, o.parties);
    serve_party(&mut link, &mut party, &mut app)
}

/// The party processes of a session; any still running when this is dropped are killed.
struct Parties(Vec<Child>);

impl Parties {
    fn spawn(
        exe: &Path,
        addr: SocketAddr,
        crs: &Crs,
        k: usize,
        log_n: u32,
        data: Option<&Path>,
    ) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut children = Parties(Vec::with_capacity(k));
        for i in 0..k {
            let mut cmd = Command::new(exe);
            cmd.arg("party")
                .args(["--connect", &addr.to_string()])
                .args(["--index", &i.to_string()])
                .args(["--parties", &k.to_string()])
                .args(["--crs", &crs_hex(crs)])
                .args(["--log-n", &log_n.to_string()])
                .env("RAYON_NUM_THREADS", (cores / k).max(1).to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if let Some(d) = data {
                cmd.arg("--data").arg(d);
            }
            children.0.push(cmd.spawn().map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot start party {i} ({}): {e}", exe.display()),
                ))
            })?);
        }
        Ok(children)
    }

    /// Waits for every party to leave after the session ended; a failed exit is an error.
    fn wait(mut self) -> Result<()> {
        for (i, c) in self.0.iter_mut().enumerate() {
            let status = c.wait()?;
            if !status.success() {
                return Err(Error::Multiparty(format!("party {i} exited with {status}")));
            }
        }
        self.0.clear();
        Ok(())
    }
}

impl Drop for Parties {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Everything `run_credit` needs from `hetensor train`.
pub struct CreditRun<'a> {
    pub parties: usize,
    pub data: Option<&'a Path>,
    pub train: &'a Dataset,
    pub test: &'a Dataset,
    pub cfg: &'a TrainConfig,
    pub sigmoid: &'a PolyActivation,
    pub ctx: Arc<CkksContext>,
    pub log_n: u32,
    pub json: bool,
    /// `(true sigmoid, polynomial sigmoid)` centralized plaintext test accuracy.
    pub plain_acc: (f64, f64),
}

/// Test accuracy of decrypted `(w, b)`.
fn accuracy(d: usize, test: &Dataset, w: &[f64], b: f64) -> Result<f64> {
    let mut m = logistic::model(d)?;
    logistic::set_weights(&mut m, w, b)?;
    Ok(logistic::evaluate(&m, test)?.0)
}

/// The single-key reference: the same plan and steps with a key holder (its public key for
/// the owners, decrypt + re-encrypt as the refresh, its decryption of the final weights).
fn single_key(
    r: &CreditRun,
    layout: &BlockLayout,
    plan: &FedPlan,
    shards: &[Dataset],
) -> Result<(Vec<f64>, f64, logistic::Report)> {
    let ctx = &r.ctx;
    let holder = KeyHolder::new(ctx.clone())?;
    let ev = holder.public_eval(layout)?;
    let bound = sigmoid_bound(r.sigmoid);
    let owners = shards
        .iter()
        .enumerate()
        .map(|(k, s)| encrypt_groups(ctx, &ev.public, layout, plan, k, s, bound))
        .collect::<Result<Vec<_>>>()?;
    let batches = combine_groups(ctx, layout, plan, &owners, r.sigmoid.coeffs[0])?;
    let w0 = holder.encrypt(&vec![0.0; layout.slots()])?;
    let (w, rep) = train_fedsgd(&ev, layout, plan, &batches, w0, r.cfg, r.sigmoid, &holder)?;
    let (wd, bd) = logistic::decrypt_weights(&holder, layout, &w, r.train.num_features())?;
    Ok((wd, bd, rep))
}

/// What the multiparty run measured.
struct Multiparty {
    w: Vec<f64>,
    b: f64,
    report: logistic::Report,
    rounds: usize,
    sent: Vec<u64>,
    received: Vec<u64>,
    decryptions: Vec<usize>,
    peaks: Vec<u64>,
    keygen_seconds: f64,
}

fn multiparty(
    r: &CreditRun,
    layout: &BlockLayout,
    plan: &FedPlan,
    sizes: &[usize],
) -> Result<Multiparty> {
    let ctx = &r.ctx;
    let k = r.parties;
    let crs = Crs::new(Sampler::from_os().seed());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let children = Parties::spawn(&WorkerPool::default_exe()?, addr, &crs, k, r.log_n, r.data)?;
    let hub = CombinerHub::accept(&listener, ctx.rlwe().clone(), &crs, k, NetConfig::default())?;
    let mut coord = Coordinator::new(hub, ctx.rlwe().clone(), crs);
    let t = Instant::now();
    let n = ctx.rlwe().n();
    let galois: Vec<usize> = layout
        .rotation_steps()
        .iter()
        .map(|&s| ckks_galois_element(n, s))
        .collect();
    let keys = coord.keygen(&galois)?;
    let keygen_seconds = t.elapsed().as_secs_f64();
    let ev = PublicEval {
        ctx: ctx.clone(),
        relin: keys.relin,
        galois: keys.galois,
        public: keys.public,
    };
    let job = serde_json::to_vec(&CreditJob::EncryptBatches {
        seed: r.cfg.seed,
        batch: r.cfg.batch_size,
        epochs: r.cfg.epochs,
        bound: sigmoid_bound(r.sigmoid),
        shard_sizes: sizes.to_vec(),
    })
    .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let owners = coord
        .jobs(&vec![job; k])?
        .iter()
        .map(|bytes| {
            let cts = unpack_ciphertexts(ctx, bytes)?;
            if cts.len() != 2 * plan.groups.len() {
                return Err(Error::Multiparty(format!(
                    "an owner sent {} ciphertexts for {} step groups",
                    cts.len(),
                    plan.groups.len()
                )));
            }
            Ok(cts
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect())
        })
        .collect::<Result<Vec<_>>>()?;
    let batches = combine_groups(ctx, layout, plan, &owners, r.sigmoid.coeffs[0])?;
    let w0 = ctx.encrypt(
        &ctx.encode(
            &vec![0.0; layout.slots()],
            ctx.default_scale(),
            ctx.max_level(),
        )?,
        &ev.public,
    )?;
    let params = weights_refresh_params(ctx, k, WEIGHT_LOG2);
    let (w, mut report) = {
        let need = logistic::levels_per_step(r.sigmoid.degree());
        let refresh = CollectiveRefresh::new(&mut coord, ctx, params, need)?;
        train_fedsgd(&ev, layout, plan, &batches, w0, r.cfg, r.sigmoid, &refresh)?
    };
    report.keygen_seconds = keygen_seconds;
    // The one decryption: the final weights, collectively, to party 0, which publishes them.
    let published = coord.decrypt_to(&w, 0, &Smudging::bits(FINAL_SMUDGING_BITS)?)?;
    let (wd, bd) = logistic::block_means(
        layout,
        &published_values(&published)?,
        r.train.num_features(),
    );
    let peak_job = serde_json::to_vec(&CreditJob::PeakMemory)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let peaks = coord
        .jobs(&vec![peak_job; k])?
        .iter()
        .map(|b| {
            b.as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Decode("peak memory reply of the wrong size".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = Multiparty {
        w: wd,
        b: bd,
        report,
        rounds: coord.rounds(),
        sent: (0..k).map(|i| coord.hub().bytes_from(i)).collect(),
        received: (0..k).map(|i| coord.hub().bytes_to(i)).collect(),
        decryptions: coord.decryptions().to_vec(),
        peaks,
        keygen_seconds,
    };
    coord.finish()?;
    children.wait()?;
    Ok(out)
}

/// Training seconds outside the steps: the refreshes.
fn refresh_seconds(r: &logistic::Report) -> f64 {
    r.train_seconds - r.steps.iter().map(|s| s.seconds).sum::<f64>()
}

/// Runs the single-key reference, then the multiparty run, and prints the comparison.
pub fn run_credit(r: &CreditRun) -> Result<()> {
    let d = r.train.num_features();
    let layout = logistic::layout_for(&r.ctx, d)?;
    let shards = r.train.shards(r.parties)?;
    let sizes: Vec<usize> = shards.iter().map(|s| s.len()).collect();
    let plan = fed_plan(&sizes, r.cfg)?;
    if let Some(g) = (0..plan.groups.len()).find(|&g| plan.count(g) > layout.block) {
        return Err(Error::InvalidInput(format!(
            "a step of {} samples does not fit the {} slots of a block; lower --batch",
            plan.count(g),
            layout.block
        )));
    }
    let t = Instant::now();
    let (ws, bs, rep_s) = single_key(r, &layout, &plan, &shards)?;
    let single_s = t.elapsed().as_secs_f64();
    let single_peak = peak_memory();
    let acc_s = accuracy(d, r.test, &ws, bs)?;
    let t = Instant::now();
    let mp = multiparty(r, &layout, &plan, &sizes)?;
    let multi_s = t.elapsed().as_secs_f64();
    let acc_m = accuracy(d, r.test, &mp.w, mp.b)?;
    let max_diff = ws
        .iter()
        .zip(&mp.w)
        .map(|(a, b)| (a - b).abs())
        .fold((bs - mp.b).abs(), f64::max);
    let steps = mp.report.steps.len();
    if r.json {
        let v = serde_json::json!({
            "workload": "credit-federated", "parties": r.parties, "shard_sizes": sizes,
            "epochs": r.cfg.epochs, "batch": r.cfg.batch_size, "lr": r.cfg.lr,
            "momentum": r.cfg.momentum, "log_n": r.log_n, "seed": r.cfg.seed, "steps": steps,
            "test_accuracy": acc_m, "single_key_test_accuracy": acc_s,
            "plaintext_test_accuracy": r.plain_acc.0, "plaintext_poly_test_accuracy": r.plain_acc.1,
            "max_weight_diff_vs_single_key": max_diff,
            "wall_seconds": multi_s, "single_key_wall_seconds": single_s,
            "keygen_seconds": mp.keygen_seconds, "train_seconds": mp.report.train_seconds,
            "single_key_train_seconds": rep_s.train_seconds,
            "refresh_seconds": refresh_seconds(&mp.report),
            "single_key_refresh_seconds": refresh_seconds(&rep_s),
            "collective_refreshes": mp.report.refreshes, "single_key_refreshes": rep_s.refreshes,
            "protocol_rounds": mp.rounds,
            "bytes_sent_per_party": mp.sent, "bytes_received_per_party": mp.received,
            "collective_decryptions_per_party": mp.decryptions,
            "single_party_decryptions": 0,
            "final_smudging_bits": FINAL_SMUDGING_BITS,
            "peak_memory_per_party_bytes": mp.peaks, "single_key_peak_memory_bytes": single_peak,
        });
        println!("{v}");
    } else {
        let mb = |b: &u64| format!("{:.1}", *b as f64 / 1e6);
        println!(
            "no key holder ({} parties, {steps} steps, {} collective refreshes, {} protocol rounds): test accuracy {:.2}%; single key, same steps: {:.2}% ({} key-holder refreshes); centralized plaintext: {:.2}% (true sigmoid), {:.2}% (polynomial); max |w_parties − w_single| = {max_diff:.2e}",
            r.parties,
            mp.report.refreshes,
            mp.rounds,
            100.0 * acc_m,
            100.0 * acc_s,
            rep_s.refreshes,
            100.0 * r.plain_acc.0,
            100.0 * r.plain_acc.1,
        );
        println!(
            "wall: {multi_s:.2} s (collective keys {:.2} s, train {:.2} s) vs single key {single_s:.2} s; MB sent per party {:?}, received {:?}; decryptions: {:?} collective (party 0 receives the final model), 0 by a single party; peak MB per party {:?} (single-key process {})",
            mp.keygen_seconds,
            mp.report.train_seconds,
            mp.sent.iter().map(mb).collect::<Vec<_>>(),
            mp.received.iter().map(mb).collect::<Vec<_>>(),
            mp.decryptions,
            mp.peaks.iter().map(mb).collect::<Vec<_>>(),
            mb(&single_peak),
        );
    }
    Ok(())
}
