//! A `fork` from inside the writer given to `write_profile`. The writer is
//! the program's code and runs outside heapprof's reentrancy guard, so
//! what it allocates is the program's memory, sampled like any other; the
//! fork handlers take and release that guard too, and must leave it as
//! they found it: released.

use std::io::{self, Write};
use std::sync::Mutex;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn allocation_in_the_writer() {
    let block = std::hint::black_box(vec![1u8; 1000]);
    KEPT.lock().unwrap().push(block);
}

/// Forks (the child exits at once) on its first write, then allocates on
/// every write.
struct ForkingWriter {
    writes: usize,
}

impl Write for ForkingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.writes == 0 {
            // SAFETY: the child only calls `_exit`; the parent waits for it.
            unsafe {
                let pid = libc::fork();
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    libc::_exit(0);
                }
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        self.writes += 1;
        allocation_in_the_writer();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_fork_inside_the_writer_leaves_its_allocations_sampled() {
    heapprof::set_sample_rate(1); // record every allocation that is not guarded
    let before = heapprof::snapshot();
    let mut writer = ForkingWriter { writes: 0 };
    heapprof::write_profile(&mut writer).unwrap();
    assert!(writer.writes > 1, "the test needs writes after the fork");
    let recorded = heapprof::snapshot()
        .delta(&before)
        .alloc_objects_in("allocation_in_the_writer");
    // One block per write (and the list's growth): every one sampled at
    // rate 1, after the fork too.
    assert!(
        recorded >= writer.writes as i64,
        "{recorded} allocations sampled in {} writes: the fork handlers left the guard held",
        writer.writes
    );
}
