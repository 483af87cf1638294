//! Profiles written without a call at the right moment: at exit, when a
//! guard is dropped, periodically or on growth, the peak, as memory nears
//! its limit (`limit.rs`, `support/memory.rs`), and when an allocation fails
//! (`failed.rs`).
//!
//! Every dump goes through the same code as `write_profile`. A dump that
//! fails is reported on stderr once per kind of dump (the program goes
//! on); later failures of the same kind are silent.
//!
//! Paths: `%p` and `%e` in any dump path are the process id and the
//! executable's name ([`expand`]). What is at the path decides how it is
//! written ([`write_dump`]): nothing or a regular file is replaced whole,
//! by a rename, as is the regular file a symlink leads to (the symlink
//! stays); a device, FIFO, `/dev/stdout` or a file with more than one
//! name is opened and written, and stays what it is; a directory, and a
//! file this process may not write, are errors. Nothing is
//! named after a path that is not a regular file, but for the null
//! device, whose siblings are itself ([`sibling`]).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::time::{Duration, Instant};

use crate::config;
use crate::config::report::{self, Shown};
use crate::output::{self, Format, Source, pprof};
use crate::support::own_thread::{self, OwnThread, Wake};
use crate::support::reentry;
use crate::support::this_process::ThisProcess;

pub(crate) mod failed;
mod limit;

/// Writes the current profile to `path`, after [`expand`]ing it, with the
/// options of a profile taken as the program ends. The error names the
/// path. Called by the program: what it is given back is its own memory.
fn write_file(path: &Path) -> io::Result<()> {
    output::check_installed()?;
    reentry::refuse_under_own_lock()?;
    // Before the path's expansion and the comment allocate.
    output::check_room()?;
    let written =
        reentry::Inside::enter_for(|| write_profile_at(&expand(path), pprof::Options::at_exit()));
    written.map_err(reentry::as_programs)
}

/// [`write_file`] to a path already expanded.
fn write_profile_at(path: &Path, options: pprof::Options) -> io::Result<()> {
    let _inside = reentry::Inside::enter();
    write_dump(path, |w| {
        output::write(Source::Live, Format::Pprof, options, w)
    })
    .map(drop)
}

/// Writes `source` as a pprof profile to `path`, taken as it is (no
/// [`expand`]), as every dump is written ([`write_dump`]): a regular file
/// or nothing is replaced whole, a device written through, a directory is
/// an error. `Ok(false)` if the source has no profile (nothing is written).
/// The error names the path.
#[cfg(feature = "criterion")]
pub(crate) fn write_source(path: &Path, source: Source) -> io::Result<bool> {
    let _inside = reentry::Inside::enter();
    write_dump(path, |w| {
        output::write(source, Format::Pprof, pprof::Options::default(), w)
    })
}

/// `path` with `%p` replaced by the process id, `%e` by the file name of
/// the executable and `%%` by `%`, as in `LLVM_PROFILE_FILE` and the
/// kernel's `core_pattern`; any other `%` stays as it is. Every path a dump
/// is written to goes through here, so that processes writing the same
/// setting (the test binaries of one `cargo test`, a program and its
/// children) can keep their profiles apart.
fn expand(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    if !bytes.contains(&b'%') {
        return path.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len() + 32);
    let mut rest = bytes;
    while let Some((&c, tail)) = rest.split_first() {
        let with = match (c, tail.first()) {
            (b'%', Some(b'p')) => Some(std::process::id().to_string().into_bytes()),
            (b'%', Some(b'e')) => Some(exe_name().into_vec()),
            (b'%', Some(b'%')) => Some(vec![b'%']),
            _ => None,
        };
        match with {
            Some(with) => {
                out.extend_from_slice(&with);
                rest = &tail[1..];
            }
            None => {
                out.push(c);
                rest = tail;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The file name of the running executable (`%e`): from `/proc/self/exe`,
/// else from `argv[0]`, else `unknown`.
fn exe_name() -> OsString {
    let name = |p: &Path| p.file_name().map(OsStr::to_owned);
    crate::support::mappings::executable_path()
        .and_then(|p| name(&p))
        .or_else(|| std::env::args_os().next().and_then(|a| name(Path::new(&a))))
        .unwrap_or_else(|| "unknown".into())
}

/// How a dump reaches its path, decided by what is there (a symlink is
/// looked at, not followed).
enum Target {
    /// Nothing, or a regular file with one name: written whole or not at
    /// all ([`replace`]).
    Replace,
    /// A symlink: followed as the bytes are written. The regular file
    /// with one name it leads to, not through `/proc` ([`linked_file`]),
    /// is replaced whole or not at all; anything else is written through.
    /// The symlink stays.
    Linked,
    /// A device, a FIFO, a socket, or a regular file with more than one
    /// name (a hard link): opened and written ([`write_through`]), so that
    /// it stays what it is and every name shows the new profile, as the
    /// shell's `>` leaves them.
    Through,
}

/// The refusal of a regular file this process may not open for writing,
/// which a rename could still replace: read-only to this process (by its
/// mode, or its owner's), as the shell's `>` finds it.
fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "is a file this process may not write (read-only to it, as the shell's `>` finds it); \
         nothing is written",
    )
}

/// Whether this process (its effective ids) may write the file at
/// `path`: the shell's `>` check, asked of the kernel without opening the
/// file (an open would tell watchers and lease holders it was written).
/// Other failures (the file gone meanwhile) say yes and leave the write
/// to report them.
fn may_write(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: `c` is NUL-terminated and lives across the call, which
    // reads it and nothing else.
    let asked =
        unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
    !(asked != 0 && is_refusal(io::Error::last_os_error().raw_os_error()))
}

/// Whether an `errno` from `faccessat(W_OK)` means the file may not be
/// written: no permission, a read-only file system, or a program running.
pub(super) fn is_refusal(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY)
    )
}

/// What writing to `path` means; a directory, or a path that ends in `/`
/// (a directory's name), is an error (nothing may be written in its
/// place, nor beside it).
fn target(path: &Path) -> io::Result<Target> {
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is empty; nothing is written",
        ));
    }
    let found = std::fs::symlink_metadata(path);
    if found.as_ref().is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory; nothing is written",
        ));
    }
    if names_a_directory(path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ends in '/', '.' or '..', a directory's name; nothing is written",
        ));
    }
    match found {
        Ok(m) if m.is_file() => {
            use std::os::unix::fs::MetadataExt;
            if !may_write(path) {
                Err(read_only())
            } else if m.nlink() > 1 {
                Ok(Target::Through)
            } else {
                Ok(Target::Replace)
            }
        }
        Ok(m) if m.is_symlink() => Ok(Target::Linked),
        Ok(_) => Ok(Target::Through),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Target::Replace),
        Err(e) => Err(e),
    }
}

/// The regular file of one name that the symlink at `path` leads to, in
/// one step, if it does so without passing through `/proc` (`/dev/stdout`
/// names an open file, which must keep its inode), the kernel would let
/// this process follow the link ([`may_follow`]), and this process may
/// write the file. Otherwise the link is followed by `open` alone
/// ([`write_through`]), which the kernel judges: a chain of links is too.
fn linked_file(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if through_proc(path).is_some() || !may_follow(path) {
        return None;
    }
    let real = std::fs::canonicalize(path).ok()?;
    let step = path.parent()?.join(std::fs::read_link(path).ok()?);
    if std::fs::symlink_metadata(&step).ok()?.is_symlink() {
        return None;
    }
    let m = std::fs::symlink_metadata(&real).ok()?;
    (m.is_file() && m.nlink() == 1 && may_write(&real)).then_some(real)
}

/// Whether the kernel's protection of links in sticky directories
/// (`fs.protected_symlinks`, on in most distributions) lets this process
/// follow the symlink at `path`: a link in a sticky directory that others
/// may write (`/tmp`) is followed only by its owner, or where it belongs to
/// the directory's owner. Resolving the link by hand and renaming over
/// what it names must not do what `open` would be refused.
fn may_follow(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (Ok(link), Ok(dir)) = (std::fs::symlink_metadata(path), std::fs::metadata(dir)) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let sticky_and_open = dir.mode() & 0o1002 == 0o1002;
    !sticky_and_open || link.uid() == euid || link.uid() == dir.uid()
}

/// Writes one dump to `path` (already expanded): `write` produces it, and
/// returns false if there is nothing worth writing (then no file is made
/// or touched). A regular file, or a path where nothing is, is replaced
/// whole or not at all, as is the regular file a symlink leads to (the
/// symlink stays); a device, FIFO, hard-linked file or other symlink is
/// written through and stays; a directory, and a file this process may
/// not write, are errors. The error names `path`.
fn write_dump(
    path: &Path,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<bool>,
) -> io::Result<bool> {
    let with_path = naming(path);
    let target = target(path).map_err(&with_path)?;
    // Built in memory first: the file is touched only when there is
    // something to write, and only while the bytes are written.
    let mut bytes = Vec::new();
    if !write(&mut bytes).map_err(&with_path)? {
        return Ok(false);
    }
    put(path, target, &bytes).map_err(with_path)?;
    Ok(true)
}

/// [`write_dump`] of a profile already encoded (the prepared at-limit and
/// peak profiles): `bytes` are written as they are, not copied.
fn write_dump_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let with_path = naming(path);
    let target = target(path).map_err(&with_path)?;
    put(path, target, bytes).map_err(with_path)
}

/// An error's message prefixed with the `path` it is about.
fn naming(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| {
        io::Error::new(
            e.kind(),
            format!("heapprof: {}: {}", Shown::path(path), plain(&e)),
        )
    }
}

/// Writes `bytes` to `path` as `target` says.
fn put(path: &Path, target: Target, bytes: &[u8]) -> io::Result<()> {
    report::without_write_signals(
        || match target {
            Target::Replace => replace(path, bytes),
            // Looked at as the bytes are written, not when the profile
            // began: the link may point elsewhere by now.
            Target::Linked => match linked_file(path) {
                Some(real) => replace(&real, bytes),
                None => write_through(path, bytes),
            },
            Target::Through => write_through(path, bytes),
        },
        |written| written.as_ref().err().and_then(errno_of),
    )
}

/// Tells apart the temporary files of dumps that one process writes at
/// once (two guards on one path, say).
static TEMPORARY: AtomicU32 = AtomicU32::new(0);

/// Names tried for a temporary file before giving up: another name is
/// tried when one is taken (left by an earlier process with the same pid
/// that was killed mid-dump, as after a container's restart, where every
/// run is pid 1; the start time in the name makes that rare).
const TEMPORARY_NAMES_TRIED: usize = 16;

/// The most bytes of the target's name a temporary file's name repeats,
/// so that with its dot, pid, start time, counter and tag it stays within
/// the 255 bytes a file name may have.
const TEMPORARY_NAME_PREFIX_BYTES: usize = 180;

/// The name of a temporary file beside `path`:
/// `.<name>.<pid>.<process start, µs>.<n>.<tag>`, from the name's bytes
/// as they are (no UTF-8 needed).
pub(super) fn temporary_name(path: &Path, n: u32, tag: &str) -> PathBuf {
    use std::sync::OnceLock;
    static STARTED_MICROS: OnceLock<u128> = OnceLock::new();
    let started = *STARTED_MICROS.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    });
    let name = path.file_name().unwrap_or_default().as_bytes();
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(&name[..name.len().min(TEMPORARY_NAME_PREFIX_BYTES)]);
    tmp.extend_from_slice(format!(".{}.{started}.{n}.{tag}", std::process::id()).as_bytes());
    path.with_file_name(OsStr::from_bytes(&tmp))
}

/// Whether `path` is written as a directory's name: with a `/`, `.` or
/// `..` as its last part (which `Path::file_name` does not show as such).
fn names_a_directory(path: &Path) -> bool {
    let bytes = path.as_os_str().as_bytes();
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or_default();
    matches!(last, b"" | b"." | b"..")
}

/// A new temporary file beside `path` ([`temporary_name`]), created new
/// (never opened through something already at its name) with the
/// permission bits `mode` (less the umask).
fn create_temporary(path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tried = 0;
    loop {
        let tmp = temporary_name(path, TEMPORARY.fetch_add(1, Relaxed), "tmp");
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp);
        match created {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                tried += 1;
                if tried == TEMPORARY_NAMES_TRIED {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{TEMPORARY_NAMES_TRIED} names for a temporary file beside it are \
                             taken, the last {}",
                            Shown::path(&tmp)
                        ),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The permission bits a temporary file is created with: its owner's only
/// where it is to replace a file, whose bits it takes later
/// ([`keep_access`]), so that no one opens it meanwhile who could not read
/// the file it replaces; a new file's as the umask makes them.
fn temporary_mode(replaced: Option<&std::fs::Metadata>) -> u32 {
    if replaced.is_some() { 0o600 } else { 0o666 }
}

/// The permission bits a file replacing one of mode `old` takes: the
/// same, but where the old group could not be kept, the new group (this
/// process's) gets no more than others do. Never set-id, sticky or more
/// than read and write: a profile is never run.
pub(super) fn mode_kept(old: u32, group_kept: bool) -> u32 {
    let mode = old & 0o777;
    if group_kept {
        mode
    } else {
        let others_as_group = (mode & 0o007) << 3;
        (mode & !0o070) | (mode & 0o070 & others_as_group)
    }
}

/// Gives a new file the permissions, and where this process may, the
/// owner and group of the regular file it replaces: a profile the user
/// made private stays private.
fn keep_access(file: &File, replaced: Option<&std::fs::Metadata>) {
    use std::os::unix::fs::MetadataExt;
    let Some(old) = replaced else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    // Not being allowed to give the file away leaves it this process's,
    // as a new file is: nothing to report. The group first, while the file
    // is still this process's to change ([`mode_kept`]).
    let group_kept = std::os::unix::fs::fchown(file, None, Some(old.gid())).is_ok();
    let mode = mode_kept(old.mode(), group_kept);
    let _ = std::os::unix::fs::fchown(file, Some(old.uid()), None);
    let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
}

/// Writes `path` whole or not at all: a temporary file beside `path`
/// takes `bytes` and is renamed over `path`. A reader (the next dump's
/// `-base`, a collector watching the directory, a test) never sees half a
/// profile. The temporary file takes the permissions and owner of the
/// file it replaces, and is removed on every failure; it exists only while
/// the bytes are written, not while the profile is built (symbolizing can
/// take a second), so a process that exits while a series is being
/// written seldom leaves one behind.
///
/// A regular file that cannot be renamed over is rewritten in place, as
/// the shell's `>` would, and a reader may see it half written: one that
/// is a mount point (a container's bind mount of one file,
/// `-v ./heap.pb.gz:/app/heap.pb.gz`), and one this process may write in a
/// directory where it may not make or rename files (a log file made ready
/// for a service's user in a directory of root's, or another user's file
/// in a sticky directory such as `/tmp`).
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let replaced = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file());
    let (tmp, mut file) = match create_temporary(path, temporary_mode(replaced.as_ref())) {
        Err(e) if replaced.is_some() && may_not_rename(&e) => return rewrite_in_place(path, bytes),
        created => created?,
    };
    keep_access(&file, replaced.as_ref());
    let renamed = file.write_all(bytes).and_then(|()| rename_over(&tmp, path));
    let written = match renamed {
        Err(e)
            if replaced.is_some()
                && (e.raw_os_error() == Some(libc::EBUSY) || may_not_rename(&e)) =>
        {
            rewrite_in_place(path, bytes)
        }
        Ok(Renamed::No) => write_through(path, bytes),
        renamed => renamed.map(|_| ()),
    };
    if written.is_err() || std::fs::symlink_metadata(&tmp).is_ok() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `e`, from making a file in a directory or renaming one there,
/// is the directory's refusal (its permissions, or its sticky bit).
fn may_not_rename(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// Whether [`rename_over`] renamed.
enum Renamed {
    Yes,
    /// `path` held something other than a single-named regular file by
    /// then: it is written through instead.
    No,
}

/// Renames `tmp` to `path` if, as the rename is made, `path` holds
/// nothing or a regular file of one name that this process may write
/// (else an error): what the caller saw there may have changed while the
/// profile was built and written, and a symlink or FIFO made in its place
/// must not be replaced. Where nothing is, the rename does not replace
/// ([`rename_new`]), so a name taken since is seen; a regular file is
/// looked at again just before the rename.
fn rename_over(tmp: &Path, path: &Path) -> io::Result<Renamed> {
    use std::os::unix::fs::MetadataExt;
    // A name taken between the look and the rename is looked at again; a
    // path that keeps changing is written through after a few tries.
    for _ in 0..RENAME_TRIES {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match rename_new(tmp, path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                renamed => return renamed.map(|()| Renamed::Yes),
            },
            Ok(m) if m.is_file() && m.nlink() == 1 => {
                if !may_write(path) {
                    return Err(read_only());
                }
                return std::fs::rename(tmp, path).map(|()| Renamed::Yes);
            }
            Ok(_) => return Ok(Renamed::No),
            Err(e) => return Err(e),
        }
    }
    Ok(Renamed::No)
}

/// Looks [`rename_over`] takes at a path whose name is taken as it renames.
const RENAME_TRIES: usize = 4;

/// Truncates the regular file at `path` and writes `bytes` into it; an
/// error if `path` is anything else by the time it is opened (a symlink
/// is not followed; a FIFO is opened without waiting and refused).
fn rewrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is no longer a regular file",
        ));
    }
    file.set_len(0)?;
    file.write_all(bytes).map_err(left_partly_written)
}

/// A failed write into a regular file that was truncated for it, said so:
/// what it held before is lost.
fn left_partly_written(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), PartlyWritten(e))
}

/// The error of a write in place that failed ([`left_partly_written`]),
/// which keeps the system's error number for [`errno_of`].
#[derive(Debug)]
struct PartlyWritten(io::Error);

impl std::fmt::Display for PartlyWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; written in place, the file is left truncated or partly written",
            self.0
        )
    }
}

impl std::error::Error for PartlyWritten {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The system's error number behind `e`, one [`PartlyWritten`] holds too:
/// the signal a failed write raised is taken back by it
/// (`report::without_write_signals`).
fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()?
            .downcast_ref::<PartlyWritten>()?
            .0
            .raw_os_error()
    })
}

/// Writes to what is at `path` without replacing it: a device, a FIFO,
/// a hard-linked file, `/dev/stdout`, or a symlink that does not lead to a
/// regular file of one name ([`linked_file`]), followed to whatever it
/// names (a regular file there is truncated and rewritten in place, not
/// atomically, as the shell's `>` and Go's `os.Create` do: `/dev/stdout`
/// redirected to a file loses what the program printed there, and a failed
/// write says that the file is left partly written).
///
/// The open does not wait: a FIFO that no process has open for reading is
/// an error (an exit dump would otherwise hang the program's exit until
/// someone reads). Writes then wait while a reader catches up, for at most
/// [`THROUGH_STALL`] at a time: a reader that stops reading (a stalled
/// pipe, a stopped terminal) fails the write, so that it cannot hold the
/// program's exit for good. A reader that goes away mid-way makes the write
/// fail with `EPIPE` (its `SIGPIPE` is taken back:
/// `report::without_write_signals`).
fn write_through(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            use std::os::unix::fs::FileTypeExt;
            // ENXIO is also a device with nothing behind it (`/dev/tty`
            // without a terminal), said by the system's own words.
            let fifo = std::fs::metadata(path)
                .is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_socket());
            if e.raw_os_error() == Some(libc::ENXIO) && fifo {
                io::Error::new(
                    e.kind(),
                    "no process has this FIFO open for reading (or it is a socket); nothing is written",
                )
            } else {
                e
            }
        })?;
    let written = write_with_patience(&mut file, bytes, THROUGH_STALL);
    match written {
        Err(e) if file.metadata().is_ok_and(|m| m.is_file()) => Err(left_partly_written(e)),
        written => written,
    }
}

/// The longest a write through a FIFO, pipe or terminal waits for its
/// reader to take more of the profile before it gives up.
const THROUGH_STALL: Duration = Duration::from_secs(10);

/// Writes all of `bytes` to `file`, opened non-blocking: when it takes no
/// more, waits until it does, for at most `stall` since the last progress
/// (signals that interrupt the wait do not extend it).
fn write_with_patience(file: &mut File, mut bytes: &[u8], stall: Duration) -> io::Result<()> {
    let mut deadline = Instant::now() + stall;
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                deadline = Instant::now() + stall;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut ready = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so that under a millisecond left still waits.
                let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000))
                    .unwrap_or(libc::c_int::MAX);
                // SAFETY: `ready` is one live pollfd for the duration of
                // the call, and `file`'s descriptor is open.
                match unsafe { libc::poll(&mut ready, 1, ms) } {
                    0 if Instant::now() < deadline => {}
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "its reader took none of the profile for {}s; the rest \
                                 ({} bytes) is not written",
                                stall.as_secs(),
                                bytes.len()
                            ),
                        ));
                    }
                    n if n < 0 => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reports `result`'s error on stderr, once per `flag`.
fn report(result: io::Result<()>, what: &str, flag: &AtomicBool) {
    if let Err(e) = result
        && !flag.swap(true, Relaxed)
    {
        if !output::room_for_message() {
            // Saying the error in words allocates.
            crate::config::report::warn(format_args!(
                "heapprof: could not write the {what} profile ({:?}, with too little address \
                 space left to say more); further failures of this kind are not reported",
                e.kind()
            ));
            return;
        }
        crate::config::report::warn(format_args!(
            "heapprof: could not write the {what} profile ({}); further failures of this kind are not reported",
            plain(&e)
        ));
    }
}

/// `e` said inside a line that already starts with `heapprof: `.
fn plain(e: &io::Error) -> String {
    let e = e.to_string();
    match e.strip_prefix("heapprof: ") {
        Some(rest) => rest.to_string(),
        None => e,
    }
}

/// `heap.pb.gz` → `heap.peak.pb.gz`, `heap.0003.pb.gz`, … for `base`
/// (already expanded). Only a base that is a regular file, or that is not
/// there yet, has siblings, and the null device, whose siblings are
/// itself: `base` being a directory, another device, a FIFO or
/// `/dev/stdout` is an error, as is a base with no file name (`/`, `..`),
/// one that ends in `/`, and one that cannot be looked at (a symlink loop,
/// a file where a directory should be), so that no stray file
/// (`/dev/null.peak`, `<dir>.0001`) is made beside it. A symlink is
/// followed to see what it names; the siblings are named after the link
/// itself.
fn sibling(base: &Path, tag: &str) -> io::Result<PathBuf> {
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "heapprof: {}: {why}, so no profile is written under a name derived from it",
                Shown::path(base)
            ),
        )
    };
    let Some(name) = base.file_name() else {
        return Err(refuse("has no file name".into()));
    };
    if names_a_directory(base) {
        return Err(refuse(
            "ends in '/', '.' or '..', a directory's name".into(),
        ));
    }
    match std::fs::metadata(base) {
        // Whoever aims a dump at the null device discards it, and every
        // profile named after it with it.
        Ok(m) if is_null_device(&m) => return Ok(base.to_path_buf()),
        Ok(m) if !m.is_file() => {
            return Err(refuse(format!("is a {}", kind(&m.file_type()))));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(format!("cannot be looked at ({e})"))),
    }
    if let Some(proc_path) = through_proc(base) {
        return Err(refuse(format!(
            "leads to {}, one of the process's open files, not a file to name others after",
            Shown::path(&proc_path)
        )));
    }
    // The name's own bytes: a name that is not UTF-8 keeps them, so that
    // two such names never share a sibling.
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    const EXT: &[u8] = b".pb.gz";
    let name = name.as_bytes();
    let (stem, ext) = name
        .strip_suffix(EXT)
        .map_or((name, &b""[..]), |stem| (stem, EXT));
    let derived = [stem, b".", tag.as_bytes(), ext].concat();
    Ok(base.with_file_name(std::ffi::OsString::from_vec(derived)))
}

/// The path under `/proc` that `path` is or leads to through its symlinks
/// or its directories' (`/dev/stdout` → `/proc/self/fd/1`, `/dev/fd/1` →
/// `/proc/self/fd/1`), if any: such a path names one of a process's open
/// files, whatever its directory holds. Looks through at most
/// [`MAX_LINKS`] links.
fn through_proc(path: &Path) -> Option<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        // The directory as the kernel resolves it: its links and `..`.
        if let (Some(dir), Some(name)) = (at.parent(), at.file_name()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(dir) = std::fs::canonicalize(dir) {
                at = dir.join(name);
            }
        }
        if at.starts_with("/proc") {
            return Some(at);
        }
        let target = std::fs::read_link(&at).ok()?;
        at = match at.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    None
}

/// The symlinks [`through_proc`] follows, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// Whether `m` is the null device's (a character device numbered as
/// `/dev/null` is, wherever its node is).
fn is_null_device(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == libc::makedev(NULL_MAJOR, NULL_MINOR)
}

/// The null device's number on Linux (`Documentation/admin-guide/devices.txt`).
const NULL_MAJOR: u32 = 1;
const NULL_MINOR: u32 = 3;

/// What a file that is not a regular file is, in words.
fn kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_fifo() {
        "pipe or FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "file that is not a regular file"
    }
}

// ---- At exit -------------------------------------------------------------

/// The process that registered the exit dump ([`ThisProcess::to_bits`]).
static EXIT_PROCESS: AtomicU64 = AtomicU64::new(0);

/// Registers the exit dump if `HEAPPROF_OUT` is set. Called once, on the
/// first allocation, with the reentrancy guard held.
pub(crate) fn register_exit_dump() {
    if config::get().out.is_none() {
        return;
    }
    EXIT_PROCESS.store(ThisProcess::get().to_bits(), Relaxed);
    // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
    unsafe {
        libc::atexit(at_exit);
    }
}

/// Runs on `exit` (return from `main`, `std::process::exit`). Other
/// threads may still be running and may be mid-sample; the writer takes
/// heapprof's locks one at a time, each held only for short, non-blocking
/// work, so it waits at most for those to finish. A forked child that exits
/// (rather than execs, which drops the handler) does not write: the
/// profile is its parent's.
extern "C" fn at_exit() {
    if EXIT_PROCESS.load(Relaxed) != ThisProcess::get().to_bits() {
        return;
    }
    let _inside = reentry::Inside::enter();
    let Some(out) = config::get().out.as_deref() else {
        return;
    };
    if crate::support::lock::any_lock_held() {
        // `exit` called from a signal handler that interrupted heapprof
        // in the middle of its work: a profile would wait for the lock the
        // interrupted code holds, which is never released.
        config::report::warn(format_args!(
            "heapprof: the program exits from a signal handler that interrupted heapprof \
             while it held a lock; the exit profile and its peak are not written"
        ));
        return;
    }
    if let Some(signal) = crate::support::signals::signal_being_handled() {
        // `exit` called from a signal handler (a `SIGTERM` handler, say):
        // the handler may have interrupted the C library's `malloc`,
        // which holds its arena's lock until the handler returns, and a
        // profile allocates.
        config::report::warn(format_args!(
            "heapprof: the program exits from the handler of signal {signal}, as it seems (the \
             signal has a handler and is blocked), which may have interrupted malloc; the exit \
             profile and its peak are not written (exit outside the handler, as signal-hook, \
             ctrlc and tokio::signal let you, or unblock the signal first, to have them)"
        ));
        return;
    }
    // One flag each: a failed exit profile does not hide why its peak
    // failed too.
    static EXIT_FAILED: AtomicBool = AtomicBool::new(false);
    static PEAK_FAILED: AtomicBool = AtomicBool::new(false);
    // Before the path's expansion and the comment allocate: with too
    // little address space left, an allocation that fails aborts the
    // program, and its exit status is lost.
    if let Err(e) = output::check_room() {
        report(Err(e), "exit", &EXIT_FAILED);
        return;
    }
    let out = expand(out);
    report(
        write_profile_at(&out, pprof::Options::at_exit()),
        "exit",
        &EXIT_FAILED,
    );
    // No peak yet (the heap never reached `record::peak`'s minimum): no peak file, and no
    // complaint about where it would have gone; a line if one is there from before.
    let mut peak = Vec::new();
    let peak_profile = output::write(
        Source::Peak,
        Format::Pprof,
        pprof::Options::default(),
        &mut peak,
    );
    let written = peak_profile.and_then(|recorded| {
        if recorded {
            write_dump_bytes(&sibling(&out, "peak")?, &peak)?;
        } else if let Some(earlier) = sibling(&out, "peak")
            .ok()
            .filter(|p| *p != out && std::fs::symlink_metadata(p).is_ok())
        {
            // Left as it is, but not to be taken for this run's.
            config::report::warn(format_args!(
                "heapprof: no peak profile was recorded in this run (the sampled live heap \
                 never reached 1 MiB, or there was no memory for a copy); {} is an earlier one",
                Shown::path(&earlier)
            ));
        }
        Ok(())
    });
    report(written, "peak", &PEAK_FAILED);
}

// ---- A guard -------------------------------------------------------------

/// Writes a profile to a file when dropped: the Rust spelling of Go's
/// `defer profile.Start(profile.MemProfile).Stop()`.
///
/// ```no_run
/// let _profile = heapprof::ProfileGuard::new("mem.pb.gz");
/// // … the whole program: mem.pb.gz is written when `_profile` goes out
/// // of scope at the end of `main` …
/// ```
///
/// A guard made at the top of `main` is dropped last, after the locals
/// declared below it have been freed, when little is live. So the profile
/// opens on `alloc_space` (everything allocated), not `inuse_space`
/// (`go tool pprof -sample_index=inuse_space` shows what was still live);
/// what was live at the heap's largest is in the peak profile, which a
/// guard does not write: call [`write_peak_profile`](crate::write_peak_profile)
/// before it drops, or set `HEAPPROF_OUT`, which writes one at exit.
///
/// A failure on drop is reported on stderr; call [`ProfileGuard::finish`]
/// to get it as an error instead.
#[must_use = "the profile is written when the guard is dropped"]
pub struct ProfileGuard {
    path: Option<PathBuf>,
}

impl ProfileGuard {
    /// Starts a guard that writes to `path` when dropped.
    ///
    /// `%p` in `path` is replaced by the process id, `%e` by the
    /// executable's file name, `%%` by `%`. A regular file at `path` is
    /// replaced whole (a reader never sees half a profile); a symlink is
    /// followed and a device or FIFO written to, never replaced (a FIFO
    /// that no process reads is an error, not a wait); a directory is an
    /// error.
    pub fn new(path: impl Into<PathBuf>) -> ProfileGuard {
        ProfileGuard {
            path: Some(path.into()),
        }
    }

    /// Writes the profile now and returns the outcome: an error of kind
    /// `Other` if heapprof is not the global allocator, as from
    /// [`write_profile`](crate::write_profile).
    pub fn finish(mut self) -> io::Result<()> {
        match self.path.take() {
            Some(path) => write_file(&path),
            None => Ok(()),
        }
    }
}

impl Drop for ProfileGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            static FAILED: AtomicBool = AtomicBool::new(false);
            report(write_file(&path), "guard", &FAILED);
        }
    }
}

// ---- Periodically, on growth, and before the limit ----------------------------

/// How often the dump thread wakes to check its triggers (or at a series'
/// own period, if shorter). A series' check is one read of the exact
/// counters (the registry's lock) and of the live estimate. An
/// at-limit check reads `memory.current` or `/proc/self/statm` (and every
/// `support::memory::LIMITS_EVERY` polls the cgroups' limits): 9 µs for a cgroup
/// file, 12 µs for `statm`, measured on x86_64 in a release build, so
/// about 0.02 % of one core at this interval. Memory can grow by a
/// gigabyte or more in one interval: watch the limit with a threshold well
/// below it.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// The stack of a series' thread. Set here, not left to std's default,
/// which `RUST_MIN_STACK` may make too small for a profile build: the
/// first build on a thread loads and parses debug info to symbolize.
/// Building and writing two profiles from a cold symbolizer needs about
/// 96 KiB in a release build and 384 KiB in a debug build (the profile
/// build's own needs are `pprof::BUILD_STACK_NEED`); this is std's usual
/// default, several times either.
const DUMP_THREAD_STACK: usize = 2 << 20;

/// A series of profiles written in the background, numbered so that any
/// two can be compared with `go tool pprof -base`: `heap.0001.pb.gz`,
/// `heap.0002.pb.gz`, … A profile is written whenever any of the chosen
/// triggers fires. With [`at_limit`](AutoDump::at_limit), the same thread
/// also writes profiles as memory nears its limit.
///
/// ```no_run
/// use std::time::Duration;
/// let series = heapprof::AutoDump::new("heap.pb.gz")
///     .every(Duration::from_secs(60))
///     .on_inuse_growth(256 << 20)
///     .start()
///     .expect("start the dump thread");
/// // ... later, if the series should end before the program does:
/// series.stop();
/// ```
#[derive(Clone, Debug)]
pub struct AutoDump {
    path: PathBuf,
    every: Option<Duration>,
    every_allocated: Option<u64>,
    inuse_growth: Option<u64>,
    at_limit: Option<Vec<f64>>,
}

impl AutoDump {
    /// A series named after `path` (`x.pb.gz` gives `x.0001.pb.gz`, …),
    /// with `%p` and `%e` replaced as in [`ProfileGuard::new`], whose rules
    /// each file of the series follows. Its numbers start after the
    /// highest there already (an earlier series of the same path, in this
    /// process or a run before) and pass over names that are taken, so
    /// that no file is written over. A `path` that is a directory, a
    /// device or a FIFO names no series: each profile is an error.
    pub fn new(path: impl Into<PathBuf>) -> AutoDump {
        AutoDump {
            path: path.into(),
            every: None,
            every_allocated: None,
            inuse_growth: None,
            at_limit: None,
        }
    }

    /// Write a profile every `interval`. A zero interval would write
    /// without pause, so [`start`](AutoDump::start) rejects it; any interval
    /// shorter than a profile takes to write (milliseconds to a second)
    /// writes them back to back, every file kept. `HEAPPROF_DUMP_EVERY`
    /// raises periods under a second to one; this call takes what it is
    /// given, for tests that want a series in milliseconds.
    pub fn every(mut self, interval: Duration) -> AutoDump {
        self.every = Some(interval);
        self
    }

    /// Write a profile each time the program has allocated another `bytes`
    /// (exact count, freed or not). Zero would be due on every check, so
    /// [`start`](AutoDump::start) rejects it.
    pub fn every_allocated_bytes(mut self, bytes: u64) -> AutoDump {
        self.every_allocated = Some(bytes);
        self
    }

    /// Write a profile each time the estimated live heap has grown by
    /// `bytes` since the last profile of the series. Zero would be due on
    /// every check, so [`start`](AutoDump::start) rejects it; a step larger
    /// than any heap can grow (above `i64::MAX`) never fires.
    pub fn on_inuse_growth(mut self, bytes: u64) -> AutoDump {
        self.inuse_growth = Some(bytes);
        self
    }

    /// Write the live profile and the peak profile when memory in use
    /// crosses each of `fractions` of the memory limit: `&[0.8, 0.95]`
    /// writes `heap.limit80.pb.gz` and `heap.limit80.peak.pb.gz` at 80 %
    /// and `heap.limit95.pb.gz` and `heap.limit95.peak.pb.gz` at 95 %
    /// (for a series named `heap.pb.gz`), each with one line on stderr
    /// naming the files. Each fraction is from 0.01 to 1; the same as
    /// `HEAPPROF_DUMP_AT_LIMIT=80%,95%`.
    ///
    /// The limit: the cgroup's (v2 `memory.max`, or `memory.high` if
    /// lower, of the process's cgroup or one above it) with the cgroup's
    /// working set in use (`memory.current` less the page cache the
    /// kernel can drop); `HEAPPROF_MEMORY_LIMIT` with the resident size in
    /// use; when neither is set, physical memory with the resident size.
    /// When several apply, the one nearest to being reached counts. The
    /// dump thread reads them every 50 ms, about 10 µs each time.
    ///
    /// Each threshold is written once per crossing: after its profiles,
    /// it waits until usage has fallen below nine tenths of it (72 % for
    /// 80 %), and at least 5 s have passed, before it can be written
    /// again, replacing its files with the newer moment.
    ///
    /// While the watch runs, it also keeps the peak profile encoded in
    /// memory, ready for the moment the inner allocator fails one of the
    /// program's allocations: that writes it, once, to
    /// `heap.alloc-failed.peak.pb.gz`, with no allocation and no lock.
    /// The crate docs ("Before the OOM killer") say when that can and
    /// cannot happen.
    ///
    /// ```no_run
    /// let watch = heapprof::AutoDump::new("/var/tmp/heap-%p.pb.gz")
    ///     .at_limit(&[0.8, 0.95])
    ///     .start()
    ///     .expect("start the dump thread");
    /// ```
    pub fn at_limit(mut self, fractions: &[f64]) -> AutoDump {
        self.at_limit = Some(fractions.to_vec());
        self
    }

    /// Starts the background thread. The series runs until the program
    /// exits, or until [`AutoDumpHandle::stop`]; dropping the handle leaves
    /// it running.
    ///
    /// A trigger set to zero is an error of kind
    /// [`InvalidInput`](io::ErrorKind::InvalidInput): it would always be
    /// due, and the thread would write profiles as fast as it can. So is a
    /// series with no trigger at all, which would never write, and an
    /// [`at_limit`](AutoDump::at_limit) with no fraction or one outside
    /// 0.01 to 1. Without heapprof as the global allocator it is an error
    /// of kind `Other`, as from [`write_profile`](crate::write_profile).
    /// If the thread cannot start, the error has the kind of the OS's
    /// (`WouldBlock` for `EAGAIN`) and a message that says so and gives
    /// the OS's error.
    pub fn start(self) -> io::Result<AutoDumpHandle> {
        self.check()?;
        output::check_installed()?;
        // The thread runs on a copy made inside the profiler, and the
        // program's settings are freed here, as the program's: its
        // `stats()` balance.
        let copy = reentry::Inside::enter_for(|| self.clone());
        drop(self);
        // The message is the program's allocation: made outside the
        // profiler, as the program's `stats()` expect of what it frees.
        copy.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("heapprof: cannot start the AutoDump thread: {e}"),
            )
        })
    }

    /// Starts the thread on these settings, heapprof's own.
    fn spawn(self) -> io::Result<AutoDumpHandle> {
        let _inside = reentry::Inside::enter();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let thread = own_thread::spawn(c"heapprof-dump", DUMP_THREAD_STACK, move |wake| {
            self.run(&stop_seen, wake)
        })?;
        Ok(AutoDumpHandle { stop, thread })
    }

    /// Rejects the triggers that are always due, and a series with none.
    fn check(&self) -> io::Result<()> {
        if !self.has_series_trigger() && self.at_limit.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "heapprof: an AutoDump with no trigger would never write a profile; \
                 set every, every_allocated_bytes, on_inuse_growth or at_limit",
            ));
        }
        if let Some(fractions) = &self.at_limit
            && (fractions.is_empty() || fractions.iter().any(|f| !(0.01..=1.0).contains(f)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "heapprof: AutoDump::at_limit({fractions:?}): expected fractions of the limit \
                     from 0.01 to 1, such as &[0.8, 0.95]"
                ),
            ));
        }
        let zero = if self.every == Some(Duration::ZERO) {
            "AutoDump::every(Duration::ZERO)"
        } else if self.every_allocated == Some(0) {
            "AutoDump::every_allocated_bytes(0)"
        } else if self.inuse_growth == Some(0) {
            "AutoDump::on_inuse_growth(0)"
        } else {
            return Ok(());
        };
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "heapprof: {zero} would write a profile on every check, without pause; use a step above zero"
            ),
        ))
    }

    /// Whether any trigger of the numbered series is set.
    fn has_series_trigger(&self) -> bool {
        self.every.is_some() || self.every_allocated.is_some() || self.inuse_growth.is_some()
    }

    fn run(self, stop: &AtomicBool, wake: &Wake) {
        let _inside = reentry::Inside::enter();
        let poll = self.every.map_or(POLL, |e| e.min(POLL));
        let mut watcher = self
            .at_limit
            .as_deref()
            .map(|fractions| limit::Watcher::new(self.path.clone(), fractions));
        let mut series = self.has_series_trigger().then(|| Series::new(&self));
        loop {
            // Woken early by `AutoDumpHandle::stop`; a spurious wake-up
            // only polls sooner.
            wake.wait(poll);
            if stop.load(Acquire) {
                if let Some(w) = &watcher {
                    w.stop();
                }
                return;
            }
            // The limit first: it is the more urgent.
            if let Some(w) = &mut watcher {
                w.poll();
            }
            if let Some(s) = &mut series {
                s.poll(&self);
            }
        }
    }
}

/// The state of a numbered series between polls.
struct Series {
    seq: u64,
    last_time: Instant,
    last_allocated: u64,
    last_inuse: i64,
    /// `AutoDump::inuse_growth` as the live estimate's type.
    inuse_growth: Option<i64>,
}

impl Series {
    fn new(dump: &AutoDump) -> Series {
        Series {
            seq: 0,
            last_time: Instant::now(),
            // The exact counters alone (`registry::totals`), every poll:
            // the tables' sizes that `stats()` adds are not needed here.
            last_allocated: crate::support::registry::totals().allocated_bytes,
            last_inuse: crate::record::peak::live_estimate(),
            // The live estimate is an i64; a step above its range is
            // clamped (it never fires) rather than cast, which would wrap
            // it negative and make it due on every check.
            inuse_growth: dump
                .inuse_growth
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        }
    }

    /// Writes the next profile of the series if a trigger is due.
    fn poll(&mut self, dump: &AutoDump) {
        let allocated = crate::support::registry::totals().allocated_bytes;
        let inuse = crate::record::peak::live_estimate();
        let due = dump.every.is_some_and(|e| self.last_time.elapsed() >= e)
            || dump
                .every_allocated
                .is_some_and(|n| allocated.saturating_sub(self.last_allocated) >= n)
            || self
                .inuse_growth
                .is_some_and(|n| inuse.saturating_sub(self.last_inuse) >= n);
        if !due {
            return;
        }
        (self.last_time, self.last_allocated, self.last_inuse) = (Instant::now(), allocated, inuse);
        self.seq = self.seq.saturating_add(1);
        static FAILED: AtomicBool = AtomicBool::new(false);
        let written = write_in_series(&expand(&dump.path), &mut self.seq);
        if written.is_err() {
            // The next file is numbered after what is there then: the
            // directory may appear, or be filled by others, meanwhile.
            self.seq = 0;
        }
        report(written, "series", &FAILED);
    }
}

/// Writes the live profile as the next file of the series on `base`
/// (already expanded), numbered `seq` or after ([`next_in_series`]). The
/// profile is built first; its file is then published only under a name
/// nothing holds at that instant ([`Staged::publish`]), so two processes
/// writing one series at once take two numbers.
fn write_in_series(base: &Path, seq: &mut u64) -> io::Result<()> {
    let _inside = reentry::Inside::enter();
    // A base that can have no series (a directory, a FIFO) is refused
    // before a profile is built for it.
    sibling(base, "0")?;
    let mut bytes = Vec::new();
    let built = output::write(
        Source::Live,
        Format::Pprof,
        pprof::Options::default(),
        &mut bytes,
    );
    if !built.map_err(naming(base))? {
        return Ok(());
    }
    publish_in_series(base, seq, &bytes)
}

/// Names a series takes before giving up, when each one it picks is taken
/// between being looked at and being published (by other processes
/// writing the same series). The profile is written once, before the
/// first name is tried, so a loss needs another writer to publish in the
/// instant between a look and a rename.
const SERIES_NAMES_TRIED: usize = 64;

/// Publishes `bytes` as the next file of the series on `base`: under the
/// name [`next_in_series`] picks, or, where another process takes that
/// name first, under the next free one. The null device, the series' only
/// name that is not a regular file, is written through.
fn publish_in_series(base: &Path, seq: &mut u64, bytes: &[u8]) -> io::Result<()> {
    let mut staged: Option<Staged> = None;
    for _ in 0..SERIES_NAMES_TRIED {
        let path = next_in_series(base, seq)?;
        let with_path = naming(&path);
        let target = target(&path).map_err(&with_path)?;
        // A name that is not a regular file or nothing (a symlink among
        // them) is taken, unless it is the base's own (the null device).
        if !matches!(target, Target::Replace) {
            if path == base {
                return put(&path, target, bytes).map_err(with_path);
            }
            // Something appeared at the name since it was looked at (a
            // file another writer is publishing, hard-linked there for an
            // instant): the name is taken.
            *seq = seq.saturating_add(1);
            continue;
        }
        let staged = match &mut staged {
            Some(staged) => staged,
            None => staged.insert(
                report::without_write_signals(|| Staged::write(&path, bytes), report::io_errno)
                    .map_err(&with_path)?,
            ),
        };
        match staged.publish(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => *seq = seq.saturating_add(1),
            published => return published.map_err(with_path),
        }
    }
    Err(naming(base)(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "the next {SERIES_NAMES_TRIED} names of its series were taken as they were written"
        ),
    )))
}

/// A file's bytes written whole under a temporary name, waiting to be
/// published under a name nothing holds; removed when dropped unpublished.
struct Staged {
    /// The temporary file's path, beside the names it may be published as.
    tmp: PathBuf,
    /// Whether it is published: its temporary name is then gone.
    published: bool,
}

impl Staged {
    /// Writes `bytes` to a new temporary file beside `path`
    /// ([`create_temporary`]).
    fn write(path: &Path, bytes: &[u8]) -> io::Result<Staged> {
        let (tmp, mut file) = create_temporary(path, temporary_mode(None))?;
        let staged = Staged {
            tmp,
            published: false,
        };
        file.write_all(bytes)?;
        Ok(staged)
    }

    /// Renames the file to `path` only if nothing is there ([`rename_new`]):
    /// `AlreadyExists` if something is, which keeps its bytes, and the
    /// file stays staged for another name.
    fn publish(&mut self, path: &Path) -> io::Result<()> {
        rename_new(&self.tmp, path)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Renames `from` to `to` unless `to` exists, in one step
/// (`renameat2(RENAME_NOREPLACE)`): `AlreadyExists` if it does. A file
/// system without that flag gets a hard link and an unlink, which fail
/// the same way; one without hard links either (FAT, some network file
/// systems) gets a plain rename, which replaces a file made at `to` in
/// the instant since the caller looked.
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (c_from, c_to) = (c(from)?, c(to)?);
    match rename_no_replace(&c_from, &c_to) {
        Err(e) if lacks_no_replace(&e) => link_new(from, to),
        renamed => renamed,
    }
}

/// `renameat2(from, to, RENAME_NOREPLACE)`: `AlreadyExists` if `to`
/// exists. No allocation.
pub(super) fn rename_no_replace(from: &std::ffi::CStr, to: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated strings that live across the
    // call; `renameat2` takes two directory descriptors (the working
    // directory, for relative paths), two paths and an unsigned flag word,
    // and reads nothing else.
    let renamed = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match renamed {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether [`rename_no_replace`] failed for want of the flag: a file
/// system without it (`EINVAL`), a kernel without the call (`ENOSYS`), or
/// a seccomp filter that denies it (`EPERM`; where the permission is
/// really missing, the fallbacks fail the same way).
pub(super) fn lacks_no_replace(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)
    )
}

/// [`rename_new`] by a hard link to `to` and an unlink of `from`, for file
/// systems without `RENAME_NOREPLACE`; by a plain rename on those without
/// hard links.
fn link_new(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            // Published: a temporary name left behind is only clutter.
            let _ = std::fs::remove_file(from);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => std::fs::rename(from, to),
    }
}

/// The name of a series' next file: numbered `seq` after `base`, or,
/// where that name is taken, the first free number after it, which `seq`
/// moves on to; a series' first file comes after the highest number there
/// already. So a series writes over no file: neither one an earlier
/// series of the same path wrote (in this process, or a run before) nor
/// anything else of that name; and its numbers follow theirs, even where
/// the older files were rotated away.
fn next_in_series(base: &Path, seq: &mut u64) -> io::Result<PathBuf> {
    if *seq == 1 {
        *seq = highest_in_series(base).map_or(1, |n| n.saturating_add(1));
    }
    loop {
        let path = sibling(base, &format!("{seq:04}"))?;
        // The null device is its own sibling (`sibling`).
        if path == base || std::fs::symlink_metadata(&path).is_err() {
            return Ok(path);
        }
        *seq = seq.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "every number of its series is taken",
            )
        })?;
    }
}

/// The highest number a file of a series may have and be the series'
/// (`heap.99999999999.pb.gz` is someone else's): a series of one file a
/// second reaches it in more than a hundred years.
const MAX_IN_SERIES: u64 = u32::MAX as u64;

/// The highest number of a file of `base`'s series in its directory, if
/// any (`heap.0042.pb.gz` is 42; a name with anything but digits there,
/// or a number above [`MAX_IN_SERIES`], is not the series').
fn highest_in_series(base: &Path) -> Option<u64> {
    const MARK: u8 = b'0';
    use std::os::unix::ffi::OsStrExt;
    let named = sibling(base, "0").ok()?;
    let name = named.file_name()?.as_bytes();
    // The mark is the name's last `0`: nothing after it (`.pb.gz`) has one.
    let at = name.iter().rposition(|&b| b == MARK)?;
    let (before, after) = (&name[..at], &name[at + 1..]);
    let dir = named.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::read_dir(dir.unwrap_or(Path::new(".")))
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let digits = name.as_bytes().strip_prefix(before)?.strip_suffix(after)?;
            let numbered = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
            numbered
                .then(|| std::str::from_utf8(digits).ok()?.parse().ok())
                .flatten()
                .filter(|&n| n <= MAX_IN_SERIES)
        })
        .max()
}

/// A running [`AutoDump`] series.
#[derive(Debug)]
pub struct AutoDumpHandle {
    stop: Arc<AtomicBool>,
    thread: OwnThread,
}

// Programs keep the handle in a static or move it to another thread, on
// every C library.
const _: () = {
    const fn shared_by_threads<T: Send + Sync>() {}
    shared_by_threads::<AutoDumpHandle>()
};

impl AutoDumpHandle {
    /// Ends the series: waits for a profile being written, if any, to be
    /// complete, and returns once the thread has exited. No file of the
    /// series is created after this returns. In a child forked after
    /// `start`, which has no copy of the thread, it returns at once.
    pub fn stop(self) {
        let _inside = reentry::Inside::enter();
        // Taken apart after the guard, so that what it holds is freed
        // inside the profiler, as heapprof's.
        let AutoDumpHandle { stop, thread } = self;
        stop.store(true, Release);
        if !thread.started_here() {
            // The thread is the parent's; its wake's lock may have been
            // held at the fork.
            return;
        }
        thread.wake().wake();
        thread.join();
    }
}

/// Starts the series configured by the environment, once, if any trigger
/// is set. Called from the sampled path (never the first allocation), so
/// the runtime is up; spawning allocates, which the guard sends straight to
/// the inner allocator.
///
/// Spawning from inside the allocator must not panic (that would abort):
/// it is not tried on a thread whose thread-locals are being torn down,
/// where std's spawn may panic; that sample leaves the start to a later
/// one. A panic anyway is caught and reported.
pub(crate) fn start_from_env() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    let c = config::get();
    if (c.dump_every.is_none()
        && c.dump_every_allocated.is_none()
        && c.dump_inuse_growth.is_none()
        && c.dump_at_limit.is_none())
        || !crate::thread::alive()
        || STARTED.swap(true, Relaxed)
    {
        return;
    }
    if !crate::support::this_process::is_first() {
        crate::config::report::warn(format_args!(
            "heapprof: HEAPPROF_DUMP_* is set, but this process was forked (without exec) from \
             the one heapprof started in, whose series it is: none is written from here; start \
             one with the API (AutoDump) after forking"
        ));
        return;
    }
    let mut series = AutoDump::new(
        c.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("heapprof.pb.gz")),
    );
    series.every = c.dump_every;
    series.every_allocated = c.dump_every_allocated;
    series.inuse_growth = c.dump_inuse_growth;
    series.at_limit = c.dump_at_limit.clone();
    let started = std::panic::catch_unwind(move || series.start().map(drop))
        .unwrap_or_else(|_| Err(io::Error::other("spawning the thread panicked")));
    if let Err(e) = started {
        crate::config::report::warn(format_args!(
            "heapprof: could not start the dump thread (HEAPPROF_DUMP_*): {e}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::{sibling, write_dump};
    use std::path::Path;

    /// What appears at a dump's path while its profile is built (a
    /// second, or more, of symbolizing) is judged as the rename is made: a
    /// symlink made then is followed, a FIFO stays (no reader: an error),
    /// a regular file is replaced; none is replaced by a file of its own.
    #[test]
    fn what_appears_at_the_path_while_the_profile_is_built_is_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"before").unwrap();
        let written = |path: &Path, appears: &dyn Fn(&Path)| {
            write_dump(path, |w| {
                appears(path);
                w.write_all(b"profile")?;
                Ok(true)
            })
        };

        let link = dir.path().join("link.pb.gz");
        written(&link, &|p| {
            std::os::unix::fs::symlink(&elsewhere, p).unwrap()
        })
        .unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"profile");

        let fifo = dir.path().join("fifo.pb.gz");
        let made = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that lives across the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        let e = written(&fifo, &made).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "{kind:?}");

        let file = dir.path().join("file.pb.gz");
        let private = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, b"theirs").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        written(&file, &private).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"profile");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the file replaced keeps it private");

        let names = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 4, "no temporary file stays");
    }

    /// A pipe whose write end does not block, as `write_through` opens a
    /// FIFO: (read end, write end).
    fn pipe() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fds[1] is the write end just made; F_SETFL takes an int.
        let set = unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(set, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    /// A reader that stops reading fails the write after the stall, with
    /// what was left; one that reads slowly, with pauses shorter than the
    /// stall, gets every byte.
    #[test]
    fn a_stalled_reader_fails_the_write_and_a_slow_one_gets_it_all() {
        use std::io::Read;
        use std::time::{Duration, Instant};
        let bytes = vec![7u8; 1 << 20];
        let stall = Duration::from_millis(200);

        let (_reader, mut writer) = pipe();
        let start = Instant::now();
        let e = super::write_with_patience(&mut writer, &bytes, stall).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("took none of the profile"), "{e}");
        assert!(start.elapsed() >= stall);

        // Pauses of 20 ms against a stall of seconds: a loaded machine
        // that leaves the reader unscheduled a while fails nothing.
        let stall = Duration::from_secs(5);

        let (mut reader, mut writer) = pipe();
        let slow = std::thread::spawn(move || {
            let mut got = 0;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                std::thread::sleep(Duration::from_millis(20));
                match reader.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got += n,
                }
            }
        });
        super::write_with_patience(&mut writer, &bytes, stall).unwrap();
        drop(writer);
        assert_eq!(slow.join().unwrap(), bytes.len());
    }

    #[test]
    fn series_names() {
        assert_eq!(
            sibling(Path::new("/nonexistent-heapprof-dir/heap.pb.gz"), "0003").unwrap(),
            Path::new("/nonexistent-heapprof-dir/heap.0003.pb.gz")
        );
        assert_eq!(
            sibling(Path::new("nonexistent-heapprof-heap"), "peak").unwrap(),
            Path::new("nonexistent-heapprof-heap.peak")
        );
    }

    /// Names that are not UTF-8 keep their bytes: two of them never share
    /// a sibling (a peak file one process would write over the other's).
    #[test]
    fn siblings_keep_a_names_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let named = |bytes: &[u8]| {
            let base =
                Path::new("/nonexistent-heapprof-dir").join(std::ffi::OsStr::from_bytes(bytes));
            sibling(&base, "peak").unwrap()
        };
        let (e9, e8) = (named(b"a-\xe9.pb.gz"), named(b"a-\xe8.pb.gz"));
        assert_ne!(e9, e8);
        assert_eq!(e9.file_name().unwrap().as_bytes(), b"a-\xe9.peak.pb.gz");
    }

    /// A path that names one of the process's open files through `/proc`
    /// (`/dev/stdout` when the output is a file) has no siblings: they
    /// would be made in `/dev`, or fail there.
    #[test]
    fn no_siblings_of_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        use std::os::fd::AsRawFd;
        let link = dir.path().join("stdout");
        let fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        std::os::unix::fs::symlink(&fd, &link).unwrap();
        // A directory that is a link there, as `/dev/fd` is.
        let fds = dir.path().join("fds");
        std::os::unix::fs::symlink("/proc/self/fd", &fds).unwrap();
        let through_dir = fds.join(file.as_raw_fd().to_string());
        for base in [link.as_path(), fd.as_path(), through_dir.as_path()] {
            let e = sibling(base, "peak").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("/proc/"), "{e}");
        }
        assert!(!dir.path().join("stdout.peak").exists());
    }

    /// A series numbers on after the highest number there, ignoring one
    /// too high to be a series' (which would leave no number after it),
    /// and after files that appeared since a write failed.
    #[test]
    fn series_numbers_follow_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("heap.pb.gz");
        let touch = |name: &str| std::fs::write(dir.path().join(name), b"x").unwrap();
        touch("heap.18446744073709551615.pb.gz");
        touch("heap.0009.pb.gz");
        let mut seq = 1;
        let next = super::next_in_series(&base, &mut seq).unwrap();
        assert_eq!(next, dir.path().join("heap.0010.pb.gz"));
        assert_eq!(seq, 10);
    }

    /// Temporary names taken already (left by an earlier process with the
    /// same pid and start time) are stepped over, and left alone.
    #[test]
    fn taken_temporary_names_are_stepped_over() {
        use super::{
            TEMPORARY, TEMPORARY_NAMES_TRIED, create_temporary, temporary_mode, temporary_name,
        };
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heap.pb.gz");
        let next = TEMPORARY.load(Relaxed);
        let taken: Vec<_> = (0..TEMPORARY_NAMES_TRIED as u32 / 2)
            .map(|k| temporary_name(&path, next + k, "tmp"))
            .collect();
        for t in &taken {
            std::fs::write(t, b"left").unwrap();
        }
        let (made, _) = create_temporary(&path, temporary_mode(None)).unwrap();
        assert!(!taken.contains(&made), "{made:?}");
        for t in &taken {
            assert_eq!(std::fs::read(t).unwrap(), b"left");
        }
    }

    /// A replacing file keeps the old bits; where the old group cannot be
    /// kept, its own group gets no more than others: never readable by all
    /// but a group, never more open than the file it replaces.
    #[test]
    fn a_group_that_cannot_be_kept_gets_no_more_than_others() {
        use super::mode_kept;
        assert_eq!(mode_kept(0o100640, true), 0o640);
        assert_eq!(mode_kept(0o104755, true), 0o755);
        assert_eq!(mode_kept(0o640, false), 0o600);
        assert_eq!(mode_kept(0o664, false), 0o644);
        assert_eq!(mode_kept(0o666, false), 0o666);
        assert_eq!(mode_kept(0o662, false), 0o622);
        for old in 0..0o1000 {
            let new = mode_kept(old, false);
            assert_eq!(new & !old, 0, "{old:o} -> {new:o}: more open");
            assert_eq!(new & 0o707, old & 0o707, "{old:o} -> {new:o}");
        }
    }

    /// The temporary file that is to replace a file is made readable by
    /// its owner alone, whatever the umask and the replaced file's bits
    /// (which it takes later); one for a new file is made as the umask
    /// says.
    #[test]
    fn a_temporary_file_that_replaces_one_is_its_owners_alone() {
        use super::{create_temporary, temporary_mode};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heap.pb.gz");
        std::fs::write(&path, b"open to all").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let old = std::fs::metadata(&path).unwrap();
        let mode_of = |f: &std::fs::File| f.metadata().unwrap().permissions().mode() & 0o777;
        let (_, replacing) = create_temporary(&path, temporary_mode(Some(&old))).unwrap();
        assert_eq!(mode_of(&replacing), 0o600);
        // The process's umask, as the kernel shows it (read, not set: the
        // other tests make files meanwhile).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        let (_, new) = create_temporary(&path, temporary_mode(None)).unwrap();
        assert_eq!(mode_of(&new), 0o666 & !umask);
    }

    /// A new file is published only where nothing is: what is there keeps
    /// its bytes, and no temporary file is left beside it.
    #[test]
    fn publishing_a_new_file_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heap.0001.pb.gz");
        std::fs::write(&path, b"theirs").unwrap();
        let mut staged = super::Staged::write(&path, b"ours").unwrap();
        let e = staged.publish(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
        let fresh = dir.path().join("heap.0002.pb.gz");
        staged.publish(&fresh).unwrap();
        drop(staged);
        assert_eq!(std::fs::read(&fresh).unwrap(), b"ours");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "{left:?}");
        let mut unpublished = super::Staged::write(&path, b"ours").unwrap();
        unpublished.publish(&path).unwrap_err();
        drop(unpublished);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "a temporary file is left: {left:?}");
    }

    /// Where `RENAME_NOREPLACE` is not to be had, a hard link publishes
    /// the file, and fails on a name that is taken, just the same.
    #[test]
    fn linking_a_new_file_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join(".tmp"), dir.path().join("heap.0001.pb.gz"));
        std::fs::write(&from, b"ours").unwrap();
        std::fs::write(&to, b"theirs").unwrap();
        let e = super::link_new(&from, &to).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&to).unwrap(), b"theirs");
        std::fs::remove_file(&to).unwrap();
        super::link_new(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"ours");
        assert!(!from.exists(), "the temporary name is left");
    }

    /// Writers of one series at once (threads here, processes in use, each
    /// with a sequence of its own) take a number each: every file written
    /// is there afterwards, with its own bytes. Each writer looks at a
    /// name, finds it free, and publishes; the others publish in between.
    #[test]
    fn writers_of_one_series_at_once_take_a_number_each() {
        const WRITERS: usize = 6;
        const FILES: usize = 40;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("heap.pb.gz");
        let start = std::sync::Barrier::new(WRITERS);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (base, start) = (&base, &start);
                s.spawn(move || {
                    start.wait();
                    let mut seq = 1;
                    for f in 0..FILES {
                        let bytes = format!("writer {w} file {f}").repeat(64);
                        super::publish_in_series(base, &mut seq, bytes.as_bytes()).unwrap();
                        seq += 1;
                    }
                });
            }
        });
        let mut found: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        found.sort();
        found.dedup();
        assert_eq!(
            found.len(),
            WRITERS * FILES,
            "files lost to a shared number"
        );
    }

    /// A temporary name fits in a file name for any name that does, UTF-8
    /// or not.
    #[test]
    fn temporary_names_fit() {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = [0xe9u8; 255];
        for name in [&[b'h'; 255][..], &latin1[..]] {
            let path = Path::new("/d").join(std::ffi::OsStr::from_bytes(name));
            let tmp = super::temporary_name(&path, u32::MAX, "alloc-failed.tmp");
            let len = tmp.file_name().unwrap().len();
            assert!(len <= 255, "{len}");
        }
    }

    /// Nothing is named after a directory or a path with no file name.
    #[test]
    fn no_siblings_of_directories() {
        let dir = std::env::temp_dir();
        for base in [Path::new("/"), Path::new("."), Path::new(".."), &dir] {
            let e = sibling(base, "peak").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn percent_escapes() {
        use super::expand;
        let pid = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let exe = exe.file_name().unwrap().to_str().unwrap();
        let cases = [
            ("heap.pb.gz", "heap.pb.gz".to_owned()),
            ("heap-%p.pb.gz", format!("heap-{pid}.pb.gz")),
            ("d-%e/%e-%p-%p", format!("d-{exe}/{exe}-{pid}-{pid}")),
            ("100%%-%x-%", "100%-%x-%".to_owned()),
            ("%%p", "%p".to_owned()),
        ];
        for (path, expanded) in cases {
            assert_eq!(expand(Path::new(path)), Path::new(&expanded), "{path}");
        }
    }
}
