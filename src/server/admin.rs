//! The operator endpoints: `/metrics`, `/stats`, the status page and `POST /purge`; and the
//! client side of the last, with which `imgmirror purge` asks a running service to forget.

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
/// and every variant) from memory, then asks the CDN in front to drop them (`[cdn]`; a 502 says
/// when it refused). `imgmirror purge` deletes them from the mirror first, then calls this.
pub async fn purge(state: &State, query: &str) -> Response<Body> {
    let urls: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "url")
        .map(|(_, v)| v.into_owned())
        .collect();
    if urls.is_empty() {
        return respond::error(400, "give one or more url= parameters");
    }
    let count = state.mirror.forget_in_memory(urls.clone()).await;
    // Then the CDN in front (`[cdn]`), once nothing here would answer with the old bytes.
    let cdn = match crate::cdn::purge(&state.config().cdn, &urls).await {
        Ok(0) => String::new(),
        Ok(n) => format!("; {n} purge key(s) purged from the CDN"),
        Err(e) => {
            return respond::error(
                502,
                &format!("purged {count} upstream URL(s) from memory, but the CDN: {e}"),
            )
        }
    };
    respond::text(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        format!("purged {count} upstream URL(s) from memory{cdn}\n"),
    )
}

/// Where `imgmirror purge` finds the running service `config` describes: its admin listener,
/// else its public one (an unspecified address means this host).
pub fn purge_target(config: &crate::config::Config) -> Result<std::net::SocketAddr, String> {
    let addr = if config.server.admin_listen.is_empty() {
        &config.server.listen
    } else {
        &config.server.admin_listen
    };
    let mut addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| format!("server address {addr:?} is not ip:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}

/// Why a running service did not purge.
#[derive(Debug)]
pub enum PurgeRefused {
    /// Nothing answers there (no service running): the mirror alone was purged.
    NotRunning,
    /// It answered, and not with success: what it said.
    Refused(String),
    /// No HTTP client could be made to ask it (the mirror was purged all the same).
    NoClient(String),
}

/// How long `imgmirror purge` waits for the service's answer.
const PURGE_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `POST /purge?url=…` for `upstreams` to the service at `addr` (with `security.purge_token`
/// when it is the public listener).
pub async fn request_purge(
    config: &crate::config::Config,
    addr: std::net::SocketAddr,
    upstreams: &[String],
) -> Result<(), PurgeRefused> {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(upstreams.iter().map(|u| ("url", u)))
        .finish();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PURGE_REQUEST_TIMEOUT)
        .build()
        .map_err(|e| PurgeRefused::NoClient(e.to_string()))?;
    let mut req = client.post(format!("http://{addr}/purge?{query}"));
    if config.server.admin_listen.is_empty() && !config.security.purge_token.is_empty() {
        req = req.bearer_auth(&config.security.purge_token);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(PurgeRefused::Refused(format!(
            "answered {} to the purge",
            r.status()
        ))),
        Err(_) => Err(PurgeRefused::NotRunning),
    }
}
