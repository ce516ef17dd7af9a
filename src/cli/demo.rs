//! `hetensor demo`: a short end-to-end encrypted computation that shows the engine working.

use std::time::Instant;

use hetensor::ckks::{precision_bits, CkksContext, CkksParams};
use hetensor::Result;

/// Options of `hetensor demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// A deep chain instead: sequential multiplications that bootstrap along the way.
    #[arg(long)]
    pub deep: bool,
    /// With --deep: how many sequential multiplications.
    #[arg(long, default_value_t = 50, value_parser = super::args::at_least(1), requires = "deep")]
    pub multiplications: usize,
    /// With --deep: ring size (15, 16 = the 128-bit presets; 10..=14 = an insecure test ring).
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(10..=16), requires = "deep")]
    pub log_n: u32,
}

/// `hetensor demo`, or `demo --deep`.
pub fn run(args: DemoArgs) -> Result<()> {
    if args.deep {
        run_deep(args.multiplications, args.log_n)
    } else {
        run_short()
    }
}

/// Encrypts two vectors with CKKS (scale 2^40 in composite levels of two ~2^20 primes, the
/// smallest 128-bit ring for depth 2), computes `a·b + a` and a rotation homomorphically,
/// decrypts, and compares with the plaintext result.
fn run_short() -> Result<()> {
    let t0 = Instant::now();
    let params = CkksParams::builder().depth(2).scale_bits(40).build()?;
    println!("{params}");
    let ctx = CkksContext::new(params)?;
    let keys = ctx.keygen()?;
    let gk = ctx.gen_galois_keys(&keys.secret, &[1], false)?;
    println!("keys generated in {:.2} s", t0.elapsed().as_secs_f64());
    let n = ctx.slots();
    let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
    let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos() * 2.0).collect();
    let t1 = Instant::now();
    let top = ctx.max_level();
    let ca = ctx.encrypt(&ctx.encode(&a, ctx.default_scale(), top)?, &keys.public)?;
    let cb = ctx.encrypt(&ctx.encode(&b, ctx.default_scale(), top)?, &keys.public)?;
    let prod = ctx.multiply_relinearize_rescale(&ca, &cb, &keys.relin)?;
    // a·b now has scale Δ²/q_top, not Δ. Bring `a` to the same level and scale exactly:
    // multiply by 1 encoded at scale c = prod.scale·q_top/Δ, then rescale by q_top.
    let c = prod.scale() * ctx.level_modulus(top) / ca.scale();
    let a_aligned = ctx.rescale(&ctx.multiply_scalar(&ca, 1.0, c)?)?;
    let sum = ctx.add(&prod, &a_aligned)?;
    let rot = ctx.rotate(&sum, 1, &gk)?;
    let got = ctx.decrypt_decode(&rot, &keys.secret)?;
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let j = (i + 1) % n;
            a[j] * b[j] + a[j]
        })
        .collect();
    let mean_err = want
        .iter()
        .zip(&got)
        .map(|(w, g)| (w - g).abs())
        .sum::<f64>()
        / n as f64;
    println!(
        "{} slots: rotate(a·b + a, 1) computed encrypted in {:.1} ms; max error 2^-{:.1}, mean error 2^{:.1}",
        n,
        t1.elapsed().as_secs_f64() * 1e3,
        precision_bits(&want, &got),
        mean_err.log2()
    );
    println!(
        "first slots: want {:?}\n             got  {:?}",
        &want[..3],
        &got[..3]
    );
    Ok(())
}

/// `hetensor demo --deep`: `multiplications` sequential ciphertext–ciphertext products (each
/// by a fresh encryption of values near 1), bootstrapping whenever the levels run out, checked
/// slot by slot against the same products in plaintext. N = 2^15 and 2^16 run the 128-bit
/// presets; smaller rings run the insecure test ring (same code, minutes instead of hours here).
fn run_deep(multiplications: usize, log_n: u32) -> Result<()> {
    use hetensor::ckks::bootstrap::{BootstrapKeys, BootstrapParams};
    let t0 = Instant::now();
    let bp = if log_n >= 15 {
        BootstrapParams::preset(log_n)?
    } else {
        eprintln!(
            "warning: N = 2^{log_n} is an INSECURE test ring (same pipeline, far beyond what this N allows); --log-n 15 or 16 runs a 128-bit preset"
        );
        BootstrapParams::insecure_test_ring(log_n, 4)?
    };
    println!("{}", bp.ckks());
    let ctx = CkksContext::new(bp.ckks().clone())?;
    let keys = ctx.keygen()?;
    let bk = BootstrapKeys::generate(&ctx, &bp, &keys.secret, &keys.relin)?;
    println!(
        "keys generated in {:.1} s ({} rotation keys); a bootstrap uses {} levels and leaves {}",
        t0.elapsed().as_secs_f64(),
        bk.galois().elements().len(),
        bp.depth(),
        bk.output_level()
    );
    let n = ctx.slots();
    let mut want: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let top = bk.output_level();
    let mut y = ctx.encrypt(
        &ctx.encode(&want, ctx.natural_scale(top), top)?,
        &keys.public,
    )?;
    let (mut bootstraps, mut boot_time) = (0usize, 0.0f64);
    let t1 = Instant::now();
    for k in 0..multiplications {
        if y.level() == 0 {
            let tb = Instant::now();
            y = ctx.bootstrap(&y, &bk)?;
            boot_time += tb.elapsed().as_secs_f64();
            bootstraps += 1;
        }
        let l = y.level();
        let u: Vec<f64> = (0..n)
            .map(|i| 1.0 + 0.05 * ((i * 7 + k * 13) as f64).sin())
            .collect();
        // z's scale makes the product land exactly on the natural scale of level l − 1, so
        // float drift in y's scale cannot compound over dozens of products and bootstraps.
        let z_scale = ctx.natural_scale(l - 1) * ctx.level_modulus(l) / y.scale();
        let z = ctx.encrypt(&ctx.encode(&u, z_scale, l)?, &keys.public)?;
        y = ctx.multiply_relinearize_rescale(&y, &z, &keys.relin)?;
        want.iter_mut().zip(&u).for_each(|(w, u)| *w *= u);
    }
    let got = ctx.decrypt_decode(&y, &keys.secret)?;
    let bits = precision_bits(&want, &got);
    println!(
        "{multiplications} sequential multiplications over {n} slots with {bootstraps} bootstraps ({:.1} s of {:.1} s): max error 2^-{bits:.1} against plaintext (largest value {:.2})",
        boot_time,
        t1.elapsed().as_secs_f64(),
        want.iter().fold(0.0f64, |a, b| a.max(b.abs()))
    );
    if bits < 10.0 {
        return Err(hetensor::Error::InvalidInput(format!(
            "the deep chain lost its precision: 2^-{bits:.1} max error"
        )));
    }
    Ok(())
}
