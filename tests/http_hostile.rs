//! The built-in server against clients that misbehave on purpose: clients
//! that ask for large bodies and never read them, one peer holding
//! connections to lock the others out, small default thread stacks, and
//! limits set to their extremes. Each test that measures the process, or
//! that would abort it when the server is wrong, runs in a child process
//! of its own.

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::http::{connect_from, hold_deltas, http_get, http_get_from, http_raw};
use heapprof_testkit::watchdog::watchdog;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use heapprof::http::{DEFAULT_CONNECTIONS_PER_PEER, DEFAULT_RESPONSE_BUDGET, Server};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn loopback(last: u8) -> IpAddr {
    Ipv4Addr::new(127, 0, 0, last).into()
}

/// The process's resident set.
fn rss_bytes() -> usize {
    heapprof_testkit::process::rss_bytes() as usize
}

const MIB: usize = 1024 * 1024;

// Distinct allocation sites: a path of `DEPTH` calls, each to `left` or
// `right` as the bits of `path` say, gives 2^DEPTH different stacks. The
// two differ in what they do after the call (so neither the calls become
// jumps nor the two functions are merged into one).
const DEPTH: u32 = 12;

#[inline(never)]
fn left(depth: u32, path: u32, keep: &mut Vec<Box<[u8]>>) {
    step(depth, path, keep);
    std::hint::black_box(1);
}

#[inline(never)]
fn right(depth: u32, path: u32, keep: &mut Vec<Box<[u8]>>) {
    step(depth, path, keep);
    std::hint::black_box(2);
}

#[inline(never)]
fn step(depth: u32, path: u32, keep: &mut Vec<Box<[u8]>>) {
    if depth == 0 {
        keep.push(vec![7u8; 64].into_boxed_slice());
    } else if path & 1 == 0 {
        left(depth - 1, path >> 1, keep);
    } else {
        right(depth - 1, path >> 1, keep);
    }
}

/// Allocates once from each of 2^DEPTH sites, every allocation sampled.
fn many_sites() -> Vec<Box<[u8]>> {
    let mut keep = Vec::new();
    heapprof::set_sample_rate(1);
    for path in 0..1u32 << DEPTH {
        step(DEPTH, path, &mut keep);
    }
    heapprof::set_sample_rate(512 * 1024);
    keep
}

/// Writes a fake cgroup's usage (`HEAPPROF_CGROUP_DIR`): `left` bytes
/// below its 1 GiB `memory.max`.
fn leave_in_cgroup(dir: &std::path::Path, left: usize) {
    const MAX: usize = 1 << 30;
    std::fs::write(dir.join("memory.max"), format!("{MAX}\n")).unwrap();
    std::fs::write(dir.join("memory.high"), "max\n").unwrap();
    std::fs::write(dir.join("memory.current"), format!("{}\n", MAX - left)).unwrap();
    std::fs::write(dir.join("memory.stat"), "anon 0\ninactive_file 0\n").unwrap();
}

/// A text profile (`?debug=1`) of thousands of sites is megabytes, held
/// whole until sent: in a container whose limit leaves less, building it
/// stops with a 503 that says why, instead of taking the program past
/// its limit. The gzipped profile is still served, and the text is once
/// there is room.
#[test]
fn a_text_profile_stops_short_of_the_memory_limit() {
    if !is_child() {
        let dir = tempfile::tempdir().unwrap();
        leave_in_cgroup(dir.path(), 1 << 30);
        let (stdout, _) = run_child(
            "a_text_profile_stops_short_of_the_memory_limit",
            &[
                ("HEAPPROF_CGROUP_DIR", dir.path().to_str().unwrap()),
                // Names make the text the size this test needs.
                ("HEAPPROF_SYMBOLIZE", "on"),
            ],
        );
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("a text profile near the limit", Duration::from_secs(120));
    let dir = std::path::PathBuf::from(std::env::var_os("HEAPPROF_CGROUP_DIR").unwrap());
    let sites = many_sites();
    // Names first, while there is room for the lookup.
    assert_eq!(heapprof::http::handle("/debug/pprof/heap", "").status, 200);
    leave_in_cgroup(&dir, 3 * MIB);
    let refused = heapprof::http::handle("/debug/pprof/heap", "debug=1");
    let said = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 503, "{said}");
    assert!(
        said.contains("the cgroup's memory.max leaves 3 MiB, less than the 4 MiB its next growth")
            && said.contains("without ?debug=1"),
        "{said}"
    );
    assert_eq!(heapprof::http::handle("/debug/pprof/heap", "").status, 200);
    // The built-in server answers the same.
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    assert_eq!(http_get(addr, "/debug/pprof/heap?debug=1").status, 503);
    assert_eq!(http_get(addr, "/debug/pprof/heap").status, 200);
    leave_in_cgroup(&dir, 1 << 30);
    let text = heapprof::http::handle("/debug/pprof/heap", "debug=1");
    assert_eq!(text.status, 200);
    assert!(text.body.len() >= 4 * MIB, "{} bytes", text.body.len());
    println!(
        "{} sites: refused with 3 MiB left, {} bytes with room",
        sites.len(),
        text.body.len()
    );
}

/// Clients that ask for the text profile and never read it: before, each
/// connection held its own copy of the body until the write deadline, so
/// RSS grew by connections × body. Now what the bodies hold stays within
/// the response budget (plus the few bodies in the making), and the
/// connections past it get 503.
#[test]
fn non_reading_clients_cost_at_most_the_response_budget() {
    if !is_child() {
        let (stdout, _) = run_child("non_reading_clients_cost_at_most_the_response_budget", &[]);
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("non-reading clients", Duration::from_secs(120));
    let sites = many_sites();
    let target = "/debug/pprof/heap?debug=1";
    let body = heapprof::http::handle("/debug/pprof/heap", "debug=1")
        .body
        .len();
    println!("sites={} body={body} bytes", sites.len());
    assert!(body >= 4 * MIB, "the body is too small to measure: {body}");
    // Enough connections to hold four budgets' worth without the budget.
    let clients = (4 * DEFAULT_RESPONSE_BUDGET).div_ceil(body);
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    // One whole exchange first, so that what every request needs once
    // (thread stacks, allocator arenas) is in the baseline.
    assert_eq!(http_get(addr, target).status, 200);
    let before = rss_bytes();

    // Four per address, within the per-peer limit.
    let waiting: Vec<TcpStream> = (0..clients)
        .map(|i| {
            let mut s = connect_from(loopback(10 + (i / 4) as u8), addr);
            s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            s
        })
        .collect();
    // Every connection has been answered (a 200 being written, or a 503)
    // once its first bytes arrive: then every body that will be held is.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut first = vec![Vec::new(); clients];
    for (s, first) in waiting.iter().zip(&mut first) {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut peek = [0u8; 12];
        loop {
            match s.peek(&mut peek) {
                Ok(n) if n == peek.len() => break,
                _ => assert!(Instant::now() < deadline, "not all were answered"),
            }
        }
        first.extend_from_slice(&peek);
    }
    let after = rss_bytes();
    let served = first
        .iter()
        .filter(|f| f.starts_with(b"HTTP/1.1 200"))
        .count();
    let refused = first
        .iter()
        .filter(|f| f.starts_with(b"HTTP/1.1 503"))
        .count();
    let growth = after.saturating_sub(before);
    println!(
        "{clients} clients that never read a {body}-byte body: {served} served, {refused} refused 503; \
         RSS {} MiB -> {} MiB (+{} MiB; budget {} MiB)",
        before / MIB,
        after / MIB,
        growth / MIB,
        DEFAULT_RESPONSE_BUDGET / MIB
    );
    assert_eq!(served + refused, clients, "each got 200 or 503");
    assert!(served >= 1, "at least one body fits");
    assert!(
        served * body <= DEFAULT_RESPONSE_BUDGET.max(body),
        "{served} bodies of {body} bytes held at once"
    );
    // The held bodies, the one or two in the making beside them, and
    // slack for the rest of the process.
    let allowed = DEFAULT_RESPONSE_BUDGET + 3 * body + 16 * MIB;
    assert!(
        growth <= allowed,
        "RSS grew by {growth} bytes with {clients} non-reading clients, more than {allowed}"
    );

    // Once they go, the budget is free again: a reading client is served.
    drop(waiting);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http_get(addr, target).status;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the budget never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(sites);
}

/// One peer (127.0.0.2) keeps a hundred connections open, trickling a byte
/// at a time and reconnecting whenever the server closes one, as in the
/// report that filed this; another (127.0.0.3) scrapes. Every scrape must
/// succeed: the first peer holds at most its share of the places.
#[test]
fn one_peer_cannot_lock_out_a_scraper() {
    let _watchdog = watchdog("one peer holding connections", Duration::from_secs(120));
    let addr = Server::new()
        // Long enough that no held connection times out during the test.
        .header_timeout(Duration::from_secs(60))
        .serve("127.0.0.1:0")
        .unwrap();
    const BAD: usize = 100;
    let request = b"GET /debug/pprof/heap HTTP/1.1\r\nHost: x\r\n\r\n";
    let stop = Arc::new(AtomicBool::new(false));
    let refused_by_peer_limit = Arc::new(AtomicUsize::new(0));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(std::sync::Barrier::new(2));
    let attacker = {
        let (stop, refused, reconnects, opened) = (
            stop.clone(),
            refused_by_peer_limit.clone(),
            reconnects.clone(),
            opened.clone(),
        );
        std::thread::spawn(move || {
            let open = || {
                let s = connect_from(loopback(2), addr);
                s.set_nonblocking(true).unwrap();
                (s, 0usize)
            };
            let mut conns: Vec<(TcpStream, usize)> = (0..BAD).map(|_| open()).collect();
            opened.wait();
            while !stop.load(Relaxed) {
                for conn in &mut conns {
                    // Whatever the server sent means it is done with this
                    // connection: read it, and take a new one.
                    let mut reply = [0u8; 512];
                    let answered = match conn.0.read(&mut reply) {
                        Ok(n) => {
                            if String::from_utf8_lossy(&reply[..n]).contains("from your address") {
                                refused.fetch_add(1, Relaxed);
                            }
                            true
                        }
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    let sent = conn.1 < request.len() - 1
                        && conn.0.write(&request[conn.1..conn.1 + 1]).is_ok();
                    if sent {
                        conn.1 += 1;
                    }
                    if answered {
                        *conn = open();
                        reconnects.fetch_add(1, Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    opened.wait();
    // Let the server accept them all first.
    std::thread::sleep(Duration::from_millis(300));
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(http_get_from(loopback(3), addr, "/debug/pprof/heap").status);
    }
    stop.store(true, Relaxed);
    attacker.join().unwrap();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    println!(
        "scraper beside {BAD} held connections from one peer: {ok}/20 answered 200 ({statuses:?}); \
         the holding peer was refused {} times and reconnected {} times",
        refused_by_peer_limit.load(Relaxed),
        reconnects.load(Relaxed)
    );
    assert_eq!(ok, statuses.len(), "every scrape succeeds: {statuses:?}");
    assert!(
        refused_by_peer_limit.load(Relaxed) > 0,
        "the peer's connections past its {DEFAULT_CONNECTIONS_PER_PEER} were answered 503"
    );
}

/// The per-peer limit counts a peer's connections, not everybody's: with
/// one place per peer, a second connection from the same address is
/// refused while one from another address is served.
#[test]
fn the_per_peer_limit_is_per_address() {
    let addr = Server::new()
        .max_connections_per_peer(1)
        .header_timeout(Duration::from_secs(20))
        .serve("127.0.0.1:0")
        .unwrap();
    let mut holding = connect_from(loopback(4), addr);
    holding.write_all(b"GET /").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let same = http_get_from(loopback(4), addr, "/debug/pprof/");
    assert_eq!(same.status, 503, "{}", same.text());
    assert!(same.text().contains("from your address"), "{}", same.text());
    assert_eq!(same.header("retry-after"), Some("1"));
    let other = http_get_from(loopback(5), addr, "/debug/pprof/");
    assert_eq!(other.status, 200, "{}", other.text());
    // The place comes back when the connection ends.
    drop(holding);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get_from(loopback(4), addr, "/debug/pprof/").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the peer's place never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `RUST_MIN_STACK` sets the stack of every thread spawned without an
/// explicit size. At 64 KiB, serving a gzipped profile overflowed the
/// connection thread and aborted the whole process; the server's threads
/// now have stacks of their own size.
#[test]
fn requests_survive_a_small_rust_min_stack() {
    if !is_child() {
        let (stdout, _) = run_child(
            "requests_survive_a_small_rust_min_stack",
            &[("RUST_MIN_STACK", "65536")],
        );
        print!("{stdout}");
        return;
    }
    assert_eq!(std::env::var("RUST_MIN_STACK").as_deref(), Ok("65536"));
    let sites = many_sites();
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    for target in [
        "/debug/pprof/heap",
        "/debug/pprof/allocs",
        "/debug/pprof/heap?debug=1",
        "/debug/pprof/peak",
        "/debug/pprof/",
    ] {
        let reply = http_get(addr, target);
        assert!(
            reply.status == 200 || (target.ends_with("peak") && reply.status == 404),
            "{target}: {}",
            reply.status
        );
        println!("{target}: {} ({} bytes)", reply.status, reply.body.len());
    }
    drop(sites);
}

/// Limits at their extremes: `Duration::MAX` timeouts panicked on every
/// connection (an `Instant` plus `Duration::MAX` overflows), a 4 TiB head
/// limit aborted on allocating its buffer, `usize::MAX` panicked. They
/// saturate now, and each server answers.
#[test]
fn extreme_limits_saturate() {
    if !is_child() {
        let (stdout, _) = run_child("extreme_limits_saturate", &[]);
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("extreme limits", Duration::from_secs(60));
    let servers = [
        ("Duration::MAX timeouts", {
            Server::new()
                .header_timeout(Duration::MAX)
                .write_timeout(Duration::MAX)
        }),
        (
            "max_head_bytes(1 << 42)",
            Server::new().max_head_bytes(1 << 42),
        ),
        (
            "max_head_bytes(usize::MAX)",
            Server::new().max_head_bytes(usize::MAX),
        ),
        (
            "everything at once",
            Server::new()
                .max_connections(usize::MAX)
                .max_connections_per_peer(usize::MAX)
                .max_response_bytes(usize::MAX)
                .header_timeout(Duration::MAX)
                .write_timeout(Duration::MAX)
                .max_head_bytes(usize::MAX),
        ),
        (
            "zeros",
            Server::new()
                .max_connections(0)
                .max_connections_per_peer(0)
                .max_response_bytes(0)
                .header_timeout(Duration::ZERO)
                .write_timeout(Duration::ZERO)
                .max_head_bytes(0),
        ),
    ];
    for (what, server) in servers {
        let rss = rss_bytes();
        let addr = server.serve("127.0.0.1:0").unwrap();
        let reply = http_get(addr, "/debug/pprof/");
        // A zero header timeout is 1 ms: on a loaded machine the head may
        // miss it, and 408 is then the right answer.
        assert!(
            reply.status == 200 || (what == "zeros" && reply.status == 408),
            "{what}: {}",
            reply.status
        );
        println!(
            "{what}: {} (RSS +{} MiB)",
            reply.status,
            rss_bytes().saturating_sub(rss) / MIB
        );
    }
    // A head past the largest limit is refused, not buffered for ever.
    let addr = Server::new()
        .max_head_bytes(usize::MAX)
        .serve("127.0.0.1:0")
        .unwrap();
    let big = format!(
        "GET /debug/pprof/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(heapprof::http::LARGEST_HEAD_BYTES)
    );
    let reply = http_raw(addr, big.as_bytes());
    assert_eq!(reply.status, 431, "{}", reply.text());
    let fits = format!(
        "GET /debug/pprof/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(heapprof::http::LARGEST_HEAD_BYTES / 2)
    );
    assert_eq!(http_raw(addr, fits.as_bytes()).status, 200);
}

/// Clients that ask for long deltas and hang up at once (closing, or
/// resetting the connection) do not keep every delta's place taken: the
/// waits end with them, and the next client's delta is served.
#[test]
fn deltas_whose_clients_hung_up_give_their_places_back() {
    let _watchdog = watchdog(
        "deltas_whose_clients_hung_up_give_their_places_back",
        Duration::from_secs(120),
    );
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    let request = b"GET /debug/pprof/heap?seconds=300 HTTP/1.1\r\nHost: x\r\n\r\n";
    for i in 0..4u8 {
        let mut s = connect_from(loopback(20 + i), addr);
        s.write_all(request).unwrap();
        if i % 2 == 1 {
            // A reset rather than a close: SO_LINGER with a zero timeout.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: a valid socket and a `linger` of the size passed,
            // alive across the call.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
        }
        // Long enough for the server to read the request and start waiting.
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
    }
    let started = Instant::now();
    let reply = loop {
        let reply = http_get_from(loopback(30), addr, "/debug/pprof/heap?seconds=1");
        if reply.status != 503 || started.elapsed() > Duration::from_secs(30) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a place came back after {:?}",
        started.elapsed()
    );
}

/// One peer cannot take every delta's place: its third delta at once is
/// refused at once, naming its address, while another peer's is served.
#[test]
fn one_peer_holds_at_most_two_deltas() {
    let test = "one_peer_holds_at_most_two_deltas";
    if !is_child() {
        // Its waiting deltas would take the places of other tests' here.
        run_child(test, &[]);
        return;
    }
    let _watchdog = watchdog(test, Duration::from_secs(120));
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    // The third from the same address: refused once the two wait.
    let (waiting, refused) = hold_deltas(addr, &[loopback(40), loopback(40)], || {
        let probe = http_get_from(loopback(40), addr, "/debug/pprof/heap?seconds=1");
        (probe.status == 503).then_some(probe)
    });
    assert!(
        refused
            .text()
            .contains("2 delta profiles from your address"),
        "{}",
        refused.text()
    );
    let other = http_get_from(loopback(41), addr, "/debug/pprof/heap?seconds=1");
    assert_eq!(other.status, 200, "{}", other.text());
    drop(waiting);
}
