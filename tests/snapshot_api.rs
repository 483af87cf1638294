//! The in-process API at sample rate 1 (every allocation recorded): exact
//! counts and bytes per function, exact process counters, deltas scoped to
//! a region of code, the -top table, the flame graph, and pprof bytes.

use std::hint::black_box;
use std::sync::Mutex;

use heapprof_testkit::profile::decode;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Tests in this binary run on parallel threads; the rate is process-wide,
/// so each test sets it under this lock.
static RATE: Mutex<()> = Mutex::new(());

#[inline(never)]
fn make_exact() -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(10);
    for _ in 0..10 {
        v.push(vec![1u8; 1000]);
    }
    black_box(v)
}

#[inline(never)]
fn make_and_drop() {
    for _ in 0..100 {
        black_box(vec![2u8; 333]);
    }
}

/// At rate 1: what `make_exact` keeps, and the delta over it and
/// `make_and_drop`. The caller holds `RATE` and sets the rate back.
fn exact_delta() -> (Vec<Vec<u8>>, heapprof::Snapshot) {
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let kept = make_exact();
    make_and_drop();
    (kept, heapprof::snapshot().delta(&before))
}

#[test]
fn exact_bytes_and_objects_at_rate_1() {
    let _rate = RATE.lock().unwrap();
    let (kept, d) = exact_delta();
    // Ten 1000-byte buffers plus the outer Vec's 10 × 24 bytes.
    assert_eq!(d.inuse_bytes_in("make_exact"), 10 * 1000 + 10 * 24);
    assert_eq!(d.inuse_objects_in("make_exact"), 11);
    assert_eq!(d.alloc_bytes_in("make_exact"), 10 * 1000 + 10 * 24);
    assert_eq!(d.alloc_objects_in("make_and_drop"), 100);
    assert_eq!(d.alloc_bytes_in("make_and_drop"), 100 * 333);
    assert_eq!(d.inuse_bytes_in("make_and_drop"), 0);
    d.assert_inuse_at_most("make_exact", 10_240);
    let too_tight = std::panic::catch_unwind(|| d.assert_inuse_at_most("make_exact", 10_239));
    assert!(too_tight.is_err(), "one byte over the limit must fail");

    // Frees show as negative in-use deltas.
    let mid = heapprof::snapshot();
    drop(kept);
    let freed = heapprof::snapshot().delta(&mid);
    assert_eq!(freed.inuse_bytes_in("make_exact"), -10_240);
    assert_eq!(freed.alloc_bytes_in("make_exact"), 0);

    // The leaf is the user's function, with a file and a line. (One site
    // of the ten buffers, or ten where an optimized build unrolled the
    // loop.)
    let site = d
        .sites()
        .iter()
        .find(|s| s.inuse_bytes > 0 && s.inuse_bytes % 1000 == 0)
        .expect("the 1000-byte buffers' site");
    assert!(
        site.frames[0].function.ends_with("make_exact"),
        "{:?}",
        site.frames[0]
    );
    assert!(site.frames[0].file.ends_with("tests/snapshot_api.rs") && site.frames[0].line > 0);
    heapprof::set_sample_rate(512 * 1024);
}

#[test]
fn stats_are_exact() {
    let _rate = RATE.lock().unwrap();
    let s0 = heapprof::stats();
    let b = black_box(vec![0u8; 123_456]);
    let s1 = heapprof::stats();
    drop(b);
    let s2 = heapprof::stats();
    // Other test threads may allocate meanwhile, so allow a little more.
    let grown = s1.allocated_bytes - s0.allocated_bytes;
    assert!((123_456..123_456 + 65_536).contains(&grown), "{grown}");
    assert!(s1.allocations > s0.allocations);
    assert!(s2.freed_bytes - s1.freed_bytes >= 123_456);
    assert!(s2.live_bytes() <= s2.allocated_bytes);
    assert!(s2.live_blocks() > 0, "the test harness holds memory");
    // Threads that exit keep their counts.
    let before = heapprof::stats();
    std::thread::spawn(|| black_box(vec![0u8; 1 << 20]))
        .join()
        .unwrap();
    let after = heapprof::stats();
    assert!(after.allocated_bytes - before.allocated_bytes >= 1 << 20);
    assert!(after.freed_bytes - before.freed_bytes >= 1 << 20);
}

#[inline(never)]
fn hold_for_flamegraph() -> Vec<String> {
    black_box((0..2000).map(|i| format!("flame {i:>40}")).collect())
}

#[test]
fn top_table_flamegraph_and_pprof() {
    let _rate = RATE.lock().unwrap();
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let held = hold_for_flamegraph();
    let d = heapprof::snapshot().delta(&before);
    heapprof::set_sample_rate(512 * 1024);

    // The strings are allocated in the closure, the outer Vec in the
    // function itself: together their flat bytes are the function's cum.
    // (Not necessarily the first rows: another thread of the harness may
    // allocate in the window, and at 512 KiB, which its countdown may
    // still be drawn at, one small sample stands for far more.)
    let top = d.top(20);
    assert!(
        top.iter()
            .any(|r| r.function.contains("hold_for_flamegraph")),
        "{top:?}"
    );
    let flat: i64 = top
        .iter()
        .filter(|r| r.function.contains("hold_for_flamegraph"))
        .map(|r| r.flat)
        .sum();
    assert_eq!(flat, d.inuse_bytes_in("hold_for_flamegraph"));
    assert_eq!(
        flat,
        2000 * 48 + 2000 * 24,
        "2000 48-byte strings and their Vec"
    );
    let table = d.to_string();
    assert!(
        table.contains("flat%") && table.contains("hold_for_flamegraph"),
        "{table}"
    );

    let mut svg = Vec::new();
    d.write_flamegraph(&mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("hold_for_flamegraph"));
    assert!(svg_elements(&svg) > 3);

    // write_pprof gives a decodable profile with the same numbers.
    let mut gz = Vec::new();
    d.write_pprof(&mut gz).unwrap();
    let p = decode(&gz);
    let inuse: i64 = p.sample.iter().map(|s| s.value[3]).sum();
    assert_eq!(inuse, d.total_inuse_bytes());
    drop(held);
}

/// The number of start tags in `svg`; panics if it is not well-formed XML
/// or not an SVG.
fn svg_elements(svg: &str) -> usize {
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut elements = 0;
    let mut root = None;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(e)) => {
                root.get_or_insert_with(|| e.name().as_ref().to_vec());
                elements += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("the flame graph is not well-formed XML: {e}\n{svg}"),
        }
    }
    assert_eq!(root.as_deref(), Some(&b"svg"[..]), "{svg}");
    elements
}

fn flamegraph_of(s: &heapprof::Snapshot, sample_type: heapprof::SampleType) -> String {
    let mut svg = Vec::new();
    s.write_flamegraph_of(sample_type, &mut svg)
        .expect("write_flamegraph_of");
    let svg = String::from_utf8(svg).unwrap();
    svg_elements(&svg);
    svg
}

/// Each sample type draws its own values: at rate 1 the box of a function
/// that allocated 100 blocks of 333 bytes and freed them all is 33,300
/// bytes wide in alloc_space, 100 allocations in alloc_objects, and absent
/// from inuse_space; the 11 blocks `make_exact` keeps are its width in
/// inuse_objects.
#[test]
fn flamegraph_of_each_sample_type() {
    use heapprof::SampleType;
    let _rate = RATE.lock().unwrap();
    let (kept, d) = exact_delta();
    heapprof::set_sample_rate(512 * 1024);

    let alloc_space = flamegraph_of(&d, SampleType::AllocSpace);
    assert!(alloc_space.contains("alloc_space"), "{alloc_space}");
    assert!(
        alloc_space.contains("make_and_drop (33,300 bytes,"),
        "{alloc_space}"
    );
    let alloc_objects = flamegraph_of(&d, SampleType::AllocObjects);
    assert!(
        alloc_objects.contains("make_and_drop (100 allocations,"),
        "{alloc_objects}"
    );
    let inuse_objects = flamegraph_of(&d, SampleType::InuseObjects);
    assert!(
        inuse_objects.contains("make_exact (11 allocations,"),
        "{inuse_objects}"
    );
    assert!(!inuse_objects.contains("make_and_drop"), "{inuse_objects}");
    let inuse_space = flamegraph_of(&d, SampleType::InuseSpace);
    assert!(
        inuse_space.contains("make_exact (10,240 bytes,"),
        "{inuse_space}"
    );
    assert!(!inuse_space.contains("make_and_drop"), "{inuse_space}");
    // The method without a sample type draws inuse_space.
    let mut default = Vec::new();
    d.write_flamegraph(&mut default).unwrap();
    assert!(
        String::from_utf8(default)
            .unwrap()
            .contains("make_exact (10,240 bytes,")
    );
    drop(kept);
}

trait Fill {
    fn fill(&self) -> Vec<Vec<u8>>;
}

impl Fill for [u8; 4] {
    #[inline(never)]
    fn fill(&self) -> Vec<Vec<u8>> {
        black_box((0..100).map(|_| self.repeat(100)).collect())
    }
}

/// A function whose name has `;` and spaces in it (`<[u8; 4] as
/// snapshot_api::Fill>::fill`) is one box of the flame graph, not two: `;`
/// ends a frame in the folded lines the graph is drawn from.
#[test]
fn a_name_with_a_semicolon_is_one_frame() {
    let _rate = RATE.lock().unwrap();
    heapprof::set_sample_rate(1);
    let before = heapprof::snapshot();
    let kept = black_box([7u8; 4]).fill();
    let d = heapprof::snapshot().delta(&before);
    heapprof::set_sample_rate(512 * 1024);

    let svg = flamegraph_of(&d, heapprof::SampleType::InuseSpace);
    let titles: Vec<&str> = svg
        .split("<title>")
        .skip(1)
        .filter_map(|t| t.split("</title>").next())
        .collect();
    // The function's own box, not its closure's.
    let ours: Vec<&&str> = titles
        .iter()
        .filter(|t| t.contains(" as snapshot_api::Fill&gt;::fill ("))
        .collect();
    assert_eq!(ours.len(), 1, "{titles:#?}");
    assert!(ours[0].starts_with("&lt;[u8\u{37e} 4]"), "{ours:?}");
    assert!(ours[0].contains("(42,400 bytes,"), "{ours:?}");
    assert!(
        !titles.iter().any(|t| t.starts_with("&lt;[u8 (")),
        "the name was cut at its ';': {titles:#?}"
    );
    drop(kept);
}

#[inline(never)]
fn grow_a_little() -> Vec<u8> {
    black_box(vec![1u8; 3000])
}

/// A delta in which one site shrank and another grew draws the growth,
/// and its subtitle says how much fell and was left out: a graph of the
/// 3 000 bytes that grew must not read as the change when 50 240 (ten
/// blocks of 5 000 and their list) fell.
#[test]
fn a_deltas_flame_graph_says_what_fell() {
    let _rate = RATE.lock().unwrap();
    heapprof::set_sample_rate(1);
    let held = keep_for_a_while();
    let before = heapprof::snapshot();
    drop(held);
    let grown = grow_a_little();
    let d = heapprof::snapshot().delta(&before);
    heapprof::set_sample_rate(512 * 1024);

    let svg = flamegraph_of(&d, heapprof::SampleType::InuseSpace);
    assert!(svg.contains("grow_a_little (3,000 bytes,"), "{svg}");
    assert!(!svg.contains("keep_for_a_while ("), "{svg}");
    // Grouped as inferno groups its counts, and at least the 50 240
    // bytes this test freed: other threads of the
    // harness free blocks recorded at rate 1 meanwhile (a few hundred
    // bytes in a run).
    let said = "Growth only: sites whose inuse_space fell, by ";
    let fell: u64 = svg
        .split_once(said)
        .and_then(|(_, rest)| {
            rest.split_once(" bytes in all")?
                .0
                .replace(',', "")
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no \"{said}N bytes in all\": {svg}"));
    assert!((50_240..60_000).contains(&fell), "{fell} bytes fell: {svg}");
    assert!(svg.contains(&format!("{said}50,")), "{svg}");
    // Where nothing fell, no subtitle.
    let alloc_space = flamegraph_of(&d, heapprof::SampleType::AllocSpace);
    assert!(!alloc_space.contains("Growth only"), "{alloc_space}");
    drop(grown);
}

/// A snapshot with nothing to draw still gives a well-formed SVG, one that
/// says so, and no error.
#[test]
fn empty_flamegraph_is_an_svg_that_says_so() {
    use heapprof::SampleType;
    let now = heapprof::snapshot();
    let nothing = now.delta(&now);
    for sample_type in [
        SampleType::InuseSpace,
        SampleType::InuseObjects,
        SampleType::AllocSpace,
        SampleType::AllocObjects,
    ] {
        let svg = flamegraph_of(&nothing, sample_type);
        assert!(
            svg.contains("No samples.") && svg.contains(sample_type.name()),
            "{svg}"
        );
        assert!(!svg.contains("ERROR"), "{svg}");
    }
    let mut svg = Vec::new();
    nothing.write_flamegraph(&mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.contains("No site in this delta has inuse_space above zero: none grew"),
        "{svg}"
    );
}

#[inline(never)]
fn keep_for_a_while() -> Vec<Vec<u8>> {
    black_box((0..10).map(|_| vec![3u8; 5000]).collect())
}

/// A delta in which only frees happened draws nothing, and says so: its
/// flame graph gives how far the live bytes fell, and its pprof comment
/// gives the live sampled blocks as a change. At rate 1, where a site of
/// nothing is not for want of samples.
#[test]
fn a_delta_of_frees_says_what_fell() {
    let _rate = RATE.lock().unwrap();
    heapprof::set_sample_rate(1);
    let kept = keep_for_a_while();
    let before = heapprof::snapshot();
    drop(kept);
    let freed = heapprof::snapshot().delta(&before);
    let only_frees: Vec<heapprof::Site> = freed
        .sites()
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|f| f.function.contains("keep_for_a_while"))
        })
        .cloned()
        .collect();
    assert!(
        only_frees.iter().map(|s| s.inuse_bytes).sum::<i64>() <= -50_000,
        "{only_frees:?}"
    );
    let mut gz = Vec::new();
    freed.write_pprof(&mut gz).unwrap();
    let p = decode(&gz);
    let comment = p
        .comment
        .iter()
        .map(|&i| p.string_table[i as usize].clone())
        .find(|c| c.contains("live sampled blocks"))
        .unwrap();
    assert!(
        comment.contains("live sampled blocks in between"),
        "{comment}"
    );
    heapprof::set_sample_rate(512 * 1024);
    drop(only_frees);
}
