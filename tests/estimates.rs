//! Estimates at a small rate (16 KiB) against known truths: kept and freed
//! data, mixed sizes, large blocks, realloc chains, zeroed blocks; and what
//! the profile says about the functions and mappings it names.
//!
//! The profiler's state is process-wide, so the workloads run once, on the
//! first test that asks for [`run`], and every test checks one property of
//! the two profiles that run took.
//!
//! Workload functions end in `black_box(..)` so that release builds do not
//! turn their last call into a tail call, which would remove their frame.

use heapprof_testkit::check::assert_estimate;
use heapprof_testkit::profile::{
    ALLOC_SPACE, INUSE_OBJECTS, INUSE_SPACE, cum, flat, leaf_name, stack_names, string,
    take_profile,
};
use heapprof_testkit::proto::{self, Function, Location, Mapping, Profile};
use std::hint::black_box;
use std::sync::OnceLock;

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

/// The workloads' truths and the profiles taken while their blocks are
/// held and after they are freed.
struct Run {
    /// `heapprof::sample_rate()` right after setting it.
    rate_read: usize,
    held: Profile,
    freed: Profile,
    mixed_bytes: usize,
    freed_bytes: usize,
    /// The final capacity of the realloc chain's buffer, in bytes.
    chain_bytes: usize,
    /// Whether every byte of the zeroed blocks read zero.
    zeroed_are_zero: bool,
}

/// The one run of the workloads, made by the first test that asks.
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        heapprof::set_seed(42);
        heapprof::set_sample_rate(RATE);
        let rate_read = heapprof::sample_rate();

        let small = keep_small();
        let (mixed, mixed_bytes) = keep_mixed();
        let freed_bytes = allocate_and_free();
        let large = keep_large();
        let chain = realloc_chain();
        let zeroed = keep_zeroed();
        let zeroed_are_zero = zeroed.iter().all(|b| b.iter().all(|&x| x == 0));

        let held = take_profile();
        let chain_bytes = chain.capacity() * 8;
        drop((small, mixed, large, chain, zeroed));
        let freed = take_profile();
        Run {
            rate_read,
            held,
            freed,
            mixed_bytes,
            freed_bytes,
            chain_bytes,
            zeroed_are_zero,
        }
    })
}

/// The profile taken while the workloads' blocks are held.
fn held() -> &'static Profile {
    &run().held
}

#[test]
fn sample_rate_reads_back_as_set() {
    assert_eq!(run().rate_read, RATE);
}

#[test]
fn period_is_the_sample_rate() {
    assert_eq!(held().period, RATE as i64);
}

#[test]
fn sample_types_are_gos_four() {
    let p = held();
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (string(p, t.r#type), string(p, t.unit)))
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
}

/// The 80 000 Vec<u8> buffers; the outer Vec's own 1.9 MB buffer is one
/// more allocation at the same site.
const SMALL_BYTES: usize = 80_000 * 100 + 80_000 * 24;
const SMALL_OBJECTS: usize = 80_001;

#[test]
fn small_blocks_in_use_space() {
    assert_estimate(
        "keep_small inuse_space",
        cum(held(), "keep_small", INUSE_SPACE),
        SMALL_BYTES,
        RATE,
        SIGMAS,
    );
}

/// A count of 100-byte blocks, each sampled with p ≈ 100 / RATE and
/// counted as 1/p: its variance is about N · RATE / 100, so the "rate" that
/// gives `assert_estimate` that error is RATE / 100 (the outer buffer,
/// always sampled, adds nothing to it).
#[test]
fn small_blocks_in_use_objects() {
    assert_estimate(
        "keep_small inuse_objects",
        cum(held(), "keep_small", INUSE_OBJECTS),
        SMALL_OBJECTS,
        RATE / 100,
        SIGMAS,
    );
}

#[test]
fn mixed_sizes_in_use_space() {
    assert_estimate(
        "keep_mixed inuse_space",
        cum(held(), "keep_mixed", INUSE_SPACE),
        run().mixed_bytes + 2_000 * 24,
        RATE,
        SIGMAS,
    );
}

#[test]
fn freed_blocks_count_as_allocated() {
    assert_estimate(
        "allocate_and_free alloc_space",
        cum(held(), "allocate_and_free", ALLOC_SPACE),
        run().freed_bytes + 100_000 * 24,
        RATE,
        SIGMAS,
    );
}

#[test]
fn freed_blocks_are_not_in_use() {
    assert_eq!(
        cum(held(), "allocate_and_free", INUSE_SPACE),
        0,
        "freed data must not be in use"
    );
}

/// Blocks 64× the rate are sampled with probability 1 - e^-64: exact.
/// The outer Vec (10 × 24 bytes) is sampled with probability
/// p = 1 - e^-(240/R), about 1.5 %, and then stands for 240/p bytes:
/// the estimate is one of the two, never in between.
#[test]
fn large_blocks_are_exact() {
    let large_bytes = 10i64 << 20;
    let large_inuse = cum(held(), "keep_large", INUSE_SPACE);
    let outer = 240.0 / -(-240.0 / RATE as f64).exp_m1();
    assert!(
        (large_inuse - large_bytes).abs() < 1024
            || (large_inuse - large_bytes - outer as i64).abs() < 1024,
        "keep_large {large_inuse}: neither {large_bytes} nor {large_bytes} + {outer:.0}"
    );
}

/// The chain allocates 8 B .. 4 MiB, doubling: ~8 MiB in all, and only the
/// final 4 MiB is live.
#[test]
fn realloc_chain_in_use_is_its_last_buffer() {
    assert_estimate(
        "realloc_chain inuse_space",
        cum(held(), "realloc_chain", INUSE_SPACE),
        run().chain_bytes,
        RATE,
        SIGMAS,
    );
}

#[test]
fn realloc_chain_allocated_is_every_buffer() {
    assert_estimate(
        "realloc_chain alloc_space",
        cum(held(), "realloc_chain", ALLOC_SPACE),
        2 * run().chain_bytes - 8 * 4,
        RATE,
        SIGMAS,
    );
}

#[test]
fn zeroed_blocks_read_zero() {
    assert!(run().zeroed_are_zero);
}

#[test]
fn zeroed_blocks_in_use_space() {
    assert_estimate(
        "keep_zeroed inuse_space",
        cum(held(), "keep_zeroed", INUSE_SPACE),
        32 * 64 * 1024 + 32 * 24,
        RATE,
        SIGMAS,
    );
}

#[test]
fn workload_functions_are_the_leaves() {
    let p = held();
    for f in [
        "keep_small",
        "keep_mixed",
        "keep_large",
        "realloc_chain",
        "keep_zeroed",
    ] {
        let (flat, cum) = (flat(p, f, INUSE_SPACE), cum(p, f, INUSE_SPACE));
        assert!(
            flat as f64 >= 0.9 * cum as f64,
            "{f}: flat {flat} of cum {cum}"
        );
    }
}

#[test]
fn allocation_machinery_is_never_a_leaf() {
    let p = held();
    for s in &p.sample {
        let leaf = leaf_name(p, s);
        assert!(
            !leaf.starts_with("alloc::")
                && !leaf.starts_with("heapprof::")
                && !leaf.starts_with("__rust"),
            "machinery left as leaf: {:?}",
            stack_names(p, s)
        );
    }
}

/// The profile's function for `keep_small`.
fn keep_small_function() -> &'static Function {
    let p = held();
    p.function
        .iter()
        .find(|f| string(p, f.name).ends_with("::keep_small"))
        .expect("keep_small is a function in the profile")
}

#[test]
fn function_name_is_the_demangled_path() {
    assert_eq!(
        string(held(), keep_small_function().name),
        "estimates::keep_small"
    );
}

#[test]
fn function_file_is_its_source_file() {
    let file = string(held(), keep_small_function().filename);
    assert!(file.ends_with("tests/estimates.rs"), "{file}");
}

#[test]
fn function_system_name_is_the_mangled_symbol() {
    let symbol = string(held(), keep_small_function().system_name);
    assert!(symbol.starts_with("_ZN") || symbol.starts_with("_R"));
}

#[test]
fn function_has_a_located_line() {
    let f = keep_small_function();
    assert!(held().location.iter().any(|l| {
        l.line
            .iter()
            .any(|ln| ln.function_id == f.id && ln.line > 0)
    }));
}

/// The first mapping, which is the test binary's.
fn main_mapping() -> &'static Mapping {
    &held().mapping[0]
}

/// The locations in [`main_mapping`].
fn main_locations() -> Vec<&'static Location> {
    let main = main_mapping();
    held()
        .location
        .iter()
        .filter(|l| l.mapping_id == main.id)
        .collect()
}

#[test]
fn first_mapping_is_the_test_binary() {
    let p = held();
    let main = main_mapping();
    assert!(
        string(p, main.filename).contains("estimates"),
        "{}",
        string(p, main.filename)
    );
}

/// The flags are truthful: each is set iff every location in the mapping
/// has that information.
#[test]
fn mapping_flags_say_what_every_location_has() {
    let p = held();
    let main = main_mapping();
    let in_main = main_locations();
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
}

#[test]
fn test_binary_locations_all_have_names() {
    assert!(
        main_mapping().has_functions,
        "every location in the test binary has a name"
    );
}

#[test]
fn test_binary_mapping_has_a_build_id() {
    assert!(
        !string(held(), main_mapping().build_id).is_empty(),
        "the test binary has a GNU build ID"
    );
}

#[test]
fn every_location_is_in_a_listed_mapping() {
    let p = held();
    assert!(
        p.location
            .iter()
            .all(|l| l.mapping_id as usize <= p.mapping.len())
    );
}

/// No `bytes` label: a site mixes block sizes, so no one size is true of its
/// samples the way Go's (keyed by stack and size) is. The one label of a
/// program that sets none is the string label naming the thread.
#[test]
fn samples_have_no_bytes_label_only_the_thread_label() {
    let p = held();
    for s in &p.sample {
        let keys: Vec<&str> = s.label.iter().map(|l| string(p, l.key)).collect();
        assert_eq!(keys, ["thread"], "{:?}", s.label);
        assert!(
            s.label
                .iter()
                .all(|l| l.str != 0 && l.num == 0 && l.num_unit == 0)
        );
    }
}

#[test]
fn freeing_ends_their_use() {
    assert!(cum(&run().freed, "keep_small", INUSE_SPACE) == 0);
}

#[test]
fn freeing_keeps_what_was_allocated() {
    assert_eq!(
        cum(&run().freed, "keep_small", ALLOC_SPACE),
        cum(held(), "keep_small", ALLOC_SPACE)
    );
}
