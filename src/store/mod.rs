//! The durable mirror: originals (and derived variants) kept so the service answers even after
//! the origin is gone, across restarts, and (with S3) from any replica.
//!
//! * [`MirrorStore`] is the one interface every backend implements: records and content-addressed
//!   blobs, each got, put, listed and deleted; usage; a write probe.
//! * [`fs::FsStore`] keeps them under `cache.dir`; [`s3::S3Store`] in S3-compatible object storage
//!   under `s3.prefix`, reached through the `object_store` crate.
//! * [`tiers::Tiers`] composes them: the filesystem alone (`cache.store = "fs"`), or a bounded
//!   local disk tier read through in front of S3 (`cache.store = "s3"`). [`open`] builds it from
//!   the config; every command and the service call it.
//! * [`ops`] holds what is written once against the trait: export, purge, the disk budget.
//!
//! Layout, the same in both backends (the S3 keys sit under `s3.prefix`):
//!
//! ```text
//! objects/ab/cd/abcd…        content-addressed blobs, named by the SHA-256 of their bytes
//! urls/ef/ef01….json         one record per upstream URL (named by the SHA-256 of the URL)
//! variants/12/1234….json     one record per derived image (named by the SHA-256 of its key)
//! links/ef/ef01….json        one record per upstream URL a post links to (`rewrite` and `warm`
//!                            saw it), fetched or not: what `upstream.fetch = "known"` may fetch
//! ```
//!
//! Blobs are written before the records that point at them, and checked against their hash
//! when read: a blob whose bytes do not match reads as missing, and the next put replaces it.

pub mod fs;
pub mod ops;
pub mod s3;
pub mod tiers;

use std::io;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use fs::FsStore;
pub use s3::S3Store;
pub use tiers::{open, Found, Source, Tiers};

/// A boxed future, so the trait stays object-safe (futures-util's, which the upstream resolver
/// seam uses too).
pub use futures_util::future::BoxFuture;

/// Where a mirrored original came from when its origin was gone (`archive` rescued it): kept
/// in its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// The archive, by its template's host (`web.archive.org`).
    pub source: String,
    /// The URL that answered with the bytes (after the archive's redirects).
    pub url: String,
    /// The capture's time as the archive gave it (YYYYMMDDhhmmss), or the one asked for.
    pub timestamp: String,
}

/// What the mirror knows about one upstream URL (or one variant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The upstream URL (or, for a variant, its [`VariantKey`] in text form).
    pub key: String,
    /// SHA-256 (hex) of the bytes.
    pub hash: String,
    /// Content type sniffed from the bytes.
    pub content_type: String,
    /// Bytes of the blob.
    pub size: u64,
    /// The upstream's validators, for revalidation.
    pub etag: Option<String>,
    /// The upstream's `Last-Modified`.
    pub last_modified: Option<String>,
    /// When the bytes were fetched (Unix seconds).
    pub fetched_at: u64,
    /// When the upstream last confirmed (or failed to refute) the copy (Unix seconds).
    pub checked_at: u64,
    /// For a variant: the content hash of the original it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For an original rescued from a web archive (its origin was gone): which capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Capture>,
}

impl Record {
    /// The record of a link seen in a post at `now` (Unix seconds): the URL alone, no blob
    /// (`hash` is empty, so no blob is ever read, kept or collected for it).
    pub fn link(url: &str, now: u64) -> Record {
        Record {
            key: url.to_string(),
            hash: String::new(),
            content_type: String::new(),
            size: 0,
            etag: None,
            last_modified: None,
            fetched_at: 0,
            checked_at: now,
            source: None,
            archive: None,
        }
    }
}

/// The kinds of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An upstream URL's original bytes, keyed by the URL.
    Original,
    /// A derived image, keyed by its [`VariantKey`].
    Variant,
    /// An upstream URL a post links to, keyed by the URL: no bytes (see [`Record::link`]). With
    /// `upstream.fetch = "known"` the service fetches only such URLs (and mirrored ones).
    Link,
}

impl Kind {
    /// The folder (or key prefix) of this kind's records.
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Original => "urls",
            Kind::Variant => "variants",
            Kind::Link => "links",
        }
    }
}

/// How a record is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Only if no record exists for the key (a conditional put): of two replicas that mirror the
    /// same cold image at once, one record wins and both serve it.
    Create,
    /// Replace whatever is there (revalidation updates).
    Overwrite,
}

/// Blobs in a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Blobs held.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The mirror's storage, one backend.
pub trait MirrorStore: Send + Sync {
    /// `fs` or `s3`, for messages.
    fn name(&self) -> &'static str;
    /// The record for `key`, if stored (an unreadable record reads as absent).
    fn record<'a>(&'a self, kind: Kind, key: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>>;
    /// Writes a record; with [`PutMode::Create`], returns `false` when one already existed.
    fn put_record<'a>(
        &'a self,
        kind: Kind,
        record: &'a Record,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>>;
    /// Deletes a record (absent is fine).
    fn delete_record<'a>(&'a self, kind: Kind, key: &'a str) -> BoxFuture<'a, io::Result<()>>;
    /// Every readable record of a kind.
    fn records(&self, kind: Kind) -> BoxFuture<'_, io::Result<Vec<Record>>>;
    /// The bytes of a blob; `None` when missing or when they do not match `hash`.
    fn blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>>;
    /// Stores a blob under its hash; an existing blob whose bytes do not match is replaced.
    fn put_blob<'a>(&'a self, hash: &'a str, bytes: &'a Bytes) -> BoxFuture<'a, io::Result<()>>;
    /// Deletes a blob (absent is fine).
    fn delete_blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<()>>;
    /// Blobs stored now.
    fn usage(&self) -> BoxFuture<'_, io::Result<Usage>>;
    /// Proves the store can be written to now (for `/readyz`).
    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>>;
}

/// SHA-256 hex of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// True for a well-formed content hash (64 hex digits): only those name blobs.
pub fn is_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The relative path of a blob: `objects/ab/cd/abcd…` (`None` for a malformed hash).
pub fn blob_path(hash: &str) -> Option<String> {
    is_hash(hash).then(|| format!("objects/{}/{}/{hash}", &hash[..2], &hash[2..4]))
}

/// The relative path of a record: `urls/ef/ef01….json`.
pub fn record_path(kind: Kind, key: &str) -> String {
    let h = sha256_hex(key.as_bytes());
    format!("{}/{}/{h}.json", kind.folder(), &h[..2])
}

/// Parses a stored record, keeping it only when it belongs to `key` (when given).
pub fn parse_record(bytes: &[u8], key: Option<&str>) -> Option<Record> {
    serde_json::from_slice::<Record>(bytes)
        .ok()
        .filter(|r| key.is_none_or(|k| r.key == k))
}

/// The key of a derived image: the route in canonical unsigned form, and the format chosen by
/// `Accept` negotiation when the route named none (such a variant depends on the request).
///
/// Stored as text: the route, then `#accept-webp`, `#accept-avif` or `#accept-avif-webp` when
/// negotiated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VariantKey {
    /// The canonical, unsigned route (`/i/w640/https/…`).
    pub route: String,
    /// The output format chosen by negotiation, if any.
    pub negotiated: Option<Negotiated>,
}

/// A format picked from `Accept` rather than named in the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Negotiated {
    /// WebP for a client that takes it.
    Webp,
    /// AVIF for a client that does not take WebP: an animation keeps its own format.
    Avif,
    /// AVIF for a client that takes WebP too: an animation becomes an animated WebP.
    AvifOrWebp,
}

impl Negotiated {
    const ALL: [Negotiated; 3] = [Negotiated::Webp, Negotiated::Avif, Negotiated::AvifOrWebp];

    fn suffix(self) -> &'static str {
        match self {
            Negotiated::Webp => "#accept-webp",
            Negotiated::Avif => "#accept-avif",
            Negotiated::AvifOrWebp => "#accept-avif-webp",
        }
    }
}

impl VariantKey {
    /// Parses the text form; `None` for anything else.
    pub fn parse(text: &str) -> Option<VariantKey> {
        let (route, negotiated) = match text.split_once('#') {
            None => (text, None),
            Some((route, rest)) => {
                let n = Negotiated::ALL
                    .into_iter()
                    .find(|n| n.suffix().strip_prefix('#') == Some(rest))?;
                (route, Some(n))
            }
        };
        route.starts_with("/i/").then(|| VariantKey {
            route: route.to_string(),
            negotiated,
        })
    }

    /// The upstream URL this variant was made from.
    pub fn upstream(&self) -> Option<String> {
        crate::route::decode(&self.route, None)
            .ok()
            .map(|r| r.upstream)
    }
}

impl std::fmt::Display for VariantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.route)?;
        if let Some(n) = self.negotiated {
            f.write_str(n.suffix())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_keys_round_trip_through_text() {
        for text in [
            "/i/w640/https/a.test/x.jpg",
            "/i/w640/https/a.test/x.jpg#accept-webp",
            "/i/w640/https/a.test/x.jpg#accept-avif",
            "/i/w640/https/a.test/x.jpg#accept-avif-webp",
        ] {
            let k = VariantKey::parse(text).unwrap();
            assert_eq!(k.to_string(), text);
            assert_eq!(k.upstream().as_deref(), Some("https://a.test/x.jpg"));
        }
        assert!(VariantKey::parse("/i/w640/https/a.test/x.jpg#other").is_none());
        assert!(VariantKey::parse("https://a.test/x.jpg").is_none());
    }
}
