//! Profiles written before the memory limit is reached: the at-limit
//! watcher ([`AutoDump::at_limit`](super::AutoDump::at_limit),
//! `HEAPPROF_DUMP_AT_LIMIT`).
//!
//! On each poll of the dump thread, [`Watcher::poll`] reads what is in use
//! against the limit (`support/memory.rs`) and compares it with the thresholds.
//! A threshold that is crossed gets the live profile and the peak profile,
//! written to `<dump path>.limit80.pb.gz` and
//! `<dump path>.limit80.peak.pb.gz` (for 80 %), and one line on stderr that
//! names them (the line stays in a container's log after the OOM killer
//! has ended the process). Thresholds crossed in the same poll share one
//! build of each profile, written for the highest first.
//!
//! Once written, a threshold is re-armed once usage has fallen below
//! [`REARM_BELOW`] of it (72 % for 80 %), at any poll since, and
//! [`REARM_PERIOD`] has passed since its last profile; crossing it again then
//! replaces its files with the newer moment, the one nearer to a later
//! kill. One whose files could not be written (a full disk, a directory
//! not there yet) is re-armed [`REARM_PERIOD`] after the attempt, however
//! high usage stays. Usage that swings around a threshold costs at most one pair of
//! profiles per threshold per [`REARM_PERIOD`], and never makes new file
//! names.
//!
//! The watcher also keeps the allocation-failure profile ready
//! (`failed.rs`): it re-encodes the peak profile whenever a new peak copy
//! is kept.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{expand, failed, plain, sibling, write_dump_bytes};
use crate::config;
use crate::config::report::Shown;
use crate::output::{self, Format, Source, pprof};
use crate::support::memory::{self, Measure, Watch};
use crate::support::room;

/// A written threshold is re-armed once usage falls below this fraction
/// of it.
pub(crate) const REARM_BELOW: f64 = 0.9;

/// A threshold is written at most once in this long.
pub(crate) const REARM_PERIOD: Duration = Duration::from_secs(5);

/// Tells apart watchers that run at once (each prepares the failure
/// profile under its own number).
static WATCHERS: AtomicUsize = AtomicUsize::new(0);

/// The sibling tag of a threshold's profile: `limit80`, `limit92.5`.
pub(crate) fn tag(fraction: f64) -> String {
    // To hundredths of a percent: 0.95 * 100 is 95.00000000000001.
    let percent = (fraction * 10_000.0).round() / 100.0;
    format!("limit{percent}")
}

struct Threshold {
    fraction: f64,
    tag: String,
    /// When its profiles were last written, or tried; `None` while armed.
    written: Option<Instant>,
    /// The last try to write them failed.
    failed: bool,
    /// Usage fell below [`REARM_BELOW`] of it since its profiles were
    /// last written.
    fell_below: bool,
    /// A failure to write them was said on stderr.
    failure_said: bool,
}

/// The thresholds of one dump thread and what it reads to decide.
pub(crate) struct Watcher {
    /// The dump path, not yet expanded.
    base: PathBuf,
    /// Highest first.
    thresholds: Vec<Threshold>,
    lowest: f64,
    watch: Watch,
    id: usize,
    /// The peak copy the failure profile was prepared from.
    prepared: u64,
    /// Whether a limit the watch cannot read was said on stderr.
    unwatched_said: bool,
    /// The cgroup v1 memory limit that holds the process, if any (read at
    /// the first reading that falls back to physical memory).
    v1_limit: Option<Option<u64>>,
}

impl Threshold {
    /// Whether usage at `fraction` of the limit, seen at `now`, calls for
    /// this threshold's profiles. A written threshold notes usage that
    /// falls well below it, and is re-armed (for a later poll to find
    /// crossed) once it has, or its write failed, and [`REARM_PERIOD`]
    /// has passed since.
    fn due(&mut self, fraction: f64, now: Instant) -> bool {
        let Some(at) = self.written else {
            return fraction >= self.fraction;
        };
        if fraction < self.fraction * REARM_BELOW {
            self.fell_below = true;
        }
        if (self.failed || self.fell_below) && now.duration_since(at) >= REARM_PERIOD {
            self.written = None;
            self.fell_below = false;
        }
        false
    }
}

impl Watcher {
    /// A watcher of `fractions` (checked by `AutoDump::check`) that writes
    /// beside `base`.
    pub(crate) fn new(base: PathBuf, fractions: &[f64]) -> Watcher {
        let c = config::get();
        let mut thresholds: Vec<Threshold> = fractions
            .iter()
            .map(|&fraction| Threshold {
                fraction,
                tag: tag(fraction),
                written: None,
                failed: false,
                fell_below: false,
                failure_said: false,
            })
            .collect();
        thresholds.sort_by(|a, b| b.fraction.total_cmp(&a.fraction));
        thresholds.dedup_by(|a, b| a.tag == b.tag);
        let lowest = thresholds.last().map_or(1.0, |t| t.fraction);
        if let Some(dir) = &c.cgroup_dir
            && !dir.is_dir()
        {
            config::report::warn(format_args!(
                "heapprof: HEAPPROF_CGROUP_DIR={}: not a directory; no cgroup limit is watched",
                Shown::path(dir)
            ));
        }
        Watcher {
            base,
            thresholds,
            lowest,
            watch: Watch::new(c.cgroup_dir.as_deref(), c.memory_limit),
            id: WATCHERS.fetch_add(1, Relaxed),
            prepared: 0,
            unwatched_said: false,
            v1_limit: None,
        }
    }

    /// One poll: writes the thresholds newly crossed, re-arms those usage
    /// fell well below, and refreshes the failure profile after a new peak
    /// copy (and then, since an encoding takes a while, looks at the limit
    /// again).
    ///
    /// Encoding on every new peak copy costs as many profile builds as
    /// there are copies, which `record::peak` counts (97 for a heap that
    /// grows from 1 MiB to 10 GiB at the default growth), however long the
    /// run: a heap that swings below its peak keeps none.
    pub(crate) fn poll(&mut self) {
        self.check();
        static FAILED: config::report::Once = config::report::Once::new();
        let refreshed = failed::refresh(self.id, &self.base, &mut self.prepared);
        if matches!(refreshed, Ok(true)) {
            self.check();
        }
        if let Err(e) = refreshed {
            FAILED.warn(format_args!(
                "heapprof: could not prepare the profile to write if an allocation fails ({}); \
                 only one prepared before, if any, would be written then",
                plain(&e)
            ));
        }
    }

    /// Reads the limit and writes the thresholds newly crossed.
    fn check(&mut self) {
        let read = self.watch.read(self.lowest);
        failed::set_limit(beyond_reach(&self.watch));
        if let Some(m) = read {
            if !self.unwatched_said {
                self.say_what_is_not_watched(&m);
            }
            let now = Instant::now();
            let fraction = m.fraction();
            let mut due = Vec::new();
            for (i, t) in self.thresholds.iter_mut().enumerate() {
                if t.due(fraction, now) {
                    due.push(i);
                }
            }
            if !due.is_empty() {
                self.write(&m, &due);
            }
        }
    }

    /// When the watch falls back to physical memory (`m`) while a limit it
    /// does not watch holds the process (`RLIMIT_AS`, set at any time, or
    /// a cgroup v1 memory limit), says so once: thresholds of physical
    /// memory may never be reached before that limit is. cgroup v1 is not
    /// looked at when `HEAPPROF_CGROUP_DIR` names the cgroup to read.
    fn say_what_is_not_watched(&mut self, m: &Measure) {
        if !matches!(m.source, memory::Source::Physical) {
            return;
        }
        let v1 = *self.v1_limit.get_or_insert_with(|| {
            config::get()
                .cgroup_dir
                .is_none()
                .then(memory::v1_memory_limit)
                .flatten()
        });
        let unwatched = match (room::address_space_limit(), v1) {
            (Some(bytes), _) => format!("RLIMIT_AS ({bytes} bytes, `ulimit -v`)"),
            (None, Some(bytes)) => format!("the cgroup v1 memory limit ({bytes} bytes)"),
            (None, None) => return,
        };
        self.unwatched_said = true;
        config::report::warn(format_args!(
            "heapprof: HEAPPROF_DUMP_AT_LIMIT watches {}, not {unwatched}, which it does not \
             watch: set HEAPPROF_MEMORY_LIMIT to the limit that ends this process",
            m.limit_name()
        ));
    }

    /// Writes the profiles of thresholds `due` (indices, highest first)
    /// for the reading `m`, and says on stderr what each threshold wrote;
    /// a threshold's failure is said the first time only.
    fn write(&mut self, m: &Measure, due: &[usize]) {
        let percent = 100.0 * m.fraction();
        let crossed: Vec<String> = due
            .iter()
            .map(|&i| format!("{}%", tag_percent(&self.thresholds[i].tag)))
            .collect();
        let comment = format!(
            "heapprof at-limit profile: memory at {percent:.1}% of the limit, past {}: {}",
            crossed.join(", "),
            m.describe()
        );
        let options = || pprof::Options {
            comments: vec![comment.clone()],
            ..pprof::Options::default()
        };
        let mut live = Vec::new();
        let mut peak = Vec::new();
        let built = output::write(Source::Live, Format::Pprof, options(), &mut live)
            .and_then(|_| output::write(Source::Peak, Format::Pprof, options(), &mut peak));
        let base = expand(&self.base);
        let now = Instant::now();
        for &i in due {
            let t = &mut self.thresholds[i];
            t.written = Some(now);
            t.fell_below = false;
            let put = |tag: &str, bytes: &[u8]| -> io::Result<PathBuf> {
                let path = sibling(&base, tag)?;
                write_dump_bytes(&path, bytes)?;
                Ok(path)
            };
            let said = match &built {
                Err(e) => Err(format!("could not build its profiles ({})", plain(e))),
                Ok(has_peak) => match put(&t.tag, &live) {
                    Err(e) => Err(format!("could not write its profile ({})", plain(&e))),
                    Ok(path) if !has_peak => Ok(format!("wrote {}", Shown::path(&path))),
                    Ok(path) => match put(&format!("{}.peak", t.tag), &peak) {
                        Ok(peak_path) => Ok(format!(
                            "wrote {} and {}",
                            Shown::path(&path),
                            Shown::path(&peak_path)
                        )),
                        // The live profile stands: said each time, and
                        // not tried again, which would rewrite it unsaid.
                        Err(e) => Ok(format!(
                            "wrote {}, but could not write its peak profile ({})",
                            Shown::path(&path),
                            plain(&e)
                        )),
                    },
                },
            };
            t.failed = said.is_err();
            let line = match said {
                Ok(line) => line,
                Err(_) if t.failure_said => continue,
                Err(line) => {
                    t.failure_said = true;
                    format!("{line}; further failures at this threshold are not reported")
                }
            };
            config::report::warn(format_args!(
                "heapprof: memory at {percent:.1}% of the limit ({}), past {}%: {line}",
                m.limit_name(),
                tag_percent(&t.tag)
            ));
        }
    }

    /// Ends the watch: the failure profile it prepared is withdrawn.
    pub(crate) fn stop(&self) {
        failed::withdraw(self.id);
    }
}

/// The size no allocation can reach: the smallest of the limits the
/// kernel holds the process to, the watched cgroups' `memory.max` (as last read),
/// `RLIMIT_AS` and physical memory. `HEAPPROF_MEMORY_LIMIT` is not one:
/// the kernel does not hold the process to it, so a request larger than
/// it may fail for want of memory, and its failure is worth a profile.
fn beyond_reach(watch: &Watch) -> u64 {
    [
        watch.cgroup_max(),
        room::address_space_limit(),
        memory::physical_bytes(),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(0)
}

/// `limit92.5` → `92.5`.
fn tag_percent(tag: &str) -> &str {
    tag.strip_prefix("limit").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::tag;

    /// The crate docs and the README give these numbers in words.
    #[test]
    fn the_docs_state_the_constants() {
        let lib = include_str!("../lib.rs");
        let readme = include_str!("../../README.md");
        let at_80 = (80.0 * super::REARM_BELOW).round();
        let period = super::REARM_PERIOD.as_secs();
        let poll = super::super::POLL.as_millis();
        assert_eq!(super::REARM_BELOW, 0.9, "the docs say nine tenths");
        for (name, docs) in [("lib.rs", lib), ("README.md", readme)] {
            for stated in [
                format!("nine tenths of it ({at_80} % for 80 %)"),
                format!("{period} s"),
                format!("every {poll} ms"),
                format!("{} MiB or more", crate::sample::MAX_COUNTDOWN >> 20),
            ] {
                assert!(docs.contains(&stated), "{name} does not say {stated:?}");
            }
        }
    }

    /// A dip well below a written threshold re-arms it once the period
    /// has passed, even if usage is back above it by then; usage that
    /// stays near it does not.
    #[test]
    fn a_dip_between_two_crossings_rearms_the_threshold() {
        use super::{REARM_PERIOD, Threshold};
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let mut t = Threshold {
            fraction: 0.8,
            tag: tag(0.8),
            written: None,
            failed: false,
            fell_below: false,
            failure_said: false,
        };
        assert!(!t.due(0.79, start));
        assert!(t.due(0.97, start));
        t.written = Some(start);
        let second = |s: u64| start + Duration::from_secs(s);
        assert!(!t.due(0.5, second(1)), "a dip is noted, not written");
        assert!(!t.due(0.99, second(2)), "too soon");
        assert!(!t.due(0.99, start + REARM_PERIOD), "re-armed");
        assert!(t.due(0.99, start + REARM_PERIOD + Duration::from_millis(50)));

        // Usage that never falls well below stays written.
        t.written = Some(start);
        t.fell_below = false;
        for s in 1..30 {
            assert!(!t.due(if s % 2 == 0 { 0.79 } else { 0.81 }, second(s)));
        }
    }

    #[test]
    fn tags() {
        assert_eq!(tag(0.8), "limit80");
        assert_eq!(tag(0.95), "limit95");
        assert_eq!(tag(1.0), "limit100");
        assert_eq!(tag(0.925), "limit92.5");
        assert_eq!(tag(0.01), "limit1");
        assert_eq!(tag(0.80001), "limit80");
    }
}
