//! What the first named profile leaves resident. A cold symbol lookup
//! parses tens of MiB of debug info and frees it; heapprof hands the freed
//! pages back to the system (`malloc_trim` on glibc), so the program's
//! resident heap does not stay that much higher after its first profile.
//!
//! Runs in a child process: a lookup is cold once per process, and the
//! child's heap holds nothing else that a test beside it allocates.

use heapprof_testkit::child::{is_child, printed_number, run_child};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// What a cold lookup of this test binary's frames allocates at least, so
/// that the check below has something to show (the debug info of a test
/// binary is tens of MiB).
const LOOKUP_BYTES_AT_LEAST: i64 = 8 << 20;

/// How much more anonymous memory may stay resident after the profile
/// than heapprof says it keeps (the symbol cache, the tables): pages that
/// hold a few live blocks among freed ones cannot be handed back, a few
/// MiB. Kept, the freed debug info of this binary would be about 40 MiB.
const KEPT_BEYOND_PROFILER_BYTES_AT_MOST: i64 = 16 << 20;

fn status_bytes(key: &str) -> i64 {
    heapprof_testkit::process::status_bytes(key) as i64
}

#[inline(never)]
fn keep_some_blocks() -> Vec<Vec<u8>> {
    (0..64).map(|i| vec![i as u8; 64 * 1024]).collect()
}

fn child_first_profile() {
    let kept = keep_some_blocks();
    let stats = heapprof::stats();
    let anon = status_bytes("RssAnon:");
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let after = heapprof::stats();
    println!(
        "lookup_allocated={} anon_growth={} profiler_growth={}",
        after.profiler_allocated_bytes - stats.profiler_allocated_bytes,
        status_bytes("RssAnon:") - anon,
        after.profiler_bytes as i64 - stats.profiler_bytes as i64,
    );
    drop(kept);
}

#[test]
fn the_first_profile_gives_back_what_its_lookup_freed() {
    if is_child() {
        return child_first_profile();
    }
    let (stdout, _) = run_child(
        "the_first_profile_gives_back_what_its_lookup_freed",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    let allocated = printed_number(&stdout, "lookup_allocated=");
    let growth = printed_number(&stdout, "anon_growth=");
    let profiler = printed_number(&stdout, "profiler_growth=");
    println!("{stdout}");
    assert!(
        allocated >= LOOKUP_BYTES_AT_LEAST,
        "the lookup allocated only {allocated} bytes: nothing to give back"
    );
    assert!(
        growth <= profiler + KEPT_BEYOND_PROFILER_BYTES_AT_MOST,
        "{growth} bytes stayed resident after the first profile, heapprof keeps {profiler}"
    );
}
