//! Stack capture on a sampled allocation: raw return addresses only.
//!
//! Nothing is symbolized here (that happens when a profile is written, see
//! `symbolize.rs`), and no lock of ours is held: the unwinder may take the
//! dynamic loader's lock, and a profiler lock held across it is how
//! profilers deadlock.

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

/// Captures the calling thread's stack.
///
/// The first frames are the profiler's own (this function, the slow path,
/// the `GlobalAlloc` impl) and the allocation machinery; they are trimmed
/// at write time by name, which is robust to inlining, rather than here by
/// a fixed count, which is not.
#[inline(never)]
pub(crate) fn capture() -> Stack {
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
