//! Growing and shrinking blocks by `realloc`: sampled blocks are resized by
//! the inner allocator where it can (so a 64 MiB buffer grown a MiB at a
//! time is not copied 64 times), and the accounting stays right: what a
//! growing buffer holds is charged to the function that grew it, the
//! frees of resized blocks are credited, and nothing stays "in use" after
//! the buffers are gone. (`tests/stats_exact.rs` checks the exact counters
//! through reallocs.)

use heapprof_testkit::check::assert_estimate;
use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::{live_sampled_blocks, take_profile};
use heapprof_testkit::watchdog::watchdog;
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const MIB: usize = 1 << 20;

/// Grows one buffer to `total` bytes, `step` at a time, by `reserve_exact`:
/// a realloc per step.
#[inline(never)]
fn grow_by_steps(total: usize, step: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::new();
    while v.capacity() < total {
        v.reserve_exact(step);
        // Touch the new part, as a program filling it would.
        let cap = v.capacity();
        v.resize(cap, 1);
    }
    black_box(v)
}

/// Grows and shrinks many buffers of mixed sizes, small and large.
#[inline(never)]
fn churn_reallocs(rounds: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    for i in 0..rounds {
        let mut v: Vec<u8> = Vec::with_capacity(1 + i % 3000);
        for step in 0..(4 + i % 12) {
            v.reserve_exact(((i * 7919 + step * 104_729) % (20 * 1024)) + 1);
        }
        if i % 5 == 0 {
            v.shrink_to(i % 100);
        }
        if i % 3 == 0 {
            kept.push(v);
        }
    }
    black_box(kept)
}

#[test]
fn resized_blocks_stay_attributed_and_are_freed() {
    // Every allocation recorded: exact numbers.
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let big = grow_by_steps(64 * MIB, MIB);
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(
        grown.inuse_bytes_in("realloc_growth::grow_by_steps"),
        big.capacity() as i64,
        "{grown}"
    );
    assert_eq!(
        grown.inuse_objects_in("realloc_growth::grow_by_steps"),
        1,
        "{grown}"
    );
    drop(big);
    let after = heapprof::snapshot().delta(&before);
    assert_eq!(
        after.inuse_bytes_in("realloc_growth::grow_by_steps"),
        0,
        "{after}"
    );
}

#[test]
fn at_the_default_rate_resized_samples_are_freed_too() {
    // Runs in a child, at the default rate, alone in its process. The rate
    // comes from the environment: a rate set at run time makes every other
    // thread's next allocation end a countdown and be sampled, and the
    // test harness's main thread may make that one (a channel's waiting
    // context, kept for the thread's life) after the first count.
    if !is_child() {
        let (stdout, stderr) = run_child(
            "at_the_default_rate_resized_samples_are_freed_too",
            &[("HEAPPROF_SAMPLE_RATE", "524288")],
        );
        assert!(stdout.contains("CHILD-OK"), "{stdout}\n{stderr}");
        return;
    }
    let _watchdog = watchdog("realloc churn", std::time::Duration::from_secs(120));
    let before = heapprof::snapshot();
    let live_before = live_sampled_blocks(&take_profile());
    let kept = churn_reallocs(4_000);
    let held: usize = kept.iter().map(|v| v.capacity()).sum();
    let big = grow_by_steps(32 * MIB, MIB);
    let grown = heapprof::snapshot().delta(&before);
    // Large blocks are always sampled: the 32 MiB buffer is seen whole.
    assert_eq!(
        grown.inuse_bytes_in("realloc_growth::grow_by_steps"),
        big.capacity() as i64
    );
    let estimate = grown.inuse_bytes_in("realloc_growth::churn_reallocs");
    // Six standard errors: about 37 samples (a third of the buffers are
    // kept), few enough that the count's skew makes 5σ above fail 3e-6 of
    // runs; 6σ, 5e-8.
    assert_estimate("kept by churn_reallocs", estimate, held, 512 * 1024, 6.0);
    drop((kept, big));
    let after = heapprof::snapshot().delta(&before);
    assert_eq!(after.inuse_bytes_in("realloc_growth::"), 0, "{after}");
    // The snapshots made since `live_before` are the test's own blocks,
    // which the default rate may sample too: gone before the count.
    drop((grown, after));
    assert_eq!(live_sampled_blocks(&take_profile()), live_before);
    println!("CHILD-OK");
}
