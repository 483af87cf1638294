//! # heapprof: Go-style heap profiles for Rust programs
//!
//! heapprof is a global allocator that wraps another one (the system
//! allocator by default) and *samples* the allocations that pass through
//! it, the way Go's runtime does: on average one sample per 512 KiB
//! allocated, each with its stack. At any moment it can write what it has
//! seen as a pprof heap profile, which `go tool pprof`, Pyroscope, Parca
//! and speedscope read.
//!
//! ## Quick start
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! fn main() -> std::io::Result<()> {
//!     let data: Vec<String> = (0..100_000).map(|i| format!("item {i}")).collect();
//!     heapprof::write_profile(std::fs::File::create("heap.pb.gz")?)?;
//!     drop(data);
//!     Ok(())
//! }
//! ```
//!
//! Then, with Go installed:
//!
//! ```text
//! go tool pprof -top ./target/release/myprog heap.pb.gz        # who holds memory now
//! go tool pprof -sample_index=alloc_space -top heap.pb.gz      # who allocated the most
//! go tool pprof -list 'myprog::build_index' heap.pb.gz         # line by line
//! go tool pprof -base before.pb.gz -top after.pb.gz            # what grew in between
//! go tool pprof -http=:8080 heap.pb.gz                         # graph, flame graph, source
//! ```
//!
//! To wrap another allocator: `heapprof::Profiler::wrap(mimalloc::MiMalloc)`.
//!
//! ## What the numbers mean
//!
//! Each profile has four sample types, in Go's order:
//!
//! * `alloc_objects`, `alloc_space`: allocations made at the site since the
//!   program started (freed or not);
//! * `inuse_objects`, `inuse_space` (the default view): allocations made at
//!   the site that are still live.
//!
//! They are *estimates*: a sampled allocation of `s` bytes stands for
//! `1/(1 - exp(-s/rate))` allocations, which makes every site's estimate
//! unbiased. A site that allocated `B` bytes is known to within about
//! `1/sqrt(B/rate)` (one standard error): ±10 % at 100 × the rate (50 MiB by
//! default), ±100 % at 1 × the rate. Small sites come and go between
//! profiles; large ones are stable.
//!
//! Stacks are trimmed at the leaf end of the allocation machinery
//! (`__rust_alloc`, `RawVec` growth, `vec!`, `format!`, `HashMap::insert`,
//! …), so the flat entries of `-top` are the functions that decided to
//! allocate, as in Go.
//!
//! ## Sample rate
//!
//! * `HEAPPROF_SAMPLE_RATE=524288` (bytes; also `512KiB`, `2MiB`, `64k`): the
//!   mean bytes between samples. `0` turns sampling off; `1` records every
//!   allocation exactly (the testing mode). A value that does not parse is
//!   reported on stderr and the default is used.
//! * [`set_sample_rate`] / [`sample_rate`] at run time.
//! * `HEAPPROF_SEED=N` or [`set_seed`]: fixed seeds for reproducible runs.
//! * `HEAPPROF_MAX_SITES=N` (default 16384): distinct stacks kept; samples
//!   at further sites are counted in one `[heapprof overflow…]` site.
//!
//! ## Cost
//!
//! An allocation that is not sampled costs a thread-local subtract and a
//! branch; a free costs an AND and a branch. A sampled allocation (one per
//! 512 KiB) costs a stack walk and a short locked update. See
//! `BENCHMARKS.md` in the repository for measurements.
//!
//! ## Design
//!
//! One file per concern: `allocator.rs` (the fast path), `sampler.rs` (the
//! sampling math), `stack.rs` (unwinding), `buckets.rs` (the per-site
//! table), `sampled.rs` (the live sampled blocks and the free-path filter),
//! `recorder.rs` (the slow paths), `symbolize.rs` and `mappings.rs`
//! (addresses to names), `profile.rs` (the pprof encoding), `config.rs`
//! (the environment), `guard.rs` (reentrancy), `lock.rs` (a fork-safe
//! futex mutex) and `fork.rs`.

#![warn(missing_docs)]

mod allocator;
mod buckets;
mod config;
mod fork;
mod guard;
mod lock;
mod mappings;
mod profile;
#[doc(hidden)]
pub mod proto;
mod recorder;
mod sampled;
mod sampler;
mod spare;
mod stack;
mod symbolize;

use std::io;

pub use allocator::Profiler;

/// Writes the current heap profile to `w`: a gzip-compressed pprof
/// `profile.proto` message with sample types `alloc_objects`,
/// `alloc_space`, `inuse_objects` and `inuse_space` (the default view).
///
/// Safe to call from any thread, at any time, as often as wanted; symbol
/// lookups are cached, so later calls are cheaper than the first. The
/// allocations made while writing are not themselves profiled.
///
/// # Errors
///
/// Whatever `w` returns, and an error of kind `Other` if heapprof is not the
/// program's global allocator (nothing could have been recorded).
pub fn write_profile<W: io::Write>(w: W) -> io::Result<()> {
    let _busy = guard::Busy::enter();
    check_installed()?;
    profile::write(w, profile::Options::default())
}

fn check_installed() -> io::Result<()> {
    if recorder::installed() {
        Ok(())
    } else {
        Err(io::Error::other(
            "heapprof is not this program's global allocator, so there is nothing to profile; add \
             `#[global_allocator] static ALLOC: heapprof::Profiler = heapprof::Profiler::new();`",
        ))
    }
}

/// Sets the mean number of bytes between samples. `0` stops sampling; `1`
/// records every allocation. Takes effect at once on the calling thread and
/// on threads started later; running threads switch at their next sample,
/// or, if sampling was off, within their next 512 KiB of allocations.
pub fn set_sample_rate(bytes: usize) {
    sampler::set_rate(bytes)
}

/// The mean number of bytes between samples (default 524288, or
/// `HEAPPROF_SAMPLE_RATE`).
pub fn sample_rate() -> usize {
    let _busy = guard::Busy::enter();
    sampler::rate()
}

/// Seeds the sampler's random generators, for reproducible runs: the
/// calling thread restarts from this seed, and each thread that starts
/// sampling later is seeded from it and its start order.
pub fn set_seed(seed: u64) {
    sampler::set_seed(seed)
}
