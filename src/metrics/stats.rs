//! The `/stats` document (SPEC §4's fields first, then extensions), read from the same counters
//! `/metrics` exposes: one count per event, so the two can never disagree.

use serde::Serialize;

use super::history::RescuedRow;
use super::{LookupLabels, Metrics, ResultLabels};

/// Upstream hosts listed by `/stats`, busiest first.
const HOSTS_SHOWN: usize = 20;

/// The `/stats` JSON (SPEC §4 fields first, then extensions).
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Image answers that did not reach the upstream themselves (memory, disk, S3, coalesced).
    pub hits: u64,
    /// Image answers that went upstream (stale and archive answers included).
    pub misses: u64,
    /// hits / (hits + misses); 0 before any image request.
    pub hit_ratio: f64,
    /// Answers from the memory cache.
    pub memory: TierStats,
    /// Answers from the mirror on the local disk.
    pub disk: TierStats,
    /// The shared S3 mirror; present only when `cache.store = "s3"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<TierStats>,
    /// Image answers that waited for another request's work.
    pub coalesced: u64,
    /// Mirrored copies served because the upstream failed (counted in `misses`).
    pub stale: u64,
    /// Fetches from origins.
    pub upstream: UpstreamStats,
    /// Web archive rescue: lookups made, originals rescued, the latest rescues.
    pub archive: ArchiveStats,
    /// Seconds since the service started.
    pub uptime_secs: u64,
    /// Rolling ratios over the last 1, 5 and 15 minutes; `null` when the window holds no request.
    pub hit_ratio_1m: Option<f64>,
    /// See `hit_ratio_1m`.
    pub hit_ratio_5m: Option<f64>,
    /// See `hit_ratio_1m`.
    pub hit_ratio_15m: Option<f64>,
    /// Hits and misses per minute over the last hour, oldest first.
    pub history: Vec<Point>,
    /// Upstream hosts by number of fetches (top 20).
    pub hosts: Vec<HostRow>,
}

/// One tier's answers.
#[derive(Debug, Serialize)]
pub struct TierStats {
    /// Image answers this tier gave.
    pub hits: u64,
}

/// Web archive rescue.
#[derive(Debug, Serialize)]
pub struct ArchiveStats {
    /// Lookups made, every source and outcome.
    pub lookups: u64,
    /// Of which found a capture that was mirrored.
    pub rescued: u64,
    /// The last rescues (at most [`super::history::MAX_RESCUED_SHOWN`]), oldest first.
    pub recent: Vec<RescuedRow>,
}

/// Fetches from origins.
#[derive(Debug, Serialize)]
pub struct UpstreamStats {
    /// Fetches finished, every outcome.
    pub fetches: u64,
    /// Of which failed (anything but `ok` and `not_modified`).
    pub errors: u64,
    /// Bytes received.
    pub bytes: u64,
}

/// One minute of the hour's history.
#[derive(Debug, Serialize)]
pub struct Point {
    /// Start of the minute (Unix seconds).
    pub t: u64,
    /// Hits in that minute.
    pub hits: u64,
    /// Misses in that minute.
    pub misses: u64,
}

/// One upstream host's fetches.
#[derive(Debug, Serialize)]
pub struct HostRow {
    /// The host (or `(other hosts)` past the table's bound).
    pub host: String,
    /// Fetches made.
    pub fetches: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their mean duration.
    pub mean_seconds: f64,
}

/// hits / (hits + misses), 0 when both are 0.
fn ratio(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

impl Metrics {
    /// The `/stats` document, now.
    pub fn stats(&self) -> Stats {
        let now = self.now();
        // Read without creating: `/metrics` shows a series once its first event happened.
        let answers = |result| {
            self.answers
                .get(&ResultLabels { result })
                .map_or(0, |c| c.get())
        };
        let found = |tier, result| {
            self.lookups
                .get(&LookupLabels { tier, result })
                .map_or(0, |c| c.get())
        };
        let (hits, misses) = (answers("hit"), answers("miss"));
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        // A window with no request has no ratio (null), rather than a misleading 0.
        let window = |m| {
            let (h, mi) = history.window(now, m);
            (h + mi > 0).then(|| ratio(h, mi))
        };
        let hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .busiest(HOSTS_SHOWN);
        Stats {
            hits,
            misses,
            hit_ratio: ratio(hits, misses),
            memory: TierStats {
                hits: found("memory", "hit"),
            },
            disk: TierStats {
                hits: found("disk", "hit"),
            },
            s3: self.is_shared().then(|| TierStats {
                hits: found("s3", "hit"),
            }),
            coalesced: self.coalesced.get(),
            stale: self.stale.get(),
            upstream: UpstreamStats {
                fetches: self.upstream.sum(|_| true),
                errors: self.upstream.sum(|l| !super::is_success(l.outcome)),
                bytes: self.upstream_bytes.get(),
            },
            archive: ArchiveStats {
                lookups: self.archive_lookups.sum(|_| true),
                rescued: self.archive_lookups.sum(|l| l.outcome == "rescued"),
                recent: self
                    .rescued
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rows(),
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

#[cfg(test)]
mod tests {
    use super::super::history::HISTORY_MINUTES;
    use super::super::{Answer, Found};
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn served(m: &Metrics, found: Found, coalesced: bool) {
        m.image_served(
            Answer {
                found,
                coalesced,
                stale: false,
            },
            10,
        );
    }

    #[test]
    fn a_coalesced_answer_is_a_hit() {
        let m = Metrics::new(Arc::new(ManualClock::new(1_000_000)));
        served(&m, Found::Upstream, false); // the leader
        for _ in 0..199 {
            served(&m, Found::Upstream, true); // waited for it
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
        served(&m, Found::Upstream, false);
        clock.advance(120);
        served(&m, Found::Memory, false);
        served(&m, Found::Disk, false);
        let s = m.stats();
        assert_eq!((s.hits, s.misses), (2, 1));
        assert_eq!((s.memory.hits, s.disk.hits), (1, 1));
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

    #[test]
    fn upstream_and_archive_figures_are_the_prometheus_counters_summed() {
        let m = Metrics::new(Arc::new(ManualClock::new(1_000_000)));
        for outcome in ["ok", "ok", "not_modified", "timeout", "busy"] {
            m.upstream_fetch("h.test", outcome, 0.5, 1);
        }
        m.archive_lookup("web.archive.org", "not_found");
        m.archive_lookup("archive.today", "rescued");
        let s = m.stats();
        assert_eq!((s.upstream.fetches, s.upstream.errors), (5, 2));
        assert_eq!((s.archive.lookups, s.archive.rescued), (2, 1));
        let text = m.exposition();
        assert!(
            text.contains("imgmirror_upstream_fetches_total{outcome=\"ok\"} 2"),
            "{text}"
        );
    }
}
