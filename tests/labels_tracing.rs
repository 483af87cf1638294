//! `heapprof::tracing::LabelLayer` (cargo feature `tracing`): chosen span
//! fields become labels while a span is entered, on whichever thread
//! enters it.

use heapprof_testkit::labels::{pairs, without_thread};
use std::hint::black_box;
use std::sync::Once;

use heapprof::tracing::LabelLayer;
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Installs the layer as the process's subscriber (runtime worker threads
/// see only a global one), once, and samples every allocation.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(LabelLayer::new(["tenant", "route"]));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    heapprof::set_sample_rate(1);
}

#[inline(never)]
fn alloc_block(size: usize) -> Vec<u8> {
    black_box(vec![9u8; size])
}

/// Live bytes at `alloc_block` under `key=value`.
fn held_under(s: &heapprof::Snapshot, key: &str, value: &str) -> i64 {
    s.sites()
        .iter()
        .filter(|site| site.has_label(key, value))
        .filter(|site| {
            site.frames
                .iter()
                .any(|f| f.function.contains("alloc_block"))
        })
        .map(|site| site.inuse_bytes)
        .sum()
}

#[test]
fn chosen_fields_of_entered_spans_are_labels() {
    install();
    let before = heapprof::snapshot();
    let outer = tracing::info_span!("request", tenant = "span-acme", route = "/r", user = 7);
    let (in_outer, in_inner, back, blocks) = outer.in_scope(|| {
        let in_outer = without_thread(heapprof::current_labels());
        let a = alloc_block(70_000);
        // A number is labelled by its Debug form; the inner span overrides.
        let inner = tracing::info_span!("step", tenant = 42u64);
        let (in_inner, b) = inner.in_scope(|| {
            (
                without_thread(heapprof::current_labels()),
                alloc_block(30_000),
            )
        });
        (
            in_outer,
            in_inner,
            without_thread(heapprof::current_labels()),
            [a, b],
        )
    });
    assert_eq!(
        in_outer,
        pairs(&[("route", "/r"), ("tenant", "span-acme")]),
        "`user` is not chosen"
    );
    assert_eq!(in_inner, pairs(&[("route", "/r"), ("tenant", "42")]));
    assert_eq!(back, in_outer);
    assert!(without_thread(heapprof::current_labels()).is_empty());
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(held_under(&grown, "tenant", "span-acme"), 70_000);
    assert_eq!(held_under(&grown, "tenant", "42"), 30_000);
    assert_eq!(held_under(&grown, "route", "/r"), 100_000);
    drop(blocks);
}

#[test]
fn a_value_recorded_later_counts_from_the_next_enter() {
    install();
    let span = tracing::info_span!("late", tenant = tracing::field::Empty);
    assert!(
        span.in_scope(|| without_thread(heapprof::current_labels()))
            .is_empty()
    );
    span.record("tenant", "recorded");
    assert_eq!(
        span.in_scope(|| without_thread(heapprof::current_labels())),
        pairs(&[("tenant", "recorded")])
    );
    // A span without any chosen field changes nothing.
    let plain = tracing::info_span!("plain", other = "x");
    assert!(
        plain
            .in_scope(|| without_thread(heapprof::current_labels()))
            .is_empty()
    );
}

/// Spans exited in another order than entered (an `EnteredSpan` moved
/// and dropped elsewhere): the labels in force are always those of the
/// spans still entered, and none are left behind once all are exited.
#[test]
fn spans_exited_out_of_order_leave_the_right_labels() {
    install();
    let a = tracing::info_span!("a", tenant = "order-a").entered();
    let b = tracing::info_span!("b", route = "/order-b").entered();
    let c = tracing::info_span!("c", tenant = "order-c").entered();
    assert_eq!(
        without_thread(heapprof::current_labels()),
        pairs(&[("route", "/order-b"), ("tenant", "order-c")])
    );
    drop(a);
    assert_eq!(
        without_thread(heapprof::current_labels()),
        pairs(&[("route", "/order-b"), ("tenant", "order-c")]),
        "a's exit changes nothing that b and c set"
    );
    drop(c);
    assert_eq!(
        without_thread(heapprof::current_labels()),
        pairs(&[("route", "/order-b")]),
        "only b is entered"
    );
    drop(b);
    assert!(without_thread(heapprof::current_labels()).is_empty());
    // The outer span exits first, the inner one last.
    let outer = tracing::info_span!("outer", tenant = "order-outer").entered();
    let inner = tracing::info_span!("inner", route = "/order-inner").entered();
    drop(outer);
    assert_eq!(
        without_thread(heapprof::current_labels()),
        pairs(&[("route", "/order-inner")])
    );
    drop(inner);
    assert!(without_thread(heapprof::current_labels()).is_empty());
}

#[test]
fn instrumented_tasks_keep_their_labels_across_threads() {
    install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .build()
        .unwrap();
    let before = heapprof::snapshot();
    let held = rt.block_on(async {
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let tenant = if i % 2 == 0 { "span-even" } else { "span-odd" };
                let span = tracing::info_span!("task", tenant);
                tokio::spawn(
                    async move {
                        let mut kept = Vec::new();
                        for _ in 0..20 {
                            kept.push(alloc_block(10_000));
                            tokio::task::yield_now().await;
                        }
                        kept
                    }
                    .instrument(span),
                )
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            held.extend(t.await.unwrap());
        }
        held
    });
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(held_under(&grown, "tenant", "span-even"), 3 * 20 * 10_000);
    assert_eq!(held_under(&grown, "tenant", "span-odd"), 3 * 20 * 10_000);
    drop(held);
}

/// Two label layers in one subscriber, each choosing its own fields: a
/// span carries both layers' labels while entered, and none after.
#[test]
fn two_label_layers_share_a_span() {
    let subscriber = tracing_subscriber::registry()
        .with(LabelLayer::new(["tenant"]))
        .with(LabelLayer::new(["route"]));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("req", tenant = "two-acme", route = "/two");
        let inside = span.in_scope(|| without_thread(heapprof::current_labels()));
        assert_eq!(inside, pairs(&[("route", "/two"), ("tenant", "two-acme")]));
        span.record("tenant", "two-globex");
        let recorded = span.in_scope(|| without_thread(heapprof::current_labels()));
        assert_eq!(
            recorded,
            pairs(&[("route", "/two"), ("tenant", "two-globex")])
        );
    });
    assert!(without_thread(heapprof::current_labels()).is_empty());
}
