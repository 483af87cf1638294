//! The peak profile written when the inner allocator fails one of the
//! program's allocations: prepared in advance by the at-limit watcher,
//! written once, without allocating, and only for a failure that says
//! memory is running out.
//!
//! The inner allocator here fails every request of [`FAILING`] bytes (an
//! allocation or a realloc to that size) and passes the rest to the
//! system allocator. The child handles the failures (`try_reserve`) and
//! goes on: heapprof must not assume a failure ends the process.

use heapprof_testkit::child::run_child;
use heapprof_testkit::profile::{INUSE_SPACE, cum, decode, string};
use heapprof_testkit::tools::{go_available, go_pprof};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The size the inner allocator refuses: below the watched limit
/// (`HEAPPROF_MEMORY_LIMIT` in the children), so a sign of exhaustion.
const FAILING: usize = (48 << 20) + 1;
/// Larger than any limit: a request that could never succeed.
const HUGE: usize = 1 << 45;

struct FailingAt;

// SAFETY: every method forwards to System with its caller's arguments, or
// returns null, which GlobalAlloc allows for any request.
unsafe impl GlobalAlloc for FailingAt {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() == FAILING {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if n == FAILING {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: heapprof::Profiler<FailingAt> = heapprof::Profiler::wrap(FailingAt);

/// How long a child waits for the profile (the first encoding symbolizes,
/// which takes a while in a debug build on a loaded machine).
const PATIENCE: Duration = Duration::from_secs(30);

/// What the child holds: the peak the profile shows.
#[inline(never)]
fn held_at_the_peak() -> Vec<Vec<u8>> {
    (0..16).map(|_| vec![1u8; 1 << 20]).collect()
}

/// A failed allocation of `size` bytes, by the path `how` names: an
/// allocation (an empty `Vec`) or a realloc (a `Vec` with contents).
fn fail(how: &str, size: usize) {
    let mut v: Vec<u8> = match how {
        "alloc" => Vec::new(),
        _ => vec![7; 100],
    };
    let additional = size - v.len();
    assert!(v.try_reserve_exact(additional).is_err(), "{how} of {size}");
}

/// The children's side.
#[test]
fn child_scenarios() {
    let Ok(how) = std::env::var("HEAPPROF_TEST_CHILD") else {
        return;
    };
    if how == "1" || how == "file_size" {
        return;
    }
    let out = PathBuf::from(std::env::var_os("HEAPPROF_OUT").unwrap());
    let file = out.with_file_name("heap.alloc-failed.peak.pb.gz");
    let never = match std::env::var_os("HEAPPROF_TEST_ADDRESS_LIMIT") {
        Some(_) => limit_address_space(),
        None => HUGE,
    };
    let held = held_at_the_peak();
    let deadline = Instant::now() + PATIENCE;
    // Each round fails a request that could never succeed first: were it
    // taken for exhaustion, it would use up the one write.
    while !file.exists() {
        assert!(Instant::now() < deadline, "no profile after {PATIENCE:?}");
        fail(&how, never);
        fail(&how, FAILING);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::copy(&file, out.with_file_name("kept.pb.gz")).unwrap();
    std::fs::remove_file(&file).unwrap();
    // Written once: the program recovered, and fails again.
    for _ in 0..10 {
        fail(&how, FAILING);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!file.exists(), "written twice");
    drop(held);
    println!("the program went on after the failures");
}

/// Sets this process's `RLIMIT_AS` to its address space now and 1 GiB
/// more, and returns the limit: a request of that size can never succeed.
fn limit_address_space() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split(' ').next().unwrap().parse().unwrap();
    let limit = pages * 4096 + (1 << 30);
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the plain struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) }, 0);
    limit as usize
}

fn run(how: &str) {
    run_with(how, "1GiB", &[]);
}

/// A child that fails `how`'s way under `HEAPPROF_MEMORY_LIMIT=memory_limit`
/// with `more` in its environment, and what it wrote. A limit below 64 MiB
/// leaves no room for names (a lookup may take that much): the profile's
/// frames are then checked by its comments only.
fn run_with(how: &str, memory_limit: &str, more: &[(&str, &str)]) {
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let no_cgroup = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("HEAPPROF_TEST_CHILD", how),
        ("HEAPPROF_DUMP_AT_LIMIT", "95%"),
        ("HEAPPROF_MEMORY_LIMIT", memory_limit),
        ("HEAPPROF_CGROUP_DIR", no_cgroup.path().to_str().unwrap()),
        ("HEAPPROF_OUT", base.to_str().unwrap()),
    ];
    env.extend_from_slice(more);
    let (stdout, stderr) = run_child("child_scenarios", &env);
    assert!(stdout.contains("the program went on"), "{stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("heapprof: an allocation of"))
        .collect();
    assert_eq!(lines.len(), 1, "{how}: one line, once:\n{stderr}");
    let file = out.path().join("heap.alloc-failed.peak.pb.gz");
    assert_eq!(
        lines[0],
        format!(
            "heapprof: an allocation of {FAILING} bytes failed; wrote the peak profile prepared for it to {:?}",
            file
        ),
        "{how}"
    );
    let kept = out.path().join("kept.pb.gz");
    let p = decode(&std::fs::read(&kept).unwrap());
    let said: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    assert!(
        said.iter().any(|c| c.contains("peak profile"))
            && said
                .iter()
                .any(|c| c.contains("written when an allocation failed")),
        "{said:?}"
    );
    // A peak copy is kept from 1 MiB up; the one prepared may be from
    // before the last of the 16 MiB was allocated (it is the peak as of the
    // last encoding).
    let named = !said.iter().any(|c| c.contains("have no names"));
    assert!(named || memory_limit == "32MiB", "{said:?}");
    let held = cum(&p, "held_at_the_peak", INUSE_SPACE);
    assert!(
        !named || (1 << 20..20 << 20).contains(&held),
        "{held} bytes held at the peak: {said:?}"
    );
    if named && go_available() {
        let top = go_pprof(&["-top", kept.to_str().unwrap()]);
        assert!(top.contains("held_at_the_peak"), "{top}");
    }
    // No temporary file is left.
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn a_failed_allocation_writes_the_prepared_peak_once() {
    run("alloc");
}

#[test]
fn a_failed_realloc_writes_the_prepared_peak_once() {
    run("realloc");
}

/// The prepared profile is larger than the process may write
/// (`RLIMIT_FSIZE`), and `SIGXFSZ` is at its default action, which ends
/// the program: the write fails with `EFBIG`, a line says so, and the
/// program goes on.
#[test]
fn a_file_size_limit_fails_the_write_and_spares_the_program() {
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let log = out.path().join("stderr.log");
    let no_cgroup = tempfile::tempdir().unwrap();
    let (stdout, _) = run_child(
        "child_past_the_file_size_limit",
        &[
            ("HEAPPROF_TEST_CHILD", "file_size"),
            ("HEAPPROF_DUMP_AT_LIMIT", "95%"),
            ("HEAPPROF_MEMORY_LIMIT", "1GiB"),
            ("HEAPPROF_CGROUP_DIR", no_cgroup.path().to_str().unwrap()),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
            ("HEAPPROF_TEST_STDERR_LOG", log.to_str().unwrap()),
        ],
    );
    assert!(stdout.contains("the program went on"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "heapprof: an allocation of {FAILING} bytes failed"
        )) && stdout.contains(&format!("errno {}", libc::EFBIG)),
        "{stdout}"
    );
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["stderr.log"]);
}

/// The child's side: stderr goes to a log it reads (a file open for
/// appending, where heapprof's lines still go), and it fails allocations
/// until heapprof's line about the write is there.
#[test]
fn child_past_the_file_size_limit() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt as _;
    if std::env::var("HEAPPROF_TEST_CHILD").as_deref() != Ok("file_size") {
        return;
    }
    let log_path = PathBuf::from(std::env::var_os("HEAPPROF_TEST_STDERR_LOG").unwrap());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .unwrap();
    // SAFETY: both descriptors are open; dup2 makes 2 name the log.
    assert_eq!(unsafe { libc::dup2(log.as_raw_fd(), 2) }, 2);
    // Below any profile's size, above the line's.
    let limit = libc::rlimit {
        rlim_cur: 512,
        rlim_max: 512,
    };
    // SAFETY: setrlimit reads the live `limit`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    let held = held_at_the_peak();
    let deadline = Instant::now() + PATIENCE;
    let said = loop {
        fail("alloc", FAILING);
        let said = std::fs::read_to_string(&log_path).unwrap();
        if said.contains("heapprof: an allocation of") {
            break said;
        }
        assert!(Instant::now() < deadline, "no line after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(held);
    println!("{said}");
    println!("the program went on after the failures");
}

/// Under `RLIMIT_AS`, a request past it could never succeed and writes
/// nothing, while one past `HEAPPROF_MEMORY_LIMIT` (32 MiB here, which the
/// kernel does not hold the process to) and below `RLIMIT_AS` is memory
/// running out: the profile is written for it.
#[test]
fn what_could_never_succeed_is_judged_by_the_kernels_limits() {
    const _: () = assert!(FAILING > 32 << 20);
    run_with("alloc", "32MiB", &[("HEAPPROF_TEST_ADDRESS_LIMIT", "1")]);
}

/// Under `RLIMIT_AS` with no cgroup limit and no `HEAPPROF_MEMORY_LIMIT`,
/// the watch reads physical memory, which the process would not reach
/// before its address-space limit: it says so, once, naming both.
#[test]
fn an_address_space_limit_the_watch_does_not_read_is_named() {
    let out = tempfile::tempdir().unwrap();
    let no_cgroup = tempfile::tempdir().unwrap();
    let (_, stderr) = run_child(
        "child_under_an_address_limit",
        &[
            ("HEAPPROF_TEST_CHILD", "limited"),
            ("HEAPPROF_DUMP_AT_LIMIT", "95%"),
            ("HEAPPROF_CGROUP_DIR", no_cgroup.path().to_str().unwrap()),
            (
                "HEAPPROF_OUT",
                out.path().join("heap.pb.gz").to_str().unwrap(),
            ),
        ],
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("HEAPPROF_DUMP_AT_LIMIT watches"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("watches physical memory")
            && lines[0].contains("not RLIMIT_AS (")
            && lines[0].contains("set HEAPPROF_MEMORY_LIMIT"),
        "{}",
        lines[0]
    );
}

#[test]
fn child_under_an_address_limit() {
    if std::env::var("HEAPPROF_TEST_CHILD").as_deref() != Ok("limited") {
        return;
    }
    limit_address_space();
    // The watch starts with the first sampled allocation. Once a failure
    // has written the profile prepared for it, the watch has finished its
    // first encoding and read the limits after it; a second more is many
    // more readings.
    let held = held_at_the_peak();
    let out = PathBuf::from(std::env::var_os("HEAPPROF_OUT").unwrap());
    let file = out.with_file_name("heap.alloc-failed.peak.pb.gz");
    let deadline = Instant::now() + PATIENCE;
    while !file.exists() {
        assert!(Instant::now() < deadline, "no profile after {PATIENCE:?}");
        fail("alloc", FAILING);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(held);
}

/// Not configured (no at-limit watch): a failure writes nothing.
#[test]
fn without_the_watch_nothing_is_written() {
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let (_, stderr) = run_child(
        "child_scenarios_unwatched",
        &[
            ("HEAPPROF_TEST_CHILD", "1"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
            ("HEAPPROF_DUMP_EVERY", "1s"),
        ],
    );
    assert!(!stderr.contains("heapprof: an allocation of"), "{stderr}");
    assert!(!Path::new(&out.path().join("heap.alloc-failed.peak.pb.gz")).exists());
    assert!(
        out.path().join("heap.0001.pb.gz").exists(),
        "the series ran"
    );
}

#[test]
fn child_scenarios_unwatched() {
    if std::env::var("HEAPPROF_TEST_CHILD").as_deref() != Ok("1") {
        return;
    }
    let held = held_at_the_peak();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        fail("alloc", FAILING);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
}
