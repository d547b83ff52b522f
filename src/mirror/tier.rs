//! Which tier answered an image request: what `X-Cache` says, and how the metrics count it.

use crate::metrics::{Answer, Found};

/// Which tier answered an image request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Memory cache: no disk, no upstream.
    Memory,
    /// The mirror on the local disk: no upstream.
    Disk,
    /// The shared mirror in S3 (then kept on the local disk): no upstream.
    S3,
    /// Needed the upstream (a fetch or a revalidation).
    Miss,
    /// The upstream failed; the mirrored copy was served.
    Stale,
    /// The origin was gone and a web archive's copy was fetched (and mirrored) now.
    Archive,
}

impl Tier {
    /// The `X-Cache` header value.
    pub fn header(self) -> &'static str {
        match self {
            Tier::Memory => "HIT-MEMORY",
            Tier::Disk => "HIT-DISK",
            Tier::S3 => "HIT-S3",
            Tier::Miss => "MISS",
            Tier::Stale => "STALE",
            Tier::Archive => "ARCHIVE",
        }
    }

    /// A hit is an answer that did not contact the upstream (memory, disk or S3). Stale answers
    /// count as misses: the upstream was contacted, and failed.
    pub fn is_hit(self) -> bool {
        matches!(self, Tier::Memory | Tier::Disk | Tier::S3)
    }

    /// This answer as the metrics count it; `coalesced` when it waited for another request's
    /// work.
    pub fn counted(self, coalesced: bool) -> Answer {
        let found = match self {
            Tier::Memory => Found::Memory,
            Tier::Disk => Found::Disk,
            Tier::S3 => Found::S3,
            Tier::Miss | Tier::Stale | Tier::Archive => Found::Upstream,
        };
        Answer {
            found,
            coalesced,
            stale: self == Tier::Stale,
        }
    }
}
