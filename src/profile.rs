//! Building the pprof `Profile` from a snapshot of the bucket table:
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
//! where `w = 1/(1 - exp(-size/rate))` (see `sampler.rs`). Each sample also
//! carries a numeric `bytes` label: the mean size of the sampled blocks at
//! that site, as Go's label gives the block size of its bucket.

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use crate::buckets::{self, Site};
use crate::mappings::{self, Mapping};
use crate::proto;
use crate::symbolize::{self, Frames};

/// The name under which the overflow bucket appears in profiles.
pub(crate) const OVERFLOW_FUNCTION: &str = "[heapprof overflow: site table full or out of memory]";

/// How to present a profile.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// `Some("alloc_space")` for the `allocs` flavour; `None` leaves pprof's
    /// default (the last type, `inuse_space`).
    pub default_sample_type: Option<&'static str>,
    /// Notes added to the profile's comments (`pprof -comments`).
    pub comments: Vec<String>,
    /// For a delta profile: the span it covers, and when it started (the
    /// profile's `duration_nanos`; `time_nanos` is then its end, as Go's).
    pub duration: Option<std::time::Duration>,
}

/// Memory the profiler holds for itself: tables, the sampled-address set,
/// spare sampled blocks, and what symbolization keeps.
pub(crate) fn profiler_bytes() -> usize {
    crate::buckets::memory_bytes()
        + crate::sampled::stats().1
        + crate::spare::bytes()
        + symbolize::memory_bytes()
}

/// The stack a profile build, encoding or text profile may need, at
/// most. Measured in release builds by painting a thread's stack: a
/// gzipped profile takes 70 KiB (66 KiB of it flate2's compressor state,
/// built on the stack before it is boxed), a text profile with a cold
/// symbolization 24 KiB. This leaves 58 KiB for the caller's writer.
const BUILD_STACK_NEED: usize = 128 * 1024;

/// The stack segment a build gets when the caller's stack has less than
/// [`BUILD_STACK_NEED`] left. Only the pages it touches become resident.
const BUILD_STACK_BYTES: usize = 512 * 1024;

/// Runs `f` with at least [`BUILD_STACK_NEED`] of stack: on the caller's
/// stack when that much is left, else on a fresh stack segment of
/// [`BUILD_STACK_BYTES`] mapped for the call (by `stacker`), on this same
/// thread, so that its thread-locals (the reentrancy guard, the
/// per-thread counters) are the caller's. A program's threads may have
/// stacks as small as 16 KiB; a profile written from one of them
/// overflowed it, and a stack overflow aborts the process.
pub(crate) fn with_build_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(BUILD_STACK_NEED, BUILD_STACK_BYTES, f)
}

/// Writes the current profile, gzipped, to `w`.
pub(crate) fn write<W: Write>(w: W, options: Options) -> io::Result<()> {
    with_build_stack(|| {
        let sites = buckets::snapshot();
        let profile = build(&sites, crate::sampler::rate(), options);
        encode(&profile, w)
    })
}

/// Encodes `profile` as a gzip-compressed protobuf.
pub(crate) fn encode<W: Write>(profile: &proto::Profile, w: W) -> io::Result<()> {
    with_build_stack(|| {
        let bytes = profile.encode_to_vec();
        let mut gz = GzEncoder::new(w, Compression::default());
        gz.write_all(&bytes)?;
        gz.finish()?.flush()
    })
}

/// Builds the profile message for `sites`, sampled at `rate`.
pub(crate) fn build(sites: &[Site], rate: usize, options: Options) -> proto::Profile {
    with_build_stack(|| build_here(sites, rate, options))
}

fn build_here(sites: &[Site], rate: usize, options: Options) -> proto::Profile {
    let resolved = symbolize::resolve_all(sites.iter().flat_map(|s| s.frames.iter().copied()));
    let mut b = Builder {
        strings: StringTable::new(),
        functions: HashMap::new(),
        locations: HashMap::new(),
        mappings: mappings::current(),
        profile: proto::Profile::default(),
        resolved,
    };
    b.header(rate, &options);
    for site in sites {
        b.add_site(site);
    }
    b.add_mappings();
    b.profile.string_table = b.strings.strings;
    b.profile
}

/// Which frames of a stack (leaf first) a profile shows: `(address,
/// inlined lines to skip)` for each kept address. The leading allocation
/// machinery goes: whole addresses while all their lines are machinery,
/// then the machinery lines inlined at the top of the first address that
/// also has user code (one address can carry `Vec::push` inlined into the
/// user's function). If everything is machinery (an allocation made by the
/// runtime itself), nothing is trimmed.
pub(crate) fn trim(frames: &[usize], resolved: &HashMap<usize, Frames>) -> Vec<(usize, usize)> {
    let mut kept = Vec::with_capacity(frames.len());
    for (i, &addr) in frames.iter().enumerate() {
        let lines = resolved.get(&addr).map_or(&[][..], |f| &f[..]);
        let machinery = lines
            .iter()
            .take_while(|fr| symbolize::is_machinery_frame(fr))
            .count();
        if !lines.is_empty() && machinery == lines.len() {
            continue;
        }
        kept.push((addr, machinery));
        kept.extend(frames[i + 1..].iter().map(|&a| (a, 0)));
        return kept;
    }
    frames.iter().map(|&a| (a, 0)).collect()
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
    locations: HashMap<(usize, usize), u64>,
    mappings: Vec<Mapping>,
    profile: proto::Profile,
    resolved: HashMap<usize, Frames>,
}

impl Builder {
    fn header(&mut self, rate: usize, options: &Options) {
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
        self.profile.period = rate as i64;
        self.profile.time_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        if let Some(d) = options.duration {
            self.profile.duration_nanos = d.as_nanos().min(i64::MAX as u128) as i64;
        }
        if let Some(t) = options.default_sample_type {
            self.profile.default_sample_type = self.strings.get(t);
        }
        // `pprof -comments` shows these: how to read the numbers, and what
        // the profiler itself costs.
        let live_sampled = crate::sampled::stats().0;
        let comments = [
            format!(
                "heapprof {}: values are unbiased estimates from sampling every {rate} bytes on average",
                env!("CARGO_PKG_VERSION")
            ),
            format!(
                "heapprof: stacks unwound with {}",
                crate::stack::unwinder_name()
            ),
            format!(
                "heapprof: {live_sampled} live sampled blocks; profiler tables use {} bytes",
                profiler_bytes()
            ),
        ];
        for c in options.comments.iter().chain(&comments) {
            let i = self.strings.get(c);
            self.profile.comment.push(i);
        }
    }

    fn add_site(&mut self, site: &Site) {
        let c = &site.counts;
        if c.sampled_allocs == 0 && c.sampled_frees == 0 {
            return; // nothing happened here (in a delta: nothing in between)
        }
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
        self.profile.sample.push(proto::Sample {
            location_id,
            value: vec![
                round(c.alloc_objects_est),
                round(c.alloc_bytes_est),
                round(c.alloc_objects_est - c.free_objects_est),
                round(c.alloc_bytes_est - c.free_bytes_est),
            ],
            ..Default::default()
        });
    }

    /// The site's locations, leaf first, allocation machinery trimmed (see
    /// [`trim`]).
    fn trimmed_locations(&mut self, frames: &[usize]) -> Vec<u64> {
        trim(frames, &self.resolved)
            .into_iter()
            .map(|(addr, skip)| self.location(addr, skip))
            .collect()
    }

    fn location(&mut self, addr: usize, skip: usize) -> u64 {
        if let Some(&id) = self.locations.get(&(addr, skip)) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let frames = self.resolved.get(&addr).cloned().unwrap_or_default();
        let line = frames
            .iter()
            .skip(skip)
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
        self.locations.insert((addr, skip), id);
        id
    }

    fn overflow_location(&mut self) -> u64 {
        if let Some(&id) = self.locations.get(&(0, 0)) {
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
        self.locations.insert((0, 0), id);
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
    fn add_mappings(&mut self) {
        let mut flags = vec![[true; 4]; self.mappings.len()];
        let mut used = vec![false; self.mappings.len()];
        for loc in &self.profile.location {
            let Some(i) = (loc.mapping_id as usize).checked_sub(1) else {
                continue;
            };
            used[i] = true;
            let frames = self
                .resolved
                .get(&(loc.address as usize + 1))
                .cloned()
                .unwrap_or_default();
            let f = &mut flags[i];
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
    }
}
