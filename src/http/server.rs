//! The built-in server: a listener thread and one short-lived thread per
//! connection, each request answered by [`super::handle`].
//!
//! It is made to be left running in production and to be reachable by
//! clients that misbehave:
//!
//! * the request head (request line and headers) is read into a fixed
//!   buffer of [`Server::max_head_bytes`] and parsed by `httparse`; more
//!   gets 431, anything unparsable 400, a method other than GET or HEAD
//!   405;
//! * the whole head must arrive within [`Server::header_timeout`], and the
//!   whole response must be taken within [`Server::write_timeout`]: total
//!   deadlines, not per-read or per-write timeouts, so a client that
//!   trickles one byte a second, or reads one segment a minute, is still
//!   cut off;
//! * at most [`Server::max_connections`] connections are served at once;
//!   past that, a few threads answer 503 without parsing the request, and
//!   past those a connection is closed unanswered: a flood of connections
//!   costs a bounded number of threads;
//! * one request per connection (`Connection: close`): scrapers open a
//!   connection per scrape anyway;
//! * a failing connection only ends its own thread; the listener goes on
//!   after any accept error.
//!
//! The server's threads mark themselves as inside the profiler for their
//! whole life (`guard.rs`), so their own allocations are never sampled
//! and never show up in the profiles they serve.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::guard;

/// Starts the built-in server on `addr` with the default limits (see
/// [`Server`]) and returns the address it is bound to (port 0 picks a free
/// port). It serves from a background thread for the life of the process.
///
/// Bind to loopback (`"127.0.0.1:6060"`) unless the network is trusted.
///
/// # Errors
///
/// Those of binding the socket, or of starting the thread.
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    Server::new().serve(addr)
}

/// The built-in server's limits, for [`Server::serve`]. `serve(addr)` uses
/// the defaults.
#[derive(Clone, Debug)]
pub struct Server {
    max_connections: usize,
    header_timeout: Duration,
    write_timeout: Duration,
    max_head_bytes: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// The defaults: 64 connections at once, 10 s to send the request head,
    /// 60 s to take the response, 8 KiB of request head.
    pub fn new() -> Server {
        Server {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_head_bytes: 8 * 1024,
        }
    }

    /// Connections served at once (at least 1); more are answered 503.
    pub fn max_connections(mut self, n: usize) -> Server {
        self.max_connections = n.max(1);
        self
    }

    /// Time a client has to send its whole request line and headers.
    pub fn header_timeout(mut self, t: Duration) -> Server {
        self.header_timeout = t.max(Duration::from_millis(1));
        self
    }

    /// Time a client has to take the whole response (a `?seconds=N` delta
    /// gets its N seconds on top).
    pub fn write_timeout(mut self, t: Duration) -> Server {
        self.write_timeout = t.max(Duration::from_millis(1));
        self
    }

    /// Largest request head (request line and headers) accepted, at least
    /// 256 bytes.
    pub fn max_head_bytes(mut self, n: usize) -> Server {
        self.max_head_bytes = n.max(256);
        self
    }

    /// Binds `addr` and serves from a background thread for the life of
    /// the process; returns the bound address.
    ///
    /// # Errors
    ///
    /// Those of binding the socket, or of starting the thread.
    pub fn serve(self, addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
        let _busy = guard::Busy::enter();
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        std::thread::Builder::new()
            .name("heapprof-http".into())
            .spawn(move || {
                inside_profiler_for_good();
                accept_loop(listener, Arc::new(self));
            })?;
        Ok(local)
    }
}

/// Marks this thread as inside the profiler until it ends, thread-local
/// destructors included (the flag has no destructor of its own).
fn inside_profiler_for_good() {
    std::mem::forget(guard::Busy::enter());
}

/// Threads that only answer 503 to connections over the limit (see
/// [`reject_busy`]); past these too, a connection is closed unanswered.
const REJECTERS: usize = 8;

fn accept_loop(listener: TcpListener, limits: Arc<Server>) {
    let active = Arc::new(AtomicUsize::new(0));
    let rejecting = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, a connection reset before accept…:
                // nothing to do but wait a little and go on.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.load(Relaxed) < limits.max_connections {
            let slot = Slot::take(&active);
            let limits = Arc::clone(&limits);
            spawn(move || {
                serve_connection(stream, &limits);
                drop(slot);
            });
        } else if rejecting.load(Relaxed) < REJECTERS {
            let slot = Slot::take(&rejecting);
            spawn(move || {
                reject_busy(stream);
                drop(slot);
            });
        }
    }
}

/// Starts a connection thread, inside the profiler for its whole life. If
/// the thread cannot start, the closure is dropped with its connection and
/// slot; the first failure is reported.
///
/// The thread has no name: std copies a thread's name on the new thread
/// before our code runs there, so that allocation could not be kept out of
/// the profile (it was, once per connection).
fn spawn(f: impl FnOnce() + Send + 'static) {
    static FAILED: AtomicBool = AtomicBool::new(false);
    let spawned = std::thread::Builder::new().spawn(move || {
        inside_profiler_for_good();
        f()
    });
    if let Err(e) = spawned
        && !FAILED.swap(true, Relaxed)
    {
        crate::report::warn(format_args!(
            "heapprof: http: could not start a connection thread ({e}); dropping connections meanwhile"
        ));
    }
}

/// One of a bounded number of places, given back when dropped (also when
/// the connection's thread ends in a panic, or was never started).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>) -> Slot {
        count.fetch_add(1, Relaxed);
        Slot(Arc::clone(count))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Answers a connection over the limit without reading its request. The
/// request must still be drained before closing ([`linger`]): closing a
/// socket with unread input makes the kernel reset the connection, and the
/// client would see the reset instead of the 503.
fn reject_busy(mut stream: TcpStream) {
    const BODY: &str = "heapprof: too many connections now\n";
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(reply.as_bytes()).is_ok() {
        linger(&mut stream);
    }
}

/// What the head of a request asked for, or the error status to answer.
struct Request {
    head_only: bool,
    path: String,
    query: String,
}

fn serve_connection(mut stream: TcpStream, limits: &Server) {
    let _ = stream.set_nodelay(true);
    let (response, head_only) = match read_request(&mut stream, limits) {
        Ok(Some(req)) => (super::handle(&req.path, &req.query), req.head_only),
        // The client went away, or the read failed: nobody to answer.
        Ok(None) => return,
        Err((status, message)) => (
            super::Response::error(status, format!("heapprof: {message}")),
            false,
        ),
    };
    let super::Response {
        status,
        content_type,
        content_disposition,
        body,
    } = response;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if let Some(disposition) = content_disposition {
        head.push_str("Content-Disposition: ");
        head.push_str(disposition);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let deadline = Instant::now() + limits.write_timeout;
    let body = if head_only { &[][..] } else { &body[..] };
    if write_by(&mut stream, head.as_bytes(), deadline).is_ok()
        && write_by(&mut stream, body, deadline).is_ok()
    {
        linger(&mut stream);
    }
}

/// Writes `bytes` unless `deadline` passes first: in pieces, each allowed
/// to block only for the time left, so that a client reading slowly cannot
/// hold the connection past the deadline.
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(&bytes[..bytes.len().min(64 * 1024)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and parses one request head. `Ok(None)`: the client closed or the
/// connection failed before a whole head arrived. `Err`: a status and a
/// message to answer with.
fn read_request(
    stream: &mut TcpStream,
    limits: &Server,
) -> Result<Option<Request>, (u16, &'static str)> {
    let deadline = Instant::now() + limits.header_timeout;
    let mut buf = vec![0u8; limits.max_head_bytes];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((408, "the request head did not arrive in time"));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err((408, "the request head did not arrive in time"));
            }
            Err(_) => return Ok(None),
        }
        if let Some(req) = parse_head(&buf[..len])? {
            return Ok(Some(req));
        }
        if len == buf.len() {
            return Err((431, "request head too large"));
        }
    }
}

/// Parses a request head; `Ok(None)` while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<Request>, (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Err((405, "only GET and HEAD are served")),
            };
            let target = req.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Ok(Some(Request {
                head_only,
                path: path.to_owned(),
                query: query.to_owned(),
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err((431, "too many request headers")),
        Err(_) => Err((400, "malformed request")),
    }
}

/// After the response: stop writing and read what the client may still
/// send (briefly, boundedly) before closing, so that unread input does not
/// make the kernel reset the connection and lose the response's tail.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let r = parse_head(b"GET /debug/pprof/heap?debug=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.path.as_str(), r.query.as_str(), r.head_only),
            ("/debug/pprof/heap", "debug=1", false)
        );
        assert!(
            parse_head(b"GET /debug/pprof/heap HTTP/1.1\r\nHo")
                .unwrap()
                .is_none()
        );
        assert!(
            parse_head(
                b"HEAD / HTTP/1.0

"
            )
            .unwrap()
            .unwrap()
            .head_only
        );
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n").err().unwrap().0, 405);
        assert_eq!(parse_head(b"\x00\x01garbage\r\n\r\n").err().unwrap().0, 400);
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(req.as_bytes()).err().unwrap().0, 431);
    }
}
