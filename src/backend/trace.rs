//! The GPU backends' work counters ([`super::Backend::trace_counts`], `hetensor bench
//! --trace`), shared with their buffers (whose clones and wipes are device work too).

use std::sync::atomic::{AtomicU64, Ordering};

use super::TraceCounts;

/// Running totals of device work. Relaxed atomics: totals, not an ordering.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub launches: AtomicU64,
    pub kernel_bytes: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub download_bytes: AtomicU64,
    pub device_copy_bytes: AtomicU64,
    pub device_copies: AtomicU64,
    pub allocations: AtomicU64,
    pub alloc_bytes: AtomicU64,
}

impl Trace {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn alloc(&self, bytes: usize) {
        Self::add(&self.allocations, 1);
        Self::add(&self.alloc_bytes, bytes);
    }

    pub fn upload(&self, bytes: usize) {
        Self::add(&self.uploads, 1);
        Self::add(&self.upload_bytes, bytes);
    }

    pub fn device_copy(&self, bytes: usize) {
        Self::add(&self.device_copies, 1);
        Self::add(&self.device_copy_bytes, bytes);
    }

    pub fn launch(&self, kernel_bytes: usize) {
        Self::add(&self.launches, 1);
        Self::add(&self.kernel_bytes, kernel_bytes);
    }

    pub fn snapshot(&self) -> TraceCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TraceCounts {
            launches: get(&self.launches),
            kernel_bytes: get(&self.kernel_bytes),
            upload_bytes: get(&self.upload_bytes),
            uploads: get(&self.uploads),
            download_bytes: get(&self.download_bytes),
            device_copy_bytes: get(&self.device_copy_bytes),
            device_copies: get(&self.device_copies),
            allocations: get(&self.allocations),
            alloc_bytes: get(&self.alloc_bytes),
        }
    }
}
