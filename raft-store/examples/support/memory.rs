//! Resident memory of this process, for the examples that measure it (Linux `/proc`).

/// Resident memory now and at its peak since the last reset, in MiB (Linux).
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Make the next peak reading start from the current resident memory.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
