//! The mirror's tiers below memory, as one value: the filesystem alone (`cache.store = "fs"`),
//! or a local disk tier read through in front of the S3 mirror every replica shares
//! (`cache.store = "s3"`). Lookups go local disk → S3; writes go to S3 first (a copy counts as
//! mirrored only once the shared store has it), then to the local tier.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::{FsStore, Kind, MirrorStore, PutMode, Record, S3Store};
use crate::clock::Clock;
use crate::config::{Config, StoreKind};
use crate::start::StartError;

/// Link records written to S3 at once by [`Tiers::know`]: enough to hide the round trip, few
/// enough not to be throttled.
const LINK_PUTS_AT_ONCE: usize = 16;

/// Where a mirrored copy was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The local disk (`cache.dir`).
    Local,
    /// The shared S3 mirror (then copied to the local tier).
    Shared,
}

/// A mirrored record with its bytes.
#[derive(Clone, Debug)]
pub struct Found {
    /// The record.
    pub record: Record,
    /// The blob, checked against the record's hash.
    pub bytes: Bytes,
    /// Which tier held it.
    pub source: Source,
}

/// The local tier, and the shared one when the mirror is in S3.
#[derive(Clone)]
pub struct Tiers {
    local: FsStore,
    shared: Option<Arc<dyn MirrorStore>>,
}

/// Opens the mirror `config` names: the folder `cache.dir`, and with `cache.store = "s3"` the
/// bucket (checked: it must exist and accept the credentials). Errors are one line naming what
/// failed, typed for the exit code: `cache.dir` whose parent is missing (a volume not mounted
/// yet) or an S3 endpoint that does not answer is temporary (75), the rest configuration (2).
pub async fn open(config: &Config) -> Result<Tiers, StartError> {
    let dir = &config.cache.dir;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.exists() && !parent.is_dir() {
            return Err(StartError::Temporary(format!(
                "cache.dir {}: its folder {} does not exist (a volume not mounted yet?); \
                 cache.dir is created, its parents never are",
                dir.display(),
                parent.display()
            )));
        }
    }
    let local = FsStore::open(dir).map_err(|e| {
        let message = format!("cache.dir {}: cannot open the mirror: {e}", dir.display());
        if crate::start::is_temporary(&e) {
            StartError::Temporary(message)
        } else {
            StartError::Config(message)
        }
    })?;
    let now = crate::clock::SystemClock.now_secs();
    super::gc::open(&local, now)
        .await
        .map_err(|e| StartError::Config(format!("cache.dir {}: {e}", dir.display())))?;
    let shared: Option<Arc<dyn MirrorStore>> = match config.cache.store {
        StoreKind::Fs => None,
        StoreKind::S3 => {
            let s3 = S3Store::open(&config.s3).map_err(|e| format!("s3: {e}"))?;
            // One read when the mirror is in this release's layout; when it fails, the listing
            // of `verify` tells a missing bucket or bad credentials from an endpoint that does
            // not answer.
            if let Err(first) = super::gc::open(&s3, now).await {
                s3.verify().await.map_err(|e| match e {
                    StartError::Temporary(m) => {
                        StartError::Temporary(format!("s3: cannot reach the mirror: {m}"))
                    }
                    StartError::Config(m) => {
                        StartError::Config(format!("s3: cannot use the mirror: {m}"))
                    }
                })?;
                return Err(StartError::Temporary(format!(
                    "s3: cannot read the mirror: {first}"
                )));
            }
            Some(Arc::new(s3))
        }
    };
    Ok(Tiers { local, shared })
}

impl Tiers {
    /// Tiers from stores already opened (tests build them this way).
    pub fn new(local: FsStore, shared: Option<Arc<dyn MirrorStore>>) -> Tiers {
        Tiers { local, shared }
    }

    /// The local disk tier.
    pub fn local(&self) -> &FsStore {
        &self.local
    }

    /// True when the mirror is shared in S3.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The store that holds the whole mirror: S3 when shared, else the local folder. Export,
    /// purge and usage read it.
    pub fn primary(&self) -> &dyn MirrorStore {
        match &self.shared {
            Some(s) => s.as_ref(),
            None => &self.local,
        }
    }

    /// The local disk, then S3 when shared.
    pub fn local_and_shared(&self) -> Vec<&dyn MirrorStore> {
        let mut all: Vec<&dyn MirrorStore> = vec![&self.local];
        all.extend(self.shared());
        all
    }

    /// The shared store (S3), when the mirror is shared.
    pub fn shared(&self) -> Option<&dyn MirrorStore> {
        self.shared.as_deref().map(|s| s as &dyn MirrorStore)
    }

    /// The mirrored copy for `key`: local disk first, then S3 (copied to local disk on the way).
    /// A record whose blob is missing or corrupt is no copy. An `Err` means the shared store
    /// could not be asked (S3 unreachable): the caller cannot tell whether the image is mirrored.
    pub async fn lookup(&self, kind: Kind, key: &str) -> io::Result<Option<Found>> {
        let local = match self.local.record(kind, key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read a local mirror record");
                None
            }
        };
        if let Some(record) = local {
            match self.local.blob(&record.hash).await {
                Ok(Some(bytes)) => {
                    return Ok(Some(Found {
                        record,
                        bytes,
                        source: Source::Local,
                    }))
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(key, error = %e, "cannot read a local mirror blob"),
            }
        }
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let Some(record) = shared.record(kind, key).await? else {
            return Ok(None);
        };
        let Some(bytes) = shared.blob(&record.hash).await? else {
            return Ok(None);
        };
        self.keep_locally(kind, &record, &bytes).await;
        Ok(Some(Found {
            record,
            bytes,
            source: Source::Shared,
        }))
    }

    /// The record for `key` without its bytes: the local disk's, else S3's (not copied).
    pub async fn record(&self, kind: Kind, key: &str) -> io::Result<Option<Record>> {
        if let Ok(Some(r)) = self.local.record(kind, key).await {
            return Ok(Some(r));
        }
        match &self.shared {
            Some(shared) => shared.record(kind, key).await,
            None => Ok(None),
        }
    }

    /// Mirrors a new copy: blob before record, S3 before the local tier. Of two replicas racing
    /// to mirror the same new key, the first record wins: the record (and bytes) returned are what the
    /// mirror now holds.
    pub async fn store(
        &self,
        kind: Kind,
        record: &Record,
        bytes: &Bytes,
        mode: PutMode,
    ) -> io::Result<(Record, Bytes)> {
        let Some(shared) = &self.shared else {
            self.local
                .put_image(kind, record, bytes, PutMode::Overwrite)
                .await?;
            return Ok((record.clone(), bytes.clone()));
        };
        if !shared.put_image(kind, record, bytes, mode).await? {
            // Another replica's record is there: serve and keep it when its bytes are whole.
            if let Some(theirs) = shared.record(kind, &record.key).await? {
                let bytes = if theirs.hash == record.hash {
                    Some(bytes.clone())
                } else {
                    shared.blob(&theirs.hash).await?
                };
                if let Some(bytes) = bytes {
                    self.keep_locally(kind, &theirs, &bytes).await;
                    return Ok((theirs, bytes));
                }
            }
            shared.put_record(kind, record, PutMode::Overwrite).await?;
        }
        self.keep_locally(kind, record, bytes).await;
        Ok((record.clone(), bytes.clone()))
    }

    /// Rewrites a record whose bytes are already mirrored (after a revalidation).
    pub async fn update(&self, kind: Kind, record: &Record) -> io::Result<()> {
        if let Some(shared) = &self.shared {
            shared.put_record(kind, record, PutMode::Overwrite).await?;
        }
        self.local
            .put_record(kind, record, PutMode::Overwrite)
            .await
            .map(|_| ())
    }

    /// True when a post links to `url` (a [`Kind::Link`] record, on the local disk or in S3).
    /// An `Err` means the shared store could not be asked.
    pub async fn knows(&self, url: &str) -> io::Result<bool> {
        self.record(Kind::Link, url).await.map(|r| r.is_some())
    }

    /// Records that posts link to `urls` ([`Kind::Link`]), in the store every replica reads
    /// (S3 when shared, else the local disk), at `now` (Unix seconds). Returns how many were new.
    pub async fn know(&self, urls: Vec<String>, now: u64) -> io::Result<usize> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let Some(shared) = &self.shared else {
            return self.local.put_links(urls, now).await;
        };
        // Conditional puts, a few at a time: an existing record stays as it is.
        let new = stream::iter(urls)
            .map(|url| async move {
                shared
                    .put_record(Kind::Link, &Record::link(&url, now), PutMode::Create)
                    .await
            })
            .buffer_unordered(LINK_PUTS_AT_ONCE)
            .try_fold(0, |n, created| async move { Ok(n + usize::from(created)) })
            .await?;
        Ok(new)
    }

    /// Writes what this process changed in the local disk's blobs for the service's count
    /// (a command that wrote to the mirror calls it before it exits); a failure is logged.
    pub fn flush_usage(&self) {
        if let Err(e) = self.local.flush_usage() {
            tracing::warn!(error = %e, "cannot record the mirror's usage");
        }
    }

    /// One `gc` pass over the local disk (with the temporary files crashed writers left in
    /// it), then over S3 when shared.
    pub async fn collect(&self, now: u64, dry_run: bool) -> io::Result<Vec<super::gc::Report>> {
        let mut reports = vec![self.collect_local(now, dry_run).await?];
        if let Some(shared) = &self.shared {
            reports.push(super::gc::collect(shared.as_ref(), now, dry_run).await?);
        }
        Ok(reports)
    }

    /// One `gc` pass over the local disk, with the temporary files crashed writers left in it;
    /// the usage changes recorded before it are folded into its count.
    pub async fn collect_local(&self, now: u64, dry_run: bool) -> io::Result<super::gc::Report> {
        let local = self.local.clone();
        let (swept, changes, before) = tokio::task::spawn_blocking(move || {
            let swept = (!dry_run).then(|| crate::fsutil::sweep(local.root(), true));
            (swept, local.changes(), local.unflushed())
        })
        .await
        .map_err(io::Error::other)?;
        if let Some(n) = swept.filter(|n| *n > 0) {
            tracing::info!(swept = n, "removed temporary files left by a crash");
        }
        let (_, files) = changes?;
        let report = super::gc::collect(&self.local, now, dry_run).await?;
        if !dry_run {
            self.local.clear_changes(files, before);
        }
        Ok(report)
    }

    /// Proves every tier can be written now: the local disk, and S3 when shared.
    pub async fn check_writable(&self) -> io::Result<()> {
        self.local
            .check_writable()
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("local disk: {e}")))?;
        if let Some(shared) = &self.shared {
            shared.check_writable().await?;
        }
        Ok(())
    }

    /// Copies a record found in S3 to the local tier; a failure only costs the next lookup an
    /// S3 read.
    async fn keep_locally(&self, kind: Kind, record: &Record, bytes: &Bytes) {
        if !self.is_shared() {
            return;
        }
        let kept = self
            .local
            .put_image(kind, record, bytes, PutMode::Overwrite);
        if let Err(e) = kept.await {
            tracing::warn!(key = record.key, error = %e, "cannot keep a copy on the local disk tier");
        }
    }
}
