//! A set-user-ID program takes no setting from its environment: whoever
//! runs it chose that environment, and `HEAPPROF_OUT` would otherwise have
//! heapprof replace any file with the program's privileges. Runs a
//! set-user-ID-root copy of this test binary as `nobody`, which needs root
//! (CI runs as root and sets `HEAPPROF_REQUIRE_ROOT=1`).

use heapprof_testkit::child::{CHILD_VAR, is_child};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The user the copy runs as.
const NOBODY: u32 = 65534;

/// Child: says whether it runs set-user-ID, and allocates past the peak
/// profile's threshold, so that `HEAPPROF_OUT`, if taken, writes two files.
#[test]
fn child_runs_set_user_id() {
    if !is_child() {
        return;
    }
    // SAFETY: neither call has preconditions.
    let (secure, euid) = unsafe { (libc::getauxval(libc::AT_SECURE), libc::geteuid()) };
    println!("secure={secure} euid={euid}");
    std::hint::black_box(vec![1u8; 2 << 20]);
}

#[test]
fn set_user_id_programs_ignore_heapprof_variables() {
    if !heapprof_testkit::process::runs_as_root("making a set-user-ID-root binary") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("heapprof-setuid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("setuid-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let secret = dir.join("root-only");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = secret.join("important.conf");
    std::fs::write(&target, "keep\n").unwrap();

    let out = Command::new(&exe)
        .args([
            "--exact",
            "child_runs_set_user_id",
            "--nocapture",
            "--test-threads=1",
        ])
        // Only these: the stderr line names the first HEAPPROF_ variable
        // heapprof reads that is set.
        .env_clear()
        .env(CHILD_VAR, "1")
        .env("HEAPPROF_OUT", &target)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("secure=1 euid=0"),
        "the copy did not run set-user-ID root (a nosuid mount?):\n{stdout}"
    );
    let files: Vec<_> = std::fs::read_dir(&secret)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"keep\n",
        "the file is untouched"
    );
    assert_eq!(files.len(), 1, "nothing written beside it: {files:?}");
    assert!(
        stderr.contains("heapprof: ignoring HEAPPROF_OUT"),
        "one line says why:\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
