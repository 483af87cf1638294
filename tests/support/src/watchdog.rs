//! Aborting a test that deadlocks, instead of hanging CI.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Aborts the whole process if it is not dropped within its limit, so that
/// a deadlock fails the test (the harness sees SIGABRT). Made by
/// [`watchdog`].
pub struct Watchdog {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A [`Watchdog`] for `what`, aborting after `limit`. The message is written
/// with `write(2)` directly: a deadlocked thread might hold the lock of
/// Rust's `stderr`.
pub fn watchdog(what: &'static str, limit: Duration) -> Watchdog {
    let (stop, stopped) = mpsc::channel::<()>();
    let message = format!(
        "\nWATCHDOG: {what} did not finish within {limit:?}: deadlock or livelock; aborting\n"
    );
    let thread = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                // SAFETY: writes a valid buffer of its own length to fd 2.
                unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
                std::process::abort();
            }
        })
        .expect("spawn the watchdog");
    Watchdog {
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
