//! Overhead benchmark configuration: mimalloc alone.
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    workload::run_from_args(workload::Allocator { heapprof: false });
}
