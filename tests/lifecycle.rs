//! The start and the end of a process: allocations before `main` (a static
//! initializer in `.init_array`) and during exit (a main-thread
//! thread-local's destructor, an `atexit` handler that writes a profile,
//! and a thread still allocating while the process exits); and a program
//! whose very first act is `set_sample_rate(1)`.
//!
//! `harness = false` (see Cargo.toml): this file's `main` is the real
//! `main`, so the exit is a real exit of the main thread, not a test
//! thread's. Run without arguments it is the driver: it runs itself as a
//! child in each mode (chosen by `HEAPPROF_LIFECYCLE_CHILD`), kills a child
//! that has not exited in 60 s, and checks the exit status and the markers
//! the child printed from each stage.

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::profile::{ALLOC_OBJECTS, INUSE_SPACE, decode, flat, take_profile};
use heapprof_testkit::watchdog::watchdog;

use std::cell::RefCell;
use std::ffi::CStr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const MODE_VAR: &CStr = c"HEAPPROF_LIFECYCLE_CHILD";
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes straight to fd 1: Rust's `stdout` may already be flushed and
/// shut down when exit-time code runs.
fn say(msg: &str) {
    let line = format!("{msg}\n");
    // SAFETY: a valid buffer of its own length.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

// ---- before main ----------------------------------------------------------

static BEFORE_MAIN: Mutex<Option<(Vec<u32>, String)>> = Mutex::new(None);

extern "C" fn allocate_before_main() {
    let numbers: Vec<u32> = (1..=1000).collect();
    let text = format!("allocated before main, {} numbers", numbers.len());
    *BEFORE_MAIN.lock().unwrap() = Some((numbers, text));
}

/// Run by the dynamic loader with the other initializers, before `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = allocate_before_main;

// ---- during exit ----------------------------------------------------------

/// Allocates in its destructor, which runs on the main thread during
/// `exit`, after `main` has returned.
struct AllocatesOnExit(Vec<u8>);

impl Drop for AllocatesOnExit {
    fn drop(&mut self) {
        let grown: Vec<u8> = self.0.iter().chain(b" and more").copied().collect();
        let text = String::from_utf8(grown).unwrap();
        say(&format!("TLS-DROP-OK {text}"));
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<AllocatesOnExit>> = const { RefCell::new(None) };
}

extern "C" fn at_exit() {
    let blocks: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 100]).collect();
    let mut gz = Vec::new();
    match heapprof::write_profile(&mut gz) {
        Ok(()) => {
            let p = decode(&gz);
            assert_sane_values(&p);
            say(&format!(
                "ATEXIT-OK wrote a {}-byte profile with {} samples, {} blocks live",
                gz.len(),
                p.sample.len(),
                blocks.len()
            ));
        }
        Err(e) => say(&format!("ATEXIT-FAILED {e}")),
    }
}

#[inline(never)]
fn background_allocations() {
    let mut i = 0u64;
    loop {
        let v = vec![i as u8; 1 + (i % 4000) as usize];
        std::hint::black_box(&v);
        i += 1;
    }
}

fn child_exit() {
    let (numbers, text) = BEFORE_MAIN
        .lock()
        .unwrap()
        .take()
        .expect("the initializer ran before main");
    assert_eq!(numbers.len(), 1000);
    assert!(numbers.iter().enumerate().all(|(i, &n)| n == i as u32 + 1));
    assert_eq!(text, "allocated before main, 1000 numbers");
    say("BEFORE-MAIN-OK");
    drop((numbers, text));

    // Everything from here to the end of exit is recorded.
    heapprof::set_sample_rate(1);
    // SAFETY: registers an `extern "C" fn()` that does not unwind (a panic
    // in it would abort, which the driver reports).
    assert_eq!(unsafe { libc::atexit(at_exit) }, 0);
    ON_EXIT.with(|e| *e.borrow_mut() = Some(AllocatesOnExit(b"bytes kept until exit".to_vec())));
    // Still allocating, and recording, while the process exits.
    std::thread::spawn(background_allocations);
    std::thread::sleep(Duration::from_millis(50));
    say("MAIN-RETURNS");
}

// ---- set_sample_rate first --------------------------------------------------

const MAIN_BLOCKS: usize = 10;

#[inline(never)]
fn main_allocates() -> [Box<[u8; 1000]>; MAIN_BLOCKS] {
    std::array::from_fn(|i| std::hint::black_box(Box::new([i as u8; 1000])))
}

fn child_rate_first() {
    let kept = main_allocates();
    let p = take_profile();
    assert_sane_values(&p);
    let objects = flat(&p, "main_allocates", ALLOC_OBJECTS);
    let bytes = flat(&p, "main_allocates", INUSE_SPACE);
    assert_eq!(
        objects, MAIN_BLOCKS as i64,
        "every allocation of main counted once"
    );
    assert_eq!(bytes, (MAIN_BLOCKS * 1000) as i64);
    say(&format!(
        "RATE-FIRST-OK objects={objects} bytes={bytes} samples={}",
        p.sample.len()
    ));
    drop(kept);
}

// ---- driver -----------------------------------------------------------------

fn run_child(mode: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(MODE_VAR.to_str().unwrap(), mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    // The pipes are small and the children print little: reading them
    // after exit cannot block the child.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{mode} child did not exit within {CHILD_TIMEOUT:?} (deadlock at start or exit?):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success(),
        "{mode} child failed ({status}):\n{stdout}\n{stderr}"
    );
    (stdout, started.elapsed())
}

fn driver() {
    let _watchdog = watchdog("lifecycle driver", Duration::from_secs(150));
    let (exit_out, exit_time) = run_child("exit");
    print!("{exit_out}");
    for marker in [
        "BEFORE-MAIN-OK",
        "MAIN-RETURNS",
        "TLS-DROP-OK bytes kept until exit and more",
        "ATEXIT-OK",
    ] {
        assert!(exit_out.contains(marker), "no {marker:?} in:\n{exit_out}");
    }
    let (rate_out, rate_time) = run_child("rate-first");
    print!("{rate_out}");
    assert!(
        rate_out.contains(&format!("RATE-FIRST-OK objects={MAIN_BLOCKS} ")),
        "{rate_out}"
    );
    println!(
        "lifecycle: exit child ok in {exit_time:?} (4 markers), rate-first child ok in {rate_time:?}"
    );
}

fn main() {
    // Read the mode without allocating, so that in the rate-first child
    // `set_sample_rate(1)` is the first thing `main` does with the heap.
    // SAFETY: a NUL-terminated name; the result is read at once, before
    // anything could change the environment.
    let mode = unsafe {
        let value = libc::getenv(MODE_VAR.as_ptr());
        (!value.is_null()).then(|| CStr::from_ptr(value).to_bytes())
    };
    match mode {
        Some(b"rate-first") => {
            heapprof::set_sample_rate(1);
            child_rate_first();
        }
        Some(b"exit") => child_exit(),
        Some(other) => panic!("unknown mode {:?}", String::from_utf8_lossy(other)),
        None => driver(),
    }
}
