//! The CDN or caching proxy in front of the service (`[cdn]`): the purge key every image answer
//! names in the `cdn.surrogate_key` header, and the purge requests sent to `cdn.purge_url` when
//! an image is purged (`imgmirror purge`, `POST /purge`), so a purge reaches the caches that
//! hold the image, not only the mirror.

use std::time::Duration;

use futures_util::StreamExt;

use crate::config::CdnConfig;

/// The purge key of an upstream URL: the hex SHA-256 of the URL, the same for the original and
/// every variant of it, so one purge drops them all. 64 characters of `0-9a-f`: a valid tag for
/// Cloudflare's `Cache-Tag`, Fastly's `Surrogate-Key` and Varnish's `xkey`.
pub fn purge_key(upstream: &str) -> String {
    crate::store::sha256_hex(upstream.as_bytes())
}

/// How long one purge request may take.
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the CDN to drop every image of `upstreams`: one `cdn.purge_method` request per purge key
/// to `cdn.purge_url` with `cdn.purge_headers` and `cdn.purge_body`, `{key}` substituted in the
/// URL and the body, four at a time. Nothing when no `purge_url` is set. The number
/// of keys purged, or the first failure (the rest are still tried).
pub async fn purge(config: &CdnConfig, upstreams: &[String]) -> Result<usize, String> {
    if config.purge_url.is_empty() || upstreams.is_empty() {
        return Ok(0);
    }
    let method = reqwest::Method::from_bytes(config.purge_method.as_bytes())
        .map_err(|e| format!("cdn.purge_method: {e}"))?;
    // No redirects: the headers may carry a token, which must not follow one to another host.
    let client = reqwest::Client::builder()
        .timeout(PURGE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    // The requests made first, then sent a few at a time (a closure in the stream would not be
    // `Send` for every lifetime, which the service's tasks need).
    let requests: Vec<_> = upstreams
        .iter()
        .map(|upstream| purge_one(&client, &method, config, upstream))
        .collect();
    let sent: Vec<Result<(), String>> = futures_util::stream::iter(requests)
        .buffered(PURGES_AT_ONCE)
        .collect()
        .await;
    let purged = sent.iter().filter(|r| r.is_ok()).count();
    match sent.into_iter().find_map(Result::err) {
        Some(e) => Err(e),
        None => Ok(purged),
    }
}

/// Purge requests in flight at once, for one batch.
const PURGES_AT_ONCE: usize = 4;

/// One purge request: the key of `upstream` in `cdn.purge_url` and `cdn.purge_body`, with
/// `cdn.purge_headers`. An error names the URL and what went wrong.
async fn purge_one(
    client: &reqwest::Client,
    method: &reqwest::Method,
    config: &CdnConfig,
    upstream: &str,
) -> Result<(), String> {
    let key = purge_key(upstream);
    let url = config.purge_url.replace("{key}", &key);
    let mut request = client.request(method.clone(), &url);
    for (name, value) in &config.purge_headers {
        request = request.header(name, value);
    }
    if !config.purge_body.is_empty() {
        request = request.body(config.purge_body.replace("{key}", &key));
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let why = why_refused(r).await;
            Err(format!("{url}: answered {status} {why}"))
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// The start of a refusal's body, on one line: an API says why there (Cloudflare:
/// `"errors":[…]`). At most [`WHY_BYTES`] are read, whatever the body's length.
async fn why_refused(mut r: reqwest::Response) -> String {
    let mut start = Vec::new();
    while start.len() < WHY_BYTES {
        match r.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            _ => break,
        }
    }
    start.truncate(WHY_BYTES);
    let text = String::from_utf8_lossy(&start);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line.trim().to_string()
}

/// How much of a refusal's body [`why_refused`] keeps.
const WHY_BYTES: usize = 200;
