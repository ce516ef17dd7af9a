//! The safetensors weights loader on arbitrary bytes: loads LeNet-1's parameters or returns an
//! `Error::Model` (or its typed `MissingWeight` / `WeightShape`), never panics, never allocates beyond what the model's parameters can take
//! (run under `-malloc_limit_mb`), and leaves the model unchanged on error. Run with
//! `scripts/fuzz.sh SECONDS safetensors`; seed the corpus with `data/lenet1.safetensors`.
#![no_main]

use hetensor::nn::{weights, Sequential};
use hetensor::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut model = Sequential::lenet1();
    let before = model.clone();
    match weights::load_from_bytes(&mut model, data) {
        Ok(()) => {}
        Err(Error::Model(_) | Error::MissingWeight { .. } | Error::WeightShape { .. }) => {
            assert!(model == before, "a failed load changed the model")
        }
        Err(e) => panic!("not a model error: {e}"),
    }
});
