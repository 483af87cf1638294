//! A small multi-tenant job server: requests of three tenants run as tasks
//! on a multi-threaded tokio runtime, each labelled with its tenant and
//! route, and share one response cache. Which tenant holds the cache's
//! memory? The stacks are the same for all three; the labels tell them
//! apart.
//!
//! ```sh
//! cargo run --release --example labels
//! go tool pprof -tagfocus tenant=acme -top heap.pb.gz    # acme's live memory
//! go tool pprof -tags heap.pb.gz                         # bytes per tenant, route, thread
//! go tool pprof -tagroot tenant -top heap.pb.gz          # tenants as root frames
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use heapprof::FutureExt as _;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Responses kept per (tenant, key), whoever asked.
type Cache = Arc<Mutex<HashMap<(String, u32), Vec<u8>>>>;

/// Renders a response and keeps it in the cache: the same code for every
/// tenant, so the same stack.
async fn handle(cache: Cache, tenant: &'static str, key: u32, size: usize) {
    let response = vec![key as u8; size];
    tokio::task::yield_now().await; // the task may move to another thread here
    cache
        .lock()
        .unwrap()
        .insert((tenant.to_owned(), key), response);
}

fn main() -> std::io::Result<()> {
    heapprof::set_sample_rate(64 * 1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()?;
    let cache: Cache = Arc::default();
    // (tenant, route, requests, response size): acme's reports are big.
    let load = [
        ("acme", "/report", 400, 256 * 1024),
        ("globex", "/search", 4000, 4 * 1024),
        ("initech", "/search", 2000, 4 * 1024),
    ];
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for (tenant, route, requests, size) in load {
            for key in 0..requests {
                let request = handle(cache.clone(), tenant, key, size);
                let labels = [("tenant", tenant), ("route", route)];
                tasks.push(tokio::spawn(request.heap_labels(&labels)));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
    });

    heapprof::write_profile(std::fs::File::create("heap.pb.gz")?)?;
    let snapshot = heapprof::snapshot();
    println!("live bytes by tenant (estimates at a 64 KiB sample rate):");
    for (tenant, _, requests, size) in load {
        println!(
            "  {tenant:8} {:>12}  (cached: {:>10})",
            snapshot.inuse_bytes_with_label("tenant", tenant),
            requests as usize * size
        );
    }
    println!("wrote heap.pb.gz; try: go tool pprof -tagfocus tenant=acme -top heap.pb.gz");
    drop(cache);
    Ok(())
}
