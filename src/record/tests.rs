//! What the record module's unit tests share, and the recorder's own.
//!
//! The site table and the sampled set are one per process, and the tests
//! run on parallel threads: each test uses stacks, addresses and owners of
//! its own, and a test that needs the tables to stand still while it looks
//! holds [`TABLES`] exclusively.
//!
//! The recorder is driven the way `fast.rs` drives it, over an allocator
//! that keeps a ledger of its blocks. The unit-test binary does not use
//! heapprof as its global allocator, so nothing reaches the recorder but
//! the calls made here: [`alloc`], [`dealloc`] and [`realloc`] count and
//! filter as the fast path does and call the slow paths of this module
//! when it would. The ledger checks that every block comes back to it
//! once, with the layout it was allocated with. Each test ends with
//! `forget_allocator` ([`Forget`]), as a dropped `Profiler` does; its
//! [`Inner`] is named by its ledger's address.
//!
//! The rate is process-wide: the recorder's tests hold [`RATE`] while they
//! use it. They make this thread's next allocation a sample of weight 1
//! with [`next_is_sampled`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::blocks::{self, PAGE, PAGE_ALIGN_MIN_RATE};
use super::{Allocator, countdown, sites, spare, stack};
use crate::thread;

/// Held shared by every test that adds to the process-wide site table or
/// sampled set, and exclusively by a test that needs them to stand still
/// while it looks (the site bound, byte counts, an empty filter slot).
static TABLES: RwLock<()> = RwLock::new(());

pub(super) fn tables_shared() -> RwLockReadGuard<'static, ()> {
    TABLES.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn tables_exclusive() -> RwLockWriteGuard<'static, ()> {
    TABLES.write().unwrap_or_else(PoisonError::into_inner)
}

/// Held by the tests that set the process-wide sample rate.
static RATE: Mutex<()> = Mutex::new(());

/// Held by a test whose thread's samples must follow from the rate it
/// set: another test's rate change reaches every thread at once.
pub(super) fn rate_exclusive() -> MutexGuard<'static, ()> {
    RATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a recorder test holds: the rate, and the tables shared.
fn serialized() -> (MutexGuard<'static, ()>, RwLockReadGuard<'static, ()>) {
    (rate_exclusive(), tables_shared())
}

/// Makes this thread's next allocation a sample of weight 1, with the
/// process sampling at `rate` (which decides page alignment).
fn next_is_sampled(rate: usize) {
    // A thread's first expiry draws its first countdown, and samples only
    // if the allocation is larger: expire once at rate 1 so that the
    // thread has its generator.
    countdown::set_rate(1);
    assert_eq!(countdown::expired(0), Some(1.0));
    // A rate change makes the next allocation run the countdown out and
    // count once, whatever its size.
    countdown::set_rate(rate);
}

/// Every block the inner allocator has handed out and not had back, and
/// what went wrong: a free of a block it never gave, or with a layout
/// other than the one it was allocated with.
#[derive(Default)]
struct Ledger {
    live: Mutex<Vec<(usize, Layout)>>,
    errors: Mutex<Vec<String>>,
    allocations: Mutex<usize>,
}

impl Ledger {
    fn live(&self) -> Vec<(usize, Layout)> {
        self.live.lock().unwrap().clone()
    }

    fn layout_of(&self, ptr: *mut u8) -> Option<Layout> {
        self.live
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == ptr as usize)
            .map(|&(_, l)| l)
    }

    fn allocations(&self) -> usize {
        *self.allocations.lock().unwrap()
    }

    fn took(&self, ptr: *mut u8, layout: Layout) -> *mut u8 {
        if !ptr.is_null() {
            self.live.lock().unwrap().push((ptr as usize, layout));
            *self.allocations.lock().unwrap() += 1;
        }
        ptr
    }

    /// Takes `ptr` off the list; the layout it was allocated with, if it
    /// was on it.
    fn gave_back(&self, ptr: *mut u8, layout: Layout) -> Option<Layout> {
        let mut live = self.live.lock().unwrap();
        let Some(i) = live.iter().position(|&(p, _)| p == ptr as usize) else {
            self.errors
                .lock()
                .unwrap()
                .push(format!("{ptr:p} freed but not allocated here"));
            return None;
        };
        let (_, allocated) = live.swap_remove(i);
        if allocated != layout {
            self.errors.lock().unwrap().push(format!(
                "{ptr:p} allocated with {allocated:?}, freed with {layout:?}"
            ));
        }
        Some(allocated)
    }

    /// Asserts that every block came back, each with its own layout.
    fn assert_balanced(&self) {
        assert_eq!(*self.errors.lock().unwrap(), Vec::<String>::new());
        assert_eq!(self.live(), Vec::new(), "blocks never given back");
    }
}

/// The inner allocator: the system's, through a ledger. Named by its
/// ledger's address, which no other test's shares while this one runs: no
/// other test's blocks are this one's.
struct Inner<'a>(&'a Ledger);

impl Allocator for Inner<'_> {
    fn owner(&self) -> usize {
        // Odd, as `Owned`'s names of stateless allocators are, so that the
        // spare pools serve it (its test gives their blocks back:
        // `Forget`); ledgers are aligned, so no two tests' names meet.
        self.0 as *const Ledger as usize | 1
    }
}

// SAFETY: every block comes from `System` and goes back to it with the
// layout it was allocated with, which the ledger keeps (a free with another
// layout is recorded as an error, and the block freed with its own).
unsafe impl GlobalAlloc for Inner<'_> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract.
        self.0.took(unsafe { System.alloc(layout) }, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract.
        self.0.took(unsafe { System.alloc_zeroed(layout) }, layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(allocated) = self.0.gave_back(ptr, layout) {
            // SAFETY: `ptr` came from `System` with `allocated`.
            unsafe { System.dealloc(ptr, allocated) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(allocated) = self.0.gave_back(ptr, layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `ptr` came from `System` with `allocated`; the caller's
        // contract for `new_size`.
        let new = unsafe { System.realloc(ptr, allocated, new_size) };
        let new_layout = Layout::from_size_align(new_size, allocated.align()).unwrap();
        if new.is_null() {
            self.0.took(ptr, allocated);
            *self.0.allocations.lock().unwrap() -= 1;
            return new;
        }
        self.0.took(new, new_layout)
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Forgets its allocator when dropped, as a dropped `Profiler` does, and
/// so even when a test fails: the allocator's blocks leave the set and the
/// spare pools, and the test that next has an allocator at the same
/// address does not find them.
struct Forget<'a, 'b>(&'a Inner<'b>);

impl Drop for Forget<'_, '_> {
    fn drop(&mut self) {
        for (ptr, layout) in spare::give_back(self.0.owner()) {
            // SAFETY: a spare block came from this allocator with this
            // layout, and the pools no longer list it.
            unsafe { self.0.dealloc(ptr, layout) };
        }
        super::forget_allocator(self.0);
    }
}

/// The entry of `ptr` in the sampled set, as a block of `inner`'s.
fn entry(inner: &Inner<'_>, ptr: *mut u8) -> Option<blocks::Entry> {
    blocks::get(ptr, inner.owner())
}

/// This thread's copy of the free filter's mask.
fn mask() -> usize {
    thread::with(|l| l.filter_mask.load(std::sync::atomic::Ordering::SeqCst)).unwrap()
}

/// An allocation as `Profiler::alloc` makes it: counted and charged to
/// the countdown, and the recorder's when the countdown runs out.
///
/// # Safety
/// As `GlobalAlloc::alloc`.
unsafe fn alloc(inner: &Inner<'_>, layout: Layout, zeroed: bool) -> *mut u8 {
    thread::with(|l| l.counters.count_alloc());
    if countdown::charge(layout.size()) {
        return super::alloc(layout, zeroed, inner);
    }
    // SAFETY: the caller's contract.
    unsafe {
        if zeroed {
            inner.alloc_zeroed(layout)
        } else {
            inner.alloc(layout)
        }
    }
}

/// A free as `Profiler::dealloc` makes it: the recorder's if the mask
/// lets it through.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
unsafe fn dealloc(inner: &Inner<'_>, ptr: *mut u8, layout: Layout) {
    // SAFETY: the caller's contract.
    unsafe {
        if blocks::may_contain(mask(), ptr, layout.size()) {
            super::dealloc(ptr, layout, inner)
        } else {
            inner.dealloc(ptr, layout)
        }
    }
}

/// A realloc as `Profiler::realloc` makes it: the recorder's if the old
/// block may be sampled or the countdown runs out.
///
/// # Safety
/// As `GlobalAlloc::realloc`.
unsafe fn realloc(inner: &Inner<'_>, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    thread::with(|l| l.counters.count_alloc());
    let maybe_sampled = blocks::may_contain(mask(), ptr, layout.size());
    // SAFETY: the caller's contract.
    unsafe {
        if maybe_sampled || countdown::charge(new_size) {
            super::realloc(ptr, layout, new_size, maybe_sampled, inner)
        } else {
            inner.realloc(ptr, layout, new_size)
        }
    }
}

/// Settles this thread's stack capture (its first sample unwinds with
/// DWARF and learns where the thread's stack ends), so that two samples
/// from one call site have one stack.
fn settle_stacks() {
    let _ = stack::capture(stack::Entered::NONE);
    let _ = stack::capture(stack::Entered::NONE);
}

/// At rate 1, every allocation is a sample of weight 1 with the program's
/// layout; one call site is one site; a free credits it and gives the
/// block back to the inner allocator with the same layout.
#[test]
fn samples_are_tracked_counted_and_freed_through_the_inner_allocator() {
    let _serial = serialized();
    let ledger = Ledger::default();
    {
        let inner = Inner(&ledger);
        let _forget = Forget(&inner);
        settle_stacks();
        next_is_sampled(1);
        let mut ptrs = Vec::new();
        // One call site for all three (a loop the compiler cannot unroll).
        for _ in 0..std::hint::black_box(3) {
            // SAFETY: a non-zero size.
            ptrs.push(unsafe { alloc(&inner, layout(100), false) });
        }
        let entries: Vec<_> = ptrs.iter().map(|&p| entry(&inner, p).unwrap()).collect();
        for (e, &p) in entries.iter().zip(&ptrs) {
            assert_eq!((e.size, e.weight, e.page_aligned), (100, 1.0, false));
            assert_eq!(
                ledger.layout_of(p),
                Some(layout(100)),
                "the program's layout"
            );
        }
        let site = entries[0].site;
        assert!(entries.iter().all(|e| e.site == site), "one site");
        let c = sites::counts_of(site).unwrap();
        assert_eq!((c.sampled_allocs, c.sampled_alloc_bytes), (3, 300));
        assert_eq!((c.alloc_objects_est, c.alloc_bytes_est), (3.0, 300.0));
        assert_eq!(c.sampled_frees, 0);

        // SAFETY: allocated above with this layout.
        unsafe { dealloc(&inner, ptrs[0], layout(100)) };
        assert!(entry(&inner, ptrs[0]).is_none(), "out of the set");
        let c = sites::counts_of(site).unwrap();
        assert_eq!(
            (c.sampled_frees, c.free_objects_est, c.free_bytes_est),
            (1, 1.0, 100.0)
        );
        for &p in &ptrs[1..] {
            // SAFETY: allocated above with this layout.
            unsafe { dealloc(&inner, p, layout(100)) };
        }
        assert_eq!(sites::counts_of(site).unwrap().sampled_frees, 3);
    }
    ledger.assert_balanced();
}

/// From [`PAGE_ALIGN_MIN_RATE`] up, a small sample is a page-aligned block
/// of its size class; freed, it goes to the spare pool, serves the next
/// sample of its class (zeroed if asked), and goes back to the inner
/// allocator with the class layout when its test gives the pools back.
#[test]
fn page_aligned_samples_use_their_class_layout_and_the_spare_pool() {
    let _serial = serialized();
    let ledger = Ledger::default();
    let kept_before;
    {
        let inner = Inner(&ledger);
        let _forget = Forget(&inner);
        let class = spare::layout_for(layout(100));
        assert_eq!((class.size(), class.align()), (128, PAGE));

        next_is_sampled(PAGE_ALIGN_MIN_RATE);
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(&inner, layout(100), true) };
        assert_eq!(p as usize % PAGE, 0);
        let e = entry(&inner, p).unwrap();
        assert_eq!((e.size, e.weight, e.page_aligned), (100, 1.0, true));
        assert_eq!(ledger.layout_of(p), Some(class));
        // SAFETY: `p` is valid for 100 bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p, 100) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes.fill(0xAB);

        let kept = spare::bytes();
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(&inner, p, layout(100)) };
        assert!(entry(&inner, p).is_none());
        let c = sites::counts_of(e.site).unwrap();
        assert_eq!((c.sampled_allocs, c.sampled_frees), (1, 1));
        assert_eq!(spare::bytes(), kept + class.size(), "kept in the pool");
        assert_eq!(ledger.layout_of(p), Some(class), "not given back yet");
        kept_before = kept;

        let allocations = ledger.allocations();
        next_is_sampled(PAGE_ALIGN_MIN_RATE);
        // SAFETY: a non-zero size.
        let q = unsafe { alloc(&inner, layout(70), true) };
        assert_eq!(q, p, "the spare block serves the next sample of its class");
        assert_eq!(ledger.allocations(), allocations);
        // SAFETY: `q` is valid for 70 bytes.
        let data = unsafe { std::slice::from_raw_parts(q, 70) };
        assert!(data.iter().all(|&b| b == 0), "{data:?}");
        assert_eq!(entry(&inner, q).unwrap().size, 70);
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(&inner, q, layout(70)) };
    }
    assert_eq!(spare::bytes(), kept_before, "the pool gave its blocks back");
    ledger.assert_balanced();
}

/// A realloc of a sampled block to a sampled block: the old one's free is
/// credited to its site, the new one recorded, the data kept.
#[test]
fn realloc_credits_the_old_sample_and_records_the_new() {
    let _serial = serialized();
    let ledger = Ledger::default();
    {
        let inner = Inner(&ledger);
        let _forget = Forget(&inner);
        next_is_sampled(1);
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(&inner, layout(64), false) };
        let old = entry(&inner, p).unwrap();
        // SAFETY: `p` is valid for 64 bytes.
        unsafe { std::slice::from_raw_parts_mut(p, 64) }
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);

        next_is_sampled(1);
        // SAFETY: allocated above with this layout; a non-zero new size.
        let q = unsafe { realloc(&inner, p, layout(64), 200) };
        assert!(!q.is_null());
        // SAFETY: `q` is valid for 200 bytes.
        let data = unsafe { std::slice::from_raw_parts(q, 64) };
        assert!(
            data.iter().enumerate().all(|(i, &b)| b == i as u8),
            "{data:?}"
        );
        let new = entry(&inner, q).unwrap();
        assert_eq!((new.size, new.weight, new.page_aligned), (200, 1.0, false));
        assert_eq!(
            new.origin, old.origin,
            "the grown block is the same allocation"
        );
        assert_eq!(ledger.layout_of(q), Some(layout(200)));
        let c = sites::counts_of(old.site).unwrap();
        assert_eq!((c.sampled_frees, c.free_bytes_est), (1, 64.0));
        let n = sites::counts_of(new.site).unwrap();
        assert_eq!((n.sampled_allocs, n.sampled_alloc_bytes), (1, 200));
        if q != p {
            assert!(entry(&inner, p).is_none());
        }

        // SAFETY: reallocated above to this layout.
        unsafe { dealloc(&inner, q, layout(200)) };
        assert!(entry(&inner, q).is_none());
    }
    ledger.assert_balanced();
}

/// A realloc of a page-aligned sample, not sampled itself: the block moves
/// to the program's layout, the old one's free is credited and its class
/// block released (never freed with the program's layout).
#[test]
fn realloc_moves_a_page_aligned_sample_to_the_programs_layout() {
    let _serial = serialized();
    let ledger = Ledger::default();
    {
        let inner = Inner(&ledger);
        let _forget = Forget(&inner);
        next_is_sampled(PAGE_ALIGN_MIN_RATE);
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(&inner, layout(100), false) };
        let old = entry(&inner, p).unwrap();
        assert!(old.page_aligned);
        // SAFETY: `p` is valid for 100 bytes.
        unsafe { p.write_bytes(0x5A, 100) };

        // Sampling off: the new block is not a sample.
        countdown::set_rate(0);
        // SAFETY: allocated above with this layout; a non-zero new size.
        let q = unsafe { realloc(&inner, p, layout(100), 300) };
        assert!(!q.is_null() && q != p);
        // SAFETY: `q` is valid for 300 bytes.
        let data = unsafe { std::slice::from_raw_parts(q, 100) };
        assert!(data.iter().all(|&b| b == 0x5A), "{data:?}");
        assert!(entry(&inner, q).is_none(), "not a sample");
        assert!(entry(&inner, p).is_none(), "the old sample is gone");
        assert_eq!(ledger.layout_of(q), Some(layout(300)));
        let c = sites::counts_of(old.site).unwrap();
        assert_eq!((c.sampled_frees, c.free_bytes_est), (1, 100.0));

        // SAFETY: reallocated above to this layout.
        unsafe { dealloc(&inner, q, layout(300)) };
    }
    ledger.assert_balanced();
}

/// A realloc of a plain block that becomes a page-aligned sample: a new
/// block of the class layout, the data copied, the old one freed with the
/// program's layout.
#[test]
fn realloc_into_a_page_aligned_sample_moves_the_block() {
    let _serial = serialized();
    let ledger = Ledger::default();
    {
        let inner = Inner(&ledger);
        let _forget = Forget(&inner);
        countdown::set_rate(0);
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(&inner, layout(24), false) };
        assert!(entry(&inner, p).is_none(), "sampling is off");
        // SAFETY: `p` is valid for 24 bytes.
        unsafe { p.write_bytes(0x3C, 24) };

        next_is_sampled(PAGE_ALIGN_MIN_RATE);
        // SAFETY: allocated above with this layout; a non-zero new size.
        let q = unsafe { realloc(&inner, p, layout(24), 1000) };
        assert_eq!(q as usize % PAGE, 0);
        // SAFETY: `q` is valid for 1000 bytes.
        let data = unsafe { std::slice::from_raw_parts(q, 24) };
        assert!(data.iter().all(|&b| b == 0x3C), "{data:?}");
        let new = entry(&inner, q).unwrap();
        assert_eq!((new.size, new.weight, new.page_aligned), (1000, 1.0, true));
        assert_eq!(ledger.layout_of(q), Some(spare::layout_for(layout(1000))));
        assert_eq!(ledger.layout_of(p), None, "the old block was freed");

        // Moved again, to another page-aligned sample: the same allocation.
        next_is_sampled(PAGE_ALIGN_MIN_RATE);
        // SAFETY: reallocated above to this layout; a non-zero new size.
        let r = unsafe { realloc(&inner, q, layout(1000), 5000) };
        let moved = entry(&inner, r).unwrap();
        assert!(moved.page_aligned && r != q);
        assert_eq!(moved.origin, new.origin, "a moved block keeps its origin");

        // A block allocated anew has an origin of its own.
        next_is_sampled(PAGE_ALIGN_MIN_RATE);
        // SAFETY: a non-zero size.
        let other = unsafe { alloc(&inner, layout(1000), false) };
        assert_ne!(entry(&inner, other).unwrap().origin, moved.origin);

        // SAFETY: allocated or reallocated above to these layouts.
        unsafe {
            dealloc(&inner, r, layout(5000));
            dealloc(&inner, other, layout(1000));
        }
    }
    ledger.assert_balanced();
}

/// Past what the spare pool keeps of a class, a freed page-aligned sample
/// goes back to the inner allocator at once, with its class layout; one of
/// a page or more keeps its size and is not kept at all.
#[test]
fn past_the_pools_bound_samples_go_back_with_their_class_layout() {
    let _serial = serialized();
    // (size, blocks, the class's size, how many of them go back at once)
    for (size, n, class_size, back_at_once) in [
        (1000, 70, 1024, 6..7),
        (3000, 8, 3000, 8..9),
        (40_000, 8, 40_000, 8..9),
    ] {
        let ledger = Ledger::default();
        let class = spare::layout_for(layout(size));
        assert_eq!((class.size(), class.align()), (class_size, PAGE));
        {
            let inner = Inner(&ledger);
            let _forget = Forget(&inner);
            let ptrs: Vec<*mut u8> = (0..n)
                .map(|_| {
                    next_is_sampled(PAGE_ALIGN_MIN_RATE);
                    // SAFETY: a non-zero size.
                    unsafe { alloc(&inner, layout(size), false) }
                })
                .collect();
            for &p in &ptrs {
                assert!(entry(&inner, p).unwrap().page_aligned);
                assert_eq!(ledger.layout_of(p), Some(class));
            }
            for &p in &ptrs {
                // SAFETY: allocated above with this layout.
                unsafe { dealloc(&inner, p, layout(size)) };
            }
            let back = ptrs
                .iter()
                .filter(|&&p| ledger.layout_of(p).is_none())
                .count();
            assert!(
                back_at_once.contains(&back),
                "{size}: {back} of {n} given back at once"
            );
        }
        ledger.assert_balanced();
    }
}
