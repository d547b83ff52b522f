//! The image pipeline, independent of HTTP: a [`Mirror`] owns the tiers (memory, local disk, S3),
//! the upstream client, the remembered 404s, the coalesced flights and the transform pool, and
//! answers "the bytes of this route" top to bottom: memory → mirror (disk, S3) → upstream →
//! transform. The service, `warm`, `rewrite --warm`, `export` and `purge` all call into it; it
//! calls nothing above it.
//!
//! * [`Mirror::load`]: a route's original or variant, coalesced, kept in memory.
//! * [`Mirror::original`]: an original from the mirror, revalidated or fetched as needed.
//! * [`plan`]: a route's options (and `Accept`) as a transform plan.
//! * [`warm`]: fill the mirror from a set of upstream URLs.
//! * [`LoadError`]: why a load failed, each with the HTTP status the service answers.

mod error;
pub mod plan;
mod tier;
pub mod warm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};

use crate::archive::Archives;
use crate::cache::{Entry, Flights, Interest, MemoryCache, NegativeCache};
use crate::clock::Clock;
use crate::config::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::route::{self, Route};
use crate::start::StartError;
use crate::store::{
    self, ops, sha256_hex, Found, Kind, PutMode, Record, Source, Tiers, VariantKey,
};
use crate::transform;
use crate::upstream::{FetchError, Fetched, StillWanted, Upstream, Validators};

pub use error::LoadError;
pub use plan::{plan, Accepts, Planned};
pub use tier::Tier;

/// What a coalesced load produces: the entry and the tier that answered.
pub type Loaded = Result<(Arc<Entry>, Tier), LoadError>;

/// A route's bytes, ready to serve, with what the response and the request log need.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The bytes and their headers.
    pub entry: Arc<Entry>,
    /// Which tier answered (`X-Cache`, the metrics, the log).
    pub tier: Tier,
    /// True when this request waited for another request's work.
    pub coalesced: bool,
    /// The bytes depend on the request's `Accept` (format negotiation): `Vary: Accept`.
    pub vary_accept: bool,
}

/// The pipeline and everything it keeps.
pub struct Mirror {
    config: Arc<Config>,
    tiers: Tiers,
    upstream: Upstream,
    /// Hot responses.
    memory: MemoryCache,
    /// Upstream 404/410s remembered for `negative_ttl_secs`.
    negative: NegativeCache,
    /// Coalesces concurrent loads of one cold key.
    flights: Arc<Flights<Loaded>>,
    /// Work in progress, service-wide (`server.max_in_flight`): each request holds a place
    /// (`server::guard`), and so does each flight whose requests have all gone.
    in_flight: Arc<Semaphore>,
    /// Transforms running at once: one per core, so CPU work never piles up threads or memory.
    transforms: Semaphore,
    /// Transforms waiting for a permit (bounded by [`MAX_QUEUED_TRANSFORMS`]).
    queued: std::sync::atomic::AtomicUsize,
    /// `image.memory_bytes` in KiB permits: each running transform holds its peak
    /// (`transform::budget`).
    transform_memory: Semaphore,
    /// Counters.
    metrics: Arc<Metrics>,
    /// The service clock: freshness, expiry, link records.
    clock: Arc<dyn Clock>,
    /// Web archives to rescue gone originals from (`archive.enabled`).
    archives: Option<Archives>,
}

impl Mirror {
    /// Opens the mirror `config` names ([`store::open`]) and builds the pipeline over it.
    pub async fn open(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        deps: &Deps,
    ) -> Result<Mirror, StartError> {
        let tiers = store::open(&config).await?;
        Ok(Mirror::with_tiers(config, tiers, metrics, deps)?)
    }

    /// The pipeline over tiers already opened.
    pub fn with_tiers(
        config: Arc<Config>,
        tiers: Tiers,
        metrics: Arc<Metrics>,
        deps: &Deps,
    ) -> Result<Mirror, String> {
        let upstream = Upstream::with_lookup(&config.upstream, deps.lookup.clone())?;
        let archives = Archives::new(&config, deps.lookup.clone())?;
        let evictions = metrics.clone();
        let in_flight = Arc::new(Semaphore::new(config.server.max_in_flight));
        metrics.set_shared_tier(tiers.is_shared());
        metrics.set_disk_budget(config.cache.disk_bytes);
        Ok(Mirror {
            memory: MemoryCache::new(config.cache.memory_bytes, deps.clock.clone(), move || {
                evictions.evicted()
            }),
            negative: NegativeCache::new(Duration::from_secs(
                config.cache.negative_ttl_secs.max(1),
            )),
            flights: Arc::new(Flights::with_handover(in_flight.clone())),
            in_flight,
            transforms: Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
            queued: Default::default(),
            transform_memory: Semaphore::new(
                usize::try_from(config.image.memory_bytes / 1024)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            ),
            tiers,
            upstream,
            metrics,
            clock: deps.clock.clone(),
            archives,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// The service-wide bound on work in progress (`server.max_in_flight`), shared by requests
    /// and by flights nobody waits for any more.
    pub fn in_flight(&self) -> &Semaphore {
        &self.in_flight
    }

    /// The upstream policy check alone (hosts, schemes, literal addresses), before any work.
    pub fn check(&self, url: &str) -> Result<(), LoadError> {
        self.upstream
            .check(url)
            .map(|_| ())
            .map_err(LoadError::from)
    }

    /// A route's bytes for a client that accepts `accepts`: the plan (presets, bounds, format
    /// negotiation), then memory, then (once for all concurrent requests of the key, in a task of
    /// its own) the mirror, the upstream and the transform; the result is kept in memory.
    pub async fn load(
        self: &Arc<Self>,
        mut route: Route,
        accepts: Accepts,
    ) -> Result<Answer, LoadError> {
        let planned = plan(&self.config, &route.options, accepts)?;
        let vary_accept = plan::varies_by_accept(&self.config, &route.options);
        // Options that cannot change the output make no new key (and no new work): quality for a
        // lossless format.
        let out_format = planned.as_ref().and_then(|p| p.plan.format);
        if out_format.is_some_and(transform::OutFormat::is_lossless) {
            route.options.quality = None;
        }
        // Nor does `progressive` for a format that cannot be written progressively.
        if out_format.is_some_and(|f| !f.capabilities().progressive) {
            route.options.progressive = false;
        }
        let key = match &planned {
            Some(p) => variant_key(&route, p.negotiated).to_string(),
            None => cache_key(&route),
        };
        // Memory holds only what passed the policy check (the config does not change while the
        // process runs), so a hit needs no URL parsing; everything past memory is checked.
        if let Some(entry) = self.memory.get(&key).await {
            return Ok(Answer {
                entry,
                tier: Tier::Memory,
                coalesced: false,
                vary_accept,
            });
        }
        self.check(&route.upstream)?;
        let (loaded, leader) = self
            .load_coalesced(key, route, planned.map(|p| p.plan))
            .await
            .ok_or(LoadError::Internal("the image load failed unexpectedly"))?;
        let (entry, tier) = loaded?;
        Ok(Answer {
            entry,
            tier,
            coalesced: !leader,
            vary_accept,
        })
    }

    /// Loads a key once for all concurrent callers, in a task of its own (a client that goes away
    /// cancels nothing), and keeps the result in memory. Returns the result and whether this
    /// caller started the work; `None` if the work panicked. Boxed: a variant's load loads its
    /// original through here too.
    fn load_coalesced(
        self: &Arc<Self>,
        key: String,
        route: Route,
        plan: Option<transform::Plan>,
    ) -> store::BoxFuture<'static, Option<(Loaded, bool)>> {
        let this = self.clone();
        Box::pin(async move {
            let task = this.clone();
            let flight_key = key.clone();
            this.flights
                .run(&key, move |interest| async move {
                    let mut loaded = match plan {
                        None => {
                            let wanted = || !interest.abandoned();
                            task.original_at(&route.upstream, None, &wanted).await
                        }
                        Some(plan) => task.variant(&route, &flight_key, plan, &interest).await,
                    };
                    if let Ok((entry, _)) = &mut loaded {
                        *entry = task.with_local_file(entry.clone());
                        task.memory.insert(flight_key, entry.clone()).await;
                    }
                    loaded
                })
                .await
        })
    }

    /// `entry` with the path of the local mirror's file of its bytes, for `sendfile(2)` (the
    /// server opens and checks it); no filesystem call is made here.
    fn with_local_file(&self, entry: Arc<Entry>) -> Arc<Entry> {
        if entry.local_file.is_some() {
            return entry;
        }
        match self.tiers.local().blob_file(&entry.hash) {
            Some(path) => Arc::new(entry.with_local_file(path)),
            None => entry,
        }
    }

    /// Loads a derived image: a stored variant of the current original, or the original
    /// (coalesced with other requests for it) transformed on the bounded pool and stored.
    async fn variant(
        self: &Arc<Self>,
        route: &Route,
        key: &str,
        plan: transform::Plan,
        interest: &Interest,
    ) -> Loaded {
        let now = self.clock.now_secs();
        let ttl = self.config.cache.ttl_secs;
        // A stored variant is good while the original it came from is fresh in the mirror.
        let stored = self.tiers.lookup(Kind::Variant, key).await.ok().flatten();
        if let Some(v) = &stored {
            if let Ok(Some(o)) = self.tiers.lookup(Kind::Original, &route.upstream).await {
                let fresh = now < o.record.checked_at.saturating_add(ttl);
                if fresh && v.record.source.as_deref() == Some(o.record.hash.as_str()) {
                    let until = o.record.checked_at.saturating_add(ttl);
                    return Ok((entry(&v.record, v.bytes.clone(), until), tier_of(v.source)));
                }
            }
        }

        let original_route = Route {
            upstream: route.upstream.clone(),
            options: route::Options::default(),
        };
        let original_key = cache_key(&original_route);
        let (source, tier) = match self.memory.get(&original_key).await {
            Some(e) => (e, Tier::Memory),
            None => match self
                .load_coalesced(original_key, original_route, None)
                .await
            {
                Some((loaded, _)) => loaded?,
                None => {
                    return Err(LoadError::Internal(
                        "loading the original failed unexpectedly",
                    ))
                }
            },
        };
        if let Some(v) = stored.filter(|v| v.record.source.as_deref() == Some(source.hash.as_str()))
        {
            return Ok((entry(&v.record, v.bytes, source.fresh_until), tier));
        }

        let limits = transform::Limits {
            max_pixels: self.config.image.max_pixels,
            max_frames: self.config.image.max_frames,
        };
        // What it will cost in memory at its peak, from the headers alone: admitted against
        // `image.memory_bytes` with its place on the pool.
        let peak =
            transform::budget::peak_bytes(&source.body, &plan, &limits).map_err(LoadError::from)?;
        let permit = self.transform_permit(interest, peak).await?;
        let body = source.body.clone();
        let started = Instant::now();
        let output =
            tokio::task::spawn_blocking(move || transform::transform(&body, &plan, &limits))
                .await
                .map_err(|_| LoadError::Internal("the transform failed unexpectedly"))?;
        drop(permit);
        let output = output.map_err(LoadError::from)?;
        self.metrics
            .transform(output.format.name(), started.elapsed().as_secs_f64());
        let bytes = Bytes::from(output.bytes);
        let record = Record {
            key: key.to_string(),
            hash: sha256_hex(&bytes),
            content_type: output.format.content_type().to_string(),
            size: bytes.len() as u64,
            etag: None,
            last_modified: None,
            fetched_at: now,
            checked_at: now,
            source: Some(source.hash.clone()),
            archive: None,
        };
        match self
            .tiers
            .store(Kind::Variant, &record, &bytes, PutMode::Overwrite)
            .await
        {
            Ok(_) => self.metrics.mirrored(record.size),
            Err(e) => tracing::warn!(key, error = %e, "cannot store a variant"),
        }
        let e = entry(&record, bytes, source.fresh_until);
        // A variant is as new as its original.
        Ok((
            Arc::new(e.with_last_modified(source.last_modified.clone())),
            tier,
        ))
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
                        Some(k) => Ok((k, sha256_hex(&bytes))),
                    })
                    .await
                    .unwrap_or(Err(LoadError::Internal(
                        "inspecting a fetched image failed",
                    )))
                };
                let (kind, hash) = match inspected {
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
                };
                // A first copy is a conditional put: of two replicas racing, one record wins.
                let mode = if mirrored.is_some() {
                    PutMode::Overwrite
                } else {
                    PutMode::Create
                };
                Ok((self.keep(url, record, bytes, mode).await?, Tier::Miss))
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
    async fn may_fetch(&self, url: &str) -> Result<(), LoadError> {
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
    async fn keep(
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

    /// Stale-if-error: serves the mirrored copy because the upstream failed (`why`), and asks the
    /// upstream again after `negative_ttl_secs` rather than on every request.
    async fn serve_stale(
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
    async fn rescue(&self, url: &str, when: u64, wanted: StillWanted<'_>) -> Option<Loaded> {
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
            key: url.to_string(),
            hash: sha256_hex(&rescued.bytes),
            content_type: rescued.kind.content_type().to_string(),
            size: rescued.bytes.len() as u64,
            etag: None,
            last_modified: None,
            fetched_at: now,
            checked_at: now,
            source: None,
            archive: Some(rescued.capture),
        };
        Some(
            self.keep(url, record, rescued.bytes, PutMode::Create)
                .await
                .map(|entry| (entry, Tier::Archive)),
        )
    }

    /// A place on the transform pool. The queue in front of it is bounded and waited on for at
    /// most [`TRANSFORM_QUEUE_WAIT`]: past either, a clear 503 beats an answer a minute late (and
    /// originals, which need no transform, are never queued behind resizes). A transform whose
    /// callers have all gone leaves the queue instead of running for nobody.
    ///
    /// The place is also `peak` bytes of `image.memory_bytes` (in KiB permits of
    /// `transform_memory`, taken first and in arrival order, so a large transform is not starved
    /// by small ones); a transform whose peak alone is over the whole budget can never run: 422.
    async fn transform_permit(
        &self,
        interest: &Interest,
        peak: u64,
    ) -> Result<TransformPermit<'_>, LoadError> {
        use std::sync::atomic::Ordering;
        let budget = self.config.image.memory_bytes;
        if peak > budget {
            return Err(LoadError::OverMemoryBudget { peak, budget });
        }
        let kib = u32::try_from(peak.div_ceil(1024)).unwrap_or(u32::MAX);
        if self.transforms.available_permits() == 0
            && self.queued.load(Ordering::Relaxed) >= MAX_QUEUED_TRANSFORMS
        {
            return Err(LoadError::Busy);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(TRANSFORM_QUEUE_WAIT, async {
            let memory = until_wanted(self.transform_memory.acquire_many(kib), interest).await?;
            let pool = until_wanted(self.transforms.acquire(), interest).await?;
            Ok::<_, LoadError>(TransformPermit {
                _memory: memory,
                _pool: pool,
            })
        })
        .await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let permit = waited.map_err(|_| LoadError::Busy)??;
        if interest.abandoned() {
            return Err(LoadError::Abandoned);
        }
        Ok(permit)
    }

    /// The archive capture a mirrored original came from, if it was rescued from one.
    pub async fn capture_of(&self, url: &str) -> Option<crate::archive::Capture> {
        let found = self.tiers.lookup(Kind::Original, url).await.ok()??;
        found.record.archive
    }

    /// Proves every tier of the mirror can be written now (for `/readyz`, and every
    /// maintenance pass so that `imgmirror_ready` stays true between probes).
    pub async fn ready(&self) -> std::io::Result<()> {
        let probe = self.tiers.check_writable().await;
        self.metrics.set_ready(probe.is_ok());
        probe
    }

    /// (entries, bytes) of the memory tier.
    pub async fn memory_usage(&self) -> (u64, u64) {
        self.memory.usage().await
    }

    /// Drops these upstream URLs (originals and every variant) from memory and forgets their
    /// remembered 404s. Returns how many distinct URLs were given.
    pub async fn forget_in_memory(&self, urls: Vec<String>) -> usize {
        for u in &urls {
            self.negative.remove(u).await;
        }
        let wanted: std::collections::HashSet<String> = urls.into_iter().collect();
        let count = wanted.len();
        self.memory.remove_where(move |key| {
            let upstream = VariantKey::parse(key).and_then(|v| v.upstream());
            upstream.is_some_and(|u| wanted.contains(&u))
        });
        count
    }

    /// Keeps the local disk within `cache.disk_bytes` and the mirror gauges true: now, then
    /// every [`MAINTENANCE_INTERVAL`], until `shutdown`.
    pub async fn maintain(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let max = self.config.cache.disk_bytes;
        loop {
            if max > 0 {
                match ops::enforce_budget(self.tiers.local(), max).await {
                    Ok(e) if e.variants + e.originals > 0 => {
                        self.metrics
                            .mirror_evicted(e.variants as u64, e.originals as u64);
                        tracing::info!(
                            variants = e.variants,
                            originals = e.originals,
                            bytes_after = e.bytes_after,
                            "local mirror over cache.disk_bytes: evicted"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot enforce cache.disk_bytes"),
                }
            }
            match self.tiers.primary().usage().await {
                Ok(u) => self.metrics.mirror_usage(u.blobs, u.bytes),
                Err(e) => tracing::warn!(error = %e, "cannot measure the mirror"),
            }
            if let Err(e) = self.ready().await {
                tracing::warn!(error = %e, "the mirror cannot be written: not ready");
            }
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// A transform's place: on the pool, and its peak bytes of `image.memory_bytes`.
struct TransformPermit<'a> {
    _memory: tokio::sync::SemaphorePermit<'a>,
    _pool: tokio::sync::SemaphorePermit<'a>,
}

/// Awaits a permit while someone waits for the transform (checked every [`ABANDON_CHECK`]).
async fn until_wanted<P>(
    acquire: impl std::future::Future<Output = Result<P, tokio::sync::AcquireError>>,
    interest: &Interest,
) -> Result<P, LoadError> {
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            permit = &mut acquire => return permit.map_err(|_| LoadError::ShuttingDown),
            _ = tokio::time::sleep(ABANDON_CHECK) => {
                if interest.abandoned() {
                    return Err(LoadError::Abandoned);
                }
            }
        }
    }
}

/// Transforms that may wait for the pool at once; more get a 503.
pub const MAX_QUEUED_TRANSFORMS: usize = 32;
/// How often a queued transform checks that someone still waits for it.
const ABANDON_CHECK: Duration = Duration::from_millis(100);
/// The longest a transform waits for the pool before its request gets a 503.
pub const TRANSFORM_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// How often the local disk is brought back within `cache.disk_bytes` and the mirror measured.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// The tier a mirrored copy came from.
fn tier_of(source: Source) -> Tier {
    match source {
        Source::Local => Tier::Disk,
        Source::Shared => Tier::S3,
    }
}

/// The memory-cache and coalescing key of an original: its route in unsigned, canonical form.
fn cache_key(route: &Route) -> String {
    route::encode_checked(&route.upstream, &route.options, None)
        .unwrap_or_else(|_| route.upstream.clone())
}

/// The key of a derived image.
fn variant_key(route: &Route, negotiated: Option<store::Negotiated>) -> VariantKey {
    VariantKey {
        route: cache_key(route),
        negotiated,
    }
}

/// A memory entry for mirrored bytes, fresh until `fresh_until` (Unix seconds).
fn entry(r: &Record, body: Bytes, fresh_until: u64) -> Arc<Entry> {
    let last_modified = r
        .last_modified
        .as_deref()
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .unwrap_or_else(|| std::time::UNIX_EPOCH + Duration::from_secs(r.fetched_at));
    Arc::new(Entry::new(
        body,
        r.hash.clone(),
        r.content_type.clone(),
        format!("\"{}\"", &r.hash[..r.hash.len().min(32)]),
        httpdate::fmt_http_date(last_modified),
        fresh_until,
    ))
}
