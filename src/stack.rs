//! Stack capture on a sampled allocation: raw return addresses only.
//!
//! Nothing is symbolized here (that happens when a profile is written, see
//! `symbolize.rs`), and no lock of ours is held: the unwinder may take the
//! dynamic loader's lock, and a profiler lock held across it is how
//! profilers deadlock.
//!
//! # Two unwinders
//!
//! * **DWARF** (`backtrace`, i.e. libgcc's `_Unwind_Backtrace`): works for
//!   any build, but interprets unwind tables for every frame, about 0.1 to
//!   0.2 µs a frame here: most of the cost of a sample.
//! * **Frame pointers**: follows the `rbp` chain, a few nanoseconds a
//!   frame, but only correct when every function on the stack keeps a
//!   frame pointer: build with `RUSTFLAGS="-C force-frame-pointers=yes"`
//!   (the standard library shipped by rustup already keeps them). Each step
//!   is checked: the frame must lie inside this thread's stack, be 8-byte
//!   aligned and above the previous one, or the walk stops.
//!
//! `HEAPPROF_UNWIND=auto` (the default) decides by evidence: the first
//! sample is unwound both ways, and frame pointers are used only if the
//! two agree exactly, which they cannot if the code on that stack was
//! built without frame pointers. Every 1024th sample is checked again; on
//! any disagreement heapprof goes back to DWARF for good and says so once
//! on stderr. `HEAPPROF_UNWIND=dwarf` or `frame-pointers` forces a choice.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// The deepest stack we keep, as Go's `maxStack`-like bound: deeper stacks
/// are truncated at the root end.
pub(crate) const MAX_FRAMES: usize = 64;

/// A captured stack: return addresses, leaf first.
pub(crate) struct Stack {
    frames: [usize; MAX_FRAMES],
    len: usize,
}

impl Stack {
    pub(crate) fn frames(&self) -> &[usize] {
        &self.frames[..self.len]
    }
}

/// Which unwinder [`capture`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unwinder {
    Dwarf,
    FramePointers,
    /// Decide on the first sample, see the module comment.
    Auto,
}

const UNDECIDED: u8 = 0;
const USE_DWARF: u8 = 1;
const USE_FP: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
static SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Every this many samples, frame-pointer stacks are checked against DWARF.
const RECHECK_EVERY: u64 = 1024;

/// Captures the calling thread's stack.
///
/// The first frames are the profiler's own (this function, the slow path,
/// the `GlobalAlloc` impl) and the allocation machinery; they are trimmed
/// at write time by name, which is robust to inlining, rather than here by
/// a fixed count, which is not.
#[inline(never)]
pub(crate) fn capture() -> Stack {
    let mode = match MODE.load(Relaxed) {
        UNDECIDED => decide(),
        m => m,
    };
    if mode == USE_FP {
        let fp = capture_frame_pointers();
        let n = SAMPLES.fetch_add(1, Relaxed);
        if n % RECHECK_EVERY != RECHECK_EVERY - 1 || agrees(&fp, &capture_dwarf()) {
            return fp;
        }
        MODE.store(USE_DWARF, Relaxed);
        crate::report::warn(format_args!(
            "heapprof: a frame-pointer stack disagreed with the DWARF unwinder (code built without frame pointers?); using DWARF from now on"
        ));
    }
    capture_dwarf()
}

/// The unwinder in use, for the profile's comments.
pub(crate) fn unwinder_name() -> &'static str {
    match MODE.load(Relaxed) {
        USE_FP => "frame pointers",
        USE_DWARF => "DWARF unwind tables",
        _ => "not chosen yet (no sample taken)",
    }
}

/// Settles `Auto` on the first sample; returns the mode.
#[cold]
fn decide() -> u8 {
    let mode = match crate::config::get().unwinder {
        Unwinder::Dwarf => USE_DWARF,
        Unwinder::FramePointers => USE_FP,
        Unwinder::Auto => {
            if agrees(&capture_frame_pointers(), &capture_dwarf()) {
                USE_FP
            } else {
                USE_DWARF
            }
        }
    };
    MODE.store(mode, Relaxed);
    mode
}

/// Whether a frame-pointer stack is the DWARF stack without its first few
/// frames (the unwinder's own, which the frame-pointer walk starts above).
/// The first frame of each is the call site of its own walk, so the
/// comparison starts at the second.
fn agrees(fp: &Stack, dwarf: &Stack) -> bool {
    let (fp, dwarf) = (fp.frames().get(1..).unwrap_or(&[]), dwarf.frames());
    let Some(start) = fp.first().and_then(|f| dwarf.iter().position(|d| d == f)) else {
        return false;
    };
    let rest = &dwarf[start..];
    // A function without a frame pointer in the middle of the stack makes
    // the chain skip or garble frames: then `fp` is not a prefix of `rest`.
    // At the root, the C runtime's start-up frames (`_start`,
    // `__libc_start_main`, `start_thread`, `clone`) keep no frame pointer,
    // so the chain may end up to ROOT_FRAMES before the DWARF walk does.
    const ROOT_FRAMES: usize = 4;
    fp.len() >= 4
        && rest.len() >= fp.len()
        && rest.len() - fp.len() <= ROOT_FRAMES
        && rest[..fp.len()] == *fp
}

fn capture_dwarf() -> Stack {
    let mut stack = Stack {
        frames: [0; MAX_FRAMES],
        len: 0,
    };
    // SAFETY: `trace_unsynchronized` is unsafe only because it skips the
    // crate's global lock. On Linux it calls libgcc's `_Unwind_Backtrace`,
    // which is safe to run concurrently on many threads; skipping the lock
    // is the point, since a lock held by a thread that is itself
    // allocating would deadlock us. The closure only writes into `stack`,
    // which lives on this frame.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            if ip == 0 {
                return false;
            }
            stack.frames[stack.len] = ip;
            stack.len += 1;
            stack.len < MAX_FRAMES
        });
    }
    stack
}

/// Walks the frame-pointer chain from this function's caller.
#[inline(never)]
fn capture_frame_pointers() -> Stack {
    let mut stack = Stack {
        frames: [0; MAX_FRAMES],
        len: 0,
    };
    #[cfg(target_arch = "x86_64")]
    {
        let (lo, hi) = thread_stack_bounds();
        let mut fp: usize;
        // SAFETY: reads the frame-pointer register; no memory is touched.
        unsafe {
            std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
        };
        while stack.len < MAX_FRAMES {
            // A frame is [saved rbp][return address]: both words must lie in
            // this thread's stack.
            if fp < lo || fp % 8 != 0 || fp.checked_add(16).is_none_or(|end| end > hi) {
                break;
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
                break;
            }
            stack.frames[stack.len] = ret;
            stack.len += 1;
            // Frames grow towards higher addresses as we go up the stack.
            if next <= fp {
                break;
            }
            fp = next;
        }
    }
    stack
}

/// This thread's stack as [low, high), cached per thread; (0, 0) if
/// unknown, which stops every frame-pointer walk at once.
#[cfg(target_arch = "x86_64")]
fn thread_stack_bounds() -> (usize, usize) {
    thread_local! {
        static BOUNDS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }
    BOUNDS
        .try_with(|b| {
            if b.get() == (0, 0) {
                b.set(query_stack_bounds());
            }
            b.get()
        })
        .unwrap_or((0, 0))
}

#[cfg(target_arch = "x86_64")]
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
/// buckets (a 64-bit collision between two of at most a few tens of
/// thousands of stacks has probability ~1e-11).
pub(crate) fn hash(frames: &[usize]) -> u64 {
    let mut h: u64 = frames.len() as u64;
    for &f in frames {
        h = (h.rotate_left(5) ^ f as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    h ^ (h >> 29)
}
