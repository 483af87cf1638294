//! Stack capture on known call chains, the two unwinders against each
//! other, the frame bound, and the stack hash.
//!
//! The unit-test binary keeps frame pointers (`.cargo/config.toml`), so
//! the frame-pointer walk is the unwinder `decide` picks here unless
//! `HEAPPROF_UNWIND` says otherwise; the tests assume it does not.

use std::collections::HashSet;
use std::hint::black_box;
use std::io::Write as _;

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
    let s = capture(Entered::NONE);
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
    let walk = walk_frame_pointers(Entered::NONE);
    (walk, capture_dwarf(Entered::NONE))
}

/// Whether the frame-pointer walk is chosen, as rule 1 decides: in a
/// build with frame pointers (this repository's, `.cargo/config.toml`) it
/// must be; in one without (a user's usual release build, which `.ci/run`
/// tests too) DWARF must be, and the walk's tests check only that.
/// `HEAPPROF_EXPECT_FP=1` accepts the first build only.
fn frame_pointers_chosen() -> bool {
    decide_early();
    let mode = MODE.load(Relaxed);
    if own_code_keeps_frame_pointers() {
        assert!(
            mode == USE_FP_CHECKED || mode == USE_FP_FORCED,
            "mode {mode}"
        );
        return true;
    }
    assert_ne!(
        std::env::var("HEAPPROF_EXPECT_FP").as_deref(),
        Ok("1"),
        "built without frame pointers: .cargo/config.toml asks for them"
    );
    assert_eq!(mode, USE_DWARF, "built without frame pointers");
    let _ = writeln!(
        std::io::stderr(),
        "built without frame pointers: DWARF is chosen; the walk is not tested"
    );
    false
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
    if !frame_pointers_chosen() {
        return;
    }
    let root_before = crate::thread::with(|l| l.stack.root.get()).unwrap();
    assert_eq!(root_before, (0, 0), "a fresh thread");
    let mut stacks = Vec::new();
    // One call site for both (a loop the compiler cannot unroll), so that
    // the stacks differ only by the unwinder.
    for _ in 0..black_box(2) {
        stacks.push(outer_caller());
    }
    let root = crate::thread::with(|l| l.stack.root.get()).unwrap();
    let (dwarf, walked) = (&stacks[0], &stacks[1]);
    if cfg!(target_env = "musl") {
        // Static musl links the C library, the thread's root with it, into
        // the executable: no return address leaves the program's code, and
        // the chain ends where musl's thread start left no frame record.
        assert_eq!(root, (0, 0), "no root outside the program's code");
    } else {
        assert_ne!(root, (0, 0), "the first capture found the thread's root");
        assert_ne!(dwarf.frames(), walked.frames(), "two unwinders");
        assert_eq!(
            walked.frames().last(),
            Some(&root.1),
            "the walk ends at the root"
        );
    }
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
    if !frame_pointers_chosen() {
        return;
    }
    let (walk, dwarf) = both_unwinders();
    let walked = match walk {
        Walk::Whole(s, _) | Walk::LeftModule { partial: s, .. } => s,
        Walk::Broken => panic!("the chain broke"),
    };
    assert!(walked.frames().len() >= 5, "{:?}", walked.frames());
    assert!(agrees(&walked, &dwarf));
    let mut skipped = Stack::empty(Entered::NONE);
    for (i, &f) in walked.frames().iter().enumerate() {
        if i != 2 {
            skipped.push(f, 0);
        }
    }
    assert!(!agrees(&skipped, &dwarf));
}

/// A frame-pointer walk may reach [`FP_ROOT_FRAMES`] frames further toward
/// the root than DWARF (musl's thread entry has no unwind tables), and
/// DWARF [`ROOT_FRAMES`] further than the walk; no more.
#[test]
fn the_walks_may_end_a_few_frames_apart_at_the_root() {
    let stack = |frames: &[usize]| {
        let mut s = Stack::empty(Entered::NONE);
        for &f in frames {
            s.push(f, 0);
        }
        s
    };
    let program = [0x1010, 0x1020, 0x1030, 0x1040, 0x1050];
    let dwarf = stack(&program);
    let with = |extra: &[usize]| stack(&[&program[..], extra].concat());
    assert!(agrees(&with(&[]), &dwarf));
    assert!(agrees(&with(&[0x9000]), &dwarf), "musl's `start`");
    assert!(!agrees(&with(&[0x9000, 0x9010]), &dwarf));
    let libc_root = [0x7000, 0x7010, 0x7020, 0x7030];
    assert!(agrees(&dwarf, &with(&libc_root)));
    assert!(!agrees(
        &dwarf,
        &with(&[&libc_root[..], &[0x7040]].concat())
    ));
}

/// On stacks deeper than [`MAX_FRAMES`], where both walks are cut at the
/// root end (DWARF's nearer the leaf, as it starts deeper in heapprof),
/// `agrees` compares as far as both go: a whole walk agrees, one that
/// skipped a frame does not.
#[test]
fn a_walk_cut_at_max_frames_agrees_with_dwarf() {
    if !frame_pointers_chosen() {
        return;
    }
    /// Calls `f` `depth` calls deep through two functions in turn, so that
    /// no two neighbouring frames are alike and a skipped one shows.
    #[inline(never)]
    fn zig<R>(depth: usize, f: &mut dyn FnMut() -> R) -> R {
        let r = if depth == 0 { f() } else { zag(depth - 1, f) };
        black_box(depth);
        r
    }
    #[inline(never)]
    fn zag<R>(depth: usize, f: &mut dyn FnMut() -> R) -> R {
        let r = if depth == 0 { f() } else { zig(depth - 1, f) };
        black_box(depth);
        r
    }
    for depth in [MAX_FRAMES - 8, MAX_FRAMES, 2 * MAX_FRAMES] {
        let (walk, dwarf) = zig(depth, &mut both_unwinders);
        let Walk::Whole(walked, _) = walk else {
            panic!("depth {depth}: the chain did not reach the root")
        };
        assert!(agrees(&walked, &dwarf), "depth {depth}");
        let mut skipped = Stack::empty(Entered::NONE);
        for (i, &f) in walked.frames().iter().enumerate() {
            if i != 3 {
                skipped.push(f, 0);
            }
        }
        assert!(!agrees(&skipped, &dwarf), "depth {depth}");
        // A walk that stopped early (a C caller, a broken chain) against a
        // DWARF stack that was cut: not a prefix to excuse.
        let mut stopped = Stack::empty(Entered::NONE);
        for &f in &walked.frames()[..10] {
            stopped.push(f, 0);
        }
        assert!(!agrees(&stopped, &dwarf), "depth {depth}: stopped early");
    }
}

/// The code range the walk may follow is this binary's.
#[test]
fn the_walk_stays_in_this_binarys_code() {
    if !frame_pointers_chosen() {
        return;
    }
    let (start, end) = (CODE_START.load(Relaxed), CODE_END.load(Relaxed));
    for f in [
        the_walk_stays_in_this_binarys_code as *const () as usize,
        capture as *const () as usize,
    ] {
        assert!(start <= f && f < end, "{f:#x} not in {start:#x}..{end:#x}");
    }
    // Static musl links the C library into the executable.
    if !cfg!(target_env = "musl") {
        assert!(!(start..end).contains(&(libc::malloc as *const () as usize)));
    }
}

/// Deeper stacks keep their leaf end, cut at [`MAX_FRAMES`], with either
/// unwinder.
#[test]
fn deep_stacks_stop_at_max_frames() {
    if !frame_pointers_chosen() {
        return;
    }
    let dwarf = recurse(2 * MAX_FRAMES, &mut || capture_dwarf(Entered::NONE));
    let walk = recurse(2 * MAX_FRAMES, &mut || walk_frame_pointers(Entered::NONE));
    let Walk::Whole(walked, _) = walk else {
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
    let mut s = Stack::empty(Entered::NONE);
    for ip in 1..MAX_FRAMES {
        assert!(s.push(ip, 0));
    }
    assert!(!s.push(MAX_FRAMES, 0), "full");
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

/// Both DWARF unwinders from one function: the cached rules, then
/// libgcc's walk.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[inline(never)]
fn both_dwarf_unwinders() -> (Option<Stack>, Stack) {
    let bounds = crate::thread::with(|l| bounds(&l.stack)).unwrap();
    let cached = rules::capture(bounds, Entered::NONE);
    (cached, capture_libgcc(Entered::NONE))
}

/// The cached rules give the frames libgcc gives, on the main thread and
/// on a spawned one, at depths up to past [`MAX_FRAMES`], and again when
/// every rule comes from the cache.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn cached_rules_unwind_as_libgcc_does() {
    fn check(thread: &str) {
        decide_early();
        for depth in [0, 3, 20, 2 * MAX_FRAMES] {
            let mut first: Option<Stack> = None;
            for round in 0..black_box(2) {
                let (cached, libgcc) = recurse(depth, &mut both_dwarf_unwinders);
                let cached =
                    cached.unwrap_or_else(|| panic!("{thread}, depth {depth}: no cached stack"));
                assert!(
                    same_caller_frames(&cached, &libgcc),
                    "{thread}, depth {depth}, round {round}:\ncached {:x?}\nlibgcc {:x?}",
                    cached.frames(),
                    libgcc.frames()
                );
                let names = names(&cached);
                assert!(position(&names, "recurse").is_some(), "{thread}: {names:?}");
                if let Some(first) = &first {
                    assert_eq!(first.frames(), cached.frames(), "{thread}, depth {depth}");
                }
                first = Some(cached);
            }
        }
    }
    check("main test thread");
    std::thread::spawn(|| check("spawned thread"))
        .join()
        .unwrap();
}

/// Both DWARF unwinders' stacks, from below a frame no FDE describes.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn both_dwarf_unwinders_below_a_frame_without_fde() -> (Option<Stack>, Stack) {
    type Both = Option<(Option<Stack>, Stack)>;
    extern "C" fn below(out: *mut u8) {
        let both = both_dwarf_unwinders();
        // SAFETY: `out` is the `Both` passed below, alive and not
        // otherwise borrowed during this call.
        unsafe { *out.cast::<Both>() = Some(both) };
    }
    let mut both: Both = None;
    rules::call_without_fde(below, (&raw mut both).cast());
    both.unwrap()
}

/// The platform's walk is probed for what it does at a frame no FDE
/// describes: libgcc (glibc) reports the frame as the stack's last, LLVM's
/// libunwind (which Rust links into static musl programs) stops before it.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_platform_walk_is_probed_at_a_frame_without_fde() {
    decide_early();
    let expected = if cfg!(target_env = "musl") {
        rules::WithoutFde::Omitted
    } else {
        rules::WithoutFde::Last
    };
    assert_eq!(rules::without_fde(), Some(expected));
}

/// A frame no FDE describes ends the cached walk, as it ends the
/// platform's (with glibc, the frame itself the stack's last; with musl,
/// its caller); the walk is not handed to libgcc (each sample would then
/// pay libgcc's search), and from the cache the second time too.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_frame_without_unwind_information_ends_the_cached_walk() {
    decide_early();
    let (start, end) = rules::code_without_fde();
    let reported = rules::without_fde() == Some(rules::WithoutFde::Last);
    for round in 0..black_box(2) {
        let (cached, libgcc) = both_dwarf_unwinders_below_a_frame_without_fde();
        let cached = cached.unwrap_or_else(|| panic!("round {round}: no cached stack"));
        let last = *cached.frames().last().unwrap();
        assert!(
            (start..end).contains(&last) == reported,
            "round {round}: the last frame {last:#x} against {start:#x}..{end:#x}: {:x?}",
            cached.frames()
        );
        assert!(
            same_caller_frames(&cached, &libgcc),
            "round {round}:\ncached {:x?}\nlibgcc {:x?}",
            cached.frames(),
            libgcc.frames()
        );
    }
}

/// The cached walk is left to threads with stack to spare: a thread just
/// over the bound to build a slot's caches builds them and walks, one
/// just over the bound to walk walks once they are built, and a small
/// thread gets no cached stack (its caller asks libgcc) even when the slot
/// it would take is built. Run in a child process: the overflow these
/// bounds guard against aborts the process.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_cached_walk_is_left_to_threads_with_stack_to_spare() {
    use heapprof_testkit::child::{is_child, run_child};
    const NAME: &str =
        "record::stack::tests::the_cached_walk_is_left_to_threads_with_stack_to_spare";
    /// What a thread uses before it reaches `rules::capture`, with room.
    const BEFORE_CAPTURE: usize = 32 << 10;
    if !is_child() {
        run_child(NAME, &[]);
        return;
    }
    decide_early();
    let cached_walk_on = |bytes: usize| {
        let (cached, libgcc) = std::thread::Builder::new()
            .stack_size(bytes)
            .spawn(|| recurse(3, &mut both_dwarf_unwinders))
            .expect("spawn a thread")
            .join()
            .unwrap_or_else(|_| panic!("the thread of {bytes} bytes"));
        // Named here: symbolizing takes more stack than a small thread has.
        assert!(position(&names(&libgcc), "recurse").is_some());
        cached.is_some()
    };
    let builds = rules::STACK_TO_BUILD_A_CACHE + BEFORE_CAPTURE;
    assert!(cached_walk_on(builds), "no slot built on {builds} bytes");
    rules::build_every_slot();
    let walks = rules::STACK_TO_WALK_CACHED + BEFORE_CAPTURE;
    assert!(cached_walk_on(walks), "no cached walk on {walks} bytes");
    for kib in [16, 32] {
        assert!(!cached_walk_on(kib << 10), "a cached walk on {kib} KiB");
    }
}

/// The check that turns the cached rules off rejects a stack that lost a
/// frame or has one libgcc does not.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_cached_stack_that_differs_from_libgcc_is_caught() {
    decide_early();
    let (cached, libgcc) = recurse(5, &mut both_dwarf_unwinders);
    let cached = cached.expect("a cached stack");
    assert!(same_caller_frames(&cached, &libgcc));
    let mut skipped = Stack::empty(Entered::NONE);
    let mut extra = Stack::empty(Entered::NONE);
    for (i, &f) in cached.frames().iter().enumerate() {
        if i != 4 {
            skipped.push(f, 0);
        }
        extra.push(f, 0);
        if i == 4 {
            extra.push(f + 1, 0);
        }
    }
    assert!(!same_caller_frames(&skipped, &libgcc));
    assert!(!same_caller_frames(&extra, &libgcc));
}

/// The objects whose rules are kept: this binary and the C library, whose
/// code the frames of every Rust thread's stack are in.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn the_cached_rules_cover_this_binary_and_the_c_library() {
    decide_early();
    let own = capture as *const () as usize;
    let c_library = libc::malloc as *const () as usize;
    for address in [own, c_library] {
        assert!(rules::covers(address), "{address:#x}");
    }
    assert!(!rules::covers(0x1000));
}

/// Marks this frame as where heapprof is entered, then captures from a
/// callee with `capture`.
#[inline(never)]
fn marked(capture: &mut dyn FnMut(Entered) -> Stack) -> Stack {
    let entered = Entered::here();
    let s = below_the_mark(entered, capture);
    black_box(&s);
    s
}

#[inline(never)]
fn below_the_mark(entered: Entered, capture: &mut dyn FnMut(Entered) -> Stack) -> Stack {
    let s = capture(entered);
    black_box(&s);
    s
}

#[inline(never)]
fn calls_the_marked_function(capture: &mut dyn FnMut(Entered) -> Stack) -> Stack {
    let s = marked(capture);
    black_box(&s);
    s
}

/// Every unwinder leaves out the marked function and what it calls: the
/// stack starts at the return address into its caller.
#[test]
fn every_unwinder_starts_at_the_caller_of_the_marked_function() {
    fn check(unwinder: &str, capture: &mut dyn FnMut(Entered) -> Stack) {
        // Twice: a thread's first frame-pointer stack is unwound with DWARF.
        for _ in 0..black_box(2) {
            let stack = calls_the_marked_function(capture);
            let names = names(&stack);
            assert_eq!(
                position(&names, "calls_the_marked_function"),
                Some(0),
                "{unwinder}: {names:?}"
            );
            for own in [
                "marked",
                "below_the_mark",
                "capture_libgcc",
                "walk_frame_pointers",
            ] {
                assert_eq!(position(&names, own), None, "{unwinder}: {names:?}");
            }
        }
    }
    // The walk needs frame pointers; a build without them (which `capture`
    // then unwinds with DWARF) checks the others.
    if frame_pointers_chosen() {
        check(
            "frame pointers",
            &mut |entered| match walk_frame_pointers(entered) {
                Walk::Whole(s, _) | Walk::LeftModule { partial: s, .. } => s,
                Walk::Broken => panic!("the walk broke"),
            },
        );
    }
    check("capture", &mut capture);
    // The checks between unwinders compare walks from one mark, on a fresh
    // thread's shallow stack too: two of one call site agree.
    let compare = || {
        let frame_pointers = |entered| match walk_frame_pointers(entered) {
            Walk::Whole(s, _) | Walk::LeftModule { partial: s, .. } => s,
            Walk::Broken => panic!("the walk broke"),
        };
        if own_code_keeps_frame_pointers() {
            let mut two = Vec::new();
            for which in 0..black_box(2) {
                two.push(calls_the_marked_function(&mut |entered| {
                    if which == 0 {
                        frame_pointers(entered)
                    } else {
                        capture_dwarf(entered)
                    }
                }));
            }
            assert!(
                agrees(&two[0], &two[1]),
                "{:x?}",
                (two[0].frames(), two[1].frames())
            );
        }
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            let bounds = crate::thread::with(|l| bounds(&l.stack)).unwrap();
            let mut two = Vec::new();
            for which in 0..black_box(2) {
                two.push(calls_the_marked_function(&mut |entered| {
                    if which == 0 {
                        rules::capture(bounds, entered).expect("the cached walk")
                    } else {
                        capture_libgcc(entered)
                    }
                }));
            }
            assert!(same_caller_frames(&two[0], &two[1]));
        }
    };
    compare();
    std::thread::spawn(compare).join().unwrap();
    // The shallowest: a thread the C library starts, whose function calls
    // the marked one (three frames down to `start_thread`).
    if own_code_keeps_frame_pointers() {
        extern "C" fn shallow(_: *mut libc::c_void) -> *mut libc::c_void {
            drop(black_box(vec![0u8; 16])); // takes the thread in
            let mut two = Vec::new();
            for which in 0..black_box(2) {
                two.push(calls_the_marked_function(&mut |entered| {
                    if which == 0 {
                        match walk_frame_pointers(entered) {
                            Walk::Whole(s, _) | Walk::LeftModule { partial: s, .. } => s,
                            Walk::Broken => panic!("the walk broke"),
                        }
                    } else {
                        capture_dwarf(entered)
                    }
                }));
            }
            let agreed = agrees(&two[0], &two[1]);
            Box::into_raw(Box::new(agreed)).cast()
        }
        // An integer with glibc, a pointer with musl.
        let mut thread = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
        let mut result: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: `shallow` has the start routine's signature and takes no
        // argument; `thread` is initialized by a create that returned 0;
        // the thread is joined below, and its result is the box it made.
        let agreed = unsafe {
            assert_eq!(
                libc::pthread_create(
                    thread.as_mut_ptr(),
                    std::ptr::null(),
                    shallow,
                    std::ptr::null_mut()
                ),
                0
            );
            assert_eq!(libc::pthread_join(thread.assume_init(), &mut result), 0);
            *Box::from_raw(result.cast::<bool>())
        };
        assert!(agreed, "a shallow stack's two walks agree");
    }
    check("libgcc", &mut capture_libgcc);
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    check("cached rules", &mut |entered| {
        let bounds = crate::thread::with(|l| bounds(&l.stack)).unwrap();
        rules::capture(bounds, entered).expect("the cached walk on the test's thread")
    });
}
