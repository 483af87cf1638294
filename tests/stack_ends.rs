//! Stacks end where the program starts: at the test function, a spawned
//! thread's own closure, or `main`, without the C runtime's, std's and the
//! test harness's start-up frames below them; closure names have one form;
//! `HEAPPROF_FULL_STACKS=1` keeps everything.

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::{stack_names, take_profile};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[inline(never)]
fn keep(n: usize) -> Vec<u8> {
    std::hint::black_box(vec![7u8; n])
}

const STARTUP: &[&str] = &[
    "start_thread",
    "clone3",
    "__libc_start",
    "std::rt::",
    "std::panicking::",
    "std::sys::",
    "test::run_test",
    "core::ops::function::FnOnce::call_once",
];

/// The stacks of the two sites this test makes: (on the test's thread, on
/// a spawned thread).
fn stacks() -> (Vec<String>, Vec<String>) {
    heapprof::set_sample_rate(1);
    let here = keep(54_321);
    let there = std::thread::spawn(|| keep(65_432)).join().unwrap();
    let p = take_profile();
    let stack_of = |size: i64| {
        let s = p
            .sample
            .iter()
            .find(|s| s.value[3] == size && stack_names(&p, s)[0].ends_with("stack_ends::keep"))
            .unwrap_or_else(|| panic!("the {size}-byte site"));
        stack_names(&p, s)
    };
    let stacks = (stack_of(54_321), stack_of(65_432));
    drop((here, there));
    stacks
}

#[test]
fn stacks_end_at_the_test_function_and_the_thread_closure() {
    if is_child() {
        return;
    }
    let (here, there) = stacks();
    println!("test thread: {here:?}\nspawned: {there:?}");
    assert_eq!(
        here.last().map(String::as_str),
        Some("stack_ends::stacks_end_at_the_test_function_and_the_thread_closure"),
        "{here:?}"
    );
    assert_eq!(
        there.last().map(String::as_str),
        Some("stack_ends::stacks::{{closure}}"),
        "{there:?}"
    );
    for name in here.iter().chain(&there) {
        assert!(!name.contains("{closure#"), "{name}");
        assert!(
            !STARTUP.iter().any(|s| name.contains(s)),
            "a start-up frame: {name}"
        );
    }
}

#[test]
fn child_full_stacks() {
    if !is_child() {
        return;
    }
    let (here, there) = stacks();
    println!("HERE={}", here.join(" < "));
    println!("THERE={}", there.join(" < "));
}

#[test]
fn full_stacks_keep_the_start_up_frames() {
    let (stdout, _) = run_child("child_full_stacks", &[("HEAPPROF_FULL_STACKS", "1")]);
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("{key} in {stdout}"))
            .to_owned()
    };
    let (here, there) = (line("HERE="), line("THERE="));
    // The C library's thread entry: glibc's; or static musl's (linked into
    // the program, with a short name of its own), which has no unwind
    // information, so that a DWARF walk stops at std's thread start above it.
    let thread_entry = |stack: &str| {
        if cfg!(target_env = "musl") {
            stack.ends_with(" < start") || stack.ends_with("::thread_start")
        } else {
            stack.contains("start_thread")
        }
    };
    assert!(
        here.contains("test::run_test") && thread_entry(&here),
        "{here}"
    );
    assert!(thread_entry(&there), "{there}");
}
