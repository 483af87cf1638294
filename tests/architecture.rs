//! The crate docs' design table (`src/lib.rs`, "## Design") lists the
//! stages in order; a stage may use only the ones listed above it, save the
//! one upward edge the docs name. This test reads the table and every
//! `crate::…` path in `src/`, and fails on any other edge, so the table
//! and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The upward edge the design section documents: (from, to).
const DOCUMENTED_UPWARD: (&str, &str) = ("record", "process");

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The stages in the design table's order: `config/` -> "config",
/// `fast.rs` -> "fast".
fn stages_in_order() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let design = lib
        .split("//! ## Design")
        .nth(1)
        .expect("lib.rs has a design section");
    design
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("//!"))
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|l| l.split('`').next())
        .map(|name| {
            name.trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect()
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

/// The stage a file belongs to: its top folder under `src/`, or its own
/// name for a top-level file.
fn stage_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The top-level modules `code` names as `crate::name` or in a
/// `crate::{name::…, …}` group, outside comments.
fn crate_paths(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `my_crate::`, `$crate::`
        }
        let rest = &code[i + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![ident(rest)],
        };
        found.extend(names.into_iter().filter(|n| modules.contains(n)));
    }
    found
}

/// The first identifier of each top-level item of a use group, `group`
/// being the text after its `{`.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = vec![ident(group.trim_start())];
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(ident(group[i + 1..].trim_start())),
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn stages_use_only_the_stages_listed_above_them() {
    let order = stages_in_order();
    assert!(
        order.len() >= 8,
        "the design table lists the stages: {order:?}"
    );
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| stage_of(f))
        .filter(|s| s != "lib")
        .collect();
    for m in &modules {
        assert!(
            rank.contains_key(m.as_str()),
            "src/{m} is missing from lib.rs's design table"
        );
    }
    let mut bad = Vec::new();
    let mut upward_seen = false;
    for file in &files {
        let from = stage_of(file);
        if from == "lib" {
            continue; // the public API re-exports every stage
        }
        let code = std::fs::read_to_string(file).unwrap();
        for to in crate_paths(&code, &modules) {
            if to == from || rank[to.as_str()] < rank[from.as_str()] {
                continue;
            }
            if (from.as_str(), to.as_str()) == DOCUMENTED_UPWARD {
                upward_seen = true;
                continue;
            }
            bad.push(format!(
                "{} uses crate::{to}, listed below {from}",
                file.strip_prefix(src()).unwrap().display()
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "edges against the design table:\n{}",
        bad.join("\n")
    );
    assert!(
        upward_seen,
        "the documented upward edge {DOCUMENTED_UPWARD:?} is gone: update the design section"
    );
}

/// The checker itself: a path in a comment or in another crate's name is
/// not an edge; one in a use group, on one line or several, is.
#[test]
fn crate_paths_are_read_as_edges() {
    let modules: BTreeSet<String> = ["record", "output", "dump"].map(String::from).into();
    let code =
        "use crate::{record::x, y};\n// crate::dump\nlet a = my_crate::dump;\ncrate::output::f();";
    assert_eq!(
        crate_paths(code, &modules),
        ["output", "record"].map(String::from).into()
    );
    let code = "use crate::{\n    x::{a, b},\n    dump::y,\n};";
    assert_eq!(
        crate_paths(code, &modules),
        ["dump"].map(String::from).into()
    );
}
