//! Exact process-wide allocation counters, beside the sampled estimates:
//! what Go's `runtime.MemStats` gives, so that users can compare "the
//! profile says 320 MB" with "the heap is 1.2 GB".
//!
//! Counting is per thread, so the fast path touches no shared cache line:
//! each thread owns its counters in the fast path's const-initialized,
//! destructor-free thread-local (`local.rs`) and bumps them with a plain
//! load and store (relaxed atomics: other threads may read them, so they
//! must be atomic, but only the owner writes, so no read-modify-write is
//! needed).
//!
//! Allocated bytes have no counter of their own: the sampler's countdown
//! (`sampler.rs`) already takes every allocation's size off, so a thread
//! has allocated `granted - countdown` bytes (wrapping arithmetic: the
//! allocation that runs a countdown out takes it below zero), where
//! `granted` sums the countdowns it was given. An allocation's fast path
//! then bumps one counter, not two. `granted` changes together with
//! the countdown only on the slow path, under a sequence number, so that
//! another thread never reads one without the other.
//!
//! A thread puts its counters in a registry on its first allocation
//! (every thread's first allocation takes the slow path: its countdown
//! starts at zero), and `stats()` sums the registry. The registry holds
//! addresses of thread-local memory, so an entry must leave before its
//! thread's memory does: two exit hooks take it out ([`register_thread`]),
//! a thread-local destructor and a `pthread` key destructor, the second for
//! threads that first allocate when their thread-local destructors are
//! over. A thread outside the registry (before its first allocation, and
//! from its exit on) has a free-filter mask of 0 and, once exiting, a
//! countdown kept at zero, so each of its calls reaches the slow path, which
//! moves its counts to the unlisted totals: frees and allocations made by
//! destructors that run after the exit hook are counted, however many.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::time::{Duration, Instant};

use crate::support::lock::Mutex;
use crate::thread::LOCAL;

#[repr(C)]
pub(crate) struct Counters {
    /// The sampler's countdown: bytes this thread may still allocate
    /// before its next sample (see `sampler.rs`). Written by the owner
    /// only, on the fast path by `sampler::countdown_expired`, elsewhere by
    /// [`Counters::reset_countdown`].
    pub(crate) countdown: AtomicUsize,
    allocs: AtomicU64,
    frees: AtomicU64,
    freed_bytes: AtomicU64,
    /// Bytes granted to this thread: allocated bytes are `granted -
    /// countdown` (wrapping).
    granted: AtomicU64,
    /// Odd while the owner changes fields that readers must see together:
    /// `granted` with `countdown`, and the fields below with the ones
    /// above.
    seq: AtomicU64,
    /// Whether the owner is inside heapprof (the reentrancy guard, see
    /// `guard.rs`). Everything counted above meanwhile is heapprof's own,
    /// so readers take [`Counters::frozen`] instead; leaving takes it back
    /// out ([`Counters::thaw`]).
    inside: AtomicBool,
    /// The counts when the owner went inside, in [`Counts`] order.
    frozen: [AtomicU64; 4],
}

/// Allocations, allocated bytes, deallocations, freed bytes.
pub(crate) type Counts = [u64; 4];

/// How long a reader waits for a thread whose slow path is changing
/// `granted` and `countdown` together. That takes nanoseconds, unless the
/// thread is preempted in between, which on a loaded machine lasts
/// milliseconds, and a reader that gave up sooner would read such a
/// thread's allocated bytes as 0, making `stats()` step backwards
/// (`tests/thread_churn.rs` checks it never does). The bound is for a
/// thread that never finishes (one interrupted by a signal handler that
/// reads the stats, or killed): then the read is torn.
const READ_PATIENCE: Duration = Duration::from_secs(1);
/// Reads tried before the reader starts yielding its processor.
const READ_SPINS: usize = 100;

impl Counters {
    pub(crate) const fn new() -> Self {
        Counters {
            countdown: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            inside: AtomicBool::new(false),
            frozen: [const { AtomicU64::new(0) }; 4],
        }
    }

    /// The program's counts: heapprof's own allocations and frees left
    /// out.
    fn read(&self) -> Counts {
        let mut waiting_since = None;
        loop {
            for _ in 0..READ_SPINS {
                if let Ok(counts) = self.try_read() {
                    return counts;
                }
                std::hint::spin_loop();
            }
            // The writer is not running: let it.
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() > READ_PATIENCE {
                return self.try_read().unwrap_or_else(|torn| torn);
            }
            std::thread::yield_now();
        }
    }

    /// As [`Counters::read`], once: `Err` if the owner was changing
    /// fields that go together, with whatever mix of old and new values was
    /// there.
    fn try_read(&self) -> Result<Counts, Counts> {
        let before = self.seq.load(Acquire);
        let counts = if self.inside.load(Relaxed) {
            self.frozen.each_ref().map(|c| c.load(Relaxed))
        } else {
            self.live()
        };
        std::sync::atomic::fence(Acquire);
        let whole = before.is_multiple_of(2) && self.seq.load(Relaxed) == before;
        if whole { Ok(counts) } else { Err(counts) }
    }

    /// Everything counted, heapprof's own calls included. A countdown that
    /// ran out is below zero (wrapped), so the difference is taken as
    /// signed and kept from going below zero: read while the owner changes
    /// `granted` and `countdown`, it is off by at most one countdown and the
    /// size of the allocation that ended it.
    fn live(&self) -> Counts {
        let granted = self.granted.load(Relaxed);
        let countdown = self.countdown.load(Relaxed);
        let allocated = (granted as i128 - countdown as isize as i128).max(0) as u64;
        [
            self.allocs.load(Relaxed),
            allocated,
            self.frees.load(Relaxed),
            self.freed_bytes.load(Relaxed),
        ]
    }

    /// Runs `change` as one step for readers: they wait for it to end.
    /// Owner thread only.
    fn write_together(&self, change: impl FnOnce()) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        std::sync::atomic::fence(Release);
        change();
        self.seq.store(seq.wrapping_add(2), Release);
    }

    /// The owner goes inside heapprof: readers see the counts as they are
    /// now until [`Counters::thaw`]. Owner thread only, not nested.
    pub(crate) fn freeze(&self) {
        let now = self.live();
        self.write_together(|| {
            for (f, n) in self.frozen.iter().zip(now) {
                f.store(n, Relaxed);
            }
            self.inside.store(true, Relaxed);
        });
    }

    /// The owner leaves heapprof: what was counted since
    /// [`Counters::freeze`] is taken back out and returned (heapprof's own
    /// calls). The countdown is left as it is: it is the sampler's.
    pub(crate) fn thaw(&self) -> Counts {
        let [allocs, allocated, frees, freed] = self.frozen.each_ref().map(|c| c.load(Relaxed));
        let now = self.live();
        let countdown = self.countdown.load(Relaxed) as u64;
        self.write_together(|| {
            self.allocs.store(allocs, Relaxed);
            self.granted
                .store(allocated.wrapping_add(countdown), Relaxed);
            self.frees.store(frees, Relaxed);
            self.freed_bytes.store(freed, Relaxed);
            self.inside.store(false, Relaxed);
        });
        [
            now[0].wrapping_sub(allocs),
            now[1].wrapping_sub(allocated),
            now[2].wrapping_sub(frees),
            now[3].wrapping_sub(freed),
        ]
    }

    /// Returns the program's counts ([`Counters::read`]'s) and starts them
    /// again from zero, leaving what the profiler counted meanwhile, if
    /// the owner is inside it, to be taken out when it leaves. Owner thread
    /// only.
    pub(crate) fn take(&self) -> Counts {
        let inside = self.inside.load(Relaxed);
        let taken = if inside {
            self.frozen.each_ref().map(|c| c.load(Relaxed))
        } else {
            self.live()
        };
        self.write_together(|| {
            let sub = |c: &AtomicU64, n: u64| c.store(c.load(Relaxed).wrapping_sub(n), Relaxed);
            sub(&self.allocs, taken[0]);
            sub(&self.granted, taken[1]);
            sub(&self.frees, taken[2]);
            sub(&self.freed_bytes, taken[3]);
            if inside {
                for f in &self.frozen {
                    f.store(0, Relaxed);
                }
            }
        });
        taken
    }

    /// Replaces the countdown, leaving allocated bytes as they are. Owner
    /// thread, slow path.
    pub(crate) fn reset_countdown(&self, countdown: usize) {
        self.write_together(|| {
            let old = self.countdown.load(Relaxed);
            let granted = self.granted.load(Relaxed);
            self.granted.store(
                granted
                    .wrapping_add(countdown as u64)
                    .wrapping_sub(old as u64),
                Relaxed,
            );
            self.countdown.store(countdown, Relaxed);
        });
    }

    /// Takes back an allocation of `size` bytes that was counted but that
    /// the inner allocator failed. Owner thread, slow path.
    fn uncount_alloc(&self, size: usize) {
        bump(&self.allocs, 1u64.wrapping_neg());
        self.write_together(|| {
            let granted = self.granted.load(Relaxed);
            self.granted
                .store(granted.wrapping_sub(size as u64), Relaxed);
        });
    }
}

/// Only the owning thread writes, so load + store cannot lose an update.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// This thread's counters, in the fast path's thread-local (`local.rs`).
#[inline(always)]
fn with_counters<R>(f: impl FnOnce(&Counters) -> R) -> Result<R, std::thread::AccessError> {
    LOCAL.try_with(|l| f(&l.counters))
}

thread_local! {
    static REGISTRATION: Cell<Registration> = const { Cell::new(Registration::NotListed) };
    static RETIRE_ON_EXIT: Retire = const { Retire };
}

/// Counters of threads that are running, as addresses of their
/// thread-locals.
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Counts of threads that are not in the registry: moved here when a
/// thread exits, and by threads that count while unlisted
/// ([`flush_unlisted`]).
static UNLISTED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// heapprof's own allocations and frees, as [`Counters::thaw`] takes them
/// out of the threads' counts.
static OWN: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// This thread enters heapprof (the outermost reentrancy guard): what it
/// allocates and frees from now until [`leave_profiler`] is heapprof's.
pub(crate) fn enter_profiler() {
    let _ = with_counters(Counters::freeze);
}

/// This thread leaves heapprof: its own calls since [`enter_profiler`]
/// move from the thread's counts to heapprof's.
pub(crate) fn leave_profiler() {
    if let Ok(own) = with_counters(Counters::thaw) {
        for (total, n) in OWN.iter().zip(own) {
            total.fetch_add(n, Relaxed);
        }
    }
}

/// heapprof's own allocations and frees so far, in [`Counts`] order (a
/// thread still inside heapprof adds its share when it leaves).
pub(crate) fn own_totals() -> Counts {
    OWN.each_ref().map(|a| a.load(Relaxed))
}

/// Counts an allocation. Its bytes are counted by the countdown.
#[inline(always)]
pub(crate) fn on_alloc() {
    let _ = with_counters(|c| bump(&c.allocs, 1));
}

#[inline(always)]
pub(crate) fn on_free(size: usize) {
    let _ = with_counters(|c| {
        bump(&c.frees, 1);
        bump(&c.freed_bytes, size as u64);
    });
}

/// An allocation of `size` bytes that the inner allocator failed: it
/// was counted on the way in and is taken back.
pub(crate) fn on_alloc_failed(size: usize) {
    let _ = with_counters(|c| c.uncount_alloc(size));
}

/// A realloc from `old_size` to `new_size` bytes that the inner allocator
/// failed: the old block is still live, and neither its free nor the new
/// allocation happened.
pub(crate) fn on_realloc_failed(old_size: usize, new_size: usize) {
    let _ = with_counters(|c| {
        c.uncount_alloc(new_size);
        bump(&c.frees, 1u64.wrapping_neg());
        bump(&c.freed_bytes, (old_size as u64).wrapping_neg());
    });
}

/// Bytes this thread has allocated minus bytes it has freed, heapprof's
/// own included: the change across a stretch of code run on this thread
/// is what that code kept.
pub(crate) fn this_thread_net_bytes() -> i64 {
    with_counters(|c| {
        let [_, allocated, _, freed] = c.live();
        allocated.wrapping_sub(freed) as i64
    })
    .unwrap_or(0)
}

/// Whether this thread's counters are not in the registry (not yet, or
/// no more): then every free of it takes the slow path (its mask copy is
/// 0), which moves its counts to the unlisted totals.
#[inline]
pub(crate) fn unregistered() -> bool {
    REGISTRATION
        .try_with(Cell::get)
        .unwrap_or(Registration::Listed)
        != Registration::Listed
}

/// Whether this thread's counters have left the registry for good: it is
/// exiting.
pub(crate) fn exited() -> bool {
    REGISTRATION.try_with(Cell::get) == Ok(Registration::Exited)
}

/// Where this thread is with the registry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Registration {
    NotListed,
    /// In the registry, until the thread exits.
    Listed,
    /// The registry had no memory for the thread; tried again later.
    OutOfMemory,
    /// Taken out of the registry at exit (see [`retire`]).
    Exited,
}

/// Puts this thread's counters in the registry, and gives it its own copy
/// of the free filter's mask, once. Called from the allocation slow path
/// with the reentrancy guard held: a thread whose only calls are frees
/// never needs a place in the registry (see [`flush_unlisted`]).
///
/// After a try that found no memory, it tries again only with `retry`:
/// the caller must not be inside heapprof already. There, this thread may
/// hold a stripe of the sampled set, which a thread holding the registry's
/// lock may be waiting for (its registry growth can be a realloc that
/// looks the set up). The first try is safe anywhere: a thread allocates
/// while holding a stripe only to grow the set for a sample of its own,
/// and that sample's slow path made the first try.
pub(crate) fn register_thread(retry: bool) {
    let Ok(state) = REGISTRATION.try_with(Cell::get) else {
        return;
    };
    let should_try = match state {
        Registration::NotListed => true,
        Registration::OutOfMemory => retry,
        Registration::Listed | Registration::Exited => false,
    };
    if !should_try {
        return;
    }
    let Ok(addr) = with_counters(|c| c as *const Counters as usize) else {
        return;
    };
    // Listed from now: the registry's own growth below allocates, and must
    // not come back here for the lock this thread holds.
    let _ = REGISTRATION.try_with(|r| r.set(Registration::Listed));
    // The entry points into this thread's thread-local memory, so it must
    // leave the registry before that memory goes: `arm_exit_hooks`, or no
    // entry at all.
    let mut live = LIVE.lock();
    if live.try_reserve(1).is_err() || !arm_exit_hooks() {
        // No memory: try again later (its frees all take the slow path
        // until then).
        drop(live);
        let _ = REGISTRATION.try_with(|r| r.set(Registration::OutOfMemory));
        return;
    }
    live.push(addr);
    drop(live);
    crate::record::blocks::register_thread();
}

/// Arranges for [`retire`] to run when this thread exits, twice over: a
/// thread-local destructor, which runs early in the thread's exit, and a
/// `pthread` key destructor, which runs even for a thread that registers
/// while its thread-local destructors are over (a C thread whose first
/// allocation is in a `pthread_key` destructor: glibc runs those after
/// the thread-local ones, and repeats its rounds while keys are set).
/// False if the key could not be set.
fn arm_exit_hooks() -> bool {
    static KEY: std::sync::OnceLock<Option<libc::pthread_key_t>> = std::sync::OnceLock::new();
    let _ = RETIRE_ON_EXIT.try_with(|_| ());
    let Some(key) = *KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor is an
        // `extern "C"` function that never unwinds.
        (unsafe { libc::pthread_key_create(&mut key, Some(retire_at_key_exit)) } == 0)
            .then_some(key)
    }) else {
        return false;
    };
    // Any non-null value: the destructor runs only for non-null ones.
    // SAFETY: `key` was created above; the value is never dereferenced.
    unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<u8>().cast()) == 0 }
}

extern "C" fn retire_at_key_exit(_: *mut libc::c_void) {
    retire();
}

/// Whether this thread's thread-locals are still up (false once its
/// thread-local destructors have started running).
pub(crate) fn thread_alive() -> bool {
    RETIRE_ON_EXIT.try_with(|_| ()).is_ok()
}

struct Retire;

impl Drop for Retire {
    fn drop(&mut self) {
        retire();
    }
}

/// Takes an exiting thread's counters out of the registry, its counts into
/// the unlisted totals, and its mask copy out of the mask list, before its
/// thread-local memory goes away. What the thread allocates and frees after
/// this (later destructors) takes the slow path and goes to the unlisted
/// totals too ([`flush_unlisted`]). Runs once; later calls do nothing.
fn retire() {
    if REGISTRATION.try_with(Cell::get) != Ok(Registration::Listed) {
        return;
    }
    let _busy = crate::support::reentry::Busy::enter();
    let Ok(addr) = with_counters(|c| c as *const Counters as usize) else {
        return;
    };
    let mut live = LIVE.lock();
    if let Some(i) = live.iter().position(|&a| a == addr) {
        live.swap_remove(i);
    }
    // Under the lock: a reader sees the counts in the registry or in the
    // totals, never in both or neither.
    if let Ok(counts) = with_counters(Counters::take) {
        add_unlisted(counts);
    }
    let _ = REGISTRATION.try_with(|r| r.set(Registration::Exited));
    drop(live);
    crate::record::blocks::unregister_thread();
}

/// For a thread that is not in the registry (not yet, or no more), from its
/// slow path: moves what it counted to the unlisted totals, so that
/// `stats()` sees it. An exiting thread's countdown is kept at zero, so
/// that its allocations come here too. Not inside the profiler: there the
/// counts are the profiler's own, taken out when it leaves.
pub(crate) fn flush_unlisted() {
    if !unregistered() || crate::support::reentry::is_busy() {
        return;
    }
    let exiting = exited();
    let _ = with_counters(|c| {
        add_unlisted(c.take());
        if exiting {
            c.reset_countdown(0);
        }
    });
}

fn add_unlisted(counts: Counts) {
    for (total, n) in UNLISTED.iter().zip(counts) {
        total.fetch_add(n, Relaxed);
    }
}

/// Sums the counters of running and exited threads: allocations,
/// allocated bytes, deallocations, freed bytes.
pub(crate) fn totals() -> Counts {
    // The unlisted totals are read under the registry's lock: a thread that
    // exits moves its counts from the registry to them under that lock, so
    // reading them before taking it could miss a thread that exits in
    // between, and the totals would go backwards.
    let live = LIVE.lock();
    let mut sum = UNLISTED.each_ref().map(|a| a.load(Relaxed));
    for &addr in live.iter() {
        // SAFETY: an address stays in LIVE only while its thread runs: the
        // thread's `Retire` destructor removes it, under this same lock,
        // before the thread's thread-local memory is released. In a fork
        // child the other threads' entries are removed by the child
        // handler (`forget_other_threads_after_fork`) before anything else
        // runs there.
        let counters = unsafe { &*(addr as *const Counters) };
        for (s, n) in sum.iter_mut().zip(counters.read()) {
            *s += n;
        }
    }
    sum
}

/// In a forked child, before any other code runs there: the registry's
/// other entries are the parent's other threads, which do not exist here.
/// Their counts move to the unlisted totals (their memory is still mapped
/// at this point, but glibc recycles, and may unmap, their stacks, where
/// the thread-locals live, as soon as the child starts threads of its
/// own), and their entries go, so that nothing reads that memory later.
pub(crate) fn forget_other_threads_after_fork() {
    let Ok(own) = with_counters(|c| c as *const Counters as usize) else {
        return;
    };
    let mut live = LIVE.lock();
    for &addr in live.iter().filter(|&&a| a != own) {
        // SAFETY: still the parent's thread-local memory, copied into the
        // child and mapped until the child creates or reaps threads; this
        // runs in the fork's child handler, before either can happen.
        let counters = unsafe { &*(addr as *const Counters) };
        // One try: a torn read cannot become whole, its thread is gone.
        let counts = counters.try_read().unwrap_or_else(|torn| torn);
        for (total, n) in UNLISTED.iter().zip(counts) {
            total.fetch_add(n, Relaxed);
        }
    }
    live.retain(|&a| a == own);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// A reader must wait out a writer preempted in the middle of
    /// [`Counters::reset_countdown`], however long that lasts, rather than
    /// take the half-written pair.
    #[test]
    fn a_reader_waits_for_a_preempted_writer() {
        static C: Counters = Counters::new();
        // 1000 bytes granted; a 5000-byte allocation ran the countdown out
        // (wrapped below zero): 5000 bytes allocated.
        C.reset_countdown(1000);
        C.countdown.store(1000usize.wrapping_sub(5000), Relaxed);
        assert_eq!(C.try_read().unwrap()[1], 5000);

        let half_written = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                // reset_countdown(2000), preempted between its two stores.
                C.seq.store(3, Relaxed);
                let old = C.countdown.load(Relaxed) as u64;
                let granted = C.granted.load(Relaxed);
                C.granted
                    .store(granted.wrapping_add(2000).wrapping_sub(old), Relaxed);
                half_written.wait();
                std::thread::sleep(Duration::from_millis(50));
                C.countdown.store(2000, Relaxed);
                C.seq.store(4, Release);
            });
            half_written.wait();
            assert!(C.try_read().is_err(), "the pair is half written");
            assert_eq!(
                C.read()[1],
                5000,
                "allocated bytes, read while the writer sleeps"
            );
        });
    }
}
