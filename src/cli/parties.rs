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
use hetensor::lower::LayerTiming;
use hetensor::math::sampler::Sampler;
use hetensor::mhe::{ckks_smudging, Crs, Party, Smudging};
use hetensor::nn::{PolyActivation, TrainConfig};
use hetensor::rlwe::keys::ckks_galois_element;
use hetensor::rlwe::SecretKey;
use hetensor::train::logistic::{self, sigmoid_bound};
use hetensor::train::multiparty::{
    combine_groups, encrypt_groups, fed_plan, peak_memory, published_values, train_fedsgd,
    unpack_ciphertexts, weights_refresh_params, CollectiveRefresh, CreditJob, CreditParty, FedPlan,
    ShareHolder, ShareHolderReport,
};
use hetensor::train::transfer::{self as tr, transfer_parties_params};
use hetensor::train::{
    precise_training_params, training_params, BlockLayout, KeyHolder, PublicEval, Refresh,
};
use hetensor::workers::parties::{CombinerHub, NetConfig, PartyLink};
use hetensor::workers::session::{serve_party, Coordinator};
use hetensor::workers::WorkerPool;
use hetensor::{serialize, Error, Result};

use super::options::{OutputSmudging, PartyWorkload};
use super::transfer::{Prepared, TransferOptions};

/// Bits of smudging on the final model's decryption shares with `--output-smudging weak`.
/// CKKS at Δ = 2^26 cannot hide the noise at 40 bits and keep any precision (see
/// `hetensor::mhe`); 2^14 per share keeps the averaged weights within ~1e-2 (the training
/// noise alone moves them ~5e-3 from the single-key run's).
pub const FINAL_SMUDGING_BITS: u32 = 14;

/// Bound (log2) on the coefficients of the trained weights' noise, for sizing 40-bit
/// statistical smudging (CKKS carries no noise bound of its own). The refreshes carry the
/// weights' noise from step to step; measured on the final weights of the default 3-party run
/// (decrypted without smudging, from the imaginary parts of the slots, which only noise
/// fills): σ ≈ 2^12.2 per coefficient, largest ≈ 2^14.5 at N = 2^14 and scale 2^26. At 2^84
/// the imaginary parts are dominated by the f64 rounding of the encodings (public
/// plaintexts, ~2^-53 of each), not by noise that depends on a key. 2^18 leaves 3.5 bits.
pub const WEIGHTS_NOISE_LOG2: f64 = 18.0;

/// The CKKS chain of credit-federated training: the precise one (scale 2^84) that leaves
/// room for 40-bit statistical smudging of the result, or the fast 2^26 one. The coordinator
/// passes the levels a step needs (the parties, 0: it checked them).
pub fn credit_params(
    log_n: u32,
    output: OutputSmudging,
    need_levels: usize,
) -> Result<hetensor::ckks::CkksParams> {
    match output {
        OutputSmudging::Weak => training_params(log_n),
        OutputSmudging::Statistical => {
            let scale = hetensor::train::PRECISE_SCALE_BITS;
            let short = |why: String| {
                Error::InvalidParameters(format!(
                    "--output-smudging statistical trains at scale 2^{scale} and needs N ≥ 2^15 \
                     (--log-n 15 or 16), or --output-smudging weak: at --log-n {log_n}, {why}"
                ))
            };
            let p = precise_training_params(log_n).map_err(|e| short(e.to_string()))?;
            if p.levels() < need_levels {
                return Err(short(format!(
                    "the chain has {} levels and a step needs {need_levels}",
                    p.levels()
                )));
            }
            Ok(p)
        }
    }
}

/// Largest weight magnitude the refresh masks are sized for (`2^8`).
const WEIGHT_LOG2: f64 = 8.0;

/// Options of the hidden `hetensor party`.
#[derive(clap::Args)]
pub struct PartyArgs {
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
    /// The session's workload: credit-federated (a data owner with its slice) or
    /// mnist-transfer (a key-share holder only, at the transfer parameters).
    #[arg(long, value_enum, default_value_t = PartyWorkload::CreditFederated)]
    pub workload: PartyWorkload,
    /// log2 of the ring degree of the training parameters (credit-federated only).
    #[arg(long, value_parser = clap::value_parser!(u32).range(13..=16))]
    pub log_n: Option<u32>,
    /// The chain of the training parameters (credit-federated only): the coordinator's
    /// --output-smudging.
    #[arg(long, value_enum, default_value_t = OutputSmudging::Statistical)]
    pub output_smudging: OutputSmudging,
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
pub fn serve(o: PartyArgs) -> Result<()> {
    if o.index >= o.parties {
        return Err(Error::InvalidInput(format!(
            "--index {} of --parties {}",
            o.index, o.parties
        )));
    }
    let crs = parse_crs(&o.crs)?;
    let transfer = o.workload == PartyWorkload::MnistTransfer;
    let params = match (transfer, o.log_n) {
        (true, None) if o.data.is_none() => transfer_parties_params()?,
        (true, _) => {
            return Err(Error::InvalidInput(
                "a mnist-transfer party takes no --log-n or --data (it holds a key share only)"
                    .into(),
            ))
        }
        (false, Some(l)) => credit_params(l, o.output_smudging, 0)?,
        (false, None) => {
            return Err(Error::InvalidInput(
                "a credit-federated party needs --log-n".into(),
            ))
        }
    };
    let ckks = Arc::new(CkksContext::new(params)?);
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
    if transfer {
        return serve_party(&mut link, &mut party, &mut ShareHolder::default());
    }
    let data = super::data_path(o.data.as_deref(), data::DEFAULT_CREDIT, "--data")?;
    let mut app = CreditParty::new(ckks, data, o.index, o.parties);
    serve_party(&mut link, &mut party, &mut app)
}

/// The party processes of a session; any still running when this is dropped are killed.
struct Parties(Vec<Child>);

impl Parties {
    /// `k` parties of a session: credit-federated with `Some((log_n, chain))` (and its data
    /// file), mnist-transfer key-share holders with `None`.
    fn spawn(
        exe: &Path,
        addr: SocketAddr,
        crs: &Crs,
        k: usize,
        chain: Option<(u32, OutputSmudging)>,
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
                .env("RAYON_NUM_THREADS", (cores / k).max(1).to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            match chain {
                Some((l, output)) => cmd.args([
                    "--log-n",
                    &l.to_string(),
                    "--output-smudging",
                    &output.to_string(),
                ]),
                None => cmd.args(["--workload", "mnist-transfer"]),
            };
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
    /// The chain `ctx` was built on, and how the final decryption is smudged.
    pub output: OutputSmudging,
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
    /// The final decryption's smudging per share.
    smudging: Smudging,
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
    let children = Parties::spawn(
        &WorkerPool::default_exe()?,
        addr,
        &crs,
        k,
        Some((r.log_n, r.output)),
        r.data,
    )?;
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
    let smudging = match r.output {
        OutputSmudging::Statistical => ckks_smudging(
            ctx.rlwe(),
            &w,
            Smudging::DEFAULT_LAMBDA,
            k,
            WEIGHTS_NOISE_LOG2,
            8.0,
        )?,
        OutputSmudging::Weak => Smudging::bits(FINAL_SMUDGING_BITS)?,
    };
    let published = coord.decrypt_to(&w, 0, &smudging)?;
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
        smudging,
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
    let lambda = mp.smudging.lambda_for(r.ctx.rlwe().n(), WEIGHTS_NOISE_LOG2);
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
            "output_smudging": r.output.to_string(),
            "scale_bits": r.ctx.params().scale_bits(), "levels": r.ctx.max_level(),
            "final_smudging_bits": mp.smudging.bound_bits(),
            "final_smudging_lambda": lambda,
            "weights_noise_log2_assumed": WEIGHTS_NOISE_LOG2,
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
        println!(
            "CKKS N = 2^{}, scale 2^{}, {} levels; final decryption smudged with 2^{} per share: λ = {lambda:.0} bits of statistical security for weights' noise up to 2^{WEIGHTS_NOISE_LOG2}{}",
            r.log_n,
            r.ctx.params().scale_bits(),
            r.ctx.max_level(),
            mp.smudging.bound_bits(),
            if r.output == OutputSmudging::Weak {
                " (--output-smudging weak; the default, statistical, gives 40)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// One encrypted head training of `run_transfer`: accuracy, the report, and the seconds of
/// upload + extraction.
struct HeadResult {
    acc: f64,
    report: tr::HeadReport,
    extract_s: f64,
    train_s: f64,
}

/// The data owner's upload and the server's encrypted features under `ev`'s public key, then
/// the head's steps with `refresher`, leaving the weights at `base`.
fn transfer_steps(
    p: &Prepared,
    ev: &PublicEval,
    refresher: &dyn Refresh,
    base: usize,
) -> Result<(Vec<hetensor::rlwe::Ciphertext>, tr::HeadReport, f64, f64)> {
    let t = Instant::now();
    let upload = tr::encrypt_upload(ev, &p.private.inputs, &p.private.labels, 5)?;
    let set = tr::extract_set(&p.fx, ev, upload, &mut LayerTiming::default())?;
    let extract_s = t.elapsed().as_secs_f64();
    let ctx = &ev.ctx;
    let encrypt =
        |v: &[f64], l: usize| ctx.encrypt(&ctx.encode(v, ctx.default_scale(), l)?, &ev.public);
    let run = tr::HeadRun {
        ev,
        refresher,
        base,
        encrypt: &encrypt,
        monitor: None,
    };
    let t = Instant::now();
    let init = tr::head(p.fx.features(), 5)?;
    let (w, report) = tr::train_head_steps(&init, &set, &p.cfg, &run)?;
    Ok((w, report, extract_s, t.elapsed().as_secs_f64()))
}

/// Accuracy of the head whose weights (in `train_head_steps` order) are the slot means of
/// `decrypted` (each weight is in every slot; the mean is the constant coefficient).
fn head_result(p: &Prepared, decrypted: &[Vec<f64>]) -> Result<f64> {
    let vals: Vec<f64> = decrypted
        .iter()
        .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
        .collect();
    let mut head = tr::head(p.fx.features(), 5)?;
    tr::set_head_weights(&mut head, &vals)?;
    tr::head_accuracy(&head, &p.x_test, &p.test.labels)
}

/// `hetensor train mnist-transfer --parties 2`: the head trained with one key holder and then
/// with no key holder (two `hetensor party` key-share holders, collective keys and refreshes,
/// the trained head re-encrypted to the data owner), the same steps at the same parameters
/// ([`tr::transfer_parties_params`]); this process is the data owner (it encrypts its images
/// and receives the head) and the server (it computes), and holds no key share.
pub fn run_transfer(o: &TransferOptions, k: usize, p: &Prepared) -> Result<()> {
    let say = |m: String| {
        if !o.json {
            eprintln!("{m}");
        }
    };
    let ctx = Arc::new(CkksContext::new(tr::transfer_parties_params()?)?);
    let steps = CkksContext::power_of_two_steps(ctx.slots());
    let params = weights_refresh_params(&ctx, k, tr::HEAD_VALUE_LOG2);
    let base = hetensor::mhe::min_refresh_level(ctx.rlwe(), &params)?.ok_or_else(|| {
        Error::InvalidParameters("the transfer chain cannot hold the refresh masks".into())
    })?;
    say(format!(
        "CKKS N = 2^{}, {} levels, log2 QP = {:.0}; {}-bit refresh masks: the weights are refreshed from level {base}",
        ctx.rlwe().n().trailing_zeros(),
        ctx.max_level(),
        ctx.params().rlwe().log_qp(),
        params.mask_bits(ctx.rlwe().n())?
    ));

    // The single-key reference: same parameters, same steps, decrypt + re-encrypt refreshes.
    let t = Instant::now();
    let single = {
        let holder = KeyHolder::new(ctx.clone())?;
        let ev = holder.public_eval_steps(&steps)?;
        let (w, report, extract_s, train_s) = transfer_steps(p, &ev, &holder, base)?;
        let dec = w
            .iter()
            .map(|c| holder.decrypt(c))
            .collect::<Result<Vec<_>>>()?;
        HeadResult {
            acc: head_result(p, &dec)?,
            report,
            extract_s,
            train_s,
        }
    };
    let single_s = t.elapsed().as_secs_f64();
    let single_peak = peak_memory();
    say(format!(
        "single key, same steps: {:.2}% in {single_s:.1} s",
        100.0 * single.acc
    ));

    // No key holder.
    let t = Instant::now();
    let crs = Crs::new(Sampler::from_os().seed());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let children = Parties::spawn(&WorkerPool::default_exe()?, addr, &crs, k, None, None)?;
    let hub = CombinerHub::accept(&listener, ctx.rlwe().clone(), &crs, k, NetConfig::default())?;
    let mut coord = Coordinator::new(hub, ctx.rlwe().clone(), crs);
    let n = ctx.rlwe().n();
    let galois: Vec<usize> = steps.iter().map(|&s| ckks_galois_element(n, s)).collect();
    let keys = coord.keygen(&galois)?;
    let keygen_s = t.elapsed().as_secs_f64();
    let ev = PublicEval {
        ctx: ctx.clone(),
        relin: keys.relin,
        galois: keys.galois,
        public: keys.public,
    };
    let (w, report, extract_s, train_s) = {
        let refresh = CollectiveRefresh::new(&mut coord, &ctx, params, 3)?;
        transfer_steps(p, &ev, &refresh, base)?
    };
    // The head goes to the data owner alone: re-encrypted under its own key (PCKS), never
    // decrypted by a key-share holder. 40-bit smudging where the scale leaves room.
    let owner = KeyHolder::new(ctx.clone())?;
    let low: Vec<_> = w
        .iter()
        .map(|c| ctx.mod_switch_to(c, 0))
        .collect::<Result<_>>()?;
    let (smudging, smudging_note) = match ckks_smudging(
        ctx.rlwe(),
        &low[0],
        Smudging::DEFAULT_LAMBDA,
        k,
        RESCALE_NOISE_LOG2,
        8.0,
    ) {
        Ok(s) => (s, format!("{}-bit statistical", Smudging::DEFAULT_LAMBDA)),
        Err(e) => (Smudging::bits(FINAL_SMUDGING_BITS)?, e.to_string()),
    };
    let t_out = Instant::now();
    let moved = coord.reencrypt_to(&low, owner.public_key(), &smudging)?;
    let dec = moved
        .iter()
        .map(|c| owner.decrypt(c))
        .collect::<Result<Vec<_>>>()?;
    let output_s = t_out.elapsed().as_secs_f64();
    let multi = HeadResult {
        acc: head_result(p, &dec)?,
        report,
        extract_s,
        train_s,
    };
    let reports = coord
        .jobs(&vec![ShareHolder::REPORT.to_vec(); k])?
        .iter()
        .map(|b| {
            serde_json::from_slice::<ShareHolderReport>(b)
                .map_err(|e| Error::Decode(format!("party report: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let sent: Vec<u64> = (0..k).map(|i| coord.hub().bytes_from(i)).collect();
    let received: Vec<u64> = (0..k).map(|i| coord.hub().bytes_to(i)).collect();
    let rounds = coord.rounds();
    coord.finish()?;
    children.wait()?;
    let multi_s = t.elapsed().as_secs_f64();
    let seen: Vec<usize> = reports.iter().map(|r| r.plaintexts_seen).collect();
    let peaks: Vec<u64> = reports.iter().map(|r| r.peak_memory_bytes).collect();
    let lambda = smudging.lambda_for(n, RESCALE_NOISE_LOG2);
    if o.json {
        let mut v = serde_json::json!({
            "workload": "mnist-transfer", "parties": k, "log_n": n.trailing_zeros(),
            "levels": ctx.max_level(), "base_level": base,
            "public_train": p.public_len, "public_test_accuracy": p.public_acc,
            "pretrain_seconds": p.pretrain_s, "private_train": p.private.len(),
            "private_test": p.test.len(), "epochs": o.epochs, "batch": o.batch, "lr": o.lr,
            "momentum": o.momentum, "seed": o.seed, "steps": multi.report.steps.len(),
        });
        let more = serde_json::json!({
            "test_accuracy": multi.acc, "single_key_test_accuracy": single.acc,
            "plaintext_test_accuracy": p.plain_acc,
            "plaintexts_seen_per_party": seen, "single_party_decryptions": 0,
            "collective_refreshes": multi.report.refreshes,
            "ciphertexts_per_refresh": multi.report.ciphertexts_per_refresh,
            "single_key_refreshes": single.report.refreshes,
            "protocol_rounds": rounds,
            "bytes_sent_per_party": sent, "bytes_received_per_party": received,
            "wall_seconds": multi_s, "single_key_wall_seconds": single_s,
            "keygen_seconds": keygen_s, "extract_seconds": multi.extract_s,
            "train_seconds": multi.train_s, "output_seconds": output_s,
            "refresh_seconds": multi.report.epoch_refresh_seconds.iter().sum::<f64>(),
            "single_key_extract_seconds": single.extract_s,
            "single_key_train_seconds": single.train_s,
            "single_key_refresh_seconds": single.report.epoch_refresh_seconds.iter().sum::<f64>(),
            "output_smudging_bits": smudging.bound_bits(),
            "output_smudging_lambda": lambda, "output_smudging_note": smudging_note,
            "peak_memory_per_party_bytes": peaks, "single_key_peak_memory_bytes": single_peak,
        });
        if let (Some(a), serde_json::Value::Object(b)) = (v.as_object_mut(), more) {
            a.extend(b);
        }
        println!("{v}");
    } else {
        let mb = |b: &u64| format!("{:.1}", *b as f64 / 1e6);
        println!(
            "no key holder ({k} parties, {} steps, {} collective refreshes of {} ciphertexts, {rounds} protocol rounds): {:.2}% on the {} held-out test digits 5-9; single key, same steps: {:.2}%; plaintext head: {:.2}%",
            multi.report.steps.len(),
            multi.report.refreshes,
            multi.report.ciphertexts_per_refresh,
            100.0 * multi.acc,
            p.test.len(),
            100.0 * single.acc,
            100.0 * p.plain_acc
        );
        println!(
            "plaintexts seen per party {seen:?} (the head was re-encrypted to the data owner); wall {multi_s:.1} s (keys {keygen_s:.1} s, features {:.1} s, train {:.1} s, output {output_s:.1} s) vs single key {single_s:.1} s; MB sent per party {:?}, received {:?}; output smudging 2^{} per share (λ = {lambda:.0} for noise 2^{RESCALE_NOISE_LOG2}: {smudging_note})",
            multi.extract_s,
            multi.train_s,
            sent.iter().map(mb).collect::<Vec<_>>(),
            received.iter().map(mb).collect::<Vec<_>>(),
            smudging.bound_bits()
        );
    }
    Ok(())
}

/// log2 of a lower bound on a CKKS ciphertext's noise after a rescale (~2^8 at N = 2^14: the
/// rounding of `c_1` times the ideal key), used to size the output smudging.
const RESCALE_NOISE_LOG2: f64 = 8.0;
