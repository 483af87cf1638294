//! A signal handler that frees a sampled block while the thread it
//! interrupted holds one of heapprof's locks (at rate 1 every allocation
//! and free takes a stripe of the sampled set and of the bucket table). The
//! handler's free must not wait for a lock its own thread holds: it is put
//! off until the thread leaves heapprof, and then credited.
//!
//! The inner allocator is async-signal-safe (a bump arena), as a program
//! that frees in signal handlers needs. A deadlock trips the watchdog.

use heapprof_testkit::arena::{bump, map_region};
use heapprof_testkit::watchdog::watchdog;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};

/// Hands out consecutive pieces of one big mapping; frees nothing. Every
/// call is a few atomic operations, safe in a signal handler.
struct Bump;

const ARENA_BYTES: usize = 1 << 30;
static BASE: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: each block is a fresh, aligned, in-bounds piece of the mapping,
// handed out once; null when the mapping is used up.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if BASE.load(SeqCst) == 0 {
            let p = map_region(ARENA_BYTES);
            if BASE.compare_exchange(0, p, SeqCst, SeqCst).is_err() {
                // SAFETY: our own mapping, unused.
                unsafe { libc::munmap(p as *mut libc::c_void, ARENA_BYTES) };
            }
        }
        bump(BASE.load(SeqCst), ARENA_BYTES, &NEXT, layout)
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Bump> = heapprof::Profiler::wrap(Bump);

const SIGNALS: usize = 3000;
/// Blocks for the handler to free, one per signal.
static BLOCKS: [AtomicPtr<[u8; 48]>; SIGNALS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SIGNALS];
static TAKEN: AtomicUsize = AtomicUsize::new(0);
static HANDLED: AtomicUsize = AtomicUsize::new(0);
/// Allocations the churn has made and freed: once it moves, the churning
/// thread has left heapprof since the last handler, and run the free that
/// handler may have put off.
static CHURNED: AtomicUsize = AtomicUsize::new(0);
/// Allocations the churn may make per signal sent: the arena frees
/// nothing, so the churn must not run ahead of the signals on a slow
/// machine.
const CHURN_PER_SIGNAL: usize = 20;

extern "C" fn free_one(_: libc::c_int) {
    let i = TAKEN.fetch_add(1, SeqCst);
    if let Some(slot) = BLOCKS.get(i) {
        let p = slot.swap(std::ptr::null_mut(), SeqCst);
        if !p.is_null() {
            // SAFETY: the pointer came from `Box::into_raw` and is taken
            // out of its slot once.
            drop(unsafe { Box::from_raw(p) });
        }
    }
    HANDLED.fetch_add(1, SeqCst);
}

#[inline(never)]
fn handler_blocks() {
    for slot in &BLOCKS {
        slot.store(Box::into_raw(Box::new([1u8; 48])), SeqCst);
    }
}

#[inline(never)]
fn churn(stop: &AtomicBool) -> usize {
    let mut n = 0;
    while !stop.load(SeqCst) {
        if n > (TAKEN.load(SeqCst) + 1) * CHURN_PER_SIGNAL {
            std::hint::spin_loop();
            continue;
        }
        let v = std::hint::black_box(vec![0u8; 64 + n % 200]);
        drop(v);
        n += 1;
        CHURNED.store(n, SeqCst);
    }
    n
}

#[test]
fn a_handler_freeing_a_sampled_block_does_not_deadlock() {
    let _watchdog = watchdog("signal-handler frees", std::time::Duration::from_secs(120));
    heapprof::set_sample_rate(1);
    handler_blocks();
    let before = heapprof::snapshot();
    assert_eq!(
        before.inuse_objects_in("signal_free::handler_blocks"),
        SIGNALS as i64
    );
    // SAFETY: installs a handler that does only what is async-signal-safe
    // here (atomics, and a free through an async-signal-safe allocator).
    unsafe { heapprof_testkit::signals::install(libc::SIGUSR1, free_one, libc::SA_RESTART) };
    // SAFETY: pthread_self is always safe. Held as an integer for the
    // other thread: musl's `pthread_t` is a pointer.
    let target = unsafe { libc::pthread_self() } as usize;
    let stop = AtomicBool::new(false);
    let loops = std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..SIGNALS {
                let sent = HANDLED.load(SeqCst);
                let churned = CHURNED.load(SeqCst);
                // SAFETY: the target thread is this test's, alive until the
                // scope ends.
                unsafe { libc::pthread_kill(target as libc::pthread_t, libc::SIGUSR1) };
                while HANDLED.load(SeqCst) == sent {
                    std::hint::spin_loop();
                }
                // The next signal only once the thread has left heapprof:
                // signals sent faster could land in one slow stretch inside
                // it (a debug build on a loaded machine) and put off more
                // frees than a thread keeps (`DEFERRED_MAX`), and a free
                // with no room is leaked, never credited.
                while CHURNED.load(SeqCst) == churned {
                    std::hint::spin_loop();
                }
            }
            stop.store(true, SeqCst);
        });
        churn(&stop)
    });
    // Leaving heapprof (this snapshot) runs any free still put off.
    let _ = heapprof::snapshot();
    let after = heapprof::snapshot();
    println!("{loops} allocations churned while {SIGNALS} handlers freed a block each");
    assert_eq!(HANDLED.load(SeqCst), SIGNALS);
    assert_eq!(
        after.inuse_objects_in("signal_free::handler_blocks"),
        0,
        "every block the handlers freed is credited"
    );
}
