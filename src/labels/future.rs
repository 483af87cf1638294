//! Labels for async code: a future that puts its labels in force on
//! whichever thread polls it, for the length of each poll.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::table::{self, Kind};
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
/// The labels are interned once, by [`Labeled::new`]; a poll made inside
/// other labels (a labelled future in a labelled future, or in
/// [`with_labels`](crate::with_labels)) adds its own to them, as nested
/// scopes do. Label limits as for [`with_labels`](crate::with_labels).
pub struct Labeled<F> {
    /// Never moved once pinned: polled and dropped in place.
    inner: ManuallyDrop<F>,
    labels: LabelSetId,
    /// The last (outer set, merged set) a poll used.
    merged: (LabelSetId, LabelSetId),
}

impl<F> Labeled<F> {
    /// Wraps `future` so that it runs with `labels` in force.
    pub fn new(future: F, labels: &[(&str, &str)]) -> Labeled<F> {
        let labels = {
            let _inside = reentry::Inside::enter();
            table::merge(LabelSetId::NONE, labels, Kind::Program)
        };
        Labeled {
            inner: ManuallyDrop::new(future),
            labels,
            merged: (LabelSetId::NONE, labels),
        }
    }

    /// Puts this future's labels in force on the calling thread, merged
    /// with the thread's own, until the returned scope is dropped.
    fn enter(merged: &mut (LabelSetId, LabelSetId), labels: LabelSetId) -> Scope {
        let outer = current();
        if merged.0 != outer {
            let _inside = reentry::Inside::enter();
            *merged = (outer, table::merge_sets(outer, labels, Kind::Program));
        }
        Scope::enter(merged.1)
    }
}

impl<F: Future> Future for Labeled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is pinned along with `self` and never moved out:
        // it is polled through the pin below and dropped in place by
        // `Drop`; the other fields are plain data, never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let _scope = Self::enter(&mut this.merged, this.labels);
        // SAFETY: as above, `inner` stays where it is until dropped.
        let inner = unsafe { Pin::new_unchecked(&mut *this.inner) };
        inner.poll(cx)
    }
}

/// Drops the wrapped future with its labels in force: what its
/// destructors allocate is labelled too.
impl<F> Drop for Labeled<F> {
    fn drop(&mut self) {
        let _scope = Self::enter(&mut self.merged, self.labels);
        // SAFETY: dropped once, here, in place (as pinning requires); the
        // field is not used after.
        unsafe { ManuallyDrop::drop(&mut self.inner) };
    }
}

impl<F> std::fmt::Debug for Labeled<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labeled")
            .field("labels", &table::get(self.labels))
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
