//! Helpers shared by heapprof's integration tests, one module per concern.
//!
//! * [`proto`]: the pprof messages heapprof encodes.
//! * [`profile`]: decoding a profile and querying it the way `pprof -top` does.
//! * [`check`]: assertions on a profile's values: invariants and estimates.
//! * [`child`]: re-running the test binary as a child process, and waiting for forked children.
//! * [`watchdog`]: aborting a test that deadlocks.
//! * [`rng`]: a small seedable generator.
//! * [`http`]: a client for heapprof's HTTP server.
//! * [`labels`]: label sets as the tests compare them.
//! * [`process`]: this process's memory as the kernel reports it.
//! * [`pyroscope`]: a stand-in for Pyroscope's ingest endpoint, for the pusher.
//! * [`tools`]: external tools (`go tool pprof`), skipped when missing.
//! * [`arena`]: bump arenas over fresh mappings, for inner allocators.
//! * [`signals`]: installing the signal handlers tests allocate in.
//! * [`poll`]: polling futures by hand, with no runtime.

pub mod arena;
pub mod check;
pub mod child;
pub mod http;
pub mod labels;
pub mod poll;
pub mod process;
pub mod profile;
pub mod pyroscope;
pub mod rng;
pub mod signals;
pub mod tools;
pub mod watchdog;

/// The pprof messages, compiled here from the generated code heapprof
/// encodes with (`src/output/proto.rs`), which the crate keeps private.
#[path = "../../../src/output/proto.rs"]
pub mod proto;
