//! What the service counts, and how it is reported. This module owns the Prometheus registry
//! (prometheus-client, every name prefixed `imgmirror_`) and one method per event the rest of the
//! service reports; `/metrics` is its text exposition. [`stats`] reads `/stats` from the same
//! counters (one count per event), and [`history`] keeps what counters cannot: hit ratios over
//! time, the upstream host table and the latest archive rescues. The clock is the service's
//! ([`crate::clock`]), injected, so time windows can be tested.

pub mod history;
pub mod stats;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::clock::Clock;
use history::{History, Hosts, RescuedRow, Rescues};
pub use history::{HostStats, HISTORY_MINUTES, MAX_HOSTS, MAX_RESCUED_SHOWN, OTHER_HOSTS};
pub use stats::Stats;

/// Where an image answer was found, in the counters' terms (the mirror maps its tiers onto it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The memory cache.
    Memory,
    /// The mirror on the local disk.
    Disk,
    /// The shared mirror in S3.
    S3,
    /// The upstream or an archive: a fetch, a revalidation, or a mirrored copy after a failure.
    Upstream,
}

/// One image answer as the counters see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Where it came from.
    pub found: Found,
    /// It waited for another request's work instead of doing its own.
    pub coalesced: bool,
    /// The upstream failed and the mirrored copy was served.
    pub stale: bool,
}

impl Answer {
    /// SPEC §4: a hit did not reach the upstream itself (a coalesced answer waited for one that
    /// did). Stale answers are misses: the upstream was contacted, and failed.
    pub fn is_hit(self) -> bool {
        self.found != Found::Upstream || self.coalesced
    }
}

/// Whether an upstream outcome is a success (`ok`, `not_modified`); any other is an error.
fn is_success(outcome: &str) -> bool {
    matches!(outcome, "ok" | "not_modified")
}

/// A counter family that remembers its label sets, so `/stats` can sum it (prometheus-client
/// offers no iteration over a family). Label sets are bounded by their sources: outcomes are a
/// fixed list, archive sources come from the configuration.
struct Tally<L> {
    family: Family<L, Counter>,
    seen: Mutex<Vec<L>>,
}

impl<L> Default for Tally<L>
where
    L: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Tally {
            family: Family::default(),
            seen: Mutex::default(),
        }
    }
}

impl<L> Tally<L>
where
    L: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static,
{
    /// Counts one event with `labels`.
    fn inc(&self, labels: &L) {
        if self.family.get(labels).is_none() {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.contains(labels) {
                seen.push(labels.clone());
            }
        }
        self.family.get_or_create(labels).inc();
    }

    /// The events counted under the label sets `keep` accepts.
    fn sum(&self, keep: impl Fn(&L) -> bool) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        seen.iter()
            .filter(|l| keep(l))
            .filter_map(|l| self.family.get(l).map(|c| c.get()))
            .sum()
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

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    clock: Arc<dyn Clock>,
    started: u64,
    requests: Family<RequestLabels, Counter>,
    /// Lookups by tier and result: also `/stats`' per-tier hits.
    lookups: Family<LookupLabels, Counter>,
    coalesced: Counter,
    stale: Counter,
    upstream: Tally<OutcomeLabels>,
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
    /// Image answers by SPEC §4's rule (coalesced = hit): `/stats`' hits and misses.
    answers: Family<ResultLabels, Counter>,
    /// 1 while the last readiness probe (each `/readyz`, each maintenance pass) could write.
    ready: Gauge,
    /// `cache.disk_bytes` (0: no budget).
    disk_budget: Gauge,
    /// Archive lookups by source (template host) and outcome.
    archive_lookups: Tally<ArchiveLabels>,
    /// True when the mirror is shared in S3 (the `s3` tier is then counted and shown).
    shared_tier: AtomicBool,
    /// The last [`MAX_RESCUED_SHOWN`] rescues.
    rescued: Mutex<Rescues>,
    history: Mutex<History>,
    hosts: Mutex<Hosts>,
}

impl Metrics {
    /// Every metric at zero, registered; `clock` dates the history and the uptime.
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
        let upstream = Tally::<OutcomeLabels>::default();
        registry.register(
            "upstream_fetches",
            "Upstream fetches by outcome (ok, not_modified, not_found, error, timeout, refused, too_large, unreachable, busy, abandoned)",
            upstream.family.clone(),
        );
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
        let archive_lookups = Tally::<ArchiveLabels>::default();
        registry.register(
            "archive_lookups",
            "Web archive lookups for images whose origin is gone, by source (the archive's host) and outcome (rescued, not_found, not_image, error)",
            archive_lookups.family.clone(),
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
            shared_tier: AtomicBool::new(false),
            rescued: Mutex::default(),
            history: Mutex::default(),
            hosts: Mutex::default(),
        }
    }

    /// Now, by the service clock.
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    /// Says whether the mirror is shared in S3, so lookups count (and `/stats` shows) that tier.
    pub fn set_shared_tier(&self, shared: bool) {
        self.shared_tier.store(shared, Ordering::Relaxed);
    }

    /// True when the mirror is shared in S3.
    fn is_shared(&self) -> bool {
        self.shared_tier.load(Ordering::Relaxed)
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

    /// Requests being handled: `delta` more (or fewer).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// An image answered with `bytes` of body. A coalesced answer is a hit (SPEC §4): it caused
    /// no upstream request of its own; it counts as a memory miss in the lookups and in
    /// `coalesced`.
    pub fn image_served(&self, answer: Answer, bytes: u64) {
        let lookup = |tier, result| {
            self.lookups
                .get_or_create(&LookupLabels { tier, result })
                .inc();
        };
        match answer.found {
            Found::Memory => lookup("memory", "hit"),
            Found::Disk => {
                lookup("memory", "miss");
                lookup("disk", "hit");
            }
            Found::S3 => {
                lookup("memory", "miss");
                lookup("disk", "miss");
                lookup("s3", "hit");
            }
            Found::Upstream if answer.coalesced => lookup("memory", "miss"),
            Found::Upstream => {
                lookup("memory", "miss");
                lookup("disk", "miss");
                if self.is_shared() {
                    lookup("s3", "miss");
                }
            }
        }
        let hit = answer.is_hit();
        let result = if hit { "hit" } else { "miss" };
        self.answers.get_or_create(&ResultLabels { result }).inc();
        if answer.stale {
            self.stale.inc();
        }
        if answer.coalesced {
            self.coalesced.inc();
        }
        self.served_bytes.inc_by(bytes);
        let now = self.now();
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, hit);
    }

    /// An upstream fetch finished with `outcome` after `seconds`, receiving `bytes`.
    pub fn upstream_fetch(&self, host: &str, outcome: &'static str, seconds: f64, bytes: u64) {
        self.upstream.inc(&OutcomeLabels { outcome });
        self.upstream_seconds.observe(seconds);
        self.upstream_bytes.inc_by(bytes);
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).record(
            host,
            !is_success(outcome),
            seconds,
        );
    }

    /// A transform to `format` that took `seconds`.
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

    /// One archive lookup for a gone original, at `source` (the archive's host).
    pub fn archive_lookup(&self, source: &str, outcome: &'static str) {
        self.archive_lookups.inc(&ArchiveLabels {
            source: source.to_string(),
            outcome,
        });
    }

    /// An original rescued from an archive and mirrored: `url` without its query (tokens stay
    /// out of `/stats`), the archive's host and the capture's time (YYYYMMDDhhmmss).
    pub fn archive_rescued(&self, url: String, source: &str, capture: &str) {
        let at = self.now();
        self.rescued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RescuedRow {
                url,
                source: source.to_string(),
                capture: capture.to_string(),
                at,
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

    /// An entry evicted from the memory cache for size.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn the_host_table_is_bounded() {
        let m = Metrics::new(Arc::new(ManualClock::new(1_000_000)));
        for i in 0..MAX_HOSTS + 500 {
            m.upstream_fetch(&format!("h{i}.test"), "ok", 0.01, 1);
        }
        m.upstream_fetch("h0.test", "ok", 0.01, 1);
        let hosts = m.hosts.lock().unwrap();
        assert_eq!(hosts.len(), MAX_HOSTS + 1);
        assert_eq!(hosts.get(OTHER_HOSTS).map(|h| h.fetches), Some(500));
        assert_eq!(hosts.get("h0.test").map(|h| h.fetches), Some(2));
    }
}
