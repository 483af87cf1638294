//! heapprof's own threads (the HTTP server's, the dump series', the
//! Pyroscope pusher's): inside the profiler from their first instruction
//! to their exit, so that nothing on them counts as the program's.
//!
//! They are started with `pthread_create`, not `std::thread`: the
//! standard library frees the box that carried the closure on the new
//! thread before the closure runs, a free that would count as the
//! program's (and, the thread being in no registry yet, at once). Here
//! the thread's first step takes it inside the profiler for good; then
//! it frees the box. The spawn, the join and the handle's drop run inside
//! the profiler on the calling thread too.

use std::ffi::CStr;
use std::io;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::support::reentry::Inside;
use crate::support::signals::HeldOff;
use crate::support::this_process::ThisProcess;

/// A running thread of heapprof's, started by [`spawn`]. Dropping it
/// leaves the thread running (detached).
///
/// A child forked after the spawn has no copy of the thread, and its
/// `pthread_t` may name a thread the child starts later: there, joining
/// returns at once and dropping detaches nothing.
#[derive(Debug)]
pub(crate) struct OwnThread {
    id: ThreadId,
    /// The process that started the thread.
    started_by: ThisProcess,
    joined: bool,
    /// Dropped inside the profiler ([`OwnThread::drop`]).
    wake: ManuallyDrop<Arc<Wake>>,
}

/// A `pthread_t`: an integer with glibc, a pointer with musl, which would
/// make [`OwnThread`] (and the public handles that hold one) neither
/// `Send` nor `Sync` there.
#[derive(Debug, Clone, Copy)]
struct ThreadId(libc::pthread_t);

// SAFETY: a `pthread_t` is an opaque name for a thread, never dereferenced
// by heapprof; POSIX lets any thread of the process pass it to
// `pthread_join` or `pthread_detach`, which is all `OwnThread` does with it.
unsafe impl Send for ThreadId {}
// SAFETY: as above; it is only copied, never written through.
unsafe impl Sync for ThreadId {}

/// Wakes a thread of heapprof's from [`Wake::wait`] before its time.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    woken: Mutex<bool>,
    ready: Condvar,
}

impl Wake {
    /// Ends the thread's current wait, or its next one.
    pub(crate) fn wake(&self) {
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.ready.notify_all();
    }

    /// Waits up to `timeout`, less if woken ([`Wake::wake`]).
    pub(crate) fn wait(&self, timeout: Duration) {
        let woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut woken, _) = self
            .ready
            .wait_timeout_while(woken, timeout, |woken| !*woken)
            .unwrap_or_else(PoisonError::into_inner);
        *woken = false;
    }
}

/// What the new thread takes: its name, its work and its [`Wake`].
struct Start {
    name: &'static CStr,
    work: Box<dyn FnOnce(&Wake) + Send>,
    wake: Arc<Wake>,
}

/// Address space a new thread may take besides its stack: glibc's
/// allocator gives a thread its own heap at its first allocation, 64 MiB
/// reserved on 64-bit targets (twice that for a moment, to align it), and
/// aborts the process when a thread's first thread-local destructor
/// cannot be registered for want of memory. Other C libraries'
/// allocators reserve no such heap, and nothing is asked for there.
/// Measured: an HTTP connection thread under `RLIMIT_AS` with 60 to
/// 64 MiB left aborted the program in 3 to 6 of 20 runs; with 66 MiB or
/// more, in none of 60. Asked for here with some margin.
const THREAD_ROOM: usize = if cfg!(target_env = "gnu") {
    72 << 20
} else {
    0
};

/// Starts `work` on a thread of heapprof's own, named `name` (its first
/// [`NAME_BYTES`] bytes), with a stack of `stack_bytes` besides what the
/// C library keeps there (thread-local storage). `work` is given the
/// thread's [`Wake`] to wait on. Without [`THREAD_ROOM`] and the stack
/// left under the process's memory limits
/// ([`room_for`](super::room::room_for)), no thread is started and the
/// error is `EAGAIN`, as from `pthread_create` out of resources.
pub(crate) fn spawn(
    name: &'static CStr,
    stack_bytes: usize,
    work: impl FnOnce(&Wake) + Send + 'static,
) -> io::Result<OwnThread> {
    if !super::room::room_for(THREAD_ROOM.saturating_add(stack_bytes)) {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    let _inside = Inside::enter();
    let wake = Arc::new(Wake::default());
    let start = Box::into_raw(Box::new(Start {
        name,
        work: Box::new(work),
        wake: Arc::clone(&wake),
    }));
    // SAFETY: `attr` is initialized by pthread_attr_init before any other
    // use and destroyed once; `start` is a valid `Box<Start>` pointer that
    // `run` takes over if the thread starts, and that is taken back here
    // if it does not.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let init = libc::pthread_attr_init(&mut attr);
        if init != 0 {
            drop(Box::from_raw(start));
            // An error that holds no memory, so none of heapprof's is
            // handed to the program.
            return Err(io::Error::from_raw_os_error(init));
        }
        let stack = stack_bytes
            .max(libc::PTHREAD_STACK_MIN)
            .saturating_add(kept_by_libc(&attr))
            .next_multiple_of(page_size());
        // Only a size below the minimum or not page-aligned is refused,
        // and this one is neither.
        libc::pthread_attr_setstacksize(&mut attr, stack);
        let mut id: libc::pthread_t = std::mem::zeroed();
        // The new thread copies the calling thread's signal mask: with all
        // but those a thread raises for itself (faults, a seccomp trap's
        // SIGSYS) blocked there, it takes none of the signals the
        // program directs at the process (a program that waits for SIGTERM
        // with `sigwait` on one thread, blocked on all others, gets it).
        let held = HeldOff::all_but_faults();
        let made = libc::pthread_create(&mut id, &attr, run, start.cast());
        drop(held);
        libc::pthread_attr_destroy(&mut attr);
        if made != 0 {
            drop(Box::from_raw(start));
            return Err(io::Error::from_raw_os_error(made));
        }
        Ok(OwnThread {
            id: ThreadId(id),
            started_by: ThisProcess::get(),
            joined: false,
            wake: ManuallyDrop::new(wake),
        })
    }
}

/// The new thread's entry: inside the profiler first, then the rest.
extern "C" fn run(start: *mut libc::c_void) -> *mut libc::c_void {
    // Thread-local destructors included: the flag has none of its own.
    std::mem::forget(Inside::enter());
    // SAFETY: `spawn` passed a `Box<Start>` pointer it gave up.
    let start = unsafe { Box::from_raw(start.cast::<Start>()) };
    set_name(start.name);
    leave_realtime();
    take_start_cpus();
    let Start { work, wake, .. } = *start;
    // A panic was reported by the panic hook; it must not unwind into C,
    // nor may its payload's drop (which could panic again).
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&wake))) {
        std::mem::forget(payload);
    }
    std::ptr::null_mut()
}

impl OwnThread {
    /// The thread's [`Wake`].
    pub(crate) fn wake(&self) -> &Arc<Wake> {
        &self.wake
    }

    /// Whether the thread was started by this process, not by a parent
    /// it was forked from.
    pub(crate) fn started_here(&self) -> bool {
        self.started_by.is_current()
    }

    /// Waits for the thread to exit; in a forked child, returns at once.
    pub(crate) fn join(mut self) {
        let _inside = Inside::enter();
        if self.started_here() {
            // SAFETY: this process started the thread joinable, and
            // `joined` keeps it from being joined or detached again.
            unsafe { libc::pthread_join(self.id.0, std::ptr::null_mut()) };
        }
        self.joined = true;
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        let _inside = Inside::enter();
        if !self.joined && self.started_here() {
            // SAFETY: this process started the thread joinable, and it was
            // neither joined nor detached since.
            unsafe { libc::pthread_detach(self.id.0) };
        }
        // SAFETY: dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.wake) };
    }
}

/// Moves the calling thread from a real-time scheduling policy, copied
/// from the thread that started it, to the ordinary one, so that a
/// profile built on it never preempts the program's threads. Ordinary,
/// batch and idle policies are kept. Raw system calls: musl's wrappers
/// of these two only fail (`ENOSYS`).
fn leave_realtime() {
    const SCHED_DEADLINE: libc::c_long = 6;
    // SAFETY: asks for the calling thread's (0) policy; no memory passed.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    let policy = policy & !libc::c_long::from(libc::SCHED_RESET_ON_FORK);
    let realtime = [
        libc::c_long::from(libc::SCHED_FIFO),
        libc::c_long::from(libc::SCHED_RR),
        SCHED_DEADLINE,
    ];
    if realtime.contains(&policy) {
        // SAFETY: `sched_param` is plain data; zeroed is priority 0, the
        // ordinary policy's only one.
        let ordinary: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: sets the calling thread's (0) policy from a valid
        // `sched_param` that outlives the call. Leaving a real-time
        // policy for the ordinary one needs no privilege; a failure
        // leaves the thread as it was.
        unsafe {
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0,
                libc::SCHED_OTHER,
                &raw const ordinary,
            )
        };
    }
}

/// Words of a CPU mask as the kernel reads and writes one (`unsigned
/// long`s): 1024 CPUs, as glibc's `cpu_set_t`.
const CPU_WORDS: usize = 1024 / usize::BITS as usize;

/// The CPUs of the thread of heapprof's first allocation: those the
/// process started with (`taskset`, a container's cpuset), before the
/// program pinned any thread. Bit `n % usize::BITS` of word
/// `n / usize::BITS` for CPU `n`; all zero until noted.
static START_CPUS: [AtomicUsize; CPU_WORDS] = [const { AtomicUsize::new(0) }; CPU_WORDS];

/// Notes the calling thread's CPUs as those the process started with
/// ([`START_CPUS`]). Called once, at heapprof's first allocation. No
/// allocation; on a machine with more CPUs than a mask holds, nothing is
/// noted.
pub(crate) fn note_start_cpus() {
    if let Some(mask) = cpus_of(0) {
        for (noted, word) in START_CPUS.iter().zip(mask) {
            noted.store(word, Relaxed);
        }
    }
}

/// The CPUs thread `tid` may run on (0: the calling thread); `None` if the
/// kernel does not say (no such thread, a mask too small).
fn cpus_of(tid: libc::pid_t) -> Option<[usize; CPU_WORDS]> {
    let mut mask = [0usize; CPU_WORDS];
    // SAFETY: the kernel writes at most `size_of_val(&mask)` bytes into
    // `mask`, a live local.
    let written = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    (written > 0).then_some(mask)
}

/// Moves the calling thread off the CPU the thread that started it may be
/// pinned to, since a program may keep that thread on a CPU of its own (a
/// thread per core), which a profile built there would take from it. It
/// goes to the CPUs the process started with, as far as the program still
/// lets either that thread or its main thread run there: a program
/// confined as a whole since (`taskset -a -p`, its main thread narrowing
/// its CPUs before it starts others) keeps heapprof within the new bounds.
/// With none noted, none in common, or none left in the cpuset, the thread
/// keeps the CPUs it has. Raw system calls, as in [`leave_realtime`].
fn take_start_cpus() {
    // SAFETY: getpid takes no arguments and cannot fail.
    let main = unsafe { libc::getpid() };
    let (Some(starter), Some(main)) = (cpus_of(0), cpus_of(main)) else {
        return;
    };
    let mask: [usize; CPU_WORDS] =
        std::array::from_fn(|i| START_CPUS[i].load(Relaxed) & (starter[i] | main[i]));
    if mask.iter().all(|&word| word == 0) || mask == starter {
        return;
    }
    // A refusal changes nothing.
    set_cpus(0, &mask);
}

/// Limits thread `tid` (0: the calling thread) to the CPUs of `mask`;
/// whether the kernel took it.
fn set_cpus(tid: libc::pid_t, mask: &[usize; CPU_WORDS]) -> bool {
    // SAFETY: the kernel reads `size_of_val(mask)` bytes of `mask`, which
    // the reference keeps alive for the call.
    let set = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid,
            std::mem::size_of_val(mask),
            mask.as_ptr(),
        )
    };
    set == 0
}

/// The most bytes of a thread name Linux keeps, its NUL not counted.
const NAME_BYTES: usize = 15;

/// Names the calling thread, as `ps`, `top` and debuggers show it: the
/// first [`NAME_BYTES`] bytes of `name`.
fn set_name(name: &CStr) {
    let mut kept = [0u8; NAME_BYTES + 1];
    let bytes = name.to_bytes();
    let n = bytes.len().min(NAME_BYTES);
    kept[..n].copy_from_slice(&bytes[..n]);
    // SAFETY: `kept` is NUL-terminated (its last byte stays 0) and no
    // longer than the kernel takes, so glibc does not refuse it.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), kept.as_ptr().cast()) };
}

/// The bytes of a new thread's stack the C library keeps for itself
/// (thread-local storage and its own needs): glibc's
/// `__pthread_get_minstack`, where there is one, else none counted.
fn kept_by_libc(attr: &libc::pthread_attr_t) -> usize {
    type MinStack = unsafe extern "C" fn(*const libc::pthread_attr_t) -> libc::size_t;
    /// The function's address, 1 if there is none, 0 before the first look.
    static FOUND: AtomicUsize = AtomicUsize::new(0);
    let mut at = FOUND.load(Relaxed);
    if at == 0 {
        // SAFETY: a lookup of a NUL-terminated name in the loaded objects.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__pthread_get_minstack".as_ptr()) };
        at = if sym.is_null() { 1 } else { sym as usize };
        FOUND.store(at, Relaxed);
    }
    if at == 1 {
        return 0;
    }
    // SAFETY: glibc's `__pthread_get_minstack` has this signature and
    // only reads the attributes.
    let min_stack: MinStack = unsafe { std::mem::transmute::<usize, MinStack>(at) };
    // SAFETY: `attr` is initialized.
    unsafe { min_stack(attr) }
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// What a thread of heapprof's found about itself: whether SIGTERM is
    /// blocked on it, whether any of SIGSEGV, SIGSYS and SIGTRAP is, and
    /// its scheduling policy.
    fn started_thread_sees() -> (bool, bool, libc::c_long) {
        let (tx, rx) = mpsc::channel();
        let thread = spawn(c"heapprof-test", 64 << 10, move |_| {
            // SAFETY: reads this thread's mask into a zeroed `sigset_t`;
            // asks for this thread's policy.
            let seen = unsafe {
                let mut mask: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
                (
                    libc::sigismember(&mask, libc::SIGTERM) == 1,
                    [libc::SIGSEGV, libc::SIGSYS, libc::SIGTRAP]
                        .iter()
                        .any(|&n| libc::sigismember(&mask, n) == 1),
                    libc::syscall(libc::SYS_sched_getscheduler, 0),
                )
            };
            tx.send(seen).unwrap();
        })
        .unwrap();
        thread.join();
        rx.recv().unwrap()
    }

    /// This test's thread under `policy` at priority 1 until dropped.
    struct Scheduled;

    impl Scheduled {
        fn under(policy: libc::c_int) -> io::Result<Scheduled> {
            // SAFETY: `sched_param` is plain data; sets this thread's
            // policy from it.
            let set = unsafe {
                let mut param: libc::sched_param = std::mem::zeroed();
                param.sched_priority = 1;
                libc::syscall(libc::SYS_sched_setscheduler, 0, policy, &raw const param)
            };
            if set == 0 {
                Ok(Scheduled)
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }

    impl Drop for Scheduled {
        fn drop(&mut self) {
            // SAFETY: as in `under`, back to the ordinary policy.
            unsafe {
                let param: libc::sched_param = std::mem::zeroed();
                libc::syscall(
                    libc::SYS_sched_setscheduler,
                    0,
                    libc::SCHED_OTHER,
                    &raw const param,
                );
            }
        }
    }

    /// The calling thread's CPUs.
    fn cpus() -> Vec<usize> {
        let mask = cpus_of(0).expect("this thread's CPUs");
        let bits = usize::BITS as usize;
        (0..CPU_WORDS * bits)
            .filter(|&n| mask[n / bits] & 1 << (n % bits) != 0)
            .collect()
    }

    /// Limits thread `tid` (0: the calling one) to `cpus`.
    fn pin(tid: libc::pid_t, cpus: &[usize]) {
        let bits = usize::BITS as usize;
        let mut mask = [0usize; CPU_WORDS];
        for cpu in cpus {
            mask[cpu / bits] |= 1 << (cpu % bits);
        }
        assert!(set_cpus(tid, &mask), "{}", io::Error::last_os_error());
    }

    /// Held by the tests that change CPUs, one of them the harness's main
    /// thread's, which the threads they start look at.
    static CPUS_CHANGED: Mutex<()> = Mutex::new(());

    /// Runs `test` with the CPUs it may use, after noting them as the
    /// process's start ones, on a thread of its own (so that no test's
    /// thread stays pinned) and alone among the tests that change CPUs;
    /// `None`, saying that the test skips, with fewer than two CPUs.
    fn with_two_cpus<R: Send + 'static>(
        test: impl FnOnce(&[usize]) -> R + Send + 'static,
    ) -> Option<R> {
        std::thread::spawn(move || {
            let _alone = CPUS_CHANGED.lock().unwrap_or_else(PoisonError::into_inner);
            let all = cpus();
            if all.len() < 2 {
                assert!(
                    std::env::var_os("HEAPPROF_REQUIRE_TWO_CPUS").is_none(),
                    "HEAPPROF_REQUIRE_TWO_CPUS is set, but this thread may run on {all:?} only"
                );
                eprintln!("skipped: this thread may run on one CPU only ({all:?})");
                return None;
            }
            note_start_cpus();
            Some(test(&all))
        })
        .join()
        .unwrap()
    }

    /// The CPUs of a thread of heapprof's started from the calling one.
    fn started_thread_cpus() -> Vec<usize> {
        let (tx, rx) = mpsc::channel();
        spawn(c"heapprof-test", 64 << 10, move |_| {
            tx.send(cpus()).unwrap()
        })
        .unwrap()
        .join();
        rx.recv().unwrap()
    }

    /// Started from a thread the program pinned to one CPU, heapprof's
    /// thread runs on the CPUs the process started with. Needs two CPUs
    /// (CI sets `HEAPPROF_REQUIRE_TWO_CPUS`).
    #[test]
    fn a_new_thread_leaves_a_pinned_thread_s_cpu() {
        let Some((all, pinned, seen)) = with_two_cpus(|all| {
            pin(0, &all[1..2]);
            (all.to_vec(), cpus(), started_thread_cpus())
        }) else {
            return;
        };
        assert_eq!(pinned, vec![all[1]]);
        assert_eq!(seen, all, "heapprof's thread kept the pinned thread's CPU");
    }

    /// A program that confines itself as a whole after its start (its
    /// main thread and the one starting heapprof's on one CPU, as
    /// `taskset -a -p` leaves them) keeps heapprof's new threads there.
    #[test]
    fn a_new_thread_stays_within_a_program_confined_since_its_start() {
        // SAFETY: no preconditions.
        let main = unsafe { libc::getpid() };
        let Some((all, seen)) = with_two_cpus(move |all| {
            pin(0, &all[1..2]);
            // The harness's main thread only waits meanwhile.
            pin(main, &all[1..2]);
            let seen = started_thread_cpus();
            pin(main, all);
            (all.to_vec(), seen)
        }) else {
            return;
        };
        assert_eq!(seen, vec![all[1]]);
    }

    /// Started from a thread that takes every signal, heapprof's thread
    /// takes none but those it raises itself, so a signal sent to the
    /// process goes to a thread of the program's, and a seccomp trap's
    /// SIGSYS to the program's handler.
    #[test]
    fn a_new_thread_takes_no_signals_but_its_own() {
        let (term_blocked, raised_blocked, _) = started_thread_sees();
        assert!(term_blocked, "SIGTERM is not blocked on heapprof's thread");
        assert!(
            !raised_blocked,
            "a signal heapprof's thread raises must not be held off"
        );
    }

    /// Started from a real-time thread, heapprof's thread runs under the
    /// ordinary policy. Needs the privilege to use one (root here; CI
    /// sets `HEAPPROF_REQUIRE_ROOT`).
    #[test]
    fn a_new_thread_leaves_a_realtime_policy() {
        for policy in [libc::SCHED_FIFO, libc::SCHED_RR] {
            let scheduled = match Scheduled::under(policy) {
                Ok(s) => s,
                Err(e) => {
                    assert!(
                        std::env::var_os("HEAPPROF_REQUIRE_ROOT").is_none(),
                        "HEAPPROF_REQUIRE_ROOT is set, but no real-time policy: {e}"
                    );
                    eprintln!("skipped: this thread cannot take a real-time policy ({e})");
                    return;
                }
            };
            let (_, _, seen) = started_thread_sees();
            drop(scheduled);
            assert_eq!(
                seen,
                libc::c_long::from(libc::SCHED_OTHER),
                "policy {policy}"
            );
        }
    }
}
