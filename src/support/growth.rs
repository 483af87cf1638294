//! How heapprof's shared tables grow: from their first block on, past the
//! sizes that glibc's per-thread caches hold.
//!
//! The site table's stripes, the sampled set's maps, the spare pools and
//! the registry's lists are grown by whichever thread happens to sample
//! (or, for the registry, to start), so one thread often
//! grows or frees a block that another thread allocated. glibc does such
//! a `realloc` in the arena the block came from, and when the new size is
//! one its thread caches hold (at most [`THREAD_CACHE_MAX`] bytes), it
//! also moves spare blocks of that size from that arena into the *calling*
//! thread's cache; a `free` of such a block lands there too. The program
//! then allocates those blocks, and each later `realloc` of one, or free
//! past a full cache, locks the other thread's arena and refills the cache
//! from it. A service whose threads `realloc` a lot (serde_json's vectors)
//! feeds that loop on its own: once seeded, its worker threads share their
//! arenas and queue on the arena locks for the rest of the process's life.
//!
//! So every block of a shared table is larger than [`THREAD_CACHE_MAX`]
//! from its first allocation: its growth and its free go to arena bins,
//! never into a thread's cache. Past that, vectors grow by eighths, so
//! that a capacity never exceeds 9/8 of what was needed when it grew
//! (which keeps the site table within its bound, `record/sites.rs`), and
//! hash maps double. Maps keyed by address hash with [`spread`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// The largest request glibc's per-thread caches hold on 64-bit targets,
/// by default (`tcache_max_bytes`: 64 size classes, 16 bytes apart, from
/// 24 bytes; the `glibc.malloc.tcache_max` tunable can raise it).
pub(crate) const THREAD_CACHE_MAX: usize = 1032;

/// Makes room in `v` for `extra` more elements: at first for at least
/// enough to fill more than [`THREAD_CACHE_MAX`] bytes, later by at least
/// an eighth of its capacity. False if the allocator has no memory.
pub(crate) fn reserve_vec<T>(v: &mut Vec<T>, extra: usize) -> bool {
    if v.capacity() - v.len() >= extra {
        return true;
    }
    let least = (THREAD_CACHE_MAX + 1).div_ceil(std::mem::size_of::<T>().max(1));
    let capacity = (v.len() + extra)
        .max(v.capacity() + v.capacity() / 8)
        .max(least);
    v.try_reserve_exact(capacity - v.len()).is_ok()
}

/// Makes room in `m` for `extra` more entries; a map's first table holds
/// more than [`THREAD_CACHE_MAX`] bytes. False if the allocator has no
/// memory.
pub(crate) fn reserve_map<K: Eq + Hash, V, S: BuildHasher>(
    m: &mut HashMap<K, V, S>,
    extra: usize,
) -> bool {
    if m.capacity() - m.len() >= extra {
        return true;
    }
    let least = if m.capacity() == 0 {
        least_map_capacity::<K, V>()
    } else {
        0
    };
    m.try_reserve(extra.max(least)).is_ok()
}

/// The smallest capacity whose table is larger than [`THREAD_CACHE_MAX`].
fn least_map_capacity<K, V>() -> usize {
    let mut buckets = 8;
    while table_bytes::<K, V>(buckets) <= THREAD_CACHE_MAX {
        buckets *= 2;
    }
    buckets / 8 * 7
}

/// The bytes of a hash table with `buckets` buckets: an entry and a
/// control byte each, and a group's worth (16) more of control bytes.
fn table_bytes<K, V>(buckets: usize) -> usize {
    buckets * (std::mem::size_of::<(K, V)>() + 1) + 16
}

/// The bytes `m`'s table holds, from its capacity: hash maps have a
/// power-of-two number of buckets, 7/8 of them usable (all but one below
/// 8). Exact for a map that has removed nothing since it last grew; a
/// removal that leaves a tombstone lowers `capacity()`, and this, until
/// the next rehash.
pub(crate) fn hash_map_bytes<K, V, S>(m: &HashMap<K, V, S>) -> usize {
    let buckets = match m.capacity() {
        0 => return 0,
        c if c < 8 => c + 1,
        c => c / 7 * 8,
    };
    table_bytes::<K, V>(buckets)
}

/// A hash of an address for a `HashMap` or `HashSet`, which picks a
/// key's first bucket from the hash's low bits: a multiply alone leaves
/// those bits as aligned as the address (every page-aligned block would
/// start in the same bucket), so the product's high half, which every bit
/// of the address reaches, is folded into them.
pub(crate) fn spread(addr: u64) -> u64 {
    let h = addr.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_starts_past_the_thread_caches_and_grows_by_eighths() {
        let mut v: Vec<u64> = Vec::new();
        assert!(reserve_vec(&mut v, 1));
        assert!(v.capacity() * 8 > THREAD_CACHE_MAX, "{}", v.capacity());
        assert!(v.capacity() * 8 <= THREAD_CACHE_MAX + 8, "{}", v.capacity());
        let first = v.capacity();
        v.resize(first, 0);
        assert!(reserve_vec(&mut v, 1));
        assert!(v.capacity() >= first + first / 8, "{}", v.capacity());
        // Room already there: nothing moves.
        let (ptr, capacity) = (v.as_ptr(), v.capacity());
        assert!(reserve_vec(&mut v, 1));
        assert_eq!((v.as_ptr(), v.capacity()), (ptr, capacity));
        // A bigger request than the step is met whole.
        let len = v.len();
        assert!(reserve_vec(&mut v, 10 * capacity));
        assert!(v.capacity() >= len + 10 * capacity);
    }

    #[test]
    fn a_map_starts_past_the_thread_caches() {
        let mut small: HashMap<u64, u32> = HashMap::new();
        assert!(reserve_map(&mut small, 1));
        assert!(hash_map_bytes(&small) > THREAD_CACHE_MAX);
        let mut large: HashMap<usize, [u64; 4]> = HashMap::new();
        assert!(reserve_map(&mut large, 1));
        assert!(hash_map_bytes(&large) > THREAD_CACHE_MAX);
        // The least such table, not a larger one: half its buckets would
        // fit in a thread cache.
        for bytes in [hash_map_bytes(&small), hash_map_bytes(&large)] {
            assert!((bytes - 16) / 2 + 16 <= THREAD_CACHE_MAX, "{bytes}");
        }
    }

    /// `hash_map_bytes` counts what hashbrown allocates: a power of two of
    /// buckets, of which `capacity()` is the usable 7/8 (all but one below 8).
    #[test]
    fn hash_map_bytes_follows_hashbrown() {
        type M = HashMap<u64, u32>;
        let entry = std::mem::size_of::<(u64, u32)>();
        assert_eq!(hash_map_bytes(&M::new()), 0);
        let mut m = M::new();
        let mut seen = Vec::new();
        for i in 0..5000u64 {
            m.insert(i, 0);
            let bytes = hash_map_bytes(&m);
            assert_eq!((bytes - 16) % (entry + 1), 0, "{bytes}");
            let buckets = (bytes - 16) / (entry + 1);
            assert!(buckets.is_power_of_two(), "{buckets} at {}", m.capacity());
            let usable = if buckets <= 8 {
                buckets - 1
            } else {
                buckets / 8 * 7
            };
            assert_eq!(m.capacity(), usable, "{buckets} buckets");
            assert!(m.len() <= m.capacity());
            if seen.last() != Some(&buckets) {
                seen.push(buckets);
            }
        }
        assert_eq!(seen.first(), Some(&4));
        assert_eq!(seen.last(), Some(&8192));
        assert!(seen.windows(2).all(|w| w[1] == 2 * w[0]), "{seen:?}");
    }

    /// Page-aligned addresses start in many buckets, not one.
    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let buckets: std::collections::HashSet<u64> = (0..1024u64)
            .map(|i| super::spread(0x7f00_0000_0000 + i * 4096) & 1023)
            .collect();
        assert!(buckets.len() > 512, "{} of 1024 buckets", buckets.len());
    }
}
