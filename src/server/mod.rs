//! The HTTP service: listeners (public, and admin when `server.admin_listen` is set), HTTP/1.1 and
//! HTTP/2 connections (hyper), routing of the endpoints, and graceful shutdown. It only speaks
//! HTTP; the pipeline behind image routes is [`crate::mirror`].
//!
//! * `endpoint`: what a path is, parsed once.
//! * `guard`: request id, load shedding, the in-flight gauge and the log line, per request.
//! * `listen`: the public listening sockets, and which event loop gets which connection.
//! * [`image`]: image routes; `admin`: `/metrics`, `/stats`, the status page, `POST /purge`.
//! * [`respond`]: building responses (caching headers, 304s, errors).
//! * `sendfile`: the connection's socket, sending bodies that are in mirror files with
//!   `sendfile(2)`.

mod admin;
mod endpoint;
mod guard;
pub mod image;
mod listen;
pub mod respond;
pub mod sendfile;
mod slow;
mod status_page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::route::SigningKey;
use crate::start::StartError;
use endpoint::Endpoint;
use guard::RequestGuard;
use respond::{Body, Reply};

/// How long in-flight requests may run after a shutdown signal before connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Everything a request handler needs, shared by all connections.
pub struct State {
    /// The signing key; when set, every route must carry a valid signature.
    pub key: Option<SigningKey>,
    /// The image pipeline and its tiers.
    pub mirror: Arc<Mirror>,
    pub metrics: Arc<Metrics>,
    /// Source of request ids.
    next_id: AtomicU64,
    /// Bytes held by responses not yet taken by their clients, within `cache.memory_bytes`.
    unfinished: Arc<slow::Unfinished>,
    /// The mirror files large bodies are sent from (`sendfile(2)`).
    files: sendfile::Files,
    /// `Cache-Control` of fresh images (`cache.ttl_secs`) and of stale ones
    /// (`cache.negative_ttl_secs`), made once.
    cache_control: (http::HeaderValue, http::HeaderValue),
}

impl State {
    /// Builds the state from a validated config: opens the mirror and the upstream client.
    pub async fn new(config: Config, deps: &Deps) -> Result<State, StartError> {
        let metrics = Arc::new(Metrics::new(deps.clock.clone()));
        let config = Arc::new(config);
        let mirror = Mirror::open(config.clone(), metrics.clone(), deps).await?;
        Ok(State {
            key: config.signing_key(),
            mirror: Arc::new(mirror),
            metrics,
            next_id: AtomicU64::new(1),
            unfinished: slow::Unfinished::new(config.cache.memory_bytes),
            files: sendfile::Files::default(),
            cache_control: (
                respond::cache_control(config.cache.ttl_secs),
                respond::cache_control(config.cache.negative_ttl_secs),
            ),
        })
    }

    pub fn config(&self) -> &Config {
        self.mirror.config()
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

/// Binds the listeners of `config` and starts serving, with the system clock and resolver.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, Deps::default()).await
}

/// [`start`] with other dependencies (tests: time moves, no real DNS).
pub async fn start_with(config: Config, deps: Deps) -> Result<Running, StartError> {
    if let Some(why) = config.open_proxy_risk() {
        return Err(StartError::Config(why));
    }
    let loops = config.server.event_loops();
    let sockets = listen::bind(&config.server.listen, loops)?;
    let admin = if config.server.admin_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&config.server.admin_listen)
                .await
                .map_err(|e| {
                    let message = format!(
                        "server.admin_listen {}: cannot listen: {e}",
                        config.server.admin_listen
                    );
                    match crate::start::is_temporary(&e) {
                        true => StartError::Temporary(message),
                        false => StartError::Config(message),
                    }
                })?,
        )
    };
    let addr = match (&sockets.here, sockets.threads.first()) {
        (Some(socket), _) | (None, Some((socket, _))) => socket.local_addr(),
        (None, None) => Err(std::io::ErrorKind::NotFound.into()),
    }
    .map_err(|e| format!("server.listen: {e}"))?;
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    let state = Arc::new(State::new(config, &deps).await?);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(state.mirror.clone().maintain(rx.clone()));
    let connections = Arc::new(Semaphore::new(connection_limit(
        state.config().server.max_connections,
    )));
    // Loop 0 is the starting runtime when it takes public connections (not steered); the admin
    // listener always is.
    let first = usize::from(sockets.here.is_some());
    let mut others = Vec::new();
    for (n, (socket, cpu)) in sockets.threads.into_iter().enumerate() {
        others.push(spawn_event_loop(
            EventLoop {
                n: n + first,
                cpu,
                all_cpus: sockets.all_cpus,
            },
            socket,
            state.clone(),
            connections.clone(),
            rx.clone(),
        )?);
    }
    let public = sockets
        .here
        .map(TcpListener::from_std)
        .transpose()
        .map_err(|e| format!("server.listen: {e}"))?;
    let loop_state = state.clone();
    let task = tokio::spawn(async move {
        accept_loop(0, public, admin, loop_state, connections, rx).await;
        // The other loops stop on the same signal; their connections finish within the grace.
        for other in others {
            let _ = tokio::task::spawn_blocking(move || other.join()).await;
        }
    });
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown: tx,
        task,
    })
}

/// Which event loop a thread runs, and where.
struct EventLoop {
    /// Its number, from 0 (the `event_loop` label of `imgmirror_connections_accepted_total`).
    n: usize,
    /// The CPU its thread is pinned to, when connections are steered ([`listen`]).
    cpu: Option<usize>,
    /// Every CPU of the process, for the loop's helper threads when it is pinned.
    all_cpus: Option<rustix::thread::CpuSet>,
}

/// Starts an event loop (one of `server.threads`): a single-threaded runtime on a thread of its
/// own, accepting from `listener` (its own steered socket, or the one every loop shares; see
/// [`listen`]) and serving every connection it accepts to the end. Nothing moves between loops, so
/// a request is read, answered and logged on one thread, with no wake-up of another; state
/// (memory, mirror, metrics, limits) is shared.
fn spawn_event_loop(
    event_loop: EventLoop,
    listener: std::net::TcpListener,
    state: Arc<State>,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let EventLoop { n, cpu, all_cpus } = event_loop;
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if let Some(all) = all_cpus {
        // Blocking-pool threads (transforms, file I/O) inherit the pinned loop's mask when it
        // spawns them: they get every CPU back.
        builder.on_thread_start(move || listen::unpin(&all));
    }
    let runtime = builder
        .build()
        .map_err(|e| format!("cannot start event loop {n}: {e}"))?;
    let listener = {
        let _in_runtime = runtime.enter();
        TcpListener::from_std(listener).map_err(|e| format!("server.listen: {e}"))?
    };
    std::thread::Builder::new()
        .name(format!("imgmirror-loop-{n}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                listen::pin_to(cpu);
            }
            runtime.block_on(accept_loop(
                n,
                Some(listener),
                None,
                state,
                connections,
                shutdown,
            ));
        })
        .map_err(|e| format!("cannot start event loop {n}: {e}"))
}

/// Accepts connections until the shutdown signal, then lets them finish (up to
/// [`SHUTDOWN_GRACE`]). `connections` is the public listener's connection limit, shared by all loops;
/// `n` is the loop's number.
async fn accept_loop(
    n: usize,
    public: Option<TcpListener>,
    admin: Option<TcpListener>,
    state: Arc<State>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let header_timeout = Duration::from_secs(state.config().server.header_timeout_secs);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // A peer that stops answering pings is dropped instead of holding its descriptor.
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, which) = tokio::select! {
            r = accept(public.as_ref()) => (r, Listener::Public),
            r = accept(admin.as_ref()) => (r, Listener::Admin),
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, _peer) = match stream {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The public listener holds at most `server.max_connections`; the admin listener is not
        // counted, so operators and probes on it get through a flood.
        let permit = match which {
            Listener::Public => match connections.clone().try_acquire_owned() {
                Ok(p) => {
                    state.metrics.connection_accepted(n);
                    Some(p)
                }
                Err(_) => {
                    tokio::spawn(refuse(stream));
                    continue;
                }
            },
            Listener::Admin => None,
        };
        let state = state.clone();
        let pending = sendfile::Pending::default();
        let io = sendfile::Conn::new(stream, pending.clone(), state.metrics.clone());
        let server = &state.config().server;
        let activity = slow::Activity::new(
            Duration::from_secs(server.idle_timeout_secs),
            Duration::from_secs(server.send_timeout_secs),
        );
        let conn_activity = activity.clone();
        let metrics = state.metrics.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            let pending = pending.clone();
            let activity = activity.clone();
            async move {
                let _handling = activity.request();
                // HTTP/2 frames a body in its own buffers and may stop a stream half way: only
                // HTTP/1 bodies go from files.
                let http1 = req.version() < http::Version::HTTP_2;
                let reply = handle(state, req, which).await;
                if let (Some(body), true) = (reply.file, http1) {
                    pending.push(body);
                }
                let (parts, body) = reply.resp.into_parts();
                let body = slow::Tracked::new(body, &activity, reply.reserved).await;
                Ok::<_, Infallible>(Response::from_parts(parts, body))
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            // Protocol detection waits for the first byte: a connection that never sends one is
            // closed after the header read timeout, like a slow HTTP/1 header.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, io.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
            // Idle connections and clients that read nothing are dropped, with what they hold.
            tokio::select! {
                _ = watcher.watch(conn) => {}
                why = conn_activity.expired() => metrics.connection_closed(why.label()),
            }
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

/// The next connection of `listener`; never, without one.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// How often an HTTP/2 connection is pinged.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// File descriptors kept free for the mirror, the upstream and S3 when connections are capped,
/// and for the mirror files large bodies are sent from (`sendfile::MAX_OPEN`).
const FD_RESERVE: u64 = 256 + sendfile::MAX_OPEN as u64;

/// `server.max_connections`, within the file descriptor limit (raised to its hard value first).
fn connection_limit(configured: usize) -> usize {
    let fds = raise_fd_limit();
    let fit = fds.saturating_sub(FD_RESERVE).max(16);
    let limit = configured.min(usize::try_from(fit).unwrap_or(usize::MAX));
    if limit < configured {
        tracing::warn!(
            configured,
            limit,
            fds,
            "server.max_connections lowered to fit the file descriptor limit"
        );
    }
    limit
}

/// Raises the soft file descriptor limit to the hard one; returns the soft limit in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the file descriptor limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Answers a connection over `server.max_connections` with a 503 without reading it, and closes.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "503 Service Unavailable: too many connections, try again shortly\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Answers one request as the public listener does: the whole path behind the socket (guard,
/// route, memory, mirror, upstream, transform, response), for in-process benchmarks.
pub async fn answer(state: Arc<State>, req: Request<()>) -> Response<Body> {
    handle(state, req, Listener::Public).await.resp
}

/// Routes one request behind its guard (load shedding, metrics, the log line). No endpoint reads
/// a request body.
async fn handle<B>(state: Arc<State>, req: Request<B>, listener: Listener) -> Reply {
    let endpoint = Endpoint::parse(req.uri().path());
    let Some(guard) = RequestGuard::admit(&state, req.headers(), req.method(), endpoint) else {
        return guard::shed().into();
    };
    let reply = route(&state, &req, endpoint, listener).await;
    guard.finish(hold(&state, reply))
}

/// Reserves what `resp`'s body holds until its client takes it ([`slow::Unfinished`]); a 503
/// when responses not yet taken by slow clients already hold `cache.memory_bytes`.
fn hold(state: &Arc<State>, mut reply: Reply) -> Reply {
    let bytes = reply.body_len();
    if bytes == 0 {
        return reply;
    }
    match state.unfinished.reserve(bytes) {
        Some(r) => {
            reply.reserved = Some(r);
            reply
        }
        None => {
            state.metrics.unfinished_refused();
            tracing::warn!(
                held = state.unfinished.held(),
                bytes,
                "responses waiting for slow clients hold cache.memory_bytes: 503"
            );
            Reply {
                resp: respond::error(
                    503,
                    "too many responses waiting for slow clients, try again shortly",
                ),
                file: None,
                ..reply
            }
        }
    }
}

/// The response for an endpoint.
async fn route<B>(
    state: &Arc<State>,
    req: &Request<B>,
    endpoint: Endpoint,
    listener: Listener,
) -> Reply {
    let method = req.method();
    let admin_elsewhere =
        listener == Listener::Public && !state.config().server.admin_listen.is_empty();
    let get = method == Method::GET || method == Method::HEAD;
    let resp = match endpoint {
        // Image routes are the public listener's alone: an admin listener on an address others
        // can reach (probes, scrapers) must not become an open image proxy beside it.
        Endpoint::Image if listener == Listener::Admin => respond::error(
            404,
            "image routes are served on server.listen, not on server.admin_listen",
        ),
        Endpoint::Image if get => {
            return image::serve(
                state,
                req.uri().path(),
                method == Method::HEAD,
                req.headers(),
            )
            .await
        }
        Endpoint::Healthz if get => {
            respond::text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
        }
        Endpoint::Readyz if get => match state.mirror.ready().await {
            Ok(()) => respond::text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
            Err(e) => respond::error(503, &format!("mirror store not writable: {e}")),
        },
        e if e.is_admin() && admin_elsewhere => respond::error(404, "not found"),
        // Purging is for operators: the admin listener, or the purge token on the public one.
        // Never "the client is loopback": behind a same-host proxy every client is.
        Endpoint::Purge if method == Method::POST => {
            if listener == Listener::Admin || admin::has_purge_token(state.config(), req.headers())
            {
                admin::purge(state, req.uri().query().unwrap_or_default()).await
            } else {
                respond::error(
                    403,
                    "purge needs server.admin_listen, or security.purge_token as a bearer token",
                )
            }
        }
        Endpoint::Metrics if method == Method::GET => admin::metrics(state).await,
        Endpoint::Stats if method == Method::GET => admin::stats(state),
        Endpoint::Status if method == Method::GET => admin::status_page(),
        Endpoint::Other => respond::error(404, "not found"),
        _ => {
            let mut r = respond::error(405, "method not allowed");
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            r
        }
    };
    resp.into()
}
