//! A thread's label sets, as plain ids into the label-set table
//! (`labels/`): which set the program's scopes put in force, and what the
//! sampled path derived from it.

use std::cell::Cell;

/// Not read yet: the value of [`LabelState::thread_set`] and of
/// [`LabelState::with_thread`]'s result before the sampled path fills
/// them in.
pub(crate) const UNKNOWN: u32 = u32::MAX;

/// How many scopes a thread remembers entering ([`LabelState::scopes`]).
pub(crate) const SCOPES_KEPT: usize = 4;

/// How many labelled `tracing` spans a thread tracks while entered
/// ([`LabelState::spans`]); a span entered deeper changes no labels, and
/// as many of those are remembered so that their exits change none.
#[cfg(feature = "tracing")]
pub(crate) const SPANS_KEPT: usize = 16;

/// How many nested scopes' serials a thread keeps
/// ([`LabelState::open_scopes`]); deeper ones are open too, but unnamed.
#[cfg(feature = "tracing")]
pub(crate) const OPEN_SCOPES_KEPT: usize = 16;

/// A thread's label-set ids (`labels::LabelSetId`; 0 is the empty set).
pub(crate) struct LabelState {
    /// The set in force: the merge of every scope the thread is in
    /// (`labels::with_labels`, a `Labeled` future being polled, an entered
    /// span). Set on entering a scope, restored on leaving it.
    pub(crate) current: Cell<u32>,
    /// The set holding only this thread's `thread` label, read at the
    /// thread's first sample; [`UNKNOWN`] before.
    pub(crate) thread_set: Cell<u32>,
    /// The last `(current, current with the thread label)` the sampled
    /// path merged, so that a thread in one scope merges once.
    pub(crate) with_thread: Cell<(u32, u32)>,
    /// Scopes entered lately, as `(outer set, set entered)`, so that
    /// entering one again finds its set without the table's lock; the
    /// entry to replace next is `next_scope`.
    pub(crate) scopes: [Cell<(u32, u32)>; SCOPES_KEPT],
    pub(crate) next_scope: Cell<usize>,
    /// Scopes entered lately whose sets the full table had no room for, as
    /// `(outer set, hash of the labels)`: entering one again finds it has
    /// none without the lock (the table never drops a set, so it never has
    /// room later; a merge that found no memory is not remembered); the
    /// entry to replace next is `next_overflowed`.
    pub(crate) overflowed: [Cell<(u32, u64)>; SCOPES_KEPT],
    pub(crate) next_overflowed: Cell<usize>,
    /// Labelled spans entered on this thread and not yet exited, innermost
    /// last; the first `span_depth` are in use. A span may be exited out
    /// of order (a moved `EnteredSpan`), so an exit takes its entry out
    /// and enters the later ones again.
    #[cfg(feature = "tracing")]
    pub(crate) spans: [Cell<StackedSpan>; SPANS_KEPT],
    #[cfg(feature = "tracing")]
    pub(crate) span_depth: Cell<usize>,
    /// Labelled spans entered while `spans` was full and not yet exited,
    /// as `(serial, tracing id, layer)` ([`StackedSpan`]), innermost last
    /// (the first `past_stack_len`): their enters changed no labels, so
    /// their exits change none either.
    #[cfg(feature = "tracing")]
    pub(crate) past_stack: [Cell<(u64, u64, usize)>; SPANS_KEPT],
    #[cfg(feature = "tracing")]
    pub(crate) past_stack_len: Cell<usize>,
    /// The serial of the innermost scope open on this thread
    /// (`with_labels`, a `Labeled` poll; 0 for none), and the last serial
    /// given: a span entered inside one scope is taken off the stack
    /// (`labels::tracing::settle`) only inside that same scope.
    #[cfg(feature = "tracing")]
    pub(crate) innermost_scope: Cell<u64>,
    #[cfg(feature = "tracing")]
    pub(crate) last_scope: Cell<u64>,
    /// The serials of the scopes open on this thread, outermost first: the
    /// first [`OPEN_SCOPES_KEPT`] of `open_depth`. A span entry of a scope
    /// not among them has ended (`labels::tracing::push_span`).
    #[cfg(feature = "tracing")]
    pub(crate) open_scopes: [Cell<u64>; OPEN_SCOPES_KEPT],
    #[cfg(feature = "tracing")]
    pub(crate) open_depth: Cell<usize>,
    /// Entries of `spans` exited and not yet taken off
    /// ([`StackedSpan::exited`]).
    #[cfg(feature = "tracing")]
    pub(crate) exits_waiting: Cell<u32>,
    /// The count of spans closed while on a stack
    /// (`labels::tracing::settle`) when this thread last had none of them
    /// left on its stack.
    #[cfg(feature = "tracing")]
    pub(crate) stranded_seen: Cell<u64>,
    /// The count of spans closed while on a stack when this thread last
    /// asked the subscriber which of its stacked spans are still open
    /// (`labels::tracing::forget_closed`).
    #[cfg(feature = "tracing")]
    pub(crate) asked_at: Cell<u64>,
    /// More spans were stranded since this thread last looked than the
    /// ring of them keeps, with spans on its stack: it asks the subscriber
    /// at its next span enter or exit.
    #[cfg(feature = "tracing")]
    pub(crate) must_ask: Cell<bool>,
}

/// An entered span on a thread's stack ([`LabelState::spans`]): label-set
/// ids as `labels::LabelSetId` holds them.
#[cfg(feature = "tracing")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct StackedSpan {
    /// The span's serial (`labels::tracing`), unique in the process.
    pub(crate) serial: u64,
    /// The span's `tracing` id (never 0), to ask the subscriber whether
    /// the span is still open; the subscriber may give it to another span
    /// once this one closes.
    pub(crate) id: u64,
    /// The address of the `LabelLayer` that entered it: only that layer's
    /// subscriber, through that layer's filter, can say whether it is open.
    pub(crate) layer: usize,
    /// [`LabelState::innermost_scope`] when the span was entered.
    pub(crate) scope: u64,
    /// Enters of the same span, by more than one `LabelLayer` or inside
    /// itself, that this entry stands for beyond the first.
    pub(crate) repeats: u32,
    /// Exited while the thread was in another scope than the one it was
    /// entered in: it stays until the thread is back in that scope (or
    /// past its end), counted in [`LabelState::exits_waiting`].
    pub(crate) exited: bool,
    /// The span's labels: its parent's, its own fields', and both merged.
    pub(crate) inherited: u32,
    pub(crate) own: u32,
    pub(crate) set: u32,
    /// The set in force before the span was entered, and the one it put in
    /// force.
    pub(crate) outer: u32,
    pub(crate) inside: u32,
}

impl LabelState {
    pub(crate) const fn new() -> Self {
        LabelState {
            current: Cell::new(0),
            thread_set: Cell::new(UNKNOWN),
            with_thread: Cell::new((UNKNOWN, UNKNOWN)),
            scopes: [const { Cell::new((UNKNOWN, UNKNOWN)) }; SCOPES_KEPT],
            next_scope: Cell::new(0),
            overflowed: [const { Cell::new((UNKNOWN, 0)) }; SCOPES_KEPT],
            next_overflowed: Cell::new(0),
            #[cfg(feature = "tracing")]
            spans: [const {
                Cell::new(StackedSpan {
                    serial: 0,
                    id: 0,
                    layer: 0,
                    scope: 0,
                    repeats: 0,
                    exited: false,
                    inherited: 0,
                    own: 0,
                    set: 0,
                    outer: 0,
                    inside: 0,
                })
            }; SPANS_KEPT],
            #[cfg(feature = "tracing")]
            span_depth: Cell::new(0),
            #[cfg(feature = "tracing")]
            past_stack: [const { Cell::new((0, 0, 0)) }; SPANS_KEPT],
            #[cfg(feature = "tracing")]
            past_stack_len: Cell::new(0),
            #[cfg(feature = "tracing")]
            innermost_scope: Cell::new(0),
            #[cfg(feature = "tracing")]
            last_scope: Cell::new(0),
            #[cfg(feature = "tracing")]
            open_scopes: [const { Cell::new(0) }; OPEN_SCOPES_KEPT],
            #[cfg(feature = "tracing")]
            open_depth: Cell::new(0),
            #[cfg(feature = "tracing")]
            exits_waiting: Cell::new(0),
            #[cfg(feature = "tracing")]
            stranded_seen: Cell::new(0),
            #[cfg(feature = "tracing")]
            asked_at: Cell::new(0),
            #[cfg(feature = "tracing")]
            must_ask: Cell::new(false),
        }
    }

    /// Whether the scope `serial` is one of those open on this thread, as
    /// far as it can tell: 0 (no scope) always is; with more scopes open
    /// than it keeps the serials of, any may be.
    #[cfg(feature = "tracing")]
    pub(crate) fn may_be_open(&self, serial: u64) -> bool {
        let depth = self.open_depth.get();
        serial == 0
            || depth > OPEN_SCOPES_KEPT
            || self.open_scopes[..depth].iter().any(|s| s.get() == serial)
    }
}
