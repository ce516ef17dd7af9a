//! The CUDA kernel sources and their NVRTC compilation (no driver needed: the kernel compile
//! test uses this module on machines without a GPU).

use std::ffi::{CStr, CString};

use cudarc::nvrtc::{result, sys};

use crate::error::{Error, Result};

/// The prelude (`kernels/common.cuh`) prepended to every kernel file.
pub const PRELUDE: &str = include_str!("../../../kernels/common.cuh");

/// Every kernel file: `(file name, source without the prelude)`.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    ("ntt.cu", include_str!("../../../kernels/ntt.cu")),
    ("rns.cu", include_str!("../../../kernels/rns.cu")),
    ("permute.cu", include_str!("../../../kernels/permute.cu")),
    (
        "keyswitch.cu",
        include_str!("../../../kernels/keyswitch.cu"),
    ),
];

/// Every kernel entry point the backend loads (a missing one fails the compile test).
pub const KERNEL_NAMES: &[&str] = &[
    "ew_binary",
    "ew_neg",
    "ew_mul_acc",
    "ew_scalar",
    "tensor_product",
    "lincomb",
    "ntt_fwd_cols",
    "ntt_fwd_rows",
    "intt_rows",
    "intt_cols",
    "base_convert",
    "scale_round",
    "automorphism",
    "permute_limbs",
    "gather_limbs",
    "concat_limbs",
    "conv_rows",
    "ks_inner_hoisted",
    "mod_up_gather",
    "ntt_fwd_rows_moddown",
    "ntt_fwd_cols_conv",
    "ntt_fwd_rows_ks",
];

/// The source of one NVRTC program holding every kernel (prelude + all files).
pub fn full_source() -> String {
    let mut s = String::from(PRELUDE);
    for (name, src) in KERNEL_SOURCES {
        s.push_str(&format!("\n// ---- {name} ----\n"));
        s.push_str(src);
    }
    s
}

/// What NVRTC should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX text for a virtual architecture (`compute_XY`), JIT-compiled by the driver.
    Ptx,
    /// Machine code (CUBIN) for a real architecture (`sm_XY`): no JIT, and no PTX-version
    /// constraint on the driver.
    Cubin,
}

/// Whether the NVRTC library can be loaded (cudarc panics on any call when it cannot).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(Error::BackendUnavailable(
            "cuda: the NVRTC library (libnvrtc.so) was not found".into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Backend(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// Compiles `src` for compute capability `major.minor` (`compute_XY` PTX or `sm_XY` CUBIN).
/// A compile error carries NVRTC's log.
pub fn compile(src: &str, major: i32, minor: i32, out: Output) -> Result<Vec<u8>> {
    if !nvrtc_available() {
        return Err(Error::BackendUnavailable(
            "cuda: the NVRTC library (libnvrtc.so) was not found".into(),
        ));
    }
    let arch = match out {
        Output::Ptx => format!("--gpu-architecture=compute_{major}{minor}"),
        Output::Cubin => format!("--gpu-architecture=sm_{major}{minor}"),
    };
    let c_src =
        CString::new(src).map_err(|_| Error::Backend("kernel source contains NUL".into()))?;
    let name = c"hetensor.cu";
    let prog = result::create_program(&c_src, Some(name))
        .map_err(|e| Error::Backend(format!("nvrtcCreateProgram: {e:?}")))?;
    let opts = [arch.as_str(), "--std=c++17", "-default-device"];
    // SAFETY: `prog` is live until destroy_program below; c_src outlives it.
    let res = unsafe { result::compile_program(prog, &opts) };
    let outcome = match res {
        Err(e) => {
            let log = unsafe { result::get_program_log(prog) }
                .map(|l| {
                    unsafe { CStr::from_ptr(l.as_ptr()) }
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            Err(Error::Backend(format!(
                "NVRTC failed to compile the kernels ({arch}): {e:?}\n{log}"
            )))
        }
        Ok(()) => match out {
            Output::Ptx => unsafe { result::get_ptx(prog) }
                .map(|p| {
                    let mut v: Vec<u8> = p.into_iter().map(|c| c as u8).collect();
                    while v.last() == Some(&0) {
                        v.pop();
                    }
                    v
                })
                .map_err(|e| Error::Backend(format!("nvrtcGetPTX: {e:?}"))),
            Output::Cubin => unsafe { get_cubin(prog) },
        },
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { result::destroy_program(prog) };
    outcome
}

unsafe fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: `prog` was compiled successfully and is still live.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| Error::Backend(format!("nvrtcGetCUBINSize: {e:?}")))?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the size NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| Error::Backend(format!("nvrtcGetCUBIN: {e:?}")))?;
    Ok(buf)
}

/// FNV-1a 64 of the bytes (the disk cache key of compiled kernels).
pub fn source_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
