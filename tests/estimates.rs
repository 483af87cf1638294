//! Estimates at a small rate (16 KiB) against known truths: kept and freed
//! data, mixed sizes, large blocks, realloc chains, zeroed blocks. One test
//! function, because the profiler's state is process-wide.
//!
//! Workload functions end in `black_box(..)` so that release builds do not
//! turn their last call into a tail call, which would remove their frame.

use heapprof_testkit::check::assert_estimate;
use heapprof_testkit::profile::{
    ALLOC_SPACE, INUSE_OBJECTS, INUSE_SPACE, cum, flat, leaf_name, stack_names, string,
    take_profile,
};
use heapprof_testkit::proto;
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const RATE: usize = 16 * 1024;
/// Standard errors of tolerance: a 5σ miss has probability ~6e-7.
const SIGMAS: f64 = 5.0;

#[inline(never)]
fn keep_small() -> Vec<Vec<u8>> {
    black_box((0..80_000).map(|_| vec![1u8; 100]).collect())
}

/// Sizes cycle over 16 B .. 32 KiB: some far below the rate, some above.
#[inline(never)]
fn keep_mixed() -> (Vec<Vec<u8>>, usize) {
    let sizes = [16usize, 48, 200, 1000, 4096, 9000, 20_000, 32_768];
    let mut total = 0;
    let blocks: Vec<Vec<u8>> = (0..2_000)
        .map(|i| {
            let n = sizes[i % sizes.len()];
            total += n;
            vec![2u8; n]
        })
        .collect();
    (black_box(blocks), total)
}

#[inline(never)]
fn allocate_and_free() -> usize {
    let blocks: Vec<Vec<u8>> = (0..100_000).map(|_| vec![3u8; 64]).collect();
    black_box(&blocks);
    blocks.len() * 64
}

#[inline(never)]
fn keep_large() -> Vec<Vec<u8>> {
    black_box((0..10).map(|_| vec![4u8; 1 << 20]).collect())
}

/// Grows one Vec by pushes to 4 MiB: a chain of reallocs.
#[inline(never)]
fn realloc_chain() -> Vec<u64> {
    let mut v = Vec::new();
    for i in 0..(4 << 20) / 8 {
        v.push(i as u64);
    }
    black_box(v)
}

#[inline(never)]
fn keep_zeroed() -> Vec<Vec<u8>> {
    black_box((0..32).map(|_| vec![0u8; 64 * 1024]).collect())
}

#[test]
fn estimates_match_the_truth() {
    heapprof::set_seed(42);
    heapprof::set_sample_rate(RATE);
    assert_eq!(heapprof::sample_rate(), RATE);

    let small = keep_small();
    let (mixed, mixed_bytes) = keep_mixed();
    let freed_bytes = allocate_and_free();
    let large = keep_large();
    let chain = realloc_chain();
    let zeroed = keep_zeroed();
    assert!(zeroed.iter().all(|b| b.iter().all(|&x| x == 0)));

    let p = take_profile();
    assert_eq!(p.period, RATE as i64);
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ]
    );

    // The 80 000 Vec<u8> buffers; the outer Vec's own 1.9 MB buffer is one
    // more allocation at the same site.
    let small_bytes = 80_000 * 100 + 80_000 * 24;
    assert_estimate(
        "keep_small inuse_space",
        cum(&p, "keep_small", INUSE_SPACE),
        small_bytes,
        RATE,
        SIGMAS,
    );
    assert_estimate(
        "keep_small inuse_objects",
        cum(&p, "keep_small", INUSE_OBJECTS),
        80_001,
        RATE * 80_001 / small_bytes,
        SIGMAS,
    );
    assert_estimate(
        "keep_mixed inuse_space",
        cum(&p, "keep_mixed", INUSE_SPACE),
        mixed_bytes + 2_000 * 24,
        RATE,
        SIGMAS,
    );
    assert_estimate(
        "allocate_and_free alloc_space",
        cum(&p, "allocate_and_free", ALLOC_SPACE),
        freed_bytes + 100_000 * 24,
        RATE,
        SIGMAS,
    );
    assert_eq!(
        cum(&p, "allocate_and_free", INUSE_SPACE),
        0,
        "freed data must not be in use"
    );
    // Blocks 64× the rate are sampled with probability 1 - e^-64: exact.
    // The outer Vec (10 × 24 bytes) is sampled with probability
    // p = 1 - e^-(240/R), about 1.5 %, and then stands for 240/p bytes:
    // the estimate is one of the two, never in between.
    let large_bytes = 10i64 << 20;
    let large_inuse = cum(&p, "keep_large", INUSE_SPACE);
    let outer = 240.0 / -(-240.0 / RATE as f64).exp_m1();
    assert!(
        (large_inuse - large_bytes).abs() < 1024
            || (large_inuse - large_bytes - outer as i64).abs() < 1024,
        "keep_large {large_inuse}: neither {large_bytes} nor {large_bytes} + {outer:.0}"
    );
    // The chain allocates 8 B .. 4 MiB, doubling: ~8 MiB in all, and only
    // the final 4 MiB is live.
    let chain_bytes = chain.capacity() * 8;
    assert_estimate(
        "realloc_chain inuse_space",
        cum(&p, "realloc_chain", INUSE_SPACE),
        chain_bytes,
        RATE,
        SIGMAS,
    );
    assert_estimate(
        "realloc_chain alloc_space",
        cum(&p, "realloc_chain", ALLOC_SPACE),
        2 * chain_bytes - 8 * 4,
        RATE,
        SIGMAS,
    );
    assert_estimate(
        "keep_zeroed inuse_space",
        cum(&p, "keep_zeroed", INUSE_SPACE),
        32 * 64 * 1024 + 32 * 24,
        RATE,
        SIGMAS,
    );

    // The user's functions are the leaves, not the allocation machinery.
    for f in [
        "keep_small",
        "keep_mixed",
        "keep_large",
        "realloc_chain",
        "keep_zeroed",
    ] {
        let (flat, cum) = (flat(&p, f, INUSE_SPACE), cum(&p, f, INUSE_SPACE));
        assert!(
            flat as f64 >= 0.9 * cum as f64,
            "{f}: flat {flat} of cum {cum}"
        );
    }
    for s in &p.sample {
        let leaf = leaf_name(&p, s);
        assert!(
            !leaf.starts_with("alloc::")
                && !leaf.starts_with("heapprof::")
                && !leaf.starts_with("__rust"),
            "machinery left as leaf: {:?}",
            stack_names(&p, s)
        );
    }

    // Names, files, lines and mappings.
    let f = p
        .function
        .iter()
        .find(|f| string(&p, f.name).ends_with("::keep_small"))
        .expect("keep_small is a function in the profile");
    assert_eq!(string(&p, f.name), "estimates::keep_small");
    assert!(
        string(&p, f.filename).ends_with("tests/estimates.rs"),
        "{}",
        string(&p, f.filename)
    );
    assert!(
        string(&p, f.system_name).starts_with("_ZN") || string(&p, f.system_name).starts_with("_R")
    );
    assert!(p.location.iter().any(|l| {
        l.line
            .iter()
            .any(|ln| ln.function_id == f.id && ln.line > 0)
    }));
    let main = &p.mapping[0];
    assert!(
        string(&p, main.filename).contains("estimates"),
        "{}",
        string(&p, main.filename)
    );
    // The flags are truthful: each is set iff every location in the mapping
    // has that information.
    let in_main: Vec<_> = p
        .location
        .iter()
        .filter(|l| l.mapping_id == main.id)
        .collect();
    assert!(!in_main.is_empty());
    let every = |f: &dyn Fn(&proto::Line) -> bool| {
        in_main
            .iter()
            .all(|l| !l.line.is_empty() && l.line.iter().all(f))
    };
    let func = |id: u64| &p.function[id as usize - 1];
    assert_eq!(
        main.has_functions,
        every(&|ln| func(ln.function_id).name != 0)
    );
    assert_eq!(
        main.has_filenames,
        every(&|ln| func(ln.function_id).filename != 0)
    );
    assert_eq!(main.has_line_numbers, every(&|ln| ln.line != 0));
    assert!(
        main.has_functions,
        "every location in the test binary has a name"
    );
    assert!(
        !string(&p, main.build_id).is_empty(),
        "the test binary has a GNU build ID"
    );
    assert!(
        p.location
            .iter()
            .all(|l| l.mapping_id as usize <= p.mapping.len())
    );

    // No `bytes` label: a site mixes block sizes, so no one size is true
    // of its samples the way Go's (keyed by stack and size) is.
    assert!(p.sample.iter().all(|s| s.label.is_empty()));

    drop((small, mixed, large, chain, zeroed));
    let after = take_profile();
    assert!(cum(&after, "keep_small", INUSE_SPACE) == 0);
    assert_eq!(
        cum(&after, "keep_small", ALLOC_SPACE),
        cum(&p, "keep_small", ALLOC_SPACE)
    );
}
