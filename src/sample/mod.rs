//! When to sample, and what a sample stands for.
//!
//! # The model
//!
//! Think of every byte a thread allocates as laid end to end on a line.
//! Sampling drops points on that line as a Poisson process with rate
//! `1/R` per byte, where `R` is the sample rate (mean bytes between
//! samples, `config::DEFAULT_SAMPLE_RATE` by default). An allocation is *sampled* when at least
//! one point falls inside its bytes.
//!
//! Gaps between points of a Poisson process are exponentially distributed
//! with mean `R`, so each thread keeps a countdown of bytes until the next
//! point, drawn as `T = -R · ln(U)` with `U` uniform in (0, 1]. The fast path
//! subtracts each allocation's size from the countdown; an allocation of `s`
//! bytes that does not fit in what is left contains a point and is sampled.
//!
//! The fast path's counter holds at most [`MAX_COUNTDOWN`] bytes of the
//! countdown, the rest waiting on the slow path: an allocation that big
//! always takes the slow path, which charges it against the whole
//! countdown, so the process is unchanged, and sees whether it failed.
//!
//! After a sample the countdown restarts from a *fresh* draw, counted from
//! the end of the sampled block. The exponential distribution is memoryless,
//! so this is the same process as carrying the overshoot over, minus one
//! flaw: with carry-over, a 10 MiB block at `R` = 512 KiB would leave ~20
//! points' worth of debt and the next ~20 allocations would all be sampled,
//! whatever their size.
//!
//! When the rate changes, every running thread starts over at the new
//! rate from its next allocation: the calling thread's countdown is set to
//! zero, and so is every other thread's (`record/countdown.rs`), which
//! learns of the change from [`epoch`]. The rest of the old countdown is
//! dropped, which the process allows: it is memoryless, so a fresh draw
//! from the moment of the change is as good as the old draw's remainder.
//! The zero ends in a certain sample, which counts once. A countdown that
//! ends before its thread learns of the change ended a draw made at the
//! old rate, so the allocation that ends it was sampled with the old
//! rate's probability: its weight uses the rate the countdown was drawn
//! at, not the current one. (Weighted at the new rate, a certain 16-byte
//! sample after a switch from 1 to 512 KiB would count as 32768
//! allocations.) Other countdowns that are not draws (the fixed countdown
//! while sampling is off) also end in a certain sample.
//!
//! # Weights
//!
//! Under that process an allocation of `s` bytes is sampled with
//! probability
//!
//! ```text
//!     p(s) = 1 - exp(-s / R)
//! ```
//!
//! independently of every other allocation. Counting each sample as
//! `w = 1/p(s)` allocations (and `s · w` bytes) makes every site's estimate
//! unbiased, whatever mix of sizes it allocates: `E[sampled · w] = p · 1/p
//! = 1` per allocation. For `s ≪ R`, `w ≈ R/s` (one sample speaks for `R`
//! bytes); for `s ≫ R`, `w ≈ 1` (big blocks are always seen). Go's
//! `scaleHeapSample` applies the same factor at write time, per bucket; we
//! apply it per sample, because our sites (`record/sites.rs`) are keyed by
//! stack and label set, not by size, and can hold mixed sizes.
//!
//! The estimate of a site that allocated `B` bytes has a relative standard
//! error of about `1/sqrt(B/R)` (a Poisson count with mean `B/R`): a site
//! with 100 × R bytes is known to ±10 %, one with R bytes only to ±100 %.
//!
//! `R = 1` is special: every allocation is recorded with weight 1, so exact
//! counts can be asserted in tests. `R = 0` turns sampling off.
//!
//! # Threads and the generator
//!
//! Each thread keeps its countdown and generator (in `thread/`), so the
//! fast path touches no shared memory. This module is plain data and
//! arithmetic, plus the process-wide rate and seed: [`ThreadSampler`] is a thread's state between samples, and
//! its methods say what comes after a countdown runs out; the slow path
//! (`record/countdown.rs`) applies the answers to the thread's counters.
//! rand's `SmallRng` cannot be built in a `const` initializer, so a
//! thread holds it as `Option<SmallRng>`: `None` until its first slow
//! path, which seeds it.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    Ordering::SeqCst,
};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::config;

mod counts;
pub(crate) use counts::SiteCounts;

/// One thread's sampler state between samples. The countdown itself,
/// bytes the thread may still allocate before the next sample, is the
/// thread's `Counters::countdown` (`thread/counters.rs`), which also derives
/// the allocated bytes from it. It is zero on a new thread, so the
/// thread's first allocation takes the slow path and seeds the generator.
pub(crate) struct ThreadSampler {
    /// The rate the countdown was drawn at: what a sample that ends it
    /// stands for. 1 for a countdown that is not a draw: its end records
    /// one allocation with certainty, so with weight 1.
    drawn_at: Cell<usize>,
    rng: Cell<Option<SmallRng>>,
    /// The part of the countdown past [`MAX_COUNTDOWN`], held back here;
    /// the whole countdown on a thread whose counter stays at zero
    /// ([`ThreadSampler::hold_all`]).
    beyond: Cell<usize>,
}

/// The most of a countdown the fast path's counter holds; the rest waits
/// in [`ThreadSampler`]. So every allocation of `MAX_COUNTDOWN` bytes or
/// more runs the counter out and takes the slow path, which either finds
/// it covered by the held-back bytes ([`ThreadSampler::cover`]: not a
/// sample) or samples it, and in both cases sees whether the inner
/// allocator failed: a failed `try_reserve` of an untrusted length must not
/// count terabytes as allocated for the rest of the run. Allocations this
/// big cost microseconds in the inner allocator (fresh pages), so the trip
/// costs nothing measurable; smaller allocations fail only when memory is
/// exhausted, and the fast path, which has no check after the inner call
/// (that would cost a stack frame), counts those.
pub(crate) const MAX_COUNTDOWN: usize = 1 << 20;

/// What follows a countdown that ran out outside the profiler.
pub(crate) struct Expiry {
    /// The next countdown, whole (the caller splits it with
    /// [`ThreadSampler::hold_back`]).
    pub countdown: usize,
    /// The weight of the allocation that ran it out, if it is a sample.
    pub weight: Option<f64>,
}

impl ThreadSampler {
    pub(crate) const fn new() -> Self {
        ThreadSampler {
            drawn_at: Cell::new(1),
            rng: Cell::new(None),
            beyond: Cell::new(0),
        }
    }

    /// Splits a countdown of `bytes`: holds back the part past
    /// [`MAX_COUNTDOWN`] and returns the rest, for the fast path's counter.
    pub(crate) fn hold_back(&self, bytes: usize) -> usize {
        let now = bytes.min(MAX_COUNTDOWN);
        self.beyond.set(bytes - now);
        now
    }

    /// Holds all of a countdown of `bytes` back, for a thread whose
    /// counter stays at zero (it left the registry: every allocation of it
    /// is counted on the slow path, which runs the countdown with
    /// [`ThreadSampler::cover`]).
    pub(crate) fn hold_all(&self, bytes: usize) {
        self.beyond.set(bytes);
    }

    /// Holds `left`, what the counter had left of the countdown as it
    /// stops, back with the part held already: the whole countdown
    /// waits here from now on ([`ThreadSampler::hold_all`]).
    pub(crate) fn hold_with(&self, left: usize) {
        self.beyond.set(self.beyond.get().saturating_add(left));
    }

    /// For an allocation of `size` that ran the counter out, where `left`
    /// is what the counter held before it: the countdown to go on with
    /// (not a sample), if the held-back part covers the allocation.
    pub(crate) fn cover(&self, left: usize, size: usize) -> Option<usize> {
        let beyond = self.beyond.get();
        if beyond == 0 {
            return None;
        }
        let total = left.saturating_add(beyond);
        (size < total).then(|| total - size)
    }

    /// The countdown ran out on an allocation of `size` bytes of the
    /// program's at `rate` (0: off). `seed` gives a new generator's seed,
    /// on the thread's first expiry.
    pub(crate) fn expire(&self, size: usize, rate: usize, seed: impl FnOnce() -> u64) -> Expiry {
        if rate == 0 {
            self.drawn_at.set(1);
            return Expiry {
                countdown: OFF_COUNTDOWN,
                weight: None,
            };
        }
        let mut rng = match self.rng.take() {
            Some(rng) => rng,
            None => {
                // First expiry on this thread: seed, draw the first
                // countdown and charge this allocation against it.
                let mut rng = SmallRng::seed_from_u64(seed());
                let first = draw_countdown(&mut rng, rate);
                self.drawn_at.set(rate);
                if size < first {
                    self.rng.set(Some(rng));
                    return Expiry {
                        countdown: first - size,
                        weight: None,
                    };
                }
                rng
            }
        };
        // A point of the process the countdown was drawn from fell inside
        // this block: it stands for what that rate says. Restart from a
        // fresh draw at the current rate, at the block's end (see the
        // module comment for why not carry over).
        let sampled_at = self.drawn_at.get();
        let countdown = draw_countdown(&mut rng, rate);
        self.drawn_at.set(rate);
        self.rng.set(Some(rng));
        Expiry {
            countdown,
            weight: Some(weight(size, sampled_at)),
        }
    }

    /// The countdown ran out on one of the profiler's own allocations,
    /// which use up points but are never recorded (the program's blocks are
    /// still sampled with probability p(s): the process is memoryless).
    /// The next countdown, or `None` to leave it at zero: while the rate is
    /// not known yet (the configuration's own reading allocates) or the
    /// thread has no generator, which its next allocation outside the
    /// profiler seeds.
    pub(crate) fn expire_inside(&self, rate: Option<usize>) -> Option<usize> {
        let rate = rate?;
        let mut rng = self.rng.take()?;
        let (countdown, drawn_at) = match rate {
            0 => (OFF_COUNTDOWN, 1),
            _ => (draw_countdown(&mut rng, rate), rate),
        };
        self.drawn_at.set(drawn_at);
        self.rng.set(Some(rng));
        Some(countdown)
    }

    /// Gives the thread a generator seeded with `seed`, whatever the
    /// process's seed and the thread's start order.
    #[cfg(test)]
    pub(crate) fn seed_exactly(&self, seed: u64) {
        self.rng.set(Some(SmallRng::seed_from_u64(seed)));
    }

    /// Starts over after a rate change, or with a fresh seed: the next
    /// allocation ends the countdown (which the caller sets to 0) and counts
    /// once, with nothing held back past [`MAX_COUNTDOWN`].
    pub(crate) fn restart(&self, reseed: bool) {
        self.drawn_at.set(1);
        self.beyond.set(0);
        if reseed {
            self.rng.set(None);
        }
    }
}

/// Marks "not read from the environment yet".
const RATE_UNSET: usize = usize::MAX;
const _: () = assert!(config::MAX_RATE < RATE_UNSET);

/// A thread's countdown while sampling is off (rate 0). Not "never": a
/// rate change reaches running threads by zeroing their countdowns, which
/// it can miss (see `support::registry::nudge_other_threads`, and a
/// thread not in the registry), and the rate is only read
/// on the slow path, so a thread parked at "never" and missed would not
/// see sampling turned back on for the rest of its life. With this, it
/// does within `OFF_COUNTDOWN` bytes of allocation, for one short trip to
/// the slow path per `OFF_COUNTDOWN` bytes while off.
pub(crate) const OFF_COUNTDOWN: usize = config::DEFAULT_SAMPLE_RATE;
static RATE: AtomicUsize = AtomicUsize::new(RATE_UNSET);

/// A seed from `set_seed`; else `HEAPPROF_SEED`; else the clock and the
/// thread's address. (Touched only when a thread seeds its generator.)
static SEED: AtomicU64 = AtomicU64::new(0);
static SEEDED: AtomicBool = AtomicBool::new(false);
static THREAD_ORDINAL: AtomicU64 = AtomicU64::new(0);

/// What a profile's values are: the rate in force when its sites were
/// read, and whether a value may be other than exact: a sample recorded by
/// then stands for more than its own block ([`estimated`]), or a block the
/// profile speaks for was allocated at a rate above 1, where it may have
/// gone unsampled ([`times_set_coarse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Numbers {
    pub(crate) rate: usize,
    pub(crate) estimated: bool,
}

impl Numbers {
    /// The rate and [`estimated`] now, read after a profile's sites: the
    /// numbers of a change over a span at the rate now.
    pub(crate) fn now() -> Numbers {
        Numbers {
            rate: rate(),
            estimated: estimated(),
        }
    }

    /// The live heap's numbers now, read after a profile's sites: a block
    /// allocated while the rate was above 1 and still live may be in no
    /// sample, so the rate having been above 1 ever makes it not exact.
    pub(crate) fn now_live() -> Numbers {
        let now = Numbers::now();
        Numbers {
            estimated: now.estimated || times_set_coarse() > 0,
            ..now
        }
    }

    /// Values sampled throughout at `rate` (estimates unless it is 1).
    #[cfg(test)]
    pub(crate) fn assumed(rate: usize) -> Numbers {
        Numbers {
            rate,
            estimated: rate > 1,
        }
    }

    /// What the values are, to follow "values are" in a profile's
    /// comments and headers: what was recorded before at rate 0, exact at
    /// 1 unless earlier samples at another rate are among them, estimates
    /// otherwise.
    pub(crate) fn describe(self) -> String {
        match (self.rate, self.estimated) {
            (0, _) => "what was recorded before sampling was turned off (rate 0 now)".into(),
            (1, false) => "exact: every allocation is recorded (rate 1)".into(),
            (1, true) => "exact where recorded at rate 1, the rate now; blocks allocated \
                          while the rate was higher are estimates, or missing where no sample \
                          recorded them"
                .into(),
            (rate, _) => format!("unbiased estimates from sampling every {rate} bytes on average"),
        }
    }
}

/// Whether a sample so far stands for more than its own block (weight
/// above 1): then a profile at rate 1 is not exact throughout.
static ESTIMATED: AtomicBool = AtomicBool::new(false);

/// Notes a sample of `weight` before its site records it: a profile that
/// reads the site after it reads this too (the site's lock orders them).
pub(crate) fn note_sample(weight: f64) {
    if weight != 1.0 && !ESTIMATED.load(Relaxed) {
        ESTIMATED.store(true, Relaxed);
    }
}

/// Whether some sample recorded so far is an estimate ([`note_sample`]).
pub(crate) fn estimated() -> bool {
    ESTIMATED.load(Relaxed)
}

/// The current sample rate in bytes, read from the configuration on first
/// use (so inside the profiler only, as `config::get`).
pub(crate) fn rate() -> usize {
    match RATE.load(Acquire) {
        RATE_UNSET => {
            let from_env = config::get().sample_rate;
            // Another thread, or `set_rate`, may have got there first.
            // Counted before it is published, as `set_rate` does, and
            // taken back if another thread or `set_rate` published first.
            let off = u64::from(from_env == 0);
            let coarse = u64::from(from_env > 1);
            TURNED_OFF.fetch_add(off, Relaxed);
            SET_COARSE.fetch_add(coarse, Relaxed);
            if RATE
                .compare_exchange(RATE_UNSET, from_env, Release, Relaxed)
                .is_err()
            {
                TURNED_OFF.fetch_sub(off, Relaxed);
                SET_COARSE.fetch_sub(coarse, Relaxed);
            }
            RATE.load(Acquire)
        }
        rate => rate,
    }
}

/// The rate if it is known, without reading the configuration.
pub(crate) fn known_rate() -> Option<usize> {
    Some(RATE.load(Relaxed)).filter(|&r| r != RATE_UNSET)
}

/// How many times the rate was set: a thread whose countdown was drawn at
/// an older epoch starts over at the current rate.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// How many times sampling was turned off (rate 0 set, or read from the
/// environment): a span of time in which it grew saw allocations that no
/// profile holds.
static TURNED_OFF: AtomicU64 = AtomicU64::new(0);

/// The number of times sampling was turned off so far ([`TURNED_OFF`]):
/// at least every turn made before the rate [`rate`] last returned was
/// stored.
pub(crate) fn times_turned_off() -> u64 {
    TURNED_OFF.load(Relaxed)
}

/// How many times the rate was set above 1 (or read so from the
/// environment): a span of time in which it grew may have seen
/// allocations that no sample records, so its profile is not exact even
/// if no sample in it is an estimate.
static SET_COARSE: AtomicU64 = AtomicU64::new(0);

/// The number of times the rate was set above 1 so far ([`SET_COARSE`]),
/// ordered as [`times_turned_off`] is.
pub(crate) fn times_set_coarse() -> u64 {
    SET_COARSE.load(Relaxed)
}

/// Sets the process-wide rate and moves the [`epoch`] on; the caller
/// tells running threads (`record/countdown.rs`).
pub(crate) fn set_rate(bytes: usize) {
    if bytes == 0 {
        TURNED_OFF.fetch_add(1, Relaxed);
    }
    if bytes > 1 {
        SET_COARSE.fetch_add(1, Relaxed);
    }
    // Release, with `rate`'s acquire: a reader that sees this rate, or a
    // later one, then sees the count as of this store. So a snapshot that
    // reads a rate set back on after a turn-off reads the turn-off too.
    RATE.store(bytes.min(config::MAX_RATE), Release);
    // SeqCst: a thread that draws with the old rate and then reads the
    // epoch, and the caller, which reads that thread's countdown after
    // this, cannot both miss the other (`record::countdown::expired`).
    EPOCH.fetch_add(1, SeqCst);
}

/// The number of rate changes so far. A thread that reads it before the
/// rate sees a rate at least as new as the epoch it read.
pub(crate) fn epoch() -> u64 {
    EPOCH.load(Acquire)
}

/// Seeds the generators of threads that draw their first countdown from
/// now on.
pub(crate) fn set_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    SEEDED.store(true, Release);
}

/// The seed of a thread's generator: the fixed seed (`set_seed`, else
/// `HEAPPROF_SEED`) or, without one, the clock and `thread_addr`, mixed
/// with the order in which threads first sample, so that threads get
/// distinct streams. Inside the profiler only (it may read the
/// configuration).
pub(crate) fn thread_seed(thread_addr: usize) -> u64 {
    let ordinal = THREAD_ORDINAL
        .fetch_add(1, Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let fixed = SEEDED.load(Acquire).then(|| SEED.load(Relaxed));
    match fixed.or(config::get().seed) {
        Some(seed) => seed ^ ordinal,
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (thread_addr as u64).rotate_left(32) ^ ordinal
        }
    }
}

/// `-R · ln(U)`, U uniform in (0, 1], rounded up to a whole byte. `R <= 1`
/// means "every allocation".
///
/// Rounded up because the fast path samples when the countdown is at most
/// the allocation's size: with the point at `T` and `S` bytes allocated
/// since the draw (a whole number), `ceil(T) <= S` exactly when `T <= S`,
/// the point fell inside those bytes. Rounded down, `floor(T) <= S` holds
/// for every `T < S + 1`, as if the first block after each draw were a
/// byte longer: estimates too high at small rates (+31 % at `R` = 2 with
/// one-byte blocks, `tests/stats_unbiased.rs`).
fn draw_countdown(rng: &mut SmallRng, rate: usize) -> usize {
    if rate <= 1 {
        return 0;
    }
    let u = 1.0 - rng.random::<f64>(); // in (0, 1]
    let t = -(rate as f64) * u.ln();
    // `as` saturates; a countdown is never meaningfully above 2^53 anyway.
    t.ceil() as usize
}

/// The number of allocations one sample of `size` bytes stands for:
/// `1 / (1 - exp(-size/rate))`, computed with `exp_m1` so that small
/// `size/rate` keep their precision.
pub(crate) fn weight(size: usize, rate: usize) -> f64 {
    weight_of_bytes(size as f64, rate)
}

/// [`weight`] for a size that need not be whole: pprof applies the same
/// factor to legacy text records at their mean block size (`output/text.rs`).
pub(crate) fn weight_of_bytes(size: f64, rate: usize) -> f64 {
    if rate <= 1 {
        return 1.0;
    }
    let p = -(-size / rate as f64).exp_m1();
    if p > 0.0 { 1.0 / p } else { rate as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate docs state the defaults in words and in the configuration
    /// table; they must be these constants' values.
    #[test]
    fn the_crate_docs_state_the_defaults() {
        let docs = include_str!("../lib.rs");
        let kib = config::DEFAULT_SAMPLE_RATE / 1024;
        for stated in [
            format!(
                "| `HEAPPROF_SAMPLE_RATE` | `{}` |",
                config::DEFAULT_SAMPLE_RATE
            ),
            format!("| `HEAPPROF_MAX_SITES` | `{}` |", config::DEFAULT_MAX_SITES),
            format!(
                "| `HEAPPROF_PEAK_GROWTH` | `{}` |",
                config::DEFAULT_PEAK_GROWTH
            ),
            format!("one sample per {kib} KiB"),
            format!(
                "within {} MiB of allocation; {} KiB if sampling was off",
                super::MAX_COUNTDOWN >> 20,
                super::OFF_COUNTDOWN / 1024
            ),
            format!("A failed allocation of {} MiB", super::MAX_COUNTDOWN >> 20),
            format!("{} % by default", config::DEFAULT_PEAK_GROWTH.0),
        ] {
            assert!(docs.contains(&stated), "lib.rs does not say {stated:?}");
        }
    }

    #[test]
    fn weight_matches_the_inverse_probability() {
        let r = 512 * 1024;
        // Tiny blocks: w ≈ R/s.
        let w = weight(16, r);
        assert!((w / (r as f64 / 16.0) - 1.0).abs() < 1e-4, "{w}");
        // Blocks far above the rate are always sampled: w → 1.
        assert!((weight(100 * r, r) - 1.0).abs() < 1e-12);
        // s = R: 1 / (1 - 1/e).
        let expected = 1.0 / (1.0 - (-1.0f64).exp());
        assert!((weight(r, r) - expected).abs() < 1e-12);
        assert_eq!(weight(7, 1), 1.0);
        assert_eq!(weight(7, 0), 1.0);
    }

    #[test]
    fn countdowns_are_exponential_with_the_rate_as_mean() {
        // Mean of n exponential draws has relative standard error 1/sqrt(n):
        // n = 200_000 gives 0.22 %; 1.5 % is ~7 standard errors.
        let mut rng = SmallRng::seed_from_u64(7);
        let rate = 4096;
        let n = 200_000;
        let draws: Vec<f64> = (0..n)
            .map(|_| draw_countdown(&mut rng, rate) as f64)
            .collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean / rate as f64 - 1.0).abs() < 0.015, "mean {mean}");
        // Memorylessness check: P(T > R) = 1/e.
        let tail = draws.iter().filter(|&&t| t > rate as f64).count() as f64 / n as f64;
        assert!((tail - (-1.0f64).exp()).abs() < 0.01, "tail {tail}");
    }
}
