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
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU8, AtomicUsize};

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
    /// Where the thread's entries are in the registry's lists.
    pub(crate) list_places: ListPlaces,
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
            list_places: ListPlaces::new(),
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
    /// Taken out of the registry at exit, or never to be listed (in a
    /// loader namespace of its own, where its exit is not seen).
    Exited,
}

/// The indices of a thread's entries in the registry's two lists (its
/// counters, its mask copy), so that taking them out needs no search
/// however many threads are listed. Written under each list's lock: by
/// the thread as it joins a list, and by any thread whose leaving moves
/// this one's entry to a new index.
pub(crate) struct ListPlaces {
    pub(crate) counters: AtomicUsize,
    pub(crate) mask: AtomicUsize,
}

impl ListPlaces {
    const fn new() -> Self {
        ListPlaces {
            counters: AtomicUsize::new(0),
            mask: AtomicUsize::new(0),
        }
    }
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

    /// The highest rank held, if any. A plain loop: every lock taken asks,
    /// in a debug build unoptimized.
    pub(crate) fn highest(&self) -> Option<usize> {
        let mut rank = MAX_RANKS;
        while rank > 0 {
            rank -= 1;
            if self.by_rank[rank].get() > 0 {
                return Some(rank);
            }
        }
        None
    }

    /// Whether a lock of `rank` is held or waited for.
    pub(crate) fn holds(&self, rank: usize) -> bool {
        self.by_rank[rank % MAX_RANKS].get() > 0
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
///
/// A signal handler on the thread may push or pop while the thread itself
/// is in the middle of a push or a pop (it defers the frees it makes in a
/// handler, and runs them when it leaves heapprof). So a slot's value is
/// written only by whoever moved the slot from [`SLOT_EMPTY`] to
/// [`SLOT_WRITING`], and read only by whoever moved it from [`SLOT_FULL`]
/// to [`SLOT_READING`], each move one compare-exchange, which a handler
/// sees done or not done, never half done. Only this thread and its
/// handlers touch the slots; the atomics' orderings keep the compiler from
/// moving the value's copy across the state's changes.
pub(crate) struct DeferredFrees([DeferredSlot; DEFERRED_MAX]);

/// One put-off free, with the state that says who may touch it.
struct DeferredSlot {
    state: AtomicU8,
    value: Cell<MaybeUninit<Deferred>>,
}

/// A slot with no value: free to claim for a push.
const SLOT_EMPTY: u8 = 0;
/// A slot a push is writing.
const SLOT_WRITING: u8 = 1;
/// A slot with a value: free to claim for a pop.
const SLOT_FULL: u8 = 2;
/// A slot a pop is reading.
const SLOT_READING: u8 = 3;

impl DeferredSlot {
    /// Moves the slot from `from` to `to`; false if it was not at `from`.
    fn claim(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Acquire, Relaxed)
            .is_ok()
    }
}

impl DeferredFrees {
    const fn new() -> Self {
        DeferredFrees(
            [const {
                DeferredSlot {
                    state: AtomicU8::new(SLOT_EMPTY),
                    value: Cell::new(MaybeUninit::uninit()),
                }
            }; DEFERRED_MAX],
        )
    }

    /// Keeps `d`; false if all slots are taken.
    pub(crate) fn push(&self, d: Deferred) -> bool {
        let Some(slot) = self.0.iter().find(|s| s.claim(SLOT_EMPTY, SLOT_WRITING)) else {
            return false;
        };
        slot.value.set(MaybeUninit::new(d));
        slot.state.store(SLOT_FULL, Release);
        true
    }

    /// Takes the next one kept, if any. A plain loop: every exit from
    /// heapprof asks, in a debug build unoptimized.
    pub(crate) fn pop(&self) -> Option<Deferred> {
        let mut i = 0;
        let slot = loop {
            let s = self.0.get(i)?;
            if s.state.load(Relaxed) == SLOT_FULL && s.claim(SLOT_FULL, SLOT_READING) {
                break s;
            }
            i += 1;
        };
        // SAFETY: the slot was full: the push that filled it wrote the
        // value before it stored `SLOT_FULL`, and nobody writes it until
        // this pop stores `SLOT_EMPTY`.
        let d = unsafe { slot.value.get().assume_init() };
        slot.state.store(SLOT_EMPTY, Release);
        Some(d)
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
/// its rounds while keys are set, up to `PTHREAD_DESTRUCTOR_ITERATIONS`,
/// four: a thread whose first allocation comes in the last round is never
/// called back, and its registry entry outlives it; no test makes one).
/// The hook must tolerate running twice.
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

#[cfg(test)]
mod tests {
    use super::{DEFERRED_MAX, Deferred, DeferredFrees};
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// The queue under test, shared by the test's thread and its signal
    /// handler only.
    struct Shared(DeferredFrees);
    // SAFETY: only the test thread and the signal handlers that interrupt
    // it touch the queue, which is what `DeferredFrees` is made for.
    unsafe impl Sync for Shared {}

    static QUEUE: Shared = Shared(DeferredFrees::new());
    static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
    static PUSHED: AtomicUsize = AtomicUsize::new(0);
    static POPPED: AtomicUsize = AtomicUsize::new(0);
    static TORN: AtomicBool = AtomicBool::new(false);
    static HANDLED: AtomicUsize = AtomicUsize::new(0);
    /// Handlers the test runs, each at whatever point of a push or pop
    /// the signal finds its thread.
    const HANDLERS: usize = 2_000;

    /// # Safety
    /// None: it does nothing, as `Deferred::free`'s type asks.
    unsafe fn no_free(_: *const (), _: *mut u8, _: std::alloc::Layout) {}

    /// A value whose fields all say `id`, so that a copy made of two
    /// values shows.
    fn value(id: usize) -> Deferred {
        Deferred {
            free: no_free,
            inner: id as *const (),
            ptr: id as *mut u8,
            layout: std::alloc::Layout::from_size_align(id, 1).unwrap(),
        }
    }

    fn push_one() {
        let id = NEXT_ID.fetch_add(1, SeqCst);
        if QUEUE.0.push(value(id)) {
            PUSHED.fetch_add(1, SeqCst);
        }
    }

    fn pop_one() {
        if let Some(d) = QUEUE.0.pop() {
            let id = d.ptr as usize;
            if d.inner as usize != id
                || d.layout.size() != id
                || !std::ptr::eq(d.free as *const (), no_free as *const ())
            {
                TORN.store(true, SeqCst);
            }
            POPPED.fetch_add(1, SeqCst);
        }
    }

    extern "C" fn handler(_: libc::c_int) {
        HANDLED.fetch_add(1, SeqCst);
        push_one();
        if NEXT_ID.load(SeqCst).is_multiple_of(3) {
            pop_one();
        }
    }

    /// A signal handler that pushes and pops while the thread it
    /// interrupts is pushing or popping loses no value and tears none.
    #[test]
    fn handlers_and_their_thread_share_the_deferred_frees() {
        // SAFETY: installs a handler for SIGUSR2, which nothing else in
        // this binary uses; it touches only atomics and the queue.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
                0
            );
        }
        // SAFETY: pthread_self has no preconditions. Held as an integer
        // for the other thread: musl's `pthread_t` is a pointer.
        let me = unsafe { libc::pthread_self() } as usize;
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // One signal at a time, each sent once the last one was
                // handled: signals sent faster merge into one pending
                // signal while the test's thread waits for a core, so far
                // fewer handlers would run than were sent.
                while HANDLED.load(SeqCst) < HANDLERS {
                    let handled = HANDLED.load(SeqCst);
                    // SAFETY: the target is this test's thread, alive until
                    // the scope ends.
                    unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR2) };
                    while HANDLED.load(SeqCst) == handled {
                        std::thread::yield_now();
                    }
                }
                stop.store(true, SeqCst);
            });
            while !stop.load(SeqCst) {
                for _ in 0..DEFERRED_MAX / 2 {
                    push_one();
                }
                for _ in 0..DEFERRED_MAX / 2 {
                    pop_one();
                }
            }
        });
        // Signals sent at the end may still be arriving: block them first.
        // SAFETY: a signal mask set on this thread only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        while QUEUE.0.pop().is_some() {
            POPPED.fetch_add(1, SeqCst);
        }
        assert!(!TORN.load(SeqCst), "a popped value mixed two pushes");
        assert_eq!(
            POPPED.load(SeqCst),
            PUSHED.load(SeqCst),
            "every value pushed is popped once"
        );
    }
}
