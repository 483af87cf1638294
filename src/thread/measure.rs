//! A thread's state while a `heapprof::measure` is active on it: the
//! sampling countdown held aside, the marks of its live bytes, and the
//! samples taken in the window.
//!
//! While a measure is active the fast path's countdown is held at zero, so
//! that every allocation of the thread reaches the slow path, which moves
//! the marks; the sampler's real countdown waits here and the
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

/// Where a thread's live bytes (allocated minus freed, wrapping) have
/// been in a window, read at each allocation: live bytes rise only there,
/// so their lowest point before any moment is the live bytes just before
/// one of the window's allocations, or at its start.
///
/// `rise` is what a measure reports as its peak: the most the live bytes
/// rose above their lowest point before. Counted from the lowest point
/// rather than from the start, frees of blocks older than the window do
/// not hide a block the window allocates after them. It never exceeds
/// what the window's own blocks held at once, counting those other
/// threads freed as held (a rise of `n` bytes from
/// the low point is `n` bytes more allocated than freed since then), and
/// equals it when the window frees no older block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Marks {
    /// The highest live bytes.
    pub high: u64,
    /// The lowest live bytes before an allocation, or at the start.
    pub low: u64,
    /// The largest rise of the live bytes above `low` as it stood then.
    pub rise: u64,
}

/// `a - b` as live bytes compare: a signed difference, since they wrap.
fn above(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

impl Marks {
    /// The marks of a window that starts with `live` bytes live.
    pub(crate) const fn at(live: u64) -> Marks {
        Marks {
            high: live,
            low: live,
            rise: 0,
        }
    }

    /// An allocation (or a `realloc`, its new size less its old one) that
    /// changed the live bytes by `grown_by` and left them at `live`.
    pub(crate) fn note(&mut self, live: u64, grown_by: u64) {
        let before = live.wrapping_sub(grown_by);
        if above(before, self.low) < 0 {
            self.low = before;
        }
        if above(live, self.high) > 0 {
            self.high = live;
        }
        self.rise = self.rise.max(above(live, self.low).max(0) as u64);
    }

    /// The rise at a window's end, with `live` bytes live then: `rise` when
    /// every allocation was noted, and never below the window's net.
    pub(crate) fn rise_at_end(&self, live: u64) -> u64 {
        self.rise.max(above(live, self.low).max(0) as u64)
    }

    /// Folds in the marks of a window nested in this one, which started
    /// where this one stood then: its lows and highs were this window's,
    /// and its highs rose above this window's lowest point before it.
    pub(crate) fn absorb_inner(&mut self, inner: Marks) {
        self.rise = self
            .rise
            .max(inner.rise)
            .max(above(inner.high, self.low).max(0) as u64);
        if above(inner.low, self.low) < 0 {
            self.low = inner.low;
        }
        if above(inner.high, self.high) > 0 {
            self.high = inner.high;
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
    /// Where the thread's live bytes have been since the innermost measure
    /// started.
    marks: Cell<Marks>,
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
            marks: Cell::new(Marks::at(0)),
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

    /// The marks of the innermost measure's window.
    pub(crate) fn marks(&self) -> Marks {
        self.marks.get()
    }

    pub(crate) fn set_marks(&self, marks: Marks) {
        self.marks.set(marks);
    }

    /// Moves the marks for an allocation (or a `realloc`) that changed the
    /// live bytes by `grown_by` (wrapping) and left them at `live`.
    pub(crate) fn note(&self, live: u64, grown_by: u64) {
        let mut marks = self.marks.get();
        marks.note(live, grown_by);
        self.marks.set(marks);
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
