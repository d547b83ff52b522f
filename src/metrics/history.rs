//! What `/stats` and the status page show beyond counters: hits and misses over time (rings by
//! minute and by second), the upstream host table, and the latest rescues from web archives.
//! Each is bounded, whatever the traffic.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// Minutes of per-minute history kept for the status page.
pub const HISTORY_MINUTES: usize = 60;

/// Seconds of per-second history kept for the rolling ratio windows (the longest is 15 minutes).
const ROLLING_SECONDS: usize = 15 * 60;

/// Hit/miss counts: per minute for the last hour (the status page's chart) and per second for
/// the last 15 minutes (the rolling 1/5/15-minute ratios). Both are rings indexed by time.
#[derive(Default)]
pub struct History {
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
    /// One answer at `now` (seconds since the epoch).
    pub fn record(&mut self, now: u64, hit: bool) {
        bump(&mut self.slots, HISTORY_MINUTES, now / 60, hit);
        bump(&mut self.seconds, ROLLING_SECONDS, now, hit);
    }

    /// (hits, misses) over the last `minutes` minutes, rolling: the `minutes * 60` seconds up to
    /// and including now.
    pub fn window(&self, now: u64, minutes: u64) -> (u64, u64) {
        let span = minutes * 60;
        self.seconds
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 <= now && now - s.0 < span)
            .fold((0, 0), |(h, m), s| (h + s.1, m + s.2))
    }

    /// One point per minute for the last hour, oldest first: (minute start, hits, misses).
    pub fn series(&self, now: u64) -> Vec<(u64, u64, u64)> {
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
    /// Fetches made to the host.
    pub fetches: u64,
    /// Of which failed (anything but `ok` and `not_modified`).
    pub errors: u64,
    /// Their summed duration, for the mean.
    pub total_seconds: f64,
}

/// The upstream host table: at most [`MAX_HOSTS`] rows plus [`OTHER_HOSTS`].
#[derive(Default)]
pub struct Hosts(HashMap<String, HostStats>);

impl Hosts {
    /// One fetch to `host` that took `seconds`.
    pub fn record(&mut self, host: &str, error: bool, seconds: f64) {
        let key = if self.0.len() < MAX_HOSTS || self.0.contains_key(host) {
            host
        } else {
            OTHER_HOSTS
        };
        let h = self.0.entry(key.to_string()).or_default();
        h.fetches += 1;
        h.errors += u64::from(error);
        h.total_seconds += seconds;
    }

    /// The `n` hosts with the most fetches (ties by name).
    pub fn busiest(&self, n: usize) -> Vec<(String, HostStats)> {
        let mut rows: Vec<(String, HostStats)> =
            self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        rows.sort_by(|a, b| b.1.fetches.cmp(&a.1.fetches).then(a.0.cmp(&b.0)));
        rows.truncate(n);
        rows
    }

    /// The row of `host`, if it has one.
    pub fn get(&self, host: &str) -> Option<&HostStats> {
        self.0.get(host)
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True before any fetch.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rescues shown by `/stats` and the status page.
pub const MAX_RESCUED_SHOWN: usize = 20;

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

/// The last [`MAX_RESCUED_SHOWN`] rescues, oldest first.
#[derive(Default)]
pub struct Rescues(VecDeque<RescuedRow>);

impl Rescues {
    /// Adds `row`, dropping the oldest past [`MAX_RESCUED_SHOWN`].
    pub fn push(&mut self, row: RescuedRow) {
        if self.0.len() == MAX_RESCUED_SHOWN {
            self.0.pop_front();
        }
        self.0.push_back(row);
    }

    /// The rows, oldest first.
    pub fn rows(&self) -> Vec<RescuedRow> {
        self.0.iter().cloned().collect()
    }
}
