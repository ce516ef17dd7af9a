//! Runtime choice of vector width for the hot loops (NTT butterflies, base conversion, key
//! inner products).
//!
//! The crate is built for x86-64-v3 (AVX2, `.cargo/config.toml`), which every supported x86
//! CPU has. Where the CPU also has AVX-512, [`dispatch`] runs the same Rust code through a copy
//! compiled with AVX-512 enabled, so LLVM vectorizes its loops 16 words wide instead of 8:
//! measured on an Intel Xeon (AVX-512), a 2^13 forward NTT takes ~12 µs instead of ~15 µs.
//! The arithmetic is the same integer code either way, so both copies return the same words
//! (tests compare them). `HETENSOR_SIMD=avx2` turns the wide copy off (A/B benchmarks).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// [`set_width`]'s choice: 0 automatic, 1 AVX2, 2 AVX-512 where the CPU has it.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Pins every [`dispatch`] in the process to one copy (`Some(true)`: the AVX-512 one where the
/// CPU has it, `Some(false)`: the AVX2 one) or back to the automatic choice (`None`). Tests use
/// it to run both copies; both return the same words, so a change mid-computation is harmless.
pub fn set_width(wide: Option<bool>) {
    FORCED.store(
        match wide {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        },
        Ordering::Relaxed,
    );
}

/// Whether [`dispatch`] uses the AVX-512 copy on this machine (the CPU has AVX-512 and
/// `HETENSOR_SIMD` is not `avx2`).
pub fn wide_vectors() -> bool {
    static WIDE: OnceLock<bool> = OnceLock::new();
    *WIDE.get_or_init(|| {
        let allowed = std::env::var("HETENSOR_SIMD").map_or(true, |v| v != "avx2");
        allowed && cpu_has_avx512()
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512() -> bool {
    false
}

/// Whether the AVX-512 code runs now: the CPU has it and neither [`set_width`] nor
/// `HETENSOR_SIMD` turned it off.
#[inline(always)]
pub fn wide_now() -> bool {
    let wide = match FORCED.load(Ordering::Relaxed) {
        0 => wide_vectors(),
        1 => false,
        _ => true,
    };
    wide && cpu_has_avx512_cached()
}

/// Runs `f`, through its AVX-512 copy when [`wide_now`] says so. `f` should be an
/// `#[inline(always)]` closure over `#[inline(always)]` code: what is inlined into the wide
/// copy is vectorized for it.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if wide_now() {
        // SAFETY: the CPU has every feature the wide copy is compiled for.
        return unsafe { avx512(f) };
    }
    f()
}

fn cpu_has_avx512_cached() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(cpu_has_avx512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}
