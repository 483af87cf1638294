//! Messages on stderr from inside the profiler.
//!
//! `eprintln!` panics when stderr cannot be written (closed, a full pipe
//! reporting an error, EPIPE), and a panic inside `GlobalAlloc` aborts the
//! program. heapprof's messages (a malformed variable, a failed dump, an
//! unwinder change) are worth one line when stderr works and nothing when
//! it does not, so they go through here and errors are dropped. Nor are
//! they worth a line in a file the program put in stderr's place.
//!
//! A write that fails can also raise a signal whose default action ends
//! the program: `SIGPIPE` when the reader of a pipe is gone, `SIGXFSZ`
//! past the file size limit. heapprof's writes, these lines and the dumps
//! (`dump/`), go through [`without_write_signals`], so that their failure
//! is an error and nothing more.

use std::ffi::OsStr;
use std::io::Write;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// The signals a failed write raises, with the `errno` of its failure:
/// a pipe or FIFO with no reader left, and a file past the process's size
/// limit (`RLIMIT_FSIZE`). Either ends the program at its default action,
/// which a program may have put back (command-line tools do for
/// `SIGPIPE`).
const WRITE_SIGNALS: [(libc::c_int, i32); 2] =
    [(libc::SIGPIPE, libc::EPIPE), (libc::SIGXFSZ, libc::EFBIG)];

/// Runs `write`, one of heapprof's own writes (a dump, a line on
/// stderr), with [`WRITE_SIGNALS`] blocked on this thread, so that its
/// failure is an error (`EPIPE`, `EFBIG`) and not the program's end.
/// `errno` gives the error `write` ended with, if any: the signal that
/// error raised is taken back before the mask is restored (on unwinding
/// too), unless it was pending before. A thread that blocks a signal
/// itself keeps whatever is pending for it. An `EPIPE` or `EFBIG` that
/// raised no signal (a file system's own) may take back one sent to the
/// process meanwhile. No allocation.
pub(crate) fn without_write_signals<T>(
    write: impl FnOnce() -> T,
    errno: impl FnOnce(&T) -> Option<i32>,
) -> T {
    // SAFETY: `sigset_t` is plain data, valid zeroed and set up by
    // sigemptyset/sigaddset before use; every call gets pointers to live
    // locals; `pthread_sigmask` changes only this thread's mask; a zero
    // timeout makes `sigtimedwait` take a pending signal of the set or
    // return at once.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for (signal, _) in WRITE_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return write();
        }
        let _restore = MaskRestored(old);
        let pending = |signal| {
            let mut now: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut now) == 0 && libc::sigismember(&now, signal) == 1
        };
        let pending_before = WRITE_SIGNALS.map(|(signal, _)| pending(signal));
        let result = write();
        let failed_with = errno(&result);
        for ((signal, raised_by), was_pending) in WRITE_SIGNALS.into_iter().zip(pending_before) {
            let ours = failed_with == Some(raised_by)
                && libc::sigismember(&old, signal) == 0
                && !was_pending
                && pending(signal);
            if ours {
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, signal);
                let now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::sigtimedwait(&one, std::ptr::null_mut(), &now);
            }
        }
        result
    }
}

/// Puts this thread's signal mask back as it holds it when dropped.
struct MaskRestored(libc::sigset_t);

impl Drop for MaskRestored {
    fn drop(&mut self) {
        // SAFETY: restores a mask `pthread_sigmask` gave back; changes only
        // this thread's.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// The `errno` of an `io::Result`'s error, for [`without_write_signals`].
pub(crate) fn io_errno<T>(result: &std::io::Result<T>) -> Option<i32> {
    result.as_ref().err().and_then(std::io::Error::raw_os_error)
}

/// Writes one line to stderr, ignoring failure; nothing if stderr does
/// not take messages ([`stderr_takes_messages`]).
pub(crate) fn warn(args: std::fmt::Arguments<'_>) {
    if stderr_takes_messages() {
        let _ = without_write_signals(|| writeln!(std::io::stderr(), "{args}"), io_errno);
    }
}

/// A message said at most once per process: the first [`Once::warn`]
/// says it, later ones say nothing.
pub(crate) struct Once(AtomicBool);

impl Once {
    pub(crate) const fn new() -> Once {
        Once(AtomicBool::new(false))
    }

    /// Whether something was said through this.
    pub(crate) fn said(&self) -> bool {
        self.0.load(Relaxed)
    }

    /// Writes `args` as [`warn`] does, unless something was said through
    /// this already.
    pub(crate) fn warn(&self, args: std::fmt::Arguments<'_>) {
        if !self.0.swap(true, Relaxed) {
            warn(args);
        }
    }
}

/// The file descriptor 2 named when the program first allocated
/// ([`note_stderr`]): its device and inode, valid once `STDERR_NOTED`.
static STDERR_DEV: AtomicU64 = AtomicU64::new(0);
static STDERR_INO: AtomicU64 = AtomicU64::new(0);
static STDERR_NOTED: AtomicBool = AtomicBool::new(false);

/// What descriptor 2 names now: device, inode and mode; `None` if it is
/// closed.
fn stderr_now() -> Option<(u64, u64, libc::mode_t)> {
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct,
    // which fstat overwrites.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat` for the call's duration.
    let found = unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } == 0;
    found.then_some((st.st_dev, st.st_ino, st.st_mode))
}

/// A device and inode no file has: descriptor 2 was closed when noted.
const CLOSED: (u64, u64) = (u64::MAX, u64::MAX);

/// Notes what descriptor 2 names, at the program's first allocation
/// ([`CLOSED`] if nothing).
pub(crate) fn note_stderr() {
    let (dev, ino) = stderr_now().map_or(CLOSED, |(dev, ino, _)| (dev, ino));
    STDERR_DEV.store(dev, Relaxed);
    STDERR_INO.store(ino, Relaxed);
    STDERR_NOTED.store(true, Release);
}

/// Whether a message may be written to descriptor 2: it names what it
/// named at the program's first allocation, or a log put there since (a
/// regular file open for appending). A program that closed its stderr and
/// let a file of its own, or a connection, take the number gets no line
/// of heapprof's in it; nor does a log put there that is not open for
/// appending. Before the first allocation, any open descriptor 2 takes
/// messages. Only system calls: callable from a signal handler.
pub(crate) fn stderr_takes_messages() -> bool {
    let Some((dev, ino, mode)) = stderr_now() else {
        return false;
    };
    let noted = STDERR_NOTED.load(Acquire);
    if !noted || (dev, ino) == (STDERR_DEV.load(Relaxed), STDERR_INO.load(Relaxed)) {
        return true;
    }
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's
    // flags.
    let flags = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_GETFL) };
    mode & libc::S_IFMT == libc::S_IFREG && flags != -1 && flags & libc::O_APPEND != 0
}

/// At most this many characters of a value are echoed in a message, so
/// that a value of any size stays one short line.
const SHOWN_VALUE_CHARS: usize = 64;

/// At most this many characters of a path are echoed: `PATH_MAX`, so that
/// any path the system takes is shown whole, where the user must find it.
const SHOWN_PATH_CHARS: usize = 4096;

/// A value as a message shows it (a variable's raw value, a URL, a path):
/// quoted and escaped, so on one line, and cut after a number of
/// characters with its full length in bytes.
pub(crate) struct Shown<'a> {
    value: &'a OsStr,
    max_chars: usize,
}

impl<'a> Shown<'a> {
    /// A value, cut after [`SHOWN_VALUE_CHARS`] characters.
    pub(crate) fn new(value: &'a (impl AsRef<OsStr> + ?Sized)) -> Shown<'a> {
        Shown {
            value: value.as_ref(),
            max_chars: SHOWN_VALUE_CHARS,
        }
    }

    /// A path, cut after [`SHOWN_PATH_CHARS`] characters.
    pub(crate) fn path(value: &'a (impl AsRef<OsStr> + ?Sized)) -> Shown<'a> {
        Shown {
            value: value.as_ref(),
            max_chars: SHOWN_PATH_CHARS,
        }
    }
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted = format!("{:?}", self.value);
        match quoted.char_indices().nth(self.max_chars) {
            None => f.write_str(&quoted),
            Some((cut, _)) => write!(
                f,
                "{}...\" ({} bytes in all)",
                &quoted[..cut],
                self.value.len()
            ),
        }
    }
}
