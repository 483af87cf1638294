//! The site table, driven with made-up stacks.
//!
//! The table is one per process and the tests run on parallel threads, so
//! each test uses stacks of its own (addresses no code has) and asserts on
//! its own sites only. The tests that need the whole table to stand still
//! (the site bound, the byte count) hold `record::tests::TABLES`
//! exclusively; the others hold it shared.

use super::*;
use crate::record::stack;
use crate::record::tests::{tables_exclusive, tables_shared};

/// A stack of `len` frames that no other test (and no code) has: `test`
/// names the test, `which` the stack within it.
fn stack_of(test: usize, which: usize, len: usize) -> Vec<usize> {
    (0..len)
        .map(|i| 0x7e57_0000_0000 | (test << 28) | (which << 12) | (i << 4))
        .collect()
}

fn alloc(frames: &[usize], size: usize, weight: f64) -> SiteId {
    record_alloc(frames, stack::hash(frames), LabelSetId::NONE, size, weight).id
}

/// Set by a test that holds the tables exclusively: a full table then
/// sends new stacks to the overflow sites, retiring none.
pub(super) static REUSE_OFF: AtomicBool = AtomicBool::new(false);

/// Turns retiring off until dropped.
struct NoReuse;

impl NoReuse {
    fn now() -> NoReuse {
        REUSE_OFF.store(true, Relaxed);
        NoReuse
    }
}

impl Drop for NoReuse {
    fn drop(&mut self) {
        REUSE_OFF.store(false, Relaxed);
    }
}

/// The site of `frames` in a fresh copy of the table.
fn copied(frames: &[usize]) -> Option<SiteCopy> {
    snapshot()
        .into_iter()
        .find(|s| !s.overflow && s.frames == frames)
}

#[test]
fn one_stack_is_one_site_that_accumulates() {
    let _tables = tables_shared();
    let frames = stack_of(1, 0, 5);
    let first = alloc(&frames, 100, 2.0);
    let second = alloc(&frames, 300, 0.5);
    assert_eq!(first, second);
    assert!(first.overflow_labels().is_none());
    let c = counts_of(first).unwrap();
    assert_eq!(c.sampled_allocs, 2);
    assert_eq!(c.sampled_alloc_bytes, 400);
    assert_eq!(c.alloc_objects_est, 2.5);
    assert_eq!(c.alloc_bytes_est, 100.0 * 2.0 + 300.0 * 0.5);
    assert_eq!(c.sampled_frees, 0);
    assert_eq!(c.free_bytes_est, 0.0);
}

#[test]
fn different_stacks_are_different_sites() {
    let _tables = tables_shared();
    let a = stack_of(2, 0, 4);
    let mut reversed = a.clone();
    reversed.reverse();
    let shorter = &a[..3];
    let ids = [
        alloc(&a, 8, 1.0),
        alloc(&reversed, 16, 1.0),
        alloc(shorter, 32, 1.0),
    ];
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    for (id, size) in ids.into_iter().zip([8, 16, 32]) {
        let c = counts_of(id).unwrap();
        assert_eq!((c.sampled_allocs, c.sampled_alloc_bytes), (1, size));
    }
}

#[test]
fn a_free_is_credited_to_its_own_site() {
    let _tables = tables_shared();
    let (a, b) = (stack_of(3, 0, 6), stack_of(3, 1, 6));
    let (ida, idb) = (alloc(&a, 64, 3.0), alloc(&b, 64, 3.0));
    alloc(&a, 64, 3.0);
    record_free(ida, 64, 3.0);
    let (ca, cb) = (counts_of(ida).unwrap(), counts_of(idb).unwrap());
    assert_eq!(ca.sampled_frees, 1);
    assert_eq!(ca.free_objects_est, 3.0);
    assert_eq!(ca.free_bytes_est, 192.0);
    assert_eq!(
        ca.alloc_objects_est - ca.free_objects_est,
        3.0,
        "one left live"
    );
    assert_eq!(cb.sampled_frees, 0, "the other site keeps its block");
    assert_eq!(cb.free_bytes_est, 0.0);
}

#[test]
fn a_snapshot_is_a_copy() {
    let _tables = tables_shared();
    let frames = stack_of(4, 0, 7);
    let id = alloc(&frames, 40, 1.5);
    let copy = copied(&frames).expect("the site is in the copy");
    assert_eq!(copy.counts, counts_of(id).unwrap());
    assert_eq!(copy.counts.sampled_allocs, 1);
    alloc(&frames, 40, 1.5);
    record_free(id, 40, 1.5);
    assert_eq!(copy.counts.sampled_allocs, 1, "the copy does not follow");
    let again = copied(&frames).unwrap();
    assert_eq!(again.counts.sampled_allocs, 2);
    assert_eq!(again.counts.sampled_frees, 1);
}

#[test]
fn delta_is_what_happened_in_between() {
    let _tables = tables_shared();
    let (old, new, idle) = (stack_of(5, 0, 3), stack_of(5, 1, 3), stack_of(5, 2, 3));
    let id = alloc(&old, 10, 1.0);
    alloc(&idle, 20, 1.0);
    let earlier = snapshot();
    alloc(&old, 10, 1.0);
    alloc(&old, 30, 2.0);
    record_free(id, 10, 1.0);
    alloc(&new, 50, 4.0);
    let d = delta(&snapshot(), &earlier);
    let of = |frames: &[usize]| {
        d.iter()
            .find(|s| s.frames == frames)
            .expect("every site of the later copy")
            .counts
    };
    let c = of(&old);
    assert_eq!((c.sampled_allocs, c.sampled_alloc_bytes), (2, 40));
    assert_eq!(c.alloc_objects_est, 3.0);
    assert_eq!(c.alloc_bytes_est, 70.0);
    assert_eq!((c.sampled_frees, c.free_bytes_est), (1, 10.0));
    let n = of(&new);
    assert_eq!(
        (n.sampled_allocs, n.alloc_bytes_est),
        (1, 200.0),
        "new: whole"
    );
    assert_eq!(of(&idle), SiteCounts::default(), "nothing happened there");
}

/// `delta` matches sites by stack and by being the overflow site: the
/// overflow site (no frames) is not a site with an empty stack.
#[test]
fn delta_keeps_the_overflow_site_apart() {
    let counts = |allocs: u64| SiteCounts {
        sampled_allocs: allocs,
        alloc_objects_est: allocs as f64,
        ..Default::default()
    };
    let site = |overflow, allocs| SiteCopy {
        frames: Vec::new(),
        counts: counts(allocs),
        overflow,
        labels: LabelSetId::NONE,
        serial: 0,
        id: 0,
    };
    let earlier = [site(true, 5), site(false, 2)];
    let later = [site(true, 7), site(false, 3)];
    let d = delta(&later, &earlier);
    assert_eq!(d.len(), 2);
    assert!(d[0].overflow && !d[1].overflow);
    assert_eq!(d[0].counts.sampled_allocs, 2);
    assert_eq!(d[0].counts.alloc_objects_est, 2.0);
    assert_eq!(d[1].counts.sampled_allocs, 1);
}

#[test]
fn minus_never_wraps_the_sample_counts() {
    let a = SiteCounts {
        sampled_allocs: 1,
        sampled_alloc_bytes: 8,
        sampled_frees: 0,
        alloc_objects_est: 1.0,
        ..Default::default()
    };
    let b = SiteCounts {
        sampled_allocs: 3,
        sampled_alloc_bytes: 24,
        sampled_frees: 2,
        alloc_objects_est: 3.0,
        ..Default::default()
    };
    let d = a.minus(&b);
    assert_eq!(
        (d.sampled_allocs, d.sampled_alloc_bytes, d.sampled_frees),
        (0, 0, 0)
    );
    assert_eq!(d.alloc_objects_est, -2.0, "estimates may go negative");
}

/// Past `max_sites`, a new stack goes to the overflow site of its label
/// set (and a known one still to its own); a stack whose frames would pass
/// the frame budget goes there too, and gives back the site it claimed.
#[test]
fn past_the_bound_new_sites_go_to_the_overflow_site() {
    let _tables = tables_exclusive();
    let _no_reuse = NoReuse::now();
    let max_sites = config::get().max_sites;
    let known = stack_of(6, 0, 4);
    let known_id = alloc(&known, 8, 1.0);
    let labelled = LabelSetId(7);
    let overflow_of = |labels: LabelSetId| counts_of(SiteId::overflow(labels)).unwrap();
    let (none_before, labelled_before) = (overflow_of(LabelSetId::NONE), overflow_of(labelled));
    let mut claimed = Claimed::now();
    let sites_before = claimed.sites;

    TABLE.sites.store(max_sites, Relaxed);
    let full = alloc(&stack_of(6, 1, 4), 100, 2.0);
    let frames = stack_of(6, 4, 4);
    let full_labelled = record_alloc(&frames, stack::hash(&frames), labelled, 30, 4.0).id;
    let still_known = alloc(&known, 8, 1.0);
    assert_eq!(TABLE.sites.load(Relaxed), max_sites, "no site claimed");
    TABLE.sites.store(sites_before, Relaxed);
    assert_eq!(full, SiteId::overflow(LabelSetId::NONE));
    assert_eq!(full_labelled, SiteId::overflow(labelled));
    assert_ne!(full, full_labelled, "each label set has its own");
    assert_eq!(still_known, known_id);
    assert!(overflowed());
    let overflow = overflow_of(LabelSetId::NONE);
    assert_eq!(overflow.sampled_allocs, none_before.sampled_allocs + 1);
    assert_eq!(
        overflow.alloc_bytes_est,
        none_before.alloc_bytes_est + 200.0
    );
    let overflow = overflow_of(labelled);
    assert_eq!(overflow.sampled_allocs, labelled_before.sampled_allocs + 1);
    assert_eq!(
        overflow.alloc_bytes_est,
        labelled_before.alloc_bytes_est + 120.0
    );
    record_free(full, 100, 2.0);
    record_free(full_labelled, 30, 4.0);
    assert_eq!(
        overflow_of(LabelSetId::NONE).sampled_frees,
        none_before.sampled_frees + 1
    );
    assert_eq!(
        overflow_of(labelled).sampled_frees,
        labelled_before.sampled_frees + 1
    );
    let copy = snapshot();
    let shown = copy.iter().filter(|s| s.overflow).collect::<Vec<_>>();
    assert_eq!(shown.len(), 2, "one overflow site per label set in a copy");
    assert!(shown.iter().all(|s| s.frames.is_empty()));
    assert!(shown.iter().any(|s| s.labels == labelled));
    assert!(shown.iter().any(|s| s.labels == LabelSetId::NONE));
    assert!(copy.iter().all(|s| s.frames != stack_of(6, 1, 4)));
    let copies = copies_of(&[(full_labelled.raw(), 0)], |_, _| SiteCounts::default());
    assert!(copies[0].overflow && copies[0].labels == labelled);

    let max_frames = max_sites * FRAMES_PER_SITE_BUDGET;
    TABLE.frames.store(max_frames - 2, Relaxed);
    let too_deep = alloc(&stack_of(6, 2, 3), 8, 1.0);
    assert_eq!(too_deep, SiteId::overflow(LabelSetId::NONE));
    assert_eq!(
        TABLE.sites.load(Relaxed),
        sites_before,
        "the claim is given back"
    );
    assert_eq!(TABLE.frames.load(Relaxed), max_frames - 2);
    let fits = alloc(&stack_of(6, 3, 2), 8, 1.0);
    assert_ne!(fits, SiteId::overflow(LabelSetId::NONE));
    (claimed.sites, claimed.frames) = (claimed.sites + 1, claimed.frames + 2);
    assert_eq!(TABLE.frames.load(Relaxed), max_frames);
    assert_eq!(TABLE.sites.load(Relaxed), sites_before + 1);
}

/// The table's claimed sites and frames, put back when dropped, so that a
/// test that set them near the bound leaves the table usable by the
/// others even if it fails.
struct Claimed {
    sites: usize,
    frames: usize,
}

impl Claimed {
    fn now() -> Claimed {
        Claimed {
            sites: TABLE.sites.load(Relaxed),
            frames: TABLE.frames.load(Relaxed),
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        TABLE.sites.store(self.sites, Relaxed);
        TABLE.frames.store(self.frames, Relaxed);
    }
}

/// The byte count kept as the table grows is what its vectors and maps
/// hold, and it grows with new sites.
#[test]
fn memory_bytes_is_what_the_stripes_hold() {
    let _tables = tables_exclusive();
    let held = || -> usize { TABLE.stripes.iter().map(|s| s.lock().bytes()).sum() };
    // Stacks that all land in one stripe, so that it must grow.
    let stripe_of = |frames: &[usize]| (stack::hash(frames) >> 32) as usize % STRIPES;
    let stacks: Vec<Vec<usize>> = (0..)
        .map(|which| stack_of(7, which, 10))
        .filter(|f| stripe_of(f) == 0)
        .take(200)
        .collect();
    let stripe_before = TABLE.stripes[0].lock().bytes();
    let before = memory_bytes();
    assert_eq!(before, held());
    for frames in &stacks {
        alloc(frames, 8, 1.0);
    }
    let after = memory_bytes();
    assert_eq!(after, held());
    let stripe_after = TABLE.stripes[0].lock().bytes();
    assert!(
        stripe_after > stripe_before,
        "{stripe_before} -> {stripe_after}"
    );
    assert_eq!(after - before, stripe_after - stripe_before);
    let s = TABLE.stripes[0].lock();
    let lens = s.sites.len() * std::mem::size_of::<StoredSite>()
        + s.frames.len() * std::mem::size_of::<usize>()
        + s.by_hash.len() * std::mem::size_of::<(u64, u32)>();
    assert!(stripe_after >= lens, "{stripe_after} < {lens}");
}

fn copied_site(frame: usize, counts: [f64; 4], sampled: [u64; 2]) -> SiteCopy {
    SiteCopy {
        frames: vec![frame],
        counts: SiteCounts {
            sampled_allocs: sampled[0],
            sampled_alloc_bytes: 0,
            sampled_frees: sampled[1],
            alloc_objects_est: counts[0],
            alloc_bytes_est: counts[1],
            free_objects_est: counts[2],
            free_bytes_est: counts[3],
        },
        overflow: false,
        labels: LabelSetId::NONE,
        serial: 0,
        id: 0,
    }
}

/// alloc = later - earlier; inuse = later's; sites with neither left out.
#[test]
fn alloc_delta_keeps_inuse_absolute() {
    let earlier = [
        copied_site(1, [10.0, 1000.0, 2.0, 200.0], [10, 2]),
        copied_site(2, [5.0, 500.0, 5.0, 500.0], [5, 5]),
        copied_site(3, [4.0, 400.0, 0.0, 0.0], [4, 0]),
    ];
    let later = [
        // 5 more allocated, 1 more freed: live 12 objects, 1200 bytes.
        copied_site(1, [15.0, 1500.0, 3.0, 300.0], [15, 3]),
        // nothing since, nothing live: left out.
        copied_site(2, [5.0, 500.0, 5.0, 500.0], [5, 5]),
        // nothing allocated since, still live: inuse kept, alloc 0.
        copied_site(3, [4.0, 400.0, 0.0, 0.0], [4, 0]),
        // new since `earlier`, freed again: alloc shown, inuse 0.
        copied_site(4, [2.0, 64.0, 2.0, 64.0], [2, 2]),
    ];
    let d = alloc_delta(&later, &earlier);
    let shown: Vec<(usize, [f64; 4])> = d
        .iter()
        .map(|s| {
            let c = &s.counts;
            (
                s.frames[0],
                [
                    c.alloc_objects_est,
                    c.alloc_bytes_est,
                    c.alloc_objects_est - c.free_objects_est,
                    c.alloc_bytes_est - c.free_bytes_est,
                ],
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (1, [5.0, 500.0, 12.0, 1200.0]),
            (3, [0.0, 0.0, 4.0, 400.0]),
            (4, [2.0, 64.0, 0.0, 0.0]),
        ]
    );
    // The sampled counts stay `later`'s: the live sampled blocks.
    assert_eq!(
        (d[0].counts.sampled_allocs, d[0].counts.sampled_frees),
        (15, 3)
    );
    // With nothing earlier, alloc values count from the start.
    let whole = alloc_delta(&later, &[]);
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[0].counts.alloc_bytes_est, 1500.0);
}

/// One stack under two label sets is two sites, each with its set, and a
/// delta keeps them apart.
#[test]
fn a_stack_under_two_label_sets_is_two_sites() {
    let _tables = tables_shared();
    let frames = stack_of(9, 0, 4);
    let hash = stack::hash(&frames);
    let (a, b) = (LabelSetId(3001), LabelSetId(3002));
    let first = record_alloc(&frames, hash, a, 100, 1.0).id;
    let second = record_alloc(&frames, hash, b, 200, 1.0).id;
    let none = record_alloc(&frames, hash, LabelSetId::NONE, 400, 1.0).id;
    assert_ne!(first, second);
    assert_ne!(first, none);
    assert_eq!(record_alloc(&frames, hash, a, 100, 1.0).id, first);
    let earlier = snapshot();
    record_alloc(&frames, hash, b, 200, 1.0);
    let later = snapshot();
    let of = |sites: &[SiteCopy], labels| {
        sites
            .iter()
            .find(|s| s.frames == frames && s.labels == labels)
            .map(|s| s.counts.sampled_alloc_bytes)
    };
    assert_eq!(of(&later, a), Some(200));
    assert_eq!(of(&later, b), Some(400));
    assert_eq!(of(&later, LabelSetId::NONE), Some(400));
    let d = delta(&later, &earlier);
    assert_eq!(of(&d, a), Some(0));
    assert_eq!(of(&d, b), Some(200));
    assert_eq!(of(&d, LabelSetId::NONE), Some(0));
}

/// A stripe's vectors and index are never blocks a thread cache holds
/// (`support/growth.rs`), from its first site on.
#[test]
fn a_stripes_blocks_start_past_the_thread_caches() {
    let _tables = tables_shared();
    let frames = stack_of(10, 0, 3);
    alloc(&frames, 8, 1.0);
    let stripe = TABLE.stripes[(stack::hash(&frames) >> 32) as usize % STRIPES].lock();
    let bytes = [
        stripe.sites.capacity() * std::mem::size_of::<StoredSite>(),
        stripe.frames.capacity() * std::mem::size_of::<usize>(),
        hash_map_bytes(&stripe.by_hash),
    ];
    assert!(
        bytes.iter().all(|&b| b > growth::THREAD_CACHE_MAX),
        "{bytes:?}"
    );
}

/// The packed copy (the peak's) unpacks to what a snapshot holds, and
/// is two blocks larger than the thread caches hold.
#[test]
fn a_packed_copy_unpacks_to_the_snapshot() {
    let _tables = tables_shared();
    let stacks: Vec<Vec<usize>> = (0..20)
        .map(|which| stack_of(11, which, 1 + which % 7))
        .collect();
    for (i, frames) in stacks.iter().enumerate() {
        alloc(frames, 8 * (i + 1), 1.5);
    }
    let packed = try_packed().unwrap();
    assert!(packed.sites.capacity() * std::mem::size_of::<PackedSite>() > growth::THREAD_CACHE_MAX);
    assert!(packed.frames.capacity() * std::mem::size_of::<usize>() > growth::THREAD_CACHE_MAX);
    let unpacked = packed.unpack();
    assert_eq!(unpacked.len(), packed.sites.len());
    for (i, frames) in stacks.iter().enumerate() {
        let from_packed: Vec<&SiteCopy> = unpacked.iter().filter(|s| s.frames == *frames).collect();
        assert_eq!(from_packed.len(), 1, "stack {i}");
        let site = from_packed[0];
        let fresh = copied(frames).unwrap();
        assert!(!site.overflow);
        assert_eq!(site.labels, fresh.labels);
        assert_eq!(site.counts.sampled_allocs, 1);
        assert_eq!(site.counts.sampled_alloc_bytes, 8 * (i as u64 + 1));
        assert_eq!(site.counts.alloc_bytes_est, fresh.counts.alloc_bytes_est);
    }
}

/// A site of `earlier` that `later` lacks retired into the overflow site
/// of its label set: a delta takes its earlier counts out of that overflow
/// site as well, so what it counted before is not counted again, and a
/// later site with its stack and another serial is new.
#[test]
fn deltas_take_retired_sites_out_of_the_overflow_site() {
    let counts = |allocs: u64, frees: u64| SiteCounts {
        sampled_allocs: allocs,
        sampled_frees: frees,
        alloc_objects_est: allocs as f64,
        free_objects_est: frees as f64,
        ..Default::default()
    };
    let site = |frames: &[usize], overflow, counts, serial| SiteCopy {
        frames: frames.to_vec(),
        counts,
        overflow,
        labels: LabelSetId::NONE,
        serial,
        id: 0,
    };
    let stack = stack_of(12, 0, 3);
    // Earlier: the site, 5 allocations and 3 frees; the overflow site, 2.
    let earlier = [
        site(&stack, false, counts(5, 3), 1),
        site(&[], true, counts(2, 0), 0),
    ];
    // Then: its last 2 blocks freed, it retired (5 and 5 into the
    // overflow site), 1 allocation at the overflow site, and its stack
    // back in a new site with 1 allocation.
    let later = [
        site(&[], true, counts(8, 5), 0),
        site(&stack, false, counts(1, 0), 9),
    ];
    let d = delta(&later, &earlier);
    let overflow = d.iter().find(|s| s.overflow).unwrap().counts;
    assert_eq!((overflow.sampled_allocs, overflow.sampled_frees), (1, 2));
    assert_eq!(overflow.alloc_objects_est - overflow.free_objects_est, -1.0);
    let new = d.iter().find(|s| !s.overflow).unwrap().counts;
    assert_eq!((new.sampled_allocs, new.sampled_frees), (1, 0));
    let allocated: f64 = d.iter().map(|s| s.counts.alloc_objects_est).sum();
    assert_eq!(allocated, 2.0, "the two allocations in between, once each");
    let a = alloc_delta(&later, &earlier);
    let allocated: f64 = a.iter().map(|s| s.counts.alloc_objects_est).sum();
    assert_eq!(allocated, 2.0, "alloc deltas too");
}

/// A stripe of `n` sites, site `i` last sampled at `i`; the sites in
/// `live` hold a block, the others nothing.
fn stripe_of(n: usize, live: impl Fn(usize) -> bool) -> Stripe {
    let mut stripe = Stripe::empty();
    for i in 0..n {
        let mut counts = SiteCounts::default();
        counts.add_alloc(64, 1.0);
        if !live(i) {
            counts.add_free(64, 1.0);
        }
        stripe.sites.push(StoredSite {
            frames_start: 0,
            frames_len: 1,
            labels: 0,
            counts,
            key: i as u64,
            serial: i as u64,
            last_alloc: i as u64,
        });
    }
    stripe
}

/// What one new site's search for room may look at: one search's worth.
fn search(stripe: &mut Stripe, but: Option<usize>) -> Option<usize> {
    stripe.least_recent_dead(but, &mut (RETIRE_LOOKS * RETIRE_WINDOWS))
}

/// The search for a site to retire looks at a window of the stripe from
/// its hand and takes the window's oldest site with nothing live; the
/// next search starts past it. One that goes round a stripe whose sites
/// all hold memory finds none, and the next returns at once, until a
/// site dies.
#[test]
fn the_search_for_a_site_to_retire_is_bounded() {
    let n = 3 * RETIRE_LOOKS;
    // The newest half of each window is dead: its oldest dead site is
    // its middle.
    let mut stripe = stripe_of(n, |i| i % RETIRE_LOOKS < RETIRE_LOOKS / 2);
    assert_eq!(search(&mut stripe, None), Some(RETIRE_LOOKS / 2));
    assert_eq!(stripe.hand, RETIRE_LOOKS);
    assert_eq!(search(&mut stripe, None), Some(RETIRE_LOOKS * 3 / 2));
    // A window with no dead site is passed over.
    let mut stripe = stripe_of(n, |i| i < RETIRE_LOOKS);
    assert_eq!(search(&mut stripe, None), Some(RETIRE_LOOKS));
    let mut stripe = stripe_of(n, |_| true);
    assert_eq!(search(&mut stripe, None), None);
    assert_eq!(stripe.none_dead_at, stripe.deaths);
    // A site freed behind the count's back is not found: the stripe is
    // known to have none, and is not searched again...
    stripe.sites[5].counts.add_free(64, 1.0);
    assert_eq!(search(&mut stripe, None), None);
    // ... until the count says a site died.
    stripe.hand = 7;
    stripe.deaths += 1;
    assert_eq!(search(&mut stripe, None), Some(5));
    // A search for frames to free passes over empty slots, and one that
    // goes round without finding a site that holds any is not repeated
    // until a site dies either.
    let mut stripe = stripe_of(n, |i| i != 3);
    stripe.sites[3].counts = SiteCounts::default();
    assert_eq!(search(&mut stripe, None), Some(3), "the empty slot");
    assert_eq!(search(&mut stripe, Some(3)), None);
    assert_eq!(stripe.none_holding_at, stripe.deaths);
    stripe.sites[9].counts.add_free(64, 1.0);
    assert_eq!(search(&mut stripe, Some(3)), None);
    stripe.deaths += 1;
    assert_eq!(search(&mut stripe, Some(3)), Some(9));
    let readme = include_str!("../../../README.md");
    let stated = format!("least recently sampled of the {RETIRE_LOOKS} its search looks at");
    assert!(readme.contains(&stated), "the README gives the window");
    let most = RETIRE_LOOKS * RETIRE_WINDOWS;
    let stated = format!("a search looks at\n{most} at most");
    assert!(readme.contains(&stated), "the README gives the bound");
}

/// Where sites with nothing live are far apart, a search gives up after
/// [`RETIRE_WINDOWS`] windows, and the next goes on from there: a sample
/// never looks at more, however many sites a stripe holds.
#[test]
fn a_search_in_a_big_stripe_gives_up_and_the_next_goes_on() {
    let windows = 2 * RETIRE_WINDOWS + 1;
    let dead = windows * RETIRE_LOOKS - 1;
    let mut stripe = stripe_of(windows * RETIRE_LOOKS, |i| i != dead);
    assert_eq!(search(&mut stripe, None), None);
    assert_eq!(stripe.hand, RETIRE_WINDOWS * RETIRE_LOOKS);
    assert_ne!(stripe.none_dead_at, stripe.deaths, "not a whole sweep");
    assert_eq!(search(&mut stripe, None), None);
    assert_eq!(search(&mut stripe, None), Some(dead));
    // Searches for frames to free share one budget, and look at no more.
    let mut looks = RETIRE_LOOKS * RETIRE_WINDOWS;
    stripe.hand = 0;
    assert_eq!(stripe.least_recent_dead(Some(0), &mut looks), None);
    assert_eq!(looks, 0);
    assert_eq!(stripe.least_recent_dead(Some(0), &mut looks), None);
    let after = RETIRE_WINDOWS * RETIRE_LOOKS;
    assert_eq!(stripe.hand, after, "no look without budget");
    let mut looks = RETIRE_LOOKS / 2 + 1;
    assert_eq!(stripe.least_recent_dead(Some(0), &mut looks), None);
    assert_eq!(
        stripe.hand,
        after + RETIRE_LOOKS / 2 + 1,
        "a window cut to the budget"
    );
}

/// In a stripe bigger than one search looks at, where every site holds
/// memory, the searches that together go round it find that out, and the
/// next returns at once, until a site dies.
#[test]
fn searches_that_go_round_a_big_stripe_together_stop_looking() {
    let n = 2 * RETIRE_WINDOWS * RETIRE_LOOKS + RETIRE_LOOKS / 2;
    let mut stripe = stripe_of(n, |_| true);
    for _ in 0..3 {
        assert_eq!(search(&mut stripe, None), None);
    }
    assert_eq!(stripe.none_dead_at, stripe.deaths, "round after three");
    let hand = stripe.hand;
    assert_eq!(search(&mut stripe, None), None);
    assert_eq!(stripe.hand, hand, "the next looks at nothing");
    // A death starts the count again.
    stripe.sites[hand].counts.add_free(64, 1.0);
    stripe.deaths += 1;
    assert_eq!(search(&mut stripe, None), Some(hand));
}
