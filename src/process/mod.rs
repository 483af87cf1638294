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
/// sample deep in a small thread stack.
pub(crate) fn on_first_allocation() {
    crate::support::mappings::keep_own_object_loaded();
    crate::support::mappings::note_first_objects();
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
/// where a thread may be spawned.
pub(crate) fn after_sample() {
    crate::dump::start_from_env();
    #[cfg(feature = "pyroscope")]
    crate::pyroscope::start_from_env();
}

/// A signal this thread is probably handling now, if any: one that has a
/// handler and is blocked in the thread's mask, as the kernel blocks a
/// signal while its handler runs (unless the handler was installed with
/// `SA_NODEFER`). Code reached from a handler (`exit` in a `SIGTERM`
/// handler runs the exit hooks) must not allocate: the handler may have
/// interrupted the inner allocator holding its lock, which is released
/// only when the handler returns. No allocation, no lock.
pub(crate) fn signal_being_handled() -> Option<libc::c_int> {
    // SAFETY: `sigset_t` and `sigaction` are plain data, valid zeroed;
    // with a null new set `pthread_sigmask` only reads the mask into
    // `mask`, and with a null new action `sigaction` only reads the
    // current one into `action`. Numbers that name no signal make
    // `sigaction` fail, which is checked.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) != 0 {
            return None;
        }
        (1..=libc::SIGRTMAX()).find(|&signal| {
            let mut action: libc::sigaction = std::mem::zeroed();
            libc::sigismember(&mask, signal) == 1
                && libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_DFL
                && action.sa_sigaction != libc::SIG_IGN
        })
    }
}
