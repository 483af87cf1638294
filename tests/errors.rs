//! Bad input gets a clear error and loses nothing: malformed environment
//! values are reported once on stderr and the default is used; a failing
//! writer gets `Err` and the next profile is whole; a profile written
//! while descriptors are used up loses its names, the next one does not.

use heapprof_testkit::child::{is_child, printed_number, run_child, run_child_in};
use heapprof_testkit::profile::{INUSE_OBJECTS, decode, flat, stack_names, take_profile};
use heapprof_testkit::proto;
use std::io::{self, Write};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// A writer that fails after `budget` bytes, at every call after; by
/// panicking if `panics`.
struct FailingWriter {
    budget: usize,
    panics: bool,
}

impl FailingWriter {
    fn new(budget: usize) -> FailingWriter {
        FailingWriter {
            budget,
            panics: false,
        }
    }

    fn panicking(budget: usize) -> FailingWriter {
        FailingWriter {
            budget,
            panics: true,
        }
    }
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            assert!(!self.panics, "the writer panics (test)");
            return Err(io::Error::other("disk full (test)"));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn failing_writer_gets_err_and_the_next_write_works() {
    heapprof::set_sample_rate(4096);
    let keep: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 1000]).collect();
    for budget in [0, 10, 100, 1000] {
        let err = heapprof::write_profile(FailingWriter::new(budget)).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
    let p = take_profile();
    assert!(!p.sample.is_empty());
    // The text format too, however far it got, and on a failing flush.
    for budget in [0, 10, 100, 1000] {
        let err = heapprof::write_text_profile(FailingWriter::new(budget)).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
    let err = heapprof::write_text_profile(FailingFlush(Vec::new())).unwrap_err();
    assert!(err.to_string().contains("flush failed"), "{err}");
    let mut text = Vec::new();
    heapprof::write_text_profile(&mut text).unwrap();
    assert!(text.starts_with(b"heap profile: "));
    drop(keep);
}

/// A writer's panic reaches the caller as one panic, which it can catch:
/// the gzip encoder writing the rest of the stream as it is dropped does
/// not call the writer again (a second panic would abort the process),
/// wherever the first one came (the first write, mid-way, the trailer).
#[test]
fn a_panicking_writer_panics_once_and_the_next_write_works() {
    let keep: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 1000]).collect();
    let mut whole = Vec::new();
    heapprof::write_profile(&mut whole).unwrap();
    for budget in [0, 10, 1000, whole.len().saturating_sub(4)] {
        let caught = std::panic::catch_unwind(|| {
            let _ = heapprof::write_profile(FailingWriter::panicking(budget));
        });
        assert!(
            caught.is_err(),
            "budget {budget}: the panic reaches the caller"
        );
        let caught = std::panic::catch_unwind(|| {
            let s = heapprof::snapshot();
            let _ = s.write_pprof(FailingWriter::panicking(budget));
        });
        assert!(
            caught.is_err(),
            "budget {budget}: the panic reaches the caller"
        );
    }
    let p = take_profile();
    assert!(!p.sample.is_empty());
    drop(keep);
}

/// A writer that is interrupted once (as a pipe or socket write is when a
/// signal arrives), at its `at`-th call of `write` or `flush`, and short:
/// it takes at most 100 bytes a call.
struct InterruptedOnce {
    at: usize,
    calls: usize,
    written: Vec<u8>,
}

impl InterruptedOnce {
    fn call(&mut self) -> io::Result<()> {
        self.calls += 1;
        if self.calls == self.at {
            return Err(io::ErrorKind::Interrupted.into());
        }
        Ok(())
    }
}

impl Write for InterruptedOnce {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.call()?;
        let n = buf.len().min(100);
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.call()
    }
}

/// An interrupted write is tried again, not reported: every format comes
/// out whole wherever the interruption falls.
#[test]
fn an_interrupted_writer_gets_the_whole_profile() {
    heapprof::set_sample_rate(4096);
    // 4 MB: well past the 1 MiB a peak needs, whatever the samples.
    let keep: Vec<Vec<u8>> = (0..4000).map(|_| vec![0u8; 1000]).collect();
    let snapshot = heapprof::snapshot();
    type Writes = fn(&heapprof::Snapshot, &mut InterruptedOnce) -> io::Result<()>;
    let formats: [(&str, Writes); 4] = [
        ("write_profile", |_, w| heapprof::write_profile(w)),
        ("write_peak_profile", |_, w| heapprof::write_peak_profile(w)),
        ("write_text_profile", |_, w| heapprof::write_text_profile(w)),
        ("Snapshot::write_pprof", |s, w| s.write_pprof(w)),
    ];
    for (name, write) in formats {
        for at in 1..40 {
            let mut w = InterruptedOnce {
                at,
                calls: 0,
                written: Vec::new(),
            };
            write(&snapshot, &mut w)
                .unwrap_or_else(|e| panic!("{name}, interrupted at call {at}: {e}"));
            if name == "write_text_profile" {
                assert!(w.written.starts_with(b"heap profile: "), "{name} at {at}");
            } else {
                let p = decode(&w.written);
                assert!(!p.sample.is_empty(), "{name} at {at}: no samples");
            }
        }
    }
    drop(keep);
}

/// A writer that accepts everything and fails on flush.
struct FailingFlush(Vec<u8>);

impl Write for FailingFlush {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("flush failed (test)"))
    }
}

const KEPT: usize = 500;

#[inline(never)]
fn kept_blocks() -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(KEPT);
    for i in 0..KEPT {
        v.push(vec![i as u8; 1000]);
    }
    v
}

/// This thread's samples as (stack, values), sorted: what two profiles of
/// the same heap must agree on. (The harness's main thread may allocate
/// meanwhile, so its samples are left out.)
fn samples(p: &proto::Profile) -> Vec<(Vec<String>, Vec<i64>)> {
    let mut v: Vec<_> = p
        .sample
        .iter()
        .map(|s| (stack_names(p, s), s.value.clone()))
        .filter(|(names, _)| {
            // The writers' own allocations are the program's, but not the
            // subject here.
            names
                .iter()
                .any(|n| n.contains("child_writer_fails_mid_way"))
                && !names.iter().any(|n| n.contains("ProgramWriter"))
        })
        .collect();
    v.sort();
    v
}

/// Child (at rate 1, so counts are exact): a reference profile, then
/// writes that fail a quarter, half and three quarters of the way, and on
/// the final flush (after the gzip trailer), then a profile that must
/// decode (gzip checks its CRC and length) and match the reference sample
/// for sample: this thread allocated nothing in between but heapprof's own
/// memory, which is not profiled, and the writers' buffers, left out.
#[test]
fn child_writer_fails_mid_way() {
    if !is_child() {
        return;
    }
    let kept = kept_blocks();
    let mut reference = Vec::new();
    heapprof::write_profile(&mut reference).unwrap();
    let n = reference.len();
    let budgets = [n / 4, n / 2, 3 * n / 4];
    let mut failures = [false; 4];
    for (i, &budget) in budgets.iter().enumerate() {
        failures[i] = heapprof::write_profile(FailingWriter::new(budget)).is_err();
    }
    failures[3] = heapprof::write_profile(FailingFlush(Vec::new())).is_err();
    let mut next = Vec::new();
    heapprof::write_profile(&mut next).unwrap();

    assert_eq!(failures, [true; 4], "each failing writer got Err");
    let (reference, next) = (decode(&reference), decode(&next));
    assert_eq!(
        flat(&next, "kept_blocks", INUSE_OBJECTS),
        KEPT as i64 + 1,
        "the blocks and the Vec holding them"
    );
    let (before, after) = (samples(&reference), samples(&next));
    assert!(!after.is_empty());
    assert_eq!(before, after);
    println!(
        "MIDWAY-OK: failed at {budgets:?} of {n} bytes and on flush; the next profile has the same {} samples from this thread",
        after.len()
    );
    drop(kept);
}

#[test]
fn a_write_that_fails_mid_way_leaves_the_next_one_complete() {
    let (stdout, _) = run_child(
        "child_writer_fails_mid_way",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    println!("{stdout}");
    assert!(
        stdout.contains("MIDWAY-OK"),
        "the child did not finish:\n{stdout}"
    );
}

/// Run in a child process with a given environment: reports the rate.
#[test]
fn child_reports_rate() {
    if is_child() {
        println!("rate={}", heapprof::sample_rate());
        println!("period={}", take_profile().period);
    }
}

/// With sampling off no peak is ever recorded, and the error says so
/// rather than that the heap is still small.
#[test]
fn without_sampling_the_missing_peak_is_put_down_to_it() {
    if is_child() {
        let held = std::hint::black_box(vec![1u8; 8 << 20]);
        let e = heapprof::write_peak_profile(Vec::new()).unwrap_err();
        println!("kind={:?} error={e}", e.kind());
        drop(held);
        return;
    }
    let (stdout, _) = run_child(
        "without_sampling_the_missing_peak_is_put_down_to_it",
        &[("HEAPPROF_SAMPLE_RATE", "0")],
    );
    assert!(
        stdout.contains("kind=NotFound") && stdout.contains("sampling is off (sample rate 0)"),
        "{stdout}"
    );
}

fn child_with_rate(value: &str) -> (usize, String) {
    let (stdout, stderr) = run_child("child_reports_rate", &[("HEAPPROF_SAMPLE_RATE", value)]);
    (printed_number(&stdout, "rate=") as usize, stderr)
}

#[test]
fn malformed_rates_are_reported_once_and_the_default_used() {
    for bad in [
        "abc",
        "-1",
        "99999999999999999999999",
        "12 parsecs",
        "1.5MiB",
        "5PiB",
    ] {
        let (rate, stderr) = child_with_rate(bad);
        assert_eq!(rate, 524288, "{bad:?} must fall back to the default");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
        assert_eq!(lines.len(), 1, "one line for {bad:?}, got {stderr:?}");
        assert!(
            lines[0].contains("HEAPPROF_SAMPLE_RATE") && lines[0].contains("524288"),
            "{}",
            lines[0]
        );
    }
    for (good, expected) in [
        ("2MiB", 2 << 20),
        ("64k", 65536),
        ("0", 0),
        ("1", 1),
        ("4096", 4096),
        // Set to nothing is unset: the default, silently.
        ("", 524288),
        ("  ", 524288),
    ] {
        let (rate, stderr) = child_with_rate(good);
        assert_eq!(rate, expected, "{good:?}");
        assert!(!stderr.contains("heapprof"), "{good:?} is valid: {stderr}");
    }
}

/// A variable heapprof does not read but that looks like one it does is
/// reported in one line naming the one meant; nothing is set by it.
#[test]
fn a_misspelled_variable_is_reported() {
    let (stdout, stderr) = run_child("child_reports_rate", &[("HEAPPROF_SAMPLERATE", "1")]);
    assert_eq!(printed_number(&stdout, "rate="), 524288);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("\"HEAPPROF_SAMPLERATE\"")
            && lines[0].contains("did you mean HEAPPROF_SAMPLE_RATE?"),
        "{}",
        lines[0]
    );
}

/// A name in one of heapprof's families of settings (`HEAPPROF_PYROSCOPE_`,
/// `HEAPPROF_DUMP_`) that is none of them is reported in one line listing
/// the family's settings, however unlike any of them it is.
#[test]
fn an_unknown_name_in_a_family_of_settings_is_reported() {
    let (_, stderr) = run_child(
        "child_reports_rate",
        &[
            ("HEAPPROF_PYROSCOPE_PERIOD", "5s"),
            ("HEAPPROF_DUMP_DIRECTORY", "/tmp"),
            ("HEAPPROF_OTHER_TOOL", "1"),
        ],
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"HEAPPROF_PYROSCOPE_PERIOD\"")
                && l.contains("its HEAPPROF_PYROSCOPE_ settings are URL, NAME, LABELS, EVERY,")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"HEAPPROF_DUMP_DIRECTORY\"")
                && l.contains("its HEAPPROF_DUMP_ settings are EVERY, EVERY_ALLOCATED,")),
        "{stderr}"
    );
}

/// A setting's name in another case is another variable: reported in one
/// line naming the one meant, and not read.
#[test]
fn a_setting_in_another_case_is_reported() {
    let (stdout, stderr) = run_child(
        "child_reports_rate",
        &[("HEAPPROF_sample_rate", "1"), ("heapprof_out", "x.pb.gz")],
    );
    assert_eq!(printed_number(&stdout, "rate="), 524288);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for meant in ["HEAPPROF_SAMPLE_RATE", "HEAPPROF_OUT"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("did you mean {meant}?"))),
            "{meant}: {stderr}"
        );
    }
}

/// A malformed URL is reported without the password it carries.
#[test]
fn a_malformed_url_is_reported_without_its_password() {
    let (_, stderr) = run_child(
        "child_reports_rate",
        &[(
            "HEAPPROF_PYROSCOPE_URL",
            "ftp://bob:PWSECRET77@127.0.0.1:1/ingest",
        )],
    );
    assert!(!stderr.contains("PWSECRET77"), "{stderr}");
    assert!(
        stderr.contains("ignoring HEAPPROF_PYROSCOPE_URL=\"ftp://…@127.0.0.1:1/ingest\""),
        "{stderr}"
    );
}

/// Every setting, set to nothing (`HEAPPROF_X= cmd`): taken as unset, with
/// nothing on stderr, and the defaults in force.
#[test]
fn empty_settings_are_unset_and_silent() {
    let names = [
        "HEAPPROF_SAMPLE_RATE",
        "HEAPPROF_OUT",
        "HEAPPROF_DUMP_EVERY",
        "HEAPPROF_DUMP_EVERY_ALLOCATED",
        "HEAPPROF_DUMP_INUSE_GROWTH",
        "HEAPPROF_MAX_SITES",
        "HEAPPROF_SEED",
        "HEAPPROF_PEAK_GROWTH",
        "HEAPPROF_UNWIND",
    ];
    let env: Vec<(&str, &str)> = names.iter().map(|&n| (n, "")).collect();
    let (stdout, stderr) = run_child("child_reports_rate", &env);
    assert_eq!(printed_number(&stdout, "rate="), 524288);
    assert!(!stderr.contains("heapprof"), "{stderr}");
}

/// A dump step of a few bytes (a unit left off) is raised to the smallest
/// step, said in one line each; a step at the smallest is taken as it is,
/// silently.
#[test]
fn tiny_dump_steps_are_raised_to_the_smallest() {
    let dir = tempfile::tempdir().unwrap();
    let (_, stderr) = run_child_in(
        Some(dir.path()),
        "child_reports_rate",
        &[
            ("HEAPPROF_DUMP_EVERY_ALLOCATED", "1024"),
            ("HEAPPROF_DUMP_INUSE_GROWTH", "1"),
        ],
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for (line, setting) in lines.iter().zip([
        "HEAPPROF_DUMP_EVERY_ALLOCATED=1024 bytes",
        "HEAPPROF_DUMP_INUSE_GROWTH=1 bytes",
    ]) {
        assert!(
            line.contains(setting) && line.contains("below the smallest step, 1 MiB"),
            "{line}"
        );
    }
    let (_, stderr) = run_child_in(
        Some(dir.path()),
        "child_reports_rate",
        &[("HEAPPROF_DUMP_EVERY_ALLOCATED", "1m")],
    );
    assert!(!stderr.contains("heapprof"), "{stderr}");
}

/// `usize::MAX` is a valid byte count but above what pprof's signed
/// `period` holds (and the sampler's "not read yet" marker): it is lowered
/// to the largest rate, `i64::MAX`, said in one line, and the rate in force
/// and the profile's period are that.
#[test]
fn the_largest_rate_is_not_the_unset_marker() {
    let (stdout, stderr) = run_child(
        "child_reports_rate",
        &[("HEAPPROF_SAMPLE_RATE", &usize::MAX.to_string())],
    );
    let largest = i64::MAX.to_string();
    assert!(stdout.contains(&format!("rate={largest}\n")), "{stdout}");
    assert!(stdout.contains(&format!("period={largest}\n")), "{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("HEAPPROF_SAMPLE_RATE") && lines[0].contains(&largest),
        "{}",
        lines[0]
    );
}

/// A malformed value of any size is echoed cut short, in one line, with
/// its length: for a setting with a default and for one that stays off.
#[test]
fn a_huge_malformed_value_is_echoed_cut_short() {
    let junk = format!("{}\n{}", "x".repeat(50_000), "y".repeat(50_000));
    for name in ["HEAPPROF_SAMPLE_RATE", "HEAPPROF_DUMP_EVERY"] {
        let (stdout, stderr) = run_child("child_reports_rate", &[(name, &junk)]);
        assert_eq!(printed_number(&stdout, "rate="), 524288, "{name}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
        assert_eq!(lines.len(), 1, "{name}: {} bytes of stderr", stderr.len());
        let line = lines[0];
        assert!(line.len() < 300, "{name}: a line of {} bytes", line.len());
        assert!(
            line.contains(name) && line.contains("xxxx") && line.contains("100001 bytes"),
            "{line}"
        );
        assert!(
            !stderr.contains("yyyy"),
            "{name}: the value is echoed in full"
        );
    }
}

/// The comment of profile `p` that says a lookup did not read the
/// executable, if it has one.
fn unreadable_hint(p: &proto::Profile) -> Option<&str> {
    p.comment
        .iter()
        .map(|&i| p.string_table[i as usize].as_str())
        .find(|c| c.contains("did not read the executable"))
}

/// 4 MiB the descriptor test holds, in a function of its own.
#[inline(never)]
fn held_while_descriptors_run_out() -> Vec<u8> {
    std::hint::black_box(vec![3u8; 4 << 20])
}

/// The child: a profile written while every descriptor is in use cannot
/// open the executable to name its frames; one written after some are
/// closed again names them.
#[test]
fn child_runs_out_of_descriptors() {
    if !is_child() {
        return;
    }
    let held = held_while_descriptors_run_out();
    let files = heapprof_testkit::process::use_up_descriptors();
    let name = "errors::held_while_descriptors_run_out";
    println!("without={}", heapprof::snapshot().inuse_bytes_in(name));
    // Each profile meanwhile looks the executable's addresses up again
    // and keeps nothing of what it found: the symbols kept stay put.
    let kept: Vec<usize> = (0..6)
        .map(
            |_| heapprof_testkit::profile::symbol_bytes(&heapprof_testkit::profile::take_profile()),
        )
        .collect();
    println!("kept_second={} kept_last={}", kept[1], kept[5]);
    // The profile says why its names are missing.
    let p = heapprof_testkit::profile::take_profile();
    let says = unreadable_hint(&p).is_some();
    println!("says_unreadable={}", u8::from(says));
    drop(files);
    println!("with={}", heapprof::snapshot().inuse_bytes_in(name));
    drop(held);
}

/// Running out of descriptors costs the profiles written meanwhile their
/// names, not every later profile (services run out in incidents, and
/// recover); those profiles, and stderr once, say why.
#[test]
fn names_come_back_when_descriptors_do() {
    let (stdout, stderr) = run_child(
        "child_runs_out_of_descriptors",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    assert_eq!(printed_number(&stdout, "without="), 0, "{stdout}");
    assert_eq!(printed_number(&stdout, "says_unreadable="), 1, "{stdout}");
    // Said once on stderr, however many profiles lost names.
    assert_eq!(
        stderr.matches("heapprof: cannot read").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        printed_number(&stdout, "kept_second="),
        printed_number(&stdout, "kept_last="),
        "{stdout}"
    );
    assert_eq!(printed_number(&stdout, "with="), 4 << 20, "{stdout}");
}

/// Asserts that a child printed each `field` (`name=`) with its value.
fn assert_printed(stdout: &str, stderr: &str, expected: &[(&str, i64)]) {
    for &(field, value) in expected {
        assert_eq!(
            printed_number(stdout, field),
            value,
            "{field}\n{stdout}\n{stderr}"
        );
    }
}

/// The MiB a hint says `RLIMIT_AS` left ("RLIMIT_AS leaves N MiB").
fn rlimit_as_left(hint: &str) -> Option<u64> {
    let (_, after) = hint.split_once("RLIMIT_AS leaves ")?;
    after.split_once(" MiB")?.0.parse().ok()
}

/// 4 MiB the address-space test holds, in a function of its own.
#[inline(never)]
fn held_while_address_space_runs_out() -> Vec<u8> {
    std::hint::black_box(vec![5u8; 4 << 20])
}

/// The child, under `RLIMIT_AS` just above what the process uses: with
/// 1 MiB left, `write_profile` refuses to build (an allocation failing in
/// the build would abort the program), and so it does, without aborting,
/// with that room used up to the last small block; with 40 MiB left, it builds, but
/// does not name frames (reading the executable's debug info would take
/// more), and says why; once the limit is raised, a profile names them.
#[test]
fn child_runs_out_of_address_space() {
    if !is_child() {
        return;
    }
    let held = held_while_address_space_runs_out();
    let name = "errors::held_while_address_space_runs_out";
    let mut refused = Vec::with_capacity(4 << 20);
    let mut profile = Vec::with_capacity(4 << 20);
    let mut filler: Vec<Vec<u8>> = Vec::with_capacity(1 << 16);
    let used = heapprof_testkit::process::limit_address_space_to_room(1 << 20);
    let tight = heapprof::write_profile(&mut refused).map_err(|e| e.kind());
    // Then with every block the allocator could still give taken, down to
    // the smallest: the refusal itself must allocate nothing.
    for size in [64 << 10, 4 << 10, 256, 16] {
        while filler.len() < filler.capacity() {
            let mut block = Vec::new();
            if block.try_reserve_exact(size).is_err() {
                break;
            }
            filler.push(block);
        }
    }
    let exhausted = heapprof::write_profile(&mut refused).map_err(|e| e.kind());
    drop(filler);
    heapprof_testkit::process::limit_address_space(used + (40 << 20));
    let without = heapprof::snapshot().inuse_bytes_in(name);
    let written = heapprof::write_profile(&mut profile).is_ok();
    heapprof_testkit::process::limit_address_space(libc::RLIM_INFINITY);
    let p = heapprof_testkit::profile::decode(&profile);
    // The limit left 40 MiB when it was set; the process maps or frees a
    // little before the lookup checks it.
    let says = unreadable_hint(&p)
        .and_then(rlimit_as_left)
        .is_some_and(|mib| (20..=41).contains(&mib));
    println!(
        "refused={} refused_bytes={} exhausted={}",
        u8::from(tight == Err(std::io::ErrorKind::OutOfMemory)),
        refused.len(),
        u8::from(exhausted == Err(std::io::ErrorKind::OutOfMemory)),
    );
    println!(
        "without={without} written={} says_unreadable={}",
        u8::from(written),
        u8::from(says)
    );
    println!("with={}", heapprof::snapshot().inuse_bytes_in(name));
    drop(held);
}

/// 4 MiB the cgroup test holds, in a function of its own.
#[inline(never)]
fn held_near_the_cgroup_limit() -> Vec<u8> {
    std::hint::black_box(vec![6u8; 4 << 20])
}

/// The fake cgroup's `memory.max`: 1 GiB.
const CGROUP_MAX: u64 = 1 << 30;

/// Writes the fake cgroup's usage: `memory.current` and, in `memory.stat`,
/// the page cache the kernel would drop first.
fn set_cgroup_usage(dir: &std::path::Path, current: u64, inactive_file: u64) {
    std::fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
    std::fs::write(
        dir.join("memory.stat"),
        format!("anon {current}\nactive_file 0\ninactive_file {inactive_file}\n"),
    )
    .unwrap();
}

/// The child, in a cgroup (`HEAPPROF_CGROUP_DIR`) whose `memory.max` is
/// 10 MiB away: the profile is written, but its frames are not named (the
/// lookup could take the process past the limit, where the kernel kills
/// it), and it says why. With 200 MiB of the usage page cache the kernel
/// drops first, the next profile names them.
#[test]
fn child_near_its_cgroup_limit() {
    if !is_child() {
        return;
    }
    let dir = std::path::PathBuf::from(std::env::var_os("HEAPPROF_CGROUP_DIR").unwrap());
    let held = held_near_the_cgroup_limit();
    let name = "errors::held_near_the_cgroup_limit";
    let mut profile = Vec::with_capacity(4 << 20);
    set_cgroup_usage(&dir, CGROUP_MAX - (10 << 20), 0);
    let written = heapprof::write_profile(&mut profile).is_ok();
    let without = heapprof::snapshot().inuse_bytes_in(name);
    let p = heapprof_testkit::profile::decode(&profile);
    let says = unreadable_hint(&p)
        .is_some_and(|h| h.contains("the cgroup's memory.max leaves 10 MiB, less than the 64 MiB"));
    set_cgroup_usage(&dir, CGROUP_MAX - (10 << 20), 200 << 20);
    println!(
        "written={} without={without} says_unreadable={}",
        u8::from(written),
        u8::from(says)
    );
    println!("with={}", heapprof::snapshot().inuse_bytes_in(name));
    drop(held);
}

/// The child, with a `HEAPPROF_MEMORY_LIMIT` its resident size is past:
/// its profile is written unnamed, and says why.
#[test]
fn child_past_its_configured_limit() {
    if !is_child() {
        return;
    }
    let held = held_near_the_cgroup_limit();
    let mut profile = Vec::new();
    let written = heapprof::write_profile(&mut profile).is_ok();
    let without = heapprof::snapshot().inuse_bytes_in("errors::held_near_the_cgroup_limit");
    let p = heapprof_testkit::profile::decode(&profile);
    let says = unreadable_hint(&p)
        .is_some_and(|h| h.contains("HEAPPROF_MEMORY_LIMIT leaves less than 1 MiB"));
    println!(
        "written={} without={without} says_unreadable={}",
        u8::from(written),
        u8::from(says)
    );
    drop(held);
}

/// `HEAPPROF_MEMORY_LIMIT` is a limit name lookups leave room under, as
/// a cgroup's is.
#[test]
fn names_wait_for_room_under_heapprof_memory_limit() {
    let (stdout, stderr) = run_child(
        "child_past_its_configured_limit",
        &[
            ("HEAPPROF_SAMPLE_RATE", "1"),
            ("HEAPPROF_MEMORY_LIMIT", "1MiB"),
        ],
    );
    assert_printed(
        &stdout,
        &stderr,
        &[("written=", 1), ("without=", 0), ("says_unreadable=", 1)],
    );
}

/// Names are not looked up where the lookup could take the process past
/// its cgroup's limit, and come back when there is room.
#[test]
fn names_wait_for_room_under_the_cgroup_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory.max"), format!("{CGROUP_MAX}\n")).unwrap();
    std::fs::write(dir.path().join("memory.high"), "max\n").unwrap();
    set_cgroup_usage(dir.path(), 0, 0);
    let (stdout, stderr) = run_child(
        "child_near_its_cgroup_limit",
        &[
            ("HEAPPROF_SAMPLE_RATE", "1"),
            ("HEAPPROF_CGROUP_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert_printed(
        &stdout,
        &stderr,
        &[
            ("written=", 1),
            ("without=", 0),
            ("says_unreadable=", 1),
            ("with=", 4 << 20),
        ],
    );
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("to name frames in it"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("(the cgroup's memory.max leaves 10 MiB, less than the 64 MiB a lookup"),
        "{stderr}"
    );
}

/// Running out of address space costs the profiles written meanwhile
/// their names, not every later one: what a lookup could not read is not
/// kept as "no name here".
#[test]
fn names_come_back_when_address_space_does() {
    let (stdout, stderr) = run_child(
        "child_runs_out_of_address_space",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    assert_printed(
        &stdout,
        &stderr,
        &[
            ("refused=", 1),
            ("refused_bytes=", 0),
            ("exhausted=", 1),
            ("without=", 0),
            ("written=", 1),
            ("says_unreadable=", 1),
            ("with=", 4 << 20),
        ],
    );
}

/// Set in a child whose descriptor 2 is closed at its first allocation.
const CLOSE_STDERR_FIRST: &str = "HEAPPROF_TEST_CLOSE_STDERR_FIRST";

/// Run by the dynamic loader before `main`: in a child started with
/// [`CLOSE_STDERR_FIRST`], closes descriptor 2 and allocates, so that the
/// program's first allocation finds no stderr (std then opens the null
/// device there, before `main`).
extern "C" fn close_stderr_at_the_first_allocation() {
    // SAFETY: the name is NUL-terminated, and no thread that could change
    // the environment exists yet; closing descriptor 2 in a child asked to
    // is the scenario.
    unsafe {
        if libc::getenv(c"HEAPPROF_TEST_CLOSE_STDERR_FIRST".as_ptr()).is_null() {
            return;
        }
        libc::close(2);
    }
    std::hint::black_box(Box::new(0u64));
}

#[used]
#[unsafe(link_section = ".init_array")]
static CLOSE_STDERR: extern "C" fn() = close_stderr_at_the_first_allocation;

/// Puts `file` at descriptor 2 as a program that closed its stderr and
/// opened a file of its own gets it, writes `DATA` there, then makes
/// heapprof report an error (a guard profile into a missing directory);
/// prints what the file holds then.
fn report_with_stderr_replaced(file: &std::path::Path, flags: libc::c_int) {
    let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    // SAFETY: closes this process's stderr, which nothing else in the
    // child uses; `path` is NUL-terminated.
    let fd = unsafe {
        libc::close(2);
        libc::open(path.as_ptr(), flags | libc::O_CREAT, 0o600)
    };
    assert_eq!(fd, 2, "the lowest free descriptor");
    // SAFETY: writes 4 bytes from a live buffer.
    assert_eq!(unsafe { libc::write(2, b"DATA".as_ptr().cast(), 4) }, 4);
    drop(heapprof::ProfileGuard::new(
        "/nonexistent-heapprof-dir/guard.pb.gz",
    ));
    let held = std::fs::read_to_string(file).unwrap();
    println!("HELD={held:?}");
}

#[test]
fn child_stderr_taken_by_a_data_file() {
    if is_child() {
        let dir = tempfile::tempdir().unwrap();
        report_with_stderr_replaced(&dir.path().join("data.db"), libc::O_RDWR);
    }
}

#[test]
fn child_stderr_replaced_by_a_log() {
    if is_child() {
        let dir = tempfile::tempdir().unwrap();
        report_with_stderr_replaced(&dir.path().join("app.log"), libc::O_WRONLY | libc::O_APPEND);
    }
}

/// A program that closes its stderr and opens a file of its own gets that
/// file at descriptor 2: heapprof writes none of its messages into it,
/// whether stderr was open at the first allocation or not. A log the
/// program puts there (open for appending) gets them.
#[test]
fn messages_go_to_stderr_not_to_a_file_in_its_place() {
    let (stdout, _) = run_child("child_stderr_taken_by_a_data_file", &[]);
    assert!(stdout.contains("HELD=\"DATA\""), "{stdout}");
    // Closed when first looked at, descriptor 2 names no file to write to.
    let closed = [(CLOSE_STDERR_FIRST, "1")];
    let (stdout, _) = run_child("child_stderr_taken_by_a_data_file", &closed);
    assert!(stdout.contains("HELD=\"DATA\""), "{stdout}");
    let (stdout, _) = run_child("child_stderr_replaced_by_a_log", &[]);
    assert!(
        stdout.contains("HELD=\"DATAheapprof: could not write the guard profile"),
        "{stdout}"
    );
}
