//! A heap-usage regression test you can copy into your own crate.
//!
//! At sample rate 1 heapprof records every allocation, so the numbers are
//! exact: this test fails the day `parse_config` starts keeping more than
//! it should. Give such tests their own test file (one binary), or take
//! the snapshots around the code under test and select by function name,
//! as here, so that other tests running in parallel threads do not count.

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The code under test: parses "key=value" lines into owned pairs.
#[inline(never)]
fn parse_config(text: &str) -> Vec<(String, String)> {
    let pairs = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    std::hint::black_box(pairs)
}

// The test's name does not start with the function's: names are matched
// as substrings, and `regression_example::parse_config` would match
// `regression_example::parse_config_keeps_…`, this test, too.
#[test]
fn keeps_only_what_parse_config_returns() {
    // Every allocation recorded while this lives: exact numbers. Other
    // tests of the binary get their rate back once no test holds one.
    let exact = heapprof::exact_sampling();

    let before = heapprof::snapshot();
    let config = parse_config("a = 1\nbb = 22\nccc = 333\n");
    let after = heapprof::snapshot().delta(&before);
    drop(exact);

    // 6 strings of 1+1+2+2+3+3 bytes, plus the Vec of 3 (String, String)
    // pairs (3 × 48 bytes, or 4 × 48 if it had to grow).
    let strings = 12;
    // The name with its path: a bare `parse_config` would also match this
    // test, and count what it allocates itself.
    let held = after.inuse_bytes_in("regression_example::parse_config");
    assert!(
        held == strings + 3 * 48 || held == strings + 4 * 48,
        "{after}"
    );
    after.assert_inuse_at_most("regression_example::parse_config", 1024);
    assert_eq!(config.len(), 3);
}
