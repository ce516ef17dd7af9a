//! The worker's side of the pipe on arbitrary frames: after a valid public context, whatever
//! STORE / JOB / DROP / other frames arrive, `workers::serve_with` answers or stops with an
//! error after an ERROR frame, never panics, and never allocates past its frame bounds. Run
//! with `scripts/fuzz.sh SECONDS worker`.
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use hetensor::rlwe::Security;
use hetensor::serialize::{DecodeOptions, PublicContext, WriteOptions};
use hetensor::workers::{serve_with, WorkerLimits};
use libfuzzer_sys::fuzz_target;

/// A CONTEXT frame (tag 1, u64 length, public context with relin key, no Galois keys).
fn context_frame() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let p = CkksParams::single_prime(SinglePrimeChain {
            log_n: 10,
            levels: 2,
            scale_bits: 25,
            dnum: 1,
            security: Security::InsecureForTestingOnly,
            ..Default::default()
        })
        .unwrap();
        let ctx = CkksContext::with_seed(p, [1; 32]).unwrap();
        let keys = ctx.keygen().unwrap();
        let mut public = Vec::new();
        PublicContext::write_parts(
            &mut public,
            &ctx,
            &keys.public,
            Some(&keys.relin),
            None,
            WriteOptions::default(),
        )
        .unwrap();
        let mut f = vec![1u8];
        f.extend_from_slice(&(public.len() as u64).to_le_bytes());
        f.extend_from_slice(&public);
        f
    })
}

/// Small limits, so that inputs reach the slot and byte limits and the frame bounds.
const LIMITS: WorkerLimits = WorkerLimits {
    max_slots: 4,
    max_stored_bytes: 256 << 10,
    max_frame_bytes: 16 << 20,
    frame_timeout: None,
    decode: DecodeOptions {
        allow_insecure: true,
    },
};

fuzz_target!(|data: &[u8]| {
    let mut input = context_frame().to_vec();
    input.extend_from_slice(data);
    let mut out = Vec::new();
    let r = serve_with(Cursor::new(input), &mut out, default_backend(), LIMITS);
    // A worker that stops with an error has said so in an ERROR frame (tag 4) first.
    if r.is_err() {
        let mut o = out.as_slice();
        let mut last = None;
        while o.len() >= 9 {
            let len = u64::from_le_bytes(o[1..9].try_into().unwrap()) as usize;
            last = Some(o[0]);
            o = &o[9 + len..];
        }
        assert_eq!(last, Some(4), "stopped without an ERROR frame: {r:?}");
    }
});
