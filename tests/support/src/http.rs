//! A client for heapprof's HTTP server, one request per connection.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long a reply may take before the read fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A reply from heapprof's HTTP server, read until it closed the
/// connection (it answers one request per connection).
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as text.
    pub head: String,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The value of header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET target` from the server at `addr`.
pub fn http_get(addr: SocketAddr, target: &str) -> HttpReply {
    http_raw(addr, get_request(target).as_bytes())
}

/// Sends `request` as it is and reads the reply.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let stream = TcpStream::connect(addr).expect("connect to the server");
    exchange(stream, request)
}

/// A connection to `addr` from the local address `from`. On Linux all of
/// 127.0.0.0/8 is loopback, so `127.0.0.2`, `127.0.0.3`, … stand for
/// distinct peers in a test.
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("a socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind to {from}: {e}"));
    socket.connect(&addr.into()).expect("connect to the server");
    socket.into()
}

/// `GET target` from the server at `addr`, connecting from `from` (see
/// [`connect_from`]).
pub fn http_get_from(from: IpAddr, addr: SocketAddr, target: &str) -> HttpReply {
    exchange(connect_from(from, addr), get_request(target).as_bytes())
}

/// The request head of `GET target`.
fn get_request(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: heapprof-test\r\n\r\n")
}

/// Sends `request` on `stream` and reads the reply until the server closes.
fn exchange(mut stream: TcpStream, request: &[u8]) -> HttpReply {
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
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

/// Clients of the server at `addr` that each wait on a long `?seconds=`
/// delta, one from each address of `from`, kept waiting until `full`
/// gives a value: the check that every place the test wants is taken.
/// A check that finds a place free holds it for its own delta, and a
/// client refused meanwhile (an answer, or the end of its connection, to
/// read) asks again. Dropping the clients ends their deltas.
pub fn hold_deltas<T>(
    addr: SocketAddr,
    from: &[IpAddr],
    mut full: impl FnMut() -> Option<T>,
) -> (Vec<TcpStream>, T) {
    let ask = |from: IpAddr| {
        let mut client = connect_from(from, addr);
        client
            .write_all(b"GET /debug/pprof/heap?seconds=300 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        client.set_nonblocking(true).unwrap();
        client
    };
    let mut clients: Vec<TcpStream> = from.iter().map(|&ip| ask(ip)).collect();
    loop {
        if let Some(value) = full() {
            return (clients, value);
        }
        for (client, &ip) in clients.iter_mut().zip(from) {
            if client.peek(&mut [0u8; 1]).is_ok() {
                *client = ask(ip);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
