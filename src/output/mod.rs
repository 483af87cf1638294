//! Output: one path from a profile source (live, peak, delta) to a format
//! (pprof, text, snapshot), with symbolization and the memory map.

pub(crate) mod mappings;
pub(crate) mod pprof;
pub(crate) mod proto;
pub(crate) mod snapshot;
pub(crate) mod symbolize;
pub(crate) mod text;
