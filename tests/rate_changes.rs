//! Changing the sample rate: the change reaches threads that are already
//! running from their next allocation (a runtime's workers built before
//! the change included), and after sampling was turned off with rate 0; a
//! sample
//! taken across a change counts for what it really stands for; and the
//! switch to a rate where sampled blocks are not page aligned loses no
//! frees. The tests share the global rate, so they take turns.

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::{
    ALLOC_OBJECTS, INUSE_OBJECTS, cum, decode, flat, string, take_profile,
};
use heapprof_testkit::watchdog::watchdog;

use std::alloc::{Layout, alloc, dealloc};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const BLOCKS: usize = 100;

/// The rate is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[inline(never)]
fn after_the_switch() -> Vec<Vec<u8>> {
    (0..BLOCKS).map(|i| vec![i as u8; 100]).collect()
}

/// Runs on a thread started before the rate changes: allocates while the
/// rate is 0, waits for the switch to 1, then allocates at a known site.
/// With rate 0 there is no next sample: the change must reach the thread
/// by its countdown being set to zero (or, for a thread that misses it, by
/// the finite countdown kept while sampling is off).
#[test]
fn a_running_thread_resumes_sampling_after_rate_zero() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
        // The new rate is in force from the next allocation; allocate past
        // one "off" countdown's worth of bytes all the same.
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

const CHURN_THREADS: usize = 8;
/// Under a second in release (where the old race showed on every run).
const CHURN_OPS: usize = if cfg!(debug_assertions) {
    300_000
} else {
    2_000_000
};

#[inline(never)]
fn churn(ops: usize) {
    let layout = Layout::from_size_align(48, 8).unwrap();
    for _ in 0..ops {
        // SAFETY: non-zero size; freed once with the same layout.
        unsafe {
            let p = alloc(layout);
            assert!(!p.is_null());
            std::hint::black_box(p);
            dealloc(p, layout);
        }
    }
}

/// Below 64 KiB sampled blocks keep their own alignment, and the free
/// path's filter must open (mask 0) before the first such block can be
/// freed. Eight threads allocate and at once free small blocks at 4 KiB,
/// so the count of unaligned sampled blocks keeps going 0 -> 1 -> 0 while
/// other threads sample: every free must still be credited. Before the
/// fix, a block sampled just after another thread's 0 -> 1 increment, and
/// freed before that thread stored the mask, skipped the set, and stayed
/// "in use" for good (every run showed 86 or many more phantom objects).
#[test]
fn no_free_is_lost_while_unaligned_sampling_starts_and_stops() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = watchdog("unaligned churn", Duration::from_secs(120));
    // Start from page-aligned sampling, with no unaligned block live.
    heapprof::set_sample_rate(64 * 1024);
    let start = Arc::new(Barrier::new(CHURN_THREADS + 1));
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                churn(CHURN_OPS)
            })
        })
        .collect();
    heapprof::set_sample_rate(4096);
    start.wait();
    for t in threads {
        t.join().unwrap();
    }
    heapprof::set_sample_rate(64 * 1024);
    let p = take_profile();
    assert_sane_values(&p);
    let allocated = cum(&p, "churn", ALLOC_OBJECTS);
    let in_use = cum(&p, "churn", INUSE_OBJECTS);
    println!(
        "{} blocks allocated and freed by {CHURN_THREADS} threads at 4096: estimated {allocated}, \
         in use {in_use}",
        CHURN_THREADS * CHURN_OPS
    );
    assert!(allocated > 0, "the churn was sampled");
    assert_eq!(
        in_use, 0,
        "every sampled block was freed, and every free must be credited"
    );
}

#[inline(never)]
fn one_small_block() -> Box<[u8; 16]> {
    std::hint::black_box(Box::new([7u8; 16]))
}

/// A thread's countdown is drawn at the rate in force when it was drawn,
/// and a sample that ends it stands for what that rate says. At rate 1 the
/// countdown is 0: the next allocation is recorded whatever the rate is by
/// then, so it is certain, and must count once, not as the 1/p(16 B) =
/// 32768 allocations a 16-byte sample stands for at 512 KiB. The same for
/// the thread that calls `set_sample_rate`, whose next allocation is
/// recorded at once.
#[test]
fn a_sample_across_a_rate_change_counts_for_what_it_stands_for() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = watchdog("rate change weights", Duration::from_secs(60));
    heapprof::set_sample_rate(1);
    // Plain flags, not channels: between the rate change and its
    // `one_small_block`, the thread must not allocate (a channel's receive
    // may, and that allocation would take the certain sample and draw the
    // next countdown at the new rate).
    static READY: AtomicBool = AtomicBool::new(false);
    static RAISED: AtomicBool = AtomicBool::new(false);
    let t = std::thread::spawn(move || {
        std::hint::black_box(vec![0u8; 100]); // countdown drawn at rate 1: 0
        READY.store(true, SeqCst);
        while !RAISED.load(SeqCst) {
            std::hint::spin_loop();
        }
        one_small_block()
    });
    while !READY.load(SeqCst) {
        std::thread::yield_now();
    }
    heapprof::set_sample_rate(512 * 1024);
    RAISED.store(true, SeqCst);
    let other = t.join().unwrap();
    heapprof::set_sample_rate(512 * 1024);
    let mine = one_small_block();
    let p = take_profile();
    let counted = flat(&p, "one_small_block", ALLOC_OBJECTS);
    println!("two certain 16-byte samples across 1 -> 512 KiB counted as {counted} allocations");
    assert_eq!(counted, 2, "each certain sample counts once");
    drop((other, mine));
}

/// Boxed one by one: each block is its own 16-byte allocation.
#[allow(clippy::vec_box)]
#[inline(never)]
fn after_the_nudge() -> Vec<Box<[u8; 16]>> {
    (0..BLOCKS)
        .map(|i| std::hint::black_box(Box::new([i as u8; 16])))
        .collect()
}

/// A thread whose countdown was drawn at 512 KiB, waiting without
/// allocating, is at rate 1 from its first allocation after another
/// thread sets it: every one of its small blocks is recorded. Left on its
/// old countdown until that ran out, it would record 16-byte blocks one
/// in 32768, and an assertion about them would pass on nothing.
#[test]
fn a_running_thread_takes_a_new_rate_at_its_next_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = watchdog("rate change on a running thread", Duration::from_secs(60));
    heapprof::set_sample_rate(512 * 1024);
    // Flags, not channels: the thread must not allocate between the
    // change and the blocks counted (see the test above).
    static READY: AtomicBool = AtomicBool::new(false);
    static SET: AtomicBool = AtomicBool::new(false);
    let t = std::thread::spawn(|| {
        // Registered, with a countdown drawn at 512 KiB.
        for i in 0..100 {
            std::hint::black_box(vec![i as u8; 100]);
        }
        READY.store(true, SeqCst);
        while !SET.load(SeqCst) {
            std::hint::spin_loop();
        }
        after_the_nudge()
    });
    while !READY.load(SeqCst) {
        std::thread::yield_now();
    }
    heapprof::set_sample_rate(1);
    SET.store(true, SeqCst);
    let kept = t.join().unwrap();
    let p = take_profile();
    heapprof::set_sample_rate(512 * 1024);
    drop(kept);
    let seen = cum(&p, "after_the_nudge", INUSE_OBJECTS);
    println!("rate 512 KiB -> 1 on a waiting thread: {seen} of {BLOCKS} 16-byte blocks recorded");
    // Each once (at the old rate's weight the first would count as 32768),
    // and the Vec holding them, unless it is charged to the caller.
    assert!(
        (BLOCKS as i64..=BLOCKS as i64 + 1).contains(&seen),
        "{seen} of {BLOCKS} recorded"
    );
}

#[inline(never)]
fn leaky_handler() {
    for _ in 0..10 {
        std::mem::forget(std::hint::black_box(vec![1u8; 1000]));
    }
}

/// `set_sample_rate(1)` in a test whose tokio runtime, and its workers,
/// already run (as `#[tokio::test(flavor = "multi_thread")]` builds it).
/// A task that leaks 10 000 bytes on a worker must fail the assertion:
/// every allocation of the workers is recorded from the change on.
#[test]
fn a_leak_on_a_runtime_worker_started_before_the_rate_fails_the_assertion() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = watchdog("rate change under tokio", Duration::from_secs(60));
    heapprof::set_sample_rate(512 * 1024);
    // One worker: the leak runs on the thread that allocated before the
    // change, with a countdown drawn at 512 KiB.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let worker = rt.block_on(async {
        tokio::spawn(async {
            std::hint::black_box(vec![0u8; 4096]);
            std::thread::current().id()
        })
        .await
        .unwrap()
    });
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let leaked_on = rt.block_on(async {
        tokio::spawn(async {
            leaky_handler();
            std::thread::current().id()
        })
        .await
        .unwrap()
    });
    assert_eq!(
        leaked_on, worker,
        "the leak ran on the worker that allocated before"
    );
    let grown = heapprof::snapshot().delta(&before);
    heapprof::set_sample_rate(512 * 1024);
    drop(rt);
    let leaked = grown.inuse_bytes_in("rate_changes::leaky_handler");
    println!("a worker's leak of 10000 bytes after the change: {leaked} bytes counted");
    assert_eq!(leaked, 10_000, "every leaked byte, counted once\n{grown}");
    let passed =
        std::panic::catch_unwind(|| grown.assert_inuse_at_most("rate_changes::leaky_handler", 0));
    assert!(passed.is_err(), "the assertion passed on a leak");
}

#[inline(never)]
fn marked_after_the_change() {
    for i in 0..MARKED {
        std::mem::forget(std::hint::black_box(Box::new([i as u8; 16])));
    }
}

const MARKED: usize = 10;
const BUSY_ROUNDS: usize = 20;

/// A thread allocating all the time when the rate changes overwrites many
/// a nudge (its fast path stores the countdown it loaded, less its
/// allocation, over the zero): the change is confirmed until it lands.
/// Round after round the rate goes to 512 KiB and back to 1, and after
/// each return to 1 the thread allocates at a known site: every one of
/// those blocks is recorded, once.
#[test]
fn a_thread_allocating_all_along_takes_each_change() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = watchdog("rate changes on a busy thread", Duration::from_secs(120));
    static ROUND: AtomicUsize = AtomicUsize::new(0);
    static DONE: AtomicUsize = AtomicUsize::new(0);
    let busy = std::thread::spawn(|| {
        let mut done = 0;
        while done < BUSY_ROUNDS {
            let round = ROUND.load(SeqCst);
            if round > done {
                marked_after_the_change();
                done = round;
                DONE.store(done, SeqCst);
            }
            std::hint::black_box(vec![0u8; 32]);
        }
    });
    for round in 1..=BUSY_ROUNDS {
        heapprof::set_sample_rate(512 * 1024);
        std::thread::sleep(Duration::from_millis(2));
        heapprof::set_sample_rate(1);
        ROUND.store(round, SeqCst);
        while DONE.load(SeqCst) < round {
            std::thread::yield_now();
        }
    }
    busy.join().unwrap();
    heapprof::set_sample_rate(512 * 1024);
    let p = take_profile();
    let seen = cum(&p, "marked_after_the_change", ALLOC_OBJECTS);
    println!(
        "{BUSY_ROUNDS} changes to rate 1 on a busy thread: {seen} of {} marked blocks recorded",
        BUSY_ROUNDS * MARKED
    );
    assert_eq!(seen, (BUSY_ROUNDS * MARKED) as i64);
}

/// The first comment of a snapshot's pprof profile: what its values are.
fn values_comment(s: &heapprof::Snapshot) -> String {
    let mut gz = Vec::new();
    s.write_pprof(&mut gz).unwrap();
    let p = decode(&gz);
    string(&p, p.comment[0]).to_owned()
}

#[inline(never)]
fn keep_kibibytes(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 1024]).collect()
}

/// At rate 1 a profile says its values are exact only while every sample
/// recorded was exact: once blocks were sampled at a higher rate, the
/// table's header and the pprof comment of a snapshot and of a delta say
/// that some values are estimates. A snapshot taken before keeps saying
/// exact. In a child started at rate 1, so that no earlier sample was an
/// estimate.
#[test]
fn values_are_called_exact_only_when_every_sample_was() {
    if !is_child() {
        let (stdout, _) = run_child(
            "values_are_called_exact_only_when_every_sample_was",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert!(stdout.contains("checked all"), "{stdout}");
        return;
    }
    let exact_words = "values are exact: every allocation is recorded (rate 1)";
    let mixed_words = "blocks allocated while the rate was higher are estimates, or missing";
    let first_line = |s: &heapprof::Snapshot| s.to_string().lines().next().unwrap().to_owned();
    // The table's header and the pprof comment both say `words`.
    let says = |what: &str, s: &heapprof::Snapshot, words: &str| {
        let (header, comment) = (first_line(s), values_comment(s));
        assert!(header.contains(words), "{what}: {header}");
        assert!(comment.contains(words), "{what}: {comment}");
    };
    let start = heapprof::snapshot();
    let exact_kept = keep_kibibytes(1000);
    let exact = heapprof::snapshot();
    says("snapshot", &exact, exact_words);
    says("delta", &exact.delta(&start), exact_words);
    // 20 MB at 512 KiB: about 40 samples, each standing for about 512
    // blocks; none at all has odds of e^-40.
    heapprof::set_sample_rate(512 * 1024);
    let estimated_kept = keep_kibibytes(20_000);
    heapprof::set_sample_rate(1);
    let rate_one_kept = keep_kibibytes(1000);
    let mixed = heapprof::snapshot();
    says("snapshot", &mixed, mixed_words);
    says("delta over the change", &mixed.delta(&exact), mixed_words);
    assert!(
        first_line(&exact).contains(exact_words),
        "{}",
        first_line(&exact)
    );
    drop((exact_kept, estimated_kept, rate_one_kept));
    println!("checked all");
}

/// A live profile taken at rate 1 that a program set itself is not called
/// exact: blocks allocated before, at the default rate (the harness's, the
/// program's first), may still be live and in no sample. In a child
/// started at the default rate, as a test that calls `set_sample_rate(1)`
/// is.
#[test]
fn a_live_profile_after_a_coarse_rate_is_not_called_exact() {
    if !is_child() {
        let (stdout, _) = run_child(
            "a_live_profile_after_a_coarse_rate_is_not_called_exact",
            &[("HEAPPROF_SAMPLE_RATE", "524288")],
        );
        assert!(stdout.contains("checked all"), "{stdout}");
        return;
    }
    let mixed_words = "blocks allocated while the rate was higher are estimates, or missing";
    let first_line = |s: &heapprof::Snapshot| s.to_string().lines().next().unwrap().to_owned();
    heapprof::set_sample_rate(1);
    let kept = keep_kibibytes(100);
    let live = heapprof::snapshot();
    assert!(
        first_line(&live).contains(mixed_words),
        "{}",
        first_line(&live)
    );
    assert!(
        values_comment(&live).contains(mixed_words),
        "{}",
        values_comment(&live)
    );
    // `write_profile`, for the live heap now, says the same.
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    let comments: Vec<&str> = p.comment.iter().map(|&c| string(&p, c)).collect();
    assert!(
        comments.iter().any(|c| c.contains(mixed_words)),
        "{comments:?}"
    );
    drop(kept);
    println!("checked all");
}
