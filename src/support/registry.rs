//! The registry of threads' exact counters: process-wide allocation counts
//! beside the sampled estimates, what Go's `runtime.MemStats` gives, so
//! that users can compare "the profile says 320 MB" with "the heap is
//! 1.2 GB".
//!
//! Each thread counts in its own `Counters` (`thread/counters.rs`), so the
//! fast path touches no shared cache line. A thread puts its counters in
//! the registry on its first allocation (every thread's first allocation
//! takes the slow path: its countdown starts at zero), and [`totals`] sums
//! the registry. The registry holds addresses of thread-local memory, so
//! an entry must leave before its thread's memory does: the thread's exit
//! hooks (`thread::arm_exit_hooks`) take it out ([`retire`]). A thread
//! outside the registry (before its first allocation, and from its exit
//! on) has a free-filter mask of 0 and, once exiting, a countdown kept at
//! zero, so each of its calls reaches the slow path, which moves its
//! counts to the unlisted totals ([`flush_unlisted`]): frees and
//! allocations made by destructors that run after the exit hook are
//! counted, however many.
//!
//! The registry also lists each thread's copy of the free filter's mask
//! (`thread::Local::filter_mask`; the filter is `record/blocks.rs`'s), so
//! that a change of mask reaches every running thread.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use crate::support::growth;
use crate::support::lock::{self, Lockable, Mutex, rank};
use crate::support::mappings;
use crate::support::reentry;
use crate::support::signals;
#[cfg(doc)]
use crate::thread::counters::Counters;
use crate::thread::counters::{Counts, Nudge, SharedCounts};
use crate::thread::{self, ListPlaces, Local, Registration};

/// The threads that are running, for their counters: addresses of their
/// thread-locals ([`local_at`]).
///
/// Listing contract (for [`LIVE`] and [`MASK_COPIES`]): an address stays
/// listed only while its thread runs. The thread's exit hook ([`retire`])
/// removes it under the list's lock before the thread's thread-local
/// memory is released, and in a fork child the child handler
/// ([`forget_other_threads_after_fork`]) removes the other threads'
/// entries before anything else runs there. Both leave a list as it is
/// when its lock is held by code a signal handler interrupted; an entry
/// outlives its thread only if that handler then calls `pthread_exit`
/// or `fork`, which are not async-signal-safe: a program that does so
/// has already left what its C library defines.
static LIVE: Mutex<{ rank::REGISTRY }, Vec<usize>> = Mutex::new(Vec::new());
/// Counts of threads that are not in the registry: moved here when a
/// thread exits, and by threads that count while unlisted
/// ([`flush_unlisted`]).
static UNLISTED: SharedCounts = SharedCounts::new();
/// The mask a thread's copy starts from when it joins the registry, until
/// the sampled set sets another ([`set_filter_mask`]): "page-aligned
/// blocks only".
pub(crate) const INITIAL_FILTER_MASK: usize = 4096 - 1;

/// `ptr & FILTER_MASK == 0` means "may be sampled" (blocks above
/// `record::blocks::LARGE` pass by their size): the value every listed
/// thread's copy holds. Written under [`MASK_COPIES`]' lock only.
static FILTER_MASK: AtomicUsize = AtomicUsize::new(INITIAL_FILTER_MASK);
/// The threads whose mask copies are kept up to date: addresses of their
/// thread-locals ([`local_at`]). Its lock keeps `FILTER_MASK` and every
/// copy in step with the sampled set's count.
static MASK_COPIES: Mutex<{ rank::MASKS }, Vec<usize>> = Mutex::new(Vec::new());

/// The thread-local at `addr`, an entry of [`LIVE`] or [`MASK_COPIES`]
/// ([`own_local`]'s address of a thread's whole `Local`, so that its
/// fields are reached through it).
///
/// # Safety
/// `addr` is in one of the lists, read under its lock, or is the caller's
/// own: a running thread's `Local` (entries leave before their thread's
/// memory goes). The one exception is `retire`'s: a thread that exits
/// from a signal handler while the code it interrupted holds a list's
/// lock leaves its entry behind, and readers of the list then touch
/// memory its thread no longer has. Another thread's `Local` is shared
/// with its owner, which writes its `Cell`s: through the reference, only
/// its atomic fields may be touched.
unsafe fn local_at<'a>(addr: usize) -> &'a Local {
    // SAFETY: per the contract, a live `Local`, whose address was taken
    // from a reference to the whole of it; callers touch only its atomics
    // when it is another thread's.
    unsafe { &*(addr as *const Local) }
}

/// One of the lists above, whose entries each keep their index in their
/// `Local` (`place`), so that a thread leaves the list in constant time:
/// a service with thousands of threads, leaving in any order, never has
/// each exit search the list under the lock every thread start takes.
struct List {
    place: fn(&ListPlaces) -> &AtomicUsize,
}

/// [`LIVE`]'s indices.
const LIVE_LIST: List = List {
    place: |p| &p.counters,
};
/// [`MASK_COPIES`]' indices.
const MASK_LIST: List = List { place: |p| &p.mask };

impl List {
    /// Where entry `addr` keeps its index.
    ///
    /// # Safety
    /// As for [`local_at`].
    unsafe fn place_of(&self, addr: usize) -> &AtomicUsize {
        // SAFETY: the caller's contract is `local_at`'s.
        (self.place)(&unsafe { local_at(addr) }.list_places)
    }

    /// Adds `addr`, this thread's own entry, to `list` (locked, with room).
    fn push(&self, list: &mut Vec<usize>, addr: usize) {
        // SAFETY: the caller's own entry.
        unsafe { self.place_of(addr) }.store(list.len(), Relaxed);
        list.push(addr);
    }

    /// Takes `addr`, this thread's own entry, out of `list` (locked);
    /// false if it is not there. The last entry moves into its index.
    fn remove(&self, list: &mut Vec<usize>, addr: usize) -> bool {
        // SAFETY: the caller's own entry.
        let kept = unsafe { self.place_of(addr) }.load(Relaxed);
        let Some(i) = (list.get(kept) == Some(&addr))
            .then_some(kept)
            .or_else(|| list.iter().rposition(|&a| a == addr))
        else {
            return false;
        };
        list.swap_remove(i);
        if let Some(&moved) = list.get(i) {
            // SAFETY: an entry of the locked list.
            unsafe { self.place_of(moved) }.store(i, Relaxed);
        }
        true
    }

    /// After `list` (locked) kept only `addr`, this thread's own entry, if
    /// it was there: its index is 0.
    fn kept_only(&self, list: &[usize], addr: usize) {
        if list.first() == Some(&addr) {
            // SAFETY: the caller's own entry.
            unsafe { self.place_of(addr) }.store(0, Relaxed);
        }
    }
}

// Inlined: the free filter's second stage (`record::free::dealloc`)
// asks [`listed`] on every free that passes the page test, and a call
// there costs it the register saves it is written to avoid.
#[inline]
fn registration() -> Option<Registration> {
    thread::with(|l| l.registration.get())
}

fn set_registration(r: Registration) {
    thread::with(|l| l.registration.set(r));
}

/// Whether this thread's counters are in the registry. If not (not yet, or
/// no more), every free of it takes the slow path (its mask copy is 0),
/// which moves its counts to the unlisted totals.
#[inline]
pub(crate) fn listed() -> bool {
    registration().is_none_or(|r| r == Registration::Listed)
}

/// Whether this thread's counters have left the registry for good: it is
/// exiting.
pub(crate) fn exited() -> bool {
    registration() == Some(Registration::Exited)
}

/// The address that stands for this thread in the registry's lists.
fn own_local() -> Option<usize> {
    thread::with(|l| l as *const Local as usize)
}

/// Puts this thread's counters in the registry, and gives it its own copy
/// of the free filter's mask, once. Called from the allocation slow path
/// inside the profiler: a thread whose only calls are frees never needs a
/// place in the registry (see [`flush_unlisted`]).
///
/// After a try that found no memory, it tries again only with `retry`:
/// the caller must not be inside heapprof already. There, this thread may
/// hold a stripe of the sampled set, which a thread holding the registry's
/// lock may be waiting for (its registry growth can be a realloc that
/// looks the set up). The first try is safe anywhere: a thread allocates
/// while holding a stripe only to grow the set for a sample of its own,
/// and that sample's slow path made the first try.
pub(crate) fn register_thread(retry: bool) {
    let should_try = match registration() {
        Some(Registration::NotListed) => true,
        Some(Registration::OutOfMemory) => retry,
        _ => false,
    };
    let Some(addr) = own_local().filter(|_| should_try) else {
        return;
    };
    let own_namespace = match mappings::namespace_of_its_own() {
        Some(own) => own,
        // Before the process's setup has looked (another thread is at it,
        // or it waits for the configuration's read): a look needs no
        // heapprof lock held, as on a retry; else listed at a later slow
        // path (this thread's frees come to the slow path meanwhile).
        None if retry => {
            mappings::note_first_objects();
            mappings::namespace_of_its_own() == Some(true)
        }
        None => return,
    };
    if own_namespace {
        // Its exit hooks would never run, so an entry would outlive it:
        // it is counted as an exiting thread is, at each call.
        leave_counting();
        return;
    }
    // Listed from now: the registry's own growth below allocates, and must
    // not come back here for the lock this thread holds.
    set_registration(Registration::Listed);
    // The entry points into this thread's thread-local memory, so it must
    // leave the registry before that memory goes: the exit hooks, or no
    // entry at all.
    let mut live = LIVE.lock();
    if !growth::reserve_vec(&mut live, 1) || !thread::arm_exit_hooks(retire) {
        // No memory: try again later (its frees all take the slow path
        // until then).
        drop(live);
        set_registration(Registration::OutOfMemory);
        return;
    }
    LIVE_LIST.push(&mut live, addr);
    drop(live);
    list_mask_copy();
}

/// The exit hook: takes an exiting thread's counters out of the registry,
/// its counts into the unlisted totals, and its mask copy out of the mask
/// list, before its thread-local memory goes away. What the thread
/// allocates and frees after this (later destructors) takes the slow path
/// and goes to the unlisted totals too ([`flush_unlisted`]). Runs once;
/// later calls do nothing.
fn retire() {
    if registration() != Some(Registration::Listed) {
        return;
    }
    // The thread may end (`exit` or `pthread_exit` called from a signal
    // handler) while the code the handler interrupted holds one of
    // heapprof's locks, perhaps one retiring takes: waiting for it would
    // hang for good, so then each list is left as it is if its lock is
    // taken. After `exit`, which ends the process, that is harmless; after
    // `pthread_exit` (not async-signal-safe) a list keeps an entry for
    // thread-local memory a later thread may be given, which totals read
    // and rate changes write (`nudge_other_threads`).
    let interrupted = lock::any_lock_held();
    let _inside = reentry::Inside::enter();
    let Some(addr) = own_local() else {
        return;
    };
    let live = if interrupted {
        LIVE.try_lock()
    } else {
        Some(LIVE.lock())
    };
    if let Some(mut live) = live {
        LIVE_LIST.remove(&mut live, addr);
        // No nudge comes after this: settle the last one under the lock
        // that nudges are made under.
        thread::with(|l| l.counters.settle_nudge());
        // Under the lock: a reader sees the counts in the registry or in
        // the totals, never in both or neither. A measure active on the
        // thread (a later destructor's) reads them at its end, which moves
        // them then.
        if let Some(counts) =
            thread::with(|l| (!l.measure.aside()).then(|| l.counters.take())).flatten()
        {
            UNLISTED.add(counts);
        }
        // heapprof's own counts likewise, a stay inside that never ends
        // (the HTTP server's connection threads exit inside) included.
        if let Some(own) = thread::with(|l| l.counters.take_own()) {
            reentry::add_unlisted_own(own);
        }
        leave_counting();
    }
    unlist_mask_copy(interrupted);
}

/// Marks this thread out of the registry for good. From here each of its
/// allocations takes the slow path, to be counted there
/// ([`flush_unlisted`]) and sampled from the countdown the sampler holds
/// (`record::countdown::expired`): what the counter has left of it joins
/// the part held there.
fn leave_counting() {
    set_registration(Registration::Exited);
    thread::with(|l| {
        let left = l.counters.countdown();
        l.sampler.hold_with((left as isize).max(0) as usize);
        l.counters.reset_countdown(0);
    });
}

/// The exit hook, run now on the calling thread: for tests of what comes
/// after it.
#[cfg(test)]
pub(crate) fn retire_for_test() {
    retire();
}

/// Gives this thread a mask copy of its own, kept up to date from now on.
/// From the slow path inside the profiler (the list may grow; the blocks
/// it allocates and frees are never sampled, so freeing them cannot come
/// back here for the lock).
fn list_mask_copy() {
    let Some(addr) = own_local() else {
        return;
    };
    let mut copies = MASK_COPIES.lock();
    if !growth::reserve_vec(&mut copies, 1) {
        // No memory to list the copy: it stays 0, and every free of this
        // thread looks its block up. Slower, never wrong.
        return;
    }
    MASK_LIST.push(&mut copies, addr);
    thread::with(|l| l.filter_mask.store(FILTER_MASK.load(SeqCst), SeqCst));
}

/// Takes this thread's copy out of the list, before its thread-local
/// memory goes away, and leaves it at 0: the frees of the thread's last
/// destructors then look every block up. With `interrupted` (see
/// `retire`), only if the list's lock is free. True if the copy was
/// listed.
fn unlist_mask_copy(interrupted: bool) -> bool {
    let Some(addr) = own_local() else {
        return false;
    };
    let copies = if interrupted {
        MASK_COPIES.try_lock()
    } else {
        Some(MASK_COPIES.lock())
    };
    let Some(mut copies) = copies else {
        return false;
    };
    let listed = MASK_LIST.remove(&mut copies, addr);
    thread::with(|l| l.filter_mask.store(0, SeqCst));
    listed
}

/// Takes this thread's copy out of the list and leaves it at 0, so that
/// every free of the thread reaches the slow path (an `assert_no_leak`
/// sees each one); true if the copy was listed. Give it back with
/// [`resume_mask_copy`], on this thread, before it exits.
pub(crate) fn suspend_mask_copy() -> bool {
    unlist_mask_copy(false)
}

/// Lists this thread's copy again after [`suspend_mask_copy`] returned
/// true, with the mask of now.
pub(crate) fn resume_mask_copy() {
    list_mask_copy();
}

/// Sets the free filter's mask to `mask()`, computed under the lock that
/// serializes mask changes, in every listed thread's copy.
pub(crate) fn set_filter_mask(mask: impl FnOnce() -> usize) {
    let copies = MASK_COPIES.lock();
    let mask = mask();
    FILTER_MASK.store(mask, SeqCst);
    for &addr in copies.iter() {
        // SAFETY: a listed address is a running thread's thread-local
        // memory, by the listing contract on `LIVE` (its exception is a
        // program that calls `pthread_exit` or `fork` from a signal
        // handler). The copy is atomic: its thread reads it.
        let copy = &unsafe { local_at(addr) }.filter_mask;
        copy.store(mask, SeqCst);
    }
}

/// For a thread that is not in the registry (not yet, or no more), from its
/// slow path: moves what it counted to the unlisted totals, so that
/// `stats()` sees it. An exiting thread's countdown is kept at zero, so
/// that its allocations come here too, inside the profiler or not. The
/// counts stay where they are inside the profiler (there they are the
/// profiler's own, taken out when it leaves) and while a measure is active
/// on the thread (`thread::measure`: it reads the thread's counts, and
/// calls this when it ends).
pub(crate) fn flush_unlisted() {
    if listed() {
        return;
    }
    let exiting = exited();
    let inside = reentry::is_inside();
    thread::with(|l| {
        if !inside && !l.measure.aside() {
            UNLISTED.add(l.counters.take());
        }
        if exiting {
            l.counters.reset_countdown(0);
        }
    });
}

/// The program's counts, summed over running and exited threads.
///
/// Every listed thread's frees are read before any listed thread's
/// allocations, so a block freed by the time its freeing thread is read
/// was allocated before its allocating thread is read: no block that
/// listed threads allocate and free counts as freed and not allocated,
/// and their live counts are at least those at the moment between the two
/// passes (more by what was allocated after it). Each pass waits for a
/// thread in the middle of a change as [`Counters::read`] does, so the
/// registry's lock may be held twice as long as for one pass.
pub(crate) fn totals() -> Counts {
    // The unlisted totals are read under the registry's lock: a thread that
    // exits moves its counts from the registry to them under that lock, so
    // reading them before taking it could miss a thread that exits in
    // between, and the totals would go backwards.
    let live = LIVE.lock();
    let unlisted = UNLISTED.get();
    let sum_listed = || {
        live.iter().fold(Counts::default(), |sum, &addr| {
            // SAFETY: a listed address is a running thread's thread-local
            // memory, by the listing contract on `LIVE` (its exception is a
            // program that calls `pthread_exit` or `fork` from a signal
            // handler).
            let counters = &unsafe { local_at(addr) }.counters;
            sum.plus(counters.read())
        })
    };
    let frees = sum_listed();
    let allocations = sum_listed();
    unlisted.plus(Counts {
        allocations: allocations.allocations,
        allocated_bytes: allocations.allocated_bytes,
        deallocations: frees.deallocations,
        freed_bytes: frees.freed_bytes,
    })
}

/// After a rate change to `epoch`: nudges every other listed thread's
/// countdown to zero (`Counters::nudge`), so that each one's next
/// allocation takes the slow path and starts over at the new rate.
///
/// A nudge is confirmed, not assumed: a thread allocating as it lands
/// often overwrites it (its fast path stores what it loaded less its
/// allocation, and its core may publish that store some time after the
/// zero), so the threads are gone over again until each one's countdown
/// has been drawn at `epoch` or is not running (zero, or run out: its
/// next allocation, or the one under way, reaches the slow path, which
/// reads the rate after replacing the countdown,
/// `record::countdown::expired`), and still is [`NUDGE_SETTLE`] later. A
/// thread still not confirmed after [`NUDGE_PATIENCE`] (stopped while
/// changing its counters, or overwriting every nudge) takes the rate when
/// its countdown ends.
///
/// Each pass is made under the registry's lock, one setter at a time,
/// with signals held off: a thread whose counters a nudge is changing
/// waits for it, so a handler must not stop it half way. The lock is let
/// go between passes. Called from a signal handler whose interrupted code
/// holds one of heapprof's locks, it nudges only while the registry's
/// lock is free (as `retire` does): waiting could hang for good.
///
/// Not confirmable: a thread preempted between its fast path's load and
/// store of the countdown for longer than [`NUDGE_SETTLE`], whose store
/// then overwrites the zero after this returns.
pub(crate) fn nudge_other_threads(epoch: u64) {
    let interrupted = lock::any_lock_held();
    let _inside = reentry::Inside::enter();
    let own = own_local();
    let began = std::time::Instant::now();
    let mut settled_since = None;
    let mut made = false;
    for pass in 0u32.. {
        // Signals held off while the registry's lock is held, too: a
        // handler that reads the stats would wait for it for good.
        let held_off = signals::HeldOff::all_but_faults();
        let live = if interrupted {
            LIVE.try_lock()
        } else {
            Some(LIVE.lock())
        };
        let Some(live) = live else {
            return;
        };
        let mut unconfirmed = false;
        for &addr in live.iter().filter(|&&a| Some(a) != own) {
            // SAFETY: as in `totals`: a listed address is a running thread's.
            let counters = &unsafe { local_at(addr) }.counters;
            if counters.rate_epoch() < epoch {
                match counters.nudge() {
                    Nudge::NotRunning => {}
                    Nudge::Made => (made, unconfirmed) = (true, true),
                    Nudge::Busy => unconfirmed = true,
                }
            }
        }
        // Let go between passes: threads start and exit meanwhile.
        drop(live);
        drop(held_off);
        if unconfirmed {
            settled_since = None;
        } else if !made {
            // No zero of this call's to be overwritten.
            return;
        } else {
            let since = *settled_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= NUDGE_SETTLE {
                return;
            }
        }
        if began.elapsed() > NUDGE_PATIENCE {
            return;
        }
        if pass < NUDGE_SPINS {
            std::hint::spin_loop();
        } else {
            // A thread preempted while it changes its counters, or one
            // overwriting the nudges: let it run.
            std::thread::yield_now();
        }
    }
}

/// Passes [`nudge_other_threads`] makes at once, before it yields between
/// passes.
const NUDGE_SPINS: u32 = 16;
/// How long every nudged countdown must stay zero, run out or drawn at the
/// new rate before [`nudge_other_threads`] takes the change as made: a
/// store a core has not yet published lands within far less on a running
/// thread.
const NUDGE_SETTLE: std::time::Duration = std::time::Duration::from_micros(50);
/// How long [`nudge_other_threads`] goes on trying: a thread changing its
/// counters takes nanoseconds, unless it is preempted there, which on a
/// loaded machine lasts milliseconds.
const NUDGE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// heapprof's own allocations and frees so far: the totals of threads
/// outside the registry and the counts each listed thread keeps, its stay
/// inside so far included (a thread that never leaves, as the HTTP
/// server's and the pusher's, counts as it goes). Read under the
/// registry's lock, as [`totals`] is: a thread leaving the registry moves
/// its counts under it, so they are seen in one place.
pub(crate) fn own_totals() -> Counts {
    let live = LIVE.lock();
    let mut sum = reentry::unlisted_own_totals();
    for &addr in live.iter() {
        // SAFETY: as in `totals`: a listed address is a running thread's.
        let counters = &unsafe { local_at(addr) }.counters;
        sum = sum.plus(counters.read_own());
    }
    sum
}

/// In a forked child, before any other code runs there: the registry's
/// other entries are the parent's other threads, which do not exist here.
/// Their counts move to the unlisted totals (their memory is still mapped
/// at this point, but glibc recycles, and may unmap, their stacks, where
/// the thread-locals live, as soon as the child starts threads of its
/// own), and their entries go, so that nothing reads that memory later.
/// Returns whether the parent may have had other threads: true unless the
/// list was readable and held this thread alone.
pub(crate) fn forget_other_threads_after_fork() -> bool {
    let Some(own) = own_local() else {
        return true;
    };
    thread::with(|l| l.counters.end_nudge_after_fork());
    // Free, as the fork handlers left them, unless this thread forked from
    // a signal handler while its interrupted code held one (then that code
    // is changing the list: it is left as it is, see `process/fork.rs`).
    let Some(mut live) = LIVE.try_lock() else {
        return true;
    };
    let others = live.iter().any(|&a| a != own);
    for &addr in live.iter().filter(|&&a| a != own) {
        // SAFETY: still the parent's thread-local memory, copied into the
        // child and mapped until the child creates or reaps threads; this
        // runs in the fork's child handler, before either can happen.
        let counters = &unsafe { local_at(addr) }.counters;
        // One try: a torn read cannot become whole, its thread is gone.
        UNLISTED.add(counters.try_read().unwrap_or_else(|torn| torn));
        reentry::add_unlisted_own(counters.try_read_own().unwrap_or_else(|torn| torn));
    }
    live.retain(|&a| a == own);
    LIVE_LIST.kept_only(&live, own);
    drop(live);
    // The mask copies likewise: the others are gone here, and the child
    // may reuse or unmap their memory once it starts threads of its own.
    if let Some(own) = own_local()
        && let Some(mut copies) = MASK_COPIES.try_lock()
    {
        copies.retain(|&a| a == own);
        MASK_LIST.kept_only(&copies, own);
    }
    others
}

/// The registry's locks, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    f(&LIVE);
    f(&MASK_COPIES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, mpsc};

    /// Every entry of both lists keeps the index it is at.
    fn assert_places_hold() {
        fn check(list: &[usize], kind: &List, name: &str) {
            for (i, &addr) in list.iter().enumerate() {
                // SAFETY: an entry of a list the caller holds locked.
                let kept = unsafe { kind.place_of(addr) }.load(Relaxed);
                assert_eq!(kept, i, "{name}: the entry at {i} says {kept}");
            }
        }
        check(&LIVE.lock(), &LIVE_LIST, "LIVE");
        check(&MASK_COPIES.lock(), &MASK_LIST, "MASK_COPIES");
    }

    /// Threads leaving in an order that is neither the order they joined
    /// in nor its reverse leave each remaining entry's index right, and
    /// take their own entries with them.
    #[test]
    fn entries_keep_their_indices_as_threads_leave_in_any_order() {
        const THREADS: usize = 48;
        let ready = Arc::new(Barrier::new(THREADS + 1));
        let (listed_tx, listed_rx) = mpsc::channel();
        let mut threads = Vec::new();
        for _ in 0..THREADS {
            let (go, wait) = mpsc::channel::<()>();
            let ready = Arc::clone(&ready);
            let listed_tx = listed_tx.clone();
            let handle = std::thread::spawn(move || {
                reentry::Inside::enter_for(|| register_thread(true));
                listed_tx.send(own_local().unwrap()).unwrap();
                ready.wait();
                let _ = wait.recv();
            });
            threads.push((go, handle));
        }
        ready.wait();
        let addrs: Vec<usize> = listed_rx.iter().take(THREADS).collect();
        let listed = LIVE.lock().iter().filter(|a| addrs.contains(a)).count();
        assert_eq!(listed, THREADS, "every thread is listed");
        assert_places_hold();
        // 7 is prime to 48: every thread once, in a scattered order.
        for k in 0..THREADS {
            let i = k * 7 % THREADS;
            let (go, handle) = std::mem::replace(
                &mut threads[i],
                (mpsc::channel().0, std::thread::spawn(|| {})),
            );
            go.send(()).unwrap();
            handle.join().unwrap();
            assert_places_hold();
        }
        let live = LIVE.lock();
        assert!(
            addrs.iter().all(|a| !live.contains(a)),
            "an exited thread is still listed"
        );
    }
}
