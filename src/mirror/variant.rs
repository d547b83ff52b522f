//! Derived images: a stored variant of the current original, or the original transformed on the
//! bounded pool (its queue, its wait, and its share of `image.memory_bytes`) and stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{cache_key, entry, tier_of, LoadError, Loaded, Mirror, Tier};
use crate::cache::Interest;
use crate::route::{self, Route};
use crate::store::{Kind, PutMode, Record};
use crate::transform;

impl Mirror {
    /// Loads a derived image: a stored variant of the current original, or the original
    /// (coalesced with other requests for it) transformed on the bounded pool and stored.
    pub(super) async fn variant(
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
            // The original's record alone: its bytes are not needed to serve the variant.
            if let Ok(Some(o)) = self.tiers.record(Kind::Original, &route.upstream).await {
                let fresh = now < o.checked_at.saturating_add(ttl);
                if fresh && v.record.source.as_deref() == Some(o.hash.as_str()) {
                    let until = o.checked_at.saturating_add(ttl);
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
            source: Some(source.hash.clone()),
            ..Record::of_bytes(key, &bytes, output.format.content_type(), now)
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
            let wanted = || !interest.abandoned();
            let memory =
                crate::wait::while_wanted(self.transform_memory.acquire_many(kib), wanted).await?;
            let pool = crate::wait::while_wanted(self.transforms.acquire(), wanted).await?;
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
}

/// A transform's place: on the pool, and its peak bytes of `image.memory_bytes`.
struct TransformPermit<'a> {
    _memory: tokio::sync::SemaphorePermit<'a>,
    _pool: tokio::sync::SemaphorePermit<'a>,
}

/// Transforms that may wait for the pool at once; more get a 503.
pub const MAX_QUEUED_TRANSFORMS: usize = 32;
/// The longest a transform waits for the pool before its request gets a 503.
pub const TRANSFORM_QUEUE_WAIT: Duration = Duration::from_secs(10);
