//! The durable mirror: originals (and derived variants) kept so the service answers even after
//! the origin is gone, across restarts, and (with S3) from any replica.
//!
//! * [`MirrorStore`] is the one interface every backend implements: a few object primitives
//!   (get, put, delete, list a folder) and content-addressed blobs; records, markers and the
//!   usage recount are written once on top of them.
//! * [`fs::FsStore`] keeps them under `cache.dir`; [`s3::S3Store`] in S3-compatible object storage
//!   under `s3.prefix`, reached through the `object_store` crate.
//! * [`tiers::Tiers`] composes them: the filesystem alone (`cache.store = "fs"`), or a bounded
//!   local disk tier read through in front of S3 (`cache.store = "s3"`). [`open`] builds it from
//!   the config; every command and the service call it.
//! * [`ops`] holds what is written once against the trait: export, purge, the disk budget;
//!   [`gc`] the one whole-mirror pass; [`events`] what replicas tell each other.
//!
//! Layout, the same in both backends (the S3 keys sit under `s3.prefix`), version 2:
//!
//! ```text
//! objects/ab/cd/abcd…                 content-addressed blobs, named by the SHA-256 of their bytes
//! refs/ab/abcd…/o-<sha(key)>          one empty marker per record that points at blob abcd…:
//!                                     a blob with no marker left is no record's (see `ops::release`)
//! urls/ef/ef01….json                  one record per upstream URL (named by the SHA-256 of the URL)
//! variants/ef/ef01…/12ab….json        one record per derived image, in the folder of its upstream
//!                                     URL's hash, named by the SHA-256 of its key
//! links/ef/ef01….json                 one record per upstream URL a post links to (`rewrite` and
//!                                     `warm` saw it), fetched or not: what `upstream.fetch = "known"`
//!                                     may fetch
//! events/<ms>-<id>.json               purges and replaced originals, for the other replicas
//!                                     (`events`)
//! layout.json, usage.json             the layout's version; the last count of blobs (`gc`)
//! ```
//!
//! So everything one image owns is found from its URL alone: its record, the folder of its
//! variants, and each blob's markers. Version 1 (up to the first release with `imgmirror gc`)
//! kept variants in `variants/12/1234….json` and had no markers: such a mirror is read as it
//! is (a variant is looked up at both places) until `gc` moves it (`gc::migrate`).
//!
//! Blobs are written before the markers and records that point at them, and checked against
//! their hash when read: a blob whose bytes do not match reads as missing, and the next put
//! replaces it.

pub mod events;
pub mod fs;
pub mod gc;
pub mod ops;
pub mod s3;
pub mod tiers;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// For an original: its size as shown (width, height, after EXIF orientation), read from
    /// its header when it was mirrored; records of older releases get it at the next `warm`.
    /// What the rewriter's `width`/`height` and `srcset` come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<(u32, u32)>,
}

impl Record {
    /// The record of `bytes` (of `content_type`) kept under `key` at `now` (Unix seconds): its
    /// hash and size, fetched and checked now, nothing else known yet (no validators, source,
    /// capture or size as shown; set them with struct update syntax).
    pub fn of_bytes(key: &str, bytes: &[u8], content_type: &str, now: u64) -> Record {
        Record {
            key: key.to_string(),
            hash: sha256_hex(bytes),
            content_type: content_type.to_string(),
            size: bytes.len() as u64,
            etag: None,
            last_modified: None,
            fetched_at: now,
            checked_at: now,
            source: None,
            archive: None,
            shown: None,
        }
    }

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
            shown: None,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Blobs held.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One object of a store, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its path relative to the store's root (`objects/ab/cd/abcd…`).
    pub path: String,
    /// Its bytes.
    pub size: u64,
    /// When it was last written (Unix seconds).
    pub modified: u64,
}

impl Listed {
    /// The last part of the path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

/// Which layout a store was found in when opened (see the module's documentation).
#[derive(Debug, Default)]
pub struct Layout {
    legacy: AtomicBool,
}

impl Layout {
    /// True while the store holds records of layout version 1 (`gc` has not moved them yet).
    pub fn is_legacy(&self) -> bool {
        self.legacy.load(Ordering::Relaxed)
    }

    /// Marks the store as being (or no longer being) in layout version 1.
    pub fn set_legacy(&self, legacy: bool) {
        self.legacy.store(legacy, Ordering::Relaxed)
    }
}

/// The mirror's storage, one backend: a handful of object primitives ([`MirrorStore::get`],
/// [`MirrorStore::put`], [`MirrorStore::delete`], [`MirrorStore::list`]) and the blobs, each
/// implemented by the backend; records, markers and usage are written once on top of them.
pub trait MirrorStore: Send + Sync {
    /// `fs` or `s3`, for messages.
    fn name(&self) -> &'static str;
    /// The bytes at a path relative to the store's root; `None` when absent.
    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>>;
    /// Writes bytes at a path; with [`PutMode::Create`], returns `false` when something is
    /// already there (and leaves it).
    fn put<'a>(
        &'a self,
        path: &'a str,
        bytes: Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>>;
    /// Deletes what is at a path (absent is fine).
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<()>>;
    /// Every object under the folder `dir` (`"refs/ab/abcd…/"`, with its slash), at any depth,
    /// in path order; with `after`, only the paths that sort after it. One LIST on S3 (a page
    /// per thousand objects), one folder walk on the filesystem.
    fn list<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
    ) -> BoxFuture<'a, io::Result<Vec<Listed>>>;
    /// True when anything is under the folder `dir`: one LIST on S3 (its first page), one
    /// folder read on the filesystem, however many objects are there.
    fn has_any<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, io::Result<bool>>;
    /// The names of the folder `dir`'s immediate children (files and folders), unsorted.
    fn children<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, io::Result<Vec<String>>>;
    /// The bytes of a blob; `None` when missing or when they do not match `hash`.
    fn blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>>;
    /// Stores a blob under its hash; an existing blob whose bytes do not match is replaced.
    fn put_blob<'a>(&'a self, hash: &'a str, bytes: &'a Bytes) -> BoxFuture<'a, io::Result<()>>;
    /// Deletes a blob (absent is fine).
    fn delete_blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<()>>;
    /// Proves the store can be written to now (for `/readyz`).
    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>>;
    /// The layout the store was found in.
    fn layout(&self) -> &Layout;

    /// The record for `key`, if stored (an unreadable record reads as absent). A variant of a
    /// mirror still in layout version 1 is looked for at its old place too.
    fn record<'a>(&'a self, kind: Kind, key: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>> {
        Box::pin(async move {
            if let Some(b) = self.get(&record_path(kind, key)).await? {
                return Ok(parse_record(&b, Some(key)));
            }
            if kind == Kind::Variant && self.layout().is_legacy() {
                let old = self.get(&legacy_variant_path(key)).await?;
                return Ok(old.and_then(|b| parse_record(&b, Some(key))));
            }
            Ok(None)
        })
    }

    /// Writes a record (its blob and marker are [`MirrorStore::put_image`]'s); with
    /// [`PutMode::Create`], returns `false` when one already existed.
    fn put_record<'a>(
        &'a self,
        kind: Kind,
        record: &'a Record,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
            self.put(&record_path(kind, &record.key), Bytes::from(json), mode)
                .await
        })
    }

    /// Writes a record with its bytes: the marker first, then the blob, then the record. The
    /// marker goes first so that a [`ops::release`] of the same blob running meanwhile either
    /// sees it (and keeps the blob) or deleted the blob before this writes it again.
    fn put_image<'a>(
        &'a self,
        kind: Kind,
        record: &'a Record,
        bytes: &'a Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            let marker = ref_path(&record.hash, kind, &record.key);
            if let Some(m) = &marker {
                self.put(m, Bytes::new(), PutMode::Overwrite).await?;
            }
            if let Err(e) = self.put_blob(&record.hash, bytes).await {
                // No blob, no record: the marker goes too (else `gc` would remove it).
                if let Some(m) = &marker {
                    let _ = self.delete(m).await;
                }
                return Err(e);
            }
            self.put_record(kind, record, mode).await
        })
    }

    /// Deletes a record (absent is fine); its blob and marker are [`ops::release`]'s.
    fn delete_record<'a>(&'a self, kind: Kind, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.delete(&record_path(kind, key)).await?;
            if kind == Kind::Variant && self.layout().is_legacy() {
                self.delete(&legacy_variant_path(key)).await?;
            }
            Ok(())
        })
    }

    /// Every readable record of a kind (a whole-mirror pass: `export`, `gc`).
    fn records(&self, kind: Kind) -> BoxFuture<'_, io::Result<Vec<Record>>> {
        Box::pin(async move {
            use futures_util::{StreamExt, TryStreamExt};
            let listed = self.list(&format!("{}/", kind.folder()), None).await?;
            let read: Vec<Option<Bytes>> = futures_util::stream::iter(listed)
                .filter(|l| std::future::ready(l.path.ends_with(".json")))
                .map(|l| async move { self.get(&l.path).await })
                .buffer_unordered(RECORDS_AT_ONCE)
                .try_collect()
                .await?;
            Ok(read
                .into_iter()
                .flatten()
                .filter_map(|b| parse_record(&b, None))
                .collect())
        })
    }

    /// The blobs as counted while they changed, without listing them; `None` when the store
    /// keeps no such count (S3: its count is `gc`'s) or was never counted.
    fn counted(&self) -> BoxFuture<'_, io::Result<Option<Usage>>> {
        Box::pin(async { Ok(None) })
    }

    /// Blobs stored now, counted by listing them all (a whole-mirror pass: `gc`, tests).
    fn usage(&self) -> BoxFuture<'_, io::Result<Usage>> {
        Box::pin(async move {
            let listed = self.list("objects/", None).await?;
            Ok(listed
                .iter()
                .filter(|l| is_hash(l.name()))
                .fold(Usage::default(), |u, l| Usage {
                    blobs: u.blobs + 1,
                    bytes: u.bytes + l.size,
                }))
        })
    }
}

/// Records read at once when listing a kind.
const RECORDS_AT_ONCE: usize = 16;

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

/// The relative path of a record: `urls/ef/ef01….json`; a variant's sits in the folder of its
/// upstream URL ([`variants_dir`]), or at its layout-1 place when its key names no upstream.
pub fn record_path(kind: Kind, key: &str) -> String {
    let h = sha256_hex(key.as_bytes());
    if kind == Kind::Variant {
        if let Some(upstream) = VariantKey::parse(key).and_then(|v| v.upstream()) {
            return format!("{}{h}.json", variants_dir(&upstream));
        }
    }
    format!("{}/{}/{h}.json", kind.folder(), &h[..2])
}

/// Where layout version 1 kept a variant's record: `variants/12/1234….json`.
pub fn legacy_variant_path(key: &str) -> String {
    let h = sha256_hex(key.as_bytes());
    format!("variants/{}/{h}.json", &h[..2])
}

/// The folder of every variant of an upstream URL: `variants/ef/ef01…/`.
pub fn variants_dir(upstream: &str) -> String {
    let u = sha256_hex(upstream.as_bytes());
    format!("variants/{}/{u}/", &u[..2])
}

/// The folder of a blob's markers: `refs/ab/abcd…/` (`None` for a malformed hash).
pub fn refs_dir(hash: &str) -> Option<String> {
    is_hash(hash).then(|| format!("refs/{}/{hash}/", &hash[..2]))
}

/// The marker that says the record `(kind, key)` points at blob `hash` (`None` for a record with
/// no blob, a link).
pub fn ref_path(hash: &str, kind: Kind, key: &str) -> Option<String> {
    let letter = match kind {
        Kind::Original => 'o',
        Kind::Variant => 'v',
        Kind::Link => return None,
    };
    refs_dir(hash).map(|d| format!("{d}{letter}-{}", sha256_hex(key.as_bytes())))
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
