//! The ONNX importer on arbitrary bytes: a graph or an error, never a panic, and no allocation
//! beyond a constant multiple of the input (run under `-malloc_limit_mb`). A graph that imports
//! is also run on one zero sample when that sample is small. Run with
//! `scripts/fuzz.sh SECONDS onnx`; the corpus is seeded with `tests/data/onnx/*.onnx`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = hetensor::onnx::from_bytes(data) {
        let shape: Vec<usize> = std::iter::once(1)
            .chain(g.shape(g.inputs()[0]).iter().copied())
            .collect();
        if shape.iter().product::<usize>() <= 1 << 16 {
            let _ = g.run(&[ndarray::ArrayD::zeros(ndarray::IxDyn(&shape))]);
        }
    }
});
