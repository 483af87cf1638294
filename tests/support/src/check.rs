//! Assertions on a profile's values: sample invariants, estimates within
//! tolerance; the message of an assertion that fails; `stats()` as numbers
//! to compare.

use crate::profile::{ALLOC_OBJECTS, ALLOC_SPACE, INUSE_OBJECTS, INUSE_SPACE, stack_names};
use crate::proto::Profile;

/// The smallest tolerance [`assert_estimate`] grants, relative to the truth:
/// sites so large that their standard error is below it are exact but for
/// rounding.
pub const MIN_TOLERANCE: f64 = 0.005;

/// Asserts `estimate` is within `sigmas` standard errors of `truth`, where
/// the relative standard error of a site holding `truth` bytes sampled at
/// `rate` is 1/sqrt(truth/rate) (a Poisson count of samples), and never
/// tighter than [`MIN_TOLERANCE`].
pub fn assert_estimate(what: &str, estimate: i64, truth: usize, rate: usize, sigmas: f64) {
    let rel_se = 1.0 / ((truth as f64) / rate as f64).sqrt();
    let tolerance = (sigmas * rel_se).max(MIN_TOLERANCE);
    let rel = (estimate as f64 - truth as f64).abs() / truth as f64;
    assert!(
        rel <= tolerance,
        "{what}: estimate {estimate} vs truth {truth}: off by {:.1} %, tolerance {:.1} % ({sigmas} × {:.1} %)",
        rel * 100.0,
        tolerance * 100.0,
        rel_se * 100.0
    );
    println!(
        "{what}: estimate {estimate}, truth {truth}, off by {:.2} % (tolerance {:.1} %)",
        rel * 100.0,
        tolerance * 100.0
    );
}

/// Checks the invariants every sample of a heap profile must hold: four
/// values, none negative, and never more in use than was allocated.
pub fn assert_sane_values(p: &Profile) {
    for s in &p.sample {
        let v = &s.value;
        assert_eq!(v.len(), 4, "four values per sample: {v:?}");
        assert!(v.iter().all(|&x| x >= 0), "negative value: {v:?}");
        assert!(
            v[ALLOC_OBJECTS] >= v[INUSE_OBJECTS] && v[ALLOC_SPACE] >= v[INUSE_SPACE],
            "more in use than allocated: {v:?} at {:?}",
            stack_names(p, s)
        );
    }
}

/// The message of the panic `f` raises (a `String` or `&str` payload; empty
/// for any other), or `None` if `f` returns.
pub fn panic_message(f: impl FnOnce()) -> Option<String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .err()
        .map(|e| match e.downcast::<String>() {
            Ok(s) => *s,
            Err(e) => e
                .downcast_ref::<&str>()
                .map_or(String::new(), |s| s.to_string()),
        })
}

/// The program's counts from `heapprof::stats()` now: allocations, bytes
/// allocated, frees, bytes freed.
pub fn stats_counts() -> [u64; 4] {
    let s = heapprof::stats();
    [
        s.allocations,
        s.allocated_bytes,
        s.deallocations,
        s.freed_bytes,
    ]
}
