//! The blocks a thread allocated since an `assert_no_leak` began on it
//! (`measure::Tracking`), which the thread's slow path keeps up to date
//! ([`super::track_alloc`], [`super::track_free`]); the thread-local holds
//! a pointer to it (`thread::measure::Measuring::tracked`).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use super::blocks::AddrHasher;

/// The blocks a thread allocated since an `assert_no_leak` began on it
/// and has not freed, and the bytes it freed of other blocks (allocated
/// before, or by other threads): frees of those must not offset the
/// growth of the calls checked. Its memory is heapprof's own.
pub(crate) struct Tracked {
    live: HashSet<usize, BuildHasherDefault<AddrHasher>>,
    /// Bytes this thread freed of blocks not in `live`.
    pub(crate) others_freed_bytes: u64,
    /// Whether a block went unrecorded for lack of memory (its free then
    /// counts among `others_freed_bytes`).
    pub(crate) incomplete: bool,
}

impl Tracked {
    pub(crate) fn new() -> Self {
        Tracked {
            live: HashSet::default(),
            others_freed_bytes: 0,
            incomplete: false,
        }
    }

    /// Records the block allocated at `addr`; inside the profiler.
    pub(crate) fn allocated(&mut self, addr: usize) {
        if self.live.try_reserve(1).is_ok() {
            self.live.insert(addr);
        } else {
            self.incomplete = true;
        }
    }

    /// How many of the blocks allocated since the start are still held.
    pub(crate) fn held(&self) -> usize {
        self.live.len()
    }

    /// Records the free of the `size`-byte block at `addr`. Allocates
    /// nothing.
    pub(crate) fn freed(&mut self, addr: usize, size: usize) {
        if !self.live.remove(&addr) {
            // Wraps, as its readers expect: frees of blocks that reserve
            // address space only can sum past `u64::MAX`.
            self.others_freed_bytes = self.others_freed_bytes.wrapping_add(size as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tracked;

    /// Freed bytes of other blocks wrap rather than overflow (a panic in
    /// the allocator's free under overflow checks): blocks that only
    /// reserve address space can sum past `u64::MAX` in a long check.
    #[test]
    fn others_freed_bytes_wrap() {
        let mut t = Tracked::new();
        let half = usize::MAX / 2 + 1;
        t.freed(0x1000, half);
        t.freed(0x2000, half);
        t.freed(0x3000, 5);
        assert_eq!(t.others_freed_bytes, 5);
    }
}
