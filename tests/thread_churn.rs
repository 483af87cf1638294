//! Thousands of short-lived threads: each allocates, hands blocks to other
//! threads, frees blocks other threads allocated, allocates in a
//! thread-local destructor while it exits, and is gone. Three phases of
//! 1000 threads each, at the default rate, at rate 1 (every allocation
//! recorded, so threads exit while samples are being recorded), and at
//! 4096, with a profile written every few ms throughout.
//!
//! Asserts that every handed-over block arrives intact; that at rate 1 a
//! site called once per thread counts exactly once per thread; that once
//! every block is freed (many on another thread than allocated them)
//! nothing is left in use at the threads' sites; that every profile
//! decodes with sane values; and that the process still works afterwards.

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::profile::{
    ALLOC_OBJECTS, INUSE_OBJECTS, INUSE_SPACE, cum, decode, flat, take_profile,
};
use heapprof_testkit::rng::XorShift;
use heapprof_testkit::watchdog::watchdog;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const PHASES: [usize; 3] = [512 * 1024, 1, 4096];
const THREADS_PER_PHASE: usize = 1000;
const AT_ONCE: usize = 25;
/// Blocks each thread hands over, and takes.
const HAND_OVER: usize = 2;

/// A block made by one thread for another: its maker's id is its pattern.
struct Parcel {
    from: usize,
    data: Vec<u8>,
}

impl Parcel {
    fn intact(&self) -> bool {
        self.data
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (self.from.wrapping_mul(7).wrapping_add(i)) as u8)
    }
}

static MAILBOX: Mutex<Vec<Parcel>> = Mutex::new(Vec::new());
static RECEIVED: AtomicUsize = AtomicUsize::new(0);
static EXIT_DROPS: AtomicUsize = AtomicUsize::new(0);

/// Allocates in its destructor, which runs while the thread exits.
struct AllocatesOnExit {
    kept: Vec<u8>,
}

impl Drop for AllocatesOnExit {
    fn drop(&mut self) {
        let s = format!("thread exiting with {} bytes", self.kept.len());
        let copy: Vec<u8> = std::hint::black_box(s.into_bytes());
        assert!(!copy.is_empty());
        EXIT_DROPS.fetch_add(1, Relaxed);
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<AllocatesOnExit>> = const { RefCell::new(None) };
}

/// Called exactly once per thread in the rate-1 phase.
#[inline(never)]
fn once_per_thread() -> Box<[u64; 5]> {
    std::hint::black_box(Box::new([1, 2, 3, 4, 5]))
}

#[inline(never)]
fn make_parcel(from: usize, size: usize) -> Parcel {
    let data = (0..size)
        .map(|i| (from.wrapping_mul(7).wrapping_add(i)) as u8)
        .collect();
    Parcel { from, data }
}

#[inline(never)]
fn thread_body(id: usize, exact_phase: bool) -> Option<Box<[u64; 5]>> {
    let mut rng = XorShift::new(id as u64);
    let mut mine: Vec<Vec<u8>> = (0..4)
        .map(|_| vec![id as u8; rng.log_uniform(1, 16 * 1024)])
        .collect();
    mine.push(format!("thread {id}").into_bytes());
    // Take blocks other threads allocated (most have exited since), and
    // free them here; then leave some for the next threads.
    for _ in 0..HAND_OVER {
        let parcel = MAILBOX.lock().unwrap().pop();
        if let Some(p) = parcel {
            assert!(p.intact(), "parcel from thread {} corrupted", p.from);
            assert_ne!(p.from, id);
            RECEIVED.fetch_add(1, Relaxed);
        }
    }
    let parcels: Vec<Parcel> = (0..HAND_OVER)
        .map(|_| make_parcel(id, rng.log_uniform(1, 8 * 1024)))
        .collect();
    MAILBOX.lock().unwrap().extend(parcels);
    ON_EXIT.with(|e| {
        *e.borrow_mut() = Some(AllocatesOnExit {
            kept: mine.pop().unwrap(),
        })
    });
    drop(mine);
    // In the exact phase, one block per thread at a known site, returned
    // to the spawner to be freed on the main thread.
    exact_phase.then(once_per_thread)
}

#[test]
fn thousands_of_short_lived_threads_allocate_hand_over_and_exit() {
    let _watchdog = watchdog("thread churn", Duration::from_secs(120));
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let profiles = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (done, profiles) = (done.clone(), profiles.clone());
        std::thread::spawn(move || {
            while !done.load(Relaxed) {
                let mut gz = Vec::new();
                heapprof::write_profile(&mut gz).expect("write_profile");
                assert_sane_values(&decode(&gz));
                profiles.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut spawned = 0;
    let mut exact_blocks = Vec::new();
    for (phase, &rate) in PHASES.iter().enumerate() {
        // Between phases no thread of ours runs, so every thread of the
        // rate-1 phase starts at rate 1 and records every allocation.
        heapprof::set_sample_rate(rate);
        let exact = rate == 1;
        for batch in 0..THREADS_PER_PHASE / AT_ONCE {
            let handles: Vec<_> = (0..AT_ONCE)
                .map(|i| {
                    let id = (phase * THREADS_PER_PHASE) + batch * AT_ONCE + i;
                    std::thread::Builder::new()
                        .spawn(move || thread_body(id, exact))
                        .expect("spawn")
                })
                .collect();
            spawned += handles.len();
            for h in handles {
                exact_blocks.extend(h.join().expect("a churn thread failed"));
            }
        }
    }
    done.store(true, Relaxed);
    writer.join().expect("the profile writer failed");

    // Free what is left in the mailbox here, on yet another thread.
    let leftover = std::mem::take(&mut *MAILBOX.lock().unwrap());
    assert!(leftover.iter().all(Parcel::intact));
    let leftover_count = leftover.len();
    drop(leftover);
    let exact_count = exact_blocks.len();

    heapprof::set_sample_rate(1);
    let p = take_profile();
    assert_sane_values(&p);
    let once = flat(&p, "once_per_thread", ALLOC_OBJECTS);
    let once_in_use = flat(&p, "once_per_thread", INUSE_OBJECTS);
    drop(exact_blocks);
    let p = take_profile();
    assert_sane_values(&p);
    let in_use_objects = cum(&p, "thread_body", INUSE_OBJECTS);
    let in_use_bytes = cum(&p, "thread_body", INUSE_SPACE);
    let allocated = cum(&p, "thread_body", ALLOC_OBJECTS);

    // The process still works: a new thread, a new profile.
    let again = std::thread::spawn(|| vec![5u8; 1000]).join().unwrap();
    assert!(again.iter().all(|&b| b == 5));
    let last = take_profile();
    assert_sane_values(&last);

    println!(
        "thread churn: {spawned} threads ({AT_ONCE} at a time), {} blocks handed over, {} freed \
         by another thread than made them, {leftover_count} freed on the main thread, {} \
         thread-local destructors allocated at exit, {} profiles written meanwhile; rate-1 site \
         counted {once} for {exact_count} threads ({once_in_use} in use before they were freed); \
         {allocated} allocations estimated at the threads' sites, {in_use_objects} objects and \
         {in_use_bytes} bytes still in use there; {:?}",
        spawned * HAND_OVER,
        RECEIVED.load(Relaxed),
        EXIT_DROPS.load(Relaxed),
        profiles.load(Relaxed),
        started.elapsed()
    );
    assert_eq!(spawned, PHASES.len() * THREADS_PER_PHASE);
    assert_eq!(
        EXIT_DROPS.load(Relaxed),
        spawned,
        "every exit destructor ran"
    );
    assert_eq!(
        RECEIVED.load(Relaxed) + leftover_count,
        spawned * HAND_OVER,
        "every parcel arrived once"
    );
    assert_eq!(exact_count, THREADS_PER_PHASE);
    assert_eq!(
        once, exact_count as i64,
        "at rate 1 every allocation counts once"
    );
    assert_eq!(once_in_use, exact_count as i64);
    assert!(profiles.load(Relaxed) > 0);
    assert_eq!(
        (in_use_objects, in_use_bytes),
        (0, 0),
        "every block the threads allocated was freed, on whatever thread"
    );
}

/// `stats()` is read while threads keep exiting: its totals never go
/// backwards. (Exiting threads move their counts from the registry of
/// running threads to the retired totals; a reader that took the retired
/// totals outside the registry's lock missed such a thread and saw the
/// totals drop, by up to 20 MB here.)
#[test]
fn stats_never_go_backwards_while_threads_exit() {
    let _watchdog = watchdog("monotonic stats", Duration::from_secs(120));
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut exited = 0;
            while !stop.load(Relaxed) {
                let batch: Vec<_> = (0..8)
                    .map(|_| {
                        std::thread::spawn(|| {
                            for _ in 0..50 {
                                std::hint::black_box(vec![0u8; 100_000]);
                            }
                        })
                    })
                    .collect();
                for t in batch {
                    t.join().unwrap();
                }
                exited += 8;
            }
            exited
        })
    };
    let started = Instant::now();
    let mut last = heapprof::stats();
    let (mut polls, mut backwards) = (0u64, Vec::new());
    while started.elapsed() < Duration::from_secs(2) {
        let now = heapprof::stats();
        polls += 1;
        for (what, before, after) in [
            ("allocations", last.allocations, now.allocations),
            ("allocated_bytes", last.allocated_bytes, now.allocated_bytes),
            ("deallocations", last.deallocations, now.deallocations),
            ("freed_bytes", last.freed_bytes, now.freed_bytes),
        ] {
            if after < before {
                backwards.push(format!("{what}: {before} -> {after}"));
            }
        }
        last = now;
    }
    stop.store(true, Relaxed);
    let exited = spawner.join().unwrap();
    println!(
        "stats read {polls} times while {exited} threads exited: {} backward steps",
        backwards.len()
    );
    assert!(exited > 0 && polls > 100);
    assert!(
        backwards.is_empty(),
        "{:?}",
        &backwards[..backwards.len().min(10)]
    );
}
