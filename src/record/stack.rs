//! Stack capture on a sampled allocation: raw return addresses only.
//!
//! Nothing is symbolized here (that happens when a profile is written, see
//! `output/symbolize.rs`), and no lock of ours is held: the unwinder may take the
//! dynamic loader's lock, and a profiler lock held across it is how
//! profilers deadlock.
//!
//! # Two unwinders, and the rule that picks one
//!
//! * **DWARF**: right for any build. libgcc's `_Unwind_Backtrace` (through
//!   `backtrace`) interprets the unwind tables for every frame, about 0.1
//!   µs a frame: most of the cost of a sample. So stacks whose frames all
//!   lie in objects that are never unloaded (the executable, the C
//!   library) are unwound with each return address's rule cached instead
//!   (`stack/rules.rs`), a few times faster; libgcc unwinds the others,
//!   and one stack in `RECHECK_EVERY` for comparison.
//! * **Frame pointers**: follows the `rbp` chain, a few nanoseconds a
//!   frame, but right only through functions that keep a frame pointer. A
//!   function that keeps none does not break the chain: it is skipped, and
//!   the allocation is charged to the nearest caller that keeps one. That
//!   is a wrong answer that looks right, so the walk is used only where the
//!   facts below say no frame can be skipped.
//!
//! The rule, decided once ([`decide`]) and then checked on every stack:
//!
//! 1. **The code heapprof is linked into must keep frame pointers.** Cargo
//!    compiles heapprof with the same `RUSTFLAGS` as the program's crates
//!    (`-C force-frame-pointers=yes`, or none), and rustup's standard
//!    library keeps them either way. So [`own_code_keeps_frame_pointers`]
//!    looks at heapprof's own compiled code: a probe function reads its
//!    own frame record and checks that it holds its return address. A
//!    debug `cargo test` or a release build without the flag fails the
//!    probe, and every stack is unwound with DWARF. Nothing about the
//!    first sample, or any other, can change that answer.
//! 2. **Every return address the walk records lies in that module's code**
//!    (the executable, or the shared object heapprof is part of), except
//!    the thread's root: the C library's `start_thread` or
//!    `__libc_start_call_main`. A return address into another module (a C
//!    library built without frame pointers calling back into Rust, a
//!    signal handler's return to the kernel trampoline) ends the walk, and
//!    that stack is unwound with DWARF instead. The first time a thread
//!    reaches its root, DWARF confirms it is the root (at most
//!    `ROOT_FRAMES` C start-up frames below it) and the thread remembers
//!    the frame's stack slot and return address, so later stacks ending
//!    there need no DWARF walk.
//! 3. **A chain that breaks** (a frame outside the thread's stack,
//!    misaligned, or not above the previous one) before reaching a root is
//!    unwound with DWARF too.
//!
//! What these rules cannot see: C or assembly code compiled *into the
//! same module* without frame pointers (a C library built by its own
//! build system, a prebuilt archive) that calls back into Rust, which then
//! allocates: the walk skips the C function's caller. So a frame-pointer
//! stack is compared with DWARF the first time it is seen (a skipped
//! frame makes a stack that no other path makes), besides each of the
//! first `RECHECK_FIRST` and every `RECHECK_EVERY`th, and a disagreement
//! switches the process to DWARF for good, with one line on stderr; the
//! stack that disagreed is DWARF's.
//!
//! `HEAPPROF_UNWIND=dwarf` forces DWARF. `HEAPPROF_UNWIND=frame-pointers`
//! skips the comparisons, but not rule 1: on code without frame
//! pointers it says so on stderr and uses DWARF, rather than record stacks
//! without the program's frames.

use crate::config::Unwinder;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod rules;
use crate::thread::StackFacts;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The deepest stack we keep, as Go's `maxStack`-like bound: deeper stacks
/// are truncated at the root end, their last frame replaced by [`CUT`].
pub(crate) const MAX_FRAMES: usize = 64;

/// Where the program entered heapprof's slow path: a stack address in the
/// frame of the first function an allocation calls out of line
/// ([`Entered::here`]). A walk leaves out the return addresses into that
/// function and into the ones it calls, heapprof's own, so a stack starts
/// where the fast path is inlined (`__rust_alloc` in an optimized build,
/// or its caller when it was reached by a tail call; heapprof's
/// `GlobalAlloc::alloc` in a debug build) in every profile, named or not
/// (`HEAPPROF_SYMBOLIZE=off` leaves the names to a server, which cannot
/// tell heapprof's frames from the program's), and they take none of the
/// [`MAX_FRAMES`].
///
/// A return address is heapprof's when the frame of the function it
/// returns from (that frame ends at the function's canonical frame
/// address, the stack pointer before its call) lies at or below the mark:
/// the stack grows down, so those are the marked function's callees, and
/// the return address from the marked function itself is the first one
/// kept. Only the leading run of such frames goes: once one is kept, every
/// later one is, whatever stack it is on (a signal handler's frames and
/// the frames it interrupted may lie on two).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entered(usize);

impl Entered {
    /// Keeps every frame: for walks that are compared with each other.
    pub(crate) const NONE: Entered = Entered(0);

    /// The mark, in the frame of the function this is inlined into.
    #[inline(always)]
    pub(crate) fn here() -> Entered {
        let marker = 0u8;
        Entered(std::hint::black_box(&marker) as *const u8 as usize)
    }
}

/// A captured stack: return addresses, leaf first.
pub(crate) struct Stack {
    frames: [usize; MAX_FRAMES],
    len: usize,
    /// The frames to leave out ([`Entered`]).
    entered: usize,
    /// A frame has been kept: every later one is.
    reached: bool,
}

impl Stack {
    const fn empty(entered: Entered) -> Stack {
        Stack {
            frames: [0; MAX_FRAMES],
            len: 0,
            entered: entered.0,
            reached: entered.0 == 0,
        }
    }

    pub(crate) fn frames(&self) -> &[usize] {
        &self.frames[..self.len]
    }

    /// Appends return address `ip`, which the function whose frame ends at
    /// `callee_cfa` returns to (0 for a walk's first address, the walk's
    /// own), unless it is heapprof's own ([`Entered`]); false when the
    /// stack is full.
    fn push(&mut self, ip: usize, callee_cfa: usize) -> bool {
        if !self.reached {
            if callee_cfa <= self.entered {
                return true;
            }
            self.reached = true;
        }
        self.frames[self.len] = ip;
        self.len += 1;
        self.len < MAX_FRAMES
    }
}

/// The stack a sample needs left on its thread, where it is recorded, to
/// be unwound: libgcc's walk, then the tables, which may grow (and
/// allocate through the program's allocator, heapprof's own frames
/// again), take about 8 KiB there in an unoptimized build and 5 KiB in an
/// optimized one. With less, the sample is recorded under [`NOT_UNWOUND`]
/// (see `record::record`); the cached walk needs more, and
/// [`capture_dwarf`] checks for it before calling it.
pub(crate) const STACK_TO_UNWIND: usize = 12 << 10;

/// The stack a sample not unwound needs left to grow the tables: about
/// 6 KiB unoptimized, 2 KiB optimized. With less, it grows nothing.
pub(crate) const STACK_TO_GROW: usize = 8 << 10;

/// The stack a sample needs left to be recorded at all, not unwound (the
/// site's lock and counts, the set's, the peak's), where the slow path
/// asks ([`room_to_record`]): about 640 bytes more than the slow path
/// needs to end a countdown without a sample, in optimized and
/// unoptimized builds alike, measured on a signal handler's alternate
/// stack (`tests/small_stack.rs`), with a margin for the frames of an
/// unoptimized build. With less left (a handler on an alternate stack of a
/// few KiB) the sample is dropped: the allocation is counted in `stats()`
/// and in no profile.
pub(crate) const STACK_TO_RECORD: usize = if cfg!(debug_assertions) {
    4 << 10
} else {
    2 << 10
};

/// Whether the stack left, where the slow path asks, has room to record a
/// sample ([`STACK_TO_RECORD`]); true when the stack's bounds are unknown.
#[inline]
pub(crate) fn room_to_record() -> bool {
    left().is_none_or(|left| left >= STACK_TO_RECORD)
}

/// The only frame of a sample recorded without unwinding: an address where
/// no code lies, which symbolization names for what happened.
pub(crate) const NOT_UNWOUND: usize = 1;

/// The root-most frame of a stack that was cut at [`MAX_FRAMES`], in place
/// of the frame the walk stopped at: an address where no code lies, named
/// so that a profile shows that the callers are missing.
pub(crate) const CUT: usize = 2;

/// The addresses of frames of heapprof's own making, sorted.
pub(crate) const OWN_FRAMES: [usize; 2] = [NOT_UNWOUND, CUT];

const UNDECIDED: u8 = 0;
const USE_DWARF: u8 = 1;
/// Frame pointers, checked against DWARF ([`due_for_check`]).
const USE_FP_CHECKED: u8 = 2;
/// Frame pointers, forced by the configuration: no comparison with DWARF.
const USE_FP_FORCED: u8 = 3;
static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
static SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Every this many frame-pointer stacks, one is compared with DWARF.
const RECHECK_EVERY: u64 = 1024;
/// The first this many frame-pointer stacks are all compared with DWARF:
/// a function without a frame pointer on a common path (a module built
/// with other flags) is caught before it spoils more than a few stacks.
const RECHECK_FIRST: u64 = 64;
/// The C start-up frames a thread's stack may have below its last Rust
/// frame (`__libc_start_call_main`, `__libc_start_main_impl`, `_start`;
/// `start_thread`, `clone3`), which keep no frame pointer.
const ROOT_FRAMES: usize = 4;
/// Frames a frame-pointer walk may have beyond DWARF's at the root: musl's
/// thread entry (`start`), linked into a static executable without unwind
/// tables, ends libgcc's walk at its callee while its frame record is
/// still in the chain.
const FP_ROOT_FRAMES: usize = 1;

/// Frame-pointer stacks seen so far, one bit per hash of a stack's
/// frames ([`due_for_check`]) in `SEEN_WORDS` words of 64. Once about as
/// many distinct stacks were seen as there are bits, most new ones find
/// their bit set and are left to the periodic check.
const SEEN_WORDS: usize = 1 << 10;
static SEEN: [AtomicU64; SEEN_WORDS] = [const { AtomicU64::new(0) }; SEEN_WORDS];

/// The sum of `stack`'s frames, which [`due_for_check`] knows a stack by:
/// one add a frame, since stacks run to dozens of frames and this runs on
/// every frame-pointer sample. Order is lost, which only makes stacks of
/// the same frames share a bit.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn frames_sum(stack: &Stack) -> u64 {
    stack
        .frames()
        .iter()
        .fold(0u64, |h, &f| h.wrapping_add(f as u64))
}

/// Whether the frame-pointer stack whose [`frames_sum`] is `sum` is to be
/// compared with DWARF: each
/// of the first [`RECHECK_FIRST`], every [`RECHECK_EVERY`]th, and the first
/// sighting of each stack. A function without a frame pointer between two
/// that keep one (C code calling back into Rust) makes stacks no other
/// path makes, so the first of them is compared, however rare the path.
fn due_for_check(sum: u64) -> bool {
    let n = SAMPLES.fetch_add(1, Relaxed);
    if n < RECHECK_FIRST || n % RECHECK_EVERY == RECHECK_EVERY - 1 {
        return true;
    }
    let hash = (sum ^ (sum >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let bit = 1u64 << (hash >> 58);
    let word = &SEEN[(hash as usize >> 16) % SEEN_WORDS];
    word.fetch_or(bit, Relaxed) & bit == 0
}

/// The code of the module heapprof is linked into, as [start, end):
/// where a frame-pointer walk may go (rule 2). Set by [`decide`].
static CODE_START: AtomicUsize = AtomicUsize::new(0);
static CODE_END: AtomicUsize = AtomicUsize::new(0);

/// Captures the calling thread's stack from where the program `entered`
/// heapprof; one cut at [`MAX_FRAMES`] ends in [`CUT`].
///
/// Its first frames are the allocator's entry point and the standard
/// library's allocation machinery; they are trimmed at write time by name,
/// which is robust to inlining.
#[inline(never)]
pub(crate) fn capture(entered: Entered) -> Stack {
    let mut stack = walk(entered);
    if stack.len == MAX_FRAMES {
        stack.frames[MAX_FRAMES - 1] = CUT;
    }
    stack
}

/// The walk of [`capture`], with the unwinder the process uses.
#[inline(always)]
fn walk(entered: Entered) -> Stack {
    let mode = match MODE.load(Relaxed) {
        UNDECIDED => decide(),
        m => m,
    };
    if mode == USE_DWARF {
        return capture_dwarf(entered);
    }
    match walk_frame_pointers(entered) {
        Walk::Whole(fp, sum) => {
            if mode == USE_FP_FORCED || !due_for_check(sum) || agrees(&fp, &capture_dwarf(entered))
            {
                return fp;
            }
            MODE.store(USE_DWARF, Relaxed);
            crate::config::report::warn(format_args!(
                "heapprof: a frame-pointer stack disagreed with the DWARF unwinder (code without frame pointers in the program?); using DWARF from now on"
            ));
            capture_dwarf(entered)
        }
        Walk::LeftModule { partial, record } => {
            let dwarf = capture_dwarf(entered);
            if agrees(&partial, &dwarf) {
                // The walk ended where DWARF finds only start-up frames
                // left: this thread's root.
                crate::thread::with(|l| l.stack.root.set(record));
            }
            dwarf
        }
        Walk::Broken => capture_dwarf(entered),
    }
}

/// [`capture`] inside the profiler, for `dev/benches/micro.rs`: the
/// number of frames.
#[cfg(feature = "bench-internals")]
pub(crate) fn capture_for_bench() -> usize {
    let _inside = crate::support::reentry::Inside::enter();
    capture(Entered::here()).frames().len()
}

/// The unwinder in use, for the profile's comments.
pub(crate) fn unwinder_name() -> &'static str {
    match MODE.load(Relaxed) {
        USE_FP_CHECKED | USE_FP_FORCED => {
            "frame pointers (DWARF for stacks that leave the program's code)"
        }
        USE_DWARF if cached_rules_in_use() => "DWARF unwind tables, rules cached by address",
        USE_DWARF => "DWARF unwind tables",
        _ => "not chosen yet (no sample taken)",
    }
}

/// Whether DWARF stacks are unwound with cached rules (`rules.rs`), which
/// a disagreement with libgcc turns off.
fn cached_rules_in_use() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return rules::in_use();
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    false
}

/// Settles the unwinder ahead of the first sample, from the first
/// allocation that reaches heapprof: the decision reads the loaded objects
/// and probes a frame, which a first sample deep in a small thread stack
/// should not have to pay for.
pub(crate) fn decide_early() {
    if MODE.load(Relaxed) == UNDECIDED {
        decide();
    }
}

/// Applies the configuration and rule 1; returns the mode.
#[cold]
fn decide() -> u8 {
    let wanted = crate::config::get().unwinder;
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    rules::load();
    // libgcc's first walk in a process binds its lazily bound symbols,
    // which takes about 3 KiB more stack than later walks: paid here, on
    // the thread that allocates first, rather than by a first sample on a
    // thread with little stack to spare.
    std::hint::black_box(capture_libgcc(Entered::NONE));
    let mode = if wanted == Unwinder::Dwarf {
        USE_DWARF
    } else if !own_code_keeps_frame_pointers() {
        if wanted == Unwinder::FramePointers && cfg!(target_arch = "x86_64") {
            crate::config::report::warn(format_args!(
                "heapprof: HEAPPROF_UNWIND=frame-pointers, but this program was built without frame pointers (RUSTFLAGS=\"-C force-frame-pointers=yes\" keeps them); using DWARF"
            ));
        } else if wanted == Unwinder::FramePointers {
            crate::config::report::warn(format_args!(
                "heapprof: HEAPPROF_UNWIND=frame-pointers, but heapprof walks frame pointers on x86_64 only; using DWARF"
            ));
        }
        USE_DWARF
    } else if let Some((start, end)) = own_code_range() {
        CODE_START.store(start, Relaxed);
        CODE_END.store(end, Relaxed);
        if wanted == Unwinder::FramePointers {
            USE_FP_FORCED
        } else {
            USE_FP_CHECKED
        }
    } else {
        USE_DWARF
    };
    MODE.store(mode, Relaxed);
    mode
}

/// The executable code of the module that holds this function.
fn own_code_range() -> Option<(usize, usize)> {
    let own = crate::support::mappings::own_object();
    let start = own.iter().map(|m| m.start).min()?;
    let end = own.iter().map(|m| m.limit).max()?;
    Some((start as usize, end as usize))
}

/// Whether a frame pointer, rather than DWARF, gave `fp` the same frames as
/// `dwarf` from the caller of the walk down: `fp` is a run of `dwarf`
/// (after the unwinder's own frames), with at most [`ROOT_FRAMES`] more
/// frames below it in `dwarf` or [`FP_ROOT_FRAMES`] more in `fp`, or,
/// when the shorter of the two was cut at [`MAX_FRAMES`], the two agree as
/// far as both go.
///
/// Walks from a mark ([`Entered`]) start at the same frame and are compared
/// whole; walks that keep every frame start each at its own call site,
/// which the comparison skips.
fn agrees(fp: &Stack, dwarf: &Stack) -> bool {
    let (fp, dwarf) = (from_the_caller(fp, dwarf, 1), dwarf.frames());
    let Some(start) = fp.first().and_then(|f| dwarf.iter().position(|d| d == f)) else {
        return false;
    };
    let rest = &dwarf[start..];
    // A function without a frame pointer in the middle of the stack makes
    // the chain skip or garble frames: then `fp` is not a prefix of `rest`.
    // Stacks cut at MAX_FRAMES are compared as far as both go (an unmarked
    // DWARF walk starts deeper in heapprof, so it is cut at a caller nearer
    // the leaf), but only the shorter of the two may be the cut one: a walk
    // that stopped early is no prefix to excuse.
    let cut = if fp.len() < rest.len() {
        fp.len() + 1 == MAX_FRAMES
    } else {
        dwarf.len() == MAX_FRAMES
    };
    let both = fp.len().min(rest.len());
    rest[..both] == fp[..both]
        && (cut
            || (rest.len() <= fp.len() + ROOT_FRAMES && fp.len() <= rest.len() + FP_ROOT_FRAMES))
}

/// `ours`' frames from the one the caller of both walks returns to: all of
/// them when `ours` starts where `theirs` does (both from one mark), else
/// without its first `own` (its walk's own frames and call site).
fn from_the_caller<'a>(ours: &'a Stack, theirs: &Stack, own: usize) -> &'a [usize] {
    let frames = ours.frames();
    if !frames.is_empty() && frames.first() == theirs.frames().first() {
        frames
    } else {
        frames.get(own..).unwrap_or(&[])
    }
}

/// The stack from DWARF unwind tables: with the cached rules where they
/// vouch for every frame (`rules.rs`), checked against libgcc's walk every
/// [`RECHECK_EVERY`]th stack, and from libgcc otherwise.
fn capture_dwarf(entered: Entered) -> Stack {
    // `rules::capture` checks the stack it has left, but its own frame
    // (several KiB: the caches' scratch) is taken before it can: a thread
    // with less than it needs to walk is not let in at all.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if left().is_some_and(|left| left >= rules::STACK_TO_WALK_CACHED)
        && let Some(bounds) = crate::thread::with(|l| bounds(&l.stack))
        && let Some(cached) = rules::capture(bounds, entered)
    {
        let n = CACHED_SAMPLES.fetch_add(1, Relaxed);
        if n % RECHECK_EVERY != RECHECK_EVERY - 1
            || same_caller_frames(&cached, &capture_libgcc(entered))
        {
            return cached;
        }
        rules::disable();
        crate::config::report::warn(format_args!(
            "heapprof: the cached DWARF unwinder disagreed with libgcc's; using libgcc's from now on"
        ));
    }
    capture_libgcc(entered)
}

/// Stacks the cached unwinder gave, for its periodic check.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
static CACHED_SAMPLES: AtomicU64 = AtomicU64::new(0);

/// Whether `cached` (from `rules::capture`, called by [`capture_dwarf`])
/// and `libgcc` (from [`capture_libgcc`], called by the same function)
/// hold the same frames from [`capture_dwarf`]'s caller down. Walks from a
/// mark start there; walks that keep every frame start with each
/// unwinder's own and the two call sites. A stack cut at [`MAX_FRAMES`] is
/// compared as far as both go.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn same_caller_frames(cached: &Stack, libgcc: &Stack) -> bool {
    let callers = from_the_caller(cached, libgcc, 2);
    if callers.is_empty() {
        return false;
    }
    let Some(start) = callers
        .first()
        .and_then(|f| libgcc.frames().iter().position(|g| g == f))
    else {
        return false;
    };
    let theirs = &libgcc.frames()[start..];
    let both = theirs.len().min(callers.len());
    let full = |s: &Stack| s.frames().len() == MAX_FRAMES;
    theirs[..both] == callers[..both]
        && (theirs.len() == callers.len() || full(cached) || full(libgcc))
}

fn capture_libgcc(entered: Entered) -> Stack {
    let mut stack = Stack::empty(entered);
    // SAFETY: `trace_unsynchronized` is unsafe only because it skips the
    // crate's global lock. On Linux it calls libgcc's `_Unwind_Backtrace`,
    // which is safe to run concurrently on many threads; skipping the lock
    // is the point, since a lock held by a thread that is itself
    // allocating would deadlock us. The closure only writes into `stack`,
    // which lives on this frame.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            // libgcc's `_Unwind_GetCFA`, which it computed unwinding the
            // frame before: that of the function returning to `ip`.
            ip != 0 && stack.push(ip, frame.sp() as usize)
        });
    }
    stack
}

/// What a frame-pointer walk found.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Walk {
    /// Every frame, down to this thread's known root, to a zero frame
    /// pointer (the ABI's end of the chain), or to [`MAX_FRAMES`]; and
    /// their [`frames_sum`].
    Whole(Stack, u64),
    /// A return address outside the program's code at frame record
    /// `record` (its stack slot and the address): the thread's root, or a
    /// foreign caller the chain cannot be trusted past. `partial` ends with
    /// that address.
    LeftModule {
        partial: Stack,
        record: (usize, usize),
    },
    /// The chain broke before reaching a root.
    Broken,
}

/// Walks the frame-pointer chain from this function's caller, under rules
/// 2 and 3 of the module comment.
#[inline(never)]
fn walk_frame_pointers(entered: Entered) -> Walk {
    #[cfg(target_arch = "x86_64")]
    {
        let mut stack = Stack::empty(entered);
        let (code_start, code_end) = (CODE_START.load(Relaxed), CODE_END.load(Relaxed));
        let Some(((lo, hi), root)) =
            crate::thread::with(|l| (bounds(&l.stack), l.stack.root.get()))
        else {
            return Walk::Broken;
        };
        let mut fp: usize;
        // SAFETY: reads the frame-pointer register; no memory is touched.
        unsafe {
            std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
        };
        loop {
            // A frame is [saved rbp][return address]: both words must lie in
            // this thread's stack.
            if fp < lo || !fp.is_multiple_of(8) || fp.checked_add(16).is_none_or(|end| end > hi) {
                return Walk::Broken;
            }
            // SAFETY: `fp` is 8-byte aligned and `fp..fp+16` lies below the
            // top of this thread's stack (`hi`), at or above this
            // function's own frame: the first `fp` is our `rbp`, and each
            // next one is strictly higher (checked below). The stack is
            // mapped from the running frame up to its top, so the words
            // are readable. (`lo` alone would not do: for the main thread
            // it is the rlimit's bound, below what is mapped.)
            let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
            if ret == 0 {
                return Walk::Broken;
            }
            // The record's function returns to `ret`; its frame ends just
            // above the record.
            let more = stack.push(ret, fp + 16);
            if !(code_start..code_end).contains(&ret) {
                if (fp, ret) == root {
                    let sum = frames_sum(&stack);
                    return Walk::Whole(stack, sum);
                }
                return Walk::LeftModule {
                    partial: stack,
                    record: (fp, ret),
                };
            }
            if !more || next == 0 {
                let sum = frames_sum(&stack);
                return Walk::Whole(stack, sum);
            }
            // Frames grow towards higher addresses as we go up the stack.
            if next <= fp {
                return Walk::Broken;
            }
            fp = next;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = entered;
        Walk::Broken
    }
}

/// Rule 1: whether heapprof's own code, compiled with the program's flags,
/// keeps frame pointers.
#[inline(never)]
fn own_code_keeps_frame_pointers() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let caller = own_code_keeps_frame_pointers as *const () as usize;
        std::hint::black_box(probe_frame_record(caller))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The largest distance, in bytes, from the start of
/// [`own_code_keeps_frame_pointers`] to its call of [`probe_frame_record`]
/// (tens of bytes in practice, more in a debug build).
#[cfg(target_arch = "x86_64")]
const PROBE_CALL_WITHIN: usize = 4096;

/// True if this function keeps a frame pointer: then `rbp` points at its
/// frame record, just above its locals, and the record's second word is the
/// return address into `caller`. Without one, `rbp` is whatever the caller
/// left there, which is never a record holding that address.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn probe_frame_record(caller: usize) -> bool {
    // This function makes calls (the bounds query), so it is no leaf:
    // some targets keep frame pointers in non-leaf functions only.
    let Some((_, hi)) = crate::thread::with(|l| bounds(&l.stack)) else {
        return false;
    };
    let (rbp, rsp): (usize, usize);
    // SAFETY: reads two registers; no memory is touched.
    unsafe {
        std::arch::asm!("mov {}, rbp", "mov {}, rsp", out(reg) rbp, out(reg) rsp,
            options(nomem, nostack, preserves_flags))
    };
    if rbp < rsp || rbp % 8 != 0 || rbp.checked_add(16).is_none_or(|end| end > hi) {
        return false;
    }
    // SAFETY: `rbp..rbp+16` lies between this function's stack pointer and
    // the top of this thread's stack (checked above), which is mapped.
    let ret = unsafe { *((rbp + 8) as *const usize) };
    ret > caller && ret - caller < PROBE_CALL_WITHIN
}

/// This thread's stack as [lo, hi), queried on first use and kept in its
/// [`StackFacts`].
fn bounds(facts: &StackFacts) -> (usize, usize) {
    if let Some(bounds) = facts.bounds.get() {
        return bounds;
    }
    let bounds = query_stack_bounds();
    facts.bounds.set(Some(bounds));
    bounds
}

/// The bytes of stack below the caller's frame: on the thread's stack, or
/// on the alternate stack of a signal handler running there; `None` when
/// unknown (the thread's bounds could not be read, or a stack of the
/// program's own making: a `stacker` segment, a coroutine).
#[inline(always)]
pub(crate) fn left() -> Option<usize> {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    let (lo, hi) = crate::thread::with(|l| bounds(&l.stack))?;
    if hi == 0 {
        return None;
    }
    if (lo..hi).contains(&sp) {
        return Some(sp - lo);
    }
    let (lo, hi) = alternate_stack()?;
    (lo..hi).contains(&sp).then(|| sp - lo)
}

/// The bounds of the signal stack this thread is running on, if it is.
#[cold]
fn alternate_stack() -> Option<(usize, usize)> {
    // SAFETY: `stack_t` is plain data (a pointer, two integers), for
    // which all zeros is a valid value.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new stack, sigaltstack only writes the current
    // one into `current`, a local.
    let read = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) };
    if read != 0 || current.ss_flags & libc::SS_ONSTACK == 0 {
        return None;
    }
    let lo = current.ss_sp as usize;
    Some((lo, lo + current.ss_size))
}

fn query_stack_bounds() -> (usize, usize) {
    // SAFETY: `attr` is initialized by pthread_getattr_np before use and
    // destroyed after; the out-pointers point to locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            (addr as usize, addr as usize + size)
        } else {
            (0, 0)
        }
    }
}

/// FxHash-style mixing of the addresses: cheap, and good enough to key
/// sites (a 64-bit collision among n stacks has probability about
/// n²/2⁶⁵: 7e-12 at the default 16 Ki sites).
pub(crate) fn hash(frames: &[usize]) -> u64 {
    let mut h: u64 = frames.len() as u64;
    for &f in frames {
        h = (h.rotate_left(5) ^ f as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests;
