//! The workloads the overhead benchmark runs under each allocator. Every
//! configuration binary (`benches/cfg_*.rs`) includes this file with its own
//! `#[global_allocator]`, so the workload code is identical everywhere.
//!
//! A configuration binary run with `<workload> <scale>` builds the
//! workload's input (a generated document or text, where it has one), then
//! runs it once and prints `elapsed_ns=N` and `user_ns=N` (wall and user
//! CPU time), measured around the workload only (not the input, not process
//! start-up, not the allocator's own exit work); where heapprof is the
//! allocator, also `allocations=N`, heapprof's exact count of the
//! workload's allocations. With a third argument `setup` it builds the input
//! and stops, for the instruction counts' baseline. Run by `cargo bench -p
//! heapprof-dev` with no workload argument, it does nothing.
//!
//! `<binary> service <scale>` is the exception: an HTTP service that runs
//! until its standard input closes (`common/service.rs`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

#[path = "service.rs"]
mod service;

/// What a configuration binary says of its global allocator.
#[derive(Clone, Copy)]
pub struct Allocator {
    /// Whether it is heapprof's (over whichever allocator). If so, the
    /// service mounts heapprof's `/debug/pprof` handler and a run reports
    /// heapprof's exact allocation count.
    pub heapprof: bool,
}

/// A map of 1 M formatted strings, then 10 M small alloc/free pairs
/// (sizes 16..136 B), scaled by `scale` / 100.
pub fn alloc_heavy(scale: usize) {
    let n_map = 1_000_000 * scale / 100;
    let n_pairs = 10_000_000 * scale / 100;
    let mut map = HashMap::with_capacity(16);
    for i in 0..n_map {
        map.insert(i, format!("value number {i}"));
    }
    for i in 0..n_pairs {
        let b: Vec<u8> = Vec::with_capacity(16 + (i % 16) * 8);
        black_box(b);
    }
    black_box(map);
}

/// Two threads, each churning small blocks through a window of 1000 live
/// ones (so frees are not always of the block just allocated).
pub fn threads2(scale: usize) {
    let per_thread = 5_000_000 * scale / 100;
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut window: Vec<Option<Vec<u8>>> = (0..1000).map(|_| None).collect();
                for i in 0..per_thread {
                    let size = 16 + ((i * 7 + t) % 24) * 8;
                    window[i % 1000] = Some(Vec::with_capacity(size));
                }
                black_box(window);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// Buffers grown by realloc, the way large blocks grow (nearly every one of
/// them is sampled): `reserve_exact` a MiB at a time to 64 MiB (four times)
/// and to 256 MiB, and a buffer doubled by appending itself to 256 MiB; the number
/// of buffers scaled by `scale` / 100 (at least one of each).
pub fn realloc_growth(scale: usize) {
    const MIB: usize = 1 << 20;
    let rounds = (scale / 25).max(1);
    for _ in 0..rounds {
        let mut v: Vec<u8> = Vec::new();
        while v.capacity() < 64 * MIB {
            // The buffer is empty: this asks for a MiB more than it has.
            v.reserve_exact(v.capacity() + MIB);
        }
        black_box(&v);
    }
    let mut v: Vec<u8> = Vec::new();
    while v.capacity() < 256 * MIB {
        v.reserve_exact(v.capacity() + MIB);
    }
    black_box(v);
    let mut v: Vec<u8> = vec![1; 4096];
    while v.len() < 256 * MIB {
        v.extend_from_within(..);
    }
    black_box(v);
}

/// Threads that wait, alive, while `thread_churn` runs: a service's
/// worker pools and connection threads.
const PARKED_THREADS: usize = 2_000;

/// Starts [`PARKED_THREADS`] threads that each allocate once (so that an
/// allocator that keeps per-thread state has it) and wait; they exit when
/// the returned sender is dropped and they are joined.
pub fn park_threads() -> (
    std::sync::mpsc::Sender<()>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let (stop, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
    let parked = (0..PARKED_THREADS)
        .map(|_| {
            let wait = std::sync::Arc::clone(&wait);
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    black_box(vec![0u8; 64]);
                    let _ = wait.lock().map(|w| w.recv());
                })
                .expect("spawn a parked thread")
        })
        .collect();
    (stop, parked)
}

/// Short-lived threads started and joined one at a time while
/// [`PARKED_THREADS`] others live (`park_threads`, set up before the
/// clock starts), each allocating a few small blocks: 10 000 threads,
/// scaled by `scale` / 100 (at least one).
pub fn thread_churn(scale: usize) {
    let n = (10_000 * scale / 100).max(1);
    for i in 0..n {
        std::thread::spawn(move || {
            let v: Vec<String> = (0..8).map(|j| format!("job {i} part {j}")).collect();
            black_box(v);
        })
        .join()
        .expect("a short-lived thread panicked");
    }
}

/// Zeroed blocks from 64 KiB to 4 MiB (`vec![0; n]`, freed at once), the
/// buffers of a program that reads files or network messages whole: at
/// the default rate most of them are sampled. 20 000 blocks, scaled by
/// `scale` / 100 (at least one).
pub fn large_blocks(scale: usize) {
    let n = (20_000 * scale / 100).max(1);
    for i in 0..n {
        let size = (64 * 1024) << (i % 7);
        let v = vec![0u8; size];
        black_box(&v);
    }
}

/// Records in the `serde_json` workload's document at 100 % scale (about
/// 20 MB of JSON).
const JSON_RECORDS: usize = 50_000;
/// Times the `serde_json` workload parses and re-serializes its document.
const JSON_ROUND_TRIPS: usize = 3;

/// Given names, family names and cities the generated inputs draw from
/// (some outside ASCII, so that strings need more than a byte copy).
const GIVEN: [&str; 8] = [
    "Ada", "Grace", "Édouard", "Linus", "Margaret", "Søren", "Barbara", "Ken",
];
const FAMILY: [&str; 8] = [
    "Lovelace",
    "Hopper",
    "Lucas",
    "Torvalds",
    "Hamilton",
    "Kierkegaard",
    "Liskov",
    "Thompson",
];
const CITIES: [&str; 6] = ["Zürich", "Lyon", "Oslo", "Kraków", "Porto", "Tallinn"];

/// A small deterministic generator (SplitMix64), so that every
/// configuration parses the same input.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// The `serde_json` workload's input: an object holding an array of
/// [`JSON_RECORDS`] × `scale` / 100 customer records (at least one), each
/// with strings, numbers, a nested address, tags and a purchase history.
pub fn json_document(scale: usize) -> String {
    let records = (JSON_RECORDS * scale / 100).max(1);
    let mut mix = Mix(0x5eed_0001);
    let mut doc = String::with_capacity(records * 480);
    doc.push_str(r#"{"source":"heapprof overhead benchmark","schema":3,"records":["#);
    for id in 0..records {
        if id > 0 {
            doc.push(',');
        }
        let (given, family) = (mix.pick(&GIVEN), mix.pick(&FAMILY));
        write!(
            doc,
            r#"{{"id":{id},"name":"{given} {family}","email":"{}.{}{id}@example.org","active":{},"score":{}.{:03},"note":"likes \"{}\" and {}","#,
            given.to_lowercase(),
            family.to_lowercase(),
            mix.below(3) > 0,
            mix.below(100),
            mix.below(1000),
            mix.pick(&FAMILY),
            mix.pick(&CITIES),
        )
        .unwrap();
        doc.push_str(r#""tags":["#);
        for t in 0..mix.below(5) {
            if t > 0 {
                doc.push(',');
            }
            write!(doc, r#""tag-{}""#, mix.below(40)).unwrap();
        }
        write!(
            doc,
            r#"],"address":{{"street":"{} {} Street","city":"{}","zip":"{:05}"}},"history":["#,
            mix.below(300) + 1,
            mix.pick(&FAMILY),
            mix.pick(&CITIES),
            mix.below(100_000),
        )
        .unwrap();
        for h in 0..mix.below(6) {
            if h > 0 {
                doc.push(',');
            }
            write!(
                doc,
                r#"{{"at":{},"amount":{}.{:02},"currency":"EUR","items":{}}}"#,
                1_700_000_000 + mix.below(50_000_000),
                mix.below(500),
                mix.below(100),
                mix.below(9) + 1,
            )
            .unwrap();
        }
        doc.push_str("]}");
    }
    doc.push_str("]}");
    doc
}

/// `doc` parsed into a `serde_json::Value` and written back to a `String`,
/// [`JSON_ROUND_TRIPS`] times: the many small maps, vectors and strings
/// of a document object model, built and dropped whole.
fn serde_json_round_trips(doc: &str) {
    for _ in 0..JSON_ROUND_TRIPS {
        let value: serde_json::Value =
            serde_json::from_str(doc).expect("the generated document is JSON");
        let text = serde_json::to_string(&value).expect("a Value serializes");
        black_box(text);
    }
}

/// Lines in the `regex` workload's log at 100 % scale (about 30 MB).
const LOG_LINES: usize = 200_000;

/// Messages of the generated log; digits become `#` in its line templates.
const MESSAGES: [&str; 6] = [
    "fetched 12 items for cart 4471",
    "payment declined for order 99812 after 3 attempts",
    "Cache miss on key user 7 profile",
    "retrying upstream call 2 of 5",
    "slow query took 381 ms on shard 14",
    "session 55021 expired",
];

/// The `regex` workload's input: [`LOG_LINES`] × `scale` / 100 lines (at
/// least one) of a service's log, `key=value` fields and a quoted message.
pub fn log_text(scale: usize) -> String {
    let lines = (LOG_LINES * scale / 100).max(1);
    let mut mix = Mix(0x5eed_0002);
    let mut text = String::with_capacity(lines * 200);
    for i in 0..lines {
        writeln!(
            text,
            r#"2026-11-30T{:02}:{:02}:{:02}.{:03}Z level={} service={} user={}{} path=/api/v1/{}/{} status={} took={}ms msg="{}""#,
            i / 3_600_000 % 24,
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1000,
            mix.pick(&["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"]),
            mix.pick(&["orders", "billing", "search", "accounts"]),
            mix.pick(&GIVEN).to_lowercase(),
            mix.below(5000),
            mix.pick(&["items", "carts", "users", "invoices"]),
            mix.below(100_000),
            mix.pick(&["200", "200", "200", "201", "404", "500", "503"]),
            mix.below(2000),
            mix.pick(&MESSAGES),
        )
        .unwrap();
    }
    text
}

/// The `regex` workload's compiled patterns.
pub struct LogPatterns {
    field: regex::Regex,
    digits: regex::Regex,
}

impl LogPatterns {
    pub fn new() -> Self {
        LogPatterns {
            field: regex::Regex::new(r#"(\w+)=("[^"]*"|\S+)"#).unwrap(),
            digits: regex::Regex::new(r"\d+").unwrap(),
        }
    }
}

/// What `process_log` found: how often each message word and each line
/// template occurs, and the failed requests' paths.
#[derive(Debug, Default)]
pub struct LogSummary {
    pub words: HashMap<String, usize>,
    pub templates: HashMap<String, usize>,
    pub failed_paths: Vec<String>,
}

/// Log processing of the kind a log shipper or a report does, with a
/// short-lived `String` at every step: each line's `key=value` fields
/// captured into owned pairs, the message split into words counted
/// case-folded, the line's template (digits replaced by `#`) counted, the
/// paths of failed requests kept.
pub fn process_log(text: &str, patterns: &LogPatterns) -> LogSummary {
    let mut summary = LogSummary::default();
    for line in text.lines() {
        let fields: Vec<(String, String)> = patterns
            .field
            .captures_iter(line)
            .map(|c| (c[1].to_owned(), c[2].trim_matches('"').to_owned()))
            .collect();
        let field = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if let Some(message) = field("msg") {
            for word in message.split_whitespace() {
                *summary.words.entry(word.to_lowercase()).or_default() += 1;
            }
        }
        if field("status").is_some_and(|s| s.starts_with('5'))
            && let Some(path) = field("path")
        {
            summary.failed_paths.push(path.clone());
        }
        let template = patterns.digits.replace_all(line, "#").into_owned();
        *summary.templates.entry(template).or_default() += 1;
    }
    summary
}

/// A workload with its input built: calling it does the timed work.
type Prepared = Box<dyn FnOnce()>;

/// The workload `name` at `scale` percent, its input built; `None` for an
/// unknown name.
fn prepare(name: &str, scale: usize) -> Option<Prepared> {
    let work: Prepared = match name {
        "alloc_heavy" => Box::new(move || alloc_heavy(scale)),
        "threads2" => Box::new(move || threads2(scale)),
        "realloc_growth" => Box::new(move || realloc_growth(scale)),
        "thread_churn" => {
            // Parked until the process exits.
            std::mem::forget(park_threads());
            Box::new(move || thread_churn(scale))
        }
        "large_blocks" => Box::new(move || large_blocks(scale)),
        "serde_json" => {
            let doc = json_document(scale);
            Box::new(move || serde_json_round_trips(&doc))
        }
        "regex" => {
            let text = log_text(scale);
            let patterns = LogPatterns::new();
            Box::new(move || {
                black_box(process_log(&text, &patterns));
            })
        }
        _ => return None,
    };
    Some(work)
}

/// Runs the workload named by the first argument, if any, and prints its
/// time (or serves, for `service`). Returns whether one ran.
pub fn run_from_args(allocator: Allocator) -> bool {
    let args: Vec<String> = std::env::args().collect();
    let Some(name) = args.get(1).filter(|a| !a.starts_with('-')) else {
        return false;
    };
    let scale: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    if name == "service" {
        service::serve(allocator);
    }
    let Some(work) = prepare(name, scale) else {
        eprintln!("unknown workload {name}");
        std::process::exit(2);
    };
    if args.get(3).is_some_and(|a| a == "setup") {
        return true;
    }
    let allocations = || {
        if allocator.heapprof {
            heapprof::stats().allocations
        } else {
            0
        }
    };
    let allocations_before = allocations();
    let start = Instant::now();
    let user_start = user_time_ns();
    work();
    println!("elapsed_ns={}", start.elapsed().as_nanos());
    println!("user_ns={}", user_time_ns() - user_start);
    if allocator.heapprof {
        println!("allocations={}", allocations() - allocations_before);
    }
    true
}

/// CPU time this process has spent in user mode, all threads, in ns.
/// Unlike wall time, it leaves out time in the kernel (page faults, which
/// swing by hundreds of milliseconds from run to run on a shared machine
/// and are the same work whichever allocator wrapper runs) and time spent
/// waiting for a processor.
fn user_time_ns() -> u64 {
    // SAFETY: `usage` is a valid, writable rusage for getrusage to fill.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_utime.tv_sec as u64 * 1_000_000_000 + usage.ru_utime.tv_usec as u64 * 1_000
}
