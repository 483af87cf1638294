//! `heapprof::measure` and its assertions: exact counts of the calling
//! thread's work at every sample rate, whatever other threads allocate
//! meanwhile; an exact peak; nesting; sampling unchanged by a measure;
//! `assert_no_leak` on a leak and on a lazily built cache; what the
//! assertions' messages say.

use std::hint::black_box;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use heapprof::{Measured, measure};
use heapprof_testkit::poll::{YieldOnce, poll_once};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The sample rate is process-wide: a test that needs one in force holds
/// this while it runs. (Tests that do not care run beside them, at
/// whatever rate is set: they must be exact at any.)
static RATE: Mutex<()> = Mutex::new(());

fn at_rate(rate: usize) -> MutexGuard<'static, ()> {
    let guard = RATE.lock().unwrap_or_else(|e| e.into_inner());
    heapprof::set_sample_rate(rate);
    guard
}

/// What [`known_work`] does, exactly.
struct Expected {
    allocations: u64,
    allocated_bytes: u64,
    deallocations: u64,
    freed_bytes: u64,
    peak_bytes: u64,
}

/// Allocates 1000 bytes, then a vector of ten pointers (80 bytes) and ten
/// boxes of 64 bytes, frees the 1000, allocates 500 kept in the result,
/// and frees the vector and its boxes. Live bytes go 1000, 1080, 1720
/// (the peak), 720, 1220, 500.
#[inline(never)]
fn known_work() -> Vec<u8> {
    let a = black_box(vec![1u8; 1000]);
    let mut boxes: Vec<Box<[u8; 64]>> = black_box(Vec::with_capacity(10));
    for i in 0..10 {
        boxes.push(black_box(Box::new([i as u8; 64])));
    }
    drop(black_box(a));
    let kept = black_box(vec![2u8; 500]);
    drop(black_box(boxes));
    kept
}

const KNOWN: Expected = Expected {
    allocations: 13,
    allocated_bytes: 1000 + 80 + 10 * 64 + 500,
    deallocations: 12,
    freed_bytes: 1000 + 80 + 10 * 64,
    peak_bytes: 1000 + 80 + 10 * 64,
};

fn assert_counts(m: &Measured, e: &Expected, times: u64, what: &str) {
    let got = (
        m.allocations,
        m.allocated_bytes,
        m.deallocations,
        m.freed_bytes,
    );
    let want = (
        e.allocations * times,
        e.allocated_bytes * times,
        e.deallocations * times,
        e.freed_bytes * times,
    );
    assert_eq!(
        got, want,
        "{what}: (allocations, bytes, frees, freed bytes)"
    );
}

fn known_at(rate: usize) {
    let _rate = at_rate(rate);
    // Warm: the thread's first allocation, the rate's first read.
    drop(known_work());
    let (kept, m) = measure(known_work);
    assert_counts(&m, &KNOWN, 1, &format!("rate {rate}"));
    assert_eq!(m.peak_bytes, KNOWN.peak_bytes, "peak at rate {rate}: {m}");
    assert_eq!(m.net_bytes(), 500);
    drop(kept);
}

#[test]
fn exact_with_sampling_off() {
    known_at(0);
}

/// Every allocation is a sample: heapprof's own allocations (stacks,
/// the site table) are many, and none is counted.
#[test]
fn exact_when_every_allocation_is_sampled() {
    known_at(1);
}

#[test]
fn exact_at_the_default_rate() {
    known_at(512 * 1024);
}

/// A rate at which some of the work's allocations are sampled and some
/// are not, over many calls.
#[test]
fn exact_over_many_calls_at_a_small_rate() {
    let _rate = at_rate(4096);
    let (_, m) = measure(|| {
        for _ in 0..1000 {
            drop(known_work());
        }
    });
    let mut e = KNOWN;
    // The 500 bytes are freed by each next round too.
    e.deallocations += 1;
    e.freed_bytes += 500;
    assert_counts(&m, &e, 1000, "1000 calls at rate 4096");
    assert_eq!(m.net_bytes(), 0);
    assert_eq!(m.peak_bytes, KNOWN.peak_bytes);
}

/// Other threads allocate and free as fast as they can, and sample at the
/// default rate, while this thread measures: its counts are its own.
#[test]
fn other_threads_do_not_change_the_counts() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..3 {
            let stop = &stop;
            s.spawn(move || {
                let mut kept = Vec::new();
                let mut i = 0usize;
                while !stop.load(Relaxed) {
                    kept.push(vec![t as u8; 64 + i % 4096]);
                    if kept.len() > 256 {
                        kept.clear();
                    }
                    i += 1;
                }
            });
        }
        // Stops the other threads however this one leaves the scope: a
        // failed assertion must fail the test, not leave it waiting.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for round in 0..50 {
            let (kept, m) = measure(known_work);
            assert_counts(&m, &KNOWN, 1, &format!("round {round}"));
            assert_eq!(m.peak_bytes, KNOWN.peak_bytes, "round {round}");
            drop(kept);
        }
    });
}

/// Allocate 1 MiB, free it, allocate 512 KiB: the peak is 1 MiB, though
/// the call ends holding half of it. The 1 MiB block is past the fast
/// path's share of the countdown, which the slow path handles on its own.
#[test]
fn peak_is_the_highest_point_not_the_end() {
    let (kept, m) = measure(|| {
        drop(black_box(vec![0u8; 1 << 20]));
        black_box(vec![0u8; 512 << 10])
    });
    assert_eq!(m.peak_bytes, 1 << 20, "{m}");
    assert_eq!(m.net_bytes(), 512 << 10);
    assert_eq!((m.allocations, m.deallocations), (2, 1));
    // Freeing what the window left brings the thread's live bytes below
    // where a new window starts: the peak is growth, never below 0.
    let ((), m) = measure(|| drop(kept));
    assert_eq!(m.peak_bytes, 0);
    assert_eq!(m.net_bytes(), -(512 << 10));
}

/// A call that frees older memory first and then holds a temporary has
/// held the temporary: the frees do not hide it from the peak, in one
/// window, in an outer one around it, and across a future's polls.
#[test]
fn freeing_older_memory_does_not_hide_a_temporary() {
    let mut old = black_box(vec![0u8; 1 << 20]);
    let ((), m) = measure(|| {
        old.truncate(10);
        old.shrink_to_fit();
        drop(black_box(vec![0u8; 512 << 10]));
    });
    assert_eq!(m.peak_bytes, 512 << 10, "{m}");
    assert_eq!(m.net_bytes(), 10 - (1 << 20));
    drop(old);

    // Freed before an inner window opens, the temporary inside it: the
    // outer window counts the inner one's rise from its own lowest point.
    let mut old = black_box(vec![0u8; 1 << 20]);
    let ((), outer) = measure(|| {
        drop(std::mem::take(&mut old));
        let ((), inner) = measure(|| drop(black_box(vec![0u8; 4096])));
        assert_eq!(inner.peak_bytes, 4096, "inner: {inner}");
    });
    assert_eq!(outer.peak_bytes, 4096, "outer: {outer}");

    // One poll frees the older block and keeps 100 bytes, the next holds
    // a temporary beside them: both at once, across the polls.
    let mut old = Some(black_box(vec![0u8; 1 << 20]));
    let mut kept = None;
    let mut future = Box::pin(heapprof::measure_future(std::future::poll_fn(move |cx| {
        if kept.is_none() {
            drop(old.take());
            kept = Some(black_box(vec![0u8; 100]));
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        drop(black_box(vec![0u8; 8192]));
        std::task::Poll::Ready(kept.take())
    })));
    let (kept, m) = loop {
        if let std::task::Poll::Ready(done) = poll_once(&mut future) {
            break done;
        }
    };
    assert_eq!(m.peak_bytes, 100 + 8192, "{m}");
    drop(kept);
}

/// A realloc counts as the free of the old block and the allocation of
/// the new one, and the peak as its result.
#[test]
fn realloc_is_a_free_and_an_allocation() {
    let (v, m) = measure(|| {
        let mut v: Vec<u8> = black_box(Vec::with_capacity(100));
        v.reserve_exact(300);
        v.push(1);
        v.shrink_to_fit();
        black_box(v)
    });
    assert_eq!((m.allocations, m.deallocations), (3, 2), "{m}");
    assert_eq!(m.allocated_bytes, 100 + 300 + 1);
    assert_eq!(m.freed_bytes, 100 + 300);
    assert_eq!(m.peak_bytes, 300);
    drop(v);
}

/// The live bytes before the window are not the window's: a thread that
/// already holds memory starts at 0.
#[test]
fn growth_is_counted_from_where_the_window_starts() {
    let held = black_box(vec![0u8; 100_000]);
    let (kept, m) = measure(|| black_box(vec![0u8; 10]));
    assert_eq!(m.peak_bytes, 10);
    drop((held, kept));
}

/// An inner measure counts its closure; the outer one everything, with
/// its peak reached inside the inner closure.
#[test]
fn measures_nest() {
    let (((), inner), outer) = measure(|| {
        let a = black_box(vec![0u8; 1000]);
        let r = measure(|| {
            drop(black_box(vec![0u8; 2000]));
            black_box(vec![0u8; 300]).leak();
        });
        drop(a);
        black_box(vec![0u8; 50]);
        r
    });
    assert_eq!((inner.allocations, inner.allocated_bytes), (2, 2300));
    assert_eq!(inner.peak_bytes, 2000, "inner: {inner}");
    assert_eq!(inner.net_bytes(), 300);
    assert_eq!((outer.allocations, outer.allocated_bytes), (4, 3350));
    assert_eq!(
        outer.peak_bytes, 3000,
        "outer: 1000 held when the inner one rose by 2000: {outer}"
    );
    assert_eq!(outer.net_bytes(), 300);
}

/// An outer window's peak reached before an inner one survives the inner
/// one, also when its closure panics.
#[test]
fn an_inner_window_that_panics_leaves_the_outer_one_right() {
    let ((), outer) = measure(|| {
        drop(black_box(vec![0u8; 10_000]));
        let caught = catch_unwind(|| {
            measure(|| {
                black_box(vec![0u8; 100]).leak();
                // Not `panic!`: the panic hook may capture and symbolize a
                // backtrace (RUST_BACKTRACE), and keep what it allocated.
                std::panic::resume_unwind(Box::new(()));
            })
        });
        assert!(caught.is_err());
    });
    assert_eq!(
        outer.peak_bytes, 10_000,
        "the outer mark before the inner window: {outer}"
    );
    assert!(
        outer.net_bytes() >= 100 && outer.net_bytes() < 1000,
        "the inner window's 100 bytes, and what unwinding keeps: {outer}"
    );
    // The thread is not left measuring: a new window starts afresh.
    let (kept, m) = measure(known_work);
    assert_counts(&m, &KNOWN, 1, "after a panic");
    assert_eq!(m.peak_bytes, KNOWN.peak_bytes);
    drop(kept);
}

/// Threads the closure starts are not counted.
#[test]
fn spawned_threads_are_not_counted() {
    let (v, m) = measure(|| std::thread::scope(|s| s.spawn(|| vec![0u8; 1 << 16]).join()));
    let v = v.unwrap();
    assert!(
        m.allocated_bytes < 1 << 16,
        "the spawned thread's block is not this thread's: {m}"
    );
    drop(v);
}

/// Printing a snapshot (`{snapshot}`, as a failing test's message does)
/// builds its table as heapprof's own work: only the text, in the
/// caller's buffer, is the caller's.
#[test]
fn printing_a_snapshot_counts_only_the_text() {
    let _rate = at_rate(1);
    let kept: Vec<Vec<u8>> = (0..50).map(|i| vec![0u8; 1000 + i]).collect();
    let snapshot = heapprof::snapshot();
    let mut text = String::with_capacity(1 << 20);
    let ((), m) = measure(|| {
        use std::fmt::Write as _;
        write!(text, "{snapshot}").unwrap();
    });
    assert!(text.contains("live bytes"), "{text}");
    assert_eq!(m.allocations, 0, "{m}");
    drop(kept);
}

fn panic_message(f: impl FnOnce()) -> String {
    heapprof_testkit::check::panic_message(f).expect("the assertion fails")
}

#[inline(never)]
fn allocates_ten_blocks() -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(10);
    for i in 0..10 {
        v.push(black_box(vec![i as u8; 100]));
    }
    black_box(v)
}

/// At rate 1 the message has the numbers and the function that allocated.
#[test]
fn assertion_messages_show_numbers_and_sites() {
    let _rate = at_rate(1);
    drop(allocates_ten_blocks());
    let (kept, m) = measure(allocates_ten_blocks);
    // Ten blocks of 100 bytes and the vector of ten `Vec`s that holds them.
    let bytes = 10 * 100 + 10 * std::mem::size_of::<Vec<u8>>() as u64;
    m.assert_allocations_at_most(11);
    m.assert_peak_at_most(bytes);
    let msg = panic_message(|| m.assert_allocations_at_most(10));
    assert!(
        msg.contains("11 allocations, more than the 10 allowed"),
        "{msg}"
    );
    assert!(msg.contains(&format!("peak 1.2 KiB = {bytes} B")), "{msg}");
    assert!(msg.contains("every allocation sampled: exact"), "{msg}");
    assert!(msg.contains("measure::allocates_ten_blocks"), "{msg}");
    // The sites' rows (allocs, bytes, live bytes, names) add up to the
    // window's numbers.
    let rows: Vec<[i64; 3]> = msg
        .lines()
        .filter_map(|l| {
            let cols: Vec<i64> = l
                .split_whitespace()
                .take(3)
                .map_while(|c| c.parse().ok())
                .collect();
            cols.try_into().ok()
        })
        .collect();
    let total = rows
        .iter()
        .fold([0; 3], |t, r| [t[0] + r[0], t[1] + r[1], t[2] + r[2]]);
    assert_eq!(total, [11, bytes as i64, bytes as i64], "{msg}");
    let msg = panic_message(|| m.assert_peak_at_most(bytes - 1));
    assert!(
        msg.contains(&format!(
            "peak of {bytes} bytes, more than the {} allowed",
            bytes - 1
        )),
        "{msg}"
    );
    let msg = panic_message(|| m.assert_no_growth());
    assert!(
        msg.contains(&format!("live memory grew by {bytes} bytes")),
        "{msg}"
    );
    drop(kept);
    let ((), m) = measure(|| drop(allocates_ten_blocks()));
    m.assert_no_growth();
}

/// With nothing sampled, the message says why there are no sites.
#[test]
fn with_sampling_off_the_message_says_so() {
    let _rate = at_rate(0);
    let (kept, m) = measure(allocates_ten_blocks);
    let msg = panic_message(|| m.assert_allocations_at_most(0));
    assert!(
        msg.contains("11 allocations, more than the 0 allowed"),
        "{msg}"
    );
    assert!(msg.contains("sampling is off"), "{msg}");
    drop(kept);
}

static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn leaky_handler() {
    LEAKED.lock().unwrap().push(vec![0u8; 48]);
}

#[test]
fn assert_no_leak_catches_a_leak() {
    let _rate = at_rate(1);
    let msg = panic_message(|| heapprof::assert_no_leak(2, 20, leaky_handler));
    assert!(msg.contains("leak: live memory grew by"), "{msg}");
    assert!(msg.contains("over 20 calls"), "{msg}");
    assert!(msg.contains("measure::leaky_handler"), "{msg}");
    // A block a call: not the growth of a buffer.
    assert!(!msg.contains("fewer than the calls"), "{msg}");
}

/// Growth held in one buffer that doubles now and then (what `println!`
/// does to the buffer of a test's captured output) is reported, and the
/// message says it is growth in steps rather than a block per call.
#[test]
fn growth_in_steps_is_told_from_a_block_per_call() {
    let mut captured: Vec<u8> = Vec::new();
    let msg = panic_message(|| {
        heapprof::assert_no_leak(2, 100, || captured.extend_from_slice(b"line\n"))
    });
    assert!(msg.contains("leak: live memory grew by"), "{msg}");
    assert!(
        msg.contains("the growth is held in 1 block, fewer than the calls"),
        "{msg}"
    );
    black_box(captured);
}

static CACHE: OnceLock<Vec<u8>> = OnceLock::new();

/// Builds a cache on its first call, then only reads it; allocates and
/// frees scratch space on every call.
#[inline(never)]
fn cached_lookup() -> usize {
    let cache = CACHE.get_or_init(|| vec![7u8; 4096]);
    let scratch = black_box(vec![0u8; 256]);
    cache.len() + scratch.len()
}

#[test]
fn assert_no_leak_allows_a_lazily_built_cache() {
    heapprof::assert_no_leak(1, 50, cached_lookup);
}

/// Memory a call holds until the next call frees it is not a leak.
#[test]
fn assert_no_leak_allows_memory_the_next_call_frees() {
    let mut last: Option<Vec<u8>> = None;
    heapprof::assert_no_leak(1, 10, || last = Some(black_box(vec![0u8; 1000])));
}

/// Without warm-up, the cache's first build is growth: the definition
/// counts what the measured calls leave, nothing else.
#[test]
fn assert_no_leak_without_warmup_sees_the_first_build() {
    static FIRST: OnceLock<Vec<u8>> = OnceLock::new();
    let msg = panic_message(|| {
        heapprof::assert_no_leak(0, 5, || {
            FIRST.get_or_init(|| vec![0u8; 777]);
        })
    });
    assert!(msg.contains("grew by 777 bytes over 5 calls"), "{msg}");
}

#[test]
fn assert_no_leak_needs_an_iteration() {
    let msg = panic_message(|| heapprof::assert_no_leak(1, 0, || ()));
    assert!(msg.contains("iterations is 0"), "{msg}");
}

/// The failure message's caveat about blocks handed to other threads
/// comes only when other threads freed blocks during the calls: alone in
/// a child process, a plain leak gets none, and calls whose blocks a
/// consumer thread frees get it.
#[test]
fn the_caveat_about_other_threads_comes_when_they_freed() {
    let test = "the_caveat_about_other_threads_comes_when_they_freed";
    if !heapprof_testkit::child::is_child() {
        heapprof_testkit::child::run_child(test, &[]);
        return;
    }
    const CAVEAT: &str = "counts as held even after that thread frees it";
    let msg = panic_message(|| {
        heapprof::assert_no_leak(1, 10, || std::mem::forget(black_box(vec![0u8; 64])))
    });
    assert!(msg.contains("grew by 640 bytes over 10 calls"), "{msg}");
    assert!(
        !msg.contains(CAVEAT),
        "no other thread freed anything:\n{msg}"
    );

    let (blocks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
    let (ack, acked) = std::sync::mpsc::sync_channel::<()>(0);
    let consumer = std::thread::spawn(move || {
        for block in received {
            drop(block);
            ack.send(()).unwrap();
        }
    });
    let msg = panic_message(|| {
        heapprof::assert_no_leak(1, 10, || {
            blocks.send(black_box(vec![0u8; 64])).unwrap();
            acked.recv().unwrap();
        })
    });
    assert!(msg.contains("leak: live memory grew by"), "{msg}");
    assert!(
        msg.contains(CAVEAT),
        "the consumer freed the calls' blocks:\n{msg}"
    );
    drop(blocks);
    consumer.join().unwrap();
}

/// What the check in [`CheckedAtExit`]'s destructor found: `Some(None)`
/// passed, `Some(Some(message))` failed.
static AT_EXIT: Mutex<Option<Option<String>>> = Mutex::new(None);

/// A thread-local whose destructor runs an `assert_no_leak` of calls that
/// leak nothing.
struct CheckedAtExit;

impl Drop for CheckedAtExit {
    fn drop(&mut self) {
        let outcome = catch_unwind(|| {
            heapprof::assert_no_leak(1, 10, || black_box(vec![0u8; 64]));
        });
        let message = outcome.err().map(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "a panic".into())
        });
        *AT_EXIT.lock().unwrap() = Some(message);
    }
}

std::thread_local! {
    static CHECKED_AT_EXIT: CheckedAtExit = const { CheckedAtExit };
}

/// A thread-local touched before the thread's first allocation has its
/// destructor run after heapprof has let the thread go (destructors run
/// last registered first); a leak check there sees every block its calls
/// allocate, as it sees every free.
#[test]
fn a_leak_check_in_a_thread_local_destructor_is_right() {
    std::thread::spawn(|| {
        CHECKED_AT_EXIT.with(|_| ());
        // The thread's first allocation: heapprof takes the thread in,
        // and will let it go before the destructor above runs.
        drop(black_box(vec![1u8; 10]));
    })
    .join()
    .unwrap();
    let outcome = AT_EXIT.lock().unwrap().take();
    assert_eq!(outcome, Some(None), "the check at the thread's exit");
}

/// Blocks another thread allocated, for a handler to drop.
fn blocks_from_another_thread(n: usize, size: usize) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (send, receive) = std::sync::mpsc::sync_channel(n);
    std::thread::spawn(move || {
        for _ in 0..n {
            send.send(black_box(vec![3u8; size])).unwrap();
        }
    })
    .join()
    .unwrap();
    receive
}

/// A handler that leaks on its own thread while it drops replies another
/// thread allocated (`block_on` of a spawned task) leaks all the same:
/// those frees offset nothing.
#[test]
fn frees_of_other_threads_blocks_do_not_hide_a_leak() {
    let replies = blocks_from_another_thread(22, 4096);
    let leaked: Mutex<Vec<Box<[u8; 256]>>> = Mutex::new(Vec::with_capacity(32));
    let msg = panic_message(|| {
        heapprof::assert_no_leak(2, 20, || {
            drop(replies.recv().unwrap());
            leaked.lock().unwrap().push(black_box(Box::new([0u8; 256])));
        })
    });
    assert!(msg.contains("grew by 5120 bytes over 20 calls"), "{msg}");
    assert!(
        msg.contains(
            "freed 81920 bytes of blocks allocated before assert_no_leak began or on other threads"
        ),
        "{msg}"
    );
}

/// Something built once on first use counts as growth without warm-up
/// calls, and the message says to give some; one is enough.
#[test]
fn a_first_use_without_warm_ups_is_put_down_to_them() {
    let built: OnceLock<Vec<u8>> = OnceLock::new();
    let msg = panic_message(|| {
        heapprof::assert_no_leak(0, 10, || {
            black_box(built.get_or_init(|| vec![1u8; 4096]));
        })
    });
    assert!(msg.contains("grew by 4096 bytes over 10 calls"), "{msg}");
    assert!(
        msg.contains("give assert_no_leak a warm-up call or more"),
        "{msg}"
    );
    let again: OnceLock<Vec<u8>> = OnceLock::new();
    heapprof::assert_no_leak(1, 10, || {
        black_box(again.get_or_init(|| vec![1u8; 4096]));
    });
}

/// Where a block waits between the calls and [`ResizingWorker`]'s
/// thread.
enum Handoff {
    Empty,
    ToWorker(Vec<u8>),
    Back(Vec<u8>),
    Stop,
}

/// A thread that resizes, in place, each block the calls hand it (`resize`
/// gives the new capacity from the block's usable size) and hands it
/// back. A mutex and a condition variable carry the blocks: they allocate
/// nothing on the calling thread, which a channel's waiting may. The
/// thread panics if a block moved: the tests below need the address kept.
struct ResizingWorker {
    handoff: std::sync::Arc<(Mutex<Handoff>, std::sync::Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl ResizingWorker {
    fn start(resize: fn(usize) -> usize) -> ResizingWorker {
        let handoff = std::sync::Arc::new((Mutex::new(Handoff::Empty), std::sync::Condvar::new()));
        let theirs = std::sync::Arc::clone(&handoff);
        let thread = std::thread::spawn(move || {
            let (slot, changed) = &*theirs;
            let mut slot = slot.lock().unwrap();
            loop {
                match std::mem::replace(&mut *slot, Handoff::Empty) {
                    Handoff::ToWorker(mut block) => {
                        let at = block.as_ptr();
                        // SAFETY: a live block of the system allocator
                        // (unsampled at the tests' rate, so heapprof
                        // passed it on as it came).
                        let usable = unsafe { libc::malloc_usable_size(block.as_mut_ptr().cast()) };
                        let capacity = resize(usable);
                        if capacity > block.capacity() {
                            block.reserve_exact(capacity);
                        } else {
                            block.shrink_to(capacity);
                        }
                        assert_eq!(block.as_ptr(), at, "the C library moved the block");
                        *slot = Handoff::Back(block);
                        changed.notify_all();
                    }
                    Handoff::Stop => return,
                    other => {
                        *slot = other;
                        slot = changed.wait(slot).unwrap();
                    }
                }
            }
        });
        ResizingWorker {
            handoff,
            thread: Some(thread),
        }
    }

    /// Hands `block` to the thread and waits for it back, resized.
    fn resize(&self, block: Vec<u8>) -> Vec<u8> {
        let (slot, changed) = &*self.handoff;
        let mut slot = slot.lock().unwrap();
        *slot = Handoff::ToWorker(block);
        changed.notify_all();
        loop {
            match std::mem::replace(&mut *slot, Handoff::Empty) {
                Handoff::Back(block) => return block,
                other => {
                    *slot = other;
                    slot = changed.wait(slot).unwrap();
                }
            }
        }
    }
}

impl Drop for ResizingWorker {
    fn drop(&mut self) {
        let (slot, changed) = &*self.handoff;
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Handoff::Stop;
        changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            if !std::thread::panicking() {
                joined.unwrap();
            }
        }
    }
}

/// A block the calls allocate and another thread grows in place (a
/// worker appending to a buffer it was sent) is the calls' own only up to
/// the size they allocated: the rest of its free was the worker's
/// allocation, and offsets nothing, so it cannot hide a leak of as much.
#[test]
fn a_block_grown_in_place_by_another_thread_hides_no_leak() {
    let _rate = at_rate(1 << 30);
    let worker = ResizingWorker::start(|usable| usable);
    let grown = std::cell::Cell::new(0);
    let leaked: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::with_capacity(32));
    let msg = panic_message(|| {
        heapprof::assert_no_leak(2, 20, || {
            let block = worker.resize(Vec::with_capacity(100));
            grown.set(block.capacity() - 100);
            // A leak of as many bytes as the worker added.
            leaked
                .lock()
                .unwrap()
                .push(black_box(vec![0u8; grown.get()]));
            drop(block);
        })
    });
    drop(worker);
    assert!(
        grown.get() > 0,
        "the block did not grow: the test shows nothing"
    );
    assert!(
        msg.contains(&format!("grew by {} bytes over 20 calls", 20 * grown.get())),
        "{msg}"
    );
}

/// A block the calls allocate and another thread shrinks in place, and
/// that the calls then free, is gone whole: no leak.
#[test]
fn a_block_shrunk_in_place_by_another_thread_is_freed_whole() {
    let _rate = at_rate(1 << 30);
    let worker = ResizingWorker::start(|_| 16);
    heapprof::assert_no_leak(2, 20, || {
        drop(worker.resize(Vec::with_capacity(100_000)));
    });
}

/// A call that replaces a value set up before `assert_no_leak` frees what
/// an earlier call allocated once a warm-up call has run: no leak. Without
/// one, the first replacement's free offsets nothing, and the message
/// says why.
#[test]
fn replacing_a_value_set_up_before_needs_a_warm_up() {
    let mut value = black_box(vec![0u8; 1000]);
    heapprof::assert_no_leak(1, 10, || value = black_box(vec![1u8; 1000]));
    let msg =
        panic_message(|| heapprof::assert_no_leak(0, 10, || value = black_box(vec![2u8; 1000])));
    assert!(msg.contains("grew by 1000 bytes over 10 calls"), "{msg}");
    assert!(
        msg.contains("a warm-up call lets a call free what an earlier one allocated"),
        "{msg}"
    );
    drop(value);
}

/// The two tests above again, each alone in a child process at a rate
/// that samples nothing: there the free filter passes most frees on
/// without a look, unless `assert_no_leak` has the thread's frees looked
/// at (in this binary, other tests' samples may have it look at every
/// free anyway).
#[test]
fn every_free_is_seen_when_nothing_is_sampled() {
    if heapprof_testkit::child::is_child() {
        return;
    }
    for test in [
        "frees_of_other_threads_blocks_do_not_hide_a_leak",
        "replacing_a_value_set_up_before_needs_a_warm_up",
    ] {
        heapprof_testkit::child::run_child(test, &[("HEAPPROF_SAMPLE_RATE", "1073741824")]);
    }
}

/// A negative change carries its sign on both figures.
#[test]
fn a_negative_net_is_shown_with_its_sign() {
    let held = black_box(vec![0u8; 2000]);
    let ((), m) = measure(|| drop(held));
    assert_eq!(m.net_bytes(), -2000);
    assert!(m.to_string().contains("net -2.0 KiB = -2000 B"), "{m}");
}

/// Buffers grown by `realloc` at a rate where sampled blocks are
/// page-aligned, so that reallocs of sampled blocks move them: each move
/// is one free of the old block for the leak check, not two.
#[test]
fn reallocs_that_move_sampled_blocks_are_no_leak() {
    let _rate = at_rate(64 << 10);
    heapprof::assert_no_leak(2, 300, || {
        let mut v: Vec<u8> = Vec::new();
        for i in 0..4096 {
            v.push(i as u8);
        }
        black_box(v);
    });
}

/// Allocates 40 bytes, kept.
#[inline(never)]
fn keeps_forty() -> Vec<u8> {
    black_box(vec![4u8; 40])
}

/// Two calls of one function, on lines of their own: two stacks (their
/// return addresses differ) that show the same functions.
#[inline(never)]
fn keeps_forty_twice() -> (Vec<u8>, Vec<u8>) {
    let a = keeps_forty();
    let b = keeps_forty();
    (a, b)
}

/// A failed assertion lists the stacks that show the same frames as one
/// row, their counts summed, so that one loop unrolled into many return
/// addresses does not fill the list.
#[test]
fn sites_that_show_the_same_frames_are_one_row() {
    let _rate = at_rate(1);
    let (kept, m) = measure(keeps_forty_twice);
    let message = catch_unwind(|| m.assert_allocations_at_most(0))
        .expect_err("two allocations are more than 0")
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    let rows: Vec<&str> = message
        .lines()
        .filter(|l| l.contains("measure::keeps_forty <"))
        .collect();
    assert_eq!(rows.len(), 1, "{message}");
    let numbers: Vec<&str> = rows[0].split_whitespace().take(3).collect();
    assert_eq!(numbers, ["2", "80", "80"], "{message}");
    drop(kept);
}

/// Wrapping a future in `measure_future` allocates nothing of the
/// program's: an enclosing measure of the wrapped call counts what the
/// call allocates, not the wrapper (a wrapper that boxed the future showed
/// one allocation of the future's size).
#[test]
fn a_measured_future_inside_a_measure_adds_nothing() {
    let inner = async {
        let big = black_box([7u8; 4096]);
        YieldOnce::new().await;
        black_box(vec![big[0]; 100])
    };
    let (measured, wrapping) = measure(|| heapprof::measure_future(inner));
    assert_eq!(
        (wrapping.allocations, wrapping.allocated_bytes),
        (0, 0),
        "{wrapping}"
    );
    let mut outer = Box::pin(heapprof::measure_future(measured));
    let ((kept, inner), outer) = loop {
        if let std::task::Poll::Ready(done) = poll_once(&mut outer) {
            break done;
        }
    };
    assert_eq!(
        (inner.allocations, inner.allocated_bytes),
        (1, 100),
        "{inner}"
    );
    assert_eq!(
        (outer.allocations, outer.allocated_bytes),
        (1, 100),
        "{outer}"
    );
    drop(kept);
}

/// A handler measured with `measure_future` while another task, polled on
/// the same thread between the handler's polls, allocates 5 000 bytes at
/// each of its turns; the handler's second half runs on another thread.
/// Only the handler's own work counts, exactly, and its peak counts
/// across polls: 8 000 bytes freed in one poll before 3 000 are allocated
/// do not add up, and the peak is where the last poll leaves the handler
/// (3 000 + 3 × 4 000 + the vector), not the highest of any one poll.
#[test]
fn a_measured_future_counts_its_own_polls_on_any_thread() {
    let handler = async {
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(4);
        kept.push(black_box(vec![1u8; 8_000]));
        YieldOnce::new().await;
        drop(kept.pop());
        kept.push(black_box(vec![2u8; 3_000]));
        YieldOnce::new().await;
        for _ in 0..3 {
            kept.push(black_box(vec![3u8; 4_000]));
            YieldOnce::new().await;
        }
        kept
    };
    let mut measured = Box::pin(heapprof::measure_future(handler));
    let mut background: Vec<Vec<u8>> = Vec::with_capacity(64);
    // Two polls here, with the other task's turns in between...
    for _ in 0..2 {
        assert!(poll_once(&mut measured).is_pending());
        background.push(black_box(vec![0u8; 5_000]));
    }
    // ...and the rest on another thread.
    let (kept, m) = std::thread::spawn(move || {
        loop {
            if let std::task::Poll::Ready(done) = poll_once(&mut measured) {
                break done;
            }
        }
    })
    .join()
    .unwrap();
    let vector = 4 * std::mem::size_of::<Vec<u8>>() as u64;
    assert_eq!(
        (m.allocations, m.allocated_bytes),
        (6, vector + 8_000 + 3_000 + 3 * 4_000),
        "{m}"
    );
    assert_eq!((m.deallocations, m.freed_bytes), (1, 8_000), "{m}");
    assert_eq!(m.peak_bytes, vector + 15_000, "{m}");
    assert_eq!(m.net_bytes(), (vector + 15_000) as i64, "{m}");
    drop((kept, background));
}

/// The docs' advice for exact net bytes on a `current_thread` runtime:
/// measure the whole `block_on`, which frees what the runtime makes per
/// call (tokio's list of deferred wakeups, made at the first yield) before
/// it returns. A future that yields and keeps nothing nets zero each time;
/// `measure_future` inside the `block_on` shows that list as held, as the
/// docs say.
#[test]
fn a_whole_block_on_of_a_current_thread_runtime_is_exact() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handler = || async {
        let v = black_box(vec![1u8; 1000]);
        tokio::task::yield_now().await;
        drop(v);
    };
    // What the runtime builds once, the first time it runs a task.
    rt.block_on(handler());
    for _ in 0..3 {
        let ((), m) = heapprof::measure(|| rt.block_on(handler()));
        assert_eq!(m.net_bytes(), 0, "{m}");
        assert!(m.allocated_bytes >= 1000, "{m}");
    }
    let ((), m) = rt.block_on(heapprof::measure_future(handler()));
    assert!(
        m.net_bytes() > 0,
        "the README says measure_future inside a current_thread block_on shows tokio's \
         list of deferred wakeups as held; it no longer does: {m}"
    );
}

/// The README's advice for a call that spawns tasks: on a
/// `current_thread` runtime the task is allocated and freed on the calling
/// thread, so a call that leaks nothing passes `assert_no_leak` (on a
/// multi-thread runtime it failed four runs in five).
#[test]
fn a_call_that_spawns_on_a_current_thread_runtime_does_not_leak() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    heapprof::assert_no_leak(3, 50, || {
        rt.block_on(async {
            let task = tokio::spawn(async { drop(black_box(vec![0u8; 64])) });
            task.await.unwrap();
        })
    });
}
