//! Scraping like Go's continuous profilers: `/debug/pprof/delta_heap`
//! (godeltaprof's endpoint, which Alloy fetches for `godeltaprof_memory`),
//! the 404 for Go's other profiles, and the Alloy and Parca scrape configs
//! in `docs/`, read as those tools read them: every path they enable is
//! served, and every default path they turn off is one heapprof does not
//! serve.
//!
//! The sample rate is 1: every allocation is recorded, the numbers exact.

use heapprof_testkit::http::{HttpReply, http_get, http_raw};
use heapprof_testkit::profile::{ALLOC_SPACE, INUSE_SPACE, cum, decode, string};
use heapprof_testkit::tools::{go_available, go_pprof, top_rows};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const MIB: i64 = 1 << 20;

/// Held by each test that fetches `delta_heap`: the endpoint's mark is the
/// process's, so another test's scrape in between would take its share of
/// the allocations.
static DELTA_HEAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Keeps `n` MiB in `kept`, whose own buffer (allocated by the caller,
/// with room) is not counted here.
#[inline(never)]
fn kept_for_scrapes(kept: &mut Vec<Vec<u8>>, n: usize) {
    assert!(kept.capacity() - kept.len() >= n, "room made by the caller");
    for _ in 0..n {
        kept.push(vec![7u8; 1 << 20]);
    }
}

#[inline(never)]
fn churned_for_scrapes(n: usize) -> usize {
    (0..n)
        .map(|_| std::hint::black_box(vec![8u8; 1 << 20]).len())
        .sum()
}

fn get_ok(addr: SocketAddr, target: &str) -> HttpReply {
    let reply = http_get(addr, target);
    assert_eq!(reply.status, 200, "{target}: {}", reply.text());
    reply
}

/// Alloc values since the endpoint's previous scrape, inuse values now;
/// `?seconds` refused; the profile's `doc_url` set.
#[test]
fn delta_heap_counts_allocations_since_the_previous_scrape() {
    let _alone = DELTA_HEAP.lock().unwrap_or_else(|e| e.into_inner());
    heapprof::set_sample_rate(1);
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    // Where the series starts.
    get_ok(addr, "/debug/pprof/delta_heap");
    let mut kept = Vec::with_capacity(8);
    kept_for_scrapes(&mut kept, 4);
    let churned = churned_for_scrapes(8);

    let second = get_ok(addr, "/debug/pprof/delta_heap");
    assert_eq!(
        second.header("content-disposition"),
        Some("attachment; filename=\"delta_heap\"")
    );
    let p = decode(&second.body);
    assert_eq!(cum(&p, "kept_for_scrapes", ALLOC_SPACE), 4 * MIB);
    assert_eq!(cum(&p, "kept_for_scrapes", INUSE_SPACE), 4 * MIB);
    assert_eq!(cum(&p, "churned_for_scrapes", ALLOC_SPACE), 8 * MIB);
    assert_eq!(cum(&p, "churned_for_scrapes", INUSE_SPACE), 0);
    let doc_url = string(&p, p.doc_url);
    assert!(
        doc_url.starts_with("https://docs.rs/heapprof/")
            && doc_url.ends_with("#what-the-numbers-mean"),
        "doc_url: {doc_url:?}"
    );

    // Nothing allocated since: no alloc values, the same live memory.
    let third = decode(&get_ok(addr, "/debug/pprof/delta_heap").body);
    assert_eq!(cum(&third, "kept_for_scrapes", ALLOC_SPACE), 0);
    assert_eq!(cum(&third, "kept_for_scrapes", INUSE_SPACE), 4 * MIB);
    assert_eq!(cum(&third, "churned_for_scrapes", ALLOC_SPACE), 0);

    // The heap profile carries the doc_url too.
    let heap = decode(&get_ok(addr, "/debug/pprof/heap").body);
    assert_eq!(string(&heap, heap.doc_url), doc_url);
    let refused = http_get(addr, "/debug/pprof/delta_heap?seconds=5");
    assert_eq!(refused.status, 400, "{}", refused.text());

    // The real pprof reads it from the URL.
    if go_available() {
        kept_for_scrapes(&mut kept, 2);
        let url = format!("http://{addr}/debug/pprof/delta_heap");
        let top = go_pprof(&["-sample_index=alloc_space", "-top", &url]);
        let row = top_rows(&top)
            .into_iter()
            .find(|r| r.1.contains("kept_for_scrapes"))
            .map_or(0.0, |r| r.0);
        assert_eq!(row, 2.0 * MIB as f64, "{top}");
    }
    assert_eq!(churned, 8 << 20);
    drop(kept);
}

/// A `HEAD` request (a probe, a link checker) and the text form (the
/// index page's link, for people) show what was allocated since the last
/// scrape and leave it to the next: only a scrape of the profile moves
/// the window on.
#[test]
fn only_a_scrape_of_the_profile_moves_delta_heap_on() {
    let _alone = DELTA_HEAP.lock().unwrap_or_else(|e| e.into_inner());
    heapprof::set_sample_rate(1);
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    get_ok(addr, "/debug/pprof/delta_heap");
    let mut kept = Vec::with_capacity(4);
    kept_for_scrapes(&mut kept, 3);

    let head = http_raw(
        addr,
        b"HEAD /debug/pprof/delta_heap HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(head.status, 200, "{}", head.head);
    let text = get_ok(addr, "/debug/pprof/delta_heap?debug=1").text();
    assert!(text.contains("kept_for_scrapes"), "{text}");
    // So does a mounting server's HEAD, through `handle_head`.
    let mounted = heapprof::http::handle_head("/debug/pprof/delta_heap", "");
    assert_eq!(mounted.status, 200);
    let scraped = decode(&get_ok(addr, "/debug/pprof/delta_heap").body);
    assert_eq!(cum(&scraped, "kept_for_scrapes", ALLOC_SPACE), 3 * MIB);
    // That scrape moved the window on.
    let next = decode(&get_ok(addr, "/debug/pprof/delta_heap").body);
    assert_eq!(cum(&next, "kept_for_scrapes", ALLOC_SPACE), 0);
    drop(kept);
}

/// A client that closes its writing side once the request is sent (`nc
/// -N`, a script, a proxy passing the close on) still reads: it gets the
/// profile, as from Go's server.
#[test]
fn a_client_that_half_closes_gets_its_profile() {
    use std::io::{Read, Write};
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /debug/pprof/heap HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let body = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let p = decode(&reply[body..]);
    assert!(!p.sample_type.is_empty());
}

/// Go's profiles that scrapers ask for by default: a 404 saying heapprof
/// serves heap profiles only, and what it serves.
#[test]
fn go_only_profiles_are_a_clear_404() {
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    for target in [
        "/debug/pprof/profile?seconds=14",
        "/debug/pprof/goroutine",
        "/debug/pprof/block",
        "/debug/pprof/mutex",
        "/debug/pprof/delta_mutex",
        "/debug/pprof/delta_block",
        "/debug/fgprof?seconds=14",
    ] {
        let reply = http_get(addr, target);
        let text = reply.text();
        assert_eq!(reply.status, 404, "{target}: {text}");
        assert!(
            text.contains("heapprof serves heap profiles only")
                && text.contains("/debug/pprof/heap")
                && text.contains("/debug/pprof/delta_heap"),
            "{target}: {text}"
        );
    }
}

/// One profile a scraper fetches: is it on, where, and is it a delta
/// (fetched with `?seconds=N`).
#[derive(Clone, Debug, Default, PartialEq)]
struct Target {
    enabled: bool,
    path: String,
    delta: bool,
}

fn target(enabled: bool, path: &str, delta: bool) -> Target {
    Target {
        enabled,
        path: path.to_owned(),
        delta,
    }
}

/// Alloy's `pyroscope.scrape` defaults (`DefaultProfilingConfig` in
/// Alloy's `internal/component/pyroscope/scrape/scrape.go`).
fn alloy_defaults() -> BTreeMap<String, Target> {
    [
        ("memory", target(true, "/debug/pprof/allocs", false)),
        ("block", target(true, "/debug/pprof/block", false)),
        ("goroutine", target(true, "/debug/pprof/goroutine", false)),
        ("mutex", target(true, "/debug/pprof/mutex", false)),
        ("process_cpu", target(true, "/debug/pprof/profile", true)),
        ("fgprof", target(false, "/debug/fgprof", true)),
        (
            "godeltaprof_memory",
            target(false, "/debug/pprof/delta_heap", false),
        ),
        (
            "godeltaprof_mutex",
            target(false, "/debug/pprof/delta_mutex", false),
        ),
        (
            "godeltaprof_block",
            target(false, "/debug/pprof/delta_block", false),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Parca's scrape defaults (`DefaultScrapeConfig` in Parca's
/// `pkg/config/config.go`).
fn parca_defaults() -> BTreeMap<String, Target> {
    [
        ("memory", target(true, "/debug/pprof/allocs", false)),
        ("block", target(true, "/debug/pprof/block", false)),
        ("goroutine", target(true, "/debug/pprof/goroutine", false)),
        ("mutex", target(true, "/debug/pprof/mutex", false)),
        ("process_cpu", target(true, "/debug/pprof/profile", true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn docs(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The configs in `docs/` fetch only what heapprof serves: every target
/// they leave on answers 200 with a profile, and every default target
/// they turn off is one heapprof answers with a 404 (so turning it off is
/// needed, not decoration). The README shows the same files.
#[test]
fn scrape_configs_in_the_docs_fetch_only_what_is_served() {
    let _alone = DELTA_HEAP.lock().unwrap_or_else(|e| e.into_inner());
    let addr = heapprof::http::serve("127.0.0.1:0").unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for (tool, file, targets, defaults) in [
        (
            "Alloy",
            "alloy.alloy",
            alloy_targets(&docs("alloy.alloy")),
            alloy_defaults(),
        ),
        (
            "Parca",
            "parca.yaml",
            parca_targets(&docs("parca.yaml")),
            parca_defaults(),
        ),
    ] {
        assert!(
            readme.contains(docs(file).trim()),
            "README.md shows docs/{file} as it is"
        );
        let enabled: Vec<_> = targets.iter().filter(|(_, t)| t.enabled).collect();
        assert!(!enabled.is_empty(), "{tool}: nothing enabled: {targets:?}");
        for (name, t) in &enabled {
            assert!(!t.path.is_empty(), "{tool} {name}: enabled with no path");
            // A delta target is fetched with `?seconds=` (the scrape
            // interval less a second); 1 keeps the test short.
            let query = if t.delta { "?seconds=1" } else { "" };
            let reply = http_get(addr, &format!("{}{query}", t.path));
            assert_eq!(
                reply.status,
                200,
                "{tool} {name} fetches {}: {}",
                t.path,
                reply.text()
            );
            let profile = decode(&reply.body);
            assert!(!profile.sample_type.is_empty(), "{tool} {name}: a profile");
        }
        for (name, default) in defaults.iter().filter(|(_, d)| d.enabled) {
            if targets[name].enabled {
                continue;
            }
            // Off because another target fills the same profile (Alloy
            // stores godeltaprof_memory as memory), or because heapprof
            // does not serve it.
            let replaced = enabled.iter().any(|(n, _)| stored_as(n) == name.as_str());
            let reply = http_get(addr, &default.path);
            assert!(
                replaced || reply.status == 404,
                "{tool} turns off {name} ({}), which heapprof serves and nothing replaces",
                default.path
            );
        }
        println!(
            "{tool}: fetches {:?}",
            enabled.iter().map(|(_, t)| &t.path).collect::<Vec<_>>()
        );
    }
}

/// The profile a target's scrapes are stored as: Alloy stores its
/// `godeltaprof_*` targets under the plain names.
fn stored_as(target: &str) -> &str {
    target.strip_prefix("godeltaprof_").unwrap_or(target)
}

// ---- Parca: YAML, merged with the defaults as Parca merges them -----------

/// The targets of the first scrape config of a Parca config, after
/// Parca's merge: a default type left out of `pprof_config` is added with
/// its default; one given without `enabled` is enabled; one given without
/// `path` keeps the default path; `path_prefix` goes before every path.
fn parca_targets(text: &str) -> BTreeMap<String, Target> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(text).expect("docs/parca.yaml is YAML");
    let job = &docs[0]["scrape_configs"][0];
    assert!(job["job_name"].as_str().is_some(), "a job_name");
    let config = &job["profiling_config"];
    let mut targets = parca_defaults();
    if let Some(given) = config["pprof_config"].as_hash() {
        for (name, t) in given {
            let name = name.as_str().expect("a profile name").to_owned();
            let default = targets.get(&name).cloned().unwrap_or_default();
            let path = t["path"].as_str().map(str::to_owned);
            let merged = Target {
                enabled: t["enabled"].as_bool().unwrap_or(true),
                path: path.unwrap_or(default.path),
                delta: match &t["delta"] {
                    Yaml::Boolean(b) => *b,
                    _ => false,
                },
            };
            targets.insert(name, merged);
        }
    }
    if let Some(prefix) = config["path_prefix"].as_str() {
        for t in targets.values_mut() {
            t.path = format!("{}{}", prefix.trim_end_matches('/'), t.path);
        }
    }
    targets
}

// ---- Alloy: its configuration syntax, the part these configs use ----------

/// A value of Alloy's syntax, as far as the test needs it.
#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Other,
}

/// A block: its name, label, attributes and blocks, in order.
#[derive(Debug, Default)]
struct Block {
    name: String,
    label: Option<String>,
    attrs: Vec<(String, Value)>,
    blocks: Vec<Block>,
}

impl Block {
    fn block(&self, name: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.name == name)
    }

    fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number,
    Punct(char),
}

/// Alloy's tokens: identifiers (with `.` between parts), strings,
/// numbers and punctuation; `//` and `/* */` comments skipped.
fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            while chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Str(s));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Number);
        } else if "{}[]=,".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else {
            panic!("unexpected {c:?} in the Alloy config");
        }
    }
    out
}

/// Parses a body (statements up to `}` or the end): `name = value`
/// attributes and `name ["label"] { … }` blocks.
fn parse_body(t: &[Token], i: &mut usize, into: &mut Block) {
    while *i < t.len() && t[*i] != Token::Punct('}') {
        let Token::Ident(name) = &t[*i] else {
            panic!("expected a name at token {}: {:?}", *i, t[*i]);
        };
        *i += 1;
        match &t[*i] {
            Token::Punct('=') => {
                *i += 1;
                let value = parse_value(t, i);
                into.attrs.push((name.clone(), value));
            }
            Token::Str(label) => {
                let label = label.clone();
                *i += 1;
                into.blocks.push(parse_block(t, i, name, Some(label)));
            }
            Token::Punct('{') => into.blocks.push(parse_block(t, i, name, None)),
            other => panic!("after {name}: {other:?}"),
        }
    }
}

fn parse_block(t: &[Token], i: &mut usize, name: &str, label: Option<String>) -> Block {
    assert_eq!(t[*i], Token::Punct('{'), "a block opens with {{");
    *i += 1;
    let mut block = Block {
        name: name.to_owned(),
        label,
        ..Block::default()
    };
    parse_body(t, i, &mut block);
    assert_eq!(t[*i], Token::Punct('}'), "block {name} closes");
    *i += 1;
    block
}

/// A value: a string, `true`/`false`, a number, a reference
/// (`pyroscope.write.default.receiver`), an array or an object.
fn parse_value(t: &[Token], i: &mut usize) -> Value {
    let token = &t[*i];
    *i += 1;
    match token {
        Token::Str(s) => Value::Str(s.clone()),
        Token::Ident(b) if b == "true" || b == "false" => Value::Bool(b == "true"),
        Token::Ident(_) | Token::Number => Value::Other,
        Token::Punct(open @ ('[' | '{')) => {
            let close = if *open == '[' { ']' } else { '}' };
            while t[*i] != Token::Punct(close) {
                if *open == '{' {
                    assert!(
                        matches!(t[*i], Token::Str(_) | Token::Ident(_)),
                        "an object key"
                    );
                    *i += 1;
                    assert_eq!(t[*i], Token::Punct('='), "= in an object");
                    *i += 1;
                }
                parse_value(t, i);
                if t[*i] == Token::Punct(',') {
                    *i += 1;
                }
            }
            *i += 1;
            Value::Other
        }
        other => panic!("unexpected {other:?} as a value"),
    }
}

/// The targets of the Alloy config's `pyroscope.scrape` block. A
/// `profile.NAME` block given replaces the default target whole, its
/// attributes unset being off, empty and false (what a block that is
/// decoded from zero gives: so a config that works under this reading
/// works also if Alloy keeps the defaults of unset attributes).
fn alloy_targets(text: &str) -> BTreeMap<String, Target> {
    let t = tokens(text);
    let mut file = Block::default();
    let mut i = 0;
    parse_body(&t, &mut i, &mut file);
    assert_eq!(i, t.len(), "the whole file parsed");
    let scrape = file
        .block("pyroscope.scrape")
        .expect("a pyroscope.scrape block");
    assert!(scrape.label.is_some(), "pyroscope.scrape has a label");
    assert!(scrape.attr("targets").is_some() && scrape.attr("forward_to").is_some());
    let write = file
        .block("pyroscope.write")
        .expect("a pyroscope.write block");
    assert!(
        write
            .block("endpoint")
            .is_some_and(|e| e.attr("url").is_some())
    );
    let mut targets = alloy_defaults();
    let Some(config) = scrape.block("profiling_config") else {
        return targets;
    };
    for b in &config.blocks {
        let name = b
            .name
            .strip_prefix("profile.")
            .unwrap_or_else(|| panic!("unexpected block {}", b.name));
        assert!(
            targets.contains_key(name),
            "profile.{name} is not one of Alloy's profiles"
        );
        let flag = |k: &str| matches!(b.attr(k), Some(Value::Bool(true)));
        let path = match b.attr("path") {
            Some(Value::Str(p)) => p.clone(),
            _ => String::new(),
        };
        targets.insert(
            name.to_owned(),
            Target {
                enabled: flag("enabled"),
                path,
                delta: flag("delta"),
            },
        );
    }
    if let Some(Value::Str(prefix)) = config.attr("path_prefix") {
        for t in targets.values_mut() {
            t.path = format!("{}{}", prefix.trim_end_matches('/'), t.path);
        }
    }
    targets
}
