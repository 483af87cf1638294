//! `Stats::profiler_bytes` owns up to everything heapprof keeps, including
//! what writing a profile leaves behind, and writing a profile does not
//! leave the binary's parsed debug info in the program's heap.

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The program's own share of the live heap.
fn program_bytes(s: &heapprof::Stats) -> i64 {
    s.live_bytes() as i64 - s.profiler_bytes as i64
}

#[test]
fn what_a_profile_write_keeps_is_counted_as_the_profilers() {
    // Every allocation sampled: many sites' stacks to symbolize.
    heapprof::set_sample_rate(1);
    let keep: Vec<Vec<u8>> = (0..20_000).map(|i| vec![0u8; 64 + i % 100]).collect();
    let kept_text: Vec<String> = (0..2_000).map(|i| format!("{i:>40}")).collect();

    let before = heapprof::stats();
    heapprof::write_profile(Vec::new()).unwrap();
    let after = heapprof::stats();

    // The program allocated and freed nothing meanwhile, so its share of
    // the live heap is unchanged, whatever the write kept. A few KiB are
    // allowed for one-time state outside the measured part (the first
    // write here keeps 256 bytes that are not counted); the per-address
    // symbol cache alone is about 40 KiB here.
    let program_change = program_bytes(&after) - program_bytes(&before);
    assert!(
        program_change.abs() <= 4096,
        "the write kept {program_change} bytes not counted in profiler_bytes \
         (profiler_bytes {} -> {})",
        before.profiler_bytes,
        after.profiler_bytes
    );

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
