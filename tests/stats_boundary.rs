//! What crosses between heapprof and the program is the program's at
//! both ends, so `stats()` balances: the errors of a writer that fails
//! (made by the program, and handed back to it), the message of a failed
//! `measure` assertion (made by heapprof, freed by whoever catches the
//! panic), a flame graph written into the program's `Vec`, the settings
//! and the errors of a profile guard and of a server.
//!
//! Its own `main` (`harness = false`): no harness thread allocates while
//! it counts.

use heapprof_testkit::check::stats_counts;
use std::io;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// A writer that fails every write, with an error that holds memory.
struct Full;

impl io::Write for Full {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full (test)"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` ten times, after three runs that fill heapprof's caches, and
/// asserts that what the program allocated in them it freed.
fn balanced(what: &str, f: impl Fn()) {
    for _ in 0..3 {
        f();
    }
    let before = stats_counts();
    for _ in 0..10 {
        f();
    }
    let after = stats_counts();
    let d: Vec<u64> = (0..4).map(|i| after[i] - before[i]).collect();
    assert!(
        d[0] == d[2] && d[1] == d[3],
        "{what}: the program allocated {} blocks ({} bytes) and freed {} ({} bytes)",
        d[0],
        d[1],
        d[2],
        d[3]
    );
    println!(
        "{what}: {} blocks allocated and freed, {} bytes",
        d[0], d[1]
    );
}

fn main() {
    let kept: Vec<Vec<u8>> = (0..20).map(|i| vec![1u8; 100_000 + i]).collect();

    let err = heapprof::write_profile(Full).unwrap_err();
    assert_eq!(
        err.to_string(),
        "disk full (test)",
        "the writer's own error"
    );
    balanced("write_profile into a failing writer", || {
        drop(heapprof::write_profile(Full));
    });
    balanced("write_text_profile into a failing writer", || {
        drop(heapprof::write_text_profile(Full));
    });
    let snapshot = heapprof::snapshot();
    balanced("Snapshot::write_pprof into a failing writer", || {
        drop(snapshot.write_pprof(Full));
    });
    balanced("a flame graph into the program's Vec", || {
        let mut svg = Vec::new();
        snapshot.write_flamegraph(&mut svg).unwrap();
        assert!(svg.starts_with(b"<?xml"));
    });
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    balanced("a failed measure assertion, caught", || {
        let (_, m) = heapprof::measure(|| vec![0u8; 100]);
        let caught = std::panic::catch_unwind(|| m.assert_allocations_at_most(0));
        assert!(caught.is_err());
    });
    std::panic::set_hook(hook);
    let dir = std::env::temp_dir().join(format!("heapprof-stats-boundary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("guard.pb.gz");
    balanced("a profile guard's profile, written", || {
        heapprof::ProfileGuard::new(&file).finish().unwrap();
    });
    balanced("a profile guard's profile, failing (a directory)", || {
        assert!(heapprof::ProfileGuard::new(&dir).finish().is_err());
    });
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    balanced("a server on an address in use", || {
        let e = heapprof::http::Server::new()
            .serve(addr.as_str())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    });
    drop(taken);
    std::fs::remove_dir_all(&dir).unwrap();
    // The flame graph's bytes are the program's: counted when written.
    let before = stats_counts();
    let mut svg = Vec::new();
    snapshot.write_flamegraph(&mut svg).unwrap();
    let after = stats_counts();
    assert!(
        after[1] - before[1] >= svg.capacity() as u64,
        "a flame graph of {} bytes added {} to the program's",
        svg.capacity(),
        after[1] - before[1]
    );
    drop((svg, snapshot, kept));
}
