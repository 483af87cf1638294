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
//! glibc runs the prepare handlers of threads that fork at the same time
//! side by side, and what `prepare` leaves for `parent` and `child` (which
//! locks it took) is one fork's. So forks go through the handlers one at a
//! time: [`GATE`], the lock of lowest rank, is taken first in `prepare`
//! and released last by `parent` and `child`.
//!
//! A `fork` called from a signal handler that interrupted heapprof while
//! it held a lock cannot wait for that lock: the interrupted code, which
//! would release it, runs only when the handler returns. Then `prepare`
//! takes each lock only if it becomes free within [`TRY_EACH_FOR`], and
//! the handlers release only those it took. The child is a copy of the
//! thread inside heapprof, and so stays inside it (nothing it allocates
//! is sampled) until the handler returns; the locks held by the
//! interrupted code are its copy's to release. A lock another thread held
//! throughout stays held in the child, which hangs only if that child
//! returns from the handler and reaches it; exec and `_exit`, what such
//! children do, touch no lock.
//!
//! A signal handler can also fork while its thread is inside a fork of
//! its own and reach heapprof's handlers again: glibc holds its own fork
//! lock across the clone but not while a handler runs, and takes none in
//! a process with one thread; musl takes none once the process has one
//! thread. That nested fork passes through heapprof's handlers untouched:
//! the fork it interrupted holds the locks and keeps the thread inside
//! heapprof, and that fork's own handler, which runs in both processes
//! once the signal handler returns, releases them, and in the nested
//! fork's child settles the child too. (musl starts a fork nested in the
//! handlers after a fork where the interrupted one had got to, so there
//! heapprof's parent or child handler runs once for both; a second
//! release of a lock by its only thread changes nothing.)
//!
//! Two locks are not waited for, since each may be held for a whole cold
//! symbolization (a second or so) and `fork` must not wait that long: the
//! HTTP server's build lock, which guards no data, so the child simply
//! resets it; and the symbolizer's lookup lock, taken only if free (a child
//! forked in the middle of a lookup takes it back; a child of a parent with
//! other threads names frames without backtrace, whose lock it may never
//! get: `output/symbolize.rs`).
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::labels;
use crate::output::symbolize;
use crate::record::{blocks, peak, sites, spare};
use crate::support::lock::{self, EachLock, Lockable, Mutex, rank};
use crate::support::{mappings, reentry, registry, this_process};

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

/// Held by the thread whose fork is between `prepare` and `parent` (or
/// the child's copy of it, until `child`): one fork at a time through
/// the handlers. It guards the handlers' state below and
/// `symbolize::before_fork`'s.
static GATE: Mutex<{ rank::FORK }, ()> = Mutex::new(());

/// The thread holding [`GATE`] (its `pthread_self`, which its copy in the
/// child shares), 0 when none.
static GATE_OWNER: AtomicUsize = AtomicUsize::new(0);

/// The thread taking [`GATE`] for its fork or releasing it after, 0 when
/// none. Between the lock and [`GATE_OWNER`], a signal handler's fork on
/// that thread is not seen as nested, yet may find the gate held by its
/// own thread: it goes on at once without the gate, taking the other
/// locks as a fork from inside heapprof does, rather than try for the
/// gate. (A timer that forks more often than such a try lasts would
/// otherwise keep the thread there.)
static GATE_MOVING: AtomicUsize = AtomicUsize::new(0);

/// Forks the gate's owner made from a signal handler that interrupted its
/// own fork, under way: they take nothing and record nothing, and their
/// `parent` and `child` leave the locks and the child's work to the fork
/// they interrupted. Only the owner's thread changes it.
static NESTED: AtomicUsize = AtomicUsize::new(0);

fn this_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Installs the handlers once per process, after the fork counter, so
/// that the child handler runs as the child's own process
/// (`support/this_process.rs`).
pub(crate) fn register_handlers() {
    this_process::count_forks();
    REGISTER.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions that take no
        // arguments and never unwind.
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
        }
    });
}

/// The forking thread's guard state from before `prepare`, restored by
/// `parent` and `child`. Written and read under [`GATE`], so two threads
/// forking at once cannot mix their values up.
static WAS_INSIDE: AtomicBool = AtomicBool::new(false);

/// How long `prepare`, forking from inside heapprof, tries for each lock
/// before it goes on without it. A lock the interrupted code holds is
/// never freed meanwhile; one another thread holds is, within
/// microseconds (every critical section is short).
const TRY_EACH_FOR: Duration = Duration::from_millis(2);

/// The most locks [`TAKEN`] can tell apart; `FORK_LOCKS` shows fewer
/// (checked by a test). Locks past it are not taken by a fork from inside
/// heapprof.
const MAX_LOCKS: usize = 1024;

/// Whether `prepare` took only the locks marked in [`TAKEN`] (a fork from
/// inside heapprof) rather than all of them. Written and read as
/// `WAS_INSIDE` is; only a fork from a signal handler that found the gate
/// held past [`TRY_EACH_FOR`] could mix two forks' values.
static PARTIAL: AtomicBool = AtomicBool::new(false);

/// The locks a fork from inside heapprof took, by their place in the
/// order `FORK_LOCKS` shows them.
static TAKEN: [AtomicU64; MAX_LOCKS / 64] = [const { AtomicU64::new(0) }; MAX_LOCKS / 64];

/// Shows every lock of `FORK_LOCKS` to `f` with its place in the table's
/// order, in rank order.
fn each_fork_lock(f: &mut dyn FnMut(usize, &'static dyn Lockable)) {
    let mut place = 0;
    for each_lock in FORK_LOCKS {
        each_lock(&mut |lock| {
            f(place, lock);
            place += 1;
        });
    }
}

extern "C" fn prepare() {
    if GATE_OWNER.load(Relaxed) == this_thread() {
        // A signal handler's fork inside this thread's own fork, whose
        // handlers hold what they take and keep this thread inside
        // heapprof: this fork takes nothing and records nothing.
        NESTED.fetch_add(1, Relaxed);
        return;
    }
    let me = this_thread();
    let gate_moving_here = GATE_MOVING.load(Relaxed) == me;
    let partial = gate_moving_here || lock::any_lock_held();
    let inside = reentry::Inside::enter();
    if !gate_moving_here {
        GATE_MOVING.store(me, Relaxed);
        let taken = if partial {
            take_within(&GATE, TRY_EACH_FOR)
        } else {
            GATE.lock_and_keep();
            true
        };
        if taken {
            GATE_OWNER.store(me, Relaxed);
        }
        GATE_MOVING.store(0, Relaxed);
    }
    symbolize::before_fork();
    let mut last_rank = 0;
    each_fork_lock(&mut |place, lock| {
        debug_assert!(lock.rank() >= last_rank, "FORK_LOCKS is out of rank order");
        last_rank = lock.rank();
        if !partial {
            lock.lock_and_keep();
        } else if place < MAX_LOCKS && take_within(lock, TRY_EACH_FOR) {
            TAKEN[place / 64].fetch_or(1 << (place % 64), Relaxed);
        }
    });
    PARTIAL.store(partial, Relaxed);
    WAS_INSIDE.store(inside.forget(), Relaxed); // released in `parent` or `child`
}

/// Takes `lock` and keeps it, if it is free or becomes free within
/// `within`.
fn take_within(lock: &dyn Lockable, within: Duration) -> bool {
    let started = Instant::now();
    loop {
        if lock.try_lock_and_keep() {
            return true;
        }
        if started.elapsed() >= within {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Releases what `prepare` took.
///
/// # Safety
/// Only on the thread that ran `prepare` (in the parent), or on the
/// child's only thread, which is that thread's copy.
unsafe fn unlock_all() {
    let partial = PARTIAL.swap(false, Relaxed);
    each_fork_lock(&mut |place, lock| {
        let taken = !partial
            || (place < MAX_LOCKS && TAKEN[place / 64].load(Relaxed) & 1 << (place % 64) != 0);
        if taken {
            // SAFETY: per this function's contract, `prepare` took this
            // lock on this thread and forgot the guard.
            unsafe { lock.release_kept() };
        }
    });
    for word in &TAKEN {
        word.store(0, Relaxed);
    }
    // SAFETY: as above, for the lookup lock `before_fork` may have taken.
    unsafe { symbolize::after_fork() };
}

/// Whether this handler ends a fork nested in one of this thread's (see
/// [`NESTED`]); if so, counts it out.
fn leave_nested() -> bool {
    let nested = GATE_OWNER.load(Relaxed) == this_thread() && NESTED.load(Relaxed) > 0;
    if nested {
        NESTED.fetch_sub(1, Relaxed);
    }
    nested
}

/// In the parent: lets the next fork through the handlers, if this
/// fork's `prepare` took the gate.
///
/// # Safety
/// Only on the thread that ran `prepare`, just after the fork.
unsafe fn open_gate_in_parent() {
    if GATE_OWNER.load(Relaxed) != this_thread() {
        return;
    }
    GATE_MOVING.store(this_thread(), Relaxed);
    GATE_OWNER.store(0, Relaxed);
    // SAFETY: `prepare` took the gate on this thread and forgot the guard.
    unsafe { GATE.release_kept() };
    GATE_MOVING.store(0, Relaxed);
}

/// In the child, whose only thread is the forking one's copy: the gate is
/// held (by this fork, by the fork it interrupted, or by another thread,
/// absent here, whose fork a signal handler's gave up waiting for), and
/// nothing here will release it but this.
///
/// # Safety
/// Only in the child, before any other thread starts.
unsafe fn open_gate_in_child() {
    GATE_MOVING.store(this_thread(), Relaxed);
    GATE_OWNER.store(0, Relaxed);
    NESTED.store(0, Relaxed);
    // SAFETY: no thread of the child holds the gate, and the lock is a
    // futex word, which the child's unlock leaves free.
    unsafe { GATE.release_kept() };
    GATE_MOVING.store(0, Relaxed);
}

extern "C" fn parent() {
    if leave_nested() {
        return;
    }
    let was_inside = WAS_INSIDE.load(Relaxed);
    // Read before `unlock_all` clears it.
    let partial = PARTIAL.load(Relaxed);
    // SAFETY: `prepare` ran on this thread just before the fork.
    unsafe {
        unlock_all();
        open_gate_in_parent();
    }
    if CHILD_WORK_PENDING.swap(false, Relaxed) {
        // This process is the child of a fork nested in this one.
        settle_child(partial);
    }
    reentry::leave_forgotten(was_inside);
}

extern "C" fn child() {
    if leave_nested() {
        // The fork this one interrupted still holds the locks here, and
        // its own handler, which runs in this process when the signal
        // handler returns, releases them and then settles the child.
        CHILD_WORK_PENDING.store(true, Relaxed);
        return;
    }
    let was_inside = WAS_INSIDE.load(Relaxed);
    // Read before `unlock_all` clears it.
    let partial = PARTIAL.load(Relaxed);
    // SAFETY: the child's only thread is the copy of the one that ran
    // `prepare`.
    unsafe { unlock_all() };
    settle_child(partial);
    // SAFETY: this is the child's only thread, before it starts others.
    unsafe { open_gate_in_child() };
    // Only with the gate's owner cleared: a fork nested anywhere above set
    // this in its child, which this handler has now settled.
    CHILD_WORK_PENDING.store(false, Relaxed);
    reentry::leave_forgotten(was_inside);
}

/// Set in the child of a fork nested in another (see [`NESTED`]) for the
/// other's handler: the child's work waits for the locks it holds.
static CHILD_WORK_PENDING: AtomicBool = AtomicBool::new(false);

/// A child's work once the fork's locks are free; `from_inside`: the fork
/// came from a signal handler that interrupted heapprof.
fn settle_child(from_inside: bool) {
    // The parent's other threads are gone; forget them before their
    // memory can be reused (see `registry::forget_other_threads_after_fork`,
    // which leaves the lists alone if the interrupted code holds their
    // lock).
    let parent_had_others = registry::forget_other_threads_after_fork();
    crate::record::sites::after_fork_in_child();
    symbolize::after_fork_in_child(parent_had_others);
    // Forked from inside heapprof, this thread's interrupted code may be
    // the build lock's holder, and is its copy's to release.
    #[cfg(feature = "http")]
    crate::http::after_fork_in_child(from_inside);
    #[cfg(not(feature = "http"))]
    let _ = from_inside;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot's hold on retirements, taken on another thread of the
    /// parent at a fork, is not the child's: there a full table goes on
    /// retiring sites.
    #[test]
    fn a_forked_child_holds_no_retirements() {
        // Other tests' full tables retire sites meanwhile.
        let _tables = crate::record::tests::tables_exclusive();
        register_handlers();
        let held = crate::record::sites::RetirementsHeld::take();
        // SAFETY: the child reads an atomic and calls `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let free = !crate::record::sites::retirements_held();
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(i32::from(free)) };
        }
        drop(held);
        let mut status = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(libc::WEXITSTATUS(status), 1, "the child holds retirements");
    }

    #[test]
    fn every_fork_lock_has_a_place_in_taken() {
        let mut count = 0;
        each_fork_lock(&mut |_, _| count += 1);
        assert!(count <= MAX_LOCKS, "{count} locks");
    }
}
