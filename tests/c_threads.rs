//! Threads started from C (`pthread_create`) whose contact with heapprof
//! begins or ends at odd moments of their exit:
//!
//! * the first contact is a free in a `pthread_key` destructor, after the
//!   thread's Rust thread-local destructors have run: the thread must not
//!   be left in the registry of running threads, whose entries point into
//!   thread-local memory that glibc hands to the next thread (reading it
//!   double-counted, or crashed once the stack was unmapped);
//! * a Rust `thread_local!` buffer touched before the first allocation is
//!   freed after heapprof's own exit hook: those frees must still count.
//!
//! * a `pthread_key` destructor that allocates and keeps what it allocated
//!   runs after heapprof's exit hook: those blocks must be counted, and
//!   sampled like any other.
//!
//! Exact counts, at rate 0 (and rate 1 for the samples), in a child
//! process of its own (no harness threads allocating meanwhile).

use heapprof_testkit::check::stats_counts;
use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::watchdog::watchdog;
use std::cell::RefCell;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const THREADS: usize = 40;
const BLOCK: usize = 10 << 20;

/// Runs `f` on a thread started by `pthread_create`, and joins it.
fn on_c_thread(f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void, arg: *mut libc::c_void) {
    // An integer with glibc, a pointer with musl.
    let mut thread = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
    // SAFETY: `thread` is an out-pointer, initialized by a create that
    // returned 0; `f` is an extern "C" start routine that does not unwind;
    // the thread is joined before return.
    unsafe {
        assert_eq!(
            libc::pthread_create(thread.as_mut_ptr(), std::ptr::null(), f, arg),
            0
        );
        assert_eq!(
            libc::pthread_join(thread.assume_init(), std::ptr::null_mut()),
            0
        );
    }
}

/// The key whose destructor frees the `Box<Vec<u8>>` it was set to.
fn freeing_key() -> libc::pthread_key_t {
    extern "C" fn free_it(p: *mut libc::c_void) {
        // SAFETY: the value was set from `Box::into_raw` of a Box<Vec<u8>>.
        drop(unsafe { Box::from_raw(p.cast::<Vec<u8>>()) });
    }
    static KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| new_key(free_it))
}

/// A new `pthread` key whose destructor is `destructor`.
fn new_key(destructor: extern "C" fn(*mut libc::c_void)) -> libc::pthread_key_t {
    let mut key = 0;
    // SAFETY: `key` is an out-pointer; the destructors given here do not
    // unwind.
    let created = unsafe { libc::pthread_key_create(&mut key, Some(destructor)) };
    assert_eq!(created, 0);
    key
}

/// Sets the key to the block it is given, and does nothing else: its first
/// call into heapprof is the key destructor's free.
extern "C" fn free_at_key_exit(block: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `freeing_key` is a valid key; the value is a Box<Vec<u8>>.
    unsafe { libc::pthread_setspecific(freeing_key(), block) };
    std::ptr::null_mut()
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Touches a thread-local buffer first (its destructor is registered before
/// any of heapprof's), then fills it.
extern "C" fn fill_thread_local(_: *mut libc::c_void) -> *mut libc::c_void {
    BUFFER.with(|b| {
        let _ = b.borrow().len();
    });
    BUFFER.with(|b| b.borrow_mut().resize(BLOCK, 1));
    std::ptr::null_mut()
}

#[test]
fn child_c_threads() {
    if !is_child() {
        return;
    }
    // No watchdog thread here: its own allocations would land in the
    // counted window (`run_child` bounds the time).
    heapprof::set_sample_rate(0);
    freeing_key();
    // The harness's main thread allocates once as it settles into waiting
    // for this test (a channel's waker): let it, before the window opens.
    std::thread::sleep(std::time::Duration::from_millis(500));

    // First contact in a key destructor.
    let before = stats_counts();
    for _ in 0..THREADS {
        let block = Box::into_raw(Box::new(vec![7u8; 1000]));
        on_c_thread(free_at_key_exit, block.cast());
    }
    let mid = stats_counts();
    println!("after the key threads {mid:?}");
    // Threads that reuse the dead threads' stacks, and hold memory.
    for _ in 0..THREADS {
        on_c_thread(fill_thread_local, std::ptr::null_mut());
    }
    let after = stats_counts();
    let stats = heapprof::stats();
    println!("before {before:?} after {after:?}");
    // Each key thread: two allocations made here (the Box and the Vec's
    // buffer), both freed by its destructor. Each buffer thread: its buffer
    // allocated and freed (its thread-local's destructor runs after
    // heapprof's exit hook), plus what std allocates for a thread-local on
    // a C thread, freed too.
    let allocated = after[0] - before[0];
    let freed = after[2] - before[2];
    assert_eq!(
        allocated, freed,
        "every block allocated in the window was freed: {before:?} -> {after:?}"
    );
    assert_eq!(
        after[1] - before[1],
        after[3] - before[3],
        "bytes allocated and freed in the window: {before:?} -> {after:?}"
    );
    assert!(after[1] - before[1] >= (THREADS * BLOCK) as u64);
    println!("C-THREADS-OK live {}", stats.live_bytes());
}

#[test]
fn c_threads_are_counted_once_and_never_read_after_exit() {
    let _watchdog = watchdog("c threads", std::time::Duration::from_secs(120));
    let (stdout, stderr) = run_child("child_c_threads", &[]);
    assert!(stdout.contains("C-THREADS-OK"), "{stdout}\n{stderr}");
}

/// What each key destructor of [`child_key_destructors_that_keep`] keeps.
const KEPT_AT_EXIT: usize = 777;

/// Blocks the key destructors keep, as addresses: reachable, so that
/// nothing frees them.
static KEPT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Allocates a block and keeps it, from a key destructor.
#[inline(never)]
fn kept_at_key_exit() -> usize {
    Box::into_raw(std::hint::black_box(Box::new([3u8; KEPT_AT_EXIT]))) as usize
}

extern "C" fn keep_at_key_exit(_: *mut libc::c_void) {
    let block = kept_at_key_exit();
    // The vector has room: pushing allocates nothing.
    KEPT.lock().unwrap().push(block);
}

/// The key whose destructor keeps a block of [`KEPT_AT_EXIT`] bytes. It
/// runs after heapprof's exit hook: after the thread-local destructors, and
/// after heapprof's own key, made before it (the process has allocated on
/// a thread of its own by then).
fn keeping_key() -> libc::pthread_key_t {
    static KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| new_key(keep_at_key_exit))
}

/// Allocates (heapprof arms its exit hooks for the thread) and sets the
/// keeping key.
extern "C" fn allocate_then_set_the_key(_: *mut libc::c_void) -> *mut libc::c_void {
    drop(std::hint::black_box(vec![1u8; 64]));
    // SAFETY: a valid key; the value is never dereferenced.
    unsafe { libc::pthread_setspecific(keeping_key(), std::ptr::dangling::<u8>().cast()) };
    std::ptr::null_mut()
}

#[test]
fn child_key_destructors_that_keep() {
    if !is_child() {
        return;
    }
    let rate: usize = std::env::var("HEAPPROF_TEST_RATE")
        .unwrap()
        .parse()
        .unwrap();
    heapprof::set_sample_rate(rate);
    // Heapprof's key first: a thread of the process allocates.
    std::thread::spawn(|| drop(std::hint::black_box(vec![0u8; 8])))
        .join()
        .unwrap();
    keeping_key();
    KEPT.lock().unwrap().reserve(THREADS);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = stats_counts();
    for _ in 0..THREADS {
        on_c_thread(allocate_then_set_the_key, std::ptr::null_mut());
    }
    let after = stats_counts();
    println!("before {before:?} after {after:?}");
    assert_eq!(KEPT.lock().unwrap().len(), THREADS);
    let live = |c: [u64; 4]| c[1] as i64 - c[3] as i64;
    assert_eq!(
        live(after) - live(before),
        (THREADS * KEPT_AT_EXIT) as i64,
        "stats() counts the kept blocks: {before:?} -> {after:?}"
    );
    if rate != 1 {
        println!("KEY-DESTRUCTORS-OK");
        return;
    }
    let snapshot = heapprof::snapshot();
    assert_eq!(
        snapshot.inuse_bytes_in("kept_at_key_exit"),
        (THREADS * KEPT_AT_EXIT) as i64,
        "every kept block is in the profile at rate 1"
    );
    assert_eq!(
        snapshot.inuse_objects_in("kept_at_key_exit"),
        THREADS as i64
    );
    println!("KEY-DESTRUCTORS-OK");
}

#[test]
fn what_key_destructors_keep_is_counted_and_sampled() {
    let _watchdog = watchdog("key destructors", std::time::Duration::from_secs(120));
    // At rate 1 every allocation is a sample; at the default rate few
    // are, and `stats()` must count every one all the same.
    for rate in ["1", "524288"] {
        let (stdout, stderr) = run_child(
            "child_key_destructors_that_keep",
            &[("HEAPPROF_TEST_RATE", rate)],
        );
        assert!(
            stdout.contains("KEY-DESTRUCTORS-OK"),
            "rate {rate}: {stdout}\n{stderr}"
        );
    }
}
