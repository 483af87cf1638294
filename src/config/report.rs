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

/// At most this many characters of a path are echoed: `PATH_MAX`, so that
/// any path the system takes is shown whole, where the user must find it.
const SHOWN_PATH_CHARS: usize = 4096;

/// A value as a message shows it (a variable's raw value, a URL, a path):
/// quoted and escaped, so on one line, and cut after a number of
/// characters with its full length in bytes.
pub(crate) struct Shown<'a> {
    value: &'a OsStr,
    max_chars: usize,
}

impl<'a> Shown<'a> {
    /// A value, cut after [`SHOWN_VALUE_CHARS`] characters.
    pub(crate) fn new(value: &'a (impl AsRef<OsStr> + ?Sized)) -> Shown<'a> {
        Shown {
            value: value.as_ref(),
            max_chars: SHOWN_VALUE_CHARS,
        }
    }

    /// A path, cut after [`SHOWN_PATH_CHARS`] characters.
    pub(crate) fn path(value: &'a (impl AsRef<OsStr> + ?Sized)) -> Shown<'a> {
        Shown {
            value: value.as_ref(),
            max_chars: SHOWN_PATH_CHARS,
        }
    }
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted = format!("{:?}", self.value);
        match quoted.char_indices().nth(self.max_chars) {
            None => f.write_str(&quoted),
            Some((cut, _)) => write!(
                f,
                "{}...\" ({} bytes in all)",
                &quoted[..cut],
                self.value.len()
            ),
        }
    }
}
