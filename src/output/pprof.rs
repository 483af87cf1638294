//! Building the pprof `Profile` from a copy of the site table:
//! trimming, symbolization, mappings, values, and encoding.
//!
//! The four sample types follow Go's heap profile, in Go's order, so that
//! pprof's default view (the last type) is `inuse_space`:
//!
//! | index | type          | unit  | value                                  |
//! |-------|---------------|-------|----------------------------------------|
//! | 0     | alloc_objects | count | Σ w over sampled allocations           |
//! | 1     | alloc_space   | bytes | Σ size·w over sampled allocations      |
//! | 2     | inuse_objects | count | the same, minus sampled frees          |
//! | 3     | inuse_space   | bytes | the same, minus sampled frees          |
//!
//! where `w = 1/(1 - exp(-size/rate))` (see `sample::weight`). A sample
//! carries its site's labels (`labels/`) as string labels, the same on all
//! four values; no `bytes` label (see `add_site`): a site mixes block
//! sizes.

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use crate::labels::{self, LabelSetId};
use crate::output::proto;
use crate::output::symbolize::{self, Symbols};
use crate::record::sites::SiteCopy;
use crate::record::stack::{CUT, OWN_FRAMES};
use crate::sample::Numbers;
use crate::support::mappings::{self, Mapping};

/// The profile's `doc_url`, which pprof's web UI links as Help: the crate
/// docs' section on what the four sample types count and how far their
/// estimates can be trusted, for the version that wrote the profile.
pub(crate) const DOC_URL: &str = concat!(
    "https://docs.rs/heapprof/",
    env!("CARGO_PKG_VERSION"),
    "/heapprof/#what-the-numbers-mean"
);

/// The name under which the overflow site appears in profiles.
pub(crate) const OVERFLOW_FUNCTION: &str = "[heapprof overflow: site table full or out of memory]";

/// How to present a profile.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// `Some("alloc_space")` for the `allocs` flavour and for profiles
    /// written at exit ([`Options::at_exit`]); `None` leaves pprof's
    /// default (the last type, `inuse_space`).
    pub default_sample_type: Option<&'static str>,
    /// Notes added to the profile's comments (`pprof -comments`).
    pub comments: Vec<String>,
    /// For a delta profile: the span it covers, and when it started (the
    /// profile's `duration_nanos`; `time_nanos` is then its end, as Go's).
    pub duration: Option<std::time::Duration>,
    /// When the profile's numbers are from (the profile's `time_nanos`): a
    /// peak's moment; `None` for now.
    pub time: Option<std::time::SystemTime>,
    /// Mappings (with their build IDs) and addresses only: no function
    /// names, files or lines, and no symbol lookup at all, so none of the
    /// debug info a lookup parses is ever loaded into the process
    /// (`HEAPPROF_SYMBOLIZE=off`, `?symbolize=0`). For fleets that
    /// symbolize on the server; `go tool pprof BINARY PROFILE` names the
    /// frames from the binary. Stacks are then whole: trimming the
    /// allocation machinery and the start-up frames needs their names.
    pub addresses_only: bool,
    /// For a server that makes each sample's labels part of a series' name
    /// (Pyroscope, which refuses a whole profile over one key it does not
    /// accept): keys as [`series_key`] rewrites them, and a label left out
    /// when its key is one of these (the series' own labels), or one an
    /// earlier label of the sample took. `None`: labels as given.
    pub series_label_keys: Option<Vec<String>>,
    /// The sites' inuse values are changes over a span (a delta of two
    /// tables), so the count of live sampled blocks is a change too.
    pub change: bool,
}

/// `key` as a series label name, `[A-Za-z_][A-Za-z0-9_]*` (Prometheus's,
/// which Pyroscope checks): any other ASCII character becomes `_`, any
/// other character its code point in hex, as `u` and four digits or `U`
/// and eight (`é` is `u00e9`, `😀` `U0001f600`; the fixed widths keep
/// `éa` and `U+0E9A` apart, and keys in other scripts never read as the
/// server's `__` names), and a leading digit gets a `_` before it. `None` for names such a
/// server sets itself: `service_name`, `pyroscope_spy` and those starting
/// with `__`.
pub(crate) fn series_key(key: &str) -> Option<String> {
    let mut name = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            c if c.is_ascii_alphanumeric() => name.push(c),
            c if c.is_ascii() => name.push('_'),
            c => {
                use std::fmt::Write as _;
                let _ = match u32::from(c) {
                    point @ ..=0xffff => write!(name, "u{point:04x}"),
                    point => write!(name, "U{point:08x}"),
                };
            }
        }
    }
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    let servers = ["service_name", "pyroscope_spy"];
    (!servers.contains(&name.as_str()) && !name.starts_with("__")).then_some(name)
}

impl Options {
    /// For a profile written when the program ends (`HEAPPROF_OUT`, a
    /// `ProfileGuard`): by then most of the heap is freed, so it opens on
    /// what was allocated, and says why.
    pub(crate) fn at_exit() -> Options {
        Options {
            default_sample_type: Some("alloc_space"),
            comments: vec![format!(
                "heapprof: written as the program ended, when most of its memory was freed: \
                 opens on alloc_space (everything allocated); -sample_index=inuse_space shows \
                 what was still live, and a peak profile (HEAPPROF_OUT's .peak file, once the \
                 live heap has reached {} KiB, or write_peak_profile) what was live at the top",
                crate::record::peak::MIN_PEAK >> 10
            )],
            ..Options::default()
        }
    }
}

/// Memory the profiler holds for itself: its tables
/// ([`profiler_table_bytes`]) and what symbolization keeps. Takes no lock.
pub(crate) fn profiler_bytes() -> usize {
    profiler_table_bytes() + symbolize::memory_bytes()
}

/// Memory the profiler's tables hold: sites, labels, the sampled-address
/// set and spare sampled blocks. Takes no lock.
fn profiler_table_bytes() -> usize {
    crate::record::sites::memory_bytes()
        + labels::memory_bytes()
        + crate::record::blocks::memory_bytes()
        + crate::record::spare::bytes()
}

/// The stack a profile build, encoding or text profile may need, at
/// most. In a release build a gzipped profile needs about 70 KiB of stack
/// (66 KiB of it flate2's compressor state, built on the stack before it
/// is boxed) and a text profile with a cold symbolization about 24 KiB,
/// which leaves the rest of 128 KiB to the caller's writer. Unoptimized
/// code (a user's debug `cargo test` builds heapprof so) has frames
/// several times larger, where two cold builds need 384 KiB: four times
/// as much (`tests/small_stack.rs` writes profiles from small stacks).
const BUILD_STACK_NEED: usize = if cfg!(debug_assertions) { 4 } else { 1 } * 128 * 1024;

/// The stack segment a build gets when the caller's stack has less than
/// [`BUILD_STACK_NEED`] left. Only the pages it touches become resident.
const BUILD_STACK_BYTES: usize = 4 * BUILD_STACK_NEED;

/// Runs `f` with at least [`BUILD_STACK_NEED`] of stack: on the caller's
/// stack when that much is left, else on a fresh stack segment of
/// [`BUILD_STACK_BYTES`] mapped for the call (by `stacker`), on this same
/// thread, so that its thread-locals (the reentrancy guard, the
/// per-thread counters) are the caller's. A program's threads may have
/// stacks as small as 16 KiB; a profile written from one of them would
/// overflow it, and a stack overflow aborts the process.
pub(crate) fn with_build_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(BUILD_STACK_NEED, BUILD_STACK_BYTES, f)
}

/// What profiles say once the `thread` label's table is full.
pub(crate) fn thread_label_dropped_note() -> String {
    format!(
        "heapprof: the thread label's table is full ({} sets of a thread's name and the labels in force, or {} KiB) or was out of memory: samples of later threads and label sets carry no thread label",
        labels::table::MAX_THREAD_LABEL_SETS,
        labels::table::MAX_THREAD_TABLE_BYTES >> 10
    )
}

/// What profiles say once a set of the program's labels found no place in
/// the label-set table.
pub(crate) fn label_table_full_note() -> String {
    format!(
        "heapprof: the label-set table is full ({} sets, or {} KiB) or was out of memory: samples under label sets it has no place for carry heapprof_overflow=label sets instead of their labels; keep unbounded values (request ids) out of labels",
        labels::table::MAX_LABEL_SETS,
        labels::table::MAX_TABLE_BYTES >> 10
    )
}

/// What profiles say once the site table has been full: how new stacks
/// found room, where the counts of the stacks they replaced went, and how
/// to keep more.
pub(crate) fn site_table_full_note() -> String {
    format!(
        "heapprof: the site table is full ({} stacks, or {} frames stored in all) or was out of memory: new stacks take the places of the least recently sampled ones with nothing live, whose counts move to {OVERFLOW_FUNCTION} (with samples of new stacks that found no room), each with its labels; a larger HEAPPROF_MAX_SITES keeps more stacks",
        crate::config::get().max_sites,
        crate::record::sites::max_frames(),
    )
}

/// Encodes `profile` as a gzip-compressed protobuf, at the fastest level
/// (as Go's profiles are): the time is the service's, the bytes only the
/// scraper's. Measured with `dev/benches/micro.rs` (10 000 sites), the
/// default level builds the profile in 35 ms rather than 19, for a body
/// of 34 KiB rather than 52; at a full table, a body 5 % smaller.
pub(crate) fn encode<W: Write>(profile: &proto::Profile, w: W) -> io::Result<()> {
    with_build_stack(|| {
        let bytes = profile.encode_to_vec();
        let mut gz = GzEncoder::new(Retrying::new(w), Compression::fast());
        gz.write_all(&bytes)?;
        gz.finish()?.flush()
    })
}

/// The program's writer as the gzip encoder sees it:
/// * tried again when interrupted (`EINTR`: a signal arrived while a pipe
///   or socket write waited): the encoder passes `Interrupted` up from its
///   final writes instead of trying again, which would fail a profile over
///   a signal;
/// * not called again once a call panicked: the encoder's `Drop` writes
///   the rest of the stream while the panic unwinds, and a second panic
///   there would abort the process, where one is the caller's to catch.
struct Retrying<W> {
    inner: W,
    /// A call into `inner` began and has not returned.
    in_call: bool,
}

impl<W: Write> Retrying<W> {
    fn new(inner: W) -> Retrying<W> {
        Retrying {
            inner,
            in_call: false,
        }
    }

    /// Calls `f` on the writer until it is not interrupted; an error,
    /// without calling, once a call panicked.
    fn call<R>(&mut self, mut f: impl FnMut(&mut W) -> io::Result<R>) -> io::Result<R> {
        if self.in_call {
            return Err(io::Error::other("the writer panicked"));
        }
        self.in_call = true;
        let done = loop {
            match f(&mut self.inner) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => break done,
            }
        };
        self.in_call = false;
        done
    }
}

impl<W: Write> Write for Retrying<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.call(|w| w.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.call(|w| w.flush())
    }
}

/// `when` in pprof's `time_nanos`: signed nanoseconds from the Unix epoch,
/// held at `i64`'s ends past them (years before 1678 or after 2262).
fn unix_nanos(when: std::time::SystemTime) -> i64 {
    match when.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Builds the profile message for `sites`, whose values are `numbers`.
pub(crate) fn build(sites: &[SiteCopy], numbers: Numbers, options: Options) -> proto::Profile {
    with_build_stack(|| build_here(sites, numbers, options))
}

fn build_here(sites: &[SiteCopy], numbers: Numbers, options: Options) -> proto::Profile {
    let resolved = symbolize::for_profile(sites, options.addresses_only);
    let mut b = Builder {
        strings: StringTable::new(),
        functions: HashMap::new(),
        locations: HashMap::new(),
        labels: HashMap::new(),
        series_label_keys: options.series_label_keys.clone(),
        // Miri cannot ask the loader; nothing is recorded under it
        // (`fast.rs`), so no frame needs an object.
        mappings: if cfg!(miri) {
            Vec::new()
        } else {
            mappings::current()
        },
        profile: proto::Profile::default(),
        trimmer: Trimmer::new(resolved),
    };
    b.header(numbers, &options, sites);
    b.profile
        .sample
        .reserve_exact(sites.iter().filter(|s| shows(s)).count());
    for site in sites {
        b.add_site(site);
    }
    b.add_mappings(!options.addresses_only);
    b.profile.string_table = b.strings.strings;
    b.profile
}

/// Whether a profile has a sample for `site`: not when nothing happened
/// there (in a delta: nothing in between).
pub(crate) fn shows(site: &SiteCopy) -> bool {
    site.counts.sampled_allocs != 0 || site.counts.sampled_frees != 0
}

/// One address of a stack as a profile shows it: the address and which of
/// its source frames (innermost first; several where calls were inlined)
/// are kept, `lines.0..lines.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Shown {
    pub addr: usize,
    pub lines: (usize, usize),
}

/// Which frames of a stack (leaf first) a profile shows. Both ends go:
///
/// * at the leaf, the allocation machinery (`symbolize::is_machinery`):
///   the source frames before the first of the code that decided to
///   allocate, whole addresses or the lines inlined at the top of one;
/// * at the root, process, thread and test start-up
///   (`symbolize::is_startup_frame`), so that a stack ends at the program's
///   `main`, a thread's own closure or the test function, as Go's end at
///   `main.main`; with it the `{{closure}}` a test or spawn wraps the
///   function in. `HEAPPROF_FULL_STACKS=1` keeps the start-up frames.
///
/// An address with no symbol stops the leaf cut, and the root cut unless
/// the frame it calls is start-up. A stack that is all
/// machinery (an allocation made by the runtime itself) keeps everything
/// above the leaf cut's limit, and one that is all start-up, or has no
/// frame but the standard library's between the cuts and never reached the
/// program's code (what `std` allocates as it starts the process or a
/// thread), keeps its start-up frames, which say where it was made.
pub(crate) struct Trimmer {
    /// The names of the addresses of the stacks trimmed.
    resolved: HashMap<usize, Symbols>,
    /// Each address's source frames as trimming reads them, found at the
    /// first stack the address is in: the stacks of one profile share
    /// most of their addresses (start-up above all), and reading a name
    /// and path costs far more than a lookup here.
    kinds: HashMap<usize, Box<[Kind]>>,
    /// Every source frame of the stack being trimmed, leaf first.
    lines: Vec<Line>,
    /// What [`Trimmer::trim`] returns.
    shown: Vec<Shown>,
}

/// What trimming reads of a named source frame.
#[derive(Clone, Copy)]
struct Kind {
    machinery: bool,
    startup: bool,
    standard_library: bool,
}

impl Kind {
    /// The kinds of the source frames at `addr`, innermost first; none for
    /// an address without a name.
    fn of(addr: usize, symbols: Option<&Symbols>) -> Box<[Kind]> {
        let Some(symbols) = symbols else {
            return Box::default();
        };
        symbols
            .iter()
            .map(|symbol| Kind {
                // heapprof's own frames are where a stack was cut or not
                // unwound: shown, whatever their name says.
                machinery: !OWN_FRAMES.contains(&addr) && symbolize::is_machinery_frame(symbol),
                startup: symbolize::is_startup_frame(symbol),
                standard_library: symbolize::is_standard_library_frame(symbol),
            })
            .collect()
    }
}

/// One source frame of a stack: the index of its address in the stack,
/// its index among the address's source frames, and its kind (none for an
/// address without a name, which stands as one line).
#[derive(Clone, Copy)]
struct Line {
    frame: usize,
    line: usize,
    kind: Option<Kind>,
}

impl Trimmer {
    /// A trimmer of stacks whose addresses' names are `resolved`.
    pub(crate) fn new(resolved: HashMap<usize, Symbols>) -> Trimmer {
        Trimmer {
            resolved,
            kinds: HashMap::new(),
            lines: Vec::new(),
            shown: Vec::new(),
        }
    }

    /// The names the trimmer was made with.
    pub(crate) fn resolved(&self) -> &HashMap<usize, Symbols> {
        &self.resolved
    }

    /// What the last call to [`Trimmer::trim`] returned.
    fn last(&self) -> &[Shown] {
        &self.shown
    }

    /// The frames of `frames` a profile shows. Reuses the trimmer's
    /// buffers: a profile trims every site's stack, tens of thousands of
    /// them, and a stack allocates only for addresses no stack before it
    /// had, once the buffers have grown.
    pub(crate) fn trim(&mut self, frames: &[usize]) -> &[Shown] {
        let lines = &mut self.lines;
        lines.clear();
        for (frame, addr) in frames.iter().enumerate() {
            let kinds = self
                .kinds
                .entry(*addr)
                .or_insert_with(|| Kind::of(*addr, self.resolved.get(addr)));
            if kinds.is_empty() {
                lines.push(Line {
                    frame,
                    line: 0,
                    kind: None,
                });
            }
            lines.extend(kinds.iter().enumerate().map(|(line, &kind)| Line {
                frame,
                line,
                kind: Some(kind),
            }));
        }
        let lines = &*lines;
        let machinery = |k: usize| lines[k].kind.is_some_and(|kind| kind.machinery);
        let start = (0..lines.len()).find(|&k| !machinery(k)).unwrap_or(0);
        // A stack cut at its deepest ends in `CUT`, which stays, since the
        // callers beyond it are not known; the start-up frames next to it
        // (a deep worker thread's runtime) are trimmed as a whole stack's
        // root is.
        let cut = frames.last() == Some(&CUT) && lines.len() > start;
        let root = lines.len() - usize::from(cut);
        let mut end = root;
        if !crate::config::get().full_stacks {
            // An address with no symbol is start-up when the code it calls
            // is: the C library's process and thread entry (`start_thread`,
            // `__libc_start_call_main`) have no symbol where its debug files
            // are not installed.
            let startup = |k: usize| {
                (start..=k)
                    .rev()
                    .find_map(|j| lines[j].kind)
                    .is_some_and(|kind| kind.startup)
            };
            if let Some(last) = (start..root).rev().find(|&k| !startup(k)) {
                end = last + 1;
                // A test's or a spawn's `f::{{closure}}` around `f` itself.
                let name = |k: usize| {
                    let Line { frame, line, kind } = lines[k];
                    kind.map(|_| &self.resolved[&frames[frame]][line].name[..])
                };
                if end >= start + 2
                    && let (Some(outer), Some(inner)) = (name(end - 1), name(end - 2))
                    && outer.strip_suffix("::{{closure}}") == Some(inner)
                {
                    end -= 1;
                }
            }
            // `__rust_begin_short_backtrace` is where std hands over to the
            // program's `main`, thread closure or test: a stack that passed
            // it is the program's, though its own frame may be gone (a tail
            // call), and loses its start-up frames.
            let standard_library = |k: usize| lines[k].kind.is_some_and(|k| k.standard_library);
            let handed_over = |k: usize| {
                let Line { frame, line, kind } = lines[k];
                kind.is_some()
                    && self.resolved[&frames[frame]][line]
                        .name
                        .contains("__rust_begin_short_backtrace")
            };
            if end > start && (start..end).all(standard_library) && !(end..root).any(handed_over) {
                end = root;
            }
        }
        let shown = &mut self.shown;
        shown.clear();
        for &Line { frame, line, kind } in lines[start..end].iter().chain(&lines[root..]) {
            let width = usize::from(kind.is_some());
            match shown.last_mut() {
                Some(last) if last.addr == frames[frame] && last.lines.1 == line => {
                    last.lines.1 = line + width
                }
                _ => shown.push(Shown {
                    addr: frames[frame],
                    lines: (line, line + width),
                }),
            }
        }
        shown
    }
}

/// The profile's strings, each stored once; index 0 is "" as the format
/// requires.
struct StringTable {
    index: HashMap<String, i64>,
    strings: Vec<String>,
}

impl StringTable {
    fn new() -> Self {
        StringTable {
            index: HashMap::new(),
            strings: vec![String::new()],
        }
    }

    fn get(&mut self, s: &str) -> i64 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

struct Builder {
    strings: StringTable,
    /// (name, system name, file) → function id.
    functions: HashMap<(String, String, String), u64>,
    /// (address, innermost lines trimmed) → location id.
    locations: HashMap<Shown, u64>,
    /// A label set's labels as samples carry them.
    labels: HashMap<LabelSetId, Vec<proto::Label>>,
    /// [`Options::series_label_keys`].
    series_label_keys: Option<Vec<String>>,
    mappings: Vec<Mapping>,
    profile: proto::Profile,
    /// Trims the sites' stacks; holds the names of their addresses.
    trimmer: Trimmer,
}

/// The sampled blocks `sites` hold live (a delta's: the change in them).
pub(crate) fn live_sampled_blocks(sites: &[SiteCopy]) -> i64 {
    sites
        .iter()
        .map(|s| s.counts.sampled_allocs as i64 - s.counts.sampled_frees as i64)
        .sum()
}

impl Builder {
    fn header(&mut self, numbers: Numbers, options: &Options, sites: &[SiteCopy]) {
        let mut value_type = |t: &str, u: &str| proto::ValueType {
            r#type: self.strings.get(t),
            unit: self.strings.get(u),
        };
        self.profile.sample_type = vec![
            value_type("alloc_objects", "count"),
            value_type("alloc_space", "bytes"),
            value_type("inuse_objects", "count"),
            value_type("inuse_space", "bytes"),
        ];
        self.profile.period_type = Some(value_type("space", "bytes"));
        self.profile.period = i64::try_from(numbers.rate).unwrap_or(i64::MAX);
        // Miri's isolation refuses the wall clock: under it a profile (of
        // nothing recorded, `fast.rs`) has no time.
        self.profile.time_nanos = match options.time {
            Some(t) => unix_nanos(t),
            None if cfg!(miri) => 0,
            None => unix_nanos(std::time::SystemTime::now()),
        };
        if let Some(d) = options.duration {
            self.profile.duration_nanos = d.as_nanos().min(i64::MAX as u128) as i64;
        }
        self.profile.doc_url = self.strings.get(DOC_URL);
        if let Some(t) = options.default_sample_type {
            self.profile.default_sample_type = self.strings.get(t);
        }
        // `pprof -comments` shows these: how to read the numbers, and what
        // the profiler itself costs.
        // The profile's own: a peak profile's at the peak, a delta's in
        // between.
        let live_sampled = live_sampled_blocks(sites);
        let live_sampled = if options.change {
            format!("{live_sampled:+} live sampled blocks in between")
        } else {
            format!("{live_sampled} live sampled blocks")
        };
        let mut comments = vec![
            format!(
                "heapprof {}: values are {}",
                env!("CARGO_PKG_VERSION"),
                numbers.describe()
            ),
            format!(
                "heapprof: stacks unwound with {}",
                crate::record::stack::unwinder_name()
            ),
            format!(
                "heapprof: {live_sampled}; profiler tables use {} bytes; symbols kept use {} bytes",
                profiler_table_bytes(),
                symbolize::memory_bytes()
            ),
        ];
        if labels::table::program_sets_full() {
            comments.push(label_table_full_note());
        }
        if labels::thread_label_dropped() {
            comments.push(thread_label_dropped_note());
        }
        if crate::record::sites::overflowed() {
            comments.push(site_table_full_note());
        }
        if !options.addresses_only && symbolize::split_debug_unread() {
            comments.push(symbolize::SPLIT_UNREAD_NOTE.to_owned());
        }
        for c in options.comments.iter().chain(&comments) {
            let i = self.strings.get(c);
            self.profile.comment.push(i);
        }
    }

    fn add_site(&mut self, site: &SiteCopy) {
        if !shows(site) {
            return;
        }
        let c = &site.counts;
        let location_id = if site.overflow {
            vec![self.overflow_location()]
        } else {
            self.trimmed_locations(&site.frames)
        };
        // Frees cancel allocations exactly up to float rounding; deltas may
        // be negative (more freed than allocated in between).
        let round = |x: f64| x.round() as i64;
        // No `bytes` label, unlike Go's: Go keys its buckets by stack and
        // block size, so its label is the size of every block the sample
        // stands for; a site here mixes sizes, and any one number (the
        // mean over freed and live blocks alike) would misread in `-tags`.
        let label = self.labels(site.labels);
        self.profile.sample.push(proto::Sample {
            location_id,
            value: vec![
                round(c.alloc_objects_est),
                round(c.alloc_bytes_est),
                round(c.alloc_objects_est - c.free_objects_est),
                round(c.alloc_bytes_est - c.free_bytes_est),
            ],
            label,
        });
    }

    /// The string labels of a sample of label set `set`.
    fn labels(&mut self, set: LabelSetId) -> Vec<proto::Label> {
        if let Some(labels) = self.labels.get(&set) {
            return labels.clone();
        }
        let mut pairs: Vec<(std::borrow::Cow<'_, str>, &str)> = labels::table::get(set)
            .iter()
            .map(|&(key, value)| (key.into(), value))
            .collect();
        if let Some(taken) = &self.series_label_keys {
            let mut kept: Vec<(std::borrow::Cow<'_, str>, &str)> = Vec::new();
            for (key, value) in pairs {
                let Some(key) = series_key(&key) else {
                    continue;
                };
                if !taken.contains(&key) && !kept.iter().any(|(k, _)| *k == key) {
                    kept.push((key.into(), value));
                }
            }
            pairs = kept;
        }
        let labels: Vec<proto::Label> = pairs
            .iter()
            .map(|(key, value)| proto::Label {
                key: self.strings.get(key),
                str: self.strings.get(value),
                ..Default::default()
            })
            .collect();
        self.labels.insert(set, labels.clone());
        labels
    }

    /// The site's locations, leaf first, allocation machinery trimmed (see
    /// [`Trimmer`]).
    fn trimmed_locations(&mut self, frames: &[usize]) -> Vec<u64> {
        let n = self.trimmer.trim(frames).len();
        (0..n)
            .map(|k| {
                let shown = self.trimmer.last()[k];
                self.location(shown)
            })
            .collect()
    }

    fn location(&mut self, shown: Shown) -> u64 {
        if let Some(&id) = self.locations.get(&shown) {
            return id;
        }
        let addr = shown.addr;
        let id = self.profile.location.len() as u64 + 1;
        let frames = self
            .trimmer
            .resolved()
            .get(&addr)
            .cloned()
            .unwrap_or_default();
        let (from, to) = shown.lines;
        let line = frames
            .get(from..to.min(frames.len()))
            .unwrap_or(&[])
            .iter()
            .map(|f| proto::Line {
                function_id: self.function(&f.name, &f.system_name, &f.file),
                line: f.line as i64,
                column: 0,
            })
            .collect();
        // The call instruction, not the return address.
        let address = addr.saturating_sub(1) as u64;
        self.profile.location.push(proto::Location {
            id,
            mapping_id: self.mapping_id(address),
            address,
            line,
            is_folded: false,
        });
        self.locations.insert(shown, id);
        id
    }

    fn overflow_location(&mut self) -> u64 {
        let key = Shown {
            addr: 0,
            lines: (0, 0),
        };
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let function_id = self.function(OVERFLOW_FUNCTION, OVERFLOW_FUNCTION, "");
        self.profile.location.push(proto::Location {
            id,
            line: vec![proto::Line {
                function_id,
                ..Default::default()
            }],
            ..Default::default()
        });
        self.locations.insert(key, id);
        id
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (name.to_owned(), system_name.to_owned(), file.to_owned());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let function = proto::Function {
            id,
            name: self.strings.get(name),
            system_name: self.strings.get(system_name),
            filename: self.strings.get(file),
            // The declaration line is not in what `backtrace` resolves;
            // reading it would mean walking DWARF ourselves. pprof uses it
            // only to start `-list` windows (which then start a few lines
            // above the first line with a value), and merges functions by
            // it, so 0 everywhere is better than a guess that varies.
            start_line: 0,
        };
        self.profile.function.push(function);
        self.functions.insert(key, id);
        id
    }

    fn mapping_id(&self, address: u64) -> u64 {
        self.mappings
            .iter()
            .position(|m| m.start <= address && address < m.limit)
            .map_or(0, |i| i as u64 + 1)
    }

    /// Adds the mappings, with flags that say truthfully what was resolved
    /// for the locations in each: a flag is set only if every location in
    /// the mapping has it, so pprof symbolizes again where we could not.
    /// `names_expected`: false for a profile written with addresses only.
    fn add_mappings(&mut self, names_expected: bool) {
        let mut flags = vec![[true; 4]; self.mappings.len()];
        let mut used = vec![false; self.mappings.len()];
        let mut unnamed_in_main = 0;
        for loc in &self.profile.location {
            let Some(i) = (loc.mapping_id as usize).checked_sub(1) else {
                continue;
            };
            used[i] = true;
            let frames = self
                .trimmer
                .resolved()
                .get(&(loc.address as usize + 1))
                .cloned()
                .unwrap_or_default();
            let f = &mut flags[i];
            if i == 0 && frames.is_empty() {
                unnamed_in_main += 1;
            }
            f[0] &= !frames.is_empty() && frames.iter().all(|fr| !fr.name.is_empty());
            f[1] &= !frames.is_empty() && frames.iter().all(|fr| !fr.file.is_empty());
            f[2] &= !frames.is_empty() && frames.iter().all(|fr| fr.line != 0);
            // Inlined frames come from the same debug info as line numbers.
            f[3] = f[2];
        }
        for (i, m) in self.mappings.iter().enumerate() {
            let f = if used[i] { flags[i] } else { [false; 4] };
            self.profile.mapping.push(proto::Mapping {
                id: i as u64 + 1,
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.file_offset,
                filename: self.strings.get(&m.path),
                build_id: self.strings.get(&m.build_id),
                has_functions: f[0],
                has_filenames: f[1],
                has_line_numbers: f[2],
                has_inline_frames: f[3],
            });
        }
        if names_expected && unnamed_in_main > 0 {
            let note = unnamed_note(unnamed_in_main);
            let i = self.strings.get(&note);
            self.profile.comment.push(i);
        }
    }
}

/// What a profile says when `n` locations in the executable have no names.
pub(crate) fn unnamed_note(n: usize) -> String {
    format!(
        "heapprof: {n} locations in the executable have no names ({}); `go tool pprof \
         <executable> <profile>` names them from a copy with debug info (`debug = 1` or more: \
         it does not read symbol tables)",
        symbolize::no_names_hint()
    )
}

#[cfg(test)]
mod tests;
