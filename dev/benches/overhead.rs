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
//! workload.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Config {
    binary: &'static str,
    env: &'static [(&'static str, &'static str)],
    label: &'static str,
}

const SYSTEM: Config = Config {
    binary: "cfg_system",
    env: &[],
    label: "System",
};
const HEAPPROF: Config = Config {
    binary: "cfg_heapprof",
    env: &[],
    label: "heapprof (512 KiB)",
};
const HEAPPROF_DWARF: Config = Config {
    binary: "cfg_heapprof",
    env: &[("HEAPPROF_UNWIND", "dwarf")],
    label: "heapprof (512 KiB, DWARF unwinding)",
};
const HEAPPROF_RATE1: Config = Config {
    binary: "cfg_heapprof",
    env: &[("HEAPPROF_SAMPLE_RATE", "1")],
    label: "heapprof rate 1",
};
const JEMALLOC: Config = Config {
    binary: "cfg_jemalloc",
    env: &[],
    label: "jemalloc",
};
const JEMALLOC_PROF: Config = Config {
    binary: "cfg_jemalloc",
    env: &[("_RJEM_MALLOC_CONF", "prof:true,lg_prof_sample:19")],
    label: "jemalloc prof (lg_prof_sample:19)",
};
const HEAPPROF_JEMALLOC: Config = Config {
    binary: "cfg_heapprof_jemalloc",
    env: &[],
    label: "heapprof over jemalloc",
};
const MIMALLOC: Config = Config {
    binary: "cfg_mimalloc",
    env: &[],
    label: "mimalloc",
};
const HEAPPROF_MIMALLOC: Config = Config {
    binary: "cfg_heapprof_mimalloc",
    env: &[],
    label: "heapprof over mimalloc",
};
const DHAT: Config = Config {
    binary: "cfg_dhat",
    env: &[],
    label: "dhat",
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
    // Large blocks are nearly always sampled: their realloc must cost
    // what the inner allocator's does (in place, or mremap).
    Row {
        workload: "realloc_growth",
        scale: 100,
        a: HEAPPROF,
        b: SYSTEM,
        target: "≤ 1.2",
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
    let rows: Vec<&Row> = ROWS.iter().filter(|r| settings.selects(r)).collect();
    print_time_header(settings.rounds);
    for row in rows.iter().copied() {
        print_time_row(row, &mut measure(&dir, row, settings.rounds));
    }
    instruction_table(&dir, &rows);
}

/// A row's figures over its rounds, in ns.
struct Measured {
    a_wall: Vec<f64>,
    b_wall: Vec<f64>,
    /// Per-round A/B of the wall times.
    ratios: Vec<f64>,
    /// Per-round A/B of the user CPU times.
    user_ratios: Vec<f64>,
}

/// Runs A and B of `row` alternately, `rounds` times each.
fn measure(dir: &Path, row: &Row, rounds: usize) -> Measured {
    let a = binary(dir, row.a.binary);
    let b = binary(dir, row.b.binary);
    let mut m = Measured {
        a_wall: Vec::new(),
        b_wall: Vec::new(),
        ratios: Vec::new(),
        user_ratios: Vec::new(),
    };
    for _ in 0..rounds {
        let x = run(&a, &row.a, row.workload, row.scale);
        let y = run(&b, &row.b, row.workload, row.scale);
        m.a_wall.push(x.wall);
        m.b_wall.push(y.wall);
        m.ratios.push(x.wall / y.wall);
        m.user_ratios.push(x.user / y.user);
    }
    m
}

fn print_time_header(rounds: usize) {
    println!(
        "heapprof overhead benchmark: {rounds} alternating rounds per row; ratio = median of per-round A/B wall times of the workload (and of user CPU times)"
    );
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
    println!(
        "| {} | {}% | {} | {} | {:.1} | {:.1} | **{:.3}** | {:.3}–{:.3} | {:.3} ({:.3}–{:.3}) | {} |",
        row.workload,
        row.scale,
        row.a.label,
        row.b.label,
        median(&mut m.a_wall) / 1e6,
        median(&mut m.b_wall) / 1e6,
        median(&mut m.ratios),
        lo,
        hi,
        median(&mut m.user_ratios),
        user_lo,
        user_hi,
        row.target
    );
}

/// The same rows counted in instructions under callgrind, at a tenth of
/// the timed scale: deterministic where wall times on a shared machine are
/// not (single rounds of the timed table range over ±30–50 % when other
/// work runs). Counts are whole-process minus the same binary run with no
/// workload (start-up and exit), so they cover the workload alone.
fn instruction_table(dir: &Path, rows: &[&Row]) {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("\n(valgrind is not installed: no instruction counts)");
        return;
    }
    println!();
    println!("Instructions (callgrind, one run each; workload only):");
    println!();
    println!(
        "| workload | scale | A | B | A instructions | B instructions | A/B | added per allocation |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        let scale = (row.scale / 10).max(1);
        let count =
            |c: &Config| {
                let bin = binary(dir, c.binary);
                instructions(&bin, c, &[row.workload, &scale.to_string()])
                    .saturating_sub(instructions(&bin, c, &[]))
            };
        let (a, b) = (count(&row.a), count(&row.b));
        let allocations = allocations(row.workload, scale);
        println!(
            "| {} | {scale}% | {} | {} | {a} | {b} | **{:.3}** | {:.1} |",
            row.workload,
            row.a.label,
            row.b.label,
            a as f64 / b as f64,
            (a as f64 - b as f64) / allocations as f64
        );
    }
}

/// How many allocations `workload` makes at `scale` percent: alloc_heavy
/// makes 11 M at 100 %, threads2 10 M, realloc_growth about 600
/// reallocations.
fn allocations(workload: &str, scale: usize) -> usize {
    let at_full_scale = match workload {
        "alloc_heavy" => 11_000_000,
        "realloc_growth" => 600,
        _ => 10_000_000,
    };
    at_full_scale * scale / 100
}

/// Instructions executed by `binary args` under callgrind.
fn instructions(binary: &Path, config: &Config, args: &[&str]) -> u64 {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
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
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built: run `cargo build -p heapprof-dev --release --benches` first"
            )
        })
}

/// One run's figures, in ns.
struct Times {
    wall: f64,
    user: f64,
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
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} from {}: {stdout}", binary.display()))
    };
    Times {
        wall: figure("elapsed_ns="),
        user: figure("user_ns="),
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
