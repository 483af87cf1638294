//! What heapprof frees while it builds a profile reaches the inner
//! allocator. A profile build runs code that allocates and frees a great
//! deal (backtrace parses the binary's debug info and drops it, the walk
//! of the loaded objects builds its strings, the HTTP handler builds its
//! body) while holding locks of heapprof's own that a free never takes:
//! the symbolizer's, the walk's, the HTTP build's. Frees made there must
//! be done at once, as the program's are, and not put off like a free made
//! under a lock of the free path, whose few slots overflow into leaked
//! blocks (`lock::FreePathMutex`).
//!
//! The inner allocator counts the bytes it holds. At rate 1 with many live
//! sampled blocks, most addresses pass the free path's filters, so a free
//! put off instead of done is the common case, not a rare one.
//!
//! One test function: the inner allocator's count is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// Bytes the inner allocator holds now, from every thread.
static HELD: AtomicIsize = AtomicIsize::new(0);

struct Live;

// SAFETY: every method forwards to System with its caller's arguments; the
// count is a side effect that touches no block.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            HELD.fetch_add(l.size() as isize, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            HELD.fetch_add(l.size() as isize, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            HELD.fetch_add(n as isize - l.size() as isize, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Live> = heapprof::Profiler::wrap(Live);

/// What a build may keep: the per-address symbol cache, the bucket table's
/// growth, the sampled set's. A few hundred KiB here; a build's transient
/// memory (backtrace's parsed debug info alone is tens of MiB for a test
/// binary) is far above it.
const MAY_KEEP: isize = 4 << 20;

/// Profile writes after the first.
const WARM_WRITES: usize = 3000;

/// What those writes may keep between them: nothing was seen; a walk
/// whose frees were put off left 8 to 14 KB over the writes here.
const WARM_MAY_KEEP: isize = 4 << 10;

/// Profiles built by the HTTP handler, half of them as text.
#[cfg(feature = "http")]
const HTTP_BUILDS: usize = 8;

/// What those builds may keep between them, beyond the growth of
/// heapprof's own tables: 7 to 12 KB were seen (the harness's own thread
/// allocates too). At rate 1 the replies are sampled, and one that lands
/// in a full stripe of the sampled set grows it by tens of KB, which
/// `profiler_bytes` counts: that is the table's memory, not a build's.
#[cfg(feature = "http")]
const HTTP_MAY_KEEP: isize = 64 << 10;

#[test]
fn a_profile_build_frees_what_it_allocates() {
    heapprof::set_sample_rate(1);
    // Many live sampled blocks of many sizes: their addresses fill most of
    // the free path's second filter, so most frees pass both filters.
    let keep: Vec<Vec<u8>> = (0..60_000).map(|i| vec![1u8; 16 + i % 200]).collect();

    // A cold write: the first lookup parses the debug info and drops it.
    let before = HELD.load(Relaxed);
    heapprof::write_profile(std::io::sink()).unwrap();
    let kept = HELD.load(Relaxed) - before;
    assert!(
        kept < MAY_KEEP,
        "write_profile left {kept} bytes in the inner allocator (at most {MAY_KEEP} expected)"
    );

    // Warm writes: every address is symbolized, so a write keeps nothing,
    // and whatever a write leaves behind adds up: the walk of the loaded
    // objects frees under its lock on every write.
    let before = HELD.load(Relaxed);
    for _ in 0..WARM_WRITES {
        heapprof::write_profile(std::io::sink()).unwrap();
    }
    let kept = HELD.load(Relaxed) - before;
    assert!(
        kept < WARM_MAY_KEEP,
        "{WARM_WRITES} warm writes left {kept} bytes in the inner allocator (at most {WARM_MAY_KEEP} expected)"
    );

    // The HTTP handler builds its body under its own build lock. Its
    // sites are symbolized by now, so what a build keeps is next to
    // nothing (the body is dropped here); a build that put its frees off
    // left hundreds of KiB each.
    #[cfg(feature = "http")]
    {
        let tables = || heapprof::stats().profiler_bytes as isize;
        let (before, tables_before) = (HELD.load(Relaxed), tables());
        for query in ["", "debug=1"].repeat(HTTP_BUILDS / 2) {
            let reply = heapprof::http::handle("/debug/pprof/heap", query);
            assert_eq!(reply.status, 200);
        }
        let grown = (tables() - tables_before).max(0);
        let kept = HELD.load(Relaxed) - before - grown;
        assert!(
            kept < HTTP_MAY_KEEP,
            "{HTTP_BUILDS} HTTP builds left {kept} bytes in the inner allocator (at most {HTTP_MAY_KEEP} expected)"
        );
    }
    drop(keep);
}
