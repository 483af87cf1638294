//! The overhead benchmark: heapprof against the bare allocator it wraps,
//! and against the peers (jemalloc's profiler, dhat), each pair measured
//! side by side in one run.
//!
//! The global allocator is fixed per binary, so each configuration is its
//! own binary (`benches/cfg_*.rs`, all running `benches/common/workload.rs`).
//! For each row this driver runs A and B alternately (A B A B …) for
//! `HEAPPROF_BENCH_ROUNDS` rounds (default [`DEFAULT_ROUNDS`]), and reports
//! the median of the per-round ratios A/B, so that drifts in machine speed
//! cancel out.
//!
//! Run with `cargo bench -p heapprof-dev --bench overhead` after `cargo
//! build -p heapprof-dev --release --benches` (or simply `cargo bench -p
//! heapprof-dev`, which builds everything first);
//! `HEAPPROF_BENCH_ONLY=mimalloc` keeps the rows whose A label contains
//! that text, `HEAPPROF_BENCH_WORKLOAD=realloc_growth` those of that
//! workload; `HEAPPROF_BENCH_ROUNDS_SHOWN=1` prints each service round on
//! stderr (a row's median can hide rounds of two kinds).
//!
//! Three tables: the allocation loops, the real programs (`serde_json`,
//! `regex`, `realloc_growth`), and the service: a configuration binary
//! serving HTTP (`common/service.rs`) under this driver's load generator
//! (`common/load.rs`), timed by the client: wall time for a fixed number
//! of requests, and the requests' p50 and p99 latencies.

#[path = "common/binaries.rs"]
mod binaries;
#[path = "common/load.rs"]
mod load;

use binaries::printed;

use std::path::{Path, PathBuf};
use std::process::Command;

struct Config {
    binary: &'static str,
    env: &'static [(&'static str, &'static str)],
    label: &'static str,
    /// For the `service` workload: whether a scraper fetches
    /// `/debug/pprof/heap` every second while the load runs.
    scraped: bool,
}

const SYSTEM: Config = Config {
    binary: "cfg_system",
    env: &[],
    label: "System",
    scraped: false,
};
const HEAPPROF: Config = Config {
    binary: "cfg_heapprof",
    env: &[],
    label: "heapprof (512 KiB)",
    scraped: false,
};
const HEAPPROF_DWARF: Config = Config {
    binary: "cfg_heapprof",
    env: &[("HEAPPROF_UNWIND", "dwarf")],
    label: "heapprof (512 KiB, DWARF unwinding)",
    scraped: false,
};
const HEAPPROF_RATE1: Config = Config {
    binary: "cfg_heapprof",
    env: &[("HEAPPROF_SAMPLE_RATE", "1")],
    label: "heapprof rate 1",
    scraped: false,
};
const JEMALLOC: Config = Config {
    binary: "cfg_jemalloc",
    env: &[],
    label: "jemalloc",
    scraped: false,
};
const JEMALLOC_PROF: Config = Config {
    binary: "cfg_jemalloc",
    env: &[("_RJEM_MALLOC_CONF", "prof:true,lg_prof_sample:19")],
    label: "jemalloc prof (lg_prof_sample:19)",
    scraped: false,
};
const HEAPPROF_JEMALLOC: Config = Config {
    binary: "cfg_heapprof_jemalloc",
    env: &[],
    label: "heapprof over jemalloc",
    scraped: false,
};
const MIMALLOC: Config = Config {
    binary: "cfg_mimalloc",
    env: &[],
    label: "mimalloc",
    scraped: false,
};
const HEAPPROF_MIMALLOC: Config = Config {
    binary: "cfg_heapprof_mimalloc",
    env: &[],
    label: "heapprof over mimalloc",
    scraped: false,
};
const HEAPPROF_SCRAPED: Config = Config {
    binary: "cfg_heapprof",
    env: &[],
    label: "heapprof (512 KiB), scraped every second",
    scraped: true,
};
const DHAT: Config = Config {
    binary: "cfg_dhat",
    env: &[],
    label: "dhat",
    scraped: false,
};

/// One measured row: `a` against `b` on a workload at a scale (percent).
struct Row {
    workload: &'static str,
    scale: usize,
    a: Config,
    b: Config,
    target: &'static str,
}

/// The rows of both tables, in order. dhat and rate 1 record every
/// allocation: they run a tenth of the workload.
const ROWS: &[Row] = &[
    Row {
        workload: "alloc_heavy",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02",
    },
    Row {
        workload: "threads2",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.03",
    },
    Row {
        workload: "threads2",
        scale: 100,
        a: HEAPPROF_DWARF,
        b: SYSTEM,
        target: "(no frame pointers)",
    },
    Row {
        workload: "alloc_heavy",
        scale: 100,
        a: HEAPPROF_MIMALLOC,
        b: MIMALLOC,
        target: "≤ 1.03",
    },
    Row {
        workload: "alloc_heavy",
        scale: 100,
        a: HEAPPROF_JEMALLOC,
        b: JEMALLOC,
        target: "≤ 1.03",
    },
    Row {
        workload: "alloc_heavy",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
    // The two-thread churn over the other allocators, with jemalloc's
    // own profiler beside it: how much of threads2's cost is peculiar
    // to heapprof, and how much any per-allocation sampling check pays.
    Row {
        workload: "threads2",
        scale: 100,
        a: HEAPPROF_MIMALLOC,
        b: MIMALLOC,
        target: "≤ 1.03",
    },
    Row {
        workload: "threads2",
        scale: 100,
        a: HEAPPROF_JEMALLOC,
        b: JEMALLOC,
        target: "≤ 1.03",
    },
    Row {
        workload: "threads2",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
    Row {
        workload: "alloc_heavy",
        scale: 10,
        a: HEAPPROF_RATE1,
        b: SYSTEM,
        target: "< dhat",
    },
    Row {
        workload: "alloc_heavy",
        scale: 10,
        a: DHAT,
        b: SYSTEM,
        target: "(peer)",
    },
];

/// The real-program rows: crates programs use, and realloc growth.
/// `serde_json` and `regex` each run under heapprof at its default rate
/// and at rate 1 (a tenth of the workload, as above), with jemalloc's
/// profiler beside them.
const REAL_ROWS: &[Row] = &[
    Row {
        workload: "serde_json",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02",
    },
    Row {
        workload: "serde_json",
        scale: 10,
        a: HEAPPROF_RATE1,
        b: SYSTEM,
        target: "(records all)",
    },
    Row {
        workload: "serde_json",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
    Row {
        workload: "regex",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02",
    },
    Row {
        workload: "regex",
        scale: 10,
        a: HEAPPROF_RATE1,
        b: SYSTEM,
        target: "(records all)",
    },
    Row {
        workload: "regex",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
    // Large blocks are nearly always sampled: their realloc must cost
    // what the inner allocator's does (in place, or mremap), so the row
    // has the real programs' target.
    Row {
        workload: "realloc_growth",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02",
    },
    Row {
        workload: "realloc_growth",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
    // Most blocks of 64 KiB and more are sampled: each pays for a stack,
    // as under jemalloc's profiler.
    Row {
        workload: "large_blocks",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02",
    },
    Row {
        workload: "large_blocks",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
    // A thread's start and exit go through the registry of threads.
    Row {
        workload: "thread_churn",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02",
    },
    Row {
        workload: "thread_churn",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
];

/// The service rows (`common/service.rs` under `common/load.rs`); the
/// scale is the number of requests, in percent of [`SERVICE_REQUESTS`].
/// The first compares System with itself: how far apart two runs of the
/// same binary come out on the machine at the time, beside the rows that
/// compare allocators.
const SERVICE_ROWS: &[Row] = &[
    Row {
        workload: "service",
        scale: 100,
        a: SYSTEM,
        b: SYSTEM,
        target: "(noise: 1.00)",
    },
    Row {
        workload: "service",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.02 (wall and p99)",
    },
    Row {
        workload: "service",
        scale: 100,
        a: HEAPPROF_SCRAPED,
        b: HEAPPROF,
        target: "p99 ≤ 1.05",
    },
    Row {
        workload: "service",
        scale: 100,
        a: JEMALLOC_PROF,
        b: JEMALLOC,
        target: "(peer)",
    },
];

/// Timed requests of a service run at 100 % scale: about ten seconds on
/// the machine of BENCHMARKS.md, so that a scraped run has about ten
/// scrapes and its p99 rests on a few thousand requests.
const SERVICE_REQUESTS: usize = 200_000;
/// The load generator's connections, each a closed loop.
const SERVICE_CONNECTIONS: usize = 4;

/// Rounds per row when `HEAPPROF_BENCH_ROUNDS` does not say.
const DEFAULT_ROUNDS: usize = 11;

/// What the environment selects: `HEAPPROF_BENCH_ROUNDS` rounds per row,
/// and only the rows whose A label contains `HEAPPROF_BENCH_ONLY` and
/// whose workload contains `HEAPPROF_BENCH_WORKLOAD` (each empty, so
/// matching all, when unset).
struct Settings {
    rounds: usize,
    only: String,
    workload: String,
    /// Whether each service round is printed (`HEAPPROF_BENCH_ROUNDS_SHOWN`).
    rounds_shown: bool,
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            rounds: std::env::var("HEAPPROF_BENCH_ROUNDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_ROUNDS),
            only: std::env::var("HEAPPROF_BENCH_ONLY").unwrap_or_default(),
            workload: std::env::var("HEAPPROF_BENCH_WORKLOAD").unwrap_or_default(),
            rounds_shown: std::env::var_os("HEAPPROF_BENCH_ROUNDS_SHOWN").is_some(),
        }
    }

    fn selects(&self, row: &Row) -> bool {
        row.a.label.contains(self.only.as_str()) && row.workload.contains(self.workload.as_str())
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let settings = Settings::from_env();
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let select = |rows: &'static [Row]| -> Vec<&'static Row> {
        rows.iter().filter(|r| settings.selects(r)).collect()
    };
    let (rows, real, service) = (select(ROWS), select(REAL_ROWS), select(SERVICE_ROWS));
    print_time_header(settings.rounds);
    if !rows.is_empty() {
        print_table_head();
    }
    for row in rows.iter().copied() {
        print_time_row(row, &mut measure(&dir, row, settings.rounds));
    }
    if !real.is_empty() {
        println!();
        println!("Real programs:");
        print_table_head();
        for row in real.iter().copied() {
            print_time_row(row, &mut measure(&dir, row, settings.rounds));
        }
    }
    if !service.is_empty() {
        service_table(&dir, &service, &settings);
    }
    let counted: Vec<&Row> = rows.iter().chain(&real).copied().collect();
    instruction_table(&dir, &counted, &service);
}

/// One service run: the load's figures and the service's user CPU time (its
/// whole life, start-up included), in ns.
struct Served {
    load: load::Load,
    user_ns: f64,
}

/// Starts `config`'s binary as the service, runs `requests` requests
/// against it (with the scraper if the config is `scraped`), and stops it.
fn serve_and_load(dir: &Path, config: &Config, requests: usize) -> Served {
    let service = binaries::Service::start(&binary(dir, config.binary), 100, config.env);
    let load = load::run(service.port, SERVICE_CONNECTIONS, requests, config.scraped)
        .unwrap_or_else(|e| panic!("{} under load: {e}", config.label));
    // The service prints its CPU time and exits when its input closes.
    let rest = service.stop();
    Served {
        load,
        user_ns: printed(&rest, "user_ns=")
            .unwrap_or_else(|| panic!("no user_ns= from the service: {rest}")),
    }
}

/// Runs A and B of a service row alternately, `settings.rounds` times
/// each (printing each round if `settings.rounds_shown`), and prints its
/// line: medians of A and B, and medians of the per-round
/// ratios A/B.
fn service_row(dir: &Path, row: &Row, settings: &Settings) {
    let requests = SERVICE_REQUESTS * row.scale / 100;
    let (mut a_rate, mut b_rate, mut a_p50, mut b_p50, mut a_p99, mut b_p99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut wall, mut p50, mut p99, mut user) = (vec![], vec![], vec![], vec![]);
    let (mut scrapes, mut first_scrapes) = (vec![], vec![]);
    for round in 0..settings.rounds {
        let x = serve_and_load(dir, &row.a, requests);
        let y = serve_and_load(dir, &row.b, requests);
        if settings.rounds_shown {
            for (side, config, served) in [("A", &row.a, &x), ("B", &row.b, &y)] {
                eprintln!(
                    "round {round} {side} {}: {:.0} req/s, p99 {:.0} µs, user CPU {:.2} s",
                    config.label,
                    served.load.requests_per_second(),
                    served.load.percentile_ns(99.0) as f64 / 1e3,
                    served.user_ns / 1e9
                );
            }
        }
        let (x50, y50) = (
            x.load.percentile_ns(50.0) as f64,
            y.load.percentile_ns(50.0) as f64,
        );
        let (x99, y99) = (
            x.load.percentile_ns(99.0) as f64,
            y.load.percentile_ns(99.0) as f64,
        );
        a_rate.push(x.load.requests_per_second());
        b_rate.push(y.load.requests_per_second());
        a_p50.push(x50);
        b_p50.push(y50);
        a_p99.push(x99);
        b_p99.push(y99);
        wall.push(x.load.wall_ns as f64 / y.load.wall_ns as f64);
        p50.push(x50 / y50);
        p99.push(x99 / y99);
        user.push(x.user_ns / y.user_ns);
        scrapes.extend(x.load.scrapes_ns.iter().map(|&n| n as f64));
        first_scrapes.extend(x.load.first_scrape_ns.map(|n| n as f64));
    }
    let (wall_lo, wall_hi) = min_max(&wall);
    let (p99_lo, p99_hi) = min_max(&p99);
    let scraped = match (first_scrapes.is_empty(), scrapes.is_empty()) {
        (true, _) => "–".to_owned(),
        (false, true) => format!(
            "first {:.0} ms; none timed",
            median(&mut first_scrapes) / 1e6
        ),
        (false, false) => format!(
            "first {:.0} ms; {} timed ({:.1} ms median)",
            median(&mut first_scrapes) / 1e6,
            scrapes.len(),
            median(&mut scrapes) / 1e6
        ),
    };
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | **{:.3}** ({:.3}–{:.3}) | {:.0} / {:.0} | {:.3} | {:.0} / {:.0} | **{:.3}** ({:.3}–{:.3}) | {:.3} | {scraped} | {} |",
        requests,
        row.a.label,
        row.b.label,
        median(&mut a_rate),
        median(&mut b_rate),
        median(&mut wall),
        wall_lo,
        wall_hi,
        median(&mut a_p50) / 1e3,
        median(&mut b_p50) / 1e3,
        median(&mut p50),
        median(&mut a_p99) / 1e3,
        median(&mut b_p99) / 1e3,
        median(&mut p99),
        p99_lo,
        p99_hi,
        median(&mut user),
        row.target
    );
}

fn service_table(dir: &Path, rows: &[&Row], settings: &Settings) {
    println!();
    println!(
        "Service: {SERVICE_CONNECTIONS} keep-alive connections, closed loop, after {} warm-up requests each; latencies in µs; A/B = median of per-round ratios; in A's runs of a scraped row, a first scrape of /debug/pprof/heap after the warm-up (median duration shown) and one every {} s during the timed requests:",
        load::WARM_UP_PER_CONNECTION,
        load::SCRAPE_EVERY.as_secs()
    );
    println!();
    println!(
        "| requests | A | B | A req/s | B req/s | wall A/B (min–max) | p50 A / B | p50 A/B | p99 A / B | p99 A/B (min–max) | service user CPU A/B | scrapes | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        service_row(dir, row, settings);
    }
}

/// A row's figures over its rounds, in ns.
struct Measured {
    a_wall: Vec<f64>,
    b_wall: Vec<f64>,
    /// Per-round A/B of the wall times.
    ratios: Vec<f64>,
    /// Per-round A/B of the user CPU times.
    user_ratios: Vec<f64>,
    /// B's user CPU time per round.
    b_user: Vec<f64>,
}

/// Below this much user CPU time per run (a workload that spends its time
/// in the kernel, as `realloc_growth` does in page faults), a ratio of user
/// times is a ratio of a few scheduler ticks and is not printed.
const USER_FLOOR_NS: f64 = 20e6;

/// Runs A and B of `row` alternately, `rounds` times each.
fn measure(dir: &Path, row: &Row, rounds: usize) -> Measured {
    let a = binary(dir, row.a.binary);
    let b = binary(dir, row.b.binary);
    let mut m = Measured {
        a_wall: Vec::new(),
        b_wall: Vec::new(),
        ratios: Vec::new(),
        user_ratios: Vec::new(),
        b_user: Vec::new(),
    };
    for _ in 0..rounds {
        let x = run(&a, &row.a, row.workload, row.scale);
        let y = run(&b, &row.b, row.workload, row.scale);
        m.a_wall.push(x.wall);
        m.b_wall.push(y.wall);
        m.ratios.push(x.wall / y.wall);
        m.user_ratios.push(x.user / y.user);
        m.b_user.push(y.user);
    }
    m
}

fn print_time_header(rounds: usize) {
    println!(
        "heapprof overhead benchmark: {rounds} alternating rounds per row; ratio = median of per-round A/B wall times of the workload (and of user CPU times)"
    );
}

fn print_table_head() {
    println!();
    println!(
        "| workload | scale | A | B | A median ms | B median ms | A/B median | A/B min–max | user CPU A/B median (min–max) | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
}

/// One line of the timed table (sorts `m`'s figures to take medians).
fn print_time_row(row: &Row, m: &mut Measured) {
    let (lo, hi) = min_max(&m.ratios);
    let (user_lo, user_hi) = min_max(&m.user_ratios);
    let b_user = median(&mut m.b_user);
    let user = if b_user < USER_FLOOR_NS {
        format!("– (B: {:.1} ms of user time)", b_user / 1e6)
    } else {
        format!(
            "{:.3} ({user_lo:.3}–{user_hi:.3})",
            median(&mut m.user_ratios)
        )
    };
    println!(
        "| {} | {}% | {} | {} | {:.1} | {:.1} | **{:.3}** | {:.3}–{:.3} | {user} | {} |",
        row.workload,
        row.scale,
        row.a.label,
        row.b.label,
        median(&mut m.a_wall) / 1e6,
        median(&mut m.b_wall) / 1e6,
        median(&mut m.ratios),
        lo,
        hi,
        row.target
    );
}

/// The same rows counted in instructions under callgrind, at a tenth of
/// the timed scale: deterministic where wall times on a shared machine are
/// not (single rounds of the timed table range over ±30–50 % when other
/// work runs). Counts are whole-process minus the same binary run with the
/// workload's input built and the workload not run (start-up, input and
/// exit), so they cover the workload alone. The service rows are not
/// counted (`skipped`): see [`SERVICE_NOT_COUNTED`].
fn instruction_table(dir: &Path, rows: &[&Row], skipped: &[&Row]) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("\n(valgrind is not installed: no instruction counts)");
        return;
    }
    if !rows.is_empty() {
        println!();
        println!("Instructions (callgrind, one run each; workload only):");
        println!();
        println!(
            "| workload | scale | A | B | A instructions | B instructions | A/B | added per allocation |"
        );
        println!("|---|---|---|---|---|---|---|---|");
    }
    for row in rows {
        let scale = (row.scale / 10).max(1);
        let percent = scale.to_string();
        let count = |c: &Config| {
            let bin = binary(dir, c.binary);
            instructions(&bin, c, &[row.workload, &percent]).saturating_sub(instructions(
                &bin,
                c,
                &[row.workload, &percent, "setup"],
            ))
        };
        let (a, b) = (count(&row.a), count(&row.b));
        // heapprof's exact count, the same under every allocator.
        let allocations = run(
            &binary(dir, HEAPPROF.binary),
            &HEAPPROF,
            row.workload,
            scale,
        )
        .allocations
        .expect("cfg_heapprof reports allocations=");
        println!(
            "| {} | {scale}% | {} | {} | {a} | {b} | **{:.3}** | {:.1} |",
            row.workload,
            row.a.label,
            row.b.label,
            a as f64 / b as f64,
            (a as f64 - b as f64) / allocations as f64
        );
    }
    if !skipped.is_empty() {
        println!("\n(service rows: {SERVICE_NOT_COUNTED})");
    }
}

/// Why the service rows have no instruction counts.
const SERVICE_NOT_COUNTED: &str = "not counted: callgrind runs the service's threads one at a time and tens of times slower than its client, which changes how requests batch into reads and wake-ups, and that, not the allocator, would move the count; the service rows are timed only";

/// Instructions executed by `binary args` under callgrind.
fn instructions(binary: &Path, config: &Config, args: &[&str]) -> u64 {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        // `thread_churn` keeps thousands of threads alive.
        .arg("--max-threads=4100")
        .arg(binary)
        .args(args)
        .envs(config.env.iter().copied())
        .output()
        .expect("run valgrind");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.split("Collected : ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count from callgrind: {stderr}"))
}

/// The newest executable `name-<hash>` beside this one.
fn binary(dir: &Path, name: &str) -> PathBuf {
    binaries::newest(dir, name).unwrap_or_else(|| {
        panic!("{name} is not built: run `cargo build -p heapprof-dev --release --benches` first")
    })
}

/// One run's figures, in ns, and heapprof's count of the workload's
/// allocations where heapprof is the allocator.
struct Times {
    wall: f64,
    user: f64,
    allocations: Option<u64>,
}

fn run(binary: &Path, config: &Config, workload: &str, scale: usize) -> Times {
    let out = Command::new(binary)
        .args([workload, &scale.to_string()])
        .envs(config.env.iter().copied())
        .output()
        .expect("run a configuration binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let figure = |key: &str| -> f64 {
        printed(&stdout, key)
            .unwrap_or_else(|| panic!("no {key} from {}: {stdout}", binary.display()))
    };
    Times {
        wall: figure("elapsed_ns="),
        user: figure("user_ns="),
        allocations: printed(&stdout, "allocations="),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}
