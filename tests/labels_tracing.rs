//! `heapprof::tracing::LabelLayer` (cargo feature `tracing`): chosen span
//! fields become labels while a span is entered, on whichever thread
//! enters it.

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::labels::{pairs, without_thread};
use heapprof_testkit::poll::{YieldOnce, poll_once};
use std::hint::black_box;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

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

/// The labels a sample taken now on this thread would carry, its
/// `thread` label left out.
fn labels_now() -> Vec<(String, String)> {
    without_thread(heapprof::current_labels())
}

/// Enters the span `id` on this thread through the global subscriber,
/// with no guard: a test chooses the thread that exits it.
fn enter_raw(id: &tracing::Id) {
    tracing::dispatcher::get_default(|d| d.enter(id));
}

/// Exits the span `id` on this thread ([`enter_raw`]).
fn exit_raw(id: &tracing::Id) {
    tracing::dispatcher::get_default(|d| d.exit(id));
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
        let in_outer = labels_now();
        let a = alloc_block(70_000);
        // A number is labelled by its Debug form; the inner span overrides.
        let inner = tracing::info_span!("step", tenant = 42u64);
        let (in_inner, b) = inner.in_scope(|| (labels_now(), alloc_block(30_000)));
        (in_outer, in_inner, labels_now(), [a, b])
    });
    assert_eq!(
        in_outer,
        pairs(&[("route", "/r"), ("tenant", "span-acme")]),
        "`user` is not chosen"
    );
    assert_eq!(in_inner, pairs(&[("route", "/r"), ("tenant", "42")]));
    assert_eq!(back, in_outer);
    assert!(labels_now().is_empty());
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(held_under(&grown, "tenant", "span-acme"), 70_000);
    assert_eq!(held_under(&grown, "tenant", "42"), 30_000);
    assert_eq!(held_under(&grown, "route", "/r"), 100_000);
    drop(blocks);
}

/// What the layer keeps of a span (its labels, the copies of the chosen
/// fields' values) is heapprof's memory: a measure of code that makes,
/// enters, records into and closes a labelled span counts only the
/// code's own blocks, at the default rate and when every allocation is
/// sampled.
#[test]
fn the_layers_memory_is_not_the_programs() {
    install();
    let labelled = || {
        let span = tracing::info_span!(
            "request",
            tenant = "acme-with-a-long-name",
            route = tracing::field::Empty
        );
        span.record("route", "/orders/with/a/long/path");
        span.in_scope(|| drop(alloc_block(100)));
    };
    // The registry's own slots for this thread's spans, made once.
    labelled();
    for rate in [512 * 1024, 1] {
        heapprof::set_sample_rate(rate);
        let ((), m) = heapprof::measure(labelled);
        assert_eq!(
            (
                m.allocations,
                m.allocated_bytes,
                m.deallocations,
                m.freed_bytes
            ),
            (1, 100, 1, 100),
            "at rate {rate}: {m}"
        );
    }
}

/// A value whose `Debug` keeps a block of [`KEPT_BY_DEBUG`] bytes, as a
/// cache filled on first use would.
struct KeepsABlock;

const KEPT_BY_DEBUG: usize = 50_000;

impl std::fmt::Debug for KeepsABlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::mem::forget(alloc_block(KEPT_BY_DEBUG));
        f.write_str("keeps-a-block")
    }
}

/// What a chosen field's `Debug` allocates is the program's, counted by a
/// measure and in profiles; only the layer's copy of the text is
/// heapprof's. A field the layer does not label is not formatted for it.
#[test]
fn what_a_fields_debug_allocates_is_the_programs() {
    install();
    // The registry's own slots for this thread's spans, made once.
    drop(tracing::info_span!("request", tenant = "warm-up"));
    let before = heapprof::snapshot();
    let (span, chosen) =
        heapprof::measure(|| tracing::info_span!("request", tenant = ?KeepsABlock));
    let labels = span.in_scope(labels_now);
    assert_eq!(labels, pairs(&[("tenant", "keeps-a-block")]));
    drop(span);
    let ((), other) = heapprof::measure(|| {
        drop(tracing::info_span!("request", unchosen = ?KeepsABlock));
    });
    assert_eq!(
        (chosen.allocations, chosen.allocated_bytes),
        (1, KEPT_BY_DEBUG as u64),
        "{chosen}"
    );
    assert_eq!(
        (other.allocations, other.allocated_bytes),
        (0, 0),
        "{other}"
    );
    let grown = heapprof::snapshot().delta(&before);
    let kept = grown
        .sites()
        .iter()
        .filter(|site| {
            site.frames
                .iter()
                .any(|f| f.function.contains("KeepsABlock"))
        })
        .map(|site| site.inuse_bytes)
        .sum::<i64>();
    assert_eq!(kept, KEPT_BY_DEBUG as i64);
}

/// A value whose `Debug` is [`LONG_DEBUG`] bytes of text.
struct LongDebug;

const LONG_DEBUG: usize = 4 << 20;

impl std::fmt::Debug for LongDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const CHUNK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for _ in 0..LONG_DEBUG / CHUNK.len() {
            f.write_str(CHUNK)?;
        }
        Ok(())
    }
}

/// A chosen field whose value formats to megabytes costs the span what
/// its label shows, not a copy of the whole text: the label is cut to
/// 128 bytes, and heapprof allocates far less than the text for it. Alone
/// in a child process: heapprof's own allocations are counted for the
/// whole process, and other tests' profiles make some.
#[test]
fn a_long_value_keeps_only_what_its_label_shows() {
    let test = "a_long_value_keeps_only_what_its_label_shows";
    if !is_child() {
        run_child(test, &[]);
        return;
    }
    install();
    drop(tracing::info_span!("request", tenant = "warm-up"));
    let before = heapprof::stats().profiler_allocated_bytes;
    let span = tracing::info_span!("request", tenant = ?LongDebug);
    let spent = heapprof::stats().profiler_allocated_bytes - before;
    let labels = span.in_scope(labels_now);
    drop(span);
    let [(key, value)] = &labels[..] else {
        panic!("one label expected: {labels:?}");
    };
    assert_eq!(key, "tenant");
    assert_eq!(value.len(), 128, "{value}");
    assert!(value.starts_with("0123") && value.ends_with('…'), "{value}");
    assert!(
        spent < (LONG_DEBUG / 4) as u64,
        "heapprof allocated {spent} bytes for a span whose value is {LONG_DEBUG} bytes"
    );
}

#[test]
fn a_value_recorded_later_counts_from_the_next_enter() {
    install();
    let span = tracing::info_span!("late", tenant = tracing::field::Empty);
    assert!(span.in_scope(labels_now).is_empty());
    span.record("tenant", "recorded");
    assert_eq!(span.in_scope(labels_now), pairs(&[("tenant", "recorded")]));
    // A span without any chosen field changes nothing.
    let plain = tracing::info_span!("plain", other = "x");
    assert!(plain.in_scope(labels_now).is_empty());
}

/// Spans exited in another order than entered (an `EnteredSpan` moved
/// and dropped elsewhere): the labels in force are always those of the
/// spans still entered, and none are left behind once all are exited.
/// (Each span is a root, so none carries another's labels as a parent.)
#[test]
fn spans_exited_out_of_order_leave_the_right_labels() {
    install();
    let a = tracing::info_span!(parent: None, "a", tenant = "order-a").entered();
    let b = tracing::info_span!(parent: None, "b", route = "/order-b").entered();
    let c = tracing::info_span!(parent: None, "c", tenant = "order-c").entered();
    assert_eq!(
        labels_now(),
        pairs(&[("route", "/order-b"), ("tenant", "order-c")])
    );
    drop(a);
    assert_eq!(
        labels_now(),
        pairs(&[("route", "/order-b"), ("tenant", "order-c")]),
        "a's exit changes nothing that b and c set"
    );
    drop(c);
    assert_eq!(
        labels_now(),
        pairs(&[("route", "/order-b")]),
        "only b is entered"
    );
    drop(b);
    assert!(labels_now().is_empty());
    // The outer span exits first, the inner one last.
    let outer = tracing::info_span!(parent: None, "outer", tenant = "order-outer").entered();
    let inner = tracing::info_span!(parent: None, "inner", route = "/order-inner").entered();
    drop(outer);
    assert_eq!(labels_now(), pairs(&[("route", "/order-inner")]));
    drop(inner);
    assert!(labels_now().is_empty());
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

/// A span made inside a request span carries the request's labels where
/// it is entered: a task spawned with `.instrument(span)` runs on other
/// threads, outside the request span, and its allocations still carry the
/// request's tenant (with its own route, and with no chosen field of its
/// own). A span made with no parent carries only its own.
#[test]
fn spans_carry_their_parents_labels_into_spawned_tasks() {
    install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let before = heapprof::snapshot();
    let request = tracing::info_span!("request", tenant = "parent-acme");
    let (db, plain, root) = request.in_scope(|| {
        let db = rt.spawn(
            async { alloc_block(30_000) }.instrument(tracing::info_span!("db", route = "/db")),
        );
        let plain =
            rt.spawn(async { alloc_block(20_000) }.instrument(tracing::info_span!("cache")));
        let root = rt.spawn(
            async { alloc_block(10_000) }
                .instrument(tracing::info_span!(parent: None, "root", route = "/root")),
        );
        (db, plain, root)
    });
    let held =
        rt.block_on(async { [db.await.unwrap(), plain.await.unwrap(), root.await.unwrap()] });
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(held_under(&grown, "tenant", "parent-acme"), 50_000);
    assert_eq!(held_under(&grown, "route", "/db"), 30_000);
    assert_eq!(held_under(&grown, "route", "/root"), 10_000);
    // Entered inside its parent, a child's labels are the parent's and its own.
    let in_child = request.in_scope(|| {
        let child = tracing::info_span!("child", route = "/child");
        child.in_scope(labels_now)
    });
    assert_eq!(
        in_child,
        pairs(&[("route", "/child"), ("tenant", "parent-acme")])
    );
    // Entered inside another scope, the scope's labels are added.
    let child = request.in_scope(|| tracing::info_span!("child", route = "/child"));
    let inside_other = heapprof::with_labels(&[("job", "nightly")], || child.in_scope(labels_now));
    assert_eq!(
        inside_other,
        pairs(&[
            ("job", "nightly"),
            ("route", "/child"),
            ("tenant", "parent-acme")
        ])
    );
    drop(held);
}

/// A span entered on one thread and exited on another (an entered guard
/// held across an `.await`, the task resumed on another worker) keeps its
/// labels on the first thread while the span lives, as tracing's current
/// span there does; once it closes, that thread drops them at its next
/// sample or scope: not for the rest of its life. While a scope entered
/// inside the span is still open there (one that adds no label too), the
/// span's labels stay in force; they go once it ends.
#[test]
fn a_span_exited_on_another_thread_lets_go_once_closed() {
    use std::sync::mpsc::channel;
    install();
    let span = tracing::info_span!(parent: None, "held", tenant = "stranded-acme");
    let id = span.id().unwrap();
    let before = heapprof::snapshot();
    let (to_a, from_main) = channel::<()>();
    let (to_main, from_a) = channel::<Vec<(String, String)>>();
    let entering_id = id.clone();
    let a = std::thread::spawn(move || {
        enter_raw(&entering_id);
        let inside = alloc_block(10_000);
        to_main.send(Vec::new()).unwrap();
        // Exited on another thread; the span is still open.
        from_main.recv().unwrap();
        to_main.send(labels_now()).unwrap();
        // A scope that adds nothing opens on top; the span closes.
        let (in_empty_scope, in_scope_block) = heapprof::with_labels(&[], || {
            to_main.send(Vec::new()).unwrap();
            from_main.recv().unwrap();
            (labels_now(), alloc_block(20_000))
        });
        let after = labels_now();
        let later = alloc_block(40_000);
        (inside, in_empty_scope, in_scope_block, after, later)
    });
    from_a.recv().unwrap();
    let exiting = std::thread::spawn(move || exit_raw(&id));
    exiting.join().unwrap();
    to_a.send(()).unwrap();
    assert_eq!(
        from_a.recv().unwrap(),
        pairs(&[("tenant", "stranded-acme")]),
        "while the span lives"
    );
    from_a.recv().unwrap();
    drop(span);
    to_a.send(()).unwrap();
    let (inside, in_empty_scope, in_scope_block, after, later) = a.join().unwrap();
    assert_eq!(
        in_empty_scope,
        pairs(&[("tenant", "stranded-acme")]),
        "a scope entered inside the span keeps what it was entered with"
    );
    assert!(after.is_empty(), "after the scope: {after:?}");
    let grown = heapprof::snapshot().delta(&before);
    assert_eq!(held_under(&grown, "tenant", "stranded-acme"), 30_000);
    let unlabelled: i64 = grown
        .sites()
        .iter()
        .filter(|site| {
            site.labels.iter().all(|(k, _)| k == "thread")
                && site
                    .frames
                    .iter()
                    .any(|f| f.function.contains("alloc_block"))
        })
        .map(|site| site.inuse_bytes)
        .sum();
    assert_eq!(unlabelled, 40_000);
    drop((inside, in_scope_block, later));
}

/// A span entered inside one scope and stranded there, its scope ended:
/// a later scope on that thread carries its own labels, not the span's
/// nor the ended scope's.
#[test]
fn a_stranded_span_of_an_ended_scope_leaves_later_scopes_alone() {
    install();
    let span = tracing::info_span!(parent: None, "held", tenant = "ended-acme");
    let id = span.id().unwrap();
    let entering = id.clone();
    let (to_a, from_main) = std::sync::mpsc::channel::<()>();
    let (to_main, from_a) = std::sync::mpsc::channel::<()>();
    let a = std::thread::spawn(move || {
        heapprof::with_labels(&[("job", "ended-task-1")], || enter_raw(&entering));
        to_main.send(()).unwrap();
        from_main.recv().unwrap();
        let in_later = heapprof::with_labels(&[("tenant", "ended-globex")], labels_now);
        (in_later, labels_now())
    });
    from_a.recv().unwrap();
    std::thread::spawn(move || exit_raw(&id)).join().unwrap();
    drop(span);
    to_a.send(()).unwrap();
    let (in_later, after) = a.join().unwrap();
    assert_eq!(in_later, pairs(&[("tenant", "ended-globex")]));
    assert!(after.is_empty(), "{after:?}");
}

/// Labelled spans nested deeper than a thread's stack holds change no
/// labels past it, and leave none behind when they exit; a span made
/// inside them still carries the labels of its parents.
#[test]
fn spans_deeper_than_the_stack_change_nothing_and_leave_nothing() {
    install();
    fn nest(depth: usize, max: usize, seen: &mut Vec<Vec<(String, String)>>) {
        if depth == max {
            return;
        }
        let route = format!("/deep-{depth}");
        let span = tracing::info_span!("level", route = route.as_str());
        span.in_scope(|| {
            seen.push(labels_now());
            // The same span entered again inside itself.
            span.in_scope(|| nest(depth + 1, max, seen));
            seen.push(labels_now());
        });
    }
    let mut seen = Vec::new();
    let outer = tracing::info_span!(parent: None, "deep", tenant = "deep-acme");
    outer.in_scope(|| nest(0, 24, &mut seen));
    assert!(labels_now().is_empty());
    for labels in &seen {
        assert!(
            labels.contains(&("tenant".to_owned(), "deep-acme".to_owned())),
            "{labels:?}"
        );
    }
    // Each level sees its own route until the stack is full.
    assert_eq!(
        seen[0],
        pairs(&[("route", "/deep-0"), ("tenant", "deep-acme")])
    );
    assert_eq!(
        seen[1],
        pairs(&[("route", "/deep-1"), ("tenant", "deep-acme")])
    );
    // Past it, the labels of the last level that fit stay in force.
    assert_eq!(seen[22], seen[23]);
    assert_ne!(
        seen[23],
        pairs(&[("route", "/deep-23"), ("tenant", "deep-acme")])
    );
    // On the way out, each level sees what it saw on the way in.
    let (down, up) = seen.split_at(24);
    for (d, u) in down.iter().zip(up.iter().rev()) {
        assert_eq!(d, u);
    }
}

/// Spans past the stack that only inherit their parent's labels lose
/// nothing and say nothing; the first one whose labels are left out is
/// said on stderr, once however many follow.
#[test]
fn labels_left_out_past_the_stack_are_said_once() {
    let test = "labels_left_out_past_the_stack_are_said_once";
    if !is_child() {
        let (_, stderr) = run_child(test, &[]);
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("heapprof: tracing: more than 16 labelled spans in force"))
            .collect();
        assert_eq!(said.len(), 1, "{stderr}");
        let marker = stderr.find("plain spans done").expect("the child's marker");
        let line = stderr.find(said[0]).unwrap();
        assert!(
            marker < line,
            "said before any labels were left out:\n{stderr}"
        );
        return;
    }
    install();
    fn nest(depth: usize, max: usize, labelled: bool) {
        if depth == max {
            return;
        }
        let span = if labelled {
            tracing::info_span!("level", route = format!("/said-{depth}"))
        } else {
            tracing::info_span!("level", other = depth)
        };
        span.in_scope(|| nest(depth + 1, max, labelled));
    }
    let outer = tracing::info_span!(parent: None, "said", tenant = "said-acme");
    outer.in_scope(|| nest(0, 24, false));
    eprintln!("plain spans done");
    outer.in_scope(|| nest(0, 24, true));
    outer.in_scope(|| nest(0, 24, true));
}

/// A span entered on two threads at once, and entered on a third and
/// exited on a fourth, stays in force on the threads still inside it,
/// also after another span is closed while stranded.
#[test]
fn a_span_shared_by_threads_stays_in_force_where_it_is_entered() {
    use std::sync::Barrier;
    install();
    let shared = tracing::info_span!(parent: None, "shared", tenant = "shared-acme");
    let id = shared.id().unwrap();
    let barrier = Barrier::new(2);
    let seen = std::thread::scope(|s| {
        let inside = s.spawn(|| {
            shared.in_scope(|| {
                barrier.wait();
                barrier.wait();
                labels_now()
            })
        });
        barrier.wait();
        let entering = id.clone();
        s.spawn(move || enter_raw(&entering)).join().unwrap();
        let exiting = id.clone();
        s.spawn(move || exit_raw(&exiting)).join().unwrap();
        // Another span closes while on a stack: every thread settles.
        let other = tracing::info_span!(parent: None, "other", tenant = "other-acme");
        let other_id = other.id().unwrap();
        s.spawn(move || enter_raw(&other_id)).join().unwrap();
        drop(other);
        barrier.wait();
        inside.join().unwrap()
    });
    assert_eq!(seen, pairs(&[("tenant", "shared-acme")]));
}

/// A child made before its parent records a new value, entered inside the
/// parent, carries the parent's new value: the labels in force around a
/// span override the ones it inherited, and its own override both.
#[test]
fn a_child_entered_inside_its_parent_keeps_the_parents_new_values() {
    install();
    let parent = tracing::info_span!(parent: None, "request", tenant = "unknown");
    let child = parent.in_scope(|| tracing::info_span!("handler", route = "/late"));
    parent.record("tenant", "late-acme");
    let inside = parent.in_scope(|| child.in_scope(labels_now));
    assert_eq!(
        inside,
        pairs(&[("route", "/late"), ("tenant", "late-acme")])
    );
    // Entered on its own, it carries what it inherited.
    let alone = child.in_scope(labels_now);
    assert_eq!(alone, pairs(&[("route", "/late"), ("tenant", "unknown")]));
}

/// An empty field value takes its key out of a span's labels, inherited
/// or in force around it.
#[test]
fn an_empty_value_takes_the_key_out_inside_other_scopes_too() {
    install();
    let parent = tracing::info_span!(parent: None, "request", tenant = "empty-acme");
    let child = parent.in_scope(|| tracing::info_span!("public", tenant = "", route = "/pub"));
    let alone = child.in_scope(labels_now);
    assert_eq!(alone, pairs(&[("route", "/pub")]));
    let in_scope = heapprof::with_labels(&[("job", "empty-job"), ("tenant", "outer")], || {
        child.in_scope(labels_now)
    });
    assert_eq!(in_scope, pairs(&[("job", "empty-job"), ("route", "/pub")]));
}

/// Two labelled tasks polled in turn on one thread (a single-threaded
/// executor), each holding an entered span across an `.await`: each poll
/// carries its own task's `heap_labels`, before and after the guard is
/// dropped, never the other task's (the span, entered in an earlier poll,
/// is not in force in a later one).
#[test]
fn guards_held_across_awaits_on_one_thread_keep_to_their_tasks() {
    use heapprof::FutureExt as _;
    install();
    let task = |job: &'static str, tenant: &'static str| {
        async move {
            let span = tracing::info_span!(parent: None, "request", tenant);
            let guard = span.enter();
            YieldOnce::new().await;
            let before_drop = labels_now();
            drop(guard);
            let after_drop = labels_now();
            (before_drop, after_drop)
        }
        .heap_labels(&[("job", job)])
    };
    let mut a = Box::pin(task("await-job-a", "await-a"));
    let mut b = Box::pin(task("await-job-b", "await-b"));
    assert!(poll_once(&mut a).is_pending());
    assert!(poll_once(&mut b).is_pending());
    let std::task::Poll::Ready((a_before, a_after)) = poll_once(&mut a) else {
        panic!("a is ready after one wait");
    };
    let std::task::Poll::Ready((b_before, b_after)) = poll_once(&mut b) else {
        panic!("b is ready after one wait");
    };
    for (job, seen) in [
        ("await-job-a", &a_before),
        ("await-job-a", &a_after),
        ("await-job-b", &b_before),
        ("await-job-b", &b_after),
    ] {
        assert_eq!(seen, &pairs(&[("job", job)]), "{job}");
    }
    assert!(labels_now().is_empty());
}

/// A guard moved out of a `with_labels` closure, or into one, and
/// dropped there: once the thread is back in the scope the span was
/// entered in, no label of either is left in force.
#[test]
fn guards_moved_across_scopes_leave_no_labels_behind() {
    install();
    let span = tracing::info_span!(parent: None, "moved", tenant = "moved-acme");
    let guard = heapprof::with_labels(&[("job", "moved-job")], || span.clone().entered());
    drop(guard);
    assert!(labels_now().is_empty());
    let guard = span.clone().entered();
    let inside = heapprof::with_labels(&[("job", "moved-job")], || {
        drop(guard);
        labels_now()
    });
    // The scope keeps what it was entered with until it ends.
    assert_eq!(
        inside,
        pairs(&[("job", "moved-job"), ("tenant", "moved-acme")])
    );
    assert!(labels_now().is_empty());
}

/// Spans exited in another scope than they were entered in, mixed with
/// spans exited in theirs: once every span is exited, no label is left,
/// and the labels in between are those of the spans still entered.
#[test]
fn exits_in_other_scopes_mixed_with_exits_in_place_leave_nothing() {
    install();
    let span = |name: &'static str, route: &'static str| tracing::info_span!(parent: None, "mixed", tenant = name, route);
    // b exits inside a scope above a, then a exits in place.
    let a = span("mixed-a", "/a").entered();
    let b = span("mixed-b", "/b").entered();
    heapprof::with_labels(&[("job", "mixed-job")], move || drop(b));
    drop(a);
    assert!(labels_now().is_empty());
    // The same with c, still entered, above b.
    let a = span("mixed-a", "/a").entered();
    let b = span("mixed-b", "/b").entered();
    let c = tracing::info_span!(parent: None, "mixed", route = "/c").entered();
    heapprof::with_labels(&[("job", "mixed-job")], move || drop(b));
    drop(a);
    assert_eq!(labels_now(), pairs(&[("route", "/c")]));
    drop(c);
    assert!(labels_now().is_empty());
    // a exits inside a scope that enters b and hands it out: back outside,
    // a's labels are gone while b is still held.
    let a = span("mixed-a", "/a").entered();
    let b = heapprof::with_labels(&[("job", "mixed-job")], move || {
        drop(a);
        span("mixed-b", "/b").entered()
    });
    assert!(labels_now().is_empty());
    drop(b);
    assert!(labels_now().is_empty());
}

/// One span entered at top level and, at the same time, inside a pending
/// labelled task: the top-level exit is the top level's, so neither the
/// top level nor another task's poll keeps the span's labels.
#[test]
fn a_span_entered_at_top_level_and_in_a_task_exits_where_it_is_dropped() {
    use heapprof::FutureExt as _;
    install();
    let span = tracing::info_span!(parent: None, "shared", tenant = "two-places");
    let top = span.clone().entered();
    let in_task = span.clone();
    let mut task = Box::pin(
        async move {
            let guard = in_task.enter();
            YieldOnce::new().await;
            drop(guard);
        }
        .heap_labels(&[("job", "two-places-task")]),
    );
    assert!(poll_once(&mut task).is_pending());
    drop(top);
    assert!(labels_now().is_empty());
    let mut other = Box::pin(async { labels_now() }.heap_labels(&[("job", "other")]));
    assert_eq!(
        poll_once(&mut other),
        std::task::Poll::Ready(pairs(&[("job", "other")]))
    );
    assert!(poll_once(&mut task).is_ready());
    assert!(labels_now().is_empty());
}

/// A span entered again inside itself after a value was recorded: inside,
/// the new value; after the inner exit, the value before it.
#[test]
fn a_span_entered_inside_itself_after_a_record_puts_the_old_value_back() {
    install();
    let span = tracing::info_span!(parent: None, "recorded", tenant = "record-old");
    let outer = span.enter();
    span.record("tenant", "record-new");
    let inner = span.in_scope(labels_now);
    assert_eq!(inner, pairs(&[("tenant", "record-new")]));
    assert_eq!(labels_now(), pairs(&[("tenant", "record-old")]));
    drop(outer);
    assert!(labels_now().is_empty());
}

/// A span entered here over and over and exited on other threads, then
/// closed: no label is left here.
#[test]
fn enters_here_and_exits_elsewhere_leave_nothing_once_closed() {
    install();
    let span = tracing::info_span!(parent: None, "elsewhere", tenant = "elsewhere-acme");
    let id = span.id().unwrap();
    for _ in 0..100 {
        enter_raw(&id);
        let exiting = id.clone();
        std::thread::spawn(move || exit_raw(&exiting))
            .join()
            .unwrap();
    }
    assert_eq!(labels_now(), pairs(&[("tenant", "elsewhere-acme")]));
    drop(span);
    assert!(labels_now().is_empty());
}

/// One span entered inside one scope, then inside another: each time the
/// labels around it are the scope's of the moment.
#[test]
fn a_span_entered_in_turn_inside_two_scopes_takes_each_ones_labels() {
    install();
    let span = tracing::info_span!(parent: None, "turns", route = "/turns");
    for job in ["turn-x", "turn-y", "turn-x"] {
        let seen = heapprof::with_labels(&[("job", job)], || span.in_scope(labels_now));
        assert_eq!(seen, pairs(&[("job", job), ("route", "/turns")]));
    }
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
        let inside = span.in_scope(labels_now);
        assert_eq!(inside, pairs(&[("route", "/two"), ("tenant", "two-acme")]));
        span.record("tenant", "two-globex");
        let recorded = span.in_scope(labels_now);
        assert_eq!(
            recorded,
            pairs(&[("route", "/two"), ("tenant", "two-globex")])
        );
    });
    assert!(labels_now().is_empty());
}

/// Spans entered inside scopes that have ended and exited on another
/// thread (guards dropped on another worker) keep their entries on the
/// first thread's span stack until they close; more of them than the
/// stack holds leave room for a span entered now all the same.
#[test]
fn spans_left_by_ended_scopes_leave_room_for_new_ones() {
    install();
    let spans: Vec<tracing::Span> = (0..40)
        .map(|i| tracing::info_span!("connection", tenant = i))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for span in &spans {
                let id = span.id().unwrap();
                heapprof::with_labels(&[("route", "/poll")], || enter_raw(&id));
            }
            std::thread::scope(|s| {
                s.spawn(|| spans.iter().for_each(|span| exit_raw(&span.id().unwrap())));
            });
            assert!(labels_now().is_empty(), "{:?}", labels_now());
            let probe = tracing::info_span!("probe", tenant = "probe");
            assert_eq!(probe.in_scope(labels_now), pairs(&[("tenant", "probe")]));
            let scoped = heapprof::with_labels(&[("route", "/x")], || probe.in_scope(labels_now));
            assert_eq!(scoped, pairs(&[("route", "/x"), ("tenant", "probe")]));
        });
    });
    // Entries of a scope still open are never the ones dropped: a span
    // entered past them changes nothing, and each exit puts back the
    // labels from before its enter.
    let open: Vec<tracing::Span> = (0..40)
        .map(|i| tracing::info_span!("open", tenant = i))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            heapprof::with_labels(&[("route", "/open")], || {
                let guards: Vec<_> = open.iter().map(tracing::Span::enter).collect();
                let deepest = labels_now();
                let probe = tracing::info_span!("probe", tenant = "probe");
                assert_eq!(probe.in_scope(labels_now), deepest);
                drop(guards);
                assert_eq!(labels_now(), pairs(&[("route", "/open")]));
            });
        });
    });
}

/// How many spans closed while stranded the layer remembers for the
/// threads that still have them (`STRANDED_KEPT` in `labels::tracing`).
const STRANDED_KEPT: usize = 64;

/// Runs the test `name` alone in a child process, unless this is that
/// child: its flood of stranded spans would push other tests' spans out
/// of the ring. True in the parent, which has nothing more to do.
fn in_a_child(name: &str) -> bool {
    if is_child() {
        return false;
    }
    run_child(name, &[]);
    true
}

/// Strands `n` spans of `dispatch`: each entered on one thread, exited
/// on another and closed there.
fn strand_many(dispatch: &tracing::Dispatch, n: usize, target_a: bool) {
    for i in 0..n {
        let span = tracing::dispatcher::with_default(dispatch, || {
            if target_a {
                tracing::info_span!(target: "a", "other", tenant = i)
            } else {
                tracing::info_span!("other", tenant = i)
            }
        });
        let id = span.id().unwrap();
        let (entering, entered) = (dispatch.clone(), id.clone());
        std::thread::spawn(move || entering.enter(&entered))
            .join()
            .unwrap();
        let exiting = dispatch.clone();
        std::thread::spawn(move || {
            exiting.exit(&id);
            drop(span);
        })
        .join()
        .unwrap();
    }
}

/// Waits for `flag` without allocating: an allocation would be a sample,
/// which takes closed spans off this thread's stack ahead of time.
fn spin_until(flag: &AtomicBool) {
    while !flag.load(SeqCst) {
        std::thread::yield_now();
    }
}

/// A span entered here, exited on another thread and closed while more
/// spans close that way elsewhere than the layer remembers: this thread
/// misses it at its next sample, and lets go of it at its next span enter
/// or exit (which asks the subscriber), keeping the live span under it.
#[test]
fn a_stranded_span_missed_among_many_lets_go_at_the_next_enter() {
    if in_a_child("a_stranded_span_missed_among_many_lets_go_at_the_next_enter") {
        return;
    }
    static FLOODED: AtomicBool = AtomicBool::new(false);
    install();
    let live = tracing::info_span!(parent: None, "live", tenant = "live-acme");
    let missed = tracing::info_span!(parent: None, "missed", tenant = "missed-acme");
    let (live_id, missed_id) = (live.id().unwrap(), missed.id().unwrap());
    let (to_main, from_a) = std::sync::mpsc::channel::<()>();
    let a = std::thread::spawn(move || {
        enter_raw(&live_id);
        enter_raw(&missed_id);
        to_main.send(()).unwrap();
        spin_until(&FLOODED);
        let missed_it = labels_now();
        tracing::info_span!("unlabelled").in_scope(|| ());
        let after_an_enter = labels_now();
        exit_raw(&live_id);
        (missed_it, after_an_enter, labels_now())
    });
    from_a.recv().unwrap();
    let missed_id = missed.id().unwrap();
    std::thread::spawn(move || exit_raw(&missed_id))
        .join()
        .unwrap();
    drop(missed);
    tracing::dispatcher::get_default(|d| strand_many(d, 2 * STRANDED_KEPT, false));
    FLOODED.store(true, SeqCst);
    let (missed_it, after_an_enter, after_all) = a.join().unwrap();
    assert_eq!(
        missed_it,
        pairs(&[("tenant", "missed-acme")]),
        "the ring of closed spans was to pass this one by"
    );
    assert_eq!(after_an_enter, pairs(&[("tenant", "live-acme")]));
    assert!(after_all.is_empty(), "{after_all:?}");
    drop(live);
}

/// A thread asks only about the spans the asking layer entered: one that
/// another layer's filter hides from it stays entered, with its labels,
/// through the asking layer's enter and exit.
#[test]
fn asking_leaves_spans_another_layers_filter_hides() {
    use tracing_subscriber::layer::Layer as _;
    if in_a_child("asking_leaves_spans_another_layers_filter_hides") {
        return;
    }
    static FLOODED: AtomicBool = AtomicBool::new(false);
    heapprof::set_sample_rate(1);
    let only =
        |target: &'static str| tracing_subscriber::filter::filter_fn(move |m| m.target() == target);
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(LabelLayer::new(["tenant"]).with_filter(only("a")))
            .with(LabelLayer::new(["route"]).with_filter(only("b"))),
    );
    let (live, b) = tracing::dispatcher::with_default(&dispatch, || {
        (
            tracing::info_span!(target: "a", "live", tenant = "live-acme"),
            tracing::info_span!(target: "b", "b", route = "/r"),
        )
    });
    let (live_id, b_id) = (live.id().unwrap(), b.id().unwrap());
    let on_a = dispatch.clone();
    let a = std::thread::spawn(move || {
        on_a.enter(&live_id);
        spin_until(&FLOODED);
        on_a.enter(&b_id);
        let inside_b = labels_now();
        on_a.exit(&b_id);
        let after_b = labels_now();
        on_a.exit(&live_id);
        (inside_b, after_b, labels_now())
    });
    strand_many(&dispatch, 2 * STRANDED_KEPT, true);
    FLOODED.store(true, SeqCst);
    let (inside_b, after_b, after_all) = a.join().unwrap();
    assert_eq!(inside_b, pairs(&[("route", "/r"), ("tenant", "live-acme")]));
    assert_eq!(after_b, pairs(&[("tenant", "live-acme")]));
    assert!(after_all.is_empty(), "{after_all:?}");
}

/// A span entered through one subscriber stays entered, with its labels,
/// through an enter in another subscriber's scope, which cannot see it.
#[test]
fn asking_leaves_spans_of_another_subscriber() {
    if in_a_child("asking_leaves_spans_of_another_subscriber") {
        return;
    }
    static FLOODED: AtomicBool = AtomicBool::new(false);
    install();
    let inner =
        tracing::Dispatch::new(tracing_subscriber::registry().with(LabelLayer::new(["route"])));
    let live = tracing::info_span!(parent: None, "live", tenant = "live-acme");
    let live_id = live.id().unwrap();
    let a = std::thread::spawn(move || {
        enter_raw(&live_id);
        spin_until(&FLOODED);
        tracing::dispatcher::with_default(&inner, || {
            tracing::info_span!("unlabelled").in_scope(|| ());
        });
        let after = labels_now();
        exit_raw(&live_id);
        (after, labels_now())
    });
    tracing::dispatcher::get_default(|d| strand_many(d, 2 * STRANDED_KEPT, false));
    FLOODED.store(true, SeqCst);
    let (after, after_all) = a.join().unwrap();
    assert_eq!(after, pairs(&[("tenant", "live-acme")]));
    assert!(after_all.is_empty(), "{after_all:?}");
    drop(live);
}
