//! What heapprof's own threads allocate is counted as heapprof's own, in
//! `stats()`'s `profiler_*` fields, even for threads that stay inside the
//! profiler for good (the HTTP server's): their allocations so far are
//! added while they run, not only when a thread leaves the profiler.

use heapprof_testkit::http::http_get;
use heapprof_testkit::watchdog::watchdog;
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[test]
fn the_servers_allocations_are_the_profilers() {
    let _dog = watchdog("profiler_counts", Duration::from_secs(120));
    let addr = heapprof::http::serve("127.0.0.1:0").expect("start the server");
    let before = heapprof::stats();
    let mut served = 0;
    for _ in 0..5 {
        let reply = http_get(addr, "/debug/pprof/heap?debug=1");
        assert_eq!(reply.status, 200, "{}", reply.text());
        served += reply.body.len() as u64;
    }
    let after = heapprof::stats();
    let own = after.profiler_allocated_bytes - before.profiler_allocated_bytes;
    println!("5 text profiles, {served} bytes served: heapprof allocated {own} bytes");
    // Each body is built in memory on the server's thread before it is
    // sent, so heapprof allocated at least the bytes it served.
    assert!(
        own >= served,
        "heapprof's own bytes {own} < {served} served"
    );
}

/// A distinct stack per depth, so that a profile has many sites to build.
#[inline(never)]
fn at_depth(depth: usize, len: usize) -> Vec<u8> {
    if depth == 0 {
        vec![1; len]
    } else {
        std::hint::black_box(at_depth(depth - 1, len))
    }
}

/// `stats()` read while another thread spends its time inside heapprof
/// (writing profiles, every allocation sampled) never steps back: a
/// thread's own counts are found in one place whether it is inside, in
/// the middle of leaving, or outside.
#[test]
fn stats_never_step_back_while_profiles_are_written() {
    let _dog = watchdog("profiler_counts", Duration::from_secs(120));
    let rate = heapprof::sample_rate();
    heapprof::set_sample_rate(1);
    let kept: Vec<Vec<u8>> = (0..2_000).map(|i| at_depth(i % 40, 16 + i % 200)).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (reads, steps_back) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                heapprof::write_profile(std::io::sink()).expect("write a profile");
            }
        });
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::black_box(vec![1u8; 100]);
            }
        });
        let fields = |s: &heapprof::Stats| {
            [
                ("profiler_allocations", s.profiler_allocations),
                ("profiler_allocated_bytes", s.profiler_allocated_bytes),
                ("allocations", s.allocations),
                ("allocated_bytes", s.allocated_bytes),
                ("deallocations", s.deallocations),
                ("freed_bytes", s.freed_bytes),
            ]
        };
        let mut last = heapprof::stats();
        let mut steps_back = Vec::new();
        let started = std::time::Instant::now();
        let mut reads = 0;
        while started.elapsed() < Duration::from_secs(2) {
            let now = heapprof::stats();
            for ((name, before), (_, after)) in fields(&last).into_iter().zip(fields(&now)) {
                if after < before && steps_back.len() < 10 {
                    steps_back.push(format!("{name}: {before} then {after}"));
                }
            }
            last = now;
            reads += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (reads, steps_back)
    });
    heapprof::set_sample_rate(rate);
    drop(kept);
    println!("{reads} reads of stats()");
    assert!(reads > 100, "only {reads} reads: the check saw too little");
    assert!(
        steps_back.is_empty(),
        "stats() stepped back: {steps_back:?}"
    );
}
