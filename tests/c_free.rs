//! C code that frees a buffer Rust allocated with its own `free()`: against
//! Rust's allocator contract, but a common habit at FFI boundaries, and one
//! that happens to work over the plain system allocator. A sampled block
//! freed that way stays in heapprof's set of live blocks; when `malloc`
//! hands its address to another block of another size, that block's free
//! must not be taken for the sampled one's (freed with the sampled block's
//! layout or kept in a spare pool, it would corrupt the heap).
//!
//! The child does it 100 000 times at the default rate, with sizes up to
//! 200 000 bytes, so that hundreds of sampled blocks are freed behind
//! heapprof's back and their addresses reused; without the check it died
//! with `malloc(): invalid size` in every run.

use heapprof_testkit::child::{is_child, run_child};
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[test]
fn child_frees_rust_buffers_with_c_free() {
    if !is_child() {
        return;
    }
    let mut x: u64 = 88_172_645_463_325_252;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let buffer = vec![7u8; 1 + (x % 200_000) as usize].into_boxed_slice();
        let ptr = Box::leak(buffer).as_mut_ptr();
        // SAFETY: the system allocator made the block (heapprof wraps
        // `System`, which allocates with `malloc`, or `memalign` for the
        // page-aligned sampled blocks, both of which `free` takes); it is
        // not used again.
        unsafe { libc::free(ptr.cast()) };
        drop(black_box(vec![1u8; (x >> 20) as usize % 5000 + 1]));
    }
    heapprof::write_profile(std::io::sink()).unwrap();
    println!("done");
}

#[test]
fn a_block_freed_by_c_does_not_corrupt_the_heap() {
    let (stdout, _) = run_child(
        "child_frees_rust_buffers_with_c_free",
        &[("HEAPPROF_SAMPLE_RATE", "524288")],
    );
    assert!(stdout.contains("done"), "{stdout}");
}
