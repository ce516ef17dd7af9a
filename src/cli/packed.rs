//! `hetensor mnist --layout packed`: one image at a time (low latency) with rotations.

use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::s;
use serde::Serialize;

use hetensor::backend::Backend;
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::lower::{packed_rotation_steps, CkksPacked, Plan};
use hetensor::nn::mnist;
use hetensor::tensor::{CipherTensor, EncryptionKey};
use hetensor::{Error, Result};

use super::mnist::{emit, load_model, output_bound, peak_memory_mb, MnistArgs};

/// Report of a packed-layout run (also the `--json` object).
#[derive(Serialize, Debug)]
pub struct PackedReport {
    pub images: usize,
    pub layout: String,
    pub scheme: String,
    pub backend: String,
    pub ring_degree: usize,
    pub levels: usize,
    pub galois_keys: usize,
    pub encrypted_accuracy: f64,
    pub plaintext_accuracy: f64,
    pub argmax_agreement: f64,
    pub max_abs_logit_error: f64,
    pub seconds_keygen: f64,
    pub latency_median_seconds: f64,
    pub latency_min_seconds: f64,
    pub latency_max_seconds: f64,
    pub images_per_second: f64,
    pub peak_memory_mb: f64,
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |m, (i, &x)| if x > m.1 { (i, x) } else { m },
        )
        .0
}

/// Runs LeNet-1 on `--limit` images (default 20), one at a time, and reports per-image latency.
pub fn run(opts: &MnistArgs, backend: Arc<dyn Backend>) -> Result<()> {
    if let Some(b) = opts.batch {
        return Err(Error::InvalidInput(format!(
            "--batch {b}: the packed layout runs one image at a time (--batch is for --layout batched)"
        )));
    }
    let model = load_model(opts)?;
    let test = mnist::load_test(&opts.data_dir)?;
    let total = super::mnist::images_to_run(opts, test.labels.len(), 20)?;
    let t = Instant::now();
    let ctx = CkksContext::with_backend(CkksParams::preset(13, 25)?, backend.clone())?;
    let keys = ctx.keygen()?;
    let plan = Plan::from_sequential(&model, &[1, 28, 28])?;
    let steps = packed_rotation_steps(&plan, ctx.slots())?;
    let gk = ctx.gen_galois_keys(&keys.secret, &steps, false)?;
    let seconds_keygen = t.elapsed().as_secs_f64();
    let bound = output_bound(&model, &opts.data_dir)?;
    let runner = CkksPacked::new(&plan, &ctx, &keys.relin, &gk)?.with_output_bound(bound);
    let pb = if opts.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut correct_enc, mut correct_plain, mut agree) = (0usize, 0usize, 0usize);
    let mut max_err = 0.0f64;
    let mut lat = Vec::with_capacity(total);
    for i in 0..total {
        let x = test
            .inputs
            .slice(s![i..i + 1, .., .., ..])
            .to_owned()
            .into_dyn();
        let plain: Vec<f64> = model.forward(&x)?.iter().copied().collect();
        let t = Instant::now();
        let ct = CipherTensor::encrypt_packed(&ctx, EncryptionKey::Secret(&keys.secret), &x)?;
        let got: Vec<f64> = runner
            .forward(&ct)?
            .decrypt(&ctx, &keys.secret)?
            .iter()
            .copied()
            .collect();
        lat.push(t.elapsed().as_secs_f64());
        let label = test.labels[i];
        correct_enc += (argmax(&got) == label) as usize;
        correct_plain += (argmax(&plain) == label) as usize;
        agree += (argmax(&got) == argmax(&plain)) as usize;
        max_err = got
            .iter()
            .zip(&plain)
            .fold(max_err, |m, (a, b)| m.max((a - b).abs()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut sorted = lat.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = total as f64;
    let r = PackedReport {
        images: total,
        layout: "packed".into(),
        scheme: "ckks".into(),
        backend: backend.name().into(),
        ring_degree: ctx.rlwe().n(),
        levels: ctx.max_level(),
        galois_keys: steps.len(),
        encrypted_accuracy: correct_enc as f64 / n,
        plaintext_accuracy: correct_plain as f64 / n,
        argmax_agreement: agree as f64 / n,
        max_abs_logit_error: max_err,
        seconds_keygen,
        latency_median_seconds: sorted[sorted.len() / 2],
        latency_min_seconds: sorted[0],
        latency_max_seconds: sorted[sorted.len() - 1],
        images_per_second: n / lat.iter().sum::<f64>(),
        peak_memory_mb: peak_memory_mb(),
    };
    emit(opts.json, &r, print_packed)
}

fn print_packed(r: &PackedReport) {
    println!(
        "Encrypted MNIST (LeNet-1, CKKS N = {}, {} levels, 128-bit, packed layout: one image per run, {} Galois keys)",
        r.ring_degree, r.levels, r.galois_keys
    );
    println!("  images              {}", r.images);
    println!("  encrypted accuracy  {:.2}%", 100.0 * r.encrypted_accuracy);
    println!("  plaintext accuracy  {:.2}%", 100.0 * r.plaintext_accuracy);
    println!("  argmax agreement    {:.2}%", 100.0 * r.argmax_agreement);
    println!("  max |logit error|   {:.4}", r.max_abs_logit_error);
    println!(
        "  latency per image   median {:.3} s (min {:.3}, max {:.3}); keygen {:.2} s",
        r.latency_median_seconds, r.latency_min_seconds, r.latency_max_seconds, r.seconds_keygen
    );
    println!("  peak memory         {:.0} MB", r.peak_memory_mb);
}
