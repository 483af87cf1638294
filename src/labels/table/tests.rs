//! The label-set table, on tables of the tests' own (the process's one
//! is shared with every other test).

use super::*;

fn pending<'a>(labels: &[(&'a str, &'a str)]) -> Pending<'a> {
    let mut p = Pending::default();
    for &(k, v) in labels {
        p.set(k, v);
    }
    p
}

fn table() -> Box<Table> {
    Box::new(Table::new())
}

fn intern(t: &Table, labels: &[(&str, &str)]) -> LabelSetId {
    t.intern(pending(labels), Kind::Program, Kind::Program.bound())
}

/// The program's bound, with room for `sets` of its sets.
fn program_sets(sets: usize) -> Bound {
    Bound {
        sets,
        bytes: MAX_TABLE_BYTES,
    }
}

#[test]
fn a_set_is_stored_once_whatever_the_order() {
    let t = table();
    let a = intern(&t, &[("tenant", "acme"), ("route", "/x")]);
    let b = intern(&t, &[("route", "/x"), ("tenant", "acme")]);
    let c = intern(&t, &[("tenant", "acme")]);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.0 >= LabelSetId::FIRST_STORED && c.0 >= LabelSetId::FIRST_STORED);
    assert_eq!(t.stored_sets(), 2);
    assert_eq!(t.get(a), &[("route", "/x"), ("tenant", "acme")]);
    assert_eq!(t.get(c), &[("tenant", "acme")]);
    assert_eq!(intern(&t, &[]), LabelSetId::NONE);
    assert_eq!(t.get(LabelSetId::NONE), &[]);
    assert_eq!(
        t.get(LabelSetId(4000)),
        &[],
        "an id the table does not hold"
    );
}

#[test]
fn later_values_override_and_empty_ones_remove() {
    let mut p = Pending::of(&[("route", "/x"), ("tenant", "acme")]);
    p.set("tenant", "globex");
    p.set("route", "");
    p.set("", "no key");
    p.set("absent", "");
    p.set("zone", "eu");
    assert_eq!(p, pending(&[("tenant", "globex"), ("zone", "eu")]));
}

#[test]
fn long_keys_and_values_are_cut_visibly_at_a_character_boundary() {
    let t = table();
    // Two-byte characters: the cut must not split one.
    let long = "é".repeat(MAX_LABEL_BYTES);
    let key = "k".repeat(MAX_LABEL_BYTES + 1);
    let exact = "v".repeat(MAX_LABEL_BYTES);
    let id = intern(&t, &[(&key, &long), ("exact", &exact)]);
    let labels = t.get(id);
    assert_eq!(labels.len(), 2);
    assert_eq!(labels[0], ("exact", exact.as_str()), "at the bound: whole");
    let (k, v) = labels[1];
    for cut in [k, v] {
        assert!(cut.len() <= MAX_LABEL_BYTES, "{}", cut.len());
        assert!(cut.len() > MAX_LABEL_BYTES - 2 * TRUNCATED.len());
        assert!(cut.ends_with(TRUNCATED), "{cut}");
    }
    assert!(long.starts_with(v.strip_suffix(TRUNCATED).unwrap()));
    assert!(key.starts_with(k.strip_suffix(TRUNCATED).unwrap()));
}

#[test]
fn a_set_of_too_many_labels_keeps_the_first_and_says_so() {
    let t = table();
    let keys: Vec<String> = (0..MAX_LABELS_PER_SET + 5)
        .map(|i| format!("k{i:02}"))
        .collect();
    let labels: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
    let id = intern(&t, &labels);
    let stored = t.get(id);
    assert_eq!(stored.len(), MAX_LABELS_PER_SET);
    assert!(stored.contains(&TOO_MANY_LABELS), "{stored:?}");
    assert_eq!(stored[0], ("heapprof_overflow", "labels per set"));
    let kept: Vec<&str> = stored[1..].iter().map(|l| l.0).collect();
    let first: Vec<&str> = keys[..MAX_LABELS_PER_SET - 1]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(kept, first);
}

#[test]
fn past_the_set_bound_new_sets_overflow_and_old_ones_still_resolve() {
    let t = table();
    let stored = 8;
    let values: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let ids: Vec<LabelSetId> = values
        .iter()
        .map(|v| t.intern(pending(&[("n", v)]), Kind::Program, program_sets(stored)))
        .collect();
    assert_eq!(t.stored_sets(), stored);
    for (i, id) in ids.iter().enumerate() {
        if i < stored {
            assert_eq!(t.get(*id), &[("n", values[i].as_str())]);
        } else {
            assert_eq!(*id, LabelSetId::OVERFLOW, "set {i}");
        }
    }
    assert_eq!(
        t.get(LabelSetId::OVERFLOW),
        &[("heapprof_overflow", "label sets")]
    );
    // Known sets are still found when the table is full.
    assert_eq!(
        t.intern(pending(&[("n", "0")]), Kind::Program, program_sets(stored)),
        ids[0]
    );
}

#[test]
fn past_the_byte_bound_new_sets_overflow_and_the_count_is_exact() {
    let t = table();
    let max_bytes = 224 * 1024;
    let value = "v".repeat(100);
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i}")).collect();
    let mut overflowed = 0;
    let mut expected =
        std::mem::size_of_val(&t.slots) + std::mem::size_of_val(&t.index.lock().slots);
    for k in &keys {
        let bound = Bound {
            sets: MAX_LABEL_SETS,
            bytes: max_bytes,
        };
        let id = t.intern(pending(&[(k, &value)]), Kind::Program, bound);
        if id == LabelSetId::OVERFLOW {
            overflowed += 1;
        } else {
            expected += std::mem::size_of::<Stored>()
                + std::mem::size_of::<Label>()
                + k.len()
                + value.len();
        }
        assert!(t.bytes() <= max_bytes, "{} > {max_bytes}", t.bytes());
    }
    assert!(
        overflowed > 0 && t.stored_sets() > 300,
        "{overflowed}, {}",
        t.stored_sets()
    );
    assert_eq!(t.bytes(), expected);
}

#[test]
fn many_sets_with_colliding_slots_are_all_found() {
    let t = table();
    let values: Vec<String> = (0..MAX_LABEL_SETS).map(|i| format!("{i}")).collect();
    let ids: Vec<LabelSetId> = values.iter().map(|v| intern(&t, &[("n", v)])).collect();
    assert_eq!(t.stored_sets(), MAX_LABEL_SETS - 2);
    for (v, id) in values.iter().zip(&ids).take(MAX_LABEL_SETS - 2) {
        assert_eq!(intern(&t, &[("n", v)]), *id);
        assert_eq!(t.get(*id), &[("n", v.as_str())]);
    }
    assert!(
        ids[MAX_LABEL_SETS - 2..]
            .iter()
            .all(|&id| id == LabelSetId::OVERFLOW)
    );
}

/// Sets made for the `thread` label count against a bound of their own:
/// filling it takes none of the program's places, and a full program
/// bound leaves the thread label's places alone; a set is found whichever
/// kind stored it.
#[test]
fn thread_label_sets_have_places_of_their_own() {
    let t = table();
    let thread_bound = Bound {
        sets: 5,
        bytes: MAX_THREAD_TABLE_BYTES,
    };
    let names: Vec<String> = (0..8).map(|i| format!("conn-{i}")).collect();
    let threads: Vec<LabelSetId> = names
        .iter()
        .map(|n| t.intern(pending(&[("thread", n)]), Kind::Thread, thread_bound))
        .collect();
    assert!(threads[..5].iter().all(|&id| id != LabelSetId::OVERFLOW));
    assert!(threads[5..].iter().all(|&id| id == LabelSetId::OVERFLOW));
    let tenants: Vec<LabelSetId> = (0..6)
        .map(|i| {
            let tenant = format!("t{i}");
            t.intern(
                pending(&[("tenant", &tenant)]),
                Kind::Program,
                program_sets(6),
            )
        })
        .collect();
    assert!(tenants.iter().all(|&id| id != LabelSetId::OVERFLOW));
    assert_eq!(
        t.intern(pending(&[("tenant", "t6")]), Kind::Program, program_sets(6)),
        LabelSetId::OVERFLOW
    );
    // Both bounds full: stored sets are still found, by either kind.
    assert_eq!(
        t.intern(
            pending(&[("thread", "conn-0")]),
            Kind::Program,
            program_sets(6)
        ),
        threads[0]
    );
    assert_eq!(
        t.intern(pending(&[("tenant", "t0")]), Kind::Thread, thread_bound),
        tenants[0]
    );
    assert_eq!(t.stored_sets(), 11);
}

/// `is_merge` agrees with `merge` where it answers, and declines inputs
/// whose merge it does not reproduce.
#[test]
fn is_merge_recognizes_exactly_the_merge() {
    let t = table();
    let outer_labels = [("route", "/x"), ("tenant", "a")];
    let outer = t.get(intern(&t, &outer_labels));
    let merged = |inner: &[(&str, &str)]| {
        let mut p = Pending::of(outer);
        for &(k, v) in inner {
            p.set(k, v);
        }
        t.get(t.intern(p, Kind::Program, Kind::Program.bound()))
    };
    let inner = [("tenant", "b"), ("zone", "eu")];
    let result = merged(&inner);
    assert!(is_merge(result, outer, &inner));
    assert!(is_merge(outer, &[], &outer_labels));
    assert!(is_merge(outer, outer, &[]));
    // A different value, a missing or extra key, another outer set.
    assert!(!is_merge(result, outer, &[("tenant", "c"), ("zone", "eu")]));
    assert!(!is_merge(result, outer, &[("tenant", "b")]));
    assert!(!is_merge(
        result,
        outer,
        &[("tenant", "b"), ("zone", "eu"), ("k", "v")]
    ));
    assert!(!is_merge(result, &[("tenant", "a")], &inner));
    assert!(!is_merge(result, &[], &inner));
    // Inputs it leaves to `merge`: a key twice, empty or long text.
    let long = "v".repeat(MAX_LABEL_BYTES + 1);
    for declined in [
        vec![("tenant", "x"), ("tenant", "b"), ("zone", "eu")],
        vec![("tenant", "b"), ("zone", "eu"), ("", "v")],
        vec![("tenant", "b"), ("zone", "eu"), ("route", "")],
        vec![("tenant", "b"), ("zone", long.as_str())],
    ] {
        assert!(
            !is_merge(merged(&declined), outer, &declined),
            "{declined:?}"
        );
    }
}

/// The bounds the docs state (crate docs, `with_labels`, `Labeled`, README) are the
/// constants'.
#[test]
fn the_docs_state_the_bounds() {
    let sets = format!("{} {:03}", MAX_LABEL_SETS / 1000, MAX_LABEL_SETS % 1000);
    let mib = MAX_TABLE_BYTES >> 20;
    assert_eq!(mib << 20, MAX_TABLE_BYTES, "a whole number of MiB");
    let stated = [
        format!("at most {sets}\n//! distinct sets ({mib} MiB)"),
        format!("over {MAX_LABEL_BYTES} bytes is cut"),
        format!(
            "more than {MAX_LABELS_PER_SET} labels keeps {}",
            MAX_LABELS_PER_SET - 1
        ),
        format!("at most {sets}\n///   distinct sets ({mib} MiB)"),
        format!("label table cuts them (to {MAX_LABEL_BYTES} bytes)"),
    ];
    let docs = [
        include_str!("../../lib.rs"),
        include_str!("../mod.rs"),
        include_str!("../future.rs"),
        include_str!("../../../README.md"),
    ]
    .concat();
    for s in &stated {
        assert!(docs.contains(s.as_str()), "the docs do not say {s:?}");
    }
    let readme = include_str!("../../../README.md");
    for s in [
        format!("at most {sets} distinct sets in {mib} MiB"),
        format!("cut at {MAX_LABEL_BYTES}\nbytes"),
        format!("{MAX_LABELS_PER_SET} labels per set"),
    ] {
        assert!(readme.contains(s.as_str()), "README does not say {s:?}");
    }
}
