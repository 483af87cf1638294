//! Labels from `tracing` spans (cargo feature `tracing`).
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! tracing_subscriber::registry()
//!     .with(heapprof::tracing::LabelLayer::new(["tenant", "route"]))
//!     .init();
//!
//! let span = tracing::info_span!("request", tenant = "acme", route = "/api/x");
//! let _entered = span.enter(); // allocations sampled here carry both labels
//! ```

use tracing_core::Subscriber;
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{ExtensionsMut, LookupSpan, SpanRef};

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, AtomicUsize};

use super::LabelSetId;
use super::table::{self, Kind};
use crate::support::reentry;
use crate::thread;
use crate::thread::labels::StackedSpan;

/// A [`Layer`] that turns chosen span fields into heap-profile labels
/// while the span is entered: every allocation sampled on a thread inside
/// an entered span with a field `tenant` carries the label
/// `tenant=<value>`, exactly as inside [`with_labels`](crate::with_labels).
/// An instrumented future enters its span on each poll, so its labels
/// follow it from thread to thread.
///
/// A span's labels are its parent's labels, as they are when the span is
/// made, with its own chosen fields added (overriding the same keys): a
/// span made inside a request span carries the request's labels wherever
/// it is entered, as a task spawned with `.instrument(span)` is. Entered
/// inside other scopes ([`with_labels`](crate::with_labels), spans that
/// are not its parents), its labels are added to theirs. A field's value
/// is its `Display` for strings and its `Debug` otherwise; a value
/// recorded later (`span.record("tenant", …)`) takes effect at the span's
/// next enter, and reaches only spans made after it. Label limits as for
/// [`with_labels`](crate::with_labels).
///
/// Needs a subscriber that stores span data ([`LookupSpan`]), as
/// `tracing_subscriber::registry()` does. Several `LabelLayer`s in one
/// subscriber each add their fields to the span's labels.
///
/// Spans and [`with_labels`](crate::with_labels) scopes must nest (tracing's
/// guards see to it unless moved): each puts back, when it ends, the
/// labels that were in force when it began, so an `EnteredSpan` moved out
/// of a `with_labels` closure and dropped after it (or a `with_labels`
/// that ends inside a span entered before it) leaves the wrong labels in
/// force. A span exited on another thread than the one that entered it (a
/// guard held across an `.await`, which clippy's `await_holding_span_guard`
/// warns of, and the task resumed on another worker) keeps its labels in
/// force on the first thread until the span closes (its last handle is
/// dropped), and then until that thread next takes a sample or enters a
/// scope with no scope entered inside the span still open; only the
/// latest few spans closed that way are looked for, and none entered
/// deeper than a thread's span stack keeps.
#[derive(Clone, Debug)]
pub struct LabelLayer {
    fields: Vec<String>,
}

impl LabelLayer {
    /// A layer that labels allocations with the span fields named in
    /// `fields`, under the same names.
    pub fn new<I, S>(fields: I) -> LabelLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LabelLayer {
            fields: fields.into_iter().map(Into::into).collect(),
        }
    }

    /// Stores `values`' chosen fields in `labels`; whether there were any.
    fn collect(&self, labels: &mut SpanLabels, record: impl FnOnce(&mut dyn Visit)) -> bool {
        let mut visitor = Collect {
            wanted: &self.fields,
            found: &mut labels.fields,
            any: false,
        };
        record(&mut visitor);
        visitor.any
    }

    /// Adds the chosen fields `record` visits to the span's labels. One
    /// `SpanLabels` serves every `LabelLayer` of a subscriber (a span's
    /// extensions hold one value per type): a second layer adds its
    /// fields to the first's, and each layer's enter and exit apply the
    /// same set, which nests. `inherited` (the parent's set) counts only
    /// when the span has no `SpanLabels` yet: a span gets one if it has
    /// chosen fields or a labelled parent.
    fn add_fields(
        &self,
        extensions: &mut ExtensionsMut<'_>,
        inherited: LabelSetId,
        record: impl FnOnce(&mut dyn Visit),
    ) {
        if let Some(labels) = extensions.get_mut::<SpanLabels>() {
            if self.collect(labels, record) {
                labels.intern();
            }
            return;
        }
        let mut labels = SpanLabels {
            fields: Vec::new(),
            inherited,
            own: LabelSetId::NONE,
            set: LabelSetId::NONE,
            last_merge: AtomicU64::new(NO_MERGE),
            on_stacks: AtomicUsize::new(0),
            entered: Vec::new(),
        };
        if self.collect(&mut labels, record) || labels.inherited != LabelSetId::NONE {
            labels.intern();
            extensions.insert(labels);
        }
    }
}

/// [`SpanLabels::last_merge`] before any merge: no set id is `u32::MAX`
/// (the table holds far fewer).
const NO_MERGE: u64 = u64::MAX;

/// What the layer keeps in a span's extensions.
struct SpanLabels {
    /// The chosen fields' names and values, as last recorded.
    fields: Vec<(&'static str, String)>,
    /// The parent's set when the span got its `SpanLabels`.
    inherited: LabelSetId,
    /// `fields`, interned.
    own: LabelSetId,
    /// `own` over `inherited`: the span's labels.
    set: LabelSetId,
    /// The last set merged for an enter inside another scope, as
    /// `outer << 32 | merged` ([`NO_MERGE`] before the first): a span
    /// re-entered in the same place (a future polled again) merges once.
    /// Reset when `set` changes.
    last_merge: AtomicU64,
    /// Enters of the span on some thread's span stack and not yet taken
    /// off it: more than 0 when the span closes means a thread still has
    /// its labels in force ([`strand`]).
    on_stacks: AtomicUsize,
    /// For each enter past a full span stack not yet exited: the thread
    /// (its state's address) and the set in force there before.
    entered: Vec<(usize, LabelSetId)>,
}

impl SpanLabels {
    fn intern(&mut self) {
        let pairs: Vec<(&str, &str)> = self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let _inside = reentry::Inside::enter();
        self.own = table::merge(LabelSetId::NONE, &pairs, Kind::Program);
        self.set = table::merge(self.inherited, &pairs, Kind::Program);
        self.last_merge.store(NO_MERGE, Release);
    }

    /// [`inside`], remembering the last merge.
    fn in_force_inside(&self, outer: LabelSetId) -> LabelSetId {
        if !needs_merge(outer, self.inherited, self.set) {
            return self.set;
        }
        let last = self.last_merge.load(Acquire);
        let (last_outer, last_merged) = ((last >> 32) as u32, last as u32);
        if last_outer == outer.0 {
            return LabelSetId(last_merged);
        }
        // A second `LabelLayer` enters the span where the first left it.
        if last_merged == outer.0 {
            return outer;
        }
        let merged = inside(outer, self.inherited, self.own, self.set);
        // Release: a thread that reads `merged` here reads its table slot.
        self.last_merge
            .store(u64::from(outer.0) << 32 | u64::from(merged.0), Release);
        merged
    }
}

/// Whether entering a span whose labels are `set` (its `own` over
/// `inherited`) with `outer` in force takes a merge: not when `outer` is
/// nothing, the parent's labels or the span's, where `set` is in force
/// inside.
fn needs_merge(outer: LabelSetId, inherited: LabelSetId, set: LabelSetId) -> bool {
    outer != LabelSetId::NONE && outer != inherited && outer != set
}

/// The set in force inside a span whose labels are `set`, `own` over
/// `inherited`, entered with `outer` in force: the enclosing scopes'
/// labels override the inherited ones (a parent's value recorded since
/// the span was made is the one in force), and the span's own override
/// both.
fn inside(
    outer: LabelSetId,
    inherited: LabelSetId,
    own: LabelSetId,
    set: LabelSetId,
) -> LabelSetId {
    if !needs_merge(outer, inherited, set) {
        return set;
    }
    let _inside = reentry::Inside::enter();
    let enclosing = table::merge_sets(inherited, outer, Kind::Program);
    table::merge_sets(enclosing, own, Kind::Program)
}

struct Collect<'a> {
    wanted: &'a [String],
    found: &'a mut Vec<(&'static str, String)>,
    any: bool,
}

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: String) {
        let name = field.name();
        if !self.wanted.iter().any(|w| w == name) {
            return;
        }
        self.any = true;
        match self.found.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.found.push((name, value)),
        }
    }
}

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// Puts `span` on this thread's span stack. False if the stack is full
/// (the span then restores its `outer` on exit, [`SpanLabels::entered`]).
fn push_span(mut span: StackedSpan) -> bool {
    thread::with(|l| {
        let depth = l.labels.span_depth.get();
        let Some(slot) = l.labels.spans.get(depth) else {
            return false;
        };
        span.scopes = l.labels.scopes_open.get();
        slot.set(span);
        l.labels.span_depth.set(depth + 1);
        true
    })
    .unwrap_or(false)
}

/// Takes span `id`'s innermost entry off this thread's span stack and
/// returns the set now in force: the set before it, with the spans
/// entered after it (if it exits out of order) entered again. `None` if
/// the span is not on the stack.
fn pop_span(id: &Id) -> Option<LabelSetId> {
    let id = id.into_u64();
    thread::with(|l| {
        let spans = &l.labels.spans;
        let depth = l.labels.span_depth.get();
        let i = spans[..depth].iter().rposition(|s| s.get().id == id)?;
        let mut now = spans[i].get().outer;
        for j in i + 1..depth {
            let mut later = spans[j].get();
            later.outer = now;
            later.inside = inside(
                LabelSetId(now),
                LabelSetId(later.inherited),
                LabelSetId(later.own),
                LabelSetId(later.set),
            )
            .0;
            now = later.inside;
            spans[j - 1].set(later);
        }
        l.labels.span_depth.set(depth - 1);
        Some(LabelSetId(now))
    })
    .flatten()
}

/// How many spans closed while on some thread's span stack are remembered
/// ([`strand`]) for those threads to take off ([`settle`]).
const STRANDED_KEPT: usize = 64;

/// Ids of spans closed while still on some thread's span stack: entered
/// on one thread and exited on another (a guard held across an `.await`
/// and dropped on another worker), so the first still has the span's
/// labels in force. A closed span is never entered again, so an entry
/// with its id is stale wherever it is. A ring of [`STRANDED_KEPT`] ids
/// (0: empty; span ids are never 0).
static STRANDED: [AtomicU64; STRANDED_KEPT] = [const { AtomicU64::new(0) }; STRANDED_KEPT];
/// The next place in [`STRANDED`] to fill.
static STRANDED_NEXT: AtomicUsize = AtomicUsize::new(0);
/// How many ids were put in [`STRANDED`]; raised after each is stored, so
/// a thread that reads a new count (Acquire) finds the id.
static STRANDED_COUNT: AtomicU64 = AtomicU64::new(0);

/// Tells every thread that span `id`, closed, is to come off its stack.
fn strand(id: &Id) {
    let at = STRANDED_NEXT.fetch_add(1, Relaxed) % STRANDED_KEPT;
    STRANDED[at].store(id.into_u64(), Release);
    STRANDED_COUNT.fetch_add(1, Release);
}

fn is_stranded(id: u64) -> bool {
    STRANDED.iter().any(|slot| slot.load(Acquire) == id)
}

/// Takes closed spans ([`strand`]) off the top of this thread's span
/// stack and puts back the set in force before each. Only while no scope
/// entered after such a span is still open (`scopes_open` as when it was
/// entered): otherwise at a later call, once those scopes have ended.
/// Cheap when no span was stranded since this thread last had none: one
/// load and a compare. Called where the thread reads its labels (entering
/// a scope, taking a sample); takes no lock and allocates nothing.
pub(crate) fn settle() {
    let count = STRANDED_COUNT.load(Acquire);
    thread::with(|l| {
        let labels = &l.labels;
        if labels.stranded_seen.get() == count {
            return;
        }
        let mut depth = labels.span_depth.get();
        while let Some(top) = depth.checked_sub(1) {
            let span = labels.spans[top].get();
            if !is_stranded(span.id) || labels.scopes_open.get() != span.scopes {
                break;
            }
            labels.current.set(span.outer);
            depth = top;
        }
        labels.span_depth.set(depth);
        let waiting = labels.spans[..depth]
            .iter()
            .any(|span| is_stranded(span.get().id));
        if !waiting {
            labels.stranded_seen.set(count);
        }
    });
}

/// The labels of `span`'s parent (which the registry has resolved:
/// explicit, contextual or none), read before the span's own extensions
/// are locked.
fn parent_set<'a, S: LookupSpan<'a>>(span: &SpanRef<'a, S>) -> LabelSetId {
    span.parent().map_or(LabelSetId::NONE, |parent| {
        parent
            .extensions()
            .get::<SpanLabels>()
            .map_or(LabelSetId::NONE, |labels| labels.set)
    })
}

/// This thread's key in [`SpanLabels::entered`].
fn thread_key() -> usize {
    thread::with(|l| std::ptr::from_ref(l) as usize).unwrap_or(0)
}

impl<S> Layer<S> for LabelLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let inherited = parent_set(&span);
            self.add_fields(&mut span.extensions_mut(), inherited, |v| attrs.record(v));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let inherited = parent_set(&span);
            self.add_fields(&mut span.extensions_mut(), inherited, |v| values.record(v));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let outer = super::current();
        // Read under the shared lock: an enter writes the extensions only
        // when this thread's span stack is full.
        let (inside, stacked) = {
            let extensions = span.extensions();
            let Some(labels) = extensions.get::<SpanLabels>() else {
                return;
            };
            let inside = labels.in_force_inside(outer);
            let stacked = push_span(StackedSpan {
                id: id.into_u64(),
                inherited: labels.inherited.0,
                own: labels.own.0,
                set: labels.set.0,
                outer: outer.0,
                inside: inside.0,
                scopes: 0,
            });
            if stacked {
                labels.on_stacks.fetch_add(1, Relaxed);
            }
            (inside, stacked)
        };
        if !stacked && let Some(labels) = span.extensions_mut().get_mut::<SpanLabels>() {
            labels.entered.push((thread_key(), outer));
            super::scope_opened();
        }
        super::set_current(inside);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(now) = pop_span(id) {
            super::set_current(now);
            if let Some(span) = ctx.span(id)
                && let Some(labels) = span.extensions().get::<SpanLabels>()
            {
                labels.on_stacks.fetch_sub(1, Relaxed);
            }
            return;
        }
        // Not on this thread's stack: entered past a full stack, or on
        // another thread (which keeps it until the span closes).
        let Some(span) = ctx.span(id) else {
            return;
        };
        let overflowed = span
            .extensions()
            .get::<SpanLabels>()
            .is_some_and(|labels| !labels.entered.is_empty());
        let key = thread_key();
        if overflowed
            && let Some(labels) = span.extensions_mut().get_mut::<SpanLabels>()
            && let Some(i) = labels.entered.iter().rposition(|&(k, _)| k == key)
        {
            let (_, outer) = labels.entered.remove(i);
            super::set_current(outer);
            super::scope_closed();
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let left_on_a_stack = ctx.span(&id).is_some_and(|span| {
            span.extensions()
                .get::<SpanLabels>()
                .is_some_and(|labels| labels.on_stacks.swap(0, Relaxed) > 0)
        });
        if left_on_a_stack {
            strand(&id);
        }
    }
}
