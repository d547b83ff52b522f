//! What one replica tells the others through the shared store alone: a purge, or an original
//! that revalidation replaced. Each is a small object `events/<ms>-<replica>-<n>.json`, named
//! by the writer's clock in milliseconds so names sort by time; every replica lists the names
//! after the last it saw ([`Follower::poll`]: one LIST) every [`FOLLOW_INTERVAL`], reads the
//! new ones and drops those images from its memory and its local disk. `gc` deletes events
//! older than [`RETENTION_SECS`].
//!
//! Clocks: a listing starts [`CLOCK_SLACK_MS`] before the last poll, and names already seen
//! are skipped, so a writer whose clock is behind by less than that is not missed.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{MirrorStore, PutMode};

/// The folder of events.
pub const DIR: &str = "events/";
/// How often a replica looks for events: purges are honoured within this (and the time to
/// apply them), under the 10 s SPEC §5 asks for, at 8 LISTs a minute.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(7500);
/// How far behind the last poll a listing starts: writers' clocks may be this far apart.
pub const CLOCK_SLACK_MS: u64 = 120_000;
/// Events are kept this long (`gc` deletes older ones): a replica stopped for longer misses
/// them, and is told so when it starts (README, "Running N replicas").
pub const RETENTION_SECS: u64 = 7 * 86_400;

/// What happened to the images an event names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// Dropped from the mirror (`imgmirror purge`).
    Purged,
    /// The original was fetched anew with other bytes (revalidation): copies of the old ones
    /// and their variants are stale.
    Replaced,
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub what: What,
    /// The upstream URLs.
    pub urls: Vec<String>,
    /// Which process wrote it (its own events are not applied twice).
    pub replica: String,
}

/// This process's name in events: random, new at each start.
pub fn replica_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", fastrand::u64(..)))
}

/// Writes an event (one PUT) at `now_ms` (Unix milliseconds).
pub async fn publish(
    store: &dyn MirrorStore,
    what: What,
    urls: Vec<String>,
    now_ms: u64,
) -> io::Result<()> {
    let event = Event {
        what,
        urls,
        replica: replica_id().to_string(),
    };
    let name = format!(
        "{DIR}{now_ms:013}-{}-{:08x}.json",
        event.replica,
        fastrand::u32(..)
    );
    let json = serde_json::to_vec(&event).map_err(io::Error::other)?;
    store
        .put(&name, Bytes::from(json), PutMode::Overwrite)
        .await
        .map(drop)
}

/// The time (Unix milliseconds) in an event's name.
fn time_of(path: &str) -> Option<u64> {
    path.strip_prefix(DIR)?.split('-').next()?.parse().ok()
}

/// Reads the events of other replicas as they come.
#[derive(Debug)]
pub struct Follower {
    /// The last poll (Unix milliseconds).
    since_ms: u64,
    /// Names seen within the slack, by time.
    seen: HashMap<String, u64>,
}

impl Follower {
    /// A follower that wants the events from `since_ms` on.
    pub fn new(since_ms: u64) -> Follower {
        Follower {
            since_ms,
            seen: HashMap::new(),
        }
    }

    /// The events written since the last poll by other replicas, oldest first: one LIST, and a
    /// GET for each new event.
    pub async fn poll(&mut self, store: &dyn MirrorStore, now_ms: u64) -> io::Result<Vec<Event>> {
        let from = self.since_ms.saturating_sub(CLOCK_SLACK_MS);
        let after = format!("{DIR}{from:013}");
        let listed = store.list(DIR, Some(&after)).await?;
        let mut out = Vec::new();
        for l in listed {
            if self.seen.contains_key(&l.path) {
                continue;
            }
            let Some(at) = time_of(&l.path) else {
                continue;
            };
            let event = store
                .get(&l.path)
                .await?
                .and_then(|b| serde_json::from_slice::<Event>(&b).ok());
            self.seen.insert(l.path, at);
            if let Some(e) = event.filter(|e| e.replica != replica_id()) {
                out.push(e);
            }
        }
        self.since_ms = self.since_ms.max(now_ms);
        let horizon = self.since_ms.saturating_sub(2 * CLOCK_SLACK_MS);
        self.seen.retain(|_, at| *at >= horizon);
        Ok(out)
    }
}

/// Deletes events older than [`RETENTION_SECS`] (at `now`, Unix seconds). Returns how many.
pub async fn expire(store: &dyn MirrorStore, now: u64, dry_run: bool) -> io::Result<u64> {
    let cutoff_ms = now.saturating_sub(RETENTION_SECS).saturating_mul(1000);
    let mut deleted = 0;
    for l in store.list(DIR, None).await? {
        if time_of(&l.path).is_some_and(|t| t < cutoff_ms) {
            deleted += 1;
            if !dry_run {
                store.delete(&l.path).await?;
            }
        }
    }
    Ok(deleted)
}
