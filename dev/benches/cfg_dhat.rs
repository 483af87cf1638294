//! Overhead benchmark configuration: dhat-rs, which records every allocation.
//! Run by `benches/overhead.rs`; see `benches/common/workload.rs`.

#[path = "common/workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    // dhat writes dhat-heap.json when the profiler is dropped; keep it out
    // of the source tree.
    std::env::set_current_dir(std::env::temp_dir()).unwrap();
    let _profiler = dhat::Profiler::new_heap();
    workload::run_from_args(workload::Allocator { heapprof: false });
}
