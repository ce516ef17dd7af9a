//! `hetensor mnist`: batched encrypted LeNet-1 inference on the bundled MNIST test set.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, ArrayD, Axis};
use serde::Serialize;

use hetensor::bfv::BfvCrt;
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::lower::bfv::{self, Bfv, QuantizedPlan};
use hetensor::lower::{CkksBatched, LayerTiming, Plan};
use hetensor::nn::{mnist, weights, Sequential};
use hetensor::rlwe::Security;
use hetensor::tensor::{CipherTensor, EncryptionKey};
use hetensor::{Error, Result};

use super::options::{Backend, Layout, Precision, Scheme};

/// Options of `hetensor mnist`.
#[derive(clap::Args, Debug)]
pub struct MnistArgs {
    /// Only the first N test images, at most the file's count (default: all 10,000 for
    /// ckks batched, 8,192 = one batch for bfv, 20 for packed).
    #[arg(long, value_parser = super::args::at_least(1))]
    pub limit: Option<usize>,
    /// Images per batch, at most the slots: 4096 for ckks, 8192 for bfv (default: all
    /// slots). Batched layout only.
    #[arg(long, value_parser = super::args::at_least(1))]
    pub batch: Option<usize>,
    /// ckks, or bfv (LeNet-1 quantized to integers, exact, CRT over 3 plaintext primes).
    #[arg(long, value_enum, default_value_t = Scheme::Ckks)]
    pub scheme: Scheme,
    /// cpu, cuda, wgpu or auto.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// batched (4096 images per ciphertext) or packed (one image, low latency; ckks only).
    #[arg(long, value_enum, default_value_t = Layout::Batched)]
    pub layout: Layout,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// LeNet-1 weights in safetensors (default: the bundled data/lenet1.safetensors).
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = mnist::DEFAULT_DIR)]
    pub data_dir: std::path::PathBuf,
    /// CKKS chain (ckks, batched layout only): fast (one 25-bit prime per level, 30-bit base,
    /// N = 2^13) or high (one 29-bit prime per level, 2-prime base, N = 2^14: logits
    /// ~10 times more precise, 8192 images per batch, about 1.7 times the CPU time)
    /// [default: fast].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

impl MnistArgs {
    /// The CKKS chain of the batched layout: `--precision`, else fast.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or(Precision::Fast)
    }
}

/// What a run reports (also the `--json` object).
#[derive(Serialize, Debug)]
pub struct MnistReport {
    pub images: usize,
    pub batches: usize,
    pub batch_size: usize,
    pub scheme: String,
    pub backend: String,
    pub layout: String,
    pub ring_degree: usize,
    pub levels: usize,
    pub log_qp: f64,
    pub encrypted_accuracy: f64,
    pub plaintext_accuracy: f64,
    pub argmax_agreement: f64,
    pub max_abs_logit_error: f64,
    /// Smallest and largest plaintext logit: what the logit error compares with.
    pub plaintext_logit_range: (f64, f64),
    /// Images whose plaintext top-2 logit gap exceeds twice the max logit error (no error
    /// that small can flip them), and how many of those the encrypted argmax agrees on.
    pub decided_images: usize,
    pub decided_agreement: usize,
    /// Images whose encrypted argmax differs from the plaintext one, and the largest
    /// plaintext top-2 gap among them (`None`: all agree): each is a near-tie below it.
    pub disagreeing_images: usize,
    pub largest_disagreeing_gap: Option<f64>,
    pub precision: String,
    pub scale_bits: u32,
    pub primes_per_level: usize,
    pub seconds_total: f64,
    pub seconds_keygen: f64,
    pub seconds_encrypt: f64,
    pub seconds_infer: f64,
    pub seconds_decrypt: f64,
    pub images_per_second: f64,
    pub batch_latency_seconds: Vec<f64>,
    pub layer_seconds: Vec<(String, f64)>,
    pub peak_memory_mb: f64,
}

pub fn argmax_rows(a: &ArrayD<f64>) -> Vec<usize> {
    a.axis_iter(Axis(0))
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |m, (i, &v)| if v > m.1 { (i, v) } else { m },
                )
                .0
        })
        .collect()
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB; NaN where unknown.
pub fn peak_memory_mb() -> f64 {
    match hetensor::memory::peak_rss_bytes() {
        0 => f64::NAN,
        b => b as f64 / (1u64 << 20) as f64,
    }
}

/// Prints a report as one JSON object (`--json`) or as text.
pub fn emit<T: Serialize>(json: bool, report: &T, text: impl Fn(&T)) -> Result<()> {
    if json {
        let s = serde_json::to_string(report).map_err(|e| Error::InvalidInput(e.to_string()))?;
        println!("{s}");
    } else {
        text(report);
    }
    Ok(())
}

/// The LeNet-1 to run: `--weights` if given, else the bundled one.
pub fn load_model(opts: &MnistArgs) -> Result<Sequential> {
    match &opts.weights {
        Some(p) => weights::load_lenet1(p),
        None => weights::pretrained_lenet1(),
    }
}

/// The largest output the encrypted model must hold: twice the largest plaintext logit on the
/// first 2,000 training digits (the last layer's output scale is chosen from it).
pub fn output_bound(model: &Sequential, data_dir: &std::path::Path) -> Result<f64> {
    let train = mnist::load_train(data_dir)?;
    let calib = train
        .inputs
        .slice(s![0..2000.min(train.labels.len()), .., .., ..])
        .to_owned()
        .into_dyn();
    Ok(2.0
        * model
            .forward_par(&calib, 256)?
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs())))
}

/// How many test images to run: `--limit` (at least 1, at most the file's count), else
/// `default` (capped at the file's count). A file with no images is an error naming it.
pub fn images_to_run(opts: &MnistArgs, available: usize, default: usize) -> Result<usize> {
    if available == 0 {
        return Err(Error::Data(format!(
            "{}: the MNIST test files (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) hold no images",
            opts.data_dir.display()
        )));
    }
    match opts.limit {
        Some(0) => Err(Error::InvalidInput("--limit must be at least 1".into())),
        Some(n) if n > available => Err(Error::InvalidInput(format!(
            "--limit {n} is more than the {available} test images in {}",
            opts.data_dir.display()
        ))),
        Some(n) => Ok(n),
        None => Ok(default.min(available)),
    }
}

/// Images per batch: `--batch` (1 to `slots`), else `slots`.
pub fn batch_size(opts: &MnistArgs, slots: usize) -> Result<usize> {
    match opts.batch {
        None => Ok(slots),
        Some(b) if (1..=slots).contains(&b) => Ok(b),
        Some(b) => Err(Error::InvalidInput(format!(
            "--batch {b} is out of range 1..={slots}: a {} ciphertext holds {slots} images",
            opts.scheme
        ))),
    }
}

/// Scale of `--precision high`: the largest one prime per level holds (no composite levels).
const HIGH_SCALE_BITS: u32 = 29;
/// Base modulus of `--precision high` (two primes): 20 bits over the scale, so the output map
/// keeps the full scale for logits up to ~2^18 instead of lowering it into a 30-bit base.
const HIGH_BASE_BITS: u32 = 49;

/// Runs the job and prints the report.
pub fn run(opts: MnistArgs) -> Result<()> {
    // --precision picks the chain of the ckks batched layout; the others have one chain.
    if opts.precision.is_some() && (opts.scheme, opts.layout) != (Scheme::Ckks, Layout::Batched) {
        return Err(Error::InvalidInput(format!(
            "--precision does not apply to --scheme {} --layout {} (it is used by --scheme ckks --layout batched)",
            opts.scheme, opts.layout
        )));
    }
    if opts.scheme == Scheme::Bfv {
        return run_bfv(opts);
    }
    let backend = opts.backend.create()?;
    if opts.layout == Layout::Packed {
        return super::packed::run(&opts, backend);
    }
    let t_all = Instant::now();
    let model = load_model(&opts)?;
    let test = mnist::load_test(&opts.data_dir)?;
    let total = images_to_run(&opts, test.labels.len(), test.labels.len())?;
    let plan = Plan::from_sequential(&model, &[1, 28, 28])?;
    let params = match opts.precision() {
        Precision::Fast => CkksParams::preset(13, 25)?,
        // The fewest limbs at N = 2^14 (8192 slots, 2 batches for 10,000 images): one 29-bit
        // prime per level and a 2-prime base that holds the logits at the full scale. Measured
        // on 8,192 images: max logit error 3.5e-4, 12.2 CPU-s per batch, against 1.9e-7 and
        // 19.7 CPU-s for 2^40 in composite levels (12 limbs), and 3.3e-3 (no better than
        // fast) with a 30-bit base prime (BENCHMARKS.md §2).
        Precision::High => CkksParams::builder()
            .depth(plan.depth())
            .scale_bits(HIGH_SCALE_BITS)
            .base_bits(HIGH_BASE_BITS)
            .build()?,
    };
    let (scale_bits, primes_per_level) = (params.scale_bits(), params.composition());
    let log_qp = params.rlwe().log_qp();
    let t_key = Instant::now();
    let ctx = CkksContext::with_backend(params, backend.clone())?;
    let batch_size = batch_size(&opts, ctx.slots())?;
    plan.check_fits(&ctx, batch_size)?;
    let keys = ctx.keygen()?;
    let seconds_keygen = t_key.elapsed().as_secs_f64();

    // Output bound: twice the largest plaintext logit on (a sample of) the training data.
    let bound = output_bound(&model, &opts.data_dir)?;

    let batches = total.div_ceil(batch_size);
    let pb = if opts.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut enc_s, mut inf_s, mut dec_s) = (0.0, 0.0, 0.0);
    let (mut correct_enc, mut correct_plain, mut agree) = (0usize, 0usize, 0usize);
    let mut max_err = 0.0f64;
    let mut logit_range = (f64::INFINITY, f64::NEG_INFINITY);
    // (plaintext top-2 gap, whether the encrypted argmax agrees) per image.
    let mut gaps: Vec<(f64, bool)> = Vec::with_capacity(total);
    let mut latencies = Vec::new();
    let mut layer_seconds: Vec<(String, f64)> = Vec::new();
    for b in 0..batches {
        let (lo, hi) = (b * batch_size, ((b + 1) * batch_size).min(total));
        let x = test
            .inputs
            .slice(s![lo..hi, .., .., ..])
            .to_owned()
            .into_dyn();
        let t_batch = Instant::now();
        pb.set_message(format!("batch {}/{batches}: encrypting", b + 1));
        let t = Instant::now();
        let ct = CipherTensor::encrypt_batched(&ctx, EncryptionKey::Secret(&keys.secret), &x)?;
        enc_s += t.elapsed().as_secs_f64();
        pb.set_message(format!("batch {}/{batches}: inference", b + 1));
        let t = Instant::now();
        let mut timing = LayerTiming::default();
        let out = CkksBatched::new(&plan, &ctx, &keys.relin)?
            .with_output_bound(bound)
            .forward_owned(ct, &hetensor::progress::Progress::none(), Some(&mut timing))?;
        inf_s += t.elapsed().as_secs_f64();
        for (name, secs) in timing.layers {
            match layer_seconds.iter_mut().find(|(n, _)| *n == name) {
                Some(e) => e.1 += secs,
                None => layer_seconds.push((name, secs)),
            }
        }
        let t = Instant::now();
        let logits = out.decrypt(&ctx, &keys.secret)?;
        dec_s += t.elapsed().as_secs_f64();
        latencies.push(t_batch.elapsed().as_secs_f64());
        let plain = model.forward_par(&x, 256)?;
        let (pe, pp) = (argmax_rows(&logits), argmax_rows(&plain));
        for i in 0..(hi - lo) {
            let label = test.labels[lo + i];
            correct_enc += (pe[i] == label) as usize;
            correct_plain += (pp[i] == label) as usize;
            agree += (pe[i] == pp[i]) as usize;
            gaps.push((top2_gap(plain.index_axis(Axis(0), i)), pe[i] == pp[i]));
        }
        for &v in plain.iter() {
            logit_range = (logit_range.0.min(v), logit_range.1.max(v));
        }
        max_err = max_err.max(
            (&logits - &plain)
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs())),
        );
        pb.inc((hi - lo) as u64);
    }
    pb.finish_and_clear();
    let total_s = t_all.elapsed().as_secs_f64();
    let report = MnistReport {
        images: total,
        batches,
        batch_size,
        scheme: "ckks".into(),
        backend: backend.name().into(),
        layout: "batched".into(),
        ring_degree: ctx.rlwe().n(),
        levels: ctx.max_level(),
        log_qp,
        encrypted_accuracy: correct_enc as f64 / total as f64,
        plaintext_accuracy: correct_plain as f64 / total as f64,
        argmax_agreement: agree as f64 / total as f64,
        max_abs_logit_error: max_err,
        plaintext_logit_range: logit_range,
        decided_images: gaps.iter().filter(|g| g.0 > 2.0 * max_err).count(),
        decided_agreement: gaps.iter().filter(|g| g.0 > 2.0 * max_err && g.1).count(),
        disagreeing_images: gaps.iter().filter(|g| !g.1).count(),
        largest_disagreeing_gap: gaps.iter().filter(|g| !g.1).map(|g| g.0).reduce(f64::max),
        precision: opts.precision().to_string(),
        scale_bits,
        primes_per_level,
        seconds_total: total_s,
        seconds_keygen,
        seconds_encrypt: enc_s,
        seconds_infer: inf_s,
        seconds_decrypt: dec_s,
        images_per_second: total as f64 / (enc_s + inf_s + dec_s),
        batch_latency_seconds: latencies,
        layer_seconds,
        peak_memory_mb: peak_memory_mb(),
    };
    emit(opts.json, &report, print_report)
}

/// `name 1.2, name 0.3, …`: seconds per layer or node.
pub fn seconds_list(items: &[(String, f64)]) -> String {
    items
        .iter()
        .map(|(n, s)| format!("{n} {s:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gap between the largest and second-largest logit of one image.
pub fn top2_gap(row: ndarray::ArrayViewD<f64>) -> f64 {
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in row.iter() {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    a - b
}

fn print_report(r: &MnistReport) {
    println!(
        "Encrypted MNIST (LeNet-1, CKKS N = {}, {} levels of 2^{} in {} prime(s), log2 QP = {:.0}, 128-bit, {} backend, {} layout)",
        r.ring_degree, r.levels, r.scale_bits, r.primes_per_level, r.log_qp, r.backend, r.layout
    );
    println!(
        "  images              {} in {} batch(es) of up to {}",
        r.images, r.batches, r.batch_size
    );
    println!("  encrypted accuracy  {:.2}%", 100.0 * r.encrypted_accuracy);
    println!("  plaintext accuracy  {:.2}%", 100.0 * r.plaintext_accuracy);
    println!("  argmax agreement    {:.2}%", 100.0 * r.argmax_agreement);
    println!(
        "  max |logit error|   {:.2e} (2^{:.1}); plaintext logits span {:.1} .. {:.1}",
        r.max_abs_logit_error,
        r.max_abs_logit_error.log2(),
        r.plaintext_logit_range.0,
        r.plaintext_logit_range.1
    );
    println!(
        "  decided images      {}/{} agree where the plaintext top-2 gap exceeds twice that error",
        r.decided_agreement, r.decided_images
    );
    if let Some(g) = r.largest_disagreeing_gap {
        println!(
            "  disagreements       {} image(s), all with plaintext top-2 gaps ≤ {g:.1e}",
            r.disagreeing_images
        );
    }
    println!(
        "  time                {:.1} s total: keygen {:.1}, encrypt {:.1}, infer {:.1}, decrypt {:.1}",
        r.seconds_total, r.seconds_keygen, r.seconds_encrypt, r.seconds_infer, r.seconds_decrypt
    );
    println!("  throughput          {:.0} images/s", r.images_per_second);
    let lat: Vec<String> = r
        .batch_latency_seconds
        .iter()
        .map(|s| format!("{s:.1}"))
        .collect();
    println!("  batch latency (s)   {}", lat.join(", "));
    println!("  per layer (s)       {}", seconds_list(&r.layer_seconds));
    println!("  peak memory         {:.0} MB", r.peak_memory_mb);
}

/// BFV parameters of the MNIST path: N = 2^13 (8192 slots), 30-bit ciphertext primes, hybrid
/// key switching (the 128-bit preset shape for 2^13).
pub const BFV_LOG_N: u32 = 13;
pub const BFV_Q_COUNT: usize = 6;
pub const BFV_DNUM: usize = 6;

/// What a `--scheme bfv` run reports (also the `--json` object).
#[derive(Serialize, Debug)]
pub struct BfvMnistReport {
    pub images: usize,
    pub batches: usize,
    pub batch_size: usize,
    pub default_limit_used: bool,
    pub scheme: String,
    pub backend: String,
    pub layout: String,
    pub ring_degree: usize,
    pub log_qp: f64,
    pub input_bits: u32,
    pub weight_bits: u32,
    pub plain_moduli: Vec<u64>,
    pub plain_modulus_bits: f64,
    pub bound_bits: f64,
    pub layer_bound_bits: Vec<(String, f64)>,
    pub encrypted_accuracy: f64,
    pub quantized_accuracy: f64,
    pub float_accuracy: f64,
    pub quantized_accuracy_full_test: f64,
    pub float_accuracy_full_test: f64,
    pub full_test_images: usize,
    pub exact_agreement: usize,
    pub min_noise_budget_bits: f64,
    pub seconds_total: f64,
    pub seconds_keygen: f64,
    pub seconds_encrypt: f64,
    pub seconds_infer: f64,
    pub seconds_decrypt: f64,
    pub images_per_second: f64,
    pub batch_latency_seconds: Vec<f64>,
    pub layer_seconds: Vec<(String, f64)>,
    pub peak_memory_mb: f64,
}

/// `--scheme bfv`: the model quantized to integers, run exactly in BFV over several plaintext
/// primes combined by CRT (enough bits that no worst-case value wraps).
fn run_bfv(opts: MnistArgs) -> Result<()> {
    let backend = opts.backend.create()?;
    if opts.layout != Layout::Batched {
        return Err(Error::InvalidInput(format!(
            "--layout {}: the BFV path runs in the batched layout only (packed is CKKS)",
            opts.layout
        )));
    }
    let t_all = Instant::now();
    let model = load_model(&opts)?;
    let qm = QuantizedPlan::new(
        &Plan::from_sequential(&model, &[1, 28, 28])?,
        bfv::DEFAULT_INPUT_BITS,
        bfv::DEFAULT_WEIGHT_BITS,
    )?;
    let t_bits = qm.plain_modulus_bits()?;
    let test = mnist::load_test(&opts.data_dir)?;
    // Checked before the minutes of plaintext evaluation and key generation. One batch costs
    // the same whatever its size, so the default is one full batch (BFV batching: N slots).
    let default_limit_used = opts.limit.is_none();
    let total = images_to_run(&opts, test.labels.len(), 1 << BFV_LOG_N)?;
    let batch_size = batch_size(&opts, 1 << BFV_LOG_N)?;

    // Plaintext accuracies of the float and the quantized model on the whole test set.
    let n_test = test.labels.len();
    let mut full_q = 0usize;
    let mut full_f = 0usize;
    for lo in (0..n_test).step_by(1000) {
        let hi = (lo + 1000).min(n_test);
        let x = test
            .inputs
            .slice(s![lo..hi, .., .., ..])
            .to_owned()
            .into_dyn();
        let q = bfv::argmax_rows_i128(
            &qm.forward_int(&qm.quantize_inputs(&x)?, hi - lo)?,
            qm.output_features(),
        );
        let f = argmax_rows(&model.forward_par(&x, 256)?);
        for i in 0..(hi - lo) {
            full_q += (q[i] == test.labels[lo + i]) as usize;
            full_f += (f[i] == test.labels[lo + i]) as usize;
        }
    }

    let t_key = Instant::now();
    let crt = BfvCrt::with_backend(
        BFV_LOG_N,
        &t_bits,
        BFV_Q_COUNT,
        BFV_DNUM,
        Security::Bits128,
        backend.clone(),
    )?;
    qm.check_modulus(crt.plain_modulus_product())?;
    let keys = crt.keygen()?;
    let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
    let runner = Bfv::new(&qm, &crt, &pk, &rk)?;
    let seconds_keygen = t_key.elapsed().as_secs_f64();
    let slots = crt.slots();
    let log_qp = crt.rlwe().params().log_qp();

    debug_assert_eq!(slots, 1 << BFV_LOG_N);
    let batches = total.div_ceil(batch_size);
    let pb = if opts.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut enc_s, mut inf_s, mut dec_s) = (0.0, 0.0, 0.0);
    let (mut correct_enc, mut correct_q, mut correct_f, mut exact) = (0usize, 0, 0, 0);
    let mut min_budget = f64::INFINITY;
    let mut latencies = Vec::new();
    let mut layer_seconds: Vec<(String, f64)> = Vec::new();
    let outs = qm.output_features();
    for b in 0..batches {
        let (lo, hi) = (b * batch_size, ((b + 1) * batch_size).min(total));
        let n = hi - lo;
        let x = test
            .inputs
            .slice(s![lo..hi, .., .., ..])
            .to_owned()
            .into_dyn();
        let pixels = qm.quantize_inputs(&x)?;
        let t_batch = Instant::now();
        pb.set_message(format!("batch {}/{batches}: encrypting", b + 1));
        let t = Instant::now();
        let cts = qm.encrypt(&crt, &pk, &pixels, n)?;
        enc_s += t.elapsed().as_secs_f64();
        pb.set_message(format!("batch {}/{batches}: inference", b + 1));
        let t = Instant::now();
        let mut timing = LayerTiming::default();
        let none = hetensor::progress::Progress::none();
        let out = runner.forward_with(&cts, &none, Some(&mut timing))?;
        inf_s += t.elapsed().as_secs_f64();
        for (name, secs) in timing.layers {
            match layer_seconds.iter_mut().find(|(m, _)| *m == name) {
                Some(e) => e.1 += secs,
                None => layer_seconds.push((name, secs)),
            }
        }
        let t = Instant::now();
        let logits = qm.decrypt(&crt, &sk, &out)?;
        dec_s += t.elapsed().as_secs_f64();
        latencies.push(t_batch.elapsed().as_secs_f64());
        for c in out.ciphertexts() {
            min_budget = min_budget.min(crt.invariant_noise_budget(c, &sk)?);
        }
        let plain_int = qm.forward_int(&pixels, n)?;
        let pe = bfv::argmax_rows_i128(&logits, outs);
        let pq = bfv::argmax_rows_i128(&plain_int, outs);
        let pf = argmax_rows(&model.forward_par(&x, 256)?);
        for i in 0..n {
            let label = test.labels[lo + i];
            correct_enc += (pe[i] == label) as usize;
            correct_q += (pq[i] == label) as usize;
            correct_f += (pf[i] == label) as usize;
            exact +=
                (logits[i * outs..(i + 1) * outs] == plain_int[i * outs..(i + 1) * outs]) as usize;
        }
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    let report = BfvMnistReport {
        images: total,
        batches,
        batch_size,
        default_limit_used,
        scheme: "bfv".into(),
        backend: backend.name().into(),
        layout: "batched".into(),
        ring_degree: slots,
        log_qp,
        input_bits: qm.input_bits(),
        weight_bits: qm.weight_bits(),
        plain_moduli: crt.plain_moduli(),
        plain_modulus_bits: (crt.plain_modulus_product() as f64).log2(),
        bound_bits: qm.bound_bits(),
        layer_bound_bits: qm
            .node_bounds()
            .iter()
            .map(|(n, b)| (n.clone(), b.log2()))
            .collect(),
        encrypted_accuracy: correct_enc as f64 / total as f64,
        quantized_accuracy: correct_q as f64 / total as f64,
        float_accuracy: correct_f as f64 / total as f64,
        quantized_accuracy_full_test: full_q as f64 / n_test.max(1) as f64,
        float_accuracy_full_test: full_f as f64 / n_test.max(1) as f64,
        full_test_images: n_test,
        exact_agreement: exact,
        min_noise_budget_bits: min_budget,
        seconds_total: t_all.elapsed().as_secs_f64(),
        seconds_keygen,
        seconds_encrypt: enc_s,
        seconds_infer: inf_s,
        seconds_decrypt: dec_s,
        images_per_second: total as f64 / (enc_s + inf_s + dec_s),
        batch_latency_seconds: latencies,
        layer_seconds,
        peak_memory_mb: peak_memory_mb(),
    };
    emit(opts.json, &report, print_bfv_report)
}

fn print_bfv_report(r: &BfvMnistReport) {
    let moduli: Vec<String> = r.plain_moduli.iter().map(|t| t.to_string()).collect();
    println!(
        "Encrypted MNIST (LeNet-1 quantized: {}-bit inputs, {}-bit weights; BFV N = {}, log2 QP = {:.0}, 128-bit, {} backend, {} layout)",
        r.input_bits, r.weight_bits, r.ring_degree, r.log_qp, r.backend, r.layout
    );
    println!(
        "  CRT plaintext       {} primes [{}], {:.1} bits; worst-case |value| 2^{:.1}",
        r.plain_moduli.len(),
        moduli.join(", "),
        r.plain_modulus_bits,
        r.bound_bits
    );
    println!(
        "  images              {} in {} batch(es) of up to {}{}",
        r.images,
        r.batches,
        r.batch_size,
        if r.default_limit_used {
            " (default --limit for bfv: one full batch; pass --limit for more)"
        } else {
            ""
        }
    );
    println!("  encrypted accuracy  {:.2}%", 100.0 * r.encrypted_accuracy);
    println!(
        "  quantized accuracy  {:.2}% (full test set of {}: {:.2}%)",
        100.0 * r.quantized_accuracy,
        r.full_test_images,
        100.0 * r.quantized_accuracy_full_test
    );
    println!(
        "  float accuracy      {:.2}% (full test set: {:.2}%)",
        100.0 * r.float_accuracy,
        100.0 * r.float_accuracy_full_test
    );
    println!(
        "  exact agreement     {}/{} images with every decrypted logit equal to the integer model's",
        r.exact_agreement, r.images
    );
    println!(
        "  min noise budget    {:.1} bits left",
        r.min_noise_budget_bits
    );
    println!(
        "  time                {:.1} s total: keygen {:.1}, encrypt {:.1}, infer {:.1}, decrypt {:.1}",
        r.seconds_total, r.seconds_keygen, r.seconds_encrypt, r.seconds_infer, r.seconds_decrypt
    );
    println!("  throughput          {:.1} images/s", r.images_per_second);
    println!("  per layer (s)       {}", seconds_list(&r.layer_seconds));
    println!("  peak memory         {:.0} MB", r.peak_memory_mb);
}
