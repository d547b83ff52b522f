//! The image request path, top to bottom: route → (memory → mirror → upstream → transform, in
//! [`crate::mirror`]) → response. Nothing here parses URLs, touches storage or speaks to origins.

use std::sync::Arc;

use http::{HeaderMap, Response};

use super::respond::{self, Body, ImageHeaders, Reply};
use super::State;
use crate::mirror::{Accepts, Answer, LoadError, Tier};
use crate::route;

/// Answers `GET`/`HEAD` for a route.
pub async fn serve(state: &Arc<State>, path: &str, head: bool, headers: &HeaderMap) -> Reply {
    // 1. Route: decode and check the signature.
    let route = match route::decode(path, state.key.as_ref()) {
        Ok(r) => r,
        Err(e) => return respond::error(e.status(), &e.to_string()).into(),
    };
    // For the request log: the upstream without its query, which may carry tokens.
    let upstream = route
        .upstream
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    // The purge key a CDN in front files the answer under (`cdn.surrogate_key`).
    let surrogate = state.surrogate_key.as_ref().and_then(|name| {
        let key = http::HeaderValue::from_str(&crate::cdn::purge_key(&route.upstream)).ok()?;
        Some((name.clone(), key))
    });
    // 2-5. Plan, memory, mirror, upstream, transform.
    let answer = state.mirror.load(route, accepts(headers)).await;
    // 6. Response.
    let mut reply = match answer {
        Ok(Answer {
            entry,
            tier,
            coalesced,
            vary_accept,
        }) => {
            let policy = ImageHeaders {
                // A stale copy is served for a short while only (`cache.negative_ttl_secs`);
                // bytes that are the same for every client may be kept as they are.
                cache_control: match (tier, vary_accept) {
                    (Tier::Stale, _) => state.cache_control.1.clone(),
                    (_, true) => state.cache_control.0.clone(),
                    (_, false) => state.cache_control_immutable.clone(),
                },
                cors: state.config().server.cors,
                vary_accept,
            };
            let mut resp = respond::image(&entry, tier, head, headers, &policy);
            if let Some((name, key)) = surrogate {
                resp.headers_mut().insert(name, key);
            }
            let mut reply = Reply::from(resp);
            if reply.body_len() > 0 {
                reply.file = state.files.body_of(&entry);
            }
            state
                .metrics
                .image_served(tier.counted(coalesced), reply.body_len());
            reply.tier = Some(tier);
            reply
        }
        Err(e) => Reply::from(Response::from(e)),
    };
    reply.upstream = Some(upstream);
    reply
}

/// `Retry-After` on a 503 of an image (S3 unreachable, the transform queue full): long enough for
/// a queue to drain or a store to come back, short enough that a browser retrying a broken image
/// on a page soon gets it.
const RETRY_AFTER_SECS: &str = "5";

impl From<LoadError> for Response<Body> {
    fn from(e: LoadError) -> Response<Body> {
        let mut resp = respond::error(e.status(), &e.to_string());
        if matches!(e, LoadError::StoreUnavailable(_) | LoadError::Busy) {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// Which of `image/webp` and `image/avif` the request's `Accept` lists with a quality above zero
/// (`q=0` means "not acceptable"; wildcards name neither). Media ranges are parsed by `mime`;
/// unparsable items are ignored.
fn accepts(headers: &HeaderMap) -> Accepts {
    let mut accepts = Accepts::default();
    let listed = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| item.trim().parse::<mime::Mime>().ok());
    for m in listed {
        let q = m
            .get_param("q")
            .map_or(Some(1.0), |q| q.as_str().parse::<f32>().ok());
        if q.is_some_and(|q| q > 0.0) {
            match m.essence_str() {
                "image/webp" => accepts.webp = true,
                "image/avif" => accepts.avif = true,
                _ => {}
            }
        }
    }
    accepts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_respects_q() {
        let parsed = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::ACCEPT, http::HeaderValue::from_static(v));
            accepts(&h)
        };
        let accept = |v| parsed(v).webp;
        assert!(accept("image/avif,image/webp,*/*;q=0.8"));
        assert!(accept("image/webp;q=0.5"));
        assert!(accept("IMAGE/WEBP"));
        assert!(!accept("image/webp;q=0"));
        assert!(!accept("image/webp;q=0.0, image/png"));
        assert!(!accept("image/webpx, image/png"));
        assert!(!accept("*/*"));
        let avif = |v| parsed(v).avif;
        assert!(avif("image/avif,image/webp,*/*;q=0.8"));
        assert!(avif("image/avif;q=0.1"));
        assert!(!avif("image/avif;q=0, image/webp"));
        assert!(!avif("image/webp,*/*"));
        assert_eq!(
            parsed("image/avif;q=0,image/webp;q=0.9"),
            Accepts {
                webp: true,
                avif: false
            }
        );
    }
}
