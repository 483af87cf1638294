//! heapprof in a shared library a C program hosts (tests/fixtures/cdylib):
//! the host loads it by a relative path, changes its directory, calls it
//! from a thread of its own and unloads it, with `HEAPPROF_OUT` set.
//!
//! * The library's functions are named though the path the loader has for
//!   it no longer names the file.
//! * `dlclose` leaves the library loaded: heapprof's exit dump and its
//!   threads' exit destructors point into its code, and an unloaded
//!   library crashed the host when its thread ended.
//! * The exit profile is written when the host exits.
//! * Loaded by `dlmopen` into a namespace of its own, where the loader
//!   lists the library first and not the host, the library's mapping is
//!   still named after the library, not taken for the executable.

use heapprof_testkit::child::without_heapprof_settings;
use std::path::Path;
use std::process::Command;

/// The host: `host <library> [own-namespace]` opens the library (a path
/// relative to the directory it is started in; with a second argument by
/// `dlmopen` into a new namespace), changes to `/`, runs the library's
/// work on a thread, prints what it returned, closes the library and says
/// whether it is still loaded.
const HOST: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

typedef unsigned long long (*work_fn)(void);
static work_fn work;
static unsigned long long named;

static void *worker(void *arg) { (void)arg; named = work(); return NULL; }

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) return 2;
    void *lib = argc == 3 ? dlmopen(LM_ID_NEWLM, argv[1], RTLD_NOW) : dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 3; }
    work = (work_fn)dlsym(lib, "hp_keep_and_count");
    if (!work) return 4;
    if (chdir("/") != 0) return 5;
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) return 6;
    pthread_join(t, NULL);
    printf("NAMED=%llu\n", named);
    dlclose(lib);
    printf("LOADED=%d\n", dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != NULL);
    fflush(stdout);
    return 0;
}
"#;

/// A host whose first calls into the library, before it allocates
/// anything, are into heapprof: the sample rate, then a profile (with a
/// second argument, the profile first). An alarm ends it if one hangs.
const FIRST_CALLS_HOST: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) return 2;
    alarm(60);
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 3; }
    unsigned long long (*rate)(void) = (unsigned long long (*)(void))dlsym(lib, "hp_first_rate");
    int (*profile)(void) = (int (*)(void))dlsym(lib, "hp_write_profile");
    if (!rate || !profile) return 4;
    if (argc == 3) printf("PROFILE=%d\n", profile());
    printf("RATE=%llu\n", rate());
    if (argc == 2) printf("PROFILE=%d\n", profile());
    fflush(stdout);
    return 0;
}
"#;

/// A host that loads the library by `dlmopen` into a namespace of its
/// own and, for 50 rounds, runs it on 4 threads that exit, then reads
/// `stats()` on the main thread. Each thread holds a value under a key of
/// the host's own, made before the library was loaded, and checks it is
/// still there after the library's work. An alarm ends a host that hangs.
const NAMESPACE_CHURN_HOST: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static unsigned long long (*churn)(void);
static pthread_key_t key;
static int mine;

static void *worker(void *arg) {
    (void)arg;
    pthread_setspecific(key, &mine);
    churn();
    if (pthread_getspecific(key) != &mine) { printf("CLOBBERED\n"); fflush(stdout); _exit(7); }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    alarm(120);
    if (pthread_key_create(&key, NULL) != 0) return 3;
    void *lib = dlmopen(LM_ID_NEWLM, argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "dlmopen: %s\n", dlerror()); return 4; }
    churn = (unsigned long long (*)(void))dlsym(lib, "hp_churn");
    if (!churn) return 5;
    unsigned long long live = 0;
    for (int round = 0; round < 50; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) if (pthread_create(&t[i], NULL, worker, NULL) != 0) return 6;
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        live = churn();
    }
    printf("KEY=%u LIVE=%llu\n", (unsigned)key, live);
    fflush(stdout);
    return 0;
}
"#;

/// The fixture's `BLOCKS * BLOCK`.
const KEPT_BYTES: u64 = 32 * 4096;

/// Builds the fixture and `source` as the host in a fresh directory: the
/// directory, with `libhp_fixture.so` and `host` in it.
fn build_host(source: &str) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cdylib");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("tests/fixtures/cdylib/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("running cargo");
    assert!(
        built.status.success(),
        "building the fixture: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let library = target.join("debug/libhp_fixture.so");

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&library, dir.path().join("libhp_fixture.so")).unwrap();
    std::fs::write(dir.path().join("host.c"), source).unwrap();
    let compiled = Command::new("gcc")
        .args(["-O1", "-o", "host", "host.c", "-ldl", "-lpthread"])
        .current_dir(dir.path())
        .output()
        .expect("gcc runs (it links every Rust program on this platform)");
    assert!(compiled.status.success(), "gcc: {compiled:?}");
    dir
}

/// Builds the fixture and the host, runs the host (`own_namespace`: by
/// `dlmopen`) at rate 1 with an exit profile, and returns its stdout and
/// the directory.
fn run_host(own_namespace: bool) -> (String, tempfile::TempDir) {
    let dir = build_host(HOST);
    let mut host = Command::new(dir.path().join("host"));
    host.arg("./libhp_fixture.so").current_dir(dir.path());
    if own_namespace {
        host.arg("own-namespace");
    }
    without_heapprof_settings(&mut host);
    host.env("HEAPPROF_SAMPLE_RATE", "1")
        .env("HEAPPROF_OUT", dir.path().join("exit.pb.gz"));
    let out = host.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the host failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("NAMED={KEPT_BYTES}\n")),
        "the library's function is named after the host left its directory:\n{stdout}"
    );
    assert!(
        dir.path().join("exit.pb.gz").is_file(),
        "the exit profile is written at the host's exit"
    );
    (stdout, dir)
}

#[test]
fn a_hosted_library_is_named_and_outlives_dlclose() {
    let (stdout, _dir) = run_host(false);
    assert!(stdout.contains("LOADED=1\n"), "{stdout}");
}

#[test]
fn a_library_in_a_namespace_of_its_own_is_not_the_executable() {
    let (_, dir) = run_host(true);
    let profile =
        heapprof_testkit::profile::decode(&std::fs::read(dir.path().join("exit.pb.gz")).unwrap());
    let files: Vec<&str> = profile
        .mapping
        .iter()
        .map(|m| heapprof_testkit::profile::string(&profile, m.filename))
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("/libhp_fixture.so")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.ends_with("/host")), "{files:?}");
}

/// A library's first call into heapprof, before it has allocated, reads
/// the configuration, whose read allocates: that first allocation must
/// not wait for the read it is part of (the host hung there), and a
/// profile asked for next must not say heapprof is not the allocator.
#[test]
fn a_first_call_into_heapprof_before_any_allocation_returns() {
    let dir = build_host(FIRST_CALLS_HOST);
    for profile_first in [false, true] {
        first_calls(&dir, profile_first);
    }
}

fn first_calls(dir: &tempfile::TempDir, profile_first: bool) {
    let _ = std::fs::remove_file(dir.path().join("exit.pb.gz"));
    let mut host = Command::new(dir.path().join("host"));
    host.arg("./libhp_fixture.so").current_dir(dir.path());
    if profile_first {
        host.arg("profile-first");
    }
    without_heapprof_settings(&mut host);
    host.env("HEAPPROF_SAMPLE_RATE", "4096")
        .env("HEAPPROF_OUT", dir.path().join("exit.pb.gz"));
    let out = host.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the host failed ({}; SIGALRM: a call hung):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("RATE=4096\n"), "{stdout}");
    assert!(stdout.contains("PROFILE=0\n"), "{stdout}\n{stderr}");
    assert!(
        dir.path().join("exit.pb.gz").is_file(),
        "the exit profile is written: the setup the first allocation put off ran"
    );
}

/// In a namespace of its own the library has a C library of its own,
/// whose thread-exit callbacks never run and whose `pthread` keys name
/// slots the host's keys use: heapprof's exit hook there overwrote the
/// host's value under its key, and threads that had exited stayed in the
/// registry, which `stats()` then read from memory later threads were
/// given (the host hung in four runs of six). Each thread is counted
/// without being listed.
#[test]
fn threads_of_a_library_in_a_namespace_of_its_own_come_and_go() {
    let dir = build_host(NAMESPACE_CHURN_HOST);
    let mut host = Command::new(dir.path().join("host"));
    host.arg("./libhp_fixture.so").current_dir(dir.path());
    without_heapprof_settings(&mut host);
    host.env("HEAPPROF_SAMPLE_RATE", "1");
    let out = host.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the host failed ({}; exit 7: a key of the host's was overwritten; SIGALRM: it hung):\n\
         {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The library holds next to nothing between rounds: counts read from
    // memory that is no longer a listed thread's would be anything.
    let live: u64 = stdout
        .split("LIVE=")
        .nth(1)
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no LIVE= in {stdout}"));
    assert!(live < 1 << 20, "{live} bytes live: {stdout}");
}
