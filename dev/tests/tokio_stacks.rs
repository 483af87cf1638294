//! A tokio task's allocations end at the task's own future: no frames of
//! the scheduler, the worker thread or std's thread start-up below it, on
//! a multi-threaded runtime's worker threads.

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[inline(never)]
fn keep(n: usize) -> Vec<u8> {
    std::hint::black_box(vec![5u8; n])
}

async fn handler(n: usize) -> Vec<u8> {
    tokio::task::yield_now().await;
    keep(n)
}

#[test]
fn a_tasks_stack_ends_at_its_future() {
    heapprof::set_sample_rate(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let before = heapprof::snapshot();
    let kept = rt.block_on(async { tokio::spawn(handler(76_543)).await.unwrap() });
    let grown = heapprof::snapshot().delta(&before);
    let site = grown
        .sites()
        .iter()
        .find(|s| s.inuse_bytes == 76_543)
        .unwrap_or_else(|| panic!("the task's block:\n{grown}"));
    let names: Vec<&str> = site.frames.iter().map(|f| f.function.as_str()).collect();
    println!("{names:#?}");
    // Unoptimized, a worker's stack is deeper than heapprof keeps: it ends
    // in the cut's marker, which stays, after the task's future.
    let names = match names.split_last() {
        Some((last, rest)) if last.starts_with("[heapprof: stack cut here") => rest.to_vec(),
        _ => names,
    };
    assert!(names[0].ends_with("tokio_stacks::keep"), "{names:#?}");
    assert!(
        names.last().unwrap().starts_with("tokio_stacks::handler"),
        "the stack ends at the task's future: {names:#?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("tokio::") || n.contains("start_thread")),
        "{names:#?}"
    );
    drop(kept);
    heapprof::set_sample_rate(512 * 1024);
}
