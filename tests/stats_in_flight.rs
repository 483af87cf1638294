//! `stats()` while blocks pass between threads: one thread allocates, a
//! channel carries the block, another frees it. `stats()` reads the
//! threads one after another, so a block can be allocated after its
//! allocating thread was read and freed before its freeing thread is.
//! Counted that way it would be freed but never allocated, and the live
//! bytes would read low, by whatever was allocated between the two reads
//! (hundreds of MB when the reader waits for a busy thread). Every free
//! is read before any allocation, so the live bytes a call returns are at
//! least those live at one moment during the call: never less than a
//! block held throughout.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The block held while the others pass.
const HELD: usize = 256 << 20;
/// The size of each block passed.
const PASSED: usize = 64 << 10;

#[test]
fn live_bytes_never_read_below_a_block_held_throughout() {
    // Zeroed: the pages are never touched, so the test costs no memory.
    let held = black_box(vec![0u8; HELD]);
    let stop = AtomicBool::new(false);
    let (lowest, highest, reads, passed) = std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Vec<u8>>(16);
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let tx = tx.clone();
                let stop = &stop;
                s.spawn(move || {
                    let mut sent = 0u64;
                    while !stop.load(Relaxed) {
                        if tx.send(black_box(vec![1u8; PASSED])).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        drop(tx);
        // Spawned after the producers, so read after them.
        let consumer = s.spawn(move || rx.iter().map(drop).count());
        let (mut lowest, mut highest) = (u64::MAX, 0);
        let mut reads = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            let live = heapprof::stats().live_bytes();
            (lowest, highest) = (lowest.min(live), highest.max(live));
            reads += 1;
        }
        stop.store(true, Relaxed);
        let passed: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
        consumer.join().unwrap();
        (lowest, highest, reads, passed)
    });
    eprintln!(
        "{reads} reads while {passed} blocks of {PASSED} B passed: \
         live {lowest} B to {highest} B, held {HELD} B"
    );
    assert!(passed > 1000, "too few blocks passed to test anything");
    assert!(
        lowest >= HELD as u64,
        "live bytes read {} B below the block held throughout",
        HELD as u64 - lowest
    );
    drop(held);
}
