//! The inner allocator as the recorder sees it: with the name its sampled
//! blocks and spare blocks are filed under ([`Allocator::owner`]), so that
//! a block is only ever handed back to the allocator it came from.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// An allocator the recorder allocates sampled blocks from and files them
/// under.
pub(crate) trait Allocator: GlobalAlloc {
    /// This allocator's name, never 0, the same for as long as it lives,
    /// wherever it is moved; two allocators with state have different
    /// names. Odd for a stateless allocator ([`stateless`]), even for one
    /// with state.
    fn owner(&self) -> usize;
}

/// Whether `owner` names a stateless allocator ([`Allocator::owner`]).
pub(crate) fn stateless(owner: usize) -> bool {
    owner & 1 == 1
}

/// `A` and its name: what a `Profiler` holds.
pub(crate) struct Owned<A> {
    inner: A,
    /// The name ([`Allocator::owner`]): 0 until first asked for; then, for
    /// an `A` with state, an even number no other `Owned` has, and for a
    /// stateless `A`, the odd hash of its type.
    id: AtomicUsize,
}

/// The next name for an allocator with state.
static NEXT_ID: AtomicUsize = AtomicUsize::new(2);

impl<A> Owned<A> {
    pub(crate) const fn new(inner: A) -> Self {
        Owned {
            inner,
            id: AtomicUsize::new(0),
        }
    }

    pub(crate) const fn get(&self) -> &A {
        &self.inner
    }

    /// Whether the recorder has filed anything under this allocator: an
    /// allocator with state that has not been asked its name has neither
    /// sampled blocks nor spare ones.
    pub(crate) fn named(&self) -> bool {
        std::mem::size_of::<A>() != 0 && self.id.load(Relaxed) != 0
    }
}

impl<A: GlobalAlloc> Allocator for Owned<A> {
    /// A stateless allocator (`System`, `MiMalloc`: zero-sized) is named by
    /// its type, since any two values of it are interchangeable: a hash of
    /// the type's name, odd (its `dealloc`'s address would not do: an
    /// inlined function has a copy per codegen unit, so each module that
    /// asks could get another name). One with state gets a number of its
    /// own when first asked, which moves with it: not its address, which a
    /// move (`Box::new(profiler)`, `drop(profiler)`) changes, and which
    /// the next value in the same place takes.
    ///
    /// The name is kept in `id` once made, a stateless one too: every
    /// sample and every sampled free asks.
    fn owner(&self) -> usize {
        let id = self.id.load(Relaxed);
        if id != 0 {
            return id;
        }
        if std::mem::size_of::<A>() == 0 {
            // FNV-1a. Racing threads store the same name.
            let hash = std::any::type_name::<A>()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            let name = (hash as usize) | 1;
            self.id.store(name, Relaxed);
            return name;
        }
        let new = loop {
            // Never 0 (a counter that wraps, on a 32-bit target, skips it).
            match NEXT_ID.fetch_add(2, Relaxed) {
                0 => continue,
                n => break n,
            }
        };
        match self.id.compare_exchange(0, new, Relaxed, Relaxed) {
            Ok(_) => new,
            Err(first) => first,
        }
    }
}

// SAFETY: every method forwards to `inner` unchanged.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Owned<A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}
