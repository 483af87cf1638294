//! [criterion](https://docs.rs/criterion) integration (cargo feature
//! `criterion`): Go's `go test -bench . -benchmem -memprofile mem.prof`
//! for Rust benchmarks.
//!
//! * [`AllocatedBytes`] and [`Allocations`] are criterion
//!   [`Measurement`]s: criterion reports bytes or allocations per
//!   iteration in place of time, with its statistics, saved baselines and
//!   comparisons ("change: +12.5 %, regressed").
//! * [`HeapProfiler`] is a criterion [`Profiler`]: under `--profile-time`
//!   it writes a heap profile of each benchmark to
//!   `target/criterion/<benchmark>/profile/heap.pb.gz`, for
//!   `go tool pprof`.
//!
//! ```no_run
//! use criterion::{Criterion, criterion_group, criterion_main};
//! use heapprof::criterion::{AllocatedBytes, HeapProfiler};
//!
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! fn bench(c: &mut Criterion<AllocatedBytes>) {
//!     c.bench_function("format", |b| b.iter(|| format!("{}", 12345)));
//! }
//!
//! criterion_group! {
//!     name = benches;
//!     config = Criterion::default()
//!         .with_measurement(AllocatedBytes)
//!         .with_profiler(HeapProfiler::new());
//!     targets = bench
//! }
//! criterion_main!(benches);
//! ```
//!
//! The measurements count the benchmark thread's own allocations, exactly
//! (not estimates, at any sample rate): criterion runs the routine on that
//! thread, and threads the routine starts are not counted (see
//! [`measure`](crate::measure)).
//!
//! [`Measurement`]: ::criterion::measurement::Measurement
//! [`Profiler`]: ::criterion::profiler::Profiler

use std::path::Path;
use std::time::{Duration, Instant};

use ::criterion::Throughput;
use ::criterion::measurement::{Measurement, ValueFormatter};
use ::criterion::profiler::Profiler;

use crate::output::Source;
use crate::record::{countdown, sites};
use crate::support::reentry;

/// Bytes allocated per iteration, as a criterion measurement: the sum of
/// the sizes of the blocks the routine allocated (a `realloc` counts its
/// new size), whether freed or not. Exact.
///
/// `Criterion::default().with_measurement(AllocatedBytes)`; reported in
/// `B`, `KiB`, `MiB` or `GiB`, and with a throughput, per element or per
/// byte processed.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocatedBytes;

/// Allocations per iteration, as a criterion measurement: the blocks the
/// routine allocated (a `realloc` counts as one). Exact.
///
/// `Criterion::default().with_measurement(Allocations)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocations;

/// A criterion measurement of one of the calling thread's exact counts:
/// the count when the iterations start, and its growth when they end.
macro_rules! thread_count_measurement {
    ($type:ty, $count:ident, $formatter:expr) => {
        impl Measurement for $type {
            /// The thread's count when the iterations started.
            type Intermediate = u64;
            type Value = u64;

            fn start(&self) -> u64 {
                super::thread_counts().$count
            }

            fn end(&self, start: u64) -> u64 {
                super::thread_counts().$count.wrapping_sub(start)
            }

            fn add(&self, v1: &u64, v2: &u64) -> u64 {
                v1.wrapping_add(*v2)
            }

            fn zero(&self) -> u64 {
                0
            }

            fn to_f64(&self, value: &u64) -> f64 {
                to_f64(*value)
            }

            fn formatter(&self) -> &dyn ValueFormatter {
                &$formatter
            }
        }
    };
}

thread_count_measurement!(AllocatedBytes, allocated_bytes, BytesFormatter);
thread_count_measurement!(Allocations, allocations, AllocationsFormatter);

/// What criterion analyses for a batch of iterations that counted `n`.
///
/// Each value is moved down by one, two or three [`SPREAD`]s of itself,
/// in turn: a benchmark whose count per iteration is the same in every
/// batch (most are) would otherwise give criterion samples with no spread
/// at all, and its comparison with the last run divides 0 by 0 in every t
/// statistic, which criterion's plot of that comparison does not survive.
/// Criterion prints five significant digits at most, so what it shows is
/// the count, rounded; always down where the count lies halfway between
/// two printed values (1056 B is 1.03125 KiB, printed 1.0312), so that
/// the three numbers it prints agree.
///
/// A batch that counted nothing cannot be handed over as 0: criterion
/// rejects a benchmark with a batch measured as zero ("took zero time per
/// iteration"). Nor as one small number: criterion divides each batch by
/// its iterations, which it picks from the routine's speed, so a constant
/// would make the value per iteration follow the speed, and a benchmark
/// that allocates nothing would be called regressed when it got faster.
/// So such batches alternate between [`ZERO_STAND_IN`] and a shade less
/// than its negative: their mean is almost zero beside their spread,
/// however criterion divides them, so that no comparison of two runs that
/// allocate nothing is significant. The t statistic of such a comparison
/// stays below 1 for every sample size from 10 to 400, whichever side
/// each run starts on: at most about 0.8 where criterion samples
/// `d, 2d, 3d, …` iterations (the alternating series' mean is about
/// `ln 2 / n` of its first term, its spread `1.3 / sqrt(n)` of it), and
/// about 0.4 where it samples the same number each time. Criterion prints
/// `0.0000 B` (or `allocs`): the formatters show a value below zero as 0;
/// the files criterion saves keep it.
fn to_f64(n: u64) -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let batch = BATCHES.fetch_add(1, Relaxed);
    if n == 0 {
        return if batch.is_multiple_of(2) {
            ZERO_STAND_IN
        } else {
            -ZERO_STAND_IN * (1.0 - ZERO_TILT)
        };
    }
    let steps = (batch % 3 + 1) as f64;
    n as f64 * (1.0 - SPREAD * steps)
}

/// The part of a value [`to_f64`] moves it by at each step: far below the
/// five significant digits criterion prints, far above `f64`'s precision.
const SPREAD: f64 = 1e-9;

/// Stands for a count of zero, alternately above and below it (see
/// [`to_f64`]): per iteration, below what criterion prints, and still
/// not zero after the division by a batch's iterations (at most about
/// 10^10 of them).
const ZERO_STAND_IN: f64 = 1e-6;

/// How much less below zero than above the stand-ins of zero lie: their
/// mean is then not exactly zero (criterion divides by it to compare two
/// runs), and is a small part of their spread.
const ZERO_TILT: f64 = 1e-3;

/// What the formatters show for `v`: a value below zero is a stand-in
/// for a count of zero ([`to_f64`]).
fn shown(v: f64) -> f64 {
    v.max(0.0)
}

/// Formats bytes per iteration in binary units.
struct BytesFormatter;

/// Binary units for a typical value of bytes: the divisor and its name.
fn byte_unit(typical: f64) -> (f64, &'static str) {
    const KIB: f64 = 1024.0;
    match typical.abs() {
        t if t < KIB => (1.0, "B"),
        t if t < KIB * KIB => (KIB, "KiB"),
        t if t < KIB * KIB * KIB => (KIB * KIB, "MiB"),
        _ => (KIB * KIB * KIB, "GiB"),
    }
}

/// What a throughput divides a per-iteration value by, and the unit's
/// suffix: allocated per element, or per byte or bit processed.
fn per_unit(throughput: &Throughput) -> (f64, &'static str) {
    match *throughput {
        Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (n as f64, "/B"),
        Throughput::Bits(n) => (n as f64, "/bit"),
        Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => {
            (n as f64, "/elem")
        }
    }
}

impl ValueFormatter for BytesFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (divisor, unit) = byte_unit(typical);
        values.iter_mut().for_each(|v| *v = shown(*v) / divisor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per, suffix) = per_unit(throughput);
        let per = per.max(1.0);
        let (divisor, unit) = byte_unit(typical / per);
        values
            .iter_mut()
            .for_each(|v| *v = shown(*v) / (per * divisor));
        match (unit, suffix) {
            ("B", "/B") => "B/B",
            ("B", "/bit") => "B/bit",
            ("B", _) => "B/elem",
            ("KiB", "/B") => "KiB/B",
            ("KiB", "/bit") => "KiB/bit",
            ("KiB", _) => "KiB/elem",
            ("MiB", "/B") => "MiB/B",
            ("MiB", "/bit") => "MiB/bit",
            ("MiB", _) => "MiB/elem",
            (_, "/B") => "GiB/B",
            (_, "/bit") => "GiB/bit",
            _ => "GiB/elem",
        }
    }

    fn scale_for_machines(&self, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v = shown(*v));
        "bytes"
    }
}

/// Formats allocations per iteration.
struct AllocationsFormatter;

impl ValueFormatter for AllocationsFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v = shown(*v));
        "allocs"
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per, suffix) = per_unit(throughput);
        let per = per.max(1.0);
        values.iter_mut().for_each(|v| *v = shown(*v) / per);
        match suffix {
            "/B" => "allocs/B",
            "/bit" => "allocs/bit",
            _ => "allocs/elem",
        }
    }

    fn scale_for_machines(&self, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v = shown(*v));
        "allocations"
    }
}

/// A criterion profiler that writes a heap profile of each benchmark run
/// under `--profile-time`: what the benchmark allocated while criterion
/// ran it, as `heap.pb.gz` in criterion's profile directory for it
/// (`target/criterion/<benchmark>/profile/heap.pb.gz`), for
/// `go tool pprof -sample_index=alloc_space`.
///
/// ```text
/// cargo bench --bench mine -- --profile-time 5
/// go tool pprof -sample_index=alloc_space -top target/criterion/<benchmark>/profile/heap.pb.gz
/// ```
///
/// The profile is the difference of the site table between the start and
/// the end of the benchmark's run (a delta profile): `alloc_*` are the
/// allocations of the run, `inuse_*` what it left live. While a benchmark
/// is profiled the sample rate is the profiler's,
/// [`DEFAULT_SAMPLE_RATE`](HeapProfiler::DEFAULT_SAMPLE_RATE) (every
/// allocation: exact) unless [`with_sample_rate`](HeapProfiler::with_sample_rate)
/// says otherwise; the previous rate comes back when it ends. Sampling
/// every allocation makes each one cost a stack walk, so fewer
/// iterations fit in the profile time; the profile's totals are for the
/// iterations that ran, and its shares are what to read. The rate is
/// process-wide, and the site table counts every thread: what other
/// threads allocate during the run is in the profile too, as is an
/// `iter_batched` setup's work and what the first iterations build once.
///
/// A profile that cannot be written is reported on stderr in one line;
/// the benchmarks go on.
pub struct HeapProfiler {
    rate: usize,
    run: Option<Run>,
}

/// A benchmark being profiled.
struct Run {
    /// The site table when it started (heapprof's memory).
    before: Vec<sites::SiteCopy>,
    started: Instant,
    /// The rate in force before it started.
    previous_rate: usize,
}

impl HeapProfiler {
    /// The sample rate while a benchmark is profiled: 1, every allocation,
    /// as `go test -memprofilerate=1`.
    pub const DEFAULT_SAMPLE_RATE: usize = 1;

    /// A profiler at [`DEFAULT_SAMPLE_RATE`](HeapProfiler::DEFAULT_SAMPLE_RATE).
    pub fn new() -> Self {
        Self::with_sample_rate(Self::DEFAULT_SAMPLE_RATE)
    }

    /// A profiler that samples at `bytes` (mean bytes between samples, as
    /// [`set_sample_rate`](crate::set_sample_rate)) while a benchmark is
    /// profiled: 524288 for the cost of the default rate and estimates
    /// with its error.
    pub fn with_sample_rate(bytes: usize) -> Self {
        HeapProfiler {
            rate: bytes,
            run: None,
        }
    }

    /// The sample rate it profiles at.
    pub fn sample_rate(&self) -> usize {
        self.rate
    }

    /// Ends a run, if one is going: the rate goes back; the run's site
    /// table, returned, is heapprof's memory (drop it inside the profiler).
    fn end_run(&mut self) -> Option<Run> {
        let run = self.run.take()?;
        countdown::set_rate(run.previous_rate);
        Some(run)
    }
}

impl Default for HeapProfiler {
    fn default() -> Self {
        Self::new()
    }
}

/// The file each benchmark's profile is written to, in the directory
/// criterion gives.
pub const PROFILE_FILE: &str = "heap.pb.gz";

impl Profiler for HeapProfiler {
    fn start_profiling(&mut self, _benchmark_id: &str, _benchmark_dir: &Path) {
        let _inside = reentry::Inside::enter();
        // A run that was never stopped ends here.
        drop(self.end_run());
        let previous_rate = countdown::rate();
        countdown::set_rate(self.rate);
        self.run = Some(Run {
            before: sites::snapshot(),
            started: Instant::now(),
            previous_rate,
        });
    }

    fn stop_profiling(&mut self, benchmark_id: &str, benchmark_dir: &Path) {
        let _inside = reentry::Inside::enter();
        let Some(run) = self.run.take() else {
            return;
        };
        let span = run.started.elapsed();
        let delta = sites::delta(&sites::snapshot(), &run.before);
        // Written at the profiling rate: the profile's sampling period.
        let written = write(benchmark_dir, delta, span);
        countdown::set_rate(run.previous_rate);
        drop(run);
        if let Err(e) = written {
            crate::config::report::warn(format_args!(
                "{e} (the heap profile of benchmark {benchmark_id:?})"
            ));
        }
    }
}

/// Writes the run's profile to `dir`/[`PROFILE_FILE`], making `dir` if it
/// is not there.
fn write(dir: &Path, delta: Vec<sites::SiteCopy>, span: Duration) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("heapprof: {}: {e}", dir.display())))?;
    crate::dump::write_source(
        &dir.join(PROFILE_FILE),
        Source::Delta { sites: delta, span },
    )
    .map(drop)
}

/// A profiler dropped during a run puts the rate back.
impl Drop for HeapProfiler {
    fn drop(&mut self) {
        let _inside = reentry::Inside::enter();
        drop(self.end_run());
    }
}
