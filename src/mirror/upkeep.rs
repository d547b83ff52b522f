//! The mirror's upkeep in the background of the service, costing what the work costs and not
//! what the mirror holds:
//!
//! * [`Upkeep::minute`], every [`MAINTENANCE_INTERVAL`]: folds the usage counted as it changed
//!   (`store::fs`), evicts from the local disk by sampling when over `cache.disk_bytes`
//!   (`store::ops::enforce_budget`), sets the mirror gauges and proves the tiers writable. S3
//!   costs one PUT (the readiness probe) a minute.
//! * [`Collector::run_due`], in a task of its own once the service is ready: a `gc` pass when
//!   one is due (every `cache.gc_interval_secs`, counted from the last pass any process made:
//!   `usage.json`; at once after an unclean stop or on a mirror of layout 1). On S3 a pass
//!   first takes the bucket's lease (`store::gc`), so one replica makes it for all.
//! * [`Follow::poll`], every [`events::FOLLOW_INTERVAL`] with a shared mirror: the purges and
//!   replaced originals of other replicas (`store::events`), dropped from the local disk, then
//!   from memory, then from the CDN in front (`cdn.purge_url`), which may have refetched them
//!   from this replica before it let go. S3 costs one LIST per poll, and a GET per event.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Mirror;
use crate::clock::{Clock, SystemClock};
use crate::store::{events, gc, ops, MirrorStore};

/// How often the local disk is brought back within `cache.disk_bytes` and the mirror measured.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// The local file that keeps when this replica last looked for events, so that one restarted
/// catches up on the purges made while it was stopped.
const EVENTS_SEEN: &str = "events.seen";

/// The minute timer.
pub struct Upkeep {
    mirror: Arc<Mirror>,
    /// S3's count was read (at the first minute; after that the collector sets the gauge).
    shared_read: bool,
}

impl Upkeep {
    /// The timer of `mirror`.
    pub fn new(mirror: Arc<Mirror>) -> Upkeep {
        Upkeep {
            mirror,
            shared_read: false,
        }
    }

    /// One minute's work (see the module's documentation). Returns whether every tier could be
    /// written (the service is ready).
    pub async fn minute(&mut self) -> bool {
        let m = self.mirror.clone();
        let ready = match m.ready().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the mirror cannot be written: not ready");
                false
            }
        };
        let local = m.tiers.local().clone();
        let mut counted = tokio::task::spawn_blocking(move || local.fold_usage())
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot count the local mirror's usage");
                None
            });
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
        match m.tiers.shared() {
            None => {
                if let Some(u) = counted {
                    m.metrics.mirror_usage(u.blobs, u.bytes);
                }
            }
            Some(shared) if !self.shared_read => {
                self.shared_read = true;
                if let Ok(Some(s)) = gc::snapshot(shared).await {
                    m.metrics.mirror_usage(s.usage.blobs, s.usage.bytes);
                }
            }
            Some(_) => {}
        }
        ready
    }
}

/// The `gc` passes the service makes.
pub struct Collector {
    mirror: Arc<Mirror>,
    /// When the next pass over the local disk is due (Unix seconds); `None` before it was read.
    next_local: Option<u64>,
    /// The same for S3.
    next_shared: Option<u64>,
}

impl Collector {
    /// The passes of `mirror`. With `unclean` (the previous service on this mirror was killed:
    /// `FsStore::mark_running`), the local disk's pass is due at once: it sweeps what the
    /// killed writes left and recounts what the lost changes missed.
    pub fn new(mirror: Arc<Mirror>, unclean: bool) -> Collector {
        Collector {
            mirror,
            next_local: unclean.then_some(0),
            next_shared: None,
        }
    }

    /// Runs the passes that are due. The schedule and the grace periods read the system's
    /// clock, as the files' and objects' times and `usage.json`'s `counted_at` do (not the
    /// service's clock, which tests move).
    pub async fn run_due(&mut self) {
        let m = self.mirror.clone();
        let now = SystemClock.now_secs();
        let interval = m.config.cache.gc_interval_secs;
        if self.next_local.is_none() {
            self.next_local = Some(due(m.tiers.local(), interval).await);
        }
        if self.next_local.is_some_and(|at| now >= at) {
            self.next_local = Some(now.saturating_add(interval));
            match m.tiers.collect_local(now, false).await {
                Ok(r) => {
                    tracing::info!(report = ?r, "gc: local mirror collected and counted");
                    if !m.tiers.is_shared() {
                        m.metrics.mirror_usage(r.usage.blobs, r.usage.bytes);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "gc of the local mirror failed"),
            }
        }
        let Some(shared) = m.tiers.shared() else {
            return;
        };
        // When the pass looked due at the last look, `usage.json` is read again: another
        // replica may have made it since.
        if self.next_shared.is_none_or(|at| now >= at) {
            self.next_shared = Some(due(shared, interval).await);
        }
        if self.next_shared.is_some_and(|at| now < at) {
            return;
        }
        self.next_shared = Some(now.saturating_add(interval));
        match gc::collect(shared, now, false).await {
            Ok(r) => {
                tracing::info!(report = ?r, "gc: shared mirror collected and counted");
                m.metrics.mirror_usage(r.usage.blobs, r.usage.bytes);
            }
            Err(e) => tracing::info!(error = %e, "gc of the shared mirror not made"),
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
    /// URLs whose local copies could not be dropped yet.
    pending: Vec<String>,
    /// URLs dropped at the last poll, dropped from memory once more at the next.
    recent: Vec<String>,
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
            pending: Vec::new(),
            recent: Vec::new(),
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
        // The local disk first, then memory: a request between the two would otherwise load
        // the local copy back into memory. What could not be dropped from the disk is tried
        // again at the next poll, and what was dropped is dropped from memory once more then
        // (a load that read the disk just before may have put it back).
        let again = std::mem::take(&mut self.pending);
        let mut urls: Vec<String> = again;
        for event in &found {
            tracing::info!(what = ?event.what, urls = event.urls.len(), from = event.replica, "applied another replica's event");
            urls.extend(event.urls.iter().cloned());
        }
        for url in &urls {
            if let Err(e) = ops::purge(m.tiers.local(), url).await {
                tracing::warn!(url, error = %e, "cannot drop a purged image from the local disk");
                self.pending.push(url.clone());
            }
        }
        let once_more = std::mem::replace(&mut self.recent, urls.clone());
        urls.extend(once_more);
        if !urls.is_empty() {
            m.forget_in_memory(urls.clone()).await;
            // The CDN in front may have refetched the old bytes from this replica between the
            // purge's own CDN request and now: it is asked again, by every replica, once the
            // replica has let go (and once more a poll later, after the second drop from memory).
            // Not yet for what is still on the local disk (asked at the poll that drops it).
            urls.retain(|u| !self.pending.contains(u));
            urls.sort_unstable();
            urls.dedup();
            m.purge_cdn(urls);
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
    /// Runs [`Upkeep::minute`] now, then every [`MAINTENANCE_INTERVAL`], until `shutdown`; and
    /// once a minute has found the service ready, the `gc` passes ([`Collector`]) in a task of
    /// their own, so a long pass holds up neither the budget nor the readiness probe.
    /// `unclean`: the previous service on this mirror did not stop cleanly
    /// ([`crate::store::FsStore::mark_running`], called by the server as it starts).
    pub async fn maintain(self: Arc<Self>, unclean: bool, mut shutdown: watch::Receiver<bool>) {
        if unclean {
            tracing::info!("the previous service on this mirror did not stop cleanly: gc soon");
        }
        let (ready_tx, ready_rx) = watch::channel(false);
        tokio::spawn(self.clone().collect(unclean, ready_rx, shutdown.clone()));
        let mut upkeep = Upkeep::new(self);
        loop {
            if upkeep.minute().await {
                let _ = ready_tx.send(true);
            }
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// The `gc` passes: the first check once the service is ready, then every minute.
    async fn collect(
        self: Arc<Self>,
        unclean: bool,
        mut ready: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::select! {
            _ = ready.wait_for(|r| *r) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let mut collector = Collector::new(self, unclean);
        loop {
            tokio::select! {
                _ = collector.run_due() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
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
