//! External tools (`go tool pprof`, valgrind): used if installed, else skipped unless required.

use std::process::Command;

/// Whether `program` runs (`program version_arg` succeeds). When it does
/// not, says so on stdout (the caller then skips), unless `require_var` is
/// `1` (set by `.ci/run`, which installs the tool), which makes a missing
/// tool a failure.
pub fn tool_available(program: &str, version_arg: &str, require_var: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os(require_var).is_none_or(|v| v != "1"),
            "{require_var}=1 but `{program}` is not on PATH (install Debian's {package})"
        );
        println!(
            "SKIPPED: `{program}` is not on PATH; install {package}, or set {require_var}=1 to make this a failure"
        );
    }
    found
}

/// Whether `go` is installed (see [`tool_available`]).
pub fn go_available() -> bool {
    tool_available("go", "version", "HEAPPROF_REQUIRE_GO", "golang-go")
}

/// Runs `go tool pprof ARGS`, asserts it succeeded, prints and returns its
/// output. pprof keeps copies of fetched profiles under `PPROF_TMPDIR`:
/// that is a fresh temporary directory here.
pub fn go_pprof(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        // Never reach out for symbols: the profile carries them.
        .env("PPROF_BINARY_PATH", "/nonexistent")
        .env("PPROF_TMPDIR", tmp.path())
        .output()
        .expect("run go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stderr}\n{stdout}"
    );
    println!("$ go tool pprof {}\n{stdout}", args.join(" "));
    stdout
}

/// `-top` rows as (flat bytes, name). pprof prints sizes like `12.50MB`.
pub fn top_rows(top: &str) -> Vec<(f64, String)> {
    top.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 6).then(|| (parse_size(cols[0]), cols[5..].join(" ")))
        })
        .collect()
}

/// A size as pprof prints it (`12.50MB`, `3kB`, `7B`), in bytes; 0 when it
/// is not one.
pub fn parse_size(s: &str) -> f64 {
    let units = [
        ("GB", 1e9 * 1.073741824),
        ("MB", 1048576.0),
        ("kB", 1024.0),
        ("B", 1.0),
    ];
    for (u, m) in units {
        if let Some(n) = s.strip_suffix(u) {
            return n.parse::<f64>().unwrap_or(0.0) * m;
        }
    }
    s.parse().unwrap_or(0.0)
}
