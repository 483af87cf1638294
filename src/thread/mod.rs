//! The fast path's one thread-local.
//!
//! The exact counters (`counters.rs`), the sampling countdown
//! (`sampler.rs`) and the free filter's mask (`sampled.rs`) share one
//! const-initialized, destructor-free thread-local, with everything a call
//! touches in one cache line. An allocation or a free then computes one
//! thread-local address and touches one line of memory, where separate
//! thread-locals took an address computation and a line each, and the
//! shared mask a load of its address (through the GOT, from the user's
//! crate) and of its own line.

use std::sync::atomic::AtomicUsize;

use crate::sample::ThreadSampler;
use crate::support::registry::Counters;

#[repr(C, align(64))]
pub(crate) struct Local {
    /// This thread's copy of the free filter's mask (`sampled.rs`), read
    /// by every free. 0 ("look every block up") until the thread is
    /// registered.
    pub(crate) filter_mask: AtomicUsize,
    /// Touched by every allocation and free (the countdown and the three
    /// counters the fast path bumps come first in it, so they share the
    /// mask's cache line).
    pub(crate) counters: Counters,
    /// Only on the slow path.
    pub(crate) sampler: ThreadSampler,
}

thread_local! {
    pub(crate) static LOCAL: Local = const {
        Local {
            filter_mask: AtomicUsize::new(0),
            counters: Counters::new(),
            sampler: ThreadSampler::new(),
        }
    };
}

// The fast path's fields (the mask, the countdown, the allocation and free
// counters) fit in the first cache line.
const _: () = assert!(std::mem::offset_of!(Local, counters) + 5 * 8 <= 64);
