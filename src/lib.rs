//! imgmirror: rewrite proxied image links in static-blog posts into local routes, then mirror,
//! resize, cache and serve those images even after the origin is gone.
//!
//! The modules, one concern each:
//!
//! * [`config`]: every setting, loaded from TOML and `IMGMIRROR_*` variables, validated once.
//! * [`route`]: the route contract, the only code that maps (upstream URL, options) to a local path
//!   and back, with optional HMAC signatures.
//! * [`rewrite`]: the batch rewriter: finds proxied and mirrored image links in posts and swaps them
//!   for routes, touching no other byte.
//! * [`upstream`]: the HTTP client for origins and its safety policy (SSRF guard, host globs,
//!   size and time limits).
//! * [`mirror`]: the image pipeline (memory → mirror → upstream (archives) → transform), used by
//!   the service and the commands alike.
//! * [`archive`]: rescue from web archives when an origin is gone: templates, timestamps and post
//!   dates, the archive client, what an archived answer must be.
//! * [`store`]: the durable mirror of originals and variants: the store trait, the filesystem
//!   and S3 backends, the local tier in front of S3, export/purge/disk budget.
//! * [`cache`]: the in-memory tiers: hot responses, remembered 404s, request coalescing.
//! * [`fsutil`]: atomic file writes and batches of them.
//! * [`wait`]: waiting for a permit only while someone still wants the work.
//! * [`transform`]: what an image is (sniffing) and resizing/re-encoding.
//! * [`metrics`]: the Prometheus registry and one method per event; `/stats` read from the same
//!   counters; the status page's history.
//! * [`server`]: the hyper service: endpoints, request guard, admin endpoints; it routes HTTP to
//!   [`mirror`].
//! * [`start`]: why starting failed, as a configuration error or a temporary one (exit 2 or 75).
//! * [`log`]: the log writer: lines batched in memory, written by a flusher thread.
//! * [`clock`]: the service's clock, injectable.
//! * [`deps`]: what the service takes from outside its configuration (clock, name resolver), in
//!   one value tests replace.
//! * [`cli`]: the command line; `main.rs` only calls [`cli::main`].
//!
//! A request to `imgmirror serve` reads top to bottom: route (`server::image`) → memory cache →
//! mirror (local disk, S3) → upstream (archives) → transform (`mirror`) → response
//! (`server::respond`).

#![warn(missing_docs)]

pub mod archive;
pub mod cache;
pub mod cdn;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deps;
pub mod fsutil;
pub mod log;
pub mod metrics;
pub mod mirror;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod start;
pub mod store;
pub mod transform;
pub mod upstream;
pub mod wait;
