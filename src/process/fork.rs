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
//! `prepare` takes the locks in [`FORK_LOCKS`], the one table of them,
//! in rank order (`support/lock.rs` declares the ranks and checks, in
//! debug builds, that every other path nests them the same way).
//!
//! Two locks are not waited for, since each may be held for a whole cold
//! symbolization (a second or so) and `fork` must not wait that long: the
//! HTTP server's build lock, which guards no data, so the child simply
//! resets it; and the symbolizer's lookup lock, taken only if free (a child
//! forked in the middle of a lookup makes no lookups: `output/symbolize.rs`).
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
//! are futex words with their waiters kept in the kernel (`support/lock.rs`), so
//! the child's unlock leaves them free.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::labels;
use crate::output::symbolize;
use crate::record::{blocks, peak, sites, spare};
use crate::support::lock::EachLock;
use crate::support::{mappings, reentry, registry};

/// Every lock `fork` takes, by module, in rank order.
const FORK_LOCKS: [EachLock; 8] = [
    mappings::each_lock,
    symbolize::each_lock,
    labels::each_lock,
    sites::each_lock,
    spare::each_lock,
    peak::each_lock,
    registry::each_lock,
    blocks::each_lock,
];

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
static WAS_INSIDE: AtomicBool = AtomicBool::new(false);

extern "C" fn prepare() {
    let inside = reentry::Inside::enter();
    symbolize::before_fork();
    let mut last_rank = 0;
    for each_lock in FORK_LOCKS {
        each_lock(&mut |lock| {
            debug_assert!(lock.rank() >= last_rank, "FORK_LOCKS is out of rank order");
            last_rank = lock.rank();
            lock.lock_and_keep();
        });
    }
    WAS_INSIDE.store(inside.forget(), Relaxed); // released in `parent` or `child`
}

/// Releases what `prepare` took.
///
/// # Safety
/// Only on the thread that ran `prepare` (in the parent), or on the
/// child's only thread, which is that thread's copy.
unsafe fn unlock_all() {
    for each_lock in FORK_LOCKS.iter().rev() {
        // SAFETY: per this function's contract, `prepare` took exactly
        // these locks on this thread and forgot the guards.
        each_lock(&mut |lock| unsafe { lock.release_kept() });
    }
    // SAFETY: as above, for the lookup lock `before_fork` may have taken.
    unsafe { symbolize::after_fork() };
}

extern "C" fn parent() {
    let was_inside = WAS_INSIDE.load(Relaxed);
    // SAFETY: `prepare` ran on this thread just before the fork.
    unsafe { unlock_all() };
    reentry::leave_forgotten(was_inside);
}

extern "C" fn child() {
    let was_inside = WAS_INSIDE.load(Relaxed);
    // SAFETY: the child's only thread is the copy of the one that ran
    // `prepare`.
    unsafe { unlock_all() };
    // The parent's other threads are gone; forget them before their
    // memory can be reused (see `registry::forget_other_threads_after_fork`).
    registry::forget_other_threads_after_fork();
    symbolize::after_fork_in_child();
    #[cfg(feature = "http")]
    crate::http::reset_after_fork();
    reentry::leave_forgotten(was_inside);
}
