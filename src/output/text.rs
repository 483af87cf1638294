//! The legacy text heap profile: what Go's `/debug/pprof/heap?debug=1`
//! prints, and what `go tool pprof` still reads.
//!
//! ```text
//! heap profile: 3: 1572864 [9: 4718592] @ heap/2
//! 2: 1048576 [6: 3145728] @ 0x55d0c2a1b2c3 0x55d0c2a1b010 0x55d0c2a1a0f7
//! #    0x55d0c2a1b2c2    myapp::cache::Cache::insert    /src/cache.rs:41
//! #    0x55d0c2a1b00f    myapp::main    /src/main.rs:12
//!
//! # heapprof stats
//! # allocations = 1234
//! …
//!
//! MAPPED_LIBRARIES:
//! 55d0c2a00000-55d0c2c00000 r-xp 00001000 00:00 0 /usr/bin/myapp
//! ```
//!
//! (The `#` lines are tab-separated, as Go's; spaces above.)
//!
//! The header is the totals of the records; each record is `inuse_objects:
//! inuse_bytes [alloc_objects: alloc_bytes] @` and the stack's return
//! addresses, leaf first. The `#` lines after a site's records give its
//! source frames (inlined frames expanded), the way Go prints them. Sites
//! are sorted by live bytes, largest first.
//!
//! # What the numbers are
//!
//! In this format pprof takes the header's `@ heap/N` as twice a sampling
//! period and scales every record by `1/(1 - exp(-avg/period))` for the
//! record's average size, a factor that assumes one block size per record
//! and one rate for the whole run. heapprof's samples are weighted one by
//! one (see `sample/mod.rs`), at the rate each countdown was drawn at, so no
//! single factor recovers its estimates after a rate change or for a site
//! of mixed sizes. So heapprof writes its estimates themselves, rounded to
//! whole objects and bytes, and the header `@ heap/2`: a period of 1, for
//! which pprof scales nothing. pprof then reads exactly the binary
//! profile's numbers, site for site, and every site with an allocation has
//! at least one object. The real sampling rate is in the trailer
//! (`# sample_rate`).
//!
//! # Labels
//!
//! The format has no place for labels: pprof's reader takes a record's
//! numbers and addresses and skips `#` lines. A labelled site's record is
//! followed by a `# labels: {"tenant":"acme", "thread":"main"}` line, as
//! Go's text goroutine profile prints them, for people to read, and the
//! header's comments say that pprof does not see them; `-tagfocus` and
//! its kin need the binary profile. The same stack under two label sets
//! is two records, which pprof adds together.
//!
//! # The memory map
//!
//! Rust executables are position independent, so the addresses mean
//! nothing without knowing where each object was loaded. A
//! `MAPPED_LIBRARIES:` section in `/proc/self/maps` form (the executable
//! segments only) follows the records; pprof reads it and can then
//! symbolize against the binary. The `# heapprof stats` lines come before
//! it: pprof skips `#` lines among the records but not inside the map.

use std::io::{self, Write};

use crate::labels::table::Label;
use crate::output::pprof;
use crate::output::symbolize;
use crate::record::sites::{SiteCopy, SiteCounts};
use crate::support::mappings;

/// Writes `sites`, sampled at `rate`, in the legacy text format, with the
/// exact counters of `stats` in the trailer and `options`' comments, on a
/// stack deep enough for symbolization (`pprof::with_build_stack`). With
/// `options.addresses_only`, nothing is looked up and every frame's `#`
/// line has `?` for its name.
pub(crate) fn write<W: Write>(
    w: W,
    sites: &[SiteCopy],
    rate: usize,
    stats: &crate::Stats,
    options: &pprof::Options,
) -> io::Result<()> {
    pprof::with_build_stack(|| write_here(w, sites, rate, stats, options))
}

fn write_here<W: Write>(
    mut w: W,
    sites: &[SiteCopy],
    rate: usize,
    stats: &crate::Stats,
    options: &pprof::Options,
) -> io::Result<()> {
    let comments = &options.comments;
    let mut trimmer = pprof::Trimmer::new(symbolize::for_profile(sites, options.addresses_only));
    let mut records: Vec<SiteRecords> = sites
        .iter()
        .filter(|s| s.counts.sampled_allocs > 0)
        .map(|s| SiteRecords::new(s, &mut trimmer))
        .collect();
    records.sort_by(|a, b| {
        b.values[1]
            .cmp(&a.values[1])
            .then(b.values[3].cmp(&a.values[3]))
    });

    let total = records.iter().fold([0i64; 4], |t, r| {
        let v = r.values;
        [0, 1, 2, 3].map(|i| t[i].saturating_add(v[i]))
    });
    // `heap/2`: pprof halves it to a period of 1 and scales nothing (see
    // the module comment).
    writeln!(
        w,
        "heap profile: {}: {} [{}: {}] @ heap/2",
        total[0], total[1], total[2], total[3],
    )?;
    // What the profile is (a peak, say): `#` lines, which readers skip.
    for c in comments {
        writeln!(w, "# {c}")?;
    }
    if records.iter().any(|r| !r.labels.is_empty()) {
        writeln!(w, "# {LABELS_NOTE}")?;
    }
    // The executable is the first mapping.
    let mapped = mappings::current();
    if !options.addresses_only
        && let Some(main) = mapped.first()
    {
        let mut unnamed: Vec<usize> = records
            .iter()
            .flat_map(|r| &r.frames)
            .map(|shown| shown.addr)
            .filter(|&a| {
                let call = (a as u64).wrapping_sub(1);
                main.start <= call
                    && call < main.limit
                    && trimmer.resolved().get(&a).is_none_or(|f| f.is_empty())
            })
            .collect();
        unnamed.sort_unstable();
        unnamed.dedup();
        if !unnamed.is_empty() {
            writeln!(w, "# {}", pprof::unnamed_note(unnamed.len()))?;
        }
        if symbolize::split_debug_unread() {
            writeln!(w, "# {}", symbolize::SPLIT_UNREAD_NOTE)?;
        }
    }
    for r in &records {
        let v = r.values;
        write!(w, "{}: {} [{}: {}] @", v[0], v[1], v[2], v[3])?;
        for shown in &r.frames {
            write!(w, " {:#x}", shown.addr)?;
        }
        if r.overflow {
            write!(w, " {OVERFLOW_ADDRESS:#x}")?;
        }
        writeln!(w)?;
        for shown in &r.frames {
            let frames = trimmer
                .resolved()
                .get(&shown.addr)
                .map_or(&[][..], |f| &f[..]);
            // The call instruction, as in the binary profile.
            let call = shown.addr.saturating_sub(1);
            if frames.is_empty() {
                writeln!(w, "#\t{call:#x}\t?")?;
            }
            let (from, to) = shown.lines;
            for f in frames.get(from..to.min(frames.len())).unwrap_or(&[]) {
                write_frame(&mut w, call, f)?;
            }
        }
        if r.overflow {
            writeln!(
                w,
                "#\t{:#x}\t{}",
                OVERFLOW_ADDRESS - 1,
                pprof::OVERFLOW_FUNCTION
            )?;
        }
        if !r.labels.is_empty() {
            write!(w, "# labels: {{")?;
            for (i, (k, v)) in r.labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                write!(w, "{sep}{}:{}", Json(k), Json(v))?;
            }
            writeln!(w, "}}")?;
        }
        writeln!(w)?;
    }
    write_stats(&mut w, stats, rate, sites, options)?;
    writeln!(
        w,
        "# estimated_live_bytes = {} (the records' inuse_space, as pprof reads it)",
        total[1]
    )?;
    writeln!(w, "\nMAPPED_LIBRARIES:")?;
    for m in mapped {
        writeln!(
            w,
            "{:x}-{:x} r-xp {:08x} 00:00 0 {}",
            m.start, m.limit, m.file_offset, m.path
        )?;
    }
    w.flush()
}

/// The trailer, after Go's `# runtime.MemStats` lines: the exact counters
/// beside the sampled estimate, so the two can be compared at a glance.
/// The counters are the process's now; records from another moment (a
/// peak's, `options.time`) say so, and the live sampled blocks are the
/// records' own.
fn write_stats<W: Write>(
    w: &mut W,
    stats: &crate::Stats,
    rate: usize,
    sites: &[SiteCopy],
    options: &pprof::Options,
) -> io::Result<()> {
    match options.time {
        Some(then) => writeln!(
            w,
            "# heapprof stats now (exact counts, all threads, since start; the records are from {})",
            super::wall_time(then)
        )?,
        None => writeln!(
            w,
            "# heapprof stats (exact counts, all threads, since start)"
        )?,
    }
    writeln!(w, "# allocations = {}", stats.allocations)?;
    writeln!(w, "# deallocations = {}", stats.deallocations)?;
    writeln!(w, "# live_blocks = {}", stats.live_blocks())?;
    writeln!(w, "# allocated_bytes = {}", stats.allocated_bytes)?;
    writeln!(w, "# freed_bytes = {}", stats.freed_bytes)?;
    writeln!(w, "# live_bytes = {}", stats.live_bytes())?;
    writeln!(w, "# profiler_bytes = {}", stats.profiler_bytes)?;
    writeln!(w, "# profiler_allocations = {}", stats.profiler_allocations)?;
    writeln!(
        w,
        "# profiler_allocated_bytes = {}",
        stats.profiler_allocated_bytes
    )?;
    writeln!(w, "# heapprof sampling")?;
    writeln!(w, "# sample_rate = {rate}")?;
    let live_sampled = pprof::live_sampled_blocks(sites);
    if options.change {
        writeln!(w, "# live_sampled_blocks = {live_sampled:+} (in between)")?;
    } else {
        writeln!(w, "# live_sampled_blocks = {live_sampled}")?;
    }
    writeln!(w, "# unwinder = {}", crate::record::stack::unwinder_name())?;
    if crate::labels::table::program_sets_full() {
        writeln!(w, "# {}", super::pprof::label_table_full_note())?;
    }
    if crate::labels::thread_label_dropped() {
        writeln!(w, "# {}", super::pprof::thread_label_dropped_note())?;
    }
    if crate::record::sites::overflowed() {
        writeln!(w, "# {}", super::pprof::site_table_full_note())?;
    }
    Ok(())
}

/// The overflow entry's one frame in this format, which gives pprof a
/// record's frames by address only: a record with none would count in the
/// header's totals and in no function. An address where no code lies,
/// past those of heapprof's own frames (`record::stack::OWN_FRAMES`).
const OVERFLOW_ADDRESS: usize = 3;
const _: () = assert!(OVERFLOW_ADDRESS > crate::record::stack::CUT);
const _: () = assert!(OVERFLOW_ADDRESS > crate::record::stack::NOT_UNWOUND);

/// A string as a JSON string literal, quotes included: a label's key or
/// value on a `# labels:` line.
struct Json<'a>(&'a str);

impl std::fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if u32::from(c) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// Says where a text profile's labels are, and that pprof does not read
/// them.
pub(crate) const LABELS_NOTE: &str = "heapprof: samples carry labels, shown on `# labels:` lines; \
     this format cannot give them to pprof (-tagfocus, -tags need the binary profile)";

/// A site's record: its estimates `[inuse objects, inuse bytes, alloc
/// objects, alloc bytes]`, rounded, the frames to print and its labels.
struct SiteRecords {
    values: [i64; 4],
    frames: Vec<pprof::Shown>,
    overflow: bool,
    labels: &'static [Label],
}

impl SiteRecords {
    fn new(site: &SiteCopy, trimmer: &mut pprof::Trimmer) -> SiteRecords {
        let c: &SiteCounts = &site.counts;
        // Rounding and a sample counted freed can leave -0.4 or so.
        let whole = |x: f64| x.round().max(0.0) as i64;
        SiteRecords {
            values: [
                whole(c.alloc_objects_est - c.free_objects_est),
                whole(c.alloc_bytes_est - c.free_bytes_est),
                whole(c.alloc_objects_est),
                whole(c.alloc_bytes_est),
            ],
            frames: trimmer.trim(&site.frames).to_vec(),
            overflow: site.overflow,
            labels: crate::labels::table::get(site.labels),
        }
    }
}

/// One `#` line of a record: the call's address, the function, and its
/// file and line where debug info gave them (a symbol table gives none:
/// no `:0` made up).
fn write_frame(w: &mut dyn io::Write, call: usize, f: &symbolize::Symbol) -> io::Result<()> {
    if f.file.is_empty() {
        writeln!(w, "#\t{call:#x}\t{}", f.name)
    } else {
        writeln!(w, "#\t{call:#x}\t{}\t{}:{}", f.name, f.file, f.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(frames: Vec<usize>, samples: &[(usize, usize, bool)]) -> SiteCopy {
        let mut counts = SiteCounts::default();
        for &(size, rate, freed) in samples {
            let w = crate::sample::weight(size, rate);
            counts.sampled_allocs += 1;
            counts.sampled_alloc_bytes += size as u64;
            counts.alloc_objects_est += w;
            counts.alloc_bytes_est += size as f64 * w;
            if freed {
                counts.sampled_frees += 1;
                counts.free_objects_est += w;
                counts.free_bytes_est += size as f64 * w;
            }
        }
        SiteCopy {
            frames,
            counts,
            overflow: false,
            labels: crate::labels::LabelSetId::NONE,
            serial: 0,
            id: 0,
        }
    }

    /// The records of a text profile, `[inuse objects, inuse bytes, alloc
    /// objects, alloc bytes]` each.
    fn records(text: &str) -> Vec<[i64; 4]> {
        text.lines()
            .skip(1)
            .take_while(|l| !l.starts_with("# heapprof stats"))
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let v: Vec<i64> = l
                    .split(" @")
                    .next()
                    .unwrap()
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|t| !t.is_empty())
                    .map(|t| t.parse().unwrap())
                    .collect();
                v.try_into().unwrap()
            })
            .collect()
    }

    /// A labelled site's record is followed by its labels, and the header
    /// says pprof does not read them; an unlabelled profile has neither.
    #[test]
    fn labels_follow_their_record_and_the_header_says_pprof_skips_them() {
        let set = crate::labels::table::merge(
            crate::labels::LabelSetId::NONE,
            &[("tenant", "text-acme"), ("note", "a \"quoted\" value")],
            crate::labels::table::Kind::Program,
        );
        let mut labelled = site(vec![0x5000], &[(64, 1, false)]);
        labelled.labels = set;
        let write_out = |sites: &[SiteCopy]| {
            let mut out = Vec::new();
            write(
                &mut out,
                sites,
                1,
                &crate::Stats::default(),
                &pprof::Options::default(),
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        let text = write_out(&[labelled, site(vec![0x6000], &[(64, 1, false)])]);
        assert!(text.contains(&format!("# {LABELS_NOTE}\n")), "{text}");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# labels:"))
            .collect();
        assert_eq!(
            lines,
            [r#"# labels: {"note":"a \"quoted\" value", "tenant":"text-acme"}"#],
            "{text}"
        );
        assert_eq!(records(&text).len(), 2);
        let plain = write_out(&[site(vec![0x6000], &[(64, 1, false)])]);
        assert!(
            !plain.contains("# labels:") && !plain.contains(LABELS_NOTE),
            "{plain}"
        );
    }

    /// Samples taken at rate 1 and at 512 KiB, of mixed sizes, some freed:
    /// each site's record is its estimates, the header their sum, and
    /// sites of one small sample each are all there. pprof reads the
    /// numbers as written under `heap/2`.
    #[test]
    fn records_are_the_estimates_through_rate_changes() {
        let rate = 512 * 1024;
        let mut sites: Vec<SiteCopy> = (0..1025)
            .map(|i| site(vec![0x1000 + 16 * i], &[(64, 1, false)]))
            .collect();
        sites.push(site(
            vec![0x9000],
            &[(3 << 20, rate, false), (64, rate, true), (64, rate, true)],
        ));
        let mut out = Vec::new();
        let options = pprof::Options::default();
        write(&mut out, &sites, rate, &crate::Stats::default(), &options).unwrap();
        let text = String::from_utf8(out).unwrap();
        let got = records(&text);
        assert_eq!(got.len(), sites.len(), "every site has its record");
        let mixed = &sites[1025].counts;
        let w64 = crate::sample::weight(64, rate);
        let w3m = crate::sample::weight(3 << 20, rate);
        assert_eq!(
            got[0],
            [
                w3m.round() as i64,
                (w3m * (3 << 20) as f64).round() as i64,
                mixed.alloc_objects_est.round() as i64,
                mixed.alloc_bytes_est.round() as i64
            ]
        );
        assert!((mixed.alloc_objects_est - (w3m + 2.0 * w64)).abs() < 1e-6);
        assert!(got[1..].iter().all(|r| *r == [1, 64, 1, 64]), "{text}");
        let total = got.iter().fold([0i64; 4], |t, v| {
            [0, 1, 2, 3].map(|i| t[i].saturating_add(v[i]))
        });
        assert!(
            text.starts_with(&format!(
                "heap profile: {}: {} [{}: {}] @ heap/2\n",
                total[0], total[1], total[2], total[3]
            )),
            "{text}"
        );
        assert!(text.contains(&format!("# estimated_live_bytes = {} ", total[1])));
        assert!(text.contains(&format!("# sample_rate = {rate}\n")));
    }

    /// The overflow entry's record has a frame, so that pprof shows its
    /// bytes under a node and not only in the header's total.
    #[test]
    fn the_overflow_record_has_a_frame() {
        let mut full = site(Vec::new(), &[(4096, 1, false)]);
        full.overflow = true;
        let mut out = Vec::new();
        let options = pprof::Options::default();
        write(&mut out, &[full], 1, &crate::Stats::default(), &options).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(&format!("1: 4096 [1: 4096] @ {OVERFLOW_ADDRESS:#x}\n")),
            "{text}"
        );
        assert!(text.contains(pprof::OVERFLOW_FUNCTION), "{text}");
    }

    /// Labels are JSON strings: control characters as `\u` escapes, which
    /// Rust's `{:?}` would write as `\u{1}`.
    #[test]
    fn labels_are_json_strings() {
        assert_eq!(
            Json("a\u{1}\"\\\n\u{7f}é\u{301}").to_string(),
            "\"a\\u0001\\\"\\\\\\n\\u007fé\u{301}\""
        );
    }

    #[test]
    fn a_frame_without_a_file_shows_none() {
        let frame = |file: &str, line| symbolize::Symbol {
            name: "app::f".into(),
            system_name: "_ZN3app1f17h0123456789abcdefE".into(),
            file: file.into(),
            line,
        };
        let mut out = Vec::new();
        write_frame(&mut out, 0x10, &frame("", 0)).unwrap();
        write_frame(&mut out, 0x20, &frame("src/f.rs", 7)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "#\t0x10\tapp::f\n#\t0x20\tapp::f\tsrc/f.rs:7\n"
        );
    }

    #[inline(never)]
    fn a_named_function() -> usize {
        std::hint::black_box(3)
    }

    /// `addresses_only`: the record's addresses, a `?` for each frame's
    /// name, no lookup; the same site named otherwise.
    #[test]
    fn addresses_only_names_nothing() {
        let here = a_named_function as *const () as usize + 1;
        let sites = [site(vec![here], &[(64, 1, false)])];
        let text = |addresses_only| {
            let options = pprof::Options {
                addresses_only,
                ..pprof::Options::default()
            };
            let mut out = Vec::new();
            write(&mut out, &sites, 1, &crate::Stats::default(), &options).unwrap();
            String::from_utf8(out).unwrap()
        };
        let before = symbolize::RESOLVED.with(std::cell::Cell::get);
        let bare = text(true);
        assert_eq!(symbolize::RESOLVED.with(std::cell::Cell::get), before);
        assert!(bare.contains(&format!("@ {here:#x}\n")), "{bare}");
        assert!(bare.contains(&format!("#\t{:#x}\t?\n", here - 1)), "{bare}");
        assert!(!bare.contains("a_named_function"), "{bare}");
        let named = text(false);
        assert!(named.contains("a_named_function"), "{named}");
    }
}
