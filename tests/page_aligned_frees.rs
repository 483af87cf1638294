//! The free path's filters, on the frees they find hardest: blocks at
//! page-aligned addresses. Sampled blocks are page aligned, so every such
//! free passes the first test (`ptr & 0xFFF == 0`); jemalloc hands out
//! page-aligned addresses all the time, and here the blocks ask for page
//! alignment outright. Most of these frees are turned away by the second
//! filter before any lock or call; the sampled ones among them must still
//! be found and credited to their own site, and nothing else may be.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const BIG: usize = 16 << 20;
const SMALL: usize = 64;
const N: usize = 5000;

fn small() -> Layout {
    Layout::from_size_align(SMALL, 4096).unwrap()
}

#[inline(never)]
fn hold_sixteen_mib_beside_the_page_aligned_churn() -> *mut u8 {
    // SAFETY: a non-zero size.
    black_box(unsafe { ALLOC.alloc(Layout::from_size_align(BIG, 8).unwrap()) })
}

#[inline(never)]
fn churn_page_aligned_blocks(blocks: &mut Vec<*mut u8>) {
    for _ in 0..N {
        // SAFETY: a non-zero size.
        blocks.push(black_box(unsafe { ALLOC.alloc(small()) }));
    }
}

#[test]
fn sampled_frees_among_page_aligned_ones_are_credited_and_no_others() {
    // The lowest rate at which sampled blocks are page aligned (so the mask
    // test is in force): N × 64 B = 5 × the rate, about 5 samples expected
    // among the small blocks. The seed fixes which.
    heapprof::set_sample_rate(64 * 1024);
    heapprof::set_seed(11);

    let big = hold_sixteen_mib_beside_the_page_aligned_churn();
    // 16 MiB at 64 KiB is sampled with probability 1 - e^-256: weight 1.
    let held = |s: &heapprof::Snapshot| s.inuse_bytes_in("hold_sixteen_mib_beside");
    assert_eq!(held(&heapprof::snapshot()), BIG as i64);

    let mut blocks = Vec::with_capacity(N);
    let before = heapprof::stats();
    for round in 0..3 {
        churn_page_aligned_blocks(&mut blocks);
        assert!(
            blocks
                .iter()
                .all(|&p| !p.is_null() && (p as usize).is_multiple_of(4096))
        );
        for p in blocks.drain(..) {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { ALLOC.dealloc(p, small()) };
        }
        let snap = heapprof::snapshot();
        let churn = |f: fn(&heapprof::Snapshot, &str) -> i64| f(&snap, "churn_page_aligned_blocks");
        assert!(
            churn(heapprof::Snapshot::alloc_bytes_in) > 0,
            "round {round}: no small block was sampled; the test would prove nothing"
        );
        assert_eq!(
            churn(heapprof::Snapshot::inuse_bytes_in),
            0,
            "round {round}: every sampled small block was freed, so its site holds nothing"
        );
        assert_eq!(
            held(&snap),
            BIG as i64,
            "round {round}: no small block's free was credited to the big block's site"
        );
    }
    let after = heapprof::stats();
    assert!(
        after.deallocations - before.deallocations >= 3 * N as u64,
        "every free counted: {} then {}",
        before.deallocations,
        after.deallocations
    );

    // SAFETY: allocated above with this layout, freed once.
    unsafe { ALLOC.dealloc(big, Layout::from_size_align(BIG, 8).unwrap()) };
    assert_eq!(
        held(&heapprof::snapshot()),
        0,
        "the big block's free was credited"
    );
}
