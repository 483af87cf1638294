//! Per-call measurement: exact counts of what one thread allocates in a
//! closure ([`measure`]), assertions on them, leak checks
//! ([`assert_no_leak`]), and criterion measurements and a profiler
//! (`criterion.rs`, feature `criterion`).
//!
//! The counts are differences of the calling thread's own exact counters
//! (`thread/counters.rs`), which only that thread writes: other threads
//! cannot change them, and heapprof's own allocations are taken back out
//! of them when it leaves its guard. The peak needs more than the counts
//! at the two ends: while a window is open the thread's countdown is held
//! aside (`record/countdown.rs`), so each of its allocations reaches the
//! slow path, which moves the marks of the thread's live bytes
//! (`thread/measure.rs`). Windows nest: an inner one starts marks of its
//! own and folds them into the outer one's when it closes.

#[cfg(feature = "criterion")]
pub mod criterion;
mod future;

pub use future::{MeasuredFuture, measure_future};

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::output::{self, Source, snapshot::Snapshot};
use crate::record::{self, countdown, sites};
use crate::support::{reentry, registry};
use crate::thread::{self, counters::Counts, measure::Marks, measure::SiteTally};

/// Runs `f` on the calling thread and returns its result with exact counts
/// of what this thread allocated and freed while it ran.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
///
/// #[test]
/// fn parse_allocates_little() {
///     let (doc, m) = heapprof::measure(|| my_crate::parse("…"));
///     m.assert_allocations_at_most(3);
///     m.assert_peak_at_most(4096);
///     println!("{m}"); // 3 allocations (1.2 KiB = 1240 B), 2 frees (1000 B), net +240 B, peak 1.1 KiB = 1140 B
/// #   drop(doc);
/// }
/// # mod my_crate { pub fn parse(_: &str) {} }
/// ```
///
/// * Exact at every sample rate, `0` included: the counts are not
///   estimates.
/// * Only the calling thread is counted: tests running at the same time on
///   other threads do not change the numbers, and neither does work `f`
///   hands to other threads (a thread it spawns, a pool it submits to).
///   A thread that waits inside `f` in a work-stealing pool (rayon's
///   `join`, `scope` or `install` called on one of its workers) runs
///   other jobs while it waits, and those count: measure from a thread
///   outside the pool.
///   A block this thread allocates and another thread frees (a message
///   sent over a channel, a value moved into a spawned thread) counts as
///   allocated and not freed: for this thread it is still held.
///   To measure a call that spawns threads, take a [`stats()`](crate::stats)
///   delta, which counts every thread, in a test that runs alone (its own
///   test binary, or `cargo test -- --test-threads=1`):
///
///   ```no_run
///   let before = heapprof::stats();
///   my_crate::parallel_sort(&mut vec![3, 1, 2]);
///   let after = heapprof::stats();
///   let allocated = after.allocated_bytes - before.allocated_bytes;
///   let grown = after.live_bytes() as i64 - before.live_bytes() as i64;
///   # mod my_crate { pub fn parallel_sort(_: &mut Vec<i32>) {} }
///   ```
/// * [`Measured::peak_bytes`] is exact as well unless `f` frees blocks
///   allocated before it (then a lower bound, see the field): while `f`
///   runs, every allocation of this thread takes heapprof's slow path (about
///   `BENCHMARKS.md`'s "inside measure" cost instead of a counter bump);
///   other threads' allocations cost what they always do.
/// * Sampling goes on as without the measure; samples of this thread in
///   the window are kept by site, and the assertions' messages list them.
/// * Calls nest: an inner measure counts its closure, and the outer one
///   counts everything, the inner closure included.
/// * For a future, use [`measure_future`]: around `block_on`, a measure
///   counts every task the runtime polls on this thread meanwhile.
/// * If `f` panics, the thread is left as it was before the call.
/// * If heapprof is not the `#[global_allocator]`, every count is zero;
///   the assertions then panic rather than pass (unless another
///   `Profiler`, one called directly, has allocated: then they count only
///   what went through it).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Measured) {
    let window = Window::open();
    let result = f();
    (result, window.close())
}

/// What [`measure`] counted: exact numbers for the calling thread's
/// allocations and frees while the closure ran.
///
/// A `realloc` counts as the free of the old block and the allocation of
/// the new one. Bytes are the sizes the program asked for.
pub struct Measured {
    /// Blocks allocated.
    pub allocations: u64,
    /// Bytes of those blocks.
    pub allocated_bytes: u64,
    /// Blocks freed (allocated in the window or before it).
    pub deallocations: u64,
    /// Bytes of those blocks.
    pub freed_bytes: u64,
    /// The most memory the call held at once: the most the thread's live
    /// bytes rose, while it ran, above their lowest point before (where
    /// they stood when the window opened, or lower if the call had freed
    /// older blocks by then). Frees of blocks allocated before the call
    /// do not hide a temporary it allocates after them. Exact when the
    /// call frees no older block; otherwise the call's own blocks held at
    /// least this much at one time. A `realloc` counts by its result, not
    /// the old and new blocks together. At least
    /// [`net_bytes`](Measured::net_bytes), and never below zero.
    pub peak_bytes: u64,
    /// The lowest and highest live bytes of the thread in the window, at
    /// its allocations, less those at its start ([`Measured::absorb`]).
    lowest: i64,
    highest: i64,
    /// The thread's samples in the window, by site (heapprof's memory).
    sites: Vec<SiteTally>,
    /// Whether a site was left out of `sites` for lack of memory.
    sites_incomplete: bool,
    /// The sample rate when the window closed.
    rate: usize,
    elapsed: Duration,
}

impl Measured {
    /// The change in live bytes: allocated minus freed (negative when the
    /// call freed more than it allocated).
    pub fn net_bytes(&self) -> i64 {
        self.allocated_bytes.wrapping_sub(self.freed_bytes) as i64
    }

    /// Panics, with the numbers and the sampled sites, if the call made
    /// more than `max` allocations.
    #[track_caller]
    pub fn assert_allocations_at_most(&self, max: u64) {
        if self.allocations > max {
            self.fail(
                &format!(
                    "{}, more than the {max} allowed",
                    Count(self.allocations, "allocation")
                ),
                Order::Allocations,
            );
        }
        self.check_installed("allocations");
    }

    /// Panics, with the numbers and the sampled sites, if the call held
    /// more than `max_bytes` at once ([`Measured::peak_bytes`]).
    #[track_caller]
    pub fn assert_peak_at_most(&self, max_bytes: u64) {
        if self.peak_bytes > max_bytes {
            self.fail(
                &format!(
                    "peak of {} bytes, more than the {max_bytes} allowed",
                    self.peak_bytes
                ),
                Order::Bytes,
            );
        }
        self.check_installed("the peak");
    }

    /// Panics, with the numbers and the sampled sites that still hold
    /// memory, if the call left live memory behind: if it allocated more
    /// bytes than it freed ([`Measured::net_bytes`] above zero).
    ///
    /// Every free counts, a block allocated before the call or by another
    /// thread too, so that a call that replaces a value passes; a call
    /// that drops what other threads allocated (a reply from a spawned
    /// task) may pass while it leaks: check that one with
    /// [`assert_no_leak`], whose frees count only for blocks its calls
    /// allocated.
    #[track_caller]
    pub fn assert_no_growth(&self) {
        if self.net_bytes() > 0 {
            self.fail(
                &format!("live memory grew by {} bytes", self.net_bytes()),
                Order::Live,
            );
        }
        self.check_installed("growth");
    }

    /// An assertion that passed because nothing was counted must not pass
    /// when heapprof is not the global allocator.
    #[track_caller]
    fn check_installed(&self, what: &str) {
        if let Err(e) = output::check_installed() {
            panic!("heapprof: cannot check {what}: {e}");
        }
    }

    #[track_caller]
    fn fail(&self, what: &str, order: Order) -> ! {
        let report = self.report(order);
        // The message is the program's: whoever catches the panic frees
        // it. The report, heapprof's, is freed inside the profiler.
        let message = format!("heapprof: {what}\n{report}");
        reentry::Inside::enter_for(|| drop(report));
        std::panic::panic_any(message)
    }

    /// The numbers, then the sampled sites in `order`.
    fn report(&self, order: Order) -> String {
        let _inside = reentry::Inside::enter();
        let mut out = format!("  measured: {self} (in {:.3?})\n", self.elapsed);
        out.push_str(&self.sites_report(order));
        out
    }

    /// The thread's samples in the window, symbolized, the top ones first.
    /// Inside the profiler.
    fn sites_report(&self, order: Order) -> String {
        if self.sites.is_empty() {
            return match self.rate {
                0 => "  no sites: sampling is off (sample rate 0); \
                      heapprof::set_sample_rate(1) records every allocation's site\n"
                    .into(),
                1 => "  no sites: nothing of this thread was sampled in the window\n".into(),
                rate => format!(
                    "  no sites: none of this window's allocations was sampled (about one per \
                     {rate} bytes); heapprof::set_sample_rate(1) records every allocation's site\n"
                ),
            };
        }
        let snapshot = self.snapshot();
        // Sites that show the same frames (one call site unrolled into
        // several return addresses, or stacks apart only below the frames
        // shown) are one row.
        let mut rows: Vec<Row> = Vec::new();
        let mut row_of: HashMap<String, usize> = HashMap::new();
        for s in snapshot.sites() {
            let names: Vec<&str> = s
                .frames
                .iter()
                .take(FRAMES_SHOWN)
                .map(|f| f.function.as_str())
                .collect();
            // The overflow site shows its own frame, the name it has in
            // profiles; no frames at all is a stack trimmed to nothing.
            let shown = match names.is_empty() {
                true => "[a stack with no frames]".to_owned(),
                false => names.join(" < "),
            };
            let i = *row_of.entry(shown.clone()).or_insert_with(|| {
                rows.push(Row {
                    shown,
                    ..Row::default()
                });
                rows.len() - 1
            });
            let row = &mut rows[i];
            row.allocs = row.allocs.saturating_add(s.alloc_objects);
            row.bytes = row.bytes.saturating_add(s.alloc_bytes);
            row.live = row.live.saturating_add(s.inuse_bytes);
        }
        rows.sort_by_key(|r| {
            std::cmp::Reverse(match order {
                Order::Allocations => (r.allocs, r.bytes),
                Order::Bytes => (r.bytes, r.live),
                Order::Live => (r.live, r.bytes),
            })
        });
        let exactness = match self.rate {
            1 => "every allocation sampled: exact".to_owned(),
            rate => format!("sampled about once per {rate} bytes: estimates"),
        };
        let mut out = format!(
            "  this thread's sampled sites in the window ({exactness}):\n  {:>10} {:>12} {:>12}  site\n",
            "allocs", "bytes", "live bytes"
        );
        for r in rows.iter().take(TOP_SITES) {
            out.push_str(&format!(
                "  {:>10} {:>12} {:>12}  {}\n",
                r.allocs, r.bytes, r.live, r.shown
            ));
        }
        if rows.len() > TOP_SITES {
            out.push_str(&format!("  … and {} more rows\n", rows.len() - TOP_SITES));
        }
        if self.sites_incomplete {
            out.push_str("  (some sites were left out: no memory to keep them)\n");
        }
        out
    }

    /// The window's samples as a snapshot (a delta of this thread's sites).
    fn snapshot(&self) -> Snapshot {
        let _inside = reentry::Inside::enter();
        let ids: Vec<(u32, u64)> = self.sites.iter().map(|t| (t.site, t.serial)).collect();
        let copies = sites::copies_of(&ids, |id, serial| {
            self.sites
                .iter()
                .find(|t| t.site == id && t.serial == serial)
                .map_or_else(sites::SiteCounts::default, |t| t.counts)
        });
        output::snapshot::snapshot_of(Source::Delta {
            sites: copies,
            span: self.elapsed,
        })
    }
}

/// How the sites of a failure are ordered: by what the assertion checks.
#[derive(Clone, Copy)]
enum Order {
    Allocations,
    Bytes,
    Live,
}

/// Sites a window has room for when it opens. Samples of more sites grow
/// the room on the slow path. The room is an allocation of heapprof's own
/// and uses up sampling points as any allocation does, so the samples
/// drawn inside a window are the ones drawn without it, moved by that
/// reservation (and by any growth past this many sites).
const TALLY_CAPACITY: usize = 16;

/// One row of an assertion's list of sites: the frames it shows, and the
/// sums of the sites that show them.
#[derive(Default)]
struct Row {
    shown: String,
    allocs: i64,
    bytes: i64,
    live: i64,
}

/// Rows an assertion's message lists.
const TOP_SITES: usize = 10;
/// Frames of each site it names, leaf first.
const FRAMES_SHOWN: usize = 3;

/// `3 allocations (1.2 KiB = 1240 B), 2 frees (1000 B), net +240 B, peak
/// 1.1 KiB = 1140 B`: past 1 KiB a byte count also has its exact value.
impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}), {} ({}), net {}, peak {}",
            Count(self.allocations, "allocation"),
            Bytes(self.allocated_bytes),
            Count(self.deallocations, "free"),
            Bytes(self.freed_bytes),
            Net(self.net_bytes()),
            Bytes(self.peak_bytes),
        )
    }
}

impl fmt::Debug for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Measured")
            .field("allocations", &self.allocations)
            .field("allocated_bytes", &self.allocated_bytes)
            .field("deallocations", &self.deallocations)
            .field("freed_bytes", &self.freed_bytes)
            .field("peak_bytes", &self.peak_bytes)
            .field("sampled_sites", &self.sites.len())
            .finish()
    }
}

/// Its memory is heapprof's, allocated and freed inside the profiler, so
/// that counts taken around a copy leave it out.
impl Clone for Measured {
    fn clone(&self) -> Self {
        let _inside = reentry::Inside::enter();
        Measured {
            sites: self.sites.clone(),
            ..*self
        }
    }
}

impl Measured {
    /// Adds what a later window on the same work measured (the next poll
    /// of a future, `future.rs`): counts and sites add up, and the peak is
    /// the highest of the two windows' and of the later one's highest
    /// point over this one's lowest, the later window's marks counted from
    /// where this one's net left the live bytes.
    fn absorb(&mut self, later: Measured) {
        let net = self.net_bytes();
        let across = net
            .saturating_add(later.highest)
            .saturating_sub(self.lowest)
            .max(0) as u64;
        self.peak_bytes = self.peak_bytes.max(later.peak_bytes).max(across);
        self.lowest = self.lowest.min(net.saturating_add(later.lowest));
        self.highest = self.highest.max(net.saturating_add(later.highest));
        self.allocations = self.allocations.wrapping_add(later.allocations);
        self.allocated_bytes = self.allocated_bytes.wrapping_add(later.allocated_bytes);
        self.deallocations = self.deallocations.wrapping_add(later.deallocations);
        self.freed_bytes = self.freed_bytes.wrapping_add(later.freed_bytes);
        let _inside = reentry::Inside::enter();
        let whole = add_tallies(&mut self.sites, &later.sites);
        self.sites_incomplete |= later.sites_incomplete || !whole;
        self.rate = later.rate;
        self.elapsed += later.elapsed;
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        let _inside = reentry::Inside::enter();
        drop(std::mem::take(&mut self.sites));
    }
}

/// A byte count as people read it: `512 B`, `1.5 KiB = 1536 B`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        let mut value = n as f64 / 1024.0;
        let mut unit = 0;
        // The next unit from where the value would print as 1024.0.
        while (value * 10.0).round() >= 10240.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {} = {n} B", UNITS[unit])
    }
}

/// A count of things named in the singular, `s` added unless it is one:
/// `1 allocation`, `3 frees`.
struct Count(u64, &'static str);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} {}{plural}", self.0, self.1)
    }
}

/// A signed change in bytes, its sign on both of [`Bytes`]'s figures:
/// `+240 B`, `-1.5 KiB = -1536 B`.
struct Net(i64);

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 >= 0 { "+" } else { "-" };
        let text = Bytes(self.0.unsigned_abs()).to_string();
        write!(f, "{sign}{}", text.replace("= ", &format!("= {sign}")))
    }
}

/// An open measure on this thread, closed by [`Window::close`], or, if the
/// closure panics, by its drop.
struct Window {
    start: Counts,
    started: Instant,
    /// False for a window opened inside another one.
    outermost: bool,
    /// The enclosing window's marks and tallies, set aside while this one
    /// is open (nothing for the outermost).
    outer_marks: Marks,
    outer_sites: Vec<SiteTally>,
    outer_incomplete: bool,
    closed: bool,
}

/// This thread's program counts (heapprof's own left out).
fn thread_counts() -> Counts {
    thread::with(|l| l.counters.read()).unwrap_or_default()
}

fn live(c: Counts) -> u64 {
    c.allocated_bytes.wrapping_sub(c.freed_bytes)
}

impl Window {
    fn open() -> Window {
        let outermost = countdown::hold_aside();
        let tallies = {
            let _inside = reentry::Inside::enter();
            let mut tallies = Vec::new();
            if crate::sample::known_rate() != Some(0) {
                let _ = tallies.try_reserve_exact(TALLY_CAPACITY);
            }
            tallies
        };
        let start = thread_counts();
        let (outer_marks, (outer_sites, outer_incomplete)) = thread::with(|l| {
            let marks = l.measure.marks();
            l.measure.set_marks(Marks::at(live(start)));
            let outer = l.measure.take_tallies();
            l.measure.set_tallies(tallies, false);
            (marks, outer)
        })
        .unwrap_or((Marks::at(0), Default::default()));
        Window {
            start,
            started: Instant::now(),
            outermost,
            outer_marks,
            outer_sites,
            outer_incomplete,
            closed: false,
        }
    }

    fn close(mut self) -> Measured {
        self.end()
    }

    /// Closes the window: the counts since it opened, and the thread as an
    /// enclosing window (or no window) expects it.
    fn end(&mut self) -> Measured {
        self.closed = true;
        let elapsed = self.started.elapsed();
        let end = thread_counts();
        let start_live = live(self.start);
        let (marks, (sites, incomplete)) =
            thread::with(|l| (l.measure.marks(), l.measure.take_tallies()))
                .unwrap_or((Marks::at(start_live), Default::default()));
        let inside = reentry::Inside::enter();
        let diff = end.minus(self.start);
        let peak = marks.rise_at_end(live(end));
        if self.outermost {
            drop(std::mem::take(&mut self.outer_sites));
            countdown::put_back();
        } else {
            // The enclosing window saw all this window saw.
            let mut outer = std::mem::take(&mut self.outer_sites);
            let outer_incomplete =
                !add_tallies(&mut outer, &sites) || self.outer_incomplete || incomplete;
            thread::with(|l| {
                let mut outer_marks = self.outer_marks;
                outer_marks.absorb_inner(marks);
                l.measure.set_marks(outer_marks);
                l.measure.set_tallies(outer, outer_incomplete);
            });
        }
        drop(inside);
        if self.outermost {
            // Counts of a thread outside the registry wait for the window
            // to close (`registry::flush_unlisted`): passed on now.
            registry::flush_unlisted();
        }
        Measured {
            allocations: diff.allocations,
            allocated_bytes: diff.allocated_bytes,
            deallocations: diff.deallocations,
            freed_bytes: diff.freed_bytes,
            peak_bytes: peak,
            lowest: marks.low.wrapping_sub(start_live) as i64,
            highest: marks.high.wrapping_sub(start_live) as i64,
            sites,
            sites_incomplete: incomplete,
            rate: record::countdown::rate(),
            elapsed,
        }
    }
}

/// Adds `from`'s tallies to `into`'s, site by site. False if a site was
/// left out for lack of memory. Inside the profiler.
fn add_tallies(into: &mut Vec<SiteTally>, from: &[SiteTally]) -> bool {
    let mut whole = true;
    for t in from {
        match into
            .iter()
            .position(|o| o.site == t.site && o.serial == t.serial)
        {
            Some(i) => into[i].counts = into[i].counts.plus(&t.counts),
            None if into.try_reserve(1).is_ok() => into.push(*t),
            None => whole = false,
        }
    }
    whole
}

impl Drop for Window {
    fn drop(&mut self) {
        if !self.closed {
            // The closure panicked: the thread goes back to how it was.
            drop(self.end());
        }
    }
}

// `assert_no_leak`'s docs give the sampled blocks that always move.
const _: () = assert!(
    record::blocks::PAGE_ALIGN_MIN_RATE == 64 * 1024
        && record::blocks::LARGE == 64 * 1024
        && crate::config::DEFAULT_SAMPLE_RATE == 512 * 1024
);

/// Panics if `f` leaks: after `warmups` calls, `iterations` more calls
/// must leave the calling thread's live memory no larger than it was
/// before them.
///
/// Growth is what the `iterations` calls taken together (each call's
/// result dropped) allocated on the calling thread, less what they freed
/// there of blocks that thread allocated since `assert_no_leak` began
/// (warm-up calls included), exact. Above zero is a leak. So:
///
/// * memory a call allocates once and keeps (a lazily built cache, a
///   buffer that reaches its size) is fine if it happens in the warm-up
///   calls; give as many as it takes to reach the steady state;
/// * memory freed later in the measured calls offsets memory allocated
///   earlier in them or in the warm-up calls, so a call may hold memory
///   that the next one frees;
/// * freeing a block allocated before `assert_no_leak` began, or by
///   another thread, offsets nothing: a call that drops a reply a worker
///   thread allocated (`block_on` of a spawned task) does not hide a leak.
///   A call that replaces a value set up before `assert_no_leak` needs a
///   warm-up call, after which it frees what an earlier call allocated.
///   A block of the calls that another thread resized in place (a worker
///   that appends to a buffer it was sent, then sends it back) is theirs
///   up to the size they allocated: what it grew by offsets nothing, and
///   what it shrank by counts as freed. A resize that moves the block is
///   the other thread freeing it (below), and at sample rates from
///   64 KiB (the default is 512 KiB) a block heapprof sampled, if no
///   larger than that, always moves: check such a worker under
///   [`exact_sampling`](crate::exact_sampling), where blocks keep their
///   place;
/// * what other threads allocate is not counted, but a block the calls
///   allocate and hand to another thread counts as held even after that
///   thread frees it (see [`measure`]): a call that sends owned values to
///   a consumer thread, or spawns one (its handle and closure), shows
///   growth; check those with a [`stats()`](crate::stats) delta in a test
///   that runs alone, taken after joining the threads' handles
///   (`std::thread::scope` can return while its threads still free their
///   thread-locals). A task spawned on a multi-thread runtime is such a
///   block: the calling thread allocates it and whichever thread drops it
///   last frees it, so `rt.block_on(…)` of a call that spawns shows growth
///   in some runs; on a `current_thread` runtime the task stays on the
///   calling thread. So do std's `mpsc::channel` (the sending side
///   allocates a block every few dozen messages, which the receiving side
///   frees; a `Mutex` and `Condvar` hand-off allocates nothing) and work
///   submitted to a thread pool from outside it (rayon's `par_iter` from
///   a test's thread);
/// * the other way round, the address of a block the calls handed to
///   another thread that freed it can come back in a block that thread
///   allocates and hands back (a reply of the same size); the calls' free
///   of that block then counts as theirs, and hides up to its size of a
///   leak. Warm-up calls that send blocks off to be dropped, and measured
///   calls that send fewer, can hide a leak so.
///
/// Every allocation and free of the calling thread takes heapprof's slow
/// path while it runs, and heapprof keeps the address and size of each
/// block the calls allocated and still hold, in memory of its own that neither the
/// program's counts nor
/// [`Stats::profiler_bytes`](crate::Stats::profiler_bytes) include. A
/// call of `assert_no_leak` inside `f` checks with
/// [`Measured::net_bytes`] only.
///
/// The message gives the numbers, the growth per call, and the sites of
/// this thread's samples in the measured calls, those still holding
/// memory first (at sample rate 1, every allocation is a sample); when
/// other threads freed blocks during the calls, it adds the caveat about
/// blocks handed to them.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
///
/// #[test]
/// fn handle_request_does_not_leak() {
///     heapprof::assert_no_leak(2, 100, || my_crate::handle_request("GET /"));
/// }
/// # mod my_crate { pub fn handle_request(_: &str) {} }
/// ```
///
/// # Panics
///
/// On a leak; if `iterations` is 0 (nothing would be checked); and if
/// heapprof is not the `#[global_allocator]`.
#[track_caller]
pub fn assert_no_leak<R>(warmups: usize, iterations: usize, mut f: impl FnMut() -> R) {
    assert!(
        iterations > 0,
        "heapprof::assert_no_leak: iterations is 0, so nothing would be checked"
    );
    let tracking = Tracking::start();
    for _ in 0..warmups {
        drop(f());
    }
    let (others_before, shrunk_before) = tracking.others_freed_bytes();
    let frees_before = crate::support::registry::totals().deallocations;
    let ((), m) = measure(|| {
        for _ in 0..iterations {
            drop(f());
        }
    });
    let (others_after, shrunk_after) = tracking.others_freed_bytes();
    let others = others_after.wrapping_sub(others_before);
    let shrunk = shrunk_after.wrapping_sub(shrunk_before);
    // Frees of other threads from the calls' start to this read (a block
    // handed over and freed after the read is not among them).
    let other_threads_freed = crate::support::registry::totals()
        .deallocations
        .saturating_sub(frees_before)
        > m.deallocations;
    let incomplete = tracking.incomplete();
    let held = tracking.held();
    drop(tracking);
    let grown = m
        .net_bytes()
        .wrapping_add(others as i64)
        .wrapping_sub(shrunk as i64);
    if grown > 0 {
        let mut what = format!(
            "leak: live memory grew by {grown} bytes over {iterations} calls (about {:.1} \
             bytes per call), after {warmups} warm-up calls",
            grown as f64 / iterations as f64
        );
        if others > 0 {
            what.push_str(&format!(
                "; the calls also freed {others} bytes of blocks allocated before \
                 assert_no_leak began or on other threads, which offset nothing \
                 (a warm-up call lets a call free what an earlier one allocated)"
            ));
        }
        if warmups == 0 {
            what.push_str(
                "; with no warm-up calls, memory the first call builds once and keeps (a \
                 cache, a OnceLock or thread-local first used in the calls) counts too: give \
                 assert_no_leak a warm-up call or more",
            );
        }
        if incomplete {
            what.push_str(
                "; heapprof had no memory to note some blocks, whose frees count as \
                 such frees too",
            );
        } else if let Some(held) = held.filter(|&held| held < iterations) {
            // Growth in steps: one block per call or more is the usual leak.
            what.push_str(&format!(
                "; the growth is held in {}, fewer than the calls, as a buffer that \
                 grows in steps holds it (a Vec or String that doubles, or the buffer in which \
                 `cargo test` keeps a test's captured output, which printing in the calls \
                 fills unless the test runs with --nocapture), or as blocks handed to other \
                 threads that some calls got back and others did not",
                Count(held as u64, "block")
            ));
        }
        if other_threads_freed {
            // Only then can a block the calls handed over have been freed
            // elsewhere and still count as held.
            what.push_str(
                "; other threads freed blocks meanwhile, and a block the calls hand to \
                 another thread counts as held even after that thread frees it, so a call \
                 that spawns a thread, sends values to one, or spawns a task on a \
                 multi-thread runtime (use a current_thread runtime) shows growth (see \
                 assert_no_leak's docs)",
            );
        }
        m.fail(&what, Order::Live);
    }
    m.check_installed("for leaks");
}

/// The calling thread's blocks, followed from [`Tracking::start`] until
/// the guard drops (`record::tracked::Tracked`): [`assert_no_leak`] tells
/// the frees of blocks its calls allocated from the frees of others with
/// it. While it lives, a measure window holds the thread's countdown at
/// zero, so every allocation reaches the slow path, and the thread's free
/// filter's mask is 0, so every free does too.
struct Tracking {
    /// The set this guard installed, or null (another `assert_no_leak`
    /// on this thread already tracks, or the thread-local is gone).
    tracked: *mut record::tracked::Tracked,
    /// Whether the thread's mask copy was listed, to list it again.
    mask_was_listed: bool,
    window: Option<Window>,
}

impl Tracking {
    fn start() -> Tracking {
        let free = thread::with(|l| l.measure.tracked().is_null()).unwrap_or(false);
        if !free {
            return Tracking {
                tracked: std::ptr::null_mut(),
                mask_was_listed: false,
                window: None,
            };
        }
        let window = Window::open();
        let tracked = {
            let _inside = reentry::Inside::enter();
            Box::into_raw(Box::new(record::tracked::Tracked::new()))
        };
        thread::with(|l| l.measure.set_tracked(tracked.cast()));
        let mask_was_listed = {
            let _inside = reentry::Inside::enter();
            registry::suspend_mask_copy()
        };
        Tracking {
            tracked,
            mask_was_listed,
            window: Some(window),
        }
    }

    /// Bytes the thread has freed of blocks not allocated since the start,
    /// and bytes of those blocks that other threads freed by shrinking
    /// them (`record::tracked::Tracked`'s two sums).
    fn others_freed_bytes(&self) -> (u64, u64) {
        // SAFETY: a non-null `tracked` is the set this guard owns; the
        // thread is outside the profiler here, so no hook is using it.
        unsafe { self.tracked.as_ref() }.map_or((0, 0), |t| (t.others_freed_bytes, t.shrunk_bytes))
    }

    /// How many blocks allocated since the start are still held; `None`
    /// where this guard follows none.
    fn held(&self) -> Option<usize> {
        // SAFETY: as in `others_freed_bytes`.
        unsafe { self.tracked.as_ref() }.map(|t| t.held())
    }

    /// Whether some block went unnoted for lack of memory.
    fn incomplete(&self) -> bool {
        // SAFETY: as in `others_freed_bytes`.
        unsafe { self.tracked.as_ref() }.is_some_and(|t| t.incomplete)
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        if self.tracked.is_null() {
            return;
        }
        thread::with(|l| l.measure.set_tracked(std::ptr::null_mut()));
        let inside = reentry::Inside::enter();
        if self.mask_was_listed {
            registry::resume_mask_copy();
        }
        // SAFETY: `start` made the set with `Box::into_raw`, and the hooks
        // no longer reach it (the thread's pointer is null).
        drop(unsafe { Box::from_raw(self.tracked) });
        drop(inside);
        drop(self.window.take().map(Window::close));
    }
}

#[cfg(test)]
mod tests {
    use super::Bytes;

    /// A count just below a unit's 1024 prints in the next unit, never as
    /// 1024.0 of the one below.
    #[test]
    fn bytes_never_print_as_1024_of_a_unit() {
        let shown = |n: u64| Bytes(n).to_string();
        assert_eq!(shown(1023), "1023 B");
        assert_eq!(shown(1536), "1.5 KiB = 1536 B");
        assert_eq!(shown(1_048_524), "1023.9 KiB = 1048524 B");
        assert_eq!(shown(1_048_552), "1.0 MiB = 1048552 B");
        assert_eq!(shown((1 << 30) - 1), "1.0 GiB = 1073741823 B");
        assert_eq!(shown(u64::MAX), "16777216.0 TiB = 18446744073709551615 B");
    }
}
