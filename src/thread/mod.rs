//! The one thread-local: every piece of per-thread state heapprof keeps,
//! owned here and lent to the stages as plain data.
//!
//! [`Local`] is const-initialized and has no destructor, so reaching it
//! never allocates, never registers a destructor, and still works while
//! the thread's other thread-locals are torn down. Its fields are plain
//! types that never look for a thread-local themselves; the stages get
//! them through [`with`]. What a call of the fast path touches (the free
//! filter's mask, the countdown, the counters it bumps) comes first and
//! shares one cache line: an allocation or a free computes one
//! thread-local address and touches one line of memory.
//!
//! A second thread-local, with a destructor, only runs the exit hook
//! ([`arm_exit_hooks`]).

pub(crate) mod counters;
pub(crate) mod labels;
pub(crate) mod measure;

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;

use crate::sample::ThreadSampler;
use counters::Counters;
use labels::LabelState;
use measure::Measuring;

#[repr(C, align(64))]
pub(crate) struct Local {
    /// This thread's copy of the free filter's mask (`record/blocks.rs`),
    /// read by every free. 0 ("look every block up") until the thread is
    /// in the registry.
    pub(crate) filter_mask: AtomicUsize,
    /// Exact counts and the sampling countdown; the fast path's fields
    /// come first.
    pub(crate) counters: Counters,
    /// The sampler's state between samples (`sample/`), slow path only.
    pub(crate) sampler: ThreadSampler,
    /// A `heapprof::measure` active on this thread (`measure/`): the
    /// countdown held aside, the high-water mark; slow path only.
    pub(crate) measure: Measuring,
    /// Locks this thread holds or waits for, by rank (`support/lock.rs`).
    pub(crate) locks: HeldLocks,
    /// Frees put off until the thread leaves heapprof
    /// (`support/reentry.rs`).
    pub(crate) deferred: DeferredFrees,
    /// The stack facts the frame-pointer walk needs (`record/stack.rs`).
    pub(crate) stack: StackFacts,
    /// Where the thread is with the registry (`support/registry.rs`).
    pub(crate) registration: Cell<Registration>,
    /// The label sets in force and derived (`labels/`), slow path only.
    pub(crate) labels: LabelState,
}

// The fast path's fields (the mask, the countdown, the allocation and free
// counters) fit in the first cache line.
const _: () = assert!(std::mem::offset_of!(Local, counters) + counters::FAST_FIELDS_END <= 64);
// The label state, touched on the slow path only, stays off that line.
const _: () = assert!(std::mem::offset_of!(Local, labels) >= 64);
// No destructor: reaching the thread-local never registers one.
const _: () = assert!(!std::mem::needs_drop::<Local>());

thread_local! {
    static LOCAL: Local = const {
        Local {
            filter_mask: AtomicUsize::new(0),
            counters: Counters::new(),
            sampler: ThreadSampler::new(),
            measure: Measuring::new(),
            locks: HeldLocks::new(),
            deferred: DeferredFrees::new(),
            stack: StackFacts::new(),
            registration: Cell::new(Registration::NotListed),
            labels: LabelState::new(),
        }
    };
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

/// Runs `f` on this thread's state; `None` only if the thread-local is
/// unreachable (it has no destructor, so in practice never).
#[inline(always)]
pub(crate) fn with<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    LOCAL.try_with(f).ok()
}

/// Where a thread is with the registry of exact counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Registration {
    NotListed,
    /// In the registry, until the thread exits.
    Listed,
    /// The registry had no memory for the thread; tried again later.
    OutOfMemory,
    /// Taken out of the registry at exit.
    Exited,
}

/// The most lock ranks [`HeldLocks`] counts (`support/lock.rs` declares
/// fewer).
pub(crate) const MAX_RANKS: usize = 16;

/// Locks of each rank one thread holds or waits for, and how many of them
/// are taken by the free of a sampled block.
pub(crate) struct HeldLocks {
    by_rank: [Cell<u16>; MAX_RANKS],
    free_path: Cell<u32>,
}

impl HeldLocks {
    const fn new() -> Self {
        HeldLocks {
            by_rank: [const { Cell::new(0) }; MAX_RANKS],
            free_path: Cell::new(0),
        }
    }

    /// One more lock of `rank` held or waited for. The free-path count
    /// goes up first (and, in [`HeldLocks::down`], down last), so that a
    /// signal handler that runs in between sees the lock as held.
    pub(crate) fn up(&self, rank: usize, free_path: bool) {
        if free_path {
            self.free_path.set(self.free_path.get().saturating_add(1));
        }
        let c = &self.by_rank[rank % MAX_RANKS];
        c.set(c.get().saturating_add(1));
    }

    /// One lock of `rank` released (or given up on).
    pub(crate) fn down(&self, rank: usize, free_path: bool) {
        let c = &self.by_rank[rank % MAX_RANKS];
        c.set(c.get().saturating_sub(1));
        if free_path {
            self.free_path.set(self.free_path.get().saturating_sub(1));
        }
    }

    /// The highest rank held, if any.
    pub(crate) fn highest(&self) -> Option<usize> {
        self.by_rank.iter().rposition(|c| c.get() > 0)
    }

    /// Whether a lock the free path takes is held or waited for.
    pub(crate) fn free_path_held(&self) -> bool {
        self.free_path.get() > 0
    }
}

/// A free put off until the thread leaves heapprof: `free(inner, ptr,
/// layout)` does it.
#[derive(Clone, Copy)]
pub(crate) struct Deferred {
    /// # Safety
    /// Called once, with the three fields below, as
    /// `support::reentry::defer_free` says.
    pub free: unsafe fn(*const (), *mut u8, std::alloc::Layout),
    pub inner: *const (),
    pub ptr: *mut u8,
    pub layout: std::alloc::Layout,
}

/// Frees a thread can put off at once; past that they are dropped (the
/// blocks leak, which is safe).
pub(crate) const DEFERRED_MAX: usize = 8;

/// A thread's put-off frees, in no order.
pub(crate) struct DeferredFrees([Cell<Option<Deferred>>; DEFERRED_MAX]);

impl DeferredFrees {
    const fn new() -> Self {
        DeferredFrees([const { Cell::new(None) }; DEFERRED_MAX])
    }

    /// Keeps `d`; false if all slots are taken.
    pub(crate) fn push(&self, d: Deferred) -> bool {
        self.0
            .iter()
            .find(|s| s.get().is_none())
            .map(|s| s.set(Some(d)))
            .is_some()
    }

    /// Takes the next one kept, if any.
    pub(crate) fn pop(&self) -> Option<Deferred> {
        self.0.iter().find_map(Cell::take)
    }
}

/// What the frame-pointer walk knows about this thread's stack.
pub(crate) struct StackFacts {
    /// [lo, hi): the thread's stack, once queried; (0, 0) if unknown,
    /// which stops every walk at once.
    pub(crate) bounds: Cell<Option<(usize, usize)>>,
    /// The frame record (stack slot, return address) where this thread's
    /// stacks end in the C library's start-up code; (0, 0) until a DWARF
    /// walk confirms one.
    pub(crate) root: Cell<(usize, usize)>,
}

impl StackFacts {
    const fn new() -> Self {
        StackFacts {
            bounds: Cell::new(None),
            root: Cell::new((0, 0)),
        }
    }
}

/// The function [`arm_exit_hooks`] runs when a thread exits.
static ON_EXIT: OnceLock<fn()> = OnceLock::new();

/// Arranges for `hook` (the same function for every thread) to run when
/// this thread exits, twice over: a thread-local destructor, which runs
/// early in the thread's exit, and a `pthread` key destructor, which runs
/// even for a thread that arms it while its thread-local destructors are
/// over (a C thread whose first allocation is in a `pthread_key`
/// destructor: glibc runs those after the thread-local ones, and repeats
/// its rounds while keys are set). The hook must tolerate running twice.
/// False if the key could not be set.
pub(crate) fn arm_exit_hooks(hook: fn()) -> bool {
    static KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();
    let _ = ON_EXIT.set(hook);
    let _ = EXIT_HOOK.try_with(|_| ());
    let Some(key) = *KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor is an
        // `extern "C"` function that never unwinds.
        (unsafe { libc::pthread_key_create(&mut key, Some(exit_at_key_destructor)) } == 0)
            .then_some(key)
    }) else {
        return false;
    };
    // Any non-null value: the destructor runs only for non-null ones.
    // SAFETY: `key` was created above; the value is never dereferenced.
    unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<u8>().cast()) == 0 }
}

/// Whether this thread's thread-locals with destructors are still up
/// (false once they have started running: the thread is exiting).
pub(crate) fn alive() -> bool {
    EXIT_HOOK.try_with(|_| ()).is_ok()
}

fn run_exit_hook() {
    if let Some(hook) = ON_EXIT.get() {
        hook();
    }
}

extern "C" fn exit_at_key_destructor(_: *mut libc::c_void) {
    run_exit_hook();
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        run_exit_hook();
    }
}
