//! Recording: the slow path of an allocation that is sampled, or of a free
//! or realloc that may concern a sampled block.
//!
//! The path of one sampled allocation, from `GlobalAlloc::alloc` to its
//! site:
//!
//! ```text
//! fast.rs          Profiler::alloc: count, charge the countdown → ran out
//! record/mod.rs    alloc → countdown::expired (a sample? its weight)
//!                  alloc_sampled: obtain a block, record it
//!                  record: stack::left (stack to spare?)
//!                          → stack::capture → labels::for_sample (its set)
//!                          → sites::record_alloc (the site)
//!                          → blocks::insert (the live block) → peak::on_alloc
//! ```
//!
//! and of its free: `fast.rs` `Profiler::dealloc` (the mask test) →
//! [`free::dealloc`] (the hash-slot test) → `blocks::remove` →
//! `sites::record_free`.
//!
//! The entry points ([`alloc`], [`free::dealloc`], [`realloc::realloc`])
//! enter the reentrancy guard around what may allocate (the unwinder, the
//! tables), so those allocations go straight to the inner allocator; the
//! functions they call that expect to be inside say so in their docs
//! ("Inside the guard", as `record`'s do). Locks are taken
//! only after the stack is captured, one at a time, and never around a
//! call that could lock again.
//!
//! `record` calls up into `process/` for what runs once per process
//! ([`crate::process::on_first_allocation`]), after a sample, and when the
//! inner allocator fails the program's allocation: the one upward edge of
//! the module graph.

pub(crate) mod blocks;
pub(crate) mod countdown;
pub(crate) mod free;
pub(crate) mod owned;
pub(crate) mod peak;
pub(crate) mod realloc;
pub(crate) mod sites;
pub(crate) mod spare;
pub(crate) mod stack;
pub(crate) mod tracked;

use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::support::{lock, reentry, registry};
use crate::{sample, thread};
use blocks::Entry;

pub(crate) use free::{dealloc, forget_allocator};
pub(crate) use owned::{Allocator, Owned};
pub(crate) use realloc::realloc;

/// Set by the first allocation that reaches heapprof, so `write_profile`
/// can tell a program that forgot `#[global_allocator]`.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Set by the one thread that runs `process::on_first_allocation`.
static SET_UP: AtomicBool = AtomicBool::new(false);

pub(crate) fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

/// Runs the process's setup once, on the first allocation heapprof sees;
/// if the configuration is being read, when the read ends: the setup
/// reads it, and its first read allocates (a library whose first call
/// into heapprof, before any allocation, reads a setting). Never with a
/// heapprof lock held (the setup walks the loaded objects under a lock
/// of a low rank): a setup put off is run by a later allocation.
fn set_up_once() {
    if SET_UP.load(Relaxed) || lock::any_lock_held() {
        return;
    }
    if crate::config::being_read() {
        crate::config::after_read(set_up_once);
    } else if !SET_UP.swap(true, Relaxed) {
        let _inside = reentry::Inside::enter();
        crate::process::on_first_allocation();
    }
}

/// The bytes the samples dropped for want of stack stand for, in all
/// ([`unless_dropped`]), rounded down each.
static DROPPED_BYTES: AtomicU64 = AtomicU64::new(0);

/// [`DROPPED_BYTES`] now.
pub(crate) fn dropped_bytes() -> u64 {
    DROPPED_BYTES.load(Relaxed)
}

/// `weight`, the weight of a sample of `size` bytes if the countdown made
/// one, unless there is too little stack left to record it
/// (`stack::STACK_TO_RECORD`): then the sample is dropped, and what it
/// stands for is added to [`DROPPED_BYTES`], which assertions count
/// against every function.
pub(crate) fn unless_dropped(weight: Option<f64>, size: usize) -> Option<f64> {
    let w = weight?;
    if stack::room_to_record() {
        return Some(w);
    }
    DROPPED_BYTES.fetch_add((size as f64 * w) as u64, Relaxed);
    None
}

/// An allocation whose size used up this thread's countdown.
#[cold]
#[inline(never)]
pub(crate) fn alloc<A: Allocator>(layout: Layout, zeroed: bool, inner: &A) -> *mut u8 {
    if registry::exited() {
        // Allocated by a destructor after the thread left the registry: its
        // countdown stays at zero, so each such allocation comes here to be
        // counted, and is sampled from the countdown the sampler holds.
        registry::flush_unlisted();
    } else {
        // One thread registers the handlers, even if two make their first
        // allocations at once (threads started from C before any Rust
        // allocation; a Rust spawn allocates on its parent first).
        if !INSTALLED.load(Relaxed) {
            INSTALLED.store(true, Relaxed);
        }
        set_up_once();
        // heapprof's own allocations reach only the global allocator.
        if !spare::global_known() && thread::with(|l| l.counters.inside()) == Some(true) {
            spare::note_global(inner.owner());
        }
    }
    let weight = unless_dropped(countdown::expired(layout.size()), layout.size());
    let ptr = match weight {
        Some(weight) => {
            let entered = stack::Entered::here();
            alloc_sampled(inner, layout, zeroed, weight, None, entered)
        }
        // SAFETY: forwarded with the caller's layout (non-zero size per the
        // GlobalAlloc contract).
        None => unsafe { alloc_plain(inner, layout, zeroed) },
    };
    after_alloc(ptr, layout.size())
}

/// What follows a slow-path allocation of `size` bytes that returned
/// `ptr`: a failure is taken out of the counts (every allocation of
/// `sample::MAX_COUNTDOWN` bytes or more comes to the slow path, so a
/// failed big one, a `try_reserve`, is never counted) and may write the
/// failure's dump; a success moves an active measure's marks and an
/// `assert_no_leak`'s set. Returns `ptr`.
fn after_alloc(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        uncount_alloc(size);
        crate::process::on_failed_alloc(size);
    } else {
        note_live(size as u64);
        track_alloc(ptr, size);
    }
    ptr
}

/// While an `assert_no_leak` tracks this thread's blocks
/// ([`tracked::Tracked`]): records the program's allocation of `size`
/// bytes at `ptr`. Every allocation of such a thread comes here (a measure holds
/// its countdown at zero); heapprof's own are left out.
pub(crate) fn track_alloc(ptr: *mut u8, size: usize) {
    thread::with(|l| {
        let tracked = l.measure.tracked().cast::<tracked::Tracked>();
        if tracked.is_null() || l.counters.inside() {
            return;
        }
        let _inside = reentry::Inside::enter();
        // SAFETY: a non-null pointer is the live set its owner
        // (`measure::Tracking`, on this thread) installed; nothing else
        // holds a reference to it now: a reentrant call (the set growing)
        // finds the thread inside the profiler and returns above.
        unsafe { (*tracked).allocated(ptr as usize, size) };
    });
}

/// As [`track_alloc`], for the program's free of the `size`-byte block at
/// `ptr`: every free of a tracked thread comes to the slow path (its free
/// filter's mask is 0). One thread-local load when nothing is tracked.
#[inline]
pub(crate) fn track_free(ptr: *mut u8, size: usize) {
    let tracked = thread::with(|l| l.measure.tracked()).unwrap_or(std::ptr::null_mut());
    if !tracked.is_null() {
        track_free_in(tracked.cast(), ptr, size);
    }
}

#[cold]
#[inline(never)]
fn track_free_in(tracked: *mut tracked::Tracked, ptr: *mut u8, size: usize) {
    if thread::with(|l| l.counters.inside()).unwrap_or(true) {
        return;
    }
    // Inside, so that a signal handler's free while `freed` runs turns
    // back above rather than reach the set.
    let _inside = reentry::Inside::enter();
    // SAFETY: as in `track_alloc`; `freed` allocates nothing, and a
    // reentrant call finds the thread inside and returns above.
    unsafe { (*tracked).freed(ptr as usize, size) };
}

/// After an allocation of the program's that succeeded and changed its
/// live bytes by `grown_by` (wrapping; a `realloc`'s new size less its
/// old), while a measure is active on this thread: moves the marks of its
/// live bytes (`thread::measure::Marks`). Every allocation of a measured
/// thread comes through here (its countdown is held at zero); frees only
/// lower the live bytes, and the next allocation reads where they fell.
fn note_live(grown_by: u64) {
    thread::with(|l| {
        if l.measure.aside() && !l.counters.inside() {
            let c = l.counters.all_counted();
            l.measure
                .note(c.allocated_bytes.wrapping_sub(c.freed_bytes), grown_by);
        }
    });
}

/// Adds a sample at `site` (an allocation, or the free of a sampled
/// block) to this thread's tally for the measure active on it, if any.
/// Inside the profiler.
fn tally(site: sites::Recorded, change: impl FnOnce(&mut thread::measure::SiteTally)) {
    thread::with(|l| {
        if l.measure.aside() {
            l.measure.tally(site.id.raw(), site.serial, change);
        }
    });
}

/// # Safety
/// `layout` has a non-zero size.
unsafe fn alloc_plain<A: Allocator>(inner: &A, layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: the caller guarantees a non-zero size.
    unsafe {
        if zeroed {
            inner.alloc_zeroed(layout)
        } else {
            inner.alloc(layout)
        }
    }
}

/// A sampled allocation of `layout` standing for `weight` allocations:
/// obtains a block and records it, inside the guard; `origin` is the
/// [`Entry::origin`] of the sampled block a realloc replaces with it, if
/// any. Null if memory is exhausted (nothing is recorded then).
fn alloc_sampled<A: Allocator>(
    inner: &A,
    layout: Layout,
    zeroed: bool,
    weight: f64,
    origin: Option<u64>,
    entered: stack::Entered,
) -> *mut u8 {
    let _inside = reentry::Inside::enter();
    let wants_page = blocks::page_aligns(layout, sample::rate());
    // SAFETY: `layout` has a non-zero size, per `GlobalAlloc::alloc`.
    let Some(block) = (unsafe { obtain(inner, layout, zeroed, wants_page) }) else {
        return std::ptr::null_mut();
    };
    let sample = Sample {
        ptr: block.ptr,
        size: layout.size(),
        weight,
        page_aligned: block.page_aligned,
        owner: inner.owner(),
        origin,
        entered,
    };
    // A block that fell back to the program's layout cannot have the entry
    // a page-aligned sample would: it is counted but not tracked.
    let trackable = block.page_aligned == wants_page;
    if record(sample, trackable) || block.layout == layout {
        return block.ptr;
    }
    // A page-aligned block the set had no room to remember: the program
    // could not free it with its own layout, so it gets one of that layout
    // instead (or null, if memory is exhausted; the site then keeps one
    // sample too many).
    // SAFETY: the block came from `inner` (or its spare pool) with
    // `block.layout` and was never handed out; `layout` has a non-zero size.
    unsafe {
        free::release(inner, block.ptr, block.layout, true);
        alloc_plain(inner, layout, zeroed)
    }
}

/// A block obtained for a sample.
struct Block {
    ptr: *mut u8,
    /// The layout it was allocated with, which frees it.
    layout: Layout,
    page_aligned: bool,
}

/// Gets a block for a sample of `layout`: a page-aligned one from the
/// spare pool or `inner` when `wants_page`, else (or when that fails) one
/// of the program's own layout. `None` if memory is exhausted.
///
/// # Safety
/// `layout` has a non-zero size.
unsafe fn obtain<A: Allocator>(
    inner: &A,
    layout: Layout,
    zeroed: bool,
    wants_page: bool,
) -> Option<Block> {
    if wants_page {
        let actual = spare::layout_for(layout);
        let ptr = match spare::take(actual, inner.owner()) {
            Some(ptr) => {
                if zeroed {
                    // SAFETY: a spare block has room for `actual.size()`
                    // bytes.
                    unsafe { ptr.write_bytes(0, actual.size()) };
                }
                ptr
            }
            // SAFETY: `actual` has a non-zero size (at least the caller's).
            None => unsafe { alloc_plain(inner, actual, zeroed) },
        };
        if !ptr.is_null() {
            return Some(Block {
                ptr,
                layout: actual,
                page_aligned: true,
            });
        }
        // No memory for heapprof's page-aligned block (or a failed huge
        // `try_reserve`): the program may still get one of its own layout.
    }
    // SAFETY: the caller's contract.
    let ptr = unsafe { alloc_plain(inner, layout, zeroed) };
    (!ptr.is_null()).then_some(Block {
        ptr,
        layout,
        page_aligned: false,
    })
}

/// A sampled block, as the set remembers it.
struct Sample {
    ptr: *mut u8,
    /// The size the program asked for.
    size: usize,
    weight: f64,
    page_aligned: bool,
    /// The allocator it came from (`spare::owner`).
    owner: usize,
    /// The origin it takes over ([`Entry::origin`]); a fresh one if `None`.
    origin: Option<u64>,
    /// Where the program entered heapprof: the stack starts there.
    entered: stack::Entered,
}

/// Records a sample: its stack, its site's counts, and, if `trackable`,
/// its entry in the sampled set. Returns whether the block is tracked. An
/// untracked sample (`trackable` false, or no memory for the set to
/// remember it) counts as allocated and freed at once, since its free
/// cannot be credited: the alloc_* estimates stay unbiased, inuse misses
/// it. Inside the guard.
///
/// On a thread with less than `stack::STACK_TO_UNWIND` of stack left, a
/// sample is not unwound and has no labels: it counts at the site kept for
/// it ([`sites::SiteId::NOT_UNWOUND`]). With less than
/// `stack::STACK_TO_GROW` left it also grows no table and copies no peak
/// (each allocates, through heapprof's frames again), and is tracked only
/// if the set has room as it is.
fn record(s: Sample, trackable: bool) -> bool {
    let left = stack::left().unwrap_or(usize::MAX);
    let roomy = left >= stack::STACK_TO_GROW;
    sample::note_sample(s.weight);
    let recorded = if left >= stack::STACK_TO_UNWIND {
        let stack = stack::capture(s.entered);
        let frames = stack.frames();
        let labels = crate::labels::for_sample();
        sites::record_alloc(frames, stack::hash(frames), labels, s.size, s.weight)
    } else {
        sites::record_not_unwound(s.size, s.weight)
    };
    tally(recorded, |t| t.counts.add_alloc(s.size, s.weight));
    let site = recorded.id;
    let entry = Entry {
        site,
        weight: s.weight,
        size: s.size,
        page_aligned: s.page_aligned,
        owner: s.owner,
        origin: s.origin.unwrap_or_else(blocks::new_origin),
    };
    if trackable && blocks::insert(s.ptr, entry, roomy) {
        peak::on_alloc(s.size as f64 * s.weight, roomy);
        if roomy {
            // May start threads: left to a sample with stack to spare.
            crate::process::after_sample();
        }
        return true;
    }
    credit_site_free(site, s.size, s.weight);
    false
}

/// Credits the free of a sampled block, taken out of the set, to its site.
fn credit_free(e: &Entry) {
    credit_site_free(e.site, e.size, e.weight);
    peak::on_free(e.size as f64 * e.weight);
}

/// Credits a free to site `id`, in the table and in this thread's tally.
fn credit_site_free(id: sites::SiteId, size: usize, weight: f64) {
    let serial = sites::record_free(id, size, weight);
    tally(sites::Recorded { id, serial }, |t| {
        t.counts.add_free(size, weight)
    });
}

/// The layout a sampled block is really allocated with: the caller's, or,
/// when page aligned, a page-aligned size class (see `record/spare.rs`).
fn actual_layout(layout: Layout, page_aligned: bool) -> Layout {
    if page_aligned {
        spare::layout_for(layout)
    } else {
        layout
    }
}

/// Takes back an allocation of `size` bytes that the inner allocator
/// failed: it was counted on the way in.
fn uncount_alloc(size: usize) {
    thread::with(|l| l.counters.uncount_alloc(size));
}

/// A plain realloc from `old_size` to `new_size` bytes that the inner
/// allocator failed, from the fast path: see [`uncount_realloc`].
#[cold]
#[inline(never)]
pub(crate) fn realloc_failed(old_size: usize, new_size: usize) {
    uncount_realloc(old_size, new_size);
    crate::process::on_failed_alloc(new_size);
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

#[cfg(test)]
pub(crate) mod tests;
