//! Scanning bytes for a secret share: every encoding of it a message could carry, cut into
//! 16-byte windows (shared by the multiparty tests).

use std::collections::HashSet;

use hetensor::rlwe::{RlweContext, SecretKey};
use hetensor::serialize::{self, WriteOptions};

/// Bit-packs residues at the prime's width, least significant bit first (the format's
/// packing, re-implemented here as an independent reference).
fn pack(words: &[u32], q: u32) -> Vec<u8> {
    let bits = 32 - q.leading_zeros();
    let mut out = vec![0u8; (words.len() * bits as usize).div_ceil(8)];
    let mut pos = 0usize;
    for &w in words {
        for b in 0..bits {
            if w >> b & 1 == 1 {
                out[pos / 8] |= 1 << (pos % 8);
            }
            pos += 1;
        }
    }
    out
}

pub const WINDOW: usize = 16;

/// 16-byte windows of every encoding of the share a message could leak: the secret-key
/// format (2 bits per coefficient), and the residues of `s_i` in coefficient and NTT form on
/// every prime, packed as the format packs polynomials.
pub fn secret_windows(ctx: &RlweContext, sk: &SecretKey) -> HashSet<[u8; WINDOW]> {
    let bytes = serialize::to_bytes(ctx, sk, WriteOptions::default()).unwrap();
    let body = &bytes[serialize::HEADER_LEN..bytes.len() - serialize::CHECKSUM_LEN];
    let coeffs: Vec<i64> = body
        .iter()
        .flat_map(|b| {
            (0..4).map(move |k| match b >> (2 * k) & 3 {
                1 => 1i64,
                2 => -1,
                _ => 0,
            })
        })
        .collect();
    let limbs = ctx.qp_limbs(ctx.max_level());
    let mut encodings = vec![body.to_vec()];
    for ntt in [false, true] {
        let p = if ntt {
            ctx.upload_signed_ntt(&coeffs, limbs.clone()).unwrap()
        } else {
            ctx.upload_signed(&coeffs, limbs.clone()).unwrap()
        };
        let words = ctx.backend().download(&p).unwrap();
        for (i, &l) in limbs.iter().enumerate() {
            let q = ctx.ring().modulus(l).value();
            encodings.push(pack(&words[i * ctx.n()..(i + 1) * ctx.n()], q));
        }
    }
    let mut set = HashSet::new();
    for e in encodings {
        for start in (0..e.len().saturating_sub(WINDOW)).step_by(WINDOW) {
            set.insert(e[start..start + WINDOW].try_into().unwrap());
        }
    }
    set
}

pub fn leaks(transcript: &[u8], windows: &HashSet<[u8; WINDOW]>) -> bool {
    transcript
        .windows(WINDOW)
        .any(|w| windows.contains(<&[u8; WINDOW]>::try_from(w).unwrap()))
}
