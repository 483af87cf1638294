//! A leaking server, after the first seed: a request loop that caches every
//! response for good, with heapprof's `/debug/pprof` endpoint beside it.
//!
//! ```text
//! cargo run --release --example http_server          # serves on 127.0.0.1:6060
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap
//! curl -s 'http://127.0.0.1:6060/debug/pprof/heap?debug=1' | head
//! ```
//!
//! Two profiles some time apart, compared, show the leak and nothing else:
//!
//! ```text
//! go tool pprof -proto -output first.pb.gz http://127.0.0.1:6060/debug/pprof/heap
//! # … a minute later …
//! go tool pprof -top -base first.pb.gz http://127.0.0.1:6060/debug/pprof/heap
//! ```
//!
//! Pass another address as the first argument (`0.0.0.0:6060` only on a
//! trusted network: a heap profile shows the program's insides), and a
//! number of seconds to run as the second (default: until stopped).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:6060".into());
    let run_for = args
        .next()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let bound = heapprof::http::serve(addr.as_str())?;
    println!("profiles at http://{bound}/debug/pprof/");
    println!("  go tool pprof -top http://{bound}/debug/pprof/heap");
    println!("  curl -s 'http://{bound}/debug/pprof/heap?debug=1' | head");
    exec(run_for);
    Ok(())
}

fn exec(run_for: Option<Duration>) {
    let started = Instant::now();
    let mut cache = HashMap::new();
    let mut request = 0u64;
    while run_for.is_none_or(|d| started.elapsed() < d) {
        // About 20 000 requests a second, each leaking ~60 bytes.
        for _ in 0..2_000 {
            add_map(&mut cache, request);
            request += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        if request.is_multiple_of(200_000) {
            let s = heapprof::stats();
            println!(
                "{request} requests served; live heap {} MiB",
                s.live_bytes() >> 20
            );
        }
    }
}

/// The leak: every request's response is cached, and nothing is evicted.
#[inline(never)]
fn add_map(cache: &mut HashMap<String, String>, request: u64) {
    cache.insert(format!("key{request}"), format!("value{request}"));
}
