//! Whether memory is left for heapprof's own work, so that heapprof skips
//! the work instead of ending the program:
//!
//! * [`short_of`] ([`room_for`]): address space and committed memory. A
//!   build or a name lookup allocates through the global allocator, where
//!   a failed allocation aborts the program; under an address-space limit
//!   (`RLIMIT_AS`) or strict overcommit (`vm.overcommit_memory = 2`)
//!   allocations fail rather than the kernel's OOM killer stepping in.
//! * [`memory_short_of`]: memory in use against a cgroup's `memory.max` or
//!   `memory.high`, or `HEAPPROF_MEMORY_LIMIT`. Past those the kernel
//!   kills the process (or throttles it), whatever the allocator says.
//!
//! The answers are read, not tried: mapping the room to see whether it
//! can be had would take it, for that moment, from the program's own
//! threads.

use super::memory::{Source, Watch};
use super::small_file;

/// A limit that leaves too little, how much it leaves, and how much was
/// asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    pub limit: Limit,
    /// Bytes the limit leaves now.
    pub left: u64,
    /// Bytes asked for.
    pub needed: u64,
}

impl Short {
    /// "`limit` leaves N MiB, less than the M MiB `what`", N rounded
    /// down and M up (so that N is less than M as written).
    pub(crate) fn words(&self, what: &str) -> String {
        const MIB: u64 = 1 << 20;
        let needed = self.needed.div_ceil(MIB);
        match self.left / MIB {
            0 => format!(
                "{} leaves less than 1 MiB, and {what} {needed} MiB",
                self.limit.name()
            ),
            left => format!(
                "{} leaves {left} MiB, less than the {needed} MiB {what}",
                self.limit.name()
            ),
        }
    }
}

/// The limits heapprof leaves room under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Limit {
    /// `RLIMIT_AS`, against the process's address space.
    AddressSpace = 1,
    /// `CommitLimit` under strict overcommit, against the system's
    /// committed memory.
    Commit,
    /// A cgroup's `memory.max`, against its working set.
    CgroupMax,
    /// A cgroup's `memory.high`, against its working set.
    CgroupHigh,
    /// `HEAPPROF_MEMORY_LIMIT`, against the resident size.
    Configured,
}

impl Limit {
    /// The limit in words.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Limit::AddressSpace => "RLIMIT_AS",
            Limit::Commit => "the strict overcommit limit",
            Limit::CgroupMax => "the cgroup's memory.max",
            Limit::CgroupHigh => "the cgroup's memory.high",
            Limit::Configured => "HEAPPROF_MEMORY_LIMIT",
        }
    }

    /// The limit stored as [`Limit`] `as u8`; `None` for any other byte.
    pub(crate) fn from_u8(n: u8) -> Option<Limit> {
        Some(match n {
            1 => Limit::AddressSpace,
            2 => Limit::Commit,
            3 => Limit::CgroupMax,
            4 => Limit::CgroupHigh,
            5 => Limit::Configured,
            _ => return None,
        })
    }
}

/// Whether `bytes` more of address space and of committed memory are
/// within this process's limits now ([`short_of`]).
pub(crate) fn room_for(bytes: usize) -> bool {
    short_of(bytes).is_none()
}

/// The limit on address space or committed memory that leaves less than
/// `bytes` now, if any. Either limit unknown or not set (`/proc` not
/// mounted, say) counts as room. The same `bytes` is asked of both,
/// though some of it (read-only file mappings, reserved heaps) is not
/// committed memory: under strict overcommit the answer errs towards
/// short. Allocates nothing (it runs when memory is short). Another
/// thread may take the room right after: this says there was room, not
/// that there will be.
pub(crate) fn short_of(bytes: usize) -> Option<Short> {
    let short = |limit, left: Option<usize>| {
        left.filter(|&left| left < bytes).map(|left| Short {
            limit,
            left: left as u64,
            needed: bytes as u64,
        })
    };
    short(Limit::AddressSpace, address_space_left()).or_else(|| short(Limit::Commit, commit_left()))
}

/// The memory limit past which the kernel ends the process (a cgroup's,
/// read now, or `HEAPPROF_MEMORY_LIMIT`; `support::memory`) that leaves
/// the fewest bytes, if it leaves fewer than `bytes`. No such limit, or
/// none readable, counts as room. Allocates a little (the cgroups'
/// paths): under these limits an allocation does not fail, the kernel
/// acts on pages in use.
pub(crate) fn memory_short_of(bytes: usize) -> Option<Short> {
    let config = crate::config::get();
    let least = Watch::new(config.cgroup_dir.as_deref(), config.memory_limit)
        .quiet()
        .least_room()?;
    let left = least.limit.saturating_sub(least.used);
    let limit = match least.source {
        Source::Cgroup {
            file: "memory.high",
            ..
        } => Limit::CgroupHigh,
        Source::Cgroup { .. } => Limit::CgroupMax,
        Source::Configured => Limit::Configured,
        // Not a limit of the process (`least_room` leaves it out).
        Source::Physical => return None,
    };
    (left < bytes as u64).then_some(Short {
        limit,
        left,
        needed: bytes as u64,
    })
}

/// `RLIMIT_AS` less the process's address space (`/proc/self/statm`'s
/// first field, `memory::statm_bytes`); `None` without a limit.
fn address_space_left() -> Option<usize> {
    let limit = usize::try_from(address_space_limit()?).unwrap_or(usize::MAX);
    let used = usize::try_from(super::memory::statm_bytes(0)?).unwrap_or(usize::MAX);
    Some(limit.saturating_sub(used))
}

/// `RLIMIT_AS` (its soft limit) in bytes; `None` if not set or not
/// readable.
pub(crate) fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the plain struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Under strict overcommit, `CommitLimit` less `Committed_AS` (system
/// wide, from `/proc/meminfo`) less the reserves the kernel keeps back
/// from a process (`admin_reserve_kbytes`, and at most
/// `user_reserve_kbytes`, both counted); `None` otherwise.
fn commit_left() -> Option<usize> {
    let mut mode = [0u8; 8];
    if read_into("/proc/sys/vm/overcommit_memory", &mut mode)?.first() != Some(&b'2') {
        return None;
    }
    let mut buf = [0u8; 4096];
    let meminfo = read_into("/proc/meminfo", &mut buf)?;
    let kib = |key: &[u8]| -> Option<usize> {
        let at = meminfo.windows(key.len()).position(|w| w == key)?;
        first_number(&meminfo[at + key.len()..])
    };
    let reserve = |path: &str| -> usize {
        let mut buf = [0u8; 32];
        read_into(path, &mut buf)
            .and_then(first_number)
            .unwrap_or(0)
    };
    let left = kib(b"CommitLimit:")?
        .saturating_sub(kib(b"Committed_AS:")?)
        .saturating_sub(reserve("/proc/sys/vm/admin_reserve_kbytes"))
        .saturating_sub(reserve("/proc/sys/vm/user_reserve_kbytes"));
    Some(left.saturating_mul(1024))
}

/// The start of the file at `path`, read into `buf` (a short path, whose
/// C string std builds on the stack, and `buf`: no allocation).
fn read_into<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    small_file::read_into(std::fs::File::open(path).ok()?, buf)
}

/// The first run of decimal digits in `text`, past any spaces.
fn first_number(text: &[u8]) -> Option<usize> {
    let digits = text.iter().skip_while(|b| b.is_ascii_whitespace());
    let mut value: Option<usize> = None;
    for &b in digits.take_while(|b| b.is_ascii_digit()) {
        value = Some(
            value
                .unwrap_or(0)
                .checked_mul(10)?
                .checked_add(usize::from(b - b'0'))?,
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is left rounds down and what is asked for up, so that the
    /// words never say a limit leaves as much as was asked.
    #[test]
    fn shortfalls_in_words() {
        const MIB: u64 = 1 << 20;
        let words = |left, needed| {
            Short {
                limit: Limit::CgroupMax,
                left,
                needed,
            }
            .words("a lookup may take")
        };
        assert_eq!(
            words(64 * MIB - 40_000, 64 * MIB),
            "the cgroup's memory.max leaves 63 MiB, less than the 64 MiB a lookup may take"
        );
        assert_eq!(
            words(200 * MIB + MIB / 5, 200 * MIB + MIB / 2),
            "the cgroup's memory.max leaves 200 MiB, less than the 201 MiB a lookup may take"
        );
        assert_eq!(
            words(MIB / 2, 64 * MIB),
            "the cgroup's memory.max leaves less than 1 MiB, and a lookup may take 64 MiB"
        );
    }

    #[test]
    fn numbers_are_read_from_proc_files() {
        assert_eq!(first_number(b"1234 56 7"), Some(1234));
        assert_eq!(first_number(b"   8192 kB\n"), Some(8192));
        assert_eq!(first_number(b"kB"), None);
        assert_eq!(first_number(b"99999999999999999999999"), None);
        // This process has an address space, and no limit unless one is
        // set: room for a byte either way.
        assert!(room_for(1));
        let all = [
            Limit::AddressSpace,
            Limit::Commit,
            Limit::CgroupMax,
            Limit::CgroupHigh,
            Limit::Configured,
        ];
        for limit in all {
            // A new limit stops this compiling: add it here and to `all`.
            match limit {
                Limit::AddressSpace
                | Limit::Commit
                | Limit::CgroupMax
                | Limit::CgroupHigh
                | Limit::Configured => {}
            }
            assert_eq!(Limit::from_u8(limit as u8), Some(limit));
        }
        let found = (0..=u8::MAX).filter(|&n| Limit::from_u8(n).is_some());
        assert_eq!(found.count(), all.len());
    }
}
