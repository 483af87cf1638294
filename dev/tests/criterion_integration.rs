//! heapprof's criterion integration, driven as criterion drives it:
//! the measurements' values around known work, and the profiler's
//! `start_profiling`/`stop_profiling` against a temporary directory, whose
//! profile `go tool pprof` reads.

use std::hint::black_box;
use std::path::Path;
use std::sync::Mutex;

use criterion::Throughput;
use criterion::measurement::Measurement;
use criterion::profiler::Profiler;
use heapprof::criterion::{AllocatedBytes, Allocations, HeapProfiler};
use heapprof_testkit::profile::{ALLOC_OBJECTS, ALLOC_SPACE, INUSE_SPACE, cum, decode, string};
use heapprof_testkit::tools::{go_available, go_pprof};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// One test at a time calls `profiled_work`: the sample rate and the
/// profiler's delta profile are process-wide, so another test's calls
/// inside a profiling window would count in that window's profile.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// 100 blocks of 1000 bytes kept, 100 of 24 bytes freed, and the vector
/// of 100 `Vec`s that holds the kept ones (2400 bytes).
#[inline(never)]
fn profiled_work() -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(100);
    for i in 0..100 {
        kept.push(black_box(vec![i as u8; 1000]));
        drop(black_box(vec![i as u8; 24]));
    }
    black_box(kept)
}

const ALLOCATIONS: u64 = 201;
const BYTES: u64 = 100 * 1000 + 100 * 24 + 100 * 24;
const LIVE: u64 = 100 * 1000 + 100 * 24;

#[test]
fn measurements_count_the_thread_exactly() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    drop(profiled_work());
    let start = AllocatedBytes.start();
    let kept = profiled_work();
    assert_eq!(AllocatedBytes.end(start), BYTES);
    let start = Allocations.start();
    drop(profiled_work());
    assert_eq!(Allocations.end(start), ALLOCATIONS);
    drop(kept);
    // Exact to far more digits than criterion prints, and below the count:
    // 1056 B, 1.03125 KiB, halfway between two values criterion's four
    // decimals show, prints the same way in every batch.
    for _ in 0..6 {
        let shown = AllocatedBytes.to_f64(&BYTES);
        assert!(shown < BYTES as f64, "{shown}");
        assert!((shown / BYTES as f64 - 1.0).abs() < 1e-8, "{shown}");
        let kib = AllocatedBytes.to_f64(&1056) / 1024.0;
        assert_eq!(format!("{kib:.4}"), "1.0312", "{kib}");
    }
    // A batch that allocated nothing is not zero to criterion, which
    // rejects zeros, and prints as zero.
    let zero = AllocatedBytes.to_f64(&0);
    assert!(zero > 0.0 && zero < 1e-4, "{zero}");
}

#[test]
fn formatters_scale_to_readable_units() {
    let f = AllocatedBytes.formatter();
    let mut values = [3.0 * 1024.0, 1536.0];
    assert_eq!(f.scale_values(2048.0, &mut values), "KiB");
    assert_eq!(values, [3.0, 1.5]);
    let mut values = [4096.0];
    assert_eq!(
        f.scale_throughputs(4096.0, &Throughput::Elements(8), &mut values),
        "B/elem"
    );
    assert_eq!(values, [512.0]);
    let mut values = [7.0];
    let f = Allocations.formatter();
    assert_eq!(f.scale_values(7.0, &mut values), "allocs");
    assert_eq!(
        f.scale_throughputs(7.0, &Throughput::Bytes(7), &mut values),
        "allocs/B"
    );
    assert_eq!(values, [1.0]);
}

fn comments(p: &heapprof_testkit::proto::Profile) -> Vec<&str> {
    p.comment.iter().map(|&i| string(p, i)).collect()
}

/// Under `--profile-time` criterion calls the profiler around each
/// benchmark with its directory; the profile there holds what the
/// benchmark did, every allocation of it at the profiler's rate, and the
/// rate comes back afterwards.
#[test]
fn the_profiler_writes_each_benchmark_a_profile() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    heapprof::set_sample_rate(512 * 1024);
    let out = tempfile::tempdir().unwrap();
    // As criterion names it: <output>/<benchmark>/profile, not made yet.
    let dir = out.path().join("group").join("work").join("profile");
    let mut profiler = HeapProfiler::new();
    assert_eq!(profiler.sample_rate(), HeapProfiler::DEFAULT_SAMPLE_RATE);
    profiler.start_profiling("group/work", &dir);
    assert_eq!(heapprof::sample_rate(), HeapProfiler::DEFAULT_SAMPLE_RATE);
    let kept = profiled_work();
    profiler.stop_profiling("group/work", &dir);
    assert_eq!(heapprof::sample_rate(), 512 * 1024, "the rate comes back");

    let path = dir.join("heap.pb.gz");
    let p = decode(&std::fs::read(&path).unwrap());
    let name = "criterion_integration::profiled_work";
    assert_eq!(cum(&p, name, ALLOC_OBJECTS), ALLOCATIONS as i64);
    assert_eq!(cum(&p, name, ALLOC_SPACE), BYTES as i64);
    assert_eq!(cum(&p, name, INUSE_SPACE), LIVE as i64);
    assert!(
        comments(&p).iter().any(|c| c.contains("delta profile")),
        "{:?}",
        comments(&p)
    );
    drop(kept);

    if go_available() {
        let top = go_pprof(&["-sample_index=alloc_space", "-top", path.to_str().unwrap()]);
        assert!(
            top.contains("criterion_integration::profiled_work"),
            "{top}"
        );
    }
}

/// Criterion compares each run of a benchmark with its last one. A count
/// the same in every batch, as an unchanged benchmark's is, must still
/// leave criterion a spread: with none, every t statistic of the
/// comparison is 0/0, and its plot reads the first of no values. Two runs
/// into one directory, with criterion's reports and plots, as a user's
/// second `cargo bench` makes them.
#[test]
fn an_unchanged_count_is_compared_with_its_last_run() {
    use criterion::{Criterion, PlottingBackend};
    use std::time::Duration;
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let out = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let mut c = Criterion::default()
            .output_directory(out.path())
            .plotting_backend(PlottingBackend::Plotters)
            .with_measurement(Allocations)
            .sample_size(10)
            .nresamples(1000)
            .warm_up_time(Duration::from_millis(10))
            .measurement_time(Duration::from_millis(50));
        c.bench_function("one_box", |b| {
            b.iter(|| black_box(Box::new(black_box(1u64))))
        });
    }
    // Criterion saves the relative change of the mean: none, to the
    // digits it prints.
    let (lower, mean, upper) = mean_change(&out.path().join("one_box"));
    assert!(mean.abs() < 1e-6, "{mean} in [{lower}, {upper}]");
}

/// The relative change of the mean criterion saved in `dir`'s `change`
/// directory: (lower bound, point, upper bound).
fn mean_change(dir: &Path) -> (f64, f64, f64) {
    let estimates: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("change").join("estimates.json")).unwrap(),
    )
    .unwrap();
    let mean = &estimates["mean"];
    let number = |v: &serde_json::Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("no number in {estimates}"))
    };
    (
        number(&mean["confidence_interval"]["lower_bound"]),
        number(&mean["point_estimate"]),
        number(&mean["confidence_interval"]["upper_bound"]),
    )
}

/// The values per iteration of the run criterion saved in `dir`'s
/// `baseline` directory (`new`, the latest run).
fn per_iteration(dir: &Path, baseline: &str) -> Vec<f64> {
    let sample: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(baseline).join("sample.json")).unwrap(),
    )
    .unwrap();
    let numbers = |key: &str| -> Vec<f64> {
        sample[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {sample}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (iters, values) = (numbers("iters"), numbers("times"));
    iters.iter().zip(&values).map(|(i, v)| v / i).collect()
}

/// Welch's t statistic of two samples, as criterion computes it to
/// compare a run with the last one (its p value comes from resamples of
/// both, under which a t this far from 0 or farther is common).
fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let var =
        |s: &[f64], m: f64| s.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (s.len() - 1) as f64;
    let (ma, mb) = (mean(a), mean(b));
    (ma - mb) / (var(a, ma) / a.len() as f64 + var(b, mb) / b.len() as f64).sqrt()
}

/// A routine that allocates nothing measures zero however fast it runs:
/// criterion picks each batch's iterations from the routine's speed, and
/// a run 1000 times slower than the last, or faster, must not be called
/// a change. Criterion calls one only where the t statistic of the two
/// runs' values per iteration is significant (at its 5 % level, about 2
/// for 20 values each); heapprof's stand-ins for zero keep it below 1.
#[test]
fn a_benchmark_that_allocates_nothing_does_not_change_with_its_speed() {
    use criterion::Criterion;
    use std::time::Duration;
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let out = tempfile::tempdir().unwrap();
    let spin = |n: u64| {
        let mut x = 0u64;
        for i in 0..n {
            x = black_box(x.wrapping_add(i));
        }
        x
    };
    // Each run's values, by benchmark: criterion saves only the latest.
    let mut last_values = std::collections::HashMap::new();
    for (run, spins) in [10, 10_000, 10].into_iter().enumerate() {
        for measure_bytes in [true, false] {
            let name = if measure_bytes { "bytes" } else { "allocs" };
            let config = Criterion::default()
                .output_directory(out.path())
                .without_plots()
                .sample_size(20)
                .nresamples(2000)
                .warm_up_time(Duration::from_millis(20))
                .measurement_time(Duration::from_millis(100));
            if measure_bytes {
                let mut c = config.with_measurement(AllocatedBytes);
                c.bench_function(name, |b| b.iter(|| spin(black_box(spins))));
            } else {
                let mut c = config.with_measurement(Allocations);
                c.bench_function(name, |b| b.iter(|| spin(black_box(spins))));
            }
            let dir = out.path().join(name);
            let values = per_iteration(&dir, "new");
            let Some(last) = last_values.insert(name, values.clone()) else {
                continue;
            };
            let t = welch_t(&values, &last);
            let (lower, point, upper) = mean_change(&dir);
            assert!(
                t.abs() < 1.0,
                "{name}, run {run} ({spins} spins): t = {t}, mean change {point} in [{lower}, {upper}]"
            );
        }
    }
}

/// A directory that cannot be made is reported and loses nothing else:
/// no panic, and the rate comes back.
#[test]
fn a_profile_that_cannot_be_written_is_reported_not_fatal() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    heapprof::set_sample_rate(4096);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("profile");
    let mut profiler = HeapProfiler::with_sample_rate(64 * 1024);
    profiler.start_profiling("b", &dir);
    assert_eq!(heapprof::sample_rate(), 64 * 1024);
    drop(profiled_work());
    profiler.stop_profiling("b", &dir);
    assert_eq!(heapprof::sample_rate(), 4096);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
    // Stopping what was not started writes nothing.
    let other = out.path().join("other");
    profiler.stop_profiling("c", &other);
    assert!(!Path::new(&other).exists());
    // A profiler dropped while profiling puts the rate back.
    profiler.start_profiling("d", &other);
    drop(profiler);
    assert_eq!(heapprof::sample_rate(), 4096);
    heapprof::set_sample_rate(512 * 1024);
}
