//! The slow paths: recording a sampled allocation, crediting a sampled free.
//!
//! Every function here runs with the reentrancy guard held, so whatever the
//! unwinder or the tables allocate goes straight to the inner allocator. Locks are taken only after the stack is captured, one at a
//! time, and never around a call that could lock again.

pub(crate) mod blocks;
pub(crate) mod countdown;
pub(crate) mod peak;
pub(crate) mod sites;
pub(crate) mod spare;
pub(crate) mod stack;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::support::{lock, reentry, registry};
use crate::{sample, thread};
use blocks::Entry;

/// Set by the first allocation that reaches heapprof, so `write_profile`
/// can tell a program that forgot `#[global_allocator]`.
static INSTALLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

/// An allocation whose size used up this thread's countdown.
#[cold]
#[inline(never)]
pub(crate) fn alloc<A: GlobalAlloc>(layout: Layout, zeroed: bool, inner: &A) -> *mut u8 {
    if registry::exited() {
        // Allocated by a destructor after the thread left the registry: its
        // countdown stays at zero, so each such allocation comes here to be
        // counted, and none is sampled.
        registry::flush_unlisted();
        // SAFETY: forwarded with the caller's layout (non-zero size per the
        // GlobalAlloc contract).
        let ptr = unsafe { alloc_plain(inner, layout, zeroed) };
        if ptr.is_null() {
            uncount_alloc(layout.size());
        }
        return ptr;
    }
    // One thread registers the handlers, even if two make their first
    // allocations at once (threads started from C before any Rust
    // allocation; a Rust spawn allocates on its parent first).
    if !INSTALLED.load(Relaxed) && !INSTALLED.swap(true, Relaxed) {
        let _inside = reentry::Inside::enter();
        crate::process::on_first_allocation();
    }
    let ptr = match countdown::expired(layout.size()) {
        Some(weight) => alloc_sampled(inner, layout, zeroed, weight),
        // SAFETY: forwarded with the caller's layout (non-zero size per the
        // GlobalAlloc contract).
        None => unsafe { alloc_plain(inner, layout, zeroed) },
    };
    if ptr.is_null() {
        // Every allocation of `sampler::MAX_COUNTDOWN` bytes or more comes
        // here, so a failed big one (`try_reserve`) is never counted.
        uncount_alloc(layout.size());
    }
    ptr
}

/// # Safety
/// `layout` has a non-zero size.
unsafe fn alloc_plain<A: GlobalAlloc>(inner: &A, layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: the caller guarantees a non-zero size.
    unsafe {
        if zeroed {
            inner.alloc_zeroed(layout)
        } else {
            inner.alloc(layout)
        }
    }
}

fn alloc_sampled<A: GlobalAlloc>(inner: &A, layout: Layout, zeroed: bool, weight: f64) -> *mut u8 {
    let _inside = reentry::Inside::enter();
    let page_aligned = blocks::page_aligns(layout, sample::rate());
    let actual = actual_layout(layout, page_aligned);
    let mut ptr = match page_aligned
        .then(|| spare::take(actual, spare::owner(inner)))
        .flatten()
    {
        Some(ptr) => {
            if zeroed {
                // SAFETY: a spare block has room for `actual.size()` bytes.
                unsafe { ptr.write_bytes(0, actual.size()) };
            }
            ptr
        }
        // SAFETY: `actual` has a non-zero size (at least the caller's).
        None => unsafe { alloc_plain(inner, actual, zeroed) },
    };
    // Whether `ptr` has the layout heapprof frees sampled blocks with.
    let mut trackable = true;
    if ptr.is_null() {
        if !page_aligned {
            // The caller's own layout failed: the program sees the failure.
            return ptr;
        }
        // No memory for heapprof's page-aligned block (or a failed huge
        // `try_reserve`): the program may still get one of its own layout.
        // If not, nothing was allocated and nothing is recorded.
        // SAFETY: the caller's layout has a non-zero size.
        ptr = unsafe { alloc_plain(inner, layout, zeroed) };
        if ptr.is_null() {
            return ptr;
        }
        trackable = false;
    }
    let owner = spare::owner(inner);
    if record(ptr, layout.size(), weight, page_aligned, trackable, owner)
        || !trackable
        || !page_aligned
    {
        // Tracked, or untracked with the program's own layout: hand it out
        // as is.
        return ptr;
    }
    // A page-aligned block the program could not free with its own layout:
    // it gets one of that layout instead (or null, if memory is exhausted;
    // the bucket then keeps one sample too many).
    // SAFETY: `ptr` came from `inner` (or its spare pool) with `actual` and
    // was never handed out; `layout` has a non-zero size.
    unsafe {
        release(inner, ptr, actual, true);
        alloc_plain(inner, layout, zeroed)
    }
}

/// Records a sampled block of `size` bytes at `ptr`: its stack, its site's
/// counts, its entry in the sampled set. Returns whether the block is
/// tracked. An untracked sample (`trackable` false: the block does not have
/// the layout its entry would say; or no memory for the set to remember it)
/// counts as allocated and freed at once, since its free cannot be
/// credited: the alloc_* estimates stay unbiased, inuse misses it. Under
/// the reentrancy guard.
fn record(
    ptr: *mut u8,
    size: usize,
    weight: f64,
    page_aligned: bool,
    trackable: bool,
    owner: usize,
) -> bool {
    let stack = stack::capture();
    let frames = stack.frames();
    let bucket = sites::record_alloc(frames, stack::hash(frames), size, weight);
    let entry = Entry {
        bucket,
        weight,
        size,
        page_aligned,
        owner,
    };
    if trackable && blocks::insert(ptr, entry) {
        peak::on_alloc(size as f64 * weight);
        crate::process::after_sample();
        return true;
    }
    sites::record_free(bucket, size, weight);
    false
}

/// The layout a sampled block is really allocated with: the caller's, or,
/// when page aligned, a page-aligned size class (see `spare.rs`).
fn actual_layout(layout: Layout, page_aligned: bool) -> Layout {
    if page_aligned {
        spare::layout_for(layout)
    } else {
        layout
    }
}

/// A free whose pointer passed the filter: maybe sampled.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn dealloc<A: GlobalAlloc>(ptr: *mut u8, layout: Layout, inner: &A) {
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
unsafe fn dealloc_maybe_sampled<A: GlobalAlloc>(ptr: *mut u8, layout: Layout, inner: &A) {
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
    match take_sampled(ptr, spare::owner(inner)) {
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

/// Puts the free of `ptr` off (see `guard::defer_free`), or, with no room
/// for it, leaks the block: freeing it now with the wrong layout, or
/// leaving a stale entry in the sampled set, would corrupt the heap.
///
/// # Safety
/// As `GlobalAlloc::dealloc`; `inner` stays valid until this thread leaves
/// heapprof.
unsafe fn defer_or_leak<A: GlobalAlloc>(ptr: *mut u8, layout: Layout, inner: &A) {
    /// # Safety
    /// `inner` is the `&A` given to `defer_or_leak`, still valid, and the
    /// rest as `GlobalAlloc::dealloc`.
    unsafe fn free<A: GlobalAlloc>(inner: *const (), ptr: *mut u8, layout: Layout) {
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
/// Frees a block allocated with a sampled block's layout: into the spare
/// pool if it is page aligned and the pool has room, else to `inner`.
///
/// # Safety
/// `ptr` came from `inner` (or the pool serving it) with `actual`, and is
/// not used again.
unsafe fn release<A: GlobalAlloc>(inner: &A, ptr: *mut u8, actual: Layout, page_aligned: bool) {
    if page_aligned {
        // Keeping the block may grow the pool's Vec while its lock is held;
        // with the guard, that allocation goes straight to the inner
        // allocator. Unguarded, it could be sampled, and the sample would
        // ask this same pool for a block and wait for the lock this thread
        // holds.
        let _inside = reentry::Inside::enter();
        if spare::keep(ptr, actual, spare::owner(inner)) {
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { inner.dealloc(ptr, actual) }
}

/// The part of [`dealloc`] that does not depend on the inner allocator:
/// passes on the counts of a thread that is not in the registry, and takes
/// the block out of the sampled set, crediting its site, if it is there.
fn take_sampled(ptr: *mut u8, owner: usize) -> Option<Entry> {
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
    // and gone, and the block is this allocator's plain one.
    (entry.owner == owner).then_some(entry)
}

/// For a `Profiler` being dropped, whose allocator (`inner`) goes away
/// with it: the spare blocks kept for it go back to it, and its sampled
/// blocks still live are credited as freed, since their memory goes too.
/// Nothing of it is left to be handed out, or looked up, later.
pub(crate) fn forget_allocator<A: GlobalAlloc>(inner: &A) {
    let _inside = reentry::Inside::enter();
    let owner = spare::owner(inner);
    for (ptr, layout) in spare::give_back(owner) {
        // SAFETY: a spare block came from `inner` with this layout, and
        // the pools no longer list it.
        unsafe { inner.dealloc(ptr, layout) };
    }
    for e in blocks::remove_owned_by(owner) {
        credit_free(&e);
    }
}

/// Credits the free of a sampled block, taken out of the set, to its site.
fn credit_free(e: &Entry) {
    sites::record_free(e.bucket, e.size, e.weight);
    peak::on_free(e.size as f64 * e.weight);
}

/// A realloc where the old block may be sampled or the new one is to be.
///
/// A realloc is the free of the old block and the allocation of a new one,
/// each accounted as such. The block is resized by the inner allocator's
/// own `realloc` (in place, or by `mremap`, where it can) unless it must
/// change layout: a page-aligned sampled block (see `sampled.rs`) moves to
/// the program's layout, and a block that becomes a page-aligned sample
/// moves to that; those moves (allocate, copy, free) are of blocks of at
/// most `sampled::LARGE` bytes.
///
/// # Safety
/// As `GlobalAlloc::realloc`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn realloc<A: GlobalAlloc>(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    maybe_sampled: bool,
    inner: &A,
) -> *mut u8 {
    // SAFETY: the caller's contract, unchanged.
    let new_ptr = unsafe { realloc_counted(ptr, layout, new_size, maybe_sampled, inner) };
    // A thread out of the registry (exiting) passes its counts on here too.
    registry::flush_unlisted();
    new_ptr
}

/// [`realloc`], before an unlisted thread's counts are passed on.
///
/// # Safety
/// As `GlobalAlloc::realloc`.
unsafe fn realloc_counted<A: GlobalAlloc>(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    maybe_sampled: bool,
    inner: &A,
) -> *mut u8 {
    // SAFETY: `new_size` is non-zero and does not overflow when rounded to
    // `layout.align()`, per `realloc`'s contract.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    if maybe_sampled && lock::free_path_lock_held() && blocks::may_be_live(ptr) {
        // A realloc where the set must not be looked up (see
        // `dealloc_maybe_sampled`): a new plain block, and the free of the
        // old one, which `dealloc` puts off.
        // SAFETY: the caller's contract, unchanged.
        return unsafe { realloc_by_moving(ptr, layout, new_layout, None, inner) };
    }
    let old = if maybe_sampled && blocks::may_be_live(ptr) {
        let _inside = reentry::Inside::enter();
        blocks::get(ptr, spare::owner(inner))
    } else {
        None
    };
    // If the filter sent us here, the fast path did not get to charge the
    // countdown (`||` stopped at the filter): charge it now. Otherwise it
    // was charged and ran out.
    let expired = !maybe_sampled || countdown::count_alloc(new_size);
    let weight = if expired {
        countdown::expired(new_size)
    } else {
        None
    };
    let new_page_aligned = weight.is_some() && blocks::page_aligns(new_layout, sample::rate());
    if old.is_some_and(|e| e.page_aligned) || new_page_aligned {
        // SAFETY: the caller's contract, unchanged.
        return unsafe { realloc_by_moving(ptr, layout, new_layout, weight, inner) };
    }
    // The block keeps the program's layout: resize it where it is.
    if old.is_none() && weight.is_none() {
        // SAFETY: the caller's contract, unchanged; the block is not sampled.
        let new_ptr = unsafe { inner.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            uncount_realloc(layout.size(), new_size);
        }
        return new_ptr;
    }
    // The old entry leaves the set first: once the inner allocator has
    // freed the old address, another thread may be handed it and sample it.
    let old = old.and_then(|_| {
        let _inside = reentry::Inside::enter();
        blocks::remove(ptr)
    });
    // SAFETY: the caller's contract, unchanged: `ptr` has `layout` (a
    // sampled block that is not page aligned was allocated with the
    // program's own layout).
    let new_ptr = unsafe { inner.realloc(ptr, layout, new_size) };
    {
        let _inside = reentry::Inside::enter();
        if new_ptr.is_null() {
            // The old block is still live, and still sampled if it was; a
            // sampled block whose entry cannot be put back is credited as
            // freed, as an untracked sample is.
            if let Some(e) = old
                && !blocks::insert(ptr, e)
            {
                credit_free(&e);
            }
        } else {
            if let Some(e) = &old {
                credit_free(e);
            }
            if let Some(w) = weight {
                record(new_ptr, new_size, w, false, true, spare::owner(inner));
            }
        }
    }
    if new_ptr.is_null() {
        // Outside the guard: the exact counters take it back from the
        // program's counts.
        uncount_realloc(layout.size(), new_size);
    }
    new_ptr
}

/// [`realloc`] for a block that changes layout: allocate, copy, free.
///
/// # Safety
/// As `GlobalAlloc::realloc`, with `new_layout` the new size at the old
/// alignment.
unsafe fn realloc_by_moving<A: GlobalAlloc>(
    ptr: *mut u8,
    layout: Layout,
    new_layout: Layout,
    weight: Option<f64>,
    inner: &A,
) -> *mut u8 {
    let new_ptr = match weight {
        Some(w) => alloc_sampled(inner, new_layout, false, w),
        // SAFETY: non-zero size per the contract.
        None => unsafe { alloc_plain(inner, new_layout, false) },
    };
    if new_ptr.is_null() {
        // The old block stays where it is, still live (and still sampled,
        // if it was).
        uncount_realloc(layout.size(), new_layout.size());
        return new_ptr;
    }
    // SAFETY: both blocks are valid for the smaller size and distinct.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_layout.size()));
        dealloc(ptr, layout, inner);
    }
    new_ptr
}

/// Takes back an allocation of `size` bytes that the inner allocator
/// failed: it was counted on the way in.
fn uncount_alloc(size: usize) {
    thread::with(|l| l.counters.uncount_alloc(size));
}

/// A realloc from `old_size` to `new_size` bytes that the inner allocator
/// failed: the old block is still live, and neither its free nor the new
/// allocation happened.
fn uncount_realloc(old_size: usize, new_size: usize) {
    thread::with(|l| {
        l.counters.uncount_alloc(new_size);
        l.counters.uncount_free(old_size);
    });
}
