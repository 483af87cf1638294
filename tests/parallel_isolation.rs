//! What is isolated when tests share one process: tests on parallel
//! threads (the harness's default), each taking deltas around its own code
//! at rate 1, get exact numbers for the functions they select by name,
//! whatever the others allocate meanwhile. (What is not isolated: the rate
//! is process-wide, so all of these set the same one, and a delta's
//! totals count every thread: beta's delta may well contain alpha's
//! blocks, if the two ran at the same time.)

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Allocates on another thread until told to stop: whatever runs beside
/// a test (another test, or the program's own threads). Counts its
/// allocations in `done`.
#[inline(never)]
fn noise(done: &AtomicUsize, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let n = done.load(Relaxed);
        black_box(vec![n as u8; 100 + n % 900]);
        done.store(n + 1, Relaxed);
    }
}

// Explicit loops with a `black_box` at the end: a function that ends in
// `collect()` may be compiled into a jump to it, leaving its own frame off
// the outer Vec's stack.

#[inline(never)]
fn parse_alpha(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(vec![i as u8; 100]);
    }
    black_box(out)
}

#[inline(never)]
fn parse_beta(n: usize) -> Vec<Box<[u8]>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(vec![i as u8; 11].into_boxed_slice());
    }
    black_box(out)
}

#[inline(never)]
fn churn_gamma(n: usize) {
    for i in 0..n {
        black_box(vec![i as u8; 777]);
    }
}

/// A delta around `work`, while another thread allocates (and the other
/// tests of this binary run on the harness's other threads).
fn exact_delta<T>(name: &str, work: impl FnOnce() -> T) -> (heapprof::Snapshot, T) {
    heapprof::set_sample_rate(1);
    let (done, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        let other = s.spawn(|| noise(&done, &stop));
        let before = heapprof::snapshot();
        let from = done.load(Relaxed);
        let out = work();
        // Make sure the other thread did allocate inside the window.
        while done.load(Relaxed) < from + 100 {
            std::thread::yield_now();
        }
        let delta = heapprof::snapshot().delta(&before);
        stop.store(true, Relaxed);
        other.join().unwrap();
        println!(
            "{name}, beside {} allocations on another thread:\n{delta}",
            delta.alloc_objects_in("noise")
        );
        assert!(delta.alloc_objects_in("noise") >= 100);
        (delta, out)
    })
}

#[test]
fn alpha_counts_only_its_own_blocks() {
    let (d, kept) = exact_delta("alpha", || black_box(parse_alpha(5000)));
    // 5000 × 100 bytes, and the outer Vec: 5000 × 24.
    assert_eq!(d.inuse_bytes_in("parse_alpha"), 5000 * 100 + 5000 * 24);
    assert_eq!(d.inuse_objects_in("parse_alpha"), 5001);
    drop(kept);
}

#[test]
fn beta_counts_only_its_own_strings() {
    let (d, kept) = exact_delta("beta", || black_box(parse_beta(3000)));
    // 3000 × 11 bytes, and the outer Vec of 16-byte boxes.
    assert_eq!(d.inuse_bytes_in("parse_beta"), 3000 * 11 + 3000 * 16);
    assert_eq!(d.inuse_objects_in("parse_beta"), 3001);
    drop(kept);
}

#[test]
fn gamma_allocates_and_keeps_nothing() {
    let (d, ()) = exact_delta("gamma", || churn_gamma(4000));
    assert_eq!(d.alloc_bytes_in("churn_gamma"), 4000 * 777);
    assert_eq!(d.alloc_objects_in("churn_gamma"), 4000);
    assert_eq!(d.inuse_bytes_in("churn_gamma"), 0);
}
