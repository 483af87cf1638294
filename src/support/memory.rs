//! Memory in use against the limits that would end the process: what the
//! at-limit dumps watch (`dump/limit.rs`), and what a name lookup leaves
//! room under (`support::room::memory_short_of`).
//!
//! The limits, all of those that apply at once (the one nearest to being
//! reached counts):
//!
//! * the cgroup's (v2): the smaller of `memory.max` (where the kernel's
//!   OOM killer strikes) and `memory.high` (where it throttles and
//!   reclaims), of the process's cgroup and of each cgroup above it that
//!   sets one. In use is the cgroup's working set: `memory.current` less
//!   `inactive_file` from `memory.stat`, the page cache the kernel drops
//!   before it kills anything (the number Kubernetes evicts on; a program
//!   that reads files fills its cgroup with cache up to `memory.max` and
//!   is in no danger). `memory.stat` is read only when `memory.current`
//!   alone reaches the lowest threshold.
//! * `HEAPPROF_MEMORY_LIMIT`: the process's resident size
//!   (`/proc/self/statm`) against it.
//! * When neither applies: the resident size against physical memory.
//!
//! The process's cgroup is the `0::` line of `/proc/self/cgroup`, under
//! the cgroup2 mount at [`CGROUP_MOUNT`]; when that directory is not there
//! (a container that mounts its own cgroup there without a cgroup
//! namespace), the mount itself. `HEAPPROF_CGROUP_DIR` names the directory
//! instead (for tests, and systems that mount cgroup2 elsewhere); only it
//! is read then, not the directories above it. cgroup v1 (`memory.limit_in_bytes`)
//! is not read: such systems get the other two limits.
//!
//! The set of cgroups is found once, when the watch starts; their limits
//! are read again every [`LIMITS_EVERY`] readings (a limit changed at run
//! time, or set where there was none, is seen within that many polls).
//!
//! `memory.events` (`high`, `max`, `oom`, `oom_kill`) goes into the
//! comments of a profile written at a limit, not into the decision: its
//! `max` count also rises when the kernel reclaims page cache at the limit,
//! which a program reading files does all the time without danger.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::report::Shown;
use crate::support::small_file;

/// Where cgroup v2 is mounted.
pub(crate) const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The cgroups' limits are read again once in this many readings.
pub(crate) const LIMITS_EVERY: u32 = 20;

/// A limit and what is in use against it, at one reading.
pub(crate) struct Measure {
    /// Bytes in use, as counted against `limit`.
    pub used: u64,
    pub limit: u64,
    pub source: Source,
}

/// Where a [`Measure`] comes from.
pub(crate) enum Source {
    Cgroup {
        dir: PathBuf,
        /// `memory.max` or `memory.high`: whichever is the limit.
        file: &'static str,
        current: u64,
        /// Subtracted from `current` to give `used`, when it was read.
        inactive_file: Option<u64>,
    },
    /// The resident size against `HEAPPROF_MEMORY_LIMIT`.
    Configured,
    /// The resident size against physical memory.
    Physical,
}

impl Measure {
    /// Usage as a fraction of the limit.
    pub(crate) fn fraction(&self) -> f64 {
        self.used as f64 / self.limit.max(1) as f64
    }

    /// The limit in words, for the line on stderr.
    pub(crate) fn limit_name(&self) -> String {
        match &self.source {
            Source::Cgroup { file, .. } => format!("the cgroup's {file}, {} bytes", self.limit),
            Source::Configured => format!("HEAPPROF_MEMORY_LIMIT, {} bytes", self.limit),
            Source::Physical => format!("physical memory, {} bytes", self.limit),
        }
    }

    /// Everything known about the reading, for a profile's comments
    /// (`memory.events` read now, for a cgroup).
    pub(crate) fn describe(&self) -> String {
        match &self.source {
            Source::Cgroup {
                dir,
                file,
                current,
                inactive_file,
            } => {
                let less = inactive_file
                    .map(|i| format!(" less inactive_file {i}"))
                    .unwrap_or_default();
                let events = read_text(&dir.join("memory.events"))
                    .map(|t| format!("; memory.events: {}", events(&t)))
                    .unwrap_or_default();
                format!(
                    "cgroup {}: {} bytes in use (memory.current {current}{less}) of {file} {}{events}",
                    Shown::path(dir),
                    self.used,
                    self.limit
                )
            }
            Source::Configured => format!(
                "resident set {} bytes of HEAPPROF_MEMORY_LIMIT {}",
                self.used, self.limit
            ),
            Source::Physical => format!(
                "resident set {} bytes of physical memory {}",
                self.used, self.limit
            ),
        }
    }
}

/// The counts of `memory.events` worth reading beside a profile.
fn events(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| matches!(*k, "high" | "max" | "oom" | "oom_kill"))
        .map(|(k, v)| format!("{k} {}", v.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The limits a process watches, and how to read what is in use.
pub(crate) struct Watch {
    cgroups: Vec<Cgroup>,
    /// `HEAPPROF_MEMORY_LIMIT`.
    configured: Option<u64>,
    readings: u32,
    /// A limit's usage could not be read once: said on stderr, once.
    unreadable_said: bool,
}

struct Cgroup {
    dir: PathBuf,
    /// The smaller of `memory.max` and `memory.high`, and which it is;
    /// `None` when neither is set (or readable).
    limit: Option<(u64, &'static str)>,
    /// `memory.max` alone: the one of the two the kernel enforces
    /// (`memory.high` throttles).
    max: Option<u64>,
}

impl Watch {
    /// The watch for this process: its cgroups (or `cgroup_dir`), and
    /// `configured`, the `HEAPPROF_MEMORY_LIMIT`.
    pub(crate) fn new(cgroup_dir: Option<&Path>, configured: Option<u64>) -> Watch {
        let dirs = match cgroup_dir {
            Some(dir) => vec![dir.to_owned()],
            None => own_cgroups(Path::new(CGROUP_MOUNT)),
        };
        Watch {
            cgroups: dirs
                .into_iter()
                .map(|dir| Cgroup {
                    dir,
                    limit: None,
                    max: None,
                })
                .collect(),
            configured,
            readings: 0,
            unreadable_said: false,
        }
    }

    /// The smallest `memory.max` of the watched cgroups as last read, if
    /// any: the cgroup limit no process in them can exceed.
    pub(crate) fn cgroup_max(&self) -> Option<u64> {
        self.cgroups.iter().filter_map(|c| c.max).min()
    }

    /// This watch, saying nothing on stderr of a limit it cannot read:
    /// for a one-off reading, whose caller says what it decided.
    pub(crate) fn quiet(mut self) -> Watch {
        self.unreadable_said = true;
        self
    }

    /// The limit nearest to being reached, with what is in use against it,
    /// of those whose usage could be read this time (a limit that cannot be
    /// read, `/proc` not mounted say, is said on stderr once and does not
    /// hide the others); `None` if none could. `lowest` is the lowest
    /// threshold: below it, a cgroup's `memory.stat` need not be read.
    pub(crate) fn read(&mut self, lowest: f64) -> Option<Measure> {
        self.measures(lowest)
            .into_iter()
            .max_by(|a, b| a.fraction().total_cmp(&b.fraction()))
    }

    /// The limit that ends the process (a cgroup's, or
    /// `HEAPPROF_MEMORY_LIMIT`) that leaves the fewest bytes now, with
    /// what is in use against it; `None` if none is set or could be read.
    /// Physical memory, which other processes share, is not counted.
    pub(crate) fn least_room(&mut self) -> Option<Measure> {
        self.measures(0.0)
            .into_iter()
            .filter(|m| !matches!(m.source, Source::Physical))
            .min_by_key(|m| m.limit.saturating_sub(m.used))
    }

    /// Every limit whose usage could be read, with that usage.
    fn measures(&mut self, lowest: f64) -> Vec<Measure> {
        if self.readings.is_multiple_of(LIMITS_EVERY) {
            for c in &mut self.cgroups {
                c.limit = cgroup_limit(&c.dir);
                c.max = read_number(&c.dir.join("memory.max")).filter(|&n| n > 0);
            }
        }
        self.readings = self.readings.wrapping_add(1);
        let mut measures = Vec::new();
        let mut unreadable: Option<PathBuf> = None;
        for c in &self.cgroups {
            let Some((limit, file)) = c.limit else {
                continue;
            };
            let Some(current) = read_number(&c.dir.join("memory.current")) else {
                unreadable.get_or_insert_with(|| c.dir.join("memory.current"));
                continue;
            };
            let inactive_file = if current as f64 >= lowest * limit as f64 {
                read_text(&c.dir.join("memory.stat")).and_then(|t| stat_field(&t, "inactive_file"))
            } else {
                None
            };
            measures.push(Measure {
                used: current.saturating_sub(inactive_file.unwrap_or(0)),
                limit,
                source: Source::Cgroup {
                    dir: c.dir.clone(),
                    file,
                    current,
                    inactive_file,
                },
            });
        }
        // Physical memory is the limit only where no other is set.
        let limited = self.configured.is_some() || self.cgroups.iter().any(|c| c.limit.is_some());
        let resident = if self.configured.is_some() || !limited {
            let read = resident_bytes();
            if read.is_none() {
                unreadable.get_or_insert_with(|| PathBuf::from(STATM));
            }
            read
        } else {
            None
        };
        if let (Some(limit), Some(used)) = (self.configured, resident) {
            measures.push(Measure {
                used,
                limit,
                source: Source::Configured,
            });
        }
        if !limited && let (Some(used), Some(limit)) = (resident, physical_bytes()) {
            measures.push(Measure {
                used,
                limit,
                source: Source::Physical,
            });
        }
        if let Some(path) = unreadable.filter(|_| !self.unreadable_said) {
            self.unreadable_said = true;
            crate::config::report::warn(format_args!(
                "heapprof: cannot read {}; the memory limit it measures is not watched while it \
                 cannot be read",
                crate::config::report::Shown::path(&path)
            ));
        }
        measures
    }
}

/// The process's cgroup under `mount` and every cgroup above it, up to
/// the mount itself (which, in a cgroup namespace, is the container's).
fn own_cgroups(mount: &Path) -> Vec<PathBuf> {
    let own = read_text(Path::new("/proc/self/cgroup"))
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| mount.join(p.trim().trim_start_matches('/')))
        })
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| mount.to_owned());
    own.ancestors()
        .take_while(|d| d.starts_with(mount))
        .map(Path::to_owned)
        .collect()
}

/// Where cgroup v1's memory controller is mounted, where there is one.
const V1_MEMORY_MOUNT: &str = "/sys/fs/cgroup/memory";

/// The process's cgroup v1 memory cgroup, from `cgroups` (the text of
/// `/proc/self/cgroup`): the path of the line whose controllers include
/// `memory`; `None` on a system with cgroup v2 alone.
fn v1_memory_path(cgroups: &str) -> Option<&str> {
    cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })
}

/// The smallest cgroup v1 memory limit (`memory.limit_in_bytes`) of the
/// process's v1 memory cgroup and those above it, if one is below
/// physical memory (v1 writes "no limit" as a number near 2^63). The
/// watch does not read v1's usage; this only says such a limit holds.
pub(crate) fn v1_memory_limit() -> Option<u64> {
    let cgroups = read_text(Path::new("/proc/self/cgroup"))?;
    let path = v1_memory_path(&cgroups)?;
    let mount = Path::new(V1_MEMORY_MOUNT);
    let own = mount.join(path.trim().trim_start_matches('/'));
    let own = if own.is_dir() { own } else { mount.to_owned() };
    let limit = own
        .ancestors()
        .take_while(|d| d.starts_with(mount))
        .filter_map(|d| read_number(&d.join("memory.limit_in_bytes")))
        .min()?;
    (limit < physical_bytes().unwrap_or(u64::MAX)).then_some(limit)
}

/// The smaller of `dir`'s `memory.max` and `memory.high`, and which it
/// is; `None` if neither is a number (`max` means none).
fn cgroup_limit(dir: &Path) -> Option<(u64, &'static str)> {
    ["memory.max", "memory.high"]
        .into_iter()
        .filter_map(|file| read_number(&dir.join(file)).map(|n| (n, file)))
        .filter(|&(n, _)| n > 0)
        .min_by_key(|&(n, _)| n)
}

/// The most of a text file (`memory.stat`, `memory.events`: a few dozen
/// lines) that is read.
const MAX_TEXT_BYTES: u64 = 64 * 1024;

/// `path` opened for reading if it is a regular file, as the kernel's
/// cgroup files are: the open does not wait (a FIFO put in their place
/// would block it until a writer came), and a device (`/dev/zero`) or
/// FIFO is refused.
fn open_regular(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// A file of a few lines, as text (at most [`MAX_TEXT_BYTES`]); `None` if
/// it cannot be read.
fn read_text(path: &Path) -> Option<String> {
    let mut text = String::new();
    open_regular(path)?
        .take(MAX_TEXT_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// A file holding one number (`memory.current`, `memory.max`), read
/// without allocating a buffer; `None` if it cannot be read or is not a
/// number (`max`).
fn read_number(path: &Path) -> Option<u64> {
    let mut buf = [0u8; 32];
    let text = small_file::read_into(open_regular(path)?, &mut buf)?;
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// The value of `key` in `memory.stat`'s `key value` lines.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Where the process's resident size is read.
const STATM: &str = "/proc/self/statm";

/// The process's resident size.
fn resident_bytes() -> Option<u64> {
    statm_bytes(1)
}

/// Field `field` of [`STATM`] (0: the address space, 1: the resident
/// size), in bytes. Allocates nothing (it runs when memory is short).
pub(crate) fn statm_bytes(field: usize) -> Option<u64> {
    let mut buf = [0u8; 128];
    let text = small_file::read_into(File::open(STATM).ok()?, &mut buf)?;
    let pages: u64 = std::str::from_utf8(text)
        .ok()?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()?;
    Some(pages.saturating_mul(page_size()?))
}

fn page_size() -> Option<u64> {
    // SAFETY: sysconf reads a system constant and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0)
}

/// Physical memory, in bytes.
pub(crate) fn physical_bytes() -> Option<u64> {
    // SAFETY: as in `page_size`.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    u64::try_from(pages)
        .ok()
        .filter(|&n| n > 0)
        .map(|n| n.saturating_mul(page_size().unwrap_or(4096)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn the_smaller_cgroup_limit_counts() {
        let d = dir_with(&[("memory.max", "2000\n"), ("memory.high", "max\n")]);
        assert_eq!(cgroup_limit(d.path()), Some((2000, "memory.max")));
        let d = dir_with(&[("memory.max", "2000\n"), ("memory.high", "1500\n")]);
        assert_eq!(cgroup_limit(d.path()), Some((1500, "memory.high")));
        let d = dir_with(&[("memory.max", "max\n"), ("memory.high", "max\n")]);
        assert_eq!(cgroup_limit(d.path()), None);
        let d = dir_with(&[]);
        assert_eq!(cgroup_limit(d.path()), None);
    }

    /// Only `memory.max` bounds what the cgroup can hold: `memory.high`
    /// throttles, so a request between the two may still succeed.
    #[test]
    fn the_enforced_cgroup_limit_is_memory_max() {
        let d = dir_with(&[
            ("memory.max", "2000\n"),
            ("memory.high", "1500\n"),
            ("memory.current", "900\n"),
        ]);
        let mut w = Watch::new(Some(d.path()), None);
        w.read(0.5);
        assert_eq!(w.cgroup_max(), Some(2000));
        let d = dir_with(&[("memory.high", "1500\n"), ("memory.current", "900\n")]);
        let mut w = Watch::new(Some(d.path()), None);
        w.read(0.5);
        assert_eq!(w.cgroup_max(), None);
    }

    #[test]
    fn page_cache_is_not_in_use() {
        let d = dir_with(&[
            ("memory.max", "1000\n"),
            ("memory.current", "900\n"),
            (
                "memory.stat",
                "anon 500\nfile 400\ninactive_file 300\nactive_file 100\n",
            ),
            ("memory.events", "low 0\nhigh 2\nmax 7\noom 0\noom_kill 0\n"),
        ]);
        let mut w = Watch::new(Some(d.path()), None);
        let m = w.read(0.5).unwrap();
        assert_eq!((m.used, m.limit), (600, 1000));
        let text = m.describe();
        assert!(text.contains("less inactive_file 300"), "{text}");
        assert!(text.contains("high 2, max 7, oom 0, oom_kill 0"), "{text}");
        // Below the lowest threshold, memory.stat is not read.
        let m = w.read(0.95).unwrap();
        assert_eq!(m.used, 900);
    }

    /// The room left is the least any limit leaves, in bytes (not the
    /// limit nearest by fraction), less page cache; physical memory is
    /// no such limit.
    #[test]
    fn the_least_room_is_the_fewest_bytes_any_limit_leaves() {
        let gib: u64 = 1 << 30;
        let d = dir_with(&[
            ("memory.max", &format!("{gib}\n")),
            ("memory.current", &format!("{}\n", gib - 300)),
            ("memory.stat", "anon 1\ninactive_file 100\n"),
        ]);
        let room = |configured| {
            Watch::new(Some(d.path()), configured)
                .least_room()
                .map(|m| m.limit.saturating_sub(m.used))
        };
        assert_eq!(room(None), Some(400));
        assert_eq!(room(Some(u64::MAX)), Some(400));
        // A configured limit the resident size is past leaves none.
        assert_eq!(room(Some(1)), Some(0));
        let d = dir_with(&[("memory.max", "max\n"), ("memory.current", "900\n")]);
        assert!(Watch::new(Some(d.path()), None).least_room().is_none());
    }

    #[test]
    fn the_nearest_limit_counts_and_physical_memory_is_the_last_resort() {
        let d = dir_with(&[("memory.max", "max\n"), ("memory.current", "900\n")]);
        let m = Watch::new(Some(d.path()), None).read(0.8).unwrap();
        assert!(matches!(m.source, Source::Physical), "{}", m.describe());
        // A configured limit the resident size is far past beats a cgroup
        // that is one tenth full.
        let d = dir_with(&[("memory.max", "9000\n"), ("memory.current", "900\n")]);
        let m = Watch::new(Some(d.path()), Some(4096)).read(0.8).unwrap();
        assert!(matches!(m.source, Source::Configured), "{}", m.describe());
        assert!(m.fraction() > 1.0);
        let m = Watch::new(Some(d.path()), Some(u64::MAX))
            .read(0.8)
            .unwrap();
        assert!(
            matches!(m.source, Source::Cgroup { .. }),
            "{}",
            m.describe()
        );
        assert_eq!(m.fraction(), 0.1);
    }

    #[test]
    fn an_unreadable_usage_decides_nothing() {
        let d = dir_with(&[("memory.max", "1000\n"), ("memory.current", "lots\n")]);
        assert!(Watch::new(Some(d.path()), None).read(0.8).is_none());
    }

    /// A limit whose usage cannot be read (here the cgroup's; in a sandbox
    /// without `/proc`, the configured one's) leaves the others watched.
    #[test]
    fn an_unreadable_usage_does_not_hide_another_limit() {
        let d = dir_with(&[("memory.max", "1000\n")]);
        let mut w = Watch::new(Some(d.path()), Some(u64::MAX));
        let m = w.read(0.8).unwrap();
        assert!(matches!(m.source, Source::Configured), "{}", m.describe());
        assert!(w.unreadable_said);
    }

    #[test]
    fn cgroup_v1_memory_is_told_from_v2() {
        assert_eq!(
            v1_memory_path("12:cpu,cpuacct:/x\n4:memory:/job:a\n0::/job\n"),
            Some("/job:a")
        );
        assert_eq!(v1_memory_path("0::/system.slice/job.service\n"), None);
        assert_eq!(v1_memory_path("3:name=memory-ish:/x\n0::/\n"), None);
    }

    #[test]
    fn own_cgroups_end_at_the_mount() {
        let dirs = own_cgroups(Path::new("/nonexistent-heapprof-mount"));
        assert_eq!(dirs, vec![PathBuf::from("/nonexistent-heapprof-mount")]);
        assert!(resident_bytes().unwrap() > 0);
        assert!(physical_bytes().unwrap() > resident_bytes().unwrap());
    }
}
