//! Bad input gets a clear error and loses nothing: malformed environment
//! values are reported once on stderr and the default is used; a failing
//! writer gets `Err` and the next profile is whole.

mod common;
use std::io::{self, Write};
use std::process::Command;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// A writer that fails after `budget` bytes.
struct FailingWriter {
    budget: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
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
        let err = heapprof::write_profile(FailingWriter { budget }).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
    let p = common::take_profile();
    assert!(!p.sample.is_empty());
    drop(keep);
}

/// Run in a child process with a given environment: reports the rate.
#[test]
fn child_reports_rate() {
    if std::env::var_os("HEAPPROF_TEST_CHILD").is_some() {
        println!("rate={}", heapprof::sample_rate());
    }
}

fn child_with_rate(value: &str) -> (usize, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reports_rate",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEAPPROF_TEST_CHILD", "1")
        .env("HEAPPROF_SAMPLE_RATE", value)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let after = &stdout[stdout.find("rate=").expect("child printed its rate") + 5..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let rate = digits.parse().unwrap();
    (rate, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn malformed_rates_are_reported_once_and_the_default_used() {
    for bad in [
        "abc",
        "-1",
        "99999999999999999999999",
        "12 parsecs",
        "",
        "1.5MiB",
        "5TiB",
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
    ] {
        let (rate, stderr) = child_with_rate(good);
        assert_eq!(rate, expected, "{good:?}");
        assert!(!stderr.contains("heapprof"), "{good:?} is valid: {stderr}");
    }
}
