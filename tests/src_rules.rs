//! Rules for `src/` that no lint in Cargo.toml's `[workspace.lints]` can
//! check (those lints cover unsafe blocks, `unsafe impl` and `unsafe fn`):
//!
//! * no `print!`-family macro in the library: they panic when the stream
//!   cannot be written, and a panic inside the global allocator aborts the
//!   program (heapprof's messages go through `report::warn`, which drops
//!   write errors). clippy's `print_stdout`/`print_stderr` would apply to
//!   every target of the package, and the tests and examples print;
//! * `thread_local!` only in `src/thread/`, the one owner of per-thread
//!   state (a unit test's own counter, under `#[cfg(test)]`, may sit
//!   elsewhere);
//! * every `unsafe extern` block says why its declarations are right, in a
//!   `// SAFETY:` comment directly above it (attributes may come between):
//!   `undocumented_unsafe_blocks` does not look at extern blocks.
//!
//! A textual check: comments and string literals are stripped before
//! looking, which is enough for this crate's style.

use std::path::{Path, PathBuf};

/// The code on a line, without its `//` comment or the insides of string
/// literals (so `"println!"` in a string does not count).
fn code_part(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_str => {
                chars.next();
            }
            '"' => {
                in_str = !in_str;
                out.push('"');
            }
            '/' if !in_str && chars.peek() == Some(&'/') => break,
            _ if !in_str => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every `.rs` file under `src/`: its path relative to `src/`, and its text.
fn src_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.sort();
    assert!(!paths.is_empty(), "no Rust files under {}", src.display());
    paths
        .iter()
        .map(|p| {
            let name = p.strip_prefix(&src).unwrap().display().to_string();
            (name, std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

/// The 1-based lines of `text` that open an `unsafe extern` block with no
/// `// SAFETY:` in the comments and attributes directly above.
fn undocumented_extern_blocks(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let opens_block = |code: &str| {
        code.match_indices("unsafe extern").any(|(i, m)| {
            let word_starts = code[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let rest = code[i + m.len()..].trim_start();
            let rest = rest.strip_prefix("\"\"").unwrap_or(rest).trim_start();
            word_starts && rest.starts_with('{')
        })
    };
    let documented = |i: usize| {
        lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim_start())
            .take_while(|l| l.starts_with("//") || l.starts_with("#["))
            .any(|l| l.contains("SAFETY:"))
    };
    (0..lines.len())
        .filter(|&i| opens_block(&code_part(lines[i])) && !documented(i))
        .map(|i| i + 1)
        .collect()
}

#[test]
fn no_panicking_print_macros_in_src() {
    let mut found = Vec::new();
    for (name, text) in src_files() {
        // Unit tests may print.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let code = code_part(line);
            if ["eprintln!", "println!", "eprint!", "print!"]
                .iter()
                .any(|m| code.contains(m))
            {
                found.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use report::warn instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_unsafe_extern_block_in_src_says_why() {
    let mut found = Vec::new();
    for (name, text) in src_files() {
        for line in undocumented_extern_blocks(&text) {
            found.push(format!("{name}:{line}"));
        }
    }
    assert!(
        found.is_empty(),
        "unsafe extern blocks without a SAFETY comment:\n{}",
        found.join("\n")
    );
}

#[test]
fn extern_block_check_finds_gaps() {
    let text = r#"
// SAFETY: the declarations match glibc's.
#[link(name = "c")]
unsafe extern "C" {
}
unsafe extern "C" {
}
// SAFETY: a function, not a block.
unsafe extern "C" fn callback() {}
unsafe extern {}
let s = "unsafe extern {";
"#;
    assert_eq!(undocumented_extern_blocks(text), [6, 10]);
}

#[test]
fn print_check_ignores_comments_and_strings() {
    assert_eq!(
        code_part(r#"f("println!(\"x\")"); // println!"#),
        r#"f(""); "#
    );
    assert_eq!(code_part("    eprintln!(\"{x}\");"), "    eprintln!(\"\");");
}

#[test]
fn per_thread_state_lives_in_thread() {
    let mut found = Vec::new();
    for (name, text) in src_files() {
        if name.starts_with("thread/") {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let test_only = i > 0 && lines[i - 1].trim() == "#[cfg(test)]";
            if code_part(line).contains("thread_local!") && !test_only {
                found.push(format!("{name}:{}", i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "thread-locals outside src/thread/ (keep them in thread::Local):\n{}",
        found.join("\n")
    );
}
