//! The service's clock: seconds since the Unix epoch, from a source tests can replace. The
//! mirror's freshness (max-age, revalidation, stale-if-error), the memory cache's expiry and the
//! metrics' time windows all read this one clock, handed to them through [`crate::deps::Deps`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, from a source tests can replace.
pub trait Clock: Send + Sync {
    /// Now, in whole seconds since the epoch.
    fn now_secs(&self) -> u64;

    /// Now, in milliseconds since the epoch (the names of replica events).
    fn now_millis(&self) -> u64 {
        self.now_secs().saturating_mul(1000)
    }
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to (tests).
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `start` seconds since the epoch.
    pub fn new(start: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start))
    }

    /// Moves the clock `secs` seconds forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
