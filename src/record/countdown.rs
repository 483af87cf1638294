//! The slow path's side of the sampling countdown: when it runs out,
//! whether the allocation is a sample and what comes next; a thread's
//! first allocation; rate and seed changes.
//!
//! The decisions are `sample::ThreadSampler`'s; this applies them to the
//! thread's counters, where the countdown lives (`thread/counters.rs`).
//!
//! While a measure is active on the thread ([`hold_aside`]), the counters'
//! countdown is held at zero, so every allocation comes here, and the
//! sampler's countdown waits in `thread::measure::Measuring`: [`expired`]
//! charges it as the fast path would have and goes on as the fast path
//! would have (back to the program when it has not run out), so the
//! samples drawn are the ones drawn without the measure, charged with the
//! same allocations.
//!
//! On a thread that left the registry (its exit hook ran; its later
//! destructors still allocate), the counter stays at zero, so that each
//! allocation is counted on the slow path, and the whole countdown waits
//! in the sampler ([`expired`] goes to `expired_after_exit`).

use std::sync::PoisonError;

use crate::sample;
use crate::support::{reentry, registry};
use crate::thread::{self, Local};

/// The countdown ran out on an allocation of `size` bytes (the fast path
/// already charged them). Returns the sample's weight if the allocation is
/// to be recorded, `None` if not: sampling is off, the thread is inside the
/// profiler, this was the thread's first allocation and it fits in the
/// first countdown, or the countdown's held-back part covers it.
///
/// A rate set since the countdown was drawn restarts the sampler first:
/// this allocation then ends a countdown of zero, as on the thread that set
/// the rate. Another thread's `set_rate` nudges this one's countdown to
/// zero to bring it here; if the countdown this leaves was drawn at a rate
/// set meanwhile, it is zeroed again, so that the next allocation comes
/// back.
#[cold]
pub(crate) fn expired(size: usize) -> Option<f64> {
    if registry::exited() {
        return expired_after_exit(size);
    }
    thread::with(|l| {
        let epoch = sample::epoch();
        let weight = expired_on(l, size, epoch);
        zero_if_rate_moved(l, epoch);
        weight
    })
    .flatten()
}

/// Whether the rate changed since `l`'s countdown was drawn, judged by
/// `epoch` (read before the rate): then the sampler starts over, for the
/// caller to set the countdown to 0, and `l` is at `epoch` from now.
fn restart_if_rate_moved(l: &Local, epoch: u64) -> bool {
    if l.counters.rate_epoch() == epoch {
        return false;
    }
    l.sampler.restart(false);
    l.counters.set_rate_epoch(epoch);
    true
}

/// After `l`'s countdown was replaced from a draw or a hold at the rate
/// of `epoch`: if the rate changed meanwhile, and a nudge may have missed
/// the countdown (it was not running when the setter looked), zeroes it,
/// so that the next allocation comes to [`expired`] and starts over.
fn zero_if_rate_moved(l: &Local, epoch: u64) {
    // A countdown left at zero brings the next allocation back anyway.
    if l.counters.countdown() as isize > 0 {
        // Pairs with the epoch's SeqCst increment in `sample::set_rate`,
        // after which the setter reads each countdown: either it reads
        // the one just stored and zeroes it, or this sees the new epoch.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if sample::epoch() != epoch {
            start(l, 0);
        }
    }
}

fn expired_on(l: &Local, size: usize, epoch: u64) -> Option<f64> {
    let restarted = restart_if_rate_moved(l, epoch);
    let left = if l.measure.aside() {
        // The counter is held at zero and the fast path took `size` off
        // it: back to zero (the bytes stay counted). The countdown that
        // decides is the one held aside (none after a restart); charged as
        // the fast path charges.
        l.counters.rezero_held();
        let held = if restarted { 0 } else { l.measure.held() };
        l.measure.set_held(held.wrapping_sub(size));
        if held > size {
            return None;
        }
        held
    } else {
        // What was left before the fast path subtracted `size`; a restart
        // drops it.
        let left = l.counters.ran_out(size);
        if restarted { 0 } else { left }
    };
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

/// [`expired`] on a thread out of the registry, whose counter stays at
/// zero: the countdown is the sampler's alone (`ThreadSampler::hold_all`),
/// where the exit hook put what the counter had left of it
/// (`registry::retire`); heapprof's own allocations use none of it.
fn expired_after_exit(size: usize) -> Option<f64> {
    thread::with(|l| {
        if l.counters.inside() {
            return None;
        }
        let restarted = restart_if_rate_moved(l, sample::epoch());
        if !restarted && let Some(rest) = l.sampler.cover(0, size) {
            l.sampler.hold_all(rest);
            return None;
        }
        let _inside = reentry::Inside::enter();
        let thread_addr = l as *const Local as usize;
        let e = l
            .sampler
            .expire(size, sample::rate(), || sample::thread_seed(thread_addr));
        l.sampler.hold_all(e.countdown);
        e.weight
    })
    .flatten()
}

/// Starts a countdown of `bytes` on `l`, the part past
/// `sample::MAX_COUNTDOWN` held back by the sampler; while a measure holds
/// the countdown aside, there.
fn start(l: &Local, bytes: usize) {
    let now = l.sampler.hold_back(bytes);
    if l.measure.aside() {
        l.measure.set_held(now);
    } else {
        l.counters.reset_countdown(now);
    }
}

/// A measure starts on this thread: the countdown goes aside and the
/// counter is held at zero, so that every allocation takes the slow path.
/// False if one is active already (the countdown is aside already).
pub(crate) fn hold_aside() -> bool {
    thread::with(|l| {
        if l.measure.aside() {
            return false;
        }
        l.measure.set_held(l.counters.countdown());
        l.measure.set_aside(true);
        l.counters.reset_countdown(0);
        true
    })
    .unwrap_or(false)
}

/// The measure that called [`hold_aside`] ends: the countdown comes back
/// to the counter, as charged meanwhile; none if the rate changed since
/// it was drawn (a nudge finds the counter held at zero).
pub(crate) fn put_back() {
    thread::with(|l| {
        if l.measure.aside() {
            l.measure.set_aside(false);
            let epoch = sample::epoch();
            let held = if restart_if_rate_moved(l, epoch) {
                0
            } else {
                l.measure.held()
            };
            l.counters.reset_countdown(held);
            zero_if_rate_moved(l, epoch);
        }
    });
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
///
/// While a measure holds the countdown aside, the counter stays at zero
/// (so the thread's next allocation still takes the slow path) and the
/// held countdown takes the charge instead. On a thread out of the
/// registry, the countdown the sampler holds takes it (heapprof's own
/// allocations, none), and the counter, at zero, only counts the bytes.
pub(crate) fn charge_unsampled(size: usize) {
    let exited = registry::exited();
    thread::with(|l| {
        if l.measure.aside() {
            // Charged first: the counter's charge is what counts the bytes.
            l.counters.charge(size);
            l.counters.rezero_held();
            l.measure.set_held(l.measure.held().saturating_sub(size));
        } else if exited {
            l.counters.charge(size);
            if !l.counters.inside() {
                l.sampler.hold_all(l.sampler.cover(0, size).unwrap_or(0));
            }
        } else if l.counters.charge(size) {
            l.counters.ran_out(size);
            start(l, 0);
        }
    });
}

/// Changes the rate: every thread starts a fresh countdown from its next
/// allocation, which counts once, with certainty, and draws at the new
/// rate. The calling thread's countdown is set to zero here; every other
/// running thread's is nudged to zero ([`expired`] tells why it came).
pub(crate) fn set_rate(bytes: usize) {
    sample::set_rate(bytes);
    let epoch = sample::epoch();
    thread::with(|l| {
        restart_if_rate_moved(l, epoch);
        start(l, 0);
    });
    // Under Miri nothing is recorded (`fast.rs`) and the nudge's signal
    // mask calls are not supported: a test that sets the rate runs on.
    if !cfg!(miri) {
        registry::nudge_other_threads(epoch);
    }
}

/// How many [`ExactSampling`] guards are alive, and the rate the last one
/// to go puts back. Taken only from the public API, with none of
/// heapprof's locks held (it is outside their ranks), and held while the
/// rate changes, so that guards taken and dropped at once on several
/// threads leave the rate their order says.
static EXACT: std::sync::Mutex<(usize, usize)> = std::sync::Mutex::new((0, 0));

/// Every allocation recorded while this guard, or another one, is alive:
/// `heapprof::exact_sampling` tells how.
#[must_use = "the sample rate goes back when the guard is dropped"]
#[derive(Debug)]
pub struct ExactSampling(());

/// Takes a guard of exact sampling: rate 1 from the first guard, the rate
/// before it back when the last one is dropped.
pub(crate) fn exact_sampling() -> ExactSampling {
    let mut exact = EXACT.lock().unwrap_or_else(PoisonError::into_inner);
    if exact.0 == 0 {
        exact.1 = rate();
        if exact.1 != 1 {
            set_rate(1);
        }
    }
    exact.0 += 1;
    ExactSampling(())
}

impl Drop for ExactSampling {
    fn drop(&mut self) {
        let mut exact = EXACT.lock().unwrap_or_else(PoisonError::into_inner);
        exact.0 -= 1;
        // The rate in force when the first guard was taken, whatever was
        // set meanwhile.
        if exact.0 == 0 && rate() != exact.1 {
            set_rate(exact.1);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An allocation of `size` as the fast path counts it, then the slow
    /// path if the countdown ran out: the sample's weight, if it is one.
    fn allocate(size: usize) -> Option<f64> {
        let ran_out = thread::with(|l| {
            l.counters.count_alloc();
            l.counters.charge(size)
        })
        .unwrap();
        if ran_out { expired(size) } else { None }
    }

    /// The samples of one sequence of allocations on a fresh thread, with
    /// the countdown held aside (a measure active) or not, and the
    /// thread's allocated bytes at the end.
    fn samples(aside: bool) -> (Vec<(usize, u64)>, u64) {
        std::thread::spawn(move || {
            // The thread's first allocation seeds its generator; then it
            // starts over from a fixed one.
            allocate(1);
            thread::with(|l| {
                l.sampler.seed_exactly(0x5eed);
                l.sampler.restart(false);
                start(l, 0);
            });
            if aside {
                assert!(hold_aside());
                assert!(!hold_aside(), "nested: already aside");
            }
            let sizes = (0..20_000usize).map(|i| 1 + (i * 7919) % 40_000);
            let sampled = sizes
                .enumerate()
                .filter_map(|(i, size)| allocate(size).map(|w| (i, w.to_bits())))
                .collect();
            if aside {
                thread::with(|l| assert_eq!(l.counters.countdown(), 0)).unwrap();
                put_back();
            }
            let allocated = thread::with(|l| l.counters.read().allocated_bytes).unwrap();
            (sampled, allocated)
        })
        .join()
        .unwrap()
    }

    /// A measure holds the countdown aside and its slow path charges it:
    /// the same allocations are sampled, with the same weights, and the
    /// same bytes are counted.
    #[test]
    fn holding_the_countdown_aside_samples_the_same_allocations() {
        let _rate = crate::record::tests::rate_exclusive();
        let plain = samples(false);
        assert!(plain.0.len() > 10, "{} samples", plain.0.len());
        let bytes: u64 = (0..20_000u64).map(|i| 1 + (i * 7919) % 40_000).sum();
        assert_eq!(plain.1, 1 + bytes, "the first allocation and the sequence");
        assert_eq!(samples(true), plain);
    }

    /// A thread no nudge reaches (one changing its counters through every
    /// try, say) takes a new rate when its countdown runs out: with
    /// sampling off, within `OFF_COUNTDOWN` bytes.
    #[test]
    fn a_thread_no_nudge_reaches_takes_the_rate_when_its_countdown_ends() {
        on_a_fresh_thread_holding_the_rate(|| {
            set_rate(0);
            allocate(1);
            // The rate alone, as a setter whose nudge missed this thread.
            sample::set_rate(1);
            assert_eq!(allocate(1), None, "the countdown still runs");
            assert_eq!(allocate(sample::OFF_COUNTDOWN), Some(1.0), "it ends");
            assert_eq!(allocate(1), Some(1.0), "at rate 1 from then");
        });
    }

    /// A measure that ends after the rate changed does not bring back the
    /// countdown it held aside (a nudge found the counter at zero).
    #[test]
    fn a_measure_ending_after_a_rate_change_puts_back_no_countdown() {
        on_a_fresh_thread_holding_the_rate(|| {
            set_rate(crate::config::DEFAULT_SAMPLE_RATE);
            allocate(1);
            assert!(hold_aside());
            sample::set_rate(1);
            put_back();
            assert_eq!(thread::with(|l| l.counters.countdown()).unwrap(), 0);
            assert_eq!(allocate(1), Some(1.0), "the next allocation at rate 1");
        });
    }

    /// Runs `f` on a thread of its own while holding the recorder tests'
    /// rate, and sets the default rate back before a failure in `f` is
    /// passed on: other tests must not start from the rate `f` left.
    fn on_a_fresh_thread_holding_the_rate(f: impl FnOnce() + Send + 'static) {
        let _rate = crate::record::tests::rate_exclusive();
        let ran = std::thread::spawn(f).join();
        set_rate(crate::config::DEFAULT_SAMPLE_RATE);
        if let Err(failure) = ran {
            std::panic::resume_unwind(failure);
        }
    }

    /// After the exit hook the countdown runs in the sampler: a realloc
    /// charged where no sample may be taken (`charge_unsampled`) charges it
    /// too, rather than end it and make the next allocation a sample.
    #[test]
    fn after_exit_an_unsampled_charge_runs_the_held_countdown() {
        on_a_fresh_thread_holding_the_rate(|| {
            set_rate(1 << 20);
            allocate(1);
            registry::retire_for_test();
            // The counter goes back to zero after each call, as
            // `registry::flush_unlisted` sets it.
            let rezero = || thread::with(|l| l.counters.reset_countdown(0)).unwrap();
            let samples = (0..1_000)
                .filter(|_| {
                    charge_unsampled(16);
                    rezero();
                    let sampled = allocate(16).is_some();
                    rezero();
                    sampled
                })
                .count();
            // 32 000 bytes at a mean of 1 MiB: a sample 3 times in 100.
            assert!(samples <= 1, "{samples} samples of 1 000");
        });
    }

    /// After the exit hook, every allocation comes to the slow path and
    /// the sampler's countdown picks the samples: their weights add up to
    /// the bytes allocated. 300 MB at rate 4 096 make the estimate's
    /// relative error about 1/sqrt(300 MB / 4 096) = 0.37 % (about 58 000
    /// samples, the sum of each allocation's chance); the bound is five
    /// times that.
    #[test]
    fn after_exit_the_samples_weigh_what_was_allocated() {
        on_a_fresh_thread_holding_the_rate(|| {
            set_rate(4096);
            allocate(1);
            thread::with(|l| l.sampler.seed_exactly(0x5eed)).unwrap();
            registry::retire_for_test();
            let (mut bytes, mut estimate, mut samples) = (0u64, 0f64, 0u64);
            for i in 0..200_000usize {
                let size = 1 + (i * 7919) % 3_000;
                bytes += size as u64;
                if let Some(w) = allocate(size) {
                    estimate += w * size as f64;
                    samples += 1;
                }
                // No countdown runs on the counter, which goes back to zero
                // after each, as `registry::flush_unlisted` sets it.
                let left = thread::with(|l| l.counters.countdown()).unwrap();
                assert!(left as isize <= 0, "a countdown of {left} runs");
                thread::with(|l| l.counters.reset_countdown(0)).unwrap();
            }
            let error = (estimate / bytes as f64 - 1.0).abs();
            assert!(samples > 50_000, "{samples} samples");
            assert!(error < 0.0185, "estimate {estimate} of {bytes}: {error}");
        });
    }

    /// A realloc charged where no sample may be taken (`charge_unsampled`)
    /// while a measure is active counts its bytes and leaves the counter at
    /// zero, so the thread's next allocation still reaches the slow path.
    #[test]
    fn an_unsampled_charge_while_aside_keeps_the_counter_at_zero() {
        std::thread::spawn(|| {
            allocate(1);
            assert!(hold_aside());
            let before = thread::with(|l| l.counters.read().allocated_bytes).unwrap();
            charge_unsampled(100);
            let (countdown, after) =
                thread::with(|l| (l.counters.countdown(), l.counters.read().allocated_bytes))
                    .unwrap();
            put_back();
            assert_eq!(countdown, 0, "the counter left the slow path's reach");
            assert_eq!(after - before, 100, "the bytes were not counted");
        })
        .join()
        .unwrap();
    }
}
