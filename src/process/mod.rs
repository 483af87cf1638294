//! The process around the profiler: what runs once, at the first
//! allocation that reaches heapprof, and around `fork`.
//!
//! The allocation slow path (`record/`) calls [`on_first_allocation`],
//! [`after_sample`] and [`on_failed_alloc`]: the one edge in the module graph that points up, from
//! the recording stage to the stages above it (dumps, the fork handlers),
//! which have no other way to start before the program calls heapprof.

pub(crate) mod fork;

/// Once per process, from the first allocation that reaches heapprof,
/// inside the profiler: heapprof's own object kept loaded, the objects
/// loaded at start, the fork handlers, the exit dump, and the unwinder
/// choice, made here rather than in a first
/// sample deep in a small thread stack. Out of line: inlined, its locals
/// would widen the slow path's frame on every sample, which the stack
/// budget for unwinding on small thread stacks does not allow for.
#[cold]
#[inline(never)]
pub(crate) fn on_first_allocation() {
    #[cfg(feature = "pyroscope")]
    crate::support::this_process::note_start();
    crate::support::this_process::note_first();
    crate::config::report::note_stderr();
    crate::support::mappings::keep_own_object_loaded();
    crate::support::mappings::note_first_objects();
    crate::support::mappings::note_started_by();
    crate::support::signals::note_start_mask();
    crate::support::own_thread::note_start_cpus();
    fork::register_handlers();
    crate::dump::register_exit_dump();
    crate::record::stack::decide_early();
}

/// The inner allocator returned null for an allocation of `size` bytes
/// the program asked for, seen on the slow path (outside the profiler):
/// the allocation-failure dump, if one is prepared. Allocates nothing and
/// takes no lock.
pub(crate) fn on_failed_alloc(size: usize) {
    crate::dump::failed::on_failed_alloc(size);
}

/// After each recorded sample, inside the profiler: starts the dumps and
/// the Pyroscope pusher the environment asks for, once, from a moment
/// where a thread may be spawned; never in a child forked from the
/// process heapprof started in (`this_process::is_first`).
pub(crate) fn after_sample() {
    crate::dump::start_from_env();
    #[cfg(feature = "pyroscope")]
    crate::pyroscope::start_from_env();
}
