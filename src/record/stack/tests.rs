//! Stack capture on known call chains, the two unwinders against each
//! other, the frame bound, and the stack hash.
//!
//! The unit-test binary keeps frame pointers (`.cargo/config.toml`), so
//! the frame-pointer walk is the unwinder `decide` picks here unless
//! `HEAPPROF_UNWIND` says otherwise; the tests assume it does not.

use std::collections::HashSet;
use std::hint::black_box;

use super::*;

/// The names of each frame of `stack`, leaf first (several for an
/// address where calls were inlined), without their hashes.
fn names(stack: &Stack) -> Vec<Vec<String>> {
    stack
        .frames()
        .iter()
        .map(|&addr| {
            let mut names = Vec::new();
            backtrace::resolve(addr as *mut std::ffi::c_void, |symbol| {
                names.extend(symbol.name().map(|n| format!("{n:#}")));
            });
            names
        })
        .collect()
}

/// The index of the first frame with a name that ends in `suffix`.
fn position(names: &[Vec<String>], suffix: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| n.iter().any(|n| n.ends_with(suffix)))
}

#[inline(never)]
fn outer_caller() -> Stack {
    let s = inner_callee();
    black_box(&s);
    s
}

#[inline(never)]
fn inner_callee() -> Stack {
    let s = capture();
    black_box(&s);
    s
}

/// Calls `f` `depth` calls deep.
#[inline(never)]
fn recurse<R>(depth: usize, f: &mut dyn FnMut() -> R) -> R {
    let r = if depth == 0 {
        f()
    } else {
        recurse(depth - 1, f)
    };
    black_box(depth);
    r
}

#[inline(never)]
fn both_unwinders() -> (Walk, Stack) {
    let walk = walk_frame_pointers();
    (walk, capture_dwarf())
}

fn assert_frame_pointers_chosen() {
    assert!(
        own_code_keeps_frame_pointers(),
        "built without frame pointers: .cargo/config.toml asks for them"
    );
    decide_early();
    let mode = MODE.load(Relaxed);
    assert!(
        mode == USE_FP_CHECKED || mode == USE_FP_FORCED,
        "mode {mode}"
    );
}

/// The first capture on a thread unwinds with DWARF and learns where the
/// thread's stack ends; the next walks the frame pointers to there. Both
/// hold the call chain, callee before caller, and agree.
#[test]
fn capture_holds_the_call_chain_with_either_unwinder() {
    // On a thread of its own, which has not captured a stack yet.
    std::thread::spawn(chain_on_a_fresh_thread).join().unwrap();
}

fn chain_on_a_fresh_thread() {
    assert_frame_pointers_chosen();
    let root_before = crate::thread::with(|l| l.stack.root.get()).unwrap();
    assert_eq!(root_before, (0, 0), "a fresh thread");
    let mut stacks = Vec::new();
    // One call site for both (a loop the compiler cannot unroll), so that
    // the stacks differ only by the unwinder.
    for _ in 0..black_box(2) {
        stacks.push(outer_caller());
    }
    let root = crate::thread::with(|l| l.stack.root.get()).unwrap();
    assert_ne!(root, (0, 0), "the first capture found the thread's root");
    let (dwarf, walked) = (&stacks[0], &stacks[1]);
    assert_ne!(dwarf.frames(), walked.frames(), "two unwinders");
    assert_eq!(
        walked.frames().last(),
        Some(&root.1),
        "the walk ends at the root"
    );
    for stack in [dwarf, walked] {
        let names = names(stack);
        let inner = position(&names, "inner_callee").expect("inner_callee");
        let outer = position(&names, "outer_caller").expect("outer_caller");
        let test = position(&names, "chain_on_a_fresh_thread").expect("the thread's function");
        assert!(inner < outer && outer < test, "{names:?}");
    }
    assert!(agrees(walked, dwarf));
}

/// `agrees` accepts the frame-pointer walk of a chain that keeps every
/// frame, and rejects one that skipped a frame, as a function without a
/// frame pointer would make it.
#[test]
fn a_walk_agrees_with_dwarf_unless_it_skips_a_frame() {
    assert_frame_pointers_chosen();
    let (walk, dwarf) = both_unwinders();
    let walked = match walk {
        Walk::Whole(s) | Walk::LeftModule { partial: s, .. } => s,
        Walk::Broken => panic!("the chain broke"),
    };
    assert!(walked.frames().len() >= 5, "{:?}", walked.frames());
    assert!(agrees(&walked, &dwarf));
    let mut skipped = Stack::empty();
    for (i, &f) in walked.frames().iter().enumerate() {
        if i != 2 {
            skipped.push(f);
        }
    }
    assert!(!agrees(&skipped, &dwarf));
}

/// The code range the walk may follow is this binary's.
#[test]
fn the_walk_stays_in_this_binarys_code() {
    assert_frame_pointers_chosen();
    let (start, end) = (CODE_START.load(Relaxed), CODE_END.load(Relaxed));
    for f in [
        the_walk_stays_in_this_binarys_code as *const () as usize,
        capture as *const () as usize,
    ] {
        assert!(start <= f && f < end, "{f:#x} not in {start:#x}..{end:#x}");
    }
    assert!(!(start..end).contains(&(libc::malloc as *const () as usize)));
}

/// Deeper stacks keep their leaf end, cut at [`MAX_FRAMES`], with either
/// unwinder.
#[test]
fn deep_stacks_stop_at_max_frames() {
    assert_frame_pointers_chosen();
    let dwarf = recurse(2 * MAX_FRAMES, &mut capture_dwarf);
    let walk = recurse(2 * MAX_FRAMES, &mut walk_frame_pointers);
    let Walk::Whole(walked) = walk else {
        panic!("a full walk is whole")
    };
    for stack in [&dwarf, &walked] {
        assert_eq!(stack.frames().len(), MAX_FRAMES);
        let names = names(stack);
        assert!(
            names.last().unwrap().iter().any(|n| n.contains("recurse")),
            "the root end is cut: {names:?}"
        );
        assert_eq!(position(&names, "deep_stacks_stop_at_max_frames"), None);
    }
}

#[test]
fn push_stops_at_max_frames() {
    let mut s = Stack::empty();
    for ip in 1..MAX_FRAMES {
        assert!(s.push(ip));
    }
    assert!(!s.push(MAX_FRAMES), "full");
    assert_eq!(s.frames(), (1..=MAX_FRAMES).collect::<Vec<_>>());
}

#[test]
fn hash_is_deterministic_and_sees_order_and_length() {
    let a = [0x1000, 0x2000, 0x3000];
    assert_eq!(hash(&a), hash(&[0x1000, 0x2000, 0x3000]));
    assert_ne!(hash(&a), hash(&[0x3000, 0x2000, 0x1000]));
    assert_ne!(hash(&a), hash(&a[..2]));
    assert_ne!(hash(&[]), hash(&[0]));
    assert_ne!(hash(&[0]), hash(&[0, 0]));
    // The site table picks its stripe from bits 32 and up: stacks that
    // differ in one frame spread over all 64.
    let stripes: HashSet<u64> = (0..4096)
        .map(|i| (hash(&[0x5000 + 16 * i, 0x9000]) >> 32) % 64)
        .collect();
    assert_eq!(stripes.len(), 64);
}
