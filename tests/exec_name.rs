//! `argv[0]` is whatever the caller of `exec` chose, not a file heapprof
//! may open: a program started under the name of a FIFO still runs, and
//! one started as `/dev/stdin` still reads all of its input.

use heapprof_testkit::child::{CHILD_VAR, is_child};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// How long a child may take; a hang before `main` never ends.
const LIMIT: Duration = Duration::from_secs(60);

/// The child: allocates, writes a profile, and counts its input.
#[test]
fn child_reads_its_input() {
    if !is_child() {
        return;
    }
    let mut profile = Vec::new();
    heapprof::write_profile(&mut profile).expect("write_profile");
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    println!("input={}", input.len());
}

/// Runs the child under `name`, with `input` on its stdin: what it printed.
fn run_as(name: &str, input: &[u8]) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg0(name)
        .args(["--exact", "child_reads_its_input", "--nocapture"])
        .env(CHILD_VAR, "1")
        .env("HEAPPROF_SAMPLE_RATE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    // The child reads only after `main` has started: a child that never
    // starts leaves the pipe full, which the limit below ends.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("run as {name:?}, the child did not finish in {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "run as {name:?}: {out}");
    out
}

#[test]
fn a_program_named_after_a_fifo_starts() {
    if is_child() {
        return;
    }
    let fifo = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("exec_name.fifo");
    let _ = std::fs::remove_file(&fifo);
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo of a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    let out = run_as(fifo.to_str().unwrap(), b"");
    assert!(out.contains("input=0"), "{out}");
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn a_program_named_dev_stdin_reads_all_its_input() {
    if is_child() {
        return;
    }
    let input = vec![b'x'; 100_000];
    let out = run_as("/dev/stdin", &input);
    assert!(out.contains(&format!("input={}", input.len())), "{out}");
}
