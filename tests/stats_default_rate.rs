//! Estimates at the default rate (512 KiB), with tolerances from the
//! sampling math: a site holding B bytes has relative standard error
//! 1/sqrt(B/R).

use heapprof_testkit::check::assert_estimate;
use heapprof_testkit::profile::{ALLOC_OBJECTS, ALLOC_SPACE, INUSE_SPACE, cum, take_profile};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const RATE: usize = 512 * 1024;

#[inline(never)]
#[allow(clippy::vec_box)] // one heap block per item is the point
fn hold_small_blocks() -> Vec<Box<[u8; 1024]>> {
    std::hint::black_box((0..256 * 1024).map(|_| Box::new([7u8; 1024])).collect())
}

#[inline(never)]
fn hold_then_free() -> Vec<Vec<u8>> {
    std::hint::black_box(
        (0..64 * 1024)
            .map(|i| vec![1u8; 512 + (i % 7) * 256])
            .collect(),
    )
}

#[test]
fn default_rate_estimates_are_within_the_poisson_bound() {
    assert_eq!(heapprof::sample_rate(), RATE, "the default rate is 512 KiB");
    heapprof::set_seed(2024);
    let held = hold_small_blocks(); // 256 MiB + the 2 MiB outer Vec
    let freed = hold_then_free();
    let freed_bytes: usize = freed.iter().map(|v| v.len()).sum();
    drop(freed);

    let p = take_profile();
    let truth = 256 * 1024 * 1024 + 256 * 1024 * 8;
    // 5 standard errors: 5 / sqrt(258 MiB / 512 KiB) = 22 %.
    assert_estimate(
        "hold_small_blocks inuse_space",
        cum(&p, "hold_small_blocks", INUSE_SPACE),
        truth,
        RATE,
        5.0,
    );
    assert_estimate(
        "hold_small_blocks alloc_objects",
        cum(&p, "hold_small_blocks", ALLOC_OBJECTS),
        256 * 1024 + 1,
        RATE / 1024,
        5.0,
    );
    assert_estimate(
        "hold_then_free alloc_space",
        cum(&p, "hold_then_free", ALLOC_SPACE),
        freed_bytes + 64 * 1024 * 24,
        RATE,
        5.0,
    );
    assert_eq!(
        cum(&p, "hold_then_free", INUSE_SPACE),
        0,
        "everything hold_then_free made was freed"
    );

    // The in-process view of the same table, and a delta scoped to code
    // run after `before`: the same bounds.
    let before = heapprof::snapshot();
    assert_estimate(
        "snapshot: inuse_bytes_in(hold_small_blocks)",
        before.inuse_bytes_in("hold_small_blocks"),
        truth,
        RATE,
        5.0,
    );
    let more = hold_then_free(); // kept this time
    let more_bytes: usize = more.iter().map(|v| v.len()).sum();
    let grown = heapprof::snapshot().delta(&before);
    assert_estimate(
        "delta: inuse_bytes_in(hold_then_free)",
        grown.inuse_bytes_in("hold_then_free"),
        more_bytes + 64 * 1024 * 24,
        RATE,
        5.0,
    );
    assert_eq!(
        grown.alloc_bytes_in("hold_small_blocks"),
        0,
        "nothing allocated there in between"
    );
    drop((held, more));
}
