//! A leak seen by comparing two profiles taken over time: the Rust version
//! of the first seed's leaking server, without the server (see
//! `http_server.rs` for that).
//!
//! ```text
//! cargo run --release --example leak        # writes leak-1.pb.gz, leak-2.pb.gz
//! go tool pprof -top -base leak-1.pb.gz target/release/examples/leak leak-2.pb.gz
//! ```
//!
//! `-base` subtracts the first profile from the second: what is left is
//! what grew in between, here `leak::add_map`, and nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn main() -> std::io::Result<()> {
    let mut cache = HashMap::new();
    let mut next = 0u64;
    // Some memory that is held but does not grow: it cancels out in -base.
    let steady: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 256 * 1024]).collect();

    for snapshot in 1..=2 {
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            next = add_map(&mut cache, next, 20_000);
        }
        let path = format!("leak-{snapshot}.pb.gz");
        heapprof::write_profile(File::create(&path)?)?;
        println!("wrote {path} with {} entries in the map", cache.len());
    }
    let exe = std::env::current_exe()?;
    println!("what grew between the two:");
    println!(
        "  go tool pprof -top -base leak-1.pb.gz {} leak-2.pb.gz",
        exe.display()
    );
    std::hint::black_box(&steady);
    Ok(())
}

/// Never removes anything: the leak.
#[inline(never)]
fn add_map(map: &mut HashMap<String, String>, from: u64, count: u64) -> u64 {
    for i in from..from + count {
        map.insert(format!("key{i}"), format!("value{i}"));
    }
    from + count
}
