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

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, AtomicUsize};

use super::LabelSetId;
use super::table::{self, Kind};
use crate::support::reentry;
use crate::thread;
use crate::thread::labels::{LabelState, SPANS_KEPT, StackedSpan};

/// A [`Layer`] that turns chosen span fields into heap-profile labels
/// while the span is entered: every allocation sampled on a thread inside
/// an entered span with a field `tenant` carries the label
/// `tenant=<value>`, exactly as inside [`with_labels`](crate::with_labels).
/// An instrumented future enters its span on each poll, so its labels
/// follow it from thread to thread.
///
/// A span carries its parent's labels, as they are when it gets labels of
/// its own or is made, with its own chosen fields over them: a span made
/// inside a request span carries the request's labels wherever it is
/// entered, as a task spawned with `.instrument(span)` is. Entered inside
/// other scopes ([`with_labels`](crate::with_labels), a
/// [`Labeled`](crate::Labeled) poll, other spans), their labels override
/// the ones it inherited, and its own fields override both: so a child
/// entered inside its parent has the parent's latest values. A field's
/// value is its `Display` for strings and its `Debug` otherwise; a value
/// recorded later (`span.record("tenant", …)`) takes effect at the span's
/// next enter. An empty value takes the key out, as in
/// [`with_labels`](crate::with_labels). Label limits as for
/// [`with_labels`](crate::with_labels).
///
/// Needs a subscriber that stores span data ([`LookupSpan`]), as
/// `tracing_subscriber::registry()` does. Several `LabelLayer`s in one
/// subscriber each add their fields to the span's labels.
///
/// A span's enter and exit are meant to nest with the other scopes of its
/// thread ([`with_labels`](crate::with_labels), [`Labeled`](crate::Labeled)
/// polls), as tracing's guards do unless moved or held across an
/// `.await`. A span exited inside another scope than the one it was
/// entered in (a guard moved out of a `with_labels` closure, or held
/// across an `.await` and dropped in a later poll) leaves the labels of
/// the scope open at its exit alone, and comes off once the thread is
/// back in the scope it was entered in: the scope's labels, the span's
/// included, stay in force until then. A span exited on another thread
/// (the task resumed on another worker) keeps its labels in force on the
/// first thread until the span closes (its last handle is dropped), and
/// then until that thread next takes a sample or enters a scope, back in
/// the scope it entered the span in. The latest 64 spans closed that way,
/// across all threads, are looked for there; a thread that may have
/// missed one (more closed since it last looked) asks the subscriber
/// which of its spans are still open at its next enter or exit of a span
/// of this layer's, so under load a closed span's labels can last until
/// then. Enter spans in async code with `.instrument(span)`, whose enters
/// and exits stay on one thread each poll. A thread keeps the labelled
/// spans it has entered on a small stack; a span entered deeper than it
/// holds changes no labels, and the first such span that would have is
/// said once on stderr (a span that adds no label of its own still takes
/// a place on the stack, but its enter past it is not worth a line). A span
/// whose guard is dropped on another worker keeps its entry on the first
/// one's stack until it closes; a full stack makes room by dropping the
/// entries of scopes that have ended (a [`Labeled`](crate::Labeled) poll's, a
/// [`with_labels`](crate::with_labels) closure's), so only spans of
/// scopes still open crowd out new ones.
///
/// Only the chosen fields are formatted, as the span is made or a value
/// recorded. What a value's `Debug` allocates is the program's, counted
/// and profiled as such; the layer's copy of the text, and what it keeps
/// of a span until the span closes, are heapprof's memory, which
/// [`measure`](crate::measure) and [`stats`](crate::stats) leave out.
///
/// A span keeps its own fields as a set of the label table besides the
/// set it puts in force (the same set where it has no labelled parent):
/// a span under a labelled parent takes one more place of the table's
/// bound for each distinct set of fields.
///
/// The layer reads span extensions as spans are made (the parent's),
/// recorded, entered and exited (the entered span's, and, when the thread
/// asks, those of the spans on its stack). Code that holds a span's
/// `extensions_mut()` while it makes, enters or exits another span on the
/// same thread waits for itself.
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

    /// Names this layer on the span stacks ([`StackedSpan::layer`]): its
    /// address, fixed once the subscriber holding it is installed.
    fn address(&self) -> usize {
        std::ptr::from_ref(self).addr()
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
            serial: SPAN_SERIALS.fetch_add(1, Relaxed),
            fields: Vec::new(),
            inherited,
            own: LabelSetId::NONE,
            set: LabelSetId::NONE,
            last_merge: AtomicU64::new(NO_MERGE),
            on_stacks: AtomicUsize::new(0),
        };
        if self.collect(&mut labels, record) || labels.inherited != LabelSetId::NONE {
            labels.intern();
            // Its box, freed inside the profiler by `on_close`. The first
            // insert into a span slot of the registry also makes the
            // slot's table of extensions, which the registry keeps for
            // later spans and frees, outside, only when it is dropped
            // (or when another layer's extensions outgrow it): once per
            // slot, heapprof's block freed as the program's.
            let _inside = reentry::Inside::enter();
            extensions.insert(labels);
        }
    }
}

/// The next [`SpanLabels::serial`]; 0 is no span's.
static SPAN_SERIALS: AtomicU64 = AtomicU64::new(1);

/// [`SpanLabels::last_merge`] before any merge: no set id is `u32::MAX`
/// (the table holds far fewer).
const NO_MERGE: u64 = u64::MAX;

/// What the layer keeps in a span's extensions.
struct SpanLabels {
    /// Names the span on thread stacks and in [`STRANDED`]: unlike its
    /// `tracing` id, never reused.
    serial: u64,
    /// The chosen fields' names and values, as last recorded.
    fields: Vec<(&'static str, String)>,
    /// The parent's set when the span got its `SpanLabels`.
    inherited: LabelSetId,
    /// `fields`, interned (an empty value, which takes its key out of the
    /// labels around it, is not in it).
    own: LabelSetId,
    /// `fields` over `inherited`: the span's labels.
    set: LabelSetId,
    /// The last set merged for an enter inside other scopes, as
    /// `outer << 32 | merged` ([`NO_MERGE`] before the first): a span
    /// re-entered in the same place (a future polled again) merges once.
    /// Reset when `set` changes.
    last_merge: AtomicU64,
    /// Enters of the span on some thread's span stack (or its list of
    /// enters past the stack) and not yet taken off: more than 0 when the
    /// span closes means a thread still has it ([`strand`]).
    on_stacks: AtomicUsize,
}

impl SpanLabels {
    fn intern(&mut self) {
        let _inside = reentry::Inside::enter();
        let pairs = pairs(&self.fields);
        let (own, set) = (
            table::merge(LabelSetId::NONE, &pairs, Kind::Program),
            table::merge(self.inherited, &pairs, Kind::Program),
        );
        drop(pairs);
        (self.own, self.set) = (own, set);
        self.last_merge.store(NO_MERGE, Release);
    }

    /// The set in force inside the span when `outer` is in force outside
    /// it: `fields` over `outer` over `inherited`. Without the table's lock
    /// where `outer` is nothing, the parent's labels or the span's, and
    /// where it is the last merge's.
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
        let merged = {
            let _inside = reentry::Inside::enter();
            table::merge_layers(self.inherited, outer, &pairs(&self.fields), Kind::Program)
        };
        // Release: a thread that reads `merged` here reads its table slot.
        self.last_merge
            .store(u64::from(outer.0) << 32 | u64::from(merged.0), Release);
        merged
    }
}

/// A span's fields as `with_labels` takes them.
fn pairs<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Whether entering a span whose labels are `set` (its own over
/// `inherited`) with `outer` in force takes a merge: not when `outer` is
/// nothing, the parent's labels or the span's, where `set` is in force
/// inside.
fn needs_merge(outer: LabelSetId, inherited: LabelSetId, set: LabelSetId) -> bool {
    outer != LabelSetId::NONE && outer != inherited && outer != set
}

/// Copies the chosen fields' values into a span's labels. The values'
/// `Debug` is the program's code and runs outside the profiler, so what
/// it allocates is the program's; the copies are heapprof's memory, made
/// inside it ([`OwnCopy`]).
struct Collect<'a> {
    wanted: &'a [String],
    found: &'a mut Vec<(&'static str, String)>,
    any: bool,
}

impl Collect<'_> {
    /// The copy of `field`'s value, emptied for a new one, if the layer
    /// labels with it; `None` (and the value is never formatted) if not.
    fn slot(&mut self, field: &Field) -> Option<OwnCopy<'_>> {
        let name = field.name();
        if !self.wanted.iter().any(|w| w == name) {
            return None;
        }
        self.any = true;
        let i = match self.found.iter().position(|(k, _)| *k == name) {
            Some(i) => i,
            None => {
                let _inside = reentry::Inside::enter();
                self.found.push((name, String::new()));
                self.found.len() - 1
            }
        };
        let copy = &mut self.found[i].1;
        copy.clear();
        Some(OwnCopy(copy))
    }
}

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(mut copy) = self.slot(field) {
            let _ = copy.write_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Some(mut copy) = self.slot(field) {
            // A `Debug` that fails leaves what it wrote.
            let _ = write!(copy, "{value:?}");
        }
    }
}

/// A span's copy of a field's value, written inside the profiler. It
/// keeps no more than the label table's cut needs to tell the value is
/// too long ([`table::MAX_LABEL_BYTES`] and the rest of a character): a
/// span whose field formats to megabytes holds a few hundred bytes.
struct OwnCopy<'a>(&'a mut String);

impl std::fmt::Write for OwnCopy<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let Some(room) = (table::MAX_LABEL_BYTES + 1).checked_sub(self.0.len()) else {
            // Enough kept: an error ends the formatting of the rest, which
            // the callers ignore.
            return Err(std::fmt::Error);
        };
        let mut end = room.min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        let _inside = reentry::Inside::enter();
        self.0.push_str(&s[..end]);
        Ok(())
    }
}

/// Puts `span` on this thread's span stack, inside the thread's innermost
/// scope; an enter of the span on top of the stack where it left the
/// labels (a second `LabelLayer`, or the span inside itself) counts on
/// that entry. False if the stack is full.
fn push_span(mut span: StackedSpan) -> bool {
    thread::with(|l| {
        let labels = &l.labels;
        let depth = labels.span_depth.get();
        let innermost = labels.innermost_scope.get();
        if let Some(top) = depth.checked_sub(1).map(|top| &labels.spans[top]) {
            let mut entry = top.get();
            if entry.serial == span.serial
                && !entry.exited
                && entry.scope == innermost
                && entry.inside == span.outer
                && span.inside == span.outer
            {
                entry.repeats = entry.repeats.saturating_add(1);
                top.set(entry);
                return true;
            }
        }
        let depth = if depth < SPANS_KEPT {
            depth
        } else if let Some(ended) = labels
            .spans
            .iter()
            .position(|s| !labels.may_be_open(s.get().scope))
        {
            // A full stack makes room by dropping an entry of a scope that
            // has ended: it changes no labels (the scope's end put its set
            // back), and the span's exit or close, if it comes here, finds
            // nothing to do.
            if labels.spans[ended].get().exited {
                let waiting = &labels.exits_waiting;
                waiting.set(waiting.get().saturating_sub(1));
            }
            for j in ended + 1..SPANS_KEPT {
                labels.spans[j - 1].set(labels.spans[j].get());
            }
            SPANS_KEPT - 1
        } else {
            return false;
        };
        span.scope = innermost;
        labels.spans[depth].set(span);
        labels.span_depth.set(depth + 1);
        true
    })
    .unwrap_or(false)
}

/// Notes that the span `serial` (tracing id `id`, entered by the layer at
/// `layer`) was entered past this thread's full span stack; false if the
/// list of those is full too (then its exit may take an earlier enter of
/// the same span off the stack).
fn note_past_stack(serial: u64, id: u64, layer: usize) -> bool {
    thread::with(|l| {
        let len = l.labels.past_stack_len.get();
        let Some(slot) = l.labels.past_stack.get(len) else {
            return false;
        };
        slot.set((serial, id, layer));
        l.labels.past_stack_len.set(len + 1);
        true
    })
    .unwrap_or(false)
}

/// Takes the innermost enter of the span `serial` past the full stack off
/// this thread's list of them; false if there is none.
fn take_past_stack(serial: u64) -> bool {
    thread::with(|l| {
        let list = &l.labels.past_stack;
        let len = l.labels.past_stack_len.get();
        let Some(i) = list[..len].iter().rposition(|s| s.get().0 == serial) else {
            return false;
        };
        for j in i + 1..len {
            list[j - 1].set(list[j].get());
        }
        l.labels.past_stack_len.set(len - 1);
        true
    })
    .unwrap_or(false)
}

/// Says, once per process, that a span entered past a full stack would
/// have changed the labels: the program nests its labelled spans deeper
/// than heapprof follows, and samples there carry the outer spans' labels.
fn say_labels_left_out() {
    static SAID: crate::config::report::Once = crate::config::report::Once::new();
    SAID.warn(format_args!(
        "heapprof: tracing: more than {SPANS_KEPT} labelled spans in force on one thread; the labels of spans entered past them are left out"
    ));
}

/// What an exit did to this thread's labels ([`exit_span`]).
enum Exit {
    /// The span is not on this thread's stack.
    NotHere,
    /// The set in force stays.
    Kept,
    /// This set is in force now.
    Now(LabelSetId),
}

/// Exits the innermost entry of the span `serial` on this thread's span
/// stack. Entered in the thread's innermost scope, it comes off and the
/// set before it is in force again, with the live spans the scope entered
/// after it (if it exits out of order) entered again (with their interned
/// own labels: an empty value among them takes no key out here). Entered
/// in another scope (a guard held across an `.await` and dropped in a
/// later poll, or moved out of a `with_labels`), the set in force belongs
/// to the scope open now: the entry is marked exited, and [`settle`]
/// takes it off once the thread is back in its scope or past it.
fn exit_span(serial: u64) -> Exit {
    thread::with(|l| {
        let labels = &l.labels;
        let spans = &labels.spans;
        let depth = labels.span_depth.get();
        let innermost = labels.innermost_scope.get();
        let live = |s: &std::cell::Cell<StackedSpan>| {
            let s = s.get();
            s.serial == serial && !s.exited
        };
        // The span may be entered in several scopes (at top level and in a
        // pending task): the exit is the innermost scope's, if it has one.
        let Some(i) = spans[..depth]
            .iter()
            .rposition(|s| live(s) && s.get().scope == innermost)
            .or_else(|| spans[..depth].iter().rposition(live))
        else {
            return Exit::NotHere;
        };
        let mut entry = spans[i].get();
        if entry.repeats > 0 {
            entry.repeats -= 1;
            spans[i].set(entry);
            return Exit::Kept;
        }
        if entry.scope != innermost {
            entry.exited = true;
            spans[i].set(entry);
            labels
                .exits_waiting
                .set(labels.exits_waiting.get().saturating_add(1));
            return Exit::Kept;
        }
        // The spans above it: this scope's live ones are entered again over
        // the set before it; its exited ones are due now and go; those of
        // ended scopes change nothing and stay.
        let mut now = LabelSetId(entry.outer);
        let mut kept = i;
        for j in i + 1..depth {
            let mut later = spans[j].get();
            if later.scope == innermost {
                if later.exited {
                    let waiting = &labels.exits_waiting;
                    waiting.set(waiting.get().saturating_sub(1));
                    continue;
                }
                later.outer = now.0;
                now = inside_stacked(now, &later);
                later.inside = now.0;
            }
            spans[kept].set(later);
            kept += 1;
        }
        labels.span_depth.set(kept);
        Exit::Now(now)
    })
    .unwrap_or(Exit::NotHere)
}

/// The set in force inside a stacked span entered with `outer` in force.
fn inside_stacked(outer: LabelSetId, span: &StackedSpan) -> LabelSetId {
    let (inherited, set) = (LabelSetId(span.inherited), LabelSetId(span.set));
    if !needs_merge(outer, inherited, set) {
        return set;
    }
    let _inside = reentry::Inside::enter();
    let own = table::get(LabelSetId(span.own));
    table::merge_layers(inherited, outer, own, Kind::Program)
}

/// How many spans closed while on some thread's span stack are remembered
/// ([`strand`]) for those threads to take off ([`settle`]); a thread that
/// may have missed one asks the subscriber ([`forget_closed`]).
/// `LabelLayer`'s docs give the number.
const STRANDED_KEPT: usize = 64;

/// Serials of spans closed while still on some thread's span stack:
/// entered on one thread and exited on another (a guard held across an
/// `.await` and dropped on another worker), so the first still has the
/// span's labels in force. A closed span is never entered again, so an
/// entry with its serial is stale wherever it is. A ring of
/// [`STRANDED_KEPT`] serials (0: empty).
static STRANDED: [AtomicU64; STRANDED_KEPT] = [const { AtomicU64::new(0) }; STRANDED_KEPT];
/// The next place in [`STRANDED`] to fill.
static STRANDED_NEXT: AtomicUsize = AtomicUsize::new(0);
/// How many serials were put in [`STRANDED`]; raised after each is
/// stored, so a thread that reads a new count (Acquire) finds the serial.
static STRANDED_COUNT: AtomicU64 = AtomicU64::new(0);

/// Tells every thread that the span `serial`, closed, is to come off its
/// stack.
fn strand(serial: u64) {
    let at = STRANDED_NEXT.fetch_add(1, Relaxed) % STRANDED_KEPT;
    STRANDED[at].store(serial, Release);
    STRANDED_COUNT.fetch_add(1, Release);
}

fn is_stranded(serial: u64) -> bool {
    STRANDED.iter().any(|slot| slot.load(Acquire) == serial)
}

/// Takes spans that are done (closed while still here, [`strand`], or
/// exited in another scope, [`exit_span`]) off this thread's span stack.
/// One entered in the thread's innermost scope comes off once no live
/// span of that scope is above it, putting back the set in force before
/// it; one entered in a scope that has ended just goes (the scope's end
/// put its set back). One entered in a scope still open outside the
/// innermost waits for the innermost to end. Cheap when no span was
/// stranded since this thread last had none and no exit waits: a load
/// and two compares. Called where the thread reads its labels (entering
/// a scope, taking a sample); takes no lock and allocates nothing.
pub(crate) fn settle() {
    let count = STRANDED_COUNT.load(Acquire);
    thread::with(|l| {
        let labels = &l.labels;
        if labels.stranded_seen.get() == count && labels.exits_waiting.get() == 0 {
            return;
        }
        if may_have_missed(labels, stranded_given())
            && (labels.span_depth.get() > 0 || labels.past_stack_len.get() > 0)
        {
            labels.must_ask.set(true);
        }
        // From the top down to the first entry of a scope still open
        // outside the innermost: entries of ended scopes change nothing
        // (their scope's end put its set back), so the done ones go and the
        // live ones stay; the innermost scope's done ones go while on top
        // of its live ones, putting back the set before each.
        let innermost = labels.innermost_scope.get();
        let mut depth = labels.span_depth.get();
        let mut at = depth;
        while let Some(below) = at.checked_sub(1) {
            let span = labels.spans[below].get();
            // Scopes nest and their serials grow: one opened before the
            // innermost and still open would be inside it.
            if span.scope < innermost {
                break;
            }
            at = below;
            let done = span.exited || is_stranded(span.serial);
            if !done {
                if span.scope == innermost {
                    break;
                }
                continue;
            }
            if span.scope == innermost {
                labels.current.set(span.outer);
            }
            if span.exited {
                let waiting = &labels.exits_waiting;
                waiting.set(waiting.get().saturating_sub(1));
            }
            for j in below + 1..depth {
                labels.spans[j - 1].set(labels.spans[j].get());
            }
            depth -= 1;
        }
        labels.span_depth.set(depth);
        // Enters past the full stack changed no labels: a closed span's
        // just go.
        let mut kept = 0;
        for i in 0..labels.past_stack_len.get() {
            let entry = labels.past_stack[i].get();
            if !is_stranded(entry.0) {
                labels.past_stack[kept].set(entry);
                kept += 1;
            }
        }
        labels.past_stack_len.set(kept);
        let waiting = labels.spans[..depth]
            .iter()
            .any(|span| is_stranded(span.get().serial));
        if !waiting {
            labels.stranded_seen.set(count);
        }
    });
}

/// Takes spans that closed unnoticed off this thread's stack: when more
/// spans were stranded since the thread last had none of them or last
/// asked than [`STRANDED`] keeps ([`may_have_missed`], noted by [`settle`]
/// in [`LabelState::must_ask`]), it may have missed its own, so it asks
/// the subscriber which of its stacked spans are still open and marks the
/// others exited for [`settle`]. Called from the layer's enter and exit,
/// before it reads any span's extensions (it reads those of the spans it
/// asks about), never in the allocator. Only the spans `layer` entered
/// are asked about: another layer's filter, or another subscriber, may
/// hide a span from this one; those stay for their own layer to ask.
fn forget_closed<S>(ctx: &Context<'_, S>, layer: usize)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    const MOST: usize = 2 * SPANS_KEPT;
    let given = stranded_given();
    let asking = thread::with(|l| {
        let labels = &l.labels;
        if !labels.must_ask.get() && !may_have_missed(labels, given) {
            return None;
        }
        let stacked = labels.spans[..labels.span_depth.get()]
            .iter()
            .map(Cell::get)
            .filter(|s| !s.exited)
            .map(|s| (s.serial, s.id, s.layer));
        let past = labels.past_stack[..labels.past_stack_len.get()]
            .iter()
            .map(Cell::get);
        let mut entries = [(0, 0); MOST];
        let (mut len, mut others) = (0, false);
        for (serial, id, by) in stacked.chain(past) {
            if by != layer {
                others = true;
            } else if let Some(slot) = entries.get_mut(len) {
                *slot = (serial, id);
                len += 1;
            }
        }
        labels.must_ask.set(others);
        labels.asked_at.set(given);
        Some((entries, len))
    })
    .flatten();
    let Some((mut entries, len)) = asking else {
        return;
    };
    let mut closed = 0;
    for i in 0..len {
        let (serial, id) = entries[i];
        if !is_open(ctx, serial, id) {
            entries[closed] = (serial, id);
            closed += 1;
        }
    }
    if closed == 0 {
        return;
    }
    thread::with(|l| {
        let labels = &l.labels;
        for &(serial, _) in &entries[..closed] {
            for entry in &labels.spans[..labels.span_depth.get()] {
                let mut span = entry.get();
                if span.serial == serial && !span.exited {
                    span.exited = true;
                    entry.set(span);
                    let waiting = &labels.exits_waiting;
                    waiting.set(waiting.get().saturating_add(1));
                }
            }
            let mut kept = 0;
            for i in 0..labels.past_stack_len.get() {
                let entry = labels.past_stack[i].get();
                if entry.0 != serial {
                    labels.past_stack[kept].set(entry);
                    kept += 1;
                }
            }
            labels.past_stack_len.set(kept);
        }
    });
    settle();
}

/// Whether more spans were stranded since this thread last had none of
/// them or asked the subscriber than [`STRANDED`] keeps, `given` places
/// in it given out so far ([`stranded_given`]).
fn may_have_missed(labels: &LabelState, given: u64) -> bool {
    let looked = labels.stranded_seen.get().max(labels.asked_at.get());
    given.saturating_sub(looked) > STRANDED_KEPT as u64
}

/// How many places in [`STRANDED`] were given out: at least
/// [`STRANDED_COUNT`], and more while a [`strand`] is under way, whose
/// place may already hold its serial over an older one.
fn stranded_given() -> u64 {
    STRANDED_NEXT.load(Acquire) as u64
}

/// Whether the span with tracing id `id` is still the one with `serial`:
/// a closed span's id is unknown to the subscriber or names another span.
fn is_open<S>(ctx: &Context<'_, S>, serial: u64, id: u64) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(id) = std::num::NonZeroU64::new(id).map(Id::from_non_zero_u64) else {
        return false;
    };
    ctx.span(&id).is_some_and(|span| {
        span.extensions()
            .get::<SpanLabels>()
            .is_some_and(|labels| labels.serial == serial)
    })
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
        forget_closed(&ctx, self.address());
        let Some(span) = ctx.span(id) else {
            return;
        };
        let outer = super::current();
        let extensions = span.extensions();
        let Some(labels) = extensions.get::<SpanLabels>() else {
            return;
        };
        let inside = labels.in_force_inside(outer);
        let stacked = push_span(StackedSpan {
            serial: labels.serial,
            id: id.into_u64(),
            layer: self.address(),
            scope: 0,
            repeats: 0,
            exited: false,
            inherited: labels.inherited.0,
            own: labels.own.0,
            set: labels.set.0,
            outer: outer.0,
            inside: inside.0,
        });
        if stacked {
            labels.on_stacks.fetch_add(1, Relaxed);
            super::set_current(inside);
            return;
        }
        if inside != outer {
            say_labels_left_out();
        }
        if note_past_stack(labels.serial, id.into_u64(), self.address()) {
            labels.on_stacks.fetch_add(1, Relaxed);
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        forget_closed(&ctx, self.address());
        let Some(span) = ctx.span(id) else {
            return;
        };
        let extensions = span.extensions();
        let Some(labels) = extensions.get::<SpanLabels>() else {
            return;
        };
        // An enter past the full stack is the innermost (exits come in the
        // order of the enters), and changed nothing. Not on the stack
        // either: entered on another thread, which keeps it until the span
        // closes.
        if take_past_stack(labels.serial) {
            labels.on_stacks.fetch_sub(1, Relaxed);
            return;
        }
        match exit_span(labels.serial) {
            Exit::NotHere => {}
            Exit::Kept => {
                labels.on_stacks.fetch_sub(1, Relaxed);
            }
            Exit::Now(now) => {
                labels.on_stacks.fetch_sub(1, Relaxed);
                super::set_current(now);
            }
        }
    }

    /// Frees the span's labels, inside the profiler (the registry would
    /// free them outside it, as the program's frees). The first
    /// `LabelLayer` to see the close takes them; a second finds none.
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let _inside = reentry::Inside::enter();
        let Some(labels) = span.extensions_mut().remove::<SpanLabels>() else {
            return;
        };
        if labels.on_stacks.swap(0, Relaxed) > 0 {
            strand(labels.serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// `LabelLayer`'s docs give the number of closed spans looked for.
    #[test]
    fn the_layer_docs_give_how_many_closed_spans_are_looked_for() {
        let docs: String = include_str!("tracing.rs")
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("///"))
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<&str> = docs.split_whitespace().collect();
        let said = format!("The latest {STRANDED_KEPT} spans closed that way");
        assert!(words.join(" ").contains(&said), "{said}");
    }

    /// Spans exited where they were entered put nothing in the ring of
    /// stranded spans, however many close; one entered on another thread
    /// and closed puts itself there.
    #[test]
    fn only_spans_left_on_a_stack_are_stranded() {
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry().with(LabelLayer::new(["tenant"])),
        );
        let before = STRANDED_COUNT.load(Acquire);
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..(4 * STRANDED_KEPT) {
                let span = tracing::info_span!("request", tenant = i);
                span.in_scope(|| span.in_scope(|| ()));
            }
        });
        assert_eq!(STRANDED_COUNT.load(Acquire), before);
        let span = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("moved", tenant = "elsewhere")
        });
        let id = span.id().unwrap();
        let entering = (dispatch.clone(), id.clone());
        std::thread::spawn(move || entering.0.enter(&entering.1))
            .join()
            .unwrap();
        dispatch.exit(&id);
        drop(span);
        assert_eq!(STRANDED_COUNT.load(Acquire), before + 1);
    }
}
