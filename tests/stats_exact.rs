//! `stats()` is exact: an outer allocator counts every call the program
//! makes, and at quiet points the two agree to the byte, through rate
//! changes (sampling on, every allocation, off, far apart), reseeding,
//! zeroed allocations and reallocations, on several threads, while another
//! thread writes profiles and takes snapshots. heapprof's own allocations
//! are not the program's: the outer allocator leaves out the calls heapprof
//! makes from inside a call it forwarded (its tables, stack capture) and
//! everything done inside heapprof's API (`stats`, `write_profile`,
//! `snapshot`), as `stats()` must.
//!
//! In a last phase the rate changes over and over while the threads
//! allocate: each change sets the other threads' countdowns to zero, in a
//! race with their own updates, and no byte may be lost or counted twice.
//!
//! While the threads run, and while they exit, another thread reads
//! `stats()` over and over: no count may ever go backwards (a read that
//! caught a thread's countdown and the bytes it was granted at two
//! different moments would, and so did one that missed an exiting thread's
//! counts).
//!
//! It has its own `main` (`harness = false`): the test harness's main
//! thread allocates while it waits for a test, late on a loaded machine,
//! and a quiet point must have no thread allocating but the test's own.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier};

static PROFILER: heapprof::Profiler = heapprof::Profiler::new();

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static FREED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Calls into heapprof this thread is inside: the outer allocator's
    /// own forwarding, and the test's calls of heapprof's API.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` as inside heapprof: what it allocates is not the program's.
fn in_heapprof<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = f();
    DEPTH.with(|d| d.set(d.get() - 1));
    r
}

/// Whether a call made now is the program's, not heapprof's.
fn programs_call() -> bool {
    DEPTH.try_with(|d| d.get() == 0).unwrap_or(false)
}

/// Counts the calls the program makes, the way heapprof's counters should.
struct Outer;

// SAFETY: every method forwards to heapprof with its caller's arguments.
unsafe impl GlobalAlloc for Outer {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if programs_call() {
            ALLOCS.fetch_add(1, SeqCst);
            BYTES.fetch_add(layout.size() as u64, SeqCst);
        }
        // SAFETY: the caller's contract, passed on.
        in_heapprof(|| unsafe { PROFILER.alloc(layout) })
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if programs_call() {
            ALLOCS.fetch_add(1, SeqCst);
            BYTES.fetch_add(layout.size() as u64, SeqCst);
        }
        // SAFETY: the caller's contract, passed on.
        in_heapprof(|| unsafe { PROFILER.alloc_zeroed(layout) })
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if programs_call() {
            FREES.fetch_add(1, SeqCst);
            FREED.fetch_add(layout.size() as u64, SeqCst);
        }
        // SAFETY: the caller's contract, passed on.
        in_heapprof(|| unsafe { PROFILER.dealloc(ptr, layout) })
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if programs_call() {
            FREES.fetch_add(1, SeqCst);
            FREED.fetch_add(layout.size() as u64, SeqCst);
            ALLOCS.fetch_add(1, SeqCst);
            BYTES.fetch_add(new_size as u64, SeqCst);
        }
        // SAFETY: the caller's contract, passed on.
        in_heapprof(|| unsafe { PROFILER.realloc(ptr, layout, new_size) })
    }
}

#[global_allocator]
static ALLOC: Outer = Outer;

const WORKERS: usize = 3;
/// Rate changes made while the threads allocate, in the last phase.
const RACING_CHANGES: usize = 20_000;
/// Set when they are made: the threads stop allocating.
static RACED: AtomicBool = AtomicBool::new(false);
const RATES: [usize; 8] = [
    512 * 1024,
    4096,
    1,
    0,
    64 * 1024,
    usize::MAX,
    100,
    512 * 1024,
];

fn churn(seed: u64, ops: usize) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(256);
    for _ in 0..ops {
        let r = next();
        let size = 1 + (r >> 8) as usize % 3000;
        match r % 8 {
            0 => held.push(vec![0u8; size]),
            1 => {
                // Grows by reallocation.
                let mut v = Vec::new();
                for i in 0..size % 300 {
                    v.push(i as u8);
                }
                held.push(v);
            }
            2 if !held.is_empty() => {
                let i = (r >> 20) as usize % held.len();
                held.swap_remove(i);
            }
            3 if !held.is_empty() => {
                let i = (r >> 20) as usize % held.len();
                held[i].shrink_to(size % 17);
            }
            _ => held.push(black_box(Vec::with_capacity(size))),
        }
        if held.len() > 200 {
            held.truncate(50);
        }
    }
    black_box(&held);
}

fn assert_exact(phase: usize) {
    let s = in_heapprof(heapprof::stats);
    let outer = [&ALLOCS, &BYTES, &FREES, &FREED].map(|a| a.load(SeqCst));
    let ours = [
        s.allocations,
        s.allocated_bytes,
        s.deallocations,
        s.freed_bytes,
    ];
    assert_eq!(
        ours, outer,
        "phase {phase}: heapprof's [allocations, allocated bytes, deallocations, freed bytes] \
         against the outer allocator's"
    );
}

fn main() {
    stats_match_an_outer_count_exactly();
    println!("test stats_match_an_outer_count_exactly ... ok");
}

fn stats_match_an_outer_count_exactly() {
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let done = Arc::new(Barrier::new(WORKERS + 1));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                done.wait(); // started
                for phase in 0..RATES.len() {
                    start.wait();
                    churn((w * 1000 + phase) as u64 * 0x9E37_79B9, 20_000);
                    done.wait();
                }
                start.wait();
                let mut round = 0;
                while !RACED.load(SeqCst) {
                    churn((w * 1000 + round) as u64 * 0x5851_F42D, 1_000);
                    round += 1;
                }
                done.wait();
                start.wait(); // the last count is checked: exit
            })
        })
        .collect();
    let reader_started = Arc::new(Barrier::new(3));
    let reader = {
        let stop = stop_reading.clone();
        let started = reader_started.clone();
        std::thread::spawn(move || {
            started.wait();
            let mut last = in_heapprof(heapprof::stats);
            let mut reads = 0u64;
            while !stop.load(SeqCst) {
                let s = in_heapprof(heapprof::stats);
                assert!(
                    s.allocated_bytes >= last.allocated_bytes && s.freed_bytes >= last.freed_bytes,
                    "stats went backwards: {last:?} then {s:?}"
                );
                assert!(s.allocations >= last.allocations && s.deallocations >= last.deallocations);
                last = s;
                reads += 1;
            }
            reads
        })
    };
    // Profiles and snapshots built all along, from another thread: none of
    // it is the program's.
    let writer = {
        let stop = stop_reading.clone();
        let started = reader_started.clone();
        std::thread::spawn(move || {
            // The profile goes to the program's own buffer (the program's
            // memory), big enough never to grow.
            let mut out = Vec::with_capacity(64 << 20);
            started.wait();
            let mut writes = 0u64;
            while !stop.load(SeqCst) {
                out.clear();
                in_heapprof(|| {
                    heapprof::write_profile(&mut out).unwrap();
                    black_box(heapprof::snapshot().sites().len());
                });
                assert!(out.capacity() == 64 << 20 && !out.is_empty());
                writes += 1;
            }
            writes
        })
    };
    // Threads allocate while they start: count from when all have.
    reader_started.wait();
    done.wait();
    for (phase, &rate) in RATES.iter().enumerate() {
        heapprof::set_sample_rate(rate);
        if phase == 3 {
            heapprof::set_seed(7);
        }
        // Quiet point: the workers wait at `start`, the reader only reads.
        assert_exact(phase);
        start.wait();
        done.wait();
    }
    assert_exact(RATES.len());
    // The rate changes all along while the threads allocate.
    start.wait();
    for change in 0..RACING_CHANGES {
        heapprof::set_sample_rate(RATES[change % RATES.len()]);
        if change % 64 == 0 {
            // Let the threads run between changes on a busy machine.
            std::thread::yield_now();
        }
    }
    RACED.store(true, SeqCst);
    done.wait();
    assert_exact(RATES.len() + 1);
    // The workers exit while the reader reads: a thread's counts move from
    // the running threads' to the exited threads' totals, and must be seen
    // in one or the other, never in neither.
    start.wait();
    for w in workers {
        w.join().unwrap();
    }
    stop_reading.store(true, SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert!(writer.join().unwrap() > 0);
    heapprof::set_sample_rate(512 * 1024);
}
