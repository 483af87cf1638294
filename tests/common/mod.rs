//! Helpers shared by the integration tests: decoding a profile with
//! heapprof's own prost types and querying it the way `pprof -top` does.
#![allow(dead_code)]

use std::io::Read;

use prost::Message;

/// The pprof messages, compiled into the tests from the same generated code
/// heapprof encodes with (`src/output/proto.rs`), which the crate keeps private.
#[path = "../../src/output/proto.rs"]
pub mod proto;

use proto::Profile;

pub const ALLOC_OBJECTS: usize = 0;
pub const ALLOC_SPACE: usize = 1;
pub const INUSE_OBJECTS: usize = 2;
pub const INUSE_SPACE: usize = 3;

/// Writes the current profile and decodes it back.
pub fn take_profile() -> Profile {
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).expect("write_profile");
    decode(&gz)
}

pub fn decode(gz: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the profile must be gzip");
    Profile::decode(raw.as_slice()).expect("the profile must decode as profile.proto")
}

pub fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// Function names along a sample's stack, leaf first, inlined frames
/// innermost first.
pub fn stack_names(p: &Profile, s: &proto::Sample) -> Vec<String> {
    let mut names = Vec::new();
    for id in &s.location_id {
        let loc = &p.location[*id as usize - 1];
        assert_eq!(loc.id, *id, "location ids are dense");
        for line in &loc.line {
            let f = &p.function[line.function_id as usize - 1];
            names.push(string(p, f.name).to_owned());
        }
    }
    names
}

/// The leaf function of a sample: what `pprof -top` calls flat.
pub fn leaf_name(p: &Profile, s: &proto::Sample) -> String {
    stack_names(p, s).into_iter().next().unwrap_or_default()
}

/// Sum of value `index` over samples whose stack contains a function whose
/// name contains `needle` (pprof's cum column).
pub fn cum(p: &Profile, needle: &str, index: usize) -> i64 {
    p.sample
        .iter()
        .filter(|s| stack_names(p, s).iter().any(|n| n.contains(needle)))
        .map(|s| s.value[index])
        .sum()
}

/// Sum of value `index` over samples whose leaf function contains `needle`
/// (pprof's flat column).
pub fn flat(p: &Profile, needle: &str, index: usize) -> i64 {
    p.sample
        .iter()
        .filter(|s| leaf_name(p, s).contains(needle))
        .map(|s| s.value[index])
        .sum()
}

/// Asserts `estimate` is within `sigmas` standard errors of `truth`, where
/// the relative standard error of a site holding `truth` bytes sampled at
/// `rate` is 1/sqrt(truth/rate) (a Poisson count of samples).
pub fn assert_estimate(what: &str, estimate: i64, truth: usize, rate: usize, sigmas: f64) {
    let rel_se = 1.0 / ((truth as f64) / rate as f64).sqrt();
    let tolerance = (sigmas * rel_se).max(0.005);
    let rel = (estimate as f64 - truth as f64).abs() / truth as f64;
    assert!(
        rel <= tolerance,
        "{what}: estimate {estimate} vs truth {truth}: off by {:.1} %, tolerance {:.1} % ({sigmas} × {:.1} %)",
        rel * 100.0,
        tolerance * 100.0,
        rel_se * 100.0
    );
    println!(
        "{what}: estimate {estimate}, truth {truth}, off by {:.2} % (tolerance {:.1} %)",
        rel * 100.0,
        tolerance * 100.0
    );
}

/// Aborts the whole process if it is not dropped within `limit`, so that a
/// deadlock fails the test (the harness sees SIGABRT) instead of hanging CI.
/// The message is written with `write(2)` directly: a deadlocked thread
/// might hold the lock of Rust's `stderr`.
pub struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn watchdog(what: &'static str, limit: std::time::Duration) -> Watchdog {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let message = format!(
        "\nWATCHDOG: {what} did not finish within {limit:?}: deadlock or livelock; aborting\n"
    );
    let thread = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                // SAFETY: writes a valid buffer of its own length to fd 2.
                unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
                std::process::abort();
            }
        })
        .expect("spawn the watchdog");
    Watchdog {
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small, seedable xorshift64* generator: no dependency, reproducible.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0), near enough for tests.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
    /// Log-uniform in `lo..=hi`.
    pub fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((l + u * (h - l)).exp() as usize).clamp(lo, hi)
    }
}

/// Checks the invariants every sample of a heap profile must hold: four
/// values, none negative, and never more in use than was allocated.
pub fn assert_sane_values(p: &Profile) {
    for s in &p.sample {
        let v = &s.value;
        assert_eq!(v.len(), 4, "four values per sample: {v:?}");
        assert!(v.iter().all(|&x| x >= 0), "negative value: {v:?}");
        assert!(
            v[ALLOC_OBJECTS] >= v[INUSE_OBJECTS] && v[ALLOC_SPACE] >= v[INUSE_SPACE],
            "more in use than allocated: {v:?} at {:?}",
            stack_names(p, s)
        );
    }
}

/// The `profiler tables use N bytes` figure from the profile's comments.
pub fn table_bytes(p: &Profile) -> usize {
    comment_number(p, "profiler tables use ")
}

/// The `N live sampled blocks` figure from the profile's comments.
pub fn live_sampled_blocks(p: &Profile) -> usize {
    let c = p
        .comment
        .iter()
        .map(|&i| string(p, i))
        .find(|c| c.contains(" live sampled blocks"))
        .expect("a comment with the live sampled blocks");
    let after = &c[c.find("heapprof: ").expect("heapprof: prefix") + "heapprof: ".len()..];
    after
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

fn comment_number(p: &Profile, before: &str) -> usize {
    let c = p
        .comment
        .iter()
        .map(|&i| string(p, i))
        .find(|c| c.contains(before))
        .unwrap_or_else(|| panic!("no comment containing {before:?}"));
    c[c.find(before).unwrap() + before.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

/// Re-runs this test binary as a child process that runs only the test
/// named `test`, with `HEAPPROF_TEST_CHILD=1` and then `env` (which may
/// override it) in its environment: the way to test what happens at
/// start-up, at exit, or with settings read from the environment. Returns
/// the child's stdout and stderr; panics, showing both, if it failed.
/// Waits for forked child `pid` to exit: its exit status, or why there is
/// none (killed by a signal, or still running after `limit`, in which case
/// it is killed and reaped).
pub fn wait_with_timeout(pid: libc::pid_t, limit: std::time::Duration) -> Result<i32, String> {
    let start = std::time::Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child, with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("child died: wait status {status:#x}"));
        }
        assert_eq!(r, 0, "waitpid failed: {}", std::io::Error::last_os_error());
        if start.elapsed() > limit {
            // SAFETY: signals our own child, then reaps it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "child did not finish within {limit:?}: deadlocked after fork"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub fn run_child(test: &str, env: &[(&str, &str)]) -> (String, String) {
    run_child_in(None, test, env)
}

/// [`run_child`] in the working directory `cwd`, if given. `env` may set
/// `HEAPPROF_TEST_CHILD` to a scenario's name (it is `1` otherwise).
pub fn run_child_in(
    cwd: Option<&std::path::Path>,
    test: &str,
    env: &[(&str, &str)],
) -> (String, String) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("HEAPPROF_TEST_CHILD", "1")
        .envs(env.iter().copied());
    if let Some(dir) = cwd {
        child.current_dir(dir);
    }
    let out = child.output().expect("start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "child `{test}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Whether this process is a child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os("HEAPPROF_TEST_CHILD").is_some()
}

/// The number a child printed right after `name` (e.g. `samples=`).
pub fn printed_number(stdout: &str, name: &str) -> i64 {
    let at = stdout
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {stdout}"))
        + name.len();
    let digits: String = stdout[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {name} in {stdout}"))
}

/// A reply from heapprof's HTTP server, read until it closed the
/// connection (it answers one request per connection).
pub struct HttpReply {
    pub status: u16,
    /// The status line and headers, as text.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET target` from the server at `addr`.
pub fn http_get(addr: std::net::SocketAddr, target: &str) -> HttpReply {
    http_raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: heapprof-test\r\n\r\n")
            .as_bytes(),
    )
}

/// Sends `request` as it is and reads the reply.
pub fn http_raw(addr: std::net::SocketAddr, request: &[u8]) -> HttpReply {
    let stream = std::net::TcpStream::connect(addr).expect("connect to the server");
    exchange(stream, request)
}

/// A connection to `addr` from the local address `from`. On Linux all of
/// 127.0.0.0/8 is loopback, so `127.0.0.2`, `127.0.0.3`, … stand for
/// distinct peers in a test.
pub fn connect_from(from: std::net::IpAddr, addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("a socket");
    socket
        .bind(&std::net::SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind to {from}: {e}"));
    socket.connect(&addr.into()).expect("connect to the server");
    socket.into()
}

/// `GET target` from the server at `addr`, connecting from `from` (see
/// [`connect_from`]).
pub fn http_get_from(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    target: &str,
) -> HttpReply {
    exchange(
        connect_from(from, addr),
        format!("GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: heapprof-test\r\n\r\n")
            .as_bytes(),
    )
}

/// Sends `request` on `stream` and reads the reply until the server closes.
fn exchange(mut stream: std::net::TcpStream, request: &[u8]) -> HttpReply {
    use std::io::Write;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).expect("send the request");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read the reply");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(&reply)));
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpReply {
        status,
        head,
        body: reply[split + 4..].to_vec(),
    }
}

/// Whether `program` runs (`program version_arg` succeeds). When it does
/// not, says so on stdout (the caller then skips), unless `require_var` is
/// `1` (set by `.ci/run`, which installs the tool), which makes a missing
/// tool a failure.
pub fn tool_available(program: &str, version_arg: &str, require_var: &str, package: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os(require_var).is_none_or(|v| v != "1"),
            "{require_var}=1 but `{program}` is not on PATH (install Debian's {package})"
        );
        println!(
            "SKIPPED: `{program}` is not on PATH; install {package}, or set {require_var}=1 to make this a failure"
        );
    }
    found
}

/// Whether `go` is installed (see [`tool_available`]).
pub fn go_available() -> bool {
    tool_available("go", "version", "HEAPPROF_REQUIRE_GO", "golang-go")
}

/// Runs `go tool pprof ARGS`, asserts it succeeded, prints and returns its
/// output. pprof keeps copies of fetched profiles under `PPROF_TMPDIR`:
/// that is a fresh temporary directory here.
pub fn go_pprof(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        // Never reach out for symbols: the profile carries them.
        .env("PPROF_BINARY_PATH", "/nonexistent")
        .env("PPROF_TMPDIR", tmp.path())
        .output()
        .expect("run go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stderr}\n{stdout}"
    );
    println!("$ go tool pprof {}\n{stdout}", args.join(" "));
    stdout
}

/// `-top` rows as (flat bytes, name). pprof prints sizes like `12.50MB`.
pub fn top_rows(top: &str) -> Vec<(f64, String)> {
    top.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 6).then(|| (parse_size(cols[0]), cols[5..].join(" ")))
        })
        .collect()
}

pub fn parse_size(s: &str) -> f64 {
    let units = [
        ("GB", 1e9 * 1.073741824),
        ("MB", 1048576.0),
        ("kB", 1024.0),
        ("B", 1.0),
    ];
    for (u, m) in units {
        if let Some(n) = s.strip_suffix(u) {
            return n.parse::<f64>().unwrap_or(0.0) * m;
        }
    }
    s.parse().unwrap_or(0.0)
}

/// A fresh anonymous mapping of `bytes` (reserved, not committed), for the
/// tests' bump arenas; its address.
pub fn map_region(bytes: usize) -> usize {
    // SAFETY: an anonymous private mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

/// The next block of `layout` from a bump arena of `bytes` at `base` whose
/// used part `next` counts: aligned, in bounds, handed out once; null when
/// the arena is used up. Atomics only, so safe in a signal handler.
pub fn bump(
    base: usize,
    bytes: usize,
    next: &std::sync::atomic::AtomicUsize,
    layout: std::alloc::Layout,
) -> *mut u8 {
    use std::sync::atomic::Ordering::SeqCst;
    loop {
        let used = next.load(SeqCst);
        let start = (base + used).next_multiple_of(layout.align());
        let end = start - base + layout.size();
        if end > bytes {
            return std::ptr::null_mut();
        }
        if next.compare_exchange(used, end, SeqCst, SeqCst).is_ok() {
            return start as *mut u8;
        }
    }
}
