//! The legacy text profile (`?debug=1`, `write_text_profile`), read back by
//! `go tool pprof`, says what the binary profile says: the same totals
//! (within 1 %) for all four sample types and the same number of sites,
//! through a change of sample rate, with a thousand sites of one small
//! block each (which a rescaling by the current rate rounded away).

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::decode;
use heapprof_testkit::tools::{go_available, go_pprof, parse_size};
use std::hint::black_box;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const DEPTH: u32 = 10;

/// A path of `depth` calls to `left` or `right`, as the bits of `path`
/// say, then one small block: 2^DEPTH distinct sites.
#[inline(never)]
fn left(depth: u32, path: u32, keep: &mut Vec<Vec<u8>>) {
    step(depth, path, keep);
    black_box(keep.len());
}

#[inline(never)]
fn right(depth: u32, path: u32, keep: &mut Vec<Vec<u8>>) {
    step(depth, path, keep);
    black_box(keep.capacity());
}

fn step(depth: u32, path: u32, keep: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        keep.push(vec![3u8; 40]);
    } else if path & 1 == 0 {
        left(depth - 1, path >> 1, keep);
    } else {
        right(depth - 1, path >> 1, keep);
    }
}

#[inline(never)]
fn small_blocks(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..10_000 {
        keep.push(black_box(vec![1u8; 64]));
    }
}

#[inline(never)]
fn big_blocks(keep: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        keep.push(black_box(vec![2u8; 1 << 20]));
    }
}

/// `Showing nodes accounting for …, …% of TOTAL total`: TOTAL, in bytes or
/// objects.
fn total(top: &str) -> f64 {
    let line = top
        .lines()
        .find(|l| l.contains(" total"))
        .unwrap_or_else(|| panic!("no total in {top}"));
    let word = line
        .split(" of ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    parse_size(word)
}

#[test]
fn child_text_and_binary() {
    if !is_child() {
        return;
    }
    let mut keep = Vec::new();
    heapprof::set_sample_rate(1);
    small_blocks(&mut keep);
    for path in 0..1u32 << DEPTH {
        step(DEPTH, path, &mut keep);
    }
    heapprof::set_sample_rate(512 * 1024);
    big_blocks(&mut keep);
    let dir = std::env::var("TEXT_TEST_DIR").unwrap();
    let bin = std::path::Path::new(&dir).join("heap.pb.gz");
    let text = std::path::Path::new(&dir).join("heap.txt");
    heapprof::write_profile(std::fs::File::create(&bin).unwrap()).unwrap();
    heapprof::write_text_profile(std::fs::File::create(&text).unwrap()).unwrap();
    drop(keep);
    println!("TEXT-CHILD-OK");
}

#[test]
fn go_pprof_reads_the_text_as_the_binary() {
    if is_child() || !go_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_child(
        "child_text_and_binary",
        &[("TEXT_TEST_DIR", dir.path().to_str().unwrap())],
    );
    assert!(stdout.contains("TEXT-CHILD-OK"), "{stdout}\n{stderr}");
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let bin = dir.path().join("heap.pb.gz");
    let text = dir.path().join("heap.txt");
    for index in [
        "inuse_space",
        "inuse_objects",
        "alloc_space",
        "alloc_objects",
    ] {
        let arg = format!("-sample_index={index}");
        let from_bin = total(&go_pprof(&["-top", &arg, exe, bin.to_str().unwrap()]));
        let from_text = total(&go_pprof(&["-top", &arg, exe, text.to_str().unwrap()]));
        let off = (from_text - from_bin).abs() / from_bin;
        println!(
            "{index}: binary {from_bin}, text {from_text}, off by {:.3} %",
            off * 100.0
        );
        assert!(off <= 0.01, "{index}: binary {from_bin}, text {from_text}");
    }
    // Every site has its record, with at least one object: the binary
    // profile's samples, one for one.
    let binary = decode(&std::fs::read(&bin).unwrap());
    let text = std::fs::read_to_string(&text).unwrap();
    let records: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|l| l.contains(" @ 0x"))
        .collect();
    assert!(binary.sample.len() > 1 << DEPTH, "{}", binary.sample.len());
    assert_eq!(
        records.len(),
        binary.sample.len(),
        "every site is in the text"
    );
    for r in &records {
        let alloc_objects: i64 = r
            .split('[')
            .nth(1)
            .and_then(|x| x.split(':').next())
            .and_then(|x| x.trim().parse().ok())
            .unwrap_or_else(|| panic!("{r}"));
        assert!(alloc_objects >= 1, "{r}");
    }
}
