//! Go's `go test -bench . -benchmem -memprofile mem.prof`, with criterion:
//! each workload timed, then measured in bytes and allocations per
//! iteration (heapprof's exact per-thread counts), and, under
//! `--profile-time`, a heap profile of each benchmark.
//!
//! ```text
//! cargo bench -p heapprof-dev --bench allocs
//! cargo bench -p heapprof-dev --bench allocs -- --profile-time 3
//! go tool pprof -sample_index=alloc_space -top target/criterion/time/word_counts/profile/heap.pb.gz
//! ```

use std::collections::HashMap;
use std::hint::black_box;

use criterion::measurement::Measurement;
use criterion::{Criterion, criterion_group, criterion_main};
use heapprof::criterion::{AllocatedBytes, Allocations, HeapProfiler};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const TEXT: &str = "the quick brown fox jumps over the lazy dog and the dog sleeps \
                    while the fox runs over the hill to the farm where the hens sleep";

/// How often each word occurs: a map, and a `String` key per new word.
fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The words upper-cased and joined: a `String` per word, and the result
/// growing by doubling.
fn shout(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        out.push_str(&word.to_uppercase());
        out.push(' ');
    }
    out
}

/// The same, with the result's size reserved up front and no `String`
/// per word.
fn shout_reserved(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    for word in text.split_whitespace() {
        out.extend(word.chars().flat_map(char::to_uppercase));
        out.push(' ');
    }
    out
}

/// Words longer than three letters: no allocation at all.
fn long_words(text: &str) -> usize {
    text.split_whitespace().filter(|w| w.len() > 3).count()
}

fn workloads<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let mut g = c.benchmark_group(group);
    g.bench_function("word_counts", |b| b.iter(|| word_counts(black_box(TEXT))));
    g.bench_function("shout", |b| b.iter(|| shout(black_box(TEXT))));
    g.bench_function("shout_reserved", |b| {
        b.iter(|| shout_reserved(black_box(TEXT)))
    });
    g.bench_function("long_words", |b| b.iter(|| long_words(black_box(TEXT))));
    g.finish();
}

fn time(c: &mut Criterion) {
    workloads(c, "time");
}

fn bytes(c: &mut Criterion<AllocatedBytes>) {
    workloads(c, "bytes");
}

fn allocs(c: &mut Criterion<Allocations>) {
    workloads(c, "allocs");
}

criterion_group! {
    name = timed;
    config = Criterion::default().with_profiler(HeapProfiler::new());
    targets = time
}
criterion_group! {
    name = bytes_per_op;
    config = Criterion::default()
        .with_measurement(AllocatedBytes)
        .with_profiler(HeapProfiler::new());
    targets = bytes
}
criterion_group! {
    name = allocs_per_op;
    config = Criterion::default()
        .with_measurement(Allocations)
        .with_profiler(HeapProfiler::new());
    targets = allocs
}
criterion_main!(timed, bytes_per_op, allocs_per_op);
