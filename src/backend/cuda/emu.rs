//! Host emulator of the CUDA kernels (test-only feature `cuda-emu`): `kernels/*.cu` compiled
//! unchanged as C++ by build.rs with `kernels/host/cuda_host.h`, and launched with
//! cuLaunchKernel's conventions (`kernels/host/emu.cpp`). A "device pointer" is a host address.
//! Blocks with barriers run their threads as fibers resumed in rotating orders, so a missing
//! `__syncthreads()` changes the words. Used by `tests/cuda_emulated.rs`.

use std::ffi::{c_char, c_int, c_void, CString};

use super::{KernelArg, Launch};
use crate::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy)]
struct Dim3 {
    x: u32,
    y: u32,
    z: u32,
}

extern "C" {
    fn hetensor_emu_launch(
        name: *const c_char,
        grid: Dim3,
        block: Dim3,
        shmem: usize,
        args: *mut *mut c_void,
    ) -> c_int;
    fn hetensor_emu_kernel_arity(name: *const c_char) -> c_int;
    fn hetensor_emu_kernel_arg_size(name: *const c_char, i: c_int) -> c_int;
}

/// The parameter sizes (bytes) of kernel `name` as the C++ compiler sees its signature, or
/// `None` if the emulator has no such kernel.
pub fn kernel_params(name: &str) -> Option<Vec<usize>> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string; the functions only read it.
    let arity = unsafe { hetensor_emu_kernel_arity(c.as_ptr()) };
    if arity < 0 {
        return None;
    }
    (0..arity)
        // SAFETY: as above.
        .map(|i| usize::try_from(unsafe { hetensor_emu_kernel_arg_size(c.as_ptr(), i) }).ok())
        .collect()
}

/// Runs one launch on the host (synchronously). The argument count and every argument's size
/// must match the kernel's C++ signature (`W` = 8 bytes, `U` = 4), else an error.
///
/// # Safety
/// Every pointer argument must be the address of host memory of the size the kernel indexes
/// (as for a device launch).
pub unsafe fn launch(l: &Launch) -> Result<()> {
    let params = kernel_params(l.name)
        .ok_or_else(|| Error::Backend(format!("cuda-emu: no kernel {}", l.name)))?;
    let sizes: Vec<usize> = l
        .args
        .iter()
        .map(|a| match a {
            KernelArg::W(_) => 8,
            KernelArg::U(_) => 4,
        })
        .collect();
    if sizes != params {
        return Err(Error::Backend(format!(
            "cuda-emu: {} takes parameters of {params:?} bytes, the launch passes {sizes:?}",
            l.name
        )));
    }
    let mut values: Vec<KernelArg> = l.args.clone();
    let mut ptrs: Vec<*mut c_void> = values
        .iter_mut()
        .map(|a| match a {
            KernelArg::W(v) => (v as *mut u64).cast(),
            KernelArg::U(v) => (v as *mut u32).cast(),
        })
        .collect();
    let name = CString::new(l.name).map_err(|_| Error::Backend("cuda-emu: bad name".into()))?;
    let d = |x| Dim3 { x, y: 1, z: 1 };
    // SAFETY: `ptrs[i]` points to a live value of parameter i's size (checked above); the
    // caller guarantees the pointers inside them.
    let rc = unsafe {
        hetensor_emu_launch(
            name.as_ptr(),
            d(l.grid),
            d(l.block),
            l.smem as usize,
            ptrs.as_mut_ptr(),
        )
    };
    match rc {
        0 => Ok(()),
        1 => Err(Error::Backend(format!(
            "cuda-emu: unknown kernel {}",
            l.name
        ))),
        2 => Err(Error::Backend(format!(
            "cuda-emu: {}: invalid launch configuration (grid {}, block {}, {} shared bytes)",
            l.name, l.grid, l.block, l.smem
        ))),
        3 => Err(Error::Backend(format!(
            "cuda-emu: {} wrote shared memory past its {} bytes",
            l.name, l.smem
        ))),
        4 => Err(Error::Backend(format!(
            "cuda-emu: {} reached __syncthreads() but is registered as barrier-free",
            l.name
        ))),
        5 => Err(Error::Backend("cuda-emu: out of memory for fibers".into())),
        e => Err(Error::Backend(format!("cuda-emu: {} failed ({e})", l.name))),
    }
}
