//! Exact process-wide allocation counters, beside the sampled estimates:
//! what Go's `runtime.MemStats` gives, so that users can compare "the
//! profile says 320 MB" with "the heap is 1.2 GB" (the third seed).
//!
//! Counting is per thread, so the fast path touches no shared cache line:
//! each thread owns four counters in a const-initialized, destructor-free
//! thread-local and bumps them with a plain load and store (relaxed
//! atomics: other threads may read them, so they must be atomic, but only
//! the owner writes, so no read-modify-write is needed).
//!
//! A thread puts its counters in a registry on its first slow path (every
//! thread's first allocation takes the slow path). When it exits, a
//! second thread-local's destructor adds its counts to the retired totals
//! and takes it out of the registry, before its thread-local memory goes
//! away. Allocations made by the thread's *later* destructors are not
//! counted: a handful of blocks per exiting thread, at most.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::lock::Mutex;

pub(crate) struct Counters {
    allocs: AtomicU64,
    alloc_bytes: AtomicU64,
    frees: AtomicU64,
    freed_bytes: AtomicU64,
}

impl Counters {
    const fn new() -> Self {
        Counters {
            allocs: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
        }
    }

    fn read(&self) -> [u64; 4] {
        [
            &self.allocs,
            &self.alloc_bytes,
            &self.frees,
            &self.freed_bytes,
        ]
        .map(|c| c.load(Relaxed))
    }
}

/// Only the owning thread writes, so load + store cannot lose an update.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

thread_local! {
    static COUNTERS: Counters = const { Counters::new() };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static RETIRE_ON_EXIT: Retire = const { Retire };
}

/// Counters of threads that are running, as addresses of their
/// thread-locals.
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Counts of threads that have exited.
static RETIRED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

#[inline(always)]
pub(crate) fn on_alloc(size: usize) {
    let _ = COUNTERS.try_with(|c| {
        bump(&c.allocs, 1);
        bump(&c.alloc_bytes, size as u64);
    });
}

#[inline(always)]
pub(crate) fn on_free(size: usize) {
    let _ = COUNTERS.try_with(|c| {
        bump(&c.frees, 1);
        bump(&c.freed_bytes, size as u64);
    });
}

/// Puts this thread's counters in the registry, once. Called from the slow
/// path with the reentrancy guard held.
pub(crate) fn register_thread() {
    if REGISTERED.try_with(|r| r.replace(true)).unwrap_or(true) {
        return;
    }
    let Ok(addr) = COUNTERS.try_with(|c| c as *const Counters as usize) else {
        return;
    };
    // Touching this thread-local registers its destructor; if the thread is
    // already exiting, leave the counters out (they could not be retired).
    if RETIRE_ON_EXIT.try_with(|_| ()).is_ok() {
        LIVE.lock().push(addr);
    }
}

/// Whether this thread's thread-locals are still up (false once its
/// thread-local destructors have started running).
pub(crate) fn thread_alive() -> bool {
    RETIRE_ON_EXIT.try_with(|_| ()).is_ok()
}

struct Retire;

impl Drop for Retire {
    fn drop(&mut self) {
        let _busy = crate::guard::Busy::enter();
        let Ok(addr) = COUNTERS.try_with(|c| c as *const Counters as usize) else {
            return;
        };
        let mut live = LIVE.lock();
        if let Some(i) = live.iter().position(|&a| a == addr) {
            live.swap_remove(i);
            let counts = COUNTERS.with(Counters::read);
            for (total, n) in RETIRED.iter().zip(counts) {
                total.fetch_add(n, Relaxed);
            }
        }
    }
}

/// Sums the counters of running and exited threads: allocations,
/// allocated bytes, deallocations, freed bytes.
pub(crate) fn totals() -> [u64; 4] {
    // The retired totals are read under the registry's lock: a thread that
    // exits moves its counts from the registry to them under that lock, so
    // reading them before taking it could miss a thread that exits in
    // between, and the totals would go backwards.
    let live = LIVE.lock();
    let mut sum = RETIRED.each_ref().map(|a| a.load(Relaxed));
    for &addr in live.iter() {
        // SAFETY: an address stays in LIVE only while its thread runs: the
        // thread's `Retire` destructor removes it, under this same lock,
        // before the thread's thread-local memory is released. (In a fork
        // child, the other threads' memory is a frozen copy, still mapped.)
        let counters = unsafe { &*(addr as *const Counters) };
        for (s, n) in sum.iter_mut().zip(counters.read()) {
            *s += n;
        }
    }
    sum
}

pub(crate) fn lock() {
    std::mem::forget(LIVE.lock());
}

/// # Safety
/// Only after [`lock`] on this thread, or in the child it forked.
pub(crate) unsafe fn unlock() {
    // SAFETY: `lock` took it and forgot the guard.
    unsafe { LIVE.force_unlock() };
}
