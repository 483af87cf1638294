//! One thread's exact allocation counters: plain data, written by the
//! owning thread (and, for a rate change, its countdown by a nudger, see
//! below), readable by any thread.
//!
//! The owner's fast path updates them with a relaxed load and store, no
//! read-modify-write; other threads read them (`stats()`), so they are
//! atomics all the same. A signal handler that allocates on the owning
//! thread between such a load and its store has its own update
//! overwritten: when that update is the slow path's new countdown, the
//! thread's allocated bytes are off by the difference for good (the
//! README's `stats()` section says so). Profiles do not read them: the
//! sampler needs only that the countdown runs out.
//!
//! Allocated bytes have no counter of their own: the sampler's countdown
//! already takes every allocation's size off, so a thread has allocated
//! `granted - countdown` bytes (wrapping: the allocation that runs a
//! countdown out takes it below zero), where `granted` sums the countdowns
//! it was given. An allocation's fast path then bumps one counter, not
//! two. `granted` changes together with the countdown only on the slow
//! path, under a sequence number, so a reader never sees one without the
//! other.
//!
//! While the owner is inside heapprof ([`Counters::freeze`] ..
//! [`Counters::thaw`]), what it counts is heapprof's own: readers see the
//! counts frozen at entry, and leaving takes the difference back out, into
//! the thread's running total of heapprof's own counts when the thread is
//! in the registry. A reader then finds heapprof's own counts of a thread
//! in one place at every moment ([`Counters::read_own`]), so that
//! `stats()` never steps back.
//!
//! One write comes from other threads: a rate change ([`Counters::nudge`])
//! sets a running countdown to zero, so that the owner's next allocation
//! takes the slow path and draws at the new rate. The bytes it held move
//! to `nudged`, still granted, so a reader's `granted - countdown` stays
//! what it was. The owner's fast path may write the countdown in the same
//! instant (its load and store are not one step), putting back what it
//! loaded less its allocation: the nudge is then lost, and the slow path
//! tells which happened by what the countdown held when it ran out
//! ([`Counters::ran_out`]).

use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    Ordering::SeqCst,
};
use std::time::{Duration, Instant};

/// What [`Counters::nudge`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nudge {
    /// The countdown is zero now.
    Made,
    /// The countdown was not running: zero, or run out, with the owner on
    /// its way to the slow path.
    NotRunning,
    /// The owner was changing it: try again.
    Busy,
}

/// Allocation counts, as `stats()` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub deallocations: u64,
    pub freed_bytes: u64,
}

impl Counts {
    /// `self + other`, each field wrapping.
    pub(crate) fn plus(self, other: Counts) -> Counts {
        Counts {
            allocations: self.allocations.wrapping_add(other.allocations),
            allocated_bytes: self.allocated_bytes.wrapping_add(other.allocated_bytes),
            deallocations: self.deallocations.wrapping_add(other.deallocations),
            freed_bytes: self.freed_bytes.wrapping_add(other.freed_bytes),
        }
    }

    /// `self - other`, each field wrapping.
    pub(crate) fn minus(self, other: Counts) -> Counts {
        Counts {
            allocations: self.allocations.wrapping_sub(other.allocations),
            allocated_bytes: self.allocated_bytes.wrapping_sub(other.allocated_bytes),
            deallocations: self.deallocations.wrapping_sub(other.deallocations),
            freed_bytes: self.freed_bytes.wrapping_sub(other.freed_bytes),
        }
    }
}

/// [`Counts`] that any thread may add to: the registry's totals.
pub(crate) struct SharedCounts([AtomicU64; 4]);

impl SharedCounts {
    pub(crate) const fn new() -> Self {
        SharedCounts([const { AtomicU64::new(0) }; 4])
    }

    pub(crate) fn add(&self, c: Counts) {
        let [a, b, d, f] = &self.0;
        a.fetch_add(c.allocations, Relaxed);
        b.fetch_add(c.allocated_bytes, Relaxed);
        d.fetch_add(c.deallocations, Relaxed);
        f.fetch_add(c.freed_bytes, Relaxed);
    }

    pub(crate) fn get(&self) -> Counts {
        let [a, b, d, f] = &self.0;
        Counts {
            allocations: a.load(Relaxed),
            allocated_bytes: b.load(Relaxed),
            deallocations: d.load(Relaxed),
            freed_bytes: f.load(Relaxed),
        }
    }
}

#[repr(C)]
pub(crate) struct Counters {
    /// The sampler's countdown: bytes this thread may still allocate
    /// before its next sample. Charged by [`Counters::charge`] on the fast
    /// path, replaced by [`Counters::reset_countdown`] on the slow path.
    countdown: AtomicUsize,
    allocs: AtomicU64,
    frees: AtomicU64,
    freed_bytes: AtomicU64,
    /// Bytes granted to this thread: allocated bytes are `granted -
    /// countdown` (wrapping).
    granted: AtomicU64,
    /// Odd while the owner changes fields that readers must see together:
    /// `granted` with `countdown`, and the fields below with the ones
    /// above. One writer: a signal handler that interrupts a change and
    /// makes one of its own can leave a reader with a mix of the two.
    seq: AtomicU64,
    /// The countdown a nudge took away, while its zero stands
    /// ([`Counters::nudge`]); 0 for none. Counts as part of the countdown
    /// while the countdown is at or below zero ([`outstanding`]).
    nudged: AtomicUsize,
    /// The allocation count just before the nudge: while it stands, the
    /// owner has not allocated since, so a countdown at zero is the
    /// nudge's ([`Counters::nudge`]).
    nudge_allocs: AtomicU64,
    /// The rate epoch (`sample::epoch`) the countdown was drawn at: a
    /// nudger leaves a thread at the current one alone. Owner writes.
    rate_epoch: AtomicU64,
    /// Odd while a nudger changes `countdown` and `nudged` together. The
    /// owner's changes under `seq` wait for it to be even; a nudger that
    /// finds `seq` odd leaves the thread alone.
    nudge_seq: AtomicU64,
    /// Whether the owner is inside heapprof. Everything counted above
    /// meanwhile is heapprof's own, so readers take `frozen` instead.
    inside: AtomicBool,
    /// The counts when the owner went inside.
    frozen: [AtomicU64; 4],
    /// heapprof's own counts from the owner's stays inside that ended and
    /// were kept ([`Counters::thaw`]), less what [`Counters::take_own`]
    /// handed over of the current stay (wrapping).
    own: [AtomicU64; 4],
}

/// The offset of the last field the fast path touches
/// ([`Counters::charge`], [`Counters::count_alloc`],
/// [`Counters::count_free`]), for the thread-local's layout check.
pub(crate) const FAST_FIELDS_END: usize =
    std::mem::offset_of!(Counters, freed_bytes) + std::mem::size_of::<AtomicU64>();

/// How long a reader waits for a thread whose slow path is changing
/// `granted` and `countdown` together, for a nudge under way, or for a
/// slow path to look at a nudged countdown run out
/// ([`Counters::settling`]). That takes nanoseconds, unless the
/// thread is preempted in between, which on a loaded machine lasts
/// milliseconds, and a reader that gave up sooner would read such a
/// thread's allocated bytes as 0, making `stats()` step backwards. The
/// bound is for a thread that never finishes (one interrupted by a signal
/// handler that reads the stats, or killed): then the read is torn.
const READ_PATIENCE: Duration = Duration::from_secs(1);
/// Reads tried before the reader starts yielding its processor.
const READ_SPINS: usize = 100;

impl Counters {
    pub(crate) const fn new() -> Self {
        Counters {
            countdown: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            nudged: AtomicUsize::new(0),
            nudge_allocs: AtomicU64::new(0),
            rate_epoch: AtomicU64::new(0),
            nudge_seq: AtomicU64::new(0),
            inside: AtomicBool::new(false),
            frozen: [const { AtomicU64::new(0) }; 4],
            own: [const { AtomicU64::new(0) }; 4],
        }
    }

    /// The fast path: charges `size` bytes to the countdown. True when it
    /// has run out (the caller takes the slow path). Stored whether or not
    /// it ran out (the same instructions as a store on one side only, and
    /// the slow path finds the bytes already counted); an expired countdown
    /// may wrap below zero. Owner only.
    #[inline(always)]
    pub(crate) fn charge(&self, size: usize) -> bool {
        let left = self.countdown.load(Relaxed);
        self.countdown.store(left.wrapping_sub(size), Relaxed);
        left <= size
    }

    /// The countdown as it stands (wrapped below zero once expired).
    pub(crate) fn countdown(&self) -> usize {
        self.countdown.load(Relaxed)
    }

    /// Counts an allocation (its bytes are the countdown's). Owner only.
    #[inline(always)]
    pub(crate) fn count_alloc(&self) {
        bump(&self.allocs, 1);
    }

    /// Counts a free of `size` bytes. Owner only.
    #[inline(always)]
    pub(crate) fn count_free(&self, size: usize) {
        bump(&self.frees, 1);
        bump(&self.freed_bytes, size as u64);
    }

    /// Whether the owner is inside heapprof (between [`Counters::freeze`]
    /// and [`Counters::thaw`]).
    #[inline]
    pub(crate) fn inside(&self) -> bool {
        self.inside.load(Relaxed)
    }

    /// The program's counts: heapprof's own allocations and frees left
    /// out. Waits out a writer in the middle of a change, up to
    /// [`READ_PATIENCE`].
    pub(crate) fn read(&self) -> Counts {
        self.read_whole(Self::try_read)
    }

    /// heapprof's own counts on this thread not yet handed to heapprof's
    /// totals: those kept from its stays inside it that ended, and the
    /// current stay's so far. Any thread; waits as [`Counters::read`]
    /// does.
    pub(crate) fn read_own(&self) -> Counts {
        self.read_whole(Self::try_read_own)
    }

    /// As [`Counters::read_own`], once: `Err` with a torn read if the
    /// owner was changing fields that go together.
    pub(crate) fn try_read_own(&self) -> Result<Counts, Counts> {
        self.consistent(|| self.own_now())
    }

    fn own_now(&self) -> Counts {
        let kept = load_counts(&self.own);
        if self.inside.load(Relaxed) {
            kept.plus(self.live().minus(self.frozen()))
        } else {
            kept
        }
    }

    /// `try_once` until it reads the fields whole, yielding to a writer
    /// that takes long; past [`READ_PATIENCE`], its torn read.
    fn read_whole(&self, try_once: impl Fn(&Self) -> Result<Counts, Counts>) -> Counts {
        let mut waiting_since = None;
        loop {
            for _ in 0..READ_SPINS {
                if let Ok(counts) = try_once(self) {
                    return counts;
                }
                std::hint::spin_loop();
            }
            // The writer is not running: let it.
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() > READ_PATIENCE {
                return try_once(self).unwrap_or_else(|torn| torn);
            }
            std::thread::yield_now();
        }
    }

    /// As [`Counters::read`], once: `Err` if the owner was changing
    /// fields that go together, with whatever mix of old and new values was
    /// there.
    pub(crate) fn try_read(&self) -> Result<Counts, Counts> {
        self.consistent(|| {
            if self.inside.load(Relaxed) {
                self.frozen()
            } else {
                self.live()
            }
        })
    }

    /// `read()` once, under the sequence number: `Err` if the owner
    /// changed fields that go together meanwhile.
    fn consistent(&self, read: impl FnOnce() -> Counts) -> Result<Counts, Counts> {
        let before = self.seq.load(Acquire);
        let nudges_before = self.nudge_seq.load(Acquire);
        let counts = read();
        let settling = self.settling();
        std::sync::atomic::fence(Acquire);
        let whole = before.is_multiple_of(2)
            && nudges_before.is_multiple_of(2)
            && !settling
            && self.seq.load(Relaxed) == before
            && self.nudge_seq.load(Relaxed) == nudges_before;
        if whole { Ok(counts) } else { Err(counts) }
    }

    /// Whether the owner is between an allocation that ran a nudged
    /// countdown out and the slow path's look at it ([`Counters::ran_out`]):
    /// a nudge pending, the countdown at or below zero, and an allocation
    /// since the nudge. Then the countdown may be the owner's own again
    /// (the nudge overwritten, and the countdown run out by later
    /// allocations), and `nudged` must not be counted; only the slow path
    /// can tell, so readers wait for it, as for a change under `seq`.
    fn settling(&self) -> bool {
        self.nudged.load(Relaxed) != 0
            && self.countdown.load(Relaxed) as isize <= 0
            && self.allocs.load(Relaxed) != self.nudge_allocs.load(Relaxed)
    }

    fn frozen(&self) -> Counts {
        load_counts(&self.frozen)
    }

    /// Everything counted, heapprof's own calls included, read by the
    /// owner (waiting out a nudge under way). Owner only.
    pub(crate) fn all_counted(&self) -> Counts {
        self.settled(|| self.live())
    }

    /// Everything counted, heapprof's own calls included. A countdown that
    /// ran out is below zero (wrapped), so the difference is taken as
    /// signed and kept from going below zero: read while the owner changes
    /// `granted` and `countdown`, or a nudger `countdown` and `nudged`, it
    /// is off by at most two countdowns and the size of the allocation
    /// that ended one.
    fn live(&self) -> Counts {
        let granted = self.granted.load(Relaxed);
        let left = outstanding(self.countdown.load(Relaxed), self.nudged.load(Relaxed));
        let allocated = (granted as i128 - left).max(0) as u64;
        Counts {
            allocations: self.allocs.load(Relaxed),
            allocated_bytes: allocated,
            deallocations: self.frees.load(Relaxed),
            freed_bytes: self.freed_bytes.load(Relaxed),
        }
    }

    /// Runs `change` as one step for readers: they wait for it to end.
    /// For a change that neither reads nor writes what a nudge writes
    /// (`countdown`, `nudged`, `nudge_allocs`), or one made while no nudge
    /// can be ([`Counters::rezero_held`]). Owner only.
    fn write_together(&self, change: impl FnOnce()) {
        self.write(false, change);
    }

    /// [`Counters::write_together`], and no nudge lands meanwhile: one
    /// under way is waited for (it takes a few instructions and waits for
    /// nothing), and one that starts later sees `seq` odd and does nothing.
    /// Owner only.
    fn write_apart_from_nudges(&self, change: impl FnOnce()) {
        self.write(true, change);
    }

    fn write(&self, apart_from_nudges: bool, change: impl FnOnce()) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        if apart_from_nudges {
            // Pairs with the fence in `nudge`: of this store and a nudger's
            // store to `nudge_seq`, one side sees the other's.
            std::sync::atomic::fence(SeqCst);
            let mut spins = 0;
            while !self.nudge_seq.load(Acquire).is_multiple_of(2) {
                wait_for_nudger(&mut spins);
            }
        } else {
            std::sync::atomic::fence(Release);
        }
        change();
        self.seq.store(seq.wrapping_add(2), Release);
    }

    /// `read()` of fields a nudge writes, by the owner outside
    /// [`Counters::write_apart_from_nudges`]: taken again if a nudge was
    /// under way (a nudge whose countdown the owner's fast path changed
    /// first writes `nudged` for a moment). A nudge takes a few
    /// instructions and waits for nothing. Owner only.
    fn settled<T>(&self, read: impl Fn() -> T) -> T {
        let mut spins = 0;
        loop {
            let before = self.nudge_seq.load(Acquire);
            if before.is_multiple_of(2) {
                let value = read();
                std::sync::atomic::fence(Acquire);
                if self.nudge_seq.load(Relaxed) == before {
                    return value;
                }
            }
            wait_for_nudger(&mut spins);
        }
    }

    /// Another thread's rate change: if the countdown is running (above
    /// zero), sets it to zero and keeps what it held in `nudged`, so that
    /// the owner's next allocation takes the slow path and the allocated
    /// bytes read the same. A countdown at or below zero is left alone: the
    /// owner's next allocation takes the slow path already. Never waits;
    /// one nudger at a time (the registry's lock).
    pub(crate) fn nudge(&self) -> Nudge {
        // The owner changing its counters waits for a nudge that starts
        // meanwhile: leave it be without making it wait.
        if !self.seq.load(Acquire).is_multiple_of(2) {
            return Nudge::Busy;
        }
        let n = self.nudge_seq.load(Relaxed);
        self.nudge_seq.store(n.wrapping_add(1), Relaxed);
        // Pairs with the fence in `write` apart from nudges.
        std::sync::atomic::fence(SeqCst);
        let outcome = if !self.seq.load(Acquire).is_multiple_of(2) {
            Nudge::Busy
        } else {
            // Read before the zero: an allocation the owner counts after
            // this read may run out a countdown that is its own again (see
            // `settling`); one counted before it is the one whose store
            // may overwrite the zero, whose running out readers may count
            // with the nudge (low by at most the nudge, and no lower than
            // before it).
            let allocs = self.allocs.load(SeqCst);
            let held = self.countdown.load(Relaxed);
            if held as isize <= 0 {
                Nudge::NotRunning
            } else {
                // A `nudged` already there beside a running countdown is a
                // nudge the owner overwrote: replaced.
                self.nudge_allocs.store(allocs, Relaxed);
                self.nudged.store(held, Relaxed);
                match self.countdown.compare_exchange(held, 0, SeqCst, Relaxed) {
                    Ok(_) => Nudge::Made,
                    Err(_) => {
                        // The owner charged it meanwhile: it is the
                        // owner's, whatever it holds now.
                        self.nudged.store(0, Relaxed);
                        Nudge::Busy
                    }
                }
            }
        };
        self.nudge_seq.store(n.wrapping_add(2), Release);
        outcome
    }

    /// The slow path's first step when an allocation of `size` bytes ran
    /// the countdown out (the bytes already charged): what the countdown
    /// held before them. 0 (or below) after a nudge; otherwise the owner's own
    /// store had overwritten the nudge's zero (a fast path caught between
    /// its load and its store), so the nudge is forgotten, and the
    /// countdown is the owner's alone again. Owner only.
    pub(crate) fn ran_out(&self, size: usize) -> usize {
        let mut left = 0;
        self.write_apart_from_nudges(|| {
            left = self.countdown.load(Relaxed).wrapping_add(size);
            // An overwriting store loaded a running countdown. Below zero,
            // `left` is the nudge's zero run further out by an allocation
            // that came in between (a signal handler's, or heapprof's own)
            // without taking the slow path. Not told apart: an overwrite
            // that such an allocation of at least the overwritten
            // countdown ran out, which then gives up bytes never granted
            // (at most one countdown, once).
            if left as isize > 0 && self.nudged.load(Relaxed) != 0 {
                self.nudged.store(0, Relaxed);
            }
        });
        left
    }

    /// Sets the allocation count, and moves the count a pending nudge
    /// was made at by as much, so that it still tells whether the owner
    /// allocated since ([`Counters::settling`]). Under
    /// [`Counters::write_apart_from_nudges`].
    fn set_allocs(&self, allocations: u64) {
        let moved = allocations.wrapping_sub(self.allocs.load(Relaxed));
        self.allocs.store(allocations, Relaxed);
        let at = self.nudge_allocs.load(Relaxed);
        self.nudge_allocs.store(at.wrapping_add(moved), Relaxed);
    }

    fn store_frozen(&self, c: Counts) {
        store_counts(&self.frozen, c);
    }

    /// The owner goes inside heapprof: readers see the counts as they are
    /// now until [`Counters::thaw`]. Owner only, not nested.
    pub(crate) fn freeze(&self) {
        let now = self.all_counted();
        self.write_together(|| {
            self.store_frozen(now);
            self.inside.store(true, Relaxed);
        });
    }

    /// The owner leaves heapprof: what was counted since
    /// [`Counters::freeze`] is taken back out, as heapprof's own. With
    /// `keep` it is kept with the thread's own counts, in the same step
    /// for readers, and nothing is returned; without, the own counts not
    /// yet handed over are returned, for the caller to add to heapprof's
    /// totals. The countdown is left as it is: it is the sampler's.
    pub(crate) fn thaw(&self, keep: bool) -> Counts {
        let frozen = self.frozen();
        let now = self.all_counted();
        let own = load_counts(&self.own).plus(now.minus(frozen));
        self.write_apart_from_nudges(|| {
            let left = outstanding(self.countdown.load(Relaxed), self.nudged.load(Relaxed));
            self.set_allocs(frozen.allocations);
            self.granted
                .store(frozen.allocated_bytes.wrapping_add(left as u64), Relaxed);
            self.frees.store(frozen.deallocations, Relaxed);
            self.freed_bytes.store(frozen.freed_bytes, Relaxed);
            store_counts(&self.own, if keep { own } else { Counts::default() });
            self.inside.store(false, Relaxed);
        });
        if keep { Counts::default() } else { own }
    }

    /// Returns the own counts not yet handed over ([`Counters::read_own`]'s)
    /// and marks them handed over, the current stay's so far included: a
    /// thread leaving the registry gives them to heapprof's totals, and
    /// [`Counters::thaw`] returns only what it counts later. Owner only.
    pub(crate) fn take_own(&self) -> Counts {
        let taken = self.settled(|| self.own_now());
        let left = load_counts(&self.own).minus(taken);
        self.write_together(|| store_counts(&self.own, left));
        taken
    }

    /// Returns the program's counts ([`Counters::read`]'s) and starts them
    /// again from zero, leaving what heapprof counted meanwhile, if the
    /// owner is inside it, to be taken out when it leaves. Owner only.
    pub(crate) fn take(&self) -> Counts {
        let inside = self.inside.load(Relaxed);
        let taken = if inside {
            self.frozen()
        } else {
            self.all_counted()
        };
        self.write_apart_from_nudges(|| {
            let sub = |c: &AtomicU64, n: u64| c.store(c.load(Relaxed).wrapping_sub(n), Relaxed);
            self.set_allocs(self.allocs.load(Relaxed).wrapping_sub(taken.allocations));
            sub(&self.granted, taken.allocated_bytes);
            sub(&self.frees, taken.deallocations);
            sub(&self.freed_bytes, taken.freed_bytes);
            if inside {
                self.store_frozen(Counts::default());
            }
        });
        taken
    }

    /// Replaces the countdown, leaving allocated bytes as they are; what
    /// a pending nudge took away is given up with the rest. Owner only,
    /// slow path.
    pub(crate) fn reset_countdown(&self, countdown: usize) {
        self.write_apart_from_nudges(|| {
            let old = outstanding(self.countdown.load(Relaxed), self.nudged.load(Relaxed));
            let granted = self.granted.load(Relaxed);
            self.granted.store(
                granted
                    .wrapping_add(countdown as u64)
                    .wrapping_sub(old as u64),
                Relaxed,
            );
            self.countdown.store(countdown, Relaxed);
            self.nudged.store(0, Relaxed);
        });
    }

    /// Puts a countdown a measure holds at zero (`record::countdown::
    /// hold_aside`) back to zero after an allocation charged it, leaving
    /// allocated bytes as they are: [`Counters::reset_countdown`]`(0)`
    /// without the fence that keeps nudges off, since none can be made
    /// meanwhile. The countdown has been at or below zero since a change
    /// apart from nudges set it so (a nudger that reads it after that
    /// change finds it not running), and only such a change makes it run
    /// again. Owner only, while the countdown is held.
    pub(crate) fn rezero_held(&self) {
        self.write_together(|| {
            let old = self.countdown.load(Relaxed) as isize as i64 as u64;
            let granted = self.granted.load(Relaxed);
            self.granted.store(granted.wrapping_sub(old), Relaxed);
            self.countdown.store(0, Relaxed);
        });
    }

    /// The rate epoch the countdown was drawn at. Any thread.
    pub(crate) fn rate_epoch(&self) -> u64 {
        self.rate_epoch.load(Relaxed)
    }

    /// The countdown is drawn at `epoch` from now. Owner only.
    pub(crate) fn set_rate_epoch(&self, epoch: u64) {
        self.rate_epoch.store(epoch, Relaxed);
    }

    /// In a fork's child: a nudge the parent's registry lock was held for
    /// (a fork from a signal handler that took some of heapprof's locks,
    /// not that one) never ends there. Its writes are whole either way: a
    /// `nudged` beside a running countdown is not counted.
    pub(crate) fn end_nudge_after_fork(&self) {
        let n = self.nudge_seq.load(Relaxed);
        if !n.is_multiple_of(2) {
            self.nudge_seq.store(n.wrapping_add(1), Release);
        }
    }

    /// Settles a nudge still pending, for a thread leaving the registry
    /// (no nudge comes after): the countdown it took away is given up, or,
    /// if the owner's store overwrote it, forgotten. Owner only, outside
    /// an allocation, under the registry's lock (which nudges are made
    /// under: none lands between the read of the countdown and the
    /// write).
    pub(crate) fn settle_nudge(&self) {
        self.reset_countdown(self.countdown());
    }

    /// Takes back an allocation of `size` bytes that was counted but that
    /// the inner allocator failed. Owner only, slow path.
    pub(crate) fn uncount_alloc(&self, size: usize) {
        self.write_apart_from_nudges(|| {
            self.set_allocs(self.allocs.load(Relaxed).wrapping_sub(1));
            let granted = self.granted.load(Relaxed);
            self.granted
                .store(granted.wrapping_sub(size as u64), Relaxed);
        });
    }

    /// Takes back a free of `size` bytes that did not happen (a failed
    /// realloc keeps its old block). Owner only.
    pub(crate) fn uncount_free(&self, size: usize) {
        bump(&self.frees, 1u64.wrapping_neg());
        bump(&self.freed_bytes, (size as u64).wrapping_neg());
    }
}

/// The countdown's bytes as `granted` counts them, signed (one that ran
/// out is below zero): `countdown`, plus what a nudge took away while its
/// zero stands (at or below zero: the zero, or the zero less the
/// allocation that ran it out). A `nudged` beside a countdown above zero
/// is a nudge the owner's store overwrote: not counted. Overwritten by a
/// store that also ran the countdown out, it is counted until the owner's
/// slow path forgets it ([`Counters::ran_out`], during that same
/// allocation): allocated bytes then read low by that much, never lower
/// than before the nudge.
fn outstanding(countdown: usize, nudged: usize) -> i128 {
    let countdown = countdown as isize as i128;
    if countdown <= 0 {
        countdown + nudged as i128
    } else {
        countdown
    }
}

/// One wait of the owner for a nudge under way: spins at first, then,
/// the nudger not running, lets it run.
fn wait_for_nudger(spins: &mut usize) {
    *spins += 1;
    if *spins < READ_SPINS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

// The two below name each field rather than map or zip the arrays: every
// sample runs them several times, in a debug build unoptimized, where each
// iterator adapter is a call of its own.

fn load_counts(fields: &[AtomicU64; 4]) -> Counts {
    let [a, b, d, f] = fields;
    Counts {
        allocations: a.load(Relaxed),
        allocated_bytes: b.load(Relaxed),
        deallocations: d.load(Relaxed),
        freed_bytes: f.load(Relaxed),
    }
}

fn store_counts(fields: &[AtomicU64; 4], c: Counts) {
    let [a, b, d, f] = fields;
    a.store(c.allocations, Relaxed);
    b.store(c.allocated_bytes, Relaxed);
    d.store(c.deallocations, Relaxed);
    f.store(c.freed_bytes, Relaxed);
}

/// Only the owning thread writes, so load + store loses an update only to
/// a signal handler that allocates in between (see the module comment).
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// A reader must wait out a writer preempted in the middle of
    /// [`Counters::reset_countdown`], however long that lasts, rather than
    /// take the half-written pair.
    #[test]
    fn a_reader_waits_for_a_preempted_writer() {
        static C: Counters = Counters::new();
        // 1000 bytes granted; a 5000-byte allocation ran the countdown out
        // (wrapped below zero): 5000 bytes allocated.
        C.reset_countdown(1000);
        assert!(C.charge(5000));
        assert_eq!(C.try_read().unwrap().allocated_bytes, 5000);

        let half_written = Barrier::new(2);
        // The writer stays half way until the first read is checked, however
        // late this thread gets to run.
        let checked = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                // reset_countdown(2000), preempted between its two stores.
                C.seq.store(3, Relaxed);
                let old = C.countdown.load(Relaxed) as u64;
                let granted = C.granted.load(Relaxed);
                C.granted
                    .store(granted.wrapping_add(2000).wrapping_sub(old), Relaxed);
                half_written.wait();
                checked.wait();
                std::thread::sleep(Duration::from_millis(50));
                C.countdown.store(2000, Relaxed);
                C.seq.store(4, Release);
            });
            half_written.wait();
            // Checked after the writer is let go: a failure must not leave
            // it waiting at the barrier, and the scope waiting for it.
            let torn = C.try_read().is_err();
            checked.wait();
            assert!(torn, "the pair is half written");
            assert_eq!(
                C.read().allocated_bytes,
                5000,
                "allocated bytes, read while the writer sleeps"
            );
        });
    }

    /// What the owner counts between `freeze` and `thaw` is returned by
    /// `thaw` and leaves the program's counts as they were at `freeze`;
    /// readers meanwhile see the frozen counts.
    #[test]
    fn inside_counts_are_taken_out() {
        let c = Counters::new();
        c.reset_countdown(10_000);
        c.count_alloc();
        assert!(!c.charge(100));
        c.count_free(40);
        c.freeze();
        c.count_alloc();
        assert!(!c.charge(1_000));
        c.count_free(7);
        let program = Counts {
            allocations: 1,
            allocated_bytes: 100,
            deallocations: 1,
            freed_bytes: 40,
        };
        assert_eq!(c.read(), program, "frozen while inside");
        let own = c.thaw(false);
        assert_eq!(
            own,
            Counts {
                allocations: 1,
                allocated_bytes: 1_000,
                deallocations: 1,
                freed_bytes: 7,
            }
        );
        assert_eq!(c.read(), program, "after leaving");
        assert_eq!(
            c.countdown(),
            10_000 - 1_100,
            "the countdown is the sampler's"
        );
    }

    /// A thread's own counts are kept across its stays inside; handed over
    /// in the middle of a stay (the thread leaves the registry there), they
    /// are not handed over again when the stay ends.
    #[test]
    fn own_counts_are_handed_over_once() {
        let c = Counters::new();
        c.reset_countdown(10_000);
        c.freeze();
        c.count_alloc();
        assert!(!c.charge(100));
        assert_eq!(c.thaw(true), Counts::default(), "kept, not returned");
        assert_eq!(c.read_own().allocated_bytes, 100);
        c.freeze();
        c.count_alloc();
        assert!(!c.charge(30));
        assert_eq!(c.read_own().allocated_bytes, 130, "the stay so far");
        assert_eq!(c.take_own().allocated_bytes, 130);
        assert_eq!(c.read_own(), Counts::default(), "all handed over");
        c.count_alloc();
        assert!(!c.charge(5));
        let rest = c.thaw(false);
        assert_eq!((rest.allocations, rest.allocated_bytes), (1, 5));
        assert_eq!(c.read_own(), Counts::default());
    }

    /// `take` hands the counts over once and starts again from zero.
    #[test]
    fn take_starts_from_zero() {
        let c = Counters::new();
        c.reset_countdown(500);
        c.count_alloc();
        assert!(!c.charge(200));
        assert_eq!(c.take().allocated_bytes, 200);
        assert_eq!(c.read(), Counts::default());
        c.count_alloc();
        assert!(c.charge(400), "300 left, 400 asked: expired");
        assert_eq!(c.read().allocated_bytes, 400);
    }

    /// A nudge zeroes a running countdown and leaves the allocated bytes
    /// as they read; the next allocation runs the countdown out from zero,
    /// and replacing the countdown gives up what the nudge took.
    #[test]
    fn a_nudge_keeps_the_count_and_sends_the_next_allocation_to_the_slow_path() {
        let c = Counters::new();
        c.reset_countdown(10_000);
        assert!(!c.charge(100));
        assert_eq!(c.nudge(), Nudge::Made);
        assert_eq!((c.countdown(), c.read().allocated_bytes), (0, 100));
        assert_eq!(c.nudge(), Nudge::NotRunning, "at zero already");
        assert!(c.charge(50), "the next allocation takes the slow path");
        assert_eq!(c.read().allocated_bytes, 150);
        assert_eq!(c.ran_out(50), 0, "ran out from the nudge's zero");
        c.reset_countdown(777);
        assert_eq!((c.countdown(), c.read().allocated_bytes), (777, 150));
        // Replaced before any allocation: the same.
        assert_eq!(c.nudge(), Nudge::Made);
        c.reset_countdown(5);
        assert_eq!(c.read().allocated_bytes, 150);
        // Settled at exit.
        assert_eq!(c.nudge(), Nudge::Made);
        c.settle_nudge();
        assert_eq!((c.countdown(), c.read().allocated_bytes), (0, 150));
        assert_eq!(c.nudged.load(Relaxed), 0);
    }

    /// A nudge is not made on a countdown that is not running, nor while
    /// the owner changes it.
    #[test]
    fn a_nudge_leaves_a_countdown_that_is_not_running() {
        let c = Counters::new();
        assert_eq!(
            c.nudge(),
            Nudge::NotRunning,
            "zero: on its way to the slow path"
        );
        c.reset_countdown(100);
        assert!(c.charge(300));
        assert_eq!(c.nudge(), Nudge::NotRunning, "ran out");
        c.ran_out(300);
        c.reset_countdown(1_000);
        c.seq.store(c.seq.load(Relaxed) + 1, Relaxed);
        assert_eq!(c.nudge(), Nudge::Busy, "the owner is changing it");
        c.seq.store(c.seq.load(Relaxed) + 1, Relaxed);
        assert_eq!(c.nudge(), Nudge::Made);
    }

    /// On a countdown of 10 000, the owner's fast path counts an
    /// allocation of 100 bytes and loads the countdown, a nudge lands, and
    /// the owner stores what it loaded less the 100: the nudge is
    /// overwritten.
    fn overwrite_a_nudge(c: &Counters) {
        c.reset_countdown(10_000);
        c.count_alloc();
        let loaded = c.countdown.load(Relaxed);
        assert_eq!(c.nudge(), Nudge::Made);
        c.countdown.store(loaded - 100, Relaxed);
    }

    /// The owner's fast path loads the countdown, a nudge lands, and the
    /// owner stores what it loaded less its allocation: the nudge is lost.
    /// Readers see the bytes allocated, never fewer than before, and the
    /// slow path forgets the nudge when the countdown runs out.
    #[test]
    fn a_nudge_the_owner_overwrites_is_forgotten() {
        let c = Counters::new();
        // Overwritten with a countdown still running, which a later
        // allocation runs out: readers see it before the slow path looks.
        overwrite_a_nudge(&c);
        assert_eq!(c.read().allocated_bytes, 100);
        c.count_alloc();
        assert!(c.charge(20_000));
        assert!(
            c.try_read().is_err() || c.read().allocated_bytes == 20_100,
            "read low by the lost nudge: {:?}",
            c.try_read()
        );
        assert_eq!(c.ran_out(20_000), 9_900, "the owner's own countdown");
        assert_eq!(c.read().allocated_bytes, 20_100);
        c.reset_countdown(3);
        assert_eq!(c.read().allocated_bytes, 20_100);
        // Overwritten by the allocation that runs the countdown out.
        let before = c.read().allocated_bytes;
        c.reset_countdown(1_000);
        let loaded = c.countdown.load(Relaxed);
        assert_eq!(c.nudge(), Nudge::Made);
        c.countdown.store(loaded.wrapping_sub(5_000), Relaxed);
        let meanwhile = c.read().allocated_bytes;
        assert!(
            (before..=before + 5_000).contains(&meanwhile),
            "{meanwhile} read between the store and the slow path"
        );
        assert_eq!(c.ran_out(5_000), 1_000);
        c.reset_countdown(0);
        assert_eq!(c.read().allocated_bytes, before + 5_000);
    }

    /// Runs `owner` while a nudger, caught after writing `nudged` (1 000,
    /// the countdown it read before the owner ran it out) and before its
    /// compare-exchange fails, finishes 50 ms later.
    fn under_a_failing_nudge<R>(c: &'static Counters, owner: impl FnOnce() -> R) -> R {
        c.nudge_seq.store(1, Relaxed);
        c.nudged.store(1_000, Relaxed);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                c.nudged.store(0, Relaxed);
                c.nudge_seq.store(2, Release);
            });
            owner()
        })
    }

    /// A countdown held at zero, as a measure holds it, and put back to
    /// zero after every allocation without the fence: a nudger trying all
    /// along never makes a nudge, and the count stays exact.
    #[test]
    fn a_countdown_held_at_zero_takes_no_nudge() {
        static C: Counters = Counters::new();
        C.reset_countdown(100_000);
        // Held from here on, as `hold_aside` holds it.
        C.reset_countdown(0);
        let stop = AtomicBool::new(false);
        let made = std::thread::scope(|s| {
            let nudger = s.spawn(|| {
                let mut made = 0u32;
                while !stop.load(Relaxed) {
                    made += u32::from(C.nudge() == Nudge::Made);
                }
                made
            });
            for i in 0..200_000u64 {
                C.count_alloc();
                assert!(C.charge(1 + (i % 100) as usize));
                C.rezero_held();
            }
            stop.store(true, Relaxed);
            nudger.join().unwrap()
        });
        let expected: u64 = (0..200_000u64).map(|i| 1 + i % 100).sum();
        assert_eq!(made, 0, "nudges made on a held countdown");
        assert_eq!(C.read().allocated_bytes, expected);
    }

    /// A nudge whose compare-exchange is about to fail (the owner's fast
    /// path ran the countdown out after the nudger read it) has `nudged`
    /// set for a moment: the owner, going inside heapprof, waits it out
    /// rather than count it.
    #[test]
    fn the_owner_waits_out_a_nudge_under_way() {
        static C: Counters = Counters::new();
        C.reset_countdown(1_000);
        C.count_alloc();
        assert!(C.charge(3_000), "ran out");
        under_a_failing_nudge(&C, || C.freeze());
        assert_eq!(
            C.frozen().allocated_bytes,
            3_000,
            "frozen counting a nudge that did not land"
        );
    }

    /// An allocation that comes between the one that runs a nudged
    /// countdown out and the slow path's look (a signal handler's, not
    /// taking the slow path since the countdown is below zero) does not
    /// make the nudge look overwritten.
    #[test]
    fn an_allocation_in_between_keeps_the_nudge() {
        let c = Counters::new();
        c.reset_countdown(10_000);
        assert_eq!(c.nudge(), Nudge::Made);
        c.count_alloc();
        assert!(c.charge(100));
        c.count_alloc();
        assert!(!c.charge(50), "below zero: no slow path");
        assert_eq!(c.ran_out(100) as isize, -50);
        c.reset_countdown(7);
        assert_eq!(c.read().allocated_bytes, 150);
    }

    /// A failed realloc takes its allocation back while a nudge it
    /// overwrote is pending: readers still wait for the slow path when a
    /// later allocation runs the countdown out, rather than count the
    /// nudge.
    #[test]
    fn a_failed_realloc_keeps_readers_waiting_for_the_slow_path() {
        let c = Counters::new();
        overwrite_a_nudge(&c);
        c.uncount_alloc(100);
        assert_eq!(c.read().allocated_bytes, 0);
        c.count_alloc();
        assert!(c.charge(20_000));
        assert!(
            c.try_read().is_err() || c.read().allocated_bytes == 20_000,
            "read low by the lost nudge: {:?}",
            c.try_read()
        );
        c.ran_out(20_000);
        c.reset_countdown(1);
        assert_eq!(c.read().allocated_bytes, 20_000);
    }

    /// Thawing waits out a nudge under way as freezing does.
    #[test]
    fn the_owner_thaws_past_a_nudge_under_way() {
        static C: Counters = Counters::new();
        C.reset_countdown(1_000);
        C.freeze();
        C.count_alloc();
        assert!(C.charge(3_000), "ran out, inside");
        let own = under_a_failing_nudge(&C, || C.thaw(false));
        assert_eq!(own.allocated_bytes, 3_000, "heapprof's own bytes");
        C.ran_out(3_000);
        C.reset_countdown(1);
        assert_eq!(C.read().allocated_bytes, 0, "the program's bytes");
    }

    /// A nudge that finds the countdown not running changes nothing a
    /// reader goes by: readers still wait for the slow path of a thread
    /// that ran an overwritten nudge out.
    #[test]
    fn a_nudge_that_finds_no_running_countdown_changes_nothing() {
        let c = Counters::new();
        overwrite_a_nudge(&c);
        c.count_alloc();
        assert!(c.charge(20_000));
        let before = (c.nudge_allocs.load(Relaxed), c.nudged.load(Relaxed));
        assert_eq!(c.nudge(), Nudge::NotRunning);
        assert_eq!(
            (c.nudge_allocs.load(Relaxed), c.nudged.load(Relaxed)),
            before
        );
        assert!(c.try_read().is_err(), "waiting for the slow path");
    }

    /// A fork's child does not inherit a nudge under way in the parent.
    #[test]
    fn a_fork_child_ends_a_nudge_under_way() {
        let c = Counters::new();
        c.nudge_seq.store(5, Relaxed);
        c.end_nudge_after_fork();
        assert_eq!(c.nudge_seq.load(Relaxed), 6);
        c.end_nudge_after_fork();
        assert_eq!(c.nudge_seq.load(Relaxed), 6, "none under way: unchanged");
        c.reset_countdown(10);
        assert_eq!(c.read().allocated_bytes, 0);
    }

    /// A nudge the owner overwrote does not keep the next one off: the
    /// running countdown is nudged again, and counted once.
    #[test]
    fn a_nudge_after_an_overwritten_one_is_made() {
        let c = Counters::new();
        overwrite_a_nudge(&c);
        assert_eq!(c.nudge(), Nudge::Made, "the countdown runs again");
        assert_eq!((c.countdown(), c.read().allocated_bytes), (0, 100));
        c.count_alloc();
        assert!(c.charge(7));
        assert_eq!(c.ran_out(7), 0);
        c.reset_countdown(50);
        assert_eq!(c.read().allocated_bytes, 107);
    }

    /// An owner allocating as the fast and slow paths do, some of it inside
    /// heapprof, a nudger nudging all along and a reader reading: the
    /// reader never sees the count go back, and at the end the program's
    /// and heapprof's own bytes are exact.
    #[test]
    fn nudges_racing_the_owner_lose_no_byte() {
        static C: Counters = Counters::new();
        /// Nudges made before the owner stops (an optimized owner may
        /// finish any fixed number of allocations before the nudger runs).
        const NUDGES: u64 = 5_000;
        let made = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let expected = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    if C.nudge() == Nudge::Made {
                        made.fetch_add(1, Relaxed);
                    }
                    std::hint::spin_loop();
                }
            });
            let reader = s.spawn(|| {
                let mut last = 0;
                while !stop.load(Relaxed) {
                    let now = C.read().allocated_bytes;
                    assert!(now >= last, "went back from {last} to {now}");
                    last = now;
                }
            });
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let (mut sum, mut own_sum) = (0u64, 0u64);
            // A nudge is made only when the nudger runs while the owner's
            // countdown runs: on a loaded machine, where the two share a
            // core, about once per time slice. The deadline guards against
            // a hang only.
            let deadline = Instant::now() + Duration::from_secs(600);
            while made.load(Relaxed) < NUDGES && Instant::now() < deadline {
                for i in 0..1_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = 1 + (x % 700) as usize;
                    // Every 16th allocation is heapprof's own: made
                    // between `freeze` and `thaw`, not the program's.
                    let own = i % 16 == 0;
                    if own {
                        C.freeze();
                        own_sum += size as u64;
                    } else {
                        sum += size as u64;
                    }
                    C.count_alloc();
                    if C.charge(size) {
                        C.ran_out(size);
                        C.reset_countdown(1 + (x >> 40) as usize % 4_000);
                    }
                    if own {
                        C.thaw(true);
                    }
                }
            }
            stop.store(true, Relaxed);
            reader.join().unwrap();
            (sum, own_sum)
        });
        C.settle_nudge();
        let nudges = made.load(Relaxed);
        assert!(nudges >= NUDGES, "{nudges} nudges made in ten minutes");
        assert_eq!(
            (C.read().allocated_bytes, C.read_own().allocated_bytes),
            expected,
            "the program's and heapprof's own bytes after {nudges} nudges"
        );
    }
}
