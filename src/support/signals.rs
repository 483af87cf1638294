//! What the signal state says about the code running: whether this
//! thread is, as it seems, inside a signal handler.
//!
//! Code reached from a handler (`exit` in a `SIGTERM` handler runs the
//! exit hooks) must not allocate: the handler may have interrupted the
//! inner allocator holding its lock, which is released only when the
//! handler returns. The kernel blocks a signal while its handler runs
//! (unless the handler was installed with `SA_NODEFER`), so a signal that
//! has a handler and is blocked is taken as being handled, except where
//! the block says something else:
//!
//! * signals blocked when heapprof started ([`note_start_mask`]), as a
//!   parent that blocks `SIGINT` and execs leaves them: the program did
//!   not block them itself;
//! * the fault signals (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`), which
//!   Rust's standard library handles in every program (stack overflow
//!   reports), so that a thread that blocks every signal to wait for them
//!   with `sigwait` or `signalfd` is not taken for a handler.
//!
//! A program that blocks a signal it also handles and then exits is taken
//! for a handler all the same (its exit profile is not written, with a
//! line that says why).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Signals 1 to 64 blocked on the thread of heapprof's first allocation,
/// bit `n - 1` for signal `n`.
static START_MASK: AtomicU64 = AtomicU64::new(0);

/// Signals whose handler may be the standard library's.
const FAULTS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// Signals an instruction of the thread raises for itself: the faults, a
/// system call a seccomp filter traps (`SIGSYS`) and a breakpoint
/// (`SIGTRAP`). Blocked, one of them kills the process, whatever handler
/// the program installed for it, so [`HeldOff`] never blocks them.
const RAISED_BY_THE_THREAD: [libc::c_int; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSYS,
    libc::SIGTRAP,
];

/// The signals 1 to 64 blocked on this thread, as [`START_MASK`] holds
/// them; `None` if the mask cannot be read.
fn blocked_now() -> Option<u64> {
    // SAFETY: `sigset_t` is plain data, valid zeroed; with a null new set
    // `pthread_sigmask` only reads the mask into `mask`; `sigismember`
    // reads it.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) != 0 {
            return None;
        }
        Some(
            (1..=64)
                .filter(|&n| libc::sigismember(&mask, n) == 1)
                .fold(0, |bits, n| bits | 1 << (n - 1)),
        )
    }
}

/// Notes the signals blocked now, as the ones the program started with.
/// Called once, at heapprof's first allocation.
pub(crate) fn note_start_mask() {
    START_MASK.store(blocked_now().unwrap_or(0), Relaxed);
}

/// A signal this thread seems to be handling now (see the module
/// comment), if any. No allocation, no lock.
pub(crate) fn signal_being_handled() -> Option<libc::c_int> {
    let blocked = blocked_now()? & !START_MASK.load(Relaxed);
    (1..=64).find(|&signal| {
        blocked & 1 << (signal - 1) != 0 && !FAULTS.contains(&signal) && has_handler(signal)
    })
}

/// Whether `signal` has a handler (neither the default action nor
/// ignored).
fn has_handler(signal: libc::c_int) -> bool {
    // SAFETY: `sigaction` is plain data, valid zeroed; with a null new
    // action `sigaction` only reads the current one into `action`, and
    // fails (checked) for a number that names no signal.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut action) == 0
            && action.sa_sigaction != libc::SIG_DFL
            && action.sa_sigaction != libc::SIG_IGN
    }
}

/// Signals other than those the thread raises for itself
/// ([`RAISED_BY_THE_THREAD`]) held off on this thread until dropped (then
/// the mask is as it was): for code other threads wait on while it runs,
/// which a handler that waits for one of them must not interrupt, and
/// for starting heapprof's own threads, which take their mask from it.
pub(crate) struct HeldOff {
    old: Option<libc::sigset_t>,
}

impl HeldOff {
    pub(crate) fn all_but_faults() -> HeldOff {
        // SAFETY: `sigset_t` is plain data, valid zeroed, filled by
        // `sigfillset` before use; `pthread_sigmask` changes only this
        // thread's mask and writes the old one into `old` (checked).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            for n in RAISED_BY_THE_THREAD {
                libc::sigdelset(&mut set, n);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0;
            HeldOff {
                old: blocked.then_some(old),
            }
        }
    }
}

impl Drop for HeldOff {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: restores the mask `pthread_sigmask` gave back.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn on_winch(_: libc::c_int) {}

    /// Blocking a signal that has a handler reads as handling it; the
    /// fault signals and what was blocked at the start do not.
    #[test]
    fn a_blocked_signal_with_a_handler_reads_as_being_handled() {
        // SIGWINCH: no other test of the crate uses it.
        let winch = libc::SIGWINCH;
        // Runs on a thread of its own, whose mask this test may change.
        std::thread::spawn(move || {
            // SAFETY: plain data for sigaction/sigprocmask, filled before
            // use; the handler does nothing.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_winch as extern "C" fn(libc::c_int) as usize;
                assert_eq!(libc::sigaction(winch, &action, std::ptr::null_mut()), 0);
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut all);
                for n in FAULTS {
                    libc::sigaddset(&mut all, n);
                }
                libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
                assert_eq!(signal_being_handled(), None, "fault signals");
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, winch);
                libc::pthread_sigmask(libc::SIG_BLOCK, &one, std::ptr::null_mut());
                assert_eq!(signal_being_handled(), Some(winch));
                let start = START_MASK.load(Relaxed);
                START_MASK.store(start | 1 << (winch - 1), Relaxed);
                assert_eq!(signal_being_handled(), None, "blocked at the start");
                START_MASK.store(start, Relaxed);
            }
        })
        .join()
        .unwrap();
    }
}
