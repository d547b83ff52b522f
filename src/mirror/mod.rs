//! The image pipeline, independent of HTTP: a [`Mirror`] owns the tiers (memory, local disk, S3),
//! the upstream client, the remembered 404s, the coalesced flights and the transform pool, and
//! answers "the bytes of this route" top to bottom: memory → mirror (disk, S3) → upstream →
//! transform. The service, `warm`, `rewrite --warm`, `export` and `purge` all call into it; it
//! calls nothing above it.
//!
//! * [`Mirror::load`]: a route's original or variant, coalesced, kept in memory.
//! * [`Mirror::original`]: an original from the mirror, revalidated or fetched as needed
//!   (`original`: fetch, revalidation, stale copies, archive rescue).
//! * `variant`: a derived image, stored or transformed on the bounded pool.
//! * [`plan()`]: a route's options (and `Accept`) as a transform plan.
//! * [`warm`]: fill the mirror from a set of upstream URLs.
//! * [`upkeep`]: the minute timer (disk budget, usage, readiness, `gc` when due) and the
//!   following of other replicas' purges.
//! * [`LoadError`]: why a load failed, each with the HTTP status the service answers.

mod error;
mod original;
pub mod plan;
mod tier;
pub mod upkeep;
mod variant;
pub mod warm;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::archive::Archives;
use crate::cache::{Entry, Flights, MemoryCache, NegativeCache};
use crate::clock::Clock;
use crate::config::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::route::{self, Route};
use crate::start::StartError;
use crate::store::{self, Kind, Record, Source, Tiers, VariantKey};
use crate::transform;
use crate::upstream::Upstream;

pub use error::LoadError;
pub use plan::{plan, Accepts, Planned};
pub use tier::Tier;
pub use variant::{MAX_QUEUED_TRANSFORMS, TRANSFORM_QUEUE_WAIT};

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
    /// CDN purges under way ([`Mirror::purge_cdn`]), waited for by [`Mirror::purges_sent`].
    purges: std::sync::Mutex<tokio::task::JoinSet<()>>,
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
            purges: Default::default(),
            config,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The service's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The mirror's tiers (local disk, S3).
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
        let (key, planned) = self.key_of(&mut route, accepts)?;
        let vary_accept = plan::varies_by_accept(&self.config, &route.options);
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

    /// The plan for `route` as a client accepting `accepts` asks for it, and the key its bytes
    /// are kept under (memory and mirror); options that cannot change the output are dropped
    /// from `route` first, so they make no new key (and no new work): quality for a lossless
    /// format, `progressive` for a format that cannot be written progressively.
    fn key_of(
        &self,
        route: &mut Route,
        accepts: Accepts,
    ) -> Result<(String, Option<plan::Planned>), LoadError> {
        let planned = plan(&self.config, &route.options, accepts)?;
        let out_format = planned.as_ref().and_then(|p| p.plan.format);
        if out_format.is_some_and(transform::OutFormat::is_lossless) {
            route.options.quality = None;
        }
        if out_format.is_some_and(|f| !f.capabilities().progressive) {
            route.options.progressive = false;
        }
        let key = match &planned {
            Some(p) => variant_key(route, p.negotiated).to_string(),
            None => cache_key(route),
        };
        Ok((key, planned))
    }

    /// Makes and stores the variant `route` names for a client accepting `accepts`, ahead of
    /// any reader (`warm --variants`), through the same path a request takes (the pool and its
    /// share of `image.memory_bytes`). `Ok(false)` when a current one was already stored (made
    /// from the original the mirror holds now), or when `route` names the original.
    pub async fn make_variant(
        self: &Arc<Self>,
        mut route: Route,
        accepts: Accepts,
    ) -> Result<bool, LoadError> {
        let (key, planned) = self.key_of(&mut route, accepts)?;
        if planned.is_none() {
            return Ok(false);
        }
        let stored = self
            .tiers
            .record(store::Kind::Variant, &key)
            .await
            .ok()
            .flatten();
        let original = self
            .tiers
            .record(store::Kind::Original, &route.upstream)
            .await
            .ok()
            .flatten();
        if let (Some(v), Some(o)) = (stored, original) {
            if v.source.as_deref() == Some(o.hash.as_str()) {
                return Ok(false);
            }
        }
        self.load(route, accepts).await.map(|_| true)
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

    /// Asks the CDN in front (`cdn.purge_url`) to drop these upstream URLs' images, in a task of
    /// its own (a slow CDN holds up no request; [`Mirror::purges_sent`] waits for them); a
    /// refusal is logged. Nothing without a `purge_url`.
    pub fn purge_cdn(&self, urls: Vec<String>) {
        let cdn = self.config.cdn.clone();
        if cdn.purge_url.is_empty() || urls.is_empty() {
            return;
        }
        let Ok(mut purges) = self.purges.lock() else {
            return;
        };
        // The finished ones go first: a long-running service keeps none of them.
        while purges.try_join_next().is_some() {}
        purges.spawn(async move {
            match crate::cdn::purge(&cdn, &urls).await {
                Ok(keys) => tracing::info!(keys, "asked the CDN to purge"),
                Err(e) => tracing::warn!(error = %e, "the CDN did not purge"),
            }
        });
    }

    /// Waits until every CDN purge asked for so far has been sent (or has failed): before a
    /// command returns, or the service stops, so none is lost with the runtime.
    pub async fn purges_sent(&self) {
        let Ok(mut purges) = self.purges.lock().map(|mut p| std::mem::take(&mut *p)) else {
            return;
        };
        while purges.join_next().await.is_some() {}
    }
}

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
