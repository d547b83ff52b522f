//! The image request path, top to bottom: route → memory cache → mirror → upstream → transform →
//! response. Each step is a call into its own module; nothing here parses URLs, touches files or
//! speaks to origins directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::respond::{self, Body, ImageHeaders};
use super::State;
use crate::cache::Entry;
use crate::metrics::Tier;
use crate::route::{self, Route, RouteError};
use crate::store::{sha256_hex, Record};
use crate::transform;
use crate::upstream::{FetchError, Fetched, Validators};

/// A failed image request: status and a short reason. Cloned to every coalesced waiter.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Failure {
        Failure::new(e.status(), e.to_string())
    }
}

/// What a coalesced load produces.
pub type Loaded = Result<(Arc<Entry>, Tier), Failure>;

/// Answers `GET`/`HEAD` for a route.
pub async fn serve(
    state: &Arc<State>,
    path: &str,
    head: bool,
    headers: &HeaderMap,
) -> Response<Body> {
    // 1. Route: decode and check the signature, then the options and the upstream policy.
    let route = match route::decode(path, state.key.as_ref()) {
        Ok(r) => r,
        Err(e @ (RouteError::Unsigned | RouteError::BadSignature)) => {
            return respond::error(403, &e.to_string())
        }
        Err(e) => return respond::error(400, &e.to_string()),
    };
    if let Err(e) = state.upstream.check(&route.upstream) {
        return respond::error(e.status(), &e.to_string());
    }
    if !route.options.is_original() {
        return respond::error(
            501,
            "resizing and re-encoding are not available in this build yet",
        );
    }
    let key = cache_key(&route);
    let policy = ImageHeaders {
        max_age: state.config.cache.ttl_secs,
        cors: state.config.server.cors,
        vary_accept: false,
    };

    // 2. Memory cache.
    if let Some(entry) = state.memory.get(&key).await {
        state
            .metrics
            .image_served(Tier::Memory, entry.body.len() as u64, false);
        return respond::image(&entry, Tier::Memory, head, headers, &policy);
    }

    // 3-4. Mirror, then upstream: once for all concurrent requests of this key.
    let task_state = state.clone();
    let url = route.upstream.clone();
    let flight_key = key.clone();
    let flight = state
        .flights
        .run(&key, move || async move {
            let loaded = original(&task_state, &url).await;
            if let Ok((entry, _)) = &loaded {
                task_state.memory.insert(flight_key, entry.clone()).await;
            }
            loaded
        })
        .await;
    let Some((loaded, leader)) = flight else {
        return respond::error(500, "internal error while loading the image");
    };
    match loaded {
        Ok((entry, tier)) => {
            state
                .metrics
                .image_served(tier, entry.body.len() as u64, !leader);
            let policy = if tier == Tier::Stale {
                ImageHeaders {
                    max_age: state.config.cache.negative_ttl_secs,
                    ..policy
                }
            } else {
                policy
            };
            respond::image(&entry, tier, head, headers, &policy)
        }
        Err(f) => respond::error(f.status, &f.message),
    }
}

/// The memory-cache and coalescing key of a route: its unsigned, canonical form.
fn cache_key(route: &Route) -> String {
    route::encode(&route.upstream, &route.options, None).unwrap_or_else(|_| route.upstream.clone())
}

/// Loads an original from the mirror, revalidating or fetching it from the upstream as needed.
async fn original(state: &State, url: &str) -> Loaded {
    let now = state.metrics.now();
    let ttl = state.config.cache.ttl_secs;
    let record = match state.store.original(url).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(url, error = %e, "cannot read the mirror record; fetching upstream");
            None
        }
    };
    // The mirrored copy, when its bytes are really there.
    let mirrored = match record {
        Some(r) => match state.store.blob(&r.hash).await {
            Ok(Some(bytes)) => Some((r, bytes)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(url, error = %e, "cannot read a mirrored blob; fetching upstream");
                None
            }
        },
        None => None,
    };
    if let Some((r, bytes)) = &mirrored {
        if now < r.checked_at.saturating_add(ttl) {
            let fresh_for = r.checked_at.saturating_add(ttl) - now;
            return Ok((entry(r, bytes.clone(), now + fresh_for), Tier::Disk));
        }
    } else if let Some(status) = state.negative.get(url).await {
        return Err(Failure::new(
            404,
            format!("upstream answered {status} (remembered)"),
        ));
    }

    let validators = mirrored.as_ref().map(|(r, _)| Validators {
        etag: r.etag.clone(),
        last_modified: r.last_modified.clone(),
    });
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_default();
    let started = Instant::now();
    let fetched = state.upstream.fetch(url, validators.as_ref()).await;
    let seconds = started.elapsed().as_secs_f64();
    match fetched {
        Ok(Fetched::NotModified) => {
            state
                .metrics
                .upstream_fetch(&host, "not_modified", seconds, 0);
            let Some((mut r, bytes)) = mirrored else {
                return Err(Failure::new(
                    502,
                    "upstream answered 304 to an unconditional request",
                ));
            };
            r.checked_at = now;
            if let Err(e) = state.store.update_original(&r).await {
                tracing::warn!(url, error = %e, "cannot update the mirror record");
            }
            Ok((entry(&r, bytes, now.saturating_add(ttl)), Tier::Miss))
        }
        Ok(Fetched::Body { bytes, validators }) => {
            state
                .metrics
                .upstream_fetch(&host, "ok", seconds, bytes.len() as u64);
            let Some(kind) = transform::sniff(&bytes) else {
                return Err(Failure::new(
                    415,
                    "upstream sent something that is not an image",
                ));
            };
            let r = Record {
                key: url.to_string(),
                hash: sha256_hex(&bytes),
                content_type: kind.content_type().to_string(),
                size: bytes.len() as u64,
                etag: validators.etag,
                last_modified: validators.last_modified,
                fetched_at: now,
                checked_at: now,
            };
            match state.store.put_original(&r, &bytes).await {
                Ok(()) => state.metrics.mirrored(r.size),
                Err(e) => {
                    tracing::warn!(url, error = %e, "cannot write to the mirror; serving anyway")
                }
            }
            state.negative.remove(url).await;
            Ok((entry(&r, bytes, now.saturating_add(ttl)), Tier::Miss))
        }
        Err(e) => {
            state.metrics.upstream_fetch(&host, e.kind(), seconds, 0);
            if let Some((mut r, bytes)) = mirrored {
                // Stale-if-error: serve the copy, and ask the upstream again after
                // `negative_ttl_secs` rather than on every request.
                let retry = state.config.cache.negative_ttl_secs;
                r.checked_at = now.saturating_sub(ttl).saturating_add(retry);
                if let Err(e) = state.store.update_original(&r).await {
                    tracing::warn!(url, error = %e, "cannot update the mirror record");
                }
                tracing::info!(url, error = %e, "upstream failed; serving the mirrored copy");
                return Ok((entry(&r, bytes, now.saturating_add(retry)), Tier::Stale));
            }
            if let FetchError::NotFound(status) = e {
                state.negative.insert(url, status).await;
            }
            Err(e.into())
        }
    }
}

/// A memory entry for mirrored bytes, fresh until `fresh_until` (Unix seconds).
fn entry(r: &Record, body: Bytes, fresh_until: u64) -> Arc<Entry> {
    let last_modified = r
        .last_modified
        .as_deref()
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .unwrap_or_else(|| std::time::UNIX_EPOCH + Duration::from_secs(r.fetched_at));
    Arc::new(Entry {
        body,
        content_type: r.content_type.clone(),
        etag: format!("\"{}\"", &r.hash[..r.hash.len().min(32)]),
        last_modified: httpdate::fmt_http_date(last_modified),
        fresh_until,
    })
}
