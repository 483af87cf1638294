//! Labels: which tenant, request or task an allocation was made for.
//!
//! A thread has one label set in force ([`crate::thread::Local`]'s
//! `labels.current`, an id into the table of `table.rs`). Scopes put a set
//! in force and restore the one before when they end:
//! [`with_labels`] around a closure, a [`Labeled`] future around each of
//! its polls, an entered span of a [`tracing`] layer. Entering finds the
//! merged set (the outer labels plus the scope's, the scope's winning on a
//! shared key) among the thread's last few, or interns it inside the
//! reentrancy guard; leaving is one store.
//!
//! A sampled allocation reads the set once, on the sampled path
//! ([`for_sample`], after its stack is captured), adds the thread's
//! `thread` label unless that is turned off, and its site is keyed by
//! stack and set (`record/sites.rs`): a block keeps the labels it was
//! allocated under until it is freed, whichever thread frees it. The fast
//! path never looks at labels.

pub(crate) mod future;
pub(crate) mod table;
#[cfg(feature = "tracing")]
pub mod tracing;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use crate::support::reentry;
use crate::thread::{
    self,
    labels::{SCOPES_KEPT, UNKNOWN},
};
use table::Kind;
pub(crate) use table::{LabelSetId, each_lock};

/// The key of the automatic label that names the thread.
pub(crate) const THREAD_KEY: &str = "thread";

/// What [`set_thread_label`] said: nothing yet (the configuration
/// decides), on, or off.
static THREAD_LABEL: AtomicU8 = AtomicU8::new(FOLLOW_CONFIG);

/// Set once a sample went without its `thread` label because the thread
/// label's sets filled their table; profiles say so.
static THREAD_LABEL_DROPPED: AtomicBool = AtomicBool::new(false);

/// Whether some samples carry no `thread` label because its table is full.
pub(crate) fn thread_label_dropped() -> bool {
    THREAD_LABEL_DROPPED.load(Relaxed)
}
const FOLLOW_CONFIG: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Runs `f` with `labels` added to this thread's labels: every allocation
/// sampled on this thread until `f` returns carries them, in every sample
/// type of the profiles (pprof `Sample.label`, for `go tool pprof
/// -tagfocus tenant=acme`, `-tags`, `-tagroot`), and in [`Snapshot`]s.
///
/// ```no_run
/// # fn handle() {}
/// heapprof::with_labels(&[("tenant", "acme"), ("route", "/api/x")], || handle());
/// ```
///
/// * Scopes nest: an inner one adds its keys and overrides the outer
///   one's values for the same keys; the outer labels are back when it
///   returns, or unwinds.
/// * A block keeps the labels it was allocated with until it is freed,
///   by whichever thread or task: in-use memory by label stays right.
/// * Keys and values are copied, so strings made at run time work. An
///   empty key is left out; an empty value takes its key out of the set
///   for the scope, an outer scope's value included (pprof reads an
///   empty value as no label); a key or value
///   over 128 bytes is cut and ends in `…`; a set of
///   more than 16 labels keeps 15 and `heapprof_overflow=labels per set`. The table holds at most 4 096
///   distinct sets (1 MiB); past that, samples carry
///   `heapprof_overflow=label sets` instead of their labels, so keep
///   unbounded values (request ids) out of labels. The sets the `thread`
///   label makes (a thread's name, alone or with the labels in force)
///   have 4 096 places (1 MiB) of their own; past those, and with 16
///   labels in force already, samples carry the labels in force without
///   `thread`.
/// * Entering one of the thread's last few scopes again finds its set by
///   comparing labels (tens of nanoseconds, no lock); a new one, and one
///   whose labels need cutting, have an empty value or a key twice, merge
///   its set under the table's lock (hundreds of nanoseconds). Leaving is
///   a store. Allocations that are not sampled never look at labels.
///
/// For async code, where a task moves between threads, label the future
/// instead: [`Labeled`], [`FutureExt::heap_labels`]. A thread that waits
/// inside a scope in a work-stealing pool (rayon's `join`, `scope`,
/// `install` on a worker) runs other jobs while it waits, and what they
/// allocate carries the scope's labels: label inside each job. Labels
/// stay with the thread or future that has them: a thread, task or
/// `spawn_blocking` closure started inside a scope starts without them
/// (Go's goroutines inherit theirs); label what is spawned too, or use a
/// `tracing` span (feature `tracing`), whose labels a span made inside
/// it inherits.
///
/// [`Snapshot`]: crate::Snapshot
pub fn with_labels<R>(labels: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let _scope = Scope::enter(scope_set(labels));
    f()
}

/// The set a scope of `labels` entered now puts in force: one of the
/// thread's last few, if it is one of those (checked against the table,
/// which is read without a lock), else merged and interned.
pub(super) fn scope_set(labels: &[(&str, &str)]) -> LabelSetId {
    let outer = current();
    let remembered = thread::with(|l| {
        l.labels.scopes.iter().map(Cell::get).find(|&(o, set)| {
            o == outer.0 && table::is_merge(table::get(LabelSetId(set)), table::get(outer), labels)
        })
    });
    if let Some(Some((_, set))) = remembered {
        return LabelSetId(set);
    }
    let key = (outer.0, labels_hash(labels));
    let overflowed = thread::with(|l| l.labels.overflowed.iter().any(|c| c.get() == key));
    if overflowed == Some(true) {
        return LabelSetId::OVERFLOW;
    }
    let failures = table::memory_failures();
    let set = {
        let _inside = reentry::Inside::enter();
        table::merge(outer, labels, Kind::Program)
    };
    // Remembered only when the table had no room: memory may come back.
    let for_good = table::memory_failures() == failures;
    thread::with(|l| {
        let l = &l.labels;
        match set {
            LabelSetId::OVERFLOW if !for_good => {}
            LabelSetId::OVERFLOW => remember(&l.overflowed, &l.next_overflowed, key),
            _ => remember(&l.scopes, &l.next_scope, (outer.0, set.0)),
        }
    });
    set
}

/// Puts `entry` in the next place of a thread's ring of recent scopes.
fn remember<T: Copy>(ring: &[Cell<T>; SCOPES_KEPT], next: &Cell<usize>, entry: T) {
    let i = next.get() % SCOPES_KEPT;
    ring[i].set(entry);
    next.set(i + 1);
}

/// A hash of a scope's labels, in order, to know a scope the table had no
/// room for when it is entered again (64 bits: two label lists that
/// collide, one of them in the table, are told apart only by chance).
fn labels_hash(labels: &[(&str, &str)]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(labels, &mut h);
    std::hash::Hasher::finish(&h)
}

/// The labels an allocation sampled now, on this thread, would carry:
/// those of the scopes the thread is in, and its `thread` label unless
/// turned off; sorted by key. For debugging.
pub fn current_labels() -> Vec<(String, String)> {
    let set = {
        let _inside = reentry::Inside::enter();
        for_sample()
    };
    table::get(set)
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Turns the automatic `thread` label on or off for the samples taken
/// from now on, in place of `HEAPPROF_THREAD_LABEL` (on by default).
///
/// The label is the thread's name as the operating system has it (what
/// `top -H` shows), read at the thread's first sample: a Rust thread's
/// name cut to 15 bytes, the Linux limit, back to a whole character
/// (tokio's workers are `tokio-rt-worker`), `main` for the main thread.
/// Reading it there, rather than through `std::thread::current()`, works
/// in any thread and cannot recurse into the allocator. A label `thread` of the program's
/// own wins over it.
pub fn set_thread_label(on: bool) {
    THREAD_LABEL.store(if on { ON } else { OFF }, Relaxed);
}

fn thread_label_on() -> bool {
    match THREAD_LABEL.load(Relaxed) {
        ON => true,
        OFF => false,
        _ => crate::config::get().thread_label,
    }
}

/// Bytes the label table and the labels of live `Labeled` futures hold,
/// for the profiler's own memory. Takes no lock.
pub(crate) fn memory_bytes() -> usize {
    table::memory_bytes() + future::copied_bytes()
}

/// The set in force on this thread (after [`tracing::settle`]).
pub(crate) fn current() -> LabelSetId {
    #[cfg(feature = "tracing")]
    tracing::settle();
    LabelSetId(thread::with(|l| l.labels.current.get()).unwrap_or(0))
}

/// Puts `set` in force on this thread, for a scope that ends in another
/// call (a span's exit).
#[cfg(feature = "tracing")]
pub(crate) fn set_current(set: LabelSetId) {
    thread::with(|l| l.labels.current.set(set.0));
}

/// A set in force on this thread until dropped, which restores the one
/// before (also when unwinding).
pub(crate) struct Scope {
    outer: u32,
    /// The innermost scope's serial before this one
    /// (`thread::labels::LabelState::innermost_scope`).
    #[cfg(feature = "tracing")]
    enclosing: u64,
}

impl Scope {
    pub(crate) fn enter(set: LabelSetId) -> Scope {
        // Plain values out of the thread-local: a `Scope` made and dropped
        // on a path not taken would put its `outer` back.
        let (outer, _enclosing) = thread::with(|l| {
            let l = &l.labels;
            #[cfg(feature = "tracing")]
            let enclosing = {
                let serial = l.last_scope.get().wrapping_add(1);
                l.last_scope.set(serial);
                let depth = l.open_depth.get();
                if let Some(slot) = l.open_scopes.get(depth) {
                    slot.set(serial);
                }
                l.open_depth.set(depth + 1);
                l.innermost_scope.replace(serial)
            };
            #[cfg(not(feature = "tracing"))]
            let enclosing = 0u64;
            (l.current.replace(set.0), enclosing)
        })
        .unwrap_or((0, 0));
        Scope {
            outer,
            #[cfg(feature = "tracing")]
            enclosing: _enclosing,
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        thread::with(|l| {
            l.labels.current.set(self.outer);
            #[cfg(feature = "tracing")]
            {
                l.labels.innermost_scope.set(self.enclosing);
                let depth = &l.labels.open_depth;
                depth.set(depth.get().saturating_sub(1));
            }
        });
    }
}

/// The set a sample taken now on this thread carries: the set in force,
/// with the `thread` label unless it is turned off. Inside the guard, with
/// no lock held: the sampled path, after the stack is captured.
pub(crate) fn for_sample() -> LabelSetId {
    #[cfg(feature = "tracing")]
    tracing::settle();
    let Some((current, thread_set, with_thread)) = thread::with(|l| {
        (
            l.labels.current.get(),
            l.labels.thread_set.get(),
            l.labels.with_thread.get(),
        )
    }) else {
        return LabelSetId::NONE;
    };
    if !thread_label_on() {
        return LabelSetId(current);
    }
    if with_thread.0 == current && with_thread.1 != UNKNOWN {
        return LabelSetId(with_thread.1);
    }
    if table::get(LabelSetId(current)).len() >= table::MAX_LABELS_PER_SET {
        // No room for `thread` without cutting one of the program's own.
        thread::with(|l| l.labels.with_thread.set((current, current)));
        return LabelSetId(current);
    }
    let thread_set = if thread_set == UNKNOWN {
        let set = thread_name_set();
        thread::with(|l| l.labels.thread_set.set(set.0));
        set
    } else {
        LabelSetId(thread_set)
    };
    // Past the thread label's own bound, the program's labels alone.
    let set = match table::merge_sets(thread_set, LabelSetId(current), Kind::Thread) {
        LabelSetId::OVERFLOW => {
            THREAD_LABEL_DROPPED.store(true, Relaxed);
            LabelSetId(current)
        }
        set => set,
    };
    thread::with(|l| l.labels.with_thread.set((current, set.0)));
    set
}

/// The set of this thread's `thread` label alone; none if its name cannot
/// be read.
fn thread_name_set() -> LabelSetId {
    let mut buf = [0u8; 64];
    match thread_name(&mut buf) {
        Some(name) => match table::merge(LabelSetId::NONE, &[(THREAD_KEY, name)], Kind::Thread) {
            LabelSetId::OVERFLOW => {
                THREAD_LABEL_DROPPED.store(true, Relaxed);
                LabelSetId::NONE
            }
            set => set,
        },
        None => LabelSetId::NONE,
    }
}

/// This thread's name as the system has it, `main` for the process's
/// first thread; read without allocating.
fn thread_name(buf: &mut [u8; 64]) -> Option<&str> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: neither call has preconditions; both only return ids.
        let (tid, pid) = unsafe { (libc::syscall(libc::SYS_gettid), libc::getpid()) };
        if tid == libc::c_long::from(pid) {
            return Some("main");
        }
    }
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        // SAFETY: `buf` is writable for its whole length, which is passed;
        // the call writes a NUL-terminated name of at most that length.
        let rc = unsafe {
            libc::pthread_getname_np(libc::pthread_self(), buf.as_mut_ptr().cast(), buf.len())
        };
        if rc != 0 {
            return None;
        }
        let len = buf.iter().position(|&b| b == 0)?;
        // The system cuts a name at a byte count, maybe inside a
        // character (and a C library may name a thread in another
        // encoding): the text before the first byte that is not UTF-8.
        let name = match std::str::from_utf8(&buf[..len]) {
            Ok(name) => name,
            Err(e) => std::str::from_utf8(&buf[..e.valid_up_to()]).ok()?,
        };
        Some(name).filter(|s| !s.is_empty())
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = buf;
        None
    }
}

pub use future::{FutureExt, Labeled};
