//! A fork from a signal handler that interrupted the same thread's own
//! fork, between the fork handlers (heapprof's hold its locks there).
//!
//! In a process with other threads, glibc and musl hold a lock of their
//! own across the clone, so a fork nested there waits for it whatever
//! heapprof does. A process with one thread takes no such lock, and
//! reaches heapprof's handlers twice: once for the interrupted fork,
//! once, nested, for the handler's. The nested fork must leave what the
//! outer one recorded for its own parent handler alone; otherwise the
//! thread stays marked as inside heapprof (never profiled again) and the
//! symbolizer's lookup lock is never released (every later profile hangs).
//!
//! `harness = false` (see Cargo.toml): libtest starts threads, and this
//! scenario needs a process that never did. `main` forks the scenario,
//! which inherits its single thread, and kills it if it has not finished
//! within [`LIMIT`].

use heapprof_testkit::child::wait_with_timeout;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// How long the scenario may take: it forks for about a second, then
/// writes a profile (symbolizing a debug test binary on a loaded machine
/// can take several seconds).
const LIMIT: Duration = Duration::from_secs(60);
/// Forks the scenario's thread makes itself.
const OWN_FORKS: usize = 400;
/// Microseconds between the timer's signals: longer than a fork of this
/// small process takes, or the handler's forks would leave the thread no
/// time for its own.
const TIMER_US: u32 = 700;

/// Set by this test's own fork handlers, which run before heapprof's
/// prepare handler and after its parent handler: the thread is inside one
/// of its own forks.
static IN_OWN_FORK: AtomicBool = AtomicBool::new(false);
/// Signals that arrived while [`IN_OWN_FORK`] was set, each of which forked.
static NESTED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn own_prepare() {
    IN_OWN_FORK.store(true, Relaxed);
}

extern "C" fn own_parent() {
    IN_OWN_FORK.store(false, Relaxed);
}

/// Forks; the child leaves at once.
extern "C" fn on_alarm(_: libc::c_int) {
    if IN_OWN_FORK.load(Relaxed) {
        NESTED.fetch_add(1, Relaxed);
    }
    fork_and_reap();
}

fn fork_and_reap() {
    // SAFETY: the child only leaves with `_exit`; the parent reaps it,
    // retrying a wait a signal interrupted.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(0);
        }
        let mut status = 0;
        while pid > 0 && libc::waitpid(pid, &mut status, 0) < 0 {}
    }
}

/// Has SIGALRM sent every `us` µs (0: stops it).
fn set_timer(us: u32) {
    let every = libc::timeval {
        tv_sec: 0,
        tv_usec: us as _,
    };
    let timer = libc::itimerval {
        it_interval: every,
        it_value: every,
    };
    // SAFETY: a valid timer value; the old one is not asked for.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
    assert_eq!(r, 0, "setitimer");
}

/// The scenario, in a process with one thread: forks while a timer's
/// signal handler forks too, then checks that the thread is still
/// profiled and that a profile, which names frames, is written.
fn scenario() {
    heapprof::set_sample_rate(1);
    // A first sample installs heapprof's fork handlers, so that this
    // test's, registered next, enclose them.
    black_box(vec![0u8; 64]);
    // SAFETY: both handlers store to an atomic.
    unsafe { libc::pthread_atfork(Some(own_prepare), Some(own_parent), Some(own_parent)) };
    // SAFETY: `on_alarm` forks, and its child leaves with `_exit`: what
    // glibc allows a handler when the process has one thread.
    unsafe { heapprof_testkit::signals::install(libc::SIGALRM, on_alarm, libc::SA_RESTART) };
    set_timer(TIMER_US);
    for _ in 0..OWN_FORKS {
        fork_and_reap();
    }
    set_timer(0);
    let nested = NESTED.load(Relaxed);
    println!("{nested} of {OWN_FORKS} forks had a fork nested in them");
    assert!(
        nested > 0,
        "no signal arrived inside a fork: the test shows nothing"
    );
    let (block, m) = heapprof::measure(|| black_box(vec![1u8; 1 << 20]));
    drop(block);
    assert!(
        m.allocated_bytes >= 1 << 20,
        "the thread that forked is no longer profiled: {m:?}"
    );
    let mut profile = Vec::new();
    heapprof::write_profile(&mut profile).expect("a profile");
    assert!(!profile.is_empty());
}

fn main() {
    // SAFETY: the child runs the scenario and leaves with `_exit`; this
    // process, which has one thread, only waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let passed = std::panic::catch_unwind(scenario).is_ok();
        // SAFETY: ends the child at once, running nothing of the parent's.
        unsafe { libc::_exit(i32::from(!passed)) };
    }
    match wait_with_timeout(pid, LIMIT) {
        Ok(0) => println!("nested_fork: passed"),
        Ok(code) => panic!("the scenario failed (exit code {code}); see above"),
        Err(why) => panic!("the scenario did not finish: {why}"),
    }
}
