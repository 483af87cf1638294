//! A stand-in for Pyroscope's ingest endpoint on loopback: it takes each
//! `POST /ingest` as the server would read it (query, headers, the
//! `multipart/form-data` body and its `profile` field) and lets the test
//! choose the answer, and when.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

/// The largest request read; a larger one is an error.
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// How long a request may take to arrive once its connection is open.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One push, as parsed.
#[derive(Debug)]
pub struct Push {
    /// The request's method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The `filename` of the `profile` part.
    pub filename: String,
    /// The `profile` part: the gzipped pprof profile.
    pub profile: Vec<u8>,
}

impl Push {
    /// The header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter `name`; panics if absent.
    pub fn param(&self, name: &str) -> &str {
        self.query
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in the query {:?}", self.query))
    }

    /// `from` and `until`, Unix seconds.
    pub fn from_until(&self) -> (u64, u64) {
        let n = |k| {
            self.param(k)
                .parse()
                .unwrap_or_else(|_| panic!("{k} is not a whole number: {:?}", self.query))
        };
        (n("from"), n("until"))
    }
}

/// A connection as the receiver reads and answers it: plain TCP, or TLS
/// over it.
trait Stream: Read + Write + Send {}

impl<T: Read + Write + Send> Stream for T {}

/// A request waiting for its answer: the test answers it with
/// [`Pending::answer`], or holds it to play a slow server (dropped
/// unanswered, the connection closes).
pub struct Pending {
    /// The push, or why it could not be read as one (over TLS, a failed
    /// handshake too).
    pub push: Result<Push, String>,
    stream: Box<dyn Stream>,
}

impl Pending {
    /// Answers with `status` and a text `body`, then closes the connection;
    /// returns the push (panics if the request was not a valid one). A
    /// client that gave up meanwhile is not an error.
    pub fn answer(self, status: u16, body: &str) -> Push {
        self.answer_with(status, &[], body)
    }

    /// [`Pending::answer`] with more header lines (`("Retry-After", "3")`).
    pub fn answer_with(mut self, status: u16, headers: &[(&str, &str)], body: &str) -> Push {
        let more: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             {more}Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = self.stream.write_all(reply.as_bytes());
        let _ = self.stream.flush();
        self.push
            .unwrap_or_else(|why| panic!("not a valid push: {why}"))
    }

    /// The push; panics, saying why, if the request was not a valid one.
    pub fn push(&self) -> &Push {
        match &self.push {
            Ok(p) => p,
            Err(why) => panic!("not a valid push: {why}"),
        }
    }
}

/// The receiver: a listener on `127.0.0.1` and a thread per connection.
pub struct Receiver {
    addr: SocketAddr,
    requests: mpsc::Receiver<Pending>,
    /// Over TLS: the PEM certificate of the authority that signed the
    /// receiver's.
    authority: Option<String>,
}

impl Receiver {
    /// Listens on a free loopback port.
    pub fn start() -> Receiver {
        Receiver::listen(None)
    }

    /// Listens on a free loopback port over TLS, with a certificate for
    /// `127.0.0.1` that an authority made for this receiver signed
    /// ([`Receiver::authority_pem`]): a client trusts it only if told to
    /// trust that authority.
    pub fn start_tls() -> Receiver {
        let authority_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "heapprof test authority");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let authority = rcgen::CertifiedIssuer::self_signed(params, authority_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &authority)
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Receiver::listen(Some((std::sync::Arc::new(config), authority.pem())))
    }

    fn listen(tls: Option<(std::sync::Arc<rustls::ServerConfig>, String)>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::channel();
        let (config, authority) = tls.unzip();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { continue };
                tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
                let tx = tx.clone();
                let config = config.clone();
                std::thread::spawn(move || {
                    let mut stream: Box<dyn Stream> = match config {
                        Some(config) => Box::new(rustls::StreamOwned::new(
                            rustls::ServerConnection::new(config).unwrap(),
                            tcp,
                        )),
                        None => Box::new(tcp),
                    };
                    let push = read_push(&mut stream);
                    let _ = tx.send(Pending { push, stream });
                });
            }
        });
        Receiver {
            addr,
            requests,
            authority,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://` over TLS, for `Pusher::new`.
    pub fn url(&self) -> String {
        let scheme = if self.authority.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Over TLS, the certificate (PEM) of the authority that signed the
    /// receiver's; panics otherwise.
    pub fn authority_pem(&self) -> &str {
        self.authority.as_deref().expect("a receiver over TLS")
    }

    /// The next request, if one arrives within `within`.
    pub fn next(&self, within: Duration) -> Option<Pending> {
        self.requests.recv_timeout(within).ok()
    }
}

/// Reads one request from `stream` and parses it as Pyroscope's ingest
/// handler would: the query, and the `profile` field of the form.
fn read_push(stream: &mut dyn Read) -> Result<Push, String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let (head_len, method, target, headers) = loop {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the client closed before a whole head".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(&bytes).map_err(|e| format!("head: {e}"))? {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(len) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    len,
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    headers,
                );
            }
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let length: usize = header("content-length")
        .ok_or("no Content-Length")?
        .parse()
        .map_err(|_| "a Content-Length that is not a number")?;
    if length > MAX_REQUEST_BYTES {
        return Err(format!("a body of {length} bytes"));
    }
    while bytes.len() < head_len + length {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the client closed before the whole body".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    let body = &bytes[head_len..head_len + length];
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let content_type = header("content-type").ok_or("no Content-Type")?;
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .ok_or_else(|| format!("Content-Type {content_type:?} is not multipart/form-data"))?;
    let (filename, profile) = form_file(body, boundary, "profile")?;
    Ok(Push {
        method,
        path: path.to_owned(),
        query,
        headers,
        filename,
        profile,
    })
}

/// The file field `field` of a `multipart/form-data` body: its file name
/// and contents. Every part must be well-formed, and the body must end
/// with the closing delimiter.
fn form_file(body: &[u8], boundary: &str, field: &str) -> Result<(String, Vec<u8>), String> {
    let delimiter = format!("--{boundary}");
    let rest = body
        .strip_prefix(delimiter.as_bytes())
        .ok_or("the body does not start with the boundary")?;
    let separator = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let mut rest = rest;
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let after_crlf = rest
            .strip_prefix(b"\r\n")
            .ok_or("no CRLF after a boundary")?;
        let end =
            find(after_crlf, separator.as_bytes()).ok_or("a part with no closing boundary")?;
        parts.push(&after_crlf[..end]);
        rest = &after_crlf[end + separator.len()..];
    }
    if !(rest == b"--" || rest == b"--\r\n") {
        return Err("text after the closing boundary".into());
    }
    let wanted = format!("name=\"{field}\"");
    for part in parts {
        let head_end = find(part, b"\r\n\r\n").ok_or("a part with no blank line")?;
        let head = String::from_utf8_lossy(&part[..head_end]);
        let disposition = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Disposition: form-data;"))
            .ok_or("a part with no Content-Disposition: form-data")?;
        if !disposition.split(';').any(|p| p.trim() == wanted) {
            continue;
        }
        let filename = disposition
            .split(';')
            .find_map(|p| p.trim().strip_prefix("filename=\""))
            .and_then(|f| f.strip_suffix('"'))
            .ok_or("the field is not a file (no filename)")?;
        return Ok((filename.to_owned(), part[head_end + 4..].to_vec()));
    }
    Err(format!("no field {field:?}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `%XX` decoded (and `+` as a space, as in a form).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}
