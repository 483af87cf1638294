//! Every `unsafe` in `src/` says why it is sound, where a reader meets it:
//!
//! * an `unsafe { … }` block, `unsafe impl` or `unsafe extern` block needs
//!   a `// SAFETY:` comment in the comment run that ends at most
//!   `LOOKBACK` lines above it (so it may sit above the `let` or `match`
//!   arm that contains the block), or on the same line, with no other
//!   `unsafe` in between;
//! * an `unsafe fn` (including `unsafe extern "C" fn`) needs a `# Safety`
//!   section in its doc comment, or a `// SAFETY:` comment, directly above
//!   it (attributes may come between).
//!
//! A textual check, not a parser: comments and string literals are
//! stripped before looking for `unsafe`, which is enough for this crate's
//! style. `checker_finds_gaps` shows it catches what it should.

use std::path::{Path, PathBuf};

/// Code lines allowed between a SAFETY comment and its `unsafe`.
const LOOKBACK: usize = 3;

#[derive(Debug, PartialEq)]
enum Kind {
    Block,
    Impl,
    Fn,
    Extern,
}

/// The code on a line, without `//` comments or the insides of string
/// literals (so `"unsafe {"` in a string does not count).
fn code_part(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

fn comment_part(line: &str) -> Option<&str> {
    let code = code_part(line);
    // The comment starts where the stripped code ends, give or take string
    // contents; searching from the code's length is enough here.
    line.get(code.len().min(line.len())..)
        .and_then(|rest| rest.find("//").map(|i| &rest[i..]))
}

fn is_comment_line(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

fn is_attribute_line(line: &str) -> bool {
    line.trim_start().starts_with("#[")
}

/// The kinds of `unsafe` on a line of code.
fn unsafe_uses(code: &str) -> Vec<Kind> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("unsafe") {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let after = &rest[i + "unsafe".len()..];
        let word_ends = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = after;
        if !(before_ok && word_ends) {
            continue;
        }
        let after = after.trim_start();
        if after.starts_with('{') {
            found.push(Kind::Block);
        } else if after.starts_with("impl") {
            found.push(Kind::Impl);
        } else if after.starts_with("fn") {
            found.push(Kind::Fn);
        } else if let Some(ext) = after.strip_prefix("extern") {
            // `unsafe extern "C" fn` is a function; `unsafe extern "C" {`
            // a block of declarations.
            let ext = ext.trim_start();
            let ext = match ext.strip_prefix('"') {
                Some(abi) => abi.split_once('"').map_or("", |(_, r)| r).trim_start(),
                None => ext,
            };
            found.push(if ext.starts_with("fn") {
                Kind::Fn
            } else {
                Kind::Extern
            });
        }
        // `unsafe(...)` attributes and lint names are not unsafe code.
    }
    found
}

/// The gaps in one file's text, as (1-based line, line text, kind).
fn gaps(text: &str) -> (usize, Vec<(usize, String, Kind)>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut checked = 0;
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if is_comment_line(line) {
            continue;
        }
        for kind in unsafe_uses(&code_part(line)) {
            checked += 1;
            let ok = match kind {
                Kind::Fn => doc_above_has_safety(&lines, i),
                _ => comment_above_has_safety(&lines, i, line),
            };
            if !ok {
                missing.push((i + 1, line.trim().to_owned(), kind));
            }
        }
    }
    (checked, missing)
}

/// A `// SAFETY:` on the line itself, or in the comment run that ends at
/// most LOOKBACK code lines above it, with no other `unsafe` in between.
fn comment_above_has_safety(lines: &[&str], i: usize, line: &str) -> bool {
    if comment_part(line).is_some_and(|c| c.contains("SAFETY:")) {
        return true;
    }
    let mut code_lines = 0;
    let mut j = i;
    while j > 0 {
        j -= 1;
        let l = lines[j];
        if is_comment_line(l) {
            // The comment run containing line j.
            let mut k = j;
            let mut run = Vec::new();
            loop {
                run.push(lines[k]);
                if k == 0 || !is_comment_line(lines[k - 1]) {
                    break;
                }
                k -= 1;
            }
            return run.iter().any(|l| l.contains("SAFETY:"));
        }
        if l.trim().is_empty() || !unsafe_uses(&code_part(l)).is_empty() {
            return false;
        }
        code_lines += 1;
        if code_lines > LOOKBACK {
            return false;
        }
    }
    false
}

/// A `# Safety` doc section or a `// SAFETY:` comment in the comments and
/// attributes directly above line `i`.
fn doc_above_has_safety(lines: &[&str], i: usize) -> bool {
    let mut j = i;
    while j > 0 {
        j -= 1;
        let l = lines[j];
        if is_attribute_line(l) {
            continue;
        }
        if !is_comment_line(l) {
            return false;
        }
        if l.contains("# Safety") || l.contains("SAFETY:") {
            return true;
        }
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_unsafe_in_src_says_why_it_is_sound() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut total = 0;
    let mut report = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let (checked, missing) = gaps(&text);
        total += checked;
        for (line, code, kind) in missing {
            report.push(format!(
                "{}:{line}: {kind:?} without SAFETY: {code}",
                file.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    println!(
        "checked {total} uses of unsafe in {} files under src/",
        files.len()
    );
    assert!(total > 0, "found no unsafe at all: is the scanner broken?");
    assert!(
        report.is_empty(),
        "unsafe code without a SAFETY comment or # Safety section:\n{}",
        report.join("\n")
    );
}

/// `eprintln!` and `println!` panic when the stream cannot be written, and
/// a panic inside the global allocator aborts the program: heapprof's
/// messages go through `report::warn`, which drops write errors.
#[test]
fn no_panicking_print_macros_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests may print.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let code = code_part(line);
            if ["eprintln!", "println!", "eprint!", "print!"]
                .iter()
                .any(|m| code.contains(m))
            {
                found.push(format!(
                    "{}:{}: {}",
                    file.strip_prefix(&src).unwrap().display(),
                    i + 1,
                    line.trim()
                ));
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
fn checker_finds_gaps() {
    let text = r#"
// SAFETY: documented.
unsafe impl Send for A {}
unsafe impl Sync for A {}

fn f() {
    // SAFETY: the pointer is valid.
    let x = unsafe { *p };
    let y = unsafe { *q };
    let s = "unsafe { in a string }";
    // SAFETY: three lines up is fine.
    let z = match v {
        Some(a) => a,
        None => unsafe { g() },
    };
    let w = unsafe { h() }; // SAFETY: same line.
}

/// Does things.
///
/// # Safety
/// `p` is valid.
#[inline]
unsafe fn documented(p: *const u8) {}

/// No contract.
unsafe fn undocumented() {}

unsafe extern "C" fn callback() {}
"#;
    let (checked, missing) = gaps(text);
    let lines: Vec<usize> = missing.iter().map(|m| m.0).collect();
    assert_eq!(checked, 9, "{missing:?}");
    assert_eq!(lines, vec![4, 9, 27, 29], "{missing:?}");
}
