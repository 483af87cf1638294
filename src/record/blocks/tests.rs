//! The sampled-block set and the two free filters, driven with made-up
//! addresses.
//!
//! The set is one per process and the tests run on parallel threads, so
//! each test uses addresses of its own, in the kernel's half of the
//! address space, which no allocator hands out (they are never
//! dereferenced), and owners no allocator has. Tests that need the set to
//! stand still (an empty filter slot, the mask, byte counts) hold
//! `record::tests::TABLES` exclusively; the others hold it shared.

use super::*;
use crate::record::tests::{tables_exclusive, tables_shared};
use crate::thread;

/// The `i`th page of test `test`'s address range.
fn addr(test: usize, i: usize) -> *mut u8 {
    (0xFFFF_8800_0000_0000usize | (test << 36) | (i * PAGE)) as *mut u8
}

fn entry(size: usize, page_aligned: bool, owner: usize) -> Entry {
    Entry {
        site: SiteId::NOT_UNWOUND,
        weight: 2.5,
        size,
        page_aligned,
        owner,
        origin: new_origin(),
    }
}

fn same(a: Entry, b: Entry) -> bool {
    (a.site, a.weight, a.size, a.page_aligned, a.owner, a.origin)
        == (b.site, b.weight, b.size, b.page_aligned, b.owner, b.origin)
}

const OWNER_A: usize = 0xA11C_0001;
const OWNER_B: usize = 0xA11C_0002;

#[test]
fn insert_get_remove_round_trip() {
    let _tables = tables_shared();
    let p = addr(1, 0);
    let e = entry(300, true, OWNER_A);
    assert!(get(p, OWNER_A).is_none());
    assert!(insert(p, e, true));
    assert!(same(get(p, OWNER_A).unwrap(), e));
    assert!(get(p, OWNER_B).is_none(), "another allocator's block");
    assert!(get(addr(1, 1), OWNER_A).is_none());
    assert!(same(remove(p).unwrap(), e));
    assert!(get(p, OWNER_A).is_none());
    assert!(remove(p).is_none());
}

#[test]
fn remove_owned_by_takes_one_allocators_blocks_only() {
    let _tables = tables_shared();
    let owner_a = OWNER_A + 0x100;
    let owner_b = OWNER_B + 0x100;
    for i in 0..20 {
        let owner = if i % 4 == 0 { owner_b } else { owner_a };
        assert!(insert(addr(2, i), entry(1000 + i, true, owner), true));
    }
    let mut gone: Vec<usize> = remove_owned_by(owner_a).iter().map(|e| e.size).collect();
    gone.sort_unstable();
    let expected: Vec<usize> = (0..20).filter(|i| i % 4 != 0).map(|i| 1000 + i).collect();
    assert_eq!(gone, expected);
    for i in 0..20 {
        let kept = get(addr(2, i), owner_b);
        assert_eq!(kept.is_some(), i % 4 == 0, "{i}");
        assert!(get(addr(2, i), owner_a).is_none(), "{i}");
    }
    assert!(remove_owned_by(owner_a).is_empty());
    assert_eq!(remove_owned_by(owner_b).len(), 5);
}

/// The second filter counts live blocks per slot: false for an address
/// whose slot holds none, true while one of its slot is live (its own or
/// another's: a false positive, which the set then answers).
#[test]
fn may_be_live_follows_the_live_blocks_of_a_slot() {
    let _tables = tables_exclusive();
    let a = addr(3, 0);
    let slot_a = live_slot(a as usize) as *const AtomicU8;
    let other_slot = |p: *mut u8| !std::ptr::eq(live_slot(p as usize), slot_a);
    let shares = (1..).map(|i| addr(3, i)).find(|&p| !other_slot(p)).unwrap();
    let apart = (1..).map(|i| addr(3, i)).find(|&p| other_slot(p)).unwrap();
    assert!(!may_be_live(a), "nothing live in its slot");
    assert!(!may_be_live(shares));
    assert!(insert(a, entry(64, true, OWNER_A), true));
    assert!(may_be_live(a));
    assert!(may_be_live(shares), "same slot");
    assert!(!may_be_live(apart), "another slot");
    assert!(insert(shares, entry(64, true, OWNER_A), true));
    assert!(remove(a).is_some());
    assert!(may_be_live(a), "one block still live in the slot");
    assert!(remove(shares).is_some());
    assert!(!may_be_live(a));
    assert!(!may_be_live(shares));
    // A removal of what is not in the set leaves the count alone.
    assert!(insert(a, entry(64, true, OWNER_A), true));
    assert!(remove(shares).is_none());
    assert!(may_be_live(a));
    assert!(remove(a).is_some());
    assert!(!may_be_live(a));
}

/// While a block the page test misses is live, every registered thread's
/// mask is 0 (every free looks blocks up); when the last goes, the mask is
/// the page test again. Page-aligned blocks and large ones change nothing.
#[test]
fn unaligned_blocks_open_the_free_filter_while_live() {
    let _tables = tables_exclusive();
    registry::register_thread(true);
    let mask = || thread::with(|l| l.filter_mask.load(SeqCst)).unwrap();
    assert_eq!(mask(), PAGE_MASK);
    let unaligned = |i| addr(4, i).wrapping_add(16);
    let small = 48;
    assert!(!may_contain(mask(), unaligned(0), small));

    assert!(insert(addr(4, 0), entry(small, true, OWNER_A), true));
    assert!(insert(unaligned(1), entry(LARGE + 1, false, OWNER_A), true));
    assert_eq!(mask(), PAGE_MASK, "the page test or the size catches these");

    assert!(insert(unaligned(2), entry(small, false, OWNER_A), true));
    assert_eq!(mask(), 0);
    assert!(may_contain(mask(), unaligned(2), small));
    assert!(insert(unaligned(3), entry(small, false, OWNER_A), true));
    assert!(remove(unaligned(2)).is_some());
    assert_eq!(mask(), 0, "one is still live");
    assert!(remove(unaligned(3)).is_some());
    assert_eq!(mask(), PAGE_MASK);
    assert!(!may_contain(mask(), unaligned(2), small));

    assert!(remove(addr(4, 0)).is_some());
    assert!(remove(unaligned(1)).is_some());
    assert_eq!(mask(), PAGE_MASK);
}

#[test]
fn only_unaligned_small_blocks_need_lookups() {
    assert!(entry(LARGE, false, 0).needs_lookups());
    assert!(entry(1, false, 0).needs_lookups());
    assert!(!entry(LARGE + 1, false, 0).needs_lookups());
    assert!(!entry(LARGE, true, 0).needs_lookups());
    assert!(!entry(1, true, 0).needs_lookups());
}

#[test]
fn page_alignment_by_rate_and_size() {
    let l = |size| std::alloc::Layout::from_size_align(size, 8).unwrap();
    assert!(page_aligns(l(1), PAGE_ALIGN_MIN_RATE));
    assert!(page_aligns(l(LARGE), PAGE_ALIGN_MIN_RATE));
    assert!(page_aligns(l(LARGE), 512 * 1024));
    assert!(!page_aligns(l(LARGE + 1), PAGE_ALIGN_MIN_RATE));
    assert!(!page_aligns(l(1), PAGE_ALIGN_MIN_RATE - 1));
    assert!(!page_aligns(l(1), 1));
}

#[test]
fn may_contain_truth_table() {
    let aligned = addr(5, 1);
    let unaligned = aligned.wrapping_add(8);
    // (mask, ptr, size) -> may be sampled
    let cases = [
        (PAGE_MASK, aligned, 16, true),
        (PAGE_MASK, aligned, LARGE + 1, true),
        (PAGE_MASK, unaligned, 16, false),
        (PAGE_MASK, unaligned, LARGE, false),
        (PAGE_MASK, unaligned, LARGE + 1, true),
        (0, unaligned, 16, true),
        (0, aligned, 16, true),
        (0, unaligned, LARGE + 1, true),
    ];
    for (mask, ptr, size, expected) in cases {
        assert_eq!(
            may_contain(mask, ptr, size),
            expected,
            "{mask:#x} {ptr:p} {size}"
        );
    }
}

/// The byte count is the sum of what each stripe's map measured when it
/// last grew, never below what it measures now, and it grows by what a
/// map grows.
#[test]
fn memory_bytes_follows_the_maps_growth() {
    let _tables = tables_exclusive();
    let counted = || -> usize { STRIPE_BYTES.iter().map(|b| b.load(SeqCst)).sum() };
    let measured = |i: usize| crate::support::growth::hash_map_bytes(&STRIPE_MAPS[i].0.lock());
    assert_eq!(memory_bytes(), counted());
    for (i, b) in STRIPE_BYTES.iter().enumerate() {
        assert!(b.load(SeqCst) >= measured(i), "stripe {i}");
    }
    let before = memory_bytes();
    let stripe_before = STRIPE_BYTES[0].load(SeqCst);
    // Addresses that all land in one stripe, so that its map must grow.
    let in_first = |p: &*mut u8| stripe_index(*p as usize) == 0;
    let ptrs: Vec<*mut u8> = (0..)
        .map(|i| addr(6, i))
        .filter(in_first)
        .take(300)
        .collect();
    for &p in &ptrs {
        assert!(insert(p, entry(8, true, OWNER_A), true));
    }
    let grown = measured(0);
    assert!(grown > stripe_before, "{stripe_before} -> {grown}");
    assert_eq!(STRIPE_BYTES[0].load(SeqCst), grown, "exact after growing");
    assert_eq!(memory_bytes() - before, grown - stripe_before);
    for &p in &ptrs {
        assert!(remove(p).is_some());
    }
    assert_eq!(
        memory_bytes() - before,
        grown - stripe_before,
        "maps keep their room"
    );
}

/// Blocks sampled and freed over and over, a few live at a time: the map
/// keeps its room (it reuses its slots), and so does the byte count.
#[test]
fn churn_leaves_memory_bytes_alone() {
    let _tables = tables_exclusive();
    let in_second = |p: &*mut u8| stripe_index(*p as usize) == 1;
    let mut ptrs = (0..).map(|i| addr(7, i)).filter(in_second);
    let mut live: std::collections::VecDeque<*mut u8> = ptrs.by_ref().take(20).collect();
    for &p in &live {
        assert!(insert(p, entry(8, true, OWNER_A), true));
    }
    let settled = memory_bytes();
    for p in ptrs.take(5000) {
        assert!(remove(live.pop_front().unwrap()).is_some());
        assert!(insert(p, entry(8, true, OWNER_A), true));
        live.push_back(p);
    }
    assert_eq!(memory_bytes(), settled);
    for p in live {
        assert!(remove(p).is_some());
    }
}

/// A stripe's map is never a block a thread cache holds
/// (`support/growth.rs`), from the first entry on.
#[test]
fn a_stripes_map_starts_past_the_thread_caches() {
    let _tables = tables_shared();
    let p = addr(8, 0);
    assert!(insert(p, entry(64, true, OWNER_A), true));
    let bytes = crate::support::growth::hash_map_bytes(&stripe(p as usize).lock());
    assert!(
        bytes > crate::support::growth::THREAD_CACHE_MAX,
        "{bytes} bytes"
    );
    assert!(remove(p).is_some());
}

/// An insert that may not grow the set fills the room a stripe has and
/// then fails without a trace; one that may grow then succeeds.
#[test]
fn an_insert_that_may_not_grow_stops_at_the_room_there_is() {
    let _tables = tables_exclusive();
    let stripe = stripe_index(addr(9, 0) as usize);
    let mut same_stripe = (0..)
        .map(|i| addr(9, i))
        .filter(|&p| stripe_index(p as usize) == stripe);
    let mut inserted = Vec::new();
    let refused = loop {
        let p = same_stripe.next().unwrap();
        if !insert(p, entry(64, true, OWNER_A), false) {
            break p;
        }
        inserted.push(p);
        assert!(inserted.len() < 1 << 20, "never refused");
    };
    assert!(
        get(refused, OWNER_A).is_none(),
        "a refused block left a trace"
    );
    assert!(insert(refused, entry(64, true, OWNER_A), true));
    inserted.push(refused);
    for p in inserted {
        assert!(remove(p).is_some());
    }
}
