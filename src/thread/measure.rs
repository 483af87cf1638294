//! A thread's state while a `heapprof::measure` is active on it: the
//! sampling countdown held aside, the live-bytes high-water mark, and the
//! samples taken in the window.
//!
//! While a measure is active the fast path's countdown is held at zero, so
//! that every allocation of the thread reaches the slow path, which raises
//! the high-water mark; the sampler's real countdown waits here and the
//! slow path charges it as the fast path would have, so sampling goes on
//! as without the measure (but for the bytes the window's own bookkeeping
//! allocates, `measure::TALLY_CAPACITY`). Other threads never look at this state,
//! and the fast path has no instruction for it.

use std::cell::Cell;
use std::mem::ManuallyDrop;

use crate::sample::SiteCounts;

/// One site's share of the samples a thread took in a measure's window:
/// its sampled allocations, and the frees of sampled blocks the thread
/// made there. The site is the site table's id and serial
/// (`record/sites.rs`): a site stored later in the same slot is another.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SiteTally {
    pub site: u32,
    pub serial: u64,
    pub counts: SiteCounts,
}

impl SiteTally {
    fn new(site: u32, serial: u64) -> Self {
        SiteTally {
            site,
            serial,
            counts: SiteCounts::default(),
        }
    }
}

/// What a thread keeps while a measure is active on it.
pub(crate) struct Measuring {
    /// Whether a measure is active: the fast path's countdown is held at
    /// zero and the sampler's is in `held`.
    aside: Cell<bool>,
    /// The sampler's countdown (the part the fast path's counter would
    /// hold) while `aside`.
    held: Cell<usize>,
    /// The highest live bytes of the thread (allocated minus freed,
    /// wrapping) since the innermost measure started.
    high: Cell<u64>,
    /// The samples taken in the innermost measure's window, by site.
    /// Empty (no memory) outside a measure; its memory is heapprof's own.
    /// `ManuallyDrop` keeps the thread-local free of a destructor (see
    /// `thread/mod.rs`): the measure that ends last takes the vector.
    tallies: Cell<ManuallyDrop<Vec<SiteTally>>>,
    /// Whether a tally was dropped for lack of memory in this window.
    tallies_incomplete: Cell<bool>,
    /// The blocks an `assert_no_leak` on this thread has seen allocated
    /// (a `record::tracked::Tracked`), or null. Owned by that call
    /// (`measure::Tracking`); only `record/` reads it.
    tracked: Cell<*mut ()>,
}

impl Measuring {
    pub(crate) const fn new() -> Self {
        Measuring {
            aside: Cell::new(false),
            held: Cell::new(0),
            high: Cell::new(0),
            tallies: Cell::new(ManuallyDrop::new(Vec::new())),
            tallies_incomplete: Cell::new(false),
            tracked: Cell::new(std::ptr::null_mut()),
        }
    }

    /// The blocks tracked for an `assert_no_leak`, if one is active.
    pub(crate) fn tracked(&self) -> *mut () {
        self.tracked.get()
    }

    /// Sets what [`Measuring::tracked`] returns: a set its caller owns
    /// until it sets null again.
    pub(crate) fn set_tracked(&self, tracked: *mut ()) {
        self.tracked.set(tracked);
    }

    /// Whether a measure is active on this thread.
    #[inline]
    pub(crate) fn aside(&self) -> bool {
        self.aside.get()
    }

    pub(crate) fn set_aside(&self, aside: bool) {
        self.aside.set(aside);
    }

    /// The sampler's countdown held aside.
    pub(crate) fn held(&self) -> usize {
        self.held.get()
    }

    pub(crate) fn set_held(&self, countdown: usize) {
        self.held.set(countdown);
    }

    /// The high-water mark of live bytes.
    pub(crate) fn high(&self) -> u64 {
        self.high.get()
    }

    pub(crate) fn set_high(&self, live: u64) {
        self.high.set(live);
    }

    /// Raises the high-water mark to `live` if it is above it (compared as
    /// a signed difference: live bytes wrap).
    pub(crate) fn raise_high(&self, live: u64) {
        if live.wrapping_sub(self.high.get()) as i64 > 0 {
            self.high.set(live);
        }
    }

    /// Takes the window's tallies and whether some were lost, leaving none.
    pub(crate) fn take_tallies(&self) -> (Vec<SiteTally>, bool) {
        (
            ManuallyDrop::into_inner(self.tallies.take()),
            self.tallies_incomplete.replace(false),
        )
    }

    /// Puts tallies (and whether some were lost) back as the window's.
    pub(crate) fn set_tallies(&self, tallies: Vec<SiteTally>, incomplete: bool) {
        // The slot is empty: measures take it before they put it back.
        self.tallies.set(ManuallyDrop::new(tallies));
        self.tallies_incomplete.set(incomplete);
    }

    /// Adds to the tally of `site` as `serial` names it with `change`;
    /// inside the profiler (the
    /// tally's memory is heapprof's own). Without memory for a new site,
    /// the window is marked incomplete.
    pub(crate) fn tally(&self, site: u32, serial: u64, change: impl FnOnce(&mut SiteTally)) {
        let mut tallies = ManuallyDrop::into_inner(self.tallies.take());
        match tallies
            .iter_mut()
            .position(|t| t.site == site && t.serial == serial)
        {
            Some(i) => change(&mut tallies[i]),
            None if tallies.try_reserve(1).is_ok() => {
                let mut t = SiteTally::new(site, serial);
                change(&mut t);
                tallies.push(t);
            }
            None => self.tallies_incomplete.set(true),
        }
        self.tallies.set(ManuallyDrop::new(tallies));
    }
}
