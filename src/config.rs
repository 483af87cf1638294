//! Settings read from the environment, once, on the profiler's first slow
//! path (usually before `main`, during the runtime's own start-up
//! allocations).
//!
//! The environment is read with the reentrancy guard held (see `guard.rs`),
//! so the `OsString`s `std::env` allocates go straight to the inner
//! allocator and never through the sampler. A value that does not parse is
//! reported in one line on stderr, naming the variable and the default that
//! is used instead; the program goes on.

use std::sync::OnceLock;

/// Mean bytes between samples when `HEAPPROF_SAMPLE_RATE` is not set: the
/// same 512 KiB as Go's `runtime.MemProfileRate` and tcmalloc.
pub(crate) const DEFAULT_SAMPLE_RATE: usize = 512 * 1024;

/// How many distinct allocation sites the bucket table holds before new
/// sites go to the overflow bucket (`HEAPPROF_MAX_SITES`).
pub(crate) const DEFAULT_MAX_SITES: usize = 16 * 1024;

pub(crate) struct Config {
    pub sample_rate: usize,
    pub max_sites: usize,
    /// Seed for the sampler's generators; `None` means seed from the clock
    /// and addresses (`HEAPPROF_SEED`).
    pub seed: Option<u64>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The configuration, read from the environment on first use.
pub(crate) fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let _busy = crate::guard::Busy::enter();
        Config {
            sample_rate: read("HEAPPROF_SAMPLE_RATE", DEFAULT_SAMPLE_RATE, parse_bytes),
            max_sites: read("HEAPPROF_MAX_SITES", DEFAULT_MAX_SITES, |s| {
                parse_bytes(s).filter(|&n| n > 0)
            }),
            seed: std::env::var("HEAPPROF_SEED")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    })
}

fn read(name: &str, default: usize, parse: fn(&str) -> Option<usize>) -> usize {
    let Some(raw) = std::env::var_os(name) else {
        return default;
    };
    match raw.to_str().and_then(parse) {
        Some(value) => value,
        None => {
            eprintln!(
                "heapprof: ignoring {name}={raw:?}: expected a byte count such as 524288, 512KiB, 2MiB or 64k; using the default {default}"
            );
            default
        }
    }
}

/// Parses a byte count: a decimal number with an optional unit. Units are
/// binary and case-insensitive: `k`, `kb`, `kib` = 1024; `m`, `mb`, `mib` =
/// 1024²; `g`, `gb`, `gib` = 1024³; `b` = 1. `None` for anything else:
/// empty text, a sign, a fraction, an unknown unit, or overflow.
pub(crate) fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let number: usize = digits.parse().ok()?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn accepts_plain_numbers_and_binary_units() {
        assert_eq!(parse_bytes("524288"), Some(524288));
        assert_eq!(parse_bytes("512KiB"), Some(512 * 1024));
        assert_eq!(parse_bytes("2MiB"), Some(2 << 20));
        assert_eq!(parse_bytes("64k"), Some(65536));
        assert_eq!(parse_bytes(" 1 GB "), Some(1 << 30));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("1"), Some(1));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "   ",
            "abc",
            "-1",
            "+5",
            "1.5MiB",
            "12 parsecs",
            "5TiB",
            "99999999999999999999999",
            "18446744073709551615GiB",
            "KiB",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad:?} must be rejected");
        }
    }
}
