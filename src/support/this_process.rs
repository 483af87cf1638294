//! Which process this is, told apart from the one it was forked from, and
//! when it started.
//!
//! heapprof's threads, exit handlers and prepared dumps belong to the
//! process that set them up; a forked child has copies of the handles but
//! not the threads, and its exit is not the parent's. A pid alone does not
//! tell them apart: a child started in a new PID namespace can have its
//! parent's pid (pid 1 in both, the common case in containers). So a
//! process is its pid and the number of forks between the first process
//! that ran heapprof and it, counted by a fork handler of its own.

use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
#[cfg(feature = "pyroscope")]
use std::{
    sync::OnceLock,
    time::{Instant, SystemTime},
};

/// When the program first allocated through heapprof, on both clocks:
/// where the pusher's counts "from the program's start" begin.
#[cfg(feature = "pyroscope")]
static STARTED: OnceLock<(Instant, SystemTime)> = OnceLock::new();

/// Notes the program's start, at its first allocation
/// (`process::on_first_allocation`). Reads two clocks; allocates nothing.
#[cfg(feature = "pyroscope")]
pub(crate) fn note_start() {
    let _ = STARTED.set((Instant::now(), SystemTime::now()));
}

/// The program's start ([`note_start`]); now, if it is not noted yet.
#[cfg(feature = "pyroscope")]
pub(crate) fn started() -> (Instant, SystemTime) {
    STARTED
        .get()
        .copied()
        .unwrap_or_else(|| (Instant::now(), SystemTime::now()))
}

/// The process whose first allocation reached heapprof ([`note_first`]),
/// as [`ThisProcess::to_bits`]; 0 before it.
static FIRST: AtomicU64 = AtomicU64::new(0);

/// Notes the calling process as the one heapprof started in, at its first
/// allocation (`process::on_first_allocation`). A child forked later
/// inherits the note, an `exec`uted program starts without it.
pub(crate) fn note_first() {
    FIRST.store(ThisProcess::get().to_bits(), Relaxed);
}

/// Whether this is the process heapprof started in ([`note_first`]), not
/// a child forked from it: only there does the environment start threads
/// (the dump series, the pusher), whether the fork came before the first
/// sample or after it. True before the note.
pub(crate) fn is_first() -> bool {
    let first = FIRST.load(Relaxed);
    first == 0 || first == ThisProcess::get().to_bits()
}

/// Forks between the first process that counted and this one: bumped
/// once in each child, by the only thread there, before `fork` returns.
static FORKS: AtomicU32 = AtomicU32::new(0);

static COUNTING: Once = Once::new();

/// A process: equal only to itself, never to its parent or its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThisProcess {
    pid: u32,
    forks: u32,
}

impl ThisProcess {
    /// The calling process. The first call installs the fork counter, so
    /// take one before anything that a child must tell apart exists.
    pub(crate) fn get() -> Self {
        count_forks();
        ThisProcess {
            pid: std::process::id(),
            forks: FORKS.load(Relaxed),
        }
    }

    /// Whether this is the calling process.
    pub(crate) fn is_current(self) -> bool {
        self == Self::get()
    }

    /// As one word, for an atomic.
    pub(crate) fn to_bits(self) -> u64 {
        (u64::from(self.forks) << 32) | u64::from(self.pid)
    }
}

/// Installs the fork counter once per process. Handlers installed later
/// (`process/fork.rs`) run after it in a child, so they see the count of
/// the process they run in.
pub(crate) fn count_forks() {
    COUNTING.call_once(|| {
        // SAFETY: `forked` is an `extern "C"` function that takes no
        // arguments and never unwinds.
        unsafe {
            libc::pthread_atfork(None, None, Some(forked));
        }
    });
}

/// The child's fork handler: no other thread runs in the child yet.
extern "C" fn forked() {
    FORKS.store(FORKS.load(Relaxed).wrapping_add(1), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::ThisProcess;

    #[test]
    fn a_forked_child_is_another_process() {
        let parent = ThisProcess::get();
        assert!(parent.is_current());
        // SAFETY: the child only compares two values and calls `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let child = ThisProcess::get();
            let seen = u8::from(!parent.is_current())
                | u8::from(child.is_current()) << 1
                | u8::from(child.forks == parent.forks + 1) << 2;
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(i32::from(seen)) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(libc::WEXITSTATUS(status), 7, "the child's view");
        assert!(parent.is_current());
        assert_ne!(parent.to_bits(), 0);
    }
}
