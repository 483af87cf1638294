//! Labels: scopes, futures that move between threads, what a profile
//! says per label (through Snapshot and the real `go tool pprof
//! -tagfocus`), the bounds of the set table, and `fork` with labels in
//! force.
//!
//! The two-tenant workload and the table overflow run in child processes
//! (the rate is process-wide, and an overflowed table stays overflowed);
//! the other tests run here at rate 1, where the numbers are exact, and
//! use label values of their own.

use heapprof_testkit::check::assert_estimate;
use heapprof_testkit::child::{is_child, printed_number, run_child, wait_with_timeout};
use heapprof_testkit::labels::{pairs, without_thread};
use heapprof_testkit::poll::poll_once;
use heapprof_testkit::profile::{self, INUSE_SPACE, decode, stack_names, string};
use heapprof_testkit::proto::Profile;
use heapprof_testkit::tools::{go_available, go_pprof, parse_size};
use heapprof_testkit::watchdog::watchdog;

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use heapprof::FutureExt as _;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Standard errors of tolerance for the sampled estimates.
const SIGMAS: f64 = 5.0;

/// A block of `size` bytes, allocated in a frame of its own that the
/// profile names (`-focus=alloc_block`).
#[inline(never)]
fn alloc_block(size: usize, fill: u8) -> Vec<u8> {
    black_box(vec![fill; size])
}

/// The labels of a profile's sample, as (key, value).
fn sample_labels(p: &Profile, s: &heapprof_testkit::proto::Sample) -> Vec<(String, String)> {
    s.label
        .iter()
        .map(|l| (string(p, l.key).to_owned(), string(p, l.str).to_owned()))
        .collect()
}

/// Sum of value `index` over the samples with label `key=value` whose
/// stack names `function`.
fn labelled(p: &Profile, key: &str, value: &str, function: &str, index: usize) -> i64 {
    p.sample
        .iter()
        .filter(|s| {
            sample_labels(p, s)
                .iter()
                .any(|(k, v)| k == key && v == value)
        })
        .filter(|s| stack_names(p, s).iter().any(|n| n.contains(function)))
        .map(|s| s.value[index])
        .sum()
}

/// Live bytes a snapshot holds under `key=value` at stacks naming
/// `function`.
fn snapshot_labelled(s: &heapprof::Snapshot, key: &str, value: &str, function: &str) -> i64 {
    s.sites()
        .iter()
        .filter(|site| site.has_label(key, value))
        .filter(|site| site.frames.iter().any(|f| f.function.contains(function)))
        .map(|site| site.inuse_bytes)
        .sum()
}

// ---------------------------------------------------------------------
// Scopes

#[test]
fn scopes_nest_override_and_restore() {
    heapprof::set_sample_rate(1);
    let before = without_thread(heapprof::current_labels());
    assert!(before.is_empty(), "{before:?}");
    let (outer, inner, back) =
        heapprof::with_labels(&[("tenant", "nest-a"), ("route", "/x")], || {
            let outer = without_thread(heapprof::current_labels());
            let inner = heapprof::with_labels(&[("tenant", "nest-b"), ("zone", "eu")], || {
                without_thread(heapprof::current_labels())
            });
            (outer, inner, without_thread(heapprof::current_labels()))
        });
    assert_eq!(outer, pairs(&[("route", "/x"), ("tenant", "nest-a")]));
    assert_eq!(
        inner,
        pairs(&[("route", "/x"), ("tenant", "nest-b"), ("zone", "eu")])
    );
    assert_eq!(back, outer);
    assert_eq!(without_thread(heapprof::current_labels()), before);
    // An empty value takes a key out for the inner scope.
    let removed = heapprof::with_labels(&[("tenant", "nest-c"), ("route", "/y")], || {
        heapprof::with_labels(&[("route", "")], || {
            without_thread(heapprof::current_labels())
        })
    });
    assert_eq!(removed, pairs(&[("tenant", "nest-c")]));
}

#[test]
fn samples_carry_the_labels_of_their_scope_and_keep_them_until_freed() {
    heapprof::set_sample_rate(1);
    const SIZE: usize = 100_000;
    let before = heapprof::snapshot();
    let (outer_block, inner_block) = heapprof::with_labels(&[("tenant", "keep-a")], || {
        let outer = alloc_block(SIZE, 1);
        let inner = heapprof::with_labels(&[("tenant", "keep-b"), ("zone", "eu")], || {
            alloc_block(2 * SIZE, 2)
        });
        (outer, inner)
    });
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(
        snapshot_labelled(&grown, "tenant", "keep-a", "alloc_block"),
        SIZE as i64
    );
    assert_eq!(
        snapshot_labelled(&grown, "tenant", "keep-b", "alloc_block"),
        2 * SIZE as i64
    );
    assert_eq!(
        snapshot_labelled(&grown, "zone", "eu", "alloc_block"),
        2 * SIZE as i64
    );
    assert!(grown.inuse_bytes_with_label("tenant", "keep-a") >= SIZE as i64);
    assert!(grown.alloc_bytes_with_label("tenant", "keep-b") >= 2 * SIZE as i64);
    let site = grown
        .sites()
        .iter()
        .find(|s| s.has_label("tenant", "keep-b") && s.inuse_bytes == 2 * SIZE as i64)
        .expect("the inner block's site");
    let keys: Vec<&str> = site.labels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["tenant", "thread", "zone"],
        "sorted by key, thread label added"
    );

    // Freed on another thread, outside any scope: credited to the labels
    // they were allocated under.
    std::thread::spawn(move || drop((outer_block, inner_block)))
        .join()
        .unwrap();
    let after = heapprof::snapshot().delta(&before);
    assert_eq!(
        snapshot_labelled(&after, "tenant", "keep-a", "alloc_block"),
        0
    );
    assert_eq!(
        snapshot_labelled(&after, "tenant", "keep-b", "alloc_block"),
        0
    );
    assert!(after.alloc_bytes_with_label("tenant", "keep-b") >= 2 * SIZE as i64);
}

#[test]
fn a_panic_inside_a_scope_restores_the_outer_labels() {
    heapprof::set_sample_rate(1);
    heapprof::with_labels(&[("tenant", "panic-outer")], || {
        let outer = heapprof::current_labels();
        let caught = std::panic::catch_unwind(|| {
            heapprof::with_labels(&[("tenant", "panic-inner")], || {
                assert!(
                    heapprof::current_labels().contains(&("tenant".into(), "panic-inner".into()))
                );
                panic!("inside a labelled scope");
            })
        });
        assert!(caught.is_err());
        assert_eq!(heapprof::current_labels(), outer);
        // A labelled future whose poll panics restores them too.
        let mut fut = Box::pin(
            async { panic!("inside a labelled poll") }.heap_labels(&[("tenant", "panic-poll")]),
        );
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut cx = Context::from_waker(Waker::noop());
            let _ = fut.as_mut().poll(&mut cx);
        }));
        assert!(caught.is_err());
        assert_eq!(heapprof::current_labels(), outer);
    });
}

// ---------------------------------------------------------------------
// Futures

/// The labels each poll saw.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A future that allocates one block per poll and is ready after `polls`
/// polls, recording the labels in force during each poll.
struct Steps {
    polls: usize,
    blocks: Vec<Vec<u8>>,
    seen: Seen,
}

impl Future for Steps {
    type Output = Vec<Vec<u8>>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        self.seen
            .lock()
            .unwrap()
            .push(without_thread(heapprof::current_labels()));
        let block = alloc_block(50_000, 3);
        self.blocks.push(block);
        if self.blocks.len() == self.polls {
            Poll::Ready(std::mem::take(&mut self.blocks))
        } else {
            Poll::Pending
        }
    }
}

/// Allocates as it is dropped: what a destructor allocates while its
/// labelled future is dropped carries the labels.
struct AllocOnDrop(Arc<Mutex<Option<Vec<u8>>>>);

impl Drop for AllocOnDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(alloc_block(30_000, 4));
    }
}

#[test]
fn a_labelled_future_carries_its_labels_to_every_thread_that_polls_it() {
    heapprof::set_sample_rate(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fut = Steps {
        polls: 3,
        blocks: Vec::new(),
        seen: seen.clone(),
    }
    .heap_labels(&[("tenant", "moving")]);
    let before = heapprof::snapshot();
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(Waker::noop());
    // First poll here, inside other labels of this thread's own.
    heapprof::with_labels(&[("route", "/here")], || {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            without_thread(heapprof::current_labels()),
            pairs(&[("route", "/here")])
        );
    });
    // Then on two other threads, each with labels of its own.
    let fut = std::thread::spawn(move || {
        heapprof::with_labels(&[("route", "/there")], || {
            let mut cx = Context::from_waker(Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                without_thread(heapprof::current_labels()),
                pairs(&[("route", "/there")])
            );
        });
        fut
    })
    .join()
    .unwrap();
    let blocks = std::thread::spawn(move || {
        let mut fut = fut;
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(blocks) => {
                assert!(without_thread(heapprof::current_labels()).is_empty());
                blocks
            }
            Poll::Pending => panic!("ready at the third poll"),
        }
    })
    .join()
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            pairs(&[("route", "/here"), ("tenant", "moving")]),
            pairs(&[("route", "/there"), ("tenant", "moving")]),
            pairs(&[("tenant", "moving")]),
        ]
    );
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(
        snapshot_labelled(&grown, "tenant", "moving", "alloc_block"),
        3 * 50_000
    );
    assert_eq!(
        snapshot_labelled(&grown, "route", "/there", "alloc_block"),
        50_000
    );
    // Each sample also names the thread that polled (the threads here
    // have the name they inherited from the test's thread).
    let unnamed: i64 = grown
        .sites()
        .iter()
        .filter(|s| s.has_label("tenant", "moving"))
        .filter(|s| !s.labels.iter().any(|(k, _)| k == "thread"))
        .map(|s| s.inuse_bytes)
        .sum();
    assert_eq!(unnamed, 0);
    drop(blocks);
}

/// An empty value in a future's labels takes its key out of the labels
/// the polling thread has in force, as in a nested `with_labels`.
#[test]
fn an_empty_value_in_a_futures_labels_takes_the_outer_key_out() {
    let outer = [("tenant", "acme"), ("route", "/x")];
    let (scoped, polled) = heapprof::with_labels(&outer, || {
        let scoped = heapprof::with_labels(&[("tenant", "")], heapprof::current_labels);
        let mut fut =
            std::pin::pin!(async { heapprof::current_labels() }.heap_labels(&[("tenant", "")]));
        let std::task::Poll::Ready(polled) = poll_once(&mut fut) else {
            panic!("ready at the first poll");
        };
        (scoped, polled)
    });
    assert_eq!(without_thread(scoped), pairs(&[("route", "/x")]));
    assert_eq!(without_thread(polled), pairs(&[("route", "/x")]));
}

#[test]
fn child_nested_futures() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    heapprof::set_thread_label(false);
    // 3 000 sets, each carried by a sample: fewer than the table holds.
    // Were each future's own labels a set of their own too, 6 000 would
    // not fit.
    const TASKS: usize = 3000;
    let mut held = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let tenant = format!("t{i:04}");
        heapprof::with_labels(&[("route", "/a")], || {
            let fut = async { held.push(alloc_block(1000, 6)) };
            let mut fut = std::pin::pin!(fut.heap_labels(&[("tenant", &tenant)]));
            assert!(poll_once(&mut fut).is_ready());
        });
    }
    let snap = heapprof::snapshot();
    let overflow = snap.inuse_bytes_with_label("heapprof_overflow", "label sets");
    let labelled = snapshot_labelled(&snap, "route", "/a", "alloc_block");
    println!("overflow={overflow} labelled={labelled}");
    assert_eq!(overflow, 0);
    assert_eq!(labelled, (TASKS * 1000) as i64);
    drop(held);
    println!("NESTED-OK");
}

/// A labelled future polled inside other labels takes a place in the
/// label table for the set its polls put in force, not one more for its
/// own labels: as many tasks as the table has places all keep theirs.
#[test]
fn nested_labelled_futures_take_places_only_for_what_samples_carry() {
    let _watchdog = watchdog("nested futures", Duration::from_secs(120));
    let (stdout, _) = run_child("child_nested_futures", &[]);
    assert!(stdout.contains("NESTED-OK"), "{stdout}");
}

#[test]
fn a_labelled_future_dropped_while_pending_frees_and_allocates_under_its_labels() {
    heapprof::set_sample_rate(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(Mutex::new(None));
    let guard = AllocOnDrop(dropped.clone());
    let steps = Steps {
        polls: 10,
        blocks: Vec::new(),
        seen,
    };
    let fut = async move {
        let _guard = guard;
        steps.await
    }
    .heap_labels(&[("tenant", "cancelled")]);
    let before = heapprof::snapshot();
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    let mid = heapprof::snapshot().delta(&before);
    assert_eq!(
        snapshot_labelled(&mid, "tenant", "cancelled", "alloc_block"),
        100_000
    );
    heapprof::with_labels(&[("tenant", "dropper")], || {
        drop(fut);
        assert_eq!(
            without_thread(heapprof::current_labels()),
            pairs(&[("tenant", "dropper")])
        );
    });
    let after = heapprof::snapshot().delta(&before);
    // The two blocks the future held are freed; the destructor's block,
    // allocated while the future was dropped, carries its labels.
    assert_eq!(
        snapshot_labelled(&after, "tenant", "cancelled", "alloc_block"),
        30_000
    );
    assert_eq!(
        snapshot_labelled(&after, "tenant", "dropper", "alloc_block"),
        0
    );
    assert!(dropped.lock().unwrap().is_some());
}

// ---------------------------------------------------------------------
// The thread label

#[test]
fn the_thread_label_is_the_threads_name() {
    heapprof::set_sample_rate(1);
    let name_of = |name: &'static str| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(heapprof::current_labels)
            .unwrap()
            .join()
            .unwrap()
    };
    assert_eq!(
        name_of("labels-worker"),
        pairs(&[("thread", "labels-worker")])
    );
    // The system keeps 15 bytes of a thread's name.
    assert_eq!(
        name_of("a-rather-long-thread-name"),
        pairs(&[("thread", "a-rather-long-t")])
    );
    // ...even inside a character: the whole characters before the cut.
    assert_eq!(name_of("üüüüüüüüüü"), pairs(&[("thread", "üüüüüüü")]));
    // A label `thread` of the program's own wins.
    let own = std::thread::Builder::new()
        .name("labels-own".into())
        .spawn(|| heapprof::with_labels(&[("thread", "mine")], heapprof::current_labels))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(own, pairs(&[("thread", "mine")]));
}

#[test]
fn child_thread_label_off() {
    if !is_child() {
        return;
    }
    let labels = heapprof::with_labels(&[("tenant", "t")], heapprof::current_labels);
    println!("LABELS {labels:?}");
    heapprof::set_thread_label(true);
    let on = heapprof::current_labels();
    println!("ON {on:?}");
}

#[test]
fn the_thread_label_can_be_turned_off() {
    let (stdout, _) = run_child("child_thread_label_off", &[("HEAPPROF_THREAD_LABEL", "0")]);
    assert!(stdout.contains(r#"LABELS [("tenant", "t")]"#), "{stdout}");
    // The child's test runs on a thread named after it, cut to 15 bytes.
    assert!(
        stdout.contains(r#"ON [("thread", "child_thread_la")]"#),
        "{stdout}"
    );
    let (_, stderr) = run_child(
        "child_thread_label_off",
        &[("HEAPPROF_THREAD_LABEL", "maybe")],
    );
    assert!(
        stderr.contains(
            "HEAPPROF_THREAD_LABEL=\"maybe\": expected on or off (1 or 0); using the default on"
        ),
        "{stderr}"
    );
}

/// A set of 16 labels (the most a set keeps) loses none of them to the
/// `thread` label: samples carry it without `thread`.
#[test]
fn a_full_set_keeps_its_labels_over_the_thread_label() {
    let keys: Vec<String> = (0..16).map(|i| format!("k{i:02}")).collect();
    let labels: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    let carried = heapprof::with_labels(&labels, heapprof::current_labels);
    assert_eq!(carried.len(), 16, "{carried:?}");
    assert!(
        carried.iter().all(|(k, _)| k.starts_with('k')),
        "{carried:?}"
    );
    let fifteen = heapprof::with_labels(&labels[..15], heapprof::current_labels);
    assert_eq!(fifteen.len(), 16, "{fifteen:?}");
    assert!(fifteen.iter().any(|(k, _)| k == "thread"), "{fifteen:?}");
}

/// Thousands of distinctly named threads, then thousands of tenants on
/// one thread, at rate 1: the `thread` label's sets take none of the
/// program's places, so every tenant keeps its label.
#[test]
fn child_many_thread_names() {
    if !is_child() {
        return;
    }
    for i in 0..5000 {
        std::thread::Builder::new()
            .name(format!("conn-{i}"))
            .spawn(|| drop(black_box(vec![0u8; 64])))
            .unwrap()
            .join()
            .unwrap();
    }
    let mut kept = Vec::with_capacity(3000);
    for i in 0..3000 {
        let tenant = format!("t{i}");
        kept.push(heapprof::with_labels(&[("tenant", &tenant)], || {
            alloc_block(4096, 1)
        }));
    }
    let s = heapprof::snapshot();
    let lost = (0..3000)
        .filter(|i| s.inuse_bytes_with_label("tenant", &format!("t{i}")) != 4096)
        .count();
    println!("lost={lost}");
    let fresh = heapprof::with_labels(&[("tenant", "fresh")], heapprof::current_labels);
    println!("FRESH {fresh:?}");
    drop(kept);
}

#[test]
fn thread_names_take_no_places_of_the_programs_labels() {
    let _watchdog = watchdog("many thread names", Duration::from_secs(120));
    let (stdout, _) = run_child("child_many_thread_names", &[("HEAPPROF_SAMPLE_RATE", "1")]);
    assert_eq!(printed_number(&stdout, "lost="), 0, "{stdout}");
    assert!(stdout.contains(r#"("tenant", "fresh")"#), "{stdout}");
    assert!(!stdout.contains("heapprof_overflow"), "{stdout}");
}

// ---------------------------------------------------------------------
// Two tenants on a multi-threaded runtime

const TENANTS: [&str; 2] = ["acme", "globex"];
const TASKS_PER_TENANT: usize = 6;
const ROUNDS: usize = 24;
const BLOCKS_PER_ROUND: usize = 24;

/// Exact bytes allocated at `alloc_block` per tenant, and still live.
static ALLOCATED: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];
static LIVE: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];
/// Polls of a task that found it on another thread than the one before.
static MIGRATIONS: AtomicUsize = AtomicUsize::new(0);

fn block_size(tenant: usize, task: usize, round: usize, i: usize) -> usize {
    let mix = tenant * 7919 + task * 104_729 + round * 1_299_709 + i * 15_485_863;
    256 + mix % (16 * 1024)
}

/// A block sent to the other tenant: who allocated it, and whether the
/// receiver keeps it.
struct Handed {
    block: Vec<u8>,
    from: usize,
    keep: bool,
}

/// One tenant's task: allocates blocks round by round, keeping a third,
/// handing a third to the other tenant and freeing the rest, and yields
/// between rounds so that the runtime may move it.
async fn tenant_task(
    tenant: usize,
    task: usize,
    to_other: tokio::sync::mpsc::UnboundedSender<Handed>,
) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    let mut thread = std::thread::current().id();
    for round in 0..ROUNDS {
        for i in 0..BLOCKS_PER_ROUND {
            let size = block_size(tenant, task, round, i);
            let block = alloc_block(size, tenant as u8);
            ALLOCATED[tenant].fetch_add(size as i64, Relaxed);
            match i % 3 {
                0 => {
                    LIVE[tenant].fetch_add(size as i64, Relaxed);
                    kept.push(block);
                }
                1 => {
                    let keep = (round + i) % 2 == 0;
                    if keep {
                        LIVE[tenant].fetch_add(size as i64, Relaxed);
                    }
                    to_other
                        .send(Handed {
                            block,
                            from: tenant,
                            keep,
                        })
                        .unwrap();
                }
                _ => drop(block),
            }
        }
        tokio::task::yield_now().await;
        let now = std::thread::current().id();
        if now != thread {
            MIGRATIONS.fetch_add(1, Relaxed);
            thread = now;
        }
    }
    kept
}

/// One tenant's inbox: keeps or frees what the other tenant hands over.
async fn collector(
    tenant: usize,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handed>,
) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    while let Some(h) = inbox.recv().await {
        assert_ne!(h.from, tenant);
        if h.keep {
            kept.push(h.block);
        }
    }
    kept
}

/// Runs both tenants; returns every block still held.
fn run_tenants() -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let (to_acme, acme_inbox) = tokio::sync::mpsc::unbounded_channel();
        let (to_globex, globex_inbox) = tokio::sync::mpsc::unbounded_channel();
        let inboxes = [acme_inbox, globex_inbox];
        let mut collectors = Vec::new();
        for (tenant, inbox) in inboxes.into_iter().enumerate() {
            let labels = [("tenant", TENANTS[tenant])];
            collectors.push(tokio::spawn(collector(tenant, inbox).heap_labels(&labels)));
        }
        let mut tasks = Vec::new();
        for task in 0..TASKS_PER_TENANT {
            for (tenant, name) in TENANTS.iter().enumerate() {
                let to_other = if tenant == 0 {
                    to_globex.clone()
                } else {
                    to_acme.clone()
                };
                let fut = heapprof::Labeled::new(
                    tenant_task(tenant, task, to_other),
                    &[("tenant", name)],
                );
                tasks.push(tokio::spawn(fut));
            }
        }
        drop((to_acme, to_globex));
        let mut held = Vec::new();
        for t in tasks.into_iter().chain(collectors) {
            held.extend(t.await.unwrap());
        }
        held
    })
}

#[test]
fn child_two_tenants() {
    if !is_child() {
        return;
    }
    let rate = heapprof::sample_rate();
    let held = run_tenants();
    let path = std::env::var("LABELS_PROFILE").unwrap();
    heapprof::write_profile(std::fs::File::create(&path).unwrap()).unwrap();
    let snap = heapprof::snapshot();
    for (t, name) in TENANTS.iter().enumerate() {
        let live = LIVE[t].load(Relaxed);
        let allocated = ALLOCATED[t].load(Relaxed);
        println!("{name}_live={live} {name}_allocated={allocated}");
        let inuse = snapshot_labelled(&snap, "tenant", name, "alloc_block");
        let alloc: i64 = snap
            .sites()
            .iter()
            .filter(|s| s.has_label("tenant", name))
            .filter(|s| s.frames.iter().any(|f| f.function.contains("alloc_block")))
            .map(|s| s.alloc_bytes)
            .sum();
        if rate == 1 {
            assert_eq!(inuse, live, "{name}: live bytes at rate 1");
            assert_eq!(alloc, allocated, "{name}: allocated bytes at rate 1");
        } else {
            assert_estimate(&format!("{name} inuse"), inuse, live as usize, rate, SIGMAS);
            assert_estimate(
                &format!("{name} alloc"),
                alloc,
                allocated as usize,
                rate,
                SIGMAS,
            );
        }
    }
    println!("migrations={}", MIGRATIONS.load(Relaxed));
    drop(held);
    println!("TENANTS-OK");
}

/// What a `go tool pprof -top` report shows after its filters
/// (`Showing nodes accounting for 12345B, …`; its `of … total` is the
/// whole profile's).
fn pprof_shown(top: &str) -> f64 {
    let after = top
        .split("accounting for ")
        .nth(1)
        .unwrap_or_else(|| panic!("no total in\n{top}"));
    parse_size(after.split(',').next().unwrap())
}

fn tenants_at(rate: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.pb.gz");
    let path = path.to_str().unwrap();
    let (stdout, _) = run_child(
        "child_two_tenants",
        &[
            ("HEAPPROF_SAMPLE_RATE", &rate.to_string()),
            ("LABELS_PROFILE", path),
        ],
    );
    println!("{stdout}");
    assert!(stdout.contains("TENANTS-OK"), "{stdout}");
    assert!(
        printed_number(&stdout, "migrations=") > 0,
        "no task moved between threads: {stdout}"
    );
    let p = decode(&std::fs::read(path).unwrap());
    // Every labelled sample has the labels on all four values, and the
    // two tenants' inuse adds up to what the profile holds at that site.
    for name in TENANTS {
        let live = printed_number(&stdout, &format!("{name}_live="));
        let allocated = printed_number(&stdout, &format!("{name}_allocated="));
        let inuse = labelled(&p, "tenant", name, "alloc_block", INUSE_SPACE);
        let alloc = labelled(&p, "tenant", name, "alloc_block", profile::ALLOC_SPACE);
        if rate == 1 {
            assert_eq!((inuse, alloc), (live, allocated), "{name}");
        } else {
            assert_estimate(name, inuse, live as usize, rate, SIGMAS);
            assert_estimate(name, alloc, allocated as usize, rate, SIGMAS);
        }
        if !go_available() {
            continue;
        }
        let tagfocus = format!("-tagfocus=tenant={name}");
        for (index, truth) in [("inuse_space", live), ("alloc_space", allocated)] {
            let top = go_pprof(&[
                &format!("-sample_index={index}"),
                &tagfocus,
                "-focus=alloc_block",
                "-unit=B",
                "-top",
                path,
            ]);
            let total = pprof_shown(&top);
            if rate == 1 {
                assert_eq!(total, truth as f64, "{name} {index} through pprof");
            } else {
                assert_estimate(
                    &format!("{name} {index} through pprof"),
                    total as i64,
                    truth as usize,
                    rate,
                    SIGMAS,
                );
            }
        }
    }
    if go_available() {
        // Labels as pprof shows them: -tags lists both tenants and the
        // workers' thread label; -tagroot puts the tenant at the root.
        let tags = go_pprof(&["-tags", path]);
        // (tokio names its workers' system threads `tokio-rt-worker`.)
        for needed in ["tenant", "acme", "globex", "thread", "tokio-rt-worker"] {
            assert!(tags.contains(needed), "{needed} in\n{tags}");
        }
        let rooted = go_pprof(&["-tagroot=tenant", "-focus=alloc_block", "-traces", path]);
        // Each trace ends (at its root) in a pseudo-frame of its tenant.
        for tenant in TENANTS {
            assert!(
                rooted.lines().any(|l| l.trim() == tenant),
                "{tenant} root in\n{rooted}"
            );
        }
    }
}

#[test]
fn two_tenants_exact_at_rate_1() {
    let _watchdog = watchdog("two tenants at rate 1", Duration::from_secs(300));
    tenants_at(1);
}

#[test]
fn two_tenants_within_five_sigma_at_16_kib() {
    let _watchdog = watchdog("two tenants at 16 KiB", Duration::from_secs(300));
    tenants_at(16 * 1024);
}

// ---------------------------------------------------------------------
// The bounds of the set table

#[test]
fn child_overflow() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    heapprof::set_thread_label(false);
    let text = || {
        let mut out = Vec::new();
        heapprof::write_text_profile(&mut out).expect("text profile");
        String::from_utf8(out).expect("utf-8")
    };
    const FULL: &str = "label-set table is full";
    assert!(!text().contains(FULL));
    let table_before = heapprof::stats().profiler_bytes;
    // Many more distinct sets than the table holds, each with a sample.
    const SETS: usize = 5000;
    let values: Vec<String> = (0..SETS).map(|i| format!("tenant-{i:05}")).collect();
    let mut held = Vec::new();
    for v in &values {
        heapprof::with_labels(
            &[("tenant", v), ("route", "/a-route-of-some-length")],
            || {
                held.push(alloc_block(1000, 5));
            },
        );
    }
    let overflowed = heapprof::with_labels(&[("tenant", "one-too-many")], heapprof::current_labels);
    println!("overflowed {overflowed:?}");
    assert_eq!(overflowed, pairs(&[("heapprof_overflow", "label sets")]));
    // Entering a scope the table had no room for again is found out
    // without merging its labels again (which takes the table's lock and
    // allocates each time).
    let own_before = heapprof::stats().profiler_allocations;
    for _ in 0..1000 {
        heapprof::with_labels(&[("tenant", "one-too-many")], || {
            std::hint::black_box(0);
        });
    }
    let own = heapprof::stats().profiler_allocations - own_before;
    println!("1000 overflowed scopes: {own} allocations of heapprof's");
    assert!(own < 10, "{own} allocations of heapprof's for 1000 scopes");
    let snap = heapprof::snapshot();
    let first = snap.inuse_bytes_with_label("tenant", &values[0]);
    let overflow = snap.inuse_bytes_with_label("heapprof_overflow", "label sets");
    let distinct: std::collections::BTreeSet<&str> = snap
        .sites()
        .iter()
        .flat_map(|s| s.labels.iter().filter(|(k, _)| k == "tenant"))
        .map(|(_, v)| v.as_str())
        .collect();
    let distinct = distinct.len();
    println!("first={first} overflow={overflow} distinct={distinct}");
    assert_eq!(first, 1000);
    // The table's 4 096 sets hold the empty and the overflow set, and the
    // label set this test's thread label alone is not.
    assert!(distinct < 4096 && distinct > 4000, "{distinct}");
    // Every block is counted once, under its own set or the overflow set.
    let (mut labelled, mut overflowed) = (0, 0);
    for site in snap.sites() {
        if !site
            .frames
            .iter()
            .any(|f| f.function.contains("alloc_block"))
        {
            continue;
        }
        if site.labels.iter().any(|(k, _)| k == "tenant") {
            labelled += site.inuse_bytes;
        } else if site.has_label("heapprof_overflow", "label sets") {
            overflowed += site.inuse_bytes;
        }
    }
    assert_eq!(labelled + overflowed, (SETS * 1000) as i64);
    assert_eq!(labelled, (distinct * 1000) as i64);
    let grown = heapprof::stats().profiler_bytes - table_before;
    println!("profiler_bytes grew by {grown}");
    // The profiles say the table is full, not only the samples' label.
    assert!(text().contains(FULL), "the text profile's header");
    let mut pb = Vec::new();
    heapprof::write_profile(&mut pb).expect("profile");
    let profile = decode(&pb);
    let said = profile
        .comment
        .iter()
        .any(|&i| string(&profile, i).contains(FULL));
    assert!(said, "the profile's comments");
    drop(held);
    println!("OVERFLOW-OK");
}

#[test]
fn child_thread_label_overflow() {
    if !is_child() {
        return;
    }
    heapprof::set_sample_rate(1);
    let text = || {
        let mut out = Vec::new();
        heapprof::write_text_profile(&mut out).expect("text profile");
        String::from_utf8(out).expect("utf-8")
    };
    assert!(!text().contains("thread label's table is full"));
    // Two threads under the same 3 000 label sets: 6 000 sets with a
    // thread name, more than the thread label's table holds.
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::Builder::new()
                .name(format!("labeller-{t}"))
                .spawn(|| {
                    (0..3000)
                        .map(|i| {
                            let v = format!("t{i:04}");
                            heapprof::with_labels(&[("tenant", &v)], || alloc_block(100, 3))
                        })
                        .collect::<Vec<_>>()
                })
                .expect("spawn")
        })
        .collect();
    let held: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("join"))
        .collect();
    let text = text();
    let unlabelled = heapprof::snapshot()
        .sites()
        .iter()
        .filter(|s| s.labels.iter().any(|(k, _)| k == "tenant"))
        .filter(|s| !s.labels.iter().any(|(k, _)| k == "thread"))
        .count();
    println!("sites without a thread label: {unlabelled}");
    assert!(unlabelled > 0, "the table should have filled");
    assert!(text.contains("thread label's table is full"), "{text}");
    drop(held);
    println!("THREAD-OVERFLOW-OK");
}

/// Samples that lost their `thread` label to its full table are not lost
/// silently: the profiles say so.
#[test]
fn a_full_thread_label_table_is_reported() {
    let _watchdog = watchdog("thread label overflow", Duration::from_secs(120));
    let (stdout, _) = run_child("child_thread_label_overflow", &[]);
    assert!(stdout.contains("THREAD-OVERFLOW-OK"), "{stdout}");
}

#[test]
fn past_the_table_bound_samples_carry_the_overflow_label() {
    let _watchdog = watchdog("label overflow", Duration::from_secs(120));
    let (stdout, stderr) = run_child("child_overflow", &[]);
    assert!(stdout.contains("OVERFLOW-OK"), "{stdout}");
    let said = stderr
        .lines()
        .filter(|l| l.contains("label-set table is full"))
        .count();
    assert_eq!(said, 1, "one line on stderr: {stderr}");
    assert!(printed_number(&stdout, "overflow=") > 0);
}

// ---------------------------------------------------------------------
// Fork

/// Runs in the forked child: interns a new set (the table's lock must be
/// free), samples under it and reads it back. Returns the exit code.
fn fork_child() -> i32 {
    heapprof::set_sample_rate(1);
    let block = heapprof::with_labels(&[("tenant", "forked-child")], || alloc_block(12_345, 6));
    let mut gz = Vec::new();
    if heapprof::write_profile(&mut gz).is_err() {
        return 2;
    }
    let p = decode(&gz);
    if labelled(&p, "tenant", "forked-child", "alloc_block", INUSE_SPACE) != 12_345 {
        return 3;
    }
    // The scope the parent's forking thread was in is the child's too.
    if !heapprof::current_labels().contains(&("tenant".into(), "forking".into())) {
        return 4;
    }
    drop(block);
    0
}

#[test]
fn fork_with_labels_in_force_while_other_threads_intern() {
    let _watchdog = watchdog("fork with labels", Duration::from_secs(240));
    heapprof::set_sample_rate(1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let values: Vec<String> = (0..40).map(|i| format!("fork-{t}-{i}")).collect();
                let mut n = 0usize;
                while !stop.load(Relaxed) {
                    // More sets than a thread remembers, so that each
                    // scope looks its set up under the table's lock: the
                    // lock is held much of the time. A sample now and then.
                    heapprof::with_labels(&[("tenant", &values[n % values.len()])], || {
                        if n.is_multiple_of(64) {
                            black_box(alloc_block(64 + n % 4096, 7));
                        }
                    });
                    n += 1;
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    heapprof::with_labels(&[("tenant", "forking")], || {
        for round in 0..20 {
            std::thread::sleep(Duration::from_millis(5));
            // SAFETY: the child runs only `fork_child` (allocations,
            // heapprof, decoding) and leaves with `_exit`, never returning
            // into the test harness.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = std::panic::catch_unwind(fork_child).unwrap_or(101);
                // SAFETY: ends the child at once, without unwinding into
                // the harness or running atexit handlers.
                unsafe { libc::_exit(code) };
            }
            match wait_with_timeout(pid, Duration::from_secs(30)) {
                Ok(0) => {}
                other => failures.push(format!("round {round}: {other:?}")),
            }
        }
    });
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(failures.is_empty(), "{failures:?}");
    // The parent's labels are as they were.
    assert!(without_thread(heapprof::current_labels()).is_empty());
}

// ---------------------------------------------------------------------
// Formats

#[test]
fn every_profile_format_carries_the_labels() {
    heapprof::set_sample_rate(1);
    let held = heapprof::with_labels(&[("tenant", "formats"), ("route", "/f")], || {
        // Far past the peak profile's 1 MiB minimum and the rest of this
        // process's heap, so that the peak copy is taken among them.
        (0..40).map(|_| alloc_block(1 << 20, 8)).collect::<Vec<_>>()
    });
    let p = profile::take_profile();
    assert_eq!(
        labelled(&p, "tenant", "formats", "alloc_block", INUSE_SPACE),
        40 << 20
    );
    for s in &p.sample {
        let labels = sample_labels(&p, s);
        if labels.iter().any(|(_, v)| v == "formats") {
            assert!(
                labels.contains(&("route".into(), "/f".into())),
                "{labels:?}"
            );
        }
    }
    let mut peak = Vec::new();
    heapprof::write_peak_profile(&mut peak).unwrap();
    let peak = decode(&peak);
    assert!(
        labelled(&peak, "tenant", "formats", "alloc_block", INUSE_SPACE) > 0,
        "the peak copy keeps the labels"
    );
    let mut text = Vec::new();
    heapprof::write_text_profile(&mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("# labels: {"), "{text}");
    assert!(
        text.contains(r#""route":"/f", "tenant":"formats""#),
        "labels of the site in the text profile"
    );
    assert!(text.contains("this format cannot give them to pprof"));
    if go_available() {
        // pprof still reads the text profile, labels lines and all.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heap.txt");
        std::fs::write(&path, &text).unwrap();
        let top = go_pprof(&["-top", "-focus=alloc_block", path.to_str().unwrap()]);
        assert!(top.contains("alloc_block"), "{top}");
    }
    drop(held);
}

/// A `Labeled` future keeps its labels cut as the label table cuts them
/// (128 bytes), and the copies count as heapprof's own memory until the
/// futures are dropped. In a child, so that no other test's tables grow
/// meanwhile.
#[test]
fn labeled_futures_keep_their_labels_cut_and_counted() {
    const FUTURES: usize = 200;
    if !is_child() {
        let (stdout, _) = run_child("labeled_futures_keep_their_labels_cut_and_counted", &[]);
        let held = printed_number(&stdout, "held=");
        let after = printed_number(&stdout, "after=");
        // Each keeps at least its cut value; far less than the 1 MiB given.
        assert!(
            (FUTURES as i64 * 128..FUTURES as i64 * 1024).contains(&held),
            "{stdout}"
        );
        assert!(after.abs() < 1024, "{stdout}");
        return;
    }
    use heapprof::FutureExt as _;
    let big = "v".repeat(1 << 20);
    // Its drop puts the labels in force once: the table takes their set.
    drop(async {}.heap_labels(&[("tenant", &big)]));
    let before = heapprof::stats().profiler_bytes as i64;
    let futures: Vec<_> = (0..FUTURES)
        .map(|_| async {}.heap_labels(&[("tenant", &big)]))
        .collect();
    let held = heapprof::stats().profiler_bytes as i64 - before;
    drop(futures);
    let after = heapprof::stats().profiler_bytes as i64 - before;
    println!("held={held} after={after}");
}
