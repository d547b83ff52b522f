//! Fetching originals from upstream origins, safely.
//!
//! Owns the HTTP client (reqwest over rustls) and every policy applied to outgoing requests:
//!
//! * the SSRF guard (`guard`): private and special addresses refused unless
//!   `upstream.allow_private`, on every resolved address and every redirect hop; `allow_hosts` /
//!   `deny_hosts` globs, checked on every hop;
//! * `resolve` overrides (operator-chosen addresses, trusted as configured);
//! * no proxy from the environment, timeouts, `max_redirects`, `max_bytes` enforced while streaming,
//!   the User-Agent, no Referer unless `send_referer`, and a service-wide limit on parallel fetches.
//!
//! It knows nothing of routes, caches or images: it returns bytes and validators, or a typed error.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::Resolve;
use reqwest::header::{
    HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use tokio::sync::Semaphore;

use crate::config::{compile_globs, UpstreamConfig};
pub use guard::{is_public, Lookup, SystemLookup};
use guard::{Blocked, DoesNotResolve, GuardedResolver, Policy};

mod guard;

/// Connection deadline, separate from the whole-fetch `timeout_secs`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a fetch failed. Each variant maps to one HTTP status (see [`FetchError::status`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Refused by policy before or during the fetch: a private address, a denied host, a scheme
    /// other than http(s). The origin was not contacted (or, for a redirect, not followed).
    #[error("refused by policy: {0}")]
    Refused(String),
    /// The upstream answered 404 or 410.
    #[error("upstream answered {0}")]
    NotFound(u16),
    /// The original is larger than `upstream.max_bytes`.
    #[error("original larger than {0} bytes")]
    TooLarge(u64),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The origin looks gone: its host does not resolve, or it refuses connections. (What
    /// archive rescue treats as gone, with 404/410.)
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// 429 or 503: the upstream asks to come back later (after `retry_after` seconds if it said).
    #[error("upstream answered {status}")]
    Throttled {
        /// The status.
        status: u16,
        /// Seconds to wait, from `Retry-After`.
        retry_after: Option<u64>,
    },
    /// Anything else: a connection reset, another 5xx, too many redirects, a broken body.
    #[error("upstream failed: {0}")]
    Failed(String),
    /// No fetch slot (`upstream.concurrency`, `upstream.per_host_concurrency`) came free within
    /// `upstream.queue_wait_secs`.
    #[error("too many images being fetched, try again shortly")]
    Busy,
    /// Nobody waited for the fetch any more, so it gave up before taking a slot.
    #[error("abandoned: nobody waits for this fetch any more")]
    Abandoned,
}

/// A fetch slot not taken: the service is stopping, or nobody wants the fetch any more.
impl From<crate::wait::NotAcquired> for FetchError {
    fn from(e: crate::wait::NotAcquired) -> FetchError {
        match e {
            crate::wait::NotAcquired::Closed => FetchError::Failed("shutting down".into()),
            crate::wait::NotAcquired::Unwanted => FetchError::Abandoned,
        }
    }
}

impl FetchError {
    /// The HTTP status the service answers with.
    pub fn status(&self) -> u16 {
        match self {
            FetchError::Refused(_) => 403,
            FetchError::NotFound(_) => 404,
            FetchError::TooLarge(_) => 413,
            FetchError::Timeout => 504,
            FetchError::Unreachable(_) | FetchError::Throttled { .. } | FetchError::Failed(_) => {
                502
            }
            FetchError::Busy | FetchError::Abandoned => 503,
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Refused(_) => "refused",
            FetchError::NotFound(_) => "not_found",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Timeout => "timeout",
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Throttled { .. } | FetchError::Failed(_) => "error",
            FetchError::Busy => "busy",
            FetchError::Abandoned => "abandoned",
        }
    }
}

/// Validators of a mirrored copy, for a conditional request.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    /// The `ETag`.
    pub etag: Option<String>,
    /// The `Last-Modified`.
    pub last_modified: Option<String>,
}

/// A successful fetch.
#[derive(Debug)]
pub enum Fetched {
    /// A full body with the upstream's validators, and the URL that answered (after redirects).
    Body {
        /// The body.
        bytes: Bytes,
        /// Its validators.
        validators: Validators,
        /// The URL that answered, after redirects.
        url: url::Url,
    },
    /// The upstream confirmed the mirrored copy (304).
    NotModified,
}

/// The upstream client with its policies; one per service, cheap to share.
pub struct Upstream {
    client: reqwest::Client,
    policy: Arc<Policy>,
    max_bytes: u64,
    send_referer: bool,
    /// `upstream.referers`: the Referer an origin that demands its own site's gets, by host.
    referers: Vec<(crate::config::hosts::HostGlob, HeaderValue)>,
    /// `upstream.queue_wait_secs`: the longest an origin's `Retry-After` is waited for.
    throttle_wait: Duration,
    /// `upstream.resolve`: host (lower case) -> address. reqwest applies these to name lookups;
    /// for URLs with an explicit port, [`Upstream::fetch`] also swaps in the pinned port, on the
    /// first request and on every redirect: a pin is one address and one port.
    pinned: std::collections::HashMap<String, SocketAddr>,
    /// `upstream.max_redirects`.
    max_redirects: usize,
    /// `upstream.timeout_secs`, for the whole fetch, redirects included.
    timeout: Duration,
    /// Bounds parallel fetches, service-wide and per host.
    slots: Slots,
}

/// Whether anyone still waits for a fetch: asked while it queues for a slot, so a fetch whose
/// requesters have all gone gives up before it takes one.
pub type StillWanted<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// Fetch slots: `upstream.concurrency` service-wide and `upstream.per_host_concurrency` per
/// host, both waited for at most `upstream.queue_wait_secs` together. A host's slot is taken
/// first, so fetches queued behind one slow host never hold a service-wide slot.
struct Slots {
    all: Semaphore,
    per_host: usize,
    /// One semaphore per host with a fetch running or queued; dropped when the last one ends.
    hosts: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
    wait: Duration,
}

/// A fetch's two slots; the host's entry is removed when nobody else holds or wants it.
struct Slot<'a> {
    slots: &'a Slots,
    host: String,
    host_sem: Option<Arc<Semaphore>>,
    _host: Option<tokio::sync::OwnedSemaphorePermit>,
    _all: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self._all = None;
        self._host = None;
        let sem = self.host_sem.take();
        let mut hosts = self.slots.hosts.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's are the last references: nobody holds or waits for this host.
        if sem.is_some_and(|s| Arc::strong_count(&s) == 2) {
            hosts.remove(&self.host);
        }
    }
}

impl Slots {
    fn new(all: usize, per_host: usize, wait: Duration) -> Slots {
        Slots {
            all: Semaphore::new(all),
            per_host,
            hosts: Default::default(),
            wait,
        }
    }

    /// Waits for a slot for `host` (its own, then the service-wide one), for at most `wait`,
    /// giving up as soon as `wanted` says nobody waits any more.
    async fn take(&self, host: &str, wanted: StillWanted<'_>) -> Result<Slot<'_>, FetchError> {
        let host_sem = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts
                .entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        let mut slot = Slot {
            slots: self,
            host: host.to_string(),
            host_sem: Some(host_sem.clone()),
            _host: None,
            _all: None,
        };
        let waited = tokio::time::timeout(self.wait, async {
            slot._host = Some(crate::wait::while_wanted(host_sem.acquire_owned(), wanted).await?);
            slot._all = Some(crate::wait::while_wanted(self.all.acquire(), wanted).await?);
            Ok::<_, FetchError>(())
        })
        .await;
        match waited {
            Ok(Ok(())) if wanted() => Ok(slot),
            Ok(Ok(())) => Err(FetchError::Abandoned),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FetchError::Busy),
        }
    }
}

impl Upstream {
    /// Builds the client from a validated config, resolving names with the system resolver.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, String> {
        Upstream::with_lookup(config, Arc::new(SystemLookup))
    }

    /// A client with the same guard, pins, limits and redirect cap as `config`, that reaches only
    /// `hosts` (whatever `upstream.allow_hosts` says), `concurrency` requests at a time: archive
    /// lookups go to the archives the operator configured, and nowhere else.
    pub fn restricted_to(
        config: &UpstreamConfig,
        hosts: Vec<String>,
        concurrency: usize,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Upstream, String> {
        let mut c = config.clone();
        c.allow_hosts = hosts;
        c.concurrency = concurrency.max(1);
        Upstream::with_lookup(&c, lookup)
    }

    /// [`Upstream::new`] with another name resolver (the guard still judges every address).
    pub fn with_lookup(
        config: &UpstreamConfig,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Upstream, String> {
        let policy = Arc::new(Policy {
            allow_private: config.allow_private,
            allow_hosts: compile_globs(&config.allow_hosts),
            deny_hosts: compile_globs(&config.deny_hosts),
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .referer(false)
            .user_agent(config.user_agent.clone())
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(CONNECT_TIMEOUT.min(Duration::from_secs(config.timeout_secs)))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
                lookup,
            }) as Arc<dyn Resolve>)
            // Redirects are followed by `fetch` itself, so every hop goes through the same
            // policy check and the same `upstream.resolve` pins as the first request.
            .redirect(reqwest::redirect::Policy::none());
        if !config.ca_file.is_empty() {
            let pem = std::fs::read(&config.ca_file)
                .map_err(|e| format!("upstream.ca_file {}: cannot read: {e}", config.ca_file))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "upstream.ca_file {}: not PEM certificates: {e}",
                    config.ca_file
                )
            })?;
            if certs.is_empty() {
                return Err(format!(
                    "upstream.ca_file {}: no certificate in it",
                    config.ca_file
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let mut pinned = std::collections::HashMap::new();
        for (host, addr) in &config.resolve {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| format!("upstream.resolve.{host}: {addr:?} is not ip:port"))?;
            builder = builder.resolve(&host.to_ascii_lowercase(), addr);
            pinned.insert(host.to_ascii_lowercase(), addr);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Upstream {
            client,
            policy,
            max_bytes: config.max_bytes,
            send_referer: config.send_referer,
            referers: config
                .referers
                .iter()
                .filter_map(|(glob, referer)| {
                    let glob = crate::config::hosts::HostGlob::new(glob).ok()?;
                    Some((glob, HeaderValue::from_str(referer).ok()?))
                })
                .collect(),
            throttle_wait: Duration::from_secs(config.queue_wait_secs),
            pinned,
            max_redirects: config.max_redirects,
            timeout: Duration::from_secs(config.timeout_secs),
            slots: Slots::new(
                config.concurrency,
                config.per_host_concurrency.max(1),
                Duration::from_secs(config.queue_wait_secs),
            ),
        })
    }

    /// Checks a URL against the policy without fetching it.
    pub fn check(&self, url: &str) -> Result<url::Url, FetchError> {
        let parsed =
            url::Url::parse(url).map_err(|e| FetchError::Refused(format!("bad URL: {e}")))?;
        // Names are checked on their resolved addresses by the resolver; names pinned by
        // `upstream.resolve` are reqwest overrides that never reach it: the operator chose them.
        self.policy
            .check_url(&parsed)
            .map_err(FetchError::Refused)?;
        Ok(parsed)
    }

    /// Fetches `url`, conditionally when `validators` are given, for a caller that waits for it.
    pub async fn fetch(
        &self,
        url: &str,
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        self.fetch_while(url, validators, &|| true).await
    }

    /// Fetches `url`, conditionally when `validators` are given, once a slot is free
    /// (`upstream.concurrency` service-wide, `upstream.per_host_concurrency` for its host,
    /// waited for at most `upstream.queue_wait_secs`: then [`FetchError::Busy`]); while it
    /// waits, `wanted` is asked whether anyone still waits for it ([`FetchError::Abandoned`]
    /// when not). The body is read in chunks and abandoned as soon as it passes `max_bytes`.
    pub async fn fetch_while(
        &self,
        url: &str,
        validators: Option<&Validators>,
        wanted: StillWanted<'_>,
    ) -> Result<Fetched, FetchError> {
        let parsed = self.check(url)?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let _slot = self.slots.take(&host, wanted).await?;
        // An origin that answers 429 or 503 with a `Retry-After` the service can wait for
        // (`upstream.queue_wait_secs` in all) is asked again after it, once per answer: polite,
        // and the reader still gets the image.
        let mut waited = Duration::ZERO;
        loop {
            let fetched =
                match tokio::time::timeout(self.timeout, self.follow(parsed.clone(), validators))
                    .await
                {
                    Err(_) => Err(FetchError::Timeout),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok((resp, answered))) => self.read(resp, answered, validators).await,
                };
            match fetched {
                Err(FetchError::Throttled {
                    retry_after: Some(secs),
                    ..
                }) if waited + Duration::from_secs(secs) <= self.throttle_wait && wanted() => {
                    let pause = Duration::from_secs(secs);
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                other => return other,
            }
        }
    }

    /// Sends the request and follows redirects (`upstream.max_redirects`), checking each hop's
    /// URL against the policy before it is contacted.
    async fn follow(
        &self,
        mut url: url::Url,
        validators: Option<&Validators>,
    ) -> Result<(reqwest::Response, url::Url), FetchError> {
        for _ in 0..=self.max_redirects {
            let resp = self
                .request(&url, validators)
                .send()
                .await
                .map_err(classify)?;
            let status = resp.status();
            if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
                return Ok((resp, url));
            }
            let Some(location) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(FetchError::Failed(format!(
                    "upstream answered {} without a Location",
                    status.as_u16()
                )));
            };
            let next = url
                .join(location)
                .map_err(|e| FetchError::Failed(format!("redirect to a bad URL: {e}")))?;
            self.policy.check_url(&next).map_err(|why| {
                FetchError::Refused(format!("redirect to {}: {why}", without_query(&next)))
            })?;
            url = next;
        }
        Err(FetchError::Refused(format!(
            "more than {} redirects",
            self.max_redirects
        )))
    }

    /// One GET, with the pins, validators and Referer applied.
    fn request(&self, url: &url::Url, validators: Option<&Validators>) -> reqwest::RequestBuilder {
        let mut req = match self.pinned_target(url) {
            // Like curl --resolve: the pinned address's port wins over the URL's, and the Host
            // header still names the original authority.
            Some((target, authority)) => self
                .client
                .get(target)
                .header(reqwest::header::HOST, authority),
            None => self.client.get(url.clone()),
        };
        if let Some(v) = validators {
            if let Some(e) = v
                .etag
                .as_deref()
                .and_then(|e| HeaderValue::from_str(e).ok())
            {
                req = req.header(IF_NONE_MATCH, e);
            }
            if let Some(lm) = v
                .last_modified
                .as_deref()
                .and_then(|l| HeaderValue::from_str(l).ok())
            {
                req = req.header(IF_MODIFIED_SINCE, lm);
            }
        }
        let host = url.host_str().unwrap_or_default();
        if let Some((_, referer)) = self.referers.iter().find(|(glob, _)| glob.matches(host)) {
            req = req.header(reqwest::header::REFERER, referer.clone());
        } else if self.send_referer {
            req = req.header(
                reqwest::header::REFERER,
                format!("{}/", url.origin().ascii_serialization()),
            );
        }
        req
    }

    /// Reads an answer: its status, then the body, bounded by `upstream.max_bytes`, and whole:
    /// a body that ends before its `Content-Length` is a failure, never an image.
    async fn read(
        &self,
        mut resp: reqwest::Response,
        answered: url::Url,
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        let status = resp.status().as_u16();
        match status {
            304 if validators.is_some() => return Ok(Fetched::NotModified),
            404 | 410 => return Err(FetchError::NotFound(status)),
            429 | 503 => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                return Err(FetchError::Throttled {
                    status,
                    retry_after,
                });
            }
            200..=299 => {}
            s => return Err(FetchError::Failed(format!("upstream answered {s}"))),
        }
        let declared = resp.content_length();
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let validators = Validators {
            etag: header_string(resp.headers(), ETAG),
            last_modified: header_string(resp.headers(), LAST_MODIFIED),
        };
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        if let Some(n) = declared.filter(|n| *n != body.len() as u64) {
            return Err(FetchError::Failed(format!(
                "body of {} bytes where Content-Length said {n}",
                body.len()
            )));
        }
        Ok(Fetched::Body {
            bytes: body.freeze(),
            validators,
            url: answered,
        })
    }
}

impl Upstream {
    /// For a URL with an explicit port on a pinned host: the URL to connect to (pinned port) and
    /// the original `host:port` for the Host header.
    fn pinned_target(&self, url: &url::Url) -> Option<(url::Url, String)> {
        let port = url.port()?;
        let host = url.host_str()?;
        let addr = self.pinned.get(&host.to_ascii_lowercase())?;
        if addr.port() == 0 || addr.port() == port {
            return None;
        }
        let mut target = url.clone();
        target.set_port(Some(addr.port())).ok()?;
        Some((target, format!("{host}:{port}")))
    }
}

/// `without_query` of a URL in text form (unparsable text is dropped after any `?` or `#`).
pub fn without_query_str(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => without_query(&u),
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_string(),
    }
}

/// A URL for messages: scheme, host, port and path, without query or fragment (tokens).
fn without_query(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn header_string(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(String::from)
}

/// Maps a reqwest error to a [`FetchError`], finding guard refusals in its source chain.
fn classify(e: reqwest::Error) -> FetchError {
    // Messages go into error bodies: never the URL, whose query may carry tokens.
    let e = e.without_url();
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<Blocked>() {
            return FetchError::Refused(b.0.clone());
        }
        if let Some(d) = s.downcast_ref::<DoesNotResolve>() {
            return FetchError::Unreachable(d.0.clone());
        }
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return FetchError::Unreachable("connection refused".into());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Timeout;
    }
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    FetchError::Failed(msg)
}
