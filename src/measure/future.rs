//! [`measure`](super::measure) for async code: a future measured poll by
//! poll, on whichever thread polls it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Measured, Window};

/// Measures a future as [`measure`](super::measure) measures a closure:
/// exact counts of what the future's own polls allocate and free, on
/// whichever threads they run, and the most it held at once.
///
/// ```no_run
/// # async fn handle_request() -> Vec<u8> { Vec::new() }
/// # async fn run() {
/// let (reply, m) = heapprof::measure_future(handle_request()).await;
/// m.assert_allocations_at_most(8);
/// m.assert_peak_at_most(64 << 10);
/// # drop(reply);
/// # }
/// ```
///
/// Wrapping the call in [`measure`](super::measure) measures the wrong
/// thing in async code: `measure(|| handle_request())` counts only making
/// the future (nothing runs until it is polled), and
/// `measure(|| runtime.block_on(handle_request()))` counts every task the
/// runtime polls on this thread meanwhile (a current-thread runtime, as
/// `#[tokio::test]` builds, runs its background tasks there). This counts
/// only while the future itself is polled:
///
/// * other tasks, on the same thread or others, are not counted, and
///   neither is what the future hands to them (a spawned task runs in its
///   own polls): measure that task too, or take a
///   [`stats()`](crate::stats) delta in a test that runs alone. Tasks the
///   future runs inside its own polls are the exception: a `LocalSet`'s
///   `run_until`, or a `block_on` of another runtime, polls them within
///   the future's poll, where they count;
/// * a block the future allocates and another task frees counts as held,
///   as with [`measure`](super::measure);
/// * [`Measured::peak_bytes`] is counted across polls as within one: each
///   poll's high point from the lowest point of the polls before it, where
///   they left the future's live bytes;
/// * the time in the report is the time spent in polls, not the time
///   waited between them;
/// * a future dropped before it completes reports nothing.
///
/// The wrapper keeps the future in place (it allocates nothing of the
/// program's), so wrapping a call in `measure_future` does not change what
/// an enclosing measure counts.
pub fn measure_future<F: Future>(future: F) -> MeasuredFuture<F> {
    MeasuredFuture {
        inner: future,
        so_far: None,
    }
}

/// The future [`measure_future`] returns: `F`'s output with what its polls
/// allocated. `Unpin` when `F` is.
pub struct MeasuredFuture<F> {
    /// Pinned whenever the wrapper is ([`MeasuredFuture::poll`]).
    inner: F,
    /// The polls so far, added up.
    so_far: Option<Measured>,
}

impl<F: Future> Future for MeasuredFuture<F> {
    type Output = (F::Output, Measured);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is pinned with the wrapper: it is only ever
        // reached through the pin made below, never moved out or handed
        // out, and dropped in place with the wrapper (which has no `Drop`
        // of its own); `so_far` is plain data, never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let window = Window::open();
        // SAFETY: as above.
        let polled = unsafe { Pin::new_unchecked(&mut this.inner) }.poll(cx);
        let this_poll = window.close();
        let so_far = match this.so_far.take() {
            Some(mut so_far) => {
                so_far.absorb(this_poll);
                so_far
            }
            None => this_poll,
        };
        match polled {
            Poll::Ready(output) => Poll::Ready((output, so_far)),
            Poll::Pending => {
                this.so_far = Some(so_far);
                Poll::Pending
            }
        }
    }
}

impl<F> std::fmt::Debug for MeasuredFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeasuredFuture")
            .field("polls_measured", &self.so_far.is_some())
            .finish_non_exhaustive()
    }
}
