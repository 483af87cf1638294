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

use crate::counters::Counters;
use crate::sampler::ThreadSampler;

#[repr(C, align(64))]
pub(crate) struct Local {
    /// Touched by every allocation and free; the countdown, first, by
    /// every allocation.
    pub(crate) counters: Counters,
    /// This thread's copy of the free filter's mask (`sampled.rs`), read
    /// by every free. 0 ("look every block up") until the thread is
    /// registered.
    pub(crate) filter_mask: AtomicUsize,
    /// Only on the slow path.
    pub(crate) sampler: ThreadSampler,
}

thread_local! {
    pub(crate) static LOCAL: Local = const {
        Local {
            counters: Counters::new(),
            filter_mask: AtomicUsize::new(0),
            sampler: ThreadSampler::new(),
        }
    };
}
