//! Overhead benchmark configuration: heapprof wrapping jemalloc (jemalloc's own profiler off).
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::wrap(tikv_jemallocator::Jemalloc);

fn main() {
    workload::run_from_args(workload::Allocator { heapprof: true });
}
