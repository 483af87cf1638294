//! This process as the kernel sees it: its memory, its descriptors.

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

/// Sets this process's soft address-space limit (`RLIMIT_AS`) to `bytes`,
/// at most the hard limit; `libc::RLIM_INFINITY` lifts it again. A limit
/// is set only once the test harness's main thread waits for the test
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

/// Returns once the main thread (the test harness's, when a test runs on
/// a thread of its own) sleeps in a futex wait, as it does waiting for
/// the test's result; at once when called on the main thread. Its first
/// wait gives the thread a thread-local with a destructor, which glibc
/// registers with an allocation, aborting the program if that fails: a
/// harness slow to reach its wait under load would otherwise abort a test
/// that used up its address space first. Seen three times in a row, so
/// that a passing wait (a lock) is not taken for it; panics after
/// `PATIENCE`.
pub fn harness_waits() {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
    // SAFETY: getpid and gettid take no arguments and cannot fail.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    if pid == tid {
        return;
    }
    let task = format!("/proc/self/task/{pid}");
    let waiting = || {
        let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        let call = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
        let number = call
            .split(' ')
            .next()
            .and_then(|n| n.parse::<libc::c_long>().ok());
        // A kernel without the file says only the state.
        state == Some('S') && (call.is_empty() || number == Some(libc::SYS_futex))
    };
    let start = std::time::Instant::now();
    let mut seen = 0;
    while seen < 3 {
        assert!(
            start.elapsed() < PATIENCE,
            "the main thread did not wait for the test in {PATIENCE:?}"
        );
        seen = if waiting() { seen + 1 } else { 0 };
        std::thread::sleep(std::time::Duration::from_millis(5));
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
