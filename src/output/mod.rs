//! Output: one path from a profile source (live, peak, delta, alloc delta)
//! to a format (pprof, text, snapshot), with symbolization.
//!
//! Every profile heapprof writes, whoever asks (the public functions,
//! dumps, the HTTP endpoint, snapshots), goes through [`write`] or
//! [`collect`]:
//!
//! ```text
//! Source ──collect──> Collected { sites, comments }
//!                       ├─ Format::Pprof ─> pprof::build ─> pprof::encode (gzip)
//!                       ├─ Format::Text ──> text::write
//!                       └─ snapshot::snapshot_of ─> Snapshot
//! ```

pub(crate) mod pprof;
pub(crate) mod proto;
pub(crate) mod snapshot;
pub(crate) mod symbolize;
pub(crate) mod text;

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::record::{self, peak, sites::PackedSites, sites::SiteCopy};
use crate::sample;
use crate::support::reentry;

/// Where a profile's sites come from.
pub(crate) enum Source {
    /// The site table now.
    Live,
    /// The copy kept when the live heap was largest (none before it
    /// reaches `record::peak`'s minimum).
    Peak,
    /// What happened over `span`: the table at its end minus the table
    /// at its start (`record::sites::delta`), or one thread's samples in a
    /// measure's window.
    Delta {
        sites: Vec<SiteCopy>,
        span: Duration,
    },
    /// godeltaprof's `delta_heap`: alloc values since an earlier [`Mark`],
    /// inuse values now (`record::sites::alloc_delta`); made by
    /// [`alloc_delta`]. `span` is `None` when there is no earlier mark and
    /// the alloc values count from the program's start.
    #[cfg_attr(not(any(feature = "http", feature = "pyroscope")), allow(dead_code))]
    AllocDelta {
        sites: Vec<SiteCopy>,
        span: Option<Duration>,
    },
}

/// A copy of the site table and when it was taken: where the next
/// [`Source::AllocDelta`] of a series starts. It holds one packed copy of
/// the table (at most a few MiB, see `record/sites.rs`) for as long as
/// the series keeps it.
#[cfg_attr(not(any(feature = "http", feature = "pyroscope")), allow(dead_code))]
pub(crate) struct Mark {
    sites: PackedSites,
    at: Instant,
    /// The wall-clock time of the copy, for the `from` of a push.
    #[cfg_attr(not(feature = "pyroscope"), allow(dead_code))]
    pub wall: SystemTime,
}

#[cfg_attr(not(any(feature = "http", feature = "pyroscope")), allow(dead_code))]
impl Mark {
    /// The table now. Inside the profiler.
    pub(crate) fn now() -> Mark {
        Mark {
            sites: record::sites::packed(),
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The empty table at the program's start
    /// (`support::this_process::started`): a series that starts here
    /// counts every allocation. Allocates nothing.
    #[cfg(feature = "pyroscope")]
    pub(crate) fn at_start() -> Mark {
        let (at, wall) = crate::support::this_process::started();
        Mark {
            sites: record::sites::PackedSites::default(),
            at,
            wall,
        }
    }
}

/// The profile of a series of alloc deltas, the one path both the
/// `delta_heap` endpoint and the Pyroscope pusher take: alloc values
/// since `since` (since the program started if `None`), inuse values as
/// at `now`.
#[cfg_attr(not(any(feature = "http", feature = "pyroscope")), allow(dead_code))]
pub(crate) fn alloc_delta(now: &Mark, since: Option<&Mark>) -> Source {
    Source::AllocDelta {
        sites: record::sites::alloc_delta(
            &now.sites.unpack(),
            &since.map(|m| m.sites.unpack()).unwrap_or_default(),
        ),
        span: since.map(|m| now.at.saturating_duration_since(m.at)),
    }
}

/// How a profile is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Gzipped pprof `profile.proto`.
    Pprof,
    /// The legacy text format (`?debug=1`).
    Text,
}

/// A source's sites, and what the profile says about them.
pub(crate) struct Collected {
    pub sites: Vec<SiteCopy>,
    pub comments: Vec<String>,
    /// The span a delta covers.
    pub span: Option<Duration>,
    /// When the sites are from, if not now: a peak's moment.
    pub taken: Option<SystemTime>,
    /// The rate and exactness the sites were recorded with, if not
    /// today's (a peak's).
    pub numbers: Option<sample::Numbers>,
}

/// Says on stderr, once each, that the site table or the label-set table
/// has been full, at the first profile or snapshot since: the samples'
/// own path never formats.
fn say_once_if_a_table_is_full() {
    use crate::config::report::Once;
    static SITES_SAID: Once = Once::new();
    static LABELS_SAID: Once = Once::new();
    if record::sites::overflowed() {
        SITES_SAID.warn(format_args!("{}", pprof::site_table_full_note()));
    }
    if crate::labels::table::program_sets_full() {
        LABELS_SAID.warn(format_args!("{}", pprof::label_table_full_note()));
    }
}

/// The sites of `source`; `None` if it has none yet (no peak recorded).
/// Inside the profiler.
pub(crate) fn collect(source: Source) -> Option<Collected> {
    say_once_if_a_table_is_full();
    match source {
        Source::Live => Some(Collected {
            sites: record::sites::snapshot(),
            comments: Vec::new(),
            span: None,
            taken: None,
            // After the sites: fields are evaluated in order.
            numbers: Some(sample::Numbers::now_live()),
        }),
        Source::Peak => peak::copy().map(|p| Collected {
            comments: vec![peak_comment(&p)],
            sites: p.sites.unpack(),
            span: None,
            taken: Some(p.when),
            numbers: Some(p.numbers),
        }),
        Source::Delta { sites, span } => Some(Collected {
            comments: vec![format!(
                "heapprof delta profile: what happened in {:.1} s",
                span.as_secs_f64()
            )],
            sites,
            span: Some(span),
            taken: None,
            numbers: None,
        }),
        Source::AllocDelta { sites, span } => Some(Collected {
            comments: vec![match span {
                Some(span) => format!(
                    "heapprof delta_heap profile: alloc_* values are what was allocated in the last {} ms, \
                     inuse_* values what is live now",
                    span.as_millis()
                ),
                None => "heapprof delta_heap profile: alloc_* values are what was allocated since \
                         the program started (the first of its series), inuse_* values what is live now"
                    .to_owned(),
            }],
            sites,
            span,
            taken: None,
            // Its inuse values are the live heap's.
            numbers: Some(sample::Numbers::now_live()),
        }),
    }
}

/// Memory a profile build must find within the process's limits before
/// it starts ([`room_for`](crate::support::room::room_for)); name lookups
/// ask for their own room on top. A build holds a copy of the site table
/// and the encoded profile (heapprof's own memory stayed near 6 MiB in a
/// soak at a full table of 16 Ki sites); the rest is margin for what other
/// threads take meanwhile. A text profile (`?debug=1`) of a full table can
/// be larger than this by itself; over HTTP its body asks for room as it
/// grows (`http::Body`).
const BUILD_ROOM: usize = 32 << 20;

/// Room an error with a message of its own asks for: its text and its box
/// are two small blocks, which may need the inner allocator to map more.
const MESSAGE_ROOM: usize = 1 << 20;

/// `Ok` if there is [`BUILD_ROOM`] to build a profile; else the error of
/// a build refused. For callers that allocate before they build (a path,
/// a comment), so that they need not risk an allocation that aborts.
pub(crate) fn check_room() -> io::Result<()> {
    if crate::support::room::room_for(BUILD_ROOM) {
        Ok(())
    } else {
        Err(no_room_to_build())
    }
}

/// Whether there is [`MESSAGE_ROOM`] to say an error in words.
pub(crate) fn room_for_message() -> bool {
    crate::support::room::room_for(MESSAGE_ROOM)
}

/// The error of a build refused for want of [`BUILD_ROOM`]. Its message
/// takes two allocations, and one that fails aborts the program: with
/// less than [`MESSAGE_ROOM`] left, it is the bare kind, which allocates
/// nothing.
fn no_room_to_build() -> io::Error {
    if !room_for_message() {
        return io::ErrorKind::OutOfMemory.into();
    }
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        "heapprof: too little address space left to build a profile (RLIMIT_AS, or a strict \
         overcommit limit): none written, rather than risk an allocation that fails and aborts \
         the program",
    )
}

/// Writes `source` in `format` to `w`, with `options` (whose comments come
/// after the source's own). `Ok(false)` if the source has no profile yet
/// (no peak); `OutOfMemory` if there is no [`BUILD_ROOM`]. Inside the
/// profiler; `w` is called as it is (wrap the program's writers in
/// `reentry::ProgramWriter`).
pub(crate) fn write<W: io::Write>(
    source: Source,
    format: Format,
    mut options: pprof::Options,
    w: W,
) -> io::Result<bool> {
    check_room()?;
    options.change = matches!(source, Source::Delta { .. });
    let Some(collected) = collect(source) else {
        return Ok(false);
    };
    let mut comments = collected.comments;
    comments.append(&mut options.comments);
    options.comments = comments;
    options.duration = options.duration.or(collected.span);
    options.time = options.time.or(collected.taken);
    // `HEAPPROF_SYMBOLIZE=off` holds for every profile written here; a
    // caller can ask for addresses only where the setting allows names.
    options.addresses_only |= !crate::config::get().symbolize;
    let numbers = collected.numbers.unwrap_or_else(sample::Numbers::now);
    let rate = numbers.rate;
    match format {
        Format::Pprof => pprof::encode(&pprof::build(&collected.sites, numbers, options), w)?,
        Format::Text => text::write(
            io::BufWriter::new(w),
            &collected.sites,
            rate,
            &snapshot::stats(),
            &options,
        )?,
    }
    Ok(true)
}

/// [`write`] for the public functions: into the program's writer `w`
/// (called outside the profiler), after checking heapprof is installed;
/// `NotFound` if `source` has no profile yet (no peak).
pub(crate) fn write_to_program<W: io::Write>(
    source: Source,
    format: Format,
    w: W,
) -> io::Result<()> {
    reentry::for_program(w, |w| {
        check_installed()?;
        if write(source, format, pprof::Options::default(), w)? {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, peak::no_peak_yet()))
        }
    })
}

/// The comment that marks a peak profile: how large, when (RFC 3339,
/// UTC), and how far below the true peak it may be: a copy is kept each
/// time the live heap passes the last one by `HEAPPROF_PEAK_GROWTH`.
fn peak_comment(peak: &peak::Peak) -> String {
    let size = match peak.numbers {
        sample::Numbers {
            rate: 1,
            estimated: false,
        } => format!("{} bytes", peak.live_bytes),
        _ => format!("about {} bytes (sampled estimate)", peak.live_bytes),
    };
    format!(
        "heapprof peak profile: the live heap at the largest copy kept, {size}, at {}; the true peak may be up to {} higher (HEAPPROF_PEAK_GROWTH)",
        wall_time(peak.when),
        crate::config::get().peak_growth,
    )
}

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// `when` in RFC 3339 (UTC) if it has a four-digit year, else in seconds
/// from the Unix epoch: a clock set before 1970 or past 9999 still gets a
/// profile, with the time it read.
pub(crate) fn wall_time(when: SystemTime) -> String {
    match when.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= LAST_RFC3339_SECOND => {
            humantime::format_rfc3339_seconds(when).to_string()
        }
        Ok(d) => format!("{} s after the Unix epoch", d.as_secs()),
        Err(e) => format!("{} s before the Unix epoch", e.duration().as_secs()),
    }
}

/// `Err` (kind `Other`, saying what to add) if heapprof is not the
/// program's global allocator, or runs under Miri (`fast.rs`): nothing
/// could have been recorded.
pub(crate) fn check_installed() -> io::Result<()> {
    if !record::installed() {
        // Nothing has reached heapprof yet (a library's first call, before
        // it allocated): one allocation through the global allocator tells.
        drop(std::hint::black_box(Box::new(0u8)));
    }
    if record::installed() {
        Ok(())
    } else if cfg!(miri) {
        Err(io::Error::other(
            "heapprof records nothing under Miri: its allocator passes every call straight to the \
             one it wraps; leave heapprof's checks out of Miri runs with `#[cfg_attr(miri, ignore)]`",
        ))
    } else {
        Err(io::Error::other(
            "heapprof is not this program's global allocator, so there is nothing to profile; add \
             `#[global_allocator] static ALLOC: heapprof::Profiler = heapprof::Profiler::new();`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peak taken while the clock read before 1970 or after 9999 is
    /// written with the time it read (RFC 3339 has neither).
    #[test]
    fn wall_times_outside_four_digit_years_are_seconds() {
        let last = UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND);
        assert_eq!(wall_time(last), "9999-12-31T23:59:59Z");
        assert_eq!(
            wall_time(last + Duration::from_secs(1)),
            "253402300800 s after the Unix epoch"
        );
        assert_eq!(
            wall_time(UNIX_EPOCH - Duration::from_secs(60)),
            "60 s before the Unix epoch"
        );
        assert_eq!(wall_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
