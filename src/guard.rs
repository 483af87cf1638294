//! The reentrancy guard.
//!
//! Everything the profiler does on a sampled allocation (unwinding, the
//! bucket table, the sampled-address set) and everything it does when it
//! writes a profile (symbolization, encoding, compression) may itself
//! allocate. Those allocations must go straight to the inner allocator:
//! sampling them would recurse into the profiler, and could deadlock on a
//! lock this thread already holds (the way dhat-rs deadlocked inside
//! parking_lot).
//!
//! The guard is one flag per thread. Its thread-local is const-initialized
//! and has no destructor, so reading it never allocates, never registers a
//! destructor, and still works while the thread's other thread-locals are
//! being torn down.

use std::cell::Cell;

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside the profiler.
#[inline]
pub(crate) fn is_busy() -> bool {
    // `try_with` fails only for thread-locals with destructors; be careful
    // anyway and treat a missing slot as "inside" so nothing is recorded.
    BUSY.try_with(Cell::get).unwrap_or(true)
}

/// Marks this thread as inside the profiler until dropped. Nests: dropping
/// restores the previous state.
pub(crate) struct Busy {
    was_busy: bool,
}

impl Busy {
    #[inline]
    pub(crate) fn enter() -> Busy {
        let was_busy = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
        Busy { was_busy }
    }
}

impl Drop for Busy {
    #[inline]
    fn drop(&mut self) {
        let was_busy = self.was_busy;
        let _ = BUSY.try_with(|b| b.set(was_busy));
    }
}

impl Busy {
    /// Keeps the flag set past this scope, for a caller that takes the
    /// guard in one callback and releases it in another (the fork
    /// handlers). Returns the state to give [`leave_forgotten`].
    pub(crate) fn forget(self) -> bool {
        let was_busy = self.was_busy;
        std::mem::forget(self);
        was_busy
    }
}

/// Ends a guard kept by [`Busy::forget`], restoring the state from before
/// it: a thread already inside the profiler (a `fork` from the writer of
/// `write_profile`) stays inside.
pub(crate) fn leave_forgotten(was_busy: bool) {
    let _ = BUSY.try_with(|b| b.set(was_busy));
}
