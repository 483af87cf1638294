//! A service that installs heapprof in `main.rs` builds its unit tests with
//! that allocator, and its authors run them under Miri too
//! (`cargo +nightly miri test`). Miri runs no inline assembly and none of
//! the loader, signal and clock calls heapprof's recorder makes, so under
//! Miri heapprof's allocator only forwards: the fixture's
//! (tests/fixtures/miri_service) own code must run, and heapprof's checks
//! and profiles must say that nothing was recorded instead of passing.
//!
//! Needs the nightly toolchain's `miri` component. Without it the test says
//! so and skips, unless `HEAPPROF_REQUIRE_MIRI=1` (set by `.ci/run`, which
//! installs the component) makes that a failure.

use heapprof_testkit::child::without_heapprof_settings;
use std::path::Path;
use std::process::Command;

/// `rustup run nightly cargo …`: the nightly toolchain's cargo, whatever
/// toolchain runs this test.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("MIRIFLAGS")
        // The fixture lies under this repository's `.cargo/config.toml`;
        // its build flags are not the user's.
        .env("CARGO_ENCODED_RUSTFLAGS", "");
    cmd
}

fn miri_available() -> bool {
    let found = nightly_cargo()
        .args(["miri", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("HEAPPROF_REQUIRE_MIRI").is_none_or(|v| v != "1"),
            "HEAPPROF_REQUIRE_MIRI=1 but `rustup run nightly cargo miri --version` failed \
             (`rustup component add --toolchain nightly miri`)"
        );
        println!(
            "SKIPPED: no Miri (`rustup run nightly cargo miri --version` failed); install it with \
             `rustup component add --toolchain nightly miri`, or set HEAPPROF_REQUIRE_MIRI=1 to \
             make this a failure"
        );
    }
    found
}

#[test]
fn a_service_with_heapprof_installed_runs_its_unit_tests_under_miri() {
    if !miri_available() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("tests/fixtures/miri_service/Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("miri_service");
    let mut cmd = nightly_cargo();
    cmd.args(["miri", "test", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target);
    without_heapprof_settings(&mut cmd);
    let out = cmd.output().expect("running cargo miri");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    assert!(
        out.status.success(),
        "the fixture's tests failed under Miri:\n{stdout}\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    // Both tests ran; none was skipped or filtered out.
    for name in [
        "tests::the_programs_own_code_runs ... ok",
        "tests::heapprofs_checks_say_they_cannot_measure ... ok",
        "test result: ok. 2 passed; 0 failed; 0 ignored",
    ] {
        assert!(stdout.contains(name), "{name:?} missing:\n{stdout}");
    }
}
