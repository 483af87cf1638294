//! The server's own work never shows up in the profiles it serves: at
//! sample rate 1, where every allocation the program makes is recorded,
//! twenty scrapes (proto, text, index) add nothing to the profile.
//!
//! Its own `main` (no test harness, whose threads would allocate while we
//! measure); the client is this same binary re-run as a child process, so
//! that no client allocation happens in the measured process either.

mod common;

use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const SCRAPES: usize = 20;

fn main() {
    if let Ok(addr) = std::env::var("HEAPPROF_QUIET_CLIENT") {
        let addr = addr.parse().expect("an address");
        for i in 0..SCRAPES {
            let target = [
                "/debug/pprof/heap",
                "/debug/pprof/heap?debug=1",
                "/debug/pprof/",
            ][i % 3];
            let reply = common::http_get(addr, target);
            assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        }
        return;
    }
    let _watchdog = common::watchdog("http_quiet", Duration::from_secs(120));
    heapprof::set_sample_rate(1);
    let addr = heapprof::http::serve("127.0.0.1:0").expect("start the server");
    // Warm up: the first profile loads debug info, which is cached for good.
    let warm = common::http_get(addr, "/debug/pprof/heap");
    assert_eq!(warm.status, 200);
    drop(warm);

    let mut client = std::process::Command::new(std::env::current_exe().unwrap());
    client.env("HEAPPROF_QUIET_CLIENT", addr.to_string());
    let mut child = client.spawn().expect("start the client");
    let before = heapprof::snapshot();
    let stats_before = heapprof::stats();
    let status = child.wait().expect("wait for the client");
    let stats_after = heapprof::stats();
    let grown = heapprof::snapshot().delta(&before);
    assert!(status.success(), "the client failed: {status}");

    let recorded: i64 = grown.sites().iter().map(|s| s.alloc_objects).sum();
    let server_allocations = stats_after.allocations - stats_before.allocations;
    println!(
        "{SCRAPES} scrapes at rate 1: the server made {server_allocations} allocations, \
         {recorded} of them were recorded in the profile"
    );
    assert!(
        server_allocations > 100,
        "the scrapes must have allocated (counted exactly in stats)"
    );
    assert_eq!(
        recorded, 0,
        "the server's allocations showed up:\n{grown:#?}"
    );
}
