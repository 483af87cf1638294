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
    /// The outermost guard also tells the exact counters that what follows
    /// is heapprof's own (`counters::enter_profiler`), so that `stats()`
    /// counts the program's allocations only.
    #[inline]
    pub(crate) fn enter() -> Busy {
        let was_busy = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
        if !was_busy {
            crate::support::registry::enter_profiler();
        }
        Busy { was_busy }
    }
}

impl Drop for Busy {
    #[inline]
    fn drop(&mut self) {
        leave(self.was_busy);
    }
}

/// Ends a guard, restoring the state from before it. Leaving the outermost
/// one runs the frees put off meanwhile ([`defer_free`]).
fn leave(was_busy: bool) {
    if !was_busy {
        crate::support::registry::leave_profiler();
    }
    let _ = BUSY.try_with(|b| b.set(was_busy));
    if !was_busy && !crate::support::lock::free_path_lock_held() {
        run_deferred();
    }
}

/// A free put off by [`defer_free`]: `free(inner, ptr, layout)` does it.
#[derive(Clone, Copy)]
pub(crate) struct Deferred {
    /// # Safety
    /// Called once, with the three fields below, as `defer_free` says.
    pub free: unsafe fn(*const (), *mut u8, std::alloc::Layout),
    pub inner: *const (),
    pub ptr: *mut u8,
    pub layout: std::alloc::Layout,
}

/// Frees a thread can put off at once; past that they are dropped (the
/// blocks leak, which is safe).
const DEFERRED_MAX: usize = 8;

thread_local! {
    static DEFERRED: [Cell<Option<Deferred>>; DEFERRED_MAX] =
        const { [const { Cell::new(None) }; DEFERRED_MAX] };
}

/// Puts a free off until this thread leaves heapprof, for a free made
/// where it must not take heapprof's locks (a signal handler that runs
/// while the thread holds one). False if there is no room: the caller
/// then leaks the block.
///
/// # Safety
/// `d.free` may be called with `d`'s fields once, on this thread, when it
/// leaves its outermost guard: `d.inner` must stay valid until then.
pub(crate) unsafe fn defer_free(d: Deferred) -> bool {
    DEFERRED
        .try_with(|slots| {
            slots
                .iter()
                .find(|s| s.get().is_none())
                .map(|s| s.set(Some(d)))
                .is_some()
        })
        .unwrap_or(false)
}

fn run_deferred() {
    let _ = DEFERRED.try_with(|slots| {
        for slot in slots {
            if let Some(d) = slot.take() {
                // SAFETY: `defer_free`'s contract: this is the one call,
                // on the deferring thread, outside its outermost guard.
                unsafe { (d.free)(d.inner, d.ptr, d.layout) };
            }
        }
    });
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
    leave(was_busy);
}

/// Leaves the profiler for a call into the program's own code (the writer
/// a profile is written to) until dropped: what that code allocates is the
/// program's, counted and sampled as such. Only where this thread holds no
/// lock of heapprof's, since a sample taken meanwhile takes some.
pub(crate) struct Outside {
    was_busy: bool,
}

impl Outside {
    pub(crate) fn enter() -> Outside {
        let was_busy = BUSY.try_with(Cell::get).unwrap_or(false);
        if was_busy {
            leave(false);
        }
        Outside { was_busy }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if self.was_busy {
            std::mem::forget(Busy::enter());
        }
    }
}

/// The program's writer, called and dropped outside the profiler (see
/// [`Outside`]): a `Vec` it grows or frees is the program's memory.
pub(crate) struct ProgramWriter<W: std::io::Write>(std::mem::ManuallyDrop<W>);

impl<W: std::io::Write> ProgramWriter<W> {
    pub(crate) fn new(w: W) -> Self {
        ProgramWriter(std::mem::ManuallyDrop::new(w))
    }
}

impl<W: std::io::Write> std::io::Write for ProgramWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _outside = Outside::enter();
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let _outside = Outside::enter();
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _outside = Outside::enter();
        self.0.flush()
    }
}

impl<W: std::io::Write> Drop for ProgramWriter<W> {
    fn drop(&mut self) {
        let _outside = Outside::enter();
        // SAFETY: dropped once, here; the field is not used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.0) };
    }
}
