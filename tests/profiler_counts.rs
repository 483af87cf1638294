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
