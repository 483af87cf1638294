//! Runtime support with no profile data of its own: locks and their
//! ranks, how shared tables grow, the reentrancy guard, heapprof's own
//! threads, the registry of threads (exact counters,
//! filter mask copies), the loaded objects' memory mappings, and whether a
//! signal handler is running, which process this is across forks,
//! memory in use against the limits that end the process, whether those
//! limits leave room for heapprof's own work, and small files read
//! without allocating.

pub(crate) mod growth;
pub(crate) mod lock;
pub(crate) mod mappings;
pub(crate) mod memory;
pub(crate) mod own_thread;
pub(crate) mod reentry;
pub(crate) mod registry;
pub(crate) mod room;
pub(crate) mod signals;
pub(crate) mod small_file;
pub(crate) mod this_process;
