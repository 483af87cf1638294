//! This process as the kernel sees it: its memory, its descriptors.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A size from `/proc/self/status` (`"VmRSS:"`, `"VmHWM:"`, `"RssAnon:"`,
/// …), in bytes.
pub fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    kib * 1024
}

/// The resident size (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// Uses up every file descriptor this process may open (after lowering
/// its soft limit to 256, so that it is quick): the files holding them,
/// which give them back when dropped.
pub fn use_up_descriptors() -> Vec<std::fs::File> {
    // SAFETY: `limit` is plain data that getrlimit fills and setrlimit reads.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(256);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let mut files = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        files.push(f);
    }
    files
}

/// Limits this process's address space (`RLIMIT_AS`) to what it maps now
/// and `room` bytes more, once the test harness waits for the test
/// ([`harness_waits`]); returns what it maps now.
pub fn limit_address_space_to_room(room: u64) -> u64 {
    harness_waits();
    let mapped = status_bytes("VmSize:");
    limit_address_space(mapped + room);
    mapped
}

/// Sets this process's soft address-space limit (`RLIMIT_AS`) to `bytes`,
/// at most the hard limit; `libc::RLIM_INFINITY` lifts it again. A limit
/// is set only once the test harness waits for the test
/// ([`harness_waits`]).
pub fn limit_address_space(bytes: libc::rlim_t) {
    if bytes != libc::RLIM_INFINITY {
        harness_waits();
    }
    // SAFETY: `limit` is plain data that getrlimit fills and setrlimit
    // reads; only the soft limit changes, within the hard one.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
    }
}

/// Whether [`harness_waits`] saw the harness wait: its first wait's
/// thread-local is then set up for good, and later calls return at once
/// (allocating nothing, under a limit already set).
static HARNESS_SEEN_WAITING: AtomicBool = AtomicBool::new(false);

/// Returns once libtest's main thread, which runs the harness when a test
/// runs on a thread of its own, is parked waiting for the test's result;
/// at once when called on the main thread. Its first wait gives the thread
/// a thread-local with a destructor, which glibc registers with an
/// allocation, aborting the program if that fails: a harness slow to
/// reach its wait under load would otherwise abort a test that used up its
/// address space first. Parked is std's `thread::park`: a private
/// `FUTEX_WAIT_BITSET` for the value `u32::MAX`, which no lock's wait has;
/// a kernel without `/proc/…/syscall` shows only that the thread sleeps,
/// which must then be seen three times in a row. Panics after `PATIENCE`;
/// assumes libtest's harness.
pub fn harness_waits() {
    const PATIENCE: Duration = Duration::from_secs(30);
    const PARK: &str = "0x89 0xffffffff ";
    if HARNESS_SEEN_WAITING.load(Relaxed) {
        return;
    }
    // SAFETY: getpid and gettid take no arguments and cannot fail.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    if pid == tid {
        return;
    }
    let task = format!("/proc/self/task/{pid}");
    let start = Instant::now();
    let mut asleep = 0;
    loop {
        let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
        let sleeps = stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'));
        let call = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
        let parked = call.split_once(' ').is_some_and(|(number, args)| {
            number.parse::<libc::c_long>() == Ok(libc::SYS_futex)
                && args
                    .split_once(' ')
                    .is_some_and(|(_, rest)| rest.starts_with(PARK))
        });
        asleep = if sleeps { asleep + 1 } else { 0 };
        if parked || (call.is_empty() && asleep >= 3) {
            HARNESS_SEEN_WAITING.store(true, Relaxed);
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "libtest's main thread did not wait for the test in {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bytes of the calling thread's stack below this function's frame,
/// for a thread started by `pthread_create` (std's threads): glibc
/// reports such a stack's bounds exactly, the main thread's only
/// roughly.
#[inline(never)]
pub fn stack_left() -> usize {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    // SAFETY: pthread_getattr_np initializes `attr` (allocating inside
    // it), pthread_attr_getstack reads it into the two locals, and
    // pthread_attr_destroy frees it, whatever the reads returned.
    let (got, lowest) = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut lowest: *mut libc::c_void = std::ptr::null_mut();
        let mut size = 0usize;
        let got = libc::pthread_attr_getstack(&attr, &mut lowest, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (got, lowest as usize)
    };
    assert_eq!(got, 0, "pthread_attr_getstack");
    sp.checked_sub(lowest)
        .expect("a frame above the stack's end")
}

/// Whether this test runs as root; if not, says on stdout that it skips
/// because `needs` needs root, and panics instead where
/// `HEAPPROF_REQUIRE_ROOT` is set (CI runs as root and sets it).
pub fn runs_as_root(needs: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("HEAPPROF_REQUIRE_ROOT").is_none(),
        "HEAPPROF_REQUIRE_ROOT is set, but this test does not run as root"
    );
    println!("skipped: {needs} needs root");
    false
}
