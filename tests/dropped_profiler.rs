//! A `Profiler` over an arena (not the global allocator) that is dropped,
//! with its arena, and a new one made at the same address over a new
//! arena. Nothing of the first may reach the second: no spare sampled block
//! of the dead arena handed out, no entry of its live sampled blocks
//! mistaken for one of the new arena's. (This test binary's global
//! allocator is the system's, so the arena's `Profiler` is the first to
//! sample and claims heapprof's spare pools; the tests take turns, and
//! each one's `Profiler` gives the pools back when it is dropped.) And a
//! `Profiler` over an arena that moves between allocating its blocks and
//! freeing them, and again before it is dropped.

use heapprof_testkit::arena::{bump, map_region};

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

const ARENA_BYTES: usize = 256 << 20;
const PAGE: usize = 4096;

/// A bump arena over its own mapping, made inaccessible when dropped (but
/// kept reserved, so that the next arena lies elsewhere and a block of the
/// dead one is told apart). Counts the frees of blocks that are not its
/// own.
struct Arena {
    base: usize,
    next: AtomicUsize,
    foreign_frees: AtomicUsize,
    /// Blocks handed out page-aligned (heapprof's sampled blocks), and the
    /// frees of any of them with a smaller alignment than they were
    /// allocated with (heapprof took a sampled block for a plain one);
    /// shared, so that a test can look after the arena is gone.
    page_aligned: Arc<Mutex<HashSet<usize>>>,
    wrong_layout_frees: Arc<AtomicUsize>,
}

impl Arena {
    fn new() -> Arena {
        Arena {
            base: map_region(ARENA_BYTES),
            next: AtomicUsize::new(0),
            foreign_frees: AtomicUsize::new(0),
            page_aligned: Arc::default(),
            wrong_layout_frees: Arc::default(),
        }
    }

    fn owns(&self, p: *const u8) -> bool {
        (self.base..self.base + ARENA_BYTES).contains(&(p as usize))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the arena's own mapping, used by nothing after this.
        unsafe { libc::mprotect(self.base as *mut libc::c_void, ARENA_BYTES, libc::PROT_NONE) };
    }
}

// SAFETY: each block is a fresh, aligned, in-bounds piece of the mapping,
// handed out once; null when the mapping is used up.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = bump(self.base, ARENA_BYTES, &self.next, layout);
        if layout.align() >= PAGE && !p.is_null() {
            self.page_aligned.lock().unwrap().insert(p as usize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            self.foreign_frees.fetch_add(1, SeqCst);
        }
        let was_aligned = self.page_aligned.lock().unwrap().remove(&(ptr as usize));
        if was_aligned && layout.align() < PAGE {
            self.wrong_layout_frees.fetch_add(1, SeqCst);
        }
    }
}

/// One slot, so that the second profiler lives where the first did.
struct Slot(std::cell::UnsafeCell<MaybeUninit<heapprof::Profiler<Arena>>>);
// SAFETY: used by the one test thread only.
unsafe impl Sync for Slot {}
static SLOT: Slot = Slot(std::cell::UnsafeCell::new(MaybeUninit::uninit()));

/// Allocates `n` blocks of 1 KiB through `p`, frees every other one, and
/// returns the rest (some of them sampled).
fn churn(p: &heapprof::Profiler<Arena>, n: usize) -> Vec<*mut u8> {
    let layout = Layout::from_size_align(1024, 8).unwrap();
    let mut kept = Vec::new();
    for i in 0..n {
        // SAFETY: a non-zero layout; each block is freed once, with it.
        unsafe {
            let b = p.alloc(layout);
            assert!(!b.is_null());
            assert!(
                p.inner().owns(b),
                "block {i}: {b:?} is not from this profiler's arena"
            );
            if i % 2 == 0 {
                p.dealloc(b, layout);
            } else {
                kept.push(b);
            }
        }
    }
    kept
}

/// Held by each test: one `Profiler` over an arena at a time claims the
/// spare pools.
static TURN: Mutex<()> = Mutex::new(());

#[test]
fn a_dropped_profiler_leaves_nothing_to_the_next() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Page-aligned samples, kept in the spare pools when freed.
    heapprof::set_sample_rate(64 * 1024);
    heapprof::set_seed(7);
    let slot = SLOT.0.get();
    // SAFETY: the slot is written before use and dropped once.
    let first = unsafe { (*slot).write(heapprof::Profiler::wrap(Arena::new())) };
    let kept = churn(first, 50_000);
    assert!(kept.len() == 25_000);
    assert!(
        heapprof::snapshot().alloc_objects_in("dropped_profiler::churn") > 0,
        "the arena's profiler sampled"
    );
    // The arena goes, with the blocks still live in it.
    // SAFETY: written above, not used after this.
    unsafe { (*slot).assume_init_drop() };

    // SAFETY: as above.
    let second = unsafe { (*slot).write(heapprof::Profiler::wrap(Arena::new())) };
    let kept = churn(second, 50_000);
    // Free the rest too: each must go back to its own arena.
    let layout = Layout::from_size_align(1024, 8).unwrap();
    for b in kept {
        // SAFETY: allocated by `second` with `layout`, freed once.
        unsafe { second.dealloc(b, layout) };
    }
    assert_eq!(second.inner().foreign_frees.load(SeqCst), 0);
    // SAFETY: as above.
    unsafe { (*slot).assume_init_drop() };
}

/// A `Profiler` over an arena that moves (into a box, and out of it again)
/// between allocating its blocks and freeing them: its sampled blocks are
/// still its own, freed with the layout they were allocated with.
#[test]
fn a_profiler_that_moves_keeps_its_blocks() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    heapprof::set_sample_rate(64 * 1024);
    let layout = Layout::from_size_align(1024, 8).unwrap();
    let free_all = |p: &heapprof::Profiler<Arena>, kept: Vec<*mut u8>| {
        for b in kept {
            // SAFETY: allocated by `p` (before it moved) with `layout`,
            // freed once.
            unsafe { p.dealloc(b, layout) };
        }
    };
    let profiler = heapprof::Profiler::wrap(Arena::new());
    let kept = churn(&profiler, 20_000);
    let boxed = Box::new(profiler);
    free_all(&boxed, kept);
    let kept = churn(&boxed, 20_000);
    let profiler = *boxed;
    free_all(&profiler, kept);
    let arena = profiler.inner();
    assert!(
        heapprof::snapshot().alloc_objects_in("dropped_profiler::churn") > 0,
        "the arena's profiler sampled"
    );
    assert_eq!(arena.wrong_layout_frees.load(SeqCst), 0);
    assert_eq!(arena.foreign_frees.load(SeqCst), 0);
    let (page_aligned, wrong) = (arena.page_aligned.clone(), arena.wrong_layout_frees.clone());
    assert!(
        !page_aligned.lock().unwrap().is_empty(),
        "the spare pools kept some of its sampled blocks"
    );
    // Moved once more, then dropped: the spare blocks kept for it go back
    // to its arena, each with its own layout.
    drop(Box::new(profiler));
    assert_eq!(page_aligned.lock().unwrap().len(), 0, "spare blocks kept");
    assert_eq!(wrong.load(SeqCst), 0);
}
