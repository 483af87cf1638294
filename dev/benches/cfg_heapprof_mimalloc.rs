//! Overhead benchmark configuration: heapprof wrapping mimalloc.
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: heapprof::Profiler<mimalloc::MiMalloc> = heapprof::Profiler::wrap(mimalloc::MiMalloc);

fn main() {
    workload::run_from_args(workload::Allocator { heapprof: true });
}
