//! Making `fork()` safe.
//!
//! `fork` copies only the calling thread. A lock that another thread held at
//! that moment stays locked forever in the child, and the child's first
//! sampled allocation or profile write would hang on it. So, as glibc does
//! for malloc's own arenas, heapprof takes every one of its locks just
//! before `fork` (`pthread_atfork`'s prepare handler) and releases them in
//! both the parent and the child afterwards. The handlers run with the
//! reentrancy guard held, so nothing they do is sampled.
//!
//! Lock order in `prepare` is: the loaded-object walk (`mappings.rs`: fork
//! must not copy the loader's lock held), symbolizer, bucket stripes,
//! spare pools, peak copy, thread registry, then the sampled set (its
//! stripes and the mask copies' lock). Other paths nest locks in two ways
//! only: a thread's first allocation registers its counters
//! (`counters.rs`), which could in principle happen while it holds any of
//! the earlier locks; and a thread holding one of the others may free
//! memory (a `Vec` or `HashMap` growing, an old peak copy dropped), and a
//! free may look the pointer up in the set. So the registry comes late and
//! the set last; while a thread holds a free-path lock its frees skip the
//! set (`lock.rs`) and it takes no other lock. Taking the set before the
//! pools would deadlock `fork` against a thread whose pool `Vec` grows
//! while it holds the pool lock.
//!
//! Two locks are not waited for, since each may be held for a whole cold
//! symbolization (a second or so) and `fork` must not wait that long: the
//! HTTP server's build lock, which guards no data, so the child simply
//! resets it; and the symbolizer's lookup lock, taken only if free (a child
//! forked in the middle of a lookup makes no lookups: `symbolize.rs`).
//!
//! In the child, the registries of running threads (the exact counters'
//! and the free filter's mask copies) still list the parent's other
//! threads, whose thread-local memory glibc recycles, and may unmap, once
//! the child starts threads of its own. The child handler folds their
//! counts into the unlisted totals and drops them, before any other code
//! runs in the child.
//!
//! Releasing a lock in the child must not depend on the threads that were
//! waiting for it in the parent, which do not exist in the child: the locks
//! are futex words with their waiters kept in the kernel (`lock.rs`), so
//! the child's unlock leaves them free.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::{
    output::mappings, output::symbolize, record::blocks, record::peak, record::sites,
    record::spare, support::reentry, support::registry,
};

static REGISTER: Once = Once::new();

/// Installs the handlers once per process.
pub(crate) fn register_handlers() {
    REGISTER.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions that take no
        // arguments and never unwind.
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
        }
    });
}

/// The forking thread's guard state from before `prepare`, restored by
/// `parent` and `child`. Written after `prepare` holds every lock and read
/// before they are released, so two threads forking at once cannot mix
/// their values up.
static WAS_BUSY: AtomicBool = AtomicBool::new(false);

extern "C" fn prepare() {
    let busy = reentry::Busy::enter();
    mappings::lock();
    symbolize::lock();
    sites::lock_all();
    spare::lock_all();
    peak::lock();
    registry::lock();
    blocks::lock_all();
    WAS_BUSY.store(busy.forget(), Relaxed); // released in `parent` or `child`
}

/// Releases what `prepare` took.
///
/// # Safety
/// Only on the thread that ran `prepare` (in the parent), or on the
/// child's only thread, which is that thread's copy.
unsafe fn unlock_all() {
    // SAFETY: per this function's contract, `prepare` took exactly these
    // locks on this thread and forgot the guards.
    unsafe {
        blocks::unlock_all();
        registry::unlock();
        peak::unlock();
        spare::unlock_all();
        sites::unlock_all();
        symbolize::unlock();
        mappings::unlock();
    }
}

extern "C" fn parent() {
    let was_busy = WAS_BUSY.load(Relaxed);
    // SAFETY: `prepare` ran on this thread just before the fork.
    unsafe { unlock_all() };
    reentry::leave_forgotten(was_busy);
}

extern "C" fn child() {
    let was_busy = WAS_BUSY.load(Relaxed);
    // SAFETY: the child's only thread is the copy of the one that ran
    // `prepare`.
    unsafe { unlock_all() };
    // The parent's other threads are gone; forget them before their
    // memory can be reused (see `counters.rs`, `sampled.rs`).
    registry::forget_other_threads_after_fork();
    blocks::forget_other_threads_after_fork();
    symbolize::after_fork_in_child();
    #[cfg(feature = "http")]
    crate::http::reset_after_fork();
    reentry::leave_forgotten(was_busy);
}
