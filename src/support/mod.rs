//! Runtime support with no profile data of its own: settings, stderr
//! reports, locks and their ranks, the reentrancy guard, the registry of
//! threads' exact counters.

pub(crate) mod lock;
pub(crate) mod reentry;
pub(crate) mod registry;
