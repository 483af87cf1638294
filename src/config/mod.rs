//! Settings read from the environment, once, on the profiler's first slow
//! path (usually before `main`, during the runtime's own start-up
//! allocations), and heapprof's one-line reports on stderr.
//!
//! [`get`] is called only inside the profiler (the reentrancy guard held,
//! `support/reentry.rs`), so the `OsString`s `std::env` allocates go
//! straight to the inner allocator and never through the sampler. A value that does not parse is
//! reported in one line on stderr, naming the variable and the default that
//! is used instead; the program goes on. A variable set to nothing (or only
//! blanks), as `HEAPPROF_SAMPLE_RATE= cmd` or a template that expanded to
//! nothing leaves it, is taken as unset, silently.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst, fence};
use std::time::Duration;

pub(crate) mod report;
use report::Shown;

/// The largest sample rate: the largest pprof's signed 64-bit `period`
/// holds, and below `usize::MAX`, which the sampler keeps for "not read
/// yet". Larger settings are lowered to it; it is so far above any heap
/// that it samples nothing all the same.
pub(crate) const MAX_RATE: usize = if usize::BITS < i64::BITS {
    usize::MAX - 1
} else {
    i64::MAX as usize
};

/// Which unwinder the configuration asks for (`HEAPPROF_UNWIND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unwinder {
    Dwarf,
    FramePointers,
    /// Frame pointers where `record/stack.rs`'s rules allow them.
    Auto,
}

/// Mean bytes between samples when `HEAPPROF_SAMPLE_RATE` is not set: the
/// same 512 KiB as Go's `runtime.MemProfileRate` and tcmalloc.
pub(crate) const DEFAULT_SAMPLE_RATE: usize = 512 * 1024;

/// How many distinct allocation sites the site table (`record/sites.rs`)
/// holds (`HEAPPROF_MAX_SITES`); a new site past it takes the place of
/// one with nothing live, or goes to its label set's overflow site.
pub(crate) const DEFAULT_MAX_SITES: usize = 16 * 1024;

/// The smallest `HEAPPROF_MEMORY_LIMIT` taken: every process is larger,
/// so a smaller one is a unit left off. The hint in its message says 1 MiB.
pub(crate) const MIN_MEMORY_LIMIT: u64 = 1 << 20;
const _: () = assert!(MIN_MEMORY_LIMIT == 1 << 20);

/// The shortest period `HEAPPROF_DUMP_EVERY` takes; a shorter one is
/// raised to it, with a line on stderr. Every profile of a series stays on
/// disk, and one is written as soon as the last is done: a 1 ms period
/// writes a few hundred files a second.
const MIN_DUMP_EVERY: Duration = Duration::from_secs(1);

/// The smallest step `HEAPPROF_DUMP_EVERY_ALLOCATED` and
/// `HEAPPROF_DUMP_INUSE_GROWTH` take; a smaller one is raised to it, with a
/// line on stderr. A step of a few bytes (a unit left off: `1024` for
/// `1024k`) writes a profile on every check of the dump thread, each kept
/// on disk.
const MIN_DUMP_STEP: u64 = 1 << 20;

/// The most sites `HEAPPROF_MAX_SITES` can ask for: a site's index
/// within its stripe has `SiteId::INDEX_BITS` (24) bits.
pub(crate) const MAX_SITES: usize = (1 << 24) - 1;
const MAX_SITES_HINT: &str = "a whole number from 1 to 16777215 (64k also works)";
const _: () = assert!(MAX_SITES == 16_777_215, "MAX_SITES_HINT states it");

/// A new peak profile is kept when the live heap passes the last by this
/// much: tcmalloc's 10 %.
pub(crate) const DEFAULT_PEAK_GROWTH: Percent = Percent(10.0);

/// A percentage, printed with its sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Percent(pub f64);

impl Percent {
    pub(crate) fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

pub(crate) struct Config {
    pub sample_rate: usize,
    pub max_sites: usize,
    /// Seed for the sampler's generators; `None` means seed from the clock
    /// and addresses (`HEAPPROF_SEED`).
    pub seed: Option<u64>,
    /// Where to write a profile at exit (`HEAPPROF_OUT`); also names the
    /// peak profile and the periodic series.
    pub out: Option<PathBuf>,
    /// `HEAPPROF_DUMP_EVERY`: a profile every so often (`30s`, `5m`; at least
    /// [`MIN_DUMP_EVERY`]).
    pub dump_every: Option<Duration>,
    /// `HEAPPROF_DUMP_EVERY_ALLOCATED`: a profile per so many bytes allocated.
    pub dump_every_allocated: Option<u64>,
    /// `HEAPPROF_DUMP_INUSE_GROWTH`: a profile when the live heap grew so much.
    pub dump_inuse_growth: Option<u64>,
    /// `HEAPPROF_PEAK_GROWTH`: how far (a percentage) the sampled live heap
    /// must pass the last peak copy before a new one is taken.
    pub peak_growth: Percent,
    /// `HEAPPROF_UNWIND`: `auto` (default), `dwarf` or `frame-pointers`.
    pub unwinder: Unwinder,
    /// `HEAPPROF_FULL_STACKS=1`: keep the process and thread start-up
    /// frames below the program's own (see `output::pprof::Trimmer`).
    pub full_stacks: bool,
    /// `HEAPPROF_SYMBOLIZE`: `true` (`on`, the default) names the frames
    /// of the profiles heapprof writes; `false` (`off`) writes mappings
    /// and addresses only and never looks a symbol up
    /// (`output::pprof::Options::addresses_only`).
    pub symbolize: bool,
    /// `HEAPPROF_DUMP_AT_LIMIT=80%,95%`: the fractions of the memory limit
    /// at which a profile is written (`dump/limit.rs`), ascending, no
    /// two alike; `None` when unset or malformed.
    pub dump_at_limit: Option<Vec<f64>>,
    /// `HEAPPROF_MEMORY_LIMIT`: a limit on the process's resident size,
    /// watched beside the cgroup's, and left room under by name lookups
    /// (`support::room::memory_short_of`).
    pub memory_limit: Option<u64>,
    /// `HEAPPROF_CGROUP_DIR`: the cgroup directory to read instead of the
    /// process's own (for tests and unusual mounts).
    pub cgroup_dir: Option<PathBuf>,
    /// `HEAPPROF_PYROSCOPE_*`: push profiles to Pyroscope.
    #[cfg_attr(not(feature = "pyroscope"), allow(dead_code))]
    pub pyroscope: Pyroscope,
    /// `HEAPPROF_THREAD_LABEL=0`: no automatic `thread` label on samples
    /// (`labels/`).
    pub thread_label: bool,
}

/// Where and how to push profiles to Pyroscope, from the environment.
/// `url` unset means no pusher; the rest matters only with it.
#[derive(Default)]
#[cfg_attr(not(feature = "pyroscope"), allow(dead_code))]
pub(crate) struct Pyroscope {
    /// `HEAPPROF_PYROSCOPE_URL`: the server, `http://` or `https://`.
    pub url: Option<String>,
    /// `HEAPPROF_PYROSCOPE_NAME`: the application name; the executable's
    /// file name when unset or malformed.
    pub name: Option<String>,
    /// `HEAPPROF_PYROSCOPE_LABELS`: `k=v,k=v`.
    pub labels: Vec<(String, String)>,
    /// `HEAPPROF_PYROSCOPE_EVERY`: the push period.
    pub every: Duration,
    /// `HEAPPROF_PYROSCOPE_TIMEOUT`: how long each step of a push may
    /// take, and the exit waits for the last push.
    pub timeout: Duration,
    /// `HEAPPROF_PYROSCOPE_USER` and `HEAPPROF_PYROSCOPE_PASSWORD`: basic
    /// authentication (Grafana Cloud's user id and access token).
    pub basic_auth: Option<(String, String)>,
    /// `HEAPPROF_PYROSCOPE_TOKEN`: a bearer token.
    pub token: Option<String>,
    /// `HEAPPROF_PYROSCOPE_TENANT`: the `X-Scope-OrgID` header of a
    /// multi-tenant Pyroscope.
    pub tenant: Option<String>,
}

/// The push period when `HEAPPROF_PYROSCOPE_EVERY` is not set: the upload
/// period of Pyroscope's own Go client and Alloy's scrape interval.
pub(crate) const DEFAULT_PYROSCOPE_EVERY: Duration = Duration::from_secs(15);

/// The shortest push period; a shorter one is raised to it.
pub(crate) const MIN_PYROSCOPE_EVERY: Duration = Duration::from_secs(1);

/// How long each step of a push may take when `HEAPPROF_PYROSCOPE_TIMEOUT`
/// is not set; also the longest the process's exit waits for its last push.
pub(crate) const DEFAULT_PYROSCOPE_TIMEOUT: Duration = Duration::from_secs(10);

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Every variable heapprof reads, without its `HEAPPROF_` prefix: what a
/// misspelled one is compared with ([`report_misspellings`]).
const SETTINGS: [&str; 24] = [
    "SAMPLE_RATE",
    "MAX_SITES",
    "PEAK_GROWTH",
    "SEED",
    "OUT",
    "DUMP_EVERY",
    "DUMP_EVERY_ALLOCATED",
    "DUMP_INUSE_GROWTH",
    "UNWIND",
    "FULL_STACKS",
    "SYMBOLIZE",
    "DUMP_AT_LIMIT",
    "MEMORY_LIMIT",
    "CGROUP_DIR",
    "THREAD_LABEL",
    "PYROSCOPE_URL",
    "PYROSCOPE_NAME",
    "PYROSCOPE_LABELS",
    "PYROSCOPE_EVERY",
    "PYROSCOPE_TIMEOUT",
    "PYROSCOPE_USER",
    "PYROSCOPE_PASSWORD",
    "PYROSCOPE_TOKEN",
    "PYROSCOPE_TENANT",
];

/// While the configuration is read ([`get`]'s first call).
static BEING_READ: AtomicBool = AtomicBool::new(false);

/// What an allocation made during the read put off until it ends
/// ([`after_read`]).
static AFTER_READ: OnceLock<fn()> = OnceLock::new();

/// Whether some thread is reading the configuration: the process's setup
/// (`record::set_up_once`), which reads it too, is put off until the read
/// ends ([`after_read`]).
pub(crate) fn being_read() -> bool {
    BEING_READ.load(Relaxed)
}

/// Has `then` run once the read under way ends: by the reading thread, by
/// any thread whose [`get`] finds it has just ended, or here, now, if it
/// has. Allocates nothing.
pub(crate) fn after_read(then: fn()) {
    let _ = AFTER_READ.set(then);
    // Against `get`'s fence: either this sees the configuration stored or
    // `get` sees `then`.
    fence(SeqCst);
    if CONFIG.get().is_some() {
        then();
    }
}

/// The configuration, read from the environment on first use. Inside the
/// profiler only (see the module comment).
pub(crate) fn get() -> &'static Config {
    if let Some(config) = CONFIG.get() {
        return config;
    }
    let config = CONFIG.get_or_init(|| {
        BEING_READ.store(true, Relaxed);
        let config = from_env();
        BEING_READ.store(false, Relaxed);
        config
    });
    // Against `after_read`'s fence.
    fence(SeqCst);
    if let Some(then) = AFTER_READ.get() {
        then();
    }
    config
}

/// Every setting, from the environment.
fn from_env() -> Config {
    report_misspellings();
    Config {
        sample_rate: at_most(
            "HEAPPROF_SAMPLE_RATE",
            read(
                "HEAPPROF_SAMPLE_RATE",
                BYTES_HINT,
                DEFAULT_SAMPLE_RATE,
                parse_bytes,
            ),
            MAX_RATE,
        ),
        max_sites: read(
            "HEAPPROF_MAX_SITES",
            MAX_SITES_HINT,
            DEFAULT_MAX_SITES,
            |s| parse_bytes(s).filter(|&n| n > 0 && n <= MAX_SITES),
        ),
        peak_growth: read(
            "HEAPPROF_PEAK_GROWTH",
            "a percentage above 0 such as 10% or 25",
            DEFAULT_PEAK_GROWTH,
            parse_percent,
        ),
        seed: optional("HEAPPROF_SEED", "a whole number", |s| s.parse().ok()),
        out: out_path(),
        dump_every: optional(
            "HEAPPROF_DUMP_EVERY",
            "a duration such as 30s, 5m or 1h",
            |s| parse_duration(s).filter(|d| !d.is_zero()),
        )
        .map(|every| at_least("HEAPPROF_DUMP_EVERY", every, MIN_DUMP_EVERY)),
        dump_every_allocated: optional("HEAPPROF_DUMP_EVERY_ALLOCATED", BYTES_HINT, |s| {
            parse_bytes(s).filter(|&n| n > 0).map(|n| n as u64)
        })
        .map(|step| at_least_bytes("HEAPPROF_DUMP_EVERY_ALLOCATED", step)),
        dump_inuse_growth: optional("HEAPPROF_DUMP_INUSE_GROWTH", BYTES_HINT, |s| {
            parse_bytes(s).filter(|&n| n > 0).map(|n| n as u64)
        })
        .map(|step| at_least_bytes("HEAPPROF_DUMP_INUSE_GROWTH", step)),
        // Unset and malformed both mean `auto`, so a malformed value
        // must say `auto` is used, not that unwinding is off.
        unwinder: lookup(
            "HEAPPROF_UNWIND",
            "auto, dwarf or frame-pointers",
            "using the default auto",
            |s| match s {
                "auto" => Some(Unwinder::Auto),
                "dwarf" => Some(Unwinder::Dwarf),
                "frame-pointers" | "fp" => Some(Unwinder::FramePointers),
                _ => None,
            },
        )
        .unwrap_or(Unwinder::Auto),
        full_stacks: switch("HEAPPROF_FULL_STACKS", false),
        // Unset and malformed both mean `on`.
        symbolize: lookup(
            "HEAPPROF_SYMBOLIZE",
            "on or off",
            "using the default on",
            parse_on_off,
        )
        .unwrap_or(true),
        dump_at_limit: optional(
            "HEAPPROF_DUMP_AT_LIMIT",
            "percentages from 1 to 100 separated by commas, such as 80%,95%",
            parse_thresholds,
        ),
        memory_limit: lookup(
            "HEAPPROF_MEMORY_LIMIT",
            "a size of 1 MiB or more, such as 512MiB or 2GiB",
            "watching the cgroup's limit or physical memory instead",
            |s| {
                parse_bytes(s)
                    .map(|n| n as u64)
                    .filter(|&n| n >= MIN_MEMORY_LIMIT)
            },
        ),
        cgroup_dir: var("HEAPPROF_CGROUP_DIR").map(PathBuf::from),
        pyroscope: pyroscope(),
        thread_label: switch("HEAPPROF_THREAD_LABEL", true),
    }
}

/// Reports, one line each, the `HEAPPROF_` variables set that heapprof
/// does not read but that look like one it does (`HEAPPROF_SAMPLERATE`,
/// `HEAPPROF_OUTPUT`, `HEAPPROF_RATE`, and any name in another case,
/// `HEAPPROF_out` or `heapprof_out`: names are case-sensitive), or that
/// start like a family of its settings (`HEAPPROF_PYROSCOPE_PERIOD`):
/// silence would read as "it worked". Other `HEAPPROF_` names are left
/// alone, as another tool's may be.
fn report_misspellings() {
    const PREFIX: &str = "HEAPPROF_";
    for (name, _) in std::env::vars_os() {
        let Some(full) = name.to_str() else {
            continue;
        };
        let prefixed = full
            .as_bytes()
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX.as_bytes()));
        if !prefixed {
            continue;
        }
        // The prefix is ASCII, so its end is a character boundary.
        let given = &full[PREFIX.len()..];
        if full.starts_with(PREFIX) && SETTINGS.contains(&given) {
            continue;
        }
        let upper = given.to_ascii_uppercase();
        let meant = SETTINGS
            .iter()
            .find(|&&known| upper == known || looks_like(&upper, known));
        // Asked only with something to say, as `var` asks: an environment
        // that is not trusted gets one line for all its variables there.
        if let Some(meant) = meant {
            if !secure_execution() {
                report::warn(format_args!(
                    "heapprof: ignoring {}: heapprof reads no such variable; did you mean \
                     HEAPPROF_{meant}?",
                    Shown::new(&name)
                ));
            }
        } else if let Some(family) = family(&upper).filter(|_| !secure_execution()) {
            let members: Vec<&str> = SETTINGS
                .iter()
                .filter_map(|s| s.strip_prefix(family))
                .collect();
            report::warn(format_args!(
                "heapprof: ignoring {}: heapprof reads no such variable; its HEAPPROF_{family} \
                 settings are {}",
                Shown::new(&name),
                members.join(", ")
            ));
        }
    }
}

/// The family of settings whose first word `given` (upper case) starts
/// with, followed by `_`, when two or more settings share that word
/// (`PYROSCOPE_`, `DUMP_`): a name there is heapprof's, whatever follows.
fn family(given: &str) -> Option<&'static str> {
    let (word, _) = given.split_once('_')?;
    let mut members = SETTINGS
        .iter()
        .filter(|s| s.split_once('_').is_some_and(|(first, _)| first == word));
    let first = members.next()?;
    members.next()?;
    Some(&first[..word.len() + 1])
}

/// Whether `given` looks like a misspelling of `known`: two edits or fewer
/// apart (for names of 4 bytes or more), one the start or the end of
/// the other, joined at a `_` (`RATE` and `SAMPLE_RATE`, `OUT_DIR` and
/// `OUT`) or with at most 3 bytes more (`OUTPUT` and `OUT`; not `TIMEOUT`),
/// or `known` of two words or more with its words shortened
/// ([`abbreviates`]: `MEM_LIMIT`), or of three words or more with one left
/// out (`DUMP_LIMIT` for `DUMP_AT_LIMIT`).
fn looks_like(given: &str, known: &str) -> bool {
    if given.len() < 3 {
        return false;
    }
    let (a, b) = (given.as_bytes(), known.as_bytes());
    // A setting of one word shortened is too little to go on
    // (`HEAPPROF_SYM` may be another tool's).
    let words: Vec<&[u8]> = b.split(|&c| c == b'_').collect();
    if words.len() > 1 && abbreviates(a, &words) {
        return true;
    }
    let given_words: Vec<&[u8]> = a.split(|&c| c == b'_').collect();
    let one_left_out = given_words.len() >= 2
        && given_words.len() + 1 == words.len()
        && (0..words.len()).any(|out| {
            let kept = words[..out].iter().chain(&words[out + 1..]);
            kept.eq(given_words.iter())
        });
    if one_left_out {
        return true;
    }
    let affix = |long: &[u8], short: &[u8]| {
        let Some(extra) = long.len().checked_sub(short.len()).filter(|&e| e > 0) else {
            return false;
        };
        let joined = |at: usize| extra <= 3 || long[at] == b'_';
        (long.starts_with(short) && joined(short.len()))
            || (long.ends_with(short) && joined(extra - 1))
    };
    if affix(a, b) || affix(b, a) {
        return true;
    }
    // Levenshtein distance, one row at a time.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let replaced = diagonal + usize::from(x != y);
            diagonal = row[j + 1];
            row[j + 1] = replaced.min(row[j] + 1).min(diagonal + 1);
        }
    }
    given.len() >= 4 && row[b.len()] <= 2
}

/// Whether `given` is `words` in order, each cut to its first
/// [`ABBREVIATED`] bytes or more, with or without the `_` between them
/// (`MEM_LIMIT`, `MEMLIMIT`, `PYRO_URL`).
fn abbreviates(given: &[u8], words: &[&[u8]]) -> bool {
    let Some((word, rest)) = words.split_first() else {
        return given.is_empty();
    };
    let shortest = ABBREVIATED.min(word.len());
    (shortest..=word.len()).any(|n| {
        given.get(..n) == Some(&word[..n]) && {
            let after = &given[n..];
            let after = match (rest.is_empty(), after.strip_prefix(b"_")) {
                (false, Some(joined)) => joined,
                _ => after,
            };
            abbreviates(after, rest)
        }
    })
}

/// The fewest bytes of a setting's word that [`abbreviates`] takes as the
/// word.
const ABBREVIATED: usize = 3;

/// The `HEAPPROF_PYROSCOPE_*` settings. Read whatever the features: a URL
/// set for a heapprof built without the `pyroscope` feature is reported
/// (where the pusher would start), not silently ignored.
fn pyroscope() -> Pyroscope {
    let Some(url) = optional(
        "HEAPPROF_PYROSCOPE_URL",
        "an http:// or https:// URL such as http://pyroscope:4040",
        |s| is_http_url(s).then(|| s.to_owned()),
    ) else {
        return Pyroscope::default();
    };
    if !cfg!(feature = "pyroscope") {
        report::warn(format_args!(
            "heapprof: HEAPPROF_PYROSCOPE_URL is set, but this heapprof was built without its \
             `pyroscope` feature: nothing is pushed"
        ));
        return Pyroscope::default();
    }
    let name = lookup(
        "HEAPPROF_PYROSCOPE_NAME",
        "a name of letters, digits and _ . - /",
        "using the executable's name",
        |s| valid_service_name(s).then(|| s.to_owned()),
    );
    let labels = lookup(
        "HEAPPROF_PYROSCOPE_LABELS",
        "key=value pairs separated by commas, keys as Pusher::label takes them, values \
         without , or }",
        "pushing no labels",
        parse_labels,
    )
    .unwrap_or_default();
    let every = lookup(
        "HEAPPROF_PYROSCOPE_EVERY",
        "a duration such as 15s, 500ms or 1m",
        &format!("using the default {DEFAULT_PYROSCOPE_EVERY:?}"),
        |s| parse_duration(s).filter(|d| !d.is_zero()),
    )
    .map_or(DEFAULT_PYROSCOPE_EVERY, |every| {
        at_least("HEAPPROF_PYROSCOPE_EVERY", every, MIN_PYROSCOPE_EVERY)
    });
    let timeout = lookup(
        "HEAPPROF_PYROSCOPE_TIMEOUT",
        "a duration such as 10s or 500ms",
        &format!("using the default {DEFAULT_PYROSCOPE_TIMEOUT:?}"),
        |s| parse_duration(s).filter(|d| !d.is_zero()),
    )
    .unwrap_or(DEFAULT_PYROSCOPE_TIMEOUT);
    let text = |name: &str| var(name).map(|v| v.to_string_lossy().trim().to_owned());
    let basic_auth = match (
        text("HEAPPROF_PYROSCOPE_USER"),
        text("HEAPPROF_PYROSCOPE_PASSWORD"),
    ) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => {
            report::warn(format_args!(
                "heapprof: HEAPPROF_PYROSCOPE_USER and HEAPPROF_PYROSCOPE_PASSWORD go together; \
                 only one is set, so no basic authentication is sent"
            ));
            None
        }
    };
    // A header value with control characters is one the HTTP client
    // refuses (and one that could end the header early), shown by name
    // only (a token is a secret). Basic credentials are sent in base64
    // and need no such check.
    let header = |name: &str| {
        let value = text(name)?;
        if value.chars().any(char::is_control) {
            return Some(Err(format!(
                "heapprof: ignoring {name}: its value (not shown) has control characters"
            )));
        }
        Some(Ok(value))
    };
    // Without its tenant a push could land in another (a server's
    // default): nothing is pushed. Without its token it is refused.
    let tenant = match header("HEAPPROF_PYROSCOPE_TENANT") {
        Some(Err(why)) => {
            report::warn(format_args!("{why}; nothing is pushed"));
            return Pyroscope::default();
        }
        tenant => tenant.and_then(Result::ok),
    };
    let token = match header("HEAPPROF_PYROSCOPE_TOKEN") {
        Some(Err(why)) => {
            report::warn(format_args!("{why}; sending no bearer token"));
            None
        }
        token => token.and_then(Result::ok),
    };
    Pyroscope {
        url: Some(url),
        name,
        labels,
        every,
        timeout,
        basic_auth,
        token,
        tenant,
    }
}

/// Whether `url` starts with `http://` or `https://`, in any case (a
/// URL's scheme is case-insensitive).
pub(crate) fn is_http_url(url: &str) -> bool {
    let starts = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    starts("http://") || starts("https://")
}

/// Whether `name` is an application name Pyroscope's ingest accepts:
/// letters, digits and `_ . - /`, at least one.
pub(crate) fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
}

/// Labels a push's ingest adds itself: one given too would be a second
/// label of that name, which the server refuses (`service_name` comes
/// from the push's name).
const SET_BY_THE_SERVER: [&str; 2] = ["service_name", "pyroscope_spy"];

/// Whether `key` is a label name Pyroscope's ingest accepts and keeps:
/// letters, digits, `_` and `.`, a letter or `_` first; not starting with
/// `__` (the server's own, such as `__name__`, which it drops from a
/// push), nor one of [`SET_BY_THE_SERVER`].
pub(crate) fn valid_label_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && !key.starts_with("__")
        && !SET_BY_THE_SERVER.contains(&key)
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
}

/// Whether `value` can stand in the `name` of a push: not empty, no `,` or
/// `}` (which end a value there), no blanks at either end (which the
/// server trims) and no control characters.
pub(crate) fn valid_label_value(value: &str) -> bool {
    !value.is_empty()
        && value.trim() == value
        && !value
            .chars()
            .any(|c| matches!(c, ',' | '}') || c.is_control())
}

/// Parses `k=v,k=v` (blanks around each part ignored); `None` if any pair
/// is malformed.
pub(crate) fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    text.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            (valid_label_key(k) && valid_label_value(v)).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

const BYTES_HINT: &str = "a byte count such as 524288, 512KiB, 2MiB or 64k";

/// `value`, or `max` with a line on stderr if `value` is above it.
fn at_most(name: &str, value: usize, max: usize) -> usize {
    if value <= max {
        return value;
    }
    report::warn(format_args!(
        "heapprof: {name}={value} is above the largest value, {max}; using {max}"
    ));
    max
}

/// `value`, or `min` with a line on stderr if `value` is below it.
fn at_least(name: &str, value: Duration, min: Duration) -> Duration {
    if value >= min {
        return value;
    }
    report::warn(format_args!(
        "heapprof: {name}={value:?} is below the shortest period, {min:?}; using {min:?}"
    ));
    min
}

/// `step`, or [`MIN_DUMP_STEP`] with a line on stderr if it is smaller.
fn at_least_bytes(name: &str, step: u64) -> u64 {
    if step >= MIN_DUMP_STEP {
        return step;
    }
    report::warn(format_args!(
        "heapprof: {name}={step} bytes is below the smallest step, {} MiB; using {} MiB",
        MIN_DUMP_STEP >> 20,
        MIN_DUMP_STEP >> 20
    ));
    MIN_DUMP_STEP
}

fn read<T: std::fmt::Display>(
    name: &str,
    expected: &str,
    default: T,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    let Some(raw) = var(name) else {
        return default;
    };
    match raw.to_str().and_then(parse) {
        Some(value) => value,
        None => {
            report::warn(format_args!(
                "heapprof: ignoring {name}={}: expected {expected}; using the default {default}",
                Shown::new(&raw)
            ));
            default
        }
    }
}

/// A switch, as [`parse_on_off`] reads it, blanks around it
/// ignored. Unset is `default`; a malformed value is reported in one line
/// and `default` used.
fn switch(name: &str, default: bool) -> bool {
    let Some(raw) = var(name) else {
        return default;
    };
    match raw.to_str().and_then(|s| parse_on_off(s.trim())) {
        Some(value) => value,
        None => {
            report::warn(format_args!(
                "heapprof: ignoring {name}={}: expected on or off (1 or 0); using the default {}",
                Shown::new(&raw),
                if default { "on" } else { "off" }
            ));
            default
        }
    }
}

/// An optional setting: unset is `None`; a malformed value is reported and
/// also `None` (the feature stays off).
fn optional<T>(name: &str, expected: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    lookup(name, expected, "leaving it off", parse)
}

/// `name` parsed, or `None` if it is unset or malformed. A malformed value
/// is reported in one line that ends with `fallback`, what the caller does
/// instead; the caller's fallback and this text must agree.
fn lookup<T>(
    name: &str,
    expected: &str,
    fallback: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let raw = var(name)?;
    let value = raw.to_str().and_then(|s| parse(s.trim()));
    if value.is_none() {
        // A URL's password is not for stderr, even in a malformed one.
        let shown: OsString = match raw.to_str() {
            Some(text) => without_credentials(text).into_owned().into(),
            None => raw,
        };
        report::warn(format_args!(
            "heapprof: ignoring {name}={}: expected {expected}; {fallback}",
            Shown::new(&shown)
        ));
    }
    value
}

/// Where the `user:password@` part a URL may carry lies: `url[start..at]`
/// is `user:password` and `url[at]` the `@`; also in a reference without
/// a scheme (`//user:password@host/`). `None` without one.
pub(crate) fn userinfo_at(url: &str) -> Option<(usize, usize)> {
    let start = match url.find("://") {
        Some(i) => i + 3,
        None if url.starts_with("//") => 2,
        None => return None,
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = start + url[start..authority_end].rfind('@')?;
    Some((start, at))
}

/// `url` without the `user:password@` part a URL may carry
/// ([`userinfo_at`]), for messages.
pub(crate) fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    match userinfo_at(url) {
        Some((start, at)) => format!("{}…@{}", &url[..start], &url[at + 1..]).into(),
        None => url.into(),
    }
}

/// The variable `name`, `None` if it is unset or set to nothing.
fn var(name: &str) -> Option<OsString> {
    let value = not_blank(std::env::var_os(name))?;
    if secure_execution() {
        static SAID: report::Once = report::Once::new();
        SAID.warn(format_args!(
            "heapprof: ignoring {name} and every other HEAPPROF_ variable: this program runs \
             with privileges its user lacks (set-user-ID, set-group-ID or file capabilities), \
             so its environment is not trusted"
        ));
        return None;
    }
    Some(value)
}

/// `HEAPPROF_OUT`. A `%` that starts none of the placeholders dump paths
/// take (`%p`, `%e`, `%%`) stays in the name as it is, and is said in one
/// line: `heap-%t.pb.gz` may have meant a placeholder another tool has.
fn out_path() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let value = var("HEAPPROF_OUT")?;
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|&c| c == b'%') {
        match rest.get(at + 1) {
            Some(b'p' | b'e' | b'%') => rest = &rest[at + 2..],
            _ => {
                report::warn(format_args!(
                    "heapprof: HEAPPROF_OUT={}: a % that is not %p (process id), %e \
                     (executable's name) or %% (a %) is kept in the file name as it is",
                    Shown::path(&value)
                ));
                break;
            }
        }
    }
    Some(PathBuf::from(value))
}

/// `SSL_CERT_FILE`, read as OpenSSL and curl read it: a PEM file of the
/// root certificates to trust instead of those built in (for a push over
/// `https://`). `None` when unset, or under secure execution
/// ([`secure_execution`]: a file of roots chosen by whoever started a
/// privileged program decides which servers it believes), said once.
#[cfg(feature = "pyroscope")]
pub(crate) fn tls_roots_file() -> Option<OsString> {
    let value = not_blank(std::env::var_os("SSL_CERT_FILE"))?;
    if secure_execution() {
        static SAID: report::Once = report::Once::new();
        SAID.warn(format_args!(
            "heapprof: ignoring SSL_CERT_FILE: this program runs with privileges its user \
             lacks, so its environment is not trusted; https:// servers are checked against \
             the root certificates built in"
        ));
        return None;
    }
    Some(value)
}

/// Whether the kernel marked this program's start as a secure execution
/// (`AT_SECURE`: set-user-ID, set-group-ID, or file capabilities), as
/// glibc's `secure_getenv` asks. Then whoever started it set the
/// environment without those privileges, and a variable that names a
/// file to write (`HEAPPROF_OUT`), a server to send profiles to or an
/// address to serve them on would have heapprof do so with them.
fn secure_execution() -> bool {
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry
    // the kernel did not pass.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// A value that is empty or all blanks is no value: an empty assignment is
/// the usual way to turn a setting off for one command, and reporting it as
/// malformed would be noise. (Non-UTF-8 is kept, to be reported.)
fn not_blank(raw: Option<OsString>) -> Option<OsString> {
    raw.filter(|v| v.to_str().is_none_or(|s| !s.trim().is_empty()))
}

/// Parses `on`, `1`, `true` or `yes` (true), `off`, `0`, `false` or `no`
/// (false), in any case.
pub(crate) fn parse_on_off(text: &str) -> Option<bool> {
    let is = |words: [&str; 4]| words.iter().any(|w| text.eq_ignore_ascii_case(w));
    if is(["on", "1", "true", "yes"]) {
        Some(true)
    } else if is(["off", "0", "false", "no"]) {
        Some(false)
    } else {
        None
    }
}

/// Parses `30`, `30s`, `500ms`, `5m`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let n: u64 = digits.parse().ok()?;
    let millis = match unit.trim() {
        "" | "s" => n.checked_mul(1000)?,
        "ms" => n,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Parses `10%`, `10` or `2.5%`: a percentage above 0 and at most 1000.
pub(crate) fn parse_percent(text: &str) -> Option<Percent> {
    let text = text.trim();
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    let p: f64 = number.parse().ok()?;
    (p > 0.0 && p <= 1000.0).then_some(Percent(p))
}

/// Parses `80%,95%` (a bare number is a percentage too): percentages from
/// 1 to 100, separated by commas, as fractions in ascending order with
/// duplicates dropped. `None` for an empty item or any percentage outside
/// that range: `0.8,0.95`, meant as fractions, would be thresholds of
/// under 1 %, crossed as soon as the program starts.
pub(crate) fn parse_thresholds(text: &str) -> Option<Vec<f64>> {
    let mut fractions = text
        .split(',')
        .map(|item| {
            parse_percent(item)
                .filter(|p| (1.0..=100.0).contains(&p.0))
                .map(Percent::fraction)
        })
        .collect::<Option<Vec<f64>>>()?;
    fractions.sort_by(f64::total_cmp);
    fractions.dedup();
    Some(fractions)
}

/// Parses a byte count: a decimal number with an optional unit. Units are
/// binary and case-insensitive: `k`, `kb`, `kib` = 1024; `m`, `mb`, `mib` =
/// 1024²; `g`, `gb`, `gib` = 1024³; `t`, `tb`, `tib` = 1024⁴; `b` = 1.
/// `None` for anything else:
/// empty text, a sign, a fraction, an unknown unit, or overflow.
pub(crate) fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let number: usize = digits.parse().ok()?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    /// Names a user may have meant for one of heapprof's are told apart
    /// from other tools' `HEAPPROF_` names, and from heapprof's own tests'.
    #[test]
    fn misspelled_names_look_like_a_setting() {
        use super::{SETTINGS, looks_like};
        let meant = |given: &str| SETTINGS.iter().copied().find(|k| looks_like(given, k));
        for (given, setting) in [
            ("SAMPLERATE", "SAMPLE_RATE"),
            ("RATE", "SAMPLE_RATE"),
            ("OUTPUT", "OUT"),
            ("DUMP_AT_LIMITS", "DUMP_AT_LIMIT"),
            ("SYMBOLISE", "SYMBOLIZE"),
            ("PYROSCOPE_LABEL", "PYROSCOPE_LABELS"),
            ("MEM_LIMIT", "MEMORY_LIMIT"),
            ("MEMLIMIT", "MEMORY_LIMIT"),
            ("PYRO_URL", "PYROSCOPE_URL"),
            ("DUMP_LIMIT", "DUMP_AT_LIMIT"),
            ("INUSE_GROWTH", "DUMP_INUSE_GROWTH"),
            ("TIMEOUT", "PYROSCOPE_TIMEOUT"),
        ] {
            assert_eq!(meant(given), Some(setting), "{given}");
        }
        for other in [
            "TEST_CHILD",
            "LIFECYCLE_CHILD",
            "RATE1",
            "MSRV",
            "X",
            "DWARF",
            "BENCH_ROUNDS",
            "DEBUG_OUTPUT_FORMAT",
            "SYM",
            "TEST_RATE",
            "TEST_OUT_DIR",
            "EXPECT_FP",
            "BENCH_ROUNDS_SHOWN",
        ] {
            assert_eq!(meant(other), None, "{other}");
        }
    }

    /// Every `HEAPPROF_` variable this file reads is in [`super::SETTINGS`],
    /// and nothing else is: a setting missing there would be reported as
    /// a misspelling of another.
    #[test]
    fn the_settings_list_is_what_is_read() {
        let source = include_str!("mod.rs");
        let mut read: Vec<&str> = source
            .split("\"HEAPPROF_")
            .skip(1)
            .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
            .filter(|name| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
            .filter(|name| !name.ends_with('_'))
            .collect();
        read.sort_unstable();
        read.dedup();
        let mut listed = super::SETTINGS.to_vec();
        listed.sort_unstable();
        assert_eq!(read, listed);
    }

    #[test]
    fn switches_take_the_usual_words() {
        use super::parse_on_off;
        for on in ["on", "1", "true", "YES", "On"] {
            assert_eq!(parse_on_off(on), Some(true), "{on}");
        }
        for off in ["off", "0", "false", "No", "OFF"] {
            assert_eq!(parse_on_off(off), Some(false), "{off}");
        }
        for bad in ["", "of", "2", "maybe", "y"] {
            assert_eq!(parse_on_off(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accepts_plain_numbers_and_binary_units() {
        assert_eq!(parse_bytes("524288"), Some(524288));
        assert_eq!(parse_bytes("512KiB"), Some(512 * 1024));
        assert_eq!(parse_bytes("2MiB"), Some(2 << 20));
        assert_eq!(parse_bytes("64k"), Some(65536));
        assert_eq!(parse_bytes(" 1 GB "), Some(1 << 30));
        assert_eq!(parse_bytes("2TiB"), Some(2 << 40));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("1"), Some(1));
    }

    #[test]
    fn set_to_nothing_is_unset() {
        use super::not_blank;
        use std::ffi::OsString;
        for blank in ["", " ", "\t", "  \n"] {
            assert_eq!(not_blank(Some(blank.into())), None, "{blank:?}");
        }
        assert_eq!(not_blank(None), None);
        for kept in ["0", "abc", " 64k "] {
            assert_eq!(not_blank(Some(kept.into())), Some(kept.into()), "{kept:?}");
        }
        // Not UTF-8: kept, so that it is reported rather than ignored.
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![0xff]);
        assert_eq!(not_blank(Some(odd.clone())), Some(odd));
    }

    #[test]
    fn percentages() {
        use super::{Percent, parse_percent};
        assert_eq!(parse_percent("10%"), Some(Percent(10.0)));
        assert_eq!(parse_percent(" 25 "), Some(Percent(25.0)));
        assert_eq!(parse_percent("2.5 %"), Some(Percent(2.5)));
        for bad in ["", "%", "0", "-5%", "abc", "1e9", "NaN", "inf"] {
            assert_eq!(parse_percent(bad), None, "{bad}");
        }
    }

    #[test]
    fn thresholds() {
        use super::parse_thresholds;
        assert_eq!(parse_thresholds("80%,95%"), Some(vec![0.8, 0.95]));
        assert_eq!(parse_thresholds(" 95 , 80% ,95%"), Some(vec![0.8, 0.95]));
        assert_eq!(parse_thresholds("100%"), Some(vec![1.0]));
        assert_eq!(parse_thresholds("1"), Some(vec![0.01]));
        for bad in [
            "", ",", "80%,", "80%,,95%", "0.8,0.95", "0", "101%", "-5%", "x",
        ] {
            assert_eq!(parse_thresholds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        use super::parse_duration;
        use std::time::Duration;
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        for bad in ["", "x", "-1s", "1.5s", "3 days"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "   ",
            "abc",
            "-1",
            "+5",
            "1.5MiB",
            "12 parsecs",
            "5PiB",
            "99999999999999999999999",
            "18446744073709551615GiB",
            "KiB",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad:?} must be rejected");
        }
    }
}
