//! The peak-heap profile: what was live when the heap was largest.
//!
//! Go's heap profile cannot tell you this: by the time you look, the peak
//! is gone. tcmalloc keeps a copy of the sampled heap whenever it grows
//! past its previous peak by a set fraction; so does heapprof.
//!
//! The sampled estimate of live bytes is one shared counter, changed only
//! on sampled allocations and sampled frees (never on the fast path). When
//! it passes the previous peak by `HEAPPROF_PEAK_GROWTH` (10 % by default), the
//! thread that noticed copies the site table (as a profile write does,
//! all of it at one moment) there and then: a copy taken later, elsewhere,
//! would no longer be the peak. A copy costs about as much as the table
//! is large (a millisecond or so for thousands of sites), but copies
//! happen at most log(max/`MIN_PEAK`)/log(1 + growth) times over a run:
//! about 97 at the default growth for a heap that grows from 1 MiB to
//! 10 GiB, so on average they add a small
//! constant to each sampled allocation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use crate::support::lock::{Lockable, Mutex, rank};

use crate::record::sites::{self, PackedSites};
use crate::sample;

/// What to say when there is no peak copy yet: why, and whether one can
/// come (a peak is recorded from samples, which a rate of 0 stops).
pub(crate) fn no_peak_yet() -> &'static str {
    if sample::rate() == 0 {
        "heapprof: no peak recorded: sampling is off (sample rate 0), and a peak is recorded \
         from samples"
    } else {
        "heapprof: no peak recorded yet (the sampled live heap has not reached 1 MiB)"
    }
}
// The messages here and in `dump::at_exit` state the minimum.
const _: () = assert!(MIN_PEAK == 1 << 20);

/// Peaks below this are not worth a copy.
pub(crate) const MIN_PEAK: i64 = 1 << 20;

static LIVE_ESTIMATE: AtomicI64 = AtomicI64::new(0);
/// The estimate above which the next copy is taken.
static NEXT_PEAK: AtomicI64 = AtomicI64::new(MIN_PEAK);

/// A copy of the site table taken at a peak.
#[derive(Clone)]
pub(crate) struct Peak {
    pub sites: PackedSites,
    /// The copy's own live bytes ([`PackedSites::inuse_bytes`]): what its
    /// profile adds up to.
    pub live_bytes: i64,
    pub when: SystemTime,
    /// The rate and whether values were estimates when the copy was
    /// taken: what its profile says, whatever the rate is by then.
    pub numbers: sample::Numbers,
}

static PEAK: Mutex<{ rank::PEAK }, Option<Peak>> = Mutex::new(None);

/// How many copies have been kept: a reader that saw a number sees a new
/// peak when it changes.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The number of peak copies kept so far (0: none yet).
pub(crate) fn generation() -> u64 {
    GENERATION.load(Relaxed)
}

/// The sampled estimate of live bytes now.
pub(crate) fn live_estimate() -> i64 {
    LIVE_ESTIMATE.load(Relaxed)
}

/// A sampled allocation standing for `bytes` (size × weight). Called on
/// the slow path, with the reentrancy guard held and no lock. Copies a new
/// peak only if `may_copy` (the copy allocates); otherwise the next
/// sample that may copies it.
pub(crate) fn on_alloc(bytes: f64, may_copy: bool) {
    let live = add_to_live(clamped(bytes));
    let next = NEXT_PEAK.load(Relaxed);
    // One thread wins the right to copy this peak.
    let growth = crate::config::get().peak_growth.fraction();
    if may_copy
        && live > next
        && NEXT_PEAK
            .compare_exchange(
                next,
                (live as f64 * (1.0 + growth)) as i64,
                Relaxed,
                Relaxed,
            )
            .is_ok()
    {
        // No memory for the copy: this peak goes unrecorded (the next is
        // taken `HEAPPROF_PEAK_GROWTH` higher) rather than aborting the
        // allocation it is in.
        let Some(sites) = sites::try_packed() else {
            return;
        };
        let copy = Peak {
            live_bytes: sites.inuse_bytes(),
            sites,
            when: SystemTime::now(),
            numbers: sample::Numbers::now_live(),
        };
        // Two threads may copy two peaks at once; the larger one stays,
        // whichever finishes last. The old copy is dropped after the lock
        // is released.
        let mut kept = PEAK.lock();
        let old = if kept.as_ref().is_none_or(|p| p.live_bytes < copy.live_bytes) {
            GENERATION.fetch_add(1, Relaxed);
            kept.replace(copy)
        } else {
            Some(copy)
        };
        drop(kept);
        drop(old);
    }
}

/// A sampled block standing for `bytes` was freed.
pub(crate) fn on_free(bytes: f64) {
    add_to_live(-clamped(bytes));
}

/// The most one sample adds to [`LIVE_ESTIMATE`]: 256 TiB, a whole 48-bit
/// address space (twice what a process gets with 4-level page tables), so
/// no real heap is cut short. A sample taken at a rate near
/// `config::MAX_RATE` stands for nearly `i64::MAX` bytes; clamped, the
/// live estimate would need 2^15 of them live at once to wrap (and read as
/// a negative heap, so that no peak is taken again).
const MOST_PER_SAMPLE: i64 = 1 << 48;

/// What a sample standing for `bytes` adds to [`LIVE_ESTIMATE`], the same
/// at its allocation and its free, so that the sum comes back exactly.
fn clamped(bytes: f64) -> i64 {
    (bytes as i64).clamp(0, MOST_PER_SAMPLE)
}

/// Adds `bytes` to [`LIVE_ESTIMATE`] and returns the sum.
fn add_to_live(bytes: i64) -> i64 {
    LIVE_ESTIMATE.fetch_add(bytes, Relaxed).wrapping_add(bytes)
}

/// Whether a peak copy was taken.
#[cfg(feature = "http")]
pub(crate) fn recorded() -> bool {
    PEAK.lock().is_some()
}

/// A copy of the peak, if one was taken (cloned under the lock, so that
/// the caller builds its profile with no lock held).
pub(crate) fn copy() -> Option<Peak> {
    PEAK.lock().clone()
}

/// The copy's lock, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    f(&PEAK);
}

#[cfg(test)]
mod tests {
    use super::{LIVE_ESTIMATE, MOST_PER_SAMPLE, live_estimate, on_alloc, on_free};
    use std::sync::atomic::Ordering::Relaxed;

    /// Samples standing for nearly `i64::MAX` bytes each do not wrap the
    /// live estimate to a negative heap, and their frees bring it back to
    /// exactly where it was. (The unit tests do not install heapprof:
    /// nothing else moves it.)
    #[test]
    fn huge_samples_neither_wrap_nor_skew_the_live_estimate() {
        let before = LIVE_ESTIMATE.swap(0, Relaxed);
        let huge = i64::MAX as f64;
        on_alloc(1000.0, false);
        on_alloc(huge, false);
        on_alloc(huge, false);
        let up = live_estimate();
        on_free(huge);
        on_free(huge);
        let down = live_estimate();
        LIVE_ESTIMATE.store(before, Relaxed);
        assert_eq!((up, down), (1000 + 2 * MOST_PER_SAMPLE, 1000));
    }
}
