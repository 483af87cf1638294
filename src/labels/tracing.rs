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
use tracing_subscriber::registry::{ExtensionsMut, LookupSpan};

use super::LabelSetId;
use super::table::{self, Kind};
use crate::support::reentry;
use crate::thread;

/// A [`Layer`] that turns chosen span fields into heap-profile labels
/// while the span is entered: every allocation sampled on a thread inside
/// an entered span with a field `tenant` carries the label
/// `tenant=<value>`, exactly as inside [`with_labels`](crate::with_labels).
/// An instrumented future enters its span on each poll, so its labels
/// follow it from thread to thread.
///
/// Spans nest as scopes do: an inner span adds its fields to the outer
/// one's and overrides the same keys. A field's value is its `Display`
/// for strings and its `Debug` otherwise; a value recorded later
/// (`span.record("tenant", …)`) takes effect at the next enter. Label
/// limits as for [`with_labels`](crate::with_labels).
///
/// Needs a subscriber that stores span data ([`LookupSpan`]), as
/// `tracing_subscriber::registry()` does. Several `LabelLayer`s in one
/// subscriber each add their fields to the span's labels.
///
/// Spans and [`with_labels`](crate::with_labels) scopes must nest, and a
/// span is exited on the thread that entered it (tracing's guards see to
/// both unless moved): each puts back, when it ends, the labels that were
/// in force when it began, so an `EnteredSpan` moved out of a
/// `with_labels` closure and dropped after it (or a `with_labels` that
/// ends inside a span entered before it) leaves the wrong labels in force.
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
    /// same set, which nests.
    fn add_fields(&self, extensions: &mut ExtensionsMut<'_>, record: impl FnOnce(&mut dyn Visit)) {
        if let Some(labels) = extensions.get_mut::<SpanLabels>() {
            if self.collect(labels, record) {
                labels.intern();
            }
            return;
        }
        let mut labels = SpanLabels {
            fields: Vec::new(),
            set: LabelSetId::NONE,
            entered: Vec::new(),
        };
        if self.collect(&mut labels, record) {
            labels.intern();
            extensions.insert(labels);
        }
    }
}

/// What the layer keeps in a span's extensions.
struct SpanLabels {
    /// The chosen fields' names and values, as last recorded.
    fields: Vec<(&'static str, String)>,
    /// Their interned set.
    set: LabelSetId,
    /// For each enter not yet exited: the thread (its state's address)
    /// and the set in force there before.
    entered: Vec<(usize, LabelSetId)>,
}

impl SpanLabels {
    fn intern(&mut self) {
        let pairs: Vec<(&str, &str)> = self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let _inside = reentry::Inside::enter();
        self.set = table::merge(LabelSetId::NONE, &pairs, Kind::Program);
    }
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

/// Records on this thread's span stack that span `id`, whose own set is
/// `set`, was entered with `outer` in force. False if the stack is full
/// (the span then restores `outer` on exit, [`SpanLabels::entered`]).
fn push_span(id: &Id, set: LabelSetId, outer: LabelSetId) -> bool {
    thread::with(|l| {
        let depth = l.labels.span_depth.get();
        let Some(slot) = l.labels.spans.get(depth) else {
            return false;
        };
        slot.set((id.into_u64(), set.0, outer.0));
        l.labels.span_depth.set(depth + 1);
        true
    })
    .unwrap_or(false)
}

/// Takes span `id`'s innermost entry off this thread's span stack and
/// returns the set now in force: the set before it, with the spans
/// entered after it (if it exits out of order) merged on again. `None` if
/// the span is not on the stack.
fn pop_span(id: &Id) -> Option<LabelSetId> {
    let id = id.into_u64();
    thread::with(|l| {
        let spans = &l.labels.spans;
        let depth = l.labels.span_depth.get();
        let i = spans[..depth].iter().rposition(|s| s.get().0 == id)?;
        let mut now = LabelSetId(spans[i].get().2);
        let _inside = reentry::Inside::enter();
        for j in i + 1..depth {
            let (later, set, _) = spans[j].get();
            spans[j - 1].set((later, set, now.0));
            now = table::merge_sets(now, LabelSetId(set), Kind::Program);
        }
        l.labels.span_depth.set(depth - 1);
        Some(now)
    })
    .flatten()
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
            self.add_fields(&mut span.extensions_mut(), |v| attrs.record(v));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            self.add_fields(&mut span.extensions_mut(), |v| values.record(v));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(labels) = extensions.get_mut::<SpanLabels>() else {
            return;
        };
        let outer = super::current();
        let merged = {
            let _inside = reentry::Inside::enter();
            table::merge_sets(outer, labels.set, Kind::Program)
        };
        if !push_span(id, labels.set, outer) {
            labels.entered.push((thread_key(), outer));
        }
        super::set_current(merged);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(labels) = extensions.get_mut::<SpanLabels>() else {
            return;
        };
        if let Some(now) = pop_span(id) {
            super::set_current(now);
            return;
        }
        let key = thread_key();
        if let Some(i) = labels.entered.iter().rposition(|&(k, _)| k == key) {
            let (_, outer) = labels.entered.remove(i);
            super::set_current(outer);
        }
    }
}
