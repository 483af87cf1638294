//! A realloc where the old block may be sampled or the new one is to be.

use std::alloc::Layout;

use super::{
    Allocator, Entry, Sample, alloc_plain, alloc_sampled, blocks, countdown, credit_free, record,
    stack, uncount_realloc,
};
use crate::sample;
use crate::support::{lock, reentry, registry};

/// A realloc where the old block may be sampled or the new one is to be.
///
/// A realloc is the free of the old block and the allocation of a new one,
/// each accounted as such. The block is resized by the inner allocator's
/// own `realloc` (in place, or by `mremap`, where it can) unless it must
/// change layout: a page-aligned sampled block (see `record/blocks.rs`)
/// moves to the program's layout, and a block that becomes a page-aligned sample
/// moves to that; those moves (allocate, copy, free) are of blocks of at
/// most `blocks::LARGE` bytes.
///
/// # Safety
/// As `GlobalAlloc::realloc`.
#[cold]
#[inline(never)]
pub(crate) unsafe fn realloc<A: Allocator>(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    maybe_sampled: bool,
    inner: &A,
) -> *mut u8 {
    let entered = stack::Entered::here();
    // SAFETY: the caller's contract, unchanged.
    let new_ptr = unsafe { realloc_counted(ptr, layout, new_size, maybe_sampled, inner, entered) };
    if !new_ptr.is_null() {
        // Counted as the free of the old block, then the allocation of the
        // new one; the live bytes moved by the difference.
        super::note_live((new_size as u64).wrapping_sub(layout.size() as u64));
        super::track_free(ptr, layout.size());
        super::track_alloc(new_ptr, new_size);
    }
    // A thread out of the registry (exiting) passes its counts on here too.
    registry::flush_unlisted();
    if new_ptr.is_null() {
        crate::process::on_failed_alloc(new_size);
    }
    new_ptr
}

/// [`realloc`], before an unlisted thread's counts are passed on.
///
/// # Safety
/// As `GlobalAlloc::realloc`.
unsafe fn realloc_counted<A: Allocator>(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    maybe_sampled: bool,
    inner: &A,
    entered: stack::Entered,
) -> *mut u8 {
    // SAFETY: `new_size` is non-zero and does not overflow when rounded to
    // `layout.align()`, per `realloc`'s contract.
    let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    if maybe_sampled && lock::free_path_lock_held() && blocks::may_be_live(ptr) {
        // A realloc where the set must not be looked up (see
        // `free::dealloc_maybe_sampled`): a new plain block, and the free of
        // the old one, which `dealloc` puts off. The fast path's filter
        // stopped before it charged the new block to the countdown.
        countdown::charge_unsampled(new_size);
        // SAFETY: the caller's contract, unchanged.
        return unsafe { realloc_by_moving(ptr, layout, new_layout, None, None, inner, entered) };
    }
    let old = if maybe_sampled && blocks::may_be_live(ptr) {
        let _inside = reentry::Inside::enter();
        blocks::get(ptr, inner.owner())
    } else {
        None
    };
    let weight = super::unless_dropped(new_block_weight(maybe_sampled, new_size), new_size);
    let new_page_aligned = weight.is_some() && blocks::page_aligns(new_layout, sample::rate());
    if old.is_some_and(|e| e.page_aligned) || new_page_aligned {
        let origin = old.map(|e| e.origin);
        // SAFETY: the caller's contract, unchanged.
        return unsafe {
            realloc_by_moving(ptr, layout, new_layout, weight, origin, inner, entered)
        };
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
    // SAFETY: the caller's contract, unchanged; `old` is `ptr`'s entry.
    unsafe { realloc_tracked(ptr, layout, new_size, old, weight, inner, entered) }
}

/// The weight of a realloc's new block if it is a sample. If the free
/// filter sent the realloc here, the fast path did not get to charge the
/// countdown (`||` stopped at the filter): it is charged now. Otherwise it
/// was charged and ran out.
fn new_block_weight(maybe_sampled: bool, new_size: usize) -> Option<f64> {
    let expired = !maybe_sampled || countdown::charge(new_size);
    if expired {
        countdown::expired(new_size)
    } else {
        None
    }
}

/// [`realloc`] in place, by the inner allocator, of a block with the
/// program's layout whose old block is sampled (`old` is its entry) or
/// whose new one is to be (`weight`).
///
/// # Safety
/// As `GlobalAlloc::realloc`; `old` is `ptr`'s entry in the set, if any.
unsafe fn realloc_tracked<A: Allocator>(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    old: Option<Entry>,
    weight: Option<f64>,
    inner: &A,
    entered: stack::Entered,
) -> *mut u8 {
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
            // freed, as an untracked sample is. Its stripe has the room the
            // entry left, so nothing needs to grow.
            if let Some(e) = old
                && !blocks::insert(ptr, e, false)
            {
                credit_free(&e);
            }
        } else {
            if let Some(e) = &old {
                credit_free(e);
            }
            if let Some(w) = weight {
                let sample = Sample {
                    ptr: new_ptr,
                    size: new_size,
                    weight: w,
                    page_aligned: false,
                    owner: inner.owner(),
                    origin: old.map(|e| e.origin),
                    entered,
                };
                record(sample, true);
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

/// [`realloc`] for a block that changes layout: allocate, copy, free. A
/// sampled new block (`weight`) takes over `origin`, the old block's
/// if that was sampled.
///
/// # Safety
/// As `GlobalAlloc::realloc`, with `new_layout` the new size at the old
/// alignment.
unsafe fn realloc_by_moving<A: Allocator>(
    ptr: *mut u8,
    layout: Layout,
    new_layout: Layout,
    weight: Option<f64>,
    origin: Option<u64>,
    inner: &A,
    entered: stack::Entered,
) -> *mut u8 {
    let new_ptr = match weight {
        Some(w) => alloc_sampled(inner, new_layout, false, w, origin, entered),
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
        super::free::free(ptr, layout, inner);
    }
    new_ptr
}
