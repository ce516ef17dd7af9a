//! Builds the host emulator of the CUDA kernels (`kernels/host/emu.cpp`) only with the
//! test-only feature `cuda-emu`; otherwise does nothing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA_EMU").is_none() {
        return;
    }
    for f in [
        "kernels/host/emu.cpp",
        "kernels/host/cuda_host.h",
        "kernels/common.cuh",
        "kernels/elementwise.cu",
        "kernels/ntt.cu",
        "kernels/rns.cu",
        "kernels/permute.cu",
        "kernels/keyswitch.cu",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    // One C++ translation unit: the emulation header, the prelude and every .cu file unchanged.
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .flag_if_supported("-Wno-unknown-pragmas") // #pragma unroll
        .flag_if_supported("-Wno-unused-parameter")
        .file("kernels/host/emu.cpp")
        .compile("hetensor_cuda_emu");
}
