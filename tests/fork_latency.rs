//! `fork()` does not wait for a profile's symbolization, which takes most
//! of a second the first time (backtrace parses the binary's debug info).
//! A fork made while another thread resolves a cold profile returns before
//! that thread is done, and the child, whose parent was mid-lookup, still
//! writes a profile that names the program's functions, instead of hanging
//! on a lock whose owner it does not have.
//!
//! Runs in a child process of its own, so that the symbol cache is cold.

use heapprof_testkit::child::{is_child, run_child, wait_with_timeout};
use heapprof_testkit::profile::{cum, decode, string};
use heapprof_testkit::watchdog::watchdog;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Many distinct sites, each a different call chain, for a long lookup.
#[inline(never)]
fn sites(depth: u32, keep: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        keep.push(vec![0u8; 100]);
        return;
    }
    for _ in 0..2 {
        sites(depth - 1, keep);
        keep.push(std::hint::black_box(vec![1u8; 10 + depth as usize]));
    }
}

#[test]
fn child_forks_during_a_cold_lookup() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let mut keep = Vec::new();
    sites(10, &mut keep);
    let writing = AtomicBool::new(false);
    let written = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            writing.store(true, SeqCst);
            let started = Instant::now();
            heapprof::write_profile(std::io::sink()).unwrap();
            written.store(true, SeqCst);
            started.elapsed()
        });
        while !writing.load(SeqCst) {
            std::hint::spin_loop();
        }
        // Into the lookup: the table walk before it takes milliseconds.
        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        // SAFETY: the child only writes a profile and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut gz = Vec::new();
            let code = match heapprof::write_profile(&mut gz) {
                Err(_) => 1,
                // Frames left unnamed are put down to the fork, not to a
                // stripped binary.
                Ok(()) => {
                    let p = decode(&gz);
                    let says = |what: &str| p.comment.iter().any(|&c| string(&p, c).contains(what));
                    if says("have no names")
                        && !says("This process was forked from one with other threads")
                    {
                        2
                    } else if cum(&p, "fork_latency::sites", 1) == 0 {
                        3
                    } else {
                        0
                    }
                }
            };
            // SAFETY: leaves the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let fork_took = before.elapsed();
        let done_at_fork = written.load(SeqCst);
        println!("fork took {fork_took:?}; the write was done by then: {done_at_fork}");
        assert_eq!(
            wait_with_timeout(pid, Duration::from_secs(30)),
            Ok(0),
            "the child wrote its profile and left (2: its unnamed frames were put down to \
             something other than the fork; 3: it did not name the program's own sites)"
        );
        let write_took = writer.join().unwrap();
        println!("the cold write took {write_took:?}");
        assert!(!done_at_fork, "the fork must come during the write");
        // Waiting for the lookup, the fork would take most of the write's
        // time (316-405 ms of a cold profile); not waiting, it
        // takes what a fork takes. Half the write leaves room for a fork
        // preempted on a loaded machine.
        assert!(
            fork_took * 2 < write_took,
            "fork took {fork_took:?} of a {write_took:?} write: it waited for the lookup"
        );
    });
    drop(keep);
    println!("FORK-LATENCY-OK");
}

#[test]
fn fork_does_not_wait_for_symbolization() {
    let _watchdog = watchdog("fork during lookup", Duration::from_secs(120));
    let (stdout, stderr) = run_child("child_forks_during_a_cold_lookup", &[]);
    println!("{stdout}");
    assert!(stdout.contains("FORK-LATENCY-OK"), "{stdout}\n{stderr}");
}

/// A program that uses the `backtrace` crate itself (error reporters do)
/// may hold backtrace's lock at a fork, where no lock of heapprof's shows
/// it: a child still writes its profile, naming frames without backtrace.
#[test]
fn child_forks_while_the_program_holds_backtraces_lock() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let mut keep = Vec::new();
    sites(6, &mut keep);
    // A first profile before the other thread starts, so that heapprof's
    // own lookups are done and the children look nothing up of their own
    // accord but what backtrace would name (the C library's frames).
    heapprof::write_profile(std::io::sink()).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(SeqCst) {
                std::hint::black_box(backtrace::Backtrace::new());
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut waited = Ok(0);
        for _ in 0..10 {
            // SAFETY: the child only writes a profile and leaves with
            // `_exit`.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                sites(3, &mut keep);
                let code = i32::from(heapprof::write_profile(std::io::sink()).is_err());
                // SAFETY: leaves the child without running the parent's
                // destructors or atexit handlers.
                unsafe { libc::_exit(code) };
            }
            waited = wait_with_timeout(pid, Duration::from_secs(30));
            if waited != Ok(0) {
                break;
            }
        }
        // Before the assertion: the scope waits for the looping thread.
        stop.store(true, SeqCst);
        assert_eq!(waited, Ok(0), "the child wrote its profile and left");
    });
    drop(keep);
    println!("BACKTRACE-FORKS-OK");
}

#[test]
fn fork_does_not_wait_for_the_programs_backtraces() {
    let _watchdog = watchdog("fork while backtrace is in use", Duration::from_secs(120));
    let (stdout, stderr) = run_child("child_forks_while_the_program_holds_backtraces_lock", &[]);
    assert!(stdout.contains("BACKTRACE-FORKS-OK"), "{stdout}\n{stderr}");
}
