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
    // 1. Route: decode and check the signature (then, in `answer`, the policy and options).
    let route = match route::decode(path, state.key.as_ref()) {
        Ok(r) => r,
        Err(e @ (RouteError::Unsigned | RouteError::BadSignature)) => {
            return respond::error(403, &e.to_string())
        }
        Err(e) => return respond::error(400, &e.to_string()),
    };
    // For the request log: the upstream without its query, which may carry tokens.
    let logged = LoggedUpstream(
        route
            .upstream
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_string(),
    );
    let mut resp = answer(state, route, head, headers).await;
    resp.extensions_mut().insert(logged);
    resp
}

/// The upstream URL (query stripped) a response answered for, for the request log.
#[derive(Clone, Debug)]
pub struct LoggedUpstream(pub String);

/// Steps 2-6 for a decoded route.
async fn answer(
    state: &Arc<State>,
    route: Route,
    head: bool,
    headers: &HeaderMap,
) -> Response<Body> {
    if let Err(e) = state.upstream.check(&route.upstream) {
        return respond::error(e.status(), &e.to_string());
    }
    let plan = match plan(state, &route.options, headers) {
        Ok(p) => p,
        Err(message) => return respond::error(400, &message),
    };
    let key = match &plan {
        Some((_, negotiated)) => variant_key(&route, *negotiated),
        None => cache_key(&route),
    };
    let policy = ImageHeaders {
        max_age: state.config.cache.ttl_secs,
        cors: state.config.server.cors,
        // With negotiation on, a route with options but no format depends on Accept.
        vary_accept: state.config.image.auto_webp
            && plan.is_some()
            && route.options.format.is_none(),
    };

    // 2. Memory cache.
    if let Some(entry) = state.memory.get(&key).await {
        let resp = respond::image(&entry, Tier::Memory, head, headers, &policy);
        state
            .metrics
            .image_served(Tier::Memory, body_len(&resp), false);
        return resp;
    }

    // 3-5. Mirror, upstream, transform: once for all concurrent requests of this key.
    let flight = load_coalesced(state, key, route, plan.map(|(p, _)| p)).await;

    // 6. Response.
    let Some((loaded, leader)) = flight else {
        return respond::error(500, "internal error while loading the image");
    };
    match loaded {
        Ok((entry, tier)) => {
            let policy = if tier == Tier::Stale {
                ImageHeaders {
                    max_age: state.config.cache.negative_ttl_secs,
                    ..policy
                }
            } else {
                policy
            };
            let resp = respond::image(&entry, tier, head, headers, &policy);
            state.metrics.image_served(tier, body_len(&resp), !leader);
            resp
        }
        Err(f) => respond::error(f.status, &f.message),
    }
}

/// Bytes of body a response sends (0 for HEAD and 304).
fn body_len(resp: &Response<Body>) -> u64 {
    hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0)
}

/// Loads a route (the original, or a variant with `plan`) once for all concurrent requests of
/// `key`, in a task of its own, and keeps the result in memory. Returns the result and whether
/// this caller started the work; `None` if the work panicked. Boxed, because loading a variant
/// loads its original through here too.
fn load_coalesced(
    state: &Arc<State>,
    key: String,
    route: Route,
    plan: Option<transform::Plan>,
) -> crate::store::BoxFuture<'static, Option<(Loaded, bool)>> {
    let state = state.clone();
    Box::pin(async move {
        let task_state = state.clone();
        let flight_key = key.clone();
        state
            .flights
            .run(&key, move || async move {
                let loaded = match plan {
                    None => original(&task_state, &route.upstream).await,
                    Some(plan) => variant(&task_state, &route, &flight_key, plan).await,
                };
                if let Ok((entry, _)) = &loaded {
                    task_state.memory.insert(flight_key, entry.clone()).await;
                }
                loaded
            })
            .await
    })
}

/// The transform a route asks for (`None` for the original) and whether WebP was chosen by
/// `Accept` negotiation. Errors are 400s: an unknown preset, sizes over `image.max_dimension`.
fn plan(
    state: &State,
    options: &route::Options,
    headers: &HeaderMap,
) -> Result<Option<(transform::Plan, bool)>, String> {
    if options.is_original() {
        return Ok(None);
    }
    let merged = match &options.preset {
        Some(name) => state
            .config
            .presets
            .get(name)
            .ok_or_else(|| format!("no preset named {name:?}"))?
            .resolve(options),
        None => options.clone(),
    };
    let max = state.config.image.max_dimension;
    for (what, v) in [("width", merged.width), ("height", merged.height)] {
        if v.is_some_and(|v| v > max) {
            return Err(format!(
                "{what} {} exceeds image.max_dimension ({max})",
                v.unwrap_or(0)
            ));
        }
    }
    let accepts_webp = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("image/webp")));
    let negotiated = merged.format.is_none() && state.config.image.auto_webp && accepts_webp;
    let format = match merged.format {
        Some(f) => transform::OutFormat::from_route(f),
        None if negotiated => Some(transform::OutFormat::Webp),
        None => None,
    };
    Ok(Some((
        transform::Plan {
            width: merged.width,
            height: merged.height,
            fit: merged.fit.unwrap_or(route::Fit::Inside),
            format,
            quality: merged.quality.unwrap_or(state.config.image.quality),
        },
        negotiated,
    )))
}

/// The memory-cache and coalescing key of a route: its unsigned, canonical form.
fn cache_key(route: &Route) -> String {
    route::encode(&route.upstream, &route.options, None).unwrap_or_else(|_| route.upstream.clone())
}

/// The key of a derived image: the route, marked when WebP came from negotiation.
fn variant_key(route: &Route, negotiated_webp: bool) -> String {
    let mut k = cache_key(route);
    if negotiated_webp {
        k.push_str("#accept-webp");
    }
    k
}

/// Loads a derived image: a stored variant of the current original, or the original (coalesced
/// with other requests for it) transformed on the bounded pool and stored.
async fn variant(state: &Arc<State>, route: &Route, key: &str, plan: transform::Plan) -> Loaded {
    let now = state.metrics.now();
    let ttl = state.config.cache.ttl_secs;
    // A stored variant is good while the original it came from is fresh in the mirror.
    let stored = state.store.variant(key).await.ok().flatten();
    if let Some(v) = &stored {
        if let Ok(Some(o)) = state.store.original(&route.upstream).await {
            let fresh = now < o.checked_at.saturating_add(ttl);
            if fresh && v.source.as_deref() == Some(o.hash.as_str()) {
                if let Ok(Some(bytes)) = state.store.blob(&v.hash).await {
                    return Ok((
                        entry(v, bytes, o.checked_at.saturating_add(ttl)),
                        Tier::Disk,
                    ));
                }
            }
        }
    }

    let original_route = Route {
        upstream: route.upstream.clone(),
        options: route::Options::default(),
    };
    let original_key = cache_key(&original_route);
    let (source, tier) = match state.memory.get(&original_key).await {
        Some(e) => (e, Tier::Memory),
        None => match load_coalesced(state, original_key, original_route, None).await {
            Some((loaded, _)) => loaded?,
            None => {
                return Err(Failure::new(
                    500,
                    "internal error while loading the original",
                ))
            }
        },
    };
    if let Some(v) = stored.filter(|v| v.source.as_deref() == Some(source.hash.as_str())) {
        if let Ok(Some(bytes)) = state.store.blob(&v.hash).await {
            return Ok((entry(&v, bytes, source.fresh_until), tier));
        }
    }

    let permit = state
        .transforms
        .acquire()
        .await
        .map_err(|_| Failure::new(503, "shutting down"))?;
    let limits = transform::Limits {
        max_pixels: state.config.image.max_pixels,
    };
    let body = source.body.clone();
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || transform::transform(&body, &plan, &limits))
        .await
        .map_err(|_| Failure::new(500, "the transform failed unexpectedly"))?;
    drop(permit);
    let output = output.map_err(|e| Failure::new(e.status(), e.to_string()))?;
    state
        .metrics
        .transform(output.format.name(), started.elapsed().as_secs_f64());
    let bytes = Bytes::from(output.bytes);
    let record = Record {
        key: key.to_string(),
        hash: sha256_hex(&bytes),
        content_type: output.format.content_type().to_string(),
        size: bytes.len() as u64,
        etag: None,
        last_modified: None,
        fetched_at: now,
        checked_at: now,
        source: Some(source.hash.clone()),
    };
    match state.store.put_variant(&record, &bytes).await {
        Ok(()) => state.metrics.mirrored(record.size),
        Err(e) => tracing::warn!(key, error = %e, "cannot store a variant"),
    }
    let mut e = entry(&record, bytes, source.fresh_until);
    // A variant is as new as its original.
    Arc::make_mut(&mut e).last_modified = source.last_modified.clone();
    Ok((e, tier))
}

/// Loads an original from the mirror, revalidating or fetching it from the upstream as needed.
pub(crate) async fn original(state: &State, url: &str) -> Loaded {
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
                source: None,
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
        hash: r.hash.clone(),
        content_type: r.content_type.clone(),
        etag: format!("\"{}\"", &r.hash[..r.hash.len().min(32)]),
        last_modified: httpdate::fmt_http_date(last_modified),
        fresh_until,
    })
}
