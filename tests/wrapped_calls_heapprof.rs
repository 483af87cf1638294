//! A wrapped allocator whose methods write a profile (a dump as memory
//! runs short, say). heapprof calls those methods while it holds its own
//! locks, as it grows its tables (the first allocation's list of loaded
//! objects among them): a profile written then returns `WouldBlock` instead
//! of waiting for good for a lock its own thread holds; one written at any
//! other time is written.

use heapprof_testkit::child::{is_child, printed_number, run_child};
use heapprof_testkit::watchdog::watchdog;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Whether the allocator writes profiles: in the child only (0 not known
/// yet, 1 yes, 2 no), read from the environment without allocating, since
/// the first allocation comes before `main`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
static WROTE: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
/// Profiles the allocator writes at most.
const MOST: usize = 300;

thread_local! {
    /// Set while this thread's allocator writes a profile: the profile's
    /// own allocations write none.
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

fn active() -> bool {
    if ACTIVE.load(Relaxed) == 0 {
        // SAFETY: a NUL-terminated name; nothing sets the environment
        // while the test runs.
        let set = !unsafe { libc::getenv(c"HEAPPROF_TEST_CHILD".as_ptr()) }.is_null();
        ACTIVE.store(if set { 1 } else { 2 }, Relaxed);
    }
    ACTIVE.load(Relaxed) == 1
}

/// Writes a profile on each of the first 64 calls and every 64th after.
fn write_a_profile_now_and_then() {
    let n = CALLS.fetch_add(1, Relaxed);
    let written = WROTE.load(Relaxed) + REFUSED.load(Relaxed) + FAILED.load(Relaxed);
    if !active() || (n >= 64 && !n.is_multiple_of(64)) || written >= MOST {
        return;
    }
    if WRITING.try_with(|w| w.replace(true)).unwrap_or(true) {
        return;
    }
    match heapprof::write_profile(std::io::sink()) {
        Ok(()) => WROTE.fetch_add(1, Relaxed),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => REFUSED.fetch_add(1, Relaxed),
        Err(_) => FAILED.fetch_add(1, Relaxed),
    };
    WRITING.with(|w| w.set(false));
}

/// The system's allocator, writing a profile now and then.
struct Dumping;

// SAFETY: every method forwards to `System` with its caller's arguments.
unsafe impl GlobalAlloc for Dumping {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        write_a_profile_now_and_then();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<Dumping> = heapprof::Profiler::wrap(Dumping);

#[inline(never)]
fn churn(seed: usize) -> usize {
    let kept: Vec<Vec<u8>> = (0..2_000)
        .map(|i| vec![0u8; 16 + (i * seed) % 4000])
        .collect();
    kept.iter().map(Vec::len).sum()
}

#[test]
fn profiles_written_by_the_wrapped_allocator_never_wait_for_heapprofs_locks() {
    if is_child() {
        heapprof::set_sample_rate(1);
        let threads: Vec<_> = (1..=4)
            .map(|t| std::thread::spawn(move || (0..20).map(|k| churn(t * 31 + k)).sum::<usize>()))
            .collect();
        for t in threads {
            assert!(t.join().unwrap() > 0);
        }
        let (wrote, refused, failed) = (
            WROTE.load(Relaxed),
            REFUSED.load(Relaxed),
            FAILED.load(Relaxed),
        );
        println!("wrote={wrote} refused={refused} failed={failed}");
        return;
    }
    let _watchdog = watchdog(
        "profiles_written_by_the_wrapped_allocator",
        Duration::from_secs(300),
    );
    let (stdout, _) = run_child(
        "profiles_written_by_the_wrapped_allocator_never_wait_for_heapprofs_locks",
        &[],
    );
    println!("{stdout}");
    // The first allocation's list of loaded objects grows under its lock.
    assert!(printed_number(&stdout, "refused=") >= 1, "{stdout}");
    assert!(printed_number(&stdout, "wrote=") >= 1, "{stdout}");
    assert_eq!(printed_number(&stdout, "failed="), 0, "{stdout}");
}
