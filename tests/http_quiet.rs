//! The server's own work never shows up in the profiles it serves: at
//! sample rate 1, where every allocation the program makes is recorded,
//! twenty scrapes (proto, text, index) add nothing to the profile.
//!
//! Its own `main` (no test harness, whose threads would allocate while we
//! measure); the client is this same binary re-run as a child process, so
//! that no client allocation happens in the measured process either.

use heapprof_testkit::http::http_get;
use heapprof_testkit::watchdog::watchdog;

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
            let reply = http_get(addr, target);
            assert_eq!(reply.status, 200, "{target}: {}", reply.text());
        }
        return;
    }
    let _watchdog = watchdog("http_quiet", Duration::from_secs(120));
    heapprof::set_sample_rate(1);
    let addr = heapprof::http::serve("127.0.0.1:0").expect("start the server");
    // Warm up: the first profile loads debug info, which is cached for good.
    let warm = http_get(addr, "/debug/pprof/heap");
    assert_eq!(warm.status, 200);
    drop(warm);

    let mut client = std::process::Command::new(std::env::current_exe().unwrap());
    client.env("HEAPPROF_QUIET_CLIENT", addr.to_string());
    let mut child = client.spawn().expect("start the client");
    let before = heapprof::snapshot();
    // The program's own allocation in the same window: at rate 1 it must
    // be recorded, which shows the window records what the program does.
    let kept = control();
    let status = child.wait().expect("wait for the client");
    let grown = heapprof::snapshot().delta(&before);
    assert!(status.success(), "the client failed: {status}");
    drop(kept);

    let (ours, others): (Vec<_>, Vec<_>) = grown.sites().iter().partition(|s| {
        s.frames
            .iter()
            .any(|f| f.function.contains("http_quiet::control"))
    });
    let ours: i64 = ours.iter().map(|s| s.alloc_objects).sum();
    let recorded: i64 = others.iter().map(|s| s.alloc_objects).sum();
    println!(
        "{SCRAPES} scrapes at rate 1: {recorded} of the server's allocations were recorded \
         in the profile, beside {ours} of the program's own"
    );
    assert!(
        ours >= 1,
        "the program's allocation was not recorded:\n{grown:#?}"
    );
    assert_eq!(
        recorded, 0,
        "the server's allocations showed up:\n{grown:#?}"
    );

    // `handle`, mounted in the program's own server, hands back a body the
    // program owns and frees: its allocation is the program's, one block
    // of the body's size, and nothing else the build did is.
    let counts = || {
        let s = heapprof::stats();
        [
            s.allocations,
            s.allocated_bytes,
            s.deallocations,
            s.freed_bytes,
        ]
    };
    let before = counts();
    let response = heapprof::http::handle("/debug/pprof/heap", "debug=1");
    let built = counts();
    let body = response.body.capacity() as u64;
    drop(response);
    let after = counts();
    assert_eq!(
        [
            built[0] - before[0],
            built[1] - before[1],
            built[2] - before[2]
        ],
        [1, body, 0],
        "handle() counted as the program's: {before:?} -> {built:?}"
    );
    assert_eq!(
        [after[2] - built[2], after[3] - built[3]],
        [1, body],
        "its free: {built:?} -> {after:?}"
    );
    println!("handle(): one block of {body} bytes counted as the program's, and its free");

    // Scrapes, with the threads the server starts for them, are not the
    // program's: `stats()` does not move while this thread only waits.
    let mut child = client.spawn().expect("start the client");
    let before = counts();
    let status = child.wait().expect("wait for the client");
    let after = counts();
    assert!(status.success(), "the client failed: {status}");
    assert_eq!(
        before, after,
        "{SCRAPES} scrapes moved stats() (allocations, bytes, frees, bytes)"
    );
    println!("{SCRAPES} scrapes: stats() unmoved");

    // Nor is a dump series' thread: started and stopped, what the program
    // allocated for its settings is freed as the program's, and nothing
    // else counts.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("series.pb.gz");
    let before = counts();
    for _ in 0..10 {
        heapprof::AutoDump::new(&path)
            .every(Duration::from_secs(100))
            .start()
            .expect("start a series")
            .stop();
    }
    let after = counts();
    assert_eq!(
        [after[0] - before[0], after[1] - before[1]],
        [after[2] - before[2], after[3] - before[3]],
        "ten series started and stopped: {before:?} -> {after:?} (allocations and \
         bytes against frees and bytes)"
    );
    println!(
        "ten series started and stopped: {} allocations of the program's, all freed",
        after[0] - before[0]
    );
}

/// One allocation of the program's own, at a site of its own.
#[inline(never)]
fn control() -> Vec<u8> {
    std::hint::black_box(vec![1u8; 1000])
}
