//! This process's memory as the kernel reports it.

/// A size from `/proc/self/status` (`"VmRSS:"`, `"VmHWM:"`, `"RssAnon:"`,
/// …), in bytes.
pub fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    kib * 1024
}

/// The resident size (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}
