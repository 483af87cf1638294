//! `fork()` while other threads allocate, record samples and write
//! profiles: the child must be able to allocate, record and write a
//! profile (no lock of heapprof's left held by a thread that does not exist
//! in the child), and the parent must go on as before.
//!
//! Each of the 20 rounds forks at a different sample rate (1, a small one,
//! the smallest page-aligned one, the default), with four threads
//! allocating and one writing profiles the whole time. The child checks its
//! own profile and leaves with `_exit`; the parent polls `waitpid` and
//! kills a child that has not finished in 30 s (a deadlock: the test fails).

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::child::wait_with_timeout;
use heapprof_testkit::profile::{
    ALLOC_OBJECTS, INUSE_OBJECTS, INUSE_SPACE, decode, flat, take_profile,
};
use heapprof_testkit::rng::XorShift;
use heapprof_testkit::watchdog::watchdog;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const ROUNDS: usize = 20;
const ALLOCATING_THREADS: usize = 4;
const RATES: [usize; 4] = [1, 4096, 65536, 512 * 1024];
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);
const CHILD_BLOCKS: usize = 100;

/// What the background threads do until told to stop: blocks of mixed
/// sizes, some kept a while, some freed at once, some grown.
#[inline(never)]
fn allocate_until(stop: &AtomicBool, seed: u64, ops: &AtomicUsize) {
    let mut rng = XorShift::new(seed);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Relaxed) {
        let size = rng.log_uniform(1, 64 * 1024);
        let mut v = vec![seed as u8; size];
        if rng.below(4) == 0 {
            v.extend_from_slice(&[1, 2, 3]);
        }
        if kept.len() < 64 {
            kept.push(v);
        } else {
            let i = rng.below(kept.len() as u64) as usize;
            kept[i] = v;
        }
        black_box(&kept);
        ops.fetch_add(1, Relaxed);
    }
}

/// The child's own allocations, at a site the child looks for.
#[inline(never)]
fn child_allocates() -> Vec<Vec<u8>> {
    (0..CHILD_BLOCKS).map(|i| vec![i as u8; 1000]).collect()
}

/// Runs in the forked child: only this thread exists. Returns the exit
/// code. Writes nothing to Rust's stdout/stderr (another thread of the
/// parent may have held their locks at the fork).
fn child_main() -> i32 {
    heapprof::set_sample_rate(1);
    let blocks = child_allocates();
    let mut gz = Vec::new();
    if heapprof::write_profile(&mut gz).is_err() {
        return 2;
    }
    let p = decode(&gz);
    assert_sane_values(&p);
    // At rate 1 each of the child's blocks is one sample of weight 1
    // (plus the Vec holding them).
    if flat(&p, "child_allocates", ALLOC_OBJECTS) < CHILD_BLOCKS as i64 {
        return 3;
    }
    if flat(&p, "child_allocates", INUSE_SPACE) < (CHILD_BLOCKS * 1000) as i64 {
        return 4;
    }
    drop(blocks);
    // And again: frees were credited, the second write works.
    let p = take_profile();
    if flat(&p, "child_allocates", INUSE_OBJECTS) != 0 {
        return 5;
    }
    0
}

#[test]
fn fork_while_other_threads_allocate_and_sample() {
    let _watchdog = watchdog("fork test", Duration::from_secs(300));
    let started = Instant::now();
    // Warm the symbol cache so that children mostly reuse it.
    heapprof::set_sample_rate(1);
    let warm = child_allocates();
    take_profile();
    drop(warm);

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let profiles = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..ALLOCATING_THREADS {
        let (stop, ops) = (stop.clone(), ops.clone());
        threads.push(std::thread::spawn(move || {
            allocate_until(&stop, t as u64 + 1, &ops)
        }));
    }
    {
        let (stop, profiles) = (stop.clone(), profiles.clone());
        threads.push(std::thread::spawn(move || {
            // Every way to write a profile, in turn: each takes its own
            // locks (the peak copy, the loaded-object walk, the text
            // writer's stats) and a fork may land in any of them.
            for n in 0usize.. {
                if stop.load(Relaxed) {
                    break;
                }
                match n % 3 {
                    0 => heapprof::write_profile(Vec::new()).expect("write_profile"),
                    1 => match heapprof::write_peak_profile(Vec::new()) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        other => other.expect("write_peak_profile"),
                    },
                    _ => heapprof::write_text_profile(Vec::new()).expect("write_text_profile"),
                }
                profiles.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }

    let mut failures = Vec::new();
    let mut child_time = Duration::ZERO;
    for round in 0..ROUNDS {
        let rate = RATES[round % RATES.len()];
        heapprof::set_sample_rate(rate);
        // Let the threads pick the rate up and get busy.
        std::thread::sleep(Duration::from_millis(20));
        let forked = Instant::now();
        // SAFETY: the child runs only `child_main` (allocations, heapprof,
        // decoding) and leaves with `_exit`, never returning into the test
        // harness; it does not touch locks other threads may have held
        // except heapprof's and malloc's, which is what is under test.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(child_main).unwrap_or(101);
            // SAFETY: ends the child at once, without running the parent's
            // atexit handlers or unwinding into the harness.
            unsafe { libc::_exit(code) };
        }
        // The parent keeps allocating while the child runs.
        let mut mine = Vec::new();
        for i in 0..1000 {
            mine.push(vec![i as u8; 100 + i]);
        }
        match wait_with_timeout(pid, CHILD_TIMEOUT) {
            Ok(0) => {}
            Ok(code) => failures.push(format!("round {round} (rate {rate}): child exited {code}")),
            Err(e) => failures.push(format!("round {round} (rate {rate}): {e}")),
        }
        child_time += forked.elapsed();
        drop(mine);
    }
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    // The parent is intact: it can still sample and write a profile.
    heapprof::set_sample_rate(1);
    let after = child_allocates();
    let p = take_profile();
    assert_sane_values(&p);
    assert!(flat(&p, "child_allocates", INUSE_OBJECTS) >= CHILD_BLOCKS as i64);
    drop(after);

    println!(
        "fork: {ROUNDS} forks, {} children ok, {} allocations by {ALLOCATING_THREADS} threads, \
         {} profiles written meanwhile, mean child lifetime {:?}, total {:?}",
        ROUNDS - failures.len(),
        ops.load(Relaxed),
        profiles.load(Relaxed),
        child_time / ROUNDS as u32,
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// After `fork`, the parent's other threads are gone, and glibc recycles
/// (and past 40 MiB of cached stacks, unmaps) their stacks, where their
/// thread-locals lived, as soon as the child starts threads of its own.
/// heapprof's registries of running threads must not keep pointing there:
/// the child starts and joins threads, then reads `stats()` and takes
/// unaligned samples (which update every registered mask copy). This
/// crashed the child with SIGSEGV while the registries kept the parent's
/// threads.
#[test]
fn a_child_that_starts_threads_never_touches_the_parents_thread_memory() {
    let _watchdog = watchdog("fork with stale thread memory", Duration::from_secs(120));
    const THREADS: usize = 4;
    let ready = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let release = Arc::new(std::sync::Barrier::new(THREADS + 1));
    let parked: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ready, release) = (ready.clone(), release.clone());
            std::thread::Builder::new()
                .stack_size(32 << 20)
                .spawn(move || {
                    black_box(vec![1u8; 1000]);
                    ready.wait();
                    release.wait();
                })
                .unwrap()
        })
        .collect();
    ready.wait();
    let before = heapprof::stats();
    // SAFETY: the child runs only heapprof calls, thread starts and
    // allocations, and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            let at_fork = heapprof::stats();
            // Parked threads' counts were kept, not lost.
            if at_fork.allocations < before.allocations {
                return 10;
            }
            for stack in [32 << 20, 2 << 20, 32 << 20, 2 << 20, 64 << 10] {
                let t = std::thread::Builder::new()
                    .stack_size(stack)
                    .spawn(|| black_box(vec![0u8; 100]).len())
                    .unwrap();
                if t.join().is_err() {
                    return 11;
                }
            }
            let after = heapprof::stats();
            if after.allocations < at_fork.allocations {
                return 12;
            }
            heapprof::set_sample_rate(1);
            let kept = child_allocates();
            drop(kept);
            0
        })
        .unwrap_or(101);
        // SAFETY: ends the child without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let result = wait_with_timeout(pid, CHILD_TIMEOUT);
    release.wait();
    for t in parked {
        t.join().unwrap();
    }
    heapprof::set_sample_rate(512 * 1024);
    assert_eq!(result, Ok(0), "the child failed");
    println!("a child that started 5 threads after fork exited cleanly");
}

/// Forks each of [`CONCURRENT_FORKERS`] threads makes at once.
const FORKS_EACH: usize = 400;
const CONCURRENT_FORKERS: usize = 2;

/// Threads that fork at the same moment: glibc runs their `pthread_atfork`
/// prepare handlers side by side, and heapprof's must still take and give
/// back its locks one fork at a time, or a lock stays held for good and
/// the program hangs at its next sample. Each child leaves with `_exit`.
#[test]
fn threads_that_fork_at_once_never_hang() {
    let _watchdog = watchdog("concurrent forks", Duration::from_secs(120));
    let forkers: Vec<_> = (0..CONCURRENT_FORKERS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..FORKS_EACH {
                    black_box(vec![t as u8; 64 + i]);
                    // SAFETY: the child only calls `_exit`, which is
                    // async-signal-safe.
                    let pid = unsafe { libc::fork() };
                    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
                    if pid == 0 {
                        // SAFETY: ends the child at once.
                        unsafe { libc::_exit(0) };
                    }
                    let mut status = 0;
                    // SAFETY: waits for the child just forked.
                    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                }
            })
        })
        .collect();
    for f in forkers {
        f.join().unwrap();
    }
    // The locks came back: a sample and a profile still work.
    heapprof::set_sample_rate(1);
    black_box(vec![0u8; 4096]);
    let mut out = Vec::new();
    heapprof::write_profile(&mut out).unwrap();
    heapprof::set_sample_rate(512 * 1024);
}
