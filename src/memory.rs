//! This process's resident memory, read from Linux's `/proc/self/status`, so that reports
//! (benchmarks, workloads, parties) can state what a run held. Elsewhere the readings are 0.

/// One `/proc/self/status` field in bytes (`VmHWM`, `VmRSS`, …); `None` where it cannot be read.
fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.split(':').next() == Some(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The peak resident memory of this process so far (`VmHWM`), in bytes; 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    status_field("VmHWM").unwrap_or(0)
}

/// The resident memory of this process now (`VmRSS`), in bytes; 0 where unknown.
pub fn rss_bytes() -> u64 {
    status_field("VmRSS").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn readings_grow_with_a_touched_allocation() {
        let before = super::rss_bytes();
        // 64 MiB written page by page, so it is resident, not just reserved.
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        let during = super::rss_bytes();
        assert!(std::hint::black_box(&v)
            .iter()
            .step_by(4096)
            .all(|&b| b == 1));
        assert!(during >= before + (60 << 20), "{before} → {during}");
        assert!(super::peak_rss_bytes() >= during);
    }
}
