//! `assert_inuse_at_most` does not pass for want of a measurement: with
//! sampling off it panics; in a delta, heapprof's overflow entry counts with
//! every byte allocated into it, though other threads' frees there made its
//! live bytes shrink; a name no stack has passes with a line saying so;
//! in a stripped executable, bytes under its unnamed frames count.
//!
//! Each scenario runs in a child process, whose settings come from its
//! environment.

use heapprof_testkit::check::panic_message;
use heapprof_testkit::child::{is_child, run_child, run_child_of};
use heapprof_testkit::profile::{string, take_profile};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[inline(never)]
fn holds_a_lot() -> Vec<Vec<u8>> {
    black_box((0..64).map(|_| vec![1u8; 64 * 1024]).collect())
}

#[test]
fn sampling_off_is_not_a_measurement() {
    if !is_child() {
        let (stdout, _) = run_child(
            "sampling_off_is_not_a_measurement",
            &[("HEAPPROF_SAMPLE_RATE", "0")],
        );
        assert!(
            stdout.contains("panicked: heapprof: cannot check"),
            "{stdout}"
        );
        assert!(stdout.contains("sampling was off"), "{stdout}");
        return;
    }
    let kept = holds_a_lot();
    let message = panic_message(|| {
        heapprof::snapshot().assert_inuse_at_most("assertion_truth::holds_a_lot", 1024)
    });
    println!("panicked: {}", message.unwrap_or_default());
    drop(kept);
}

#[inline(never)]
fn leaks(bytes: usize) {
    std::mem::forget(black_box(vec![1u8; bytes]));
}

/// Sampling turned off for part of a delta's time (by another test, say)
/// leaves what was allocated then unseen: the assertion cannot pass on
/// it, though the delta has sites (a sampled block freed in between) and
/// the rate is back on at the end. Nor can an assertion on the live heap
/// after sampling was ever off, and a delta taken the wrong way round
/// panics rather than read a leak as nothing.
#[test]
fn sampling_off_for_part_of_the_time_is_not_a_measurement() {
    if !is_child() {
        let (stdout, _) = run_child(
            "sampling_off_for_part_of_the_time_is_not_a_measurement",
            &[],
        );
        for case in ["off at the end", "off in between"] {
            assert!(
                stdout.contains(&format!(
                    "{case}: panicked: heapprof: cannot check what `assertion_truth::leaks` \
                     holds: sampling was off at or between the two snapshots"
                )),
                "{case}: {stdout}"
            );
        }
        assert!(
            stdout.contains(
                "live heap: panicked: heapprof: cannot check what `assertion_truth::leaks` \
                 holds: sampling was off at some time before this snapshot"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("the wrong way round: panicked: heapprof: `later.delta(&earlier)`"),
            "{stdout}"
        );
        assert!(stdout.contains("sampling on: holds 100000"), "{stdout}");
        return;
    }
    let check = |case: &str, f: &dyn Fn()| {
        let message = panic_message(f).unwrap_or_else(|| "passed".into());
        println!("{case}: panicked: {message}");
    };
    // The right way round, sampling on throughout: the leak is seen.
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    leaks(100_000);
    let on = heapprof::snapshot().delta(&before);
    println!(
        "sampling on: holds {}",
        on.inuse_bytes_in("assertion_truth::leaks")
    );
    check("the wrong way round", &|| {
        let before = heapprof::snapshot();
        leaks(100_000);
        let after = heapprof::snapshot();
        drop(before.delta(&after));
    });
    check("off at the end", &|| {
        heapprof::set_sample_rate(1);
        let keep = holds_a_lot();
        heapprof::set_sample_rate(0);
        let before = heapprof::snapshot();
        leaks(100_000);
        drop(keep);
        let delta = heapprof::snapshot().delta(&before);
        delta.assert_inuse_at_most("assertion_truth::leaks", 50_000);
    });
    check("off in between", &|| {
        heapprof::set_sample_rate(1);
        let before = heapprof::snapshot();
        heapprof::set_sample_rate(0);
        leaks(100_000);
        heapprof::set_sample_rate(1);
        let delta = heapprof::snapshot().delta(&before);
        delta.assert_inuse_at_most("assertion_truth::leaks", 50_000);
    });
    check("live heap", &|| {
        heapprof::snapshot().assert_inuse_at_most("assertion_truth::leaks", 50_000);
    });
}

/// A rate above 1 for part of a delta's time (set by another test, say)
/// may leave a leak unsampled though both snapshots are at rate 1: the
/// assertion may pass, but says on stderr that it is an estimate, and
/// why; a delta at rate 1 throughout says nothing of the kind.
#[test]
fn a_coarse_rate_in_between_is_said() {
    const SAID: &str = "passes with 0 bytes counted, but the sample rate was above 1 at or \
                        between the two snapshots";
    if !is_child() {
        let (stdout, stderr) = run_child(
            "a_coarse_rate_in_between_is_said",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert!(stdout.contains("exact: passed"), "{stdout}");
        assert!(stdout.contains("coarse: passed"), "{stdout}");
        let header = stdout
            .lines()
            .find(|l| l.starts_with("coarse header: "))
            .unwrap_or_default();
        assert!(!header.contains("every allocation is recorded"), "{stdout}");
        assert!(header.contains("are estimates"), "{stdout}");
        assert_eq!(stderr.matches(SAID).count(), 1, "{stderr}");
        let live = "but the sample rate was above 1 at some time before this snapshot";
        assert_eq!(stderr.matches(live).count(), 1, "once: {stderr}");
        return;
    }
    let before = heapprof::snapshot();
    let delta = heapprof::snapshot().delta(&before);
    delta.assert_inuse_at_most("assertion_truth::leaks", 0);
    println!("exact: passed");
    // The first allocation after a change of rate is sampled for sure;
    // the next, one in a million at so coarse a rate.
    heapprof::set_sample_rate(1 << 30);
    black_box(vec![0u8; 8]);
    leaks(1000);
    heapprof::set_sample_rate(1);
    let delta = heapprof::snapshot().delta(&before);
    delta.assert_inuse_at_most("assertion_truth::leaks", 0);
    println!("coarse: passed");
    let header = delta
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    println!("coarse header: {header}");
    // The live heap since then: every such assertion is a case, said once.
    for _ in 0..2 {
        heapprof::snapshot().assert_inuse_at_most("assertion_truth::leaks", 0);
    }
}

/// The name is matched as a substring: a failure names the frames it
/// matched, so that a shorter name that matched a longer one shows.
#[test]
fn a_failure_names_the_frames_the_name_matched() {
    if !is_child() {
        let (stdout, _) = run_child(
            "a_failure_names_the_frames_the_name_matched",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert!(
            stdout.contains("matched by frames named \"assertion_truth::leaks\""),
            "{stdout}"
        );
        return;
    }
    let before = heapprof::snapshot();
    leaks(1000);
    let delta = heapprof::snapshot().delta(&before);
    let message = panic_message(|| delta.assert_inuse_at_most("assertion_truth::leak", 0));
    println!("panicked: {}", message.unwrap_or_default());
}

/// A stripped executable (`strip = true` in a Cargo profile) leaves
/// heapprof no names for the program's frames: the bytes under them may be
/// the function's, so the assertion fails, saying why, rather than pass
/// for want of a name.
#[test]
fn a_stripped_program_cannot_pass_for_want_of_names() {
    if !is_child() {
        let copy =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("assertion_truth_stripped");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let strip = std::process::Command::new("strip")
            .arg(&copy)
            .status()
            .expect("run `strip` (binutils, which linking with cc needs too)");
        assert!(strip.success(), "strip failed");
        let (stdout, stderr) = run_child_of(
            &copy,
            None,
            "a_stripped_program_cannot_pass_for_want_of_names",
            &[],
        );
        assert!(
            stdout.contains(
                "panicked: heapprof: `assertion_truth::holds_a_lot` holds 0 live bytes (and "
            ),
            "{stdout}"
        );
        assert!(stdout.contains("could not name"), "{stdout}");
        assert!(stderr.contains("is the executable stripped"), "{stderr}");
        // A count by name leaves those bytes out, and says so, once, at
        // the program's first count (the assertion's own say nothing).
        assert!(stdout.contains("counted by name: 0\n"), "{stdout}");
        let said =
            "heapprof: Snapshot::inuse_bytes_in(\"assertion_truth::holds_a_lot\") leaves out ";
        assert_eq!(stderr.matches(said).count(), 1, "{stderr}");
        assert_eq!(stderr.matches("leaves out").count(), 1, "{stderr}");
        let counting = stderr.find("counting by name").unwrap();
        assert!(stderr.find(said).unwrap() > counting, "{stderr}");
        // The profile says so too, for readers of pprof's -comments, and
        // so does the text profile.
        let says = |prefix: &str| {
            stdout
                .lines()
                .any(|l| l.starts_with(prefix) && l.contains("in the executable have no names"))
        };
        assert!(says("comment: heapprof: "), "{stdout}");
        assert!(says("text: # heapprof: "), "{stdout}");
        std::fs::remove_file(&copy).unwrap();
        return;
    }
    let kept = holds_a_lot();
    let message = panic_message(|| {
        heapprof::snapshot().assert_inuse_at_most("assertion_truth::holds_a_lot", 1024)
    });
    println!("panicked: {}", message.unwrap_or_default());
    let snapshot = heapprof::snapshot();
    eprintln!("counting by name");
    let counted = snapshot.inuse_bytes_in("assertion_truth::holds_a_lot");
    println!("counted by name: {counted}");
    snapshot.alloc_bytes_in("assertion_truth::holds_a_lot");
    let profile = take_profile();
    for &c in &profile.comment {
        println!("comment: {}", string(&profile, c));
    }
    let mut text = Vec::new();
    heapprof::write_text_profile(&mut text).unwrap();
    for line in String::from_utf8_lossy(&text).lines() {
        println!("text: {line}");
    }
    drop(kept);
}

const NO_LINES: &str = "frames of \"assertion_truth\" have no file and line";

/// A program built without debug info (here: its debug info stripped,
/// its symbols kept) has its own functions named from the symbol table,
/// and those inlined into their callers on no stack: an assertion that
/// passes says so on stderr, once. One with debug info says nothing.
#[test]
fn a_pass_in_a_crate_without_debug_info_says_so() {
    if !is_child() {
        let copy =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("assertion_truth_no_lines");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        let strip = std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg(&copy)
            .status()
            .expect("run `strip` (binutils, which linking with cc needs too)");
        assert!(strip.success(), "strip failed");
        let (stdout, stderr) = run_child_of(
            &copy,
            None,
            "a_pass_in_a_crate_without_debug_info_says_so",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        std::fs::remove_file(&copy).unwrap();
        assert!(stdout.contains("passed twice"), "{stdout}");
        assert_eq!(stderr.matches(NO_LINES).count(), 1, "{stderr}");
        let (stdout, stderr) = run_child(
            "a_pass_in_a_crate_without_debug_info_says_so",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert!(stdout.contains("passed twice"), "{stdout}");
        assert!(!stderr.contains(NO_LINES), "{stderr}");
        return;
    }
    let before = heapprof::snapshot();
    let kept = holds_a_lot();
    let delta = heapprof::snapshot().delta(&before);
    delta.assert_inuse_at_most("assertion_truth::holds_a_lot", i64::MAX);
    delta.assert_inuse_at_most("assertion_truth::holds_a_lot", i64::MAX);
    println!("passed twice");
    drop(kept);
}

#[inline(never)]
fn grows(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..5 {
        kept.push(black_box(vec![2u8; 1000]));
    }
}

#[inline(never)]
fn allocated_before() -> Vec<Vec<u8>> {
    black_box((0..20).map(|_| vec![3u8; 1000]).collect())
}

/// A site table of one site: after the first, every site's bytes go to the
/// overflow entry (but where the one site dies). In the delta, `grows`
/// adds 5 000 bytes there while another thread frees 20 000 bytes
/// allocated there before: the entry's live bytes fell, and `grows`'s
/// bytes must count all the same.
#[test]
fn a_full_table_cannot_hide_growth_in_a_delta() {
    if !is_child() {
        let (stdout, _) = run_child(
            "a_full_table_cannot_hide_growth_in_a_delta",
            &[("HEAPPROF_SAMPLE_RATE", "1"), ("HEAPPROF_MAX_SITES", "1")],
        );
        // `grows`'s 5 000 bytes count: under its own site if a site that
        // died meanwhile left it the table's one place (which site holds
        // it depends on what the process allocated and freed before), and
        // under none of the program's stacks for the rest.
        let prefix = "panicked: heapprof: `assertion_truth::grows` added ";
        let message = stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{stdout}"));
        // The number just before `word`, 0 where the message has no such
        // part.
        let number_before = |word: &str| -> u64 {
            message.split_once(word).map_or(0, |(head, _)| {
                head.rsplit(' ').next().unwrap().parse().unwrap()
            })
        };
        let own = number_before(" live bytes");
        let elsewhere = number_before(" were allocated in between under none");
        assert!(own + elsewhere >= 5000, "{stdout}");
        // The table under it is the process's: it says so, since the
        // other thread's frees make it show less than was counted.
        assert!(
            stdout.contains("the whole process's net change meanwhile, every thread's"),
            "{stdout}"
        );
        return;
    }
    let older = allocated_before();
    let mut kept = Vec::with_capacity(16);
    let before = heapprof::snapshot();
    std::thread::spawn(move || drop(older)).join().unwrap();
    grows(&mut kept);
    let delta = heapprof::snapshot().delta(&before);
    println!(
        "overflow in the delta: {} live, {} allocated",
        delta.inuse_bytes_in("[heapprof"),
        delta.alloc_bytes_in("[heapprof")
    );
    let message = panic_message(|| delta.assert_inuse_at_most("assertion_truth::grows", 1000));
    println!("panicked: {}", message.unwrap_or_default());
    drop(kept);
}

#[inline(never)]
fn churn_at_depth(depth: usize) {
    if depth == 0 {
        black_box(vec![5u8; 100]);
        return;
    }
    churn_at_depth(depth - 1);
    black_box(());
}

#[inline(never)]
fn adds_fifty_thousand(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![6u8; 50_000]));
}

/// A full table's overflow entry takes what new stacks allocate, and the
/// counts of sites that retire: in a delta, only what is still live there
/// may be a function's. Many stacks that allocate and free (4 KB) in
/// between leave a function that added 50 000 bytes within 51 000.
#[test]
fn churn_through_a_full_table_is_not_counted_as_growth() {
    if !is_child() {
        let (stdout, _) = run_child(
            "churn_through_a_full_table_is_not_counted_as_growth",
            &[("HEAPPROF_SAMPLE_RATE", "1"), ("HEAPPROF_MAX_SITES", "64")],
        );
        let overflowed = stdout
            .lines()
            .find_map(|l| l.split_once("overflow allocated in between: "))
            .map(|(_, n)| n)
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            overflowed > 0,
            "the churn was to reach the overflow entry: {stdout}"
        );
        assert!(stdout.contains("within its limit"), "{stdout}");
        return;
    }
    let mut kept = Vec::with_capacity(4);
    let before = heapprof::snapshot();
    for depth in 0..200 {
        churn_at_depth(depth);
    }
    adds_fifty_thousand(&mut kept);
    let delta = heapprof::snapshot().delta(&before);
    println!(
        "overflow allocated in between: {}",
        delta.alloc_bytes_in("[heapprof overflow")
    );
    // A little over: a block the process allocated in between into the
    // overflow entry, and still holds, may be the function's.
    delta.assert_inuse_at_most("assertion_truth::adds_fifty_thousand", 51_000);
    println!("within its limit");
    drop(kept);
}

#[inline(never)]
fn holds_a_mebibyte() -> Vec<u8> {
    black_box(vec![7u8; 1 << 20])
}

/// Allocates and frees a byte under one of 2^`depth` stacks, chosen by
/// the bits of `path`.
#[inline(never)]
fn through(depth: usize, path: usize) {
    if depth == 0 {
        drop(black_box(Box::new(0u8)));
    } else if path & 1 == 1 {
        left(depth - 1, path >> 1);
    } else {
        right(depth - 1, path >> 1);
    }
    black_box(());
}

#[inline(never)]
fn left(depth: usize, path: usize) {
    through(depth, path);
    black_box(());
}

#[inline(never)]
fn right(depth: usize, path: usize) {
    black_box(());
    through(depth, path);
    black_box(());
}

/// While another thread keeps sampling new stacks in a full table (so
/// that sites retire all the time), a delta still tells blocks allocated
/// in between from older ones at the same stack: each round adds a MiB
/// at `holds_a_mebibyte` and frees an older MiB from there, and every
/// round's check of 100 000 bytes fails.
#[test]
fn stacks_churning_in_a_full_table_cannot_hide_growth_in_a_delta() {
    let test = "stacks_churning_in_a_full_table_cannot_hide_growth_in_a_delta";
    if !is_child() {
        let (stdout, _) = run_child(
            test,
            &[("HEAPPROF_SAMPLE_RATE", "1"), ("HEAPPROF_MAX_SITES", "256")],
        );
        assert!(stdout.contains("passed 0 of 10 rounds"), "{stdout}");
        return;
    }
    static STOP: AtomicBool = AtomicBool::new(false);
    let churn = std::thread::spawn(|| {
        let mut path = 0;
        while !STOP.load(SeqCst) {
            through(20, path);
            path += 1;
        }
        path
    });
    // Until the table is full and sites retire.
    while !churn.is_finished() && heapprof::snapshot().alloc_bytes_in("[heapprof overflow") == 0 {
        std::thread::yield_now();
    }
    let mut older = holds_a_mebibyte();
    let mut passed = 0;
    for _ in 0..10 {
        let before = heapprof::snapshot();
        let newer = holds_a_mebibyte();
        drop(std::mem::replace(&mut older, newer));
        let delta = heapprof::snapshot().delta(&before);
        let checked = panic_message(|| {
            delta.assert_inuse_at_most("assertion_truth::holds_a_mebibyte", 100_000)
        });
        if checked.is_none() {
            passed += 1;
        }
    }
    STOP.store(true, SeqCst);
    let stacks = churn.join().unwrap();
    println!("passed {passed} of 10 rounds, with {stacks} stacks sampled meanwhile");
    drop(older);
}

#[inline(never)]
fn allocates_nothing(n: usize) -> usize {
    black_box(n) * 2
}

/// Inlined into its caller in every build: no symbol of its own, but the
/// debug info (this crate is built with some in both profiles) names it.
#[inline(always)]
fn inlined_and_allocates_nothing(n: usize) -> usize {
    black_box(n) + 1
}

/// A name that no function of the program has (a typo) fails: nothing
/// could show what it holds. A function that exists and allocated
/// nothing passes, with a line that names it and the test's thread; so
/// does one inlined into every caller that the debug info names, and, in
/// a delta, one that allocated only before it, with a line that says so.
#[test]
fn a_name_no_function_has_fails_and_one_without_samples_passes() {
    if !is_child() {
        let (stdout, stderr) = run_child(
            "a_name_no_function_has_fails_and_one_without_samples_passes",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert!(
            stdout.contains(
                "typo: heapprof: no function of this program is named like \
                 `assertion_truth::hold_a_lot`"
            ),
            "{stdout}"
        );
        let lines_with =
            |phrase: &str| -> Vec<&str> { stderr.lines().filter(|l| l.contains(phrase)).collect() };
        let lines = lines_with("no sampled stack names a function matching");
        assert_eq!(lines.len(), 2, "{stderr}");
        assert!(
            lines[0].contains("assertion_truth::allocates_nothing")
                && lines[0].contains("(thread "),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("assertion_truth::inlined_and_allocates_nothing"),
            "{}",
            lines[1]
        );
        let in_between = lines_with("no stack sampled in between names a function matching");
        assert_eq!(in_between.len(), 1, "{stderr}");
        assert!(
            in_between[0].contains("assertion_truth::holds_a_lot")
                && in_between[0].contains("passes as adding nothing: it allocated nothing sampled"),
            "{}",
            in_between[0]
        );
        return;
    }
    let kept = holds_a_lot();
    let snapshot = heapprof::snapshot();
    // A typo: `hold_a_lot` for `holds_a_lot`.
    let typo = panic_message(|| snapshot.assert_inuse_at_most("assertion_truth::hold_a_lot", 0));
    println!("typo: {}", typo.unwrap_or_default());
    assert_eq!(allocates_nothing(3), 6);
    snapshot.assert_inuse_at_most("assertion_truth::allocates_nothing", 0);
    assert_eq!(inlined_and_allocates_nothing(3), 4);
    snapshot.assert_inuse_at_most("assertion_truth::inlined_and_allocates_nothing", 0);
    // In a delta, a function that allocated before both snapshots and
    // not in between is at no site that changed.
    heapprof::snapshot()
        .delta(&snapshot)
        .assert_inuse_at_most("assertion_truth::holds_a_lot", 0);
    drop(kept);
}

#[inline(never)]
fn recurse_then_hold(depth: usize) -> Vec<u8> {
    if depth == 0 {
        return black_box(vec![4u8; 3000]);
    }
    let v = recurse_then_hold(depth - 1);
    black_box(v)
}

/// Keeps its frame (no tail call), below the deepest kept.
#[inline(never)]
fn deep_caller() -> Vec<u8> {
    black_box(recurse_then_hold(100))
}

/// A stack deeper than heapprof keeps ends in a frame that says it was
/// cut, in the profile; an assertion on a function among the callers not
/// recorded passes (its bytes are not known to be its), with a line that
/// says how many bytes such stacks hold.
#[test]
fn a_stack_cut_at_its_deepest_says_so() {
    if !is_child() {
        let (stdout, stderr) = run_child(
            "a_stack_cut_at_its_deepest_says_so",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert!(
            stdout.contains("root: [heapprof: stack cut here"),
            "{stdout}"
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("bytes are in stacks cut at their deepest kept"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains("assertion_truth::deep_caller"),
            "{}",
            lines[0]
        );
        return;
    }
    let before = heapprof::snapshot();
    let kept = deep_caller();
    let delta = heapprof::snapshot().delta(&before);
    let site = delta
        .sites()
        .iter()
        .find(|s| {
            s.inuse_bytes >= 3000
                && s.frames
                    .iter()
                    .any(|f| f.function.contains("assertion_truth::recurse_then_hold"))
        })
        .expect("the deep allocation's site");
    println!("root: {}", site.frames.last().unwrap().function);
    delta.assert_inuse_at_most("assertion_truth::deep_caller", 0);
    drop(kept);
}

#[inline(never)]
fn holds_its_own(keep: &mut Vec<Vec<u8>>) {
    keep.push(black_box(vec![1u8; 1000]));
}

#[cfg(target_arch = "x86_64")]
extern "C" fn called_from_generated_code(keep: *mut Vec<Vec<u8>>) {
    // SAFETY: `keep` is the live vector `through_generated_code` passed.
    let keep = unsafe { &mut *keep };
    for _ in 0..100 {
        keep.push(black_box(vec![2u8; 10_000]));
    }
}

/// Calls `called_from_generated_code` through machine code made at run
/// time in an anonymous mapping, as a JIT's code is: `push rbp; mov rbp,
/// rsp; mov rax, rdi; mov rdi, rsi; call rax; pop rbp; ret`.
#[cfg(target_arch = "x86_64")]
fn through_generated_code(keep: &mut Vec<Vec<u8>>) {
    const CODE: [u8; 14] = [
        0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0xff, 0xd0, 0x5d, 0xc3,
    ];
    type Trampoline = extern "C" fn(extern "C" fn(*mut Vec<Vec<u8>>), *mut Vec<Vec<u8>>);
    // SAFETY: a fresh private anonymous page, checked, filled with the
    // whole function above before it is called with the signature that
    // code expects (System V: the callee in rdi, its argument in rsi); it
    // keeps the frame-pointer chain and the stack aligned for the call.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), page.cast::<u8>(), CODE.len());
        let trampoline: Trampoline = std::mem::transmute(page);
        trampoline(called_from_generated_code, keep);
        libc::munmap(page, 4096);
    }
}

/// A frame in no object (code generated at run time, a library unloaded
/// since) cannot be the program's function: bytes under it do not count
/// against an assertion about another function.
#[cfg(target_arch = "x86_64")]
#[test]
fn frames_of_generated_code_are_not_the_function() {
    if is_child() {
        return;
    }
    let (stdout, _) = run_child(
        "child_allocates_through_generated_code",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    assert!(stdout.contains("assertion=passed"), "{stdout}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn child_allocates_through_generated_code() {
    if !is_child() {
        return;
    }
    let mut keep = Vec::with_capacity(101);
    let before = heapprof::snapshot();
    holds_its_own(&mut keep);
    through_generated_code(&mut keep);
    let grown = heapprof::snapshot().delta(&before);
    let message =
        panic_message(|| grown.assert_inuse_at_most("assertion_truth::holds_its_own", 1100));
    match message {
        None => println!("assertion=passed"),
        Some(m) => println!("assertion=failed: {m}"),
    }
    drop(keep);
}

/// Twins: the same body, whose generic code (the `map` and `fold` of their
/// closures) an optimized build keeps one copy of, named in the debug info
/// after one of them. Each keeps its own frame on the stack: its result
/// goes through `black_box` rather than out by a tail call.
#[inline(never)]
fn builds_an_index(n: usize) -> Vec<Vec<u8>> {
    black_box((0..n).map(|i| vec![i as u8; 1000]).collect())
}

#[inline(never)]
fn builds_a_cache(n: usize) -> Vec<Vec<u8>> {
    black_box((0..n).map(|i| vec![i as u8; 1000]).collect())
}

/// Code shared by two functions cannot hide what one holds when each
/// keeps its own frame (as the README asks): the twin that holds 2 MB
/// fails its assertion in debug and release builds alike, though in a
/// release build the frames below it are named after the other twin.
#[test]
fn shared_code_cannot_hide_what_a_function_holds() {
    if !is_child() {
        let (stdout, _) = run_child(
            "shared_code_cannot_hide_what_a_function_holds",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        // 2 048 000 bytes are the cache's own; when the shared copy is named
        // after the cache, the index's 10 000 count too.
        let added: i64 = stdout
            .split("cache: heapprof: `assertion_truth::builds_a_cache` added ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no failed assertion on the cache: {stdout}"));
        assert!(added >= 2_048_000, "{stdout}");
        return;
    }
    let before = heapprof::snapshot();
    let index = builds_an_index(black_box(10));
    let cache = builds_a_cache(black_box(2000));
    let grown = heapprof::snapshot().delta(&before);
    let message =
        panic_message(|| grown.assert_inuse_at_most("assertion_truth::builds_a_cache", 100_000));
    println!("cache: {}", message.as_deref().unwrap_or("passed"));
    drop((index, cache));
}

#[inline(never)]
fn fills(n: usize) -> Vec<u8> {
    black_box(vec![7u8; n])
}

/// Returns what `fills` builds straight from the call, which an optimized
/// build compiles to a jump: the function is then on no stack of what
/// `fills` allocates.
#[inline(never)]
fn builds_by_a_tail_call(n: usize) -> Vec<u8> {
    fills(n * 2)
}

/// Returns what a closure it was given builds, straight from the call: an
/// optimized build jumps to the closure through the address it reads.
#[inline(never)]
fn builds_through_a_dyn_call(make: &dyn Fn(usize) -> Vec<u8>, n: usize) -> Vec<u8> {
    make(n * 2)
}

/// A function off every stack of what it allocates, for it ends in a
/// tail call, does not pass as holding nothing: in an optimized build the
/// assertion says it cannot check it, and names the jump; in a debug
/// build, which makes no tail calls, it counts the bytes.
#[test]
fn a_tail_call_cannot_pass_for_want_of_a_frame() {
    if !is_child() {
        let (stdout, _) = run_child(
            "a_tail_call_cannot_pass_for_want_of_a_frame",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        let counted = "held: heapprof: `assertion_truth::builds_by_a_tail_call` added 2000000";
        let named = "held: heapprof: cannot check what `assertion_truth::builds_by_a_tail_call` \
                     holds: `assertion_truth::builds_by_a_tail_call` makes a tail call \
                     (its last instruction jumps to `assertion_truth::fills`)";
        assert!(
            stdout.contains(counted) || stdout.contains(named),
            "{stdout}"
        );
        let counted = "short: heapprof: `builds_by_a_tail_call` added 2000000";
        let named = "short: heapprof: cannot check what `builds_by_a_tail_call` holds";
        assert!(
            stdout.contains(counted) || stdout.contains(named),
            "{stdout}"
        );
        let counted = "dyn: heapprof: `assertion_truth::builds_through_a_dyn_call` added 2000000";
        let named = "dyn: heapprof: cannot check what \
                     `assertion_truth::builds_through_a_dyn_call` holds";
        assert!(
            stdout.contains(counted) || stdout.contains(named),
            "{stdout}"
        );
        return;
    }
    let before = heapprof::snapshot();
    let held = builds_by_a_tail_call(black_box(1_000_000));
    let make: &dyn Fn(usize) -> Vec<u8> = black_box(&|n| black_box(vec![3u8; n]));
    let made = builds_through_a_dyn_call(make, black_box(1_000_000));
    let grown = heapprof::snapshot().delta(&before);
    for (tag, function) in [
        ("held", "assertion_truth::builds_by_a_tail_call"),
        ("short", "builds_by_a_tail_call"),
        ("dyn", "assertion_truth::builds_through_a_dyn_call"),
    ] {
        let message = panic_message(|| grown.assert_inuse_at_most(function, 100_000));
        println!("{tag}: {}", message.as_deref().unwrap_or("passed"));
    }
    drop((held, made));
}
