//! A fork from a signal handler that interrupted the same thread's own
//! fork, between the fork handlers (heapprof's hold its locks there).
//!
//! In a process with one thread neither glibc nor musl takes a lock of
//! its own around fork, so such a fork reaches heapprof's handlers
//! twice: once for the interrupted fork, once, nested, for the signal
//! handler's. The nested fork must leave what the outer one recorded for
//! its own parent handler alone; otherwise the thread stays marked as
//! inside heapprof (never profiled again) and the symbolizer's lookup
//! lock is never released (every later profile hangs).
//!
//! A second scenario nests the fork one step later: in the child of the
//! thread's own fork, while heapprof's child handler runs. The signal
//! handler's child returns from the handler into heapprof's child
//! handler and lives on; its own later forks must be ordinary ones, which
//! keep its threads (not the child's work of a fork, which forgets them).
//!
//! `harness = false` (see Cargo.toml): libtest starts threads, and these
//! scenarios need a process that never did. `main` forks each scenario,
//! which inherits its single thread, and kills it if it has not finished
//! within [`LIMIT`].

use heapprof_testkit::child::wait_with_timeout;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// How long each scenario may take: the first forks for about a second,
/// then writes a profile (symbolizing a debug test binary on a loaded
/// machine can take several seconds); the second's [`CHILD_ROUNDS`] take
/// a few seconds.
const LIMIT: Duration = Duration::from_secs(60);
/// Forks the first scenario's thread makes itself.
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
    // SAFETY: the child only leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if pid > 0 {
        reap(pid);
    }
}

/// Waits for child `pid`, again when a signal interrupts the wait: its
/// wait status, or `None` if it cannot be waited for.
fn reap(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: a wait for our own child, with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Some(status);
        }
        // SAFETY: errno is this thread's.
        if unsafe { *libc::__errno_location() } != libc::EINTR {
            return None;
        }
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

/// Rounds of the second scenario, each one fork with a timer armed in
/// its child.
const CHILD_ROUNDS: u32 = 360;
/// The child's one-shot timer fires 1 to this many µs after this test's
/// first child handler, a different delay each round, so that some land
/// while heapprof's child handler runs.
const CHILD_DELAYS_US: u32 = 60;

/// The timer delay, in µs, the next fork's child arms (0: none). Set
/// around each of the scenario's own forks and taken (so cleared) by the
/// child: no fork after that one, in any process, arms a timer.
static ARM_US: AtomicU32 = AtomicU32::new(0);
/// Where a child is among the fork's child handlers: [`CHILD_HANDLERS`]
/// from this test's first one, [`AFTER_HANDLERS`] from its last.
static STAGE: AtomicU32 = AtomicU32::new(0);
const CHILD_HANDLERS: u32 = 1;
const AFTER_HANDLERS: u32 = 2;
/// Set in the signal handler's child.
static IS_GRANDCHILD: AtomicBool = AtomicBool::new(false);
/// In a child: the stage at which the signal came, plus ten times its
/// child's exit code; [`NONE_YET`] until the signal's child has ended.
static OUTCOME: AtomicU32 = AtomicU32::new(NONE_YET);
const NONE_YET: u32 = 255;

/// Registers [`first_child_handler`] before `main`, so before heapprof
/// registers its own: child handlers run in the order registered.
#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER_FIRST: extern "C" fn() = register_first;

extern "C" fn register_first() {
    // SAFETY: registers a handler that stores to atomics and arms a timer.
    unsafe { libc::pthread_atfork(None, None, Some(first_child_handler)) };
}

/// Runs in every child before heapprof's child handler; arms the timer
/// the parent asked for, once.
extern "C" fn first_child_handler() {
    STAGE.store(CHILD_HANDLERS, Relaxed);
    let us = ARM_US.swap(0, Relaxed);
    if us > 0 {
        let timer = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: us as _,
            },
        };
        // SAFETY: a valid one-shot timer value; the old one is not asked for.
        unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
    }
}

/// Runs in every child of the second scenario after heapprof's child
/// handler.
extern "C" fn last_child_handler() {
    STAGE.store(AFTER_HANDLERS, Relaxed);
}

/// Forks; the child returns from the handler, into whatever the signal
/// interrupted. The parent waits for it and records how it ended.
extern "C" fn fork_and_return(_: libc::c_int) {
    let stage = STAGE.load(Relaxed);
    // SAFETY: fork in a process with one thread; the parent only waits
    // and stores to atomics.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        IS_GRANDCHILD.store(true, Relaxed);
        return;
    }
    // A fork or wait that failed counts as a lost thread: the round
    // checked nothing.
    let code = match (pid > 0).then(|| reap(pid)).flatten() {
        Some(status) if libc::WIFEXITED(status) => libc::WEXITSTATUS(status) as u32,
        _ => 19,
    };
    OUTCOME.store(stage + 10 * code.min(20), Relaxed);
}

/// In the signal handler's child: starts a thread, forks once (an
/// ordinary fork, with two threads), and checks that what the thread
/// allocates after the fork is still counted. Its exit code.
fn grandchild_keeps_its_thread() -> i32 {
    // SAFETY: no more signals to this process but a last-resort alarm,
    // whose default action ends it.
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::alarm(30);
    }
    let (started, forked, allocated) = (
        Arc::new(Barrier::new(2)),
        Arc::new(Barrier::new(2)),
        Arc::new(Barrier::new(2)),
    );
    let thread = {
        let (started, forked, allocated) = (started.clone(), forked.clone(), allocated.clone());
        std::thread::spawn(move || {
            black_box(vec![0u8; 64]);
            started.wait();
            forked.wait();
            let block = black_box(vec![1u8; 1 << 20]);
            allocated.wait();
            drop(block);
        })
    };
    started.wait();
    fork_and_reap();
    let before = heapprof::stats();
    forked.wait();
    allocated.wait();
    let after = heapprof::stats();
    thread.join().unwrap();
    let seen = after.allocated_bytes - before.allocated_bytes;
    if seen >= 1 << 20 {
        0
    } else {
        eprintln!("after its fork, the thread's 1 MiB is not counted (saw {seen} bytes)");
        3
    }
}

/// The second scenario, in a process with one thread: forks
/// [`CHILD_ROUNDS`] times with a timer armed in the child whose handler
/// forks, and checks the handler's children whose signal came while
/// heapprof's child handler ran.
fn fork_in_child_handler() {
    heapprof::set_sample_rate(1);
    // A first sample installs heapprof's fork handlers, so that this
    // test's last one, registered next, runs after them.
    black_box(vec![0u8; 64]);
    // SAFETY: the handler stores to an atomic.
    unsafe { libc::pthread_atfork(None, None, Some(last_child_handler)) };
    // Timers fire within the kernel's default slack (50 µs) of their time,
    // as long as heapprof's child handler takes: without it, the delays
    // tried are the delays met. Children inherit it.
    // SAFETY: sets this thread's timer slack to 1 ns; no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    // SAFETY: `fork_and_return` forks, waits, and stores to atomics: what
    // glibc allows a handler when the process has one thread.
    unsafe { heapprof_testkit::signals::install(libc::SIGALRM, fork_and_return, libc::SA_RESTART) };
    let (mut inside, mut lost) = (0, 0);
    for round in 0..CHILD_ROUNDS {
        ARM_US.store(1 + round % CHILD_DELAYS_US, Relaxed);
        // SAFETY: the child leaves with `_exit`, after the grandchild's
        // check if it is the grandchild.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = if IS_GRANDCHILD.load(Relaxed) {
                grandchild_keeps_its_thread()
            } else {
                let start = Instant::now();
                while OUTCOME.load(Relaxed) == NONE_YET
                    && start.elapsed() < Duration::from_millis(5)
                {}
                OUTCOME.load(Relaxed) as i32
            };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        ARM_US.store(0, Relaxed);
        let code = wait_with_timeout(pid, LIMIT).expect("the child ends") as u32;
        if code != NONE_YET && code % 10 == CHILD_HANDLERS {
            inside += 1;
            lost += u32::from(code / 10 != 0);
        }
    }
    println!(
        "{inside} of {CHILD_ROUNDS} children forked while heapprof's child handler ran; \
         {lost} of theirs lost a thread"
    );
    assert!(
        inside > 0,
        "no signal came while heapprof's child handler ran: the test shows nothing"
    );
    assert_eq!(lost, 0, "a later ordinary fork forgot a live thread");
}

/// Runs `scenario` in a forked child, which has this process's one
/// thread, within [`LIMIT`].
fn run_forked(name: &str, scenario: fn()) {
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
        Ok(0) => println!("nested_fork: {name}: passed"),
        Ok(code) => panic!("{name} failed (exit code {code}); see above"),
        Err(why) => panic!("{name} did not finish: {why}"),
    }
}

fn main() {
    run_forked("a fork nested in the thread's own fork", scenario);
    run_forked(
        "a fork nested in heapprof's child handler",
        fork_in_child_handler,
    );
}
