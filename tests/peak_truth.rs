//! What a profile of the site table, live or peak, says is of one moment:
//! memory a thread moves from one function to another while the table is
//! copied is not seen at both; a peak profile states the rate and
//! exactness it was recorded with, and its size as its records add up;
//! the text peak's trailer counts the peak's sampled blocks. Each peak
//! case runs in a child of its own: a process keeps its largest peak.

use heapprof_testkit::child::{is_child, printed_number, run_child};
use heapprof_testkit::profile::{INUSE_SPACE, cum, decode, string};
use heapprof_testkit::proto::Profile;
use heapprof_testkit::watchdog::watchdog;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// The rate is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const BLOCK: usize = 64 << 10;
/// Blocks the mover thread holds at every moment, between its two sites.
const MOVED: usize = 16;
/// Distinct stacks made first, so that a copy of the table takes a while.
const DEPTH: u32 = 11;

#[inline(never)]
fn at_a() -> Vec<u8> {
    black_box(Vec::with_capacity(BLOCK))
}

#[inline(never)]
fn at_b() -> Vec<u8> {
    black_box(Vec::with_capacity(BLOCK))
}

/// One small block at one of `1 << levels` stacks, chosen by `bits`.
#[inline(never)]
fn left(bits: u32, levels: u32) -> Box<[u8; 24]> {
    match levels {
        0 => black_box(Box::new([0; 24])),
        _ if bits & 1 == 0 => black_box(left(bits >> 1, levels - 1)),
        _ => black_box(right(bits >> 1, levels - 1)),
    }
}

#[inline(never)]
fn right(bits: u32, levels: u32) -> Box<[u8; 24]> {
    match levels {
        0 => black_box(Box::new([1; 24])),
        _ if bits & 1 == 0 => black_box(left(bits >> 1, levels - 1)),
        _ => black_box(right(bits >> 1, levels - 1)),
    }
}

/// At rate 1, a thread keeps [`MOVED`] blocks, moving them one at a time
/// from `at_a` to `at_b` and back (a free, then an allocation: the two
/// together never hold more than `MOVED`). Every snapshot taken meanwhile
/// must show no more than that at the two: copied a stripe of the table
/// at a time, one site could be read before a move and the other after.
#[test]
fn a_snapshot_never_shows_more_than_was_live_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _watchdog = watchdog("one-moment snapshots", Duration::from_secs(300));
    let rate = heapprof::sample_rate();
    heapprof::set_sample_rate(1);
    let many: Vec<_> = (0..1u32 << DEPTH).map(|b| left(b, DEPTH)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (started, holding) = std::sync::mpsc::channel();
    let mover = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut a, mut b): (Vec<_>, Vec<_>) = ((0..MOVED).map(|_| at_a()).collect(), vec![]);
            started.send(()).unwrap();
            let mut moves = 0u64;
            while !stop.load(Relaxed) {
                while let Some(x) = a.pop() {
                    drop(x);
                    b.push(at_b());
                    moves += 1;
                }
                while let Some(x) = b.pop() {
                    drop(x);
                    a.push(at_a());
                    moves += 1;
                }
            }
            moves
        })
    };
    let most = (MOVED * BLOCK) as i64;
    holding.recv().unwrap();
    let mut seen = Vec::new();
    for _ in 0..40 {
        let s = heapprof::snapshot();
        seen.push(s.inuse_bytes_in("at_a") + s.inuse_bytes_in("at_b"));
    }
    stop.store(true, Relaxed);
    let moves = mover.join().unwrap();
    heapprof::set_sample_rate(rate);
    drop(many);
    println!("{moves} moves; at_a + at_b in 40 snapshots: {seen:?} (at most {most})");
    assert!(moves > 0);
    // The `Vec`s that hold the blocks are the mover's, not the two sites'.
    for &both in &seen {
        assert!(
            (most - BLOCK as i64..=most).contains(&both),
            "a snapshot showed {both} bytes at at_a and at_b; {most} were live at any moment, \
             at least {} ({seen:?})",
            most - BLOCK as i64
        );
    }
}

/// Blocks of the first, larger heap: large enough that at the default
/// rate nearly every one is sampled (each with odds 1 - e^-2), so the
/// sampled heap passes the 1 MiB a peak needs in every run.
const EARLY_BLOCK: usize = 1 << 20;

#[inline(never)]
fn hold_early() -> Vec<Vec<u8>> {
    (0..32).map(|_| vec![1u8; EARLY_BLOCK]).collect()
}

#[inline(never)]
fn hold_late() -> Vec<Vec<u8>> {
    (0..8).map(|_| vec![2u8; BLOCK]).collect()
}

fn peak_profile() -> Profile {
    let mut gz = Vec::new();
    heapprof::write_peak_profile(&mut gz).expect("a peak profile");
    decode(&gz)
}

fn comments(p: &Profile) -> Vec<String> {
    p.comment.iter().map(|&i| string(p, i).to_owned()).collect()
}

/// The size a peak profile's comment gives.
fn stated_size(p: &Profile) -> i64 {
    let c = comments(p)
        .into_iter()
        .find(|c| c.starts_with("heapprof peak profile"))
        .expect("the peak comment");
    let from = c.find("kept, ").expect("the size") + "kept, ".len();
    let words: Vec<&str> = c[from..].split_whitespace().collect();
    let number = if words[0] == "about" {
        words[1]
    } else {
        words[0]
    };
    number.parse().expect("a number of bytes")
}

fn total_inuse(p: &Profile) -> i64 {
    p.sample.iter().map(|s| s.value[INUSE_SPACE]).sum()
}

/// A peak recorded at rate 1 is exact, and says so after the rate goes
/// up; one recorded at the default rate is an estimate, and says so
/// after the rate goes to 1. Either way its size is its records' sum.
#[test]
fn a_peak_says_the_rate_it_was_recorded_at() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if is_child() {
        // The first rate is the environment's: in force from the first
        // allocation, so that no sample before it was taken at another.
        let then = std::env::var("THEN_RATE").unwrap().parse().unwrap();
        drop(black_box(hold_early()));
        heapprof::set_sample_rate(then);
        let late = hold_late();
        let p = peak_profile();
        drop(late);
        println!("period={}", p.period);
        println!("stated={}", stated_size(&p));
        println!("total={}", total_inuse(&p));
        println!("early={}", cum(&p, "hold_early", INUSE_SPACE));
        println!("late={}", cum(&p, "hold_late", INUSE_SPACE));
        let exact = comments(&p)
            .iter()
            .any(|c| c.contains("values are exact: every allocation"));
        let about = comments(&p)
            .iter()
            .any(|c| c.contains(" about ") && c.starts_with("heapprof peak"));
        println!("exact={}", exact as i64);
        println!("about={}", about as i64);
        return;
    }
    for (first, then) in [(1, 512 << 10), (512 << 10, 1)] {
        let (out, err) = run_child(
            "a_peak_says_the_rate_it_was_recorded_at",
            &[
                ("HEAPPROF_SAMPLE_RATE", &first.to_string()),
                ("THEN_RATE", &then.to_string()),
            ],
        );
        let n = |name: &str| printed_number(&out, &format!("{name}="));
        println!("recorded at {first}, written at {then}: {out}");
        assert_eq!(n("period"), first as i64, "{out}{err}");
        assert_eq!(
            n("stated"),
            n("total"),
            "the size stated is the records' sum: {out}"
        );
        assert_eq!(n("late"), 0, "nothing of the later, smaller heap: {out}");
        if first == 1 {
            // Exact: whole blocks (and, where `collect` is not a tail
            // call, the `Vec` of them), at least as many as a copy kept
            // within `HEAPPROF_PEAK_GROWTH` (10 %) of the 32 holds, and no
            // word of estimates.
            let early = n("early");
            let (blocks, rest) = (early / EARLY_BLOCK as i64, early % EARLY_BLOCK as i64);
            let vec = 32 * std::mem::size_of::<Vec<u8>>() as i64;
            assert!((29..=32).contains(&blocks), "{out}");
            assert!([0, vec].contains(&rest), "{out}");
            assert_eq!((n("exact"), n("about")), (1, 0), "{out}");
        } else {
            assert_eq!((n("exact"), n("about")), (0, 1), "{out}");
        }
    }
}

/// The text peak's trailer counts the peak's live sampled blocks, as the
/// binary peak's comment does, not those live when it is written, and
/// says its exact counters are of now.
#[cfg(feature = "http")]
#[test]
fn the_text_peak_counts_the_peaks_blocks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if is_child() {
        heapprof::set_sample_rate(1);
        drop(black_box(hold_early()));
        let binary = peak_profile();
        let text = heapprof::http::handle("/debug/pprof/peak", "debug=1");
        let text = String::from_utf8(text.body).unwrap();
        let trailer = |key: &str| -> i64 {
            let line = text.lines().find(|l| l.starts_with(key)).expect(key);
            line[key.len()..].trim().parse().unwrap()
        };
        let live_sampled_blocks = heapprof_testkit::profile::live_sampled_blocks(&binary);
        println!("binary={live_sampled_blocks}");
        println!("text={}", trailer("# live_sampled_blocks = "));
        println!("now={}", trailer("# live_bytes = "));
        let said_now = text
            .lines()
            .any(|l| l.starts_with("# heapprof stats now ("));
        println!("said_now={}", said_now as i64);
        return;
    }
    let (out, err) = run_child("the_text_peak_counts_the_peaks_blocks", &[]);
    let n = |name: &str| printed_number(&out, &format!("{name}="));
    assert!(n("binary") >= 32, "{out}{err}");
    assert_eq!(n("text"), n("binary"), "{out}");
    assert!(
        n("now") < (32 * EARLY_BLOCK) as i64,
        "the blocks were freed: {out}"
    );
    assert_eq!(n("said_now"), 1, "{out}");
}
