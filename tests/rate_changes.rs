//! Changing the sample rate reaches threads that are already running,
//! including after sampling was turned off with rate 0.

mod common;
use common::*;

use std::sync::mpsc;
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const BLOCKS: usize = 100;

#[inline(never)]
fn after_the_switch() -> Vec<Vec<u8>> {
    (0..BLOCKS).map(|i| vec![i as u8; 100]).collect()
}

/// Runs on a thread started before the rate changes: allocates while the
/// rate is 0, waits for the switch to 1, then allocates at a known site.
/// "Running threads switch at their next sample": with rate 0 there is no
/// next sample, unless the countdown is finite.
#[test]
fn a_running_thread_resumes_sampling_after_rate_zero() {
    let _watchdog = watchdog("rate change test", Duration::from_secs(60));
    let (to_thread, switched) = mpsc::channel::<()>();
    let (to_main, off_seen) = mpsc::channel::<()>();
    heapprof::set_sample_rate(0);
    let t = std::thread::spawn(move || {
        // Sampling is off: this thread's countdown runs out and is reset.
        for i in 0..1000 {
            std::hint::black_box(vec![i as u8; 1000]);
        }
        to_main.send(()).unwrap();
        switched.recv().unwrap();
        // At most one "off" countdown's worth of bytes later, the new rate
        // is in force: allocate well past it.
        for i in 0..64 {
            std::hint::black_box(vec![i as u8; 64 * 1024]);
        }
        let kept = after_the_switch();
        let p = take_profile();
        drop(kept);
        p
    });
    off_seen.recv().unwrap();
    heapprof::set_sample_rate(1);
    to_thread.send(()).unwrap();
    let p = t.join().unwrap();
    let seen = flat(&p, "after_the_switch", ALLOC_OBJECTS);
    println!("rate 0 -> 1 on a running thread: {seen} of {BLOCKS} blocks recorded");
    // Rate 1 records every allocation with weight 1. (The Vec holding the
    // blocks may be charged to the caller: `after_the_switch` can end in a
    // tail call to `collect`.)
    assert!(seen >= BLOCKS as i64, "{seen} of {BLOCKS} recorded");
}
