//! A crate that depends on heapprof (tests/fixtures/userapp) gets the same
//! bytes per function whichever way it is built: debug and release, with
//! and without frame pointers. A debug build keeps no frame pointers in the
//! user's code while the standard library does, which is where a
//! frame-pointer walk skips the user's frames and a heap assertion passes
//! that must fail.
//!
//! Each build runs the fixture's own `cargo test`, which prints what
//! heapprof saw; its test also asserts that an assertion on the cache
//! fails.

use heapprof_testkit::child::without_heapprof_settings;
use std::path::Path;
use std::process::Command;

struct Seen {
    expected: u64,
    expected_pages: u64,
    build: u64,
    page_new: u64,
    /// The bytes `userapp::body_lengths` (inlined) allocated, and what it
    /// says it holds.
    expected_lengths: u64,
    lengths: u64,
    /// Whether the text profile names `userapp::PageCache::build` so.
    build_named: bool,
    unwinder: String,
}

fn run_fixture(release: bool, frame_pointers: bool) -> Seen {
    run_fixture_with(release, frame_pointers, &[]).0
}

/// As [`run_fixture`], with more environment; also returns the fixture
/// test's stderr.
fn run_fixture_with(release: bool, frame_pointers: bool, env: &[(&str, &str)]) -> (Seen, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("tests/fixtures/userapp/Cargo.toml");
    // A build setting from the environment builds in a directory of its
    // own, so that the other builds are not made again after it.
    let mut target_name = String::from("userapp");
    for (k, v) in env
        .iter()
        .filter(|(k, _)| k.starts_with("CARGO_PROFILE_") || *k == "CARGO_ENCODED_RUSTFLAGS")
    {
        target_name.push_str(&format!("-{k}-{v}"));
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join(target_name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("test")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--nocapture"]);
    // The user's flags, whatever this repository's `.cargo/config.toml`
    // says (the fixture lies under it): this variable overrides it.
    let flags = if frame_pointers {
        "-Cforce-frame-pointers=yes"
    } else {
        ""
    };
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS");
    without_heapprof_settings(&mut cmd);
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("running cargo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the fixture's test failed (release={release}, frame_pointers={frame_pointers}):\n{stdout}\n{}",
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let field = |key: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .to_owned()
    };
    let number = |key: &str| field(key).parse::<u64>().unwrap();
    let seen = Seen {
        expected: number("EXPECTED="),
        expected_pages: number("EXPECTED_PAGES="),
        build: number("BUILD="),
        page_new: number("PAGE_NEW="),
        expected_lengths: number("EXPECTED_LENGTHS="),
        lengths: number("LENGTHS="),
        build_named: field("BUILD_NAMED=") == "true",
        unwinder: field("UNWINDER="),
    };
    (seen, stderr.into_owned())
}

#[test]
fn same_bytes_per_function_in_every_build() {
    let mut all = Vec::new();
    for release in [false, true] {
        for frame_pointers in [false, true] {
            let seen = run_fixture(release, frame_pointers);
            println!(
                "release={release} frame_pointers={frame_pointers}: expected {} build {} Page::new {} ({})",
                seen.expected, seen.build, seen.page_new, seen.unwinder
            );
            // Every byte the cache holds was allocated under
            // `PageCache::build`; the page bodies and titles under
            // `Page::new`, everything but the pages' own Vec.
            assert_eq!(
                seen.build, seen.expected,
                "release={release} fp={frame_pointers}"
            );
            assert_eq!(
                seen.page_new, seen.expected_pages,
                "release={release} fp={frame_pointers}"
            );
            assert_eq!(
                seen.lengths, seen.expected_lengths,
                "release={release} fp={frame_pointers}"
            );
            // The build really is the one named: without frame pointers
            // only DWARF can see the user's frames.
            assert_eq!(
                seen.unwinder.starts_with("frame pointers"),
                frame_pointers,
                "release={release} fp={frame_pointers}: {}",
                seen.unwinder
            );
            all.push(seen);
        }
    }
    for s in &all[1..] {
        assert_eq!((s.build, s.page_new), (all[0].build, all[0].page_new));
    }
}

/// Frame pointers forced on code built without them: one line on stderr
/// says so, and the stacks are DWARF's, with the user's frames.
#[test]
fn forced_frame_pointers_on_code_without_them_say_so() {
    let (seen, stderr) = run_fixture_with(false, false, &[("HEAPPROF_UNWIND", "frame-pointers")]);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("HEAPPROF_UNWIND=frame-pointers"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("using DWARF"), "{}", lines[0]);
    assert_eq!(seen.build, seen.expected);
    assert!(seen.unwinder.starts_with("DWARF"), "{}", seen.unwinder);
}

/// `debug = "line-tables-only"`, a common release setting, names the
/// user's functions in the debug info without their paths; their bytes
/// are still found under their full names, an inlined one's included, and
/// the fixture's assertions on them still fail.
#[test]
fn line_tables_only_builds_find_the_same_bytes_by_full_name() {
    let (seen, _) = run_fixture_with(
        true,
        false,
        &[("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only")],
    );
    assert!(seen.build_named);
    assert_eq!(seen.build, seen.expected);
    assert_eq!(seen.page_new, seen.expected_pages);
    assert_eq!(seen.lengths, seen.expected_lengths);
}

/// The same with the debug info in a `.dwp` package beside the binary
/// (`split-debuginfo = "packed"`), which backtrace reads: the functions
/// backtrace names by their short names get their paths from the
/// binary's symbol table.
#[test]
fn split_line_tables_only_builds_find_the_same_bytes_by_full_name() {
    let profile = [
        ("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only"),
        ("CARGO_PROFILE_RELEASE_SPLIT_DEBUGINFO", "packed"),
    ];
    let (seen, _) = run_fixture_with(true, false, &profile);
    assert!(seen.build_named);
    assert_eq!(seen.build, seen.expected);
    assert_eq!(seen.page_new, seen.expected_pages);
    assert_eq!(seen.lengths, seen.expected_lengths);
    // The build really put the test's debug info in a package.
    let deps = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!(
            "userapp-{}-{}-{}-{}",
            profile[0].0, profile[0].1, profile[1].0, profile[1].1
        ))
        .join("release/deps");
    let packages = std::fs::read_dir(&deps)
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("heap-") && name.ends_with(".dwp")
            })
        })
        .count();
    assert!(packages > 0, "no heap-*.dwp in {}", deps.display());
}

/// `cargo llvm-cov` builds with `-C instrument-coverage`, which mangles the
/// user's symbols in Rust's v0 scheme: the fixture's methods then demangle
/// as `<userapp::PageCache>::build`. Their bytes are still found under the
/// path the fixture gives (`userapp::PageCache::build`), and its assertion
/// on them still fails.
#[test]
fn coverage_builds_find_methods_by_their_path() {
    let counts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("userapp-coverage-counts");
    let counts = format!("{}/%p-%m.profraw", counts.display());
    let (seen, _) = run_fixture_with(
        false,
        false,
        &[
            ("CARGO_ENCODED_RUSTFLAGS", "-Cinstrument-coverage"),
            // The coverage counts go here, not into the fixture's folder.
            ("LLVM_PROFILE_FILE", &counts),
        ],
    );
    assert_eq!(seen.build, seen.expected);
    assert_eq!(seen.page_new, seen.expected_pages);
    assert_eq!(seen.lengths, seen.expected_lengths);
}
