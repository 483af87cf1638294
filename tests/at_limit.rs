//! Profiles written as memory nears its limit (`HEAPPROF_DUMP_AT_LIMIT`,
//! `AutoDump::at_limit`), against a cgroup directory the test writes
//! (`HEAPPROF_CGROUP_DIR`) and against `HEAPPROF_MEMORY_LIMIT`.
//!
//! Each scenario runs in a child process (this binary re-run with
//! `HEAPPROF_TEST_CHILD=<scenario>`), since the settings are read when the
//! process starts. In the cgroup scenarios the child plays the kernel: it
//! grows its heap and writes `memory.current` to match.

use heapprof_testkit::child::run_child;
use heapprof_testkit::profile::{INUSE_SPACE, cum, decode, string};
use heapprof_testkit::proto;
use heapprof_testkit::tools::{go_available, go_pprof};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The fake cgroup's `memory.max`.
const LIMIT: u64 = 100 << 20;
const MIB: usize = 1 << 20;
/// How long a child waits for a file it expects (a loaded machine, a
/// first symbolization in a debug build).
const PATIENCE: Duration = Duration::from_secs(30);
/// What the library's `REARM_PERIOD` is documented to be.
const REARM_PERIOD: Duration = Duration::from_secs(5);

/// Runs `child_scenarios` in a child process, as `scenario`; returns its
/// stdout and stderr.
fn child(scenario: &str, env: &[(&str, &str)]) -> (String, String) {
    let env: Vec<(&str, &str)> = [("HEAPPROF_TEST_CHILD", scenario)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    run_child("child_scenarios", &env)
}

/// A fake cgroup directory with `memory.max` = [`LIMIT`] and nothing in
/// use.
fn fake_cgroup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory.max"), format!("{LIMIT}\n")).unwrap();
    std::fs::write(dir.path().join("memory.high"), "max\n").unwrap();
    set_current(dir.path(), 0);
    dir
}

/// Writes `memory.current` whole (a reader never sees it half written).
fn set_current(cgroup: &Path, bytes: u64) {
    let tmp = cgroup.join(".memory.current.tmp");
    std::fs::write(&tmp, format!("{bytes}\n")).unwrap();
    std::fs::rename(&tmp, cgroup.join("memory.current")).unwrap();
}

/// `percent` % of [`LIMIT`] in use.
fn set_percent(cgroup: &Path, percent: u64) {
    set_current(cgroup, LIMIT * percent / 100);
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is set")))
}

/// Waits until `ready` holds; panics after [`PATIENCE`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_file(path: &Path) {
    wait_until(&path.display().to_string(), || path.exists());
}

/// The heap the cgroup scenarios hold: whole MiB blocks.
#[inline(never)]
fn hold_mib(held: &mut Vec<Vec<u8>>, total_mib: usize) {
    while held.len() < total_mib {
        held.push(std::hint::black_box(vec![1u8; MIB]));
    }
}

/// The file's inode: a rewrite (a rename over it) changes it.
fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// The children's side.
#[test]
fn child_scenarios() {
    let scenario = std::env::var("HEAPPROF_TEST_CHILD").unwrap_or_default();
    match scenario.as_str() {
        "thresholds" => {
            let cgroup = env_path("HEAPPROF_CGROUP_DIR");
            let out = env_path("HEAPPROF_OUT");
            let dir = out.parent().unwrap();
            let mut held = Vec::new();
            // Names are looked up while the cgroup has room for it: at
            // 80 % of this small limit it has too little, and a profile
            // written there names only frames named before.
            let rate = heapprof::sample_rate();
            heapprof::set_sample_rate(1); // the first block, sampled for sure
            hold_mib(&mut held, 1);
            heapprof::set_sample_rate(rate);
            heapprof::write_profile(std::io::sink()).unwrap();
            for percent in [50, 70, 85] {
                hold_mib(&mut held, LIMIT as usize / MIB * percent / 100);
                set_percent(&cgroup, percent as u64);
                std::thread::sleep(Duration::from_millis(100));
            }
            wait_for_file(&dir.join("heap.limit80.pb.gz"));
            assert!(
                !dir.join("heap.limit95.pb.gz").exists(),
                "95 % is written at 85 %"
            );
            for percent in [90, 97] {
                hold_mib(&mut held, LIMIT as usize / MIB * percent / 100);
                set_percent(&cgroup, percent as u64);
                std::thread::sleep(Duration::from_millis(100));
            }
            wait_for_file(&dir.join("heap.limit95.pb.gz"));
            // Long enough for more polls: nothing more may be written.
            std::thread::sleep(Duration::from_millis(300));
        }
        "back_and_forth" => {
            let cgroup = env_path("HEAPPROF_CGROUP_DIR");
            let out = env_path("HEAPPROF_OUT");
            let file = out.parent().unwrap().join("heap.limit80.pb.gz");
            let mut held = Vec::new();
            hold_mib(&mut held, 10);
            set_percent(&cgroup, 85);
            wait_for_file(&file);
            let first = (Instant::now(), inode(&file));
            // Back and forth across 80 % and far below it, for half the
            // re-arm period: one poll sees each side.
            while first.0.elapsed() < REARM_PERIOD / 2 {
                for percent in [50, 85] {
                    set_percent(&cgroup, percent);
                    std::thread::sleep(Duration::from_millis(80));
                }
            }
            assert_eq!(inode(&file), first.1, "rewritten within the re-arm period");
            // Held above it since: the dips re-armed it, once the period
            // has passed, and the crossing then is written.
            set_percent(&cgroup, 85);
            wait_until("the second profile at 80 %", || inode(&file) != first.1);
            let second = (Instant::now(), inode(&file));
            // Past the period again, a dip to 75 % is not far enough below.
            while second.0.elapsed() < REARM_PERIOD + Duration::from_millis(200) {
                set_percent(&cgroup, 75);
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(200));
            set_percent(&cgroup, 85);
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(inode(&file), second.1, "re-armed at 75 %");
            // 50 % is: the next crossing writes again. Held for 40 of the
            // watch's polls, so a loaded machine still lets one see it.
            set_percent(&cgroup, 50);
            std::thread::sleep(Duration::from_secs(2));
            set_percent(&cgroup, 85);
            wait_until("the third profile at 80 %", || inode(&file) != second.1);
            std::thread::sleep(Duration::from_millis(300));
        }
        "memory_limit" => {
            // `HEAPPROF_MEMORY_LIMIT` against the resident size: the child
            // grows and touches its heap until the profile appears.
            let out = env_path("HEAPPROF_OUT");
            let file = out.parent().unwrap().join("heap.limit50.pb.gz");
            let limit = 512 * MIB as u64;
            let target = limit / 2;
            let start = resident();
            println!("resident at start: {start}");
            assert!(start < target / 2, "the child starts too big: {start}");
            let mut held: Vec<Vec<u8>> = Vec::new();
            let deadline = Instant::now() + PATIENCE;
            loop {
                let before = resident();
                if file.exists() {
                    // Give or take what heapprof's own profile builds
                    // allocate and free meanwhile.
                    assert!(
                        before + 32 * MIB as u64 >= target,
                        "written at a resident size of {before}, below {target}"
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "no profile by {before} bytes");
                if before < target + 64 * MIB as u64 {
                    held.push(std::hint::black_box(vec![1u8; 8 * MIB]));
                }
                std::thread::sleep(Duration::from_millis(20));
                assert!(
                    !file.exists() || resident() + 64 * MIB as u64 >= target,
                    "written while the resident size was {}",
                    resident()
                );
            }
            println!("resident when written: {}", resident());
        }
        "retry" => {
            let cgroup = env_path("HEAPPROF_CGROUP_DIR");
            let out = env_path("HEAPPROF_OUT");
            let dir = out.parent().unwrap();
            let mut held = Vec::new();
            hold_mib(&mut held, 10);
            set_percent(&cgroup, 85);
            // Polls that find the threshold crossed and no directory.
            std::thread::sleep(Duration::from_millis(500));
            assert!(!dir.exists());
            std::fs::create_dir(dir).unwrap();
            wait_for_file(&dir.join("heap.limit80.pb.gz"));
        }
        "failures" => {
            let cgroup = env_path("HEAPPROF_CGROUP_DIR");
            let out = env_path("HEAPPROF_OUT");
            let dir = out.parent().unwrap();
            let mut held = Vec::new();
            hold_mib(&mut held, 10);
            // 50 % fails whole, then 80 % half: each is said.
            set_percent(&cgroup, 60);
            std::thread::sleep(Duration::from_millis(300));
            set_percent(&cgroup, 85);
            let live = dir.join("heap.limit80.pb.gz");
            wait_for_file(&live);
            let written = inode(&live);
            // Past the re-arm period: 50 % is tried again and fails again,
            // unsaid; 80 %'s live profile, written, is not written again.
            std::thread::sleep(REARM_PERIOD + Duration::from_millis(600));
            assert_eq!(inode(&live), written, "the live profile was rewritten");
        }
        "churn" => {
            // Samples (so the dump thread would start), then time for
            // many polls.
            let mut held = Vec::new();
            hold_mib(&mut held, 8);
            std::thread::sleep(Duration::from_millis(1000));
        }
        "api" => {
            let cgroup = env_path("HEAPPROF_CGROUP_DIR");
            let dir = env_path("HEAPPROF_TEST_OUT_DIR");
            let mut held = Vec::new();
            hold_mib(&mut held, 8);
            set_percent(&cgroup, 60);
            let watch = heapprof::AutoDump::new(dir.join("api.pb.gz"))
                .at_limit(&[0.5, 0.9])
                .start()
                .unwrap();
            wait_for_file(&dir.join("api.limit50.pb.gz"));
            watch.stop();
            set_percent(&cgroup, 95);
            std::thread::sleep(Duration::from_millis(500));
        }
        _ => {}
    }
}

/// The process's resident size.
fn resident() -> u64 {
    heapprof_testkit::process::rss_bytes()
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn read_profile(path: &Path) -> proto::Profile {
    decode(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn comments(p: &proto::Profile) -> Vec<String> {
    p.comment.iter().map(|&i| string(p, i).to_owned()).collect()
}

/// The lines the watcher prints when it writes.
fn written_lines(stderr: &str) -> Vec<&str> {
    threshold_lines(stderr)
        .into_iter()
        .filter(|l| l.contains(": wrote "))
        .collect()
}

/// The lines the watcher prints for a threshold crossed.
fn threshold_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("heapprof: memory at"))
        .collect()
}

/// `go tool pprof -top` reads `path` and shows `function`.
fn pprof_shows(path: &Path, function: &str) {
    if go_available() {
        let top = go_pprof(&["-top", path.to_str().unwrap()]);
        assert!(top.contains(function), "{}:\n{top}", path.display());
    }
}

/// The heap grows past 80 % and then 95 % of the cgroup's `memory.max`:
/// exactly the four profiles appear (beside `HEAPPROF_OUT`'s own two),
/// each written at its own moment, and pprof reads them all.
#[test]
fn each_threshold_is_written_once_as_the_heap_grows() {
    let cgroup = fake_cgroup();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let (_, stderr) = child(
        "thresholds",
        &[
            ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
            ("HEAPPROF_DUMP_AT_LIMIT", "80%,95%"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
        ],
    );
    let expected: BTreeSet<String> = [
        "heap.pb.gz",
        "heap.peak.pb.gz",
        "heap.limit80.pb.gz",
        "heap.limit80.peak.pb.gz",
        "heap.limit95.pb.gz",
        "heap.limit95.peak.pb.gz",
    ]
    .map(String::from)
    .into();
    assert_eq!(files_in(out.path()), expected, "{stderr}");
    let lines = written_lines(&stderr);
    assert_eq!(lines.len(), 2, "one line per threshold:\n{stderr}");
    assert!(
        lines[0]
            .contains("85.0% of the limit (the cgroup's memory.max, 104857600 bytes), past 80%")
            && lines[0].contains("heap.limit80.pb.gz\" and ")
            && lines[0].contains("heap.limit80.peak.pb.gz"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("97.0%") && lines[1].contains("past 95%"),
        "{}",
        lines[1]
    );

    for (threshold, percent, held_mib) in [(80, "85.0%", 85), (95, "97.0%", 97)] {
        let live_path = out.path().join(format!("heap.limit{threshold}.pb.gz"));
        let live = read_profile(&live_path);
        let said = comments(&live).join("\n");
        assert!(
            said.contains(&format!(
                "memory at {percent} of the limit, past {threshold}%"
            )) && said.contains("memory.current")
                && said.contains("of memory.max 104857600"),
            "{said}"
        );
        // Opens on pprof's default, the last type: what is live.
        assert_eq!(live.default_sample_type, 0);
        let last = live.sample_type.last().unwrap();
        assert_eq!(string(&live, last.r#type), "inuse_space");
        // Each 1 MiB block is sampled with probability p = 1 - e^(-MiB/rate)
        // and then weighs MiB/p, so the estimate of n blocks has a standard
        // deviation of MiB·sqrt(n(1-p)/p): 4.3 % of 85 MiB at the default
        // 512 KiB. Within six of them: with p = 0.86 the count of samples
        // is skewed, and five below fails 4e-6 of runs at 85 blocks and
        // 8e-6 at 97; six, under 1e-7.
        let held = cum(&live, "hold_mib", INUSE_SPACE) as f64;
        let truth = (held_mib * MIB) as f64;
        let p = 1.0 - (-(MIB as f64) / (512.0 * 1024.0)).exp();
        let sigma = MIB as f64 * (held_mib as f64 * (1.0 - p) / p).sqrt();
        assert!(
            (held - truth).abs() < 6.0 * sigma,
            "limit{threshold}: {held} bytes held, expected {truth} ± {}",
            6.0 * sigma
        );
        let peak_path = out.path().join(format!("heap.limit{threshold}.peak.pb.gz"));
        let peak = comments(&read_profile(&peak_path)).join("\n");
        assert!(
            peak.contains("peak profile") && peak.contains("at-limit profile"),
            "{peak}"
        );
        pprof_shows(&live_path, "hold_mib");
        pprof_shows(&peak_path, "hold_mib");
    }
}

/// Usage swinging across a threshold writes it once per re-arm period, and
/// only after falling well below it (at any time since it was written);
/// the file keeps its name.
#[test]
fn a_threshold_crossed_back_and_forth_is_not_rewritten_each_time() {
    let cgroup = fake_cgroup();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let (_, stderr) = child(
        "back_and_forth",
        &[
            ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
            ("HEAPPROF_DUMP_AT_LIMIT", "80%"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
        ],
    );
    assert_eq!(written_lines(&stderr).len(), 3, "{stderr}");
    let expected: BTreeSet<String> = [
        "heap.pb.gz",
        "heap.peak.pb.gz",
        "heap.limit80.pb.gz",
        "heap.limit80.peak.pb.gz",
    ]
    .map(String::from)
    .into();
    assert_eq!(files_in(out.path()), expected);
}

/// A threshold whose files could not be written (their directory not
/// there yet) is tried again once the re-arm period has passed, while
/// usage stays above it.
#[test]
fn a_threshold_that_failed_to_write_is_tried_again() {
    let cgroup = fake_cgroup();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("later").join("heap.pb.gz");
    let (_, stderr) = child(
        "retry",
        &[
            ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
            ("HEAPPROF_DUMP_AT_LIMIT", "80%"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
        ],
    );
    let failed = stderr
        .lines()
        .filter(|l| l.contains("past 80%: could not write its profile"))
        .count();
    assert_eq!(failed, 1, "{stderr}");
    assert_eq!(written_lines(&stderr).len(), 1, "{stderr}");
}

/// Each threshold says on stderr what it wrote or why it could not, even
/// after another threshold's failure: the live profile written beside a
/// peak profile that could not be is named, since that line is what a
/// container's log keeps after the kill.
#[test]
fn each_thresholds_failure_is_said_and_names_what_was_written() {
    let cgroup = fake_cgroup();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    // Names the watcher may not replace: directories.
    std::fs::create_dir(out.path().join("heap.limit50.pb.gz")).unwrap();
    std::fs::create_dir(out.path().join("heap.limit80.peak.pb.gz")).unwrap();
    let (_, stderr) = child(
        "failures",
        &[
            ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
            ("HEAPPROF_DUMP_AT_LIMIT", "50%,80%"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
            ("HEAPPROF_SAMPLE_RATE", "1"),
        ],
    );
    let lines = threshold_lines(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("past 50%: could not write its profile")
            && lines[0].ends_with("further failures at this threshold are not reported"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("past 80%: wrote ")
            && lines[1].contains("heap.limit80.pb.gz")
            && lines[1].contains("but could not write its peak profile")
            && !lines[1].contains("further failures"),
        "{stderr}"
    );
    assert!(out.path().join("heap.limit80.peak.pb.gz").is_dir());
}

/// With no cgroup limit, `HEAPPROF_MEMORY_LIMIT` is watched against the
/// resident size.
#[test]
fn memory_limit_is_watched_against_the_resident_size() {
    let no_cgroup = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let (stdout, stderr) = child(
        "memory_limit",
        &[
            ("HEAPPROF_CGROUP_DIR", no_cgroup.path().to_str().unwrap()),
            ("HEAPPROF_MEMORY_LIMIT", "512MiB"),
            ("HEAPPROF_DUMP_AT_LIMIT", "50"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
        ],
    );
    println!("{stdout}");
    let lines = written_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("of the limit (HEAPPROF_MEMORY_LIMIT, 536870912 bytes), past 50%"),
        "{}",
        lines[0]
    );
    let path = out.path().join("heap.limit50.pb.gz");
    let said = comments(&read_profile(&path)).join("\n");
    let resident: u64 = said
        .split("resident set ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resident size in {said}"));
    assert!(
        (256 << 20..512 << 20).contains(&resident),
        "written at a resident size of {resident}: {said}"
    );
    pprof_shows(&path, "child_scenarios");
}

/// A malformed threshold list is one line on stderr, and the feature is
/// off: a cgroup at 99 % gets no profile.
#[test]
fn malformed_thresholds_are_one_line_and_nothing_is_watched() {
    let cgroup = fake_cgroup();
    set_percent(cgroup.path(), 99);
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let long = "9".repeat(300);
    for bad in ["0.8,0.95", "80%,,95%", "banana", "150%", long.as_str()] {
        let (_, stderr) = child(
            "churn",
            &[
                ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
                ("HEAPPROF_DUMP_AT_LIMIT", bad),
                ("HEAPPROF_OUT", base.to_str().unwrap()),
                // At 99 % of the limit the exit profile would say that it
                // names no frames: this test counts lines of another kind.
                ("HEAPPROF_SYMBOLIZE", "off"),
            ],
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapprof")).collect();
        assert_eq!(lines.len(), 1, "{bad}: {stderr}");
        assert!(
            lines[0].starts_with("heapprof: ignoring HEAPPROF_DUMP_AT_LIMIT=")
                && lines[0].contains("such as 80%,95%; leaving it off")
                && lines[0].len() < 250,
            "{}",
            lines[0]
        );
        let expected: BTreeSet<String> = ["heap.pb.gz", "heap.peak.pb.gz"].map(String::from).into();
        assert_eq!(files_in(out.path()), expected, "{bad}");
    }
}

/// A malformed `HEAPPROF_MEMORY_LIMIT`, or one below 1 MiB (a unit left
/// off: every process is larger), is one line on stderr; the cgroup's
/// limit is still watched.
#[test]
fn a_malformed_memory_limit_is_one_line_and_the_cgroup_still_counts() {
    for bad in ["lots", "1"] {
        let cgroup = fake_cgroup();
        set_percent(cgroup.path(), 99);
        let out = tempfile::tempdir().unwrap();
        let base = out.path().join("heap.pb.gz");
        let (_, stderr) = child(
            "churn",
            &[
                ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
                ("HEAPPROF_DUMP_AT_LIMIT", "80%"),
                ("HEAPPROF_MEMORY_LIMIT", bad),
                ("HEAPPROF_OUT", base.to_str().unwrap()),
            ],
        );
        let ignored: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("HEAPPROF_MEMORY_LIMIT"))
            .collect();
        assert_eq!(ignored.len(), 1, "{stderr}");
        assert!(
            ignored[0].starts_with(&format!(
                "heapprof: ignoring HEAPPROF_MEMORY_LIMIT=\"{bad}\""
            )) && ignored[0].contains("1 MiB or more")
                && ignored[0].ends_with("watching the cgroup's limit or physical memory instead"),
            "{}",
            ignored[0]
        );
        assert!(out.path().join("heap.limit80.pb.gz").exists(), "{stderr}");
    }
}

/// `AutoDump::at_limit` works without the variable, and `stop` ends it.
#[test]
fn the_api_watches_until_stopped() {
    let cgroup = fake_cgroup();
    let out = tempfile::tempdir().unwrap();
    let (_, stderr) = child(
        "api",
        &[
            ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
            ("HEAPPROF_TEST_OUT_DIR", out.path().to_str().unwrap()),
        ],
    );
    let expected: BTreeSet<String> = ["api.limit50.pb.gz", "api.limit50.peak.pb.gz"]
        .map(String::from)
        .into();
    assert_eq!(files_in(out.path()), expected, "{stderr}");
}

#[test]
fn bad_fractions_are_refused() {
    for bad in [&[][..], &[0.0], &[0.8, 1.5], &[f64::NAN], &[0.005]] {
        let e = heapprof::AutoDump::new("/nonexistent-heapprof-dir/x.pb.gz")
            .at_limit(bad)
            .start()
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}: {e}");
        assert!(e.to_string().contains("from 0.01 to 1"), "{e}");
    }
}

/// Files of the cgroup directory that are not regular files (a FIFO where
/// `memory.high` and `memory.events` should be, `/dev/zero` for
/// `memory.stat`) are read as unreadable: the watch neither blocks on
/// them nor reads without end, and the regular ones still count.
#[test]
fn cgroup_files_that_are_not_regular_files_are_not_read() {
    let _watchdog = heapprof_testkit::watchdog::watchdog(
        "cgroup_files_that_are_not_regular_files_are_not_read",
        Duration::from_secs(120),
    );
    let cgroup = fake_cgroup();
    set_percent(cgroup.path(), 85);
    for fifo in ["memory.high", "memory.events"] {
        let path = cgroup.path().join(fifo);
        std::fs::remove_file(&path).ok();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    std::os::unix::fs::symlink("/dev/zero", cgroup.path().join("memory.stat")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("heap.pb.gz");
    let started = Instant::now();
    let (_, stderr) = child(
        "churn",
        &[
            ("HEAPPROF_CGROUP_DIR", cgroup.path().to_str().unwrap()),
            ("HEAPPROF_DUMP_AT_LIMIT", "80%"),
            ("HEAPPROF_OUT", base.to_str().unwrap()),
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(
        files_in(out.path()).contains("heap.limit80.pb.gz"),
        "{:?}\n{stderr}",
        files_in(out.path())
    );
}
