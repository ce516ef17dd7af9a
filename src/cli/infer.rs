//! `hetensor infer --model m.onnx`: encrypted inference of any model the lowering accepts.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{s, ArrayD, Axis, IxDyn};
use serde::Serialize;

use hetensor::bfv::BfvCrt;
use hetensor::ckks::CkksContext;
use hetensor::graph::Graph;
use hetensor::lower::bfv::{self, Bfv, QuantizedPlan};
use hetensor::lower::{
    choose_ckks_params, packed_rotation_steps, CkksBatched, CkksPacked, Counts, LayerTiming,
    ParamChoice, Plan,
};
use hetensor::nn::mnist;
use hetensor::progress::ProgressEvent;
use hetensor::rlwe::Security;
use hetensor::tensor::{CipherTensor, EncryptionKey};
use hetensor::{onnx, Error, Result};

use super::mnist::{
    argmax_rows, emit, peak_memory_mb, seconds_list, top2_gap, BFV_DNUM, BFV_LOG_N, BFV_Q_COUNT,
};
use super::options::{Backend, Layout, Scheme};

/// Calibration samples for the parameter choice.
const CALIBRATION: usize = 256;

/// Options of `hetensor infer`.
#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// The model, an ONNX file (see README: supported ops).
    #[arg(long)]
    pub model: PathBuf,
    /// `mnist` (the bundled test set; parameters calibrated on the bundled training digits)
    /// or a .npy file of samples [n, ...model input shape] (parameters calibrated on its first
    /// 256 samples; no labels, so no accuracy).
    #[arg(long, default_value = "mnist")]
    pub data: String,
    /// Only the first N samples, at most the data's count [default: all].
    #[arg(long, value_parser = super::args::at_least(1))]
    pub limit: Option<usize>,
    /// ckks, or bfv (the model quantized to integers, exact; batched layout, inputs in [0, 1]).
    #[arg(long, value_enum, default_value_t = Scheme::Ckks)]
    pub scheme: Scheme,
    /// batched (one sample per slot) or packed (one sample at a time, rotations).
    #[arg(long, value_enum, default_value_t = Layout::Batched)]
    pub layout: Layout,
    /// cpu, cuda, wgpu or auto.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Samples per batch, at most the slots [default: all slots].
    #[arg(long, value_parser = super::args::at_least(1))]
    pub batch: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The plan's shape in a report.
#[derive(Serialize, Debug)]
pub struct PlanReport {
    pub depth: usize,
    pub counts: Counts,
    pub keys: String,
    /// The scheme's parameters in words.
    pub parameters: String,
}

/// What the BFV back end adds to a report.
#[derive(Serialize, Debug)]
pub struct BfvReport {
    pub input_bits: u32,
    pub weight_bits: u32,
    pub plain_moduli: Vec<u64>,
    /// log2 of the worst-case |integer| of the quantized plan.
    pub bound_bits: f64,
    /// Samples whose every decrypted integer output equals the plaintext integer model's.
    pub exact_agreement: usize,
    pub min_noise_budget_bits: f64,
}

/// What a run reports (also the `--json` object).
#[derive(Serialize, Debug)]
pub struct InferReport {
    pub model: String,
    pub data: String,
    pub samples: usize,
    pub batches: usize,
    pub batch_size: usize,
    pub scheme: String,
    pub layout: String,
    pub backend: String,
    pub plan: PlanReport,
    /// CKKS: the parameter choice.
    pub params: Option<ParamChoice>,
    /// BFV: quantization, CRT primes, exactness.
    pub bfv: Option<BfvReport>,
    /// `None` without labels (a .npy file).
    pub encrypted_accuracy: Option<f64>,
    pub plaintext_accuracy: Option<f64>,
    pub argmax_agreement: f64,
    pub max_abs_output_error: f64,
    pub plaintext_output_range: (f64, f64),
    /// Samples whose plaintext top-2 gap exceeds twice the max output error, and how many of
    /// those the encrypted argmax agrees on.
    pub decided_samples: usize,
    pub decided_agreement: usize,
    pub seconds_total: f64,
    pub seconds_plan: f64,
    pub seconds_keygen: f64,
    pub seconds_encrypt: f64,
    pub seconds_infer: f64,
    pub seconds_decrypt: f64,
    pub samples_per_second: f64,
    /// Encryption, inference and decryption per sample (the packed layout's latency).
    pub seconds_per_sample: f64,
    pub layer_seconds: Vec<(String, f64)>,
    pub peak_memory_mb: f64,
}

/// Samples, labels (if the data has them) and the calibration set of `--data`.
struct Data {
    samples: ArrayD<f64>,
    labels: Option<Vec<usize>>,
    calibration: ArrayD<f64>,
}

fn load_data(data: &str, graph: &Graph) -> Result<Data> {
    let want = graph.shape(graph.inputs()[0]).to_vec();
    let check = |x: &ArrayD<f64>, what: &str| {
        if x.ndim() < 1 || x.shape()[1..] != want[..] {
            return Err(Error::Shape(format!(
                "{what} holds samples of shape {:?}, the model takes {want:?}",
                x.shape().get(1..).unwrap_or(&[])
            )));
        }
        if x.shape()[0] == 0 {
            return Err(Error::Data(format!("{what} holds no samples")));
        }
        // Named here, against the file: the first samples are also the calibration set,
        // whose own refusal would speak of "calibration".
        if let Some((i, v)) = hetensor::data::first_non_finite_sample(x) {
            return Err(Error::Data(format!(
                "{what}: sample {i} holds a non-finite value ({v})"
            )));
        }
        Ok(())
    };
    if data == "mnist" {
        let test = mnist::load_test(mnist::DEFAULT_DIR)?;
        let train = mnist::load_train(mnist::DEFAULT_DIR)?;
        let n = CALIBRATION.min(train.labels.len());
        let calib = train
            .inputs
            .slice(s![0..n, .., .., ..])
            .to_owned()
            .into_dyn();
        let x = test.inputs.into_dyn();
        check(&x, "the MNIST test set")?;
        return Ok(Data {
            samples: x,
            labels: Some(test.labels),
            calibration: calib,
        });
    }
    if !data.ends_with(".npy") {
        return Err(Error::InvalidInput(format!(
            "--data {data}: use mnist or a .npy file"
        )));
    }
    let x = hetensor::data::npy::load(data)?;
    check(&x, data)?;
    let n = CALIBRATION.min(x.shape()[0]);
    let calib = x.slice_axis(Axis(0), (0..n).into()).to_owned();
    Ok(Data {
        samples: x,
        labels: None,
        calibration: calib,
    })
}

/// Runs the job and prints the report.
pub fn run(args: InferArgs) -> Result<()> {
    let packed = args.layout == Layout::Packed;
    if args.scheme == Scheme::Bfv && packed {
        return Err(Error::InvalidInput(
            "--layout packed: the BFV back end runs the batched layout only (packed is CKKS)"
                .into(),
        ));
    }
    if let (true, Some(b)) = (packed, args.batch) {
        return Err(Error::InvalidInput(format!(
            "--batch {b}: the packed layout runs one sample at a time (--batch is for --layout batched)"
        )));
    }
    let t_all = Instant::now();
    let backend = args.backend.create()?;
    let graph = onnx::load(&args.model)?;
    let Data {
        samples: x_all,
        labels,
        calibration: calib,
    } = load_data(&args.data, &graph)?;
    let available = x_all.shape()[0];
    let total = match args.limit {
        Some(n) if n > available => {
            return Err(Error::InvalidInput(format!(
                "--limit {n} is more than the {available} samples of --data {}",
                args.data
            )))
        }
        Some(n) => n,
        None => available,
    };
    let t_plan = Instant::now();
    let plan = Plan::new(&graph)?;
    let bfv = args.scheme == Scheme::Bfv;
    let (ckks_params, quantized) = if bfv {
        let q = QuantizedPlan::new(&plan, bfv::DEFAULT_INPUT_BITS, bfv::DEFAULT_WEIGHT_BITS)?;
        (None, Some(q))
    } else {
        (Some(choose_ckks_params(&plan, &graph, &calib)?), None)
    };
    let seconds_plan = t_plan.elapsed().as_secs_f64();
    let t_key = Instant::now();
    // CKKS: context, keys (Galois keys for the packed layout) and the back end.
    let ckks = match ckks_params {
        Some((params, choice)) => {
            let ctx = CkksContext::with_backend(params, backend.clone())?;
            let keys = ctx.keygen()?;
            let steps = if packed {
                packed_rotation_steps(&plan, ctx.slots())?
            } else {
                Vec::new()
            };
            let gk = ctx.gen_galois_keys(&keys.secret, &steps, false)?;
            Some((ctx, keys, gk, steps, choice))
        }
        None => None,
    };
    // BFV: the CRT context its worst case needs, and keys.
    let crt = match &quantized {
        Some(q) => {
            let crt = BfvCrt::with_backend(
                BFV_LOG_N,
                &q.plain_modulus_bits()?,
                BFV_Q_COUNT,
                BFV_DNUM,
                Security::Bits128,
                backend.clone(),
            )?;
            let keys = crt.keygen()?;
            let (sk, pk, rk) = (keys.secret, keys.public, keys.relin);
            Some((crt, sk, pk, rk))
        }
        None => None,
    };
    let slots = match (&ckks, &crt) {
        (Some(c), _) => c.0.slots(),
        (_, Some(b)) => b.0.slots(),
        _ => 1,
    };
    let batch_size = match args.batch {
        None if packed => 1,
        None => slots,
        Some(b) if b <= slots => b,
        Some(b) => {
            return Err(Error::InvalidInput(format!(
                "--batch {b} is more than the {slots} slots of the chosen parameters"
            )))
        }
    };
    let batched = match &ckks {
        Some((ctx, keys, _, _, choice)) if !packed => {
            Some(CkksBatched::new(&plan, ctx, &keys.relin)?.with_output_bound(choice.output_bound))
        }
        _ => None,
    };
    let packed_runner = match &ckks {
        Some((ctx, keys, gk, _, choice)) if packed => Some(
            CkksPacked::new(&plan, ctx, &keys.relin, gk)?.with_output_bound(choice.output_bound),
        ),
        _ => None,
    };
    let bfv_runner = match (&quantized, &crt) {
        (Some(q), Some((crt, _, pk, rk))) => Some(Bfv::new(q, crt, pk, rk)?),
        _ => None,
    };
    let seconds_keygen = t_key.elapsed().as_secs_f64();
    let (params_text, keys_text) = match (&ckks, &quantized, &crt) {
        (Some((_, _, _, steps, choice)), _, _) => (
            choice.description.clone(),
            if packed {
                format!("secret key (seeded encryption), relinearization key, {} Galois keys (rotation steps {steps:?})", steps.len())
            } else {
                "secret key (seeded encryption), relinearization key; no Galois keys (the batched layout never rotates)".into()
            },
        ),
        (_, Some(q), Some((crt, ..))) => (
            format!(
                "BFV N = 2^{BFV_LOG_N}, log2 QP = {:.0} (128-bit); {}-bit inputs, {}-bit weights; CRT plaintext primes {:?} ({:.1} bits) for a worst case of 2^{:.1}",
                crt.rlwe().params().log_qp(),
                q.input_bits(),
                q.weight_bits(),
                crt.plain_moduli(),
                (crt.plain_modulus_product() as f64).log2(),
                q.bound_bits()
            ),
            "secret key, public key (encrypts the biases), relinearization key; no Galois keys".into(),
        ),
        _ => (String::new(), String::new()),
    };
    if !args.json {
        eprintln!(
            "Plan: depth {}, {} dense maps, {} products, {} free ops; {params_text}",
            plan.depth(),
            plan.counts().dense_maps,
            plan.counts().products,
            plan.counts().free_ops,
        );
    }

    let batches = total.div_ceil(batch_size);
    let progress = super::progress_bar(!args.json);
    progress.emit(ProgressEvent::Start {
        total: batches as u64,
        unit: "batches",
    });
    let (mut enc_s, mut inf_s, mut dec_s) = (0.0, 0.0, 0.0);
    let (mut correct_enc, mut correct_plain, mut agree) = (0usize, 0usize, 0usize);
    let mut max_err = 0.0f64;
    let mut range = (f64::INFINITY, f64::NEG_INFINITY);
    let mut gaps: Vec<(f64, bool)> = Vec::with_capacity(total);
    let mut timing = LayerTiming::default();
    let mut exact = 0usize;
    let mut min_budget = f64::INFINITY;
    let none = hetensor::progress::Progress::none();
    for b in 0..batches {
        let (lo, hi) = (b * batch_size, ((b + 1) * batch_size).min(total));
        let x = x_all.slice_axis(Axis(0), (lo..hi).into()).to_owned();
        let enc = match (&ckks, &quantized, &crt, &bfv_runner) {
            (Some((ctx, keys, ..)), ..) => {
                let t = Instant::now();
                let key = EncryptionKey::Secret(&keys.secret);
                let ct = if packed {
                    CipherTensor::encrypt_packed(ctx, key, &x)?
                } else {
                    CipherTensor::encrypt_batched(ctx, key, &x)?
                };
                enc_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let out = match (&packed_runner, &batched) {
                    (Some(r), _) => r.forward_with(&ct, &none, Some(&mut timing))?,
                    (_, Some(r)) => r.forward_owned(ct, &none, Some(&mut timing))?,
                    _ => return Err(Error::Model("no CKKS back end".into())),
                };
                inf_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let enc = flat(out.decrypt(ctx, &keys.secret)?)?;
                dec_s += t.elapsed().as_secs_f64();
                enc
            }
            (_, Some(q), Some((crt, sk, pk, _)), Some(runner)) => {
                if let Some(v) = x.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                    return Err(Error::InvalidInput(format!(
                        "--scheme bfv quantizes inputs in [0, 1]; --data {} holds {v}",
                        args.data
                    )));
                }
                let n = hi - lo;
                let pixels = q.quantize_inputs(&x)?;
                let t = Instant::now();
                let ct = q.encrypt(crt, pk, &pixels, n)?;
                enc_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let out = runner.forward_with(&ct, &none, Some(&mut timing))?;
                inf_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let ints = q.decrypt(crt, sk, &out)?;
                dec_s += t.elapsed().as_secs_f64();
                for c in out.ciphertexts() {
                    min_budget = min_budget.min(crt.invariant_noise_budget(c, sk)?);
                }
                let o = q.output_features();
                let reference = q.forward_int(&pixels, n)?;
                exact += (0..n)
                    .filter(|&i| ints[i * o..(i + 1) * o] == reference[i * o..(i + 1) * o])
                    .count();
                ArrayD::from_shape_vec(IxDyn(&[n, o]), q.dequantize(&ints))
                    .map_err(|e| Error::Shape(e.to_string()))?
            }
            _ => return Err(Error::Model("no back end".into())),
        };
        let plain = flat(graph.run_chunked(&[x], 512)?.remove(0))?;
        let (pe, pp) = (argmax_rows(&enc), argmax_rows(&plain));
        for i in 0..(hi - lo) {
            if let Some(l) = &labels {
                correct_enc += (pe[i] == l[lo + i]) as usize;
                correct_plain += (pp[i] == l[lo + i]) as usize;
            }
            agree += (pe[i] == pp[i]) as usize;
            gaps.push((top2_gap(plain.index_axis(Axis(0), i)), pe[i] == pp[i]));
        }
        for &v in plain.iter() {
            range = (range.0.min(v), range.1.max(v));
        }
        max_err = (&enc - &plain).iter().fold(max_err, |m, v| m.max(v.abs()));
        progress.emit(ProgressEvent::Advance);
    }
    progress.emit(ProgressEvent::Finish);
    let acc = |c: usize| labels.as_ref().map(|_| c as f64 / total as f64);
    let report = InferReport {
        model: args.model.display().to_string(),
        data: args.data.clone(),
        samples: total,
        batches,
        batch_size,
        scheme: if bfv { "bfv" } else { "ckks" }.into(),
        layout: if packed { "packed" } else { "batched" }.into(),
        backend: backend.name().into(),
        plan: PlanReport {
            depth: plan.depth(),
            counts: plan.counts().clone(),
            keys: keys_text,
            parameters: params_text,
        },
        params: ckks.map(|c| c.4),
        bfv: quantized.as_ref().map(|q| BfvReport {
            input_bits: q.input_bits(),
            weight_bits: q.weight_bits(),
            plain_moduli: crt.as_ref().map(|c| c.0.plain_moduli()).unwrap_or_default(),
            bound_bits: q.bound_bits(),
            exact_agreement: exact,
            min_noise_budget_bits: min_budget,
        }),
        encrypted_accuracy: acc(correct_enc),
        plaintext_accuracy: acc(correct_plain),
        argmax_agreement: agree as f64 / total as f64,
        max_abs_output_error: max_err,
        plaintext_output_range: range,
        decided_samples: gaps.iter().filter(|g| g.0 > 2.0 * max_err).count(),
        decided_agreement: gaps.iter().filter(|g| g.0 > 2.0 * max_err && g.1).count(),
        seconds_total: t_all.elapsed().as_secs_f64(),
        seconds_plan,
        seconds_keygen,
        seconds_encrypt: enc_s,
        seconds_infer: inf_s,
        seconds_decrypt: dec_s,
        samples_per_second: total as f64 / (enc_s + inf_s + dec_s),
        seconds_per_sample: (enc_s + inf_s + dec_s) / total as f64,
        layer_seconds: timing.layers,
        peak_memory_mb: peak_memory_mb(),
    };
    emit(args.json, &report, print_report)
}

/// `[n, ...]` → `[n, features]`.
fn flat(a: ArrayD<f64>) -> Result<ArrayD<f64>> {
    let n = a.shape()[0];
    let f = a.len() / n.max(1);
    a.into_shape_with_order(IxDyn(&[n, f]))
        .map_err(|e| Error::Shape(e.to_string()))
}

fn print_report(r: &InferReport) {
    println!(
        "Encrypted inference of {} ({}, {} layout, {} backend)",
        r.model,
        r.scheme.to_uppercase(),
        r.layout,
        r.backend
    );
    println!(
        "  plan                depth {}: {} dense maps, {} products, {} rescales, {} relinearizations, {} free ops",
        r.plan.depth,
        r.plan.counts.dense_maps,
        r.plan.counts.products,
        r.plan.counts.rescales,
        r.plan.counts.relinearizations,
        r.plan.counts.free_ops
    );
    match &r.params {
        Some(p) => println!(
            "  parameters          {} (calibrated on {} samples: output bound {:.3}, last-level values up to {:.3})",
            p.description, p.calibration_samples, p.output_bound, p.bottom_max
        ),
        None => println!("  parameters          {}", r.plan.parameters),
    }
    if let Some(b) = &r.bfv {
        println!(
            "  exact agreement     {}/{} samples with every decrypted integer equal to the integer model's; min noise budget {:.1} bits",
            b.exact_agreement, r.samples, b.min_noise_budget_bits
        );
    }
    println!("  keys                {}", r.plan.keys);
    println!(
        "  samples             {} in {} batch(es) of up to {}",
        r.samples, r.batches, r.batch_size
    );
    if let (Some(e), Some(p)) = (r.encrypted_accuracy, r.plaintext_accuracy) {
        println!("  encrypted accuracy  {:.2}%", 100.0 * e);
        println!("  plaintext accuracy  {:.2}%", 100.0 * p);
    }
    println!("  argmax agreement    {:.2}%", 100.0 * r.argmax_agreement);
    println!(
        "  max |output error|  {:.2e}; plaintext outputs span {:.3} .. {:.3}",
        r.max_abs_output_error, r.plaintext_output_range.0, r.plaintext_output_range.1
    );
    println!(
        "  decided samples     {}/{} agree where the plaintext top-2 gap exceeds twice that error",
        r.decided_agreement, r.decided_samples
    );
    println!(
        "  time                {:.1} s total: plan+params {:.1}, keygen {:.1}, encrypt {:.1}, infer {:.1}, decrypt {:.1}",
        r.seconds_total,
        r.seconds_plan,
        r.seconds_keygen,
        r.seconds_encrypt,
        r.seconds_infer,
        r.seconds_decrypt
    );
    println!(
        "  throughput          {:.1} samples/s ({:.3} s per sample)",
        r.samples_per_second, r.seconds_per_sample
    );
    println!("  per node (s)        {}", seconds_list(&r.layer_seconds));
    println!("  peak memory         {:.0} MB", r.peak_memory_mb);
}
