//! One guard per request: its id, load shedding (`server.max_in_flight`), the in-flight gauge
//! and the request log line. The gauge and the permit are released when the guard drops, so a
//! handler that panics can never leak them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Response};
use tokio::sync::SemaphorePermit;

use super::endpoint::Endpoint;
use super::respond::{self, Body, Reply};
use super::State;
use crate::mirror::Tier;

/// A request admitted past load shedding.
pub struct RequestGuard<'a> {
    state: &'a Arc<State>,
    _permit: SemaphorePermit<'a>,
    id: String,
    method: Method,
    endpoint: Endpoint,
    started: Instant,
}

impl<'a> RequestGuard<'a> {
    /// Admits a request; `None` (counted and logged as a 503) when `server.max_in_flight` are
    /// running: the caller answers [`shed`].
    pub fn admit(
        state: &'a Arc<State>,
        headers: &http::HeaderMap,
        method: &Method,
        endpoint: Endpoint,
    ) -> Option<RequestGuard<'a>> {
        let id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(String::from)
            .unwrap_or_else(|| format!("{:x}", state.next_id.fetch_add(1, Ordering::Relaxed)));
        let Ok(permit) = state.mirror.in_flight().try_acquire() else {
            state.metrics.request(endpoint.kind(), 503);
            tracing::warn!(id, %method, kind = endpoint.kind(), status = 503, "overloaded: request shed");
            return None;
        };
        state.metrics.in_flight(1);
        Some(RequestGuard {
            state,
            _permit: permit,
            id,
            method: method.clone(),
            endpoint,
            started: Instant::now(),
        })
    }

    /// Counts the response, tags it with the request id and writes the log line.
    pub fn finish(self, mut reply: Reply) -> Reply {
        let status = reply.resp.status().as_u16();
        self.state.metrics.request(self.endpoint.kind(), status);
        if let Ok(v) = http::HeaderValue::from_str(&self.id) {
            reply.resp.headers_mut().insert("x-request-id", v);
        }
        tracing::info!(
            id = self.id,
            method = %self.method,
            kind = self.endpoint.kind(),
            status,
            tier = reply.tier.map_or("-", Tier::header),
            bytes = reply.body_len(),
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
            // Without its query (which may carry tokens); never the signature or key.
            upstream = reply.upstream.as_deref().unwrap_or_default(),
            "request"
        );
        reply
    }
}

/// The fast answer to a request shed by [`RequestGuard::admit`].
pub fn shed() -> Response<Body> {
    respond::error(503, "overloaded, try again shortly")
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.state.metrics.in_flight(-1);
    }
}
