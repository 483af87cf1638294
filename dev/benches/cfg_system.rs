//! Overhead benchmark configuration: The system allocator alone (the baseline for heapprof over System).
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;

fn main() {
    workload::run_from_args(workload::Allocator { heapprof: false });
}
