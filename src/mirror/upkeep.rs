//! The mirror's upkeep in the background of the service, costing what the work costs and not
//! what the mirror holds:
//!
//! * [`Upkeep::minute`], every [`MAINTENANCE_INTERVAL`]: folds the usage counted as it changed
//!   (`store::fs`), evicts from the local disk by sampling when over `cache.disk_bytes`
//!   (`store::ops::enforce_budget`), sets the mirror gauges, proves the tiers writable, and
//!   runs a `gc` pass when one is due (every `cache.gc_interval_secs`, counted from the last
//!   pass any process made: `usage.json`). S3 costs one PUT (the readiness probe) a minute.
//! * [`Follow::poll`], every [`events::FOLLOW_INTERVAL`] with a shared mirror: the purges and
//!   replaced originals of other replicas (`store::events`), dropped from memory and from the
//!   local disk. S3 costs one LIST per poll, and a GET per event.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Mirror;
use crate::store::{events, gc, ops, MirrorStore, Usage};

/// How often the local disk is brought back within `cache.disk_bytes` and the mirror measured.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// The local file that keeps when this replica last looked for events, so that one restarted
/// catches up on the purges made while it was stopped.
const EVENTS_SEEN: &str = "events.seen";

/// The minute timer's state: when the next `gc` passes are due, and the last count of S3.
pub struct Upkeep {
    mirror: Arc<Mirror>,
    /// When the next pass over the local disk is due (Unix seconds); `None` before the first
    /// minute has read `usage.json`.
    next_local_gc: Option<u64>,
    /// The same for S3.
    next_shared_gc: Option<u64>,
    /// S3's blobs as the last pass counted them (the gauge when shared).
    shared_count: Option<Usage>,
    /// The previous service on this mirror did not stop cleanly.
    unclean: bool,
}

impl Upkeep {
    /// The timer of `mirror`, nothing read yet. With `unclean` (the previous service on this
    /// mirror was killed: `FsStore::mark_running`), the local disk's pass is due at once: it
    /// sweeps what the killed writes left and recounts what the lost changes missed.
    pub fn new(mirror: Arc<Mirror>, unclean: bool) -> Upkeep {
        Upkeep {
            mirror,
            next_local_gc: None,
            next_shared_gc: None,
            shared_count: None,
            unclean,
        }
    }

    /// One minute's work (see the module's documentation).
    pub async fn minute(&mut self) {
        let m = self.mirror.clone();
        let now = m.clock.now_secs();
        let interval = m.config.cache.gc_interval_secs;
        if self.next_local_gc.is_none() {
            let at = match self.unclean {
                true => 0,
                false => due(m.tiers.local(), interval).await,
            };
            self.next_local_gc = Some(at);
        }
        if let (Some(shared), None) = (m.tiers.shared(), self.next_shared_gc) {
            let last = gc::snapshot(shared).await.ok().flatten();
            self.shared_count = last.map(|s| s.usage);
            self.next_shared_gc = Some(due(shared, interval).await);
        }
        if let Err(e) = m.ready().await {
            tracing::warn!(error = %e, "the mirror cannot be written: not ready");
        }
        // The local disk's count: a `gc` pass when one is due, else the changes folded in.
        let mut counted = None;
        if self.next_local_gc.is_some_and(|at| now >= at) {
            self.next_local_gc = Some(now.saturating_add(interval));
            match m.tiers.collect_local(now, false).await {
                Ok(r) => {
                    tracing::info!(report = ?r, "gc: local mirror collected and counted");
                    counted = Some(r.usage);
                }
                Err(e) => tracing::warn!(error = %e, "gc of the local mirror failed"),
            }
        }
        if counted.is_none() {
            let local = m.tiers.local().clone();
            counted = tokio::task::spawn_blocking(move || local.fold_usage())
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot count the local mirror's usage");
                    None
                });
        }
        let max = m.config.cache.disk_bytes;
        if let Some(used) = counted.as_mut().filter(|u| max > 0 && u.bytes > max) {
            match ops::enforce_budget(m.tiers.local(), max).await {
                Ok(e) => {
                    m.metrics
                        .mirror_evicted(e.variants as u64, e.originals as u64);
                    used.bytes = e.bytes_after;
                    tracing::info!(
                        variants = e.variants,
                        originals = e.originals,
                        bytes_after = e.bytes_after,
                        "local mirror over cache.disk_bytes: evicted"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "cannot enforce cache.disk_bytes"),
            }
        }
        if let Some(shared) = m.tiers.shared() {
            if self.next_shared_gc.is_some_and(|at| now >= at) {
                self.collect_shared(shared, now, interval).await;
            }
        }
        let gauge = match m.tiers.is_shared() {
            true => self.shared_count,
            false => counted,
        };
        if let Some(u) = gauge {
            m.metrics.mirror_usage(u.blobs, u.bytes);
        }
    }

    /// A pass over S3, unless another replica made one since this one last looked.
    async fn collect_shared(&mut self, shared: &dyn MirrorStore, now: u64, interval: u64) {
        let next = due(shared, interval).await;
        if next > now {
            self.next_shared_gc = Some(next);
            self.shared_count = gc::snapshot(shared).await.ok().flatten().map(|s| s.usage);
            return;
        }
        self.next_shared_gc = Some(now.saturating_add(interval));
        match gc::collect(shared, now, false).await {
            Ok(r) => {
                tracing::info!(report = ?r, "gc: shared mirror collected and counted");
                self.shared_count = Some(r.usage);
            }
            Err(e) => tracing::warn!(error = %e, "gc of the shared mirror failed"),
        }
    }
}

/// When a store's next pass is due: `gc_interval_secs` after its last count; now when it was
/// never counted or is still in layout version 1.
async fn due(store: &dyn MirrorStore, interval: u64) -> u64 {
    match gc::snapshot(store).await {
        Ok(Some(s)) if !store.layout().is_legacy() => s.counted_at.saturating_add(interval),
        _ => 0,
    }
}

/// Following the other replicas' events.
pub struct Follow {
    mirror: Arc<Mirror>,
    follower: events::Follower,
}

impl Follow {
    /// Starts from when this replica last looked (kept in `cache.dir`), or from now.
    pub async fn new(mirror: Arc<Mirror>) -> Follow {
        let now_ms = mirror.clock.now_millis();
        let local = mirror.tiers.local();
        let seen = local
            .get(EVENTS_SEEN)
            .await
            .ok()
            .flatten()
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u64>().ok());
        let retention_ms = events::RETENTION_SECS.saturating_mul(1000);
        let since = match seen {
            Some(ms) if ms.saturating_add(retention_ms) >= now_ms => ms,
            Some(_) => {
                tracing::warn!(
                    "this replica was stopped for longer than the events are kept ({} days): \
                     its local disk may hold images purged meanwhile",
                    events::RETENTION_SECS / 86_400
                );
                now_ms
            }
            None => now_ms,
        };
        Follow {
            mirror,
            follower: events::Follower::new(since),
        }
    }

    /// Reads the new events and applies them. Returns how many were applied.
    pub async fn poll(&mut self) -> usize {
        let m = self.mirror.clone();
        let Some(shared) = m.tiers.shared() else {
            return 0;
        };
        let now_ms = m.clock.now_millis();
        let found = match self.follower.poll(shared, now_ms).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the other replicas' events");
                return 0;
            }
        };
        for event in &found {
            m.forget_in_memory(event.urls.clone()).await;
            for url in &event.urls {
                if let Err(e) = ops::purge(m.tiers.local(), url).await {
                    tracing::warn!(url, error = %e, "cannot drop a purged image from the local disk");
                }
            }
            tracing::info!(what = ?event.what, urls = event.urls.len(), from = event.replica, "applied another replica's event");
        }
        let mark = bytes::Bytes::from(now_ms.to_string());
        let local = m.tiers.local();
        if let Err(e) = local
            .put(EVENTS_SEEN, mark, crate::store::PutMode::Overwrite)
            .await
        {
            tracing::warn!(error = %e, "cannot note when events were last read");
        }
        found.len()
    }
}

impl Mirror {
    /// Runs [`Upkeep::minute`] now, then every [`MAINTENANCE_INTERVAL`], until `shutdown`.
    pub async fn maintain(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let unclean = match self.tiers.local().mark_running() {
            Ok(unclean) => unclean,
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the mirror as in use");
                false
            }
        };
        if unclean {
            tracing::info!("the previous service on this mirror did not stop cleanly: gc now");
        }
        let mut upkeep = Upkeep::new(self, unclean);
        loop {
            upkeep.minute().await;
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// With a shared mirror, runs [`Follow::poll`] every [`events::FOLLOW_INTERVAL`] until
    /// `shutdown`; returns at once otherwise.
    pub async fn follow_replicas(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !self.tiers.is_shared() {
            return;
        }
        let mut follow = Follow::new(self).await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(events::FOLLOW_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            follow.poll().await;
        }
    }
}
