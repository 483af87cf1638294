//! The site table: one entry per allocation site (stack and label set),
//! holding what was sampled there.
//!
//! Like Go's `mprof.go` buckets, each one counts allocations and frees
//! credited back to it, so `inuse = alloc - free` per site. Unlike Go's,
//! sites are keyed by stack and labels (`labels/`), not stack + size, so
//! a site holds estimates already weighted per sample (see
//! `sample/mod.rs`, Weights). The same stack under two label sets is two
//! sites.
//!
//! The table is split into stripes, each behind its own lock, picked by the
//! stack hash, so threads that sample at the same time rarely meet. Memory
//! is bounded: at most `max_sites` sites and `max_sites` ×
//! [`FRAMES_PER_SITE_BUDGET`] stored frame
//! addresses in all, held in vectors that grow by eighths (from a first
//! block past the thread caches: `support/growth.rs`). At
//! `config::DEFAULT_MAX_SITES` (16 Ki) sites the worst case is
//!
//! ```text
//! sites     88 B × 16 Ki × 9/8        1.6 MiB
//! frames     8 B × 16 Ki × 32 × 9/8   4.5 MiB
//! index     17 B × 16 Ki × 16/7       0.6 MiB  (hash maps: power-of-two
//!                                              bucket counts, 7/8 full)
//! total                               6.7 MiB
//! ```
//!
//! The frames of retired sites stay in their stripe's vector until a
//! retirement that needs room compacts it, so the vector never grows past
//! what the stored frames need and an eighth more.
//!
//! A full table makes room for a new site by retiring a site of its
//! stripe that has nothing live, the least recently sampled of the
//! [`RETIRE_LOOKS`] its search looks at (`Stripe::reuse`): a
//! long-running program keeps naming the sites it starts using late, a
//! leak among them. What a retired site counted moves to the overflow
//! site of its label set ([`SiteId::overflow`]), so totals stay whole;
//! [`delta`] and [`alloc_delta`] take such moves into account. A sample
//! whose site still does not fit (every site of its stripe holds live
//! blocks, or none of the [`RETIRE_WINDOWS`] windows its search looks at
//! has one that does not, or a snapshot holds retirements while it lists
//! the live blocks: [`RetirementsHeld`]) goes to that overflow site too, which the profile shows as a
//! site of its own with those labels, so nothing is dropped silently and
//! label views (`pprof -tagfocus`) still add up. So
//! does one whose new site the inner allocator has no memory for: the
//! table grows with `try_reserve`, because a failure there would otherwise
//! abort a program that was handling its own allocation failures. A
//! sample taken with too little stack left to unwind goes to a second site
//! kept apart ([`SiteId::NOT_UNWOUND`]), whose recording allocates nothing.
//!
//! All locking happens with the reentrancy guard held (`support/reentry.rs`), so the
//! `Vec`/`HashMap` growth inside a stripe goes to the inner allocator.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use crate::support::growth::{self, hash_map_bytes};
use crate::support::lock::{Lockable, Mutex, rank};

use super::stack::NOT_UNWOUND;
use crate::config;
use crate::labels::LabelSetId;
use crate::labels::table::ALL_SETS;

const STRIPES: usize = 64;
/// Average frames per stored stack the frame budget allows for.
const FRAMES_PER_SITE_BUDGET: usize = 32;

/// Identifies a site: its stripe in the high bits, its index in the stripe
/// in the low [`SiteId::INDEX_BITS`]. The overflow sites, one per label
/// set, and `NOT_UNWOUND` are kept outside the stripes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct SiteId(u32);

// `HEAPPROF_MAX_SITES` stops where the index bits do.
const _: () = assert!(crate::config::MAX_SITES as u64 == (1u64 << SiteId::INDEX_BITS) - 1);
const _: () = assert!(std::mem::size_of::<StoredSite>() == 88);

impl SiteId {
    /// Samples taken with too little stack left to unwind; its stack is
    /// the one frame `stack::NOT_UNWOUND`.
    pub(crate) const NOT_UNWOUND: SiteId = SiteId(u32::MAX - 1);
    /// Bits of a site's index within its stripe.
    pub(crate) const INDEX_BITS: u32 = 24;
    const INDEX_MASK: u32 = (1 << Self::INDEX_BITS) - 1;
    /// The first overflow site's id: stripe ids stop below it.
    const OVERFLOW_FIRST: u32 = (STRIPES as u32) << Self::INDEX_BITS;

    /// The overflow site of label set `labels`: samples with those labels
    /// whose own site did not fit.
    pub(crate) fn overflow(labels: LabelSetId) -> SiteId {
        SiteId(Self::OVERFLOW_FIRST + overflow_slot(labels) as u32)
    }

    /// The label set of an overflow site, `None` for any other site.
    fn overflow_labels(self) -> Option<LabelSetId> {
        let slot = self.0.checked_sub(Self::OVERFLOW_FIRST)?;
        ((slot as usize) < ALL_SETS).then_some(LabelSetId(slot))
    }

    /// The id as a number, for tallies kept outside the table.
    pub(crate) fn raw(self) -> u32 {
        self.0
    }
}

pub(crate) use crate::sample::SiteCounts;

struct StoredSite {
    frames_start: u32,
    frames_len: u16,
    /// The site's label set (`labels::table` ids fit 16 bits).
    labels: u16,
    counts: SiteCounts,
    /// The site's key in the stripe's index ([`site_key`]).
    key: u64,
    /// The stripe's clock when the site was stored: tells it from a site
    /// stored later in the same slot ([`SiteCopy::serial`]).
    serial: u64,
    /// The stripe's clock at the site's last sampled allocation.
    last_alloc: u64,
}

impl StoredSite {
    /// Whether no sampled block of the site is live: every one it
    /// recorded was credited back, so no block names it any longer.
    fn is_dead(&self) -> bool {
        self.counts.sampled_frees >= self.counts.sampled_allocs
    }

    /// A slot a retirement emptied without filling again: no site.
    fn is_empty(&self) -> bool {
        self.counts.sampled_allocs == 0
    }
}

const _: () = assert!(crate::record::stack::MAX_FRAMES <= u16::MAX as usize);
const _: () = assert!(ALL_SETS <= u16::MAX as usize + 1);
// The overflow sites' ids lie between the stripes' and `NOT_UNWOUND`.
const _: () =
    assert!(SiteId::OVERFLOW_FIRST as u64 + ALL_SETS as u64 <= SiteId::NOT_UNWOUND.0 as u64);

#[derive(Default)]
struct Stripe {
    by_hash: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
    sites: Vec<StoredSite>,
    frames: Vec<usize>,
    /// Ticks once per sample recorded here: stamps each site's creation
    /// and last use.
    clock: u64,
    /// Addresses in `frames` that no site uses any longer, left by
    /// retired sites ([`Stripe::compact`] takes them out).
    unused_frames: usize,
    /// Where the next search for a site to retire starts
    /// ([`Stripe::least_recent_dead`]).
    hand: usize,
    /// Frees that left a site here with nothing live, counted.
    deaths: u64,
    /// `deaths` when a search last went round every site and found none
    /// to retire (`u64::MAX` if none has): until a site dies, there is
    /// none still.
    none_dead_at: u64,
    /// `deaths` when a search for more frames to free (one with `but`)
    /// last went round every site and found no site with nothing live
    /// that still holds frames (`u64::MAX` if none has).
    none_holding_at: u64,
    /// Searches for a site to retire that found none since the last one
    /// that did: the sites they passed over in all, and `deaths` and the
    /// site count when they did. Their windows follow one another, so
    /// once they add up to every site, the stripe has none to retire.
    passed: (usize, u64, usize),
}

/// Sites a search for one to retire looks at before taking the least
/// recently sampled of them ([`Stripe::least_recent_dead`]). The hand
/// moves round the stripe a window at a time, as a clock's does, so a
/// site with nothing live is looked at once a sweep, and the one that
/// goes is the oldest of its window rather than of the stripe.
const RETIRE_LOOKS: usize = 64;

/// Windows of [`RETIRE_LOOKS`] sites a new site's search for room looks
/// at before it gives up and the sample goes to the overflow site: 512
/// sites at most, whatever `HEAPPROF_MAX_SITES` is, even where sites with
/// nothing live are few and far apart. The next search goes on from
/// where this one stopped, so the whole stripe is still looked at.
const RETIRE_WINDOWS: usize = 8;
const _: () = assert!(RETIRE_LOOKS * RETIRE_WINDOWS == 512);

/// The keys are already good hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Table {
    stripes: [Mutex<{ rank::SITES }, Stripe>; STRIPES],
    /// The counts of [`SiteId::NOT_UNWOUND`], kept apart from the stripes
    /// so that recording there never grows anything.
    not_unwound: Mutex<{ rank::SITES }, SiteCounts>,
    sites: AtomicUsize,
    frames: AtomicUsize,
    /// The bytes the stripes hold, kept as they change ([`memory_bytes`]).
    bytes: AtomicUsize,
    /// Sites retired so far ([`retirements`]).
    retired: AtomicU64,
    /// Holders of [`RetirementsHeld`]: while above zero, no site retires.
    retirements_held: AtomicUsize,
}

const NO_COUNTS: SiteCounts = SiteCounts {
    sampled_allocs: 0,
    sampled_alloc_bytes: 0,
    sampled_frees: 0,
    alloc_objects_est: 0.0,
    alloc_bytes_est: 0.0,
    free_objects_est: 0.0,
    free_bytes_est: 0.0,
};

/// The overflow sites' counts, by label set id ([`overflow_slot`]): all
/// zeros until used, so they take no room in the executable and no
/// memory until a set's first overflow touches its page.
static OVERFLOW: Mutex<{ rank::SITES }, [SiteCounts; ALL_SETS]> = Mutex::new([NO_COUNTS; ALL_SETS]);

/// The slot of `labels` in [`OVERFLOW`]: its id, which the label table
/// keeps below [`ALL_SETS`] (any other counts as no labels).
fn overflow_slot(labels: LabelSetId) -> usize {
    let slot = labels.0 as usize;
    if slot < ALL_SETS {
        slot
    } else {
        LabelSetId::NONE.0 as usize
    }
}

static TABLE: Table = Table {
    stripes: [const { Mutex::new(Stripe::empty()) }; STRIPES],
    not_unwound: Mutex::new(NO_COUNTS),
    sites: AtomicUsize::new(0),
    frames: AtomicUsize::new(0),
    bytes: AtomicUsize::new(0),
    retired: AtomicU64::new(0),
    retirements_held: AtomicUsize::new(0),
};

/// A sample's site as [`record_alloc`] recorded it: its id, and its
/// serial, which tells it from a later site in the same slot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recorded {
    pub id: SiteId,
    pub serial: u64,
}

/// Records a sampled allocation of `size` bytes with `weight` at the site
/// of the stack `frames` (leaf first, already hashed to `hash`) and the
/// label set `labels`.
pub(crate) fn record_alloc(
    frames: &[usize],
    hash: u64,
    labels: LabelSetId,
    size: usize,
    weight: f64,
) -> Recorded {
    let key = site_key(hash, labels);
    // Bits 32..38: the stripe's map uses the low bits of the same hash to
    // place a key and the top 7 as its tag, so picking stripes by either
    // would leave each stripe's keys alike in the bits its map relies on.
    let stripe_index = (key >> 32) as usize % STRIPES;
    let mut stripe = TABLE.stripes[stripe_index].lock();
    stripe.clock += 1;
    let now = stripe.clock;
    let index = match stripe.by_hash.get(&key) {
        Some(&index) => index,
        None => {
            let held_before = stripe.bytes();
            let stored = stripe.store(frames, key, labels, now);
            let held_after = stripe.bytes();
            if held_after >= held_before {
                TABLE.bytes.fetch_add(held_after - held_before, Relaxed);
            } else {
                TABLE.bytes.fetch_sub(held_before - held_after, Relaxed);
            }
            let Some(index) = stored else {
                drop(stripe);
                OVERFLOWED.store(true, Relaxed);
                OVERFLOW.lock()[overflow_slot(labels)].add_alloc(size, weight);
                return Recorded {
                    id: SiteId::overflow(labels),
                    serial: 0,
                };
            };
            index
        }
    };
    let site = &mut stripe.sites[index as usize];
    site.counts.add_alloc(size, weight);
    site.last_alloc = now;
    Recorded {
        id: SiteId((stripe_index as u32) << SiteId::INDEX_BITS | index),
        serial: site.serial,
    }
}

impl Stripe {
    /// Stores a new site for `frames` under `key`, with no counts yet: in
    /// a new slot while the table has room, else in the slot of a site
    /// retired for it. `None` if neither is possible.
    fn store(&mut self, frames: &[usize], key: u64, labels: LabelSetId, now: u64) -> Option<u32> {
        if !reserve(frames.len()) {
            return self.reuse(frames, key, labels, now);
        }
        let room = self.room_for_frames(frames.len())
            && growth::reserve_vec(&mut self.sites, 1)
            && growth::reserve_map(&mut self.by_hash, 1);
        if !room {
            unreserve(frames.len());
            return None;
        }
        let index = self.sites.len() as u32;
        self.sites.push(StoredSite {
            frames_start: 0,
            frames_len: 0,
            labels: 0,
            counts: SiteCounts::default(),
            key: 0,
            serial: 0,
            last_alloc: 0,
        });
        self.fill(index, frames, key, labels, now);
        Some(index)
    }

    /// Retires a site of this stripe with nothing live (the least recently
    /// sampled of those [`Stripe::least_recent_dead`] looks at) and stores
    /// the new site in its slot; when that frees too few frames for the
    /// new stack, more such sites too, their slots left empty for later
    /// sites. The search for the first, and the searches for the others
    /// together, look at [`RETIRE_WINDOWS`] windows each at most. `None`,
    /// with nothing retired, if the first finds no site with nothing
    /// live; `None` after retiring if the new frames still find no room.
    fn reuse(&mut self, frames: &[usize], key: u64, labels: LabelSetId, now: u64) -> Option<u32> {
        #[cfg(test)]
        if tests::REUSE_OFF.load(Relaxed) {
            return None;
        }
        if TABLE.retirements_held.load(SeqCst) != 0 {
            return None;
        }
        let victim = self.least_recent_dead(None, &mut (RETIRE_LOOKS * RETIRE_WINDOWS))?;
        self.retire(victim);
        let mut looks = RETIRE_LOOKS * RETIRE_WINDOWS;
        while !reserve_frames(frames.len()) {
            let more = self.least_recent_dead(Some(victim), &mut looks)?;
            self.retire(more);
        }
        if !self.room_for_frames(frames.len()) || !growth::reserve_map(&mut self.by_hash, 1) {
            TABLE.frames.fetch_sub(frames.len(), Relaxed);
            return None;
        }
        self.fill(victim as u32, frames, key, labels, now);
        Some(victim as u32)
    }

    /// The slot of the least recently sampled site with nothing live (an
    /// empty slot first, when `but` is `None`), other than `but`, among
    /// the next [`RETIRE_LOOKS`] from the stripe's hand, or the next such
    /// window that has one, while `looks` (sites still to look at, counted
    /// down a window at a time) lasts; with `but` (a slot already
    /// emptied), only slots that still hold a site, whose frames a
    /// retirement frees. `None` when none qualifies in the windows looked
    /// at. Once a search with `but`, or the searches without it since one
    /// last found a site, have gone round the whole stripe finding none,
    /// searches of that kind return at once until a site dies.
    fn least_recent_dead(&mut self, but: Option<usize>, looks: &mut usize) -> Option<usize> {
        let n = self.sites.len();
        let known_none = match but {
            None => self.none_dead_at,
            Some(_) => self.none_holding_at,
        };
        if n == 0 || known_none == self.deaths {
            return None;
        }
        // Searches with `but` run only right after one without finds a
        // site, so those without pass over windows that follow one another.
        let mut looked = match (but, self.passed) {
            (None, (passed, deaths, sites)) if deaths == self.deaths && sites == n => passed,
            _ => 0,
        };
        while looked < n && *looks > 0 {
            let window = RETIRE_LOOKS.min(n - looked).min(*looks);
            let start = self.hand;
            self.hand = (start + window) % n;
            looked += window;
            *looks -= window;
            let found = (0..window)
                .map(|step| (start + step) % n)
                .filter(|&i| {
                    let s = &self.sites[i];
                    s.is_dead() && (but.is_none() || (Some(i) != but && !s.is_empty()))
                })
                .min_by_key(|&i| (!self.sites[i].is_empty(), self.sites[i].last_alloc));
            if found.is_some() {
                if but.is_none() {
                    self.passed = (0, self.deaths, n);
                }
                return found;
            }
        }
        if but.is_none() {
            self.passed = (looked, self.deaths, n);
        }
        if looked >= n {
            match but {
                None => self.none_dead_at = self.deaths,
                Some(_) => self.none_holding_at = self.deaths,
            }
        }
        None
    }

    /// Takes site `index` out: its key from the index, its counts to the
    /// overflow site of its label set (under that lock, taken inside this
    /// stripe's, the one order in which the two are ever nested), its
    /// frames to the unused ones. The slot stays, empty.
    fn retire(&mut self, index: usize) {
        let site = &mut self.sites[index];
        if site.is_empty() {
            return;
        }
        let len = site.frames_len as usize;
        let labels = LabelSetId(site.labels.into());
        let counts = std::mem::take(&mut site.counts);
        site.frames_len = 0;
        self.by_hash.remove(&site.key);
        self.unused_frames += len;
        TABLE.frames.fetch_sub(len, Relaxed);
        let mut overflow = OVERFLOW.lock();
        let slot = &mut overflow[overflow_slot(labels)];
        *slot = slot.plus(&counts);
        OVERFLOWED.store(true, Relaxed);
        TABLE.retired.fetch_add(1, SeqCst);
    }

    /// Writes a new site into slot `index`, its frames at the end of
    /// `frames` (room for them reserved), its key into the index (room
    /// reserved).
    fn fill(&mut self, index: u32, frames: &[usize], key: u64, labels: LabelSetId, now: u64) {
        let frames_start = self.frames.len() as u32;
        self.frames.extend_from_slice(frames);
        self.sites[index as usize] = StoredSite {
            frames_start,
            frames_len: frames.len() as u16,
            labels: labels.0 as u16,
            counts: SiteCounts::default(),
            key,
            serial: now,
            last_alloc: now,
        };
        self.by_hash.insert(key, index);
    }

    /// Makes room for `n` more frame addresses at the end of `frames`:
    /// there already, or by compacting when the unused addresses are
    /// enough, or by growing the vector. False if the inner allocator has
    /// no memory for it.
    fn room_for_frames(&mut self, n: usize) -> bool {
        self.frames.capacity() - self.frames.len() >= n
            || (self.unused_frames >= n && self.compact(n))
            || growth::reserve_vec(&mut self.frames, n)
    }

    /// Moves the frames of the sites in place into a vector of their own
    /// with room for `extra` more and an eighth to spare (so that the next
    /// retirements here find room without compacting again), leaving out
    /// the unused ones. False if the inner allocator has no memory for it.
    fn compact(&mut self, extra: usize) -> bool {
        let mut packed = Vec::new();
        let used = self.frames.len() - self.unused_frames;
        if !growth::reserve_vec(&mut packed, used + extra + used / 8) {
            return false;
        }
        for site in &mut self.sites {
            let start = site.frames_start as usize;
            let len = site.frames_len as usize;
            site.frames_start = packed.len() as u32;
            packed.extend_from_slice(&self.frames[start..start + len]);
        }
        self.frames = packed;
        self.unused_frames = 0;
        true
    }
}

/// The key of a site: its stack's hash, mixed with its label set's id
/// times 2^64 / φ (odd, so distinct ids give distinct products, whose
/// high bits, which pick the stripe and the map's tag, differ too); a
/// site with no labels keeps the stack's hash.
fn site_key(stack_hash: u64, labels: LabelSetId) -> u64 {
    stack_hash ^ u64::from(labels.0).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Claims room for one more site with `frames` addresses, or says the
/// table is full.
fn reserve(frames: usize) -> bool {
    let max_sites = config::get().max_sites;
    let claimed_site = TABLE
        .sites
        .fetch_update(Relaxed, Relaxed, |n| (n < max_sites).then_some(n + 1))
        .is_ok();
    if !claimed_site {
        return false;
    }
    let max_frames = max_frames();
    let claimed_frames = TABLE
        .frames
        .fetch_update(Relaxed, Relaxed, |n| {
            (n + frames <= max_frames).then_some(n + frames)
        })
        .is_ok();
    if !claimed_frames {
        TABLE.sites.fetch_sub(1, Relaxed);
    }
    claimed_frames
}

/// Gives back what [`reserve`] claimed, for a site that was not stored.
fn unreserve(frames: usize) {
    TABLE.sites.fetch_sub(1, Relaxed);
    TABLE.frames.fetch_sub(frames, Relaxed);
}

/// Claims room for `frames` more addresses only, for a site stored in a
/// retired one's slot.
fn reserve_frames(frames: usize) -> bool {
    let max_frames = max_frames();
    TABLE
        .frames
        .fetch_update(Relaxed, Relaxed, |n| {
            (n + frames <= max_frames).then_some(n + frames)
        })
        .is_ok()
}

/// Records a sampled allocation that was not unwound, at
/// [`SiteId::NOT_UNWOUND`]: takes one lock, allocates nothing.
pub(crate) fn record_not_unwound(size: usize, weight: f64) -> Recorded {
    TABLE.not_unwound.lock().add_alloc(size, weight);
    Recorded {
        id: SiteId::NOT_UNWOUND,
        serial: 0,
    }
}

/// Whether a sample ever went to an overflow site: profiles then say
/// that the table is full ([`overflowed`]).
static OVERFLOWED: AtomicBool = AtomicBool::new(false);

/// Whether the table has ever been full (or out of memory) for a new site.
pub(crate) fn overflowed() -> bool {
    OVERFLOWED.load(Relaxed)
}

/// The most frame addresses the table stores, all sites together.
pub(crate) fn max_frames() -> usize {
    config::get()
        .max_sites
        .saturating_mul(FRAMES_PER_SITE_BUDGET)
}

/// A copy of the site kept outside the stripes that `id` names (an
/// overflow site, `NOT_UNWOUND`), with `counts`; `None` for a stripe's.
fn apart_copy(id: SiteId, counts: SiteCounts) -> Option<SiteCopy> {
    if let Some(labels) = id.overflow_labels() {
        return Some(SiteCopy {
            frames: Vec::new(),
            counts,
            overflow: true,
            labels,
            serial: 0,
            id: id.raw(),
        });
    }
    (id == SiteId::NOT_UNWOUND).then(|| SiteCopy {
        frames: vec![NOT_UNWOUND],
        counts,
        overflow: false,
        labels: LabelSetId::NONE,
        serial: 0,
        id: id.raw(),
    })
}

/// Runs `f` on the counts of the site kept outside the stripes that `id`
/// names, under its lock; `None` for a stripe's site.
fn with_apart_counts<R>(id: SiteId, f: impl FnOnce(&mut SiteCounts) -> R) -> Option<R> {
    if let Some(labels) = id.overflow_labels() {
        return Some(f(&mut OVERFLOW.lock()[overflow_slot(labels)]));
    }
    (id == SiteId::NOT_UNWOUND).then(|| f(&mut TABLE.not_unwound.lock()))
}

/// Credits the free of a sampled block back to the site that allocated
/// it; returns the site's serial ([`Recorded::serial`]). The block kept
/// the site from retiring, so it is the site the block was recorded at.
pub(crate) fn record_free(id: SiteId, size: usize, weight: f64) -> u64 {
    if with_apart_counts(id, |c| c.add_free(size, weight)).is_some() {
        return 0;
    }
    let stripe_index = (id.0 >> SiteId::INDEX_BITS) as usize;
    let index = (id.0 & SiteId::INDEX_MASK) as usize;
    let mut stripe = TABLE.stripes[stripe_index].lock();
    let Some(site) = stripe.sites.get_mut(index) else {
        return 0;
    };
    let was_dead = site.is_dead();
    site.counts.add_free(size, weight);
    let serial = site.serial;
    if !was_dead && site.is_dead() {
        stripe.deaths = stripe.deaths.wrapping_add(1);
    }
    serial
}

/// A copy of one site, taken for writing a profile.
#[derive(Clone, Debug)]
pub(crate) struct SiteCopy {
    /// Return addresses, leaf first; empty for an overflow site.
    pub frames: Vec<usize>,
    pub counts: SiteCounts,
    pub overflow: bool,
    /// The site's labels.
    pub labels: LabelSetId,
    /// Tells the site from one stored later with the same stack and labels
    /// after it retired (0 for the sites kept apart).
    pub serial: u64,
    /// The site's id in the table ([`SiteId::raw`]), by which the live
    /// blocks listed with a snapshot name it (`blocks::live`).
    pub id: u32,
}

/// Copies every site out of the table, as it is at one moment
/// ([`try_packed`]), so that symbolization and encoding run with no lock held: the packed
/// copy, unpacked on this thread. Out of memory, it ends the program, as
/// any allocation outside the allocator would.
pub(crate) fn snapshot() -> Vec<SiteCopy> {
    packed().unpack()
}

/// Every site, packed into two vectors: the sites, and all their frames
/// end to end. Copies that are kept are kept this way (the peak's, taken
/// by one sampling thread and dropped by another, and a delta series'
/// mark, dropped by whichever thread serves the next scrape): two blocks
/// larger than the thread caches go back to their arena, where a
/// [`SiteCopy`] per site would put a small block per site into the
/// dropping thread's cache (`support/growth.rs`).
#[derive(Clone, Default)]
pub(crate) struct PackedSites {
    sites: Vec<PackedSite>,
    frames: Vec<usize>,
}

#[derive(Clone)]
struct PackedSite {
    /// Where its frames are in [`PackedSites::frames`].
    frames: std::ops::Range<usize>,
    counts: SiteCounts,
    overflow: bool,
    labels: LabelSetId,
    serial: u64,
    id: u32,
}

impl PackedSites {
    /// The live bytes the sites stand for, each site's rounded as a
    /// profile shows it: the total of the copy's `inuse_space`.
    pub(crate) fn inuse_bytes(&self) -> i64 {
        self.sites
            .iter()
            .map(|s| (s.counts.alloc_bytes_est - s.counts.free_bytes_est).round() as i64)
            .fold(0, i64::saturating_add)
    }

    /// The sites as copies, one each.
    pub(crate) fn unpack(&self) -> Vec<SiteCopy> {
        self.sites
            .iter()
            .map(|s| SiteCopy {
                frames: self.frames[s.frames.clone()].to_vec(),
                counts: s.counts,
                overflow: s.overflow,
                labels: s.labels,
                serial: s.serial,
                id: s.id,
            })
            .collect()
    }
}

/// Keeps every site in its slot until dropped: a new stack that finds the
/// table full goes to its overflow site meanwhile, rather than retire a
/// site. Held by a snapshot while it copies the sites and lists the live
/// blocks, so that a site id names the same stack in both (the snapshot
/// still checks [`retirements`]: a retirement that had begun when the hold
/// was taken may end during it).
pub(crate) struct RetirementsHeld(());

impl RetirementsHeld {
    pub(crate) fn take() -> RetirementsHeld {
        TABLE.retirements_held.fetch_add(1, SeqCst);
        RetirementsHeld(())
    }
}

impl Drop for RetirementsHeld {
    fn drop(&mut self) {
        // Saturating: a fork's child sets the count to zero
        // ([`after_fork_in_child`]) while a copy of this hold may live on.
        let _ = TABLE
            .retirements_held
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }
}

/// Whether a [`RetirementsHeld`] lives.
#[cfg(test)]
pub(crate) fn retirements_held() -> bool {
    TABLE.retirements_held.load(SeqCst) != 0
}

/// In a forked child: no snapshot holds retirements, though one may have
/// been taking its copy on another thread of the parent at the fork.
pub(crate) fn after_fork_in_child() {
    TABLE.retirements_held.store(0, SeqCst);
}

/// How many sites have retired since the process started: while it
/// stays the same, every id names the site it named (a retired site's
/// slot may take a new stack).
pub(crate) fn retirements() -> u64 {
    TABLE.retired.load(SeqCst)
}

/// Every site, packed. Out of memory, it ends the program, as
/// [`snapshot`] does.
pub(crate) fn packed() -> PackedSites {
    try_packed()
        .unwrap_or_else(|| std::alloc::handle_alloc_error(std::alloc::Layout::new::<PackedSite>()))
}

/// As [`packed`], or `None` if the inner allocator has no memory for it:
/// for the peak copy, taken inside a sampled allocation.
///
/// The counts are of one moment. Taken a stripe at a time, a thread that
/// moves memory from one site to another meanwhile (frees a block of
/// one, allocates one at another) could be seen before the move at one
/// and after it at the other, and a profile or peak would show two
/// functions holding more together than they ever did. So the copy is
/// made in two passes:
///
/// 1. each stripe's sites, stacks and counts, under that stripe's lock
///    alone (a stored site's stack never changes, and its slot's serial
///    tells it from a later site in the same slot);
/// 2. every stripe's lock, in index order, then the sites kept apart
///    (overflow, not unwound), held together while each copied site
///    takes its counts again: a site retired since (its counts are in
///    the overflow site by then) is dropped, one stored since is copied
///    whole.
///
/// Samples and sampled frees on other threads wait for the second pass
/// only: a read of each stored site's counts.
pub(crate) fn try_packed() -> Option<PackedSites> {
    let mut packed = PackedSites {
        sites: Vec::new(),
        frames: Vec::new(),
    };
    let room = growth::reserve_vec(&mut packed.sites, TABLE.sites.load(Relaxed) + 2)
        && growth::reserve_vec(&mut packed.frames, TABLE.frames.load(Relaxed) + 1);
    if !room {
        return None;
    }
    // Where each stripe's sites start in `packed.sites`, and where the
    // last one's end.
    let mut firsts = [0; STRIPES + 1];
    for (stripe_index, stripe) in TABLE.stripes.iter().enumerate() {
        firsts[stripe_index] = packed.sites.len();
        let stripe = stripe.lock();
        for (index, site) in stripe.sites.iter().enumerate() {
            packed.push_stored(stripe_index, index, site, &stripe.frames)?;
        }
    }
    firsts[STRIPES] = packed.sites.len();
    let stripes: [_; STRIPES] = std::array::from_fn(|i| TABLE.stripes[i].lock());
    for (stripe_index, stripe) in stripes.iter().enumerate() {
        // Both in slot order: the first pass's copies of this stripe, and
        // its slots now.
        let mut copy = firsts[stripe_index];
        for (index, site) in stripe.sites.iter().enumerate() {
            if copy < firsts[stripe_index + 1] && packed.sites[copy].index() == index {
                let copied = &mut packed.sites[copy];
                copy += 1;
                if !site.is_empty() && site.serial == copied.serial {
                    copied.counts = site.counts;
                    continue;
                }
                // Retired since: no counts, taken out below.
                copied.counts = NO_COUNTS;
            }
            packed.push_stored(stripe_index, index, site, &stripe.frames)?;
        }
        for gone in &mut packed.sites[copy..firsts[stripe_index + 1]] {
            gone.counts = NO_COUNTS;
        }
    }
    // A site retires into the overflow site under its stripe's lock, so
    // none is between the two while the stripes are held.
    if overflowed() {
        let overflow = OVERFLOW.lock();
        for (slot, counts) in overflow.iter().enumerate() {
            if counts.sampled_allocs > 0 {
                let labels = LabelSetId(slot as u32);
                packed.push(&[], *counts, true, labels, (0, SiteId::overflow(labels)))?;
            }
        }
    }
    let not_unwound = *TABLE.not_unwound.lock();
    if not_unwound.sampled_allocs > 0 {
        let kept_apart = (0, SiteId::NOT_UNWOUND);
        packed.push(
            &[NOT_UNWOUND],
            not_unwound,
            false,
            LabelSetId::NONE,
            kept_apart,
        )?;
    }
    drop(stripes);
    // Every site has samples; those without are the retired ones.
    packed.sites.retain(|s| s.counts.sampled_allocs > 0);
    Some(packed)
}

impl PackedSite {
    /// The site's slot in its stripe.
    fn index(&self) -> usize {
        (self.id & SiteId::INDEX_MASK) as usize
    }
}

impl PackedSites {
    /// Appends the site stored in slot `index` of stripe `stripe_index`
    /// (whose frames are `frames`), if the slot holds one; `None` if the
    /// inner allocator has no memory for it.
    fn push_stored(
        &mut self,
        stripe_index: usize,
        index: usize,
        site: &StoredSite,
        frames: &[usize],
    ) -> Option<()> {
        if site.is_empty() {
            return Some(());
        }
        let start = site.frames_start as usize;
        let stored = &frames[start..start + site.frames_len as usize];
        let labels = LabelSetId(site.labels.into());
        let id = SiteId((stripe_index as u32) << SiteId::INDEX_BITS | index as u32);
        self.push(stored, site.counts, false, labels, (site.serial, id))
    }

    /// Appends a site, with its serial and id; `None` if the inner
    /// allocator has no memory for it.
    fn push(
        &mut self,
        frames: &[usize],
        counts: SiteCounts,
        overflow: bool,
        labels: LabelSetId,
        (serial, id): (u64, SiteId),
    ) -> Option<()> {
        // Sites stored since the sizes were read need more room.
        let room = growth::reserve_vec(&mut self.frames, frames.len())
            && growth::reserve_vec(&mut self.sites, 1);
        if !room {
            return None;
        }
        let start = self.frames.len();
        self.frames.extend_from_slice(frames);
        self.sites.push(PackedSite {
            frames: start..self.frames.len(),
            counts,
            overflow,
            labels,
            serial,
            id: id.raw(),
        });
        Some(())
    }
}

/// The sites `ids` name (each an id and the serial it had), each with
/// its stack and `counts(id, serial)` in place of the table's counts (a
/// tally kept elsewhere, such as one thread's in a measure's window). A
/// site retired since comes back as an overflow site with no labels: its
/// stack is gone. Ids the table does not hold are left out. Takes each
/// stripe's lock in turn, while copying that site's frames.
pub(crate) fn copies_of(
    ids: &[(u32, u64)],
    counts: impl Fn(u32, u64) -> SiteCounts,
) -> Vec<SiteCopy> {
    let mut out = Vec::with_capacity(ids.len());
    for &(id, serial) in ids {
        if let Some(copy) = apart_copy(SiteId(id), counts(id, serial)) {
            out.push(copy);
            continue;
        }
        let stripe_index = (id >> SiteId::INDEX_BITS) as usize;
        let index = (id & SiteId::INDEX_MASK) as usize;
        let Some(stripe) = TABLE.stripes.get(stripe_index) else {
            continue;
        };
        let (frames, labels, overflow) = {
            let stripe = stripe.lock();
            let Some(site) = stripe.sites.get(index) else {
                continue;
            };
            if site.serial != serial || site.is_empty() {
                (Vec::new(), LabelSetId::NONE, true)
            } else {
                let start = site.frames_start as usize;
                let frames = stripe.frames[start..start + site.frames_len as usize].to_vec();
                (frames, LabelSetId(site.labels.into()), false)
            }
        };
        out.push(SiteCopy {
            frames,
            counts: counts(id, serial),
            overflow,
            labels,
            serial,
            id,
        });
    }
    out
}

/// Sites in the table, and those of them with live sampled memory, counted
/// under each stripe's lock without copying anything (for the index page).
#[cfg(feature = "http")]
pub(crate) fn site_counts() -> (usize, usize) {
    let mut counts = (0, 0);
    let mut count = |c: &SiteCounts| {
        counts.0 += 1;
        counts.1 += usize::from(c.alloc_objects_est - c.free_objects_est >= 0.5);
    };
    for stripe in &TABLE.stripes {
        for b in stripe.lock().sites.iter().filter(|s| !s.is_empty()) {
            count(&b.counts);
        }
    }
    if overflowed() {
        OVERFLOW
            .lock()
            .iter()
            .filter(|c| c.sampled_allocs > 0)
            .for_each(&mut count);
    }
    let not_unwound = *TABLE.not_unwound.lock();
    if not_unwound.sampled_allocs > 0 {
        count(&not_unwound);
    }
    counts
}

/// What identifies a site across copies of the table: its stack, whether
/// it is the overflow site, its labels, and its serial.
type SiteKey<'a> = (&'a [usize], bool, LabelSetId, u64);

impl SiteCopy {
    fn key(&self) -> SiteKey<'_> {
        (
            self.frames.as_slice(),
            self.overflow,
            self.labels,
            self.serial,
        )
    }
}

/// What the sites of `earlier` that `later` lacks had counted, by label
/// set: sites leave the table only by retiring, which moves their counts
/// to the overflow site of their label set, so a delta of that overflow
/// site takes these out as well as its own earlier counts.
fn retired_between(
    later: &HashMap<SiteKey<'_>, &SiteCounts>,
    earlier: &[SiteCopy],
) -> HashMap<LabelSetId, SiteCounts> {
    let mut moved: HashMap<LabelSetId, SiteCounts> = HashMap::new();
    for site in earlier.iter().filter(|s| !s.overflow) {
        if !later.contains_key(&site.key()) {
            let sum = moved.entry(site.labels).or_default();
            *sum = sum.plus(&site.counts);
        }
    }
    moved
}

/// The counts of `site` (of a later copy) in an earlier one: its own
/// there, and, for an overflow site, what moved into it since
/// ([`retired_between`]).
fn counts_before(
    site: &SiteCopy,
    before: &HashMap<SiteKey<'_>, &SiteCounts>,
    moved: &HashMap<LabelSetId, SiteCounts>,
) -> SiteCounts {
    let own = before
        .get(&site.key())
        .map_or_else(SiteCounts::default, |c| **c);
    match moved.get(&site.labels) {
        Some(m) if site.overflow => own.plus(m),
        _ => own,
    }
}

/// The counts of each site of a copy, by [`SiteKey`].
fn counts_by_site(copy: &[SiteCopy]) -> HashMap<SiteKey<'_>, &SiteCounts> {
    copy.iter().map(|s| (s.key(), &s.counts)).collect()
}

/// What happened between two copies of the table: each site of `later`
/// with `earlier`'s counts subtracted (sites new since `earlier` are kept
/// whole), sites matched by stack, labels and serial. Counts only grow, so alloc
/// values are what was allocated in between and inuse values are the
/// change in live memory.
pub(crate) fn delta(later: &[SiteCopy], earlier: &[SiteCopy]) -> Vec<SiteCopy> {
    let before = counts_by_site(earlier);
    let moved = retired_between(&counts_by_site(later), earlier);
    later
        .iter()
        .map(|s| {
            let mut site = s.clone();
            site.counts = s.counts.minus(&counts_before(s, &before, &moved));
            site
        })
        .collect()
}

/// godeltaprof's `delta_heap` between two copies of the table (sites
/// matched by stack, labels and serial): each site of `later` with its alloc
/// values as what was allocated since `earlier`
/// and its inuse values as they are in `later` (not their change). The
/// sampled counts stay `later`'s, so that the live sampled blocks are
/// counted as they are. A site with neither an allocation in between nor
/// live memory in `later` is left out: it has nothing to show.
///
/// A consumer that adds these profiles up over time (Pyroscope sums alloc
/// values across profiles and averages inuse values) gets every
/// allocation once and the live heap as it was at each profile.
pub(crate) fn alloc_delta(later: &[SiteCopy], earlier: &[SiteCopy]) -> Vec<SiteCopy> {
    let before = counts_by_site(earlier);
    let moved = retired_between(&counts_by_site(later), earlier);
    later
        .iter()
        .filter_map(|s| {
            let b = &counts_before(s, &before, &moved);
            let c = &s.counts;
            let allocated_since = c.sampled_allocs > b.sampled_allocs;
            let live = c.sampled_allocs > c.sampled_frees;
            if !allocated_since && !live {
                return None;
            }
            // inuse = alloc - free: with alloc' = later - earlier, the
            // inuse of `later` needs free' = alloc' - inuse(later).
            let alloc_objects = c.alloc_objects_est - b.alloc_objects_est;
            let alloc_bytes = c.alloc_bytes_est - b.alloc_bytes_est;
            let mut site = s.clone();
            site.counts = SiteCounts {
                alloc_objects_est: alloc_objects,
                alloc_bytes_est: alloc_bytes,
                free_objects_est: alloc_objects - (c.alloc_objects_est - c.free_objects_est),
                free_bytes_est: alloc_bytes - (c.alloc_bytes_est - c.free_bytes_est),
                ..*c
            };
            Some(site)
        })
        .collect()
}

/// Bytes the table holds now (sites, frames, hash index), for reporting
/// the profiler's own memory. Takes no lock.
pub(crate) fn memory_bytes() -> usize {
    TABLE.bytes.load(Relaxed)
}

impl Stripe {
    /// A stripe with no sites.
    const fn empty() -> Stripe {
        Stripe {
            by_hash: HashMap::with_hasher(BuildHasherDefault::new()),
            sites: Vec::new(),
            frames: Vec::new(),
            clock: 0,
            unused_frames: 0,
            hand: 0,
            deaths: 0,
            none_dead_at: u64::MAX,
            none_holding_at: u64::MAX,
            passed: (0, 0, 0),
        }
    }

    /// The bytes this stripe's vectors and index hold (they never shrink).
    fn bytes(&self) -> usize {
        self.sites.capacity() * std::mem::size_of::<StoredSite>()
            + self.frames.capacity() * std::mem::size_of::<usize>()
            + hash_map_bytes(&self.by_hash)
    }
}

/// The table's locks, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    for stripe in &TABLE.stripes {
        f(stripe);
    }
    f(&OVERFLOW);
    f(&TABLE.not_unwound);
}

/// The counts of site `id` as they stand, for the recorder's tests.
#[cfg(test)]
pub(crate) fn counts_of(id: SiteId) -> Option<SiteCounts> {
    if let Some(counts) = with_apart_counts(id, |c| *c) {
        return Some(counts);
    }
    let stripe = TABLE.stripes[(id.0 >> 24) as usize].lock();
    stripe
        .sites
        .get((id.0 & 0x00FF_FFFF) as usize)
        .map(|s| s.counts)
}

#[cfg(test)]
mod tests;
