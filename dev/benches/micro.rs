//! Micro-benchmarks of heapprof's own paths, in one process with heapprof
//! installed, each measured beside its baseline in the same run:
//!
//! * the cost of one sample at a ~30-frame stack, split into unwinding and
//!   recording (record = a sampled allocation and free, minus an unsampled
//!   one, minus unwinding);
//! * the free of an unsampled block, against the same free straight to the
//!   system allocator;
//! * `write_profile` with 10 000 distinct sites: the first call (cold
//!   symbol cache) and the next (warm);
//! * the profiler's own memory against the live heap at the default rate;
//! * labels: entering and leaving a `with_labels` scope around an
//!   unsampled allocation and free, against the same without the scope,
//!   and a `Labeled` future's poll against the bare future's.
//! * an allocation and free inside `heapprof::measure` (every allocation
//!   takes the slow path there) and outside it, against the system
//!   allocator.
//!
//! Each figure is the median of several repetitions. Run with
//! `cargo bench -p heapprof-dev --bench micro`.

use heapprof_testkit::profile::{string, take_profile};
use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future as _;
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Calls `f` at a stack `depth` frames deeper than here.
#[inline(never)]
fn at_depth(depth: usize, f: &mut dyn FnMut()) {
    if depth == 0 {
        f();
    } else {
        at_depth(depth - 1, f);
        black_box(depth);
    }
}

/// ns per iteration of `f`, median of 9 runs of `n` iterations.
fn time_ns(n: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..9)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .collect(),
    )
}

fn sample_cost() {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: `layout` has a non-zero size; the block is freed once, with it.
    let alloc_free = || unsafe {
        let p = std::alloc::alloc(layout);
        black_box(p);
        std::alloc::dealloc(p, layout);
    };
    let mut results = (0.0, 0.0, 0.0, 0);
    at_depth(24, &mut || {
        heapprof::set_sample_rate(0);
        let plain = time_ns(20_000, alloc_free);
        heapprof::set_sample_rate(1);
        let sampled = time_ns(20_000, alloc_free);
        heapprof::set_sample_rate(512 * 1024);
        let frames = heapprof::__bench::capture_stack();
        let unwind = time_ns(20_000, || {
            black_box(heapprof::__bench::capture_stack());
        });
        results = (plain, sampled, unwind, frames);
    });
    let (plain, sampled, unwind, frames) = results;
    let sample = sampled - plain;
    println!(
        "| one sample (alloc + free of a sampled 64 B block, {frames} frames) | {:.2} µs | unwind {:.2} µs + record {:.2} µs; unsampled alloc+free {plain:.0} ns |",
        sample / 1e3,
        unwind / 1e3,
        (sample - unwind) / 1e3
    );
}

fn free_path() {
    // Sampling off, so that no block is sampled: this is the unsampled free.
    heapprof::set_sample_rate(0);
    let layout = Layout::from_size_align(48, 8).unwrap();
    let n = 200_000;
    let mut blocks = Vec::with_capacity(n);
    let mut run = |through_heapprof: bool| {
        median(
            (0..9)
                .map(|_| {
                    // Each side allocates and frees through its own allocator
                    // (heapprof forwards to System); only the frees are timed.
                    // SAFETY: `layout` has a non-zero size; each block is
                    // freed below, once, by the allocator it came from.
                    blocks.extend((0..n).map(|_| unsafe {
                        if through_heapprof {
                            ALLOC.alloc(layout)
                        } else {
                            System.alloc(layout)
                        }
                    }));
                    // Free in address order. Without this, the side that
                    // ran second met the first side's freed blocks in
                    // glibc's bins, got them back in reverse address order,
                    // and its frees ran 3 to 5 times slower, whichever side
                    // it was: a heap-layout artefact, not a cost of either.
                    blocks.sort_unstable();
                    let t = Instant::now();
                    for &p in &blocks {
                        // SAFETY: `p` came from this side's allocator with
                        // `layout` and is freed once (`blocks` is cleared).
                        unsafe {
                            if through_heapprof {
                                ALLOC.dealloc(p, layout)
                            } else {
                                System.dealloc(p, layout)
                            }
                        }
                    }
                    let ns = t.elapsed().as_nanos() as f64 / n as f64;
                    blocks.clear();
                    ns
                })
                .collect(),
        )
    };
    // Alternate, so that neither side always meets the heap the other left.
    let (mut system, mut heapprof) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        system.push(run(false));
        heapprof.push(run(true));
    }
    let (system, heapprof) = (median(system), median(heapprof));
    heapprof::set_sample_rate(512 * 1024);
    println!(
        "| free of an unsampled 48 B block | {heapprof:.1} ns | System alone {system:.1} ns (ratio {:.3}) |",
        heapprof / system
    );
}

/// An allocation and free of a 64 B block: through heapprof outside a
/// measure, through heapprof inside one, and straight to the system
/// allocator, at the default rate, alternated.
fn measure_cost() {
    heapprof::set_sample_rate(512 * 1024);
    let layout = Layout::from_size_align(64, 8).unwrap();
    let n = 200_000;
    // SAFETY: `layout` has a non-zero size; each block is freed once, with
    // it, by the allocator it came from.
    let heapprof_pair = || unsafe {
        let p = ALLOC.alloc(layout);
        black_box(p);
        ALLOC.dealloc(p, layout);
    };
    // SAFETY: as above.
    let system_pair = || unsafe {
        let p = System.alloc(layout);
        black_box(p);
        System.dealloc(p, layout);
    };
    let (mut outside, mut inside, mut system) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        system.push(time_ns(n, system_pair));
        outside.push(time_ns(n, heapprof_pair));
        inside.push(heapprof::measure(|| time_ns(n, heapprof_pair)).0);
    }
    let (outside, inside, system) = (median(outside), median(inside), median(system));
    println!(
        "| alloc + free of a 64 B block inside `measure` | {inside:.1} ns | outside {outside:.1} ns; System alone {system:.1} ns (ratios {:.2} inside, {:.2} outside) |",
        inside / system,
        outside / system
    );
}

/// 2^14 call paths through `left`/`right`: one distinct stack per path.
#[inline(never)]
fn left(path: u32, depth: u32, keep: &mut Vec<Vec<u8>>) {
    branch(path, depth, keep);
    black_box(depth);
}

#[inline(never)]
fn right(path: u32, depth: u32, keep: &mut Vec<Vec<u8>>) {
    branch(path, depth, keep);
    black_box(depth);
}

fn branch(path: u32, depth: u32, keep: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        keep.push(vec![0u8; 32]);
    } else if path >> (depth - 1) & 1 == 0 {
        left(path, depth - 1, keep)
    } else {
        right(path, depth - 1, keep)
    }
}

fn write_profile_cost() {
    heapprof::set_sample_rate(1);
    let mut keep = Vec::with_capacity(10_000);
    for path in 0..10_000 {
        branch(path, 14, &mut keep);
    }
    heapprof::set_sample_rate(512 * 1024);
    let mut buf = Vec::new();
    let t = Instant::now();
    heapprof::write_profile(&mut buf).unwrap();
    let cold = t.elapsed().as_secs_f64() * 1e3;
    let warm = median(
        (0..5)
            .map(|_| {
                buf.clear();
                let t = Instant::now();
                heapprof::write_profile(&mut buf).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    println!(
        "| write_profile, 10 000 distinct sites, symbols cached | {warm:.1} ms | first call (cold symbolization) {cold:.0} ms; {} KiB gzipped |",
        buf.len() / 1024
    );
    drop(keep);
}

fn profiler_memory() {
    heapprof::set_sample_rate(512 * 1024);
    // A live heap of ~1 GiB in mixed small and large blocks.
    let mut keep: Vec<Vec<u8>> = Vec::new();
    for i in 0..4_000_000usize {
        keep.push(vec![1u8; 16 + (i % 32) * 8]);
    }
    for _ in 0..200 {
        keep.push(vec![2u8; 1 << 20]);
    }
    let s = heapprof::stats();
    println!(
        "| profiler memory at 512 KiB, live heap {} MiB | {} KiB | {:.3} % of the live heap (tables, live-sample set, spare sampled blocks, symbol cache) |",
        s.live_bytes() >> 20,
        s.profiler_bytes >> 10,
        100.0 * s.profiler_bytes as f64 / s.live_bytes() as f64
    );
    drop(keep);
}

/// A future that is never ready: each poll counts and returns.
struct Pending(u64);

impl std::future::Future for Pending {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.0 = black_box(self.0 + 1);
        std::task::Poll::Pending
    }
}

fn labels_cost() {
    heapprof::set_sample_rate(512 * 1024);
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: `layout` has a non-zero size; the block is freed once, with it.
    let alloc_free = || unsafe {
        let p = std::alloc::alloc(layout);
        black_box(p);
        std::alloc::dealloc(p, layout);
    };
    let n = 200_000;
    let bare = time_ns(n, alloc_free);
    let scoped = time_ns(n, || {
        heapprof::with_labels(&[("tenant", "acme")], alloc_free)
    });
    let nested = heapprof::with_labels(&[("route", "/api/x")], || {
        time_ns(n, || {
            heapprof::with_labels(&[("tenant", "acme")], alloc_free)
        })
    });
    println!(
        "| with_labels enter + leave (one label) around an unsampled 64 B alloc+free | {:.0} ns | alloc+free alone {bare:.1} ns, with the scope {scoped:.1} ns (ratio {:.2}); inside another scope {:.0} ns |",
        scoped - bare,
        scoped / bare,
        nested - bare,
    );

    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut plain = std::pin::pin!(Pending(0));
    let bare = time_ns(n, || {
        let _ = plain.as_mut().poll(&mut cx);
    });
    let mut labeled = std::pin::pin!(heapprof::Labeled::new(Pending(0), &[("tenant", "acme")]));
    let wrapped = time_ns(n, || {
        let _ = labeled.as_mut().poll(&mut cx);
    });
    let in_scope = heapprof::with_labels(&[("route", "/api/x")], || {
        time_ns(n, || {
            let _ = labeled.as_mut().poll(&mut cx);
        })
    });
    println!(
        "| Labeled poll overhead (one label) | {:.1} ns | bare poll {bare:.1} ns, Labeled {wrapped:.1} ns (ratio {:.1}); polled inside another scope {in_scope:.1} ns |",
        wrapped - bare,
        wrapped / bare,
    );
}

/// What `heapprof::tracing::LabelLayer` adds to entering and leaving a
/// span, beside the same registry without it: a labelled span made inside
/// a labelled parent (the parent entered), and a span with no chosen
/// field and no parent.
fn span_labels_cost() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let n = 200_000;
    let enter_exit = |labelled: bool| {
        let parent = tracing::info_span!("request", tenant = "acme");
        let _in_parent = parent.enter();
        let child = if labelled {
            tracing::info_span!("handler", route = "/api/x")
        } else {
            tracing::info_span!(parent: None, "handler", other = 1)
        };
        time_ns(n, || drop(child.enter()))
    };
    let bare =
        tracing::subscriber::with_default(tracing_subscriber::registry(), || enter_exit(true));
    let layered = tracing_subscriber::registry()
        .with(heapprof::tracing::LabelLayer::new(["tenant", "route"]));
    let (labelled, plain) =
        tracing::subscriber::with_default(layered, || (enter_exit(true), enter_exit(false)));
    println!(
        "| tracing span enter + exit with `LabelLayer` (a labelled span made inside a labelled parent) | {:.0} ns | registry alone {bare:.1} ns, with the layer {labelled:.1} ns (ratio {:.1}); a span with no chosen field and no parent {:.0} ns |",
        labelled - bare,
        labelled / bare,
        plain - bare,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("heapprof micro-benchmarks (medians)");
    println!();
    println!("| what | heapprof | detail |");
    println!("|---|---|---|");
    sample_cost();
    free_path();
    write_profile_cost();
    profiler_memory();
    labels_cost();
    span_labels_cost();
    measure_cost();
    println!();
    println!("({})", unwinder());
}

/// The profile's comment that names the unwinder it used.
fn unwinder() -> String {
    let p = take_profile();
    p.comment
        .iter()
        .map(|&i| string(&p, i))
        .find(|c| c.contains("unwound with"))
        .unwrap_or_default()
        .to_owned()
}
