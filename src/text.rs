//! The legacy text heap profile: what Go's `/debug/pprof/heap?debug=1`
//! prints, and what `go tool pprof` still reads.
//!
//! ```text
//! heap profile: 3: 1572864 [9: 4718592] @ heap/1048576
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
//! In this format the numbers are *sample counts*, and the reader scales
//! them up: `@ heap/2R` tells pprof that the profile was sampled every `R`
//! bytes (the header carries twice the rate, for historical reasons), and
//! pprof multiplies each pair (count, bytes) by `1/(1 - exp(-avg/R))`,
//! `avg` being that pair's bytes divided by its count. That factor assumes
//! one block size per record and one rate for the whole run; heapprof
//! weights each sample on its own (see `sampler.rs`), which stays unbiased
//! when a site mixes sizes or the rate changed. So heapprof writes its
//! unbiased estimates *divided by pprof's factor* for the estimate's own
//! average size; pprof's scaling then gives back heapprof's estimates (to
//! within the rounding of the count), and for a site of one block size the
//! count written is exactly the number of samples, as in Go.
//!
//! One catch: pprof computes the inuse pair's factor and the alloc pair's
//! factor separately, so for a site of mixed sizes (say one live 3 MiB
//! table and many freed small strings) a single record would print fewer
//! alloc bytes than inuse bytes, true once scaled but absurd to read. So a
//! site is written as up to two records with the same stack, which pprof
//! adds up: its live part, `n: b [n: b]`, and its freed part, `0: 0 [m:
//! c]`. Each line then reads sensibly on its own.
//!
//! # The memory map
//!
//! Rust executables are position independent, so the addresses mean
//! nothing without knowing where each object was loaded. A
//! `MAPPED_LIBRARIES:` section in `/proc/self/maps` form (the executable
//! segments only) follows the records; pprof reads it and can then
//! symbolize against the binary. The `# heapprof stats` lines come before
//! it: pprof skips `#` lines among the records but not inside the map.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::buckets::{Counts, Site};
use crate::symbolize::{self, Frames};
use crate::{mappings, profile};

/// Writes `sites`, sampled at `rate`, in the legacy text format, with the
/// exact counters of `stats` in the trailer.
pub(crate) fn write<W: Write>(
    mut w: W,
    sites: &[Site],
    rate: usize,
    stats: &crate::Stats,
    comments: &[String],
) -> io::Result<()> {
    let resolved = symbolize::resolve_all(sites.iter().flat_map(|s| s.frames.iter().copied()));
    let mut records: Vec<SiteRecords> = sites
        .iter()
        .filter(|s| s.counts.sampled_allocs > 0 || s.counts.sampled_frees > 0)
        .map(|s| SiteRecords::new(s, rate, &resolved))
        .collect();
    records.sort_by(|a, b| b.live[1].cmp(&a.live[1]).then(b.freed[3].cmp(&a.freed[3])));

    let total = records
        .iter()
        .flat_map(|r| [r.live, r.freed])
        .fold([0i64; 4], |t, v| {
            [t[0] + v[0], t[1] + v[1], t[2] + v[2], t[3] + v[3]]
        });
    // The header's period is twice the rate: pprof halves what follows
    // `heap/` (a convention it inherited from the first heap profilers).
    writeln!(
        w,
        "heap profile: {}: {} [{}: {}] @ heap/{}",
        total[0],
        total[1],
        total[2],
        total[3],
        // pprof parses it as an i64.
        rate.saturating_mul(2).min(i64::MAX as usize)
    )?;
    // What the profile is (a peak, say): `#` lines, which readers skip.
    for c in comments {
        writeln!(w, "# {c}")?;
    }
    for r in records.iter().filter(|r| r.live[2] > 0 || r.freed[2] > 0) {
        for v in [r.live, r.freed].iter().filter(|v| v[2] > 0) {
            write!(w, "{}: {} [{}: {}] @", v[0], v[1], v[2], v[3])?;
            for (addr, _) in &r.frames {
                write!(w, " {addr:#x}")?;
            }
            writeln!(w)?;
        }
        for &(addr, skip) in &r.frames {
            let frames = resolved.get(&addr).map_or(&[][..], |f| &f[..]);
            // The call instruction, as in the binary profile.
            let call = addr.saturating_sub(1);
            if frames.is_empty() {
                writeln!(w, "#\t{call:#x}\t?")?;
            }
            for f in frames.iter().skip(skip) {
                writeln!(w, "#\t{call:#x}\t{}\t{}:{}", f.name, f.file, f.line)?;
            }
        }
        if r.overflow {
            writeln!(w, "#\t0x0\t{}", profile::OVERFLOW_FUNCTION)?;
        }
        writeln!(w)?;
    }
    let estimated_inuse = records.iter().map(|r| r.inuse_estimate).sum();
    write_stats(&mut w, stats, rate, estimated_inuse)?;
    writeln!(w, "\nMAPPED_LIBRARIES:")?;
    for m in mappings::current() {
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
fn write_stats<W: Write>(
    w: &mut W,
    stats: &crate::Stats,
    rate: usize,
    estimated_inuse: f64,
) -> io::Result<()> {
    let (live_sampled, _) = crate::sampled::stats();
    writeln!(
        w,
        "# heapprof stats (exact counts, all threads, since start)"
    )?;
    writeln!(w, "# allocations = {}", stats.allocations)?;
    writeln!(w, "# deallocations = {}", stats.deallocations)?;
    writeln!(w, "# live_blocks = {}", stats.live_blocks())?;
    writeln!(w, "# allocated_bytes = {}", stats.allocated_bytes)?;
    writeln!(w, "# freed_bytes = {}", stats.freed_bytes)?;
    writeln!(w, "# live_bytes = {}", stats.live_bytes())?;
    writeln!(w, "# profiler_bytes = {}", stats.profiler_bytes)?;
    writeln!(w, "# heapprof sampling")?;
    writeln!(w, "# sample_rate = {rate}")?;
    writeln!(w, "# live_sampled_blocks = {live_sampled}")?;
    writeln!(
        w,
        "# estimated_live_bytes = {} (the records' inuse_space as pprof reads it)",
        estimated_inuse.round() as i64
    )?;
    Ok(())
}

/// A site's records, in pprof's sample scale: `[inuse objects, inuse
/// bytes, alloc objects, alloc bytes]` for its live part and its freed part
/// (see the module comment), and the frames to print.
struct SiteRecords {
    live: [i64; 4],
    freed: [i64; 4],
    /// The live bytes the site stands for (heapprof's estimate).
    inuse_estimate: f64,
    frames: Vec<(usize, usize)>,
    overflow: bool,
}

impl SiteRecords {
    fn new(site: &Site, rate: usize, resolved: &HashMap<usize, Frames>) -> SiteRecords {
        let c: &Counts = &site.counts;
        let (n, b) = sample_scale(
            c.alloc_objects_est - c.free_objects_est,
            c.alloc_bytes_est - c.free_bytes_est,
            rate,
        );
        let (m, f) = sample_scale(c.free_objects_est, c.free_bytes_est, rate);
        SiteRecords {
            live: [n, b, n, b],
            freed: [0, 0, m, f],
            inuse_estimate: c.alloc_bytes_est - c.free_bytes_est,
            frames: profile::trim(&site.frames, resolved),
            overflow: site.overflow,
        }
    }
}

/// An estimate (`objects`, `bytes`) divided by the factor pprof will
/// multiply it by, so that pprof's reading of the record is the estimate
/// (see the module comment). Negative or empty estimates, which only
/// rounding or a delta can produce, are written as `0: 0`: pprof rejects a
/// zero count with non-zero bytes, and negative allocation counts.
fn sample_scale(objects: f64, bytes: f64, rate: usize) -> (i64, i64) {
    if objects < 0.5 || bytes < 0.5 {
        return (0, 0);
    }
    let factor = pprof_factor(bytes / objects, rate);
    let count = (objects / factor).round().max(1.0);
    (count as i64, (bytes / factor).round() as i64)
}

/// pprof's `scaleHeapSample` factor for records of average size `avg`
/// sampled every `rate` bytes: `1 / (1 - exp(-avg/rate))`, and 1 when the
/// rate is 0 or 1 (everything recorded). The very weight heapprof gives a
/// sample of that size.
fn pprof_factor(avg: f64, rate: usize) -> f64 {
    crate::sampler::weight_of_bytes(avg, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pprof's reading of a record, as `scaleHeapSample` computes it.
    fn pprof_reads(count: i64, bytes: i64, rate: usize) -> (f64, f64) {
        let f = pprof_factor(bytes as f64 / count as f64, rate);
        (count as f64 * f, bytes as f64 * f)
    }

    #[test]
    fn pprof_scaling_gives_back_the_estimate() {
        let rate = 512 * 1024;
        // One sample of a 64-byte block stands for 1/p(64) blocks.
        let w = crate::sampler::weight(64, rate);
        assert_eq!(sample_scale(w, 64.0 * w, rate), (1, 64));
        // Ten samples of 1 MiB blocks (weight ~1.13 each).
        let w = crate::sampler::weight(1 << 20, rate);
        let (c, b) = sample_scale(10.0 * w, 10.0 * w * (1 << 20) as f64, rate);
        assert_eq!((c, b), (10, 10 << 20));
        let (objects, bytes) = pprof_reads(c, b, rate);
        assert!((objects / (10.0 * w) - 1.0).abs() < 1e-9);
        assert!((bytes / (10.0 * w * (1 << 20) as f64) - 1.0).abs() < 1e-9);
        // A mixed-size site: pprof's reading is the estimate to within the
        // rounding of the count. Rounding moves the count by a fraction
        // d <= 0.5/c; pprof's factor, whose elasticity in the average size
        // lies in [-1, 0], then moves by at most d too: bytes are off by at
        // most d, objects by at most 2d.
        let est = (
            20.0 * crate::sampler::weight(32, rate) + 20.0 * crate::sampler::weight(4096, rate),
            20.0 * 32.0 * crate::sampler::weight(32, rate)
                + 20.0 * 4096.0 * crate::sampler::weight(4096, rate),
        );
        let (c, b) = sample_scale(est.0, est.1, rate);
        let (objects, bytes) = pprof_reads(c, b, rate);
        let d = 0.5 / (c as f64 - 0.5);
        assert!((bytes / est.1 - 1.0).abs() <= d, "{bytes} vs {}", est.1);
        assert!(
            (objects / est.0 - 1.0).abs() <= 2.0 * d,
            "{objects} vs {}",
            est.0
        );
    }

    /// One live 3 MiB block and a hundred freed 64-byte ones at one site:
    /// two records, each with inuse <= alloc, which pprof adds up to the
    /// site's estimates.
    #[test]
    fn a_mixed_site_is_written_as_its_live_and_freed_parts() {
        let rate = 512 * 1024;
        let mut counts = Counts::default();
        let (big, small) = (3usize << 20, 64usize);
        let (wb, ws) = (
            crate::sampler::weight(big, rate),
            crate::sampler::weight(small, rate),
        );
        counts.sampled_allocs = 101;
        counts.sampled_alloc_bytes = (big + 100 * small) as u64;
        counts.alloc_objects_est = wb + 100.0 * ws;
        counts.alloc_bytes_est = big as f64 * wb + 100.0 * small as f64 * ws;
        counts.sampled_frees = 100;
        counts.free_objects_est = 100.0 * ws;
        counts.free_bytes_est = 100.0 * small as f64 * ws;
        let site = Site {
            frames: vec![0x1000, 0x2000],
            counts,
            overflow: false,
        };
        let mut out = Vec::new();
        write(&mut out, &[site], rate, &crate::Stats::default(), &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let records: Vec<[i64; 4]> = text
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| !l.starts_with('#'))
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
            .collect();
        assert_eq!(
            records,
            [[1, big as i64, 1, big as i64], [0, 0, 100, 6400]],
            "{text}"
        );
        assert!(
            text.starts_with(&format!(
                "heap profile: 1: {big} [101: {}] @ heap/{}",
                big + 6400,
                2 * rate
            )),
            "{text}"
        );
        let alloc_read: f64 = records
            .iter()
            .map(|r| pprof_reads(r[2], r[3], rate).1)
            .sum();
        assert!((alloc_read / counts.alloc_bytes_est - 1.0).abs() < 1e-9);
    }

    #[test]
    fn rate_one_and_empty_values() {
        assert_eq!(sample_scale(7.0, 700.0, 1), (7, 700));
        assert_eq!(sample_scale(0.0, 0.0, 4096), (0, 0));
        assert_eq!(sample_scale(-3.0, -300.0, 4096), (0, 0));
        assert_eq!(sample_scale(1e-9, 3e-7, 4096), (0, 0));
    }
}
