//! The allocator of the `hetensor` binary and the Python extension (feature `mimalloc`, part
//! of `cli`): mimalloc keeps freed polynomial buffers for reuse, where glibc returns large
//! blocks to the OS and page-faults them back in, which cost up to 5x on element-wise
//! operations (10x on one ciphertext's add from Python).

pub use mimalloc::MiMalloc;

/// Tells mimalloc to keep freed memory rather than hand it back to the OS after its purge
/// delay. A process that alternates work with waiting (a worker between jobs, a parent while
/// its workers compute, Python code between operations) otherwise page-faults its buffers
/// back in every step: ~2,000 faults per `titanic-workers` round, ~10 % of a worker's job. The
/// peak is unchanged; memory freed after it stays with the process. A `MIMALLOC_PURGE_DELAY`
/// the user sets wins.
///
/// # Safety
/// `mi_option_set` is not thread-safe: call this before any other thread that allocates
/// through mimalloc exists (first in `main`, or when an extension module is imported before
/// it starts threads).
pub unsafe fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // `mi_option_purge_delay` in mimalloc.h; mimalloc keeps option numbers stable
        // (retired options keep their slots), but exports no constant for this one.
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: the caller runs this before other mimalloc threads exist.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
