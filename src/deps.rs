//! What the service takes from the world outside its configuration: the clock and the name
//! resolver. Production uses [`Deps::default`] (the system clock, the system resolver behind the
//! SSRF guard); tests move time with a [`crate::clock::ManualClock`] and answer names without DNS
//! through a [`crate::upstream::Lookup`] of their own. Every constructor that needs either takes a
//! `Deps`, so there is one place to inject them.

use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::upstream::{Lookup, SystemLookup};

/// The clock and the name resolver, shared by every part of one service.
#[derive(Clone)]
pub struct Deps {
    /// Now, for freshness, expiry and the metrics' windows.
    pub clock: Arc<dyn Clock>,
    /// Name resolution for the upstream and archive clients (the SSRF guard checks its answers).
    pub lookup: Arc<dyn Lookup>,
}

impl Default for Deps {
    fn default() -> Deps {
        Deps {
            clock: Arc::new(SystemClock),
            lookup: Arc::new(SystemLookup),
        }
    }
}

impl Deps {
    /// These dependencies with another clock.
    pub fn clock(self, clock: Arc<dyn Clock>) -> Deps {
        Deps { clock, ..self }
    }

    /// These dependencies with another name resolver.
    pub fn lookup(self, lookup: Arc<dyn Lookup>) -> Deps {
        Deps { lookup, ..self }
    }
}
