//! `Profiler::wrap` forwards every call to the inner allocator: unsampled
//! reallocs stay reallocs (no alloc + copy + free), `alloc_zeroed` stays
//! `alloc_zeroed`, and sampled blocks are freed with the layout they were
//! really allocated with.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

thread_local! {
    /// Set on the test's thread: only its calls are counted (the harness's
    /// other threads allocate and reallocate meanwhile).
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(|c| c.get()).unwrap_or(false)
}

/// Counts what reaches it from the test's thread, and remembers the last
/// free's alignment there.
struct Counting {
    alloc: AtomicUsize,
    zeroed: AtomicUsize,
    dealloc: AtomicUsize,
    realloc: AtomicUsize,
    /// Reallocs of blocks of 16 MiB or more: the test's own big block
    /// (heapprof's tables, which may grow on this thread while it records
    /// a sample, are far smaller).
    realloc_big: AtomicUsize,
    last_dealloc_align: AtomicUsize,
    /// Page-aligned blocks (heapprof's sampled ones) allocated and freed.
    page_aligned: [AtomicUsize; 2],
}

fn bump(counter: &AtomicUsize) {
    if counted() {
        counter.fetch_add(1, Relaxed);
    }
}

// SAFETY: every method forwards to System with its caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        bump(&self.alloc);
        if l.align() >= 4096 {
            bump(&self.page_aligned[0]);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        bump(&self.zeroed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        bump(&self.dealloc);
        if l.align() >= 4096 {
            bump(&self.page_aligned[1]);
        }
        if counted() {
            self.last_dealloc_align.store(l.align(), Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        bump(&self.realloc);
        if l.size() >= 16 << 20 {
            bump(&self.realloc_big);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Counting> = heapprof::Profiler::wrap(Counting {
    alloc: AtomicUsize::new(0),
    zeroed: AtomicUsize::new(0),
    dealloc: AtomicUsize::new(0),
    realloc: AtomicUsize::new(0),
    realloc_big: AtomicUsize::new(0),
    last_dealloc_align: AtomicUsize::new(0),
    page_aligned: [AtomicUsize::new(0), AtomicUsize::new(0)],
});

fn counts() -> [usize; 4] {
    let c = ALLOC.inner();
    [&c.alloc, &c.zeroed, &c.dealloc, &c.realloc].map(|a| a.load(Relaxed))
}

/// Held by each test: they set the process's sample rate.
static RATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn forwards_each_call_and_frees_sampled_blocks_with_their_real_layout() {
    let _rate = RATE.lock().unwrap_or_else(|e| e.into_inner());
    // Sampling off: every call is a plain forward.
    heapprof::set_sample_rate(0);
    COUNTED.with(|c| c.set(true));
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let before = counts();
    // SAFETY: `layout` has a non-zero size; each block is used within its
    // size and reallocated or freed once, with the layout it has then.
    unsafe {
        let p = ALLOC.alloc(layout);
        p.write_bytes(0xAB, 1000);
        let q = ALLOC.realloc(p, layout, 5000);
        assert_eq!(*q.add(999), 0xAB, "realloc keeps the contents");
        ALLOC.dealloc(q, Layout::from_size_align(5000, 8).unwrap());
        let z = ALLOC.alloc_zeroed(layout);
        assert!(std::slice::from_raw_parts(z, 1000).iter().all(|&b| b == 0));
        ALLOC.dealloc(z, layout);
    }
    let after = counts();
    let delta: Vec<usize> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(
        delta,
        [1, 1, 2, 1],
        "alloc, alloc_zeroed, dealloc, realloc each forwarded once"
    );

    // At 1 MiB, a 16 MiB block is always sampled (p = 1 - e^-16). Blocks
    // that large keep the program's layout, so the inner allocator resizes
    // them with its own realloc, and frees them with that layout.
    heapprof::set_sample_rate(1 << 20);
    let big = Layout::from_size_align(16 << 20, 8).unwrap();
    // SAFETY: as above, for `big`.
    unsafe {
        let p = ALLOC.alloc(big);
        p.write_bytes(7, 16 << 20);
        let big_reallocs = || ALLOC.inner().realloc_big.load(Relaxed);
        let before = big_reallocs();
        let q = ALLOC.realloc(p, big, 32 << 20);
        assert_eq!(*q.add((16 << 20) - 1), 7);
        assert_eq!(
            big_reallocs(),
            before + 1,
            "a large sampled block is resized by the inner allocator's realloc"
        );
        ALLOC.dealloc(q, Layout::from_size_align(32 << 20, 8).unwrap());
        assert_eq!(ALLOC.inner().last_dealloc_align.load(Relaxed), 8);
    }

    // Rate 1: every block sampled, at its own alignment.
    heapprof::set_sample_rate(1);
    // SAFETY: as above.
    unsafe {
        let p = ALLOC.alloc(layout);
        let q = ALLOC.realloc(p, layout, 3000);
        ALLOC.dealloc(q, Layout::from_size_align(3000, 8).unwrap());
        assert_eq!(ALLOC.inner().last_dealloc_align.load(Relaxed), 8);
    }
}

/// The global allocator is shared by the whole process, state or not
/// (this one has counters): heapprof keeps its freed sampled blocks for
/// later samples, as it does the system's, rather than hand their
/// page-aligned addresses back for ordinary blocks to drift onto.
#[test]
fn a_global_allocator_with_state_keeps_its_spare_blocks() {
    let _rate = RATE.lock().unwrap_or_else(|e| e.into_inner());
    // Page-aligned samples, about one per 64 KiB.
    heapprof::set_sample_rate(64 * 1024);
    COUNTED.with(|c| c.set(true));
    let [allocated, freed] = &ALLOC.inner().page_aligned;
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let before = heapprof::snapshot();
    for _ in 0..20_000 {
        // SAFETY: a non-zero layout; freed once, with it.
        unsafe { ALLOC.dealloc(std::hint::black_box(ALLOC.alloc(layout)), layout) };
    }
    let (allocated, freed) = (allocated.load(Relaxed), freed.load(Relaxed));
    // 20 MB at 64 KiB: about 300 samples, each freed at once.
    let estimated_allocations: i64 = heapprof::snapshot()
        .delta(&before)
        .sites()
        .iter()
        .filter(|site| {
            site.frames
                .iter()
                .any(|f| f.function.contains("keeps_its_spare_blocks"))
        })
        .map(|site| site.alloc_objects)
        .sum();
    assert!(estimated_allocations > 0, "sampled");
    // The first sample may take a block another test's sample left in
    // the class's pool (then the inner allocator allocates none); each
    // later one takes the block the one before left, unless another
    // thread's sample took it meanwhile.
    assert!(
        allocated <= 8 && freed < allocated.max(1),
        "sampled blocks were not kept and taken again: {allocated} allocated, {freed} freed"
    );
    heapprof::set_sample_rate(512 * 1024);
}
