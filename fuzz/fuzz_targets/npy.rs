//! The `.npy` reader (`hetensor infer --data`, `--calibration`) on arbitrary bytes: must return
//! an array whose data the bytes hold or an error, never panic, and never allocate more than
//! the file's own size (run under `-malloc_limit_mb`). Run with `scripts/fuzz.sh SECONDS npy`.
#![no_main]

use hetensor::data::npy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = npy::parse(data) {
        // Every element takes at least one byte of the file.
        assert!(a.len() <= data.len());
    }
});
