//! What heapprof does inside its own slow paths must not be sampled: a
//! sample taken there re-enters the profiler while it holds a lock.
//!
//! The case here: the free of a sampled, page-aligned block into an empty
//! spare pool (`spare::keep`). Without the reentrancy guard around it, the
//! pool's `Vec` grows, that allocation is sampled, and the sample asks the
//! same pool (same size class) for a block, relocking the lock it holds. It runs in a child process, so that the
//! pool has never been used, with `HEAPPROF_SAMPLE_RATE=0` so that nothing
//! is sampled before the test decides.

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::{ALLOC_OBJECTS, INUSE_OBJECTS, cum, take_profile};
use heapprof_testkit::watchdog::watchdog;

use std::alloc::{Layout, alloc, dealloc};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The smallest rate at which sampled blocks are page aligned and kept in
/// the spare pools when freed.
const PAGE_ALIGNED_RATE: usize = 64 * 1024;

#[inline(never)]
fn sampled_block(layout: Layout) -> *mut u8 {
    // SAFETY: non-zero size.
    unsafe { alloc(layout) }
}

#[test]
fn child_frees_a_sampled_block_into_an_empty_pool() {
    if !is_child() {
        return;
    }
    let _watchdog = watchdog("freeing a sampled block", Duration::from_secs(60));
    // `set_sample_rate` restarts the calling thread's countdown at zero, so
    // once its generator is seeded (by any allocation at a non-zero rate),
    // the next allocation on this thread is sampled. This is what makes
    // the test deterministic.
    heapprof::set_sample_rate(PAGE_ALIGNED_RATE);
    drop(std::hint::black_box(Box::new(0u64)));
    heapprof::set_sample_rate(PAGE_ALIGNED_RATE);
    let layout = Layout::from_size_align(32, 8).unwrap();
    let p = sampled_block(layout);
    assert!(!p.is_null());
    assert_eq!(
        p as usize % 4096,
        0,
        "precondition: the block is sampled, hence page aligned"
    );
    // The same again for the free: the first allocation inside it (the
    // empty pool's Vec, 4 × 8 = 32 bytes, the block's own size class)
    // would be sampled if the guard were not held.
    heapprof::set_sample_rate(PAGE_ALIGNED_RATE);
    // SAFETY: allocated above with this layout.
    unsafe { dealloc(p, layout) };
    println!("freed the sampled block");

    heapprof::set_sample_rate(0);
    let prof = take_profile();
    assert_sane_values(&prof);
    let allocated = cum(&prof, "sampled_block", ALLOC_OBJECTS);
    let in_use = cum(&prof, "sampled_block", INUSE_OBJECTS);
    println!("sampled_block: alloc_objects={allocated} inuse_objects={in_use}");
    assert!(allocated >= 1, "the block was recorded");
    assert_eq!(in_use, 0, "and its free was credited");
    println!("CHILD-OK");
}

#[test]
fn freeing_a_sampled_block_into_an_empty_spare_pool() {
    let (stdout, _) = run_child(
        "child_frees_a_sampled_block_into_an_empty_pool",
        &[("HEAPPROF_SAMPLE_RATE", "0")],
    );
    println!("{stdout}");
    assert!(
        stdout.contains("CHILD-OK"),
        "the child did not finish:\n{stdout}"
    );
}
