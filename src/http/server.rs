//! The built-in server: a listener thread, one short-lived thread per
//! connection, and one thread that builds the responses, each with
//! [`super::handle`].
//!
//! It is made to be left running in production and to be reachable by
//! clients that misbehave:
//!
//! * the request head (request line and headers) is read into a buffer
//!   that grows up to [`Server::max_head_bytes`] and parsed by `httparse`;
//!   more gets 431, anything unparsable 400, a method other than GET or
//!   HEAD 405;
//! * the whole head must arrive within [`Server::header_timeout`], and the
//!   whole response must be taken within [`Server::write_timeout`]: total
//!   deadlines, not per-read or per-write timeouts, so a client that
//!   trickles one byte a second, or reads one segment a minute, is still
//!   cut off;
//! * at most [`Server::max_connections`] connections are served at once,
//!   and at most [`Server::max_connections_per_peer`] of them from one peer
//!   (an IPv4 address, or an IPv6 /64): one client that holds connections
//!   open cannot take the places of the others. Past either limit, a few
//!   threads answer 503 without parsing the request, and past those the
//!   listener answers 503 itself without waiting (a request that arrives
//!   after that may see a reset): a flood of connections costs a bounded
//!   number of threads;
//! * the response bodies held at once, all connections together, stay
//!   within [`Server::max_response_bytes`]: a body that would pass it is
//!   dropped and answered 503, so clients that ask and never read cost at
//!   most that budget, however many connections they open. A body is held
//!   from when it is built until it is written (or the write deadline
//!   passes); one body larger than the whole budget is still served when
//!   no other is held;
//! * one request per connection (`Connection: close`): scrapers open a
//!   connection per scrape anyway. A client that closes its writing side
//!   after the request still gets its profile ([`Peer::Closed`]); only a
//!   reset connection's build is skipped;
//! * a failing connection only ends its own thread; the listener goes on
//!   after any accept error;
//! * a program that closes the server's descriptors (a daemon closing
//!   every descriptor it did not open) stops the server, if it closed the
//!   listening socket, or ends the connection: the server checks, before
//!   each use, that a number still names its socket, and does not read,
//!   write or close a number that names a file of the program's now (a
//!   window of microseconds remains between a check and its use).
//!
//! Every limit saturates: a timeout past [`LONGEST_TIMEOUT`] is that long,
//! a head limit past [`LARGEST_HEAD_BYTES`] is that large.
//!
//! The server's threads run on stacks of [`THREAD_STACK_BYTES`], whatever
//! `RUST_MIN_STACK` says, and mark themselves as inside the profiler for
//! their whole life (`support/own_thread.rs`), so their own allocations are
//! never sampled and never show up in the profiles they serve or in
//! `stats()`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{
    AtomicI32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::Response;
use crate::support::lock::{Mutex, rank};
use crate::support::{own_thread, reentry};

/// Starts the built-in server on `addr` with the default limits (see
/// [`Server`]) and returns the address it is bound to (port 0 picks a free
/// port). It serves from a background thread for the life of the process.
///
/// Bind to loopback (`"127.0.0.1:6060"`) unless the network is trusted:
/// among other things, `?debug=1` shows the program's load addresses.
///
/// # Errors
///
/// As [`Server::serve`].
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    Server::new().serve(addr)
}

/// The default of [`Server::max_response_bytes`]: 64 MiB of response
/// bodies held at once by one server, for all its connections together.
/// A profile's body is typically tens of KiB to a few MiB; the text form
/// (`?debug=1`) of a program with some 16 000 allocation sites is about
/// this size on its own.
pub const DEFAULT_RESPONSE_BUDGET: usize = 64 * 1024 * 1024;

/// The default of [`Server::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The default of [`Server::header_timeout`]: the whole request head must
/// arrive within it.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The default of [`Server::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`Server::max_head_bytes`]: 8 KiB.
pub const DEFAULT_HEAD_BYTES: usize = 8 * 1024;

/// The default of [`Server::max_connections_per_peer`]: a scraper, a
/// `go tool pprof` and a person with curl at once from one address, with
/// room to spare.
pub const DEFAULT_CONNECTIONS_PER_PEER: usize = 8;

/// The longest [`Server::header_timeout`] and [`Server::write_timeout`]:
/// a day. Longer ones are taken as this, which keeps every deadline
/// computable (an `Instant` plus `Duration::MAX` overflows).
pub const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest [`Server::max_head_bytes`]: 1 MiB, 128 times
/// [`DEFAULT_HEAD_BYTES`].
/// The head buffer grows as bytes arrive, up to the limit.
pub const LARGEST_HEAD_BYTES: usize = 1024 * 1024;
// The docs above state the ratio.
const _: () = assert!(LARGEST_HEAD_BYTES == 128 * DEFAULT_HEAD_BYTES);

/// The stack of each of the server's threads (listener, profile builder,
/// connections, rejecters), set explicitly so that `RUST_MIN_STACK`
/// (which sets the default for threads spawned without a size) cannot
/// make it too small. The builder builds the profiles served, and a
/// connection thread its deltas and pages (and the profiles too if the
/// builder could not be started); a build needs up to
/// `output::pprof::BUILD_STACK_NEED` of stack (one with less left moves
/// to a fresh segment). Only the pages a thread touches are ever
/// resident.
pub const THREAD_STACK_BYTES: usize = 256 * 1024;

/// The built-in server's limits, for [`Server::serve`]. `serve(addr)` uses
/// the defaults.
#[derive(Clone, Debug)]
pub struct Server {
    max_connections: usize,
    max_connections_per_peer: usize,
    header_timeout: Duration,
    write_timeout: Duration,
    max_head_bytes: usize,
    max_response_bytes: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// The defaults: [`DEFAULT_MAX_CONNECTIONS`] connections at once, of
    /// them [`DEFAULT_CONNECTIONS_PER_PEER`] from one peer,
    /// [`DEFAULT_HEADER_TIMEOUT`] to send the request head,
    /// [`DEFAULT_WRITE_TIMEOUT`] to take the response,
    /// [`DEFAULT_HEAD_BYTES`] of request head, [`DEFAULT_RESPONSE_BUDGET`]
    /// of response bodies held at once.
    pub fn new() -> Server {
        Server {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_CONNECTIONS_PER_PEER,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_head_bytes: DEFAULT_HEAD_BYTES,
            max_response_bytes: DEFAULT_RESPONSE_BUDGET,
        }
    }

    /// Connections served at once (at least 1); more are answered 503.
    pub fn max_connections(mut self, n: usize) -> Server {
        self.max_connections = n.max(1);
        self
    }

    /// Connections served at once from one peer (at least 1): one IPv4
    /// address, or one IPv6 /64 (a host usually has a whole /64). More
    /// from that peer are answered 503, and the other peers keep their
    /// places.
    pub fn max_connections_per_peer(mut self, n: usize) -> Server {
        self.max_connections_per_peer = n.max(1);
        self
    }

    /// Time a client has to send its whole request line and headers, from
    /// 1 ms to [`LONGEST_TIMEOUT`] (longer is taken as that).
    pub fn header_timeout(mut self, t: Duration) -> Server {
        self.header_timeout = t.clamp(Duration::from_millis(1), LONGEST_TIMEOUT);
        self
    }

    /// Time a client has to take the whole response (a `?seconds=N` delta
    /// gets its N seconds on top), from 1 ms to [`LONGEST_TIMEOUT`]
    /// (longer is taken as that).
    pub fn write_timeout(mut self, t: Duration) -> Server {
        self.write_timeout = t.clamp(Duration::from_millis(1), LONGEST_TIMEOUT);
        self
    }

    /// Largest request head (request line and headers) accepted, from 256
    /// bytes to [`LARGEST_HEAD_BYTES`] (larger is taken as that).
    pub fn max_head_bytes(mut self, n: usize) -> Server {
        self.max_head_bytes = n.clamp(256, LARGEST_HEAD_BYTES);
        self
    }

    /// Bytes of response bodies this server holds at once, for all its
    /// connections together ([`DEFAULT_RESPONSE_BUDGET`] unless set). A
    /// body that would pass it is answered 503 instead (with
    /// `Retry-After`); a body larger than the whole budget is still served
    /// when it is the only one held.
    pub fn max_response_bytes(mut self, n: usize) -> Server {
        self.max_response_bytes = n;
        self
    }

    /// Binds `addr` and serves from a background thread for the life of
    /// the process; returns the bound address.
    ///
    /// # Errors
    ///
    /// Those of resolving `addr`, binding the socket, or starting the
    /// thread; under Miri, which heapprof records nothing under, `Other`
    /// before any of them.
    pub fn serve(self, addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
        // The program's address resolves as the program's (its own
        // `ToSocketAddrs` may keep what it allocates); the server starts
        // inside the profiler, and its error is made the program's.
        if cfg!(miri) {
            // Nothing is recorded under Miri (`fast.rs`), and its isolation
            // refuses name lookups and sockets: the error says why instead.
            crate::output::check_installed()?;
        }
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        reentry::Inside::enter_for(|| self.start(&addrs)).map_err(reentry::as_programs)
    }

    /// [`Server::serve`]'s work, inside the profiler.
    fn start(self, addrs: &[SocketAddr]) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addrs).map_err(|e| {
            let shown: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
            io::Error::new(
                e.kind(),
                format!("heapprof: cannot serve on {}: {e}", shown.join(", ")),
            )
        })?;
        let local = listener.local_addr()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        // Before any other thread of the program can close it.
        let ours = Socket::of(fd);
        let shared = Arc::new(Shared {
            budget: Budget {
                limit: self.max_response_bytes,
                held: AtomicUsize::new(0),
            },
            peers: Peers {
                limit: self.max_connections_per_peer,
                held: Mutex::new(HashMap::new()),
            },
            builder: start_builder(),
            limits: self,
        });
        own_thread::spawn(c"heapprof-http", THREAD_STACK_BYTES, move |_| {
            accept_loop(listener, local, ours, shared)
        })
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("heapprof: cannot start the server's thread: {e}"),
            )
        })?;
        // Listed only now that the thread owns the socket for good: a
        // listener dropped on a failed start leaves its number free for
        // the program's next file, which no fork may close.
        let _ = LISTENERS.list(fd, ours);
        Ok(local)
    }
}

/// Sockets of the servers' making, each as its descriptor (-1: a free
/// place) and its inode, for a forked child to close
/// ([`close_sockets_after_fork`]). Past `N` at once, the rest are not
/// listed.
struct Sockets<const N: usize> {
    fds: [AtomicI32; N],
    /// The inode of the socket in the same place of `fds`: the descriptor
    /// may name another file by the time of a fork (the program closed the
    /// socket and opened something else); 0 while not known.
    inodes: [AtomicU64; N],
}

impl<const N: usize> Sockets<N> {
    const fn new() -> Self {
        Sockets {
            fds: [const { AtomicI32::new(-1) }; N],
            inodes: [const { AtomicU64::new(0) }; N],
        }
    }

    /// Lists `fd`, a socket known as `socket`; its place, if it has one.
    fn list(&self, fd: i32, socket: Socket) -> Option<usize> {
        let Socket::Known(_, inode) = socket else {
            return None;
        };
        let place = self
            .fds
            .iter()
            .position(|place| place.compare_exchange(-1, fd, Acquire, Relaxed).is_ok())?;
        // A fork in between finds no inode (a free place's is 0), and
        // leaves the socket open.
        self.inodes[place].store(wide_inode(inode), Relaxed);
        Some(place)
    }

    /// Takes `fd` off `place`, once the server closed it or left it to the
    /// program; nothing if the place holds another descriptor by now.
    fn unlist(&self, place: usize, fd: i32) {
        if self.fds[place].load(Relaxed) == fd {
            self.inodes[place].store(0, Relaxed);
            let _ = self.fds[place].compare_exchange(fd, -1, Release, Relaxed);
        }
    }

    /// Takes `fd`, listed as `socket`, off its place, if it is listed.
    fn unlist_socket(&self, fd: i32, socket: Socket) {
        let Socket::Known(_, inode) = socket else {
            return;
        };
        let listed = |place: usize| {
            self.fds[place].load(Relaxed) == fd
                && self.inodes[place].load(Relaxed) == wide_inode(inode)
        };
        if let Some(place) = (0..N).find(|&place| listed(place)) {
            self.unlist(place, fd);
        }
    }

    /// Closes each listed descriptor that still names its socket.
    /// Async-signal-safe: `fstat` and `close` only.
    fn close_all(&self) {
        for (place, inode) in self.fds.iter().zip(&self.inodes) {
            let fd = place.swap(-1, Relaxed);
            let inode = inode.swap(0, Relaxed);
            if fd < 0 {
                continue;
            }
            let ours = matches!(Socket::of(fd), Socket::Known(_, i) if wide_inode(i) == inode);
            if ours {
                // SAFETY: `fd` is this process's copy of a socket a server
                // thread of the parent owned, which nothing in the child
                // uses.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// The servers' listening sockets. Servers past the first few are not
/// listed.
static LISTENERS: Sockets<32> = Sockets::new();

/// The servers' connections, and the second descriptor of each that a
/// build holds ([`Conn::try_clone`]): a server at its default limits
/// holds up to twice [`DEFAULT_MAX_CONNECTIONS`] of them and
/// [`REJECTERS`] more, so three such servers are listed whole.
static CONNECTIONS: Sockets<CONNECTIONS_LISTED> = Sockets::new();
const CONNECTIONS_LISTED: usize = 512;
const _: () = assert!(CONNECTIONS_LISTED >= 3 * (2 * DEFAULT_MAX_CONNECTIONS + REJECTERS));

/// An inode number as 64 bits (`ino_t` is 32 bits on some targets).
#[allow(clippy::unnecessary_cast)]
fn wide_inode(inode: libc::ino_t) -> u64 {
    inode as u64
}

/// In a forked child, which has no server thread: closes its copies of the
/// servers' sockets. A listening socket's copy would hold the port once
/// the parent is gone (queueing connections for no one, refusing a
/// restarted server); a connection's would keep its client waiting, after
/// the parent closed it, for an end that comes only when the child exits.
/// Async-signal-safe.
pub(crate) fn close_sockets_after_fork() {
    LISTENERS.close_all();
    CONNECTIONS.close_all();
}

/// Threads that only answer 503 to connections over a limit (see
/// [`reject_busy`]); past these, the listener answers on its own without
/// waiting ([`refuse_at_once`]).
const REJECTERS: usize = 8;

/// What the listener and the connection threads share.
struct Shared {
    limits: Server,
    budget: Budget,
    peers: Peers,
    /// The builder thread's queue (`None` if it could not start).
    builder: Option<mpsc::Sender<Job>>,
}

/// A request for the builder thread: path, query, whether it is a `HEAD`,
/// where to send the response, and the client's connection, to skip a
/// build no one can read any more.
type Job = (
    String,
    String,
    bool,
    mpsc::SyncSender<Response>,
    Option<Conn>,
);

/// Starts the thread that builds the responses of one server. Bodies are
/// allocated, and freed, where they are built: built on a thread of
/// their own per connection, the memory of a body a client never took
/// stays with that thread's malloc arena once freed (glibc keeps up to
/// eight arenas per core), so the process would grow by a body per arena
/// though each is freed. Built on one thread, a freed body's memory is
/// what the next build reuses. Builds are one at a time anyway (see
/// `BUILDING` in `http/mod.rs`), so one thread costs no parallelism.
fn start_builder() -> Option<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    own_thread::spawn(c"heapprof-build", THREAD_STACK_BYTES, move |_| {
        for (path, query, head, reply, client) in queue {
            if client.as_ref().is_some_and(|c| peer(c) == Peer::Gone) {
                let _ = reply.send(Response::error(503, "heapprof: the client went away"));
                continue;
            }
            let mut response = super::respond(&path, &query, head);
            // The budget counts bytes held: no spare capacity.
            response.body.shrink_to_fit();
            let _ = reply.send(response);
        }
    })
    .ok()?;
    Some(jobs)
}

/// The response to `path` and `query` (`head` for a `HEAD` request): a
/// profile built by the builder thread, in turn (skipped if the client on
/// `stream` has reset the connection by then);
/// here a page that builds no profile (the index, a 404), a delta (which
/// waits its N seconds first, unless the client goes away, and of which
/// only a few run at once, fewer from one peer of `place`'s), or anything
/// when the builder is not there.
fn respond(
    shared: &Shared,
    stream: &Conn,
    place: &PeerPlace,
    path: &str,
    query: &str,
    head: bool,
) -> Response {
    if !stream.is_ours() {
        // Nobody to answer: no build.
        return Response::error(
            503,
            "heapprof: the program closed the connection's descriptor",
        );
    }
    let waits = super::waits(query);
    let _delta = match waits.then(|| place.take_delta()) {
        Some(None) => {
            return Response::error(
                503,
                format!(
                    "heapprof: {DELTAS_PER_PEER} delta profiles from your address are already in progress"
                ),
            );
        }
        taken => taken.flatten(),
    };
    if !waits
        && super::builds_profile(path)
        && let Some(builder) = &shared.builder
    {
        let (reply, response) = mpsc::sync_channel(1);
        let client = stream.try_clone().ok();
        if builder
            .send((path.to_owned(), query.to_owned(), head, reply, client))
            .is_ok()
            && let Ok(response) = response.recv()
        {
            return response;
        }
    }
    let mut response = super::respond_while(path, query, head, &|| peer(stream) != Peer::There);
    response.body.shrink_to_fit();
    response
}

/// What is known of the client at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// Its end is open: sending, or quiet.
    There,
    /// It closed its end: it hung up, or it only half-closed and still
    /// reads (`nc -N`, a script that shuts down its writing side). TCP
    /// tells these apart only once something is sent. A profile is built
    /// for it (Go's server serves it too); a `?seconds=N` delta stops
    /// waiting, as Go's does.
    Closed,
    /// It reset the connection, or the program closed the descriptor:
    /// nothing sent can be read.
    Gone,
}

/// How the client on `stream` stands ([`Peer`]). Looks without taking
/// any byte of a pipelined request.
fn peer(stream: &Conn) -> Peer {
    let looked = stream.with(|s| {
        if s.set_nonblocking(true).is_err() {
            return Ok(Peer::There);
        }
        let looked = s.peek(&mut [0u8; 1]);
        let _ = s.set_nonblocking(false);
        Ok(match looked {
            Ok(0) => Peer::Closed,
            Ok(_) => Peer::There,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Peer::There
            }
            Err(_) => Peer::Gone,
        })
    });
    // A connection whose descriptor the program closed has no client left.
    looked.unwrap_or(Peer::Gone)
}

/// Accepts connections on `listener`, bound at `local` (read when it was
/// bound: by the time this thread runs, the program may have closed the
/// descriptor and given its number to another socket).
fn accept_loop(listener: TcpListener, local: SocketAddr, ours: Socket, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    let rejecting = Arc::new(AtomicUsize::new(0));
    // Failures said on stderr: each kind once, so that a server out of
    // descriptors says so without a line every 10 ms.
    let mut said: Vec<io::ErrorKind> = Vec::new();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    loop {
        if !ours.still_named_by(fd) {
            give_up_descriptor(listener, fd, ours, local.port());
            return;
        }
        let (stream, peer) = match listener.accept() {
            Ok((stream, peer)) => (Conn::new(stream), peer),
            Err(e) => {
                // Out of descriptors, a connection reset before accept…:
                // nothing to do but wait a little and go on.
                let passing = matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN)
                );
                if !passing && !said.contains(&e.kind()) {
                    said.push(e.kind());
                    crate::config::report::warn(format_args!(
                        "heapprof: the /debug/pprof server on {local} cannot accept connections: \
                         {e}; it tries again every 10 ms"
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let place = Peers::admit(&shared, peer.ip());
        let refusal = match place {
            Some(place) if active.load(Relaxed) < shared.limits.max_connections => {
                let slot = Slot::take(&active);
                let shared = Arc::clone(&shared);
                spawn(move || {
                    serve_connection(stream, &shared, &place);
                    drop((place, slot));
                });
                continue;
            }
            Some(_) => "heapprof: too many connections now\n",
            None => "heapprof: too many connections from your address now\n",
        };
        if rejecting.load(Relaxed) < REJECTERS {
            let slot = Slot::take(&rejecting);
            spawn(move || {
                reject_busy(stream, refusal);
                drop(slot);
            });
        } else {
            refuse_at_once(stream, refusal);
        }
    }
}

/// `fstat(fd)`, or its `errno`. Async-signal-safe.
fn stat(fd: i32) -> Result<libc::stat, i32> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer it is given, which is
    // one, and reads nothing else.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: fstat succeeded, so it filled the buffer.
    Ok(unsafe { st.assume_init() })
}

/// An accepted connection, known by its socket's identity as well as by
/// its descriptor's number. The program may close the number behind the
/// server (a daemon closing every descriptor it did not open) and give it
/// to a file of its own; each use of a `Conn` first checks that the number
/// still names the socket, and a `Conn` whose number names another file,
/// or none, is never read, written, set or closed: it fails with
/// `NotConnected` and, when dropped, leaves the number alone. `stream` is
/// never dropped: [`Conn`]'s drop closes its descriptor.
///
/// Between a check and the call it guards, the number can still change
/// hands: the checks narrow the program's race with the server to
/// microseconds, they do not end it.
struct Conn {
    stream: ManuallyDrop<TcpStream>,
    socket: Socket,
    /// Its place in [`CONNECTIONS`], if listed there.
    place: Option<usize>,
}

/// What the server knows of the socket a descriptor named when it took
/// it (a listening socket at bind, a connection at accept), to tell
/// later whether the number still names it.
#[derive(Clone, Copy, PartialEq)]
enum Socket {
    /// A socket with this device and inode: each use checks them.
    Known(libc::dev_t, libc::ino_t),
    /// Not known: `fstat` failed other than with `EBADF` (a seccomp filter
    /// that denies it, say). Used and closed as a plain socket is.
    Unchecked,
    /// The number was closed, or named something other than a socket, by
    /// the time it was looked at: never used or closed.
    Gone,
}

impl Socket {
    /// What `fd` names now. Async-signal-safe: `fstat` only.
    fn of(fd: i32) -> Socket {
        match stat(fd) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFSOCK => {
                Socket::Known(st.st_dev, st.st_ino)
            }
            Ok(_) | Err(libc::EBADF) => Socket::Gone,
            Err(_) => Socket::Unchecked,
        }
    }

    /// Whether `fd` still names this socket, as far as `fstat` can tell:
    /// a number it cannot look at now (a filter installed since) is taken
    /// to.
    fn still_named_by(self, fd: i32) -> bool {
        match self {
            Socket::Known(..) => match Socket::of(fd) {
                Socket::Unchecked => true,
                now => now == self,
            },
            Socket::Unchecked => true,
            Socket::Gone => false,
        }
    }
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let socket = Socket::of(std::os::fd::AsRawFd::as_raw_fd(&stream));
        Conn::listed(stream, socket)
    }

    /// `stream`, known as `socket`, listed for a forked child to close.
    fn listed(stream: TcpStream, socket: Socket) -> Conn {
        let place = CONNECTIONS.list(std::os::fd::AsRawFd::as_raw_fd(&stream), socket);
        Conn {
            stream: ManuallyDrop::new(stream),
            socket,
            place,
        }
    }

    /// Whether the descriptor still names the socket accepted.
    fn is_ours(&self) -> bool {
        self.socket.still_named_by(self.fd())
    }

    fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&*self.stream)
    }

    /// `f` on the socket, if the descriptor still names it.
    fn with<T>(&self, f: impl FnOnce(&TcpStream) -> io::Result<T>) -> io::Result<T> {
        if !self.is_ours() {
            return Err(gone());
        }
        f(&self.stream)
    }

    /// A second descriptor for the same socket, checked the same way. The
    /// number may change hands between the check and the `dup`: a new
    /// descriptor that names another file is this server's own, and is
    /// closed.
    fn try_clone(&self) -> io::Result<Conn> {
        let stream = self.with(TcpStream::try_clone)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        if !self.socket.still_named_by(fd) {
            std::mem::forget(stream);
            // SAFETY: the descriptor was made by the `dup` just above, for
            // this server alone, and its `TcpStream` is forgotten.
            unsafe { libc::close(fd) };
            return Err(gone());
        }
        Ok(Conn::listed(stream, self.socket))
    }

    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.with(|s| s.set_nodelay(on))
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.with(|s| s.set_read_timeout(timeout))
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.with(|s| s.set_write_timeout(timeout))
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.with(|s| s.shutdown(how))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|mut s| s.read(buf))
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|mut s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Conn {
    /// Closes the descriptor if it still names the socket. The program may
    /// close it between the check and the close, so the close is
    /// `libc::close`, whose `EBADF` is ignored, and never `TcpStream`'s
    /// drop, which aborts a debug build on `EBADF`.
    fn drop(&mut self) {
        if self.is_ours() {
            // SAFETY: the descriptor is the connection's (checked just
            // above) and `stream`, which is never dropped, is not used
            // after this; a `TcpStream` holds nothing but its descriptor.
            unsafe { libc::close(self.fd()) };
        }
        // Unlisted after the close: a fork in between finds the number
        // closed, or naming another socket, and leaves it alone.
        if let Some(place) = self.place {
            CONNECTIONS.unlist(place, self.fd());
        }
    }
}

/// The error of a [`Conn`] whose number no longer names its socket.
fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the program closed the connection's descriptor",
    )
}

/// The program closed the server's listening socket (a daemon closing
/// every descriptor it did not open), and `fd` now names another file or
/// none: the server of `port` stops, says so, and leaves `fd` alone.
/// Accepting on it would answer the program's own clients with profiles,
/// and closing it would close the program's file.
fn give_up_descriptor(listener: TcpListener, fd: i32, ours: Socket, port: u16) {
    std::mem::forget(listener);
    LISTENERS.unlist_socket(fd, ours);
    crate::config::report::warn(format_args!(
        "heapprof: the /debug/pprof server's socket (port {port}, descriptor {fd}) was closed \
         by the program, and the descriptor names another file now; the server stops"
    ));
}

/// Starts a connection thread, inside the profiler for its whole life. If
/// the thread cannot start, the closure is dropped with its connection and
/// slots; the first failure is reported.
fn spawn(f: impl FnOnce() + Send + 'static) {
    static FAILED: crate::config::report::Once = crate::config::report::Once::new();
    let spawned = own_thread::spawn(c"heapprof-conn", THREAD_STACK_BYTES, move |_| f());
    if let Err(e) = spawned {
        FAILED.warn(format_args!(
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

/// The connections being served, and the `?seconds=` deltas among them,
/// counted by peer. A peer has an entry only while it holds a connection,
/// so the table has at most as many entries as connections are served.
struct Peers {
    limit: usize,
    held: Mutex<{ rank::HTTP_PEERS }, HashMap<IpAddr, Held>>,
}

/// What one peer holds.
#[derive(Default)]
struct Held {
    connections: usize,
    deltas: usize,
}

/// The deltas one peer may have in progress at once: fewer than the
/// process's, so that one client cannot take every place for the
/// longest delta's wait.
const DELTAS_PER_PEER: usize = super::MAX_DELTAS / 2;

impl Peers {
    /// A place for one more connection from `ip`, or `None` if its peer
    /// already holds as many as allowed.
    fn admit(shared: &Arc<Shared>, ip: IpAddr) -> Option<PeerPlace> {
        let peer = peer_of(ip);
        let mut held = shared.peers.held.lock();
        let n = &mut held.entry(peer).or_default().connections;
        if *n >= shared.peers.limit {
            return None;
        }
        *n += 1;
        Some(PeerPlace {
            shared: Arc::clone(shared),
            peer,
        })
    }
}

/// One connection's place in its peer's count, given back when dropped.
struct PeerPlace {
    shared: Arc<Shared>,
    peer: IpAddr,
}

impl PeerPlace {
    /// A place for a delta of this connection's peer, or `None` if it has
    /// [`DELTAS_PER_PEER`] in progress already.
    fn take_delta(&self) -> Option<DeltaPlace<'_>> {
        let mut held = self.shared.peers.held.lock();
        let n = &mut held.get_mut(&self.peer)?.deltas;
        if *n >= DELTAS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(DeltaPlace(self))
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self.shared.peers.held.lock();
        if let Some(h) = held.get_mut(&self.peer) {
            h.connections -= 1;
            if h.connections == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

/// A delta's place in its peer's count ([`PeerPlace::take_delta`]), given
/// back when dropped.
struct DeltaPlace<'a>(&'a PeerPlace);

impl Drop for DeltaPlace<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.0.shared.peers.held.lock().get_mut(&self.0.peer) {
            h.deltas -= 1;
        }
    }
}

/// The peer a connection is counted under: an IPv4 address (IPv4-mapped
/// IPv6 addresses included), or the /64 prefix of an IPv6 address, since
/// one host usually has a whole /64 to pick addresses from.
fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The bytes of response bodies held by the connections, against the
/// server's [`Server::max_response_bytes`].
struct Budget {
    limit: usize,
    held: AtomicUsize,
}

impl Budget {
    /// Whether no body at all can be taken now: the budget is spent.
    fn spent(&self) -> bool {
        self.held.load(Relaxed) >= self.limit.max(1)
    }

    /// Takes `bytes` for a body, or `None` if the bodies already held and
    /// this one would pass the limit. A body taken while none is held is
    /// never refused, so one body larger than the budget is still served.
    fn take(&self, bytes: usize) -> Option<Lease<'_>> {
        let mut held = self.held.load(Relaxed);
        loop {
            let after = held.saturating_add(bytes);
            if held != 0 && after > self.limit {
                return None;
            }
            match self
                .held
                .compare_exchange_weak(held, after, Relaxed, Relaxed)
            {
                Ok(_) => {
                    return Some(Lease {
                        budget: self,
                        bytes: after - held,
                    });
                }
                Err(now) => held = now,
            }
        }
    }
}

/// Bytes of the budget held by one body, given back when dropped.
struct Lease<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Relaxed);
    }
}

/// The answer when the response budget is spent: a fixed text, not
/// counted in the budget.
fn over_budget() -> Response {
    Response::error(
        503,
        "heapprof: other responses in flight hold the whole response budget now",
    )
}

/// Answers a connection over a limit with `message` without reading its
/// request. The request must still be drained before closing ([`linger`]):
/// closing a socket with unread input makes the kernel reset the
/// connection, and the client would see the reset instead of the 503.
fn reject_busy(mut stream: Conn, message: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(busy_reply(message).as_bytes()).is_ok() {
        linger(&mut stream);
    }
}

/// A 503 with `message` as its body and a `Retry-After` of a second.
fn busy_reply(message: &str) -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{message}",
        message.len()
    )
}

/// The most of a refused request [`refuse_at_once`] reads: the largest
/// head, [`LARGEST_HEAD_BYTES`].
const REFUSAL_DRAIN_BYTES: usize = LARGEST_HEAD_BYTES;

/// Answers a connection over a limit with `message` while every rejecter
/// is busy, on the listener's thread, so it never waits: it reads what
/// the client has sent by now (unread input makes the close a reset,
/// which drops whatever of the answer is not sent yet), writes the 503 if
/// the socket takes it whole at once (a fresh connection's send buffer
/// holds it), and closes. A client whose request arrives only after this
/// may see a reset.
fn refuse_at_once(stream: Conn, message: &str) {
    // `MSG_DONTWAIT` on each call rather than `O_NONBLOCK` on the socket:
    // should the number name another file by now, the calls fail on it
    // (`ENOTSOCK`) and change nothing.
    let at_once = |call: &dyn Fn(i32) -> isize| -> io::Result<usize> {
        stream.with(|s| {
            let n = call(std::os::fd::AsRawFd::as_raw_fd(s));
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        })
    };
    let mut sink = [0u8; 4096];
    let (sink_at, sink_len) = (sink.as_mut_ptr(), sink.len());
    let mut drained = 0;
    while drained < REFUSAL_DRAIN_BYTES {
        // SAFETY: `sink_at` points at `sink`, valid for `sink_len` bytes of
        // writing and not otherwise used meanwhile; recv writes at most
        // that much.
        let read =
            at_once(&|fd| unsafe { libc::recv(fd, sink_at.cast(), sink_len, libc::MSG_DONTWAIT) });
        match read {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    let reply = busy_reply(message);
    // SAFETY: `reply` is valid for its length of reading; send only reads
    // it. `MSG_NOSIGNAL`: a client gone already is no `SIGPIPE`.
    let _ = at_once(&|fd| unsafe {
        libc::send(
            fd,
            reply.as_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    });
    let _ = stream.shutdown(Shutdown::Write);
}

/// What the head of a request asked for, or the error status to answer.
struct Request {
    head_only: bool,
    path: String,
    query: String,
}

fn serve_connection(mut stream: Conn, shared: &Shared, place: &PeerPlace) {
    let _ = stream.set_nodelay(true);
    let (mut response, head_only) = match read_request(&mut stream, &shared.limits) {
        // Building a body that could not be held anyway would only cost
        // the time of the build.
        Ok(Some(req)) if !req.head_only && shared.budget.spent() => (over_budget(), false),
        Ok(Some(req)) => (
            respond(shared, &stream, place, &req.path, &req.query, req.head_only),
            req.head_only,
        ),
        // The client went away, or the read failed: nobody to answer.
        Ok(None) => return,
        Err((status, message)) => (
            Response::error(status, format!("heapprof: {message}")),
            false,
        ),
    };
    // HEAD: the body's length is all that is sent of it, and nothing is
    // held while the head is written.
    let (content_length, lease) = if head_only {
        let length = response.body.len();
        response.body = Vec::new();
        (length, None)
    } else {
        let lease = shared.budget.take(response.body.len());
        if lease.is_none() {
            response = over_budget();
        }
        (response.body.len(), lease)
    };
    let Response {
        status,
        content_type,
        content_disposition,
        body,
    } = response;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        reason(status),
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    if status == 503 {
        head.push_str("Retry-After: 1\r\n");
    }
    if let Some(disposition) = content_disposition {
        head.push_str("Content-Disposition: ");
        head.push_str(disposition);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let deadline = Instant::now() + shared.limits.write_timeout;
    let written = write_by(&mut stream, head.as_bytes(), deadline).is_ok()
        && write_by(&mut stream, &body, deadline).is_ok();
    // The body is sent (or never will be): its bytes go back to the budget
    // before the linger.
    drop((body, lease));
    if written {
        linger(&mut stream);
    }
}

/// Writes `bytes` unless `deadline` passes first: in pieces, each allowed
/// to block only for the time left, so that a client reading slowly cannot
/// hold the connection past the deadline.
fn write_by(stream: &mut Conn, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
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
    stream: &mut Conn,
    limits: &Server,
) -> Result<Option<Request>, (u16, &'static str)> {
    let deadline = Instant::now() + limits.header_timeout;
    // Grows as the head arrives: a large limit costs nothing until a
    // client sends that much.
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((408, "the request head did not arrive in time"));
        }
        let _ = stream.set_read_timeout(Some(left));
        let room = (limits.max_head_bytes - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
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
        if let Some(req) = parse_head(&head)? {
            return Ok(Some(req));
        }
        if head.len() >= limits.max_head_bytes {
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
            let target = origin_form(req.path.unwrap_or("/"));
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

/// A request target as a path and query: the origin form
/// (`/debug/pprof/heap?debug=1`) as it is, and the absolute form
/// (`http://host:6060/debug/pprof/heap`, which clients send to a proxy,
/// and which HTTP/1.1 servers take too) without its scheme and authority.
fn origin_form(target: &str) -> &str {
    let scheme_end = ["http://", "https://"].into_iter().find_map(|scheme| {
        let given = target.get(..scheme.len())?;
        given.eq_ignore_ascii_case(scheme).then_some(scheme.len())
    });
    let Some(scheme_end) = scheme_end else {
        return target;
    };
    let rest = &target[scheme_end..];
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => &rest[at..],
        // No path (`http://host` or `http://host?q`): the root's.
        _ => "/",
    }
}

/// After the response: stop writing and read what the client may still
/// send (briefly, boundedly) before closing, so that unread input does not
/// make the kernel reset the connection and lose the response's tail.
fn linger(stream: &mut Conn) {
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

    /// How a client left, as a test makes it leave.
    #[derive(Clone, Copy)]
    enum Leaves {
        Not,
        HalfCloses,
        Resets,
    }

    /// The state of the server's end of a TCP connection (`TCP_INFO`'s
    /// `tcpi_state`), read without taking anything from the socket.
    fn tcp_state(conn: &Conn) -> u8 {
        use std::os::fd::AsRawFd;
        conn.with(|s| {
            // SAFETY: `tcp_info` is plain data; the kernel fills at most
            // `len` bytes of it, through pointers to live locals.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: as above, on a socket `s` owns.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&raw mut info).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            Ok(info.tcpi_state)
        })
        .unwrap()
    }

    /// The builder skips the profile of a client that has reset the
    /// connection, so that clients that leave so cannot keep the next ones
    /// waiting; it builds one for a client still there, and for one that
    /// only closed its end (it may still read: `nc -N`). The index and a
    /// 404 build no profile, and do not wait for the builder.
    #[test]
    fn the_builder_skips_clients_that_reset() {
        assert!(super::super::builds_profile("/debug/pprof/heap"));
        assert!(!super::super::builds_profile("/debug/pprof/"));
        assert!(!super::super::builds_profile("/debug/pprof/goroutine"));
        let builder = start_builder().expect("the builder thread");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ask = |leaves: Leaves| {
            let mut client = Some(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
            let server_side = Conn::new(listener.accept().unwrap().0);
            // What the client does reaches the server's end before the
            // builder looks: the state moves on from ESTABLISHED.
            // Linux's `enum tcp_state` (`include/net/tcp_states.h`).
            let (closed, closed_wait) = (7, 8);
            let reached = match leaves {
                Leaves::Not => None,
                Leaves::HalfCloses => {
                    let client = client.as_ref().unwrap();
                    client.shutdown(std::net::Shutdown::Write).unwrap();
                    Some(closed_wait)
                }
                Leaves::Resets => {
                    use std::os::fd::AsRawFd;
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    let fd = client.as_ref().unwrap().as_raw_fd();
                    // SAFETY: a valid socket and a `linger` of the size
                    // passed, alive across the call.
                    let r = unsafe {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&raw const linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        )
                    };
                    assert_eq!(r, 0);
                    // Closed with a zero linger: a reset.
                    drop(client.take());
                    Some(closed)
                }
            };
            if let Some(state) = reached {
                while tcp_state(&server_side) != state {
                    std::thread::yield_now();
                }
            }
            let (reply, response) = mpsc::sync_channel(1);
            let job = (
                "/debug/pprof/heap".to_owned(),
                String::new(),
                false,
                reply,
                server_side.try_clone().ok(),
            );
            builder.send(job).unwrap();
            let response = response.recv().unwrap();
            drop(client);
            response
        };
        let reset = ask(Leaves::Resets);
        assert_eq!(
            reset.status,
            503,
            "{}",
            String::from_utf8_lossy(&reset.body)
        );
        // Built (a 500 where heapprof is not the global allocator, as in
        // these unit tests): not skipped.
        for leaves in [Leaves::Not, Leaves::HalfCloses] {
            let built = ask(leaves);
            assert_ne!(
                built.status,
                503,
                "{}",
                String::from_utf8_lossy(&built.body)
            );
        }
    }

    /// A refusal on the listener's thread answers a request that has
    /// arrived with a 503 the client can read, not a reset.
    #[test]
    fn a_refusal_at_once_is_read_by_a_client_that_has_sent_its_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let request = b"GET /debug/pprof/heap HTTP/1.1\r\nHost: x\r\n\r\n";
        client.write_all(request).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // The whole request is in the server's buffer before it refuses.
        let mut seen = [0u8; 64];
        while accepted.peek(&mut seen).unwrap() < request.len() {
            std::thread::sleep(Duration::from_millis(1));
        }
        refuse_at_once(Conn::new(accepted), "busy\n");
        let mut answer = String::new();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 503 ") && answer.ends_with("\r\n\r\nbusy\n"),
            "{answer:?}"
        );
    }

    #[test]
    fn limits_saturate() {
        let s = Server::new()
            .header_timeout(Duration::MAX)
            .write_timeout(Duration::MAX)
            .max_head_bytes(usize::MAX);
        assert_eq!(
            (s.header_timeout, s.write_timeout, s.max_head_bytes),
            (LONGEST_TIMEOUT, LONGEST_TIMEOUT, LARGEST_HEAD_BYTES)
        );
        let s = Server::new()
            .header_timeout(Duration::ZERO)
            .max_head_bytes(0)
            .max_connections(0);
        assert_eq!(
            (s.header_timeout, s.max_head_bytes, s.max_connections),
            (Duration::from_millis(1), 256, 1)
        );
        // The deadlines these make are computable.
        let _ = Instant::now() + LONGEST_TIMEOUT;
    }

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
        let absolute = b"GET HTTP://127.0.0.1:6060/debug/pprof/heap?debug=1 HTTP/1.1\r\n\r\n";
        let r = parse_head(absolute).unwrap().unwrap();
        assert_eq!(
            (r.path.as_str(), r.query.as_str()),
            ("/debug/pprof/heap", "debug=1")
        );
        for (target, path) in [
            ("http://h", "/"),
            ("https://h:1?x", "/"),
            ("httpx", "httpx"),
        ] {
            assert_eq!(super::origin_form(target), path, "{target}");
        }
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n").err().unwrap().0, 405);
        assert_eq!(parse_head(b"\x00\x01garbage\r\n\r\n").err().unwrap().0, 400);
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(req.as_bytes()).err().unwrap().0, 431);
    }
}
