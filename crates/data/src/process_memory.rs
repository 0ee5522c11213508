//! The process's resident memory, for benchmarks (Linux; `None`/`false` elsewhere).

/// Resets the resident-set high-water mark (Linux: writing 5 to `/proc/self/clear_refs`);
/// `false` where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`) in MiB.
pub fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
