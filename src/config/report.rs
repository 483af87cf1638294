//! Messages on stderr from inside the profiler.
//!
//! `eprintln!` panics when stderr cannot be written (closed, a full pipe
//! reporting an error, EPIPE), and a panic inside `GlobalAlloc` aborts the
//! program. heapprof's messages (a malformed variable, a failed dump, an
//! unwinder change) are worth one line when stderr works and nothing when
//! it does not, so they go through here and errors are dropped.

use std::io::Write;

/// Writes one line to stderr, ignoring failure.
pub(crate) fn warn(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{args}");
}
