//! What is isolated when tests share one process: tests on parallel
//! threads (the harness's default), each taking deltas around its own code
//! at rate 1, get exact numbers for the functions they select by name,
//! whatever the others allocate meanwhile. (What is not isolated: the rate
//! is process-wide, so all of these set the same one, and a delta's
//! totals count every thread: beta's delta may well contain alpha's
//! blocks, if the two ran at the same time.)

use heapprof_testkit::check::panic_message;
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

/// Asserts that `delta.assert_inuse_at_most(function, max)` fails, saying
/// that `function` added `added` live bytes.
fn assert_fails_with_added(delta: &heapprof::Snapshot, function: &str, max: i64, added: i64) {
    let message = panic_message(|| delta.assert_inuse_at_most(function, max))
        .unwrap_or_else(|| panic!("the assertion passed: {added} bytes added were hidden"));
    assert!(
        message.contains(&format!("`{function}` added {added} live bytes")),
        "{message}"
    );
}

/// Builds a report of `bytes` bytes, for the test below alone.
#[inline(never)]
fn build_report(bytes: usize) -> Vec<u8> {
    // A byte no other function here fills with: two functions of the same
    // code are one in a release build, under one of their names.
    black_box(vec![0x42u8; bytes])
}

/// Another thread (another test, in a real suite) keeps blocks it built
/// through the same function meanwhile: they count, and the failure says
/// how much each thread added, by the `thread` label (a test's name).
#[test]
fn a_failure_says_what_each_thread_added() {
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let kept = build_report(11_111);
    let other = std::thread::Builder::new()
        .name("another-test".into())
        .spawn(|| build_report(22_222))
        .unwrap()
        .join()
        .unwrap();
    let delta = heapprof::snapshot().delta(&before);
    let message = panic_message(|| {
        delta.assert_inuse_at_most("parallel_isolation::build_report", 1000);
    })
    .expect("33 333 bytes added");
    // The label is the system's name of the thread, its first 15 bytes.
    assert!(
        message.contains("by thread: \"another-test\" 22222, \"a_failure_says_\" 11111"),
        "{message}"
    );
    drop((kept, other));
}

/// Builds a cache of `bytes` bytes, called by two tests below.
#[inline(never)]
fn build_cache(bytes: usize) -> Vec<u8> {
    black_box(vec![7u8; bytes])
}

/// Another test calls the same function from its own stack, and drops what
/// it built while this one runs: its stack's live bytes fall by as much as
/// this test's rise. Summed over the function, the two cancel out; the
/// assertion must still see what this test's stack added.
#[test]
fn another_tests_frees_do_not_hide_growth() {
    heapprof::set_sample_rate(1);
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let other_test = s.spawn(|| {
            let built = build_cache(12_345);
            barrier.wait(); // built
            barrier.wait(); // this test has taken its first snapshot
            drop(built);
            barrier.wait(); // dropped
        });
        barrier.wait();
        let before = heapprof::snapshot();
        barrier.wait();
        barrier.wait();
        let kept = build_cache(12_345);
        let delta = heapprof::snapshot().delta(&before);
        other_test.join().unwrap();
        println!("{delta}");
        // Net over the function: the other stack's -12 345 and this one's
        // +12 345.
        assert_eq!(delta.inuse_bytes_in("parallel_isolation::build_cache"), 0);
        assert_fails_with_added(&delta, "parallel_isolation::build_cache", 1000, 12345);
        drop(kept);
    });
}

/// Builds a table of `bytes` bytes, for the test below alone (another
/// test calling it at the same time would add its blocks to the delta).
#[inline(never)]
fn build_table(bytes: usize) -> Vec<u8> {
    black_box(vec![9u8; bytes])
}

/// A worker thread that builds tables on request, as a runtime's worker
/// runs the tasks of every test: all it builds has the one stack.
fn table_worker() -> (
    std::sync::mpsc::Sender<usize>,
    std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let (ask, asked) = std::sync::mpsc::channel::<usize>();
    let (give, given) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for bytes in asked {
            let _ = give.send(build_table(bytes));
        }
    });
    (ask, given)
}

/// Another test's table and this test's are built by the same worker, at
/// the same stack, so they share a site. The other test drops its older
/// table while this one's is built: the site's live bytes do not change,
/// and the assertion must still see what was added.
#[test]
fn frees_at_the_same_stack_do_not_hide_growth() {
    heapprof::set_sample_rate(1);
    let (ask, given) = table_worker();
    let build = |bytes| {
        ask.send(bytes).unwrap();
        given.recv().unwrap()
    };
    // A thread's first sample may be unwound another way, into a stack
    // that differs from the later ones below the frames shown.
    drop(build(1));
    let other_tests = build(23_456);
    let before = heapprof::snapshot();
    let kept = build(23_456);
    drop(other_tests);
    let delta = heapprof::snapshot().delta(&before);
    println!("{delta}");
    let sites = delta
        .sites()
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function.contains("parallel_isolation::build_table"))
        })
        .count();
    assert_eq!(sites, 1, "both tables are built at one stack");
    assert_eq!(delta.inuse_bytes_in("parallel_isolation::build_table"), 0);
    assert_fails_with_added(&delta, "parallel_isolation::build_table", 1000, 23456);
    drop(kept);
}

/// A request handler, run as a task.
#[inline(never)]
async fn handle(bytes: usize) -> Vec<u8> {
    black_box(vec![5u8; bytes])
}

/// The same with tokio: tasks that two tests spawn on one runtime run on
/// its workers, whose stacks do not show which test spawned them.
#[test]
fn frees_by_another_tests_task_do_not_hide_growth() {
    heapprof::set_sample_rate(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let handled = |bytes| rt.block_on(rt.spawn(handle(bytes))).unwrap();
    // The worker's first sample, which may be unwound another way.
    drop(handled(1));
    let other_tests = handled(34_567);
    let before = heapprof::snapshot();
    let kept = handled(34_567);
    drop(other_tests);
    let delta = heapprof::snapshot().delta(&before);
    println!("{delta}");
    assert_eq!(delta.inuse_bytes_in("parallel_isolation::handle"), 0);
    assert_fails_with_added(&delta, "parallel_isolation::handle", 1000, 34567);
    drop(kept);
}

/// An index of `u64`s, made before the window and grown inside it.
struct Index(Vec<u64>);

impl Index {
    #[inline(never)]
    fn new(n: usize) -> Index {
        Index(black_box(Vec::with_capacity(n)))
    }

    /// Grows the index to hold `n` entries: a `realloc` whose old block
    /// leaves `Index::new`'s stack and whose new one is this stack's.
    #[inline(never)]
    fn grow_to(&mut self, n: usize) {
        self.0.reserve_exact(n - self.0.len());
        black_box(&self.0);
    }
}

/// Growth by `realloc` moves a block from one of the test's stacks to
/// another, and the new block is the same allocation as the old
/// (`realloc` hands its origin on): what counts is what the index grew
/// by, not its whole new size.
#[test]
fn growth_by_realloc_counts_once() {
    heapprof::set_sample_rate(1);
    let mut index = Index::new(1000);
    let before = heapprof::snapshot();
    index.grow_to(2000);
    let delta = heapprof::snapshot().delta(&before);
    println!("{delta}");
    assert_eq!(delta.inuse_bytes_in("parallel_isolation::Index"), 8000);
    delta.assert_inuse_at_most("parallel_isolation::Index", 8000);
    let outcome =
        std::panic::catch_unwind(|| delta.assert_inuse_at_most("parallel_isolation::Index", 7999));
    assert!(outcome.is_err(), "8000 bytes are more than 7999");
    drop(index);
}
