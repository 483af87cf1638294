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
//! Lock order in `prepare` is: symbolizer, bucket stripes, set stripes,
//! spare pools. No
//! other code path holds two of these at once, so the order cannot invert.
//!
//! Releasing a lock in the child must not depend on the threads that were
//! waiting for it in the parent, which do not exist in the child: the locks
//! are futex words with their waiters kept in the kernel (`lock.rs`), so
//! the child's unlock leaves them free.

use std::sync::Once;

use crate::{buckets, guard, sampled, spare, symbolize};

static REGISTER: Once = Once::new();

/// Installs the handlers once per process.
pub(crate) fn register_handlers() {
    REGISTER.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions that take no
        // arguments and never unwind.
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(after), Some(after));
        }
    });
}

extern "C" fn prepare() {
    let busy = guard::Busy::enter();
    std::mem::forget(busy); // released in `after`
    symbolize::lock();
    buckets::lock_all();
    sampled::lock_all();
    spare::lock_all();
}

extern "C" fn after() {
    // SAFETY: `prepare` ran on this thread (parent) or on the thread that
    // became the child's only thread, and took exactly these locks.
    unsafe {
        spare::unlock_all();
        sampled::unlock_all();
        buckets::unlock_all();
        symbolize::unlock();
    }
    guard::leave_forgotten();
}
