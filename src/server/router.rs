//! One request, routed: the guard (load shedding, the log line), the endpoint's answer, and the
//! share of memory its body may hold until the client takes it. Image routes go to
//! [`super::image`]; operator endpoints to `admin`.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};

use super::endpoint::Endpoint;
use super::guard::{self, RequestGuard};
use super::respond::{self, Body, Reply};
use super::{admin, image, Listener, State};

/// Answers one request as the public listener does: the whole path behind the socket (guard,
/// route, memory, mirror, upstream, transform, response), for in-process benchmarks.
pub async fn answer(state: Arc<State>, req: Request<()>) -> Response<Body> {
    handle(state, req, Listener::Public).await.resp
}

/// Routes one request behind its guard (load shedding, metrics, the log line). No endpoint reads
/// a request body.
pub(super) async fn handle<B>(state: Arc<State>, req: Request<B>, listener: Listener) -> Reply {
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
            Reply::from(respond::error(
                503,
                "too many responses waiting for slow clients, try again shortly",
            ))
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
