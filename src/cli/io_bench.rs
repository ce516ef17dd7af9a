//! `hetensor io-bench`: serialization targets of the seed workflow, measured: a public context
//! like the seed's (N = 2^14, ~438-bit modulus, relinearization and power-of-two Galois keys),
//! and the 891 Titanic rows encrypted one ciphertext per row (as the seed did) and row-packed.

use std::time::Instant;

use serde::Serialize;

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::data;
use hetensor::rlwe::Ciphertext;
use hetensor::serialize::{self, PublicContext, WriteOptions};
use hetensor::Result;

use super::mnist::{emit, peak_memory_mb};

/// Report (also the `--json` object).
#[derive(Serialize, Debug)]
pub struct IoReport {
    pub threads: usize,
    pub ring_degree: usize,
    pub log_qp: f64,
    pub limbs_q: usize,
    pub limbs_p: usize,
    pub dnum: usize,
    pub galois_keys: usize,
    pub context_bytes_seeded: usize,
    pub context_bytes_unseeded: usize,
    pub context_bytes_zstd: usize,
    pub context_serialize_seconds: f64,
    pub context_deserialize_seconds: f64,
    pub rows: usize,
    pub per_row_encrypt_seconds_symmetric: f64,
    pub per_row_encrypt_seconds_public: f64,
    pub per_row_serialize_seconds: f64,
    pub per_row_deserialize_seconds: f64,
    pub per_row_bytes_seeded: usize,
    pub per_row_bytes_unseeded: usize,
    pub packed_ciphertexts: usize,
    pub packed_encrypt_seconds: f64,
    pub packed_bytes: usize,
    pub peak_memory_mb: f64,
}

fn secs<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

/// Options of `hetensor io-bench`.
#[derive(clap::Args, Debug)]
pub struct IoBenchArgs {
    /// Titanic train.csv (default: the bundled copy).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Only the first N rows (default: all 891).
    #[arg(long, value_parser = super::args::at_least(1))]
    pub rows: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `hetensor io-bench`.
pub fn run(args: IoBenchArgs) -> Result<()> {
    let path = super::data_path(args.data.as_deref(), data::DEFAULT_TITANIC, "--data")?;
    let (titanic, limit, json) = (path.as_path(), args.rows, args.json);
    let ds = data::titanic::load(titanic)?;
    let take = match limit {
        None => ds.len(),
        Some(n) if (1..=ds.len()).contains(&n) => n,
        Some(n) => {
            return Err(hetensor::Error::InvalidInput(format!(
                "--rows {n} is out of range 1..={}: {} holds {} rows",
                ds.len(),
                titanic.display(),
                ds.len()
            )))
        }
    };
    let params = CkksParams::preset(14, 25)?;
    let log_qp = params.rlwe().log_qp();
    let ctx = CkksContext::new(params)?;
    let keys = ctx.keygen()?;
    // Rotations by ±2^i and conjugation, as SEAL/TenSEAL's default Galois keys.
    let steps: Vec<i64> = (0..ctx.slots().trailing_zeros())
        .flat_map(|i| [1i64 << i, -(1i64 << i)])
        .collect();
    let gk = ctx.gen_galois_keys(&keys.secret, &steps, true)?;
    let write = |opts| -> Result<Vec<u8>> {
        let mut v = Vec::new();
        PublicContext::write_parts(
            &mut v,
            &ctx,
            &keys.public,
            Some(&keys.relin),
            Some(&gk),
            opts,
        )?;
        Ok(v)
    };
    let (context_serialize_seconds, bytes) = secs(|| write(WriteOptions::default()))?;
    let (context_deserialize_seconds, loaded) =
        secs(|| PublicContext::<CkksContext>::from_bytes(&bytes, default_backend()))?;
    let galois_keys = loaded
        .galois_keys
        .as_ref()
        .map_or(0, |g| g.elements().len());
    let unseeded = write(WriteOptions {
        compression: None,
        seeded: false,
    })?;
    let zstd = write(WriteOptions {
        compression: Some(3),
        seeded: true,
    })?;

    // 891 rows (or --rows), one ciphertext each (features and a bias 1 in the first slots).
    let rows: Vec<Vec<f64>> = ds
        .features
        .rows()
        .into_iter()
        .take(take)
        .map(|r| r.iter().copied().chain([1.0]).collect())
        .collect();
    let level = ctx.max_level();
    let scale = ctx.default_scale();
    let (per_row_encrypt_seconds_symmetric, cts) = secs(|| {
        rows.iter()
            .map(|r| ctx.encrypt_symmetric(&ctx.encode(r, scale, level)?, &keys.secret))
            .collect::<Result<Vec<Ciphertext>>>()
    })?;
    let (per_row_encrypt_seconds_public, public_cts) = secs(|| {
        rows.iter()
            .map(|r| ctx.encrypt(&ctx.encode(r, scale, level)?, &keys.public))
            .collect::<Result<Vec<Ciphertext>>>()
    })?;
    drop(public_cts);
    let (per_row_serialize_seconds, blobs) = secs(|| {
        let mut out = Vec::new();
        for c in &cts {
            serialize::write(ctx.rlwe(), c, &mut out, WriteOptions::default())?;
        }
        Ok(out)
    })?;
    let (per_row_deserialize_seconds, back) = secs(|| {
        let mut r = blobs.as_slice();
        (0..cts.len())
            .map(|_| serialize::read::<Ciphertext>(ctx.rlwe(), &mut r))
            .collect::<Result<Vec<_>>>()
    })?;
    assert_eq!(back.len(), cts.len());
    let per_row_bytes_unseeded = cts
        .iter()
        .map(|c| {
            serialize::to_bytes(
                ctx.rlwe(),
                c,
                WriteOptions {
                    compression: None,
                    seeded: false,
                },
            )
            .map(|b| b.len())
        })
        .sum::<Result<usize>>()?;

    // Row-packed: 16 slots per row, 512 rows per ciphertext.
    let layout = hetensor::workers::RowLayout::new(rows[0].len(), ctx.slots())?;
    let (packed_encrypt_seconds, packed) = secs(|| {
        layout
            .pack(&rows)
            .iter()
            .map(|v| ctx.encrypt_symmetric(&ctx.encode(v, scale, level)?, &keys.secret))
            .collect::<Result<Vec<_>>>()
    })?;
    let packed_bytes = packed
        .iter()
        .map(|c| serialize::to_bytes(ctx.rlwe(), c, WriteOptions::default()).map(|b| b.len()))
        .sum::<Result<usize>>()?;

    let report = IoReport {
        threads: rayon::current_num_threads(),
        ring_degree: ctx.rlwe().n(),
        log_qp,
        limbs_q: ctx.params().rlwe().q_primes().len(),
        limbs_p: ctx.params().rlwe().p_primes().len(),
        dnum: ctx.params().rlwe().dnum(),
        galois_keys,
        context_bytes_seeded: bytes.len(),
        context_bytes_unseeded: unseeded.len(),
        context_bytes_zstd: zstd.len(),
        context_serialize_seconds,
        context_deserialize_seconds,
        rows: rows.len(),
        per_row_encrypt_seconds_symmetric,
        per_row_encrypt_seconds_public,
        per_row_serialize_seconds,
        per_row_deserialize_seconds,
        per_row_bytes_seeded: blobs.len(),
        per_row_bytes_unseeded,
        packed_ciphertexts: packed.len(),
        packed_encrypt_seconds,
        packed_bytes,
        peak_memory_mb: peak_memory_mb(),
    };
    emit(json, &report, print_text)
}

fn print_text(r: &IoReport) {
    let mib = |b: usize| b as f64 / 1048576.0;
    println!(
        "Serialization (CKKS N = {}, log2 QP = {:.0}: {} + {} limbs, dnum {}; {} thread(s))\n",
        r.ring_degree, r.log_qp, r.limbs_q, r.limbs_p, r.dnum, r.threads
    );
    println!("| item | value |\n|---|---|");
    println!(
        "| public context (pk + relin + {} Galois keys), seeded | {:.1} MiB |",
        r.galois_keys,
        mib(r.context_bytes_seeded)
    );
    println!(
        "| same, unseeded | {:.1} MiB |",
        mib(r.context_bytes_unseeded)
    );
    println!(
        "| same, seeded + zstd 3 | {:.1} MiB |",
        mib(r.context_bytes_zstd)
    );
    println!(
        "| context serialize + deserialize | {:.3} s + {:.3} s |",
        r.context_serialize_seconds, r.context_deserialize_seconds
    );
    println!(
        "| {} rows, one ciphertext each: encrypt (secret key, seeded) | {:.3} s |",
        r.rows, r.per_row_encrypt_seconds_symmetric
    );
    println!(
        "| same, public-key encryption | {:.3} s |",
        r.per_row_encrypt_seconds_public
    );
    println!(
        "| serialize all / deserialize all | {:.3} s / {:.3} s |",
        r.per_row_serialize_seconds, r.per_row_deserialize_seconds
    );
    println!(
        "| bytes: seeded / unseeded | {:.1} MiB / {:.1} MiB ({:.2}x) |",
        mib(r.per_row_bytes_seeded),
        mib(r.per_row_bytes_unseeded),
        r.per_row_bytes_seeded as f64 / r.per_row_bytes_unseeded as f64
    );
    println!(
        "| row-packed: {} ciphertexts, encrypt / bytes | {:.3} s / {:.2} MiB |",
        r.packed_ciphertexts,
        r.packed_encrypt_seconds,
        mib(r.packed_bytes)
    );
    println!("| peak memory | {:.0} MB |", r.peak_memory_mb);
}
