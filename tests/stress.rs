//! Concurrency under load: many threads allocating, zero-allocating,
//! growing, shrinking and freeing blocks of every size and alignment while
//! profiles are written and the sample rate changes under them.
//!
//! Asserts, for a fixed number of operations (seeded, so reproducible):
//!
//! * every block is non-null, aligned as asked, zeroed when asked, and
//!   keeps its contents (a per-block pattern) until freed and across
//!   `realloc` up to the smaller size: the profiler never hands out a
//!   block twice, frees one early, or copies one wrongly;
//! * every profile written meanwhile decodes, and no sample ever shows a
//!   negative value or more in use than allocated;
//! * once every worker has freed everything it allocated, the sites in the
//!   workers show nothing in use: every sampled free was credited to the
//!   site that allocated the block, whatever the rate was at either end;
//! * it all finishes (a watchdog aborts the binary after 120 s).

use heapprof_testkit::check::assert_sane_values;
use heapprof_testkit::profile::{
    ALLOC_OBJECTS, INUSE_OBJECTS, INUSE_SPACE, cum, decode, live_sampled_blocks, table_bytes,
    take_profile,
};
use heapprof_testkit::rng::XorShift;
use heapprof_testkit::watchdog::watchdog;

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc, realloc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const WORKERS: usize = 8;
/// A few seconds in release; unoptimized pattern checks are ~10x slower.
const OPS_PER_WORKER: usize = if cfg!(debug_assertions) {
    5_000
} else {
    40_000
};
/// Live blocks per worker at most.
const SLOTS: usize = 32;
/// 1 = every allocation, 4096 and 65536 either side of page alignment,
/// the default, and off.
const RATES: [usize; 5] = [1, 4096, 65536, 512 * 1024, 0];
const MAX_SIZE: usize = 4 << 20;

#[derive(Default)]
struct Counts {
    allocs: usize,
    zeroed: usize,
    grows: usize,
    shrinks: usize,
    frees: usize,
    bytes: usize,
    large: usize,
}

struct Block {
    ptr: *mut u8,
    layout: Layout,
    tag: u8,
}

fn pattern(tag: u8, i: usize) -> u8 {
    tag ^ (i as u8).wrapping_mul(31) ^ (i >> 8) as u8
}

fn fill(ptr: *mut u8, from: usize, to: usize, tag: u8) {
    for i in from..to {
        // SAFETY: the block holds at least `to` bytes.
        unsafe { ptr.add(i).write(pattern(tag, i)) };
    }
}

fn check(ptr: *mut u8, len: usize, tag: u8, what: &str) {
    for i in 0..len {
        // SAFETY: the block holds at least `len` initialized bytes.
        let got = unsafe { ptr.add(i).read() };
        assert_eq!(
            got,
            pattern(tag, i),
            "{what}: byte {i} of {len} corrupted at {ptr:p}"
        );
    }
}

/// Mostly small, some medium, a few large; alignments 1 to 4096, mostly
/// small.
fn random_layout(rng: &mut XorShift) -> Layout {
    let size = match rng.below(1000) {
        0..900 => rng.log_uniform(1, 256),
        900..985 => rng.log_uniform(257, 64 * 1024),
        _ => rng.log_uniform(64 * 1024 + 1, MAX_SIZE),
    };
    let align = if rng.below(10) < 7 {
        1 << rng.below(5)
    } else {
        1 << rng.below(13)
    };
    Layout::from_size_align(size, align).unwrap()
}

#[inline(never)]
fn new_block(rng: &mut XorShift, tag: u8, c: &mut Counts) -> Block {
    let layout = random_layout(rng);
    let zeroed = rng.below(4) == 0;
    // SAFETY: non-zero size.
    let ptr = unsafe {
        if zeroed {
            alloc_zeroed(layout)
        } else {
            alloc(layout)
        }
    };
    assert!(!ptr.is_null(), "allocation of {layout:?} failed");
    assert_eq!(ptr as usize % layout.align(), 0, "misaligned {layout:?}");
    if zeroed {
        for i in 0..layout.size() {
            // SAFETY: `layout.size()` bytes, zeroed by alloc_zeroed.
            assert_eq!(unsafe { ptr.add(i).read() }, 0, "alloc_zeroed byte {i}");
        }
        c.zeroed += 1;
    } else {
        c.allocs += 1;
    }
    c.bytes += layout.size();
    if layout.size() > 64 * 1024 {
        c.large += 1;
    }
    fill(ptr, 0, layout.size(), tag);
    Block { ptr, layout, tag }
}

#[inline(never)]
fn resize_block(b: &mut Block, rng: &mut XorShift, c: &mut Counts) {
    let old = b.layout.size();
    let new = random_layout(rng).size();
    // SAFETY: `b` was allocated with `b.layout`; `new` is non-zero and
    // far below isize::MAX.
    let ptr = unsafe { realloc(b.ptr, b.layout, new) };
    assert!(!ptr.is_null(), "realloc {old} -> {new} failed");
    assert_eq!(ptr as usize % b.layout.align(), 0, "realloc lost alignment");
    check(ptr, old.min(new), b.tag, "realloc");
    if new > old {
        fill(ptr, old, new, b.tag);
        c.grows += 1;
    } else {
        c.shrinks += 1;
    }
    c.bytes += new;
    b.ptr = ptr;
    b.layout = Layout::from_size_align(new, b.layout.align()).unwrap();
}

#[inline(never)]
fn free_block(b: Block, c: &mut Counts) {
    check(b.ptr, b.layout.size(), b.tag, "before free");
    // SAFETY: allocated with this layout, freed once.
    unsafe { dealloc(b.ptr, b.layout) };
    c.frees += 1;
}

#[inline(never)]
fn stress_worker(id: usize) -> Counts {
    let mut rng = XorShift::new(0x5EED + id as u64);
    let mut slots: Vec<Option<Block>> = (0..SLOTS).map(|_| None).collect();
    let mut c = Counts::default();
    for op in 0..OPS_PER_WORKER {
        let i = rng.below(SLOTS as u64) as usize;
        match slots[i].take() {
            None => slots[i] = Some(new_block(&mut rng, (id * 37 + op) as u8, &mut c)),
            Some(mut b) => {
                check(b.ptr, b.layout.size(), b.tag, "live block");
                if rng.below(10) < 4 {
                    resize_block(&mut b, &mut rng, &mut c);
                    slots[i] = Some(b);
                } else {
                    free_block(b, &mut c);
                }
            }
        }
    }
    for b in slots.into_iter().flatten() {
        free_block(b, &mut c);
    }
    c
}

#[test]
fn threads_allocate_resize_and_free_while_profiles_are_written_and_the_rate_changes() {
    let _watchdog = watchdog("stress test", Duration::from_secs(120));
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let profiles = Arc::new(AtomicUsize::new(0));
    let rate_changes = Arc::new(AtomicUsize::new(0));

    let writer = {
        let (done, profiles) = (done.clone(), profiles.clone());
        std::thread::spawn(move || {
            while !done.load(Relaxed) {
                let mut gz = Vec::new();
                heapprof::write_profile(&mut gz).expect("write_profile");
                assert_sane_values(&decode(&gz));
                profiles.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let rater = {
        let (done, rate_changes) = (done.clone(), rate_changes.clone());
        std::thread::spawn(move || {
            let mut rng = XorShift::new(99);
            while !done.load(Relaxed) {
                heapprof::set_sample_rate(RATES[rng.below(RATES.len() as u64) as usize]);
                rate_changes.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(1 + rng.below(8)));
            }
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| std::thread::spawn(move || stress_worker(id)))
        .collect();
    let mut total = Counts::default();
    for w in workers {
        let c = w.join().expect("a worker failed");
        total.allocs += c.allocs;
        total.zeroed += c.zeroed;
        total.grows += c.grows;
        total.shrinks += c.shrinks;
        total.frees += c.frees;
        total.bytes += c.bytes;
        total.large += c.large;
    }
    done.store(true, Relaxed);
    writer.join().expect("the profile writer failed");
    rater.join().unwrap();

    heapprof::set_sample_rate(512 * 1024);
    let p = take_profile();
    assert_sane_values(&p);
    let sampled = cum(&p, "stress_worker", ALLOC_OBJECTS);
    let in_use_objects = cum(&p, "stress_worker", INUSE_OBJECTS);
    let in_use_bytes = cum(&p, "stress_worker", INUSE_SPACE);
    println!(
        "stress: {WORKERS} workers, {} ops: {} alloc, {} alloc_zeroed, {} grow, {} shrink, {} free, \
         {} MiB requested, {} blocks > 64 KiB; {} profiles written, {} rate changes; \
         profile: {} samples, {sampled} allocations estimated at the workers' sites (for {} \
         allocations and reallocations, some while sampling was off), {} live sampled blocks, \
         tables {} bytes; {:?}",
        WORKERS * OPS_PER_WORKER,
        total.allocs,
        total.zeroed,
        total.grows,
        total.shrinks,
        total.frees,
        total.bytes >> 20,
        total.large,
        profiles.load(Relaxed),
        rate_changes.load(Relaxed),
        p.sample.len(),
        total.allocs + total.zeroed + total.grows + total.shrinks,
        live_sampled_blocks(&p),
        table_bytes(&p),
        started.elapsed()
    );
    assert_eq!(
        total.allocs + total.zeroed,
        total.frees,
        "every block freed"
    );
    assert!(profiles.load(Relaxed) > 0 && rate_changes.load(Relaxed) > 0);
    assert!(sampled > 0, "the workers' allocations were sampled");
    assert_eq!(
        (in_use_objects, in_use_bytes),
        (0, 0),
        "everything the workers allocated was freed, so nothing may show as in use at their sites"
    );
}
