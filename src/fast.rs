//! The fast path: the `GlobalAlloc` entry points.
//!
//! Each call forwards to the inner allocator after work on this thread's
//! state (`thread/`) only: on allocation, a counter bump and a subtract and
//! branch on the countdown (`Counters::count_alloc`, `Counters::charge`);
//! on free, two counter bumps and an AND with the thread's copy of the free
//! filter's mask (`record::blocks::may_contain`). Everything else,
//! recording a sample or crediting a sampled free, is the slow path
//! (`record/`), out of line.

use std::alloc::{GlobalAlloc, Layout, System};

use crate::record::{self, Owned, blocks};
use crate::thread;
use std::sync::atomic::Ordering::Relaxed;

/// A global allocator that samples the allocations it forwards to `A`.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
/// ```
pub struct Profiler<A: GlobalAlloc = System> {
    inner: Owned<A>,
}

impl Profiler<System> {
    /// A profiler over the system allocator.
    pub const fn new() -> Self {
        Profiler {
            inner: Owned::new(System),
        }
    }
}

impl Default for Profiler<System> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: GlobalAlloc> Profiler<A> {
    /// A profiler over another allocator, e.g. `Profiler::wrap(mimalloc::MiMalloc)`.
    ///
    /// A freed sampled block of the global allocator, or of a stateless
    /// (zero-sized) one, may be kept for a later sample rather than freed;
    /// one of another allocator with state, an arena called directly, goes
    /// back to it at once, so the program may reset the arena once it has
    /// freed every block. A zero-sized handle to memory the program resets
    /// wholesale is taken for stateless: give such an allocator a field.
    ///
    /// Wrap an allocator, not another `Profiler`: each would count every
    /// allocation. The wrapped allocator's methods should not call
    /// heapprof's functions: heapprof calls them while it holds its own
    /// locks (to grow its tables). The functions that write a profile
    /// (`write_profile`, `write_text_profile`, `write_peak_profile`, the
    /// `Snapshot::write_*` methods, `ProfileGuard::finish`) return
    /// `WouldBlock` there; the others (`snapshot`, `stats`, starting a
    /// server, a series or a pusher) would wait for good.
    pub const fn wrap(inner: A) -> Self {
        Profiler {
            inner: Owned::new(inner),
        }
    }

    /// The allocator this one forwards to.
    pub const fn inner(&self) -> &A {
        self.inner.get()
    }
}

/// A `Profiler` that goes away (one over an arena, not the global one)
/// takes what heapprof keeps of its allocator with it: see
/// `record::forget_allocator`. A stateless allocator (`System`) is the
/// same in every `Profiler` over it, so nothing is taken. A `Profiler`
/// may move (`Box::new`, returned from a function) before it goes: its
/// blocks are filed under a name that moves with it (`record::Owned`).
impl<A: GlobalAlloc> Drop for Profiler<A> {
    fn drop(&mut self) {
        if self.inner.named() {
            record::forget_allocator(&self.inner);
        }
    }
}

// SAFETY: every method forwards to `inner` with the layout the caller gave,
// except for sampled blocks, which `record::alloc_sampled` allocates with
// page alignment and small sizes rounded up to their class
// (`record::spare::layout_for`: never smaller, never less aligned) and
// frees with that same layout; those blocks satisfy the caller's layout
// too. A freed sampled block kept for
// reuse (`record/spare.rs`, stateless allocators only) is handed out again
// only over the allocator it came from. No method unwinds: the slow path (`record/`)
// catches nothing because nothing it calls on these paths panics.
#[cfg(not(miri))]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Profiler<A> {
    /// # Safety
    /// `GlobalAlloc::alloc`'s contract: `layout` has a non-zero size.
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        if charge(layout.size()) {
            return record::alloc(layout, false, &self.inner);
        }
        // SAFETY: forwarded with the caller's own layout and contract.
        unsafe { self.inner.alloc(layout) }
    }

    /// # Safety
    /// As for `alloc`: `layout` has a non-zero size.
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        if charge(layout.size()) {
            return record::alloc(layout, true, &self.inner);
        }
        // SAFETY: as for `alloc`.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    /// # Safety
    /// `ptr` was returned by this allocator for `layout` and is not freed
    /// yet.
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_free(layout.size());
        if may_contain(ptr, layout.size()) {
            // SAFETY: the caller's contract (ptr allocated here with layout)
            // is passed on unchanged.
            return unsafe { record::dealloc(ptr, layout, &self.inner) };
        }
        // SAFETY: not a sampled block, so it came from `inner` with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    /// # Safety
    /// `ptr` was returned by this allocator for `layout` and is not freed
    /// yet; `new_size` is non-zero and, rounded up to `layout.align()`,
    /// does not exceed `isize::MAX`.
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as a free of the old block and an allocation of the new.
        count_free(layout.size());
        count_alloc();
        let maybe_sampled = may_contain(ptr, layout.size());
        if maybe_sampled || charge(new_size) {
            // SAFETY: the caller's contract is passed on unchanged.
            return unsafe { record::realloc(ptr, layout, new_size, maybe_sampled, &self.inner) };
        }
        // SAFETY: not a sampled block and the new one is not sampled either:
        // a plain realloc in `inner`, which may grow in place.
        let new_ptr = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            // The old block is still the program's: neither call happened.
            record::realloc_failed(layout.size(), new_size);
        }
        new_ptr
    }
}

/// Under Miri every call goes straight to the inner allocator and nothing
/// is recorded: the recorder's inline assembly, loader walk and signal
/// masks are calls Miri cannot run, and a program's `cargo miri test`
/// must still run. `record::installed` stays false, so every profile,
/// snapshot assertion and `measure` check says that nothing was recorded
/// (`output::check_installed`) instead of passing on zero bytes.
// SAFETY: each method is the inner allocator's own, called with the
// caller's arguments and contract unchanged.
#[cfg(miri)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Profiler<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on; every block came from
        // `inner` (none is sampled under Miri).
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

/// Counts an allocation; its bytes are the countdown's ([`charge`]).
#[inline(always)]
fn count_alloc() {
    thread::with(|l| l.counters.count_alloc());
}

/// Charges an allocation of `size` bytes to the countdown: true when the
/// countdown ran out, and the slow path must decide.
#[inline(always)]
fn charge(size: usize) -> bool {
    let size = opaque(size);
    thread::with(|l| l.counters.charge(size)).unwrap_or(false)
}

/// Counts a free of `size` bytes.
#[inline(always)]
fn count_free(size: usize) {
    thread::with(|l| l.counters.count_free(size));
}

/// Whether the block of `size` bytes at `ptr` may be sampled, by the
/// thread's copy of the free filter's mask: then the slow path must look.
#[inline(always)]
fn may_contain(ptr: *mut u8, size: usize) -> bool {
    thread::with(|l| blocks::may_contain(l.filter_mask.load(Relaxed), ptr, size)).unwrap_or(true)
}

/// `x`, through a register the optimizer cannot see into.
///
/// Inlined into a loop whose allocation sizes follow the loop counter (a
/// buffer grown by a step, sizes cycling through a table), `left - size`
/// invites LLVM's loop strength reduction to keep a second induction
/// variable for the countdown's arithmetic: more registers live across the
/// calls to the inner allocator, so spills, and about 8 more instructions
/// per allocation and free in `dev/benches/overhead.rs`' `threads2`,
/// counted by callgrind. Hiding where `size` came from keeps the countdown
/// a plain subtract; the price is at most a register copy, which the CPU
/// does at rename.
#[inline(always)]
fn opaque(x: usize) -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut x = x;
        // SAFETY: an empty template: the asm reads and writes no memory,
        // touches no stack or flags, and leaves the register as it was; the
        // operand only tells the compiler that `x` may have changed.
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        x
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        x
    }
}
