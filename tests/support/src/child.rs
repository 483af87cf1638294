//! Child processes: the test binary re-run as a child, forked children waited for.
//!
//! A child runs one test of its binary with settings from its environment:
//! the way to test start-up, exit, and what heapprof reads at start.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The variable that marks a child started by [`run_child`].
pub const CHILD_VAR: &str = "HEAPPROF_TEST_CHILD";

/// Re-runs this test binary as a child process that runs only the test
/// named `test`, with `HEAPPROF_TEST_CHILD=1` and then `env` (which may
/// override it) in its environment. Returns the child's stdout and stderr;
/// panics, showing both, if it failed.
pub fn run_child(test: &str, env: &[(&str, &str)]) -> (String, String) {
    run_child_in(None, test, env)
}

/// [`run_child`] in the working directory `cwd`, if given. `env` may set
/// `HEAPPROF_TEST_CHILD` to a scenario's name (it is `1` otherwise).
pub fn run_child_in(cwd: Option<&Path>, test: &str, env: &[(&str, &str)]) -> (String, String) {
    run_child_of(&std::env::current_exe().unwrap(), cwd, test, env)
}

/// [`run_child_in`] with the test binary at `exe` (a copy of this one).
pub fn run_child_of(
    exe: &Path,
    cwd: Option<&Path>,
    test: &str,
    env: &[(&str, &str)],
) -> (String, String) {
    let mut child = with_runner(exe);
    child
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .envs(env.iter().copied());
    if let Some(dir) = cwd {
        child.current_dir(dir);
    }
    let out = child.output().expect("start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "child `{test}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// A command that runs the test binary `exe`: through the runner
/// `HEAPPROF_TEST_RUNNER` names, if set (words split on spaces: `qemu-aarch64
/// -L /usr/aarch64-linux-gnu` for a test binary of another architecture,
/// which this machine cannot start on its own), or directly.
pub fn with_runner(exe: &Path) -> Command {
    let runner = std::env::var("HEAPPROF_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(exe);
            command
        }
        None => Command::new(exe),
    }
}

/// Whether this process is a child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD_VAR).is_some()
}

/// The number a child printed right after `name` (e.g. `samples=`).
pub fn printed_number(stdout: &str, name: &str) -> i64 {
    let at = stdout
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {stdout}"))
        + name.len();
    let digits: String = stdout[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {name} in {stdout}"))
}

/// Waits for forked child `pid` to exit: its exit status, or why there is
/// none (killed by a signal, or still running after `limit`, in which case
/// it is killed and reaped).
pub fn wait_with_timeout(pid: libc::pid_t, limit: Duration) -> Result<i32, String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child, with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("child died: wait status {status:#x}"));
        }
        assert_eq!(r, 0, "waitpid failed: {}", std::io::Error::last_os_error());
        if start.elapsed() > limit {
            // SAFETY: signals our own child, then reaps it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "child did not finish within {limit:?}: deadlocked after fork"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Takes every `HEAPPROF_*` setting of this process out of `command`'s
/// environment: a child built or run as a user would (a fixture crate,
/// a host program) sees only the settings its test gives it.
pub fn without_heapprof_settings(command: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HEAPPROF_") {
            command.env_remove(k);
        }
    }
    command
}
