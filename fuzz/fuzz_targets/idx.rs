//! The MNIST IDX loader on arbitrary bytes, raw and gzip-compressed: must return an error or
//! data of the announced size, never panic, and never allocate more than the header can
//! legitimately need (run under `-malloc_limit_mb`). Run with `scripts/fuzz.sh SECONDS idx`.
//!
//! Input: the first byte's low bit picks whether the rest is decoded as it is (a gzip stream
//! is recognised by its magic) or gzip-compressed first, so the IDX structure is explored
//! behind the decompressor too.
#![no_main]

use std::io::Write;

use hetensor::nn::mnist;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(images) = mnist::decode_images(bytes) {
        assert!(!images.is_empty());
    }
    if let Ok(labels) = mnist::decode_labels(bytes) {
        assert!(!labels.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(rest);
        let _ = mnist::parse_images(rest);
        let _ = mnist::parse_labels(rest);
        let _ = mnist::gunzip_if_needed(rest.to_vec());
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        check(&gz.finish().unwrap());
    }
});
