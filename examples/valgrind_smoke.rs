//! A small program that takes every path through heapprof, for
//! `tests/valgrind.rs` to run under memcheck: sampled and unsampled
//! allocations, zeroed and over-aligned ones, reallocs that move sampled
//! blocks, frees into and out of the spare pools, several threads, and two
//! profile writes (the second from the symbol cache). Everything it
//! allocates is freed before it exits.
//!
//! ```text
//! cargo build --release --example valgrind_smoke
//! valgrind --leak-check=full target/release/examples/valgrind_smoke
//! ```

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc, realloc};
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Blocks of many sizes, some kept, some freed at once.
fn mixed_blocks(round: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    for i in 0..500 {
        let v = vec![(round + i) as u8; 1 + (i * 37) % 3000];
        if i % 3 == 0 {
            kept.push(v);
        } else {
            black_box(v);
        }
    }
    kept
}

/// Grows a Vec one push at a time (realloc after realloc, sampled blocks
/// moving), then shrinks it.
fn grow_and_shrink() -> Vec<u32> {
    let mut v = Vec::new();
    for i in 0..50_000 {
        v.push(i);
    }
    v.truncate(100);
    v.shrink_to_fit();
    v
}

/// Raw allocator calls with alignments up to a page, zeroed and not.
fn raw_calls() {
    for (i, align) in [1, 8, 64, 4096].into_iter().enumerate() {
        let layout = Layout::from_size_align(100 + i * 1000, align).unwrap();
        // SAFETY: non-zero sizes; every block is freed once with the
        // layout it has at that point.
        unsafe {
            let p = alloc_zeroed(layout);
            assert!(!p.is_null() && (p as usize).is_multiple_of(align));
            assert!((0..layout.size()).all(|j| *p.add(j) == 0));
            let q = realloc(p, layout, layout.size() * 3);
            assert!(!q.is_null());
            assert!((0..layout.size()).all(|j| *q.add(j) == 0));
            let grown = Layout::from_size_align(layout.size() * 3, align).unwrap();
            let r = realloc(q, grown, 10);
            dealloc(r, Layout::from_size_align(10, align).unwrap());
            let s = alloc(layout);
            s.write_bytes(7, layout.size());
            dealloc(s, layout);
        }
    }
}

fn main() {
    // Unaligned sampled blocks, the filter open.
    heapprof::set_sample_rate(4096);
    let kept_a = mixed_blocks(0);
    let grown = grow_and_shrink();
    raw_calls();
    let zeroed = vec![0u64; 20_000];

    // Page-aligned sampled blocks and the spare pools.
    heapprof::set_sample_rate(64 * 1024);
    for round in 0..20 {
        let blocks: Vec<Vec<u8>> = (0..200)
            .map(|i| vec![round as u8; 16 << (i % 12)])
            .collect();
        black_box(&blocks);
    }
    let kept_b = mixed_blocks(1);

    // Every allocation, briefly.
    heapprof::set_sample_rate(1);
    let strings: Vec<String> = (0..300).map(|i| format!("string {i}")).collect();
    heapprof::set_sample_rate(4096);

    // Threads: blocks made on one thread and freed on another.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                raw_calls();
                mixed_blocks(t)
            })
        })
        .collect();
    let from_threads: Vec<Vec<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let mut first = Vec::new();
    heapprof::write_profile(&mut first).expect("write_profile");
    drop((kept_a, from_threads));
    let mut second = Vec::new();
    heapprof::write_profile(&mut second).expect("write_profile");
    assert!(first.len() > 100 && second.len() > 100);
    println!(
        "valgrind_smoke: profiles of {} and {} bytes; kept {} + {} blocks, {} strings, {} u32, {} u64",
        first.len(),
        second.len(),
        kept_b.len(),
        grown.len(),
        strings.len(),
        grown.len(),
        zeroed.len()
    );
}
