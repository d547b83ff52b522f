//! What the service counts, and how it is reported: Prometheus text on `/metrics`
//! (prometheus-client, every name prefixed `imgmirror_`), the JSON of `/stats`, and the hit-ratio
//! history behind the status page. The clock is injectable so time windows can be tested.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

/// Seconds since the Unix epoch, from a source tests can replace.
pub trait Clock: Send + Sync {
    fn now_secs(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that only moves when told to (tests).
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: u64) -> ManualClock {
        ManualClock(AtomicU64::new(start))
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    tier: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArchiveLabels {
    source: String,
    outcome: &'static str,
}

/// How many recent rescues `/stats` lists.
pub const MAX_RESCUED_SHOWN: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormatLabels {
    format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopLabels {
    event_loop: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Minutes of hit/miss history kept for the status page and the ratio windows.
pub const HISTORY_MINUTES: usize = 60;

/// Seconds of per-second history kept for the rolling ratio windows (the longest is 15 minutes).
const ROLLING_SECONDS: usize = 15 * 60;

/// Hit/miss counts: per minute for the last hour (the status page's chart) and per second for
/// the last 15 minutes (the rolling 1/5/15-minute ratios). Both are rings indexed by time.
#[derive(Default)]
struct History {
    /// (minute since epoch, hits, misses) per slot.
    slots: Vec<(u64, u64, u64)>,
    /// (second since epoch, hits, misses) per slot.
    seconds: Vec<(u64, u64, u64)>,
}

/// Counts one answer in the ring slot for `at` (a minute or a second since the epoch).
fn bump(ring: &mut Vec<(u64, u64, u64)>, len: usize, at: u64, hit: bool) {
    if ring.is_empty() {
        *ring = vec![(u64::MAX, 0, 0); len];
    }
    let slot = &mut ring[(at % len as u64) as usize];
    if slot.0 != at {
        *slot = (at, 0, 0);
    }
    if hit {
        slot.1 += 1;
    } else {
        slot.2 += 1;
    }
}

impl History {
    fn record(&mut self, now: u64, hit: bool) {
        bump(&mut self.slots, HISTORY_MINUTES, now / 60, hit);
        bump(&mut self.seconds, ROLLING_SECONDS, now, hit);
    }

    /// (hits, misses) over the last `minutes` minutes, rolling: the `minutes * 60` seconds up to
    /// and including now.
    fn window(&self, now: u64, minutes: u64) -> (u64, u64) {
        let span = minutes * 60;
        self.seconds
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 <= now && now - s.0 < span)
            .fold((0, 0), |(h, m), s| (h + s.1, m + s.2))
    }

    /// One point per minute for the last hour, oldest first: (minute start, hits, misses).
    fn series(&self, now: u64) -> Vec<(u64, u64, u64)> {
        let current = now / 60;
        (0..HISTORY_MINUTES as u64)
            .rev()
            .map(|ago| {
                let minute = current.saturating_sub(ago);
                let (h, m) = self
                    .slots
                    .iter()
                    .find(|s| s.0 == minute)
                    .map_or((0, 0), |s| (s.1, s.2));
                (minute * 60, h, m)
            })
            .collect()
    }
}

/// Distinct upstream hosts tracked for `/stats` and the status page; later ones are counted
/// under [`OTHER_HOSTS`], so a flood of random hosts cannot grow memory.
pub const MAX_HOSTS: usize = 1000;
/// The row that counts hosts past [`MAX_HOSTS`].
pub const OTHER_HOSTS: &str = "(other hosts)";

/// Per-host upstream figures for the status page.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostStats {
    pub fetches: u64,
    pub errors: u64,
    pub total_seconds: f64,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    clock: Arc<dyn Clock>,
    started: u64,
    requests: Family<RequestLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    coalesced: Counter,
    stale: Counter,
    upstream: Family<OutcomeLabels, Counter>,
    upstream_seconds: Histogram,
    upstream_bytes: Counter,
    transform_seconds: Family<FormatLabels, Histogram>,
    served_bytes: Counter,
    in_flight: Gauge,
    memory_bytes: Gauge,
    memory_entries: Gauge,
    mirror_bytes: Gauge,
    mirror_objects: Gauge,
    evictions: Counter,
    mirror_evictions: Family<KindLabels, Counter>,
    /// Public connections accepted, by event loop (`server.threads`): how the loops share them.
    connections: Family<LoopLabels, Counter>,
    /// Body bytes sent from mirror files with sendfile(2) rather than copied from memory.
    sendfile_bytes: Counter,
    /// Connections closed by the service: idle, or a client that read nothing.
    connections_closed: Family<ReasonLabels, Counter>,
    /// Responses refused because unfinished responses held too many bytes.
    unfinished_refused: Counter,
    /// Bytes held by responses not yet taken whole (set at each scrape).
    unfinished_bytes: Gauge,
    /// Image answers by SPEC §4's rule (coalesced = hit): the figures of `/stats`, for alerts.
    answers: Family<ResultLabels, Counter>,
    /// 1 while the last readiness probe (each `/readyz`, each maintenance pass) could write.
    ready: Gauge,
    /// `cache.disk_bytes` (0: no budget).
    disk_budget: Gauge,
    /// Archive lookups by source (template host) and outcome.
    archive_lookups: Family<ArchiveLabels, Counter>,
    archive_lookups_total: AtomicU64,
    archive_rescued: AtomicU64,
    /// The last [`MAX_RESCUED_SHOWN`] rescues, newest last, for `/stats` and the status page.
    rescued: Mutex<std::collections::VecDeque<RescuedRow>>,
    // Plain counters for /stats (the Prometheus ones are label families).
    hits_memory: AtomicU64,
    hits_disk: AtomicU64,
    hits_s3: AtomicU64,
    /// True when the mirror is shared in S3 (the `s3` tier is then counted and shown).
    shared_tier: std::sync::atomic::AtomicBool,
    coalesced_served: AtomicU64,
    /// Coalesced answers whose leader went upstream: hits for this request.
    hits_coalesced: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    upstream_fetches: AtomicU64,
    upstream_errors: AtomicU64,
    history: Mutex<History>,
    hosts: Mutex<std::collections::HashMap<String, HostStats>>,
}

impl Metrics {
    pub fn new(clock: Arc<dyn Clock>) -> Metrics {
        let mut registry = Registry::with_prefix("imgmirror");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by route kind and status class",
            requests.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Image lookups by tier (memory, disk, s3) and result (hit, miss)",
            lookups.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_waiters",
            "Requests that waited for another request's fetch or transform",
            coalesced.clone(),
        );
        let stale = Counter::default();
        registry.register(
            "stale_responses",
            "Mirrored copies served because the upstream failed",
            stale.clone(),
        );
        let upstream = Family::<OutcomeLabels, Counter>::default();
        registry.register("upstream_fetches", "Upstream fetches by outcome (ok, not_modified, not_found, error, timeout, refused, too_large)", upstream.clone());
        let upstream_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "upstream_fetch_duration",
            "Upstream fetch latency",
            Unit::Seconds,
            upstream_seconds.clone(),
        );
        let upstream_bytes = Counter::default();
        registry.register_with_unit(
            "upstream_received",
            "Bytes received from upstreams",
            Unit::Bytes,
            upstream_bytes.clone(),
        );
        let transform_seconds = Family::<FormatLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register_with_unit(
            "transform_duration",
            "Resize and encode latency by output format",
            Unit::Seconds,
            transform_seconds.clone(),
        );
        let served_bytes = Counter::default();
        registry.register_with_unit(
            "served",
            "Image bytes sent to clients",
            Unit::Bytes,
            served_bytes.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled now",
            in_flight.clone(),
        );
        let memory_bytes = Gauge::default();
        registry.register_with_unit(
            "memory_cache",
            "Weighed size of the memory cache",
            Unit::Bytes,
            memory_bytes.clone(),
        );
        let memory_entries = Gauge::default();
        registry.register(
            "memory_cache_entries",
            "Entries in the memory cache",
            memory_entries.clone(),
        );
        let mirror_bytes = Gauge::default();
        registry.register_with_unit(
            "mirror",
            "Bytes in the mirror (measured at start and every minute, plus what this process wrote since)",
            Unit::Bytes,
            mirror_bytes.clone(),
        );
        let mirror_objects = Gauge::default();
        registry.register(
            "mirror_objects",
            "Objects in the mirror (measured like imgmirror_mirror_bytes)",
            mirror_objects.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "memory_cache_evictions",
            "Entries evicted from the memory cache for size",
            evictions.clone(),
        );
        let mirror_evictions = Family::<KindLabels, Counter>::default();
        registry.register(
            "mirror_evictions",
            "Mirror records evicted to stay within cache.disk_bytes, by kind (variant, original)",
            mirror_evictions.clone(),
        );
        let connections = Family::<LoopLabels, Counter>::default();
        registry.register(
            "connections_accepted",
            "Public connections accepted, by event loop",
            connections.clone(),
        );
        let sendfile_bytes = Counter::default();
        registry.register(
            "sendfile_bytes",
            "Response body bytes sent from the mirror's files with sendfile(2) instead of copied from memory",
            sendfile_bytes.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        for reason in ["idle", "send_timeout"] {
            connections_closed
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        registry.register(
            "connections_closed",
            "Connections the service closed, by reason: idle (server.idle_timeout_secs) or send_timeout (a client that took no bytes for server.send_timeout_secs)",
            connections_closed.clone(),
        );
        let unfinished_refused = Counter::default();
        registry.register(
            "unfinished_refused",
            "Responses answered 503 because responses not yet taken by slow clients held cache.memory_bytes",
            unfinished_refused.clone(),
        );
        let unfinished_bytes = Gauge::default();
        registry.register(
            "unfinished_response_bytes",
            "Bytes held by responses not yet taken whole by their clients",
            unfinished_bytes.clone(),
        );
        let answers = Family::<ResultLabels, Counter>::default();
        for result in ["hit", "miss"] {
            answers.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        registry.register(
            "image_answers",
            "Images answered, by result: hit (memory, disk, S3, or waited for another request's fetch) or miss (fetched upstream), as /stats counts them",
            answers.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the last readiness probe (each /readyz and every minute) could write to every mirror tier, else 0",
            ready.clone(),
        );
        let disk_budget = Gauge::default();
        registry.register_with_unit(
            "disk_budget",
            "cache.disk_bytes, the local mirror's budget (0: none)",
            Unit::Bytes,
            disk_budget.clone(),
        );
        let archive_lookups = Family::<ArchiveLabels, Counter>::default();
        registry.register(
            "archive_lookups",
            "Web archive lookups for images whose origin is gone, by source (the archive's host) and outcome (rescued, not_found, not_image, error)",
            archive_lookups.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        let started = clock.now_secs();
        Metrics {
            registry,
            clock,
            started,
            requests,
            lookups,
            coalesced,
            stale,
            upstream,
            upstream_seconds,
            upstream_bytes,
            transform_seconds,
            served_bytes,
            in_flight,
            memory_bytes,
            memory_entries,
            mirror_bytes,
            mirror_objects,
            evictions,
            mirror_evictions,
            connections,
            sendfile_bytes,
            connections_closed,
            unfinished_refused,
            unfinished_bytes,
            answers,
            ready,
            disk_budget,
            archive_lookups,
            archive_lookups_total: AtomicU64::new(0),
            archive_rescued: AtomicU64::new(0),
            rescued: Mutex::default(),
            hits_memory: AtomicU64::new(0),
            hits_disk: AtomicU64::new(0),
            hits_s3: AtomicU64::new(0),
            shared_tier: Default::default(),
            coalesced_served: AtomicU64::new(0),
            hits_coalesced: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            upstream_fetches: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            history: Mutex::new(History::default()),
            hosts: Mutex::new(Default::default()),
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    /// The service clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Says whether the mirror is shared in S3, so lookups count (and `/stats` shows) that tier.
    pub fn set_shared_tier(&self, shared: bool) {
        self.shared_tier.store(shared, Ordering::Relaxed);
    }

    /// A finished HTTP request: `kind` is `image`, `metrics`, `stats`, `health`, `status`, `other`.
    pub fn request(&self, kind: &'static str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                status: class,
            })
            .inc();
    }

    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// An image answered from `tier` with `bytes` of body (`coalesced` when it waited for another
    /// request's work). A coalesced answer is a hit (SPEC §4): it caused no upstream request of
    /// its own; it counts as a memory miss in the lookups and in `coalesced`.
    pub fn image_served(&self, tier: Tier, bytes: u64, coalesced: bool) {
        let lookup = |tier, result| {
            self.lookups
                .get_or_create(&LookupLabels { tier, result })
                .inc()
        };
        match tier {
            Tier::Memory => {
                lookup("memory", "hit");
                self.hits_memory.fetch_add(1, Ordering::Relaxed);
            }
            Tier::Disk => {
                lookup("memory", "miss");
                lookup("disk", "hit");
                self.hits_disk.fetch_add(1, Ordering::Relaxed);
            }
            Tier::S3 => {
                lookup("memory", "miss");
                lookup("disk", "miss");
                lookup("s3", "hit");
                self.hits_s3.fetch_add(1, Ordering::Relaxed);
            }
            Tier::Miss | Tier::Stale | Tier::Archive if coalesced => {
                lookup("memory", "miss");
                self.hits_coalesced.fetch_add(1, Ordering::Relaxed);
            }
            Tier::Miss | Tier::Stale | Tier::Archive => {
                lookup("memory", "miss");
                lookup("disk", "miss");
                if self.shared_tier.load(Ordering::Relaxed) {
                    lookup("s3", "miss");
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        let result = if tier.is_hit() || coalesced {
            "hit"
        } else {
            "miss"
        };
        self.answers.get_or_create(&ResultLabels { result }).inc();
        if tier == Tier::Stale {
            self.stale.inc();
            self.stale_served.fetch_add(1, Ordering::Relaxed);
        }
        if coalesced {
            self.coalesced.inc();
            self.coalesced_served.fetch_add(1, Ordering::Relaxed);
        }
        self.served_bytes.inc_by(bytes);
        let now = self.now();
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, tier.is_hit() || coalesced);
    }

    /// An upstream fetch finished with `outcome` after `seconds`, receiving `bytes`.
    pub fn upstream_fetch(&self, host: &str, outcome: &'static str, seconds: f64, bytes: u64) {
        self.upstream
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.upstream_seconds.observe(seconds);
        self.upstream_bytes.inc_by(bytes);
        self.upstream_fetches.fetch_add(1, Ordering::Relaxed);
        let error = !matches!(outcome, "ok" | "not_modified");
        if error {
            self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: past MAX_HOSTS distinct hosts, new ones are counted together.
        let key = if hosts.len() < MAX_HOSTS || hosts.contains_key(host) {
            host
        } else {
            OTHER_HOSTS
        };
        let h = hosts.entry(key.to_string()).or_default();
        h.fetches += 1;
        h.errors += u64::from(error);
        h.total_seconds += seconds;
    }

    pub fn transform(&self, format: &str, seconds: f64) {
        self.transform_seconds
            .get_or_create(&FormatLabels {
                format: format.to_string(),
            })
            .observe(seconds);
    }

    /// A new object written to the mirror.
    pub fn mirrored(&self, bytes: u64) {
        self.mirror_bytes.inc_by(bytes as i64);
        self.mirror_objects.inc();
    }

    /// One archive lookup for a gone original.
    pub fn archive_lookup(&self, source: &str, outcome: &'static str) {
        self.archive_lookups
            .get_or_create(&ArchiveLabels {
                source: source.to_string(),
                outcome,
            })
            .inc();
        self.archive_lookups_total.fetch_add(1, Ordering::Relaxed);
    }

    /// An original rescued from an archive and mirrored.
    pub fn archive_rescued(&self, url: &str, capture: &crate::archive::Capture) {
        self.archive_rescued.fetch_add(1, Ordering::Relaxed);
        let mut rows = self.rescued.lock().unwrap_or_else(|e| e.into_inner());
        if rows.len() == MAX_RESCUED_SHOWN {
            rows.pop_front();
        }
        rows.push_back(RescuedRow {
            url: crate::upstream::without_query_str(url),
            source: capture.source.clone(),
            capture: capture.timestamp.clone(),
            at: self.now(),
        });
    }

    /// The outcome of a readiness probe.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The local mirror's budget, `cache.disk_bytes`.
    pub fn set_disk_budget(&self, bytes: u64) {
        self.disk_budget
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets the mirror gauges from a scan of the store.
    pub fn mirror_usage(&self, objects: u64, bytes: u64) {
        self.mirror_objects.set(objects as i64);
        self.mirror_bytes.set(bytes as i64);
    }

    /// Records dropped from the mirror by the disk budget.
    pub fn mirror_evicted(&self, variants: u64, originals: u64) {
        self.mirror_evictions
            .get_or_create(&KindLabels { kind: "variant" })
            .inc_by(variants);
        self.mirror_evictions
            .get_or_create(&KindLabels { kind: "original" })
            .inc_by(originals);
    }

    /// A public connection accepted by event loop `n`.
    pub fn connection_accepted(&self, n: usize) {
        self.connections
            .get_or_create(&LoopLabels {
                event_loop: n as u64,
            })
            .inc();
    }

    /// A connection closed by the service, for `reason` (`idle`, `send_timeout`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A response refused because unfinished responses hold their limit.
    pub fn unfinished_refused(&self) {
        self.unfinished_refused.inc();
    }

    /// The bytes unfinished responses hold now.
    pub fn unfinished_bytes(&self, bytes: u64) {
        self.unfinished_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// `n` body bytes sent with sendfile(2).
    pub fn sent_from_file(&self, n: usize) {
        self.sendfile_bytes.inc_by(n as u64);
    }

    pub fn evicted(&self) {
        self.evictions.inc();
    }

    /// Updates the memory-cache gauges.
    pub fn memory_usage(&self, entries: u64, bytes: u64) {
        self.memory_entries.set(entries as i64);
        self.memory_bytes.set(bytes as i64);
    }

    /// The Prometheus (OpenMetrics) text exposition.
    pub fn exposition(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail except on a formatter error, which String never raises.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The `/stats` document.
    pub fn stats(&self) -> Stats {
        let now = self.now();
        let memory = self.hits_memory.load(Ordering::Relaxed);
        let disk = self.hits_disk.load(Ordering::Relaxed);
        let s3 = self.hits_s3.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let hits = memory + disk + s3 + self.hits_coalesced.load(Ordering::Relaxed);
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        // A window with no request has no ratio (null), rather than a misleading 0.
        let window = |m| {
            let (h, mi) = history.window(now, m);
            (h + mi > 0).then(|| ratio(h, mi))
        };
        let mut hosts: Vec<(String, HostStats)> = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        hosts.sort_by(|a, b| b.1.fetches.cmp(&a.1.fetches).then(a.0.cmp(&b.0)));
        Stats {
            hits,
            misses,
            hit_ratio: ratio(hits, misses),
            memory: TierStats { hits: memory },
            disk: TierStats { hits: disk },
            s3: self
                .shared_tier
                .load(Ordering::Relaxed)
                .then_some(TierStats { hits: s3 }),
            coalesced: self.coalesced_served.load(Ordering::Relaxed),
            stale: self.stale_served.load(Ordering::Relaxed),
            upstream: UpstreamStats {
                fetches: self.upstream_fetches.load(Ordering::Relaxed),
                errors: self.upstream_errors.load(Ordering::Relaxed),
                bytes: self.upstream_bytes.get(),
            },
            archive: ArchiveStats {
                lookups: self.archive_lookups_total.load(Ordering::Relaxed),
                rescued: self.archive_rescued.load(Ordering::Relaxed),
                recent: self
                    .rescued
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect(),
            },
            uptime_secs: now.saturating_sub(self.started),
            hit_ratio_1m: window(1),
            hit_ratio_5m: window(5),
            hit_ratio_15m: window(15),
            history: history
                .series(now)
                .into_iter()
                .map(|(t, h, m)| Point {
                    t,
                    hits: h,
                    misses: m,
                })
                .collect(),
            hosts: hosts
                .into_iter()
                .take(20)
                .map(|(host, s)| HostRow {
                    host,
                    fetches: s.fetches,
                    errors: s.errors,
                    mean_seconds: if s.fetches == 0 {
                        0.0
                    } else {
                        s.total_seconds / s.fetches as f64
                    },
                })
                .collect(),
        }
    }
}

fn ratio(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

/// The `/stats` JSON (SPEC §4 fields first, then extensions).
#[derive(Debug, Serialize)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); 0 before any image request.
    pub hit_ratio: f64,
    pub memory: TierStats,
    pub disk: TierStats,
    /// The shared S3 mirror; present only when `cache.store = "s3"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<TierStats>,
    /// Image answers that waited for another request's work.
    pub coalesced: u64,
    /// Mirrored copies served because the upstream failed (counted in `misses`).
    pub stale: u64,
    pub upstream: UpstreamStats,
    /// Web archive rescue: lookups made, originals rescued, the latest rescues.
    pub archive: ArchiveStats,
    pub uptime_secs: u64,
    /// Rolling ratios over the last 1, 5 and 15 minutes; `null` when the window holds no request.
    pub hit_ratio_1m: Option<f64>,
    pub hit_ratio_5m: Option<f64>,
    pub hit_ratio_15m: Option<f64>,
    /// Hits and misses per minute over the last hour, oldest first.
    pub history: Vec<Point>,
    /// Upstream hosts by number of fetches (top 20).
    pub hosts: Vec<HostRow>,
}

#[derive(Debug, Serialize)]
pub struct TierStats {
    pub hits: u64,
}

#[derive(Debug, Serialize)]
pub struct ArchiveStats {
    pub lookups: u64,
    pub rescued: u64,
    /// The last rescues (at most [`MAX_RESCUED_SHOWN`]), oldest first.
    pub recent: Vec<RescuedRow>,
}

/// One rescued image, for `/stats` and the status page.
#[derive(Clone, Debug, Serialize)]
pub struct RescuedRow {
    /// The upstream URL without its query (tokens stay out of `/stats`).
    pub url: String,
    /// The archive's host.
    pub source: String,
    /// The capture's time, YYYYMMDDhhmmss.
    pub capture: String,
    /// When it was rescued (Unix seconds).
    pub at: u64,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStats {
    pub fetches: u64,
    pub errors: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Point {
    /// Start of the minute (Unix seconds).
    pub t: u64,
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Serialize)]
pub struct HostRow {
    pub host: String,
    pub fetches: u64,
    pub errors: u64,
    pub mean_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_table_is_bounded() {
        let m = Metrics::new(Arc::new(ManualClock::new(1_000_000)));
        for i in 0..MAX_HOSTS + 500 {
            m.upstream_fetch(&format!("h{i}.test"), "ok", 0.01, 1);
        }
        m.upstream_fetch("h0.test", "ok", 0.01, 1);
        let hosts = m.hosts.lock().unwrap();
        assert_eq!(hosts.len(), MAX_HOSTS + 1);
        assert_eq!(hosts[OTHER_HOSTS].fetches, 500);
        assert_eq!(hosts["h0.test"].fetches, 2);
    }

    #[test]
    fn a_coalesced_answer_is_a_hit() {
        let m = Metrics::new(Arc::new(ManualClock::new(1_000_000)));
        m.image_served(Tier::Miss, 10, false); // the leader
        for _ in 0..199 {
            m.image_served(Tier::Miss, 10, true); // waited for it
        }
        let s = m.stats();
        assert_eq!((s.hits, s.misses, s.coalesced), (199, 1, 199));
        assert!((s.hit_ratio - 0.995).abs() < 1e-9);
        assert_eq!(s.hit_ratio_1m, Some(s.hit_ratio));
    }

    #[test]
    fn windows_move_with_the_clock() {
        let clock = Arc::new(ManualClock::new(1_000_000 * 60));
        let m = Metrics::new(clock.clone());
        m.image_served(Tier::Miss, 10, false);
        clock.advance(120);
        m.image_served(Tier::Memory, 10, false);
        m.image_served(Tier::Disk, 10, false);
        let s = m.stats();
        assert_eq!((s.hits, s.misses), (2, 1));
        assert_eq!(s.hit_ratio_1m, Some(1.0));
        assert!((s.hit_ratio_5m.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        // Rolling, not calendar minutes: 59 s later the last minute still holds both hits.
        clock.advance(59);
        assert_eq!(m.stats().hit_ratio_1m, Some(1.0));
        clock.advance(1);
        assert_eq!(m.stats().hit_ratio_1m, None);
        clock.advance(10 * 60 - 60);
        let s = m.stats();
        assert_eq!(s.hit_ratio_1m, None);
        assert_eq!(s.hit_ratio_5m, None);
        assert!((s.hit_ratio_15m.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.uptime_secs, 720);
        assert_eq!(s.history.len(), HISTORY_MINUTES);
    }
}
