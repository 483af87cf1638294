//! What a dump does to what is already at its path: a regular file (or
//! nothing), or one a symlink leads to, is replaced whole; a device, a
//! FIFO or a symlink stays what it is; a directory is an error that writes
//! nothing anywhere. And `%p` / `%e` in a dump path.
//!
//! Devices and FIFOs are made with `mknod` / `mkfifo` in a temporary
//! directory (never the system's `/dev`); making a device needs root (or
//! `CAP_MKNOD`), which these tests require rather than skip.

use heapprof_testkit::child::{printed_number, run_child_in};
use heapprof_testkit::profile::decode;
use heapprof_testkit::proto;
use heapprof_testkit::watchdog::watchdog;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// `/dev/null`'s device number, for the copies made here.
const NULL_MAJOR: u32 = 1;
const NULL_MINOR: u32 = 3;
/// `/dev/zero`'s: a device that takes writes and is not the null device.
const ZERO_MINOR: u32 = 5;

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// A copy of `/dev/null` (same device number) at `path`.
fn make_null_device(path: &Path) {
    make_device(path, NULL_MINOR)
}

/// A character device numbered `NULL_MAJOR:minor` at `path`.
fn make_device(path: &Path, minor: u32) {
    let c = c_path(path);
    let dev = libc::makedev(NULL_MAJOR, minor);
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, dev) };
    assert_eq!(
        r,
        0,
        "mknod {} (these tests need root or CAP_MKNOD): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn make_fifo(path: &Path) {
    let c = c_path(path);
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Asserts `path` is still the `/dev/null` copy made by `make_null_device`.
fn assert_null_device(path: &Path) {
    assert_device(path, NULL_MINOR)
}

/// Asserts `path` is still the device made by `make_device(path, minor)`.
fn assert_device(path: &Path, minor: u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    assert!(
        m.file_type().is_char_device(),
        "{} is no longer a device: {:?}",
        path.display(),
        m.file_type()
    );
    assert_eq!(m.rdev(), libc::makedev(NULL_MAJOR, minor));
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// 16 MiB in 64 KiB blocks, held so that every child records a peak.
/// A peak needs a sampled estimate past 1 MiB: two samples (each stands
/// for 64 KiB / (1 - e^(-64/512)) = 544 KiB at the default 512 KiB rate).
/// Each block is sampled with p = 1 - e^(-1/8) = 0.1175, so 256 blocks give
/// fewer than two samples with probability (1 + 256 p / (1 - p)) (1 - p)^256
/// = 4e-13.
#[inline(never)]
fn held_until_exit() -> Vec<Vec<u8>> {
    std::hint::black_box((0..256).map(|_| vec![7u8; 64 * 1024]).collect())
}

/// Allocates and frees for `d`, so that a series has samples to wake on.
#[inline(never)]
fn churn_for(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::black_box(vec![0u8; 64 * 1024]);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The children's side: holds 16 MiB until exit (so a peak is recorded and
/// the exit dump has something live), churns for `HEAPPROF_TEST_CHURN_MS`
/// (a series fires meanwhile), and prints its process id.
#[test]
fn child_scenarios() {
    if std::env::var("HEAPPROF_TEST_CHILD").as_deref() != Ok("exit") {
        return;
    }
    if let Some(bytes) = std::env::var("HEAPPROF_TEST_FILE_SIZE_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit reads the live `limit`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
    }
    if std::env::var_os("HEAPPROF_TEST_SIGPIPE_DEFAULT").is_some() {
        // As command-line tools do: a write to a pipe whose reader is gone
        // then ends the program, unless the writer blocks the signal.
        // SAFETY: sets a signal's disposition to its default; no handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    std::mem::forget(held_until_exit());
    if let Some(ms) = std::env::var("HEAPPROF_TEST_CHURN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        churn_for(Duration::from_millis(ms));
    }
    println!("pid={}", std::process::id());
}

/// Runs the exit scenario in a child with `env`, in the directory `cwd`;
/// returns its stdout and stderr.
fn exit_child(cwd: &Path, env: &[(&str, &str)]) -> (String, String) {
    let env: Vec<(&str, &str)> = [("HEAPPROF_TEST_CHILD", "exit")]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    run_child_in(Some(cwd), "child_scenarios", &env)
}

/// A series period (the shortest `HEAPPROF_DUMP_EVERY` takes) and a churn
/// long enough for it to fire, with two seconds to spare on a loaded
/// machine.
const SERIES_ENV: [(&str, &str); 2] = [
    ("HEAPPROF_DUMP_EVERY", "1s"),
    ("HEAPPROF_TEST_CHURN_MS", "3000"),
];

/// A guard, the exit dump, the series and the peak, all aimed at a device:
/// the device stays, and nothing is made beside it.
#[test]
fn a_device_is_written_through_and_stays() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero");
    make_device(&zero, ZERO_MINOR);

    heapprof::ProfileGuard::new(&zero)
        .finish()
        .expect("a device is written to");
    assert_device(&zero, ZERO_MINOR);
    assert_eq!(names(dir.path()), ["zero"]);

    let mut env = vec![("HEAPPROF_OUT", zero.to_str().unwrap())];
    env.extend(SERIES_ENV);
    let (_, stderr) = exit_child(dir.path(), &env);
    assert_device(&zero, ZERO_MINOR);
    assert_eq!(names(dir.path()), ["zero"], "stray files:\n{stderr}");
    // The exit dump goes to the device; the series and the peak, named
    // after it, are refused, each said once.
    assert!(
        !stderr.contains("could not write the exit profile"),
        "{stderr}"
    );
    for what in ["series", "peak"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("could not write the {what} profile")))
            .collect();
        assert_eq!(lines.len(), 1, "{what}:\n{stderr}");
        assert!(lines[0].contains("is a device"), "{}", lines[0]);
    }
}

/// `HEAPPROF_OUT` at the null device (any node of it) discards every
/// profile quietly: the exit dump, the series and the peak all go to it,
/// nothing is made beside it, and nothing is said.
#[test]
fn the_null_device_takes_every_profile_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let null = dir.path().join("null");
    make_null_device(&null);
    let mut env = vec![("HEAPPROF_OUT", null.to_str().unwrap())];
    env.extend(SERIES_ENV);
    let (_, stderr) = exit_child(dir.path(), &env);
    assert_null_device(&null);
    assert_eq!(names(dir.path()), ["null"], "stray files:\n{stderr}");
    assert!(!stderr.contains("heapprof"), "{stderr}");
}

/// `fifo` opened for reading, without waiting for a writer.
fn open_fifo_reader(fifo: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .unwrap()
}

/// Reads `fifo`, opened now (so a writer finds a reader), on a thread,
/// until the writer has written and closed it, or `limit`. Returns what
/// was read.
fn read_fifo_on_a_thread(fifo: &Path, limit: Duration) -> std::thread::JoinHandle<Vec<u8>> {
    let mut reader = open_fifo_reader(fifo);
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while Instant::now() < deadline {
            match reader.read(&mut buf) {
                // No writer: finished if one came and went, else not yet.
                Ok(0) if !got.is_empty() => break,
                Ok(0) => std::thread::sleep(Duration::from_millis(1)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        }
        got
    })
}

/// A FIFO with a reader gets the whole profile and stays a FIFO; one with
/// no reader is an error at once (an exit dump must not hang the exit
/// waiting for one), and stays a FIFO too.
#[test]
fn a_fifo_is_written_through_and_stays() {
    let _watchdog = watchdog("FIFO dumps", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let kept: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();

    let reader = read_fifo_on_a_thread(&fifo, Duration::from_secs(20));
    heapprof::ProfileGuard::new(&fifo)
        .finish()
        .expect("a FIFO with a reader is written to");
    let got = reader.join().unwrap();
    assert_eq!(decode(&got).sample_type.len(), 4, "a whole profile");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    let started = Instant::now();
    let err = heapprof::ProfileGuard::new(&fifo).finish().unwrap_err();
    assert!(
        err.to_string().contains("FIFO") && err.to_string().contains("fifo"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "it waited");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(names(dir.path()), ["fifo"]);
    drop(kept);
}

/// A symlink is followed, never replaced: to a regular file (rewritten),
/// to nothing (created), to a device (written to); a symlink to a
/// directory is an error like the directory.
#[test]
fn a_symlink_is_followed_and_stays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let link = |name: &str, to: &str| {
        let path = d.join(name);
        std::os::unix::fs::symlink(to, &path).unwrap();
        path
    };
    let check_link = |path: &Path, to: &str| {
        let m = std::fs::symlink_metadata(path).unwrap();
        assert!(
            m.file_type().is_symlink(),
            "{} was replaced",
            path.display()
        );
        assert_eq!(std::fs::read_link(path).unwrap(), Path::new(to));
    };

    std::fs::write(d.join("real.pb.gz"), b"not a profile yet").unwrap();
    let inode = std::fs::metadata(d.join("real.pb.gz")).unwrap().ino();
    let to_file = link("to-file.pb.gz", "real.pb.gz");
    heapprof::ProfileGuard::new(&to_file).finish().unwrap();
    check_link(&to_file, "real.pb.gz");
    assert_eq!(read(&d.join("real.pb.gz")).sample_type.len(), 4);
    assert_ne!(
        std::fs::metadata(d.join("real.pb.gz")).unwrap().ino(),
        inode,
        "the file it leads to is replaced whole, not rewritten in place"
    );

    let dangling = link("dangling.pb.gz", "created.pb.gz");
    heapprof::ProfileGuard::new(&dangling).finish().unwrap();
    check_link(&dangling, "created.pb.gz");
    assert_eq!(read(&d.join("created.pb.gz")).sample_type.len(), 4);

    make_null_device(&d.join("null"));
    let to_device = link("to-device", "null");
    heapprof::ProfileGuard::new(&to_device).finish().unwrap();
    check_link(&to_device, "null");
    assert_null_device(&d.join("null"));

    std::fs::create_dir(d.join("sub")).unwrap();
    let to_dir = link("to-dir", "sub");
    let before = names(d);
    heapprof::ProfileGuard::new(&to_dir).finish().unwrap_err();
    check_link(&to_dir, "sub");
    assert_eq!(names(d), before);
    assert!(names(&d.join("sub")).is_empty());
}

fn read(path: &Path) -> proto::Profile {
    decode(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A directory is an error that writes nothing, in it or beside it: not
/// the exit dump, not `<dir>.peak`, not `<dir>.0001`, not a temporary
/// file; `.` neither.
#[test]
fn a_directory_is_an_error_that_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();

    let err = heapprof::ProfileGuard::new(&sub).finish().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory, "{err}");
    assert!(err.to_string().contains("sub"), "{err}");

    let mut env = vec![("HEAPPROF_OUT", sub.to_str().unwrap())];
    env.extend(SERIES_ENV);
    let (_, stderr) = exit_child(dir.path(), &env);
    assert_eq!(names(dir.path()), ["sub"], "stray files:\n{stderr}");
    assert!(names(&sub).is_empty(), "written into the directory");
    assert!(
        stderr.contains("could not write the exit profile") && stderr.contains("is a directory"),
        "{stderr}"
    );
    assert!(
        stderr.contains("could not write the series profile"),
        "{stderr}"
    );
    // Each line says "heapprof:" once, at its start.
    assert!(
        stderr.lines().all(|l| l.matches("heapprof:").count() <= 1),
        "{stderr}"
    );

    // `.`: the child's working directory.
    let mut env = vec![("HEAPPROF_OUT", ".")];
    env.extend(SERIES_ENV);
    let (_, stderr) = exit_child(&sub, &env);
    assert!(names(&sub).is_empty(), "stray files:\n{stderr}");
    assert_eq!(names(dir.path()), ["sub"], "stray files:\n{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");

    // The same from a guard, with the error kinds said.
    let err = heapprof::ProfileGuard::new(".").finish().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory, "{err}");
    let err = heapprof::ProfileGuard::new("").finish().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("is empty"), "{err}");
}

/// A file size limit (`RLIMIT_FSIZE`) below a profile's size: each dump
/// fails with an error on stderr, the program is not killed by `SIGXFSZ`,
/// and no temporary file stays.
#[test]
fn a_file_size_limit_fails_the_dumps_and_spares_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("HEAPPROF_OUT", "heap.pb.gz"),
        ("HEAPPROF_TEST_FILE_SIZE_LIMIT", "300"),
    ];
    env.extend(SERIES_ENV);
    let (stdout, stderr) = exit_child(dir.path(), &env);
    assert!(stdout.contains("pid="), "{stdout}");
    assert!(names(dir.path()).is_empty(), "files left:\n{stderr}");
    for kind in ["exit", "series"] {
        assert!(
            stderr.contains(&format!("could not write the {kind} profile"))
                && stderr.contains("File too large"),
            "{kind}: {stderr}"
        );
    }
}

/// A write that fails (past the file size limit) through a symlink leaves
/// the file it leads to as it was; one into a hard-linked file, which is
/// written in place, says that the file is left partly written.
#[test]
fn a_failed_write_keeps_the_file_a_symlink_leads_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kept = vec![b'k'; 1000];
    std::fs::write(d.join("good.pb.gz"), &kept).unwrap();
    std::os::unix::fs::symlink("good.pb.gz", d.join("link.pb.gz")).unwrap();
    let env = [
        ("HEAPPROF_OUT", "link.pb.gz"),
        ("HEAPPROF_TEST_FILE_SIZE_LIMIT", "300"),
    ];
    let (_, stderr) = exit_child(d, &env);
    assert!(
        stderr.contains("could not write the exit profile") && stderr.contains("File too large"),
        "{stderr}"
    );
    assert!(!stderr.contains("partly written"), "{stderr}");
    assert_eq!(std::fs::read(d.join("good.pb.gz")).unwrap(), kept);
    assert_eq!(names(d), ["good.pb.gz", "link.pb.gz"]);

    std::fs::hard_link(d.join("good.pb.gz"), d.join("second.pb.gz")).unwrap();
    let env = [
        ("HEAPPROF_OUT", "second.pb.gz"),
        ("HEAPPROF_TEST_FILE_SIZE_LIMIT", "300"),
    ];
    let (_, stderr) = exit_child(d, &env);
    assert!(
        stderr.contains("File too large")
            && stderr.contains("the file is left truncated or partly written"),
        "{stderr}"
    );
}

/// `/dev/tty` in a process without a terminal (a new session) cannot be
/// opened (`ENXIO`): the exit dump says so in the system's words, not as a
/// FIFO without a reader.
#[test]
fn a_terminal_device_without_a_terminal_is_not_called_a_fifo() {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "child_scenarios",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEAPPROF_TEST_CHILD", "exit")
        .env("HEAPPROF_OUT", "/dev/tty")
        .stdin(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        child.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    };
    let out = child.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not write the exit profile") && stderr.contains("os error 6"),
        "{stderr}"
    );
    assert!(!stderr.contains("FIFO"), "{stderr}");
}

/// Starts the exit scenario at `SIGPIPE`'s default action, its exit dump
/// going to `out`, with `env` and both output streams piped back.
fn exit_child_at_sigpipes_default(out: &Path, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_scenarios",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEAPPROF_TEST_CHILD", "exit")
        .env("HEAPPROF_TEST_SIGPIPE_DEFAULT", "1")
        .env("HEAPPROF_OUT", out)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A program at `SIGPIPE`'s default action (a command-line tool's) whose
/// stderr is a pipe nobody reads any more: heapprof's line about a failed
/// exit dump fails with `EPIPE`, and the program still exits as it would.
#[test]
fn a_line_to_a_closed_stderr_pipe_spares_a_program_at_sigpipes_default() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("missing").join("heap.pb.gz");
    let mut child = exit_child_at_sigpipes_default(&nowhere, &[]);
    // The reader goes before the child's exit dump fails and says so.
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pid="), "{stdout}");
    assert!(
        out.status.success(),
        "the child ended with {}:\n{stdout}",
        out.status
    );
}

/// A program at `SIGPIPE`'s default action whose exit dump goes to a FIFO
/// whose reader leaves mid-profile: the write fails with `EPIPE`, said on
/// stderr, and the program still exits as it would.
#[test]
fn a_fifo_reader_that_leaves_spares_a_program_at_sigpipes_default() {
    use std::os::fd::AsRawFd;
    let _watchdog = watchdog("a FIFO reader that leaves", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let reader = open_fifo_reader(&fifo);
    // One page: a profile at rate 1 (every block of the test binary's
    // start-up has its stack) does not fit, so its writer waits for the
    // reader.
    // SAFETY: F_SETPIPE_SZ takes an int; the descriptor is the reader's.
    let size = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096, "{}", std::io::Error::last_os_error());
    let child = exit_child_at_sigpipes_default(&fifo, &[("HEAPPROF_SAMPLE_RATE", "1")]);
    // The first bytes of the profile: the writer is in the middle of it.
    let mut ready = libc::pollfd {
        fd: reader.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut ready, 1, 60_000) };
        let e = std::io::Error::last_os_error();
        assert!(n != 0, "no profile came through the FIFO in a minute");
        assert!(n > 0 || e.raw_os_error() == Some(libc::EINTR), "{e}");
        if ready.revents & libc::POLLIN != 0 {
            break;
        }
        // A writer that came and went without writing leaves a hang-up.
        assert!(n < 0, "the FIFO hung up before any profile came");
    }
    drop(reader);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child ended with {}:\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("could not write the exit profile") && stderr.contains("Broken pipe"),
        "the write did not meet the reader's leaving:\n{stderr}"
    );
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// `%p` and `%e` in `HEAPPROF_OUT` (the exit dump and its peak), in a
/// guard's path and in a series' name: the process id and the
/// executable's file name.
#[test]
fn percent_p_and_e_name_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.file_name().unwrap().to_str().unwrap().to_owned();
    let out = dir.path().join("heap-%e-%p.pb.gz");

    // Two processes with one setting: two profiles (and their peaks).
    let mut pids = Vec::new();
    for _ in 0..2 {
        let (stdout, stderr) = exit_child(dir.path(), &[("HEAPPROF_OUT", out.to_str().unwrap())]);
        assert!(!stderr.contains("kept in the file name"), "{stderr}");
        pids.push(printed_number(&stdout, "pid="));
    }
    let mut expected: Vec<String> = pids
        .iter()
        .flat_map(|pid| {
            [
                format!("heap-{exe}-{pid}.pb.gz"),
                format!("heap-{exe}-{pid}.peak.pb.gz"),
            ]
        })
        .collect();
    expected.sort();
    assert_eq!(names(dir.path()), expected);
    for name in &expected {
        assert_eq!(read(&dir.path().join(name)).sample_type.len(), 4, "{name}");
    }

    let pid = std::process::id();
    let sub = tempfile::tempdir().unwrap();
    heapprof::ProfileGuard::new(sub.path().join("guard-%p.pb.gz"))
        .finish()
        .unwrap();
    let series = heapprof::AutoDump::new(sub.path().join("series-%e.pb.gz"))
        .every(Duration::from_millis(20))
        .start()
        .unwrap();
    let first = sub.path().join(format!("series-{exe}.0001.pb.gz"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !first.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    series.stop();
    assert!(first.exists(), "{:?}", names(sub.path()));
    assert!(
        sub.path().join(format!("guard-{pid}.pb.gz")).exists(),
        "{:?}",
        names(sub.path())
    );
}

/// A `%` in `HEAPPROF_OUT` that starts no placeholder (`%t`, a trailing
/// `%`) stays in the name, and is said in one line.
#[test]
fn a_percent_that_is_no_placeholder_is_kept_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("heap-%t-100%.pb.gz");
    let (_, stderr) = exit_child(dir.path(), &[("HEAPPROF_OUT", out.to_str().unwrap())]);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("is kept in the file name as it is"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("heap-%t-100%.pb.gz"), "{stderr}");
    assert!(
        names(dir.path()).contains(&"heap-%t-100%.pb.gz".to_owned()),
        "{:?}",
        names(dir.path())
    );
}

/// A regular file is still replaced whole (a reader never sees half a
/// profile), and what was at the path is gone, not appended to.
#[test]
fn a_regular_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("old.pb.gz");
    std::fs::write(&path, vec![b'x'; 1 << 20]).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    heapprof::ProfileGuard::new(&path).finish().unwrap();
    assert_eq!(read(&path).sample_type.len(), 4);
    assert_ne!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "renamed over, not rewritten in place"
    );
    assert_eq!(names(dir.path()), ["old.pb.gz"]);
    let _ = File::open(&path).unwrap();
}

/// A replaced file keeps its permissions and owner: a profile the user
/// made private (it shows the program's addresses and functions) does not
/// become readable by all.
#[test]
fn a_replaced_file_keeps_its_permissions_and_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("private.pb.gz");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Owned by someone else, where this process may give files away (root,
    // as in CI); otherwise the owner stays this process's either way.
    let other = 65534;
    let given = std::os::unix::fs::chown(&path, Some(other), Some(other)).is_ok();
    heapprof::ProfileGuard::new(&path).finish().unwrap();
    let m = std::fs::metadata(&path).unwrap();
    assert_eq!(read(&path).sample_type.len(), 4);
    assert_eq!(m.mode() & 0o7777, 0o600, "mode {:o}", m.mode());
    if given {
        assert_eq!((m.uid(), m.gid()), (other, other));
    }
    assert_eq!(names(dir.path()), ["private.pb.gz"]);
}

/// A file name as long as the system takes (255 bytes) is written, though
/// its temporary file's name adds to it.
#[test]
fn a_long_file_name_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.pb.gz", "h".repeat(255 - ".pb.gz".len()));
    let path: PathBuf = dir.path().join(&name);
    heapprof::ProfileGuard::new(&path).finish().unwrap();
    assert_eq!(read(&path).sample_type.len(), 4);
    assert_eq!(names(dir.path()), [name]);
}

/// Paths that cannot be a file's: one that ends in `/`, `/.` or `/..`,
/// and a symlink loop. The exit dump fails, said in one line, and no
/// profile is made beside them (`new.peak`, `loop.0001`).
#[test]
fn paths_that_cannot_be_a_files_make_nothing_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
    let kept = ["loop"];
    for out in ["new/", "new/.", "new/..", "loop"] {
        let mut env = vec![("HEAPPROF_OUT", out)];
        env.extend(SERIES_ENV);
        let (_, stderr) = exit_child(dir.path(), &env);
        assert_eq!(
            names(dir.path()),
            kept,
            "stray files for {out:?}:\n{stderr}"
        );
        assert!(
            stderr.contains("could not write the exit profile"),
            "{out:?}: {stderr}"
        );
        // A series in this process, one period long.
        let series = heapprof::AutoDump::new(dir.path().join(out))
            .every(Duration::from_secs(1))
            .start()
            .unwrap();
        churn_for(Duration::from_millis(1500));
        series.stop();
        assert_eq!(
            names(dir.path()),
            kept,
            "stray files for {out:?} (AutoDump)"
        );
    }
}

/// A path with a line break is reported on one line, quoted.
#[test]
fn a_path_with_a_line_break_is_reported_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a\nheapprof: fake");
    std::fs::create_dir(&sub).unwrap();
    let err = heapprof::ProfileGuard::new(&sub).finish().unwrap_err();
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("a\\nheapprof: fake"), "{message}");
}

/// When the exit profile and its peak both fail, each failure is said.
#[test]
fn a_failed_exit_profile_does_not_hide_its_peaks_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing").join("heap.pb.gz");
    let (_, stderr) = exit_child(dir.path(), &[("HEAPPROF_OUT", out.to_str().unwrap())]);
    assert!(
        stderr.contains("could not write the exit profile")
            && stderr.contains("could not write the peak profile"),
        "{stderr}"
    );
}

/// A file with two names (a hard link) is written in place: both names
/// show the new profile, as after the shell's `>`, and the link stays.
#[test]
fn a_hard_linked_file_is_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.pb.gz");
    let second = dir.path().join("second.pb.gz");
    std::fs::write(&first, b"not a profile yet").unwrap();
    std::fs::hard_link(&first, &second).unwrap();
    heapprof::ProfileGuard::new(&second).finish().unwrap();
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&first), ino(&second), "the names were parted");
    assert_eq!(read(&first).sample_type.len(), 4);
    assert_eq!(names(dir.path()), ["first.pb.gz", "second.pb.gz"]);
}

/// What the read-only child writes to, and what it found there.
const READ_ONLY_NAME: &str = "read-only.pb.gz";
const READ_ONLY_TEXT: &[u8] = b"kept by its owner";

/// The unprivileged child's side: a guard on `HEAPPROF_TEST_GUARD_PATH`
/// (relative to the directory it runs in), then the exit dump to
/// `HEAPPROF_OUT`.
#[test]
fn child_guard() {
    if std::env::var("HEAPPROF_TEST_CHILD").as_deref() != Ok("guard") {
        return;
    }
    let path = std::env::var("HEAPPROF_TEST_GUARD_PATH").unwrap();
    let result = heapprof::ProfileGuard::new(path).finish();
    println!("guard: {result:?}");
}

/// A directory of its own in `/tmp` for a child run as user 65534, with a
/// copy of this test binary in it that that user can run; `None`, said,
/// where the user cannot be taken (and that is allowed).
struct AsNobody {
    dir: tempfile::TempDir,
}

impl AsNobody {
    fn new() -> AsNobody {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("heapprof-as-nobody")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let exe = d.join("child");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        AsNobody { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the guard child in `cwd` (inside this directory), as user 65534
    /// where this process is root, with `env`; its exit must be a success.
    /// `None` where the user cannot be taken.
    fn run(&self, cwd: &Path, env: &[(&str, &str)]) -> Option<(String, String)> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(self.path().join("child"));
        child
            .args(["--exact", "child_guard", "--nocapture", "--test-threads=1"])
            .current_dir(cwd)
            .env("HEAPPROF_TEST_CHILD", "guard")
            .envs(env.iter().copied());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            child.uid(65534).gid(65534);
        }
        let out = match child.output() {
            Ok(out) => out,
            // Taking user 65534 fails in a user namespace without it.
            Err(e) => {
                assert!(
                    std::env::var_os("HEAPPROF_REQUIRE_ROOT").is_none(),
                    "HEAPPROF_REQUIRE_ROOT is set, but the child could not start: {e}"
                );
                println!("skipped: the child could not start as user 65534: {e}");
                return None;
            }
        };
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        Some((stdout, stderr))
    }
}

/// Whether this process is root, as the tests that need another user's
/// files are in CI (`HEAPPROF_REQUIRE_ROOT`); said when it is not.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("HEAPPROF_REQUIRE_ROOT").is_none(),
            "HEAPPROF_REQUIRE_ROOT is set, but this test does not run as root"
        );
        println!("skipped: not root, so no file can be given to another user");
    }
    root
}

/// A regular file this process may not write is not replaced, though the
/// directory would let a rename do it: the guard returns the error and the
/// exit dump says so once. Run as an unprivileged user (root may write any
/// file), from a copy of the test binary that user can run.
#[test]
fn a_file_the_process_may_not_write_is_not_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let _watchdog = watchdog("the read-only child", Duration::from_secs(120));
    let nobody = AsNobody::new();
    let d = nobody.path();
    let target = d.join(READ_ONLY_NAME);
    std::fs::write(&target, READ_ONLY_TEXT).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).unwrap();
    let Some((stdout, stderr)) = nobody.run(
        d,
        &[
            ("HEAPPROF_TEST_GUARD_PATH", READ_ONLY_NAME),
            ("HEAPPROF_OUT", READ_ONLY_NAME),
        ],
    ) else {
        return;
    };
    assert!(
        stdout.contains("guard: Err(") && stdout.contains("may not write"),
        "{stdout}"
    );
    assert_eq!(
        stderr.matches("may not write").count(),
        1,
        "the exit dump says so once: {stderr}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), READ_ONLY_TEXT);
    // Beside it only the peak profile, where a sample or two made the
    // child's estimated heap pass 1 MiB.
    let mut left = names(d);
    left.retain(|n| n != "child" && n != "read-only.peak.pb.gz");
    assert_eq!(left, [READ_ONLY_NAME], "nothing made beside it");
}

/// A symlink another user made in a sticky directory open to all (as in
/// `/tmp`) is not resolved by hand and renamed over: it is followed by
/// `open` alone, which the kernel's `fs.protected_symlinks` refuses where
/// it is on (where it is off, the file is written in place and keeps its
/// inode). This process's own link there is replaced whole. As root only,
/// to give the link away.
#[test]
fn another_users_link_in_a_sticky_directory_is_left_to_the_kernel() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("heapprof-sticky")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = d.join("victim.pb.gz");
    std::fs::write(&victim, b"the victim's own").unwrap();
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let inode = ino(&victim);
    let link = d.join("heap.pb.gz");
    std::os::unix::fs::symlink("victim.pb.gz", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let protected =
        std::fs::read_to_string("/proc/sys/fs/protected_symlinks").is_ok_and(|v| v.trim() == "1");
    let result = heapprof::ProfileGuard::new(&link).finish();
    if protected {
        assert!(result.is_err(), "followed against fs.protected_symlinks");
        assert_eq!(std::fs::read(&victim).unwrap(), b"the victim's own");
    } else {
        result.unwrap();
        assert_eq!(ino(&victim), inode, "renamed over, not left to open");
    }
    // The same link as this process's own is replaced whole.
    std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
    heapprof::ProfileGuard::new(&link).finish().unwrap();
    assert_ne!(ino(&victim), inode, "this process's link: replaced whole");
    assert_eq!(read(&victim).sample_type.len(), 4);
}

/// A file the process may write, in a directory where it may not make or
/// rename files, is written in place, as the shell's `>` would: one made
/// ready for the user in a directory of root's, and root's file open to
/// all in a sticky directory. Run as user 65534, so as root only.
#[test]
fn a_writable_file_in_a_directory_closed_to_the_process_is_written_in_place() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        return;
    }
    let _watchdog = watchdog("the closed-directory child", Duration::from_secs(120));
    let nobody = AsNobody::new();
    for (sub, mode, owner) in [("closed", 0o755, 65534), ("sticky", 0o1777, 0)] {
        let d = nobody.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        let target = d.join("heap.pb.gz");
        std::fs::write(&target, b"made ready").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&target, Some(owner), Some(owner)).unwrap();
        let inode = std::fs::metadata(&target).unwrap().ino();
        let Some((stdout, stderr)) = nobody.run(
            &d,
            &[
                ("HEAPPROF_TEST_GUARD_PATH", "heap.pb.gz"),
                ("HEAPPROF_OUT", "heap.pb.gz"),
            ],
        ) else {
            return;
        };
        assert!(
            stdout.contains("guard: Ok(())"),
            "{sub}: {stdout}\n{stderr}"
        );
        assert!(
            !stderr.contains("could not write the exit profile"),
            "{sub}: {stderr}"
        );
        assert_eq!(read(&target).sample_type.len(), 4, "{sub}");
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!((m.ino(), m.uid()), (inode, owner), "{sub}: the same file");
        // Beside it at most the peak profile, where a sample or two made
        // the child's estimated heap pass 1 MiB (and the directory let it).
        let mut left = names(&d);
        left.retain(|n| n != "heap.peak.pb.gz");
        assert_eq!(left, ["heap.pb.gz"], "{sub}");
    }
}

/// A series whose directory is missing at first numbers its files after
/// those there once the directory appears, not on from the numbers its
/// failed writes used up.
#[test]
fn a_series_numbers_after_files_that_appeared_since_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("later");
    let series = heapprof::AutoDump::new(sub.join("heap.pb.gz"))
        .every(Duration::from_millis(100))
        .start()
        .unwrap();
    churn_for(Duration::from_millis(600));
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("heap.0002.pb.gz"), b"an earlier run's").unwrap();
    churn_for(Duration::from_millis(600));
    series.stop();
    let mut numbers: Vec<u64> = std::fs::read_dir(&sub)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("heap.")?
                .strip_suffix(".pb.gz")?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort();
    assert!(numbers.len() >= 2, "{numbers:?}");
    assert_eq!(&numbers[..2], &[2, 3], "{numbers:?}");
}

/// A run with no peak to write leaves an earlier run's peak file as it is
/// and says that it is not this run's.
#[test]
fn an_earlier_peak_file_is_not_passed_off_as_this_runs() {
    let dir = tempfile::tempdir().unwrap();
    let earlier = dir.path().join("heap.peak.pb.gz");
    std::fs::write(&earlier, b"an earlier run's peak").unwrap();
    // Sampling off: nothing is sampled, so no peak is recorded.
    let (_, stderr) = exit_child(
        dir.path(),
        &[
            ("HEAPPROF_OUT", "heap.pb.gz"),
            ("HEAPPROF_SAMPLE_RATE", "0"),
        ],
    );
    assert!(dir.path().join("heap.pb.gz").exists(), "{stderr}");
    assert_eq!(std::fs::read(&earlier).unwrap(), b"an earlier run's peak");
    assert!(
        stderr.contains("no peak profile")
            && stderr.contains("heap.peak.pb.gz\" is an earlier one"),
        "{stderr}"
    );
}

/// A file mounted over the profile's path (a container's bind mount of
/// one file) cannot be renamed over: it is rewritten in place, and no
/// temporary file is left. Needs root, for a mount namespace of the test's
/// own thread.
#[test]
fn a_file_mounted_over_the_path_is_rewritten_in_place() {
    let skip = |why: String| {
        assert!(
            std::env::var_os("HEAPPROF_REQUIRE_ROOT").is_none(),
            "HEAPPROF_REQUIRE_ROOT is set, but {why}"
        );
        println!("skipped: {why}");
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("this test does not run as root".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("host.pb.gz"), dir.path().join("heap.pb.gz"));
    std::fs::write(&src, b"the host's old file").unwrap();
    std::fs::write(&dst, b"under the mount").unwrap();
    let (s, d) = (c_path(&src), c_path(&dst));
    let mounted = std::thread::spawn(move || {
        // The namespace is this thread's alone: unshare takes the thread's
        // filesystem information with it.
        // SAFETY: unshare and mount take flags and NUL-terminated paths
        // that live across the calls.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            let root = c"/";
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    s.as_ptr(),
                    d.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(format!("mount: {}", std::io::Error::last_os_error()));
            }
        }
        let written = heapprof::ProfileGuard::new(std::path::Path::new(
            std::ffi::OsStr::from_bytes(d.as_bytes()),
        ))
        .finish();
        // SAFETY: as above.
        unsafe { libc::umount(d.as_ptr()) };
        Ok(written.map_err(|e| e.to_string()))
    })
    .join()
    .unwrap();
    let written = match mounted {
        Ok(written) => written,
        Err(why) => return skip(why),
    };
    assert_eq!(written, Ok(()));
    let host = std::fs::read(&src).unwrap();
    assert_eq!(
        &host[..2],
        &[0x1f, 0x8b],
        "the host's file holds the profile"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"under the mount");
    assert_eq!(names(dir.path()), ["heap.pb.gz", "host.pb.gz"]);
}
