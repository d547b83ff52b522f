//! The event loops and what each does with a connection: accept (public and admin listeners),
//! the connection limit, protocol detection under the header timeout, HTTP/1 and HTTP/2 through
//! hyper, the idle and send timeouts, and the graceful stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::router::handle;
use super::{sendfile, slow, Listener, State, SHUTDOWN_GRACE};

/// After a failed accept (out of descriptors, mostly), the loop waits this long before the next:
/// long enough not to spin on an error that persists, short enough that connections freed
/// meanwhile are taken promptly.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Which event loop a thread runs, and where.
pub(super) struct EventLoop {
    /// Its number, from 0 (the `event_loop` label of `imgmirror_connections_accepted_total`).
    pub(super) n: usize,
    /// The CPU its thread is pinned to, when connections are steered ([`super::listen`]).
    pub(super) cpu: Option<usize>,
    /// Every CPU of the process, for the loop's helper threads when it is pinned.
    pub(super) all_cpus: Option<rustix::thread::CpuSet>,
}

/// Starts an event loop (one of `server.threads`): a single-threaded runtime on a thread of its
/// own, accepting from `listener` (its own steered socket, or the one every loop shares; see
/// [`super::listen`]) and serving every connection it accepts to the end. Nothing moves between loops, so
/// a request is read, answered and logged on one thread, with no wake-up of another; state
/// (memory, mirror, metrics, limits) is shared.
pub(super) fn spawn_event_loop(
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
        builder.on_thread_start(move || super::listen::unpin(&all));
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
                super::listen::pin_to(cpu);
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
pub(super) async fn accept_loop(
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
                tokio::time::sleep(ACCEPT_BACKOFF).await;
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
pub(super) fn connection_limit(configured: usize) -> usize {
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
