//! Labels for async code: a future that puts its labels in force on
//! whichever thread polls it, for the length of each poll.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};

use super::table::cut;
use super::{LabelSetId, Scope, current};
use crate::support::reentry;

/// A future that runs `F` with labels in force: every allocation sampled
/// while `F` is polled, or dropped, carries them, whichever thread polls
/// it (a multi-threaded runtime moves tasks between threads, so a
/// thread's labels alone cannot follow a task). No async runtime is
/// needed: each poll sets the labels on the polling thread and restores
/// that thread's own when it returns.
///
/// ```no_run
/// # async fn handle_request() {}
/// # async fn run() {
/// use heapprof::FutureExt as _;
/// let task = handle_request().heap_labels(&[("tenant", "acme")]);
/// // or: heapprof::Labeled::new(handle_request(), &[("tenant", "acme")])
/// task.await;
/// # }
/// ```
///
/// The labels are copied by [`Labeled::new`], each key and value cut as
/// the label table cuts them (to 128 bytes); the copies count in
/// [`Stats::profiler_bytes`](crate::Stats::profiler_bytes). Each poll puts them in
/// force over the polling thread's own labels, as a nested
/// [`with_labels`](crate::with_labels) scope would, an empty value taking
/// its key out; the set that makes is looked up when the thread's labels
/// differ from the last poll's. The future takes places in the label
/// table for the sets its polls and its drop put in force, none for its
/// own labels alone. Label limits as for
/// [`with_labels`](crate::with_labels).
pub struct Labeled<F> {
    /// Never moved once pinned: polled and dropped in place.
    inner: ManuallyDrop<F>,
    /// The labels as given, heapprof's own memory.
    labels: reentry::Own<Box<[OwnedLabel]>>,
    /// The last (outer set, set in force) a poll used; none before the
    /// first.
    merged: Option<(LabelSetId, LabelSetId)>,
}

/// A label's key and value, copied.
type OwnedLabel = (Box<str>, Box<str>);

/// Bytes the labels of live [`Labeled`] futures hold.
static COPIED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes the labels of live [`Labeled`] futures hold, for the profiler's
/// own memory. Takes no lock.
pub(crate) fn copied_bytes() -> usize {
    COPIED_BYTES.load(Relaxed)
}

/// The bytes `labels` hold: the slice and the strings.
fn held(labels: &[OwnedLabel]) -> usize {
    let strings: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    std::mem::size_of_val(labels) + strings
}

impl<F> Labeled<F> {
    /// Wraps `future` so that it runs with `labels` in force.
    pub fn new(future: F, labels: &[(&str, &str)]) -> Labeled<F> {
        let labels: reentry::Own<Box<[OwnedLabel]>> = reentry::Own::make(|| {
            labels
                .iter()
                .map(|&(k, v)| (cut(k).into(), cut(v).into()))
                .collect()
        });
        COPIED_BYTES.fetch_add(held(&labels), Relaxed);
        Labeled {
            inner: ManuallyDrop::new(future),
            labels,
            merged: None,
        }
    }

    /// Puts this future's labels in force on the calling thread, over the
    /// thread's own, until the returned scope is dropped. A merge that
    /// found no memory (the overflow set) is not kept: the next poll tries
    /// again.
    fn enter(&mut self) -> Scope {
        let outer = current();
        let set = match self.merged {
            Some((last_outer, set)) if last_outer == outer => set,
            _ => {
                let set = {
                    let _inside = reentry::Inside::enter();
                    let mut pairs = Vec::new();
                    match pairs.try_reserve_exact(self.labels.len()) {
                        Ok(()) => {
                            pairs.extend(self.labels.iter().map(|(k, v)| (&**k, &**v)));
                            super::scope_set(&pairs)
                        }
                        Err(_) => LabelSetId::OVERFLOW,
                    }
                };
                if set != LabelSetId::OVERFLOW {
                    self.merged = Some((outer, set));
                }
                set
            }
        };
        Scope::enter(set)
    }
}

impl<F: Future> Future for Labeled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is pinned along with `self` and never moved out:
        // it is polled through the pin below and dropped in place by
        // `Drop`; the other fields are plain data, never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let _scope = this.enter();
        // SAFETY: as above, `inner` stays where it is until dropped.
        let inner = unsafe { Pin::new_unchecked(&mut *this.inner) };
        inner.poll(cx)
    }
}

/// Drops the wrapped future with its labels in force: what its
/// destructors allocate is labelled too.
impl<F> Drop for Labeled<F> {
    fn drop(&mut self) {
        let _scope = self.enter();
        // SAFETY: dropped once, here, in place (as pinning requires); the
        // field is not used after.
        unsafe { ManuallyDrop::drop(&mut self.inner) };
        COPIED_BYTES.fetch_sub(held(&self.labels), Relaxed);
    }
}

impl<F> std::fmt::Debug for Labeled<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labeled")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// [`Labeled`] as a method on every future: `fut.heap_labels(&[("tenant",
/// "acme")])`.
pub trait FutureExt: Future + Sized {
    /// Wraps this future so that it runs with `labels` in force; see
    /// [`Labeled`].
    fn heap_labels(self, labels: &[(&str, &str)]) -> Labeled<Self> {
        Labeled::new(self, labels)
    }
}

impl<F: Future> FutureExt for F {}
