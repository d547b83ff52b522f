//! The operator endpoints: `/metrics`, `/stats`, the status page and `POST /purge`.

use http::{Response, StatusCode};

use super::respond::{self, Body};
use super::State;

/// `GET /metrics`: the Prometheus (OpenMetrics) exposition, memory gauges refreshed first.
pub async fn metrics(state: &State) -> Response<Body> {
    let (entries, bytes) = state.mirror.memory_usage().await;
    state.metrics.memory_usage(entries, bytes);
    state.metrics.unfinished_bytes(state.unfinished.held());
    respond::text(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        state.metrics.exposition(),
    )
}

/// `GET /stats`: the JSON document.
pub fn stats(state: &State) -> Response<Body> {
    let body = serde_json::to_vec(&state.metrics.stats()).unwrap_or_default();
    respond::text(StatusCode::OK, "application/json", body)
}

/// `GET /`: the status page.
pub fn status_page() -> Response<Body> {
    super::status_page::page()
}

/// True when the request carries `Authorization: Bearer <security.purge_token>` (compared in
/// constant time, through digests); false when no token is configured.
pub fn has_purge_token(config: &crate::config::Config, headers: &http::HeaderMap) -> bool {
    let token = &config.security.purge_token;
    if token.is_empty() {
        return false;
    }
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (
        crate::store::sha256_hex(given.trim().as_bytes()),
        crate::store::sha256_hex(token.as_bytes()),
    );
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `POST /purge?url=<percent-encoded upstream URL>` (repeatable): drops those images (originals
/// and every variant) from memory. `imgmirror purge` deletes them from the mirror first, then
/// calls this.
pub async fn purge(state: &State, query: &str) -> Response<Body> {
    let urls: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "url")
        .map(|(_, v)| v.into_owned())
        .collect();
    if urls.is_empty() {
        return respond::error(400, "give one or more url= parameters");
    }
    let count = state.mirror.forget_in_memory(urls).await;
    respond::text(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        format!("purged {count} upstream URL(s) from memory\n"),
    )
}
