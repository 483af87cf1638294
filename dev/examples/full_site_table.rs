//! What a sample costs once the site table is full: every allocation here
//! has a stack of its own (two functions recursing 8 to 20 deep, a bit of
//! a counter choosing which at each level), so at rate 1 each is a new
//! site, and once the table is full each makes room by retiring one.
//!
//! ```text
//! HEAPPROF_SAMPLE_RATE=1 cargo run -p heapprof-dev --release --example full_site_table -- 12
//! HEAPPROF_SAMPLE_RATE=1 HEAPPROF_MAX_SITES=262144 cargo run -p heapprof-dev --release --example full_site_table -- 12
//! ```
//!
//! Prints the time of each phase of 100 000 allocations on stderr.

use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Allocations per phase.
const PER_PHASE: u64 = 100_000;

#[inline(never)]
fn left(n: u64, depth: u32) -> Box<[u8]> {
    black_box(next(n, depth, 0))
}

#[inline(never)]
fn right(n: u64, depth: u32) -> Box<[u8]> {
    black_box(next(n, depth, 1))
}

fn next(n: u64, depth: u32, fill: u8) -> Box<[u8]> {
    match (depth, (n >> depth) & 1) {
        (0, _) => vec![fill; 64].into_boxed_slice(),
        (_, 0) => left(n, depth - 1),
        _ => right(n, depth - 1),
    }
}

fn main() {
    let phases: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(6);
    let mut k = 0u64;
    for phase in 0..phases {
        let start = std::time::Instant::now();
        for _ in 0..PER_PHASE {
            k += 1;
            let n = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            drop(black_box(left(n, 8 + (n % 13) as u32)));
        }
        eprintln!("phase {phase}: {:.3} s", start.elapsed().as_secs_f64());
    }
}
