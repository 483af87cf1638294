//! Overhead benchmark configuration: jemalloc, built with profiling support; its profiler is on only when the
//! driver sets `_RJEM_MALLOC_CONF=prof:true,lg_prof_sample:19` (512 KiB).
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    workload::run_from_args(workload::Allocator { heapprof: false });
}
