//! heapprof's mutex: one futex word, with no state anywhere else.
//!
//! Why not `parking_lot`: two of its properties make it unfit for a
//! global allocator's own locks:
//!
//! * **fork.** parking_lot keeps the queue of threads waiting for a lock in
//!   a process-wide hash table in ordinary memory. `fork` copies that table
//!   into the child, with entries for waiting threads that do not exist
//!   there. The fork handlers take every heapprof lock (see `fork.rs`), so
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
//! and unlocking never allocate. `lock_api` supplies the guard types, so
//! the call sites (`lock()`, `force_unlock()`) are unchanged.
//!
//! The locks a free of a sampled block takes (the sampled set's, the site
//! table's, the spare pools', the peak's) are [`FreePathMutex`]es: each
//! thread counts those it holds or is waiting for
//! ([`free_path_lock_held`]), up before it asks for one and down after it
//! lets go. A free that runs on the thread in between, a nested one or a
//! signal handler's, sees the count and must not take the free path's
//! locks: the one it would wait for may be the one this thread holds (see
//! `recorder::dealloc`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};

thread_local! {
    /// Free-path locks this thread holds or waits for.
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread holds, or waits for, a lock of the free path.
#[inline]
pub(crate) fn free_path_lock_held() -> bool {
    HELD.try_with(Cell::get).unwrap_or(0) > 0
}

fn count_held(up: bool) {
    let _ = HELD.try_with(|h| {
        h.set(if up {
            h.get().saturating_add(1)
        } else {
            h.get().saturating_sub(1)
        })
    });
}

/// A `lock_api` mutex over [`RawLock`].
pub(crate) type Mutex<T> = lock_api::Mutex<RawLock<false>, T>;

/// A mutex that the free of a sampled block takes, counted per thread
/// while held (see the module comment).
pub(crate) type FreePathMutex<T> = lock_api::Mutex<RawLock<true>, T>;

const UNLOCKED: u32 = 0;
/// Locked, and no thread is (known to be) waiting.
const LOCKED: u32 = 1;
/// Locked, and threads may be waiting: unlocking must wake one.
const CONTENDED: u32 = 2;

/// The futex word; `FREE_PATH` locks count themselves held per thread.
pub(crate) struct RawLock<const FREE_PATH: bool> {
    state: AtomicU32,
}

// SAFETY: `lock` returns only after this thread changed the state from
// UNLOCKED to LOCKED or CONTENDED with an Acquire operation, and `unlock`
// releases with a Release store, so at most one thread holds the lock at a
// time and each owner sees the previous owner's writes.
unsafe impl<const FREE_PATH: bool> lock_api::RawMutex for RawLock<FREE_PATH> {
    // A `const` item is how lock_api builds mutexes in statics; each use is
    // a fresh, separate lock, which is what is wanted.
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawLock<FREE_PATH> = RawLock {
        state: AtomicU32::new(UNLOCKED),
    };

    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock(&self) {
        if FREE_PATH {
            count_held(true);
        }
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
        if FREE_PATH {
            count_held(true);
        }
        let locked = self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            .is_ok();
        if FREE_PATH && !locked {
            count_held(false);
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
        if FREE_PATH {
            count_held(false);
        }
    }
}

impl<const FREE_PATH: bool> RawLock<FREE_PATH> {
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
    use super::Mutex;

    #[test]
    fn excludes_and_hands_over_under_contention() {
        static COUNTER: Mutex<u64> = Mutex::new(0);
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
        static L: Mutex<()> = Mutex::new(());
        std::mem::forget(L.lock());
        assert!(L.try_lock().is_none());
        // SAFETY: locked above, guard forgotten.
        unsafe { L.force_unlock() };
        assert!(L.try_lock().is_some());
    }
}
