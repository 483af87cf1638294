//! The pprof message built from hand-made sites, its encoding, and the
//! trimming of stacks by name.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::output::symbolize::Symbol;
use crate::record::sites::SiteCounts;

/// What a profile shows of `frames`, by a trimmer of its own.
fn trim(frames: &[usize], resolved: &HashMap<usize, Symbols>) -> Vec<Shown> {
    Trimmer::new(resolved.clone()).trim(frames).to_vec()
}

/// Addresses in the first page, which nothing maps: they resolve to no
/// symbol and lie in no mapping.
const A: usize = 0x110;
const B: usize = 0x220;
const C: usize = 0x330;
const D: usize = 0x440;

/// Counts of sampled allocations and frees, each `(size, weight)`.
fn counts(allocs: &[(usize, f64)], frees: &[(usize, f64)]) -> SiteCounts {
    let mut c = SiteCounts::default();
    for &(size, w) in allocs {
        c.sampled_allocs += 1;
        c.sampled_alloc_bytes += size as u64;
        c.alloc_objects_est += w;
        c.alloc_bytes_est += size as f64 * w;
    }
    for &(size, w) in frees {
        c.sampled_frees += 1;
        c.free_objects_est += w;
        c.free_bytes_est += size as f64 * w;
    }
    c
}

fn site(frames: &[usize], counts: SiteCounts) -> SiteCopy {
    SiteCopy {
        frames: frames.to_vec(),
        counts,
        overflow: false,
        labels: LabelSetId::NONE,
        serial: 0,
        id: 0,
    }
}

/// Sites of every kind: two sharing their callers, one where nothing
/// happened, the overflow site, and a delta's with more freed than
/// allocated.
fn sites() -> Vec<SiteCopy> {
    let w = 1.4;
    vec![
        site(
            &[A, B, C],
            counts(&[(100, w), (100, w), (100, w)], &[(100, w)]),
        ),
        site(&[D, B, C], counts(&[(1 << 20, 1.0)], &[])),
        site(&[D, C], SiteCounts::default()),
        SiteCopy {
            frames: Vec::new(),
            counts: counts(&[(8, 1.0), (8, 1.0)], &[]),
            overflow: true,
            labels: LabelSetId::NONE,
            serial: 0,
            id: 0,
        },
        site(&[C], counts(&[], &[(50, 1.0)])),
    ]
}

fn string(p: &proto::Profile, i: i64) -> &str {
    &p.string_table[usize::try_from(i).unwrap()]
}

fn function_names(p: &proto::Profile, location_id: u64) -> Vec<&str> {
    let loc = &p.location[location_id as usize - 1];
    loc.line
        .iter()
        .map(|l| string(p, p.function[l.function_id as usize - 1].name))
        .collect()
}

#[test]
fn four_sample_types_in_gos_order() {
    let p = build(&sites(), Numbers::assumed(4096), Options::default());
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ]
    );
    let period = p.period_type.unwrap();
    assert_eq!(
        (string(&p, period.r#type), string(&p, period.unit)),
        ("space", "bytes")
    );
    assert_eq!(p.period, 4096);
    assert_eq!(p.default_sample_type, 0, "pprof's default: the last type");
    assert_eq!(p.duration_nanos, 0);
    assert!(p.time_nanos > 0);
}

/// Each sample's values are its site's estimates rounded, inuse the
/// allocations less the frees; a site where nothing happened has none.
#[test]
fn values_are_the_rounded_estimates() {
    let p = build(&sites(), Numbers::assumed(512 * 1024), Options::default());
    let values: Vec<&[i64]> = p.sample.iter().map(|s| &s.value[..]).collect();
    assert_eq!(
        values,
        [
            // 3 × 1.4 = 4.2 allocated, 1.4 freed: 2.8 live.
            &[4, 420, 3, 280][..],
            &[1, 1 << 20, 1, 1 << 20],
            &[2, 16, 2, 16],
            &[0, 0, -1, -50],
        ]
    );
    assert!(
        p.sample.iter().all(|s| s.label.is_empty()),
        "no bytes label"
    );
}

/// A labelled site's sample carries its labels as string labels (key and
/// value in the string table), the same whichever value pprof shows; the
/// same stack under another set is another sample.
#[test]
fn a_labelled_site_carries_its_labels_as_string_labels() {
    use crate::labels::table::Kind;
    let acme = crate::labels::table::merge(
        LabelSetId::NONE,
        &[("tenant", "pprof-acme"), ("route", "/p")],
        Kind::Program,
    );
    let globex = crate::labels::table::merge(
        LabelSetId::NONE,
        &[("tenant", "pprof-globex")],
        Kind::Program,
    );
    let mut a = site(&[A, B], counts(&[(100, 1.0)], &[]));
    a.labels = acme;
    let mut g = site(&[A, B], counts(&[(200, 1.0)], &[(200, 1.0)]));
    g.labels = globex;
    let p = build(&[a, g], Numbers::assumed(1), Options::default());
    let labels: Vec<Vec<(&str, &str)>> = p
        .sample
        .iter()
        .map(|s| {
            assert!(s.label.iter().all(|l| l.num == 0 && l.num_unit == 0));
            s.label
                .iter()
                .map(|l| (string(&p, l.key), string(&p, l.str)))
                .collect()
        })
        .collect();
    assert_eq!(
        labels,
        [
            vec![("route", "/p"), ("tenant", "pprof-acme")],
            vec![("tenant", "pprof-globex")],
        ]
    );
    assert_eq!(p.sample[0].value, [1, 100, 1, 100]);
    assert_eq!(p.sample[1].value, [1, 200, 0, 0]);
    assert_eq!(p.sample[0].location_id, p.sample[1].location_id);
}

/// The string table starts with "" and holds each string once; location
/// and function ids run 1, 2, … and every reference is to one of them;
/// one address is one location, whichever sites share it.
#[test]
fn tables_are_dense_and_shared() {
    let p = build(&sites(), Numbers::assumed(512 * 1024), Options::default());
    assert_eq!(p.string_table[0], "");
    let mut strings = p.string_table.clone();
    strings.sort();
    strings.dedup();
    assert_eq!(strings.len(), p.string_table.len(), "each string once");

    for (i, l) in p.location.iter().enumerate() {
        assert_eq!(l.id, i as u64 + 1);
        assert!(l.mapping_id as usize <= p.mapping.len());
        for line in &l.line {
            assert!((1..=p.function.len() as u64).contains(&line.function_id));
        }
    }
    for (i, f) in p.function.iter().enumerate() {
        assert_eq!(f.id, i as u64 + 1);
    }
    for (i, m) in p.mapping.iter().enumerate() {
        assert_eq!(m.id, i as u64 + 1);
    }
    let ids: Vec<&[u64]> = p.sample.iter().map(|s| &s.location_id[..]).collect();
    assert!(
        ids.iter()
            .flat_map(|s| s.iter())
            .all(|&id| (1..=p.location.len() as u64).contains(&id))
    );
    // A, B, C, D and the overflow location, each once.
    assert_eq!(p.location.len(), 5);
    assert_eq!(ids[0].len(), 3);
    assert_eq!(ids[0][1..], ids[1][1..], "callers B and C are shared");
    assert_ne!(ids[0][0], ids[1][0]);
    assert_eq!(ids[3], &[ids[0][2]][..], "C again");
    // The location of a return address is its call instruction.
    let addresses: Vec<u64> = ids[0]
        .iter()
        .map(|&id| p.location[id as usize - 1].address)
        .collect();
    assert_eq!(addresses, [A as u64 - 1, B as u64 - 1, C as u64 - 1]);
}

#[test]
fn the_overflow_site_is_one_named_location() {
    let p = build(&sites(), Numbers::assumed(512 * 1024), Options::default());
    let overflow = &p.sample[2];
    assert_eq!(overflow.location_id.len(), 1);
    assert_eq!(
        function_names(&p, overflow.location_id[0]),
        [OVERFLOW_FUNCTION]
    );
}

#[test]
fn options_set_the_default_type_the_comments_and_the_span() {
    let options = Options {
        default_sample_type: Some("alloc_space"),
        comments: vec!["first note".to_owned()],
        duration: Some(Duration::from_millis(30_500)),
        time: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        addresses_only: false,
        series_label_keys: None,
        change: true,
    };
    let p = build(&sites(), Numbers::assumed(512 * 1024), options);
    assert_eq!(string(&p, p.default_sample_type), "alloc_space");
    assert_eq!(p.duration_nanos, 30_500_000_000);
    assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
    let comments: Vec<&str> = p.comment.iter().map(|&c| string(&p, c)).collect();
    assert_eq!(comments[0], "first note", "the caller's notes first");
    assert!(
        comments[1].contains("sampling every 524288 bytes"),
        "{comments:?}"
    );
    assert!(
        comments
            .iter()
            .any(|c| c.contains("live sampled blocks in between")),
        "a change: {comments:?}"
    );

    let at_exit = build(&sites(), Numbers::assumed(512 * 1024), Options::at_exit());
    assert_eq!(string(&at_exit, at_exit.default_sample_type), "alloc_space");
    assert!(string(&at_exit, at_exit.comment[0]).contains("as the program ended"));
}

/// A function of this test binary, whose address the lookup would name.
#[inline(never)]
fn a_named_function() -> usize {
    std::hint::black_box(7)
}

/// `addresses_only`: the stacks' addresses in the executable's mapping,
/// with its build ID, and no names, no lookup, no flag claiming names.
#[test]
fn addresses_only_looks_nothing_up() {
    let here = a_named_function as *const () as usize + 1;
    let frames = [here, here + 4];
    let site = site(&frames, counts(&[(64, 1.0)], &[]));
    let before = symbolize::RESOLVED.with(std::cell::Cell::get);
    let options = Options {
        addresses_only: true,
        ..Options::default()
    };
    let p = build(
        std::slice::from_ref(&site),
        Numbers::assumed(512 * 1024),
        options,
    );
    assert_eq!(
        symbolize::RESOLVED.with(std::cell::Cell::get),
        before,
        "no address was looked up"
    );
    assert!(p.function.is_empty(), "{:?}", p.function);
    let addresses: Vec<u64> = p.sample[0]
        .location_id
        .iter()
        .map(|&id| p.location[id as usize - 1].address)
        .collect();
    assert_eq!(addresses, [here as u64 - 1, here as u64 + 3], "whole stack");
    let loc = &p.location[0];
    assert!(loc.line.is_empty());
    let mapping = &p.mapping[loc.mapping_id as usize - 1];
    assert_eq!(loc.mapping_id, 1, "the executable's mapping comes first");
    assert!(!string(&p, mapping.build_id).is_empty(), "a build ID");
    assert!(!mapping.has_functions && !mapping.has_line_numbers);

    // The same site named: the lookup this option saves.
    let named = build(&[site], Numbers::assumed(512 * 1024), Options::default());
    assert_eq!(
        symbolize::RESOLVED.with(std::cell::Cell::get),
        before + 2,
        "both addresses looked up"
    );
    let names = function_names(&named, named.sample[0].location_id[0]);
    assert!(
        names.iter().any(|n| n.contains("a_named_function")),
        "{names:?}"
    );
}

#[test]
fn encode_writes_the_message_gzipped() {
    let p = build(&sites(), Numbers::assumed(512 * 1024), Options::default());
    let mut out = Vec::new();
    encode(&p, &mut out).unwrap();
    assert_eq!(out[..2], [0x1f, 0x8b], "gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(proto::Profile::decode(&raw[..]).unwrap(), p);
}

/// A resolved map: each address with its frames' names, innermost first.
fn resolved(entries: &[(usize, &[&str])]) -> HashMap<usize, Symbols> {
    entries
        .iter()
        .map(|&(addr, names)| {
            let frames: Vec<Symbol> = names
                .iter()
                .map(|&name| Symbol {
                    name: name.to_owned(),
                    system_name: String::new(),
                    // Functions Rust or the C library make (`__rust_alloc`,
                    // C's `main`) have no file of the program's.
                    file: if name.contains("::") {
                        "/work/app/src/main.rs".to_owned()
                    } else {
                        String::new()
                    },
                    line: 7,
                })
                .collect();
            (addr, Arc::from(frames))
        })
        .collect()
}

fn shown(addr: usize, lines: (usize, usize)) -> Shown {
    Shown { addr, lines }
}

fn assert_start_up_frames_are_cut() {
    assert!(
        !crate::config::get().full_stacks,
        "HEAPPROF_FULL_STACKS=1 keeps start-up frames; these tests expect it unset"
    );
}

/// The allocation machinery goes from the leaf end, start-up from the root
/// end; the program's frames stay.
#[test]
fn trim_keeps_the_programs_frames() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["heapprof::record::alloc"]),
        (
            0x20,
            &["<heapprof::Profiler as core::alloc::global::GlobalAlloc>::alloc"],
        ),
        (0x30, &["__rust_alloc"]),
        (0x40, &["alloc::raw_vec::RawVec<T,A>::grow_one"]),
        (0x50, &["myprog::build_index"]),
        (0x60, &["myprog::main"]),
        (0x70, &["core::ops::function::FnOnce::call_once"]),
        (0x80, &["std::rt::lang_start::{{closure}}"]),
        (0x90, &["main"]),
        (0xa0, &["__libc_start_call_main"]),
    ]);
    let frames = [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0];
    assert_eq!(
        trim(&frames, &r),
        [shown(0x50, (0, 1)), shown(0x60, (0, 1))]
    );
}

/// Where machinery was inlined into the program's function, the address
/// stays and shows only the program's lines.
#[test]
fn trim_cuts_inlined_machinery_within_an_address() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (
            0x20,
            &["alloc::vec::Vec<T,A>::push", "myprog::fill", "myprog::run"],
        ),
        (0x30, &["myprog::main"]),
    ]);
    assert_eq!(
        trim(&[0x10, 0x20, 0x30], &r),
        [shown(0x20, (1, 3)), shown(0x30, (0, 1))]
    );
}

/// An address with no symbol stops both cuts: nothing is known of it.
#[test]
fn an_unknown_address_stops_the_cuts() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (0x30, &["myprog::main"]),
        (0x40, &["main"]),
    ]);
    let unknown = 0x99;
    assert_eq!(
        trim(&[0x10, unknown, 0x30], &r),
        [shown(unknown, (0, 0)), shown(0x30, (0, 1))]
    );
    assert_eq!(
        trim(&[0x30, unknown, 0x40], &r),
        [shown(0x30, (0, 1)), shown(unknown, (0, 0))]
    );
}

/// Without the C library's debug files, its process and thread entry
/// have no symbol: an address that calls start-up code is start-up too,
/// one that calls the program's code is not.
#[test]
fn an_unknown_address_that_calls_start_up_code_is_start_up() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (0x20, &["myprog::main"]),
        (0x30, &["std::rt::lang_start_internal"]),
        (0x40, &["main"]),
        (0x60, &["__libc_start_main"]),
        (0x70, &["_start"]),
        (0x80, &["myprog::worker"]),
        (0x90, &["std::sys::thread::unix::Thread::new::thread_start"]),
        (0xb0, &["clone3"]),
    ]);
    let (libc_main, start_thread, c_callback) = (0x51, 0xa1, 0xc1);
    assert_eq!(
        trim(&[0x10, 0x20, 0x30, 0x40, libc_main, 0x60, 0x70], &r),
        [shown(0x20, (0, 1))]
    );
    assert_eq!(
        trim(&[0x80, 0x90, start_thread, 0xb0], &r),
        [shown(0x80, (0, 1))]
    );
    assert_eq!(
        trim(&[0x80, c_callback, 0x90, start_thread, 0xb0], &r),
        [shown(0x80, (0, 1)), shown(c_callback, (0, 0))]
    );
}

/// A stack cut at its deepest keeps the cut's marker at its root, and
/// loses the start-up frames before it (a deep worker thread's runtime),
/// as a whole stack loses its root's; the program's frames before a cut
/// stay.
#[test]
fn a_cut_stack_keeps_its_marker_and_loses_the_start_up_before_it() {
    assert_start_up_frames_are_cut();
    use crate::output::symbolize::CUT_FUNCTION;
    use crate::record::stack::CUT;
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (0x20, &["myprog::task::{{closure}}"]),
        (0x30, &["tokio::runtime::task::raw::poll"]),
        (0x40, &["std::panicking::catch_unwind"]),
        (0x50, &["myprog::deep"]),
        (CUT, &[CUT_FUNCTION]),
    ]);
    assert_eq!(
        trim(&[0x10, 0x20, 0x30, 0x40, CUT], &r),
        [shown(0x20, (0, 1)), shown(CUT, (0, 1))]
    );
    assert_eq!(
        trim(&[0x10, 0x20, 0x50, CUT], &r),
        [shown(0x20, (0, 1)), shown(0x50, (0, 1)), shown(CUT, (0, 1))]
    );
}

/// A trimmer used for one stack after another trims each as a fresh one
/// does: nothing of a longer stack before is left in its buffers.
#[test]
fn a_reused_trimmer_trims_each_stack_on_its_own() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (0x20, &["myprog::main"]),
        (0x30, &["std::rt::lang_start_internal"]),
        (0x40, &["main"]),
        (0x80, &["myprog::worker", "myprog::inlined"]),
        (0x90, &["std::sys::thread::unix::Thread::new::thread_start"]),
    ]);
    let stacks: [&[usize]; 4] = [
        &[0x10, 0x20, 0x30, 0x40],
        &[0x80, 0x90],
        &[0x10, 0x80, 0x55, 0x20, 0x30],
        &[0x10],
    ];
    let mut trimmer = Trimmer::new(r.clone());
    for stack in stacks.iter().chain(stacks.iter().rev()) {
        assert_eq!(trimmer.trim(stack), trim(stack, &r), "{stack:x?}");
    }
}

/// A stack that is all machinery keeps it all; one whose only frames past
/// the machinery are start-up keeps those.
#[test]
fn trim_never_leaves_a_stack_empty() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (0x20, &["alloc::alloc::exchange_malloc"]),
        (0x30, &["std::rt::lang_start_internal"]),
        (0x40, &["main"]),
    ]);
    assert_eq!(
        trim(&[0x10, 0x20], &r),
        [shown(0x10, (0, 1)), shown(0x20, (0, 1))]
    );
    assert_eq!(
        trim(&[0x10, 0x30, 0x40], &r),
        [shown(0x30, (0, 1)), shown(0x40, (0, 1))]
    );
}

/// What the standard library allocates as it starts the process has none
/// of the program's frames: it keeps the
/// start-up frames that say where it was made. A stack with a frame of
/// the program's loses them, and so does one that passed std's hand-over
/// to the program.
#[test]
fn a_standard_library_start_up_allocation_keeps_its_start_up_frames() {
    assert_start_up_frames_are_cut();
    let std_frame = |name: &str, file: &str| Symbol {
        name: name.to_owned(),
        system_name: String::new(),
        file: format!("/rustc/0123/library/{file}"),
        line: 7,
    };
    let mut r = resolved(&[(0x10, &["__rust_alloc"]), (0x50, &["app::main"])]);
    r.insert(
        0x20,
        Symbols::from(vec![
            std_frame("std::io::stdio::stdout", "std/src/io/stdio.rs"),
            std_frame("std::sys::pal::unix::init", "std/src/sys/pal/unix/mod.rs"),
        ]),
    );
    r.insert(
        0x30,
        Symbols::from(vec![std_frame("std::rt::init", "std/src/rt.rs")]),
    );
    r.insert(
        0x40,
        Symbols::from(vec![std_frame(
            "std::rt::lang_start_internal",
            "std/src/rt.rs",
        )]),
    );
    assert_eq!(
        trim(&[0x10, 0x20, 0x30, 0x40], &r),
        [
            shown(0x20, (0, 2)),
            shown(0x30, (0, 1)),
            shown(0x40, (0, 1))
        ]
    );
    assert_eq!(
        trim(&[0x10, 0x20, 0x50, 0x40], &r),
        [shown(0x20, (0, 2)), shown(0x50, (0, 1))]
    );
    // Below std's hand-over to the program, std frames alone are the
    // program's call whose own frame a tail call took away.
    r.insert(
        0x60,
        Symbols::from(vec![std_frame(
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "std/src/sys/backtrace.rs",
        )]),
    );
    assert_eq!(trim(&[0x10, 0x20, 0x60, 0x40], &r), [shown(0x20, (0, 1))]);
}

/// The closure a test or a spawn wraps its function in goes with the
/// start-up frames; another function's closure stays.
#[test]
fn trim_drops_the_closure_around_the_root_function() {
    assert_start_up_frames_are_cut();
    let r = resolved(&[
        (0x10, &["__rust_alloc"]),
        (0x20, &["app::tests::grows"]),
        (0x30, &["app::tests::grows::{{closure}}"]),
        (0x40, &["core::ops::function::FnOnce::call_once"]),
        (0x50, &["test::run_test_in_process"]),
        (0x60, &["app::worker"]),
        (0x70, &["app::spawn_workers::{{closure}}"]),
    ]);
    assert_eq!(
        trim(&[0x10, 0x20, 0x30, 0x40, 0x50], &r),
        [shown(0x20, (0, 1))]
    );
    assert_eq!(
        trim(&[0x10, 0x60, 0x70, 0x40], &r),
        [shown(0x60, (0, 1)), shown(0x70, (0, 1))]
    );
}

#[test]
fn profile_times_outside_i64_nanoseconds_are_held_at_its_ends() {
    use std::time::UNIX_EPOCH;
    let second = Duration::from_secs(1);
    assert_eq!(unix_nanos(UNIX_EPOCH + second), 1_000_000_000);
    assert_eq!(unix_nanos(UNIX_EPOCH - second), -1_000_000_000);
    // 330 years either side of 1970 (2300, 1640) is past 292, what i64
    // nanoseconds hold.
    let years_300 = Duration::from_secs(300 * 365 * 86_400);
    assert_eq!(
        unix_nanos(UNIX_EPOCH + years_300 + years_300 / 10),
        i64::MAX
    );
    assert_eq!(
        unix_nanos(UNIX_EPOCH - years_300 - years_300 / 10),
        i64::MIN
    );
}

#[test]
fn series_keys_are_label_names_that_keep_keys_apart() {
    let key = |k: &str| series_key(k);
    assert_eq!(key("http.route").as_deref(), Some("http_route"));
    assert_eq!(key("9lives").as_deref(), Some("_9lives"));
    assert_eq!(key("é").as_deref(), Some("u00e9"));
    assert_eq!(key("😀").as_deref(), Some("U0001f600"));
    // Fixed widths: `éa` is not U+0E9A.
    assert_ne!(key("éa"), key("\u{e9a}"));
    assert_eq!(key("ключ").as_deref(), Some("u043au043bu044eu0447"));
    // Names the server sets are left out.
    for servers in ["service_name", "pyroscope_spy", "__name__", ".."] {
        assert_eq!(key(servers), None, "{servers}");
    }
}

/// Once a lookup has named split units without their debug info, every
/// profile with names says so; one with addresses only names nothing.
#[test]
fn profiles_say_when_split_units_are_named_without_their_debug_info() {
    let note = |addresses_only| {
        let options = Options {
            addresses_only,
            ..Options::at_exit()
        };
        let p = build(&sites(), Numbers::assumed(512 * 1024), options);
        p.comment
            .iter()
            .any(|&c| string(&p, c) == crate::output::symbolize::SPLIT_UNREAD_NOTE)
    };
    crate::output::symbolize::SPLIT_UNREAD.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(note(false));
    assert!(!note(true));
}
