//! Decodes hostile zstd "bombs" (issue #13) at 128-bit parameters and prints the process's
//! peak resident memory (VmHWM, Linux), to check that decoding them stays bounded:
//!
//! ```text
//! cargo run --release --example decode_bombs -- context   # ~2 MB public context, zero Galois keys
//! cargo run --release --example decode_bombs -- store     # ~290 KB worker STORE of zero ciphertexts
//! ```
//!
//! Run each probe in its own process (the peak is per process).

use std::io::Write;

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::serialize::{
    self, PublicContext, SchemeParams, WriteOptions, CHECKSUM_LEN, FORMAT_VERSION, HEADER_LEN,
};

fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// An object as the format frames it, with a zstd body written by `body`.
fn framed(kind: u8, fingerprint: u64, key_id: u64, body: impl FnOnce(&mut dyn Write)) -> Vec<u8> {
    let mut out = b"HETN".to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[kind, 1]);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&key_id.to_le_bytes());
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    body(&mut z);
    let frame = z.finish().unwrap();
    out.extend_from_slice(&(frame.len() as u64).to_le_bytes());
    out.extend_from_slice(&frame);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn poly_bytes(primes: &[u32], n: usize) -> usize {
    primes
        .iter()
        .map(|&q| n * (32 - q.leading_zeros()) as usize / 8)
        .sum()
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn main() -> hetensor::Result<()> {
    let probe = std::env::args().nth(1).unwrap_or_else(|| "context".into());
    let params = CkksParams::preset(14, 25)?;
    let ctx = CkksContext::with_seed(params.clone(), [3; 32])?;
    let rlwe = ctx.rlwe();
    let n = rlwe.n();
    let q = params.rlwe().q_primes().to_vec();
    let qp: Vec<u32> = q.iter().chain(params.rlwe().p_primes()).copied().collect();
    let digits = rlwe.digits().len();
    let before = vm_hwm_mib();
    match probe.as_str() {
        "context" => {
            let count: u32 = std::env::args()
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(3000);
            let mut p = Vec::new();
            serialize::write_params_only(&mut p, &SchemeParams::Ckks(params.clone()))?;
            let p = p[HEADER_LEN..p.len() - CHECKSUM_LEN].to_vec();
            let zeros = vec![0u8; poly_bytes(&qp, n)];
            let claimed = count as usize * digits * (zeros.len() + 33);
            // A real public key (uniform, incompressible), then the zero Galois keys.
            let keys = ctx.keygen()?;
            let pk = serialize::to_bytes(rlwe, &keys.public, WriteOptions::default())?;
            let pk = pk[HEADER_LEN..pk.len() - CHECKSUM_LEN].to_vec();
            let bomb = framed(8, rlwe.fingerprint(), keys.public.key_id(), |w| {
                w.write_all(&p).unwrap();
                w.write_all(&[2]).unwrap();
                w.write_all(&pk).unwrap();
                w.write_all(&count.to_le_bytes()).unwrap();
                for k in 0..count {
                    w.write_all(&(2 * k + 3).to_le_bytes()).unwrap();
                    w.write_all(&[digits as u8]).unwrap();
                    for _ in 0..digits {
                        w.write_all(&[1]).unwrap();
                        w.write_all(&[0; 32]).unwrap();
                        w.write_all(&zeros).unwrap();
                    }
                }
            });
            let built = vm_hwm_mib();
            let r = PublicContext::<CkksContext>::from_bytes(&bomb, default_backend());
            println!(
                "context bomb: {} bytes claiming {count} Galois keys ({:.1} GB of key material); \
                 peak RSS {before:.0} MiB before building it, {built:.0} MiB after, {:.0} MiB after \
                 decoding; result: {:?}",
                bomb.len(),
                claimed as f64 / 1e9,
                vm_hwm_mib(),
                r.map(|_| "accepted").map_err(|e| e.to_string())
            );
        }
        "store" => {
            let keys = ctx.keygen()?;
            let mut public = Vec::new();
            PublicContext::write_parts(
                &mut public,
                &ctx,
                &keys.public,
                None,
                None,
                WriteOptions::default(),
            )?;
            let zero_ct = framed(2, rlwe.fingerprint(), keys.public.key_id(), |w| {
                w.write_all(&0u64.to_le_bytes()).unwrap();
                w.write_all(&[(q.len() - 1) as u8, 2]).unwrap();
                w.write_all(&ctx.default_scale().to_le_bytes()).unwrap();
                w.write_all(&[0]).unwrap();
                w.write_all(&vec![0u8; 2 * poly_bytes(&q, n)]).unwrap();
            });
            let count = (288_000 / zero_ct.len()) as u32;
            let mut store = 0u32.to_le_bytes().to_vec();
            store.extend_from_slice(&count.to_le_bytes());
            for _ in 0..count {
                store.extend_from_slice(&zero_ct);
            }
            let mut input = frame(1, &public);
            input.extend(frame(6, &store));
            input.extend(frame(5, &[]));
            let built = vm_hwm_mib();
            let mut out = Vec::new();
            let r =
                hetensor::workers::serve(std::io::Cursor::new(input), &mut out, default_backend());
            let answer = match out.first() {
                Some(7) => "STORED".to_string(),
                Some(4) => format!("ERROR {}", String::from_utf8_lossy(&out[9..])),
                other => format!("{other:?}"),
            };
            println!(
                "STORE bomb: {} bytes, {count} ciphertexts of {} bytes each claiming {:.1} MB each; \
                 peak RSS {before:.0} MiB before, {built:.0} MiB after keygen and building it, \
                 {:.0} MiB after serving; serve: {r:?}; answer: {answer}",
                store.len(),
                zero_ct.len(),
                2.0 * (q.len() * n * 4) as f64 / 1e6,
                vm_hwm_mib()
            );
        }
        other => eprintln!("unknown probe {other} (context | store)"),
    }
    Ok(())
}
