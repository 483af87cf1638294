//! A program that calls heapprof without installing it as the global
//! allocator gets a clear error, not an empty profile, and a memory
//! assertion that cannot measure anything fails instead of passing.

#[test]
fn write_profile_says_the_allocator_is_missing() {
    let _some_allocation = vec![0u8; 1 << 20];
    let err = heapprof::write_profile(Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert!(err.to_string().contains("#[global_allocator]"), "{err}");
}

#[inline(never)]
fn keeps_a_mebibyte() -> Vec<u8> {
    std::hint::black_box(vec![1u8; 1 << 20])
}

/// Without heapprof installed the snapshot is empty, so "at most 0 bytes"
/// would hold for code that plainly keeps 1 MiB: the assertion must panic,
/// and say why.
#[test]
fn the_assertion_panics_when_nothing_is_recorded() {
    let before = heapprof::snapshot();
    let kept = keeps_a_mebibyte();
    let grown = heapprof::snapshot().delta(&before);
    let outcome = std::panic::catch_unwind(|| {
        grown.assert_inuse_at_most("not_installed::keeps_a_mebibyte", 0)
    });
    drop(kept);
    let payload = outcome.expect_err("the assertion passed without heapprof installed");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("not this program's global allocator")
            && message.contains("#[global_allocator]"),
        "{message}"
    );
}

/// The flame graph of the empty snapshot is still an SVG, one that says
/// why it is empty.
#[cfg(feature = "flamegraph")]
#[test]
fn flamegraph_says_the_allocator_is_missing() {
    let _some_allocation = std::hint::black_box(vec![0u8; 1 << 20]);
    let mut svg = Vec::new();
    heapprof::snapshot()
        .write_flamegraph(&mut svg)
        .expect("an empty snapshot's flame graph is written, not an error");
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert!(
        svg.contains("No samples.")
            && svg.contains("not this program&apos;s global allocator")
            && svg.contains("#[global_allocator]"),
        "{svg}"
    );
    let mut reader = quick_xml::Reader::from_str(&svg);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML: {e}\n{svg}"),
        }
    }
}

/// What `snapshot()` and `stats()` are documented to return when heapprof
/// is not installed: nothing recorded, every counter zero.
#[test]
fn snapshot_and_stats_are_empty() {
    let _some_allocation = std::hint::black_box(vec![0u8; 1 << 20]);
    let s = heapprof::snapshot();
    assert!(s.sites().is_empty(), "{s:?}");
    assert_eq!(s.total_inuse_bytes(), 0);
    assert_eq!(heapprof::stats(), heapprof::Stats::default());
}

/// Without heapprof installed nothing is counted: `measure` gives zeros,
/// and its assertions, which zeros would pass, panic instead and say why.
#[test]
fn measure_assertions_panic_when_nothing_is_counted() {
    let (kept, m) = heapprof::measure(keeps_a_mebibyte);
    assert_eq!((m.allocations, m.allocated_bytes, m.peak_bytes), (0, 0, 0));
    drop(kept);
    let message = |f: &dyn Fn()| {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("the assertion passed without heapprof installed");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    };
    for msg in [
        message(&|| m.assert_allocations_at_most(0)),
        message(&|| m.assert_peak_at_most(0)),
        message(&|| m.assert_no_growth()),
        message(&|| heapprof::assert_no_leak(1, 1, keeps_a_mebibyte)),
    ] {
        assert!(msg.contains("#[global_allocator]"), "{msg}");
    }
}

/// A guard's profile and a series are refused as `write_profile` is: an
/// empty profile would read as a program that allocates nothing.
#[test]
fn guard_and_series_say_the_allocator_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heap.pb.gz");
    let err = heapprof::ProfileGuard::new(&path)
        .finish()
        .expect_err("a guard wrote a profile without heapprof installed");
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert!(err.to_string().contains("#[global_allocator]"), "{err}");
    let err = heapprof::AutoDump::new(&path)
        .every(std::time::Duration::from_secs(1))
        .start()
        .expect_err("a series started without heapprof installed");
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert!(err.to_string().contains("#[global_allocator]"), "{err}");
    assert!(!path.exists(), "a file was written");
}
