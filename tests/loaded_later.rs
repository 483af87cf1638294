//! Code loaded at run time (`dlopen`) is named in profiles written after it
//! was loaded, even when an earlier profile had already looked symbols up;
//! a library unloaded and replaced by another at the same address does
//! not lend the new one its names; and a function no symbol names is a
//! frame of its own, named after its library, not left out.
//!
//! Three C libraries, built here by gcc from one source with different
//! function names (two with the same layout, one stripped with its middle
//! function `static`), call back into Rust, which allocates. Rate 1, in a child process of its own: every byte is
//! sampled, so the bytes under each function are exact.

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::watchdog::watchdog;
use std::ffi::{CString, c_void};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The library's source: `<p>_outer(cb)` calls `cb` through two more
/// functions of its own, none of them inlined or called as a tail call.
/// With `HIDDEN_MIDDLE` defined, `middle` is `static`: stripped, no symbol
/// is left that names it.
const SOURCE: &str = "\
typedef void (*callback)(void);
static volatile int depth;
#ifdef HIDDEN_MIDDLE
#define MIDDLE_LINKAGE static
#else
#define MIDDLE_LINKAGE
#endif
__attribute__((noinline)) void P(inner)(callback cb) { depth++; cb(); depth--; }
__attribute__((noinline)) MIDDLE_LINKAGE void P(middle)(callback cb) { depth++; P(inner)(cb); depth--; }
__attribute__((noinline)) void P(outer)(callback cb) { depth++; P(middle)(cb); depth--; }
";

/// Builds the library with functions `<prefix>_inner`, `_middle`,
/// `_outer` in `dir`, passing gcc `extra` arguments too.
fn build_library(dir: &Path, prefix: &str, extra: &[&str]) -> PathBuf {
    let source = dir.join(format!("{prefix}.c"));
    std::fs::write(
        &source,
        format!("#define P(name) {prefix}_##name\n{SOURCE}"),
    )
    .unwrap();
    let library = dir.join(format!("lib{prefix}.so"));
    let out = std::process::Command::new("gcc")
        .args(["-g", "-O1", "-shared", "-fPIC"])
        .args(extra)
        .arg("-o")
        .arg(&library)
        .arg(&source)
        .output()
        .expect("gcc runs (it links every Rust program on this platform)");
    assert!(out.status.success(), "gcc: {out:?}");
    library
}

/// A library opened with `dlopen`, closed on drop.
struct Library(*mut c_void);

impl Library {
    fn open(path: &Path) -> Library {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path; the library runs no code
        // at load (no constructors).
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen {}", path.display());
        Library(handle)
    }

    /// The library's `outer` function.
    fn outer(&self, prefix: &str) -> extern "C" fn(extern "C" fn()) {
        let name = CString::new(format!("{prefix}_outer")).unwrap();
        // SAFETY: the handle is open; `name` is NUL-terminated.
        let f = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        assert!(!f.is_null(), "dlsym {prefix}_outer");
        // SAFETY: the symbol is `void <prefix>_outer(void (*)(void))`.
        unsafe { std::mem::transmute::<*mut c_void, extern "C" fn(extern "C" fn())>(f) }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle is open, and nothing of the library is
        // running or referenced any more.
        assert_eq!(unsafe { libc::dlclose(self.0) }, 0);
    }
}

/// Blocks the callback allocates, each of [`BLOCK`] bytes.
const BLOCKS: usize = 200;
const BLOCK: usize = 4096;

std::thread_local! {
    static HELD: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The callback: allocates [`BLOCKS`] blocks and keeps them.
extern "C" fn allocate() {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        for _ in 0..BLOCKS {
            held.push(std::hint::black_box(vec![1u8; BLOCK]));
        }
    });
}

/// Bytes the sites under `function` allocated, in a profile written now.
fn allocated_in(function: &str) -> i64 {
    heapprof::snapshot().alloc_bytes_in(function)
}

/// The child: a profile first (so that symbols have been looked up before
/// any library is loaded), then library `a`, then `a` unloaded and `b`,
/// with the same layout, loaded in its place.
#[test]
fn child_loads_and_unloads() {
    if !is_child() {
        return;
    }
    let dir = PathBuf::from(std::env::var("LOADED_LATER_DIR").unwrap());
    let expected = (BLOCKS * BLOCK) as i64;
    assert_eq!(heapprof::sample_rate(), 1);
    allocate();
    assert!(allocated_in("allocate") >= expected);
    // Emptied (its capacity kept) before each call, so that the calls
    // through the libraries allocate exactly the blocks.
    HELD.with(|held| held.borrow_mut().clear());

    let a = Library::open(&dir.join("liba.so"));
    let a_outer = a.outer("a");
    a_outer(allocate);
    for f in ["a_inner", "a_middle", "a_outer"] {
        assert_eq!(
            allocated_in(f),
            expected,
            "{f}: a library loaded after the first profile is named"
        );
    }
    let a_at = a_outer as usize;
    HELD.with(|held| held.borrow_mut().clear());
    drop(a);

    let b = Library::open(&dir.join("libb.so"));
    let b_outer = b.outer("b");
    println!("same-address={}", u8::from(b_outer as usize == a_at));
    b_outer(allocate);
    // At least: samples taken in `a` at the same addresses are named
    // after `b` too (a profile cannot tell them apart).
    for f in ["b_inner", "b_middle", "b_outer"] {
        assert!(
            allocated_in(f) >= expected,
            "{f}: {} bytes: the library loaded in an unloaded one's place is named after itself",
            allocated_in(f)
        );
    }
    drop(b);
    // Nothing is loaded at those addresses now: unnamed, not named after
    // either library.
    for f in ["a_inner", "b_inner"] {
        assert_eq!(allocated_in(f), 0, "{f}, with nothing loaded there");
    }
    HELD.with(|held| held.borrow_mut().clear());

    // Stripped, with `s_middle` static: the stack keeps a frame between
    // `s_inner` and `s_outer`, named after the library.
    let s = Library::open(&dir.join("libs.so"));
    let before = heapprof::snapshot();
    s.outer("s")(allocate);
    let d = heapprof::snapshot().delta(&before);
    let site = d
        .sites()
        .iter()
        .find(|site| site.frames.iter().any(|f| f.function == "s_inner"))
        .unwrap_or_else(|| panic!("a site under s_inner: {d}"));
    let names: Vec<&str> = site.frames.iter().map(|f| f.function.as_str()).collect();
    let inner = names.iter().position(|&f| f == "s_inner").unwrap();
    assert_eq!(
        names.get(inner + 1..inner + 3),
        Some(&["[libs.so]", "s_outer"][..]),
        "{names:?}"
    );
    assert_eq!(d.alloc_bytes_in("[libs.so]"), expected);
    drop(s);
}

#[test]
fn libraries_loaded_later_are_named_after_themselves() {
    if is_child() {
        return;
    }
    let _watchdog = watchdog("loaded later", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    build_library(dir.path(), "a", &[]);
    build_library(dir.path(), "b", &[]);
    build_library(dir.path(), "s", &["-s", "-DHIDDEN_MIDDLE"]);
    let (stdout, _) = run_child(
        "child_loads_and_unloads",
        &[
            ("HEAPPROF_SAMPLE_RATE", "1"),
            ("LOADED_LATER_DIR", dir.path().to_str().unwrap()),
        ],
    );
    // The case the second half is about: `b` where `a` was.
    assert!(stdout.contains("same-address=1"), "{stdout}");
}
