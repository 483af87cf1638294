//! The slow path's side of the sampling countdown: when it runs out,
//! whether the allocation is a sample and what comes next; a thread's
//! first allocation; rate and seed changes.
//!
//! The decisions are `sample::ThreadSampler`'s; this applies them to the
//! thread's counters, where the countdown lives (`thread/counters.rs`).

use crate::sample;
use crate::support::{reentry, registry};
use crate::thread::{self, Local};

/// The countdown ran out on an allocation of `size` bytes (the fast path
/// already charged them). Returns the sample's weight if the allocation is
/// to be recorded, `None` if not: sampling is off, the thread is inside the
/// profiler, this was the thread's first allocation and it fits in the
/// first countdown, or the countdown's held-back part covers it.
#[cold]
pub(crate) fn expired(size: usize) -> Option<f64> {
    thread::with(|l| expired_on(l, size)).flatten()
}

fn expired_on(l: &Local, size: usize) -> Option<f64> {
    // What was left before the fast path subtracted `size` (it wraps).
    let left = l.counters.countdown().wrapping_add(size);
    if let Some(rest) = l.sampler.cover(left, size) {
        start(l, rest);
        return None;
    }
    // Zero the countdown, keeping the bytes counted, so that every path
    // below starts from an expired countdown and one that leaves it alone
    // leaves it expired.
    start(l, 0);
    let was_inside = l.counters.inside();
    let _inside = reentry::Inside::enter();
    // Every thread's first allocation comes here (its countdown starts at
    // zero), inside the profiler or not: the moment to put its exact
    // counters in the registry, so that threads that only ever allocate
    // inside the profiler (the HTTP server's, the dump thread) are counted
    // too.
    registry::register_thread(!was_inside);
    if was_inside {
        // The profiler's own allocation: never recorded. The rate may not
        // be known yet (this may be the configuration's own reading).
        if let Some(next) = l.sampler.expire_inside(sample::known_rate()) {
            start(l, next);
        }
        return None;
    }
    let thread_addr = l as *const Local as usize;
    let e = l
        .sampler
        .expire(size, sample::rate(), || sample::thread_seed(thread_addr));
    start(l, e.countdown);
    e.weight
}

/// Starts a countdown of `bytes` on `l`, the part past
/// `sample::MAX_COUNTDOWN` held back by the sampler.
fn start(l: &Local, bytes: usize) {
    l.counters.reset_countdown(l.sampler.hold_back(bytes));
}

/// Charges an allocation of `size` bytes that the fast path counted but
/// did not charge (a realloc its filter sent to the slow path first): true
/// if the countdown ran out.
pub(crate) fn charge(size: usize) -> bool {
    thread::with(|l| l.counters.charge(size)).unwrap_or(false)
}

/// [`charge`] where no sample may be taken (the thread holds a lock of the
/// free path, and a sample takes those): a countdown this runs out is left
/// at zero, so that the thread's next allocation decides. This one
/// allocation goes unsampled, a bias of at most one sample per such
/// realloc, which only a signal handler or heapprof's own tables make.
pub(crate) fn charge_unsampled(size: usize) {
    thread::with(|l| {
        if l.counters.charge(size) {
            start(l, 0);
        }
    });
}

/// Changes the rate: the calling thread starts a fresh countdown at once
/// (its next allocation counts once, with certainty, and draws at the new
/// rate); other threads take it at their next sample (within
/// `sample::OFF_COUNTDOWN` bytes if sampling was off).
pub(crate) fn set_rate(bytes: usize) {
    sample::set_rate(bytes);
    thread::with(|l| {
        l.sampler.restart(false);
        start(l, 0);
    });
}

/// Seeds the generators: the calling thread restarts from the seed at
/// once, threads that seed later derive theirs from it.
pub(crate) fn set_seed(seed: u64) {
    sample::set_seed(seed);
    thread::with(|l| {
        l.sampler.restart(true);
        start(l, 0);
    });
}

/// The current rate, for the public API: inside the profiler, since the
/// first read may load the configuration.
pub(crate) fn rate() -> usize {
    let _inside = reentry::Inside::enter();
    sample::rate()
}
