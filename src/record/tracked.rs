//! The blocks a thread allocated since an `assert_no_leak` began on it
//! (`measure::Tracking`), which the thread's slow path keeps up to date
//! ([`super::track_alloc`], [`super::track_free`]); the thread-local holds
//! a pointer to it (`thread::measure::Measuring::tracked`).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::blocks::AddrHasher;

/// The blocks a thread allocated since an `assert_no_leak` began on it
/// and has not freed, with their sizes, and the bytes it freed of other
/// blocks (allocated before, or by other threads): frees of those must
/// not offset the growth of the calls checked. Its memory is heapprof's
/// own.
///
/// Another thread may resize one of these blocks in place (a worker that
/// appends to a buffer the calls sent it, then sends it back): its own
/// counts take the old size's free and the new size's allocation, and
/// the address stays. So a free of a listed block is the calls' own up
/// to the size they allocated: bytes past it are another thread's
/// (`others_freed_bytes`), and bytes short of it were freed by the
/// thread that shrank it (`shrunk_bytes`).
pub(crate) struct Tracked {
    live: HashMap<usize, usize, BuildHasherDefault<AddrHasher>>,
    /// Bytes this thread freed of blocks not in `live`, and of blocks in
    /// it past the size this thread allocated.
    pub(crate) others_freed_bytes: u64,
    /// Bytes of blocks in `live` that another thread freed by shrinking
    /// them in place: gone, though this thread's counts never freed them.
    pub(crate) shrunk_bytes: u64,
    /// Whether a block went unrecorded for lack of memory (its free then
    /// counts among `others_freed_bytes`).
    pub(crate) incomplete: bool,
}

impl Tracked {
    pub(crate) fn new() -> Self {
        Tracked {
            live: HashMap::default(),
            others_freed_bytes: 0,
            shrunk_bytes: 0,
            incomplete: false,
        }
    }

    /// Records the `size`-byte block allocated at `addr`; inside the
    /// profiler.
    pub(crate) fn allocated(&mut self, addr: usize, size: usize) {
        if self.live.try_reserve(1).is_ok() {
            self.live.insert(addr, size);
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
        // Both sums wrap, as their readers expect: frees of blocks that
        // reserve address space only can sum past `u64::MAX`.
        let own = self.live.remove(&addr).unwrap_or(0);
        let others = size.saturating_sub(own);
        self.others_freed_bytes = self.others_freed_bytes.wrapping_add(others as u64);
        self.shrunk_bytes = self
            .shrunk_bytes
            .wrapping_add(own.saturating_sub(size) as u64);
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

    /// A block another thread resized in place is the calls' own up to
    /// the size they allocated.
    #[test]
    fn a_block_resized_elsewhere_is_own_up_to_its_allocated_size() {
        let mut t = Tracked::new();
        t.allocated(0x1000, 100);
        t.allocated(0x2000, 100_000);
        t.allocated(0x3000, 64);
        // Grown to 10 000 by another thread, then freed here.
        t.freed(0x1000, 10_000);
        // Shrunk to 16 by another thread, then freed here.
        t.freed(0x2000, 16);
        t.freed(0x3000, 64);
        assert_eq!(t.others_freed_bytes, 9_900);
        assert_eq!(t.shrunk_bytes, 99_984);
        assert_eq!(t.held(), 0);
    }
}
