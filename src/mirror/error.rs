//! Why loading an image failed. Every variant carries the HTTP status the service answers with
//! (decided here, where the failure is made); `server` turns it into a response in one place.

use crate::upstream::FetchError;

/// A failed load, cloned to every coalesced waiter.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// The upstream (or the policy in front of it) failed: see [`FetchError::status`].
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The upstream answered 404/410 within `negative_ttl_secs`.
    #[error("upstream answered {0} (remembered)")]
    Remembered(u16),
    /// `upstream.fetch = "known"` and no post links to this URL (no link record, not mirrored,
    /// not signed, no `allow_hosts`): refused before anyone is contacted.
    #[error("not a link of the blog's posts: this service fetches only links that `imgmirror rewrite` or `warm` recorded (upstream.fetch = \"known\")")]
    UnknownLink,
    /// The upstream's bytes are no image we know.
    #[error("upstream sent something that is not an image")]
    NotImage,
    /// The upstream's bytes are an image cut short (no end structure), or broken inside (a PNG
    /// that does not decode to its end).
    #[error("upstream sent an incomplete or broken image; not mirrored")]
    Incomplete,
    /// A 304 to a request that had no validators.
    #[error("upstream answered 304 to an unconditional request")]
    Bogus304,
    /// The route's options cannot be planned (unknown preset, sizes over the limits).
    #[error("{0}")]
    BadOptions(String),
    /// `security.presets_only`: the route asks for something other than the original, a preset
    /// or a responsive width (`mirror::plan::in_config`).
    #[error(
        "only the original, routes naming a preset and the responsive srcset widths are served here (security.presets_only)"
    )]
    NotAPreset,
    /// Decoding, resizing or encoding failed, with the status the transform chose.
    #[error(transparent)]
    Transform(#[from] crate::transform::TransformError),
    /// The transform's measured peak alone is over `image.memory_bytes`: it can never run.
    #[error("resizing this image needs {} MiB at its peak, more than image.memory_bytes ({} MiB)", .peak.div_ceil(1 << 20), .budget >> 20)]
    OverMemoryBudget {
        /// The transform's peak, in bytes.
        peak: u64,
        /// `image.memory_bytes`.
        budget: u64,
    },
    /// The shared mirror (S3) cannot be reached, so whether the image is mirrored is unknown.
    #[error("the mirror store is unavailable, try again shortly")]
    StoreUnavailable(String),
    /// The transform pool and its queue are full.
    #[error("too many images being resized, try again shortly")]
    Busy,
    /// Every client waiting for this transform went away before it ran (nobody sees this).
    #[error("abandoned: no client waits for it any more")]
    Abandoned,
    /// The service is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug: a task panicked.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl LoadError {
    /// The HTTP status the service answers with.
    pub fn status(&self) -> u16 {
        match self {
            LoadError::Fetch(e) => e.status(),
            LoadError::Remembered(_) => 404,
            LoadError::UnknownLink | LoadError::NotAPreset => 403,
            LoadError::NotImage => 415,
            LoadError::Bogus304 | LoadError::Incomplete => 502,
            LoadError::BadOptions(_) => 400,
            LoadError::Transform(e) => e.status(),
            LoadError::OverMemoryBudget { .. } => 422,
            LoadError::StoreUnavailable(_)
            | LoadError::Busy
            | LoadError::Abandoned
            | LoadError::ShuttingDown => 503,
            LoadError::Internal(_) => 500,
        }
    }
}

/// A place on the transform pool not taken: the service is stopping, or nobody waits any more.
impl From<crate::wait::NotAcquired> for LoadError {
    fn from(e: crate::wait::NotAcquired) -> LoadError {
        match e {
            crate::wait::NotAcquired::Closed => LoadError::ShuttingDown,
            crate::wait::NotAcquired::Unwanted => LoadError::Abandoned,
        }
    }
}
