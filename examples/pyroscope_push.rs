//! A job that leaks, pushing its heap profiles to Grafana Pyroscope.
//!
//! ```text
//! docker run -p 4040:4040 grafana/pyroscope      # a Pyroscope to push to
//! cargo run --release --features pyroscope --example pyroscope_push -- http://localhost:4040
//! ```
//!
//! Then open Pyroscope's UI at that address: the service `heapprof-example`
//! has `memory` profiles; `alloc_space` shows what each period allocated
//! (the cache and the per-request buffers), `inuse_space` what is live at
//! each push (the cache, growing).
//!
//! Arguments: the server's URL (default `http://localhost:4040`) and how
//! many seconds to run (default 60). The same pusher starts with no code
//! from `HEAPPROF_PYROSCOPE_URL` (see the README).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The leak: every response cached for good.
#[inline(never)]
fn cache_response(cache: &mut HashMap<u64, Vec<u8>>, request: u64) {
    cache.insert(request, vec![(request % 251) as u8; 4096]);
}

/// Work that allocates and frees: alloc_space only.
#[inline(never)]
fn handle_request(request: u64) -> usize {
    let body = format!("request {request}").repeat(64);
    std::hint::black_box(body).len()
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://localhost:4040".into());
    let seconds: u64 = args.next().map_or(60, |s| s.parse().expect("seconds"));

    let pusher = heapprof::pyroscope::Pusher::new(&url, "heapprof-example")
        .label("env", "example")
        .every(Duration::from_secs(10))
        .start()?;
    eprintln!("pushing to {url} every 10 s for {seconds} s (failures are reported on stderr)");

    let mut cache = HashMap::new();
    let start = Instant::now();
    let mut request = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..1000 {
            handle_request(request);
            if request % 4 == 0 {
                cache_response(&mut cache, request);
            }
            request += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{request} requests, {} cached; pushing the last period",
        cache.len()
    );
    // The last period: pushed before the program ends.
    pusher.stop();
    Ok(())
}
