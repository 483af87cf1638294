//! heapprof's own tables when the inner allocator has no memory for them.
//!
//! A sampled allocation may need memory of heapprof's own: a new bucket, a
//! bigger sampled-address set, the peak copy. If the inner allocator
//! refuses it, heapprof must not abort a program that handles its own
//! allocation failures, and what it reports must stay true: the sample
//! still counts as allocated (the `alloc_*` estimates stay unbiased), a
//! block the set could not hold counts as freed at once (never as live
//! for good), and the program's block is one it can free with its own
//! layout.
//!
//! The test's inner allocator refuses, while the test says so, every
//! request except the program's own blocks, whose size no table of
//! heapprof's asks for (an odd size; heapprof's tables hold 8-byte words).
//! Without the fallible growth the program aborts.
//!
//! No harness: the test's thread must be the only one allocating while
//! requests are refused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The size of every block the program allocates while heapprof's
/// requests are refused.
const BLOCK: usize = 1009;
/// The same, for the profile's signed values.
const BLOCK_BYTES: i64 = BLOCK as i64;
const DEPTHS: usize = 100;
const PER_DEPTH: usize = 50;

static REFUSING: AtomicBool = AtomicBool::new(false);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

struct Refusing;

impl Refusing {
    fn refuses(&self, size: usize) -> bool {
        let refuse = REFUSING.load(Relaxed) && size != BLOCK;
        if refuse {
            REFUSED.fetch_add(1, Relaxed);
        }
        refuse
    }
}

// SAFETY: forwards to System with the caller's arguments, or returns null,
// which every allocation method may do.
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.refuses(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Refusing> = heapprof::Profiler::wrap(Refusing);

/// Allocates one block `depth` frames below the caller, so that every
/// depth is a site of its own.
#[inline(never)]
#[allow(clippy::vec_box)] // each block must be an allocation of its own
fn nest(depth: usize, out: &mut Vec<Box<[u8; BLOCK]>>) {
    if depth == 0 {
        out.push(black_box(Box::new([7; BLOCK])));
    } else {
        nest(black_box(depth - 1), out);
    }
    // Keeps the call from becoming a jump, which would merge the depths.
    black_box(depth);
}

fn totals(s: &heapprof::Snapshot) -> (i64, i64, i64) {
    s.sites().iter().fold((0, 0, 0), |(a, o, i), site| {
        (
            a + site.alloc_bytes,
            o + site.alloc_objects,
            i + site.inuse_bytes,
        )
    })
}

fn main() {
    // Rate 1: every block is a sample, with weight 1, so the expected
    // values below are exact.
    heapprof::set_sample_rate(1);
    // Room in the set for some of the blocks below, but not all: freed
    // entries leave their room behind. Those blocks take the live estimate
    // past 1 MiB, the first peak (these 32 KiB stay below it), and its copy
    // finds no memory either.
    drop(black_box(
        (0..2000).map(|_| Box::new(0u128)).collect::<Vec<_>>(),
    ));
    let mut blocks: Vec<Box<[u8; BLOCK]>> = Vec::with_capacity(DEPTHS * PER_DEPTH);
    let before = heapprof::snapshot();

    REFUSING.store(true, Relaxed);
    for depth in 0..DEPTHS {
        for _ in 0..PER_DEPTH {
            nest(depth, &mut blocks);
        }
    }
    REFUSING.store(false, Relaxed);

    let refused = REFUSED.load(Relaxed);
    assert!(
        refused > 0,
        "heapprof never asked for memory: the test tests nothing"
    );
    assert!(blocks.iter().all(|b| b.iter().all(|&x| x == 7)));
    let n = (DEPTHS * PER_DEPTH) as i64;
    let held = heapprof::snapshot().delta(&before);
    let (alloc_bytes, alloc_objects, inuse_bytes) = totals(&held);
    // Every block counts as allocated, whether its site got a bucket (or
    // the overflow bucket) and whether the set could hold it.
    assert_eq!(alloc_objects, n, "{held}");
    assert_eq!(alloc_bytes, n * BLOCK_BYTES, "{held}");
    // Some blocks found no room in the set: they count as freed already.
    // Were none of them missing, the set never ran out and the test would
    // not have reached that path.
    assert!(
        inuse_bytes > 0 && inuse_bytes < n * BLOCK_BYTES,
        "inuse {inuse_bytes} of {} allocated\n{held}",
        n * BLOCK_BYTES
    );

    // Freeing them all leaves nothing live: no block the set missed stays
    // "in use" for good, and each goes back with the layout it came with.
    blocks.clear();
    let after = heapprof::snapshot().delta(&before);
    let (_, _, inuse_after) = totals(&after);
    assert_eq!(inuse_after, 0, "{after}");

    // With memory back, new sites get buckets of their own again.
    let mut again = Vec::with_capacity(1);
    nest(DEPTHS + 3, &mut again);
    let later = heapprof::snapshot().delta(&before);
    assert_eq!(
        later.inuse_bytes_in("tables_out_of_memory::nest"),
        BLOCK_BYTES,
        "{later}"
    );
    drop(again);
    println!(
        "ok: {refused} of heapprof's requests refused; {} of {} bytes still counted live while refused",
        inuse_bytes,
        n * BLOCK_BYTES
    );
}
