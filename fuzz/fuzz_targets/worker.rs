//! The worker's side of the pipe on arbitrary frames: after a valid public context, whatever
//! STORE / JOB / other frames arrive, `workers::serve` answers or stops with an error, never
//! panics. Run with `cargo fuzz run worker` in `fuzz/`.
#![no_main]

use std::sync::OnceLock;

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams};
use hetensor::rlwe::Security;
use hetensor::serialize::{DecodeOptions, PublicContext, WriteOptions};
use libfuzzer_sys::fuzz_target;

/// A CONTEXT frame (tag 1, u64 length, public context with relin key, no Galois keys).
fn context_frame() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let p = CkksParams::new(10, 2, 25, 30, 1, Security::InsecureForTestingOnly).unwrap();
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

fuzz_target!(|data: &[u8]| {
    let mut input = context_frame().to_vec();
    input.extend_from_slice(data);
    let mut out = Vec::new();
    let _ = hetensor::workers::serve_with(
        input.as_slice(),
        &mut out,
        default_backend(),
        DecodeOptions::allow_insecure(),
    );
});
