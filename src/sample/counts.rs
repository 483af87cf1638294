//! What the samples taken at one site stand for: plain counts, kept by
//! the site table (`record/sites.rs`) and by a measure's tally
//! (`thread/measure.rs`).

/// What a site has seen. `*_est` are the unbiased estimates (sum of
/// weights, sum of size × weight); `sampled_*` are raw sample counts.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub(crate) struct SiteCounts {
    pub sampled_allocs: u64,
    pub sampled_alloc_bytes: u64,
    pub sampled_frees: u64,
    pub alloc_objects_est: f64,
    pub alloc_bytes_est: f64,
    pub free_objects_est: f64,
    pub free_bytes_est: f64,
}

impl SiteCounts {
    /// Adds a sampled allocation of `size` bytes standing for `weight`.
    pub(crate) fn add_alloc(&mut self, size: usize, weight: f64) {
        // Saturating: 2^18 sampled blocks of 64 TiB (address space a
        // wrapped allocator reserves lazily) reach 2^64 bytes, and an
        // overflow check here would abort inside the allocator.
        self.sampled_allocs = self.sampled_allocs.saturating_add(1);
        self.sampled_alloc_bytes = self.sampled_alloc_bytes.saturating_add(size as u64);
        self.alloc_objects_est += weight;
        self.alloc_bytes_est += size as f64 * weight;
    }

    /// These counts plus `other`'s.
    pub(crate) fn plus(&self, other: &SiteCounts) -> SiteCounts {
        SiteCounts {
            sampled_allocs: self.sampled_allocs.saturating_add(other.sampled_allocs),
            sampled_alloc_bytes: self
                .sampled_alloc_bytes
                .saturating_add(other.sampled_alloc_bytes),
            sampled_frees: self.sampled_frees.saturating_add(other.sampled_frees),
            alloc_objects_est: self.alloc_objects_est + other.alloc_objects_est,
            alloc_bytes_est: self.alloc_bytes_est + other.alloc_bytes_est,
            free_objects_est: self.free_objects_est + other.free_objects_est,
            free_bytes_est: self.free_bytes_est + other.free_bytes_est,
        }
    }

    /// These counts minus `earlier`'s (counts only grow, so each field of
    /// the result is what happened in between).
    pub(crate) fn minus(&self, earlier: &SiteCounts) -> SiteCounts {
        SiteCounts {
            sampled_allocs: self.sampled_allocs.saturating_sub(earlier.sampled_allocs),
            sampled_alloc_bytes: self
                .sampled_alloc_bytes
                .saturating_sub(earlier.sampled_alloc_bytes),
            sampled_frees: self.sampled_frees.saturating_sub(earlier.sampled_frees),
            alloc_objects_est: self.alloc_objects_est - earlier.alloc_objects_est,
            alloc_bytes_est: self.alloc_bytes_est - earlier.alloc_bytes_est,
            free_objects_est: self.free_objects_est - earlier.free_objects_est,
            free_bytes_est: self.free_bytes_est - earlier.free_bytes_est,
        }
    }

    /// Adds the free of such a sample.
    pub(crate) fn add_free(&mut self, size: usize, weight: f64) {
        self.sampled_frees = self.sampled_frees.saturating_add(1);
        self.free_objects_est += weight;
        self.free_bytes_est += size as f64 * weight;
    }
}
