//! The load generator for the `service` workload (`common/service.rs`):
//! a closed loop over keep-alive HTTP/1.1 connections on loopback, each
//! sending its next order as soon as the previous quote has arrived, with
//! every request's latency recorded; and, when asked, a scraper fetching
//! `/debug/pprof/heap` once a second meanwhile, on a connection of its own.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

/// Requests each connection sends before the timed part (the service's
/// first allocations, caches and the connection's own start).
pub const WARM_UP_PER_CONNECTION: usize = 50;
/// How often the scraper fetches the heap profile.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Items in each generated order.
const ITEMS_PER_ORDER: usize = 10;

/// What a run measured.
pub struct Load {
    /// Every timed request's latency in ns, sorted.
    pub latencies_ns: Vec<u64>,
    /// From the first timed request's start to the last one's end, in ns.
    pub wall_ns: u64,
    /// Each timed scrape's duration in ns, in order.
    pub scrapes_ns: Vec<u64>,
    /// The duration of the scrape between the warm-up and the timed
    /// requests, in ns, if the run scraped.
    pub first_scrape_ns: Option<u64>,
}

impl Load {
    /// The latency below which `percent` of the requests completed.
    pub fn percentile_ns(&self, percent: f64) -> u64 {
        let n = self.latencies_ns.len();
        let rank = ((percent / 100.0) * n as f64).ceil() as usize;
        self.latencies_ns[rank.clamp(1, n) - 1]
    }

    pub fn requests_per_second(&self) -> f64 {
        self.latencies_ns.len() as f64 / (self.wall_ns as f64 / 1e9)
    }
}

/// The `i`-th order of the load: [`ITEMS_PER_ORDER`] items, about 600 bytes
/// of JSON.
pub fn order(i: usize) -> String {
    let items: Vec<String> = (0..ITEMS_PER_ORDER)
        .map(|k| {
            format!(
                r#"{{"sku":"sku-{}-{}","quantity":{},"gift":{}}}"#,
                (i * 31 + k * 7) % 500,
                ["red", "blue", "large", "small"][k % 4],
                1 + (i + k) % 5,
                k % 3 == 0
            )
        })
        .collect();
    format!(
        r#"{{"id":"order-{i}","currency":"EUR","customer":{{"id":{},"name":"Customer {}","tier":"{}"}},"items":[{}],"notes":"leave at the door"}}"#,
        i % 10_000,
        i % 10_000,
        ["gold", "silver", "bronze"][i % 3],
        items.join(",")
    )
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    pub fn open(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response: the status and the body.
    /// The response must have a `Content-Length` (axum sets one on a body
    /// of known size, as both routes' are).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        close: bool,
    ) -> io::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        if close {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.writer.write_all(&bytes)?;

        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(&format!("status line {line:?}")))?;
        let mut length = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(invalid("the connection closed inside the head"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok();
            }
        }
        let length: usize = length.ok_or_else(|| invalid("no Content-Length"))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

/// `GET /debug/pprof/heap` on a connection of its own; the gzipped profile,
/// or an error if the answer is not one.
pub fn scrape_heap(port: u16) -> io::Result<Vec<u8>> {
    let (status, body) = Connection::open(port)?.request("GET", "/debug/pprof/heap", b"", true)?;
    if status != 200 || !body.starts_with(&[0x1f, 0x8b]) {
        return Err(io::Error::other(format!(
            "/debug/pprof/heap answered {status} with {} bytes, not a gzipped profile",
            body.len()
        )));
    }
    Ok(body)
}

/// `requests` orders over `connections` connections (the remainder to the
/// first ones), closed loop, after [`WARM_UP_PER_CONNECTION`] each; with
/// `scrape`, one heap profile fetched after the warm-up (the process's
/// first, which loads its symbols: [`Load::first_scrape_ns`]) and then one
/// every [`SCRAPE_EVERY`] while the timed requests run. Every answer must
/// be a 200 (a scrape, a gzipped profile).
pub fn run(port: u16, connections: usize, requests: usize, scrape: bool) -> io::Result<Load> {
    let warmed = Arc::new(Barrier::new(connections + 1));
    let start = Arc::new(Barrier::new(connections + 1));
    let clients: Vec<_> = (0..connections)
        .map(|c| {
            let (warmed_up, start) = (Arc::clone(&warmed), Arc::clone(&start));
            let mine = requests / connections + usize::from(c < requests % connections);
            std::thread::spawn(move || -> io::Result<Vec<u64>> {
                let opened = Connection::open(port);
                let send = |conn: &mut Connection, i: usize| -> io::Result<()> {
                    let body = order(i * connections + c);
                    let (status, quote) =
                        conn.request("POST", "/orders", body.as_bytes(), false)?;
                    if status != 200 {
                        return Err(io::Error::other(format!(
                            "POST /orders answered {status}: {}",
                            String::from_utf8_lossy(&quote)
                        )));
                    }
                    Ok(())
                };
                let warmed = opened.and_then(|mut conn| {
                    for i in 0..WARM_UP_PER_CONNECTION {
                        send(&mut conn, i)?;
                    }
                    Ok(conn)
                });
                // Every client reaches the barriers, even one that failed,
                // so that the others and the driver do not wait forever.
                warmed_up.wait();
                start.wait();
                let mut conn = warmed?;
                let mut latencies = Vec::with_capacity(mine);
                for i in 0..mine {
                    let t = Instant::now();
                    send(&mut conn, WARM_UP_PER_CONNECTION + i)?;
                    latencies.push(t.elapsed().as_nanos() as u64);
                }
                Ok(latencies)
            })
        })
        .collect();
    warmed.wait();
    let first_scrape = scrape.then(|| {
        let t = Instant::now();
        scrape_heap(port).map(|_| t.elapsed().as_nanos() as u64)
    });
    start.wait();
    let began = Instant::now();
    let (stop, stopped) = mpsc::channel::<()>();
    let scraper = scrape.then(|| {
        std::thread::spawn(move || -> io::Result<Vec<u64>> {
            let mut durations = Vec::new();
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SCRAPE_EVERY) {
                let t = Instant::now();
                scrape_heap(port)?;
                durations.push(t.elapsed().as_nanos() as u64);
            }
            Ok(durations)
        })
    });
    let mut latencies_ns = Vec::with_capacity(requests);
    let mut failure = None;
    for client in clients {
        match client.join().expect("a client thread panicked") {
            Ok(l) => latencies_ns.extend(l),
            Err(e) => failure = Some(e),
        }
    }
    let wall_ns = began.elapsed().as_nanos() as u64;
    drop(stop);
    let scrapes_ns = match scraper {
        Some(s) => s.join().expect("the scraper panicked")?,
        None => Vec::new(),
    };
    if let Some(e) = failure {
        return Err(e);
    }
    let first_scrape_ns = first_scrape.transpose()?;
    latencies_ns.sort_unstable();
    Ok(Load {
        latencies_ns,
        wall_ns,
        scrapes_ns,
        first_scrape_ns,
    })
}
