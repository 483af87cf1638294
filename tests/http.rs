//! The `/debug/pprof` endpoint, through real sockets: every profile decodes,
//! the text format is what Go and pprof expect, deltas cover their window,
//! bad requests get 4xx, and misbehaving clients do not stop the others.

use heapprof_testkit::check::assert_estimate;
use heapprof_testkit::http::{http_get, http_get_from, http_raw};
use heapprof_testkit::profile::{ALLOC_SPACE, INUSE_SPACE, cum, decode, string};
use heapprof_testkit::watchdog::watchdog;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Small enough for tight estimates of the few MiB these tests allocate.
const RATE: usize = 32 * 1024;

/// One server for the tests that use the default limits.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        heapprof::set_seed(7);
        heapprof::set_sample_rate(RATE);
        heapprof::http::serve("127.0.0.1:0").expect("start the server")
    })
}

/// Held only by the test that checks its estimate: tests run in parallel,
/// and a profile counts every live block under a function's name.
#[inline(never)]
fn hold_for_proto(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 4096]).collect()
}

/// Held by the tests that need something live (a peak, samples to
/// scrape) without measuring it; 20 KiB blocks, so not merged with the
/// holders whose bytes are measured.
#[inline(never)]
fn hold_unmeasured(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 20480]).collect()
}

#[inline(never)]
fn hold_for_text(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 8192]).collect()
}

#[inline(never)]
fn grow_during_delta(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 16384]).collect()
}

/// Not the same code as `grow_during_delta` (12 KiB blocks): identical
/// functions may be merged by the compiler, and then share one name.
#[inline(never)]
fn hold_before_delta(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 12288]).collect()
}

#[test]
fn heap_and_allocs_decode_with_their_default_views() {
    let addr = server();
    let kept = hold_for_proto(2048); // 8 MiB
    let heap = http_get(addr, "/debug/pprof/heap");
    assert_eq!(heap.status, 200, "{}", heap.head);
    assert_eq!(
        heap.header("content-type"),
        Some("application/octet-stream")
    );
    let p = decode(&heap.body);
    let types: Vec<&str> = p.sample_type.iter().map(|t| string(&p, t.r#type)).collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert_eq!(
        p.default_sample_type, 0,
        "heap: pprof's default, inuse_space"
    );
    assert_eq!(p.period, RATE as i64);
    assert_estimate(
        "inuse_space of hold_for_proto",
        cum(&p, "http::hold_for_proto", INUSE_SPACE),
        2048 * 4096,
        RATE,
        5.0,
    );

    let allocs = http_get(addr, "/debug/pprof/allocs");
    assert_eq!(allocs.status, 200);
    let a = decode(&allocs.body);
    assert_eq!(string(&a, a.default_sample_type), "alloc_space");
    assert!(cum(&a, "http::hold_for_proto", ALLOC_SPACE) > 0);

    let head = http_raw(addr, b"HEAD /debug/pprof/heap HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    drop(kept);
}

/// `heap profile: N: B [N: B] @ heap/2`, records, `#` frames, the stats
/// trailer and the memory map; pprof's own scaling of the records must
/// give back the estimate.
#[test]
fn debug_1_is_the_legacy_text_format() {
    let addr = server();
    let kept = hold_for_text(1024); // 8 MiB
    let reply = http_get(addr, "/debug/pprof/heap?debug=1");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let text = reply.text();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    println!("{header}");
    let nums = numbers_of_record(header.strip_prefix("heap profile: ").expect("header"));
    // `heap/2`: a period of 1, for which pprof scales nothing; the
    // records are the estimates themselves (see `src/text.rs`).
    let period = header
        .rsplit_once("@ heap/")
        .unwrap()
        .1
        .parse::<f64>()
        .unwrap()
        / 2.0;
    assert_eq!(period, 1.0, "{header}");

    // Sites: one or two records `i: ib [a: ab] @ 0x…` (the live part and
    // the freed part), then `#` lines, then a blank line.
    let mut records: Vec<([i64; 4], String)> = Vec::new();
    let mut site_start = 0;
    for line in lines.by_ref() {
        if line.starts_with("# heapprof stats") {
            break;
        }
        if let Some(frame) = line.strip_prefix('#') {
            for r in &mut records[site_start..] {
                r.1 += frame;
            }
        } else if line.is_empty() {
            site_start = records.len();
        } else {
            let (values, addrs) = line.split_once(" @ ").expect("a record");
            assert!(addrs.split(' ').all(|a| a.starts_with("0x")), "{line}");
            let v = numbers_of_record(values);
            assert!(v[0] <= v[2] && v[1] <= v[3], "inuse <= alloc: {line}");
            records.push((v, String::new()));
        }
    }
    let sums = records.iter().fold([0; 4], |s, (v, _)| {
        [s[0] + v[0], s[1] + v[1], s[2] + v[2], s[3] + v[3]]
    });
    assert_eq!(sums, nums, "header totals = sum of the records");
    // pprof scales each record by 1/(1 - exp(-avg/period)), avg =
    // bytes/count: by 1 here.
    let as_pprof_reads = |count: i64, bytes: i64| {
        let avg = bytes as f64 / count as f64;
        bytes as f64 / (1.0 - (-avg / period).exp())
    };
    let ours: f64 = records
        .iter()
        .filter(|(_, frames)| frames.contains("http::hold_for_text"))
        .map(|(v, _)| as_pprof_reads(v[0], v[1]))
        .sum();
    assert_estimate(
        "hold_for_text as pprof reads the text",
        ours as i64,
        1024 * 8192,
        RATE,
        5.0,
    );
    let rest: Vec<&str> = lines.collect();
    for key in [
        "# allocations = ",
        "# live_bytes = ",
        "# sample_rate = 32768",
    ] {
        assert!(rest.iter().any(|l| l.starts_with(key)), "{key} in {rest:?}");
    }
    let map_at = rest
        .iter()
        .position(|l| *l == "MAPPED_LIBRARIES:")
        .expect("a memory map section");
    let exe = std::env::current_exe().unwrap();
    assert!(
        rest[map_at + 1].contains(" r-xp ") && rest[map_at + 1].ends_with(exe.to_str().unwrap()),
        "the executable's mapping first: {}",
        rest[map_at + 1]
    );

    let allocs = http_get(addr, "/debug/pprof/allocs?debug=1");
    assert!(allocs.text().starts_with("heap profile: "));
    drop(kept);
}

fn numbers_of_record(s: &str) -> [i64; 4] {
    let s = s.split(" @").next().unwrap();
    let n: Vec<i64> = s
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect();
    n.try_into()
        .unwrap_or_else(|n| panic!("four numbers in {s:?}: {n:?}"))
}

/// The tests that start deltas run one at a time: at most 4 deltas may be
/// in progress in the process.
static DELTA_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn seconds_gives_a_delta_over_the_window() {
    let _one_at_a_time = DELTA_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let addr = server();
    let before = hold_before_delta(512); // 6 MiB, before the window
    // The server copies the table as soon as the request arrives (no
    // lock); a second is margin enough for that on a loaded machine.
    let grower = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(1));
        grow_during_delta(512) // 8 MiB, inside it
    });
    let started = Instant::now();
    let reply = http_get(addr, "/debug/pprof/heap?seconds=3");
    let took = started.elapsed();
    let grown = grower.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(took >= Duration::from_secs(3), "waited {took:?}");
    let p = decode(&reply.body);
    assert_eq!(p.duration_nanos, 3_000_000_000);
    assert_estimate(
        "alloc_space of grow_during_delta in the delta",
        cum(&p, "grow_during_delta", ALLOC_SPACE),
        512 * 16384,
        RATE,
        5.0,
    );
    assert_eq!(
        cum(&p, "hold_before_delta", ALLOC_SPACE),
        0,
        "allocated before the window"
    );
    drop((before, grown));
}

#[test]
fn index_page_says_what_its_counts_mean() {
    let addr = server();
    for path in ["/debug/pprof/", "/debug/pprof"] {
        let reply = http_get(addr, path);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let page = reply.text();
        // Absolute links: right with or without the trailing slash.
        for needle in [
            "href=\"/debug/pprof/heap\"",
            "href=\"/debug/pprof/allocs\"",
            "href=\"/debug/pprof/heap?debug=1\"",
            "allocation sites with sampled memory still live",
            "not a leak",
            "live bytes",
        ] {
            assert!(page.contains(needle), "{needle} in\n{page}");
        }
    }
}

#[test]
fn bad_requests_get_4xx_and_the_server_goes_on() {
    let addr = server();
    let cases: &[(&[u8], u16)] = &[
        (b"GET /debug/pprof/goroutine HTTP/1.1\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /debug/pprof/heap?seconds=abc HTTP/1.1\r\n\r\n", 400),
        (b"GET /debug/pprof/heap?seconds=0 HTTP/1.1\r\n\r\n", 400),
        (
            b"GET /debug/pprof/heap?seconds=100000 HTTP/1.1\r\n\r\n",
            400,
        ),
        (b"GET /debug/pprof/heap?debug=x HTTP/1.1\r\n\r\n", 400),
        (
            b"GET /debug/pprof/heap?seconds=1&debug=1 HTTP/1.1\r\n\r\n",
            400,
        ),
        (
            b"POST /debug/pprof/heap HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400), // a TLS hello
        (b"GET /debug/pprof/heap HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /\xff\xfe HTTP/1.1\r\n\r\n", 400),
    ];
    for (request, status) in cases {
        let reply = http_raw(addr, request);
        assert_eq!(
            reply.status,
            *status,
            "{:?} -> {}",
            String::from_utf8_lossy(request),
            reply.text()
        );
    }
    // A head larger than 8 KiB.
    let huge = format!(
        "GET /debug/pprof/heap HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(http_raw(addr, huge.as_bytes()).status, 431);
    // A client that connects and closes at once, or sends half and
    // closes: nothing to answer, nothing breaks.
    drop(TcpStream::connect(addr).unwrap());
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /debug/pp").unwrap();
    drop(half);
    assert_eq!(http_get(addr, "/debug/pprof/heap").status, 200);
    println!(
        "{} bad requests answered, server still serving",
        cases.len() + 3
    );
}

/// A client that sends half a request and waits does not hold up anyone
/// else, and is cut off when its time is up.
#[test]
fn a_slow_client_does_not_block_others() {
    server(); // the rate
    let timeout = Duration::from_secs(3);
    let addr = heapprof::http::Server::new()
        .header_timeout(timeout)
        .serve("127.0.0.1:0")
        .unwrap();
    // Before connecting: the server's clock starts when it accepts.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /debug/pprof/heap HTTP/1.1\r\nHost: sl")
        .unwrap();
    for _ in 0..5 {
        assert_eq!(http_get(addr, "/debug/pprof/heap").status, 200);
    }
    let others = started.elapsed();
    // The others were answered while the slow one still waits (its
    // deadline not yet reached, or it would have been answered 408 by now).
    slow.set_nonblocking(true).unwrap();
    let mut peek = [0u8; 1];
    let pending = matches!(
        std::io::Read::read(&mut slow, &mut peek),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(
        pending || others >= timeout,
        "the slow client was answered before the others finished ({others:?})"
    );
    slow.set_nonblocking(false).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut slow, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    let cut_off = started.elapsed();
    assert!(
        cut_off >= timeout - Duration::from_millis(100),
        "{cut_off:?}"
    );
    println!("5 requests in {others:?} beside a slow client, which was cut off after {cut_off:?}");
}

#[test]
fn connections_over_the_limit_get_503() {
    server();
    let addr = heapprof::http::Server::new()
        .max_connections(2)
        .header_timeout(Duration::from_secs(5))
        .serve("127.0.0.1:0")
        .unwrap();
    let hold: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /").unwrap();
            s
        })
        .collect();
    // Let the server accept both before the third arrives.
    std::thread::sleep(Duration::from_millis(200));
    let third = http_get(addr, "/debug/pprof/heap");
    assert_eq!(third.status, 503, "{}", third.text());
    drop(hold);
    // The slots come back when those connections end.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = http_get(addr, "/debug/pprof/heap").status;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fifty scrapers from ten addresses (five each, within the per-peer
/// limit), all at once.
#[test]
fn fifty_concurrent_scrapes_all_succeed() {
    let addr = server();
    let _watchdog = watchdog("50 concurrent scrapes", Duration::from_secs(120));
    let kept = hold_unmeasured(52); // 1 MiB
    let scrapers: Vec<_> = (0..50u8)
        .map(|i| {
            std::thread::spawn(move || {
                let target = if i % 5 == 4 {
                    "/debug/pprof/heap?debug=1"
                } else {
                    "/debug/pprof/heap"
                };
                let from = std::net::Ipv4Addr::new(127, 0, 0, 10 + i % 10);
                let reply = http_get_from(from.into(), addr, target);
                assert_eq!(reply.status, 200, "scrape {i}: {}", reply.text());
                if i % 5 != 4 {
                    let p = decode(&reply.body);
                    assert!(!p.sample.is_empty(), "scrape {i}: an empty profile");
                }
                reply.body.len()
            })
        })
        .collect();
    let sizes: Vec<usize> = scrapers.into_iter().map(|t| t.join().unwrap()).collect();
    println!(
        "50 concurrent scrapes: all 200, {} to {} bytes",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    drop(kept);
}

#[test]
fn the_handler_mounts_anywhere() {
    server();
    let r = heapprof::http::handle("/debug/pprof/heap", "");
    assert_eq!(
        (r.status, r.content_type),
        (200, "application/octet-stream")
    );
    decode(&r.body);
    // The query with its `?`, as a request target has it, reads the same.
    for query in ["debug=1", "?debug=1"] {
        let r = heapprof::http::handle("/debug/pprof/heap", query);
        assert!(
            String::from_utf8(r.body)
                .unwrap()
                .starts_with("heap profile: "),
            "{query}"
        );
    }
    assert_eq!(heapprof::http::handle("/metrics", "").status, 404);
    // The path decides first: an unknown path is 404 whatever its query.
    assert_eq!(heapprof::http::handle("/metrics", "debug=x").status, 404);
    assert_eq!(
        heapprof::http::handle("/debug/pprof/heap", "seconds=x").status,
        400
    );
}

#[test]
fn deltas_in_progress_are_bounded() {
    let _one_at_a_time = DELTA_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    server();
    // All five ask together; a 2 s window leaves the fifth no chance of
    // starting after one of the others has finished.
    let together = std::sync::Arc::new(std::sync::Barrier::new(5));
    let started: Vec<_> = (0..5)
        .map(|_| {
            let together = together.clone();
            std::thread::spawn(move || {
                together.wait();
                heapprof::http::handle("/debug/pprof/allocs", "seconds=2").status
            })
        })
        .collect();
    let mut statuses: Vec<u16> = started.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 503], "at most 4 at once");
}

/// The peak profile, binary and text, says what it is.
#[test]
fn the_peak_profile_says_it_is_the_peak() {
    server();
    let held = hold_unmeasured(820); // 16 MiB: a peak past 1 MiB for sure
    let p = decode(&heapprof::http::handle("/debug/pprof/peak", "").body);
    let comments: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    assert!(
        comments.iter().any(|c| c.contains("heapprof peak profile")),
        "{comments:?}"
    );
    let text = heapprof::http::handle("/debug/pprof/peak", "debug=1");
    assert_eq!(text.status, 200);
    let text = String::from_utf8(text.body).unwrap();
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with("# heapprof peak profile"),
        "{}",
        &text[..text.len().min(500)]
    );
    drop(held);
}

/// As Go's `net/http/pprof`: a binary profile is an attachment named after
/// the profile (`-delta` for `?seconds=N`), so a browser saves it instead
/// of showing bytes; the text form, the index page and errors are shown,
/// so they have no such header.
#[test]
fn binary_profiles_are_attachments_named_after_the_profile() {
    let addr = server();
    let held = hold_unmeasured(820); // 16 MiB: a peak past 1 MiB for sure
    for (target, expected) in [
        ("/debug/pprof/heap", Some("attachment; filename=\"heap\"")),
        (
            "/debug/pprof/allocs",
            Some("attachment; filename=\"allocs\""),
        ),
        ("/debug/pprof/peak", Some("attachment; filename=\"peak\"")),
        ("/debug/pprof/heap?debug=1", None),
        ("/debug/pprof/allocs?debug=1", None),
        ("/debug/pprof/peak?debug=1", None),
        ("/debug/pprof/", None),
        ("/debug/pprof/nothing", None),
        ("/debug/pprof/heap?debug=x", None),
    ] {
        let reply = http_get(addr, target);
        assert_eq!(
            reply.header("content-disposition"),
            expected,
            "{target}:\n{}",
            reply.head
        );
        if expected.is_some() {
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(
                heapprof::http::handle(target, "").content_disposition,
                expected,
                "{target} through handle()"
            );
        }
    }
    let head = http_raw(
        addr,
        b"HEAD /debug/pprof/allocs HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        head.header("content-disposition"),
        Some("attachment; filename=\"allocs\""),
        "HEAD has the same headers as GET"
    );
    let _one_at_a_time = DELTA_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let delta = http_get(addr, "/debug/pprof/heap?seconds=1");
    assert_eq!(delta.status, 200);
    assert_eq!(
        delta.header("content-disposition"),
        Some("attachment; filename=\"heap-delta\"")
    );
    drop(held);
}

/// A port already taken: the error says it is heapprof's and which
/// address, and keeps its kind.
#[test]
fn an_address_in_use_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = heapprof::http::serve(addr).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("heapprof: cannot serve on ") && text.contains(&addr.to_string()),
        "{text}"
    );
}

/// The child: a server whose process has no descriptor left when a
/// connection comes.
#[test]
fn child_server_out_of_descriptors() {
    if !heapprof_testkit::child::is_child() {
        return;
    }
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    let mut files = heapprof_testkit::process::use_up_descriptors();
    // The last descriptor goes to the connection; the server's accept
    // then has none. Another thread of the process may hold the freed one
    // for a moment (under AddressSanitizer, its runtime reading a file):
    // wait for it, and after a while free one more.
    files.pop();
    let mut tries = 0;
    let _client = loop {
        match TcpStream::connect(addr) {
            Ok(client) => break client,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) && tries < 500 => {
                tries += 1;
                if tries % 50 == 0 {
                    files.pop();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect after {tries} tries: {e}"),
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    drop(files);
}

/// A server that cannot accept connections (descriptors used up) says so
/// on stderr, once, rather than leaving every scraper hanging unexplained.
#[test]
fn a_server_that_cannot_accept_says_so_once() {
    let (_, stderr) = heapprof_testkit::child::run_child("child_server_out_of_descriptors", &[]);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("Too many open files"), "{}", lines[0]);
}

/// Whether this process holds a listening socket bound to `port`.
fn listens_on(port: u16) -> bool {
    holds_socket_on(port, true)
}

/// Whether this process holds a socket bound to `port` on this side that
/// is `listening`, or a connection accepted there.
fn holds_socket_on(port: u16, listening_wanted: bool) -> bool {
    (0..4096).any(|fd| {
        // SAFETY: getsockname/getsockopt on any number only fill the live
        // locals they are given, failing for what is not a socket.
        unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let mut listening: libc::c_int = 0;
            let mut int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockname(fd, (&raw mut addr).cast(), &mut len) == 0
                && libc::c_int::from(addr.sin_family) == libc::AF_INET
                && u16::from_be(addr.sin_port) == port
                && libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    (&raw mut listening).cast(),
                    &mut int_len,
                ) == 0
                && (listening == 1) == listening_wanted
        }
    })
}

/// A forked child has no server thread: it keeps no copy of the server's
/// listening socket, which would hold the port (queueing connections for
/// no one, refusing a restarted server) once the parent is gone.
#[test]
fn a_forked_child_does_not_keep_the_port() {
    let port = server().port();
    assert!(listens_on(port), "the check sees the parent's socket");
    // SAFETY: the child only looks at its descriptors and leaves with
    // `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: leaves the child at once, running nothing of the parent's.
        unsafe { libc::_exit(if listens_on(port) { 1 } else { 0 }) };
    }
    assert_eq!(
        heapprof_testkit::child::wait_with_timeout(pid, Duration::from_secs(30)),
        Ok(0),
        "the forked child still listens on the server's port"
    );
}

/// A forked child has no server thread: it keeps no copy of the server's
/// connections either, which would keep a client the parent is done with
/// waiting for the end of its connection until the child exits; and none
/// of the parent's deltas in progress take the child's places.
#[test]
fn a_forked_child_keeps_no_connection_and_no_delta() {
    let test = "a_forked_child_keeps_no_connection_and_no_delta";
    if !heapprof_testkit::child::is_child() {
        // The child fills every place for a delta, which the other tests
        // in this process would find taken.
        heapprof_testkit::child::run_child(test, &[]);
        return;
    }
    let _watchdog = watchdog("fork with connections", Duration::from_secs(120));
    let addr = heapprof::http::serve("127.0.0.1:0").expect("start the server");
    // Deltas that wait as long as their client stays, two from each of two
    // addresses (a peer's most); all four are in progress once another is
    // refused.
    let from: Vec<std::net::IpAddr> = (0..4u8)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 0, 50 + i % 2).into())
        .collect();
    let (clients, ()) = heapprof_testkit::http::hold_deltas(addr, &from, || {
        (heapprof::http::handle("/debug/pprof/heap", "seconds=1").status == 503).then_some(())
    });
    assert!(
        holds_socket_on(addr.port(), false),
        "the check sees the parent's connections"
    );
    // SAFETY: the child looks at its descriptors, asks for a delta (its
    // only thread, with heapprof's locks freed by its fork handlers) and
    // leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = if holds_socket_on(addr.port(), false) {
            1
        } else if heapprof::http::handle("/debug/pprof/heap", "seconds=1").status != 200 {
            2
        } else {
            0
        };
        // SAFETY: leaves the child at once, running nothing of the parent's.
        unsafe { libc::_exit(code) };
    }
    let outcome = heapprof_testkit::child::wait_with_timeout(pid, Duration::from_secs(60));
    assert_ne!(
        outcome,
        Ok(1),
        "the forked child kept a connection of the server's"
    );
    assert_ne!(
        outcome,
        Ok(2),
        "the forked child found the parent's deltas in progress"
    );
    assert_eq!(outcome, Ok(0));
    drop(clients);
}
