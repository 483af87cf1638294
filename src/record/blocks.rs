//! The sampled-address set: which live blocks were sampled, and what to
//! credit when they are freed.
//!
//! # Keeping the free path free
//!
//! Every `dealloc` must find out whether its block was sampled, and almost
//! none were (one block per [`config::DEFAULT_SAMPLE_RATE`] bytes allocated,
//! at the default rate). Looking every pointer up
//! in a shared table would put a cache miss, or a lock, on every free.
//! Instead, at rates from [`PAGE_ALIGN_MIN_RATE`] up, sampled blocks are
//! allocated *page aligned* (alignment raised to [`PAGE`], sizes under a
//! page rounded up to their class by `spare::layout_for` so that freed ones
//! can be reused; glibc's `memalign` returns the slack before the block to
//! its free lists), so
//! the free path first tests `ptr & PAGE_MASK == 0`. Only page-aligned
//! pointers, about one in `PAGE / 16` small blocks plus blocks that asked for page
//! alignment, go on to the set itself.
//!
//! Page alignment costs up to a page per sampled block: `PAGE / rate` of
//! the sampled bytes, about 0.8 % at the default rate, but far too much when most allocations are sampled
//! (rate 1 would put every block on its own page). Below
//! [`PAGE_ALIGN_MIN_RATE`], sampled blocks keep their requested alignment,
//! and while any such block is live, the filter mask is 0 so that every
//! free consults the set. That is the testing mode, where the cost of the
//! lookup is beside the point.
//!
//! The mask is read by every free, so each thread keeps its own copy in
//! the fast path's thread-local (`thread::Local::filter_mask`), beside the counters it bumps
//! anyway: the test is then one AND with thread-local memory, with no load
//! of a shared line (and, from the user's crate, of its address through
//! the GOT). The registry lists the copies, and [`update_mask`] has it
//! (`registry::set_filter_mask`) write every one of them, under the lock
//! that serializes mask changes. A thread's
//! copy is 0, "look every block up", until the thread registers, on its
//! first slow path, and again after it retires on exit.
//!
//! Page alignment alone is not a stable signature: when a sampled block is
//! freed, the allocator recycles its page-aligned address for ordinary
//! blocks of the same size, over and over, and each of their frees passes
//! the page test. So a second, lock-free filter follows it: a table of
//! saturating counters indexed by a hash of the address, counting *live*
//! sampled blocks. A recycled address whose counter is zero is rejected
//! with one load (the table is [`LIVE_SLOTS`] bytes and read-mostly). Only pointers that
//! pass both go on to lock a stripe of the set. With N live sampled blocks
//! the second filter lets through at most N/[`LIVE_SLOTS`] of what reaches it.
//!
//! # The set
//!
//! A striped `HashMap` from address to [`Entry`]. It is touched only on a
//! sampled allocation, on the free of a page-aligned (or, in testing mode,
//! any) block, and by `fork`'s handlers. A thread that holds or waits for a
//! lock of the free path (`lock::free_path_lock_held`) never looks the set
//! up (`record::free`): a free there is the
//! set's own storage, or a signal handler's, and the stripe it would wait
//! for may be the one the thread holds.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

#[cfg(doc)]
use crate::config;
use crate::support::growth;
use crate::support::lock::{Lockable, Mutex, rank};
use crate::support::registry;

use crate::record::sites::SiteId;

pub(crate) const PAGE: usize = 4096;
const PAGE_MASK: usize = PAGE - 1;

/// Rates at or above this page-align sampled blocks (overhead at most
/// PAGE/rate = 6.25 % of the sampled bytes here, 0.8 % at the default rate).
pub(crate) const PAGE_ALIGN_MIN_RATE: usize = 64 * 1024;

/// Blocks larger than this are never page aligned: the free filter lets
/// every free of one through by its size instead. Page alignment would
/// keep the inner allocator from resizing them in place (`realloc` of an
/// over-aligned block allocates, copies and frees), and their frees are
/// rare enough to go to the second filter.
pub(crate) const LARGE: usize = 64 * 1024;

/// Whether a sampled block of `layout`, sampled at `rate`, is allocated
/// page aligned.
pub(crate) fn page_aligns(layout: std::alloc::Layout, rate: usize) -> bool {
    rate >= PAGE_ALIGN_MIN_RATE && layout.size() <= LARGE
}

const STRIPES: usize = 64;

/// What the free of a sampled block needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub site: SiteId,
    pub weight: f64,
    pub size: usize,
    /// Whether the block was allocated with its alignment raised to a page;
    /// it must be freed with that same layout.
    pub page_aligned: bool,
    /// The allocator the block came from (`Allocator::owner`): a process may
    /// hold more than one `Profiler`.
    pub owner: usize,
    /// Names the block's allocation across reallocs ([`new_origin`]): a
    /// sampled block that a realloc replaces with a sampled one passes it
    /// on, so that two snapshots' lists of live blocks ([`live`]) tell a
    /// block grown since the first from one allocated since.
    pub origin: u64,
}

impl Entry {
    /// Whether the free filter's page test misses this block, so that
    /// every free must look blocks up while it is live: neither page
    /// aligned nor caught by its size.
    fn needs_lookups(&self) -> bool {
        !self.page_aligned && self.size <= LARGE
    }
}

type Map = HashMap<usize, Entry, BuildHasherDefault<AddrHasher>>;

/// Hashes a block's address for a map or set of blocks
/// (`support::growth::spread`).
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        crate::support::growth::spread(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }
}

/// Keeps a value on its own cache lines (128 bytes: adjacent-line
/// prefetching pairs lines on x86), so that a lock taken by one thread does
/// not slow down the reads of its neighbours by every other thread.
#[repr(align(128))]
struct CachePadded<T>(T);

static STRIPE_MAPS: [CachePadded<Mutex<{ rank::BLOCKS }, Map>>; STRIPES] =
    [const { CachePadded(Mutex::new(HashMap::with_hasher(BuildHasherDefault::new()))) }; STRIPES];

/// The second filter: live sampled blocks per hash slot of their address,
/// saturating at `u8::MAX` (a saturated slot stays "maybe" for good).
const LIVE_SLOTS: usize = 1 << 16;
static LIVE_COUNTS: [AtomicU8; LIVE_SLOTS] = [const { AtomicU8::new(0) }; LIVE_SLOTS];
/// The bytes the stripes' maps hold (they never shrink).
static MAP_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The bytes each stripe's map holds, as measured under its lock when it
/// last grew. The measure (`growth::hash_map_bytes`) reads `capacity()`,
/// which removals lower (by the tombstones they leave) until the map's
/// next rehash: only a rise of it is growth.
static STRIPE_BYTES: [AtomicUsize; STRIPES] = [const { AtomicUsize::new(0) }; STRIPES];
/// Live sampled blocks that the page test misses ([`Entry::needs_lookups`]).
static UNALIGNED_LIVE: AtomicUsize = AtomicUsize::new(0);
/// The free path's filter for a block of `size` bytes at `ptr`, with the
/// freeing thread's copy of the mask: false means "certainly not sampled".
#[inline(always)]
pub(crate) fn may_contain(mask: usize, ptr: *mut u8, size: usize) -> bool {
    (ptr as usize) & mask == 0 || size > LARGE
}

// The registry's copies start from "page-aligned blocks only".
const _: () = assert!(registry::INITIAL_FILTER_MASK == PAGE_MASK);

#[inline]
fn addr_hash(addr: usize) -> u64 {
    (addr as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline]
fn live_slot(addr: usize) -> &'static AtomicU8 {
    &LIVE_COUNTS[(addr_hash(addr) >> 48) as usize % LIVE_SLOTS]
}

/// The second filter, lock-free: false means "certainly not a live
/// sampled block".
#[inline]
pub(crate) fn may_be_live(ptr: *mut u8) -> bool {
    live_slot(ptr as usize).load(SeqCst) != 0
}

fn stripe_index(addr: usize) -> usize {
    (addr_hash(addr) >> 58) as usize % STRIPES
}

fn stripe(addr: usize) -> &'static Mutex<{ rank::BLOCKS }, Map> {
    &STRIPE_MAPS[stripe_index(addr)].0
}

fn with_stripe<R>(addr: usize, f: impl FnOnce(&mut Map) -> R) -> R {
    f(&mut stripe(addr).lock())
}

/// Adds a sampled block. Must be called before the pointer is handed to the
/// program, so that any thread that can free it sees the filter update.
///
/// False if the set has no memory for it, or, unless `may_grow`, no room
/// without growing: the caller must then not hand the block out as
/// sampled. The map's room is reserved before anything changes, so such a
/// block leaves no trace here.
#[must_use]
pub(crate) fn insert(ptr: *mut u8, entry: Entry, may_grow: bool) -> bool {
    let counted = &STRIPE_BYTES[stripe_index(ptr as usize)];
    let stored = with_stripe(ptr as usize, |map| {
        // An insert that may grow leaves room for one more, so that one
        // that may not finds it in any stripe used before.
        let room = (may_grow && growth::reserve_map(map, 2)) || map.len() < map.capacity();
        if room {
            map.insert(ptr as usize, entry);
        }
        let held = growth::hash_map_bytes(map);
        let before = counted.load(SeqCst);
        if held > before {
            counted.store(held, SeqCst);
            MAP_BYTES.fetch_add(held - before, SeqCst);
        }
        room
    });
    if !stored {
        return false;
    }
    if entry.needs_lookups() {
        // The mask must be 0 before this block can be freed, that is,
        // before this returns, whichever thread moved the count off 0. So
        // every unaligned insert passes through `update_mask`: after its
        // increment, under the lock, it cannot be overtaken by a remover
        // that saw the count at 0 and is about to raise the mask. (Were only
        // the 0 -> 1 insert to call it, another thread's block sampled just
        // after could be freed before that call stored the 0, skip the set,
        // and stay "in use" for good.)
        // A global lock per unaligned sample, at rates below
        // PAGE_ALIGN_MIN_RATE only, next to the cost of the stack walk.
        UNALIGNED_LIVE.fetch_add(1, SeqCst);
        update_mask();
    }
    // Saturating increment: `u8::MAX` means "too many to count", kept for good.
    let _ = live_slot(ptr as usize).fetch_update(SeqCst, SeqCst, |n| (n < u8::MAX).then(|| n + 1));
    true
}

/// The block's entry, if it is in the set as a block of allocator `owner`.
pub(crate) fn get(ptr: *mut u8, owner: usize) -> Option<Entry> {
    with_stripe(ptr as usize, |map| {
        map.get(&(ptr as usize))
            .filter(|e| e.owner == owner)
            .copied()
    })
}

/// Removes a block if it was sampled, returning its entry.
pub(crate) fn remove(ptr: *mut u8) -> Option<Entry> {
    let entry = with_stripe(ptr as usize, |map| map.remove(&(ptr as usize)))?;
    let _ = live_slot(ptr as usize)
        .fetch_update(SeqCst, SeqCst, |n| (n > 0 && n < u8::MAX).then(|| n - 1));
    if entry.needs_lookups() && UNALIGNED_LIVE.fetch_sub(1, SeqCst) == 1 {
        update_mask();
    }
    Some(entry)
}

/// Removes every entry of allocator `owner` (which is going away, and its
/// blocks with it), returning them.
pub(crate) fn remove_owned_by(owner: usize) -> Vec<Entry> {
    let mut gone = Vec::new();
    for stripe in &STRIPE_MAPS {
        let addrs: Vec<usize> = stripe
            .0
            .lock()
            .iter()
            .filter(|(_, e)| e.owner == owner)
            .map(|(&a, _)| a)
            .collect();
        gone.extend(addrs.into_iter().filter_map(|a| remove(a as *mut u8)));
    }
    gone
}

/// Sets the mask from the current count. Every unaligned insert and every
/// 1 -> 0 removal calls this after changing the count, and the registry
/// serializes the calls, each of which reads the count afresh, so the last
/// call to run always sees the final count, and an insert returns only
/// once the mask is 0.
fn update_mask() {
    registry::set_filter_mask(|| {
        if UNALIGNED_LIVE.load(SeqCst) == 0 {
            PAGE_MASK
        } else {
            0
        }
    });
}

/// The next [`Entry::origin`]; 0 is never handed out.
static NEXT_ORIGIN: AtomicU64 = AtomicU64::new(1);

/// A fresh [`Entry::origin`], for a sampled allocation that is not a
/// realloc of a sampled block: unique in the process (a counter of 64
/// bits does not wrap).
pub(crate) fn new_origin() -> u64 {
    NEXT_ORIGIN.fetch_add(1, Relaxed)
}

/// A live sampled block, as a snapshot lists it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LiveBlock {
    pub origin: u64,
    /// Its site's id ([`SiteId::raw`]).
    pub site: u32,
    /// The bytes it stands for: its size times its weight.
    pub bytes: f64,
}

// `heapprof::snapshot`'s docs give its size.
const _: () = assert!(std::mem::size_of::<LiveBlock>() == 24);

/// Every live sampled block, in no order, each stripe locked in turn;
/// `None` if the inner allocator has no memory for the list. Blocks
/// sampled or freed meanwhile on other threads may be in it or not; a
/// block sampled before the call began is in it unless freed. The list
/// grows only between stripes, with no lock held.
pub(crate) fn live() -> Option<Vec<LiveBlock>> {
    let mut out: Vec<LiveBlock> = Vec::new();
    let slack = |n: usize| n + n / 8 + 64;
    out.try_reserve_exact(slack(live_blocks())).ok()?;
    for stripe in &STRIPE_MAPS {
        loop {
            let map = stripe.0.lock();
            let room = out.capacity() - out.len();
            if map.len() <= room {
                out.extend(map.values().map(|e| LiveBlock {
                    origin: e.origin,
                    site: e.site.raw(),
                    bytes: e.size as f64 * e.weight,
                }));
                break;
            }
            let more = slack(map.len());
            drop(map);
            out.try_reserve(more).ok()?;
        }
    }
    Some(out)
}

/// Live sampled blocks (each stripe locked in turn).
pub(crate) fn live_blocks() -> usize {
    STRIPE_MAPS.iter().map(|m| m.0.lock().len()).sum()
}

/// The bytes the set's maps hold. Takes no lock.
pub(crate) fn memory_bytes() -> usize {
    MAP_BYTES.load(SeqCst)
}

/// The set's locks, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    for m in &STRIPE_MAPS {
        f(&m.0);
    }
}

#[cfg(test)]
mod tests;
