//! The process around the profiler: what happens once, at the first
//! allocation, and around `fork`.

pub(crate) mod fork;
