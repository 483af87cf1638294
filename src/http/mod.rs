//! `/debug/pprof/heap` over HTTP, the way Go's `net/http/pprof` serves it,
//! for `go tool pprof http://…`, `curl`, and continuous profilers (Parca
//! and Grafana Pyroscope scrape these paths).
//!
//! Either let heapprof run a small server of its own:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! fn main() -> std::io::Result<()> {
//!     let addr = heapprof::http::serve("127.0.0.1:6060")?;
//!     eprintln!("profiles at http://{addr}/debug/pprof/");
//!     // … the service …
//! #   Ok(())
//! }
//! ```
//!
//! or mount [`handle`] in the server the program already has (it takes a
//! path and a query and returns status, content type, content disposition
//! and body; see `dev/examples/axum_mount.rs`).
//!
//! | path | what |
//! | --- | --- |
//! | `/debug/pprof/` | an index page: the profiles, what their counts mean, the exact counters |
//! | `/debug/pprof/heap` | the heap profile, gzipped protobuf; pprof's default view is `inuse_space` |
//! | `/debug/pprof/allocs` | the same data, with `alloc_space` as the default view |
//! | `/debug/pprof/peak` | the peak-heap profile (what was live when the heap was largest) |
//! | `/debug/pprof/delta_heap` | godeltaprof's endpoint, for continuous profilers: alloc values since this endpoint's previous scrape, inuse values now |
//! | `…?debug=1` | the legacy text format, readable by people and by `go tool pprof` |
//! | `…?seconds=N` | on `heap` and `allocs`: a delta, what happened in the next N seconds (at most [`MAX_DELTA_SECONDS`]); on `peak` a 400, since the peak is one moment |
//! | `…?symbolize=0` | mappings (with build IDs) and addresses only, no function names and no symbol lookup in the process, for profilers that symbolize on their server; `1` (the default) names the frames unless `HEAPPROF_SYMBOLIZE=off` |
//!
//! `delta_heap` is the endpoint Grafana Alloy's `pyroscope.scrape` fetches
//! for its `godeltaprof_memory` profile: alloc values are what was
//! allocated since the previous scrape of this endpoint (by anyone: two
//! scrapers of one process each see part of the allocations), so a
//! scraper that adds them up gets each allocation once, and inuse values
//! are what is live now, not their change. The first scrape counts allocations from the
//! program's start. Only a `GET` of the profile itself starts the next
//! window: a `HEAD` request, and the text form (`?debug=1`, which the index
//! page links for people), show the allocations since the previous scrape
//! and leave them to the next. A server that mounts [`handle`] calls
//! [`handle_head`] for `HEAD`. Between scrapes it keeps one copy of the
//! site table.
//!
//! Anything else is a 404. Go's other profiles, which scrapers ask for by
//! default (`/debug/pprof/profile`, `goroutine`, `block`, `mutex`, …), get
//! a 404 whose body says heapprof serves heap profiles only and lists
//! what it serves; the README has Alloy and Parca scrape configs that
//! fetch only what is served. The server binds only where it is told: bind to
//! loopback (`127.0.0.1:6060`) unless the network in between is trusted,
//! or put it behind something that checks who asks. A heap profile shows
//! the program's code paths and the sizes of its data, and `?debug=1`
//! prints the exact addresses the program and its libraries are loaded at
//! (its `MAPPED_LIBRARIES` section, as Go's does): whoever can reach the
//! port learns them, which undoes address-space layout randomization for
//! an attacker with another way in.
//!
//! What a client can make the built-in server hold is bounded whatever it
//! does: see [`Server`] for the limits on connections, per peer and in
//! all, on time, on request heads, and on the response bodies held at
//! once ([`DEFAULT_RESPONSE_BUDGET`]).

mod server;

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::output::{self, Format, Source, pprof};
use crate::support;
use crate::support::lock::{Mutex, rank};
use crate::{record::sites, sample, support::reentry};

pub use server::{
    DEFAULT_CONNECTIONS_PER_PEER, DEFAULT_HEAD_BYTES, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_RESPONSE_BUDGET, DEFAULT_WRITE_TIMEOUT, LARGEST_HEAD_BYTES,
    LONGEST_TIMEOUT, Server, THREAD_STACK_BYTES, serve,
};

/// The longest `?seconds=N` delta served. Go bounds it by the server's
/// write timeout; a delta holds a connection open for its whole span.
pub const MAX_DELTA_SECONDS: u64 = 300;

/// An HTTP response, framework-neutral: hand these four to whatever
/// server the program runs.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code: 200, or 400, 404, 500, 503 (more than four
    /// deltas at once, no memory for the profile or its copy, or a client
    /// that closed its end during a delta) with a plain-text message.
    pub status: u16,
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The `Content-Disposition` header's value, when there should be one:
    /// on a binary profile, `attachment; filename="heap"` (or `allocs`,
    /// `peak`, `delta_heap`, `heap-delta`, `allocs-delta`), as Go's `net/http/pprof`
    /// sends, so that a browser saves the profile under its name rather
    /// than showing bytes. `None` for text, HTML and errors.
    pub content_disposition: Option<&'static str>,
    /// The body: a gzipped profile, text or HTML.
    pub body: Vec<u8>,
}

impl Response {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type,
            content_disposition: None,
            body,
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Response {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        Response {
            status,
            content_type: TEXT,
            content_disposition: None,
            body,
        }
    }
}

/// The body's size, and its start where it is text: a profile's bytes
/// (megabytes of gzip) would drown `dbg!` and a failed `assert_eq!`.
impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut body = format!("{} bytes", self.body.len());
        if self.content_type != PROTO {
            let text = String::from_utf8_lossy(&self.body);
            let start: String = text.chars().take(DEBUG_TEXT_CHARS).collect();
            let more = if start.len() < text.len() { "…" } else { "" };
            let _ = write!(body, ": {start:?}{more}");
        }
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("content_disposition", &self.content_disposition)
            .field("body", &format_args!("{body}"))
            .finish()
    }
}

/// The characters of a text body that a `Response`'s `Debug` shows.
const DEBUG_TEXT_CHARS: usize = 200;

const PROTO: &str = "application/octet-stream";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Answers a request for `path` with query string `query` (the part after
/// `?`, empty if none; a `?` it starts with is skipped), as the built-in
/// server does. For mounting heapprof
/// in another server; the paths are in the [module docs](self).
///
/// Blocking: building a profile takes milliseconds to (the first time,
/// while debug info is loaded) a second or so in an optimized build, and
/// several seconds in an unoptimized one, whose symbolizer runs
/// unoptimized too (4.5 to 7 s for the first scrape of an 8.8 MB
/// `cargo build` on a loaded 2-core machine: give a scraper's first
/// request that long); `?seconds=N` waits N seconds. From an async server, call it on a blocking thread
/// (`tokio::task::spawn_blocking`). Its own allocations are not profiled.
/// Answer a `HEAD` request with [`handle_head`] (axum, for one, sends
/// `HEAD` to the `GET` route).
pub fn handle(path: &str, query: &str) -> Response {
    handle_request(path, query, false)
}

/// [`handle`] for a `HEAD` request: the same status, headers and body (of
/// which a server sends only the length), except that `delta_heap`'s
/// window stays where it is, for the scraper's next `GET`.
pub fn handle_head(path: &str, query: &str) -> Response {
    handle_request(path, query, true)
}

/// [`handle`] or, with `head`, [`handle_head`].
fn handle_request(path: &str, query: &str, head: bool) -> Response {
    let query = query.strip_prefix('?').unwrap_or(query);
    let built = {
        let _inside = reentry::Inside::enter();
        let built = respond(path, query, head);
        // The copy below holds the body twice for a moment: a large one
        // asks for room first, as it did to grow.
        let len = built.body.len();
        let refused = (len > BODY_CHECKED_FROM)
            .then(|| {
                no_room(
                    len,
                    format_args!("did not copy the {} MiB response out", len >> 20),
                    "the copy takes",
                )
            })
            .flatten();
        match refused {
            Some(why) => Response::error(503, why),
            None => built,
        }
    };
    // The caller owns the body and frees it as its own: it is copied out
    // of the profiler's memory, so that `stats()` counts its allocation
    // as the program's, as it will count its free. (On heapprof's own
    // server threads, which are inside the profiler for good, the copy is
    // heapprof's too.)
    let response = Response {
        body: built.body.clone(),
        ..built
    };
    let _inside = reentry::Inside::enter();
    drop(built.body);
    response
}

/// Whether a request for `path` builds a profile (the index and a 404 do
/// not).
pub(super) fn builds_profile(path: &str) -> bool {
    matches!(page(path), Some(Page::Profile(_)))
}

/// A page served.
enum Page {
    Index,
    Profile(Kind),
}

/// The page a request for `path` asks for; `None` for a path not served.
fn page(path: &str) -> Option<Page> {
    Some(match path.strip_prefix("/debug/pprof")? {
        "" | "/" => Page::Index,
        "/heap" => Page::Profile(Kind::Heap),
        "/allocs" => Page::Profile(Kind::Allocs),
        "/peak" => Page::Profile(Kind::Peak),
        "/delta_heap" => Page::Profile(Kind::DeltaHeap),
        _ => return None,
    })
}

/// [`handle`], inside the profiler; `head` for a `HEAD` request, whose
/// body is not sent.
pub(super) fn respond(path: &str, query: &str, head: bool) -> Response {
    respond_while(path, query, head, &|| false)
}

/// [`respond`] for a client that may go away: a `?seconds=N` delta stops
/// waiting as soon as `gone` says the client has closed its end (checked every
/// [`GONE_CHECK_EVERY`]), so that clients that hang up at once cannot keep
/// every delta's place taken for [`MAX_DELTA_SECONDS`].
pub(super) fn respond_while(
    path: &str,
    query: &str,
    head: bool,
    gone: &dyn Fn() -> bool,
) -> Response {
    let kind = match page(path) {
        Some(Page::Profile(kind)) => kind,
        Some(Page::Index) => return index(),
        None => return not_served(path),
    };
    let params = match Params::parse(query) {
        Ok(p) => p,
        Err(message) => return Response::error(400, message),
    };
    if let Err(e) = crate::output::check_installed() {
        return Response::error(500, e.to_string());
    }
    match profile_response(kind, &params, head, gone) {
        Ok(r) => r,
        // A shortage that may pass: a 503, which says when to retry.
        Err(e) if e.kind() == io::ErrorKind::OutOfMemory => Response::error(503, e.to_string()),
        Err(e) => Response::error(500, format!("heapprof: could not write the profile: {e}")),
    }
}

/// The profiles served, for the 404 that lists them.
const SERVED: &str = "/debug/pprof/heap, /debug/pprof/allocs, /debug/pprof/delta_heap, \
                      /debug/pprof/peak, and an index at /debug/pprof/";

/// Go's profiles that heapprof does not have, as scrapers ask for them:
/// the path and what it is in Go.
const GO_ONLY: [(&str, &str); 11] = [
    ("/debug/pprof/profile", "a CPU profile"),
    ("/debug/pprof/goroutine", "Go's goroutine profile"),
    ("/debug/pprof/block", "Go's blocking profile"),
    ("/debug/pprof/mutex", "Go's mutex contention profile"),
    ("/debug/pprof/threadcreate", "Go's thread creation profile"),
    ("/debug/pprof/trace", "a Go execution trace"),
    ("/debug/pprof/cmdline", "Go's command line page"),
    ("/debug/pprof/symbol", "Go's symbol lookup"),
    ("/debug/pprof/delta_mutex", "godeltaprof's mutex profile"),
    ("/debug/pprof/delta_block", "godeltaprof's blocking profile"),
    ("/debug/fgprof", "fgprof's wall-clock profile"),
];

/// The 404 for `path`: what it is, if it is one of Go's other profiles,
/// and what heapprof serves instead.
fn not_served(path: &str) -> Response {
    let what = match GO_ONLY.iter().find(|(p, _)| *p == path) {
        Some((_, what)) => format!("{path} is {what}, which heapprof does not have: "),
        None => format!("no profile at {path}: "),
    };
    Response::error(
        404,
        format!("heapprof: {what}heapprof serves heap profiles only: {SERVED}"),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Heap,
    Allocs,
    Peak,
    /// Alloc values since the previous scrape, inuse values now.
    DeltaHeap,
}

impl Kind {
    /// The binary profile's `Content-Disposition`, named as Go names it:
    /// the profile, with `-delta` for `?seconds=N`.
    fn attachment(self, delta: bool) -> &'static str {
        match (self, delta) {
            (Kind::Heap, false) => "attachment; filename=\"heap\"",
            (Kind::Heap, true) => "attachment; filename=\"heap-delta\"",
            (Kind::Allocs, false) => "attachment; filename=\"allocs\"",
            (Kind::Allocs, true) => "attachment; filename=\"allocs-delta\"",
            (Kind::Peak, _) => "attachment; filename=\"peak\"",
            (Kind::DeltaHeap, _) => "attachment; filename=\"delta_heap\"",
        }
    }
}

/// Whether a request with this query waits before it builds (a
/// `?seconds=N` delta): the server runs those on their own threads rather
/// than queue other requests behind the wait.
fn waits(query: &str) -> bool {
    Params::parse(query).is_ok_and(|p| p.seconds.is_some())
}

/// The query parameters we understand; others are ignored, as Go does
/// (`gc=1`, for one, means nothing here).
#[derive(Default)]
struct Params {
    debug: u32,
    seconds: Option<u64>,
    /// `symbolize=0`: `pprof::Options::addresses_only`.
    addresses_only: bool,
}

impl Params {
    fn parse(query: &str) -> Result<Params, String> {
        const OURS: [&str; 3] = ["debug", "seconds", "symbolize"];
        let mut p = Params::default();
        let mut seen = [false; OURS.len()];
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // A pair that is not ours is skipped unread, as Go skips it:
            // a bad escape there (`utm=50%`) is not this request's error.
            let Ok(key) = unescape(key) else { continue };
            let Some(at) = OURS.iter().position(|k| *k == key) else {
                continue;
            };
            // A repeated key: the first value counts, as Go's `FormValue`.
            if std::mem::replace(&mut seen[at], true) {
                continue;
            }
            let value = unescape(value)?;
            let value = value.as_ref();
            match key.as_ref() {
                "debug" => {
                    // Any level above 1 is text, so one too large to hold
                    // is too.
                    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                    p.debug = value
                        .parse()
                        .ok()
                        .or(digits.then_some(u32::MAX))
                        .ok_or_else(|| {
                            format!("bad request: debug={value:?} is not a whole number")
                        })?
                }
                "seconds" => {
                    let s = value
                        .parse()
                        .ok()
                        .filter(|s| (1..=MAX_DELTA_SECONDS).contains(s))
                        .ok_or_else(|| {
                            format!(
                                "bad request: seconds={value:?}: expected a whole number from 1 to {MAX_DELTA_SECONDS}"
                            )
                        })?;
                    p.seconds = Some(s);
                }
                "symbolize" => {
                    let on = crate::config::parse_on_off(value).ok_or_else(|| {
                        format!("bad request: symbolize={value:?}: expected on or off (1 or 0)")
                    })?;
                    p.addresses_only = !on;
                }
                _ => {}
            }
        }
        Ok(p)
    }
}

/// A query's key or value with its escapes undone, as a form's: `%XX` is
/// the byte XX, `+` a space. `Err` for an escape that is not two hex
/// digits or bytes that are not UTF-8.
fn unescape(s: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if !s.contains(['%', '+']) {
        return Ok(s.into());
    }
    let bad = || format!("bad request: {s:?} is not a valid query escape");
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, after)) = rest.split_first() {
        rest = after;
        bytes.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = rest.get(..2).ok_or_else(bad)?;
                // Digits only: `from_str_radix` would also take a sign.
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad());
                }
                rest = &rest[2..];
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                u8::from_str_radix(hex, 16).map_err(|_| bad())?
            }
            b => b,
        });
    }
    String::from_utf8(bytes).map(Into::into).map_err(|_| bad())
}

/// One profile is built at a time, from the copy of the table to the
/// encoded body: fifty scrapers at once cost the build memory (table copy,
/// symbols, the profile message) of one profile, not fifty. The finished
/// bodies are the caller's to hold until they are sent; the built-in
/// server bounds those with its response budget. `fork` does not wait for
/// it (a build can take a second); a forked child, where no builder
/// exists, resets it instead.
///
/// It holds the table as `delta_heap` last saw it, where the next scrape
/// of that endpoint starts: builds are one at a time, so each scrape
/// starts where the one before ended.
static BUILDING: Mutex<{ rank::HTTP_BUILD }, Option<output::Mark>> = Mutex::new(None);

/// In a forked child, whose only thread serves nothing: no delta is in
/// progress; the build lock is freed if a thread of the parent held it
/// at the fork (unless the fork came `from_inside` heapprof, a signal
/// handler's, whose interrupted code may hold it and releases it); the
/// servers' sockets are closed (`server::close_sockets_after_fork`).
pub(crate) fn after_fork_in_child(from_inside: bool) {
    DELTAS.store(0, Relaxed);
    if !from_inside {
        free_build_lock();
    }
    server::close_sockets_after_fork();
}

/// Frees the build lock if a thread of the parent held it at the fork.
fn free_build_lock() {
    if BUILDING.is_locked() {
        // SAFETY: held by a thread that does not exist in this process
        // (the forking thread was running the fork, not a build), and no
        // other thread exists to take it meanwhile.
        unsafe { BUILDING.force_unlock() };
    }
}

/// Deltas in progress at once, at most: each holds a connection and two
/// copies of the table for up to [`MAX_DELTA_SECONDS`].
pub(super) const MAX_DELTAS: usize = 4;
// `Response::status` says "four".
const _: () = assert!(MAX_DELTAS == 4);
static DELTAS: AtomicUsize = AtomicUsize::new(0);

/// How often a delta's wait looks whether its client is still there.
const GONE_CHECK_EVERY: Duration = Duration::from_millis(100);

fn profile_response(
    kind: Kind,
    params: &Params,
    head: bool,
    gone: &dyn Fn() -> bool,
) -> io::Result<Response> {
    let options = pprof::Options {
        default_sample_type: (kind == Kind::Allocs).then_some("alloc_space"),
        addresses_only: params.addresses_only,
        ..Default::default()
    };
    if kind == Kind::DeltaHeap {
        if params.seconds.is_some() {
            return Ok(Response::error(
                400,
                "bad request: delta_heap is a delta already (since its previous scrape); \
                 it takes no seconds",
            ));
        }
        // Only the profile a scraper reads starts the next window: a HEAD
        // request (a probe, a link checker) and the text form (the index
        // page's link, for people) show the allocations since the last
        // scrape and leave them to the next.
        let moves_mark = !head && params.debug == 0;
        let source = |previous: &mut Option<output::Mark>| {
            let now = output::Mark::now();
            let source = output::alloc_delta(&now, previous.as_ref());
            if moves_mark {
                *previous = Some(now);
            }
            source
        };
        return build(source, params, options, kind.attachment(false));
    }
    let Some(seconds) = params.seconds else {
        let source = match kind {
            Kind::Peak => |_: &mut Option<output::Mark>| Source::Peak,
            Kind::Heap | Kind::Allocs | Kind::DeltaHeap => {
                |_: &mut Option<output::Mark>| Source::Live
            }
        };
        return build(source, params, options, kind.attachment(false));
    };
    if params.debug != 0 {
        return Ok(Response::error(
            400,
            "bad request: seconds and debug cannot be combined (as in Go)",
        ));
    }
    if kind == Kind::Peak {
        return Ok(Response::error(
            400,
            "bad request: the peak profile has no delta form",
        ));
    }
    if DELTAS.fetch_add(1, Relaxed) >= MAX_DELTAS {
        DELTAS.fetch_sub(1, Relaxed);
        return Ok(Response::error(
            503,
            format!("heapprof: {MAX_DELTAS} delta profiles are already in progress"),
        ));
    }
    let span = Duration::from_secs(seconds);
    let sites = delta(span, gone);
    // Never below 0: a fork from inside the wait (a signal handler of the
    // waiting thread) leaves the child's count at 0 and this delta in it.
    let _ = DELTAS.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    let Some(sites) = sites else {
        return Ok(Response::error(
            503,
            "heapprof: the client closed its end of the connection during the delta, which \
             ends the wait (keep it open until the profile comes)",
        ));
    };
    let source = |_: &mut Option<output::Mark>| Source::Delta { sites, span };
    build(source, params, options, kind.attachment(true))
}

/// Builds the response from `source`, taken under the build lock (so that
/// waiting scrapers hold no copy of the table; `source` gets the lock's
/// `delta_heap` mark): the text format for `debug` >= 1, else the gzipped
/// profile, sent as an `attachment` (its `Content-Disposition`); 404 if
/// there is none (no peak yet).
fn build(
    source: impl FnOnce(&mut Option<output::Mark>) -> Source,
    params: &Params,
    options: pprof::Options,
    attachment: &'static str,
) -> io::Result<Response> {
    let mut one_at_a_time = BUILDING.lock();
    let format = if params.debug > 0 {
        Format::Text
    } else {
        Format::Pprof
    };
    let mut body = Body::new(format == Format::Text);
    if !output::write(source(&mut one_at_a_time), format, options, &mut body)? {
        return Ok(Response::error(404, crate::record::peak::no_peak_yet()));
    }
    let body = body.bytes;
    Ok(match format {
        Format::Text => Response::ok(TEXT, body),
        Format::Pprof => Response {
            content_disposition: Some(attachment),
            ..Response::ok(PROTO, body)
        },
    })
}

/// A response body, held whole until it is sent, that asks the process's
/// memory limits (`support::room`) for room each time its vector grows
/// past [`BODY_CHECKED_FROM`]: a text profile (`?debug=1`) of 4 096 sites
/// is 10 MB, which in a container near its limit would take the program
/// past it. Refused, the build stops with an
/// `OutOfMemory` error (a 503), and every later write returns it too.
struct Body {
    bytes: Vec<u8>,
    /// Whether it holds a text profile: the gzipped one is smaller.
    text: bool,
    refused: Option<String>,
}

/// Below this capacity a body grows without asking.
const BODY_CHECKED_FROM: usize = 1 << 20;

impl Body {
    fn new(text: bool) -> Body {
        Body {
            bytes: Vec::new(),
            text,
            refused: None,
        }
    }
}

impl io::Write for Body {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(why) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, why.clone()));
        }
        let (len, capacity) = (self.bytes.len(), self.bytes.capacity());
        let end = len.saturating_add(buf.len());
        // The vector's next block, as it would pick it; the old one is
        // still held while it is copied.
        let grown = end.max(capacity.saturating_mul(2));
        if end > capacity && grown > BODY_CHECKED_FROM {
            let done = format_args!("stopped after {} MiB of the response", len >> 20);
            if let Some(mut why) = no_room(grown, done, "its next growth takes") {
                if self.text {
                    why.push_str("; the gzipped profile (without ?debug=1) is smaller");
                }
                self.refused = Some(why.clone());
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, why));
            }
            self.bytes.reserve_exact(grown - len);
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// If a limit leaves less than `bytes` more (address space and committed
/// memory, then the memory limits past which the kernel ends or
/// throttles the process), why heapprof `done` what it did instead,
/// `taking` being what the bytes were for.
fn no_room(bytes: usize, done: std::fmt::Arguments<'_>, taking: &str) -> Option<String> {
    let short = support::room::short_of(bytes).or_else(|| support::room::memory_short_of(bytes))?;
    Some(format!(
        "heapprof: {done}: {}, and the program could go past it",
        short.words(taking)
    ))
}

/// `?seconds=N`: the table now and N seconds later, subtracted. Alloc
/// values are what was allocated in between; inuse values are the change
/// in live memory (negative where more was freed than allocated), as in
/// Go's delta profiles. No lock is held while waiting. `None` if `gone`
/// says the client went away meanwhile.
fn delta(span: Duration, gone: &dyn Fn() -> bool) -> Option<Vec<sites::SiteCopy>> {
    let before = sites::snapshot();
    let until = std::time::Instant::now() + span;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(GONE_CHECK_EVERY));
        if gone() {
            return None;
        }
    }
    let after = sites::snapshot();
    Some(sites::delta(&after, &before))
}

/// The index page. Go's shows a "count" beside `heap` that is the number
/// of records in the profile, freed ones included, so it grows for ever in
/// a healthy program and reads as a leak. Here
/// every number says what it counts.
fn index() -> Response {
    let (all, live) = sites::site_counts();
    let stats = crate::output::snapshot::stats();
    let has_peak = crate::record::peak::recorded();
    let numbers = sample::Numbers::now_live().describe();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>heapprof: /debug/pprof/</title></head><body>\n\
         <h1>/debug/pprof/</h1>\n\
         <p>Heap profiles from heapprof; their values are {numbers}. \
         Read them with <code>go tool pprof http://HOST/debug/pprof/heap</code>.</p>\n\
         <table>\n<tr><th>count</th><th>profile</th><th>what the count is</th></tr>\n\
         <tr><td>{live}</td><td><a href=\"/debug/pprof/heap\">heap</a> (<a href=\"/debug/pprof/heap?debug=1\">text</a>)</td>\
         <td>allocation sites with sampled memory still live: it falls when a site's memory is freed</td></tr>\n\
         <tr><td>{all}</td><td><a href=\"/debug/pprof/allocs\">allocs</a> (<a href=\"/debug/pprof/allocs?debug=1\">text</a>)</td>\
         <td>allocation sites kept, freed or not: it grows to the table's bound, and is not a leak</td></tr>\n\
         <tr><td>{peak}</td><td>{peak_link}</td>\
         <td>1 once the live heap has reached 1 MiB and a peak was recorded</td></tr>\n\
         <tr><td></td><td><a href=\"/debug/pprof/delta_heap\">delta_heap</a> (<a href=\"/debug/pprof/delta_heap?debug=1\">text</a>)</td>\
         <td>for continuous profilers: alloc values since this endpoint's previous scrape, inuse values now</td></tr>\n\
         </table>\n\
         <p>A count is a number of allocation sites (distinct stacks), not of objects or bytes. \
         For bytes, open a profile; for exact totals, see below.</p>\n{full}\
         <h2>Exact counters (all allocations, all threads, since start)</h2>\n<pre>\n\
         allocations     {allocs}\n\
         deallocations   {frees}\n\
         live blocks     {live_blocks}\n\
         allocated bytes {allocated}\n\
         freed bytes     {freed}\n\
         live bytes      {live_bytes}\n\
         profiler bytes  {profiler}\n\
         </pre>\n\
         <p>Each thread's counters are read in turn while the program runs: live blocks and bytes are at least \
         what was live at one moment of the read, and more by what other threads allocated and freed during it \
         (<code>heapprof::stats</code>).</p>\n\
         <p>Add <code>?seconds=N</code> to <code>heap</code> or <code>allocs</code> for what happens in the next N seconds \
         (at most {MAX_DELTA_SECONDS}).</p>\n</body></html>\n",
        full = [
            (
                sites::overflowed(),
                crate::output::pprof::site_table_full_note as fn() -> String
            ),
            (
                crate::labels::table::program_sets_full(),
                crate::output::pprof::label_table_full_note,
            ),
        ]
        .into_iter()
        .filter(|&(full, _)| full)
        .map(|(_, note)| format!("<p>{}</p>\n", note()))
        .collect::<String>(),
        peak = u8::from(has_peak),
        peak_link = if has_peak {
            "<a href=\"/debug/pprof/peak\">peak</a> (<a href=\"/debug/pprof/peak?debug=1\">text</a>)"
        } else {
            "peak"
        },
        allocs = stats.allocations,
        frees = stats.deallocations,
        live_blocks = stats.live_blocks(),
        allocated = stats.allocated_bytes,
        freed = stats.freed_bytes,
        live_bytes = stats.live_bytes(),
        profiler = stats.profiler_bytes,
    );
    Response::ok(HTML, page.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Debug` shows a body's size and the start of a text body, not a
    /// profile's bytes one by one.
    #[test]
    fn a_responses_debug_is_short() {
        let profile = Response {
            status: 200,
            content_type: PROTO,
            content_disposition: Some("attachment; filename=\"heap\""),
            body: vec![0x1f; 1 << 20],
        };
        let shown = format!("{profile:?}");
        assert!(shown.contains("body: 1048576 bytes }"), "{shown}");
        assert!(shown.len() < 200, "{shown}");
        let text = Response::error(404, "x".repeat(1000));
        let shown = format!("{text:?}");
        let start = format!("body: 1001 bytes: \"{}\"…", "x".repeat(DEBUG_TEXT_CHARS));
        assert!(shown.contains(&start), "{shown}");
        assert!(shown.contains("status: 404"), "{shown}");
    }

    #[test]
    fn query_parameters() {
        let p = Params::parse("debug=1&gc=1").unwrap();
        assert_eq!((p.debug, p.seconds), (1, None));
        let p = Params::parse("seconds=30").unwrap();
        assert_eq!(p.seconds, Some(30));
        assert_eq!(Params::parse("").unwrap().debug, 0);
        assert!(!Params::parse("").unwrap().addresses_only);
        assert!(Params::parse("symbolize=0").unwrap().addresses_only);
        // Escaped as a form is, as Go's handlers read them.
        // An escaped `=` is part of the key, as in Go.
        assert!(!Params::parse("symbolize%3D0").unwrap().addresses_only);
        assert!(Params::parse("%73ymbolize=%30").unwrap().addresses_only);
        assert_eq!(Params::parse("seconds=%32").unwrap().seconds, Some(2));
        assert_eq!(Params::parse("debug=+1").map(|p| p.debug).ok(), None);
        assert_eq!(Params::parse("debug=4294967296").unwrap().debug, u32::MAX);
        assert!(!Params::parse("symbolize=1").unwrap().addresses_only);
        // The words every switch takes (`config::parse_on_off`).
        assert!(Params::parse("symbolize=no").unwrap().addresses_only);
        assert!(!Params::parse("symbolize=true").unwrap().addresses_only);
        for bad in [
            "debug=x",
            "debug=-1",
            "seconds=0",
            "seconds=-5",
            "seconds=301",
            "seconds=",
            "seconds=1e3",
            "symbolize=",
            "symbolize=nope",
            "symbolize=2",
            "debug=%",
            "debug=%1",
            "debug=%zz",
            "debug=%ff",
            "debug=%+1",
        ] {
            assert!(Params::parse(bad).is_err(), "{bad}");
        }
        // Pairs not ours are skipped, escapes and all, as Go skips them.
        let p = Params::parse("utm=50%&debug=1&%zz=1&gc=%+f").unwrap();
        assert_eq!(p.debug, 1);
        // The first of a repeated key, as Go's `FormValue`.
        let p = Params::parse("debug=1&debug=2&seconds=5&seconds=x").unwrap();
        assert_eq!((p.debug, p.seconds), (1, Some(5)));
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/debug/pprof/goroutine",
            "/debug/pprof/heap/x",
            "/debug/pprofheap",
        ] {
            let r = handle(path, "");
            assert_eq!(r.status, 404, "{path}");
            let text = String::from_utf8(r.body).unwrap();
            assert!(
                text.contains("heap profiles only") && text.contains("/debug/pprof/delta_heap"),
                "{path}: {text}"
            );
        }
        let cpu = String::from_utf8(handle("/debug/pprof/profile", "seconds=14").body).unwrap();
        assert!(cpu.contains("is a CPU profile"), "{cpu}");
    }
}
