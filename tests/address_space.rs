//! A process with little address space left (`RLIMIT_AS`, or a strict
//! overcommit limit) is not aborted by a scrape. Naming a profile's frames
//! maps the executable and parses its debug info, which takes several
//! times the executable's size; a failed allocation there would abort the
//! program. A lookup without room for it is not made: the frames stay
//! unnamed in that profile, and the next one, with room again, names them.

use heapprof_testkit::child::{is_child, printed_number, run_child};
use std::io::{Read, Write};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// 4 MiB the child holds, in a function of its own.
#[inline(never)]
fn held_for_the_profile() -> Vec<u8> {
    std::hint::black_box(vec![7u8; 4 << 20])
}

/// Asks the server at `server` for `path`; the answer goes into `answer`
/// (made by the caller, so that the request allocates next to nothing).
/// The number of bytes read.
fn get(server: std::net::SocketAddr, path: &str, answer: &mut [u8]) -> usize {
    let mut client = std::net::TcpStream::connect(server).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    client
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut read = 0;
    while let Ok(n @ 1..) = client.read(&mut answer[read..]) {
        read += n;
    }
    read
}

/// The function [`held_for_the_profile`] as profiles name it.
const HELD: &str = "address_space::held_for_the_profile";

/// The child: the first profile with names, asked of the HTTP server with
/// `SPARE` bytes of address space left, then a snapshot with no limit.
#[test]
fn child_scraped_with_little_room() {
    if !is_child() {
        return;
    }
    let spare: u64 = std::env::var("SPARE").unwrap().parse().unwrap();
    let held = held_for_the_profile();
    let server = heapprof::http::serve("127.0.0.1:0").unwrap();
    let mut answer = vec![0u8; 32 << 20];
    // The server's threads have run, and made their heaps, before the
    // limit: a profile without names needs no lookup.
    let warm = get(server, "/debug/pprof/heap?symbolize=0", &mut answer);
    assert!(answer[..warm].starts_with(b"HTTP/1.1 200"));
    heapprof_testkit::process::limit_address_space_to_room(spare);
    let read = get(server, "/debug/pprof/heap", &mut answer);
    heapprof_testkit::process::limit_address_space(libc::RLIM_INFINITY);
    let answered = answer[..read].starts_with(b"HTTP/1.1 200");
    let named_during = answered && {
        let body = answer[..read]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        let p = heapprof_testkit::profile::decode(&answer[body..read]);
        p.sample.iter().any(|s| {
            heapprof_testkit::profile::stack_names(&p, s)
                .iter()
                .any(|n| n == HELD)
        })
    };
    println!(
        "answered={} named_during={} named_after={}",
        u8::from(answered),
        u8::from(named_during),
        heapprof::snapshot().inuse_bytes_in(HELD)
    );
    drop(held);
}

/// Spares from about one to about four times the executable's size: room
/// to map it, not to read it. Each child must end normally, and name the
/// frames once the limit is gone.
#[test]
fn a_scrape_with_little_address_space_left_does_not_abort() {
    let executable = std::fs::metadata(std::env::current_exe().unwrap())
        .unwrap()
        .len();
    for tenths in (12..=39).step_by(3) {
        let spare = (executable * tenths / 10).to_string();
        let (stdout, _) = run_child(
            "child_scraped_with_little_room",
            &[("SPARE", spare.as_str()), ("HEAPPROF_SAMPLE_RATE", "1")],
        );
        assert_eq!(
            printed_number(&stdout, "named_after="),
            4 << 20,
            "spare {spare}: {stdout}"
        );
    }
}

/// With room for the lookup (four times the files it reads, the C
/// library's among them, and its fixed part), the connection's thread and
/// the build, the scrape under the limit names the frames: the room asked
/// for is not more than a lookup needs by a wide margin.
#[test]
fn a_scrape_with_room_enough_names_the_frames() {
    let executable = std::fs::metadata(std::env::current_exe().unwrap())
        .unwrap()
        .len();
    let spare = (5 * executable + (256 << 20)).to_string();
    let (stdout, _) = run_child(
        "child_scraped_with_little_room",
        &[("SPARE", spare.as_str()), ("HEAPPROF_SAMPLE_RATE", "1")],
    );
    assert_eq!(printed_number(&stdout, "answered="), 1, "{stdout}");
    assert_eq!(printed_number(&stdout, "named_during="), 1, "{stdout}");
}

/// The child: a `ProfileGuard` dropped, and `HEAPPROF_OUT` written at
/// exit, after the program used up its address space (`RLIMIT_AS` just
/// above what it has mapped, then filled down to blocks of a few bytes)
/// and went on without the memory it could not get.
#[test]
fn child_ends_without_address_space() {
    if !is_child() {
        return;
    }
    let held = held_for_the_profile();
    let guard = heapprof::ProfileGuard::new(std::env::var_os("GUARD_OUT").unwrap());
    let mut filled: Vec<Vec<u8>> = Vec::with_capacity(1 << 20);
    heapprof_testkit::process::limit_address_space_to_room(8 << 20);
    for size in [16 << 20, 1 << 20, 64 << 10, 4 << 10, 256, 32] {
        while filled.len() < filled.capacity() {
            let mut chunk = Vec::new();
            if chunk.try_reserve_exact(size).is_err() {
                break;
            }
            filled.push(chunk);
        }
    }
    drop(guard);
    println!("filled={}", filled.len());
    drop(held);
    // Exits as a program does at the end of `main`, its memory still
    // held: the exit profile is written (or refused) from here.
    std::process::exit(0);
}

/// Neither the guard nor the exit profile aborts a program that has no
/// address space left: each is refused with a line, and the program's
/// own exit stands.
#[test]
fn profiles_at_the_end_without_address_space_do_not_abort() {
    let dir = tempfile::tempdir().unwrap();
    let guard_out = dir.path().join("guard.pb.gz");
    let exit_out = dir.path().join("exit.pb.gz");
    let (stdout, stderr) = run_child(
        "child_ends_without_address_space",
        &[
            ("GUARD_OUT", guard_out.to_str().unwrap()),
            ("HEAPPROF_OUT", exit_out.to_str().unwrap()),
        ],
    );
    assert!(printed_number(&stdout, "filled=") > 0, "{stdout}");
    for what in ["guard", "exit"] {
        let line = format!("heapprof: could not write the {what} profile (");
        assert!(
            stderr.lines().filter(|l| l.starts_with(&line)).count() == 1,
            "no line for the {what} profile: {stderr}"
        );
    }
    assert!(!guard_out.exists() && !exit_out.exists());
}
