//! The free of a block that may be sampled: the second filter, the set
//! lookup, crediting the site, and the spare pool; and forgetting a
//! dropped `Profiler`'s allocator ([`forget_allocator`]).

use std::alloc::Layout;

use super::{Allocator, actual_layout, blocks, blocks::Entry, credit_free, spare};
use crate::support::{lock, reentry, registry};
use crate::thread;

/// A free whose pointer passed the filter: maybe sampled.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn dealloc<A: Allocator>(ptr: *mut u8, layout: Layout, inner: &A) {
    super::track_free(ptr, layout.size());
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { free(ptr, layout, inner) }
}

/// [`dealloc`] without the free reaching an `assert_no_leak`'s tracked
/// blocks: for a realloc that moves its block, which reports its free
/// there itself.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[inline]
pub(crate) unsafe fn free<A: Allocator>(ptr: *mut u8, layout: Layout, inner: &A) {
    // Most frees that get here are of ordinary blocks that merely sit at a
    // page-aligned address (jemalloc starts every slab on a page, and its
    // thread cache hands the same address out again and again): the second
    // filter turns them away with one load, before any call.
    if !blocks::may_be_live(ptr) && registry::listed() {
        // SAFETY: no live sampled block hashes here, so this one came from
        // `inner` with the caller's `layout`.
        return unsafe { inner.dealloc(ptr, layout) };
    }
    // SAFETY: the caller's contract, passed on unchanged.
    unsafe { dealloc_maybe_sampled(ptr, layout, inner) }
}

/// [`dealloc`] past the second filter, out of line so that the filter's
/// own path stays free of register saves.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[inline(never)]
unsafe fn dealloc_maybe_sampled<A: Allocator>(ptr: *mut u8, layout: Layout, inner: &A) {
    if lock::free_path_lock_held() {
        // This thread is inside one of heapprof's locks: the block is that
        // table's own storage, or a signal handler frees it, and looking
        // it up could wait for the very lock this thread holds. A block
        // that may be sampled is freed when the thread leaves heapprof.
        if blocks::may_be_live(ptr) {
            // SAFETY: `inner` outlives the call that deferred the free,
            // which runs the free before it returns to the program.
            unsafe { defer_or_leak(ptr, layout, inner) };
        } else {
            // SAFETY: no live sampled block hashes here, so this one came
            // from `inner` with the caller's `layout`.
            unsafe { inner.dealloc(ptr, layout) };
        }
        return;
    }
    match take_sampled(ptr, inner.owner(), layout.size()) {
        // SAFETY: a sampled block came from `inner` with the layout
        // `alloc_sampled` used, rebuilt here the same way.
        Some(e) => unsafe {
            release(
                inner,
                ptr,
                actual_layout(layout, e.page_aligned),
                e.page_aligned,
            )
        },
        // SAFETY: not sampled, so it came from `inner` with `layout`.
        None => unsafe { inner.dealloc(ptr, layout) },
    }
}

/// Puts the free of `ptr` off (see `reentry::defer_free`), or, with no room
/// for it, leaks the block: freeing it now with the wrong layout, or
/// leaving a stale entry in the sampled set, would corrupt the heap.
///
/// # Safety
/// As `GlobalAlloc::dealloc`; `inner` stays valid until this thread leaves
/// heapprof.
unsafe fn defer_or_leak<A: Allocator>(ptr: *mut u8, layout: Layout, inner: &A) {
    /// # Safety
    /// `inner` is the `&A` given to `defer_or_leak`, still valid, and the
    /// rest as `GlobalAlloc::dealloc`.
    unsafe fn free<A: Allocator>(inner: *const (), ptr: *mut u8, layout: Layout) {
        // SAFETY: the function's contract.
        unsafe { dealloc_maybe_sampled(ptr, layout, &*inner.cast::<A>()) }
    }
    let deferred = thread::Deferred {
        free: free::<A>,
        inner: (inner as *const A).cast(),
        ptr,
        layout,
    };
    // SAFETY: the caller's contract: `inner` outlives this thread's stay in
    // heapprof, and the block is freed once, by that call.
    let _kept = unsafe { reentry::defer_free(deferred) };
}

/// Frees a block allocated with a sampled block's layout: into the spare
/// pool if it is page aligned and the pool has room, else to `inner`.
///
/// # Safety
/// `ptr` came from `inner` (or the pool serving it) with `actual`, and is
/// not used again.
pub(super) unsafe fn release<A: Allocator>(
    inner: &A,
    ptr: *mut u8,
    actual: Layout,
    page_aligned: bool,
) {
    if page_aligned {
        // Keeping the block may grow the pool's Vec while its lock is held;
        // with the guard, that allocation goes straight to the inner
        // allocator. Unguarded, it could be sampled, and the sample would
        // ask this same pool for a block and wait for the lock this thread
        // holds.
        let _inside = reentry::Inside::enter();
        if spare::keep(ptr, actual, inner.owner()) {
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { inner.dealloc(ptr, actual) }
}

/// The part of [`dealloc`] that does not depend on the inner allocator:
/// passes on the counts of a thread that is not in the registry, and takes
/// the block out of the sampled set, crediting its site, if it is there.
/// `size` is the size the program frees the block with.
fn take_sampled(ptr: *mut u8, owner: usize, size: usize) -> Option<Entry> {
    if !registry::listed() {
        // A thread that is not in the registry (it has not allocated yet,
        // or it is exiting): its copy of the filter's mask is 0, so every
        // free of it comes here, and its counts reach `stats()` from here.
        registry::flush_unlisted();
    }
    if !blocks::may_be_live(ptr) {
        // No live sampled block hashes here (a recycled address): a plain
        // free, without a lock.
        return None;
    }
    let _inside = reentry::Inside::enter();
    let entry = blocks::remove(ptr)?;
    credit_free(&entry);
    // An entry of another allocator at this address is stale (that
    // allocator went away without its `Profiler` being dropped): credited
    // and gone, and the block is this allocator's plain one. So is one of
    // another size: the sampled block was freed behind heapprof's back (C
    // code's `free` of a Rust buffer, against Rust's allocator contract)
    // and its address handed out again; freeing this block as the sampled
    // one, with the sampled block's layout or into a spare pool, would
    // corrupt the heap.
    (entry.owner == owner && entry.size == size).then_some(entry)
}

/// For a `Profiler` being dropped, whose allocator (`inner`, one with
/// state) goes away with it: its sampled blocks still live are credited as
/// freed, since their memory goes too. Nothing of it is left to be looked
/// up later; the spare pools keep no block of an allocator with state.
pub(crate) fn forget_allocator<A: Allocator>(inner: &A) {
    let _inside = reentry::Inside::enter();
    let owner = inner.owner();
    for e in blocks::remove_owned_by(owner) {
        credit_free(&e);
    }
}
