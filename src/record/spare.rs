//! Spare page-aligned blocks, kept for the next samples.
//!
//! At rates from `blocks::PAGE_ALIGN_MIN_RATE` up, sampled blocks are page
//! aligned (see `record/blocks.rs`).
//! If a freed sampled block went back to the inner allocator, the
//! allocator would recycle its page-aligned address for ordinary blocks of
//! the same size, again and again: each of their frees would then pass the
//! page filter, and, worse, the ordinary blocks in circulation would drift
//! to one per page, costing cache and TLB misses on every malloc and free
//! (glibc's `free` takes twice the time on `dev/benches/overhead.rs`'
//! `threads2`).
//!
//! So sampled blocks under a page are allocated in power-of-two classes
//! ([`MIN_CLASS`] to [`MAX_CLASS`]) and, when freed, kept here for a later
//! sample of the same class instead of being returned. Sampled blocks are
//! rare (one per 512 KiB allocated at the default rate), so [`PER_CLASS`]
//! per class cover the turnover; past the bound (a quarter of a MiB in
//! all), blocks go back to the inner allocator.
//!
//! Page-aligned blocks of a page or more (up to `blocks::LARGE`) keep
//! their size and go back at once. They take a page or more
//! anyway, so a recycled one leaves ordinary blocks no sparser than they
//! are, and its frees cost the second filter's one load. Keeping them would
//! cost the program: a kept block pins its place in the inner allocator's
//! heap, and glibc can then no longer serve a program's large buffers,
//! allocated and freed in turn, from the same memory; spread over more
//! memory, they miss the caches more: with the 64 KiB class kept,
//! `dev/benches`' `large_blocks` (zeroed buffers of 64 KiB to 4 MiB) lands
//! its buffers at three addresses instead of one and takes about 1 % longer.
//! Larger sampled blocks are not page aligned at all (`blocks::LARGE`).
//!
//! Only the blocks of an allocator the whole process shares are kept: a
//! stateless one (`System`, `MiMalloc`), or the global allocator, whatever
//! its state (`cap::Cap<System>`). Another one with state, an arena a
//! `Profiler` wraps and the program calls directly, may be reset once the
//! program has freed every block it handed out; a block kept here would
//! then be handed out again over memory the arena has since given to
//! others.

use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::support::growth;
use crate::support::lock::{Lockable, Mutex, rank};

use crate::record::blocks::PAGE;

/// Classes `MIN_CLASS`, twice that, …, `MAX_CLASS`: the sizes under a
/// page.
const CLASSES: usize = 8;
const MIN_CLASS: usize = 16;
const MAX_CLASS: usize = MIN_CLASS << (CLASSES - 1);
const _: () = assert!(MAX_CLASS * 2 == PAGE);
/// Spare blocks kept per class, so that all the pools together hold at
/// most 64 × (16 B + … + 2 KiB), about 255 KiB.
const PER_CLASS: usize = 64;

static POOLS: [Mutex<{ rank::SPARE }, Vec<usize>>; CLASSES] =
    [const { Mutex::new(Vec::new()) }; CLASSES];

/// The allocator the pooled blocks came from, as `Allocator::owner`
/// names it; 0 until the first sample claims the pools.
///
/// A process may hold more than one `Profiler` (the global one over
/// `System`, a second one over `MiMalloc` called directly), and a block is
/// only ever handed back to the allocator it came from: the pools serve the
/// first stateless allocator that uses them, and every other one allocates
/// and frees its sampled blocks itself.
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// The global allocator's name, once known (0 before): the allocator
/// heapprof's own allocations reach, which an arena called directly never
/// is (`record::alloc` notes it).
static GLOBAL: AtomicUsize = AtomicUsize::new(0);

/// Whether the global allocator's name is noted.
pub(crate) fn global_known() -> bool {
    GLOBAL.load(Relaxed) != 0
}

/// Notes `owner` as the global allocator's.
pub(crate) fn note_global(owner: usize) {
    GLOBAL.store(owner, Relaxed);
}

/// Whether the pools are `owner`'s (claiming them if nobody has yet); never
/// an allocator with state's, but the global one's.
fn serves(owner: usize) -> bool {
    if !crate::record::owned::stateless(owner) && owner != GLOBAL.load(Relaxed) {
        return false;
    }
    match OWNER.compare_exchange(0, owner, Relaxed, Relaxed) {
        Ok(_) => true,
        Err(current) => current == owner,
    }
}

/// The layout a page-aligned sampled block of `layout` is allocated with:
/// its class size under a page, its own size otherwise; always at least
/// page alignment.
pub(crate) fn layout_for(layout: Layout) -> Layout {
    let size = match class_of(layout) {
        Some(c) => MIN_CLASS << c,
        None => layout.size(),
    };
    Layout::from_size_align(size, layout.align().max(PAGE)).unwrap_or(layout)
}

fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_CLASS || layout.align() > PAGE {
        return None;
    }
    let rounded = layout.size().max(MIN_CLASS).next_power_of_two();
    Some((rounded / MIN_CLASS).trailing_zeros() as usize)
}

/// A spare block from allocator `owner` for `actual` (a layout from
/// [`layout_for`]), if one is kept.
pub(crate) fn take(actual: Layout, owner: usize) -> Option<*mut u8> {
    let class = class_of(actual)?;
    if !serves(owner) {
        return None;
    }
    let ptr = POOLS[class].lock().pop()?;
    KEPT_BYTES.fetch_sub(MIN_CLASS << class, Relaxed);
    Some(ptr as *mut u8)
}

/// Keeps a freed block of allocator `owner` for reuse. Returns false if it
/// was not kept (too big, the class is full, or the pools serve another
/// allocator), and the caller must free it.
pub(crate) fn keep(ptr: *mut u8, actual: Layout, owner: usize) -> bool {
    let Some(class) = class_of(actual) else {
        return false;
    };
    if !serves(owner) {
        return false;
    }
    let mut pool = POOLS[class].lock();
    if pool.len() >= PER_CLASS || !growth::reserve_vec(&mut pool, 1) {
        return false;
    }
    pool.push(ptr as usize);
    KEPT_BYTES.fetch_add(MIN_CLASS << class, Relaxed);
    true
}

/// For allocator `owner`, which a unit test is done with: every block the
/// pools keep for it, with the layout to free it with, and the pools are
/// free for the next test's allocator to claim. Nothing if they serve
/// another one. (A stateless allocator lives as long as the process.)
#[cfg(test)]
pub(crate) fn give_back(owner: usize) -> Vec<(*mut u8, Layout)> {
    let mut blocks = Vec::new();
    if OWNER.load(Relaxed) != owner {
        return blocks;
    }
    for (class, pool) in POOLS.iter().enumerate() {
        let kept = std::mem::take(&mut *pool.lock());
        KEPT_BYTES.fetch_sub(kept.len() * (MIN_CLASS << class), Relaxed);
        blocks.extend(kept.into_iter().map(|addr| {
            // What `layout_for` gave every block of the class.
            let layout =
                Layout::from_size_align(MIN_CLASS << class, PAGE).unwrap_or(Layout::new::<u8>());
            (addr as *mut u8, layout)
        }));
    }
    let _ = OWNER.compare_exchange(owner, 0, Relaxed, Relaxed);
    blocks
}

/// Bytes held in spare blocks, changed under the pools' locks.
static KEPT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held in spare blocks. Takes no lock.
pub(crate) fn bytes() -> usize {
    KEPT_BYTES.load(Relaxed)
}

/// The pools' locks, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    for p in &POOLS {
        f(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_pools_hold_a_quarter_mebibyte_of_blocks_under_a_page() {
        let most: usize = (0..CLASSES).map(|c| PER_CLASS * (MIN_CLASS << c)).sum();
        assert_eq!(most, 64 * (4096 - 16), "{most}");
        let l = |s| Layout::from_size_align(s, 8).unwrap();
        assert_eq!(class_of(l(2048)), Some(CLASSES - 1));
        assert_eq!(class_of(l(2049)), None, "4 KiB is a page: no class");
    }

    #[test]
    fn classes_round_up_to_powers_of_two_and_page_alignment() {
        let l = |s, a| Layout::from_size_align(s, a).unwrap();
        assert_eq!(layout_for(l(1, 1)), l(16, PAGE));
        assert_eq!(layout_for(l(100, 8)), l(128, PAGE));
        assert_eq!(layout_for(l(2049, 8)), l(2049, PAGE));
        assert_eq!(layout_for(l(40_000, 8)), l(40_000, PAGE));
        assert_eq!(layout_for(l(65536, 16)), l(65536, PAGE));
        assert_eq!(layout_for(l(65537, 16)), l(65537, PAGE));
        assert_eq!(layout_for(l(100, 8192)), l(100, 8192));
    }
}
