//! The HTTP service: listeners (public, and admin when `server.admin_listen` is set), HTTP/1.1 and
//! HTTP/2 connections (hyper), routing of the endpoints, and graceful shutdown. It only speaks
//! HTTP; the pipeline behind image routes is [`crate::mirror`].
//!
//! * `accept`: the event loops: accepting, the connection limit, hyper, timeouts, graceful stop.
//! * `router`: one request: its guard, its endpoint's answer, the memory its body may hold.
//! * `endpoint`: what a path is, parsed once.
//! * `guard`: request id, load shedding, the in-flight gauge and the log line, per request.
//! * `listen`: the public listening sockets, and which event loop gets which connection.
//! * [`image`]: image routes; `admin`: `/metrics`, `/stats`, the status page, `POST /purge`.
//! * [`respond`]: building responses (caching headers, 304s, errors).
//! * `sendfile`: the connection's socket, sending bodies that are in mirror files with
//!   `sendfile(2)`.

mod accept;
mod admin;
mod endpoint;
mod guard;
pub mod image;
mod listen;
pub mod respond;
mod router;
pub mod sendfile;
mod slow;
mod status_page;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::deps::Deps;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::route::SigningKey;
use crate::start::StartError;
use accept::{accept_loop, connection_limit, spawn_event_loop, EventLoop};

/// How long CDN purges asked for may take to be sent once the service stops.
const PURGES_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// How long in-flight requests may run after a shutdown signal before connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything a request handler needs, shared by all connections.
pub struct State {
    /// The signing key; when set, every route must carry a valid signature.
    pub key: Option<SigningKey>,
    /// The image pipeline and its tiers.
    pub mirror: Arc<Mirror>,
    /// The service's counters.
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
    /// `Cache-Control` of fresh images whose bytes do not depend on the request (see
    /// [`respond::cache_control_immutable`]).
    cache_control_immutable: http::HeaderValue,
    /// `cdn.surrogate_key` as a header name, when set.
    surrogate_key: Option<http::HeaderName>,
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
            cache_control_immutable: respond::cache_control_immutable(config.cache.ttl_secs),
            surrogate_key: http::HeaderName::from_bytes(config.cdn.surrogate_key.as_bytes()).ok(),
        })
    }

    /// The configuration.
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
    /// Where the public listener listens.
    pub addr: SocketAddr,
    /// Where the admin listener listens, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// What every request handler shares.
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
    // Marked before anything is served (and before the mirror folder can be taken away under
    // a running service), so the mark never recreates a folder behind the service's back.
    let unclean = match state.mirror.tiers().local().mark_running() {
        Ok(unclean) => unclean,
        Err(e) => {
            tracing::warn!(error = %e, "cannot mark the mirror as in use");
            false
        }
    };
    tokio::spawn(state.mirror.clone().maintain(unclean, rx.clone()));
    tokio::spawn(state.mirror.clone().follow_replicas(rx.clone()));
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
        accept_loop(0, public, admin, loop_state.clone(), connections, rx).await;
        // The other loops stop on the same signal; their connections finish within the grace.
        for other in others {
            let _ = tokio::task::spawn_blocking(move || other.join()).await;
        }
        // CDN purges asked for are sent, and what this run wrote goes into the local disk's
        // count, before the process ends.
        let sent = loop_state.mirror.purges_sent();
        if tokio::time::timeout(PURGES_GRACE, sent).await.is_err() {
            tracing::warn!("stopping with CDN purges not sent yet");
        }
        loop_state.mirror.tiers().flush_usage();
        loop_state.mirror.tiers().local().mark_stopped();
    });
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown: tx,
        task,
    })
}

pub use admin::{purge_target, request_purge, PurgeRefused};
pub use router::answer;
