//! A batch job that builds a big map, profiled from start to end: the Rust
//! version of the first seed's `defer profile.Start(profile.MemProfile).Stop()`
//! example.
//!
//! ```text
//! cargo run --release --example batch_job            # writes mem.pb.gz
//! go tool pprof -top target/release/examples/batch_job mem.pb.gz
//! go tool pprof -list 'batch_job::add_map' target/release/examples/batch_job mem.pb.gz
//! go tool pprof -sample_index=alloc_space -top target/release/examples/batch_job mem.pb.gz
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mem.pb.gz".into());
    println!("start");
    let map = exec();
    println!("end: {} entries", map.len());

    heapprof::write_profile(File::create(&path)?)?;
    let exe = std::env::current_exe()?;
    println!(
        "wrote {path} (sample rate {} bytes); look at it with:",
        heapprof::sample_rate()
    );
    println!("  go tool pprof -top {} {path}", exe.display());
    println!(
        "  go tool pprof -list 'batch_job::add_map' {} {path}",
        exe.display()
    );
    println!(
        "  go tool pprof -sample_index=alloc_space -top {} {path}",
        exe.display()
    );
    println!(
        "  go tool pprof -http=localhost:8080 {} {path}   # graph view: needs Graphviz's dot",
        exe.display()
    );
    Ok(())
}

#[inline(never)]
fn exec() -> HashMap<String, String> {
    let mut some_map = HashMap::new();
    do_nothing("foo", 100_000);
    add_map(&mut some_map, "bar", 10_000);
    add_map(&mut some_map, "buzz", 1_000_000);
    some_map
}

/// Holds on to what it makes: this is what `inuse_space` shows.
#[inline(never)]
fn add_map(map: &mut HashMap<String, String>, prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}key{i}");
        let val = format!("value{i}");
        map.insert(key, val);
    }
}

/// Allocates as much per item but keeps nothing: visible only under
/// `-sample_index=alloc_space`.
#[inline(never)]
fn do_nothing(prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}key{i}");
        let val = format!("value{i}");
        black_box(key + &val);
    }
}
