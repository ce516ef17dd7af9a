//! Every decoder on arbitrary bytes: must return an error or a valid object, never panic or
//! allocate beyond what the parameters allow. Run with `cargo fuzz run decode` in `fuzz/`.
#![no_main]

use std::sync::OnceLock;

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams, SinglePrimeChain};
use hetensor::rlwe::{Ciphertext, GaloisKeys, PublicKey, RelinKey, SecretKey, Security};
use hetensor::serialize::{self, DecodeOptions, PublicContext, SecretContext};
use libfuzzer_sys::fuzz_target;

fn ctx() -> &'static CkksContext {
    static C: OnceLock<CkksContext> = OnceLock::new();
    C.get_or_init(|| {
        let p = CkksParams::single_prime(SinglePrimeChain {
            log_n: 10,
            levels: 2,
            scale_bits: 20,
            base_bits: 27,
            dnum: 1,
            security: Security::InsecureForTestingOnly,
        })
        .unwrap();
        CkksContext::with_seed(p, [1; 32]).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let r = ctx().rlwe();
    let _ = serialize::from_bytes::<Ciphertext>(r, data);
    let _ = serialize::from_bytes::<hetensor::ckks::Plaintext>(r, data);
    let _ = serialize::from_bytes::<PublicKey>(r, data);
    let _ = serialize::from_bytes::<RelinKey>(r, data);
    let _ = serialize::from_bytes::<GaloisKeys>(r, data);
    let _ = serialize::from_bytes::<SecretKey>(r, data);
    let _ = serialize::from_bytes::<hetensor::mhe::Share>(r, data);
    // Both with and without the insecure opt-in (the fuzzer's own parameters are insecure).
    let opts = DecodeOptions::allow_insecure();
    let _ = PublicContext::<CkksContext>::from_bytes(data, default_backend());
    let _ = PublicContext::<CkksContext>::from_bytes_with(data, default_backend(), opts);
    let _ = SecretContext::<CkksContext>::from_bytes_with(data, default_backend(), opts);
    let _ = serialize::read_params_only(&mut &data[..]);
    let _ = serialize::read_params_only_with(&mut &data[..], opts);
});
