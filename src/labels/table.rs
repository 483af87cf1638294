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
//! `&'static` and readers copy nothing. The index is a fixed open-address
//! array ([`INDEX_SLOTS`] slots, at most half full), so a lookup takes the
//! lock, hashes and compares, and allocates nothing. All of it happens
//! inside the reentrancy guard, under the [`rank::LABELS`] lock, with no
//! other lock held.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

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

/// The most distinct label sets, the empty and the overflow set included.
pub(crate) const MAX_LABEL_SETS: usize = 4096;
/// The most bytes of a key or a value; longer ones are cut.
pub(crate) const MAX_LABEL_BYTES: usize = 128;
/// The most labels in one set, the overflow label included.
pub(crate) const MAX_LABELS_PER_SET: usize = 16;
/// The most bytes the stored sets, their text and the table's own vector
/// and index take; a set that would take the table past it overflows.
pub(crate) const MAX_TABLE_BYTES: usize = 1 << 20;
/// Ends a key or value that was cut.
pub(crate) const TRUNCATED: &str = "…";

/// The key of the labels that say a bound was reached.
pub(crate) const OVERFLOW_KEY: &str = "heapprof_overflow";
const OVERFLOW_SET: &[Label] = &[(OVERFLOW_KEY, "label sets")];
const TOO_MANY_LABELS: Label = (OVERFLOW_KEY, "labels per set");

/// Slots of the index: a power of two, twice the sets it can hold.
const INDEX_SLOTS: usize = 2 * MAX_LABEL_SETS;
// Ids fit the index's `u16` slots (and `record/sites.rs`'s stored id).
const _: () = assert!(MAX_LABEL_SETS <= u16::MAX as usize + 1);
const _: () = assert!(INDEX_SLOTS.is_power_of_two());

struct Stored {
    hash: u64,
    labels: &'static [Label],
}

pub(crate) struct Table {
    /// The stored sets, by id from [`LabelSetId::FIRST_STORED`].
    sets: Vec<Stored>,
    /// Open addressing by hash: a slot holds an id, or 0 if empty.
    index: [u16; INDEX_SLOTS],
    /// What the table holds: its vector, its index once used, and the
    /// sets' labels and text.
    bytes: usize,
}

static TABLE: Mutex<{ rank::LABELS }, Table> = Mutex::new(Table::new());
/// [`Table::bytes`] as of the last change, read without the lock.
static BYTES: AtomicUsize = AtomicUsize::new(0);

/// A set being built: labels sorted by key, each key once, each cut to
/// [`MAX_LABEL_BYTES`].
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Pending<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Pending<'a> {
    /// The labels of a stored set, to add to.
    pub(crate) fn of(labels: &'static [Label]) -> Pending<'a> {
        Pending(
            labels
                .iter()
                .map(|&(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect(),
        )
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
fn cut(s: &str) -> Cow<'_, str> {
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
            sets: Vec::new(),
            index: [0; INDEX_SLOTS],
            bytes: 0,
        }
    }

    /// The id of `set` (bounded), stored if new; `OVERFLOW` past the
    /// table's bounds (`max_sets` sets, `max_bytes` bytes) or when the
    /// inner allocator has no memory.
    pub(crate) fn intern(
        &mut self,
        mut set: Pending<'_>,
        max_sets: usize,
        max_bytes: usize,
    ) -> LabelSetId {
        set.bound();
        if set.0.is_empty() {
            return LabelSetId::NONE;
        }
        if set.matches(OVERFLOW_SET) {
            return LabelSetId::OVERFLOW;
        }
        let hash = set.hash();
        let mut slot = hash as usize & (INDEX_SLOTS - 1);
        loop {
            let id = self.index[slot];
            if id == 0 {
                break;
            }
            let stored = &self.sets[usize::from(id) - LabelSetId::FIRST_STORED as usize];
            if stored.hash == hash && set.matches(stored.labels) {
                return LabelSetId(id.into());
            }
            slot = (slot + 1) & (INDEX_SLOTS - 1);
        }
        let id = self.sets.len() + LabelSetId::FIRST_STORED as usize;
        if id >= max_sets.min(MAX_LABEL_SETS) {
            return LabelSetId::OVERFLOW;
        }
        let index_bytes = if self.sets.is_empty() {
            std::mem::size_of_val(&self.index)
        } else {
            0
        };
        let vector_growth = if self.sets.len() == self.sets.capacity() {
            self.sets.capacity().max(4) * std::mem::size_of::<Stored>()
        } else {
            0
        };
        let cost = index_bytes + vector_growth + set.stored_bytes();
        if self.bytes + cost > max_bytes {
            return LabelSetId::OVERFLOW;
        }
        let held = self.sets.capacity() * std::mem::size_of::<Stored>();
        if self.sets.try_reserve(1).is_err() {
            return LabelSetId::OVERFLOW;
        }
        let Some(labels) = store(&set) else {
            return LabelSetId::OVERFLOW;
        };
        self.sets.push(Stored { hash, labels });
        self.index[slot] = id as u16;
        self.bytes += index_bytes + self.sets.capacity() * std::mem::size_of::<Stored>() - held
            + set.stored_bytes();
        LabelSetId(id as u32)
    }

    /// The labels of `id`; none for an id the table does not hold.
    pub(crate) fn get(&self, id: LabelSetId) -> &'static [Label] {
        match id {
            LabelSetId::NONE => &[],
            LabelSetId::OVERFLOW => OVERFLOW_SET,
            LabelSetId(n) => (n as usize)
                .checked_sub(LabelSetId::FIRST_STORED as usize)
                .and_then(|i| self.sets.get(i))
                .map_or(&[], |s| s.labels),
        }
    }

    /// Sets stored, the empty and overflow sets not counted.
    #[cfg(test)]
    pub(crate) fn stored(&self) -> usize {
        self.sets.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A copy of `set` that lives as long as the process (the table never
/// removes a set): one block of text and one of labels pointing into it.
/// `None` if the inner allocator has no memory for them.
fn store(set: &Pending<'_>) -> Option<&'static [Label]> {
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
    Some(Box::leak(labels.into_boxed_slice()))
}

/// The id of `set`, stored if new (see [`Table::intern`]). Inside the
/// guard, with no lock held.
pub(crate) fn intern(set: Pending<'_>) -> LabelSetId {
    let mut table = TABLE.lock();
    let id = table.intern(set, MAX_LABEL_SETS, MAX_TABLE_BYTES);
    BYTES.store(table.bytes(), Relaxed);
    id
}

/// The labels of `id`. Inside the guard, with no lock held.
pub(crate) fn get(id: LabelSetId) -> &'static [Label] {
    match id {
        LabelSetId::NONE => &[],
        LabelSetId::OVERFLOW => OVERFLOW_SET,
        _ => TABLE.lock().get(id),
    }
}

/// `outer` with `inner`'s labels added, same keys taking `inner`'s
/// values. Inside the guard, with no lock held.
pub(crate) fn merge(outer: LabelSetId, inner: &[(&str, &str)]) -> LabelSetId {
    if inner.is_empty() {
        return outer;
    }
    let mut set = Pending::of(get(outer));
    for &(k, v) in inner {
        set.set(k, v);
    }
    intern(set)
}

/// [`merge`] of two stored sets.
pub(crate) fn merge_sets(outer: LabelSetId, inner: LabelSetId) -> LabelSetId {
    if outer == LabelSetId::NONE || outer == inner {
        return inner;
    }
    if inner == LabelSetId::NONE {
        return outer;
    }
    let mut set = Pending::of(get(outer));
    for &(k, v) in get(inner) {
        set.set(k, v);
    }
    intern(set)
}

/// Bytes the table holds, for the profiler's own memory. Takes no lock.
pub(crate) fn memory_bytes() -> usize {
    BYTES.load(Relaxed)
}

/// The table's lock, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    f(&TABLE);
}

#[cfg(test)]
mod tests;
