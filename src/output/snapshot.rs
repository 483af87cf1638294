//! The profile as Rust data, for tests and in-process views: exact
//! counters ([`Stats`]), symbolized sites ([`Snapshot`]), differences
//! between two moments, a `pprof -top`-like table, and a flame graph.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io;

use crate::record::blocks::LiveBlock;
use crate::record::{self, sites};
use crate::{
    output::pprof, output::proto, output::symbolize, sample, support::reentry, support::registry,
};

/// Exact counts of everything that went through the allocator since the
/// program started, over all threads (not estimates: every allocation is
/// counted, whatever the sample rate).
///
/// `allocated_bytes - freed_bytes` is the live heap as the program asked
/// for it; the process's resident size is larger (allocator overhead and
/// fragmentation, memory not from the heap, heapprof's own memory), and
/// the sampled profile's `inuse_space` is an estimate of this same number.
///
/// heapprof's own allocations (its tables, stack capture, symbolization,
/// encoding, the memory of a [`Snapshot`]) go through the same allocator
/// but are not counted in the first four fields, as Go's `MemStats`
/// leaves its profiler's buckets out of the heap: they are in the
/// `profiler_*` fields. What the program's writer does with a profile
/// (a `Vec` growing to hold it, an HTTP body handed back by
/// `http::handle`) is the program's, counted here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks allocated (a `realloc` counts as one allocation and one free).
    pub allocations: u64,
    /// Blocks freed.
    pub deallocations: u64,
    /// Bytes requested by all allocations.
    pub allocated_bytes: u64,
    /// Bytes released by all frees.
    pub freed_bytes: u64,
    /// Memory heapprof holds for itself: the site table, the label sets
    /// (and the labels [`Labeled`](crate::Labeled) futures keep), the set
    /// of live sampled blocks and the symbol cache, and spare
    /// sampled blocks (freed
    /// by the program and counted as freed above, but kept by heapprof for
    /// reuse).
    pub profiler_bytes: u64,
    /// Allocations heapprof made for itself, not counted in `allocations`.
    pub profiler_allocations: u64,
    /// Bytes of those allocations, not counted in `allocated_bytes`.
    pub profiler_allocated_bytes: u64,
}

impl Stats {
    /// Bytes allocated and not yet freed.
    pub fn live_bytes(&self) -> u64 {
        self.allocated_bytes.saturating_sub(self.freed_bytes)
    }

    /// Blocks allocated and not yet freed.
    pub fn live_blocks(&self) -> u64 {
        self.allocations.saturating_sub(self.deallocations)
    }
}

/// The exact counters now. Cheap: sums one small record per running thread.
///
/// The threads are read one after another, not at one instant: every
/// thread's frees first, then every thread's allocations. So a block the
/// program frees is never counted freed and not allocated, and
/// [`Stats::live_bytes`] is at least what was live at one moment during
/// the call; while other threads allocate and free, it is more by what
/// they allocated during the call and freed before it returned.
///
/// If heapprof is not the program's `#[global_allocator]`, no allocation
/// passes through it and every counter is zero; nothing here says so (a
/// zero is also a valid count), while [`write_profile`](crate::write_profile)
/// returns an error in that case.
pub fn stats() -> Stats {
    let _inside = reentry::Inside::enter();
    let program = registry::totals();
    let own = registry::own_totals();
    Stats {
        allocations: program.allocations,
        deallocations: program.deallocations,
        allocated_bytes: program.allocated_bytes,
        freed_bytes: program.freed_bytes,
        profiler_bytes: crate::output::pprof::profiler_bytes() as u64,
        profiler_allocations: own.allocations,
        profiler_allocated_bytes: own.allocated_bytes,
    }
}

/// One source-level frame of a site's stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, e.g. `myapp::cache::Cache::insert`.
    pub function: String,
    /// Source file, if debug info has it.
    pub file: String,
    /// Line, 0 if unknown.
    pub line: u32,
}

impl Frame {
    /// Whether the frame is `short.function` as debug info without paths
    /// names it: a name with no path, perhaps with generic arguments
    /// (`parse<u8>`), and a source file, which the debug info gave, not of
    /// a crate other than `short.krate` as far as the file's path tells
    /// ([`source_crate`]). A name from a symbol table (a C function's,
    /// such as `main`) has no file and never matches so.
    fn has_short_name(&self, short: &ShortForm) -> bool {
        let base = &self.function[..self.function.find('<').unwrap_or(self.function.len())];
        // A name that starts with `<` has an empty base, never an
        // identifier.
        !self.file.is_empty()
            && base == short.function
            && source_crate(&self.file).is_none_or(|c| same_crate(c, short.krate))
    }
}

/// The crate a source file belongs to, where its path tells for certain:
/// the standard library's (`std` of `/rustc/<hash>/library/std/src/fs.rs`,
/// or of the `rust-src` component's `…/lib/rustlib/src/rust/library/std/…`)
/// and the packages cargo downloads (`regex` of
/// `~/.cargo/registry/src/<index>/regex-1.11.1/src/lib.rs`, its version
/// taken off; `mylib` of `~/.cargo/git/checkouts/mylib-<hash>/<rev>/…`).
/// `None` for every other path: the workspace's own code and path
/// dependencies, whose folders need not be named after their crates
/// (debug info gives absolute paths, so a checkout in `/app` or
/// `/home/runner/work/backend` would name a crate that does not exist).
fn source_crate(file: &str) -> Option<&str> {
    fn first(rest: &str) -> Option<&str> {
        rest.split('/').next().filter(|c| !c.is_empty())
    }
    let after = |marker: &str| file.find(marker).map(|i| &file[i + marker.len()..]);
    if file.starts_with("/rustc/") || file.contains("/lib/rustlib/src/rust/") {
        return first(after("/library/")?);
    }
    if let Some(rest) = after("/.cargo/registry/src/") {
        // Past the index's folder: `<package>-<version>`.
        let package = first(rest.split_once('/')?.1)?;
        return Some(without_version(package));
    }
    let checkout = first(after("/.cargo/git/checkouts/")?)?;
    Some(
        checkout
            .rsplit_once('-')
            .map_or(checkout, |(name, _hash)| name),
    )
}

/// A downloaded package's folder name without its version: `regex` of
/// `regex-1.11.1`, `rand` of `rand-0.9.0-beta.1`, `md-5` of `md-5-0.10.6`.
/// The version starts at the first `-` followed by `<digits>.`.
fn without_version(folder: &str) -> &str {
    folder
        .match_indices('-')
        .map(|(i, _)| i)
        .find(|&i| {
            let rest = &folder[i + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with('.')
        })
        .map_or(folder, |i| &folder[..i])
}

/// Whether a package folder's name and a path's first part name one
/// crate (`-` in a package name is `_` in its crate's).
fn same_crate(folder: &str, krate: &str) -> bool {
    folder.len() == krate.len()
        && folder
            .bytes()
            .zip(krate.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// Whether `function` (a frame's name, or a symbol's) contains `name`, either as written or
/// with both in [`path_form`] (`wanted` is `name`'s).
fn names(function: &str, name: &str, wanted: &str) -> bool {
    function.contains(name) || path_form(function).contains(wanted)
}

/// The last identifier of a function's name, as debug info names the
/// function (`parse` of `my_crate::parse::{{closure}}`, `get` of
/// `my_crate::Cache<T>::get`); empty if it ends in none.
fn last_identifier(name: &str) -> &str {
    let mut rest = name;
    while let Some(outer) = rest.strip_suffix("::{{closure}}") {
        rest = outer;
    }
    let last = rest.rsplit("::").next().unwrap_or(rest);
    let last = last.split('<').next().unwrap_or(last);
    if last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        last
    } else {
        ""
    }
}

/// A name with a path, as a frame that debug info names without its
/// path is matched by ([`short_form`]).
struct ShortForm<'a> {
    /// The name's first part: its crate.
    krate: &'a str,
    /// The function the name ends in.
    function: &'a str,
}

/// The crate and the function a name with a path ends in (`my_crate` and
/// `build` of `my_crate::Cache::build`): what a frame whose debug info has
/// no paths (`debug = "line-tables-only"` gives an inlined function its
/// short name only) is matched by. `None` for a name without a path, or
/// one that ends in something other than an identifier (a closure, whose
/// short name, `{{closure}}`, says nothing of whose it is).
fn short_form(name: &str) -> Option<ShortForm<'_>> {
    let (path, last) = name.rsplit_once("::")?;
    // `<my_crate::Cache>::get` and `<my_crate::Cache as Default>::default`
    // are of `my_crate` too.
    let krate = path.trim_start_matches('<').split("::").next()?;
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (ident(krate) && ident(last)).then_some(ShortForm {
        krate,
        function: last,
    })
}

/// `name` with a leading inherent impl, `<Type>::`, written `Type::`.
///
/// Symbols mangled in Rust's v0 scheme (`-C symbol-mangling-version=v0`,
/// which `-C instrument-coverage` and so `cargo llvm-cov` turn on) name a
/// method `<my_crate::Cache>::get`, where the legacy scheme, the default
/// on stable Rust, names it `my_crate::Cache::get`; a name matched in this
/// form finds the method in either build. A trait impl (`<T as Trait>::m`)
/// is written alike in both and stays as it is. A generic type's method
/// differs in its parameters (`my_crate::Cache<T>::get` against
/// `<my_crate::Cache<u32>>::get`), so the path up to the type
/// (`my_crate::Cache`) is what finds it in both.
fn path_form(name: &str) -> Cow<'_, str> {
    let Some(inner) = name.strip_prefix('<') else {
        return Cow::Borrowed(name);
    };
    // The `>` that closes the leading `<`; a `->` inside (a function
    // pointer type) closes nothing.
    let mut depth = 1usize;
    let mut prev = '<';
    let mut close = None;
    for (i, c) in inner.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if prev != '-' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            ' ' if depth == 1 && inner[i..].starts_with(" as ") => return Cow::Borrowed(name),
            _ => {}
        }
        prev = c;
    }
    match close {
        Some(i) if inner[i + 1..].starts_with("::") => {
            Cow::Owned(format!("{}{}", &inner[..i], &inner[i + 1..]))
        }
        _ => Cow::Borrowed(name),
    }
}

/// An allocation site: a stack, the labels its allocations were made
/// under, and what was allocated there. Values are estimates (exact at
/// sample rate 1, where every sample was taken at that rate).
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// Leaf first (the function that allocated), inlined frames expanded,
    /// allocation machinery trimmed as in the pprof output.
    pub frames: Vec<Frame>,
    /// The labels ([`with_labels`](crate::with_labels), the `thread`
    /// label), sorted by key; the same stack under other labels is
    /// another site.
    pub labels: Vec<(String, String)>,
    /// Allocations made at this site.
    pub alloc_objects: i64,
    /// Bytes allocated at this site.
    pub alloc_bytes: i64,
    /// Allocations made here still live.
    pub inuse_objects: i64,
    /// Bytes allocated here still live.
    pub inuse_bytes: i64,
}

impl Site {
    /// Whether a frame's function name contains `name` ([`names`]), or a
    /// frame the debug info names without its path is the function `name`
    /// ends in ([`short_form`]).
    fn mentions(&self, name: &str) -> bool {
        let wanted = path_form(name);
        let short = short_form(name);
        self.frames.iter().any(|f| {
            names(&f.function, name, &wanted) || short.as_ref().is_some_and(|s| f.has_short_name(s))
        })
    }

    /// The names of the site's frames that [`Site::mentions`] `name` by.
    fn frames_naming<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s str> {
        let wanted = path_form(name).into_owned();
        let short = short_form(name);
        let name = name.to_owned();
        self.frames
            .iter()
            .filter(move |f| {
                names(&f.function, &name, &wanted)
                    || short.as_ref().is_some_and(|s| f.has_short_name(s))
            })
            .map(|f| f.function.as_str())
    }

    /// Whether the site carries the label `key=value`.
    pub fn has_label(&self, key: &str, value: &str) -> bool {
        self.labels.iter().any(|(k, v)| k == key && v == value)
    }
}

/// The heap profile at one moment (or the difference between two), as
/// Rust data. Take one with [`snapshot`].
///
/// ```no_run
/// let before = heapprof::snapshot();
/// let cache = my_crate::build_cache();
/// let grown = heapprof::snapshot().delta(&before);
/// println!("{grown}"); // a pprof -top-like table
/// grown.assert_inuse_at_most("my_crate::build_cache", 10 << 20);
/// # mod my_crate { pub fn build_cache() {} }
/// ```
///
/// The name is matched as a substring of each frame's function name, and
/// a site counts if any frame on its stack matches: give the path
/// (`"my_crate::build_cache"`), not the bare name. The calling test is on
/// the stack of everything it allocates, so `"leaky"` would also match a
/// test named `leaky_fails_assertion` and count all it allocated. A
/// method is found as `"my_crate::Cache::get"` also in a build whose
/// symbols name it `<my_crate::Cache>::get` (v0 mangling, which nightly
/// and coverage builds use), and the other way round; a generic type's
/// by the path up to the type (`"my_crate::Cache"`). In a build whose
/// debug info has no paths (`debug = "line-tables-only"`), a function
/// inlined into its caller is known only by its short name (`build`): a
/// frame so named counts for every name with a path that ends in
/// `::build`, unless its source file is of another crate in the standard
/// library or among the packages cargo downloads (crates.io, git); an
/// inlined `build` of another workspace member or path dependency counts
/// too.
pub struct Snapshot {
    raw: Vec<sites::SiteCopy>,
    rate: usize,
    /// Whether this is a [`Snapshot::delta`]: its live bytes are changes,
    /// which frees of older blocks can make negative.
    delta: bool,
    sites: Vec<Site>,
    profile: proto::Profile,
    /// For a snapshot of the live heap, its live sampled blocks, by
    /// origin: what a later snapshot's delta tells new and grown blocks
    /// by ([`Snapshot::delta`]); `None` if they could not be listed
    /// ([`live_sites_and_blocks`]).
    blocks: Option<Vec<LiveBlock>>,
    /// For a delta of two snapshots of the live heap, each site's (as in
    /// `sites`) bytes in blocks allocated in between or grown since and
    /// live at the end ([`gains`]).
    gains: Option<Vec<i64>>,
    /// The bytes of samples dropped for want of stack
    /// (`record::dropped_bytes`): by the time of a snapshot of the live
    /// heap, or in between for a delta; 0 for other sources.
    dropped: u64,
    /// When a snapshot of the live heap was taken, in the order of
    /// [`snapshot`] calls (a delta keeps its later snapshot's); `None` for
    /// other sources.
    taken: Option<u64>,
    sampling: Sampling,
}

/// Whether sampling ran through a snapshot's time: allocations made while
/// it was off are in no profile, so a snapshot that spans such a time
/// cannot say that a function holds little ([`Sampling::was_off`]).
#[derive(Clone, Copy, Debug)]
struct Sampling {
    /// `sample::times_turned_off` before the sites were read and after
    /// (a delta: its earlier snapshot's first, its later one's second).
    turned_off: (u64, u64),
    /// Whether the rate was 0 before the sites were read or after (a
    /// delta: at either snapshot).
    off_at_ends: bool,
    /// Whether a sample recorded by the time the sites were read stands
    /// for more than its block (`sample::estimated`; a delta: by its later
    /// snapshot's).
    estimated: bool,
    /// `sample::times_set_coarse` before and after, as `turned_off`.
    set_coarse: (u64, u64),
    /// Whether the rate was above 1 before the sites were read or after
    /// (a delta: at either snapshot).
    coarse_at_ends: bool,
}

impl Sampling {
    /// Reads the counts, then the rate, before a snapshot's sites are read.
    fn before() -> ((u64, u64), usize) {
        let counts = (sample::times_turned_off(), sample::times_set_coarse());
        (counts, sample::rate())
    }

    /// The snapshot's sampling, with the rate and counts read again after
    /// its sites: a change of any while they were read is seen.
    fn after(
        ((turned_off, set_coarse), rate_before): ((u64, u64), usize),
        rate: usize,
    ) -> Sampling {
        Sampling {
            turned_off: (turned_off, sample::times_turned_off()),
            off_at_ends: rate_before == 0 || rate == 0,
            estimated: sample::estimated(),
            set_coarse: (set_coarse, sample::times_set_coarse()),
            coarse_at_ends: rate_before > 1 || rate > 1,
        }
    }

    /// From `earlier`'s start to `self`'s end (a delta's).
    fn since(self, earlier: Sampling) -> Sampling {
        Sampling {
            turned_off: (earlier.turned_off.0, self.turned_off.1),
            off_at_ends: earlier.off_at_ends || self.off_at_ends,
            estimated: earlier.estimated || self.estimated,
            set_coarse: (earlier.set_coarse.0, self.set_coarse.1),
            coarse_at_ends: earlier.coarse_at_ends || self.coarse_at_ends,
        }
    }

    /// How a snapshot at `rate` describes its values: one that speaks for
    /// a time the rate was above 1 (a delta: at or between its ends; the
    /// live heap: ever before) may miss blocks no sample recorded, though
    /// each sample it has is exact, so it is not called exact.
    fn numbers(self, rate: usize, delta: bool) -> sample::Numbers {
        sample::Numbers {
            rate,
            estimated: self.estimated || self.was_coarse(delta),
        }
    }

    /// Whether some allocation the snapshot speaks for may have been made
    /// at a rate above 1, where a block may go unsampled: as
    /// [`Sampling::was_off`], for a rate above 1.
    fn was_coarse(self, delta: bool) -> bool {
        let (before, after) = self.set_coarse;
        self.coarse_at_ends || if delta { before != after } else { after > 0 }
    }

    /// Whether some allocation the snapshot speaks for may have been made
    /// while sampling was off: for a delta, at either end or in between;
    /// for the live heap, ever before, since a block allocated then and
    /// still live is in no profile.
    fn was_off(self, delta: bool) -> bool {
        let (before, after) = self.turned_off;
        self.off_at_ends || if delta { before != after } else { after > 0 }
    }
}

/// Orders the [`snapshot`] calls ([`Snapshot::taken`]).
static SNAPSHOTS_TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A snapshot's memory is heapprof's, allocated and freed inside the
/// profiler, so that [`stats()`] leaves it out of the program's counts.
impl Clone for Snapshot {
    fn clone(&self) -> Self {
        let _inside = reentry::Inside::enter();
        Snapshot {
            raw: self.raw.clone(),
            rate: self.rate,
            delta: self.delta,
            sites: self.sites.clone(),
            profile: self.profile.clone(),
            blocks: self.blocks.clone(),
            gains: self.gains.clone(),
            dropped: self.dropped,
            taken: self.taken,
            sampling: self.sampling,
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _inside = reentry::Inside::enter();
        drop((
            std::mem::take(&mut self.raw),
            std::mem::take(&mut self.sites),
            std::mem::take(&mut self.profile),
            self.blocks.take(),
            self.gains.take(),
        ));
    }
}

/// Takes a [`Snapshot`] of the heap profile now, symbolized.
///
/// If heapprof is not the program's `#[global_allocator]`, nothing is
/// recorded and the snapshot is empty: no sites, every total zero. Its
/// query methods then return zero for any code, which would let a memory
/// test pass without measuring anything, so
/// [`Snapshot::assert_inuse_at_most`] panics instead.
///
/// The snapshot also lists the live sampled blocks (24 bytes each; at
/// sample rate 1 every live block of the program), by which the
/// [`delta`](Snapshot::delta) of a later snapshot over it tells the
/// blocks allocated in between from older ones.
pub fn snapshot() -> Snapshot {
    snapshot_of(super::Source::Live)
}

/// A [`Snapshot`] of `source`'s sites (empty if it has none).
pub(crate) fn snapshot_of(source: super::Source) -> Snapshot {
    let _inside = reentry::Inside::enter();
    let sampling = Sampling::before();
    if matches!(source, super::Source::Live) {
        let taken = SNAPSHOTS_TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dropped = record::dropped_bytes();
        let (sites, blocks) = live_sites_and_blocks();
        let rate = sample::rate();
        let mut snapshot = Snapshot::from_raw(sites, rate, false, Sampling::after(sampling, rate));
        snapshot.blocks = blocks;
        snapshot.dropped = dropped;
        snapshot.taken = Some(taken);
        return snapshot;
    }
    let delta = matches!(source, super::Source::Delta { .. });
    let sites = super::collect(source).map_or_else(Vec::new, |c| c.sites);
    let rate = sample::rate();
    Snapshot::from_raw(sites, rate, delta, Sampling::after(sampling, rate))
}

/// Copies of the live table taken at most, each with its list of blocks,
/// while sites retire: with retirements held ([`sites::RetirementsHeld`]),
/// only one that had begun before can end during a copy, so a second copy
/// almost always finds none.
const LIVE_TRIES: usize = 4;

/// The live table's sites and its live sampled blocks by origin, taken
/// while no site retired, so that each block's site id names the stack in
/// the copy; the blocks are `None` after [`LIVE_TRIES`] copies during which
/// sites retired, or with no memory for them.
fn live_sites_and_blocks() -> (Vec<sites::SiteCopy>, Option<Vec<LiveBlock>>) {
    let _held = sites::RetirementsHeld::take();
    let mut tries = 0;
    loop {
        tries += 1;
        let retired = sites::retirements();
        let copy = super::collect(super::Source::Live).map_or_else(Vec::new, |c| c.sites);
        // Listed after the sites were copied, so that each block's site is
        // in the copy unless it was sampled meanwhile (on another thread,
        // at a site new since).
        let blocks = record::blocks::live();
        if sites::retirements() == retired {
            let by_origin = blocks.map(|mut blocks| {
                blocks.sort_unstable_by_key(|b| b.origin);
                blocks
            });
            return (copy, by_origin);
        }
        if tries == LIVE_TRIES {
            return (copy, None);
        }
    }
}

/// Each site's gain in the delta of `later` over `earlier`, two snapshots
/// of the live heap, as estimated bytes: for each block live in `later`
/// at that site, its bytes less those its origin had in `earlier` (none
/// for a block allocated since; a block grown by `realloc` since gains
/// the growth), never below zero. So frees of blocks that were live in
/// `earlier`, made by any thread, take nothing off what was added, even
/// at the same stack. `sites` are `later`'s copies, as the delta has them
/// (`sites::delta` keeps their order); a block whose site is not among
/// them was sampled while `later` was taken, and is left out.
fn gains(sites: &[sites::SiteCopy], later: &[LiveBlock], earlier: &[LiveBlock]) -> Vec<f64> {
    let index: HashMap<u32, usize> = sites.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut gains = vec![0.0; sites.len()];
    for block in later {
        let Some(&i) = index.get(&block.site) else {
            continue;
        };
        let had = earlier
            .binary_search_by_key(&block.origin, |b| b.origin)
            .map_or(0.0, |at| earlier[at].bytes);
        gains[i] += (block.bytes - had).max(0.0);
    }
    gains
}

/// One row of [`Snapshot::top`]: a function and the live bytes it
/// allocated itself (flat) and through its callees (cum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionBytes {
    /// Demangled function name.
    pub function: String,
    /// Live bytes allocated by this function itself (it is the leaf).
    pub flat: i64,
    /// Live bytes allocated by this function or anything it called.
    pub cum: i64,
}

impl Snapshot {
    fn from_raw(
        raw: Vec<sites::SiteCopy>,
        rate: usize,
        delta: bool,
        sampling: Sampling,
    ) -> Snapshot {
        let numbers = sampling.numbers(rate, delta);
        let options = pprof::Options {
            change: delta,
            ..pprof::Options::default()
        };
        let profile = pprof::build(&raw, numbers, options);
        let sites = sites_of(&profile);
        Snapshot {
            raw,
            rate,
            delta,
            sites,
            profile,
            blocks: None,
            gains: None,
            dropped: 0,
            taken: None,
            sampling,
        }
    }

    /// Every site, in no particular order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The sample rate in force when this snapshot was taken.
    pub fn sample_rate(&self) -> usize {
        self.rate
    }

    /// What happened between `earlier` and this snapshot: allocations made
    /// in between, and the change in live memory (negative where more was
    /// freed than allocated). Both snapshots count the whole process, so a
    /// delta taken in one test also sees what other threads did meanwhile;
    /// select by function name to isolate a region of code. Of two
    /// snapshots from [`snapshot`], the delta also knows which live blocks
    /// are new, which [`Snapshot::assert_inuse_at_most`] counts.
    ///
    /// # Panics
    ///
    /// If both are snapshots from [`snapshot`] and `earlier` was taken
    /// after this one (`before.delta(&after)`): the delta would leave out
    /// whatever is only in `earlier`, so a leak would read as nothing.
    #[track_caller]
    pub fn delta(&self, earlier: &Snapshot) -> Snapshot {
        if let (Some(this), Some(that)) = (self.taken, earlier.taken) {
            assert!(
                that <= this,
                "heapprof: `later.delta(&earlier)` was called with the snapshots the other \
                 way round (the argument was taken after this snapshot): write \
                 `after.delta(&before)`"
            );
        }
        let _inside = reentry::Inside::enter();
        let raw = sites::delta(&self.raw, &earlier.raw);
        let gains = match (&self.blocks, &earlier.blocks) {
            (Some(later), Some(before)) => Some(gains(&raw, later, before)),
            _ => None,
        };
        let sampling = self.sampling.since(earlier.sampling);
        let mut delta = Snapshot::from_raw(raw, self.rate, true, sampling);
        delta.taken = self.taken;
        delta.dropped = self.dropped.saturating_sub(earlier.dropped);
        // The profile has a sample for each site it shows, in order: so
        // do `sites`.
        delta.gains = gains.map(|gains| {
            let shown = delta.raw.iter().zip(gains).filter(|(s, _)| pprof::shows(s));
            shown.map(|(_, g)| g.round() as i64).collect()
        });
        delta
    }

    /// The `value`s of the sites through `name`, for the program's query
    /// `query` (said where frames without names may hide some).
    fn sum_where(&self, query: &str, name: &str, value: fn(&Site) -> i64) -> i64 {
        self.say_once_if_names_are_missing(query, name);
        self.sum_through(name, value)
    }

    /// The `value`s of the sites through `name`, nothing said: for the
    /// assertions, which count unnamed frames themselves.
    fn sum_through(&self, name: &str, value: fn(&Site) -> i64) -> i64 {
        self.sites
            .iter()
            .filter(|s| s.mentions(name))
            .map(value)
            .fold(0, i64::saturating_add)
    }

    /// Says on stderr, once, the first time a count by name meets bytes
    /// under frames of the program heapprof could not name (a stripped
    /// executable, a child forked during a lookup): the count leaves them
    /// out, and they may be the function's. The assertions count them
    /// instead ([`Snapshot::assert_inuse_at_most`]).
    fn say_once_if_names_are_missing(&self, query: &str, name: &str) {
        static SAID: crate::config::report::Once = crate::config::report::Once::new();
        if SAID.said() {
            return;
        }
        let unnamed = self.unnamed_program_bytes(name);
        if unnamed > 0 {
            SAID.warn(format_args!(
                "heapprof: Snapshot::{query}({}) leaves out {unnamed} bytes {} under frames of \
                 the program that heapprof could not name, which may be its: {}",
                crate::config::report::Shown::new(name),
                if self.delta {
                    "allocated in between"
                } else {
                    "live"
                },
                symbolize::no_names_hint()
            ));
        }
    }

    /// Live bytes allocated by functions whose name contains `name`, and by
    /// everything they called (pprof's cum column). A substring match: see
    /// the [`Snapshot`] docs for why `name` should include its path. In a
    /// [`delta`](Snapshot::delta), the net change over every stack through
    /// `name`: another thread's frees at one stack offset growth at
    /// another, which [`Snapshot::assert_inuse_at_most`] does not let
    /// happen. Bytes under frames heapprof could not name (a stripped
    /// executable) are left out here and in the other counts by name, and
    /// the first such count says so on stderr; the assertion counts them.
    pub fn inuse_bytes_in(&self, name: &str) -> i64 {
        self.sum_where("inuse_bytes_in", name, |s| s.inuse_bytes)
    }

    /// Live blocks allocated in functions whose name contains `name` (cum).
    pub fn inuse_objects_in(&self, name: &str) -> i64 {
        self.sum_where("inuse_objects_in", name, |s| s.inuse_objects)
    }

    /// Bytes ever allocated in functions whose name contains `name` (cum).
    pub fn alloc_bytes_in(&self, name: &str) -> i64 {
        self.sum_where("alloc_bytes_in", name, |s| s.alloc_bytes)
    }

    /// Blocks ever allocated in functions whose name contains `name` (cum).
    pub fn alloc_objects_in(&self, name: &str) -> i64 {
        self.sum_where("alloc_objects_in", name, |s| s.alloc_objects)
    }

    /// Live bytes allocated under the label `key=value` (all sites that
    /// carry it, as `go tool pprof -tagfocus key=value` counts them, but
    /// matching the value exactly), whichever thread or task freed the
    /// rest.
    pub fn inuse_bytes_with_label(&self, key: &str, value: &str) -> i64 {
        self.sum_labelled(key, value, |s| s.inuse_bytes)
    }

    /// Bytes ever allocated under the label `key=value` (see
    /// [`inuse_bytes_with_label`](Snapshot::inuse_bytes_with_label)).
    pub fn alloc_bytes_with_label(&self, key: &str, value: &str) -> i64 {
        self.sum_labelled(key, value, |s| s.alloc_bytes)
    }

    fn sum_labelled(&self, key: &str, value: &str, of: fn(&Site) -> i64) -> i64 {
        self.sites
            .iter()
            .filter(|s| s.has_label(key, value))
            .map(of)
            .fold(0, i64::saturating_add)
    }

    /// Live bytes in all sites.
    pub fn total_inuse_bytes(&self) -> i64 {
        self.sites
            .iter()
            .map(|s| s.inuse_bytes)
            .fold(0, i64::saturating_add)
    }

    /// The `n` functions holding the most live memory themselves (flat), as
    /// in `pprof -top`; in a [`delta`](Snapshot::delta), those whose own
    /// bytes changed the most, either way (by size, as `pprof -top -base`
    /// orders them; ties by cum, then name).
    pub fn top(&self, n: usize) -> Vec<FunctionBytes> {
        let mut flat: HashMap<&str, i64> = HashMap::new();
        let mut cum: HashMap<&str, i64> = HashMap::new();
        for site in &self.sites {
            if let Some(leaf) = site.frames.first() {
                let flat = flat.entry(&leaf.function).or_default();
                *flat = flat.saturating_add(site.inuse_bytes);
            }
            let mut seen: Vec<&str> = site.frames.iter().map(|f| f.function.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            for f in seen {
                let cum = cum.entry(f).or_default();
                *cum = cum.saturating_add(site.inuse_bytes);
            }
        }
        let mut rows: Vec<FunctionBytes> = cum
            .iter()
            .map(|(f, &c)| FunctionBytes {
                function: f.to_string(),
                flat: flat.get(f).copied().unwrap_or(0),
                cum: c,
            })
            .collect();
        let size = |r: &FunctionBytes| (r.flat.unsigned_abs(), r.cum.unsigned_abs());
        rows.sort_by(|a, b| {
            size(b)
                .cmp(&size(a))
                .then_with(|| a.function.cmp(&b.function))
        });
        rows.truncate(n);
        rows
    }

    /// Panics, with the top of the profile in the message, if functions
    /// whose name contains `function` hold more than `max_bytes` live bytes
    /// (cum; a substring match, so give the path, as in
    /// `"my_crate::parse"`). At sample rate 1 the numbers are exact
    /// (where no sample was taken at another rate before): see the crate
    /// docs' testing section. Live bytes heapprof holds under no stack (its
    /// overflow and not-unwound entries, see the README's "Reading a
    /// profile"), from any thread, count against `function` too, so that
    /// the assertion never passes for want of a stack: in a
    /// [`delta`](Snapshot::delta), those allocated into them in between
    /// and still live (all allocated into them in between where the
    /// snapshots could not list their live blocks), since frees of older
    /// blocks there (from other threads, say) could hide what the function
    /// added. So do the bytes of samples
    /// heapprof dropped, with too little stack left to record them (a
    /// signal handler on a small alternate stack): all of them, or in a
    /// delta those of samples taken in between. For the same reason, in a
    /// delta of two snapshots what counts is the blocks allocated in
    /// between and still live at the end, through `function`, and the
    /// growth of blocks grown by `realloc` in between: frees of blocks
    /// that were live at the first snapshot take nothing off. Another test
    /// that calls `function`, even from the same stack (a runtime's worker
    /// thread), and frees what it built before does not offset what this
    /// test added; an older block grown in between counts its growth once,
    /// whichever stack grew it (at rate 1; at other rates, where its older
    /// block may not have been sampled, it may count whole, never less),
    /// and a block allocated in between and then grown counts whole at the
    /// stack that grew it (a `realloc` is a new block of the new size).
    /// What other threads allocate through `function` in between and
    /// still hold at the end counts too. The message's count is of those
    /// blocks, split by the threads they were allocated on when more than
    /// one has some (the `thread` label: under libtest, a test's name, cut
    /// to the system's 15 bytes); the table below it shows net changes.
    ///
    /// Also panics if heapprof is not the program's `#[global_allocator]`,
    /// and if sampling was off (`HEAPPROF_SAMPLE_RATE=0`,
    /// `set_sample_rate(0)`) for some of the time the snapshot speaks for:
    /// for a delta, at either snapshot or in between; for a snapshot of
    /// the live heap, at any time before it (a block allocated then and
    /// still live is in no profile). Allocations made while it was off are
    /// unseen, and the assertion would pass for any code. In a test
    /// binary, the `#[global_allocator]` static goes in the test file (or a
    /// module it includes). It panics too for a `function` that no
    /// sampled stack names, no symbol of the program's loaded objects
    /// matches, and no debug info names (a typo, or a function inlined
    /// into every caller in a build without debug info for it): nothing
    /// could show what it holds; and for one that no sampled stack names
    /// whose code ends in a tail call (an optimized build's jump to the
    /// function it returns the result of, which leaves it off the stacks
    /// of everything that function allocates). One that has a symbol, or
    /// that debug info names, and no sampled stack (it allocated nothing
    /// sampled) passes,
    /// with a line on stderr naming the thread (a test's name); so does
    /// one that may be among the callers of a stack cut at its deepest
    /// kept (64 frames), with the bytes of those stacks.
    /// Bytes under frames of the executable that heapprof could not name
    /// (a stripped binary, or `/proc` not mounted) count against
    /// `function`, as they may be its. Where the rate was above 1 for some
    /// of the time the snapshot speaks for (as for sampling off, above),
    /// the count is an estimate, and a block may have gone unsampled: a
    /// pass then says so on stderr, and a failure's message too.
    #[track_caller]
    pub fn assert_inuse_at_most(&self, function: &str, max_bytes: i64) {
        // The docs above give the deepest stack kept.
        const _: () = assert!(crate::record::stack::MAX_FRAMES == 64);
        if let Err(e) = crate::output::check_installed() {
            panic!("heapprof: cannot check what `{function}` holds: {e}");
        }
        if self.sampling.was_off(self.delta) {
            let when = if self.delta {
                "at or between the two snapshots"
            } else {
                "at some time before this snapshot"
            };
            panic!(
                "heapprof: cannot check what `{function}` holds: sampling was off {when} \
                 (HEAPPROF_SAMPLE_RATE=0 or set_sample_rate(0)), and allocations made then \
                 are in no profile{}",
                if self.delta {
                    ""
                } else {
                    "; a delta of two snapshots taken while sampling is on checks what \
                     happened in between"
                }
            );
        }
        let held = if self.delta {
            self.gained_in(function)
        } else {
            self.sum_through(function, |s| s.inuse_bytes)
        };
        // Bytes heapprof could not put under a stack may be the function's:
        // counted against it (only if `held` does not hold them already),
        // so that the assertion cannot pass for want of a stack. In a
        // delta, what was allocated there in between and is still live
        // where the live blocks tell it ([`gains`]; the entry also takes
        // the counts of sites that retire), else all allocated there.
        let own_entries: i64 = [pprof::OVERFLOW_FUNCTION, symbolize::NOT_UNWOUND_FUNCTION]
            .into_iter()
            .filter(|own| !own.contains(function))
            .map(|own| match (self.delta, &self.gains) {
                (true, Some(_)) => self.gained_in(own),
                (true, None) => self.sum_through(own, |s| s.alloc_bytes).max(0),
                (false, _) => self.sum_through(own, |s| s.inuse_bytes).max(0),
            })
            .fold(0, i64::saturating_add);
        // So may bytes under frames of the program heapprof could not
        // name (a stripped executable, or one it could not open).
        let unnamed = self.unnamed_program_bytes(function);
        // So may the bytes of samples dropped for want of stack.
        let dropped = i64::try_from(self.dropped).unwrap_or(i64::MAX);
        let counted = held
            .saturating_add(own_entries)
            .saturating_add(unnamed)
            .saturating_add(dropped);
        let mut also = String::new();
        // The name is a substring: say which frames it matched, so that a
        // `my_crate::parse` that matched `my_crate::parse_header` shows.
        let mut matched: Vec<&str> = self
            .sites
            .iter()
            .filter(|s| self.counted_bytes(s) > 0)
            .flat_map(|s| s.frames_naming(function))
            .collect();
        matched.sort_unstable();
        matched.dedup();
        if held > 0 && !matched.is_empty() {
            const SHOWN: usize = 4;
            let shown: Vec<String> = matched
                .iter()
                .take(SHOWN)
                .map(|n| crate::config::report::Shown::new(n).to_string())
                .collect();
            let more = matched.len().saturating_sub(SHOWN);
            also += &format!(
                " (matched by frames named {}{})",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        let by_thread = self.held_by_thread(function);
        if !by_thread.is_empty() {
            let shown: Vec<String> = by_thread
                .iter()
                .map(|(thread, bytes)| {
                    format!("{} {bytes}", crate::config::report::Shown::new(thread))
                })
                .collect();
            also += &format!(
                " (by thread: {}; other tests' blocks through it count too: give each test \
                 its own function, take a lock, or use `heapprof::measure`)",
                shown.join(", ")
            );
        }
        if unnamed > 0 {
            also += &format!(
                " (and {unnamed} {} under frames of the program that heapprof could not name, \
                 which may be its: {})",
                if self.delta {
                    "were allocated in between"
                } else {
                    "are"
                },
                symbolize::no_names_hint()
            );
        }
        if dropped > 0 {
            also += &format!(
                " (and {dropped} {} in samples heapprof dropped, with too little stack left to \
                 record them, and may be its)",
                if self.delta {
                    "were allocated in between"
                } else {
                    "were allocated"
                }
            );
        }
        if own_entries > 0 {
            also += &if self.delta {
                format!(
                    " (and {own_entries} were allocated in between under none of the program's \
                     stacks, into heapprof's own entries, and may be its)"
                )
            } else {
                format!(
                    " (and {own_entries} are under none of the program's stacks, in heapprof's \
                     own entries, and may be its)"
                )
            };
        }
        if self.sampling.was_coarse(self.delta) {
            let why = if self.delta {
                format!(
                    "the sample rate was above 1 at or between the two snapshots (the later \
                     one's is {}), so blocks may have gone unsampled and the count is an \
                     estimate; take both snapshots after set_sample_rate(1), with no other \
                     rate set in between, for an exact check",
                    self.rate
                )
            } else {
                format!(
                    "the sample rate was above 1 at some time before this snapshot (its rate \
                     is {}), so blocks allocated then may have gone unsampled and the count \
                     is an estimate; for an exact check, set HEAPPROF_SAMPLE_RATE=1 in the \
                     environment (set_sample_rate(1) comes after the program's first \
                     allocations) or assert on a delta of two snapshots taken after \
                     set_sample_rate(1)",
                    self.rate
                )
            };
            // A live snapshot in a test that set rate 1 itself is such a
            // case every time: said once; a delta's coarse rate, each time.
            static LIVE_SAID: crate::config::report::Once = crate::config::report::Once::new();
            let message = format_args!(
                "heapprof: assert_inuse_at_most: {} passes with {counted} bytes counted, but \
                 {why}",
                crate::config::report::Shown::new(function)
            );
            match (counted <= max_bytes, self.delta) {
                (true, true) => crate::config::report::warn(message),
                (true, false) => LIVE_SAID.warn(message),
                (false, _) => {}
            }
            also += &format!(" (an estimate: {why})");
        }
        let cut: i64 = self
            .sites
            .iter()
            .filter(|s| s.mentions(symbolize::CUT_FUNCTION) && !s.mentions(function))
            .map(|s| self.counted_bytes(s))
            .fold(0, i64::saturating_add);
        if counted <= max_bytes && cut > 0 {
            crate::config::report::warn(format_args!(
                "heapprof: assert_inuse_at_most: {cut} bytes are in stacks cut at their deepest \
                 kept; if {} is among the callers not recorded there, it holds more than the \
                 {held} counted",
                crate::config::report::Shown::new(function)
            ));
        }
        if counted <= max_bytes {
            self.say_once_if_its_crate_has_no_lines(function);
        }
        if !self.sites.iter().any(|s| s.mentions(function)) {
            let wanted = path_form(function);
            let named = |name: &str| names(name, function, &wanted);
            let exists = reentry::Inside::enter_for(|| {
                symbolize::program_has_function(last_identifier(function), &named)
            });
            assert!(
                exists != Some(false),
                "heapprof: no function of this program is named like `{function}` (no symbol \
                 matches it, and no debug info names it), so what it holds cannot be checked: \
                 check the name, with its \
                 path; a function inlined into all its callers has no symbol of its own: mark \
                 it `#[inline(never)]` (an `async fn`'s body needs debug info to be named in a \
                 release build); an optimized build may also have merged it into another \
                 function with the same body"
            );
            // The function named, with or without the start of its path:
            // not every function whose name has `function` in it.
            let suffix = format!("::{function}");
            let exactly = |name: &str| {
                name == function || name.ends_with(&suffix) || path_form(name) == wanted
            };
            // With frames of the program left unnamed, the function may be
            // one of them: that, not a tail call, is then what hides it.
            let tail_call = (unnamed == 0)
                .then(|| reentry::Inside::enter_for(|| symbolize::tail_call(&exactly)))
                .flatten();
            if let Some((own, callee)) = tail_call {
                panic!(
                    "heapprof: cannot check what `{function}` holds: `{own}` makes a tail call \
                     (its last instruction jumps to {callee}), so whatever that allocates for it \
                     is on stacks without it, and no sampled stack names it; pass its result \
                     through `std::hint::black_box` before returning it, or use \
                     `heapprof::measure`"
                );
            }
            let why = if unnamed > 0 {
                symbolize::no_names_hint()
            } else {
                "check the name (with its path), that the function is not inlined away (an \
                 `async fn`'s body is, in a release build without debug info), and that it does \
                 not end in a tail call or share its code with another function (an optimized \
                 build keeps one copy of the same instructions)"
                    .into()
            };
            // A delta shows only the sites that changed in between: one
            // that allocated nothing then is in neither snapshot's change.
            let (stacks, passes) = if self.delta {
                (
                    "no stack sampled in between",
                    "so it passes as adding nothing: it allocated nothing sampled in between, \
                     or else ",
                )
            } else {
                ("no sampled stack", "so it passes as holding nothing; ")
            };
            let thread = std::thread::current();
            crate::config::report::warn(format_args!(
                "heapprof: assert_inuse_at_most (thread {}): {stacks} names a function \
                 matching {}, {passes}{why}",
                crate::config::report::Shown::new(thread.name().unwrap_or("unnamed")),
                crate::config::report::Shown::new(function)
            ));
        }
        assert!(
            counted <= max_bytes,
            "heapprof: `{function}` {} {held} live bytes{also}, more than the {max_bytes} \
             allowed; {}:\n{self}",
            if self.delta { "added" } else { "holds" },
            if self.delta {
                "the whole process's net change meanwhile, every thread's (another test's \
                 frees can cancel out the bytes counted here)"
            } else {
                "the whole process's live memory"
            }
        );
    }

    /// In a delta, the live bytes `function` gained: over the sites
    /// through it, the bytes of blocks allocated in between, or grown
    /// since, and still live ([`gains`]). In a delta of a snapshot that
    /// lists no blocks (a delta of deltas; one taken while sites kept
    /// retiring, or with no memory for the list), each site's change in
    /// live bytes, at 0 or more.
    fn gained_in(&self, function: &str) -> i64 {
        self.sites
            .iter()
            .enumerate()
            .filter(|(_, site)| site.mentions(function))
            .map(|(i, site)| self.gained_at(i, site))
            .fold(0, i64::saturating_add)
    }

    /// What [`Snapshot::gained_in`] counts of site `i`.
    fn gained_at(&self, i: usize, site: &Site) -> i64 {
        match &self.gains {
            Some(gains) => gains[i],
            None => site.inuse_bytes.max(0),
        }
    }

    /// What the assertion counts of `function` (gains in a delta, live
    /// bytes otherwise), by the `thread` label of the sites it is
    /// counted in, largest first, leaving out threads with none; empty
    /// when it all comes from one thread.
    fn held_by_thread(&self, function: &str) -> Vec<(&str, i64)> {
        let mut by_thread: HashMap<&str, i64> = HashMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            if !site.mentions(function) {
                continue;
            }
            let bytes = if self.delta {
                self.gained_at(i, site)
            } else {
                site.inuse_bytes
            };
            let thread = site
                .labels
                .iter()
                .find(|(key, _)| key == crate::labels::THREAD_KEY)
                .map_or("(no thread label)", |(_, name)| name.as_str());
            let held = by_thread.entry(thread).or_default();
            *held = held.saturating_add(bytes);
        }
        let mut held: Vec<(&str, i64)> = by_thread.into_iter().filter(|&(_, b)| b > 0).collect();
        if held.len() < 2 {
            return Vec::new();
        }
        held.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        held
    }

    /// Says on stderr, once, when frames of `function`'s crate (its path's
    /// first part) are named from the symbol table alone, without a file:
    /// that crate was built without debug info, and its functions inlined
    /// into their callers (closures, `async fn` bodies, small functions)
    /// are on no stack, so an assertion on one may pass for want of it.
    fn say_once_if_its_crate_has_no_lines(&self, function: &str) {
        static SAID: crate::config::report::Once = crate::config::report::Once::new();
        let path = path_form(function);
        let Some((krate, _)) = path.split_once("::") else {
            return;
        };
        let prefix = format!("{krate}::");
        let of_crate = |f: &&Frame| {
            f.function.starts_with(&prefix) || path_form(&f.function).starts_with(&prefix)
        };
        // A frame or two without a line happen with debug info too (code
        // no unit covers): the crate's frames must all be without.
        let mut frames = self.sites.iter().flat_map(|s| &s.frames).filter(of_crate);
        let without_lines = frames.next().is_some() && frames.all(|f| f.file.is_empty());
        if without_lines {
            SAID.warn(format_args!(
                "heapprof: assert_inuse_at_most: frames of {} have no file and line: it was \
                 built without debug info, so its functions inlined into their callers (closures, \
                 `async fn` bodies, small functions) are on no stack and an assertion on one can \
                 pass for want of it; build tests with debug info (`debug = \"line-tables-only\"` \
                 in the profile) or mark such functions `#[inline(never)]`",
                crate::config::report::Shown::new(krate)
            ));
        }
    }

    /// Live bytes (in a delta: bytes allocated in between) of the sites
    /// that do not name `function` but pass through a frame heapprof could
    /// not name in the program's executable (pprof's main binary):
    /// `function` may be that frame. A frame in no object (code made at
    /// run time, a library unloaded since) is not the program's function.
    fn unnamed_program_bytes(&self, function: &str) -> i64 {
        let p = &self.profile;
        let unnamed_in_program = |id: &u64| {
            p.location
                .get((*id as usize).wrapping_sub(1))
                .is_some_and(|loc| loc.line.is_empty() && loc.mapping_id == MAIN_MAPPING_ID)
        };
        self.sites
            .iter()
            .zip(&p.sample)
            .filter(|(site, sample)| {
                !site.mentions(function) && sample.location_id.iter().any(unnamed_in_program)
            })
            .map(|(site, _)| self.counted_bytes(site))
            .fold(0, i64::saturating_add)
    }

    /// The bytes of `site` an assertion counts: its live bytes, or in a
    /// delta every byte allocated there in between (frees of older blocks,
    /// from other threads say, could hide what was added), never below
    /// zero.
    fn counted_bytes(&self, site: &Site) -> i64 {
        if self.delta {
            site.alloc_bytes
        } else {
            site.inuse_bytes
        }
        .max(0)
    }

    /// Writes this snapshot as a gzipped pprof profile: for a snapshot from
    /// [`snapshot`], the profile `write_profile` would have written then,
    /// except that a snapshot's frames have names even under
    /// `HEAPPROF_SYMBOLIZE=off`.
    pub fn write_pprof<W: io::Write>(&self, w: W) -> io::Result<()> {
        reentry::for_program(w, |w| pprof::encode(&self.profile, w))
    }

    /// Writes an SVG flame graph of live bytes (inuse_space): one box per
    /// function, as wide as the memory allocated under it. The same as
    /// [`write_flamegraph_of`](Snapshot::write_flamegraph_of) with
    /// [`SampleType::InuseSpace`].
    #[cfg(feature = "flamegraph")]
    pub fn write_flamegraph<W: io::Write>(&self, w: W) -> io::Result<()> {
        self.write_flamegraph_of(SampleType::InuseSpace, w)
    }

    /// Writes an SVG flame graph of one of the four sample types: one box
    /// per function, as wide as the value of `sample_type` under it. Sites
    /// whose value is zero or negative (frees in a [`delta`](Snapshot::delta))
    /// are left out, and the graph's subtitle gives their total.
    ///
    /// With nothing to draw (an empty snapshot, or heapprof not the
    /// program's `#[global_allocator]`) it still writes a well-formed SVG,
    /// one that says there are no samples and why. An error comes only from
    /// the writer.
    #[cfg(feature = "flamegraph")]
    pub fn write_flamegraph_of<W: io::Write>(
        &self,
        sample_type: SampleType,
        w: W,
    ) -> io::Result<()> {
        reentry::for_program(w, |w| self.flamegraph(sample_type, w))
    }

    /// [`Snapshot::write_flamegraph_of`], inside the profiler.
    #[cfg(feature = "flamegraph")]
    fn flamegraph(&self, sample_type: SampleType, mut w: impl io::Write) -> io::Result<()> {
        let lines: Vec<String> = self
            .sites
            .iter()
            .map(|s| (s, sample_type.of(s)))
            .filter(|&(_, value)| value > 0)
            .map(|(s, value)| {
                let stack: Vec<String> = s
                    .frames
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, f)| folded_name(&f.function, i == 0))
                    .collect();
                format!("{} {value}", stack.join(";"))
            })
            .collect();
        let title = format!("heapprof: {}", sample_type.description());
        if lines.is_empty() {
            // inferno rejects empty input, after writing part of its SVG.
            let why = match crate::output::check_installed() {
                Err(e) => e.to_string(),
                Ok(()) => self.no_samples_reason(sample_type),
            };
            return write_message_svg(&mut w, &title, &format!("No samples. {why}"));
        }
        let mut options = inferno::flamegraph::Options::default();
        options.title = title;
        options.count_name = sample_type.unit().into();
        // A delta's shrinking sites have no width to draw: the graph says
        // how much it leaves out, so that growth is not read as the change.
        let fell: i64 = self.sites.iter().map(|s| sample_type.of(s).min(0)).sum();
        if fell < 0 {
            let mut grouped = num_format::Buffer::default();
            grouped.write_formatted(&fell.unsigned_abs(), &num_format::Locale::en);
            options.subtitle = Some(format!(
                "Growth only: sites whose {} fell, by {} {} in all, are not drawn",
                sample_type.name(),
                grouped.as_str(),
                sample_type.unit()
            ));
        }
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), w)
            .map_err(io::Error::other)
    }

    #[cfg(feature = "flamegraph")]
    fn no_samples_reason(&self, sample_type: SampleType) -> String {
        if self.rate == 0 {
            return "Sampling was off (sample rate 0) when this snapshot was taken.".into();
        }
        let name = sample_type.name();
        let sampled = match self.rate {
            1 => " (every allocation is recorded at rate 1).".to_owned(),
            rate => format!(
                ". Allocations are sampled about once per {rate} bytes allocated, so a program \
                 that allocated little may have none."
            ),
        };
        if !self.delta {
            return format!("No site in this snapshot has {name} above zero{sampled}");
        }
        let fell = self
            .sites
            .iter()
            .map(|s| sample_type.of(s).min(0))
            .fold(0, i64::saturating_add);
        let what = match sample_type {
            SampleType::InuseSpace | SampleType::InuseObjects if fell < 0 => {
                let unit = match sample_type {
                    SampleType::InuseSpace => "bytes",
                    _ => "live blocks",
                };
                return format!(
                    "No site in this delta has {name} above zero: it fell by {} {unit} in all \
                     (frees), and a flame graph shows only growth.",
                    fell.unsigned_abs()
                );
            }
            SampleType::InuseSpace | SampleType::InuseObjects => "none grew in between",
            SampleType::AllocSpace | SampleType::AllocObjects => "none allocated in between",
        };
        format!("No site in this delta has {name} above zero: {what}{sampled}")
    }
}

/// Which of a profile's four values to show, as pprof's `-sample_index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// `inuse_space`: bytes allocated and not yet freed.
    #[default]
    InuseSpace,
    /// `inuse_objects`: allocations not yet freed.
    InuseObjects,
    /// `alloc_space`: bytes allocated, freed or not.
    AllocSpace,
    /// `alloc_objects`: allocations made, freed or not.
    AllocObjects,
}

impl SampleType {
    /// The name pprof gives this sample type (`inuse_space`, …).
    pub fn name(self) -> &'static str {
        match self {
            SampleType::InuseSpace => "inuse_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::AllocObjects => "alloc_objects",
        }
    }

    /// A site's value of this type.
    #[cfg(feature = "flamegraph")]
    fn of(self, site: &Site) -> i64 {
        match self {
            SampleType::InuseSpace => site.inuse_bytes,
            SampleType::InuseObjects => site.inuse_objects,
            SampleType::AllocSpace => site.alloc_bytes,
            SampleType::AllocObjects => site.alloc_objects,
        }
    }

    #[cfg(feature = "flamegraph")]
    fn description(self) -> String {
        let what = match self {
            SampleType::InuseSpace => "live bytes",
            SampleType::InuseObjects => "live allocations",
            SampleType::AllocSpace => "bytes allocated",
            SampleType::AllocObjects => "allocations made",
        };
        format!("{what} ({})", self.name())
    }

    #[cfg(feature = "flamegraph")]
    fn unit(self) -> &'static str {
        match self {
            SampleType::InuseSpace | SampleType::AllocSpace => "bytes",
            SampleType::InuseObjects | SampleType::AllocObjects => "allocations",
        }
    }
}

/// `function` as one frame of inferno's folded format, where `;` ends a
/// frame. Rust names of array types have it (`<[u8; 4] as Trait>::f`), so
/// it is drawn as the Greek question mark, which Unicode defines as
/// canonically equal to `;`. Spaces stay (the count is after a line's last
/// space) except where a leaf's name ends in a word that reads as a count:
/// that space is drawn as a no-break space.
#[cfg(feature = "flamegraph")]
fn folded_name(function: &str, leaf: bool) -> String {
    let mut name = function.replace(';', "\u{37e}");
    let count_like = |tail: &str| tail.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if let Some(at) = name.rfind(' ')
        && leaf
        && count_like(&name[at + 1..])
    {
        name.replace_range(at..at + 1, "\u{a0}");
    }
    name
}

/// Characters per line of [`write_message_svg`]'s text: about what fits
/// its width in its font.
#[cfg(feature = "flamegraph")]
const MESSAGE_LINE_CHARS: usize = 140;

/// Writes a small SVG with a title and a message (wrapped at word
/// boundaries), for a flame graph with nothing to draw.
#[cfg(feature = "flamegraph")]
fn write_message_svg(w: &mut impl io::Write, title: &str, message: &str) -> io::Result<()> {
    use quick_xml::escape::escape;
    let mut lines: Vec<String> = Vec::new();
    for word in message.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= MESSAGE_LINE_CHARS => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    let height = 48 + 18 * lines.len();
    writeln!(w, "<?xml version=\"1.0\" standalone=\"no\"?>")?;
    writeln!(
        w,
        "<svg version=\"1.1\" width=\"1200\" height=\"{height}\" \
         viewBox=\"0 0 1200 {height}\" xmlns=\"http://www.w3.org/2000/svg\">"
    )?;
    writeln!(
        w,
        "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>"
    )?;
    writeln!(
        w,
        "<text x=\"600\" y=\"24\" text-anchor=\"middle\" font-family=\"Verdana\" \
         font-size=\"17\">{}</text>",
        escape(title)
    )?;
    for (i, line) in lines.iter().enumerate() {
        writeln!(
            w,
            "<text x=\"600\" y=\"{}\" text-anchor=\"middle\" font-family=\"Verdana\" \
             font-size=\"12\">{}</text>",
            52 + 18 * i,
            escape(line)
        )?;
    }
    writeln!(w, "</svg>")
}

/// A `pprof -top`-like table of live bytes. What the table is built from
/// is heapprof's own memory (as a snapshot's is); the text written is the
/// caller's.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = reentry::Own::make(|| self.top(20));
        let numbers = self.sampling.numbers(self.rate, self.delta);
        let numbers = reentry::Own::make(|| numbers.describe());
        self.write_top(f, &rows, &numbers)
    }
}

impl Snapshot {
    /// Writes [`Display`](fmt::Display)'s table of `rows`, under a header
    /// saying what the numbers are.
    fn write_top(
        &self,
        f: &mut fmt::Formatter<'_>,
        rows: &[FunctionBytes],
        numbers: &str,
    ) -> fmt::Result {
        let total = self.total_inuse_bytes();
        // Of the sites' live bytes taken without their sign, as pprof
        // does: a delta's net total may be small, zero or negative.
        let scale = self
            .sites
            .iter()
            .map(|s| s.inuse_bytes.saturating_abs())
            .fold(0, i64::saturating_add);
        let pct = |x: i64| {
            if scale == 0 {
                0.0
            } else {
                100.0 * x as f64 / scale as f64
            }
        };
        if self.delta {
            writeln!(
                f,
                "heapprof: {total:+} live bytes since the earlier snapshot; values are {numbers}"
            )?;
        } else {
            writeln!(f, "heapprof: {total} live bytes; values are {numbers}")?;
        }
        writeln!(
            f,
            "{:>12} {:>6} {:>6} {:>12} {:>6}  function",
            "flat", "flat%", "sum%", "cum", "cum%"
        )?;
        let mut sum = 0;
        for row in rows {
            sum = i64::saturating_add(sum, row.flat);
            writeln!(
                f,
                "{:>12} {:>5.1}% {:>5.1}% {:>12} {:>5.1}%  {}",
                row.flat,
                pct(row.flat),
                pct(sum),
                row.cum,
                pct(row.cum),
                row.function
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("rate", &self.rate)
            .field("sites", &self.sites)
            .finish()
    }
}

/// The sites of a built profile, with frames read back from its locations.
fn sites_of(p: &proto::Profile) -> Vec<Site> {
    let text = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
    p.sample
        .iter()
        .map(|s| {
            let frames = s
                .location_id
                .iter()
                .filter_map(|id| p.location.get(*id as usize - 1))
                .flat_map(|loc| {
                    let named = loc.line.iter().map(|line| {
                        let func = &p.function[line.function_id as usize - 1];
                        Frame {
                            function: text(func.name),
                            file: text(func.filename),
                            line: line.line as u32,
                        }
                    });
                    // A location without a name is still a frame: shown as
                    // pprof shows it, by the object it is in.
                    let unnamed = loc.line.is_empty().then(|| Frame {
                        function: unnamed_frame(p, loc),
                        file: String::new(),
                        line: 0,
                    });
                    named.chain(unnamed)
                })
                .collect();
            Site {
                frames,
                labels: s.label.iter().map(|l| (text(l.key), text(l.str))).collect(),
                alloc_objects: s.value[0],
                alloc_bytes: s.value[1],
                inuse_objects: s.value[2],
                inuse_bytes: s.value[3],
            }
        })
        .collect()
}

/// The id of the executable's mapping: pprof's main binary, listed first
/// (`support::mappings::current`).
const MAIN_MAPPING_ID: u64 = 1;

/// The name of a frame no symbol covers: `[libfoo.so]` after the file of
/// the object its address is in, `?` when it is in none.
fn unnamed_frame(p: &proto::Profile, loc: &proto::Location) -> String {
    let object = loc
        .mapping_id
        .checked_sub(1)
        .and_then(|i| p.mapping.get(i as usize))
        .and_then(|m| p.string_table.get(m.filename as usize))
        .map(|file| file.rsplit('/').next().unwrap_or(file))
        .filter(|name| !name.is_empty());
    match object {
        Some(name) => format!("[{name}]"),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::support::lock::EachLock;

    /// What debug info names a function by: its last identifier.
    #[test]
    fn last_identifiers() {
        use super::last_identifier;
        for (name, last) in [
            ("my_crate::parse", "parse"),
            ("parse", "parse"),
            ("my_crate::parse::{{closure}}::{{closure}}", "parse"),
            ("my_crate::Cache<T>::get", "get"),
            ("<my_crate::Cache as core::ops::Drop>::drop", "drop"),
            ("<my_crate::Cache>", ""),
            ("", ""),
        ] {
            assert_eq!(last_identifier(name), last, "{name}");
        }
    }

    /// A frame of the folded lines never ends early at a `;` of its name,
    /// and a leaf's name never ends in what reads as the line's count.
    #[cfg(feature = "flamegraph")]
    #[test]
    fn folded_names_are_one_frame_each() {
        use super::folded_name;
        assert_eq!(
            folded_name("<[u8; 4] as a::T>::f", false),
            "<[u8\u{37e} 4] as a::T>::f"
        );
        assert_eq!(folded_name("ends in 32", true), "ends in\u{a0}32");
        assert_eq!(folded_name("ends in 3.5", true), "ends in\u{a0}3.5");
        assert_eq!(folded_name("ends in 32", false), "ends in 32");
        assert_eq!(
            folded_name("operator new(unsigned long)", true),
            "operator new(unsigned long)"
        );
    }

    /// A method named as either mangling scheme demangles it finds the
    /// other; trait impls and other names are left as they are.
    #[test]
    fn inherent_methods_match_in_either_mangling() {
        use super::path_form;
        assert_eq!(path_form("<my_crate::Cache>::get"), "my_crate::Cache::get");
        assert_eq!(
            path_form("<my_crate::Cache<u32>>::get::{closure#0}"),
            "my_crate::Cache<u32>::get::{closure#0}"
        );
        assert_eq!(
            path_form("<my_crate::Table<fn(u8) -> u8>>::run"),
            "my_crate::Table<fn(u8) -> u8>::run"
        );
        for same in [
            "my_crate::Cache::get",
            "<my_crate::Cache as core::clone::Clone>::clone",
            "<alloc::vec::Vec<<u8 as my_crate::T>::Out>>",
            "<my_crate::Cache",
            "[heapprof: table full]",
        ] {
            assert_eq!(path_form(same), same);
        }

        let site = |function: &str| super::Site {
            frames: vec![super::Frame {
                function: function.into(),
                file: String::new(),
                line: 0,
            }],
            labels: Vec::new(),
            alloc_objects: 1,
            alloc_bytes: 1,
            inuse_objects: 1,
            inuse_bytes: 1,
        };
        let v0 = site("<my_crate::Cache>::get");
        let legacy = site("my_crate::Cache::get");
        for s in [&v0, &legacy] {
            assert!(s.mentions("my_crate::Cache::get"));
            assert!(s.mentions("<my_crate::Cache>::get"));
            assert!(s.mentions("Cache::get"));
            assert!(s.mentions("my_crate::Cache"));
            assert!(!s.mentions("my_crate::Cache::put"));
        }
        assert!(v0.mentions("<my_crate::Cache>"));
    }

    /// A frame the debug info names without its path (an inlined function
    /// under `debug = "line-tables-only"`) counts for a name with a path
    /// that ends in it; a name from a symbol table (no file) does not.
    #[test]
    fn short_names_from_debug_info_match_names_with_paths() {
        let site = |function: &str, file: &str| super::Site {
            frames: vec![super::Frame {
                function: function.into(),
                file: file.into(),
                line: 3,
            }],
            labels: Vec::new(),
            alloc_objects: 1,
            alloc_bytes: 1,
            inuse_objects: 1,
            inuse_bytes: 1,
        };
        let short = site("parse", "src/lib.rs");
        assert!(short.mentions("my_crate::parse"));
        assert!(short.mentions("my_crate::Parser::parse"));
        assert!(site("parse<u8>", "src/lib.rs").mentions("my_crate::parse"));
        assert!(!short.mentions("my_crate::parse_all"));
        assert!(!short.mentions("my_crate::pars"));
        assert!(!short.mentions("my_crate::parse::{{closure}}"));
        assert!(!site("parse", "").mentions("my_crate::parse"));
        assert!(!site("parse_all", "src/lib.rs").mentions("my_crate::parse"));
        assert!(!site("{{closure}}", "src/lib.rs").mentions("my_crate::main::{{closure}}"));
        // Where the file's path tells the crate, only that crate's.
        let std_join = site("join", "/rustc/0123abcd/library/std/src/path.rs");
        assert!(std_join.mentions("std::path::Path::join"));
        assert!(!std_join.mentions("app::wrong::join"));
        let spawn = site(
            "spawn",
            "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.40.0/src/task/spawn.rs",
        );
        assert!(spawn.mentions("tokio::spawn"));
        assert!(!spawn.mentions("app::spawn"));
        // The program's own code, wherever it is checked out, and path
        // dependencies: any crate's.
        let own_new = site("new", "/home/runner/work/backend/backend/src/lib.rs");
        assert!(own_new.mentions("app::Config::new"));
        assert!(own_new.mentions("<app::Config>::new"));
        let default = site("default", "/app/src/config.rs");
        assert!(default.mentions("<app::Config as core::default::Default>::default"));
    }

    /// The crate a source file's path tells.
    #[test]
    fn source_crates() {
        use super::source_crate;
        for (file, krate) in [
            ("/rustc/0123abcd/library/core/src/fmt/mod.rs", Some("core")),
            (
                "/home/u/.rustup/toolchains/stable/lib/rustlib/src/rust/library/alloc/src/vec/mod.rs",
                Some("alloc"),
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/regex-automata-0.4.9/src/meta/strategy.rs",
                Some("regex-automata"),
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rand-0.9.0-beta.1/src/lib.rs",
                Some("rand"),
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/md-5-0.10.6/src/lib.rs",
                Some("md-5"),
            ),
            (
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/fnv-1.0.7/lib.rs",
                Some("fnv"),
            ),
            (
                "/root/.cargo/git/checkouts/mylib-0123abcd4567ef89/4f2e1a9/src/lib.rs",
                Some("mylib"),
            ),
            ("/work/dep/src/lib.rs", None),
            ("/home/u/src/my-app/src/main.rs", None),
            ("/work/app/target/release/build/dep-0123/out/gen.rs", None),
            ("src/main.rs", None),
            ("/usr/include/stdio.h", None),
        ] {
            assert_eq!(source_crate(file), krate, "{file}");
        }
    }

    /// A snapshot made of `sites`, each a function and its live bytes.
    fn made_of(delta: bool, sites: &[(&str, i64)]) -> super::Snapshot {
        let site = |&(function, inuse_bytes): &(&str, i64)| super::Site {
            frames: vec![super::Frame {
                function: function.to_owned(),
                file: String::new(),
                line: 0,
            }],
            labels: Vec::new(),
            alloc_objects: 0,
            alloc_bytes: 0,
            inuse_objects: 0,
            inuse_bytes,
        };
        super::Snapshot {
            raw: Vec::new(),
            rate: 1,
            delta,
            sites: sites.iter().map(site).collect(),
            profile: Default::default(),
            blocks: None,
            gains: None,
            dropped: 0,
            taken: None,
            sampling: super::Sampling {
                turned_off: (0, 0),
                off_at_ends: false,
                estimated: false,
                set_coarse: (0, 0),
                coarse_at_ends: false,
            },
        }
    }

    /// Sums over sites saturate: a sample taken at a rate near the largest
    /// stands for nearly `i64::MAX` bytes, and a function's bytes, the
    /// table's running sum and a flame graph's message must not wrap.
    #[test]
    fn sums_over_huge_sites_saturate() {
        let live = made_of(false, &[("app::main", i64::MAX), ("app::main", 100)]);
        let top = live.top(1);
        assert_eq!((top[0].flat, top[0].cum), (i64::MAX, i64::MAX));
        let table = live.to_string();
        assert!(!table.contains("-9"), "{table}");
        #[cfg(feature = "flamegraph")]
        {
            let fell = made_of(true, &[("app::a", i64::MIN), ("app::b", -100)]);
            let why = fell.no_samples_reason(super::SampleType::InuseSpace);
            assert!(why.contains("fell by 9223372036854775808 bytes"), "{why}");
        }
    }

    /// A delta's table gives each function its share of the bytes that
    /// changed either way, with its sign, as `pprof -base` does; not a
    /// share of the net change, which is negative here.
    #[test]
    fn a_deltas_shares_are_of_the_bytes_that_changed() {
        let delta = made_of(true, &[("app::grows", 300), ("app::shrinks", -500)]);
        let table = delta.to_string();
        let row = |name: &str| {
            let line = table.lines().find(|l| l.ends_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().to_owned()
        };
        assert_eq!(row("app::grows"), "37.5%", "{table}");
        assert_eq!(row("app::shrinks"), "-62.5%", "{table}");
        assert!(
            table.starts_with("heapprof: -200 live bytes since the earlier snapshot"),
            "{table}"
        );
        let grew = made_of(true, &[("app::grows", 300)]).to_string();
        assert!(
            grew.starts_with("heapprof: +300 live bytes since"),
            "{grew}"
        );
        let live = made_of(false, &[("app::grows", 300)]).to_string();
        assert!(live.starts_with("heapprof: 300 live bytes;"), "{live}");
        // The largest change first, either way, as `pprof -top -base`.
        let top: Vec<String> = delta.top(1).into_iter().map(|r| r.function).collect();
        assert_eq!(top, ["app::shrinks"]);
    }

    /// An empty flame graph says why: in a delta, how far its sites fell
    /// or that none grew; at rate 1, not for want of samples.
    #[cfg(feature = "flamegraph")]
    #[test]
    fn an_empty_flame_graph_gives_the_reason_that_holds() {
        // The flame graph of this test binary, whose allocator is not
        // heapprof, would say that first.
        let svg = |s: &super::Snapshot| s.no_samples_reason(super::SampleType::InuseSpace);
        let fell = svg(&made_of(true, &[("app::a", -300), ("app::b", -200)]));
        assert!(fell.contains("fell by 500 bytes in all"), "{fell}");
        let none = svg(&made_of(true, &[("app::a", 0)]));
        assert!(none.contains("none grew in between"), "{none}");
        let exact = svg(&made_of(false, &[]));
        assert!(exact.contains("recorded at rate 1"), "{exact}");
        assert!(!exact.contains("sampled about once"), "{exact}");
        // A short delta at the default rate may have no sample at all.
        let mut sampled = made_of(true, &[]);
        sampled.rate = 512 * 1024;
        let sampled = svg(&sampled);
        assert!(
            sampled.contains("none grew in between. Allocations are sampled about once"),
            "{sampled}"
        );
    }

    /// `stats()` reads the registry and nothing else: with every table's
    /// lock held by another thread, it still returns.
    #[test]
    fn stats_takes_no_table_lock() {
        const TABLES: [EachLock; 6] = [
            crate::output::symbolize::each_lock,
            crate::labels::each_lock,
            crate::record::sites::each_lock,
            crate::record::spare::each_lock,
            crate::record::peak::each_lock,
            crate::record::blocks::each_lock,
        ];
        let (held, tables_held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            for each_lock in TABLES {
                each_lock(&mut |l| l.lock_and_keep());
            }
            held.send(()).unwrap();
            let _ = released.recv();
            for each_lock in TABLES {
                // SAFETY: this thread took each of them above.
                each_lock(&mut |l| unsafe { l.release_kept() });
            }
        });
        tables_held.recv().unwrap();
        let (sent, stats) = mpsc::channel();
        std::thread::spawn(move || sent.send(super::stats()));
        let answer = stats.recv_timeout(Duration::from_secs(10));
        release.send(()).unwrap();
        holder.join().unwrap();
        assert!(answer.is_ok(), "stats() waited for a table's lock");
    }
}
