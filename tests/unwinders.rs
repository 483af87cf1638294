//! The two unwinders give the same stacks. Runs itself twice as a child,
//! with `HEAPPROF_UNWIND=dwarf` and with the default `auto`, at rate 1, and
//! compares the stacks of a known call chain. With `HEAPPROF_EXPECT_FP=1`
//! (set by `.ci/run`: this repository builds with frame pointers, see
//! `.cargo/config.toml`) auto must also have chosen frame pointers; with
//! `HEAPPROF_EXPECT_FP=0` (`.ci/run`'s build without them) the cached
//! DWARF rules.

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
    match std::env::var("HEAPPROF_EXPECT_FP").as_deref() {
        Ok("1") => assert!(
            auto_mode.contains("frame pointers"),
            "auto chose {auto_mode}"
        ),
        Ok("0") => assert!(
            auto_mode.contains("rules cached by address"),
            "auto chose {auto_mode}"
        ),
        _ => {}
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

/// Calls `f` `depth` calls deep.
#[inline(never)]
fn nest(depth: usize, f: &mut dyn FnMut()) {
    if depth == 0 {
        f()
    } else {
        nest(depth - 1, f)
    }
    std::hint::black_box(depth);
}

/// How many stacks the child below samples: enough that libgcc's walk
/// checks the cached rules' stacks several times over (one stack in 1 024
/// is compared).
const CHECKED_SAMPLES: usize = 8 * 1024;

#[test]
fn child_samples_many_stacks() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let mut kept = Vec::new();
    let on_this_thread = |kept: &mut Vec<Vec<u8>>| {
        for i in 0..CHECKED_SAMPLES / 2 {
            nest(i % 90, &mut || kept.push(vec![0u8; 16 + i % 64]));
        }
    };
    // This child runs its test on its main thread (one test thread): the
    // stacks end in the C library's start-up code and the executable's
    // `_start`; a spawned thread's end in `start_thread` and `clone3`.
    on_this_thread(&mut kept);
    let spawned = std::thread::spawn(move || {
        let mut kept = Vec::new();
        on_this_thread(&mut kept);
        kept.len()
    });
    let n = spawned.join().unwrap();
    let p = take_profile();
    let comments: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    println!(
        "UNWINDER={}",
        comments.iter().find(|c| c.contains("unwound")).unwrap()
    );
    println!("SAMPLED={}", kept.len() + n);
}

/// The cached DWARF rules give the stacks libgcc gives: a child samples
/// thousands of stacks of many depths on two threads, with one in 1 024
/// compared against libgcc's walk, which would turn the cache off and say
/// so on stderr.
#[test]
fn cached_rules_match_libgcc_over_many_stacks() {
    let (stdout, stderr) = run_child("child_samples_many_stacks", &[("HEAPPROF_UNWIND", "dwarf")]);
    assert!(
        !stderr.contains("disagreed"),
        "the cached rules disagreed with libgcc:\n{stderr}"
    );
    assert!(
        stdout.contains("UNWINDER=") && stdout.contains("rules cached by address"),
        "the cached rules were not in use at the end:\n{stdout}"
    );
}

/// Signals the child below has handled.
static HANDLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Allocates and frees a block: a sample at rate 1, unwound from inside
/// a signal handler, through the kernel's signal frame, into whatever
/// the signal interrupted.
extern "C" fn allocate_in_handler(_: libc::c_int) {
    std::hint::black_box(vec![0u8; 64]);
    HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Signals handled in the child below: every stack sampled there is a
/// handler's, so several are compared with libgcc's walk.
const HANDLED_SAMPLES: usize = 4 * 1024;

#[test]
fn child_samples_in_signal_handlers() {
    if !is_child() {
        return;
    }
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: the handler only allocates and frees through the global
    // allocator and bumps an atomic; it interrupts this thread's loop
    // below, which allocates nothing, so no allocator lock is held.
    unsafe {
        heapprof_testkit::signals::install(libc::SIGUSR1, allocate_in_handler, libc::SA_RESTART)
    };
    heapprof::set_sample_rate(1);
    // SAFETY: `pthread_self` has no preconditions.
    let target = unsafe { libc::pthread_self() } as usize;
    let signaller = std::thread::spawn(move || {
        while HANDLED.load(Relaxed) < HANDLED_SAMPLES {
            // SAFETY: `target` is this process's main test thread, which
            // outlives this thread (it joins it).
            unsafe { libc::pthread_kill(target as libc::pthread_t, libc::SIGUSR1) };
            std::thread::yield_now();
        }
    });
    // Interrupted in the program's code, the C library's and the vDSO's
    // (`clock_gettime`), none of which allocates.
    while HANDLED.load(Relaxed) < HANDLED_SAMPLES {
        std::hint::black_box(std::time::Instant::now());
    }
    heapprof::set_sample_rate(0);
    signaller.join().unwrap();
    let p = take_profile();
    let comments: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    println!(
        "UNWINDER={}",
        comments.iter().find(|c| c.contains("unwound")).unwrap()
    );
}

/// A sample taken in a signal handler is unwound through the kernel's
/// signal frame, which libgcc's walk reads and the cached rules do not:
/// such a stack goes to libgcc whole, so that the periodic comparison
/// finds no difference and the cached rules stay in use.
#[test]
fn cached_rules_leave_signal_frames_to_libgcc() {
    let (stdout, stderr) = run_child(
        "child_samples_in_signal_handlers",
        &[("HEAPPROF_UNWIND", "dwarf")],
    );
    assert!(
        !stderr.contains("disagreed"),
        "the cached rules disagreed with libgcc:\n{stderr}"
    );
    assert!(
        stdout.contains("rules cached by address"),
        "the cached rules were not in use at the end:\n{stdout}"
    );
}

/// In frame-pointer builds too, many stacks of many depths on two threads,
/// each compared with DWARF the first time it is seen, agree with it: the
/// comparison does not turn frame pointers off for nothing.
#[test]
fn frame_pointer_stacks_agree_with_dwarf_over_many_stacks() {
    let (stdout, stderr) = run_child("child_samples_many_stacks", &[("HEAPPROF_UNWIND", "auto")]);
    assert!(
        !stderr.contains("disagreed"),
        "an unwinder disagreed with another:\n{stderr}"
    );
    if std::env::var("HEAPPROF_EXPECT_FP").as_deref() == Ok("1") {
        assert!(
            stdout.contains("unwound with frame pointers"),
            "frame pointers were not in use at the end:\n{stdout}"
        );
    }
}

// A function that keeps no frame pointer and calls back into Rust, as C
// code built without them does: it leaves `rbp` as its caller set it, so a
// walk of the frame-pointer chain from the callback skips its caller. Its
// unwind table entry (the `.cfi_` lines) lets DWARF walk through it.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".globl heapprof_test_no_frame_pointer",
    ".type heapprof_test_no_frame_pointer,@function",
    "heapprof_test_no_frame_pointer:",
    ".cfi_startproc",
    "sub rsp, 8",
    ".cfi_adjust_cfa_offset 8",
    "call rdi",
    "add rsp, 8",
    ".cfi_adjust_cfa_offset -8",
    "ret",
    ".cfi_endproc",
    ".size heapprof_test_no_frame_pointer, .-heapprof_test_no_frame_pointer",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    /// Calls `f` (the assembly above).
    fn heapprof_test_no_frame_pointer(f: extern "C" fn());
}

/// The block the callback below allocates: its size finds its sample.
#[cfg(target_arch = "x86_64")]
const CALLED_BACK_BYTES: usize = 5432;

/// Blocks allocated by the callback, kept live for the profile.
#[cfg(target_arch = "x86_64")]
static CALLED_BACK: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

#[inline(never)]
#[cfg(target_arch = "x86_64")]
extern "C" fn allocate_in_callback() {
    let block = std::hint::black_box(vec![0u8; CALLED_BACK_BYTES]);
    CALLED_BACK.lock().unwrap().push(block);
}

/// Calls [`allocate_in_callback`] through the function without a frame
/// pointer: the frame a frame-pointer walk skips.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn call_through_code_without_frame_pointers() {
    // SAFETY: the assembly keeps the stack aligned for the call, calls its
    // argument, a valid `extern "C" fn()`, and returns.
    unsafe { heapprof_test_no_frame_pointer(allocate_in_callback) };
    std::hint::black_box(());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn child_calls_back_through_code_without_frame_pointers() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    // Past the first stacks, which are all compared: only a stack's first
    // sighting has it compared now.
    let warm: Vec<Vec<u8>> = (0..200).map(|i| vec![0u8; 8 + i]).collect();
    call_through_code_without_frame_pointers();
    let p = take_profile();
    let site = p
        .sample
        .iter()
        .find(|s| s.value[3] == CALLED_BACK_BYTES as i64)
        .expect("the callback's site");
    let names: Vec<String> = stack_names(&p, site)
        .into_iter()
        .take_while(|n| !n.contains("child_calls_back"))
        .collect();
    println!("STACK={}", names.join(" < "));
    drop(warm);
}

/// A C function without a frame pointer that calls back into Rust, rarely
/// and after the program's first stacks: the callback's first stack is
/// compared with DWARF, which sees the C function's caller that the
/// frame-pointer chain skips, and the sample keeps DWARF's stack.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_callback_through_code_without_frame_pointers_keeps_its_callers() {
    let (stdout, stderr) = run_child(
        "child_calls_back_through_code_without_frame_pointers",
        &[("HEAPPROF_UNWIND", "auto")],
    );
    let stack = stdout
        .lines()
        .find_map(|l| l.split_once("STACK=").map(|(_, stack)| stack))
        .unwrap_or_else(|| panic!("no stack in {stdout}"));
    let order = [
        "allocate_in_callback",
        "heapprof_test_no_frame_pointer",
        "call_through_code_without_frame_pointers",
    ];
    let at: Vec<Option<usize>> = order.iter().map(|f| stack.find(f)).collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "the callback's stack lost a caller: {stack}"
    );
    if std::env::var("HEAPPROF_EXPECT_FP").as_deref() == Ok("1") {
        assert!(
            stderr.contains("disagreed with the DWARF unwinder"),
            "frame pointers were in use, and nothing said they were left:\n{stderr}"
        );
    }
}
