//! heapprof's own memory when the inner allocator has none to give.
//!
//! A sampled allocation may need memory of heapprof's own: a new bucket, a
//! bigger sampled-address set, the peak copy, a page-aligned block, a slot
//! in the spare pool. If the inner allocator refuses it, heapprof must not
//! abort a program that handles its own allocation failures, and what it
//! reports must stay true: the sample still counts as allocated (the
//! `alloc_*` estimates stay unbiased), a block heapprof cannot track
//! counts as freed at once (never as live for good), and the program's
//! block is one it can free with its own layout.
//!
//! The test's inner allocator refuses, while the test says so, every
//! request except the program's own blocks, whose size no table of
//! heapprof's asks for (an odd size; heapprof's tables hold 8-byte words,
//! its page-aligned blocks come in power-of-two size classes), and, in one
//! phase, heapprof's page-aligned blocks. It also
//! writes each block's layout in a header before the block and counts the
//! frees that name another one. Without the fallible paths the program
//! aborts.
//!
//! No harness: the test's thread must be the only one allocating while
//! requests are refused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

/// The size of every block the program allocates while heapprof's
/// requests are refused.
const BLOCK: usize = 1009;
/// The same, for the profile's signed values.
const BLOCK_BYTES: i64 = BLOCK as i64;
/// Grown to `BLOCK` by a realloc.
const BEFORE_GROWTH: usize = 1000;
const DEPTHS: usize = 100;
const PER_DEPTH: usize = 200;
const BLOCKS: usize = DEPTHS * PER_DEPTH;
/// Blocks made by growing one of BEFORE_GROWTH bytes: one in 30 (few
/// enough that the blocks to grow stay below the first peak).
const GROW_EVERY: usize = 30;
const GROWING: usize = BLOCKS / GROW_EVERY;

/// What the inner allocator refuses: nothing, everything but the
/// program's blocks, or everything but those and page-aligned blocks.
static REFUSING: AtomicU8 = AtomicU8::new(NOTHING);
const NOTHING: u8 = 0;
const ALL_BUT_BLOCKS: u8 = 1;
const ALL_BUT_BLOCKS_AND_PAGES: u8 = 2;
static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// Refused requests for a page-aligned block (heapprof's sampled blocks at
/// rates of 64 KiB and up).
static REFUSED_PAGE_ALIGNED: AtomicUsize = AtomicUsize::new(0);
/// Frees whose layout differs from the block's.
static WRONG_LAYOUT: AtomicUsize = AtomicUsize::new(0);

struct Checking;

/// Room for the header: a size and an alignment, just before the block.
const HEADER: usize = 16;

impl Checking {
    fn refuses(&self, layout: Layout) -> bool {
        let refuse = match REFUSING.load(Relaxed) {
            ALL_BUT_BLOCKS => layout.size() != BLOCK,
            ALL_BUT_BLOCKS_AND_PAGES => layout.size() != BLOCK && layout.align() < 4096,
            _ => false,
        };
        if refuse {
            REFUSED.fetch_add(1, Relaxed);
            if layout.align() >= 4096 {
                REFUSED_PAGE_ALIGNED.fetch_add(1, Relaxed);
            }
        }
        refuse
    }

    /// The layout the block is allocated with in System: the header's room
    /// (a multiple of the alignment) in front.
    fn outer(layout: Layout) -> (Layout, usize) {
        let pad = layout.align().max(HEADER);
        let outer =
            Layout::from_size_align(layout.size() + pad, pad).expect("test layouts are small");
        (outer, pad)
    }

    /// # Safety
    /// `layout` has a non-zero size.
    unsafe fn allocate(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if self.refuses(layout) {
            return std::ptr::null_mut();
        }
        let (outer, pad) = Self::outer(layout);
        // SAFETY: `outer` has a non-zero size.
        let base = unsafe {
            if zeroed {
                System.alloc_zeroed(outer)
            } else {
                System.alloc(outer)
            }
        };
        if base.is_null() {
            return base;
        }
        // SAFETY: `pad` ≤ the outer size and ≥ HEADER, so the block and
        // the header before it are inside the allocation; `pad` is a
        // multiple of 16 and of the alignment, so both are aligned.
        unsafe {
            let ptr = base.add(pad);
            ptr.cast::<[usize; 2]>()
                .sub(1)
                .write([layout.size(), layout.align()]);
            ptr
        }
    }
}

// SAFETY: every block is a System allocation with the header's room in
// front, freed with the layout it was allocated with (read back from the
// header), whatever the caller names; or null, which any allocation method
// may return.
unsafe impl GlobalAlloc for Checking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract: a non-zero size.
        unsafe { self.allocate(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract: a non-zero size.
        unsafe { self.allocate(layout, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `allocate`, which wrote the header.
        let [size, align] = unsafe { ptr.cast::<[usize; 2]>().sub(1).read() };
        if [size, align] != [layout.size(), layout.align()] {
            WRONG_LAYOUT.fetch_add(1, Relaxed);
        }
        let written = Layout::from_size_align(size, align).expect("written by allocate");
        let (outer, pad) = Self::outer(written);
        // SAFETY: the allocation `allocate` made, with its own layout.
        unsafe { System.dealloc(ptr.sub(pad), outer) }
    }

    // `realloc` is GlobalAlloc's own: `alloc`, copy, `dealloc`.
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Checking> = heapprof::Profiler::wrap(Checking);

/// How a block of `BLOCK` bytes comes to be.
#[derive(Clone, Copy)]
enum Made {
    Alloc,
    Zeroed,
    Grown,
}

/// Makes one block `depth` frames below the caller, so that every depth is
/// a site of its own.
#[inline(never)]
fn nest(depth: usize, made: Made, growing: &mut Vec<Vec<u8>>, out: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        let block = match made {
            Made::Alloc => {
                let mut v = Vec::with_capacity(BLOCK);
                v.push(7);
                v
            }
            Made::Zeroed => vec![0; BLOCK],
            Made::Grown => {
                let mut v = growing.pop().expect("prepared");
                v.reserve_exact(BLOCK - BEFORE_GROWTH);
                v
            }
        };
        out.push(black_box(block));
    } else {
        nest(black_box(depth - 1), made, growing, out);
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

/// Makes `BLOCKS` blocks while heapprof's requests are refused as
/// `refusing` says, freeing one in four at once; returns the profile's
/// allocated blocks and bytes and live bytes over that time, with the rest
/// still held.
fn refused_while_allocating(rate: usize, refusing: u8) -> (i64, i64, i64) {
    heapprof::set_sample_rate(rate);
    let mut blocks = Vec::with_capacity(BLOCKS);
    let (refused_before, wrong_before) = (REFUSED.load(Relaxed), WRONG_LAYOUT.load(Relaxed));
    let mut growing: Vec<Vec<u8>> = Vec::with_capacity(GROWING);
    let before = heapprof::snapshot();
    // Counted in the window: GROWING blocks of BEFORE_GROWTH bytes, each
    // freed by its realloc.
    growing.extend((0..GROWING).map(|_| vec![7; BEFORE_GROWTH]));

    REFUSING.store(refusing, Relaxed);
    for i in 0..BLOCKS {
        let made = if i % GROW_EVERY == GROW_EVERY - 1 {
            Made::Grown
        } else {
            [Made::Alloc, Made::Zeroed][i % 2]
        };
        nest(i % DEPTHS, made, &mut growing, &mut blocks);
        if i % 4 == 0 {
            // Its free, sampled or not, may need a slot in the spare pool.
            blocks.pop();
        }
    }
    REFUSING.store(NOTHING, Relaxed);

    assert!(
        REFUSED.load(Relaxed) > refused_before,
        "rate {rate}: heapprof never asked for memory: the test tests nothing"
    );
    for b in &blocks {
        assert_eq!(b.capacity(), BLOCK);
        let expected = if b.len() == BEFORE_GROWTH { 7 } else { b[0] };
        assert!(
            b.iter().all(|&x| x == expected),
            "rate {rate}: contents lost"
        );
    }
    assert!(growing.is_empty());
    let held = heapprof::snapshot().delta(&before);
    let (alloc_bytes, alloc_objects, inuse_bytes) = totals(&held);

    // Freeing them all leaves nothing live: no block heapprof could not
    // track stays "in use" for good. Each goes back with its own layout.
    blocks.clear();
    let after = heapprof::snapshot().delta(&before);
    let (_, _, inuse_after) = totals(&after);
    // Weighted estimates are f64 sums, rounded per site.
    assert!(
        inuse_after.abs() <= after.sites().len() as i64,
        "rate {rate}: {inuse_after} bytes left in use\n{after}"
    );
    assert_eq!(
        WRONG_LAYOUT.load(Relaxed),
        wrong_before,
        "rate {rate}: blocks freed with a layout they were not allocated with"
    );
    (alloc_objects, alloc_bytes, inuse_bytes)
}

fn main() {
    let n = BLOCKS as i64;
    // What the window allocates: the blocks, and the ones that grew into
    // some of them.
    let (objects_made, bytes_made) = (
        n + GROWING as i64,
        n * BLOCK_BYTES + (GROWING * BEFORE_GROWTH) as i64,
    );

    // 64 KiB: sampled blocks are page aligned. First those are refused
    // (the spare pool is empty, so every sample asks for one). Then they
    // are granted, and the set and the spare pool run out of room (neither
    // could grow so far) and the live estimate passes its first peak
    // (1 MiB), whose copy finds no memory. Either way the program must get
    // a block of its own layout whenever heapprof cannot track one of its
    // page-aligned blocks.
    //
    // With 20 MB allocated, about 300 samples: the estimate's relative
    // standard error is 1/sqrt(300) = 5.8 %, so ±30 % is over 5 σ.
    heapprof::set_seed(5);
    for (refusing, what) in [
        (ALL_BUT_BLOCKS, "page-aligned blocks refused"),
        (ALL_BUT_BLOCKS_AND_PAGES, "page-aligned blocks granted"),
    ] {
        let refused_aligned = REFUSED_PAGE_ALIGNED.load(Relaxed);
        let (objects, bytes, _) = refused_while_allocating(64 << 10, refusing);
        assert_eq!(
            REFUSED_PAGE_ALIGNED.load(Relaxed) > refused_aligned,
            refusing == ALL_BUT_BLOCKS,
            "rate 64 KiB, {what}: page-aligned refusals"
        );
        assert!(
            (bytes - bytes_made).abs() * 10 < bytes_made * 3,
            "rate 64 KiB, {what}: {bytes} bytes estimated, {bytes_made} allocated"
        );
        assert!(
            (objects - objects_made).abs() * 10 < objects_made * 3,
            "rate 64 KiB, {what}: {objects} of {objects_made} blocks estimated"
        );
        println!("rate 64 KiB, {what}: {bytes} of {bytes_made} bytes estimated");
    }

    // Rate 1: every block is a sample, with weight 1, so the expected
    // values are exact. Sampled blocks keep the program's layout; the set
    // and the bucket table are what run out. First, room in the set for
    // some of the blocks but not all (freed entries leave their room
    // behind).
    heapprof::set_sample_rate(1);
    drop(black_box(
        (0..2000).map(|_| Box::new(0u128)).collect::<Vec<_>>(),
    ));
    let (objects, bytes, inuse) = refused_while_allocating(1, ALL_BUT_BLOCKS);
    // Every block counts as allocated, whether its site got a bucket (or
    // the overflow entry) and whether the set could hold it.
    assert_eq!(objects, objects_made);
    assert_eq!(bytes, bytes_made);
    // Some live blocks were not held by the set, so they count as freed
    // already: were none missing, the set never ran out and the test would
    // not have reached that path. (A quarter were freed for real.)
    let live = (n - (n + 3) / 4) * BLOCK_BYTES;
    assert!(
        inuse > 0 && inuse < live,
        "rate 1: inuse {inuse} of {live} live"
    );
    println!("rate 1: {inuse} of {live} live bytes tracked while refused");

    // With memory back, new sites get buckets of their own again.
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let mut again = Vec::with_capacity(1);
    nest(DEPTHS + 3, Made::Alloc, &mut Vec::new(), &mut again);
    let later = heapprof::snapshot().delta(&before);
    assert_eq!(
        later.inuse_bytes_in("tables_out_of_memory::nest"),
        BLOCK_BYTES,
        "{later}"
    );
    drop(again);

    labeled_poll_after_memory_comes_back();
    println!(
        "ok: {} of heapprof's requests refused, {} of them page aligned; no block freed with another layout",
        REFUSED.load(Relaxed),
        REFUSED_PAGE_ALIGNED.load(Relaxed)
    );
}

/// A future that keeps a block of `BLOCK` bytes at each of its two polls.
struct TwoPolls {
    kept: Vec<Vec<u8>>,
}

impl std::future::Future for TwoPolls {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        keep_a_block(&mut self.kept);
        if self.kept.len() == 2 {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[inline(never)]
fn keep_a_block(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![3; BLOCK]));
}

/// A `Labeled` future first polled while heapprof's memory is refused
/// (its labels' set cannot be made) carries its labels at the next poll,
/// once memory is back: the failed merge is not kept for it.
fn labeled_poll_after_memory_comes_back() {
    use heapprof::FutureExt as _;
    heapprof::set_sample_rate(1);
    let mut future = Box::pin(
        TwoPolls {
            kept: Vec::with_capacity(2),
        }
        .heap_labels(&[("tenant", "refused-then-granted")]),
    );
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let before = heapprof::snapshot();
    REFUSING.store(ALL_BUT_BLOCKS, Relaxed);
    assert!(future.as_mut().poll(&mut cx).is_pending());
    REFUSING.store(NOTHING, Relaxed);
    assert!(future.as_mut().poll(&mut cx).is_ready());
    let later = heapprof::snapshot().delta(&before);
    let labelled: i64 = later
        .sites()
        .iter()
        .filter(|s| s.has_label("tenant", "refused-then-granted"))
        .filter(|s| s.frames.iter().any(|f| f.function.contains("keep_a_block")))
        .map(|s| s.inuse_bytes)
        .sum();
    assert!(
        labelled >= BLOCK_BYTES,
        "the second poll's block under the future's labels: {labelled} bytes\n{later}"
    );
    drop(future);
}
