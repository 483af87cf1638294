//! The estimator is unbiased and its spread is what the sampling math says.
//!
//! The same mixed-size workload runs 30 times with 30 seeds. Each run's
//! estimate of the bytes it allocated is compared with the truth:
//!
//! * the mean of the 30 estimates must be within 2 % of the truth; with
//!   the per-run standard error below (~2 %), the mean's is ~0.4 %, so 2 %
//!   is about 5 standard errors;
//! * the standard deviation of the 30 estimates must match the exact one
//!   for this workload, sqrt(Σ s²(1-p)/p) with p = 1 - exp(-s/R) per block,
//!   within a factor the 30-run sample allows (its relative uncertainty is
//!   1/sqrt(2·29) ≈ 13 %; we accept 0.6× to 1.5×, over 3 of those either
//!   side).

use heapprof_testkit::profile::{ALLOC_SPACE, cum, take_profile};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const RATE: usize = 64 * 1024;
const RUNS: u64 = 30;

/// Sizes from 16 B to 256 KiB: far below, around, and above the rate.
const SIZES: [usize; 8] = [16, 100, 700, 3000, 12_000, 40_000, 100_000, 262_144];
const ROUNDS: usize = 300;

#[inline(never)]
fn churn() {
    for _ in 0..ROUNDS {
        for &s in &SIZES {
            std::hint::black_box(vec![0u8; s]);
        }
    }
}

#[test]
fn mean_of_30_seeded_runs_is_within_2_percent() {
    heapprof::set_sample_rate(RATE);
    let truth = (ROUNDS * SIZES.iter().sum::<usize>()) as f64;
    let expected_sd = (ROUNDS as f64
        * SIZES
            .iter()
            .map(|&s| {
                let p = -(-(s as f64) / RATE as f64).exp_m1();
                (s as f64).powi(2) * (1.0 - p) / p
            })
            .sum::<f64>())
    .sqrt();

    let mut estimates = Vec::new();
    let mut last = cum(&take_profile(), "churn", ALLOC_SPACE);
    for seed in 0..RUNS {
        heapprof::set_seed(seed);
        churn();
        let now = cum(&take_profile(), "churn", ALLOC_SPACE);
        estimates.push((now - last) as f64);
        last = now;
    }
    let mean = estimates.iter().sum::<f64>() / RUNS as f64;
    let sd = (estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (RUNS - 1) as f64).sqrt();
    let bias = mean / truth - 1.0;
    println!(
        "truth {truth:.0} B; mean of {RUNS} estimates {mean:.0} B ({:+.2} %); sd {sd:.0} B vs expected {expected_sd:.0} B (ratio {:.2}); per-run relative error {:.2} %",
        bias * 100.0,
        sd / expected_sd,
        expected_sd / truth * 100.0
    );
    assert!(
        bias.abs() < 0.02,
        "mean estimate is {:+.2} % off the truth",
        bias * 100.0
    );
    let ratio = sd / expected_sd;
    assert!(
        (0.6..1.5).contains(&ratio),
        "spread {sd:.0} vs expected {expected_sd:.0}"
    );
}
