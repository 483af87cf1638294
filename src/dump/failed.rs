//! The peak profile written when the inner allocator fails one of the
//! program's allocations: the one that, unless the program handles it
//! (`try_reserve`), ends the process through `handle_alloc_error`.
//!
//! Where it runs: inside `GlobalAlloc::alloc` or `realloc`, on whatever
//! thread failed, which may hold any lock of the program's or the C
//! library's, may be in a signal handler, and has just been told there is
//! no memory. Building a profile there is out of the question (it
//! allocates, symbolizes and takes heapprof's locks), and so is allocating
//! at all: a heapprof allocation that failed in turn would abort a program
//! that was about to recover. So the profile is built before it is needed:
//! the at-limit watcher, on the dump thread, encodes the peak profile
//! on the first poll after each new peak copy ([`refresh`]), and publishes
//! the bytes, with the file's path and temporary path already expanded and
//! NUL-terminated, and the line for stderr already formatted. At the
//! failure ([`on_failed_alloc`]) the thread takes the prepared profile
//! with one atomic swap (no lock, no wait) and writes it with plain system
//! calls (`lstat`, `faccessat`, `open`, `write`, `close`, `rename`,
//! `unlink`), which allocate nothing and are async-signal-safe.
//!
//! What it writes, at most once per process: the peak profile as of the
//! dump thread's last refresh (a poll and an encoding behind the newest
//! peak copy), to `<dump path>.alloc-failed.peak.pb.gz`,
//! and one line on stderr. It writes only a file that is not there or is a
//! regular file with one name that this process may write (replaced
//! through a temporary file and a rename, as other dumps replace one); a symlink,
//! device, FIFO, hard-linked or read-only file there is left alone and
//! nothing is written, since writing through one safely needs more than
//! those calls.
//!
//! What it does not do:
//!
//! * It does not write for a failure it cannot see. Only allocations that
//!   reach the slow path are checked, and every allocation of
//!   `sample::MAX_COUNTDOWN` bytes or more does; a smaller one fails
//!   unseen unless it happens to end the thread's countdown.
//! * It does not write for heapprof's own allocations, nor on a thread
//!   inside heapprof or holding one of its free-path locks.
//! * It does not write for a request that could never succeed: one at
//!   least as large as a limit the kernel holds the process to (the
//!   cgroup's as the watcher last read it, `RLIMIT_AS`, physical memory;
//!   not `HEAPPROF_MEMORY_LIMIT`, which a request may pass): a
//!   `try_reserve` of an untrusted length is no sign that memory is
//!   running out. Nor in a forked child (the prepared path names the
//!   parent).
//! * It does not help when the kernel's OOM killer ends the process: with
//!   Linux's default overcommit, allocations seldom fail; the process is
//!   sent `SIGKILL`, which nothing can catch. Failures come from allocators
//!   with a cap, `RLIMIT_AS`, `vm.overcommit_memory=2` and 32-bit address
//!   spaces. The at-limit dumps are for the OOM killer.
//! * It writes once: a program that recovers from a failure and fails
//!   again later gets no second file.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
};

use crate::config::report::{self, Shown};
use crate::output::{self, Format, Source, pprof};
use crate::record::peak;
use crate::support::this_process::ThisProcess;
use crate::support::{lock, reentry};

/// The sibling tag of the file: `heap.pb.gz` → `heap.alloc-failed.peak.pb.gz`.
pub(crate) const TAG: &str = "alloc-failed.peak";

/// A profile ready to be written without allocating.
struct Prepared {
    /// The watcher that prepared it (see [`withdraw`]).
    owner: usize,
    /// The process the paths were expanded for.
    process: ThisProcess,
    path: CString,
    tmp: CString,
    bytes: Vec<u8>,
    /// The end of the line on stderr after the failed size, when written.
    line_end: Vec<u8>,
    /// The end of the line on stderr after the failed size, when not
    /// written, before the reason.
    failed_end: Vec<u8>,
}

/// The prepared profile, owned by whoever swaps it out: the dump thread
/// that replaces it (and frees the old one) or the failing thread that
/// writes it (and never frees it: it is inside an allocation).
static PREPARED: AtomicPtr<Prepared> = AtomicPtr::new(ptr::null_mut());

/// Set once a failure took the prepared profile to write it.
static WRITTEN: AtomicBool = AtomicBool::new(false);

/// The size no allocation can reach as the watcher last saw it, in bytes
/// (0: none seen yet).
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Records the size no allocation can reach (`limit::beyond_reach`), for
/// [`on_failed_alloc`]'s size test.
pub(crate) fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Relaxed);
}

/// Re-encodes the peak profile for `owner`'s dump path `base` if a new
/// peak copy was kept since `seen` (updated); true if it did. On the dump
/// thread, inside the profiler. A profile that cannot be prepared (the
/// path names a directory) is an error, reported by the caller.
pub(crate) fn refresh(owner: usize, base: &Path, seen: &mut u64) -> std::io::Result<bool> {
    let generation = peak::generation();
    if generation == *seen || WRITTEN.load(Relaxed) {
        return Ok(false);
    }
    let mut bytes = Vec::new();
    let options = pprof::Options {
        comments: vec![
            "heapprof: prepared in advance, and written when an allocation failed \
             (the allocator returned null): the peak as of the last check before the failure"
                .to_owned(),
        ],
        ..pprof::Options::default()
    };
    let built = output::write(Source::Peak, Format::Pprof, options, &mut bytes);
    if matches!(&built, Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory) {
        // No room to build now: this peak is tried again at the next
        // check, not passed over.
        return Ok(false);
    }
    *seen = generation;
    if !built? {
        return Ok(false);
    }
    let path = super::sibling(&super::expand(base), TAG)?;
    let process = ThisProcess::get();
    let tmp = super::temporary_name(&path, 0, "alloc-failed.tmp");
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("heapprof: {}: a NUL byte in the path", Shown::path(p)),
            )
        })
    };
    let prepared = Box::new(Prepared {
        owner,
        process,
        line_end: format!(
            " bytes failed; wrote the peak profile prepared for it to {}\n",
            Shown::path(&path)
        )
        .into_bytes(),
        failed_end: format!(
            " bytes failed; could not write the peak profile prepared for it to {}: ",
            Shown::path(&path)
        )
        .into_bytes(),
        path: c(&path)?,
        tmp: c(&tmp)?,
        bytes,
    });
    let old = PREPARED.swap(Box::into_raw(prepared), AcqRel);
    if !old.is_null() {
        // SAFETY: `old` came from `Box::into_raw` here; swapping it out
        // made this thread its only owner.
        drop(unsafe { Box::from_raw(old) });
    }
    Ok(true)
}

/// Takes back the profile `owner` prepared, when its watcher stops. One
/// prepared by another watcher is put back.
pub(crate) fn withdraw(owner: usize) {
    let p = PREPARED.swap(ptr::null_mut(), AcqRel);
    if p.is_null() {
        return;
    }
    // SAFETY: swapped out, so this thread owns it (see `PREPARED`).
    let prepared = unsafe { Box::from_raw(p) };
    if prepared.owner != owner {
        let p = Box::into_raw(prepared);
        if let Err(p) = PREPARED.compare_exchange(ptr::null_mut(), p, AcqRel, Relaxed) {
            // Another was published meanwhile: it is newer.
            // SAFETY: `p` is the one this thread took back out above.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// The inner allocator returned null for the program's allocation of
/// `size` bytes. Writes the prepared peak profile, once, if one is
/// prepared and it is safe here (see the module comment). Allocates
/// nothing, takes no lock, never panics.
pub(crate) fn on_failed_alloc(size: usize) {
    // Acquire: the watcher stores `LIMIT` before it publishes a profile,
    // so a profile seen here comes with the limit read for it.
    if PREPARED.load(Acquire).is_null()
        || WRITTEN.load(Relaxed)
        || reentry::is_inside()
        || lock::free_path_lock_held()
    {
        return;
    }
    let limit = LIMIT.load(Relaxed);
    if limit != 0 && size as u64 >= limit {
        return;
    }
    let p = PREPARED.swap(ptr::null_mut(), Acquire);
    if p.is_null() {
        return;
    }
    if WRITTEN.swap(true, AcqRel) {
        // Another failing thread got here first; this one leaves the
        // profile where it was (if nothing replaced it meanwhile) and
        // otherwise keeps it, unfreed.
        let _ = PREPARED.compare_exchange(ptr::null_mut(), p, AcqRel, Relaxed);
        return;
    }
    // SAFETY: `p` came from `Box::into_raw` in `refresh` and was swapped
    // out above, so this thread is its only owner; it is never freed (a
    // free here would call the allocator inside a failing allocation), so
    // the reference stays valid.
    let prepared = unsafe { &*p };
    if !prepared.process.is_current() {
        return;
    }
    match write_prepared(prepared) {
        Ok(()) => say(&[START, Digits::of(size as u64).as_bytes(), &prepared.line_end]),
        Err(Refused::Kept) => say(&[
            START,
            Digits::of(size as u64).as_bytes(),
            &prepared.failed_end,
            b"a file there that is not a regular file with one name this process may write is left alone\n",
        ]),
        Err(Refused::Errno(errno)) => say(&[
            START,
            Digits::of(size as u64).as_bytes(),
            &prepared.failed_end,
            b"errno ",
            Digits::of(errno.unsigned_abs().into()).as_bytes(),
            b"\n",
        ]),
    }
}

/// Why [`write_prepared`] wrote nothing.
enum Refused {
    /// What is at the path is not replaced (see the module comment).
    Kept,
    /// A system call failed with this `errno`.
    Errno(i32),
}

/// The `errno` of the last failed call, as [`Refused`].
fn errno() -> Refused {
    Refused::Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Writes `p.bytes` to `p.path` through `p.tmp` and a rename, if the path
/// holds nothing or a regular file, as it is looked at before the write
/// and again just before the rename.
fn write_prepared(p: &Prepared) -> Result<(), Refused> {
    let st = replaceable(p)?;
    let replaces_a_file = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    // A file to replace another is its owner's alone until it takes the
    // other's bits: no one opens it meanwhile who could not read that one.
    let mode: libc::c_uint = if replaces_a_file { 0o600 } else { 0o666 };
    // SAFETY: `p.tmp` is NUL-terminated; O_CREAT takes the mode argument.
    let fd = unsafe {
        libc::open(
            p.tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    if replaces_a_file {
        // The file replaced keeps its permission bits and, where this
        // process may give it away, its owner: a private profile stays
        // private. Failures leave the new file this process's
        // (`mode_kept`). The group first, while the file is still this
        // process's.
        // SAFETY: `fd` is the descriptor just opened; the calls only
        // change its inode's metadata (`-1`: that id unchanged).
        unsafe {
            let group_kept = libc::fchown(fd, libc::uid_t::MAX, st.st_gid) == 0;
            libc::fchown(fd, st.st_uid, libc::gid_t::MAX);
            libc::fchmod(fd, super::mode_kept(st.st_mode, group_kept));
        }
    }
    let written = report::without_write_signals(
        || write_all(fd, &p.bytes).map_err(|()| errno()),
        |r| match r {
            Err(Refused::Errno(e)) => Some(*e),
            _ => None,
        },
    );
    // SAFETY: `fd` is the descriptor opened above, closed once here.
    let closed = if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(errno())
    };
    let done = written.and(closed).and_then(|()| {
        // What is there may have changed since the first look; where
        // nothing is, the rename must not replace what appears meanwhile.
        let nothing_there = replaceable(p)?.st_mode & libc::S_IFMT == 0;
        if nothing_there {
            match super::rename_no_replace(&p.tmp, &p.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Refused::Kept);
                }
                Err(e) if super::lacks_no_replace(&e) => {}
                Err(e) => return Err(Refused::Errno(e.raw_os_error().unwrap_or(0))),
            }
        }
        // SAFETY: both paths are NUL-terminated.
        match unsafe { libc::rename(p.tmp.as_ptr(), p.path.as_ptr()) } {
            0 => Ok(()),
            _ => Err(errno()),
        }
    });
    if done.is_err() {
        // SAFETY: `p.tmp` is NUL-terminated; it names the file this call
        // made.
        unsafe { libc::unlink(p.tmp.as_ptr()) };
    }
    done
}

/// What is at `p.path`, if it may be replaced: nothing (a zeroed
/// `stat`) or a regular file of one name that this process may write.
fn replaceable(p: &Prepared) -> Result<libc::stat, Refused> {
    // SAFETY: `stat` is plain old data; all zeros is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `p.path` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::lstat(p.path.as_ptr(), &mut st) } == 0 {
        // A hard-linked file is left alone, as a symlink is: replacing one
        // name would part it from the others.
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink > 1 {
            return Err(Refused::Kept);
        }
        // Nor is a file this process may not write, which a rename could
        // still replace: the shell's `>` check.
        // SAFETY: `p.path` is NUL-terminated; the call reads it and
        // nothing else.
        let asked = unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                p.path.as_ptr(),
                libc::W_OK,
                libc::AT_EACCESS,
            )
        };
        if asked != 0 && super::is_refusal(std::io::Error::last_os_error().raw_os_error()) {
            return Err(Refused::Kept);
        }
    } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
        return Err(errno());
    }
    Ok(st)
}

/// Writes all of `bytes` to `fd`, retrying short writes and interrupts;
/// on failure `errno` says why.
fn write_all(fd: libc::c_int, mut bytes: &[u8]) -> Result<(), ()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for `bytes.len()` bytes of reading.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// How the line on stderr starts; the failed size follows.
const START: &[u8] = b"heapprof: an allocation of ";

/// A number in decimal, formatted without allocating.
struct Digits {
    buf: [u8; 20],
    at: usize,
}

impl Digits {
    fn of(mut n: u64) -> Digits {
        let mut d = Digits {
            buf: [0; 20],
            at: 20,
        };
        loop {
            d.at -= 1;
            d.buf[d.at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return d;
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.at..]
    }
}

/// `parts` as one line on stderr, in one `writev`, without allocating, if
/// stderr takes messages (`config::report::stderr_takes_messages`); a
/// failed write is ignored.
fn say(parts: &[&[u8]]) {
    if !crate::config::report::stderr_takes_messages() {
        return;
    }
    let mut iov = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; 8];
    let n = parts.len().min(iov.len());
    for (slot, part) in iov.iter_mut().zip(parts) {
        *slot = libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        };
    }
    report::without_write_signals(
        // SAFETY: the first `n` iovecs point at live slices of their
        // lengths; writev only reads them.
        || unsafe { libc::writev(libc::STDERR_FILENO, iov.as_ptr(), n as libc::c_int) },
        |&written| {
            (written < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::{Prepared, Refused, ThisProcess, write_prepared};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn prepared(path: &Path) -> Prepared {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        Prepared {
            owner: 0,
            process: ThisProcess::get(),
            path: c(path),
            tmp: c(&path.with_file_name(".x.tmp")),
            bytes: b"profile".to_vec(),
            line_end: Vec::new(),
            failed_end: Vec::new(),
        }
    }

    /// Nothing or a regular file is replaced; a symlink, FIFO or
    /// directory is left as it is, and no temporary file stays.
    #[test]
    fn writes_only_over_nothing_or_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pb.gz");
        assert!(write_prepared(&prepared(&path)).is_ok());
        assert_eq!(std::fs::read(&path).unwrap(), b"profile");
        std::fs::write(&path, "old").unwrap();
        assert!(write_prepared(&prepared(&path)).is_ok());
        assert_eq!(std::fs::read(&path).unwrap(), b"profile");

        let target = dir.path().join("target");
        std::fs::write(&target, "kept").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            write_prepared(&prepared(&link)),
            Err(Refused::Kept)
        ));
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");

        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            write_prepared(&prepared(&fifo)),
            Err(Refused::Kept)
        ));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(
            write_prepared(&prepared(&sub)),
            Err(Refused::Kept)
        ));
        assert!(sub.is_dir());

        let linked = dir.path().join("linked");
        std::fs::hard_link(&target, &linked).unwrap();
        assert!(matches!(
            write_prepared(&prepared(&linked)),
            Err(Refused::Kept)
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");

        // A directory that is not there: the error is the system's.
        let nowhere = dir.path().join("none").join("p.pb.gz");
        assert!(matches!(
            write_prepared(&prepared(&nowhere)),
            Err(Refused::Errno(libc::ENOENT))
        ));

        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["fifo", "link", "linked", "p.pb.gz", "sub", "target"]
        );
    }

    /// A file this process may not write is left alone, though its
    /// directory would let a rename replace it. As root, the check runs on
    /// a thread whose file-system identity is another user's (`setfsuid`
    /// changes the calling thread's alone, and drops its file
    /// capabilities); the directory is in `/tmp`, which that user may
    /// enter, so the file is refused for being read-only and nothing else.
    #[test]
    fn leaves_a_file_it_may_not_write() {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("read-only.pb.gz");
        std::fs::write(&path, "kept").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let p = prepared(&path);
        let written = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    // SAFETY: changes this thread's file-system user id
                    // only; the thread ends with the scope.
                    unsafe { libc::setfsuid(65534) };
                    // SAFETY: as above; a second call returns the id set.
                    if unsafe { libc::setfsuid(65534) } != 65534 {
                        assert!(
                            std::env::var_os("HEAPPROF_REQUIRE_ROOT").is_none(),
                            "HEAPPROF_REQUIRE_ROOT is set, but user 65534 cannot be taken"
                        );
                        let _ = writeln!(
                            std::io::stderr(),
                            "skipped: user 65534 cannot be taken here (a user namespace?)"
                        );
                        return None;
                    }
                }
                // The user can see the file: a refusal is for writing.
                assert!(std::fs::symlink_metadata(&path).is_ok());
                Some(matches!(write_prepared(&p), Err(Refused::Kept)))
            })
            .join()
            .unwrap()
        });
        let Some(refused) = written else {
            return;
        };
        assert!(refused);
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left");
    }
}
