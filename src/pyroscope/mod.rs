//! Pushing heap profiles to Grafana Pyroscope, for jobs and hosts that no
//! scraper reaches (cargo feature `pyroscope`).
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! fn main() -> std::io::Result<()> {
//!     let pusher = heapprof::pyroscope::Pusher::new("http://pyroscope:4040", "my-service")
//!         .label("env", "prod")
//!         .every(std::time::Duration::from_secs(15))
//!         .start()?;
//!     // … the program …
//!     pusher.stop(); // pushes what happened since the last push
//!     Ok(())
//! }
//! ```
//!
//! or, with no code, from the environment (the pusher starts with the
//! first sampled allocation, its first push counts from the program's
//! start, and it pushes once more as the process exits):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `HEAPPROF_PYROSCOPE_URL` | the server (`http://…` or `https://…`); setting it turns pushing on |
//! | `HEAPPROF_PYROSCOPE_NAME` | the application name; the executable's file name if unset |
//! | `HEAPPROF_PYROSCOPE_LABELS` | `k=v,k=v` added to every profile; a key given twice keeps its last value |
//! | `HEAPPROF_PYROSCOPE_EVERY` | the period, `15s` by default ([`DEFAULT_EVERY`]) |
//! | `HEAPPROF_PYROSCOPE_TIMEOUT` | how long each step of a push may take, and the longest the exit waits for its last push: `10s` by default ([`DEFAULT_TIMEOUT`]) |
//! | `HEAPPROF_PYROSCOPE_USER`, `HEAPPROF_PYROSCOPE_PASSWORD` | basic authentication (Grafana Cloud: the stack's user id and an access token) |
//! | `HEAPPROF_PYROSCOPE_TOKEN` | a bearer token, for a proxy that wants one |
//! | `HEAPPROF_PYROSCOPE_TENANT` | the `X-Scope-OrgID` header of a multi-tenant Pyroscope |
//!
//! An `https://` server's certificate is checked against Mozilla's root
//! certificates, built in, or, when `SSL_CERT_FILE` names a PEM file (as
//! OpenSSL and curl read it), against the certificates in that file
//! instead, for every pusher, from the environment or the API: the way to
//! trust a private authority. The file is read as a pusher starts. One
//! that cannot be used is said in one line and the built-in roots are
//! kept (where OpenSSL would trust no server). `SSL_CERT_DIR` is not
//! read, nor `SSL_CERT_FILE` in a set-user-ID program.
//!
//! Each push is Pyroscope's ingest API, which the Pyroscope server and
//! Grafana Alloy's `pyroscope.receive_http` accept: `POST /ingest` with
//! `name=<name>{k=v,…}`, `from` and `until` (Unix seconds),
//! `format=pprof` and `spyName=heapprof`, the gzipped profile in the
//! `multipart/form-data` field `profile`. Its alloc values are what was
//! allocated since the previous successful push and its inuse values what
//! is live at the push (as godeltaprof's `delta_heap`), so Pyroscope's sums
//! of allocations over time count each one once. Pyroscope makes each
//! sample's labels ([`with_labels`](crate::with_labels), the `thread`
//! label) part of a series' name and refuses a whole push over one key
//! that is not `[A-Za-z_][A-Za-z0-9_]*`, so a push carries them with every
//! other ASCII character as `_` (`http.route` as `http_route`, `tenant-id`
//! as `tenant_id`) and every other character as its code point in hex,
//! `u` and four digits or `U` and eight (`é` as `u00e9`), and leaves out
//! a label whose key is then one the server sets (`service_name`,
//! `pyroscope_spy`, any starting with `__`), one of the pusher's own
//! labels, or an earlier label's. Profiles written or
//! served keep the keys as given.
//!
//! What it costs the program: one thread (`heapprof-push`, a
//! [`THREAD_STACK_BYTES`] stack) that is inside the profiler for good, so
//! nothing it allocates is profiled or counted as the program's; one copy
//! of the site table between pushes, and one profile during a push. The
//! program never waits for a push: the profile is built on that thread,
//! from a copy of the table taken as `write_profile` takes it, and no lock
//! is held across the network. A push that fails (the server is down,
//! slow past the [timeout](Pusher::timeout), or answers an error) is
//! reported on stderr at most once a minute ([`WARN_EVERY`]), and the
//! next push covers both periods: nothing is queued, and nothing is lost
//! but what the server did not take. The last push has no next one, so
//! its failure is always reported. A server that asks for time
//! (`Retry-After`, at most [`MAX_RETRY_AFTER`] is taken) gets no periodic
//! push before then (the last one, at [`stop`](PusherHandle::stop) or
//! exit, is made all the same); a redirect is reported, not followed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{self, report, report::Shown};
use crate::output::{self, Format, Mark, pprof};
use crate::support::own_thread::{self, OwnThread, Wake};
use crate::support::reentry;
use crate::support::this_process::ThisProcess;

/// The push period unless [`Pusher::every`] or `HEAPPROF_PYROSCOPE_EVERY`
/// says otherwise: Pyroscope's Go client uploads as often.
pub const DEFAULT_EVERY: Duration = config::DEFAULT_PYROSCOPE_EVERY;

/// The shortest period; a shorter one is raised to it.
pub const MIN_EVERY: Duration = config::MIN_PYROSCOPE_EVERY;

/// How long each step of a push may take (connecting, sending, waiting for
/// the answer, reading it) unless [`Pusher::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = config::DEFAULT_PYROSCOPE_TIMEOUT;

/// A failing push is reported on stderr at most this often; the report
/// says how many failed since the last one.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// The pusher thread's stack. Set here, not left to std's default, which
/// `RUST_MIN_STACK` may make too small: the thread builds profiles (the
/// first loads debug info) and runs a TLS handshake. Two MiB is std's
/// usual default and several times what a build takes (see `dump/`'s
/// measurement); only the pages touched become resident.
pub const THREAD_STACK_BYTES: usize = 2 << 20;

/// The longest period and timeout: a day. Longer ones are taken as this,
/// which keeps every deadline computable (an `Instant` plus
/// `Duration::MAX` overflows).
pub const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest request target (`/ingest?name=…&from=…`) a push may send:
/// proxies and servers commonly refuse request lines past 8 KiB, and the
/// HTTP client refuses a URI past 64 KiB outright. Checked by
/// [`Pusher::start`] against the name and labels, percent-encoded.
pub const MAX_REQUEST_TARGET_BYTES: usize = 8 * 1024;

/// The most of a failed push's answer quoted in its warning.
const QUOTED_ANSWER_BYTES: u64 = 200;

/// The longest wait a server's `Retry-After` gets (an hour): a longer
/// one, or a date further off, is taken as this, so that a server's typo
/// does not end the pushes for good.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// Settings of a push to Pyroscope; [`start`](Pusher::start) starts it.
#[derive(Clone)]
pub struct Pusher {
    url: String,
    name: String,
    labels: Vec<(String, String)>,
    every: Duration,
    timeout: Duration,
    basic_auth: Option<(String, String)>,
    bearer_token: Option<String>,
    tenant: Option<String>,
}

impl std::fmt::Debug for Pusher {
    /// Everything but the credentials, which are shown as set or not.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("url", &crate::config::without_credentials(&self.url))
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("every", &self.every)
            .field("timeout", &self.timeout)
            .field("basic_auth", &self.basic_auth.is_some())
            .field("bearer_token", &self.bearer_token.is_some())
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Pusher {
    /// Pushes to the Pyroscope server at `url` (`http://host:4040`,
    /// `https://profiles-….grafana.net`; `/ingest` is added) under the
    /// application name `name` (letters, digits, `_ . - /`), every
    /// [`DEFAULT_EVERY`].
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Pusher {
        Pusher {
            url: url.into(),
            name: name.into(),
            labels: Vec::new(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            basic_auth: None,
            bearer_token: None,
            tenant: None,
        }
    }

    /// Adds the label `key=value` to every profile (`env=prod`,
    /// `region=eu`). Keys are letters, digits, `_` and `.`, starting with a
    /// letter or `_` (not `__`), and not `service_name` or `pyroscope_spy`, which the
    /// server sets (the first from the name); values may not contain `,`
    /// or `}`. A key given twice keeps its last value.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Pusher {
        let key = key.into();
        self.labels.retain(|(k, _)| *k != key);
        self.labels.push((key, value.into()));
        self
    }

    /// Pushes every `period` (at least [`MIN_EVERY`], at most
    /// [`LONGEST`]; others are taken as the nearer bound).
    pub fn every(mut self, period: Duration) -> Pusher {
        self.every = period.clamp(MIN_EVERY, LONGEST);
        self
    }

    /// How long each step of a push may take: connecting, sending the
    /// request, waiting for the answer, reading it ([`DEFAULT_TIMEOUT`]).
    /// The host name is resolved as the system resolver bounds it. At
    /// least a millisecond, at most [`LONGEST`].
    pub fn timeout(mut self, timeout: Duration) -> Pusher {
        self.timeout = timeout.clamp(Duration::from_millis(1), LONGEST);
        self
    }

    /// Sends `Authorization: Basic` with `user` and `password` (Grafana
    /// Cloud: the stack's user id and an access token). A `user` with a
    /// `:` cannot be sent that way: [`start`](Pusher::start) refuses it.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Pusher {
        self.basic_auth = Some((user.into(), password.into()));
        self
    }

    /// Sends `Authorization: Bearer token`.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Pusher {
        self.bearer_token = Some(token.into());
        self
    }

    /// Sends `X-Scope-OrgID: tenant`, the tenant of a multi-tenant
    /// Pyroscope.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Pusher {
        self.tenant = Some(tenant.into());
        self
    }

    /// Starts the pushing thread. The first push covers what is allocated
    /// from now on; pushes go on until [`PusherHandle::stop`] or the end of
    /// the process (dropping the handle leaves them running).
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) for a URL that is not
    /// `http://` or `https://` (or has a query or a fragment), a name or
    /// label Pyroscope would refuse, a name and labels too long for a
    /// request line ([`MAX_REQUEST_TARGET_BYTES`]), credentials given more
    /// than one way (in the URL, basic authentication, a bearer token), or
    /// a header value with control characters; `Other` if heapprof is not the
    /// program's global allocator; if the thread cannot start, an error of
    /// the kind of the OS's (`WouldBlock` for `EAGAIN`) whose message says
    /// so and gives the OS's error.
    pub fn start(self) -> io::Result<PusherHandle> {
        self.check()?;
        output::check_installed()?;
        // The thread runs on a copy made inside the profiler, and the
        // program's settings are freed here, as the program's: its
        // `stats()` balance.
        let copy = reentry::Inside::enter_for(|| self.clone());
        drop(self);
        let started = {
            let _inside = reentry::Inside::enter();
            // The first period starts now: the copy is taken before
            // `start` returns, so that what the program allocates next is
            // in it.
            let mark = Mark::now();
            copy.spawn(mark)
        };
        // The message is the program's allocation: made outside the
        // profiler, as the program's `stats()` expect of what it frees.
        started.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("heapprof: cannot start the Pyroscope pusher's thread: {e}"),
            )
        })
    }

    /// Starts the thread, whose first period starts at `mark`. Inside the
    /// profiler.
    fn spawn(self, mark: Mark) -> io::Result<PusherHandle> {
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        });
        let seen = Arc::clone(&control);
        let thread = own_thread::spawn(c"heapprof-push", THREAD_STACK_BYTES, move |wake| {
            let url = crate::config::without_credentials(&self.url).into_owned();
            // Nothing the thread calls is known to panic; if something
            // does, the pushes end with a line saying so, and `stop` and
            // the push at exit do not wait for them.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(&seen, wake, mark)
            }));
            if ran.is_err() {
                report::warn(format_args!(
                    "heapprof: the Pyroscope pusher for {} stopped: it panicked (above)",
                    Shown::new(&*url)
                ));
            }
            seen.finished.store(true, Release);
        })?;
        Ok(PusherHandle { control, thread })
    }

    fn check(&self) -> io::Result<()> {
        let invalid = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        let url = crate::config::without_credentials(&self.url);
        let url = Shown::new(&*url);
        if !config::is_http_url(&self.url) || self.url.contains(['?', '#']) {
            return invalid(format!(
                "heapprof: Pusher URL {url}: expected http://host[:port][/path] or https://…, \
                 with no query or fragment"
            ));
        }
        let uri = match ureq::http::Uri::try_from(self.ingest_url()) {
            Ok(uri) => uri,
            Err(e) => return invalid(format!("heapprof: Pusher URL {url}: {e}")),
        };
        // The URI's grammar takes any digits for a port; a socket takes 1
        // to 65535, and a port past that would be reported as refused.
        if let Some(port) = port_of(uri.authority().map_or("", |a| a.as_str()))
            && !port.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return invalid(format!(
                "heapprof: Pusher URL {url}: port {} is not one from 1 to 65535",
                Shown::new(port)
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return invalid(format!("heapprof: Pusher URL {url}: no host"));
        }
        if !config::valid_service_name(&self.name) {
            return invalid(format!(
                "heapprof: Pusher name {}: Pyroscope takes letters, digits and _ . - / only",
                Shown::new(&self.name)
            ));
        }
        for (k, v) in &self.labels {
            if !config::valid_label_key(k) || !config::valid_label_value(v) {
                return invalid(format!(
                    "heapprof: Pusher label {}={}: keys are letters, digits, _ and ., starting \
                     with a letter or _ (not __), not service_name or pyroscope_spy (the server \
                     sets those); values are not empty, without , or }} or blanks at either end",
                    Shown::new(k),
                    Shown::new(v)
                ));
            }
        }
        let target = self.request_target_bytes();
        if target > MAX_REQUEST_TARGET_BYTES {
            return invalid(format!(
                "heapprof: Pusher: the URL, name and labels make a request target of {target} \
                 bytes, over the {MAX_REQUEST_TARGET_BYTES} servers and proxies take"
            ));
        }
        // A request has one Authorization header: the URL's
        // `user:password@` is sent as one, so another would take its
        // place without a word.
        let in_url = self.url_credentials().is_some();
        let set = [
            (in_url, "credentials in the URL"),
            (
                self.basic_auth.is_some(),
                "basic_auth (HEAPPROF_PYROSCOPE_USER and _PASSWORD)",
            ),
            (
                self.bearer_token.is_some(),
                "bearer_token (HEAPPROF_PYROSCOPE_TOKEN)",
            ),
        ];
        let mut set = set.iter().filter(|(is, _)| *is).map(|(_, what)| *what);
        if let (Some(one), Some(other)) = (set.next(), set.next()) {
            return invalid(format!(
                "heapprof: Pusher: {one} and {other} both set; a request has one Authorization \
                 header"
            ));
        }
        // Basic authentication joins the name and the password with `:`,
        // so a server reads the name up to the first one.
        let user_has_colon = match &self.basic_auth {
            Some((user, _)) => user.contains(':'),
            None => url_user_has_colon(&self.url),
        };
        if user_has_colon {
            return invalid(
                "heapprof: Pusher: the basic authentication user name has a `:`, where the \
                 server would end the name; Basic authentication cannot send it"
                    .into(),
            );
        }
        let mut headers = self.headers();
        if headers.any(|(_, v)| v.chars().any(|c| c.is_control())) {
            return invalid(
                "heapprof: Pusher: a credential or tenant has control characters".into(),
            );
        }
        Ok(())
    }

    /// `<url>/ingest`, without the URL's `user:password@` (sent as a
    /// header: [`Pusher::url_credentials`]).
    fn ingest_url(&self) -> String {
        let url = split_userinfo(&self.url)
            .map_or(std::borrow::Cow::Borrowed(&*self.url), |(_, url)| {
                std::borrow::Cow::Owned(url)
            });
        format!("{}/ingest", url.trim_end_matches('/'))
    }

    /// The URL's `user:password@` as Basic authentication sends it,
    /// `user:password` with each part percent-decoded to its bytes: a
    /// password with `@`, `:`, `/` or `%` (a token's base64) can only be
    /// written encoded there, and the server expects it as it is. `None`
    /// without one, or with an empty one (`http://@host`).
    fn url_credentials(&self) -> Option<Vec<u8>> {
        let (userinfo, _) = split_userinfo(&self.url)?;
        if userinfo.is_empty() {
            return None;
        }
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let mut pair: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
        pair.push(b':');
        pair.extend(percent_encoding::percent_decode_str(password));
        Some(pair)
    }

    /// The longest a push's URL can be: the ingest URL, and its query with
    /// every byte of the name and labels counted as percent-encoded when it
    /// may be, and the times at their longest.
    fn request_target_bytes(&self) -> usize {
        let encoded = |s: &str| {
            s.bytes()
                .map(|b| if b.is_ascii_alphanumeric() { 1 } else { 3 })
                .sum::<usize>()
        };
        let longest_time = u64::MAX.to_string().len();
        self.ingest_url().len()
            + "?name=&from=&until=&format=pprof&spyName=heapprof".len()
            + encoded(&self.name_with_labels())
            + 2 * longest_time
    }

    /// The `name` query parameter: the name and the labels, `name{k=v,…}`.
    fn name_with_labels(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    /// The headers a push carries besides its content type.
    fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        use base64::Engine as _;
        let pair = match &self.basic_auth {
            Some((user, password)) => Some(format!("{user}:{password}").into_bytes()),
            None => self.url_credentials(),
        };
        let basic = pair.map(|pair| {
            let pair = base64::engine::general_purpose::STANDARD.encode(pair);
            ("Authorization", format!("Basic {pair}"))
        });
        let bearer = self
            .bearer_token
            .as_ref()
            .map(|token| ("Authorization", format!("Bearer {token}")));
        let tenant = self.tenant.clone().map(|t| ("X-Scope-OrgID", t));
        basic.into_iter().chain(bearer).chain(tenant)
    }

    /// The pushing thread: a push every period, and a last one when told
    /// to stop.
    fn run(self, control: &Control, wake: &Wake, mut mark: Mark) {
        let client = Client::new(&self);
        let mut failures = Failures::default();
        let mut next = Instant::now() + self.every;
        loop {
            while !control.stop.load(Acquire) {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // Woken early by `stop`; a spurious wake-up only looks
                // again.
                wake.wait(left);
            }
            let stopping = control.stop.load(Acquire);
            let mut asked_to_wait = None;
            match client.push(&self, &mark) {
                Ok(now) => {
                    mark = now;
                    failures.succeeded();
                }
                Err(failed) => {
                    asked_to_wait = failed.retry_after;
                    let url = crate::config::without_credentials(&self.url);
                    failures.failed(&url, &failed.why, stopping);
                }
            }
            if stopping {
                control.finished.store(true, Release);
                return;
            }
            // The next push is a period after this one was due; if
            // pushing took longer than a period, a period from now: missed
            // pushes are not made up (the next one covers their time). A
            // server that asked for none before a time gets none.
            next += self.every;
            let now = Instant::now();
            if next <= now {
                next = now + self.every;
            }
            if let Some(wait) = asked_to_wait {
                next = next.max(now + wait);
            }
        }
    }
}

/// What a pusher and its handle share.
struct Control {
    /// Set by the handle (or at exit): push once more and end.
    stop: AtomicBool,
    /// Set by the thread once that last push is over.
    finished: AtomicBool,
}

/// A running [`Pusher`].
#[derive(Debug)]
pub struct PusherHandle {
    control: Arc<Control>,
    thread: OwnThread,
}

// Programs keep the handle in a static or move it to another thread, on
// every C library.
const _: () = {
    const fn shared_by_threads<T: Send + Sync>() {}
    shared_by_threads::<PusherHandle>()
};

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stop", &self.stop.load(Relaxed))
            .finish()
    }
}

impl PusherHandle {
    /// Pushes what happened since the last push, and ends the thread:
    /// returns once the thread has exited, after a push in flight, if
    /// any, and then this last one are over. Each step of a push
    /// (connecting, sending, waiting for the answer, reading it) is
    /// bounded by the [timeout](Pusher::timeout), not the push as a
    /// whole: a server that accepts and never answers holds `stop` up to
    /// twice the timeout, one that answers each step just in time longer.
    /// Call it before the program ends, or the last period is not pushed.
    /// In a child forked after `start`, which has no copy of the thread,
    /// it returns at once.
    pub fn stop(self) {
        let _inside = reentry::Inside::enter();
        // Taken apart after the guard, so that what it holds is freed
        // inside the profiler, as heapprof's.
        let PusherHandle { control, thread } = self;
        control.stop.store(true, Release);
        if !thread.started_here() {
            // The thread is the parent's; its wake's lock may have been
            // held at the fork.
            return;
        }
        thread.wake().wake();
        thread.join();
    }
}

/// The largest `SSL_CERT_FILE` read: a system's whole bundle is a few
/// hundred KiB.
const MAX_ROOTS_FILE_BYTES: u64 = 16 << 20;

/// The root certificates in the file `SSL_CERT_FILE` names
/// ([`config::tls_roots_file`]), to trust instead of those built in;
/// `None` to keep those: the variable unset, or its file one [`roots_from`]
/// refuses, which is said once.
fn roots_from_file() -> Option<ureq::tls::RootCerts> {
    let path = config::tls_roots_file()?;
    match roots_from(std::path::Path::new(&path)) {
        Ok(roots) => Some(roots),
        Err(why) => {
            static SAID: report::Once = report::Once::new();
            SAID.warn(format_args!(
                "heapprof: ignoring SSL_CERT_FILE={}: {why}; https:// servers are checked \
                 against the root certificates built in",
                Shown::path(&path)
            ));
            None
        }
    }
}

/// The root certificates in the PEM file at `path`, or why there are
/// none: the file is missing or unreadable, is not a regular file (looked
/// at before it is opened, so that no device or FIFO is opened: a FIFO
/// would hold the pushing thread, and the program's exit with it), is
/// larger than [`MAX_ROOTS_FILE_BYTES`], is not PEM, or has no
/// `CERTIFICATE` block that TLS can take for a root (the HTTP client
/// leaves out those it cannot, and none would trust no server).
fn roots_from(path: &std::path::Path) -> Result<ureq::tls::RootCerts, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let regular = |m: std::fs::Metadata| {
        m.is_file()
            .then_some(())
            .ok_or_else(|| "not a regular file".to_owned())
    };
    regular(std::fs::metadata(path).map_err(|e| e.to_string())?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    regular(file.metadata().map_err(|e| e.to_string())?)?;
    let mut pem = Vec::new();
    file.take(MAX_ROOTS_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| e.to_string())?;
    if pem.len() as u64 > MAX_ROOTS_FILE_BYTES {
        return Err(format!("larger than {MAX_ROOTS_FILE_BYTES} bytes"));
    }
    let mut found = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => found.push(c),
            Ok(_) => {}
            // The parser's own words quote the file's bytes at length.
            Err(_) => {
                return Err("not PEM (a section without its END line, or bad base64)".into());
            }
        }
    }
    let mut store = rustls::RootCertStore::empty();
    let (usable, _) = store.add_parsable_certificates(
        found
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.der())),
    );
    if usable == 0 {
        return Err("no PEM CERTIFICATE block in it that can be a root".into());
    }
    Ok(ureq::tls::RootCerts::from(found))
}

/// A push's HTTP client: ureq, with a connection of its own per push, a
/// timeout on each step of the exchange but none on name resolution,
/// which ureq would otherwise run on a thread of its own (outside the
/// profiler: its allocations would be counted as the program's).
struct Client {
    agent: ureq::Agent,
    /// Which roots a server's certificate is checked against, said with
    /// a failure that names a certificate.
    roots: &'static str,
}

impl Client {
    fn new(settings: &Pusher) -> Client {
        let t = Some(settings.timeout);
        let agent = ureq::Agent::config_builder()
            .timeout_connect(t)
            .timeout_send_request(t)
            .timeout_send_body(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
            .http_status_as_error(false)
            .max_redirects(0)
            // No connection outlives its push: an idle one is a descriptor
            // that a program closing every descriptor it did not open (a
            // daemon) closes and gives to a file of its own, into which
            // the next push would be written. One connection per period
            // costs a handshake per period.
            .max_idle_connections(0)
            .user_agent(concat!("heapprof/", env!("CARGO_PKG_VERSION")));
        let https = settings
            .url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let (agent, roots) = match https.then(roots_from_file).flatten() {
            Some(roots) => (
                agent.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build()),
                "checked against SSL_CERT_FILE's roots",
            ),
            None => (
                agent,
                "checked against the built-in roots; SSL_CERT_FILE names others",
            ),
        };
        Client {
            agent: agent.build().into(),
            roots,
        }
    }

    /// Pushes the profile of the period since `since`; returns the mark
    /// where the next period starts.
    fn push(&self, settings: &Pusher, since: &Mark) -> Result<Mark, Failed> {
        let now = Mark::now();
        let mut profile = Vec::new();
        // Pyroscope makes each sample's labels part of a series' name, and
        // refuses the whole profile for one key it does not accept or one
        // the push's own labels have.
        let options = pprof::Options {
            series_label_keys: Some(
                settings
                    .labels
                    .iter()
                    .filter_map(|(key, _)| pprof::series_key(key))
                    .collect(),
            ),
            ..pprof::Options::default()
        };
        output::write(
            output::alloc_delta(&now, Some(since)),
            Format::Pprof,
            options,
            &mut profile,
        )
        .map_err(|e| Failed::because(format!("could not build the profile: {e}")))?;
        let (content_type, body) = multipart(&profile);
        drop(profile);
        let mut request = self
            .agent
            .post(settings.ingest_url())
            .query("name", settings.name_with_labels())
            .query("from", unix_seconds(since.wall).to_string())
            .query("until", unix_seconds(now.wall).to_string())
            .query("format", "pprof")
            .query("spyName", "heapprof")
            .content_type(content_type);
        for (name, value) in settings.headers() {
            request = request.header(name, value);
        }
        let mut response = request.send(&body[..]).map_err(|e| {
            let why = e.to_string();
            if why.contains("certificate") {
                Failed::because(format!("{why} ({})", self.roots))
            } else {
                Failed::because(why)
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(now);
        }
        let header = |name| {
            response
                .headers()
                .get(name)?
                .to_str()
                .ok()
                .map(str::to_owned)
        };
        let retry_after = header("retry-after")
            .and_then(|value| retry_after(&value, SystemTime::now()))
            .filter(|wait| !wait.is_zero());
        let mut why = if status.is_redirection() {
            // Following would send the profile and the credentials
            // wherever the answer points.
            // Masked whole, then cut: a password may run past the cut. A
            // query or fragment may carry a token: only its place is shown.
            let to = header("location").map(|to| {
                let to = match to.find(['?', '#']) {
                    Some(at) => format!("{}{}…", &to[..at], &to[at..=at]),
                    None => to,
                };
                quoted(config::without_credentials(&to).as_bytes())
            });
            format!(
                "the server answered {status}, to {:?}; a push follows no redirect: set the URL \
                 to where it points",
                to.unwrap_or_default()
            )
        } else {
            // The start of a longer answer (a proxy's error page), not
            // nothing.
            let mut start = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut std::io::Read::take(response.body_mut().as_reader(), QUOTED_ANSWER_BYTES),
                &mut start,
            );
            format!("the server answered {status}: {:?}", quoted(&start))
        };
        if let Some(wait) = retry_after {
            why += &format!(
                "; it asked for no push for {} s (Retry-After), and gets none before then but \
                 the last one",
                wait.as_secs_f64().ceil()
            );
        }
        Err(Failed { why, retry_after })
    }
}

/// A push that did not get through.
struct Failed {
    /// Why, for the warning.
    why: String,
    /// How long the server asked to be left alone (`Retry-After`).
    retry_after: Option<Duration>,
}

impl Failed {
    fn because(why: String) -> Failed {
        Failed {
            why,
            retry_after: None,
        }
    }
}

/// Up to [`QUOTED_ANSWER_BYTES`] of what a server sent, as one line of
/// text: trimmed, without control characters, nor the invisible ones
/// that reorder or hide the text around them on a terminal.
fn quoted(bytes: &[u8]) -> String {
    let start = &bytes[..bytes.len().min(QUOTED_ANSWER_BYTES as usize)];
    // Unicode's format characters and line and paragraph separators.
    let invisible = |c: char| {
        matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
    };
    let kept: String = String::from_utf8_lossy(start)
        .chars()
        .filter(|&c| !c.is_control() && !invisible(c))
        .collect();
    kept.trim().to_owned()
}

/// The wait a `Retry-After` value asks for at `now`: a number of seconds,
/// or an HTTP date (a date past is no wait); at most [`MAX_RETRY_AFTER`].
/// `None` for anything else.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // Digits past what a u64 holds are a wait past the bound.
        Duration::from_secs(value.parse().unwrap_or(u64::MAX))
    } else {
        let until = httpdate::parse_http_date(value).ok()?;
        until.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Seconds since the Unix epoch, the unit of `from` and `until`.
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The request body: `profile` as the form file field `profile` of a
/// `multipart/form-data` body, and its content type. The boundary is
/// chosen so that it does not occur in the profile.
fn multipart(profile: &[u8]) -> (String, Vec<u8>) {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let boundary = loop {
        // splitmix64: well-mixed bits from a counter.
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let b = format!("heapprof-{:016x}", z ^ (z >> 31));
        if !profile.windows(b.len()).any(|w| w == b.as_bytes()) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(profile.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(profile);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Whether the user name of `url`'s `user:password@`, decoded, has a `:`
/// (written `%3A` there).
fn url_user_has_colon(url: &str) -> bool {
    let Some((userinfo, _)) = split_userinfo(url) else {
        return false;
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    percent_encoding::percent_decode_str(user).any(|b| b == b':')
}

/// `url`'s `user:password` and `url` without its `user:password@`
/// ([`config::userinfo_at`]); `None` if it has none.
fn split_userinfo(url: &str) -> Option<(&str, String)> {
    let (start, at) = config::userinfo_at(url)?;
    Some((
        &url[start..at],
        format!("{}{}", &url[..start], &url[at + 1..]),
    ))
}

/// The port an authority (`user@host:port`, `[::1]:port`) names, as
/// written; `None` without one (or with an empty one, the default).
fn port_of(authority: &str) -> Option<&str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = host_port.rsplit_once(':')?;
    // A colon inside an IPv6 literal's brackets is not the port's.
    let outside_brackets = !host.starts_with('[') || host.ends_with(']');
    (outside_brackets && !port.is_empty()).then_some(port)
}

/// Failed pushes, reported at most once per [`WARN_EVERY`], and the last
/// one (at `stop` or exit) always: no push comes after it to cover its
/// period.
#[derive(Default)]
struct Failures {
    last_report: Option<Instant>,
    /// Failures since the last report.
    unreported: u64,
}

impl Failures {
    fn failed(&mut self, url: &str, error: &str, last: bool) {
        self.unreported += 1;
        if !last && self.last_report.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        let others = match self.unreported - 1 {
            0 => String::new(),
            n => format!(" ({n} more failed since the last report)"),
        };
        let (which, then) = if last {
            (
                "the last profile",
                "the allocations since the last push that succeeded are not pushed",
            )
        } else {
            (
                "the profile",
                "the next push covers this period too; reported at most once a minute",
            )
        };
        report::warn(format_args!(
            "heapprof: could not push {which} to Pyroscope at {}: {error}{others}; {then}",
            Shown::new(url)
        ));
        self.last_report = Some(Instant::now());
        self.unreported = 0;
    }

    fn succeeded(&mut self) {
        self.unreported = 0;
    }
}

// ---- From the environment -------------------------------------------------

/// The pusher the environment started, for the push at exit: its control,
/// its thread, its timeout, and the process that started it.
static FROM_ENV: std::sync::OnceLock<(Arc<Control>, Arc<Wake>, Duration, ThisProcess)> =
    std::sync::OnceLock::new();

/// Starts the pusher `HEAPPROF_PYROSCOPE_URL` asks for, once. Called from
/// the sampled path (never the first allocation), so the runtime is up;
/// as `dump::start_from_env`, not on a thread whose thread-locals are being
/// torn down, and a panic while spawning is caught and reported.
pub(crate) fn start_from_env() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    let c = &config::get().pyroscope;
    let Some(url) = &c.url else {
        return;
    };
    if !crate::thread::alive() || STARTED.swap(true, Relaxed) {
        return;
    }
    if !crate::support::this_process::is_first() {
        report::warn(format_args!(
            "heapprof: HEAPPROF_PYROSCOPE_URL is set, but this process was forked (without \
             exec) from the one heapprof started in, whose pusher it is: nothing is pushed from \
             here; start a pusher with the API (Pusher::start) after forking"
        ));
        return;
    }
    let mut pusher = Pusher::new(url.clone(), c.name.clone().unwrap_or_else(exe_name))
        .every(c.every)
        .timeout(c.timeout);
    // A key given twice keeps its last value, as `Pusher::label` has it.
    for (key, value) in &c.labels {
        pusher = pusher.label(key, value);
    }
    pusher.basic_auth = c.basic_auth.clone();
    pusher.bearer_token = c.token.clone();
    pusher.tenant = c.tenant.clone();
    fit_request_target(&mut pusher, c.name.is_some());
    let timeout = pusher.timeout;
    // The first period starts at the program's start, as `delta_heap`'s
    // first scrape does: what was allocated before this sample started
    // the pusher is in the first push. That mark copies nothing, here in
    // the allocator's slow path; and the check that heapprof is installed
    // is moot.
    let started = std::panic::catch_unwind(move || {
        pusher.check().and_then(|()| pusher.spawn(Mark::at_start()))
    })
    .unwrap_or_else(|_| Err(io::Error::other("spawning the thread panicked")));
    match started {
        Ok(handle) => {
            let _ = FROM_ENV.set((
                Arc::clone(&handle.control),
                Arc::clone(handle.thread.wake()),
                timeout,
                ThisProcess::get(),
            ));
            // SAFETY: `push_at_exit` is an `extern "C" fn()` that never
            // unwinds.
            unsafe {
                libc::atexit(push_at_exit);
            }
        }
        Err(e) => {
            let why = e.to_string();
            report::warn(format_args!(
                "heapprof: HEAPPROF_PYROSCOPE_URL is set, but the pusher could not start: {}",
                why.strip_prefix("heapprof: ").unwrap_or(&why)
            ));
        }
    }
}

/// Falls back to the defaults of `HEAPPROF_PYROSCOPE_NAME` (the
/// executable's name; `named` says it was set) and then of
/// `HEAPPROF_PYROSCOPE_LABELS` (none) while the request target is over
/// [`MAX_REQUEST_TARGET_BYTES`], a line on stderr for each; the name
/// first only where it is too long without the labels. A URL too long
/// alone is left for [`Pusher::check`] to refuse.
fn fit_request_target(pusher: &mut Pusher, named: bool) {
    let fits = |p: &Pusher| p.request_target_bytes() <= MAX_REQUEST_TARGET_BYTES;
    let fallback = |name: &str, instead: &str| {
        report::warn(format_args!(
            "heapprof: ignoring {name}: with the URL and the other settings it makes a request \
             target over the {MAX_REQUEST_TARGET_BYTES} bytes servers and proxies take; {instead}"
        ));
    };
    if fits(pusher) {
        return;
    }
    let labels = std::mem::take(&mut pusher.labels);
    if named && !fits(pusher) {
        fallback("HEAPPROF_PYROSCOPE_NAME", "using the executable's name");
        pusher.name = exe_name();
    }
    pusher.labels = labels;
    if !fits(pusher) && !pusher.labels.is_empty() {
        fallback("HEAPPROF_PYROSCOPE_LABELS", "pushing no labels");
        pusher.labels.clear();
    }
}

/// The executable's file name, the application name when
/// `HEAPPROF_PYROSCOPE_NAME` is unset: letters, digits and `_ . - /` kept,
/// anything else made `_`.
fn exe_name() -> String {
    let name = crate::support::mappings::executable_path()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "heapprof".to_owned()
    } else {
        name
    }
}

/// At exit: tells the environment's pusher to push what happened since
/// its last push, and waits for that push at most the pusher's timeout
/// ([`DEFAULT_TIMEOUT`]), so that a short job's last period reaches the
/// server. A forked child that exits does not push: it has no pusher
/// thread.
extern "C" fn push_at_exit() {
    let Some((control, wake, timeout, process)) = FROM_ENV.get() else {
        return;
    };
    if !process.is_current() || control.finished.load(Acquire) {
        return;
    }
    if crate::support::lock::any_lock_held()
        || crate::support::signals::signal_being_handled().is_some()
    {
        // `exit` from a signal handler that interrupted heapprof while it
        // held a lock (the push would build a profile, which waits for
        // that lock, while this thread waits for the push), or that may
        // have interrupted the inner allocator holding its own: the exit
        // dump says so (`dump::at_exit`).
        return;
    }
    control.stop.store(true, Release);
    wake.wake();
    let deadline = Instant::now() + *timeout;
    while !control.finished.load(Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !control.finished.load(Acquire) {
        // The pusher's own report of its failure would come after the
        // process is gone.
        crate::config::report::warn(format_args!(
            "heapprof: pyroscope: the push at exit did not end within {timeout:?} (building the \
             profile, then the server's answer); what happened since the last push may not \
             have reached the server (HEAPPROF_PYROSCOPE_TIMEOUT sets the wait)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SSL_CERT_FILE`'s file: used only when it has a certificate TLS
    /// can take for a root; anything else is refused with the reason, and
    /// nothing but a regular file is opened.
    #[test]
    fn roots_come_only_from_a_regular_file_with_a_usable_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let authority = rcgen::generate_simple_self_signed(vec!["authority".to_owned()]).unwrap();
        let good = file("good.pem", &format!("junk\n{}", authority.cert.pem()));
        match roots_from(&good) {
            Ok(ureq::tls::RootCerts::Specific(certs)) => assert_eq!(certs.len(), 1),
            other => panic!("{:?}", other.map(|_| "other roots")),
        }
        let fifo = dir.path().join("fifo.pem");
        let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path it is given.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        // "hello" in base64: a block that is no certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let cut = authority.cert.pem();
        let cut = &cut[..cut.len() / 2];
        for (path, why) in [
            (dir.path().join("missing.pem"), "No such file"),
            (dir.path().to_path_buf(), "not a regular file"),
            (fifo, "not a regular file"),
            (
                file("text.pem", "no certificate\n"),
                "no PEM CERTIFICATE block",
            ),
            (
                file("key.pem", &authority.signing_key.serialize_pem()),
                "no PEM CERTIFICATE block",
            ),
            (file("not_der.pem", not_der), "no PEM CERTIFICATE block"),
            (file("cut.pem", cut), "not PEM"),
        ] {
            match roots_from(&path) {
                Err(said) => assert!(said.contains(why), "{path:?}: {said}"),
                Ok(_) => panic!("{path:?} taken"),
            }
        }
    }

    #[test]
    fn checks_what_pyroscope_would_refuse() {
        let ok = Pusher::new("http://127.0.0.1:4040/", "my-app.v2/x").label("env", "prod=1");
        ok.check().unwrap();
        Pusher::new("http://[::1]:65535", "a").check().unwrap();
        Pusher::new("http://[::1]/", "a").check().unwrap();
        Pusher::new("http://u:p@x:1/", "a").check().unwrap();
        Pusher::new("HTTP://x", "a").check().unwrap();
        Pusher::new("Https://x", "a").check().unwrap();
        assert_eq!(ok.ingest_url(), "http://127.0.0.1:4040/ingest");
        let with_user = Pusher::new("https://u%401:a%2Fb:c@x:4040/p/", "a");
        assert_eq!(with_user.ingest_url(), "https://x:4040/p/ingest");
        let credentials = with_user.url_credentials();
        assert_eq!(credentials.as_deref(), Some(&b"u@1:a/b:c"[..]));
        // Bytes as written, not text: `%ff` is one byte, `%` alone stays.
        let raw = Pusher::new("http://u:%ff%25x%@h", "a").url_credentials();
        assert_eq!(raw.as_deref(), Some(&b"u:\xff%x%"[..]));
        assert_eq!(Pusher::new("http://@h", "a").url_credentials(), None);
        assert_eq!(ok.name_with_labels(), "my-app.v2/x{env=prod=1}");
        let bad = [
            Pusher::new("pyroscope:4040", "a"),
            Pusher::new("ftp://x", "a"),
            Pusher::new("http://x/?a=b", "a"),
            Pusher::new("http://x/#top", "a"),
            Pusher::new("http://127.0.0.1:99999", "a"),
            Pusher::new("http://127.0.0.1:0", "a"),
            Pusher::new("http://x", "a".repeat(MAX_REQUEST_TARGET_BYTES)),
            Pusher::new("http://x", ""),
            Pusher::new("http://x", "my app"),
            Pusher::new("http://x", "a").label("e nv", "x"),
            Pusher::new("http://:4040", "a"),
            Pusher::new("http://u:p@:4040", "a"),
            Pusher::new("http://x", "a").label("__name__", "x"),
            Pusher::new("http://x", "a").label("__x", "x"),
            Pusher::new("http://x", "a").label("9k", "x"),
            Pusher::new("http://x", "a").label("service_name", "x"),
            Pusher::new("http://x", "a").label("pyroscope_spy", "x"),
            Pusher::new("http://x", "a").label("k", "a,b"),
            Pusher::new("http://x", "a").label("k", "a}"),
            Pusher::new("http://x", "a").label("k", ""),
            Pusher::new("http://x", "a").tenant("t\r\nX: y"),
            Pusher::new("http://x", "a")
                .basic_auth("u", "p")
                .bearer_token("t"),
            Pusher::new("http://u:p@x", "a").bearer_token("t"),
            Pusher::new("http://u@x", "a").basic_auth("v", "q"),
            Pusher::new("http://us%3Aer:p@x", "a"),
            Pusher::new("http://x", "a").basic_auth("us:er", "p"),
        ];
        for p in bad {
            let e = p.check().expect_err(&format!("{p:?}"));
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{p:?}: {e}");
        }
    }

    /// A server's answer is quoted without what would reorder or hide
    /// the text of the line on a terminal.
    #[test]
    fn quoted_answers_lose_invisible_characters() {
        let answer = "\u{200b} busy\u{202e}yrt\u{2028} \u{2066}again\r\n\u{1b}[2J".as_bytes();
        assert_eq!(quoted(answer), "busyyrt again[2J");
    }

    #[test]
    fn settings_from_the_environment_fall_back_until_the_request_target_fits() {
        let long = "n".repeat(MAX_REQUEST_TARGET_BYTES);
        // The name is too long alone: the executable's, labels kept.
        let mut p = Pusher::new("http://x", long.clone()).label("env", "ci");
        fit_request_target(&mut p, true);
        assert_eq!((p.name.as_str(), p.labels.len()), (exe_name().as_str(), 1));
        p.check().unwrap();
        // The labels are: none, the name kept.
        let mut p = Pusher::new("http://x", "app").label("k", "é".repeat(2_000));
        fit_request_target(&mut p, true);
        assert_eq!((p.name.as_str(), p.labels.len()), ("app", 0));
        p.check().unwrap();
        // Neither alone, both together: the labels go, the name stays.
        let half = "n".repeat(MAX_REQUEST_TARGET_BYTES / 2);
        let mut p = Pusher::new("http://x", half.clone()).label("k", half.clone());
        fit_request_target(&mut p, true);
        assert_eq!((p.name.as_str(), p.labels.len()), (half.as_str(), 0));
        // A URL too long alone is left for `check` to refuse.
        let mut p = Pusher::new(format!("http://x/{long}"), "app").label("env", "ci");
        fit_request_target(&mut p, false);
        assert!(p.check().is_err());
    }

    #[test]
    fn a_request_target_is_counted_at_its_longest() {
        let p = Pusher::new("http://x:1/", "a.b").label("k", "v");
        // The bound counts every byte of the name but letters and digits
        // as encoded (`a.b{k=v}` as `a%2Eb%7Bk%3Dv%7D`; the client may leave
        // `.` as it is) and the times at 20 digits each.
        let bound = "http://x:1/ingest?name=&from=&until=&format=pprof&spyName=heapprof".len()
            + "a%2Eb%7Bk%3Dv%7D".len()
            + 40;
        assert_eq!(p.request_target_bytes(), bound);
        let longest = Pusher::new("http://x", "a".repeat(MAX_REQUEST_TARGET_BYTES - 200));
        longest.check().unwrap();
    }

    #[test]
    fn credentials_stay_out_of_messages() {
        assert_eq!(
            crate::config::without_credentials("https://user:s3cret@host:443/p@x"),
            "https://…@host:443/p@x"
        );
        assert_eq!(
            crate::config::without_credentials("http://host/a@b"),
            "http://host/a@b"
        );
        assert_eq!(crate::config::without_credentials("not a url"), "not a url");
        assert_eq!(
            crate::config::without_credentials("//user:s3cret@host/p"),
            "//…@host/p"
        );
        let p = Pusher::new("http://u:pw@h", "a");
        assert!(!format!("{p:?}").contains("pw"), "{p:?}");
    }

    #[test]
    fn periods_and_timeouts_are_bounded() {
        let p = Pusher::new("http://x", "a")
            .every(Duration::MAX)
            .timeout(Duration::MAX);
        assert_eq!((p.every, p.timeout), (LONGEST, LONGEST));
        let p = Pusher::new("http://x", "a")
            .every(Duration::ZERO)
            .timeout(Duration::ZERO);
        assert_eq!((p.every, p.timeout), (MIN_EVERY, Duration::from_millis(1)));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_at_most_an_hour() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = Duration::from_secs;
        assert_eq!(retry_after("120", now), Some(secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(secs(0)));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let later = httpdate::fmt_http_date(now + secs(90));
        assert_eq!(retry_after(&later, now), Some(secs(90)));
        let earlier = httpdate::fmt_http_date(now - secs(90));
        assert_eq!(retry_after(&earlier, now), Some(secs(0)));
        let far = httpdate::fmt_http_date(now + secs(7 * 24 * 3600));
        assert_eq!(retry_after(&far, now), Some(MAX_RETRY_AFTER));
        for malformed in ["", "-5", "1.5", "soon", "Tue, 99 Foo 2026"] {
            assert_eq!(retry_after(malformed, now), None, "{malformed:?}");
        }
    }

    #[test]
    fn labels_replace_and_keep_order() {
        let p = Pusher::new("http://x", "a")
            .label("b", "1")
            .label("a", "2")
            .label("b", "3");
        assert_eq!(p.name_with_labels(), "a{a=2,b=3}");
        assert_eq!(Pusher::new("http://x", "a").name_with_labels(), "a{}");
    }

    #[test]
    fn multipart_wraps_the_profile() {
        let profile = b"\x1f\x8b some bytes --heapprof- \r\n--";
        let (content_type, body) = multipart(profile);
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        let head = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"");
        assert!(body.starts_with(&head), "{body}");
        assert!(body.ends_with(&format!("\r\n--{boundary}--\r\n")), "{body}");
        assert!(body.contains(&*String::from_utf8_lossy(profile)));
    }

    #[test]
    fn basic_auth_header() {
        let p = Pusher::new("http://x", "a").basic_auth("Aladdin", "open sesame");
        let headers: Vec<_> = p.headers().collect();
        assert_eq!(
            headers,
            [(
                "Authorization",
                "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".to_owned()
            )]
        );
    }
}
