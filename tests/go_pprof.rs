//! Compatibility with the real client: `go tool pprof` reads our profiles
//! and shows what Go users expect (`-top`, `-list`, `-traces`, `-base`,
//! `-sample_index=alloc_space`), after the first seed's batch job.
//!
//! Skips, saying why, when `go` is not installed, unless
//! `HEAPPROF_REQUIRE_GO=1` (set by `.ci/run`, which installs Go), in which
//! case a missing `go` fails the test.

use heapprof_testkit::tools::{go_available, go_pprof, top_rows};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn pprof(args: &[&str], profile: &Path) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.push(exe.to_str().unwrap());
    all.push(profile.to_str().unwrap());
    go_pprof(&all)
}

#[inline(never)]
fn add_map(map: &mut HashMap<String, String>, prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}key{i}");
        let val = format!("value{i}");
        map.insert(key, val);
    }
}

#[inline(never)]
fn do_nothing(prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}key{i}");
        let val = format!("value{i}");
        std::hint::black_box(key + &val);
    }
}

fn write(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    heapprof::write_profile(std::fs::File::create(&path).unwrap()).unwrap();
    path
}

#[test]
fn go_tool_pprof_reads_our_profiles() {
    if !go_available() {
        return;
    }
    heapprof::set_seed(1);
    heapprof::set_sample_rate(64 * 1024);
    let dir = tempfile::tempdir().unwrap();

    let mut map = HashMap::new();
    do_nothing("foo", 200_000);
    add_map(&mut map, "bar", 100_000);
    let before = write(dir.path(), "before.pb.gz");
    add_map(&mut map, "buzz", 400_000);
    let after = write(dir.path(), "after.pb.gz");

    // -top: the user's function is the first flat entry, holding nearly all.
    let top = pprof(&["-top"], &after);
    assert!(
        top.contains("Type: inuse_space"),
        "default sample type is inuse_space"
    );
    let rows = top_rows(&top);
    let total: f64 = rows.iter().map(|r| r.0).sum();
    assert!(
        rows[0].1.contains("go_pprof::add_map"),
        "first flat entry: {:?}",
        rows[0]
    );
    assert!(
        rows[0].0 > 0.9 * total,
        "add_map holds most of the heap: {rows:?}"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.0 > 0.0 && (r.1.starts_with("alloc::") || r.1.contains("heapprof"))),
        "{rows:?}"
    );
    assert!(
        !top.contains("do_nothing"),
        "do_nothing keeps nothing:\n{top}"
    );

    // -sample_index=alloc_space: do_nothing allocated, so it shows there.
    let alloc = pprof(&["-sample_index=alloc_space", "-top"], &after);
    assert!(alloc.contains("Type: alloc_space"));
    assert!(
        top_rows(&alloc)
            .iter()
            .any(|r| r.1.contains("do_nothing") && r.0 > 1e6),
        "{alloc}"
    );

    // -list: source lines of add_map, with values on the lines that allocate.
    let list = pprof(&["-list", "go_pprof::add_map"], &after);
    assert!(
        list.contains("ROUTINE ======================== go_pprof::add_map"),
        "{list}"
    );
    assert!(list.contains("tests/go_pprof.rs"), "{list}");
    let hot: Vec<&str> = list
        .lines()
        .filter(|l| l.contains("map.insert(key, val)") || l.contains("format!(\"{prefix}key{i}\")"))
        .collect();
    assert!(
        hot.iter()
            .any(|l| l.trim_start().as_bytes()[0].is_ascii_digit()),
        "no value on the allocating lines:\n{list}"
    );

    // -traces: whole stacks, leaf first, through our callers. (Not
    // necessarily the first trace printed: the harness's own allocations
    // may be sampled too.)
    let traces = pprof(&["-traces"], &after);
    let ours: Vec<&str> = traces
        .split("-----------+")
        .find(|t| t.contains("go_pprof::add_map"))
        .expect("a trace through add_map")
        .lines()
        .filter(|l| {
            // A trace opens with its labels (`thread:  name`).
            !l.trim().is_empty()
                && !l.contains("bytes:")
                && !l.trim_start().starts_with("thread:")
                && !l.trim_start().starts_with("---")
        })
        .collect();
    let at = |name: &str| {
        ours.iter()
            .position(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} in {ours:#?}"))
    };
    assert_eq!(at("go_pprof::add_map"), 0, "the leaf first: {ours:#?}");
    assert!(at("go_pprof::add_map") < at("go_pprof::go_tool_pprof_reads_our_profiles"));
    // The stack ends at the test function: the harness below it is cut.
    assert_eq!(
        at("go_pprof::go_tool_pprof_reads_our_profiles"),
        ours.len() - 1,
        "{ours:#?}"
    );

    // -base: only the growth between the two profiles, ~400 000 entries.
    let diff = pprof(&["-base", before.to_str().unwrap(), "-top"], &after);
    let rows = top_rows(&diff);
    let growth = rows
        .iter()
        .find(|r| r.1.contains("add_map"))
        .expect("add_map grew")
        .0;
    let whole = top_rows(&top)
        .iter()
        .find(|r| r.1.contains("add_map"))
        .unwrap()
        .0;
    assert!(
        growth > 0.6 * whole && growth < 0.95 * whole,
        "growth {growth} of {whole}:\n{diff}"
    );
    drop(map);
}

/// The README's main example, end to end: run `examples/batch_job` as a
/// user would, then read its `mem.pb.gz` with `go tool pprof` and the
/// example's binary, as its output says to.
#[test]
fn the_batch_job_example_reads_like_the_seed() {
    if !go_available() {
        return;
    }
    // Examples live beside the test binaries' directory: target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let example = examples.join("batch_job");
    if !example.exists() {
        // `cargo test` builds the examples first; a run of this test alone
        // may not have. Built in this test's profile, where it is looked
        // for.
        let profile: &[&str] = if cfg!(debug_assertions) {
            &[]
        } else {
            &["--release"]
        };
        let status = std::process::Command::new(env!("CARGO"))
            .arg("build")
            .args(profile)
            .args(["--example", "batch_job"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --example batch_job");
        assert!(status.success());
    }
    let dir = tempfile::tempdir().unwrap();
    // A fixed seed: `do_nothing` allocates about 13 sampling periods'
    // worth, and `-top` hides a function under 0.5 % of the total (about
    // 2.5 periods), which an unseeded run would hit 3e-4 of the time.
    let out = std::process::Command::new(&example)
        .current_dir(dir.path())
        .env("HEAPPROF_SEED", "1")
        .output()
        .expect("run the batch_job example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("go tool pprof -top"), "{stdout}");
    let profile = dir.path().join("mem.pb.gz");
    let (ex, prof) = (example.to_str().unwrap(), profile.to_str().unwrap());

    let top = go_pprof(&["-top", ex, prof]);
    let rows = top_rows(&top);
    assert!(
        rows[0].1.contains("batch_job::add_map"),
        "add_map is the first flat entry, as main.addMap in the seed: {rows:?}"
    );
    let total: f64 = rows.iter().map(|r| r.0).sum();
    assert!(rows[0].0 > 0.9 * total, "{rows:?}");
    for caller in ["batch_job::exec", "batch_job::main"] {
        assert!(top.contains(caller), "{caller} in the cum column:\n{top}");
    }
    let list = go_pprof(&["-list", "batch_job::add_map", ex, prof]);
    assert!(list.contains("examples/batch_job.rs"), "{list}");
    let alloc = go_pprof(&["-sample_index=alloc_space", "-top", ex, prof]);
    assert!(alloc.contains("batch_job::do_nothing"), "{alloc}");

    // Stacks end at the program's `main`: `-top` lists the example's own
    // three functions and nothing of the start-up below them, and every
    // stack of `-traces` ends at `batch_job::main`.
    let mut names: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    names.sort();
    assert_eq!(
        names,
        ["batch_job::add_map", "batch_job::exec", "batch_job::main"],
        "{top}"
    );
    let traces = go_pprof(&["-traces", ex, prof]);
    let stacks: Vec<&str> = traces
        .split("-----------+-------------------------------------------------------")
        .skip(1)
        .filter(|t| t.contains("bytes") || t.contains('B'))
        .collect();
    assert!(!stacks.is_empty(), "{traces}");
    for stack in stacks {
        let last = stack
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        assert!(
            last.trim().ends_with("batch_job::main"),
            "a stack that does not end at main:\n{stack}"
        );
    }
}
