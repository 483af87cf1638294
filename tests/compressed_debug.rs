//! Debug sections compressed in the file (`ld --compress-debug-sections`,
//! `objcopy`, as distributions ship debug files) still give the program's
//! frames their source files and lines, with zlib and with zstd.
//!
//! The test binary copies itself, compresses the copy's debug sections
//! with `objcopy`, and runs the copy at rate 1.

use heapprof_testkit::child::{is_child, run_child_of};
use heapprof_testkit::profile::{INUSE_SPACE, decode, string};
use std::hint::black_box;
use std::process::Command;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const BLOCKS: usize = 16;
const BLOCK: usize = 4096;

#[inline(never)]
fn held_in_a_compressed_file() -> Vec<Vec<u8>> {
    (0..BLOCKS).map(|_| black_box(vec![3u8; BLOCK])).collect()
}

/// The copy: prints the source file and line its function is named with,
/// and the bytes under it.
#[test]
fn child_names_its_frames() {
    if !is_child() {
        return;
    }
    assert_eq!(heapprof::sample_rate(), 1);
    let held = held_in_a_compressed_file();
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    let function = p
        .function
        .iter()
        .find(|f| string(&p, f.name).contains("held_in_a_compressed_file"))
        .expect("the function is named");
    let line = p
        .location
        .iter()
        .flat_map(|l| &l.line)
        .find(|l| l.function_id == function.id)
        .map_or(0, |l| l.line);
    let bytes: i64 = p
        .sample
        .iter()
        .filter(|s| {
            s.location_id.iter().any(|id| {
                p.location[*id as usize - 1]
                    .line
                    .iter()
                    .any(|l| l.function_id == function.id)
            })
        })
        .map(|s| s.value[INUSE_SPACE])
        .sum();
    println!(
        "file={} line={line} bytes={bytes}",
        string(&p, function.filename)
    );
    drop(held);
}

/// Whether `objcopy` can compress debug sections with `format`: it says
/// why not and returns false when it cannot.
fn compress(exe: &std::path::Path, format: &str) -> bool {
    let out = Command::new("objcopy")
        .arg(format!("--compress-debug-sections={format}"))
        .arg(exe)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "SKIPPED {format}: objcopy cannot compress with it: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("SKIPPED {format}: no objcopy ({e})");
            false
        }
    }
}

fn names_frames_with(format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("compressed");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    if !compress(&exe, format) {
        // Debian's binutils (which the C toolchain Rust links with brings)
        // have both formats: in CI a skip is a failure.
        assert!(
            std::env::var_os("HEAPPROF_REQUIRE_OBJCOPY").is_none_or(|v| v != "1"),
            "HEAPPROF_REQUIRE_OBJCOPY=1 but objcopy cannot compress with {format}"
        );
        return;
    }
    let (stdout, _) = run_child_of(
        &exe,
        None,
        "child_names_its_frames",
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    assert!(
        stdout.contains("compressed_debug.rs line="),
        "the function's source file, from the compressed sections:\n{stdout}"
    );
    let line = heapprof_testkit::child::printed_number(&stdout, " line=");
    assert!(line > 0, "{stdout}");
    let bytes = heapprof_testkit::child::printed_number(&stdout, "bytes=");
    assert!(bytes >= (BLOCKS * BLOCK) as i64, "{stdout}");
}

#[test]
fn zlib_compressed_debug_sections_name_frames() {
    names_frames_with("zlib");
}

#[test]
fn zstd_compressed_debug_sections_name_frames() {
    names_frames_with("zstd");
}
