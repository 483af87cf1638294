//! `heapprof::exact_sampling`: tests that run side by side each take a
//! guard around their snapshots, and one putting its rate back cannot
//! make the other's assertion an estimate.

use std::sync::mpsc;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Keeps ten blocks of 200 bytes.
#[inline(never)]
fn leaks_ten_blocks(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..10 {
        kept.push(std::hint::black_box(vec![7u8; 200]));
    }
}

/// Two "tests" on two threads, interleaved as the race has them: the
/// first takes its guard, the second takes its own and its first
/// snapshot, the first drops its guard, the second leaks and takes its
/// second snapshot. The second counts the whole leak, exactly, and the
/// rate comes back only when it drops its guard.
#[test]
fn a_guard_dropped_beside_another_leaves_its_count_exact() {
    heapprof::set_sample_rate(64 << 10);
    let (first_done_tx, first_done) = mpsc::channel::<()>();
    let (second_ready_tx, second_ready) = mpsc::channel::<()>();
    let first = std::thread::spawn(move || {
        let exact = heapprof::exact_sampling();
        second_ready.recv().unwrap();
        drop(exact);
        first_done_tx.send(()).unwrap();
    });
    let second = std::thread::spawn(move || {
        let exact = heapprof::exact_sampling();
        let before = heapprof::snapshot();
        second_ready_tx.send(()).unwrap();
        first_done.recv().unwrap();
        let rate_while_held = heapprof::sample_rate();
        let mut kept = Vec::with_capacity(10);
        leaks_ten_blocks(&mut kept);
        let grown = heapprof::snapshot().delta(&before);
        drop(exact);
        (rate_while_held, grown, kept)
    });
    first.join().unwrap();
    let (rate_while_held, grown, kept) = second.join().unwrap();
    assert_eq!(rate_while_held, 1, "the rate went back while a guard lived");
    assert_eq!(
        grown.inuse_bytes_in("exact_sampling::leaks_ten_blocks"),
        2000,
        "{grown}"
    );
    let failed = std::panic::catch_unwind(|| {
        grown.assert_inuse_at_most("exact_sampling::leaks_ten_blocks", 1000)
    });
    assert!(failed.is_err(), "the leak passed the assertion");
    assert_eq!(
        heapprof::sample_rate(),
        64 << 10,
        "the rate did not come back"
    );
    drop(kept);

    // Nested on one thread: the outer guard's drop puts the rate back.
    let outer = heapprof::exact_sampling();
    let inner = heapprof::exact_sampling();
    drop(inner);
    assert_eq!(heapprof::sample_rate(), 1);
    drop(outer);
    assert_eq!(heapprof::sample_rate(), 64 << 10);

    // Taken when the rate was already 1: a rate set while it lives is
    // undone all the same.
    heapprof::set_sample_rate(1);
    let guard = heapprof::exact_sampling();
    heapprof::set_sample_rate(4096);
    drop(guard);
    assert_eq!(heapprof::sample_rate(), 1, "the rate set meanwhile stayed");
}
