//! The real `go tool pprof` against the running `/debug/pprof` endpoint,
//! after the seeds' leaking server: `-top` on the URL, two profiles over
//! time compared with `-base`, a `-seconds` delta, and the `?debug=1` text
//! read back with the binary.
//!
//! Skips, saying why, when `go` is not installed, unless
//! `HEAPPROF_REQUIRE_GO=1` (set by `.ci/run`).

use heapprof_testkit::http::http_get;
use heapprof_testkit::tools::{go_available, go_pprof, top_rows};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The leak: a request handler that caches every response, for good.
#[inline(never)]
fn leaky_handler(cache: &mut HashMap<u64, Vec<u8>>, request: u64) {
    cache.insert(request, vec![(request % 251) as u8; 2048]);
}

/// Allocates and frees at once: shows in alloc_space only.
#[inline(never)]
fn churn_during_window(rounds: usize) -> usize {
    let mut kept = 0;
    for i in 0..rounds {
        let v = vec![i as u8; 4096];
        kept += std::hint::black_box(v).len();
    }
    kept
}

fn serve_requests(cache: &Arc<Mutex<HashMap<u64, Vec<u8>>>>, from: u64, count: u64) {
    let mut c = cache.lock().unwrap();
    for r in from..from + count {
        leaky_handler(&mut c, r);
    }
}

#[test]
fn go_tool_pprof_reads_the_http_endpoint() {
    if !go_available() {
        return;
    }
    heapprof::set_seed(3);
    heapprof::set_sample_rate(64 * 1024);
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    let base = format!("http://{addr}/debug/pprof");
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(Mutex::new(HashMap::new()));

    // The leak after 10 000 requests, as the seed's first snapshot.
    serve_requests(&cache, 0, 10_000); // ~20 MiB
    let heap_url = format!("{base}/heap");
    let top = go_pprof(&["-top", &heap_url]);
    assert!(top.contains("Type: inuse_space"), "{top}");
    let rows = top_rows(&top);
    assert!(
        rows[0].1.contains("leaky_handler"),
        "the leak is the first flat entry: {rows:?}"
    );
    let first = dir.path().join("first.pb.gz");
    go_pprof(&["-proto", "-output", first.to_str().unwrap(), &heap_url]);

    // 20 000 more requests later, -base shows the growth alone.
    serve_requests(&cache, 10_000, 20_000); // ~40 MiB more
    let diff = go_pprof(&["-top", "-base", first.to_str().unwrap(), &heap_url]);
    let grown = top_rows(&diff)
        .into_iter()
        .find(|r| r.1.contains("leaky_handler"))
        .expect("leaky_handler grew")
        .0;
    // 20 000 × (2 KiB + the map's share): 40 to 60 MiB, the estimate
    // within ±10 % at this rate.
    assert!(
        (35e6..75e6).contains(&grown),
        "growth between the snapshots: {grown}\n{diff}"
    );

    // -seconds: a delta over a window in which one function churns.
    // pprof starts, then asks for the delta, whose window opens when the
    // request arrives: 1.5 s of margin for that on a loaded machine.
    let churner = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(1500));
        churn_during_window(10_000) // 40 MiB allocated, none kept
    });
    let allocs_url = format!("{base}/allocs");
    let window = go_pprof(&[
        "-seconds",
        "4",
        "-sample_index=alloc_space",
        "-top",
        &allocs_url,
    ]);
    churner.join().unwrap();
    let churned = top_rows(&window)
        .into_iter()
        .find(|r| r.1.contains("churn_during_window"))
        .unwrap_or_else(|| panic!("churn_during_window in the window:\n{window}"))
        .0;
    assert!(
        (30e6..55e6).contains(&churned),
        "allocated in the window: {churned}\n{window}"
    );
    assert!(
        !window.contains("leaky_handler"),
        "nothing leaked during the window:\n{window}"
    );

    // ?debug=1: the text format, read back by pprof with the binary.
    let text = http_get(addr, "/debug/pprof/heap?debug=1");
    assert_eq!(text.status, 200);
    let text_path = dir.path().join("heap.txt");
    std::fs::write(&text_path, &text.body).unwrap();
    let exe = std::env::current_exe().unwrap();
    let from_text = go_pprof(&["-top", exe.to_str().unwrap(), text_path.to_str().unwrap()]);
    let text_leak = top_rows(&from_text)
        .into_iter()
        .find(|r| r.1.contains("leaky_handler"))
        .unwrap_or_else(|| panic!("leaky_handler in the text profile:\n{from_text}"))
        .0;
    // 30 000 × ~2 KiB live; the same estimate as the binary profile.
    assert!(
        (55e6..110e6).contains(&text_leak),
        "leak read from the text: {text_leak}\n{from_text}"
    );
    drop(cache);
}
