//! Bump arenas over fresh mappings, for tests' own inner allocators.

use std::alloc::Layout;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;

/// A fresh anonymous mapping of `bytes` (reserved, not committed), for the
/// tests' bump arenas; its address.
pub fn map_region(bytes: usize) -> usize {
    // SAFETY: an anonymous private mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

/// The next block of `layout` from a bump arena of `bytes` at `base` whose
/// used part `next` counts: aligned, in bounds, handed out once; null when
/// the arena is used up. Atomics only, so safe in a signal handler.
pub fn bump(base: usize, bytes: usize, next: &AtomicUsize, layout: Layout) -> *mut u8 {
    loop {
        let used = next.load(SeqCst);
        let start = (base + used).next_multiple_of(layout.align());
        let end = start - base + layout.size();
        if end > bytes {
            return std::ptr::null_mut();
        }
        if next.compare_exchange(used, end, SeqCst, SeqCst).is_ok() {
            return start as *mut u8;
        }
    }
}
