//! More distinct stacks than the table holds: memory stays bounded, the
//! excess is counted in a visible overflow site, stacks with nothing live
//! make room for new ones, and the program goes on. Runs itself as a
//! child with small `HEAPPROF_MAX_SITES`: live blocks past the bound, a
//! leak after the table filled with freed stacks, and 256 sites against
//! ~5000 distinct stacks of varying depth, where the profiler's own memory
//! must stay under a bound derived from the table's layout.

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::child::{is_child, printed_number, run_child};
use heapprof_testkit::profile::{
    ALLOC_OBJECTS, INUSE_SPACE, leaf_name, live_sampled_blocks, stack_names, string, table_bytes,
    take_profile,
};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Recursion of varying depth: each depth is a distinct stack.
#[inline(never)]
fn nest(depth: usize) -> Vec<u8> {
    if depth == 0 {
        return std::hint::black_box(vec![0u8; 64]);
    }
    let v = nest(depth - 1);
    std::hint::black_box(v)
}

#[test]
fn child_fills_the_table() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let (kept, measured) = heapprof::measure(|| {
        (0..50)
            .flat_map(|d| (0..4).map(move |_| nest(d)))
            .collect::<Vec<Vec<u8>>>()
    });
    // A failed assertion's rows name the stacks not kept as profiles do.
    let failed = std::panic::catch_unwind(|| measured.assert_no_growth()).unwrap_err();
    let failed = failed.downcast_ref::<String>().unwrap();
    println!(
        "measure_names_overflow={}",
        u8::from(failed.contains("[heapprof overflow"))
    );
    let p = take_profile();
    let names: Vec<String> = p.sample.iter().map(|s| leaf_name(&p, s)).collect();
    // Every overflow row: one per label set, and another thread's (its
    // own `thread` label) may come first.
    let overflow: i64 = p
        .sample
        .iter()
        .zip(&names)
        .filter(|(_, n)| n.contains("[heapprof overflow"))
        .map(|(s, _)| s.value[ALLOC_OBJECTS])
        .sum();
    // The workload's own sites: one or two per depth, four blocks each.
    let nest_sites: Vec<i64> = p
        .sample
        .iter()
        .filter(|s| {
            stack_names(&p, s)
                .iter()
                .any(|n| n.ends_with("overflow::nest"))
        })
        .map(|s| s.value[ALLOC_OBJECTS])
        .collect();
    println!(
        "samples={} overflow_objects={overflow} nest_sites={} nest_objects={} nest_site_objects_max={}",
        p.sample.len(),
        nest_sites.len(),
        nest_sites.iter().sum::<i64>(),
        nest_sites.iter().max().unwrap_or(&0)
    );
    // The overflow site is one row per label set (another thread's
    // overflow carries its own `thread` label): the table's bound is on
    // the other rows.
    let kept_sites = names
        .iter()
        .filter(|n| !n.contains("[heapprof overflow"))
        .count();
    println!("kept_sites={kept_sites}");
    assert!(
        kept_sites <= FILLED_TABLE,
        "{kept_sites} sites kept: {names:?}"
    );
    drop(kept);
}

/// The table of `child_fills_the_table`: fewer sites than its 50 depths
/// of live blocks need, so that some must overflow whatever else the
/// table holds (sites with nothing live make room, live ones do not).
const FILLED_TABLE: usize = 32;

#[test]
fn overflow_is_visible_and_bounded() {
    let max_sites = FILLED_TABLE.to_string();
    let (stdout, _) = run_child(
        "child_fills_the_table",
        &[("HEAPPROF_MAX_SITES", max_sites.as_str())],
    );
    let field = |name: &str| printed_number(&stdout, name);
    // 200 live blocks at 50 depths into 32 sites: some depths found no
    // room, and every one of the 200 blocks (at rate 1) is counted,
    // at its own site or in the overflow site. A site holds at most the
    // four blocks of its depth (the optimizer may give the first of them
    // a call site of its own, so a depth can be two sites, one kept and
    // one not).
    let nest_objects = field("nest_objects=");
    assert!(nest_objects < 200, "{stdout}");
    assert!(field("nest_site_objects_max=") <= 4, "{stdout}");
    assert!(field("overflow_objects=") >= 200 - nest_objects, "{stdout}");
    assert!(field("kept_sites=") <= FILLED_TABLE as i64, "{stdout}");
    assert_eq!(field("measure_names_overflow="), 1, "{stdout}");
}

/// Child: two tenants' blocks, each from 50 depths of `nest`, past a
/// table of 64 sites, kept live; then two profiles.
#[test]
fn child_labels_past_the_bound() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let kept: Vec<Vec<Vec<u8>>> = TENANTS
        .iter()
        .map(|t| {
            heapprof::with_labels(&[("tenant", t)], || {
                let mut blocks = Vec::with_capacity(200);
                for d in 0..50 {
                    for _ in 0..4 {
                        blocks.push(nest(d));
                    }
                }
                blocks
            })
        })
        .collect();
    heapprof::set_sample_rate(0);
    let p = take_profile();
    let _again = take_profile();
    let label = |s: &heapprof_testkit::proto::Sample, key: &str| {
        s.label
            .iter()
            .find(|l| string(&p, l.key) == key)
            .map(|l| string(&p, l.str).to_owned())
    };
    for tenant in TENANTS {
        // Everything live under the label: the blocks `nest` returned and
        // the vector holding them, at their sites or in the overflow site
        // of the tenant's label set.
        let label_bytes: i64 = p
            .sample
            .iter()
            .filter(|s| label(s, "tenant").as_deref() == Some(tenant))
            .map(|s| s.value[INUSE_SPACE])
            .sum();
        let overflowed: i64 = p
            .sample
            .iter()
            .filter(|s| leaf_name(&p, s).starts_with("[heapprof overflow"))
            .filter(|s| label(s, "tenant").as_deref() == Some(tenant))
            .filter(|s| label(s, "thread").is_some())
            .map(|s| s.value[INUSE_SPACE])
            .sum();
        println!("tenant {tenant}: label_bytes={label_bytes} overflow_bytes={overflowed}");
    }
    let full_note = p
        .comment
        .iter()
        .any(|&c| string(&p, c).contains("the site table is full"));
    println!("full_note={}", u8::from(full_note));
    drop(kept);
}

const TENANTS: [&str; 2] = ["acme", "globex"];

/// Samples that find the table full keep their labels, in an overflow site
/// per label set: a view by label (`pprof -tagfocus`) counts every byte.
/// The profile and stderr (once) say the table is full.
#[test]
fn overflow_sites_keep_their_labels() {
    let (stdout, stderr) = run_child(
        "child_labels_past_the_bound",
        &[("HEAPPROF_MAX_SITES", "64")],
    );
    for tenant in TENANTS {
        let at = stdout
            .find(&format!("tenant {tenant}:"))
            .unwrap_or_else(|| panic!("{stdout}"));
        let line = stdout[at..].lines().next().unwrap();
        // 200 live blocks of 64 bytes and their vector, at rate 1: exact.
        let live = 200 * 64 + 200 * std::mem::size_of::<Vec<u8>>() as i64;
        assert_eq!(printed_number(line, "label_bytes="), live, "{stdout}");
        assert!(printed_number(line, "overflow_bytes=") > 0, "{stdout}");
    }
    assert_eq!(printed_number(&stdout, "full_note="), 1, "{stdout}");
    let said = stderr.matches("the site table is full").count();
    assert_eq!(said, 1, "said once on stderr:\n{stderr}");
}

/// Distinct stacks for the bounds test: 13 levels of `left`/`right` spell
/// the bits of `path`, then `path % 5` levels of `deeper`.
const DISTINCT_STACKS: usize = 5000;
const PATH_LEVELS: u32 = 13;
const CAPPED_SITES: usize = 256;

#[inline(never)]
fn left(level: u32, path: usize) -> Vec<u8> {
    let v = descend(level, path);
    std::hint::black_box(v)
}

#[inline(never)]
fn right(level: u32, path: usize) -> Vec<u8> {
    let mut v = descend(level, path);
    v.push(1); // differs from `left`, so the two are not merged
    std::hint::black_box(v)
}

fn descend(level: u32, path: usize) -> Vec<u8> {
    if level == PATH_LEVELS {
        return deeper(path % 5);
    }
    if path >> level & 1 == 0 {
        left(level + 1, path)
    } else {
        right(level + 1, path)
    }
}

#[inline(never)]
fn deeper(extra: usize) -> Vec<u8> {
    if extra == 0 {
        return std::hint::black_box(Vec::with_capacity(64));
    }
    let v = deeper(extra - 1);
    std::hint::black_box(v)
}

/// Child: one block per distinct stack, each freed at once. It starts
/// with sampling off (`HEAPPROF_SAMPLE_RATE=0`) and samples only during
/// the workload, so the tables hold the workload's sites alone and the
/// sampled set never tracks more than the workload's one live block.
#[test]
fn child_many_distinct_stacks() {
    if !is_child() {
        return;
    }
    assert_eq!(
        heapprof::sample_rate(),
        0,
        "run with HEAPPROF_SAMPLE_RATE=0"
    );
    let bytes_before = table_bytes(&take_profile());
    heapprof::set_sample_rate(1);
    for path in 0..DISTINCT_STACKS {
        drop(left(0, path));
    }
    heapprof::set_sample_rate(0);
    let after = take_profile();
    assert_sane_values(&after);
    let overflow: Vec<_> = after
        .sample
        .iter()
        .filter(|s| leaf_name(&after, s).starts_with("[heapprof overflow"))
        .collect();
    let workload_sites = after
        .sample
        .iter()
        .filter(|s| {
            stack_names(&after, s)
                .iter()
                .any(|n| n.contains("overflow::deeper"))
        })
        .count();
    println!(
        "samples={} workload_sites={workload_sites} overflow_sites={} overflow_objects={} \
         bytes_before={bytes_before} bytes_after={} live_after={}",
        after.sample.len(),
        overflow.len(),
        overflow.iter().map(|s| s.value[ALLOC_OBJECTS]).sum::<i64>(),
        table_bytes(&after),
        live_sampled_blocks(&after),
    );
}

/// Blocks the late leak keeps, and their size.
const LEAKED_BLOCKS: usize = 100;
const LEAKED_SIZE: usize = 1000;
/// The table of the late-leak test, and the distinct stacks of each of its
/// two waves: four times the table, so that every stripe of it fills
/// with sites that have nothing live.
const REUSED_TABLE: usize = 1024;
const WAVE: usize = 4 * REUSED_TABLE;

/// A leak that starts after the table has filled.
#[inline(never)]
fn late_leak() -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(LEAKED_BLOCKS);
    for _ in 0..LEAKED_BLOCKS {
        kept.push(std::hint::black_box(vec![7u8; LEAKED_SIZE]));
    }
    kept
}

/// Child: a wave of distinct stacks, each freed at once, fills the table;
/// a snapshot; a second wave of other stacks; a leak in a new function;
/// a second snapshot.
#[test]
fn child_leaks_after_the_table_filled() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    for path in 0..WAVE {
        drop(left(0, path));
    }
    let earlier = heapprof::snapshot();
    for path in WAVE..2 * WAVE {
        drop(left(0, path));
    }
    let leaked = late_leak();
    let later = heapprof::snapshot();
    heapprof::set_sample_rate(0);
    #[cfg(feature = "http")]
    {
        let index = heapprof::http::handle("/debug/pprof/", "");
        let says = String::from_utf8_lossy(&index.body).contains("the site table is full");
        println!("index_says_full={}", u8::from(says));
    }
    let delta = later.delta(&earlier);
    let sum = |s: &heapprof::Snapshot, value: fn(&heapprof::Site) -> i64| -> i64 {
        s.sites().iter().map(value).sum()
    };
    println!(
        "leak_inuse={} sites={} delta_alloc_objects={} delta_inuse_bytes={} delta_min_alloc={}",
        later.inuse_bytes_in("overflow::late_leak"),
        later.sites().len(),
        sum(&delta, |s| s.alloc_objects),
        sum(&delta, |s| s.inuse_bytes),
        delta
            .sites()
            .iter()
            .map(|s| s.alloc_objects)
            .min()
            .unwrap_or(0),
    );
    drop(leaked);
}

/// A long-running program keeps naming new sites after the table fills:
/// sites with nothing live make room. Two waves of distinct stacks, each
/// block freed at once, then a leak in a function never seen before: at
/// rate 1 the leak is named with all its bytes, the table stays at its
/// bound, and a delta across the waves counts each allocation in between
/// once (what the retired sites had counted moves to the overflow site
/// and is not counted again) and the live change as exactly the leak.
#[test]
fn a_leak_after_the_table_filled_is_named() {
    let max_sites = REUSED_TABLE.to_string();
    let env = [
        ("HEAPPROF_SAMPLE_RATE", "0"),
        ("HEAPPROF_MAX_SITES", max_sites.as_str()),
        ("HEAPPROF_THREAD_LABEL", "0"),
    ];
    let (stdout, _) = run_child("child_leaks_after_the_table_filled", &env);
    let field = |name: &str| printed_number(&stdout, name);
    let leak =
        (LEAKED_BLOCKS * LEAKED_SIZE + LEAKED_BLOCKS * std::mem::size_of::<Vec<u8>>()) as i64;
    assert_eq!(field("leak_inuse="), leak, "{stdout}");
    // The sites kept, the overflow site and the site kept apart for
    // samples not unwound.
    assert!(field("sites=") <= REUSED_TABLE as i64 + 2, "{stdout}");
    // The second wave, the leak's blocks and its vector: nothing else in
    // between allocates at rate 1 (snapshots are heapprof's own).
    assert_eq!(
        field("delta_alloc_objects="),
        (WAVE + LEAKED_BLOCKS + 1) as i64,
        "{stdout}"
    );
    assert_eq!(field("delta_inuse_bytes="), leak, "{stdout}");
    assert!(field("delta_min_alloc=") >= 0, "{stdout}");
    if cfg!(feature = "http") {
        assert_eq!(field("index_says_full="), 1, "{stdout}");
    }
}

fn run_many_stacks_child(max_sites: usize) -> String {
    let max_sites = max_sites.to_string();
    // Without the automatic `thread` label no label set is ever interned,
    // so the label table (bounded on its own, `src/labels/table.rs`) holds
    // nothing and the bound below is the site table's and the set's alone.
    let env = [
        ("HEAPPROF_SAMPLE_RATE", "0"),
        ("HEAPPROF_MAX_SITES", max_sites.as_str()),
        ("HEAPPROF_THREAD_LABEL", "0"),
    ];
    run_child("child_many_distinct_stacks", &env).0
}

fn field(stdout: &str, name: &str) -> usize {
    printed_number(stdout, name) as usize
}

/// The most bytes heapprof can report for its tables (`profiler tables
/// use N bytes`) with `sites` sites in the bucket table and at most `live`
/// sampled blocks ever live at once, none of them page aligned (so the
/// spare pools stay empty). From the layouts in `sites.rs` and
/// `blocks.rs` and the growth rule in `support/growth.rs`: 64 stripes
/// each; every table's first block is larger than glibc's largest
/// thread-cache size (1032 bytes), so a `Vec` starts at 12 sites or
/// 130 frames and then holds at most 9/8 of its length plus one element;
/// every hashbrown map has a power-of-two number of buckets, at least 64
/// for the site index and 32 for the sampled set, and otherwise at most
/// 16/7 per entry, each an entry and a control byte, plus 16 control
/// bytes:
///
/// ```text
/// sites        88 B × (9·sites/8 + 64·13)      Vec<StoredSite>, 88 bytes each
/// frames        8 B × (9·32·sites/8 + 64·131)  Vec<usize>; ≤ 32 frames per site overall
/// site index   17 B × (64·64 + 16·sites/7) + 64·16     HashMap<u64, u32>
/// sampled set  33 B × (64·32 + 16·live/7) + 64·16      HashMap<usize, Entry>
/// ```
///
/// For 256 sites and one live block: 98 560 + 140 800 + 80 601 + 68 674 =
/// 388 635 bytes, whatever the number of distinct stacks.
fn memory_bound(sites: usize, live: usize) -> usize {
    88 * (9 * sites / 8 + 64 * 13)
        + 8 * (9 * 32 * sites / 8 + 64 * 131)
        + 17 * (64 * 64 + 16 * sites / 7)
        + 64 * 16
        + 33 * (64 * 32 + 16 * live / 7)
        + 64 * 16
}

/// 5000 distinct stacks, 13 to 17 frames deeper than the test, into a
/// table of 256 sites at rate 1: at most 256 sites plus the one overflow
/// site appear, the overflow site counts exactly the allocations that got
/// no site, and the profiler's memory stays within `memory_bound`. The
/// workload frees each block before the next, so at most one sampled
/// block of it is live at a time, plus whatever it left live at the end.
/// The same workload with the default 16 Ki sites must need more than the
/// bound, or the test would not show that the cap bounds anything.
#[test]
fn distinct_stacks_beyond_the_cap_keep_memory_bounded() {
    let capped = run_many_stacks_child(CAPPED_SITES);
    print!("capped at {CAPPED_SITES}: {capped}");
    let bound = memory_bound(CAPPED_SITES, 1 + field(&capped, "live_after="));
    let after = field(&capped, "bytes_after=");
    println!("tables after {DISTINCT_STACKS} distinct stacks: {after} bytes, bound {bound}");
    let kept = field(&capped, "workload_sites=");
    assert!(field(&capped, "samples=") <= CAPPED_SITES + 1);
    assert!(kept <= CAPPED_SITES);
    assert_eq!(field(&capped, "overflow_sites="), 1, "one overflow site");
    assert_eq!(
        kept + field(&capped, "overflow_objects="),
        DISTINCT_STACKS,
        "each allocation is in its own site or counted once in the overflow site"
    );
    assert!(after <= bound, "{after} bytes > bound {bound}");

    let uncapped = run_many_stacks_child(16 * 1024);
    print!("uncapped: {uncapped}");
    assert_eq!(
        field(&uncapped, "workload_sites="),
        DISTINCT_STACKS,
        "the stacks are distinct"
    );
    assert_eq!(field(&uncapped, "overflow_sites="), 0);
    let uncapped_after = field(&uncapped, "bytes_after=");
    println!("without the cap the same workload takes {uncapped_after} bytes");
    assert!(
        uncapped_after > bound,
        "the uncapped run ({uncapped_after} B) must exceed the bound ({bound} B) for the test to mean anything"
    );
}
