//! A deploy that replaces (or deletes) a running program's executable does
//! not take its names away: heapprof reads the file the process runs, not
//! the one now at its path, and names the executable by its path without
//! the `" (deleted)"` Linux appends.
//!
//! The test binary copies itself to a directory of its own and runs the
//! copy at rate 1; the copy replaces its own file with other bytes before
//! it allocates and writes its first profile.

use heapprof_testkit::child::{is_child, run_child_of};
use heapprof_testkit::profile::{INUSE_SPACE, decode, flat, string};
use heapprof_testkit::watchdog::watchdog;
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const BLOCKS: usize = 64;
const BLOCK: usize = 4096;

/// Fills `held` (made with room) with the blocks.
#[inline(never)]
fn held_after_the_deploy(held: &mut Vec<Vec<u8>>) {
    for _ in 0..BLOCKS {
        held.push(black_box(vec![5u8; BLOCK]));
    }
}

/// The copy: replaces its own executable, then profiles.
#[test]
fn child_replaces_its_executable() {
    if !is_child() {
        return;
    }
    assert_eq!(heapprof::sample_rate(), 1);
    let exe = std::env::current_exe().unwrap();
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, b"#!/bin/sh\necho not the program\n").unwrap();
    assert!(
        std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .ends_with(" (deleted)"),
        "Linux marks the running file as deleted"
    );

    let mut held = Vec::with_capacity(BLOCKS);
    held_after_the_deploy(&mut held);
    let expected = (BLOCKS * BLOCK) as i64;
    assert_eq!(
        heapprof::snapshot().inuse_bytes_in("held_after_the_deploy"),
        expected,
        "the function is named from the file the process runs"
    );
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    assert_eq!(flat(&p, "held_after_the_deploy", INUSE_SPACE), expected);
    let main = &p.mapping[0];
    assert_eq!(string(&p, main.filename), exe.to_str().unwrap());
    drop(held);
}

#[test]
fn a_replaced_executable_keeps_its_names() {
    if is_child() {
        return;
    }
    let _watchdog = watchdog("replaced binary", Duration::from_secs(120));
    run_copy(false);
    // A split-debug package beside the path (the new build's, after a
    // deploy) is not read for the file the process runs.
    run_copy(true);
}

/// Runs a copy of this binary, which replaces itself; with a `.dwp` file
/// beside it when `dwp`.
fn run_copy(dwp: bool) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("replaced-binary-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    if dwp {
        std::fs::write(dir.path().join("replaced-binary-copy.dwp"), b"not ours").unwrap();
    }
    let (stdout, _) = run_child_of(
        &copy,
        None,
        "child_replaces_its_executable",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran its test: {stdout}"
    );
}
