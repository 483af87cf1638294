//! Writing a profile leaves the program's counts as they were (what it
//! keeps is heapprof's, in `Stats::profiler_bytes`), and does not keep the
//! binary's parsed debug info.

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[test]
fn what_a_profile_write_keeps_is_counted_as_the_profilers() {
    // Every allocation sampled: many sites' stacks to symbolize.
    heapprof::set_sample_rate(1);
    let keep: Vec<Vec<u8>> = (0..20_000).map(|i| vec![0u8; 64 + i % 100]).collect();
    let kept_text: Vec<String> = (0..2_000).map(|i| format!("{i:>40}")).collect();

    let before = heapprof::stats();
    heapprof::write_profile(std::io::sink()).unwrap();
    let after = heapprof::stats();

    // The program allocated and freed nothing meanwhile, so its counts are
    // unchanged, whatever the write allocated and kept (the per-address
    // symbol cache alone is about 40 KiB here).
    assert_eq!(
        (
            after.allocations,
            after.allocated_bytes,
            after.deallocations,
            after.freed_bytes
        ),
        (
            before.allocations,
            before.allocated_bytes,
            before.deallocations,
            before.freed_bytes
        ),
        "the write changed the program's counts (profiler_bytes {} -> {})",
        before.profiler_bytes,
        after.profiler_bytes
    );
    assert!(after.profiler_allocations > before.profiler_allocations);
    assert!(after.profiler_bytes > before.profiler_bytes);

    // backtrace's parsed debug info (about 40 MiB for a test binary like
    // this one) is given back after the lookup; only the per-address cache
    // stays.
    let profiler_change = after.profiler_bytes as i64 - before.profiler_bytes as i64;
    assert!(
        profiler_change < 1 << 20,
        "the write kept {profiler_change} bytes: the debug info was not released"
    );
    drop((keep, kept_text));
}
