//! Memory errors: `examples/valgrind_smoke.rs` (heapprof as the global
//! allocator; sampling at 4096, 64 KiB and 1; reallocs, zeroed and
//! page-aligned blocks, threads, two profile writes) runs under valgrind's
//! memcheck, which must report no error: no invalid read or write, no use
//! of uninitialised memory, no mismatched or double free, and no block
//! definitely lost (`--errors-for-leak-kinds=definite`: the profiler's
//! tables and symbol caches are still reachable from statics at exit, by
//! design).
//!
//! `cargo test` builds the examples next to the test binaries; this test
//! finds the one built with the same profile as itself. It skips, saying
//! why, when `valgrind` is not on PATH, unless `HEAPPROF_REQUIRE_VALGRIND=1`
//! (set by `.ci/run`, which installs it), in which case that is a failure.
//!
//! No suppression file is needed: on Debian 12 (glibc 2.36, valgrind 3.19)
//! the run is clean, libgcc's unwinder and glibc's loader included. If a
//! platform needs one, suppress only frames outside heapprof and say why.

use heapprof_testkit::tools::tool_available;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const TIMEOUT: Duration = Duration::from_secs(600);

/// `<target>/<profile>/examples/valgrind_smoke`, from this test's own path
/// `<target>/<profile>/deps/valgrind-<hash>`.
fn example_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    profile_dir.join("examples").join("valgrind_smoke")
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Fails if the example is missing or older than a source it is built
/// from: memcheck on a stale binary would vouch for code that is gone.
fn check_example_is_fresh(example: &Path) {
    let rebuild = "build it with `cargo test` (which builds the examples) or `cargo build \
                   [--release] --example valgrind_smoke`, in the same profile as this test";
    assert!(
        example.exists(),
        "{} does not exist: {rebuild}",
        example.display()
    );
    let built = modified(example);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![
        root.join("examples/valgrind_smoke.rs"),
        root.join("Cargo.toml"),
    ];
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        sources.push(entry.unwrap().path());
    }
    for source in sources {
        assert!(
            modified(&source) <= built,
            "{} is older than {}: {rebuild}",
            example.display(),
            source.display()
        );
    }
}

#[test]
fn memcheck_reports_no_errors() {
    if !tool_available(
        "valgrind",
        "--version",
        "HEAPPROF_REQUIRE_VALGRIND",
        "valgrind",
    ) {
        return;
    }
    let example = example_path();
    check_example_is_fresh(&example);
    let started = Instant::now();
    let mut child = Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--error-exitcode=99",
            "--errors-for-leak-kinds=definite",
            "--leak-check=full",
        ])
        .arg(&example)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run valgrind");
    // Read the pipes on threads, so a chatty valgrind cannot fill them and
    // stall while we wait.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("valgrind did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            [
                "ERROR SUMMARY",
                "definitely lost:",
                "indirectly lost:",
                "possibly lost:",
                "still reachable:",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect();
    println!(
        "memcheck of {} in {:?}:\n{}{}",
        example.display(),
        started.elapsed(),
        stdout,
        summary.join("\n")
    );
    assert!(
        status.success(),
        "memcheck found errors (exit {status}; 99 means memcheck errors):\n{stderr}"
    );
    assert!(
        stderr.contains("ERROR SUMMARY: 0 errors"),
        "no clean error summary:\n{stderr}"
    );
    assert!(stdout.contains("valgrind_smoke: profiles of"), "{stdout}");
}
