//! In-memory tiers: hot responses (moka, weighed in bytes, each entry expiring when its mirrored
//! copy needs revalidation), remembered upstream 404/410s, and request coalescing so concurrent
//! requests for one cold key run the work exactly once.
//!
//! The coalesced work runs in its own task: a client that disconnects neither cancels it nor
//! makes the other waiters start it again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

use bytes::Bytes;
use http::HeaderValue;
use moka::future::Cache;
use moka::Expiry;
use tokio::sync::watch;

/// A response body ready to serve, with what its headers need.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The bytes.
    pub body: Bytes,
    /// SHA-256 (hex) of the body.
    pub hash: String,
    /// Strong ETag, quoted, derived from the content hash.
    pub etag: String,
    /// HTTP date for `Last-Modified`.
    pub last_modified: String,
    /// Until when (Unix seconds, service clock) this copy is fresh: its mirror copy is then due
    /// for revalidation, so memory must not answer for it.
    pub fresh_until: u64,
    /// The entry's own response headers, made once: a memory hit copies no string.
    pub headers: EntryHeaders,
    /// Where the local mirror keeps a file of these bytes (by their hash), for sending the body
    /// with `sendfile(2)` (`server::sendfile` opens it and checks it); `None` without a local
    /// copy.
    pub local_file: Option<Arc<std::path::Path>>,
}

/// Header values of an [`Entry`], ready to put in a response.
#[derive(Clone, Debug)]
pub struct EntryHeaders {
    /// `ETag`.
    pub etag: Option<HeaderValue>,
    /// `Last-Modified`.
    pub last_modified: Option<HeaderValue>,
    /// `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// `Content-Length`.
    pub content_length: HeaderValue,
}

impl Entry {
    /// An entry for `body`, its header values made once.
    pub fn new(
        body: Bytes,
        hash: String,
        content_type: String,
        etag: String,
        last_modified: String,
        fresh_until: u64,
    ) -> Entry {
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let headers = EntryHeaders {
            etag: value(&etag),
            last_modified: value(&last_modified),
            content_type: value(&content_type),
            content_length: HeaderValue::from(body.len()),
        };
        Entry {
            body,
            hash,
            etag,
            last_modified,
            fresh_until,
            headers,
            local_file: None,
        }
    }

    /// The same entry, its bytes also in the local mirror file at `path`.
    pub fn with_local_file(&self, path: std::path::PathBuf) -> Entry {
        Entry {
            local_file: Some(Arc::from(path)),
            ..self.clone()
        }
    }

    /// The same entry with another `Last-Modified` (a variant is as new as its original).
    pub fn with_last_modified(&self, last_modified: String) -> Entry {
        let mut e = self.clone();
        e.headers.last_modified = HeaderValue::from_str(&last_modified).ok();
        e.last_modified = last_modified;
        e
    }
}

/// Per-entry expiry: an entry lives until its own `fresh_until`.
struct ByEntry(Arc<dyn Clock>);

impl Expiry<String, Arc<Entry>> for ByEntry {
    fn expire_after_create(&self, _: &String, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(
            v.fresh_until.saturating_sub(self.0.now_secs()),
        ))
    }
}

/// What an entry weighs: key, body, and a fixed allowance for the rest.
fn weight(key: &str, entry: &Entry) -> u32 {
    u32::try_from(key.len() + entry.body.len() + 256).unwrap_or(u32::MAX)
}

/// The memory cache of hot responses.
#[derive(Clone)]
pub struct MemoryCache {
    inner: Cache<String, Arc<Entry>>,
    clock: Arc<dyn Clock>,
    max_bytes: u64,
}

impl MemoryCache {
    /// A cache holding at most `max_bytes` of bodies (and keys); `on_evict` is called for every
    /// entry evicted for size.
    pub fn new(
        max_bytes: u64,
        clock: Arc<dyn Clock>,
        on_evict: impl Fn() + Send + Sync + 'static,
    ) -> MemoryCache {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Entry>| weight(k, v))
            .expire_after(ByEntry(clock.clone()))
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    on_evict();
                }
            })
            .build();
        MemoryCache {
            inner,
            clock,
            max_bytes,
        }
    }

    /// A fresh entry for `key`, if any.
    pub async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let e = self.inner.get(key).await?;
        if e.fresh_until > self.clock.now_secs() {
            return Some(e);
        }
        self.inner.invalidate(key).await;
        None
    }

    /// Keeps an entry; one heavier than the whole cache is not kept (`memory_bytes = 0` turns
    /// the memory tier off).
    pub async fn insert(&self, key: String, entry: Arc<Entry>) {
        if u64::from(weight(&key, &entry)) > self.max_bytes {
            return;
        }
        self.inner.insert(key, entry).await;
    }

    /// Drops `key` (a purge).
    pub async fn remove(&self, key: &str) {
        self.inner.invalidate(key).await;
    }

    /// Drops every entry whose key satisfies `matches` (used by purge).
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool + Send + Sync + 'static) {
        // Only fails when closures were not enabled on the builder, which `new` does.
        let _ = self.inner.invalidate_entries_if(move |k, _| matches(k));
    }

    /// (entries, weighed bytes), after pending maintenance.
    pub async fn usage(&self) -> (u64, u64) {
        self.inner.run_pending_tasks().await;
        (self.inner.entry_count(), self.inner.weighted_size())
    }
}

/// Upstream 404/410 answers remembered for `negative_ttl_secs`, by upstream URL, weighed in
/// bytes (the URL and [`NEGATIVE_ENTRY_OVERHEAD`]) within [`NEGATIVE_BYTES`]: 100,000 distinct
/// 4 KB URLs that 404 once took 480 MB when this was bounded by entries alone.
#[derive(Clone)]
pub struct NegativeCache {
    inner: Cache<String, u16>,
}

/// What the remembered 404s may weigh together: about 100,000 URLs of a usual length.
pub const NEGATIVE_BYTES: u64 = 16 << 20;
/// What one remembered 404 costs beyond its URL: the cache's own node, timer-wheel and hash
/// table entries, and the `String`'s header (moka's per-entry bookkeeping is about 100-150
/// bytes; rounded up).
pub const NEGATIVE_ENTRY_OVERHEAD: usize = 160;

impl NegativeCache {
    /// Remembered 404s that expire after `ttl`, within [`NEGATIVE_BYTES`].
    pub fn new(ttl: Duration) -> NegativeCache {
        NegativeCache::with_budget(ttl, NEGATIVE_BYTES)
    }

    /// A cache of at most `bytes` (URLs and their overhead).
    pub fn with_budget(ttl: Duration, bytes: u64) -> NegativeCache {
        NegativeCache {
            inner: Cache::builder()
                .max_capacity(bytes)
                .weigher(|url: &String, _: &u16| {
                    u32::try_from(url.len() + NEGATIVE_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The status remembered for `url`, if any.
    pub async fn get(&self, url: &str) -> Option<u16> {
        self.inner.get(url).await
    }

    /// Remembers that `url` answered `status`.
    pub async fn insert(&self, url: &str, status: u16) {
        self.inner.insert(url.to_string(), status).await;
    }

    /// Forgets `url` (a purge).
    pub async fn remove(&self, url: &str) {
        self.inner.invalidate(url).await;
    }

    /// The bytes remembered now (after pending evictions).
    pub async fn weighed(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.weighted_size()
    }
}

/// Coalesces concurrent work by key: the first caller starts it in a task, later callers wait for
/// the same result.
pub struct Flights<T> {
    running: Mutex<HashMap<String, Flight<T>>>,
    /// The service's bound on work in progress (`server.max_in_flight`): a flight whose callers
    /// have all gone takes a place in it until it lands (see [`Interest`]).
    handover: Option<Arc<tokio::sync::Semaphore>>,
}

/// A flight in progress: where its result will appear, and who waits for it.
type Flight<T> = (watch::Receiver<Option<T>>, Interest);

/// How many callers still wait for a flight. The work itself holds it, so it can give up a step
/// nobody waits for any more (a queued fetch or transform); it never stops on its own.
///
/// While callers wait, each holds its own place in `server.max_in_flight`. When the last one
/// goes, the flight takes a place of its own there (handed over, if one is free) until it lands
/// or a caller comes back: work nobody waits for still counts against the service's bound.
#[derive(Clone, Debug, Default)]
pub struct Interest(Arc<InterestState>);

#[derive(Debug, Default)]
struct InterestState {
    waiting: std::sync::atomic::AtomicUsize,
    handover: Option<Arc<tokio::sync::Semaphore>>,
    held: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Interest {
    fn new(handover: Option<Arc<tokio::sync::Semaphore>>) -> Interest {
        Interest(Arc::new(InterestState {
            handover,
            ..InterestState::default()
        }))
    }

    /// True when every caller has gone (disconnected clients).
    pub fn abandoned(&self) -> bool {
        self.0.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// True while the flight holds a place of its own in the service's bound.
    pub fn holds_a_place(&self) -> bool {
        self.0
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Counts a caller for as long as the returned guard lives; a caller coming back takes
    /// the flight's own place back (it holds one itself).
    fn join(&self) -> Waiting {
        if self
            .0
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            self.0.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        Waiting(self.clone())
    }
}

/// One caller's interest in a flight; dropped when the caller returns or goes away.
struct Waiting(Interest);

impl Drop for Waiting {
    fn drop(&mut self) {
        let state = &(self.0).0;
        if state
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            // The last caller left: the work takes a place of its own, if one is free (if
            // none is, the work gives up at its next wait, as abandoned work does).
            if let Some(bound) = &state.handover {
                if let Ok(p) = bound.clone().try_acquire_owned() {
                    *state.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                }
            }
        }
    }
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
            handover: None,
        }
    }
}

impl<T> Flights<T> {
    /// Flights whose work, once nobody waits for it, takes a place in `bound` until it lands.
    pub fn with_handover(bound: Arc<tokio::sync::Semaphore>) -> Flights<T> {
        Flights {
            running: Mutex::new(HashMap::new()),
            handover: Some(bound),
        }
    }
}

/// Removes a finished (or panicked) flight from the map.
struct Landing<T> {
    flights: Arc<Flights<T>>,
    key: String,
}

impl<T> Drop for Landing<T> {
    fn drop(&mut self) {
        self.flights
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Runs `make(interest)` once for all concurrent callers with this key. Returns the result
    /// and whether this caller started the work; `None` if the work panicked.
    pub async fn run<F>(
        self: &Arc<Self>,
        key: &str,
        make: impl FnOnce(Interest) -> F,
    ) -> Option<(T, bool)>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (mut rx, leader, _waiting) = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.get(key) {
                Some((rx, interest)) => (rx.clone(), false, interest.join()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let interest = Interest::new(self.handover.clone());
                    let waiting = interest.join();
                    running.insert(key.to_string(), (rx.clone(), interest.clone()));
                    let landing = Landing {
                        flights: self.clone(),
                        key: key.to_string(),
                    };
                    let work = make(interest);
                    tokio::spawn(async move {
                        let value = work.await;
                        let _ = tx.send(Some(value));
                        drop(landing);
                    });
                    (rx, true, waiting)
                }
            }
        };
        loop {
            if let Some(v) = rx.borrow_and_update().clone() {
                return Some((v, leader));
            }
            if rx.changed().await.is_err() {
                // The sender is gone: the value may have been sent just before.
                return rx.borrow().clone().map(|v| (v, leader));
            }
        }
    }

    /// How many keys have work in flight.
    pub fn in_flight(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn flights_run_once() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let f = flights.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                f.run("k", |_| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                })
                .await
            }));
        }
        let mut leaders = 0;
        for h in handles {
            let (v, leader) = h.await.unwrap().unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_does_not_cancel_the_work() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let f = flights.clone();
        let leader = tokio::spawn(async move {
            f.run("k", |_| async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                1
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let r = runs.clone();
        let (v, started) = flights
            .run("k", |_| async move {
                r.fetch_add(1, Ordering::SeqCst);
                2
            })
            .await
            .unwrap();
        assert_eq!((v, started), (1, false));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_work_knows_when_every_caller_has_gone() {
        let flights: Arc<Flights<bool>> = Arc::default();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let f = flights.clone();
        let caller = tokio::spawn(async move {
            f.run("k", |interest| async move {
                assert!(!interest.abandoned(), "a caller waits at first");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = seen_tx.send(interest.abandoned());
                true
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        caller.abort();
        assert!(
            seen_rx.await.unwrap(),
            "abandoned once the only caller went away"
        );
    }

    /// Issue #23 item 3: work nobody waits for still counts against `server.max_in_flight`.
    /// Its caller gone, a flight takes a place of its own; a caller coming back takes it back
    /// (it holds its own); the place is given back when the flight lands.
    #[tokio::test]
    async fn a_flight_nobody_waits_for_holds_a_place_until_it_lands() {
        let bound = Arc::new(tokio::sync::Semaphore::new(4));
        let flights: Arc<Flights<bool>> = Arc::new(Flights::with_handover(bound.clone()));
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let f = flights.clone();
        let first = tokio::spawn(async move {
            f.run("k", |interest| async move {
                let _ = seen_tx.send(interest.clone());
                let _ = go_rx.await;
                true
            })
            .await
        });
        let interest = seen_rx.recv().await.unwrap();
        assert!(!interest.holds_a_place());
        first.abort();
        let _ = first.await;
        assert!(interest.abandoned() && interest.holds_a_place());
        assert_eq!(bound.available_permits(), 3);
        // A caller comes back: the flight's own place is given back.
        let f = flights.clone();
        let second = tokio::spawn(async move { f.run("k", |_| async { false }).await });
        assert!(
            eventually_true(|| !interest.abandoned()).await,
            "the second caller joined"
        );
        assert!(!interest.holds_a_place());
        assert_eq!(bound.available_permits(), 4);
        second.abort();
        let _ = second.await;
        assert_eq!(bound.available_permits(), 3);
        // The flight lands: every place is free again.
        go_tx.send(()).unwrap();
        drop(interest);
        assert!(eventually_true(|| bound.available_permits() == 4).await);
    }

    async fn eventually_true(check: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn memory_cache_expires_per_entry() {
        let clock = Arc::new(crate::clock::ManualClock::new(1_000));
        let c = MemoryCache::new(1 << 20, clock.clone(), || {});
        let e = |until| {
            Arc::new(Entry::new(
                Bytes::from_static(b"x"),
                String::new(),
                "image/png".into(),
                "\"e\"".into(),
                String::new(),
                until,
            ))
        };
        c.insert("short".into(), e(1_010)).await;
        c.insert("long".into(), e(2_000)).await;
        assert!(c.get("short").await.is_some());
        clock.advance(20);
        assert!(c.get("short").await.is_none());
        assert!(c.get("long").await.is_some());
    }

    /// The remembered 404s stay within their byte budget however long the URLs: 20,000 distinct
    /// 4 KB URLs (80 MB of keys) weigh at most [`NEGATIVE_BYTES`]. Bounded by entries (the old
    /// code), they all stayed.
    #[tokio::test]
    async fn remembered_404s_are_bounded_in_bytes() {
        let c = NegativeCache::new(Duration::from_secs(300));
        let url = |i: usize| format!("http://dead.test/{i}/{}", "x".repeat(4096));
        for i in 0..20_000 {
            c.insert(&url(i), 404).await;
        }
        let weighed = c.weighed().await;
        assert!(weighed <= NEGATIVE_BYTES, "{weighed}");
        assert!(weighed > 0, "{weighed}");
    }
}
