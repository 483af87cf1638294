//! Small files (of `/proc`, `/sys`, a cgroup's directory) read into a
//! buffer the caller gives, usually on its stack: no allocation, for code
//! that runs when memory is short or on a watch every few milliseconds.

use std::io::Read;

/// The start of `file`, up to `buf`'s length, read into `buf`; `None` if
/// a read fails.
pub(crate) fn read_into(mut file: impl Read, buf: &mut [u8]) -> Option<&[u8]> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(&buf[..filled])
}
