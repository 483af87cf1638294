//! A daemon that closes every descriptor it did not open (`close_range`)
//! closes the server's listening socket too, and its next socket gets the
//! same number. The server must not accept on that number: it would answer
//! the daemon's own clients with profiles. It stops, with one line on
//! stderr, and the daemon's client waits for the daemon; and a fork, which
//! closes the server's socket in the child, leaves the daemon's alone. A
//! connection being served when its descriptor is closed is dropped without
//! a word: its number, which may name one of the daemon's files by then, is
//! neither written nor closed.

use heapprof_testkit::child::{is_child, printed_number, run_child};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// How long the daemon's client waits for an answer it must not get.
const QUIET_FOR: Duration = Duration::from_secs(2);

/// The first line of the answer to a request for the index page, empty if
/// none came within [`QUIET_FOR`].
fn ask(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(QUIET_FOR)).unwrap();
    stream
        .write_all(b"GET /debug/pprof/ HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn child_closes_every_descriptor() {
    if !is_child() {
        return;
    }
    let profiles = heapprof::http::serve("127.0.0.1:0").unwrap();
    println!("served_port={}", profiles.port());
    assert!(ask(&mut TcpStream::connect(profiles).unwrap()).starts_with("HTTP/1.1 200"));
    // The listener is the subject here; the connection just served is the
    // next test's, and its thread ends first.
    wait_while(a_connection_is_served, "the connection thread stays");
    // SAFETY: closes descriptors 3 and up; this process uses none of them
    // past this point but the ones it opens next.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    assert_eq!(
        closed,
        0,
        "close_range: {}",
        std::io::Error::last_os_error()
    );
    let daemon = TcpListener::bind("127.0.0.1:0").unwrap();
    // A forked worker keeps the daemon's socket: the fork handler closes
    // the server's socket in a child, and must not close this one, which
    // has its number now.
    let daemon_fd = std::os::fd::AsRawFd::as_raw_fd(&daemon);
    // SAFETY: the child calls only `fcntl` and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls on a descriptor number.
        unsafe { libc::_exit(i32::from(libc::fcntl(daemon_fd, libc::F_GETFD) == -1)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    println!(
        "kept_in_fork={}",
        u8::from(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
    );
    // The server's accept, under way on the closed socket, takes one more
    // connection on its port (whether it answers does not matter here);
    // then the server comes back to the descriptor, which names the
    // daemon's socket now.
    let _late = TcpStream::connect(profiles);
    std::thread::sleep(Duration::from_millis(200));
    let mut client = TcpStream::connect(daemon.local_addr().unwrap()).unwrap();
    let stolen = ask(&mut client);
    daemon.set_nonblocking(true).unwrap();
    let waited = daemon.accept().is_ok();
    println!(
        "stolen={} waited={}",
        u8::from(!stolen.is_empty()),
        u8::from(waited)
    );
}

/// Whether a thread of this process serves a connection for heapprof.
fn a_connection_is_served() -> bool {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(Result::ok)
        .any(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "heapprof-conn")
        })
}

/// Waits while `busy` says so; fails with `stuck` after 10 s.
fn wait_while(busy: impl Fn() -> bool, stuck: &str) {
    let started = std::time::Instant::now();
    while busy() {
        assert!(started.elapsed() < Duration::from_secs(10), "{stuck}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn child_closes_descriptors_under_a_connection() {
    if !is_child() {
        return;
    }
    let profiles = heapprof::http::serve("127.0.0.1:0").unwrap();
    // The daemon's client has sent part of a request: the server's
    // connection thread waits for the rest.
    let mut client = TcpStream::connect(profiles).unwrap();
    client.write_all(b"GET /debug/pprof/ HTTP/1.0\r\n").unwrap();
    wait_while(|| !a_connection_is_served(), "no connection thread");
    // The daemon closes every descriptor but its client's...
    let kept = std::os::fd::AsRawFd::as_raw_fd(&client) as u32;
    for (first, last) in [(3, kept.wrapping_sub(1)), (kept + 1, u32::MAX)] {
        if first <= last {
            // SAFETY: closes descriptors this process no longer uses:
            // heapprof's, and none of the test's but `client`, outside
            // the range.
            let closed = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
            assert_eq!(
                closed,
                0,
                "close_range: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // ...and opens files of its own, which take the lowest numbers, the
    // connection's among them.
    let mut pipes = Vec::new();
    for _ in 0..16 {
        let mut ends = [0; 2];
        // SAFETY: `pipe` writes two descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
        pipes.push(ends);
    }
    // The server's socket is closed: the kernel answers with a reset,
    // at once when the partial request was still unread, and the write
    // may fail. Either way the server must answer nothing.
    let _ = client.write_all(b"\r\n");
    client.set_read_timeout(Some(QUIET_FOR)).unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    wait_while(a_connection_is_served, "the connection thread stays");
    let closed = pipes
        .iter()
        .flatten()
        .filter(|&&fd| {
            // SAFETY: `fcntl(F_GETFD)` only asks whether the number is open.
            unsafe { libc::fcntl(fd, libc::F_GETFD) == -1 }
        })
        .count();
    let written: usize = pipes
        .iter()
        .map(|&[out, _]| {
            let mut byte = [0u8; 64];
            // SAFETY: a non-blocking read into the buffer above, from the
            // read end of a pipe this test opened (or a closed number).
            unsafe {
                libc::fcntl(out, libc::F_SETFL, libc::O_NONBLOCK);
                libc::read(out, byte.as_mut_ptr().cast(), byte.len()).max(0) as usize
            }
        })
        .sum();
    println!(
        "answered={} closed={closed} written={written}",
        answer.len()
    );
}

#[test]
fn a_connection_whose_descriptor_is_closed_leaves_the_number_alone() {
    let (stdout, stderr) = run_child("child_closes_descriptors_under_a_connection", &[]);
    assert_eq!(printed_number(&stdout, "closed="), 0, "{stdout}\n{stderr}");
    assert_eq!(printed_number(&stdout, "written="), 0, "{stdout}\n{stderr}");
    assert_eq!(
        printed_number(&stdout, "answered="),
        0,
        "{stdout}\n{stderr}"
    );
}

#[test]
fn a_closed_listening_socket_is_not_taken_back() {
    let (stdout, stderr) = run_child("child_closes_every_descriptor", &[]);
    assert_eq!(
        printed_number(&stdout, "kept_in_fork="),
        1,
        "{stdout}\n{stderr}"
    );
    assert_eq!(printed_number(&stdout, "stolen="), 0, "{stdout}\n{stderr}");
    assert_eq!(printed_number(&stdout, "waited="), 1, "{stdout}\n{stderr}");
    // The line names the server's port, not the socket's that has the
    // descriptor's number now.
    let port = printed_number(&stdout, "served_port=");
    assert!(
        stderr.contains(&format!("(port {port}, descriptor "))
            && stderr.contains("was closed by the program")
            && stderr.contains("the server stops"),
        "{stderr}"
    );
}
