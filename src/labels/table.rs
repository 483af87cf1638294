//! The label-set table: each distinct set of labels the program uses,
//! stored once for the life of the process and named by a [`LabelSetId`],
//! which is what a thread holds, a site is keyed by and a profile reads
//! back.
//!
//! A set is sorted by key, each key once. Memory is bounded three ways,
//! and what goes past a bound says so in the profile:
//!
//! * a key or value longer than [`MAX_LABEL_BYTES`] bytes is cut (at a
//!   character boundary) and ends in [`TRUNCATED`];
//! * a set of more than [`MAX_LABELS_PER_SET`] labels keeps its first
//!   keys in order and one label `heapprof_overflow=labels per set` in
//!   place of the rest;
//! * past [`MAX_LABEL_SETS`] sets, or [`MAX_TABLE_BYTES`] bytes of
//!   stored sets, a new set becomes the one overflow set
//!   `heapprof_overflow=label sets` ([`LabelSetId::OVERFLOW`]); so does one
//!   the inner allocator has no memory for.
//!
//! Sets are never removed, so the labels a [`LabelSetId`] names are
//! `&'static`: each stored set is published in a fixed array of slots,
//! one per id, and reading one ([`get`]) is an atomic load, with no lock.
//! Finding a set by its labels goes through an open-address index
//! ([`INDEX_SLOTS`] slots, at most half full) under the [`rank::LABELS`]
//! lock: a hash and compares, no allocation. Storing a new set allocates;
//! both happen inside the reentrancy guard, with no other lock held.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};

use crate::support::lock::{Lockable, Mutex, rank};

/// One stored label: a key and its value.
pub(crate) type Label = (&'static str, &'static str);

/// Names a set of labels in the table. `NONE` is the empty set (no
/// labels), `OVERFLOW` the set that stands for the sets that did not fit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct LabelSetId(pub(crate) u32);

impl LabelSetId {
    pub(crate) const NONE: LabelSetId = LabelSetId(0);
    pub(crate) const OVERFLOW: LabelSetId = LabelSetId(1);
    /// The id of the first set stored in the table.
    const FIRST_STORED: u32 = 2;
}

/// The most distinct label sets of the program's, the empty and the
/// overflow set included.
pub(crate) const MAX_LABEL_SETS: usize = 4096;
/// The most sets made for the automatic `thread` label (a thread's name
/// alone, or with the program's labels in force), kept apart so that
/// thread names never take the program's places; past it a sample keeps
/// the program's labels without the `thread` label.
pub(crate) const MAX_THREAD_LABEL_SETS: usize = 4096;
/// Ids the table hands out, both kinds of set.
pub(crate) const ALL_SETS: usize = MAX_LABEL_SETS + MAX_THREAD_LABEL_SETS;
/// The most bytes of a key or a value; longer ones are cut.
pub(crate) const MAX_LABEL_BYTES: usize = 128;
/// The most labels in one set, the overflow label included.
pub(crate) const MAX_LABELS_PER_SET: usize = 16;
/// The most bytes the program's stored sets and their text take, with
/// the table's own slots and index; a set that would take them past it
/// overflows.
pub(crate) const MAX_TABLE_BYTES: usize = 1 << 20;
/// The most bytes the sets made for the `thread` label take.
pub(crate) const MAX_THREAD_TABLE_BYTES: usize = 1 << 20;
/// Ends a key or value that was cut.
pub(crate) const TRUNCATED: &str = "…";

/// The key of the labels that say a bound was reached.
pub(crate) const OVERFLOW_KEY: &str = "heapprof_overflow";
const OVERFLOW_SET: &[Label] = &[(OVERFLOW_KEY, "label sets")];
const TOO_MANY_LABELS: Label = (OVERFLOW_KEY, "labels per set");

/// Slots of the index: a power of two, twice the sets it can hold.
const INDEX_SLOTS: usize = 2 * ALL_SETS;
// Ids fit the index's `u16` slots (and `record/sites.rs`'s stored id).
const _: () = assert!(ALL_SETS <= u16::MAX as usize + 1);
const _: () = assert!(INDEX_SLOTS.is_power_of_two());

/// A stored set, allocated once and never freed.
struct Stored {
    hash: u64,
    labels: &'static [Label],
}

/// Whose a set is, for the bound it counts against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Labels the program set.
    Program,
    /// Made for the `thread` label.
    Thread,
}

/// How many sets of one kind the table may store, and in how many bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound {
    pub sets: usize,
    pub bytes: usize,
}

impl Kind {
    /// The bound of this kind's sets in the process's table.
    fn bound(self) -> Bound {
        match self {
            Kind::Program => Bound {
                sets: MAX_LABEL_SETS - LabelSetId::FIRST_STORED as usize,
                bytes: MAX_TABLE_BYTES,
            },
            Kind::Thread => Bound {
                sets: MAX_THREAD_LABEL_SETS,
                bytes: MAX_THREAD_TABLE_BYTES,
            },
        }
    }
}

pub(crate) struct Table {
    /// The stored sets by id, each published (release) once it is whole.
    slots: [AtomicPtr<Stored>; ALL_SETS],
    index: Mutex<{ rank::LABELS }, Index>,
    /// The bytes of [`Index::by_kind`] together, as of its last change,
    /// read without the lock.
    bytes: AtomicUsize,
}

/// What finding and storing sets needs, under the lock.
struct Index {
    /// Open addressing by hash: a slot holds an id, or 0 if empty.
    slots: [u16; INDEX_SLOTS],
    /// Sets stored: the next id is this plus [`LabelSetId::FIRST_STORED`].
    stored: usize,
    /// Sets stored and the bytes they take (their labels and text), by
    /// [`Kind`]; the program's bytes include the table's slots and index
    /// once it is used. Together, what the table holds.
    by_kind: [(usize, usize); 2],
}

static TABLE: Table = Table::new();

/// A set being built: labels sorted by key, each key once, each cut to
/// [`MAX_LABEL_BYTES`].
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Pending<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Pending<'a> {
    /// The labels of a stored set, to add to.
    #[cfg(test)]
    pub(crate) fn of(labels: &'static [Label]) -> Pending<'a> {
        Pending::with_room(labels, 0).unwrap()
    }

    /// The labels of a stored set with room for `more` to be set without
    /// growing, or `None` if the inner allocator has no memory for it:
    /// merges on the sampled path, inside an allocation of the program's,
    /// must not abort it.
    fn with_room(labels: &'static [Label], more: usize) -> Option<Pending<'a>> {
        let mut all = Vec::new();
        all.try_reserve_exact(labels.len() + more).ok()?;
        all.extend(
            labels
                .iter()
                .map(|&(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v))),
        );
        Some(Pending(all))
    }

    /// Sets `key` to `value`, in place of any value it had. An empty key
    /// is no label and is left out; an empty value takes the key out (pprof
    /// reads a label with an empty value as no label).
    pub(crate) fn set(&mut self, key: &'a str, value: &'a str) {
        if key.is_empty() {
            return;
        }
        let key = cut(key);
        let at = self
            .0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key.as_ref()));
        match (at, value.is_empty()) {
            (Ok(i), true) => {
                self.0.remove(i);
            }
            (Err(_), true) => {}
            (Ok(i), false) => self.0[i].1 = cut(value),
            (Err(i), false) => self.0.insert(i, (key, cut(value))),
        }
    }

    /// Keeps at most [`MAX_LABELS_PER_SET`] labels: the first keys in
    /// order, and the label that says some were left out.
    fn bound(&mut self) {
        if self.0.len() <= MAX_LABELS_PER_SET {
            return;
        }
        self.0.truncate(MAX_LABELS_PER_SET - 1);
        self.0.retain(|(k, _)| k != OVERFLOW_KEY);
        let (k, v) = TOO_MANY_LABELS;
        self.set(k, v);
    }

    fn hash(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        for (k, v) in &self.0 {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        h.finish()
    }

    fn matches(&self, labels: &[Label]) -> bool {
        self.0.len() == labels.len()
            && self
                .0
                .iter()
                .zip(labels)
                .all(|((k, v), (sk, sv))| k == sk && v == sv)
    }

    /// The bytes a stored copy takes: its labels and their text.
    fn stored_bytes(&self) -> usize {
        self.0.len() * std::mem::size_of::<Label>()
            + self.0.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// `s`, or its first [`MAX_LABEL_BYTES`] bytes (to a character boundary)
/// ending in [`TRUNCATED`].
pub(crate) fn cut(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_LABEL_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_LABEL_BYTES - TRUNCATED.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATED}", &s[..end]))
}

impl Table {
    pub(crate) const fn new() -> Table {
        Table {
            slots: [const { AtomicPtr::new(std::ptr::null_mut()) }; ALL_SETS],
            index: Mutex::new(Index {
                slots: [0; INDEX_SLOTS],
                stored: 0,
                by_kind: [(0, 0); 2],
            }),
            bytes: AtomicUsize::new(0),
        }
    }

    /// The id of `set` (bounded), stored if new as a set of `kind`;
    /// `OVERFLOW` past `bound` (for that kind's sets) or when the inner
    /// allocator has no memory. A set already stored is found whatever
    /// its kind. Inside the guard, with no lock held.
    pub(crate) fn intern(&self, mut set: Pending<'_>, kind: Kind, bound: Bound) -> LabelSetId {
        set.bound();
        if set.0.is_empty() {
            return LabelSetId::NONE;
        }
        if set.matches(OVERFLOW_SET) {
            return LabelSetId::OVERFLOW;
        }
        let hash = set.hash();
        let mut index = self.index.lock();
        let mut slot = hash as usize & (INDEX_SLOTS - 1);
        loop {
            let id = index.slots[slot];
            if id == 0 {
                break;
            }
            let stored = self.stored(id.into());
            if stored.is_some_and(|s| s.hash == hash && set.matches(s.labels)) {
                return LabelSetId(id.into());
            }
            slot = (slot + 1) & (INDEX_SLOTS - 1);
        }
        let id = index.stored + LabelSetId::FIRST_STORED as usize;
        let k = kind as usize;
        let (sets, bytes) = index.by_kind[k];
        if sets >= bound.sets || id >= ALL_SETS {
            return LabelSetId::OVERFLOW;
        }
        // The slots and index come with the first set, in the program's
        // bytes whichever kind it is.
        let fixed = if index.stored == 0 {
            std::mem::size_of_val(&self.slots) + std::mem::size_of_val(&index.slots)
        } else {
            0
        };
        let own = std::mem::size_of::<Stored>() + set.stored_bytes();
        let fixed_here = if kind == Kind::Program { fixed } else { 0 };
        if bytes + fixed_here + own > bound.bytes {
            return LabelSetId::OVERFLOW;
        }
        let Some(stored) = store(&set, hash) else {
            MEMORY_FAILURES.fetch_add(1, Relaxed);
            return LabelSetId::OVERFLOW;
        };
        self.slots[id].store(stored, Release);
        index.slots[slot] = id as u16;
        index.stored += 1;
        index.by_kind[k] = (sets + 1, bytes + own);
        index.by_kind[Kind::Program as usize].1 += fixed;
        self.bytes
            .store(index.by_kind.iter().map(|&(_, bytes)| bytes).sum(), Relaxed);
        LabelSetId(id as u32)
    }

    fn stored(&self, id: usize) -> Option<&'static Stored> {
        let ptr = self.slots.get(id)?.load(Acquire);
        // SAFETY: a non-null slot holds a `Stored` leaked by `store` and
        // published with release after it was written; it is never freed
        // or written again.
        unsafe { ptr.as_ref() }
    }

    /// The labels of `id`; none for an id the table does not hold. Takes
    /// no lock.
    pub(crate) fn get(&self, id: LabelSetId) -> &'static [Label] {
        match id {
            LabelSetId::NONE => &[],
            LabelSetId::OVERFLOW => OVERFLOW_SET,
            LabelSetId(n) => self.stored(n as usize).map_or(&[], |s| s.labels),
        }
    }

    /// Sets stored, the empty and overflow sets not counted.
    #[cfg(test)]
    pub(crate) fn stored_sets(&self) -> usize {
        self.index.lock().stored
    }

    /// Bytes the table holds. Takes no lock.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }
}

/// A copy of `set` that lives as long as the process (the table never
/// removes a set): one block of text, one of labels pointing into it, and
/// the record of both. `None` if the inner allocator has no memory.
fn store(set: &Pending<'_>, hash: u64) -> Option<*mut Stored> {
    let mut text = String::new();
    text.try_reserve_exact(set.0.iter().map(|(k, v)| k.len() + v.len()).sum())
        .ok()?;
    for (k, v) in &set.0 {
        text.push_str(k);
        text.push_str(v);
    }
    let mut labels: Vec<Label> = Vec::new();
    labels.try_reserve_exact(set.0.len()).ok()?;
    // Exactly as long as its capacity, so boxing it moves nothing.
    let text: &'static str = Box::leak(text.into_boxed_str());
    let mut at = 0;
    for (k, v) in &set.0 {
        let key = &text[at..at + k.len()];
        at += k.len();
        let value = &text[at..at + v.len()];
        at += v.len();
        labels.push((key, value));
    }
    let labels: &'static [Label] = Box::leak(labels.into_boxed_slice());
    let mut record: Vec<Stored> = Vec::new();
    record.try_reserve_exact(1).ok()?;
    record.push(Stored { hash, labels });
    Some(Box::into_raw(record.into_boxed_slice()).cast())
}

/// How many merges found no memory (rather than no room): an
/// [`LabelSetId::OVERFLOW`] while this moved may not be for good.
static MEMORY_FAILURES: AtomicU64 = AtomicU64::new(0);

/// [`MEMORY_FAILURES`] now.
pub(crate) fn memory_failures() -> u64 {
    MEMORY_FAILURES.load(Relaxed)
}

/// Set once a set of the program's labels found no place (no room, or no
/// memory) and went under [`LabelSetId::OVERFLOW`]; profiles say so.
static PROGRAM_SETS_FULL: AtomicBool = AtomicBool::new(false);

/// Sets [`PROGRAM_SETS_FULL`], storing only the first time: once the
/// table is full every new scope comes here, and a store each time would
/// make the flag's cache line bounce between the threads.
fn say_program_sets_full() {
    if !PROGRAM_SETS_FULL.load(Relaxed) {
        PROGRAM_SETS_FULL.store(true, Relaxed);
    }
}

/// Whether a set of the program's labels has gone under the overflow set.
pub(crate) fn program_sets_full() -> bool {
    PROGRAM_SETS_FULL.load(Relaxed)
}

/// What a merge of `kind` that found no memory for its list gives, counted.
fn no_memory(kind: Kind) -> LabelSetId {
    MEMORY_FAILURES.fetch_add(1, Relaxed);
    if kind == Kind::Program {
        say_program_sets_full();
    }
    LabelSetId::OVERFLOW
}

/// The id of `set`, stored if new (see [`Table::intern`]). Inside the
/// guard, with no lock held.
pub(crate) fn intern(set: Pending<'_>, kind: Kind) -> LabelSetId {
    let id = TABLE.intern(set, kind, kind.bound());
    if id == LabelSetId::OVERFLOW && kind == Kind::Program {
        say_program_sets_full();
    }
    id
}

/// The labels of `id`. Takes no lock and allocates nothing, so any
/// thread may call it anywhere.
pub(crate) fn get(id: LabelSetId) -> &'static [Label] {
    TABLE.get(id)
}

/// `outer` with `inner`'s labels added, same keys taking `inner`'s
/// values, stored as a set of `kind`. Inside the guard, with no lock
/// held.
pub(crate) fn merge(outer: LabelSetId, inner: &[(&str, &str)], kind: Kind) -> LabelSetId {
    if inner.is_empty() {
        return outer;
    }
    // Room for every label of `inner`, so that no `set` grows the list
    // (labels set on the sampled path are never cut, so nothing else
    // allocates before `intern`).
    let Some(mut set) = Pending::with_room(get(outer), inner.len()) else {
        return no_memory(kind);
    };
    for &(k, v) in inner {
        set.set(k, v);
    }
    intern(set, kind)
}

/// Whether `result` is what [`merge`] makes of `outer` and `inner`, for
/// an `inner` with no key twice and no key or value that is empty or
/// needs cutting (false for any other: the caller then merges). Reads
/// and compares, so a thread can check a set it remembers without the
/// table's lock.
pub(crate) fn is_merge(result: &[Label], outer: &[Label], inner: &[(&str, &str)]) -> bool {
    let has = |set: &[Label], key: &str, value: &str| {
        set.binary_search_by(|&(k, _)| k.cmp(key))
            .is_ok_and(|i| set[i].1 == value)
    };
    let plain = |s: &str| !s.is_empty() && s.len() <= MAX_LABEL_BYTES;
    let in_inner = |key: &str| inner.iter().any(|&(k, _)| k == key);
    for (i, &(k, v)) in inner.iter().enumerate() {
        if !plain(k) || !plain(v) || inner[..i].iter().any(|&(p, _)| p == k) || !has(result, k, v) {
            return false;
        }
    }
    let mut kept = 0;
    for &(k, v) in outer {
        if !in_inner(k) {
            if !has(result, k, v) {
                return false;
            }
            kept += 1;
        }
    }
    result.len() == inner.len() + kept
}

/// [`merge`] of two stored sets.
pub(crate) fn merge_sets(outer: LabelSetId, inner: LabelSetId, kind: Kind) -> LabelSetId {
    if outer == LabelSetId::NONE || outer == inner {
        return inner;
    }
    if inner == LabelSetId::NONE {
        return outer;
    }
    let inner = get(inner);
    let Some(mut set) = Pending::with_room(get(outer), inner.len()) else {
        return no_memory(kind);
    };
    for &(k, v) in inner {
        set.set(k, v);
    }
    intern(set, kind)
}

/// `middle`'s labels over `base`'s and `top`'s over both, as
/// `merge(merge_sets(base, middle), top)` makes them (past
/// [`MAX_LABELS_PER_SET`] cut once instead of twice, which may keep other
/// keys), stored as one set: no place is taken by the set of the first
/// two alone, which no sample carries.
#[cfg(feature = "tracing")]
pub(crate) fn merge_layers(
    base: LabelSetId,
    middle: LabelSetId,
    top: &[(&str, &str)],
    kind: Kind,
) -> LabelSetId {
    let middle = get(middle);
    let Some(mut set) = Pending::with_room(get(base), middle.len() + top.len()) else {
        return no_memory(kind);
    };
    for &(k, v) in middle.iter().chain(top) {
        set.set(k, v);
    }
    intern(set, kind)
}

/// Bytes the table holds, for the profiler's own memory. Takes no lock.
pub(crate) fn memory_bytes() -> usize {
    TABLE.bytes()
}

/// The table's lock, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    f(&TABLE.index);
}

#[cfg(test)]
mod tests;
