//! A signal handler that calls `fork` or `exit` while the thread it
//! interrupted is inside heapprof, holding one of its locks. The fork
//! handlers and the exit hooks those calls run must not wait for that lock
//! (the interrupted code releases it only when the handler returns): the
//! process would hang for good.
//!
//! The inner allocator blocks the signal while the system allocator runs,
//! so the handler never interrupts glibc's malloc itself (whose own fork
//! handler would then wait for its arena lock, with or without heapprof);
//! it interrupts heapprof's code only (an `exit` from a handler that
//! interrupted malloc hangs in the exit profile's first allocation, so
//! heapprof writes none from a handler, and says so). Each scenario runs in child
//! processes at rate 1 (every allocation takes heapprof's locks), killed
//! and failed if one does not finish within [`CHILD_LIMIT`].

use heapprof_testkit::child::is_child;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler<Masking> = heapprof::Profiler::wrap(Masking);

/// The system allocator, with [`SIGNAL`] blocked while it runs.
struct Masking;

const SIGNAL: libc::c_int = libc::SIGUSR1;

fn masked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before
    // use; pthread_sigmask gets valid pointers that outlive the calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGNAL);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments.
unsafe impl GlobalAlloc for Masking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        masked(|| unsafe { System.alloc(l) })
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as above.
        masked(|| unsafe { System.alloc_zeroed(l) })
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        masked(|| unsafe { System.dealloc(p, l) })
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: as above.
        masked(|| unsafe { System.realloc(p, l, n) })
    }
}

/// Child processes for the fork scenario: in each, hundreds of forks
/// interrupt heapprof at rate 1 (before the fork handlers took care, the
/// first child hung).
const FORK_RUNS: usize = 12;
/// Child processes for the exit scenario: each exits once, at a moment its
/// pid picks. Only some of those moments find heapprof holding a lock, and
/// fewer the registry's lock that the thread's exit hook takes, so this
/// scenario guards the exit paths against hanging rather than reaching
/// the interrupted case in every run.
const EXIT_RUNS: usize = 30;
/// How long a child may take: it allocates for under a second, and an
/// exit child then writes a profile (symbolizing a debug test binary on a
/// loaded machine can take seconds).
const CHILD_LIMIT: Duration = Duration::from_secs(60);
/// Forks a `fork` child makes from its handler before it stops.
const FORKS: usize = 300;

static EXIT_AT: AtomicUsize = AtomicUsize::new(usize::MAX);
static HANDLED: AtomicUsize = AtomicUsize::new(0);
static FORKING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    let n = HANDLED.fetch_add(1, Relaxed);
    if n == EXIT_AT.load(Relaxed) {
        // SAFETY: ends the process, running its exit handlers on this
        // thread, as programs that exit from a SIGTERM handler do.
        unsafe { libc::exit(0) };
    }
    if FORKING.load(Relaxed) && n < FORKS {
        // SAFETY: the child only leaves with `_exit`; the parent reaps it.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

/// The child's side: installs the handler, has another thread signal this
/// one every 200 µs, and allocates at rate 1 until the handler has run
/// often enough (or exited).
fn child_scenario(scenario: &str) {
    heapprof::set_sample_rate(1);
    match scenario {
        "fork" => FORKING.store(true, Relaxed),
        "exit" => {
            // A different moment in each child: the pid picks the signal.
            EXIT_AT.store(std::process::id() as usize % 50, Relaxed);
        }
        _ => panic!("unknown scenario {scenario}"),
    }
    // SAFETY: `on_signal` forks (the child leaves with `_exit`) or exits,
    // interrupting heapprof where it may hold a lock: what this test
    // checks heapprof survives.
    unsafe { heapprof_testkit::signals::install(SIGNAL, on_signal, libc::SA_RESTART) };
    // SAFETY: pthread_self has no preconditions. Held as an integer for
    // the other thread: musl's `pthread_t` is a pointer.
    let target = unsafe { libc::pthread_self() } as usize;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let sender_done = std::sync::Arc::clone(&done);
    let sender = std::thread::spawn(move || {
        while !sender_done.load(Relaxed) {
            // SAFETY: `target` is the allocating thread, alive until
            // `done` is set and this thread joined.
            unsafe { libc::pthread_kill(target as libc::pthread_t, SIGNAL) };
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let started = Instant::now();
    while HANDLED.load(Relaxed) < FORKS.max(240) && started.elapsed() < Duration::from_secs(5) {
        let mut keep = Vec::new();
        for i in 0..100usize {
            let v = vec![i as u8; 1 + (i * 37) % 300];
            if i % 3 == 0 {
                keep.push(v);
            }
        }
        black_box(keep);
    }
    done.store(true, Relaxed);
    sender.join().unwrap();
    println!("handled {}", HANDLED.load(Relaxed));
}

/// Runs `scenario` in `runs` children, each killed after [`CHILD_LIMIT`].
fn run_children(scenario: &str, runs: usize) {
    let out = tempfile::tempdir().unwrap();
    for run in 0..runs {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("from_a_signal_handler_{scenario}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HEAPPROF_TEST_CHILD", scenario)
            // For `exit`, an exit profile: `exit` from the handler runs its
            // writer, which takes the site table's locks, as the sample
            // the handler interrupted may hold one.
            .envs(
                (scenario == "exit")
                    .then(|| ("HEAPPROF_OUT", out.path().join(format!("heap.{run}.pb.gz")))),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start a child");
        // Read as it comes, so that a full pipe cannot stall the child.
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                break Some(status);
            }
            if started.elapsed() > CHILD_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.is_some_and(|s| s.success()),
            "{scenario}, run {run}: the child did not finish within {CHILD_LIMIT:?}, or failed \
             ({status:?}): a handler waited for a lock the code it interrupted holds?"
        );
        let stderr = reader.join().unwrap();
        if scenario == "exit" {
            // The handler may have interrupted malloc, holding its lock: no
            // exit profile, and a line that says why.
            assert!(
                stderr.contains("exits from the handler of signal")
                    || stderr.contains("while it held a lock"),
                "exit, run {run}: {stderr}"
            );
            assert!(
                !out.path().join(format!("heap.{run}.pb.gz")).exists(),
                "exit, run {run}: an exit profile was written from a signal handler"
            );
        }
    }
}

#[test]
fn from_a_signal_handler_fork() {
    if is_child() {
        return child_scenario("fork");
    }
    run_children("fork", FORK_RUNS);
}

#[test]
fn from_a_signal_handler_exit() {
    if is_child() {
        return child_scenario("exit");
    }
    run_children("exit", EXIT_RUNS);
}
