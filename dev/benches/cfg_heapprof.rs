//! Overhead benchmark configuration: heapprof over the system allocator; the rate comes from HEAPPROF_SAMPLE_RATE.
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

fn main() {
    workload::run_from_args(workload::Allocator { heapprof: true });
}
