//! Profiles without symbols (`HEAPPROF_SYMBOLIZE=off`, `?symbolize=0`):
//! mappings with build IDs and addresses only, written without looking a
//! symbol up, so without the memory a lookup costs; `go tool pprof` given
//! the binary names their frames.
//!
//! Each scenario runs in a child process: the setting is read once, at
//! the first allocation, and a symbol lookup is cold only once per
//! process.

use heapprof_testkit::child::{is_child, printed_number, run_child};
use heapprof_testkit::process::{rss_bytes as rss, status_bytes};
use heapprof_testkit::profile::{decode, string};
use heapprof_testkit::tools::{go_available, go_pprof};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// What a cold symbol lookup allocates at least, in this test binary:
/// backtrace parses its debug info (tens of MiB), then lets it go.
const LOOKUP_BYTES_AT_LEAST: u64 = 4 << 20;

/// What a profile without symbols may allocate at most: the copy of the
/// site table, the message and its encoding, for the few hundred sites of
/// a test binary.
const BARE_PROFILE_BYTES_AT_MOST: u64 = 2 << 20;

/// How far a profile without symbols may raise the peak resident size:
/// the same build memory, with room for the noise of page accounting.
const BARE_PEAK_RSS_GROWTH_AT_MOST: u64 = 8 << 20;

/// The allocations the profiles show, from a function with a name to
/// find. Its own frame calls the formatter (no tail call, no closure), so
/// the name is that of a frame on every stack.
#[inline(never)]
fn keep_unsymbolized_strings(n: usize) -> Vec<String> {
    let mut kept = Vec::with_capacity(n);
    for i in 0..n {
        kept.push(format!("kept string number {i}"));
    }
    std::hint::black_box(&mut kept);
    kept
}

/// Bytes heapprof has allocated for itself, and the process's peak
/// resident size (`VmHWM`) since `reset_peak_rss`, in bytes.
fn own_allocated() -> u64 {
    heapprof::stats().profiler_allocated_bytes
}

fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// Sets the peak resident size to the current one (Linux: `5` to
/// `clear_refs`).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// What writing a profile with `write` cost: (heapprof's own bytes
/// allocated, peak resident growth).
fn cost_of(write: impl FnOnce() -> Vec<u8>) -> (u64, u64, Vec<u8>) {
    reset_peak_rss();
    let (own, resident) = (own_allocated(), rss());
    let body = write();
    (
        own_allocated() - own,
        peak_rss().saturating_sub(resident),
        body,
    )
}

/// Asserts `gz` is a profile without names: no functions, every location
/// an address in a mapping, the executable's first with its build ID.
fn assert_addresses_only(gz: &[u8]) {
    let p = decode(gz);
    assert!(!p.sample.is_empty(), "samples");
    assert!(p.function.is_empty(), "no functions: {:?}", p.function);
    assert!(
        p.location
            .iter()
            .all(|l| l.line.is_empty() && l.address != 0 && l.mapping_id != 0),
        "addresses in mappings, no lines"
    );
    let exe = &p.mapping[0];
    assert_eq!(
        string(&p, exe.filename),
        std::env::current_exe().unwrap().to_str().unwrap()
    );
    assert!(!string(&p, exe.build_id).is_empty(), "the build ID");
    assert!(p.mapping.iter().all(|m| !m.has_functions));
}

fn child_env_off() {
    let kept = keep_unsymbolized_strings(50_000);
    let (own, resident, gz) = cost_of(|| {
        let mut gz = Vec::new();
        heapprof::write_profile(&mut gz).unwrap();
        gz
    });
    assert_addresses_only(&gz);
    let text = {
        let mut t = Vec::new();
        heapprof::write_text_profile(&mut t).unwrap();
        String::from_utf8(t).unwrap()
    };
    assert!(!text.contains("keep_unsymbolized_strings"), "{text}");
    assert!(text.contains("\t?\n"), "{text}");
    let path = std::env::var("UNSYMBOLIZED_OUT").unwrap();
    std::fs::write(path, &gz).unwrap();
    println!("own_bytes={own} peak_rss_growth={resident}");
    drop(kept);
}

/// `HEAPPROF_SYMBOLIZE=off`: `write_profile` and the text profile name
/// nothing and look nothing up; `go tool pprof` with the binary names
/// the frames.
#[test]
fn symbolize_off_writes_addresses_that_pprof_names_from_the_binary() {
    if is_child() {
        return child_env_off();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.pb.gz");
    let (out, _) = run_child(
        "symbolize_off_writes_addresses_that_pprof_names_from_the_binary",
        &[
            ("HEAPPROF_SYMBOLIZE", "off"),
            ("HEAPPROF_SAMPLE_RATE", "4096"),
            ("HEAPPROF_SEED", "5"),
            ("UNSYMBOLIZED_OUT", path.to_str().unwrap()),
        ],
    );
    println!("{out}");
    let own = printed_number(&out, "own_bytes=") as u64;
    let resident = printed_number(&out, "peak_rss_growth=") as u64;
    assert!(
        resident < BARE_PEAK_RSS_GROWTH_AT_MOST,
        "a profile without symbols raised the peak resident size by {resident} bytes"
    );
    assert!(
        own < BARE_PROFILE_BYTES_AT_MOST,
        "a profile without symbols allocated {own} bytes"
    );
    if !go_available() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let top = go_pprof(&[
        "-top",
        "-sample_index=inuse_space",
        exe.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert!(
        // The Go distribution's pprof names frames by their DWARF names,
        // without the module path.
        top.contains("keep_unsymbolized_strings"),
        "pprof names the frames from the binary:\n{top}"
    );
    // Stacks start where the program entered heapprof: the frames of its
    // slow path (the sample's record, the unwinder) are in none.
    for own in ["capture", "alloc_sampled", "walk_frame_pointers"] {
        assert!(!top.contains(own), "{own} in a stack:\n{top}");
    }
}

fn child_query() {
    let kept = keep_unsymbolized_strings(50_000);
    let query = |q: &'static str| {
        move || {
            let r = heapprof::http::handle("/debug/pprof/heap", q);
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.body
        }
    };
    let (bare_own, bare_rss, gz) = cost_of(query("symbolize=0"));
    assert_addresses_only(&gz);
    let (named_own, named_rss, gz) = cost_of(query("symbolize=1"));
    let p = decode(&gz);
    assert!(
        p.function
            .iter()
            .any(|f| string(&p, f.name).contains("keep_unsymbolized_strings")),
        "symbolize=1 names the frames"
    );
    println!("bare_own={bare_own} bare_rss={bare_rss} named_own={named_own} named_rss={named_rss}");
    let bad = heapprof::http::handle("/debug/pprof/heap", "symbolize=maybe");
    assert_eq!(bad.status, 400);
    drop(kept);
}

/// `?symbolize=0` on the endpoint: addresses only, at a fraction of what
/// the same profile costs with names (which shows the measure would see
/// a lookup).
#[test]
fn symbolize_0_costs_no_lookup() {
    if is_child() {
        return child_query();
    }
    let (out, _) = run_child(
        "symbolize_0_costs_no_lookup",
        &[("HEAPPROF_SAMPLE_RATE", "4096"), ("HEAPPROF_SEED", "5")],
    );
    println!("{out}");
    let bare = printed_number(&out, "bare_own=") as u64;
    let named = printed_number(&out, "named_own=") as u64;
    let bare_rss = printed_number(&out, "bare_rss=") as u64;
    assert!(
        bare_rss < BARE_PEAK_RSS_GROWTH_AT_MOST,
        "?symbolize=0 raised the peak resident size by {bare_rss} bytes"
    );
    assert!(
        bare < BARE_PROFILE_BYTES_AT_MOST,
        "?symbolize=0 allocated {bare} bytes"
    );
    assert!(
        named > LOOKUP_BYTES_AT_LEAST,
        "the named profile's lookup allocated only {named} bytes: the measure cannot see one"
    );
}

fn child_malformed() {
    let kept = keep_unsymbolized_strings(50_000);
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    assert!(
        p.function
            .iter()
            .any(|f| string(&p, f.name).contains("keep_unsymbolized_strings")),
        "the default, on"
    );
    drop(kept);
}

/// A malformed value: one line on stderr, and the default (names).
#[test]
fn a_malformed_setting_is_reported_and_names_are_kept() {
    if is_child() {
        return child_malformed();
    }
    let (_, err) = run_child(
        "a_malformed_setting_is_reported_and_names_are_kept",
        &[
            ("HEAPPROF_SYMBOLIZE", "nope"),
            ("HEAPPROF_SAMPLE_RATE", "4096"),
        ],
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("HEAPPROF_SYMBOLIZE"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("\"nope\"") && lines[0].contains("using the default on"),
        "{}",
        lines[0]
    );
}
