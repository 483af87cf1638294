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
//! Exact counts, at rate 0, in a child process of its own (no harness
//! threads allocating meanwhile).

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
    *KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY: `key` is an out-pointer; `free_it` does not unwind.
        let created = unsafe { libc::pthread_key_create(&mut key, Some(free_it)) };
        assert_eq!(created, 0);
        key
    })
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
