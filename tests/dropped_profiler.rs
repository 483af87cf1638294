//! A `Profiler` over an arena (not the global allocator) that is dropped,
//! with its arena, and a new one made at the same address over a new
//! arena. Nothing of the first may reach the second: no entry of its live
//! sampled blocks mistaken for one of the new arena's, and no sampled block
//! of the dead arena handed out. A `Profiler` over an arena that moves
//! between allocating its blocks and freeing them, and again before it is
//! dropped. And an arena reset once the program has freed every block.
//! (This test binary's global allocator is the system's, so the arenas'
//! `Profiler`s are the only ones that sample; heapprof's spare pools keep
//! no block of an allocator with state, which an arena is.)

use heapprof_testkit::arena::{bump, map_region};
use heapprof_testkit::child::{is_child, run_child};

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

    /// Starts handing out its mapping from the beginning again: for a
    /// program that has freed every block (a per-request arena).
    fn reset(&self) {
        assert!(self.page_aligned.lock().unwrap().is_empty(), "blocks live");
        self.next.store(0, SeqCst);
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
    assert!(
        arena.page_aligned.lock().unwrap().is_empty(),
        "sampled blocks freed by the program and kept by heapprof"
    );
    drop(Box::new(profiler));
}

/// A program that frees every block of an arena and then resets it (a
/// per-request arena) gets no block twice: heapprof keeps none of the
/// arena's freed sampled blocks for later samples, which would lie in
/// memory the arena hands out again. In a child process, whose spare pools
/// no other test's allocator has used.
#[test]
fn an_arena_reset_once_all_is_freed_hands_out_no_block_twice() {
    if !is_child() {
        let (stdout, _) = run_child(
            "an_arena_reset_once_all_is_freed_hands_out_no_block_twice",
            &[],
        );
        assert!(stdout.contains("3 rounds"), "{stdout}");
        return;
    }
    // Page-aligned samples, which the spare pools keep for stateless
    // allocators.
    heapprof::set_sample_rate(64 * 1024);
    let profiler = heapprof::Profiler::wrap(Arena::new());
    let layout = Layout::from_size_align(1024, 8).unwrap();
    for round in 0..3 {
        // SAFETY: a non-zero layout.
        let mut blocks: Vec<usize> = (0..20_000)
            .map(|_| unsafe { profiler.alloc(layout) } as usize)
            .collect();
        blocks.sort_unstable();
        let overlapping = blocks.windows(2).filter(|w| w[0] + 1024 > w[1]).count();
        assert_eq!(overlapping, 0, "round {round}: live blocks overlap");
        for &b in &blocks {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { profiler.dealloc(b as *mut u8, layout) };
        }
        profiler.inner().reset();
    }
    assert!(
        heapprof::snapshot().alloc_objects_in("an_arena_reset_once_all_is_freed") > 0,
        "the arena's profiler sampled"
    );
    println!("3 rounds");
}
