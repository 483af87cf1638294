//! What the record module's unit tests share.
//!
//! The site table and the sampled set are one per process, and the tests
//! run on parallel threads: each test uses stacks, addresses and owners of
//! its own, and a test that needs the tables to stand still while it looks
//! holds [`TABLES`] exclusively.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Held shared by every test that adds to the process-wide site table or
/// sampled set, and exclusively by a test that needs them to stand still
/// while it looks (the site bound, byte counts, an empty filter slot).
static TABLES: RwLock<()> = RwLock::new(());

pub(super) fn tables_shared() -> RwLockReadGuard<'static, ()> {
    TABLES.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn tables_exclusive() -> RwLockWriteGuard<'static, ()> {
    TABLES.write().unwrap_or_else(PoisonError::into_inner)
}
