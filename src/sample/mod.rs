//! When to sample, and what a sample stands for.
//!
//! # The model
//!
//! Think of every byte a thread allocates as laid end to end on a line.
//! Sampling drops points on that line as a Poisson process with rate
//! `1/R` per byte, where `R` is the sample rate (mean bytes between
//! samples, 512 KiB by default). An allocation is *sampled* when at least
//! one point falls inside its bytes.
//!
//! Gaps between points of a Poisson process are exponentially distributed
//! with mean `R`, so each thread keeps a countdown of bytes until the next
//! point, drawn as `T = -R · ln(U)` with `U` uniform in (0, 1]. The fast path
//! subtracts each allocation's size from the countdown; an allocation of `s`
//! bytes that does not fit in what is left contains a point and is sampled.
//!
//! The fast path's counter holds at most 1 MiB of the countdown, the rest
//! waiting on the slow path ([`MAX_COUNTDOWN`]): an allocation that big
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
//! When the rate changes, a running thread finishes the countdown it drew
//! at the old rate, and the allocation that ends it was sampled with the
//! old rate's probability: its weight uses the rate the countdown was drawn
//! at, not the current one. (Weighting it at the new rate counted, after a
//! switch from 1 to 512 KiB, one certain 16-byte sample as 32768
//! allocations.) Countdowns that are not draws (zero after
//! [`set_rate`], the fixed countdown while sampling is off) end in a
//! certain sample, which counts once.
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
//! apply it per sample, because our buckets are keyed by stack alone and can
//! hold mixed sizes.
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
//! The countdown and the generator are thread-local, so the fast path
//! touches no shared memory. rand's `SmallRng` cannot be built in a `const`
//! initializer, so each thread holds it as `Option<SmallRng>` (`None` until
//! the thread's first slow path, which seeds it). The thread-local is
//! const-initialized and has no destructor: the fast path is a plain
//! `fs:`-relative load, subtract and branch.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::thread::{LOCAL, Local};
use crate::{support::config, support::reentry};

/// The slow path's per-thread state. The countdown itself, bytes this
/// thread may still allocate before the next sample, is `Counters::countdown`
/// (`counters.rs`), which also derives the allocated bytes from it. It is
/// zero on a new thread, so the thread's first allocation takes the slow
/// path and seeds the generator.
pub(crate) struct ThreadSampler {
    /// The rate `countdown` was drawn at: what a sample that ends it stands
    /// for. 1 for a countdown that is not a draw: its end records one
    /// allocation with certainty, so with weight 1.
    drawn_at: Cell<usize>,
    rng: Cell<Option<SmallRng>>,
    /// The part of the countdown past [`MAX_COUNTDOWN`], held back here.
    beyond: Cell<usize>,
}

impl ThreadSampler {
    pub(crate) const fn new() -> Self {
        ThreadSampler {
            drawn_at: Cell::new(1),
            rng: Cell::new(None),
            beyond: Cell::new(0),
        }
    }
}

/// The most of a countdown the fast path's counter holds; the rest waits
/// in `ThreadSampler::beyond`. So every allocation of `MAX_COUNTDOWN` bytes
/// or more runs the counter out and takes the slow path, which either
/// finds it covered by the held-back bytes ([`continue_countdown`]: not a
/// sample) or samples it, and in both cases sees whether the inner
/// allocator failed: a failed `try_reserve` of an untrusted length must not
/// count terabytes as allocated for the rest of the run. Allocations this
/// big cost microseconds in the inner allocator (fresh pages), so the trip
/// costs nothing measurable; smaller allocations fail only when memory is
/// exhausted, and the fast path, which has no check after the inner call
/// (that would cost a stack frame), counts those.
pub(crate) const MAX_COUNTDOWN: usize = 1 << 20;

/// Starts a countdown of `bytes`, the part past [`MAX_COUNTDOWN`] held
/// back.
fn start_countdown(l: &Local, bytes: usize) {
    let now = bytes.min(MAX_COUNTDOWN);
    l.counters.reset_countdown(now);
    l.sampler.beyond.set(bytes - now);
}

/// For an allocation of `size` that ran the counter out: whether the
/// countdown, with its held-back part, covers it after all. If so it is
/// charged, exactly as the fast path would have, and is not a sample.
fn continue_countdown(l: &Local, size: usize) -> bool {
    let beyond = l.sampler.beyond.get();
    if beyond == 0 {
        return false;
    }
    // What was left before the fast path subtracted `size` (it wraps).
    let left = l.counters.countdown.load(Relaxed).wrapping_add(size);
    let total = left.saturating_add(beyond);
    if size < total {
        start_countdown(l, total - size);
        true
    } else {
        false
    }
}

/// This thread's countdown (`l.counters`) and sampler (`l.sampler`), in
/// the fast path's thread-local (`local.rs`).
#[inline(always)]
fn with_thread<R>(f: impl FnOnce(&Local) -> R) -> Result<R, std::thread::AccessError> {
    LOCAL.try_with(f)
}

/// Marks "not read from the environment yet".
const RATE_UNSET: usize = usize::MAX;

/// The largest rate: every other value is a rate, and this one is so far
/// above any heap that it samples nothing all the same. A larger setting
/// (`set_rate`, `HEAPPROF_SAMPLE_RATE`) is lowered to it, so that it is
/// never taken for [`RATE_UNSET`].
pub(crate) const MAX_RATE: usize = RATE_UNSET - 1;

/// A thread's countdown while sampling is off (rate 0). Not "never": the
/// rate is only read on the slow path, so a thread parked at "never" would
/// not see sampling turned back on for the rest of its life. With this,
/// a running thread picks up a new rate within 512 KiB of allocation, as it
/// would from the default rate, for one short trip to the slow path per
/// 512 KiB while off.
const OFF_COUNTDOWN: usize = 512 * 1024;
static RATE: AtomicUsize = AtomicUsize::new(RATE_UNSET);

/// A seed from `set_seed`; else `HEAPPROF_SEED`; else the clock and the
/// thread's address. (Touched only when a thread seeds its generator.)
static SEED: AtomicU64 = AtomicU64::new(0);
static SEEDED: AtomicBool = AtomicBool::new(false);
static THREAD_ORDINAL: AtomicU64 = AtomicU64::new(0);

/// The current sample rate in bytes.
pub(crate) fn rate() -> usize {
    match RATE.load(Relaxed) {
        RATE_UNSET => {
            let from_env = config::get().sample_rate;
            // Another thread, or `set_rate`, may have got there first.
            let _ = RATE.compare_exchange(RATE_UNSET, from_env, Relaxed, Relaxed);
            RATE.load(Relaxed)
        }
        rate => rate,
    }
}

/// Changes the rate. The calling thread starts a fresh countdown at once;
/// other threads take the new rate at their next sample (within
/// [`OFF_COUNTDOWN`] bytes if sampling was off), and new threads from their
/// first allocation.
pub(crate) fn set_rate(bytes: usize) {
    RATE.store(bytes.min(MAX_RATE), Relaxed);
    let _ = with_thread(|l| {
        start_countdown(l, 0);
        l.sampler.drawn_at.set(1);
    });
}

/// Seeds the generators of the calling thread and of threads that draw
/// their first threshold from now on.
pub(crate) fn set_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    SEEDED.store(true, Release);
    let _ = with_thread(|l| {
        l.sampler.rng.set(None);
        start_countdown(l, 0);
    });
}

/// The fast path: charges `size` bytes to this thread's countdown. Returns
/// `true` when the countdown has run out, and the caller must ask
/// [`on_countdown_expired`] whether to record the allocation.
#[inline(always)]
pub(crate) fn countdown_expired(size: usize) -> bool {
    let size = opaque(size);
    with_thread(|l| {
        // Stored whether or not it ran out: the same four instructions as
        // a store on the not-expired side only, and the slow path no longer
        // has to charge the expiring allocation separately. An expired
        // countdown may wrap below zero; the slow path zeroes it first
        // thing, keeping the bytes counted.
        let countdown = &l.counters.countdown;
        let left = countdown.load(Relaxed);
        countdown.store(left.wrapping_sub(size), Relaxed);
        left <= size
    })
    .unwrap_or(false)
}

/// `x`, through a register the optimizer cannot see into.
///
/// Inlined into a loop whose allocation sizes follow the loop counter (a
/// buffer grown by a step, sizes cycling through a table), `left - size`
/// invites LLVM's loop strength reduction to keep a second induction
/// variable for the countdown's arithmetic: more registers live across the
/// calls to the inner allocator, so spills, and about 8 more instructions
/// per allocation and free in `dev/benches/`' `threads2` (23.4 instead of 15.5,
/// counted by callgrind). Hiding where `size` came from keeps the countdown
/// a plain subtract; the price is at most a register copy, which the CPU
/// does at rename.
#[inline(always)]
fn opaque(x: usize) -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut x = x;
        // SAFETY: an empty template: the asm reads and writes no memory,
        // touches no stack or flags, and leaves the register as it was; the
        // operand only tells the compiler that `x` may have changed.
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        x
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        x
    }
}

/// The slow path, after [`countdown_expired`] returned true for an
/// allocation of `size` bytes. Returns the sample's weight if the
/// allocation is to be recorded, `None` if not (sampling is off, the
/// thread is inside the profiler, or this was the thread's first
/// allocation and it fits in the first countdown, or the countdown's
/// held-back part covers it).
#[cold]
pub(crate) fn on_countdown_expired(size: usize) -> Option<f64> {
    if with_thread(|l| continue_countdown(l, size)).unwrap_or(false) {
        return None;
    }
    // The fast path took this allocation's bytes from the countdown, which
    // may have wrapped below zero. Zero it, keeping the bytes counted, so
    // that every path below starts from an expired countdown and one that
    // leaves it alone leaves it expired.
    let _ = with_thread(|l| start_countdown(l, 0));
    let was_busy = reentry::is_busy();
    let _busy = reentry::Busy::enter();
    // Every thread's first allocation comes here (its countdown starts at
    // zero), busy or not: the moment to put its exact counters in the
    // registry, so that threads that only ever allocate inside the
    // profiler (the HTTP server's, the dump thread) are counted too.
    crate::support::registry::register_thread(!was_busy);
    if was_busy {
        inside_profiler_expired();
        return None;
    }
    let rate = rate();
    with_thread(|l| {
        let t = &l.sampler;
        if rate == 0 {
            start_countdown(l, OFF_COUNTDOWN);
            t.drawn_at.set(1);
            return None;
        }
        let mut rng = match t.rng.take() {
            Some(rng) => rng,
            None => {
                // First slow path on this thread: seed, draw the first
                // countdown and charge this allocation against it.
                let mut rng = new_thread_rng(l as *const Local as usize);
                let first = draw_countdown(&mut rng, rate);
                t.drawn_at.set(rate);
                if size < first {
                    start_countdown(l, first - size);
                    t.rng.set(Some(rng));
                    return None;
                }
                rng
            }
        };
        // A point of the process the countdown was drawn from fell
        // inside this block: it stands for what that rate says. Restart
        // from a fresh draw at the current rate, at the block's end (see
        // the module comment for why not carry over).
        let sampled_at = t.drawn_at.get();
        start_countdown(l, draw_countdown(&mut rng, rate));
        t.drawn_at.set(rate);
        t.rng.set(Some(rng));
        Some(weight(size, sampled_at))
    })
    .ok()
    .flatten()
}

/// The countdown ran out on one of the profiler's own allocations. Such
/// allocations use up points but are never recorded; user blocks are still
/// sampled with probability p(s) because the process is memoryless.
///
/// This may run inside the configuration's own initialization (reading the
/// environment allocates), so it must not ask for the configuration: it
/// uses the rate only if already known, and leaves a thread that has no
/// generator yet at a zero countdown, to be seeded by its next allocation
/// outside the profiler.
fn inside_profiler_expired() {
    let _ = with_thread(|l| {
        let t = &l.sampler;
        let rate = RATE.load(Relaxed);
        if rate == RATE_UNSET {
            return;
        }
        if let Some(mut rng) = t.rng.take() {
            let (countdown, drawn_at) = match rate {
                0 => (OFF_COUNTDOWN, 1),
                _ => (draw_countdown(&mut rng, rate), rate),
            };
            start_countdown(l, countdown);
            t.drawn_at.set(drawn_at);
            t.rng.set(Some(rng));
        }
    });
}

/// `-R · ln(U)`, U uniform in (0, 1]. `R <= 1` means "every allocation".
fn draw_countdown(rng: &mut SmallRng, rate: usize) -> usize {
    if rate <= 1 {
        return 0;
    }
    let u = 1.0 - rng.random::<f64>(); // in (0, 1]
    let t = -(rate as f64) * u.ln();
    // `as` saturates; a countdown is never meaningfully above 2^53 anyway.
    t as usize
}

/// The number of allocations one sample of `size` bytes stands for:
/// `1 / (1 - exp(-size/rate))`, computed with `exp_m1` so that small
/// `size/rate` keep their precision.
pub(crate) fn weight(size: usize, rate: usize) -> f64 {
    weight_of_bytes(size as f64, rate)
}

/// [`weight`] for a size that need not be whole: pprof applies the same
/// factor to legacy text records at their mean block size (`text.rs`).
pub(crate) fn weight_of_bytes(size: f64, rate: usize) -> f64 {
    if rate <= 1 {
        return 1.0;
    }
    let p = -(-size / rate as f64).exp_m1();
    if p > 0.0 { 1.0 / p } else { rate as f64 }
}

fn new_thread_rng(thread_addr: usize) -> SmallRng {
    // Threads get distinct streams: the seed is mixed with the order in
    // which they first sampled.
    let ordinal = THREAD_ORDINAL
        .fetch_add(1, Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let fixed = SEEDED.load(Acquire).then(|| SEED.load(Relaxed));
    let seed = match fixed.or(config::get().seed) {
        Some(seed) => seed ^ ordinal,
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (thread_addr as u64).rotate_left(32) ^ ordinal
        }
    };
    SmallRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
