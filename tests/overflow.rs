//! More distinct stacks than the table holds: memory stays bounded, the
//! excess is counted in a visible overflow site, and the program goes on.
//! Runs itself as a child with `HEAPPROF_MAX_SITES=64`.

mod common;
use common::*;
use std::process::Command;

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
    if std::env::var_os("HEAPPROF_TEST_CHILD").is_none() {
        return;
    }
    heapprof::set_sample_rate(1);
    let kept: Vec<Vec<u8>> = (0..50).flat_map(|d| (0..4).map(move |_| nest(d))).collect();
    let p = take_profile();
    let names: Vec<String> = p.sample.iter().map(|s| leaf_name(&p, s)).collect();
    let overflow = p
        .sample
        .iter()
        .zip(&names)
        .find(|(_, n)| n.contains("[heapprof overflow"))
        .map(|(s, _)| s.value[ALLOC_OBJECTS])
        .unwrap_or(0);
    println!("samples={} overflow_objects={overflow}", p.sample.len());
    assert!(p.sample.len() <= 64 + 1, "{} sites kept", p.sample.len());
    drop(kept);
}

#[test]
fn overflow_is_visible_and_bounded() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_fills_the_table", "--nocapture"])
        .env("HEAPPROF_TEST_CHILD", "1")
        .env("HEAPPROF_MAX_SITES", "64")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> i64 {
        let at = stdout
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            + name.len();
        stdout[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    // 200 blocks at 50 depths, plus the runtime's own sites, into 64 sites:
    // many samples must have gone to the overflow site.
    assert!(field("overflow_objects=") >= 50, "{stdout}");
    assert!(field("samples=") <= 65);
}
