//! The workloads the overhead benchmark runs under each allocator. Every
//! configuration binary (`benches/cfg_*.rs`) includes this file with its own
//! `#[global_allocator]`, so the workload code is identical everywhere.
//!
//! A configuration binary run with `<workload> <scale>` runs it once and
//! prints `elapsed_ns=N` and `user_ns=N` (wall and user CPU time),
//! measured around the workload only (not process
//! start-up, not the allocator's own exit work). Run by `cargo bench -p heapprof-dev` with
//! no workload argument, it does nothing.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

/// A map of 1 M formatted strings, then 10 M small alloc/free pairs
/// (sizes 16..136 B), scaled by `scale` / 100.
pub fn alloc_heavy(scale: usize) {
    let n_map = 1_000_000 * scale / 100;
    let n_pairs = 10_000_000 * scale / 100;
    let mut map = HashMap::with_capacity(16);
    for i in 0..n_map {
        map.insert(i, format!("value number {i}"));
    }
    for i in 0..n_pairs {
        let b: Vec<u8> = Vec::with_capacity(16 + (i % 16) * 8);
        black_box(b);
    }
    black_box(map);
}

/// Two threads, each churning small blocks through a window of 1000 live
/// ones (so frees are not always of the block just allocated).
pub fn threads2(scale: usize) {
    let per_thread = 5_000_000 * scale / 100;
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut window: Vec<Option<Vec<u8>>> = (0..1000).map(|_| None).collect();
                for i in 0..per_thread {
                    let size = 16 + ((i * 7 + t) % 24) * 8;
                    window[i % 1000] = Some(Vec::with_capacity(size));
                }
                black_box(window);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// Buffers grown by realloc, the way large blocks grow (nearly every one of
/// them is sampled): `reserve_exact` a MiB at a time to 64 MiB (four times)
/// and to 256 MiB, and a buffer doubled by appending itself to 256 MiB; the number
/// of buffers scaled by `scale` / 100 (at least one of each).
pub fn realloc_growth(scale: usize) {
    const MIB: usize = 1 << 20;
    let rounds = (scale / 25).max(1);
    for _ in 0..rounds {
        let mut v: Vec<u8> = Vec::new();
        while v.capacity() < 64 * MIB {
            // The buffer is empty: this asks for a MiB more than it has.
            v.reserve_exact(v.capacity() + MIB);
        }
        black_box(&v);
    }
    let mut v: Vec<u8> = Vec::new();
    while v.capacity() < 256 * MIB {
        v.reserve_exact(v.capacity() + MIB);
    }
    black_box(v);
    let mut v: Vec<u8> = vec![1; 4096];
    while v.len() < 256 * MIB {
        v.extend_from_within(..);
    }
    black_box(v);
}

/// Runs the workload named by the first argument, if any, and prints its
/// time. Returns whether one ran.
pub fn run_from_args() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let Some(name) = args.get(1).filter(|a| !a.starts_with('-')) else {
        return false;
    };
    let scale: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let start = Instant::now();
    let user_start = user_time_ns();
    match name.as_str() {
        "alloc_heavy" => alloc_heavy(scale),
        "threads2" => threads2(scale),
        "realloc_growth" => realloc_growth(scale),
        other => {
            eprintln!("unknown workload {other}");
            std::process::exit(2);
        }
    }
    println!("elapsed_ns={}", start.elapsed().as_nanos());
    println!("user_ns={}", user_time_ns() - user_start);
    true
}

/// CPU time this process has spent in user mode, all threads, in ns.
/// Unlike wall time, it leaves out time in the kernel (page faults, which
/// swing by hundreds of milliseconds from run to run on a shared machine
/// and are the same work whichever allocator wrapper runs) and time spent
/// waiting for a processor.
fn user_time_ns() -> u64 {
    // SAFETY: `usage` is a valid, writable rusage for getrusage to fill.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_utime.tv_sec as u64 * 1_000_000_000 + usage.ru_utime.tv_usec as u64 * 1_000
}
