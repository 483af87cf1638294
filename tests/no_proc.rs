//! A program run where `/proc` is not mounted (a chroot or a sandbox
//! without it) still gets names for its own frames: heapprof finds its
//! executable by the path the kernel passed to `exec` (`AT_EXECFN`), and
//! reads it only if its build ID is the running program's.
//!
//! The child runs in a mount namespace of its own with an empty file
//! system over `/proc`, which needs `unshare` and the right to mount (root,
//! as CI runs). Without them the test says why and skips, unless
//! `HEAPPROF_REQUIRE_NAMESPACES=1` (set by `.ci/run`) makes that a failure.

use heapprof_testkit::child::{CHILD_VAR, is_child};
use std::hint::black_box;
use std::path::Path;
use std::process::Command;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[inline(never)]
fn kept_without_proc() -> Vec<Vec<u8>> {
    black_box((0..64).map(|_| vec![1u8; 16 * 1024]).collect())
}

/// Runs the test binary at `exe`'s `test`, with `env`, in a mount
/// namespace with `/proc` hidden: its stdout, or `None` (after saying why)
/// when this machine cannot make the namespace. A relative `exe` is
/// started from the directory `cwd`.
fn run_without_proc(exe: &Path, cwd: &Path, test: &str, env: &[(&str, &str)]) -> Option<String> {
    let can = Command::new("unshare")
        .args(["--mount", "sh", "-c", "mount -t tmpfs none /proc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !can {
        assert!(
            std::env::var_os("HEAPPROF_REQUIRE_NAMESPACES").is_none_or(|v| v != "1"),
            "HEAPPROF_REQUIRE_NAMESPACES=1 but `unshare --mount` with a mount of /proc failed"
        );
        println!("SKIPPED: `unshare --mount` cannot hide /proc here (it needs root)");
        return None;
    }
    let out = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /proc && exec \"$@\"",
            "sh",
        ])
        .arg(exe)
        .current_dir(cwd)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .envs(env.iter().copied())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    Some(stdout)
}

#[test]
fn frames_are_named_without_proc() {
    if !is_child() {
        let Some(stdout) = run_without_proc(
            &std::env::current_exe().unwrap(),
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "frames_are_named_without_proc",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        ) else {
            return;
        };
        assert!(stdout.contains("no /proc: true"), "{stdout}");
        let named = heapprof_testkit::child::printed_number(&stdout, "named without proc=");
        assert!(named >= 64 * 16 * 1024, "{stdout}");
        return;
    }
    println!(
        "no /proc: {}",
        !std::path::Path::new("/proc/self/exe").exists()
    );
    let kept = kept_without_proc();
    let named = heapprof::snapshot().inuse_bytes_in("no_proc::kept_without_proc");
    println!("named without proc={named}");
    drop(kept);
}

/// This executable with another GNU build ID: the same code and names,
/// which heapprof must not read all the same.
fn with_another_build_id(exe: &[u8]) -> Vec<u8> {
    // The note's header: name size 4, descriptor size 20 (SHA-1), type 3
    // (NT_GNU_BUILD_ID), then the name "GNU\0".
    let header: Vec<u8> = [4u32, 20, 3]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .chain(*b"GNU\0")
        .collect();
    let at = exe
        .windows(header.len())
        .position(|w| w == header)
        .expect("a 20-byte GNU build ID note in the test executable")
        + header.len();
    let mut other = exe.to_vec();
    for b in &mut other[at..at + 20] {
        *b ^= 0xff;
    }
    other
}

/// The file at the path the program was started by is replaced while it
/// runs (a deploy): its names would be another build's, so none are read.
#[test]
fn another_build_at_the_path_is_not_read() {
    let copy = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no_proc_replaced");
    let other = copy.with_extension("other");
    if !is_child() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        std::fs::write(&other, with_another_build_id(&exe)).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let Some(stdout) = run_without_proc(
            &copy,
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "another_build_at_the_path_is_not_read",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        ) else {
            return;
        };
        assert!(stdout.contains("replaced: true"), "{stdout}");
        let named = heapprof_testkit::child::printed_number(&stdout, "named after replacing=");
        assert_eq!(named, 0, "{stdout}");
        // Not named, so counted against the function all the same.
        assert!(stdout.contains("panicked: heapprof: "), "{stdout}");
        std::fs::remove_file(&copy).unwrap();
        return;
    }
    // Another build in the program's place.
    std::fs::rename(&other, &copy).unwrap();
    println!("replaced: true");
    let kept = kept_without_proc();
    let snapshot = heapprof::snapshot();
    let named = snapshot.inuse_bytes_in("no_proc::kept_without_proc");
    println!("named after replacing={named}");
    let message = heapprof_testkit::check::panic_message(|| {
        snapshot.assert_inuse_at_most("no_proc::kept_without_proc", 1024)
    });
    println!("panicked: {}", message.unwrap_or_default());
    drop(kept);
}

/// A program started by a relative path (`./server`) that then changes
/// its working directory, as daemons do: the path is made absolute
/// against the directory it was started in.
#[test]
fn a_relative_start_survives_a_change_of_directory() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let name = "no_proc_relative";
    if !is_child() {
        std::fs::copy(std::env::current_exe().unwrap(), dir.join(name)).unwrap();
        let stdout = run_without_proc(
            &Path::new(".").join(name),
            dir,
            "a_relative_start_survives_a_change_of_directory",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        std::fs::remove_file(dir.join(name)).unwrap();
        let Some(stdout) = stdout else { return };
        let named = heapprof_testkit::child::printed_number(&stdout, "named after chdir=");
        assert!(named >= 64 * 16 * 1024, "{stdout}");
        return;
    }
    std::env::set_current_dir("/").unwrap();
    let kept = kept_without_proc();
    let named = heapprof::snapshot().inuse_bytes_in("no_proc::kept_without_proc");
    println!("named after chdir={named}");
    drop(kept);
}
