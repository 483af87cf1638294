//! The reentrancy guard: whether this thread is inside heapprof.
//!
//! Everything heapprof does on a sampled allocation (unwinding, the site
//! table, the sampled-block set) and everything it does when it writes a
//! profile (symbolization, encoding, compression) may itself allocate.
//! Those allocations must go straight to the inner allocator: sampling
//! them would recurse into the profiler, and could deadlock on a lock this
//! thread already holds (as a profiler whose own lock allocates can deadlock,
//! e.g. dhat-rs inside parking_lot).
//!
//! The flag is the thread's `Counters::inside` (`thread/counters.rs`): the
//! outermost [`Inside`] freezes the thread's exact counts, and leaving it
//! moves what heapprof allocated meanwhile to heapprof's own totals, so
//! `stats()` counts the program's allocations only. [`Outside`] steps out
//! for a call into the program's code (the writer a profile goes to).

use std::io;

use crate::thread::counters::{Counts, SharedCounts};
use crate::thread::{self, Deferred, Registration};

/// heapprof's own allocations and frees, as `Counters::thaw` takes them
/// out of the threads' counts.
static OWN: SharedCounts = SharedCounts::new();

/// heapprof's own allocations and frees on threads not in the registry,
/// and on threads that left it; the registry's threads keep theirs
/// (`registry::own_totals` adds both).
pub(crate) fn unlisted_own_totals() -> Counts {
    OWN.get()
}

/// Adds a thread's own counts to the totals as it leaves the registry.
pub(crate) fn add_unlisted_own(c: Counts) {
    OWN.add(c);
}

/// Whether this thread is inside the profiler. A thread whose state is
/// unreachable counts as inside, so nothing is recorded for it.
#[inline]
pub(crate) fn is_inside() -> bool {
    thread::with(|l| l.counters.inside()).unwrap_or(true)
}

/// Marks this thread as inside the profiler until dropped. Nests: dropping
/// restores the previous state.
pub(crate) struct Inside {
    was_inside: bool,
}

impl Inside {
    #[inline]
    pub(crate) fn enter() -> Inside {
        Inside {
            was_inside: enter(),
        }
    }

    /// Runs `f` inside the profiler.
    pub(crate) fn enter_for<R>(f: impl FnOnce() -> R) -> R {
        let _inside = Inside::enter();
        f()
    }

    /// Keeps the flag set past this scope, for a caller that enters in one
    /// callback and leaves in another (the fork handlers). Returns the
    /// state to give [`leave_forgotten`].
    pub(crate) fn forget(self) -> bool {
        let was_inside = self.was_inside;
        std::mem::forget(self);
        was_inside
    }
}

impl Drop for Inside {
    #[inline]
    fn drop(&mut self) {
        leave(self.was_inside);
    }
}

/// A value made inside the profiler that is dropped inside it too, however
/// it goes out of scope (unwinding included): what it holds is heapprof's
/// own from its first byte to its last.
pub(crate) struct Own<T>(std::mem::ManuallyDrop<T>);

impl<T> Own<T> {
    /// Makes the value inside the profiler.
    pub(crate) fn make(make: impl FnOnce() -> T) -> Own<T> {
        Own(std::mem::ManuallyDrop::new(Inside::enter_for(make)))
    }
}

impl<T> std::ops::Deref for Own<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Drop for Own<T> {
    fn drop(&mut self) {
        let _inside = Inside::enter();
        // SAFETY: dropped once, here; the field is not used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.0) };
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Own<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (*self.0).fmt(f)
    }
}

/// Sets the flag; returns whether it was set already.
fn enter() -> bool {
    thread::with(|l| {
        let was_inside = l.counters.inside();
        if !was_inside {
            l.counters.freeze();
        }
        was_inside
    })
    .unwrap_or(true)
}

/// Ends a guard, restoring the state from before it. Leaving the outermost
/// one moves heapprof's own counts to its totals and runs the frees put
/// off meanwhile ([`defer_free`]).
fn leave(was_inside: bool) {
    if was_inside {
        return;
    }
    // A thread in the registry keeps its own counts, where readers find
    // them together with those of its stay inside (`registry::own_totals`);
    // another adds them to the totals.
    let Some(own) = thread::with(|l| {
        l.counters
            .thaw(l.registration.get() == Registration::Listed)
    }) else {
        return;
    };
    // Most stays inside allocate nothing (a sample into tables with room, a
    // sampled free): they leave the totals, a line every thread shares,
    // untouched.
    if own != Counts::default() {
        OWN.add(own);
    }
    if !crate::support::lock::free_path_lock_held() {
        run_deferred();
    }
}

/// Ends a guard kept by [`Inside::forget`], restoring the state from
/// before it: a thread already inside the profiler (a `fork` from the
/// writer of `write_profile`) stays inside.
pub(crate) fn leave_forgotten(was_inside: bool) {
    leave(was_inside);
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
    thread::with(|l| l.deferred.push(d)).unwrap_or(false)
}

fn run_deferred() {
    while let Some(d) = thread::with(|l| l.deferred.pop()).flatten() {
        // SAFETY: `defer_free`'s contract: this is the one call, on the
        // deferring thread, outside its outermost guard.
        unsafe { (d.free)(d.inner, d.ptr, d.layout) };
    }
}

/// Leaves the profiler for a call into the program's own code (the writer
/// a profile is written to) until dropped: what that code allocates is the
/// program's, counted and sampled as such. Only where this thread holds no
/// lock of heapprof's, since a sample taken meanwhile takes some.
pub(crate) struct Outside {
    was_inside: bool,
}

impl Outside {
    pub(crate) fn enter() -> Outside {
        let was_inside = thread::with(|l| l.counters.inside()).unwrap_or(false);
        if was_inside {
            leave(false);
        }
        Outside { was_inside }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if self.was_inside {
            enter();
        }
    }
}

/// `Err(WouldBlock)` while this thread holds one of heapprof's locks: the
/// program's code that runs then is code heapprof called under them (the
/// wrapped allocator's methods, as heapprof grows its tables), and a
/// profile built there would wait for good for a lock this thread holds.
pub(crate) fn refuse_under_own_lock() -> io::Result<()> {
    if !crate::support::lock::any_lock_held() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "heapprof: called while this thread holds one of heapprof's locks (from the wrapped \
         allocator's methods, which heapprof calls as it grows its tables); nothing was written",
    ))
}

/// Runs `f` inside the profiler on the program's writer `w`, and hands
/// the program its outcome as memory of its own: the program frees what
/// it is given, so it must have allocated it. The error is the first the
/// writer gave, as it gave it, or else `f`'s, made again outside the
/// profiler; [`refuse_under_own_lock`]'s before `f` runs. Called by the
/// program, outside the profiler.
pub(crate) fn for_program<W: io::Write, R: Copy>(
    w: W,
    f: impl FnOnce(&mut ProgramWriter<W>) -> io::Result<R>,
) -> io::Result<R> {
    refuse_under_own_lock()?;
    let mut w = ProgramWriter {
        w: std::mem::ManuallyDrop::new(w),
        error: None,
    };
    let outcome = Inside::enter_for(|| f(&mut w));
    match (outcome, w.error.take()) {
        // A writer's error is never lost, even if `f` went on.
        (Ok(_), Some(writers)) => Err(writers),
        (Ok(r), None) => Ok(r),
        (Err(e), Some(writers)) => {
            Inside::enter_for(|| drop(e));
            Err(writers)
        }
        (Err(e), None) => Err(as_programs(e)),
    }
}

/// `e`, made inside the profiler, made again as the program's. Called
/// outside the profiler.
pub(crate) fn as_programs(e: io::Error) -> io::Error {
    if e.get_ref().is_none() {
        // An OS error code or a bare kind: nothing allocated.
        return e;
    }
    let text = Inside::enter_for(|| e.to_string());
    let programs = io::Error::new(e.kind(), text.as_str());
    Inside::enter_for(|| drop((e, text)));
    programs
}

/// The program's writer, called and dropped outside the profiler (see
/// [`Outside`]): a `Vec` it grows or frees is the program's memory. Its
/// errors are the program's too: the first is kept for [`for_program`]
/// to hand back, and heapprof gets one of the same kind that holds no
/// memory, which it may drop where it likes (an encoder's drop writes
/// again and drops what it gets).
pub(crate) struct ProgramWriter<W: io::Write> {
    w: std::mem::ManuallyDrop<W>,
    error: Option<io::Error>,
}

impl<W: io::Write> ProgramWriter<W> {
    /// `outcome`, a call's on the program's writer, outside the profiler.
    fn keep<T>(&mut self, outcome: io::Result<T>) -> io::Result<T> {
        outcome.map_err(|e| {
            let kind = e.kind();
            // A write interrupted is tried again, not the outcome.
            if kind != io::ErrorKind::Interrupted && self.error.is_none() {
                self.error = Some(e);
            }
            io::Error::from(kind)
        })
    }
}

impl<W: io::Write> io::Write for ProgramWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _outside = Outside::enter();
        let outcome = self.w.write(buf);
        self.keep(outcome)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let _outside = Outside::enter();
        let outcome = self.w.write_all(buf);
        self.keep(outcome)
    }

    fn flush(&mut self) -> io::Result<()> {
        let _outside = Outside::enter();
        let outcome = self.w.flush();
        self.keep(outcome)
    }
}

impl<W: io::Write> Drop for ProgramWriter<W> {
    fn drop(&mut self) {
        let _outside = Outside::enter();
        self.error.take();
        // SAFETY: dropped once, here; the field is not used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.w) };
    }
}
