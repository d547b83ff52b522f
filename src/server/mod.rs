//! The HTTP service: listeners (public, and admin when `server.admin_listen` is set), HTTP/1.1 and
//! HTTP/2 connections (hyper), routing of the handful of paths, load shedding, one log line per
//! request, and graceful shutdown. The image path itself lives in [`image`]; responses are built
//! in [`respond`].

pub mod image;
pub mod respond;
mod status_page;
pub mod warm;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::cache::{Flights, MemoryCache, NegativeCache};
use crate::config::{Config, StoreKind};
use crate::metrics::{Clock, Metrics, SystemClock};
use crate::route::SigningKey;
use crate::store::{FsStore, MirrorStore};
use crate::upstream::Upstream;
use respond::Body;

/// How long a client may take to send its request headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run after a shutdown signal before connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Everything a request handler needs, shared by all connections.
pub struct State {
    pub config: Arc<Config>,
    /// The signing key; when set, every route must carry a valid signature.
    pub key: Option<SigningKey>,
    /// Hot responses.
    pub memory: MemoryCache,
    /// Upstream 404/410s remembered for `negative_ttl_secs`.
    pub negative: NegativeCache,
    /// Coalesces concurrent loads of one cold image.
    pub flights: Arc<Flights<image::Loaded>>,
    /// The durable mirror.
    pub store: Arc<dyn MirrorStore>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// Requests handled at once; past it, requests get a fast 503 (load shedding).
    in_flight: Semaphore,
    /// Transforms running at once: one per core, so CPU work never piles up threads or memory.
    pub transforms: Semaphore,
    /// Source of request ids.
    next_id: AtomicU64,
}

impl State {
    /// Builds the state from a validated config: opens the mirror and the upstream client.
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Result<State, String> {
        let store: Arc<dyn MirrorStore> = match config.cache.store {
            StoreKind::Fs => Arc::new(FsStore::open(&config.cache.dir).map_err(|e| {
                format!(
                    "cache.dir {}: cannot open the mirror: {e}",
                    config.cache.dir.display()
                )
            })?),
            StoreKind::S3 => {
                return Err(
                    "cache.store = \"s3\" is not available in this build yet; use \"fs\"".into(),
                )
            }
        };
        let upstream = Upstream::new(&config.upstream)?;
        let metrics = Arc::new(Metrics::new(clock.clone()));
        let evictions = metrics.clone();
        Ok(State {
            key: config.signing_key(),
            memory: MemoryCache::new(config.cache.memory_bytes, clock, move || {
                evictions.evicted()
            }),
            negative: NegativeCache::new(Duration::from_secs(
                config.cache.negative_ttl_secs.max(1),
            )),
            flights: Arc::default(),
            store,
            upstream,
            metrics,
            in_flight: Semaphore::new(config.server.max_in_flight),
            transforms: Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
            next_id: AtomicU64::new(1),
            config: Arc::new(config),
        })
    }
}

/// Which listener a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Public,
    Admin,
}

/// A running service (for tests and the CLI).
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to [`SHUTDOWN_GRACE`]), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the service stops (after [`Running::shutdown`] or a `stop` signal).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// A handle that triggers the shutdown.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds the listeners of `config` and starts serving, with the system clock.
pub async fn start(config: Config) -> Result<Running, String> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with an injected clock (tests move time).
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Running, String> {
    let public = TcpListener::bind(&config.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: cannot listen: {e}", config.server.listen))?;
    let admin = if config.server.admin_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&config.server.admin_listen)
                .await
                .map_err(|e| {
                    format!(
                        "server.admin_listen {}: cannot listen: {e}",
                        config.server.admin_listen
                    )
                })?,
        )
    };
    let addr = public.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let state = Arc::new(State::new(config, clock)?);
    let (tx, rx) = watch::channel(false);
    if state.config.cache.store == StoreKind::Fs {
        tokio::spawn(maintain_mirror(state.clone(), rx.clone()));
    }
    let task = tokio::spawn(accept_loop(public, admin, state.clone(), rx));
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown: tx,
        task,
    })
}

async fn accept_loop(
    public: TcpListener,
    admin: Option<TcpListener>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, which) = tokio::select! {
            r = public.accept() => (r, Listener::Public),
            r = async { match &admin { Some(a) => a.accept().await, None => std::future::pending().await } } => (r, Listener::Admin),
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match stream {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req, which, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(public);
    drop(admin);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
    }
}

/// How often the mirror is brought back within `cache.disk_bytes` (when set) and measured.
const MIRROR_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the mirror within `cache.disk_bytes` and its gauges true: now, then every
/// [`MIRROR_MAINTENANCE_INTERVAL`].
async fn maintain_mirror(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let Ok(store) = FsStore::open(&state.config.cache.dir) else {
        return;
    };
    let max = state.config.cache.disk_bytes;
    loop {
        let s = store.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let evicted = (max > 0).then(|| s.enforce_budget(max));
            (evicted, s.usage())
        })
        .await;
        if let Ok((evicted, (objects, bytes))) = pass {
            state.metrics.mirror_usage(objects, bytes);
            match evicted {
                Some(Ok(e)) if e.variants + e.originals > 0 => {
                    state
                        .metrics
                        .mirror_evicted(e.variants as u64, e.originals as u64);
                    tracing::info!(
                        variants = e.variants,
                        originals = e.originals,
                        bytes_after = e.bytes_after,
                        "mirror over cache.disk_bytes: evicted"
                    )
                }
                Some(Err(e)) => tracing::warn!(error = %e, "cannot enforce cache.disk_bytes"),
                _ => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MIRROR_MAINTENANCE_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Routes one request, with load shedding, metrics and a log line.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    listener: Listener,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| format!("{:x}", state.next_id.fetch_add(1, Ordering::Relaxed)));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let kind = route_kind(&path);
    let Ok(_permit) = state.in_flight.try_acquire() else {
        state.metrics.request(kind, 503);
        tracing::warn!(id, %method, kind, status = 503, "overloaded: request shed");
        return respond::error(503, "overloaded, try again shortly");
    };
    state.metrics.in_flight(1);
    let admin_elsewhere =
        listener == Listener::Public && !state.config.server.admin_listen.is_empty();
    let mut resp = match (kind, &method) {
        ("image", &Method::GET | &Method::HEAD) => {
            image::serve(&state, &path, method == Method::HEAD, req.headers()).await
        }
        ("health", &Method::GET | &Method::HEAD) if path == "/healthz" => {
            respond::text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
        }
        ("health", &Method::GET | &Method::HEAD) => match state.store.check_writable().await {
            Ok(()) => respond::text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
            Err(e) => respond::error(503, &format!("mirror store not writable: {e}")),
        },
        ("metrics" | "stats" | "status" | "purge", _) if admin_elsewhere => {
            respond::error(404, "not found")
        }
        // Purging is for operators: the admin listener, or loopback clients when there is none.
        ("purge", &Method::POST) if listener == Listener::Admin || peer.ip().is_loopback() => {
            purge(&state, req.uri().query().unwrap_or_default()).await
        }
        ("purge", &Method::POST) => {
            respond::error(403, "purge is accepted from loopback or on admin_listen")
        }
        ("metrics", &Method::GET) => {
            let (entries, bytes) = state.memory.usage().await;
            state.metrics.memory_usage(entries, bytes);
            respond::text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.exposition(),
            )
        }
        ("stats", &Method::GET) => {
            let body = serde_json::to_vec(&state.metrics.stats()).unwrap_or_default();
            respond::text(StatusCode::OK, "application/json", body)
        }
        ("status", &Method::GET) => status_page::page(),
        ("other", _) => respond::error(404, "not found"),
        _ => {
            let mut r = respond::error(405, "method not allowed");
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            r
        }
    };
    state.metrics.in_flight(-1);
    let status = resp.status().as_u16();
    state.metrics.request(kind, status);
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let tier = resp
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let bytes = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    // The upstream, without its query (which may carry tokens); never the signature or key.
    let upstream = resp
        .extensions()
        .get::<image::LoggedUpstream>()
        .map(|u| u.0.clone())
        .unwrap_or_default();
    tracing::info!(
        id,
        %method,
        kind,
        status,
        tier,
        bytes,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        upstream,
        "request"
    );
    resp
}

/// The kind of a path, for routing, metrics and logs.
fn route_kind(path: &str) -> &'static str {
    match path {
        p if p.starts_with("/i/") || p.starts_with("/s/") => "image",
        "/healthz" | "/readyz" => "health",
        "/metrics" => "metrics",
        "/stats" => "stats",
        "/" => "status",
        "/purge" => "purge",
        _ => "other",
    }
}

/// `POST /purge?url=<percent-encoded upstream URL>` (repeatable): drops those images (originals and
/// every variant) from memory. `imgmirror purge` deletes them from the mirror first, then calls this.
async fn purge(state: &State, query: &str) -> Response<Body> {
    let urls: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "url")
        .map(|(_, v)| v.into_owned())
        .collect();
    if urls.is_empty() {
        return respond::error(400, "give one or more url= parameters");
    }
    for u in &urls {
        state.negative.remove(u).await;
    }
    let wanted: std::collections::HashSet<String> = urls.into_iter().collect();
    let count = wanted.len();
    state.memory.remove_where(move |key| {
        crate::route::decode(key.split('#').next().unwrap_or(key), None)
            .is_ok_and(|r| wanted.contains(&r.upstream))
    });
    respond::text(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        format!("purged {count} upstream URL(s) from memory\n"),
    )
}
