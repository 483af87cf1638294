//! The overhead benchmark's real-program workloads keep working in every
//! configuration binary: each runs `serde_json` and `regex` at a small
//! scale and reports its time, the heapprof ones also their allocations;
//! the service answers orders under the load generator, and where
//! heapprof is the allocator a scrape of `/debug/pprof/heap` returns a
//! profile whose samples reach the service's handler.

#[path = "../benches/common/binaries.rs"]
mod binaries;
#[allow(dead_code)] // the driver uses the parts this test does not
#[path = "../benches/common/load.rs"]
mod load;

use binaries::Service;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every configuration binary (`benches/cfg_*.rs`) and whether heapprof is
/// its allocator.
const CONFIGS: [(&str, bool); 7] = [
    ("cfg_system", false),
    ("cfg_heapprof", true),
    ("cfg_jemalloc", false),
    ("cfg_heapprof_jemalloc", true),
    ("cfg_mimalloc", false),
    ("cfg_heapprof_mimalloc", true),
    ("cfg_dhat", false),
];

/// The directory the benchmark binaries are built into, after building
/// them (`cargo test` does not build benchmarks; cargo does nothing when
/// they are up to date): the release profile's, in this test's target
/// directory, whichever profile this test was built in.
fn bench_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // `<target>/<profile>/deps/<this test>`.
        let target = exe.ancestors().nth(3).unwrap().to_path_buf();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "heapprof-dev", "--benches"])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --benches");
        assert!(status.success(), "building the benchmarks failed");
        target.join("release").join("deps")
    })
}

/// The newest build of the benchmark binary `name`.
fn bench_binary(name: &str) -> PathBuf {
    binaries::newest(bench_dir(), name)
        .unwrap_or_else(|| panic!("no {name} in {}", bench_dir().display()))
}

fn printed(output: &str, key: &str) -> Option<u64> {
    binaries::printed(output, key)
}

#[test]
fn every_configuration_runs_the_real_program_workloads() {
    for (config, heapprof) in CONFIGS {
        let bin = bench_binary(config);
        for workload in ["serde_json", "regex"] {
            let out = Command::new(&bin)
                .args([workload, "1"])
                .output()
                .expect("run a configuration binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{config} {workload}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let elapsed = printed(&stdout, "elapsed_ns=");
            assert!(
                elapsed.is_some_and(|ns| ns > 0),
                "{config} {workload}: {stdout}"
            );
            assert!(
                printed(&stdout, "user_ns=").is_some(),
                "{config} {workload}: {stdout}"
            );
            let allocations = printed(&stdout, "allocations=");
            if heapprof {
                // At 1 % each workload still makes thousands of Strings.
                assert!(
                    allocations.is_some_and(|n| n > 1000),
                    "{config} {workload}: {stdout}"
                );
            } else {
                assert_eq!(allocations, None, "{config} {workload}: {stdout}");
            }
        }
    }
}

#[test]
fn the_service_answers_orders_under_load() {
    let service = Service::start(&bench_binary("cfg_system"), 1, &[]);
    let load = load::run(service.port, 2, 40, false).expect("the load runs");
    assert_eq!(load.latencies_ns.len(), 40);
    assert!(load.percentile_ns(50.0) <= load.percentile_ns(99.0));
    assert!(load.scrapes_ns.is_empty());
    assert_eq!(load.first_scrape_ns, None);

    // A quote prices every item of the order.
    let mut conn = load::Connection::open(service.port).unwrap();
    let (status, body) = conn
        .request("POST", "/orders", load::order(7).as_bytes(), false)
        .unwrap();
    assert_eq!(status, 200);
    let quote = String::from_utf8(body).unwrap();
    assert_eq!(quote.matches("\"line_total\"").count(), 10, "{quote}");
    assert!(quote.len() > 2000, "a quote is a few KiB: {quote}");
    let (status, _) = conn
        .request("POST", "/orders", b"{not json", false)
        .unwrap();
    assert_eq!(status, 400);
    // Without heapprof there is no profile to serve.
    let (status, _) = conn
        .request("GET", "/debug/pprof/heap", b"", false)
        .unwrap();
    assert_eq!(status, 404);

    let exit = service.stop();
    // Its CPU time, in ticks of a few ms: a light load may show none.
    assert!(printed(&exit, "user_ns=").is_some(), "{exit}");
}

#[test]
fn a_scrape_of_the_service_returns_its_heap_profile() {
    // Every allocation sampled, so that the handler's are in the profile.
    let service = Service::start(
        &bench_binary("cfg_heapprof"),
        1,
        &[("HEAPPROF_SAMPLE_RATE", "1")],
    );
    let load = load::run(service.port, 2, 20, true).expect("the load runs");
    assert_eq!(load.latencies_ns.len(), 20);
    // The scrape between the warm-up and the timed requests happened.
    assert!(load.first_scrape_ns.is_some_and(|ns| ns > 0));
    let profile = heapprof_testkit::profile::decode(&load::scrape_heap(service.port).unwrap());
    let quoting = profile
        .sample
        .iter()
        .filter(|s| {
            heapprof_testkit::profile::stack_names(&profile, s)
                .iter()
                .any(|f| f.contains("service::quote"))
        })
        .count();
    assert!(quoting > 0, "no sample under service::quote");
    service.stop();
}
