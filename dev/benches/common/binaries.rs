//! The configuration binaries (`benches/cfg_*.rs`) seen from outside:
//! finding the newest build of one, reading the figures it prints, and
//! running one as the `service` workload. Shared by the overhead driver
//! (`benches/overhead.rs`) and `tests/real_programs.rs`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// The newest executable `name-<hash>` in `dir`, if one is built.
pub fn newest(dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The number printed after `key` at the start of a line of `output`.
pub fn printed<T: std::str::FromStr>(output: &str, key: &str) -> Option<T> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|n| n.parse().ok())
}

/// A configuration binary running the `service` workload; killed on drop
/// unless [`Service::stop`] ended it.
pub struct Service {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// The loopback port it serves on.
    pub port: u16,
}

impl Service {
    /// Starts `binary service <scale>` with `env` and waits for its port.
    pub fn start(binary: &Path, scale: usize, env: &[(&str, &str)]) -> Service {
        let mut child = Command::new(binary)
            .args(["service", &scale.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} as the service: {e}", binary.display()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the service's port");
        let port = printed(&line, "port=")
            .unwrap_or_else(|| panic!("{} printed {line:?}, not port=N", binary.display()));
        Service {
            child,
            stdout,
            port,
        }
    }

    /// Closes the service's input, which ends it; returns what it printed
    /// after its port (its CPU time).
    pub fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.stdout
            .read_to_string(&mut rest)
            .expect("read the service's output");
        assert!(self.child.wait().expect("wait for the service").success());
        rest
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // After `stop` the child is already reaped and this does nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
