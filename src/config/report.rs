//! Messages on stderr from inside the profiler.
//!
//! `eprintln!` panics when stderr cannot be written (closed, a full pipe
//! reporting an error, EPIPE), and a panic inside `GlobalAlloc` aborts the
//! program. heapprof's messages (a malformed variable, a failed dump, an
//! unwinder change) are worth one line when stderr works and nothing when
//! it does not, so they go through here and errors are dropped.

use std::ffi::OsStr;
use std::io::Write;

/// Writes one line to stderr, ignoring failure.
pub(crate) fn warn(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{args}");
}

/// At most this many characters of a value are echoed in a message, so
/// that a value of any size stays one short line.
const SHOWN_VALUE_CHARS: usize = 64;

/// A value as a message shows it (a variable's raw value, a path, a URL):
/// quoted and escaped, so on one line, and cut after
/// [`SHOWN_VALUE_CHARS`] characters with its full length in bytes.
pub(crate) struct Shown<'a>(pub &'a OsStr);

impl<'a> Shown<'a> {
    pub(crate) fn new(value: &'a (impl AsRef<OsStr> + ?Sized)) -> Shown<'a> {
        Shown(value.as_ref())
    }
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted = format!("{:?}", self.0);
        match quoted.char_indices().nth(SHOWN_VALUE_CHARS) {
            None => f.write_str(&quoted),
            Some((cut, _)) => write!(f, "{}...\" ({} bytes in all)", &quoted[..cut], self.0.len()),
        }
    }
}
