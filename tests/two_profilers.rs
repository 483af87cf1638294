//! Two `Profiler`s in one process: the global one over `System`, and a
//! second one over a bump arena, called directly. Sampled blocks freed by
//! one must never be handed out by the other (heapprof keeps freed sampled
//! blocks for later samples; see `src/spare.rs`): an arena block freed
//! with glibc's `free`, or a glibc block given out as arena memory, is
//! heap corruption.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const ARENA_BYTES: usize = 256 << 20;
static ARENA_BASE: AtomicUsize = AtomicUsize::new(0);
static ARENA_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Frees the arena got of blocks it never handed out.
static FOREIGN_FREES: AtomicUsize = AtomicUsize::new(0);

/// Hands out consecutive pieces of one big block and never reuses them.
struct Arena;

// SAFETY: every block returned lies inside the arena's own block, fits the
// layout (aligned up, then bumped past), and is never handed out twice.
// Out of room, it returns null.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = ARENA_BASE.load(Relaxed);
        let start = (base + ARENA_NEXT.load(Relaxed)).next_multiple_of(layout.align());
        if start + layout.size() > base + ARENA_BYTES {
            return std::ptr::null_mut();
        }
        ARENA_NEXT.store(start + layout.size() - base, Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        if !in_arena(ptr) {
            FOREIGN_FREES.fetch_add(1, Relaxed);
        }
    }
}

fn in_arena(ptr: *const u8) -> bool {
    let base = ARENA_BASE.load(Relaxed);
    (base..base + ARENA_BYTES).contains(&(ptr as usize))
}

static OVER_ARENA: heapprof::Profiler<Arena> = heapprof::Profiler::wrap(Arena);

#[test]
fn sampled_blocks_go_back_only_to_the_allocator_they_came_from() {
    let layout = Layout::from_size_align(ARENA_BYTES, 4096).unwrap();
    // SAFETY: a non-zero size; the block lives until the process exits.
    let arena = unsafe { System.alloc(layout) };
    assert!(!arena.is_null());
    ARENA_BASE.store(arena as usize, Relaxed);

    // 64 KiB: page-aligned samples, so freed ones are kept for reuse; a
    // 64 B block is then sampled about once per 1000 allocations, and
    // 200 000 of them make some 200 samples on each side.
    heapprof::set_seed(7);
    heapprof::set_sample_rate(64 * 1024);

    // The global profiler samples and frees some blocks: they are kept.
    let boxes: Vec<Box<[u8; 64]>> = (0..200_000).map(|_| Box::new([1; 64])).collect();
    drop(boxes);

    // The second profiler samples too, and must allocate from its arena.
    let small = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: a non-zero size.
    let blocks: Vec<*mut u8> = (0..200_000)
        .map(|_| unsafe { OVER_ARENA.alloc(small) })
        .collect();
    let foreign = blocks.iter().filter(|&&p| !in_arena(p)).count();
    for &p in blocks.iter().rev() {
        // SAFETY: allocated just above by this allocator with `small`.
        unsafe { OVER_ARENA.dealloc(p, small) };
    }

    // Then the global profiler samples again, and must not get arena blocks.
    let boxes: Vec<Box<[u8; 64]>> = (0..200_000).map(|_| Box::new([2; 64])).collect();
    let from_arena = boxes.iter().filter(|b| in_arena(b.as_ptr())).count();
    let foreign_frees = FOREIGN_FREES.load(Relaxed);
    if from_arena > 0 {
        // Freeing arena memory with glibc's free would crash the test
        // binary instead of failing the assertion below.
        std::mem::forget(boxes);
    }
    assert_eq!(
        (foreign, from_arena, foreign_frees),
        (0, 0, 0),
        "blocks the arena never made given out over it, arena blocks given out \
         over System, frees of foreign blocks into the arena"
    );
}
