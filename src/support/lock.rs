//! heapprof's mutex: one futex word, with no state anywhere else.
//!
//! Why not `parking_lot`: two of its properties make it unfit for a
//! global allocator's own locks:
//!
//! * **fork.** parking_lot keeps the queue of threads waiting for a lock in
//!   a process-wide hash table in ordinary memory. `fork` copies that table
//!   into the child, with entries for waiting threads that do not exist
//!   there. The fork handlers take every heapprof lock (see `process/fork.rs`), so
//!   other allocating threads are often parked on one at that moment; when
//!   the child's handler unlocks it, parking_lot's eventual fairness can
//!   hand the lock directly to a phantom waiter, leaving it locked for
//!   good, and the child hangs on its next sample or profile
//!   (`tests/fork.rs` forks under exactly that load).
//! * **allocation under its own locks.** parking_lot_core grows that hash
//!   table, allocating, while it holds all of the table's bucket locks. If
//!   heapprof samples that allocation and one of its locks is contended,
//!   the thread parks and needs a bucket lock it already holds.
//!
//! A futex mutex (the same algorithm as the standard library's) keeps its
//! waiters in the kernel, which does not copy them into a forked child:
//! unlocking in the child wakes nobody and leaves the lock free. Locking
//! and unlocking never allocate. `lock_api` supplies the guard types and
//! the usual `lock()` / `force_unlock()`.
//!
//! # Ranks
//!
//! Every lock has a rank, part of its type ([`Mutex`]`<RANK, T>`), declared
//! once in [`rank`]: a thread that holds a lock may wait only for locks of
//! a higher rank, or of the same rank in a fixed order: the fork handlers
//! and a copy of the site table (`record::sites::try_packed`) take the
//! stripes of one table in index order, and the site table's stripes
//! before its overflow sites and those before its not-unwound site, as a
//! sample that retires a site does (the checker does not see that order
//! within a rank). Debug builds check it on
//! every wait and abort with the two ranks on a violation. `fork`'s
//! prepare handler takes the locks of its table, `FORK_LOCKS`, in rank
//! order (`process/fork.rs`; the HTTP locks and the symbol-lookup lock
//! are handled apart).
//!
//! The locks a free of a sampled block takes (the sampled set's, the site
//! table's, the spare pools', the mask copies'), and the peak's and the
//! registry's ranked among them, are those [`rank::free_path`] names:
//! each thread counts those it holds or is waiting for
//! (`thread::HeldLocks`), up before it asks for one and down after it lets
//! go. A free that runs on the thread in between, a nested one or a
//! signal handler's, sees the count ([`free_path_lock_held`]) and must not
//! take the free path's locks: the one it would wait for may be the one
//! this thread holds (see `record::free::dealloc`).

use std::sync::atomic::{
    AtomicU32, Ordering::Acquire, Ordering::Relaxed, Ordering::Release, Ordering::SeqCst,
    compiler_fence,
};

use crate::thread;

/// The lock ranks, in the order locks are taken.
pub(crate) mod rank {
    /// One fork at a time through heapprof's fork handlers
    /// (`process/fork.rs`), held from the prepare handler to the parent's
    /// or the child's.
    pub(crate) const FORK: u8 = 0;
    /// The HTTP endpoint's one-build-at-a-time lock (`http/mod.rs`), held
    /// across a whole profile build; not taken by `fork`.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) const HTTP_BUILD: u8 = 1;
    /// The HTTP server's connections and deltas counted per peer
    /// (`http/server.rs`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) const HTTP_PEERS: u8 = 2;
    /// Held around every symbol lookup (`output/symbolize.rs`); `fork`
    /// takes it only if free.
    pub(crate) const SYMBOL_LOOKUP: u8 = 3;
    /// The loaded-object walk (`support/mappings.rs`).
    pub(crate) const MAPPINGS: u8 = 4;
    /// The symbol cache (`output/symbolize.rs`).
    pub(crate) const SYMBOLS: u8 = 5;
    /// The label-set table's index (`labels/table.rs`): taken with no
    /// other lock held, inside the guard, to find or store a set, on a
    /// sampled allocation (after its stack is captured, before its site
    /// is) and on entering a scope; storing a set allocates under it, and
    /// those allocations may take the registry's or the free path's locks,
    /// all of higher rank. Reading a stored set takes no lock.
    pub(crate) const LABELS: u8 = 6;
    /// The site table's stripes and the sites kept apart from them: the
    /// overflow site of each label set and the site of samples that were
    /// not unwound (`record/sites.rs`). Taken together in that order, the
    /// stripes in index order.
    pub(crate) const SITES: u8 = 7;
    /// The spare pools (`record/spare.rs`).
    pub(crate) const SPARE: u8 = 8;
    /// The peak copy (`record/peak.rs`).
    pub(crate) const PEAK: u8 = 9;
    /// The registry of threads' counters (`support/registry.rs`).
    pub(crate) const REGISTRY: u8 = 10;
    /// The list of threads' mask copies (`support/registry.rs`).
    pub(crate) const MASKS: u8 = 11;
    /// The sampled set's stripes (`record/blocks.rs`).
    pub(crate) const BLOCKS: u8 = 12;
    /// How many ranks there are.
    pub(crate) const COUNT: usize = 13;

    /// Whether a free on a thread that holds a lock of this rank must
    /// not take the free path's locks: every rank from [`SITES`] on. The
    /// free of a sampled block takes locks of ranks `SITES` to `BLOCKS`
    /// (set, site, spare pool, mask copies), so a free under any lock
    /// ranked among or after them would wait out of order: it is put off
    /// instead (`record::free`). The peak's lock (a free lowers the peak's
    /// estimate without it) and the registry's are ranked among them: a
    /// signal handler's free can interrupt a thread that holds either.
    pub(crate) const fn free_path(rank: u8) -> bool {
        rank >= SITES
    }
}

const _: () = assert!(rank::COUNT <= thread::MAX_RANKS);

/// Whether this thread holds, or waits for, a lock of the free path.
#[inline]
pub(crate) fn free_path_lock_held() -> bool {
    thread::with(|l| l.locks.free_path_held()).unwrap_or(false)
}

/// Whether this thread holds, or waits for, any of heapprof's locks: code
/// that runs then (a signal handler that calls `fork` or `exit`, and the
/// fork handlers and exit hooks those run) interrupted heapprof in the
/// middle of its work and must not wait for a lock, which may be the one
/// the interrupted code holds.
pub(crate) fn any_lock_held() -> bool {
    thread::with(|l| l.locks.highest().is_some()).unwrap_or(false)
}

/// Whether this thread holds, or waits for, a lock of `rank`.
pub(crate) fn this_thread_holds(rank: u8) -> bool {
    thread::with(|l| l.locks.holds(rank as usize)).unwrap_or(false)
}

/// Counts a lock of `RANK` held (`up`) or released; before a wait, checks
/// the rank order in debug builds.
fn count_held<const RANK: u8>(up: bool, waits: bool) {
    thread::with(|l| {
        if up {
            if cfg!(debug_assertions)
                && waits
                && let Some(held) = l.locks.highest()
                && held > RANK as usize
            {
                crate::config::report::warn(format_args!(
                    "heapprof: lock rank violation: waiting for rank {RANK} while holding rank {held}"
                ));
                std::process::abort();
            }
            l.locks.up(RANK as usize, rank::free_path(RANK));
            // A signal handler on this thread must see the count before
            // the lock is taken: the compiler may not move the lock's
            // atomics above the count's plain writes.
            compiler_fence(SeqCst);
        } else {
            // ...and the count only after the lock is released.
            compiler_fence(SeqCst);
            l.locks.down(RANK as usize, rank::free_path(RANK));
        }
    });
}

/// A `lock_api` mutex of rank `RANK` over [`RawLock`].
pub(crate) type Mutex<const RANK: u8, T> = lock_api::Mutex<RawLock<RANK>, T>;

const UNLOCKED: u32 = 0;
/// Locked, and no thread is (known to be) waiting.
const LOCKED: u32 = 1;
/// Locked, and threads may be waiting: unlocking must wake one.
const CONTENDED: u32 = 2;

/// The futex word of a lock of rank `RANK`.
pub(crate) struct RawLock<const RANK: u8> {
    state: AtomicU32,
}

// SAFETY: `lock` returns only after this thread changed the state from
// UNLOCKED to LOCKED or CONTENDED with an Acquire operation, and `unlock`
// releases with a Release store, so at most one thread holds the lock at a
// time and each owner sees the previous owner's writes.
unsafe impl<const RANK: u8> lock_api::RawMutex for RawLock<RANK> {
    // A `const` item is how lock_api builds mutexes in statics; each use is
    // a fresh, separate lock, which is what is wanted.
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawLock<RANK> = RawLock {
        state: AtomicU32::new(UNLOCKED),
    };

    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock(&self) {
        count_held::<RANK>(true, true);
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        count_held::<RANK>(true, false);
        let locked = self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            .is_ok();
        if !locked {
            count_held::<RANK>(false, false);
        }
        locked
    }

    /// # Safety
    /// The lock is held by the current context (lock_api's contract).
    #[inline]
    unsafe fn unlock(&self) {
        if self.state.swap(UNLOCKED, Release) == CONTENDED {
            wake_one(&self.state);
        }
        count_held::<RANK>(false, false);
    }
}

/// A module's function that shows each of its locks to `f`, for the fork
/// table.
pub(crate) type EachLock = fn(&mut dyn FnMut(&'static dyn Lockable));

/// A lock as the fork handlers see it: taken and released across two
/// callbacks, in rank order.
pub(crate) trait Lockable: Sync {
    fn rank(&self) -> u8;
    /// Takes the lock and keeps it past this call.
    fn lock_and_keep(&self);
    /// Takes the lock if it is free, and keeps it past this call; false
    /// if it is held.
    fn try_lock_and_keep(&self) -> bool;
    /// Releases a lock taken by [`Lockable::lock_and_keep`].
    ///
    /// # Safety
    /// Only on the thread that kept it, or in the child that thread forked.
    unsafe fn release_kept(&self);
}

impl<const RANK: u8, T: Send> Lockable for Mutex<RANK, T> {
    fn rank(&self) -> u8 {
        RANK
    }

    fn lock_and_keep(&self) {
        std::mem::forget(self.lock());
    }

    fn try_lock_and_keep(&self) -> bool {
        self.try_lock().map(std::mem::forget).is_some()
    }

    /// # Safety
    /// As [`Lockable::release_kept`].
    unsafe fn release_kept(&self) {
        // SAFETY: the caller's contract: this thread (or its fork child's
        // copy of it) took the lock and forgot the guard.
        unsafe { self.force_unlock() };
    }
}

impl<const RANK: u8> RawLock<RANK> {
    #[cold]
    fn lock_contended(&self) {
        let mut state = self.spin();
        if state == UNLOCKED {
            match self
                .state
                .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            {
                Ok(_) => return,
                Err(s) => state = s,
            }
        }
        loop {
            // Mark the lock contended before sleeping, so that its owner
            // wakes us; if it was free meanwhile, we now own it (as
            // CONTENDED, which at worst costs one needless wake).
            if state != CONTENDED && self.state.swap(CONTENDED, Acquire) == UNLOCKED {
                return;
            }
            wait(&self.state, CONTENDED);
            state = self.spin();
        }
    }

    /// Spins briefly while the lock is held by a thread that is running
    /// (critical sections here are short); returns the last state seen.
    fn spin(&self) -> u32 {
        let mut spins = 100;
        loop {
            let state = self.state.load(Relaxed);
            if state != LOCKED || spins == 0 {
                return state;
            }
            std::hint::spin_loop();
            spins -= 1;
        }
    }
}

/// Sleeps while `*state == expected` (or until woken, or spuriously).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn wait(state: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 that lives as long as the
    // lock; a null timeout waits without limit. Errors (EAGAIN when the
    // value already changed, EINTR) just return to the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes one thread sleeping in [`wait`] on `state`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn wake_one(state: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32; waking nobody is fine.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            state.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// Elsewhere, no futex: yield and let the caller's loop retry. Still no
/// waiter is recorded anywhere, so `fork` stays safe.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn wait(state: &AtomicU32, expected: u32) {
    if state.load(Relaxed) == expected {
        std::thread::yield_now();
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn wake_one(_state: &AtomicU32) {}

#[cfg(test)]
mod tests {
    use super::{Mutex, rank};

    #[test]
    fn excludes_and_hands_over_under_contention() {
        static COUNTER: Mutex<{ rank::SITES }, u64> = Mutex::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..100_000 {
                        *COUNTER.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*COUNTER.lock(), 400_000);
    }

    #[test]
    fn force_unlock_after_forget_frees_the_lock() {
        static L: Mutex<{ rank::PEAK }, ()> = Mutex::new(());
        std::mem::forget(L.lock());
        assert!(L.try_lock().is_none());
        // SAFETY: locked above, guard forgotten.
        unsafe { L.force_unlock() };
        assert!(L.try_lock().is_some());
    }
}
