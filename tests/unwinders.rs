//! The two unwinders give the same stacks. Runs itself twice as a child,
//! with `HEAPPROF_UNWIND=dwarf` and with the default `auto`, at rate 1, and
//! compares the stacks of a known call chain. With `HEAPPROF_EXPECT_FP=1`
//! (set by `.ci/run`: this repository builds with frame pointers, see
//! `.cargo/config.toml`) auto must also have chosen frame pointers.

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::{stack_names, string, take_profile};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[inline(never)]
fn outer() -> Vec<u8> {
    std::hint::black_box(middle())
}

#[inline(never)]
fn middle() -> Vec<u8> {
    std::hint::black_box(inner())
}

#[inline(never)]
fn inner() -> Vec<u8> {
    std::hint::black_box(vec![0u8; 4321])
}

#[test]
fn child_prints_stack() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let kept = outer();
    let p = take_profile();
    let site = p
        .sample
        .iter()
        .find(|s| stack_names(&p, s).iter().any(|n| n.ends_with("::inner")) && s.value[3] == 4321)
        .expect("the 4321-byte site");
    let names: Vec<String> = stack_names(&p, site)
        .into_iter()
        .take_while(|n| !n.contains("child_prints_stack"))
        .collect();
    let comments: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    println!("STACK={}", names.join(" < "));
    println!(
        "UNWINDER={}",
        comments.iter().find(|c| c.contains("unwound")).unwrap()
    );
    drop(kept);
}

fn run(unwind: &str) -> (String, String) {
    let (stdout, _) = run_child("child_prints_stack", &[("HEAPPROF_UNWIND", unwind)]);
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.to_owned()))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
    };
    (field("STACK="), field("UNWINDER="))
}

#[test]
fn dwarf_and_auto_agree() {
    let (dwarf, dwarf_mode) = run("dwarf");
    let (auto, auto_mode) = run("auto");
    println!("dwarf: {dwarf} ({dwarf_mode})\nauto:  {auto} ({auto_mode})");
    assert!(dwarf_mode.contains("DWARF"));
    assert!(
        dwarf.contains("unwinders::inner < unwinders::middle < unwinders::outer"),
        "{dwarf}"
    );
    assert_eq!(dwarf, auto, "both unwinders must see the same stack");
    if std::env::var_os("HEAPPROF_EXPECT_FP").is_some_and(|v| v == "1") {
        assert!(
            auto_mode.contains("frame pointers"),
            "auto chose {auto_mode}"
        );
    }
}

/// A malformed `HEAPPROF_UNWIND` falls back to `auto`, so the one line on
/// stderr must say that, not that unwinding is left off; and the stacks
/// must be the ones `auto` gives.
#[test]
fn a_malformed_value_says_auto_is_used() {
    let (stdout, stderr) = run_child("child_prints_stack", &[("HEAPPROF_UNWIND", "foo")]);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains("HEAPPROF_UNWIND") && lines[0].contains("using the default auto"),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("leaving it off"), "{}", lines[0]);
    let (auto, auto_mode) = run("auto");
    assert!(stdout.contains(&format!("STACK={auto}")), "{stdout}");
    assert!(
        stdout.contains(&format!("UNWINDER={auto_mode}")),
        "{stdout}"
    );
}
