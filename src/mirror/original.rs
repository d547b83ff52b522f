//! Originals: the mirrored copy when fresh, else a revalidation or fetch from the upstream (only
//! of links the mirror knows, `upstream.fetch`), kept in the mirror; the stale copy when the
//! upstream fails; a web archive's copy when the origin is gone.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{entry, tier_of, LoadError, Loaded, Mirror, Tier};
use crate::cache::Entry;
use crate::store::{events, ops, sha256_hex, Found, Kind, PutMode, Record};
use crate::transform;
use crate::upstream::{FetchError, Fetched, StillWanted, Validators};

impl Mirror {
    /// The size the mirrored original of `url` is shown at (after its orientation), from its
    /// record; a record of an older release, which has none, gets it now from `body` (the
    /// original's bytes, already loaded) and is rewritten with it. `None` when `url` is not
    /// mirrored or its header cannot be read.
    pub async fn shown_size(&self, url: &str, body: &Bytes) -> Option<(u32, u32)> {
        let mut record = self.tiers.record(Kind::Original, url).await.ok()??;
        if record.shown.is_none() {
            let bytes = body.clone();
            record.shown = tokio::task::spawn_blocking(move || transform::shown_size(&bytes))
                .await
                .ok()?;
            if let Err(e) = self.tiers.update(Kind::Original, &record).await {
                tracing::warn!(url, error = %e, "cannot record the image's size");
            }
        }
        record.shown
    }

    /// Loads an original from the mirror, revalidating or fetching it from the upstream as
    /// needed. Not coalesced and not kept in memory: [`Mirror::load`] does both.
    pub async fn original(&self, url: &str) -> Loaded {
        self.original_at(url, None, &|| true).await
    }

    /// [`Mirror::original`], where `when` (Unix seconds: a post's date) is the moment an archived
    /// copy should be nearest to if the origin is gone (`None` is now), and `wanted` says
    /// whether anyone still waits for it: a fetch or archive lookup nobody waits for gives up
    /// before it takes a slot.
    pub async fn original_at(
        &self,
        url: &str,
        when: Option<u64>,
        wanted: StillWanted<'_>,
    ) -> Loaded {
        let now = self.clock.now_secs();
        let ttl = self.config.cache.ttl_secs;
        // The mirrored copy. When the shared store cannot be asked, nobody can tell whether the
        // image is mirrored: fetching it would serve bytes the mirror does not keep, from every
        // replica at once, so the answer is a clear 503 (memory and local-disk hits go on).
        let mirrored = match self.tiers.lookup(Kind::Original, url).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(url, error = %e, "the shared mirror is unreachable");
                return Err(LoadError::StoreUnavailable(e.to_string()));
            }
        };
        if let Some(Found {
            record,
            bytes,
            source,
        }) = &mirrored
        {
            if now < record.checked_at.saturating_add(ttl) {
                let until = record.checked_at.saturating_add(ttl);
                return Ok((entry(record, bytes.clone(), until), tier_of(*source)));
            }
        } else if let Some(status) = self.negative.get(url).await {
            return Err(LoadError::Remembered(status));
        } else {
            self.may_fetch(url).await?;
        }

        // An archived copy carries no validators of the origin's: the origin is asked afresh.
        let validators = mirrored
            .as_ref()
            .filter(|f| f.record.archive.is_none())
            .map(|f| Validators {
                etag: f.record.etag.clone(),
                last_modified: f.record.last_modified.clone(),
            });
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(String::from))
            .unwrap_or_default();
        let started = Instant::now();
        let fetched = self
            .upstream
            .fetch_while(url, validators.as_ref(), wanted)
            .await;
        let seconds = started.elapsed().as_secs_f64();
        match fetched {
            Ok(Fetched::NotModified) => {
                self.metrics
                    .upstream_fetch(&host, "not_modified", seconds, 0);
                let Some(Found {
                    mut record, bytes, ..
                }) = mirrored
                else {
                    return Err(LoadError::Bogus304);
                };
                record.checked_at = now;
                if let Err(e) = self.tiers.update(Kind::Original, &record).await {
                    tracing::warn!(url, error = %e, "cannot update the mirror record");
                }
                Ok((entry(&record, bytes, now.saturating_add(ttl)), Tier::Miss))
            }
            Ok(Fetched::Body {
                bytes, validators, ..
            }) => {
                self.metrics
                    .upstream_fetch(&host, "ok", seconds, bytes.len() as u64);
                // Only a whole image is mirrored (and served): a cut-short body is an upstream
                // failure, stored nowhere, cached nowhere. And it never replaces a mirrored copy
                // (a parked domain's HTML page with 200 is not the image coming back).
                // Sniffing, the completeness scan and the hash read every byte (milliseconds
                // for a large photo): done off the event loop, which goes on answering hits.
                let inspected = {
                    let bytes = bytes.clone();
                    tokio::task::spawn_blocking(move || match transform::sniff(&bytes) {
                        None => Err(LoadError::NotImage),
                        Some(k) if !transform::is_complete(&bytes, k) => Err(LoadError::Incomplete),
                        Some(k) => Ok((k, sha256_hex(&bytes), transform::shown_size(&bytes))),
                    })
                    .await
                    .unwrap_or(Err(LoadError::Internal(
                        "inspecting a fetched image failed",
                    )))
                };
                let (kind, hash, shown) = match inspected {
                    Ok(found) => found,
                    Err(e) => {
                        return match mirrored {
                            Some(found) => Ok(self.serve_stale(url, found, &e).await),
                            None => Err(e),
                        }
                    }
                };
                let record = Record {
                    key: url.to_string(),
                    hash,
                    content_type: kind.content_type().to_string(),
                    size: bytes.len() as u64,
                    etag: validators.etag,
                    last_modified: validators.last_modified,
                    fetched_at: now,
                    checked_at: now,
                    source: None,
                    archive: None,
                    shown,
                };
                // A first copy is a conditional put: of two replicas racing, one record wins.
                let mode = if mirrored.is_some() {
                    PutMode::Overwrite
                } else {
                    PutMode::Create
                };
                let kept = self.keep(url, record, bytes, mode).await?;
                if let Some(old) = mirrored.filter(|f| f.record.hash != kept.hash) {
                    self.replaced(url, &old.record.hash, &kept.hash).await;
                }
                Ok((kept, Tier::Miss))
            }
            // No slot (or nobody waiting for one): the upstream was not contacted.
            Err(e @ (FetchError::Busy | FetchError::Abandoned)) => Err(e.into()),
            Err(e) => {
                self.metrics.upstream_fetch(&host, e.kind(), seconds, 0);
                if let Some(found) = mirrored {
                    return Ok(self.serve_stale(url, found, &e).await);
                }
                // Gone (404/410, refused, not resolving) and never mirrored: an archive may
                // still hold it. Origin 5xx and timeouts are not gone.
                let gone = matches!(e, FetchError::NotFound(_) | FetchError::Unreachable(_));
                if gone && self.archives.is_some() {
                    if let Some(rescued) = self.rescue(url, when.unwrap_or(now), wanted).await {
                        return rescued;
                    }
                    // No archive has it either: remember the answer, so neither the origin nor
                    // the archives are asked again before `negative_ttl_secs`.
                    let status = match e {
                        FetchError::NotFound(s) => s,
                        _ => e.status(),
                    };
                    self.negative.insert(url, status).await;
                    return Err(e.into());
                }
                if let FetchError::NotFound(status) = e {
                    self.negative.insert(url, status).await;
                }
                Err(e.into())
            }
        }
    }

    /// Whether the service may fetch `url`, which the mirror does not hold (SPEC §5 "Safe by
    /// default"): with `upstream.fetch = "known"`, only links a post was seen with (a link
    /// record), unless routes are signed or hosts listed. Asked before anyone is contacted.
    pub(super) async fn may_fetch(&self, url: &str) -> Result<(), LoadError> {
        if self.config.fetches_unknown_links() {
            return Ok(());
        }
        match self.tiers.knows(url).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(LoadError::UnknownLink),
            Err(e) => {
                tracing::warn!(url, error = %e, "the shared mirror is unreachable");
                Err(LoadError::StoreUnavailable(e.to_string()))
            }
        }
    }

    /// Stores a new original in the mirror and returns its entry. When the shared mirror (S3)
    /// cannot be written, the answer is a 503, as when it cannot be read: a copy every replica
    /// cannot keep is not served (README, "S3 unreachable while serving"). A local disk that
    /// refuses the write serves the bytes anyway (that disk is this replica's alone; `/readyz`
    /// says not ready).
    pub(super) async fn keep(
        &self,
        url: &str,
        record: Record,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<Arc<Entry>, LoadError> {
        let now = self.clock.now_secs();
        let (record, bytes) = match self
            .tiers
            .store(Kind::Original, &record, &bytes, mode)
            .await
        {
            Ok(kept) => {
                self.metrics.mirrored(kept.0.size);
                kept
            }
            Err(e) if self.tiers.is_shared() => {
                tracing::warn!(url, error = %e, "cannot write to the shared mirror: 503");
                return Err(LoadError::StoreUnavailable(e.to_string()));
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "cannot write to the mirror; serving, not mirrored");
                (record, bytes)
            }
        };
        self.negative.remove(url).await;
        Ok(entry(
            &record,
            bytes,
            now.saturating_add(self.config.cache.ttl_secs),
        ))
    }

    /// An original fetched anew with other bytes: the old blob is released in every tier (and
    /// deleted where no other record uses it), with the variants made from it, and the other
    /// replicas are told, so they drop
    /// their copies of the old bytes and the variants made from them (`store::events`).
    async fn replaced(&self, url: &str, old_hash: &str, new_hash: &str) {
        for store in self.tiers.local_and_shared() {
            let released = async {
                ops::release(store, old_hash, Kind::Original, url).await?;
                ops::drop_stale_variants(store, url, new_hash).await
            };
            if let Err(e) = released.await {
                tracing::warn!(url, error = %e, "cannot release the replaced original's bytes");
            }
        }
        if let Some(shared) = self.tiers.shared() {
            let now_ms = self.clock.now_millis();
            let told = events::publish(
                shared,
                events::What::Replaced,
                vec![url.to_string()],
                now_ms,
            );
            if let Err(e) = told.await {
                tracing::warn!(url, error = %e, "cannot tell the other replicas of a replaced original");
            }
        }
        // The CDN in front holds the old bytes (and variants made from them) as immutable.
        self.purge_cdn(vec![url.to_string()]);
    }

    /// Stale-if-error: serves the mirrored copy because the upstream failed (`why`), and asks the
    /// upstream again after `negative_ttl_secs` rather than on every request.
    pub(super) async fn serve_stale(
        &self,
        url: &str,
        found: Found,
        why: &(dyn std::fmt::Display + Sync),
    ) -> (Arc<Entry>, Tier) {
        let Found {
            mut record, bytes, ..
        } = found;
        let now = self.clock.now_secs();
        let retry = self.config.cache.negative_ttl_secs;
        record.checked_at = now
            .saturating_sub(self.config.cache.ttl_secs)
            .saturating_add(retry);
        if let Err(e) = self.tiers.update(Kind::Original, &record).await {
            tracing::warn!(url, error = %e, "cannot update the mirror record");
        }
        tracing::info!(url, error = %why, "upstream failed; serving the mirrored copy");
        (
            entry(&record, bytes, now.saturating_add(retry)),
            Tier::Stale,
        )
    }

    /// Asks the web archives for a copy of `url` nearest to `when`; the first whole image is
    /// mirrored with its capture and served.
    pub(super) async fn rescue(
        &self,
        url: &str,
        when: u64,
        wanted: StillWanted<'_>,
    ) -> Option<Loaded> {
        let archives = self.archives.as_ref()?;
        let timestamp = crate::archive::timestamp(when);
        let metrics = &self.metrics;
        let rescued = archives
            .rescue(url, &timestamp, wanted, |source, outcome| {
                metrics.archive_lookup(source, outcome.label())
            })
            .await?;
        let now = self.clock.now_secs();
        tracing::info!(url, capture = %rescued.capture.url, "origin gone: rescued from an archive");
        self.metrics.archive_rescued(
            crate::upstream::without_query_str(url),
            &rescued.capture.source,
            &rescued.capture.timestamp,
        );
        let record = Record {
            shown: transform::shown_size(&rescued.bytes),
            archive: Some(rescued.capture),
            ..Record::of_bytes(url, &rescued.bytes, rescued.kind.content_type(), now)
        };
        Some(
            self.keep(url, record, rescued.bytes, PutMode::Create)
                .await
                .map(|entry| (entry, Tier::Archive)),
        )
    }
}
