//! The first profile of a big binary: what heapprof's first profile costs
//! a process whose executable carries 100 MB or more of debug info, in
//! time and in resident memory, by `write_profile` and by an HTTP scrape,
//! with symbols and without (`HEAPPROF_SYMBOLIZE=off`, `?symbolize=0`).
//!
//! ```text
//! cargo run --release --manifest-path dev/bigbin/Cargo.toml
//! ```
//!
//! Run without arguments, it runs each case in a child process of its
//! own (a lookup is cold once per process) and prints a table; a child
//! (`BIGBIN_CASE` set) runs the generated code, whose large allocations
//! give the profile one site per generic instantiation, then takes the
//! first profile and [`STEADY_ROUNDS`] more, each between a reset of the
//! peak resident size (`/proc/self/clear_refs`) and a read of it.
//! `BIGBIN_ROUNDS` (default [`DEFAULT_ROUNDS`]) children run per case,
//! alternating between cases; the table gives medians.

use std::time::{Duration, Instant};

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

/// What the generated records implement.
pub trait Item: Clone + std::fmt::Debug + Default + Ord + std::hash::Hash {
    fn make(i: u64) -> Self;
    fn key(&self) -> u64;
}

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Profiles taken after the first, for the steady-state figures.
const STEADY_ROUNDS: usize = 5;

/// Child processes per case when `BIGBIN_ROUNDS` does not say.
const DEFAULT_ROUNDS: usize = 3;

/// Bytes of each instantiation's large allocation: twice the default
/// sampling rate, so that nearly every one is sampled.
const LARGE_BYTES: usize = 1 << 20;

/// One measured case: how the profile is asked for, and its environment.
struct Case {
    label: &'static str,
    how: How,
    env: &'static [(&'static str, &'static str)],
}

#[derive(Clone, Copy)]
enum How {
    /// `heapprof::write_profile`.
    Write,
    /// `GET /debug/pprof/heap` with this query from heapprof's own server.
    Http(&'static str),
}

const CASES: &[Case] = &[
    Case {
        label: "write_profile",
        how: How::Write,
        env: &[],
    },
    Case {
        label: "write_profile, HEAPPROF_SYMBOLIZE=off",
        how: How::Write,
        env: &[("HEAPPROF_SYMBOLIZE", "off")],
    },
    Case {
        label: "GET /debug/pprof/heap",
        how: How::Http(""),
        env: &[],
    },
    Case {
        label: "GET /debug/pprof/heap?symbolize=0",
        how: How::Http("symbolize=0"),
        env: &[],
    },
];

fn main() {
    match std::env::var("BIGBIN_CASE") {
        Ok(i) => child(&CASES[i.parse::<usize>().expect("a case number")]),
        Err(_) => parent(),
    }
}

/// One child's figures.
#[derive(Default)]
struct Figures {
    first: Duration,
    /// Peak resident growth over the resident size before the call.
    first_peak: u64,
    /// Resident growth that stayed after the first profile.
    first_kept: u64,
    /// Of the peak growth, the largest anonymous and file-backed parts
    /// seen (polled).
    first_anon: u64,
    first_file: u64,
    steady: Duration,
    steady_peak: u64,
    profiler_bytes: u64,
    samples: u64,
    locations: u64,
    body: u64,
}

fn parent() {
    let rounds: usize = std::env::var("BIGBIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let exe = std::env::current_exe().unwrap();
    let size = std::fs::metadata(&exe).unwrap().len();
    println!(
        "{} ({} generated modules × {} types): {:.1} MB, {:.1} MB of it .debug_* sections",
        exe.display(),
        MODULES,
        TYPES,
        size as f64 / 1e6,
        debug_bytes(&exe) as f64 / 1e6
    );
    println!(
        "{rounds} child processes per case, alternating; medians. Load: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let mut all: Vec<Vec<Figures>> = CASES.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, case) in CASES.iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .env("BIGBIN_CASE", i.to_string())
                .envs(case.env.iter().copied())
                .output()
                .expect("run a child");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{} failed: {}\n{stdout}",
                case.label,
                String::from_utf8_lossy(&out.stderr)
            );
            all[i].push(parse(&stdout));
        }
    }
    println!();
    println!(
        "| case | first: ms | first: peak RSS growth MiB | of which anon / file (polled) | first: RSS kept MiB | steady: ms | steady: peak RSS growth MiB | profiler_bytes after, MiB | samples | locations | body KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (case, figures) in CASES.iter().zip(&all) {
        let ms = |f: &dyn Fn(&Figures) -> Duration| {
            median(figures.iter().map(|x| f(x).as_secs_f64() * 1e3).collect())
        };
        let mib =
            |f: &dyn Fn(&Figures) -> u64| median(figures.iter().map(|x| f(x) as f64 / 1048576.0).collect());
        let n = |f: &dyn Fn(&Figures) -> u64| median(figures.iter().map(|x| f(x) as f64).collect());
        println!(
            "| {} | {:.0} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} |",
            case.label,
            ms(&|x| x.first),
            mib(&|x| x.first_peak),
            mib(&|x| x.first_anon),
            mib(&|x| x.first_file),
            mib(&|x| x.first_kept),
            ms(&|x| x.steady),
            mib(&|x| x.steady_peak),
            mib(&|x| x.profiler_bytes),
            n(&|x| x.samples),
            n(&|x| x.locations),
            n(&|x| x.body) / 1024.0,
        );
    }
}

fn child(case: &Case) {
    let server = match case.how {
        How::Http(_) => Some(heapprof::http::serve("127.0.0.1:0").expect("serve")),
        How::Write => None,
    };
    std::hint::black_box(run_all(LARGE_BYTES));
    let take = || -> Vec<u8> {
        match case.how {
            How::Write => {
                let mut body = Vec::new();
                heapprof::write_profile(&mut body).expect("write_profile");
                body
            }
            How::Http(query) => {
                let target = format!("/debug/pprof/heap?{query}");
                let reply = heapprof_testkit::http::http_get(server.unwrap(), &target);
                assert_eq!(reply.status, 200, "{}", reply.text());
                reply.body
            }
        }
    };
    let ((anon, file), (first, first_peak, body)) = split_peaks(|| measured(take));
    let first_kept = rss().saturating_sub(first_peak.1);
    let mut steady = Vec::new();
    let mut steady_peak = 0;
    for _ in 0..STEADY_ROUNDS {
        let (t, (peak, _), _) = measured(take);
        steady.push(t.as_secs_f64());
        steady_peak = steady_peak.max(peak);
    }
    let profile = heapprof_testkit::profile::decode(&body);
    println!("first_ns={}", first.as_nanos());
    println!("first_peak={}", first_peak.0);
    println!("first_kept={first_kept}");
    println!("first_anon={anon}");
    println!("first_file={file}");
    println!("steady_ns={}", (median(steady) * 1e9) as u64);
    println!("steady_peak={steady_peak}");
    println!("profiler_bytes={}", heapprof::stats().profiler_bytes);
    println!("samples={}", profile.sample.len());
    println!("locations={}", profile.location.len());
    println!("body={}", body.len());
}

/// Runs `take`: its time, (peak resident growth over the resident size
/// before, that resident size), and its result.
fn measured<R>(take: impl FnOnce() -> R) -> (Duration, (u64, u64), R) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident size");
    let before = rss();
    let start = Instant::now();
    let r = take();
    let t = start.elapsed();
    (t, (status_kib("VmHWM:") * 1024 - before, before), r)
}

/// The largest anonymous and file-backed resident sizes seen while
/// `take` runs, polled every [`POLL`] from another thread (the kernel
/// keeps no peak of each), as growth over their sizes before.
fn split_peaks<R>(take: impl FnOnce() -> R) -> ((u64, u64), R) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let anon_before = status_kib("RssAnon:");
    let file_before = status_kib("RssFile:");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let (mut anon, mut file) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                anon = anon.max(status_kib("RssAnon:"));
                file = file.max(status_kib("RssFile:"));
                std::thread::sleep(POLL);
            }
            (anon, file)
        });
        let r = take();
        done.store(true, Ordering::Relaxed);
        let (anon, file) = poller.join().unwrap();
        (
            (
                anon.saturating_sub(anon_before) * 1024,
                file.saturating_sub(file_before) * 1024,
            ),
            r,
        )
    })
}

/// How often [`split_peaks`] reads the resident sizes.
const POLL: Duration = Duration::from_millis(1);

fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
}

fn parse(stdout: &str) -> Figures {
    let get = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
    };
    Figures {
        first: Duration::from_nanos(get("first_ns=")),
        first_peak: get("first_peak="),
        first_kept: get("first_kept="),
        first_anon: get("first_anon="),
        first_file: get("first_file="),
        steady: Duration::from_nanos(get("steady_ns=")),
        steady_peak: get("steady_peak="),
        profiler_bytes: get("profiler_bytes="),
        samples: get("samples="),
        locations: get("locations="),
        body: get("body="),
    }
}

/// The sizes of the executable's `.debug_*` sections, summed (from its
/// ELF section headers).
fn debug_bytes(exe: &std::path::Path) -> u64 {
    let data = std::fs::read(exe).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let names_at = u64_at(shoff + shstrndx * shentsize + 0x18) as usize;
    (0..shnum)
        .map(|i| shoff + i * shentsize)
        .filter(|&h| data[names_at + u32_at(h)..].starts_with(b".debug_"))
        .map(|h| u64_at(h + 0x20))
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
