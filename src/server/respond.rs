//! Building HTTP responses: image responses with their caching and safety headers, conditional
//! requests (304), and short plain-text errors that are never cached.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::cache::Entry;
use crate::mirror::Tier;

/// The body type of every response.
pub type Body = Full<Bytes>;

/// Served on every image and error: an image must never run script (SVG), and nothing framed.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// Header policy for image responses.
pub struct ImageHeaders {
    /// `Cache-Control`, made once per service (see [`cache_control`]).
    pub cache_control: HeaderValue,
    /// `Access-Control-Allow-Origin: *` (`server.cors`).
    pub cors: bool,
    /// `Vary: Accept`: the bytes depend on format negotiation.
    pub vary_accept: bool,
}

/// A response with what the connection and the request log need to know about it, handed down
/// the request path beside it (never read back from its headers).
pub struct Reply {
    /// The response.
    pub resp: Response<Body>,
    /// The tier that answered an image (the log's `tier`).
    pub tier: Option<Tier>,
    /// The upstream an image route named, without its query (the log's `upstream`).
    pub upstream: Option<String>,
    /// The body's bytes are also in this open mirror file: HTTP/1 sends them with `sendfile(2)`.
    pub file: Option<super::sendfile::FileBody>,
    /// The share of `cache.memory_bytes` the body holds until its client takes it.
    pub reserved: Option<super::slow::Reservation>,
}

impl From<Response<Body>> for Reply {
    fn from(resp: Response<Body>) -> Reply {
        Reply {
            resp,
            tier: None,
            upstream: None,
            file: None,
            reserved: None,
        }
    }
}

impl Reply {
    /// Bytes of body the response sends (0 for HEAD and 304).
    pub fn body_len(&self) -> u64 {
        hyper::body::Body::size_hint(self.resp.body())
            .exact()
            .unwrap_or(0)
    }
}

/// `public, max-age=N`.
pub fn cache_control(max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("public"))
}

/// How long a cache in front may keep serving its copy of an image while imgmirror answers
/// errors (`stale-if-error`, RFC 5861): a week.
pub const STALE_IF_ERROR_SECS: u64 = 7 * 24 * 3600;

/// `public, max-age=N, immutable, stale-if-error=…`: for a route whose bytes are the same for
/// every client (the original, or a route that names its format), which a CDN may keep as it
/// is; never for a negotiated one, whose bytes depend on `Accept` (a CDN that ignores
/// `Vary: Accept` would pin the first client's format for everyone).
pub fn cache_control_immutable(max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "public, max-age={max_age}, immutable, stale-if-error={STALE_IF_ERROR_SECS}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("public"))
}

/// An image response (or 304 when the request's validators match; HEAD gets no body).
pub fn image(
    entry: &Entry,
    tier: Tier,
    head: bool,
    request: &HeaderMap,
    policy: &ImageHeaders,
) -> Response<Body> {
    let not_modified = is_not_modified(request, &entry.etag, &entry.last_modified);
    let status = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let send_body = !(head || not_modified);
    let mut resp = Response::new(if send_body {
        Body::new(entry.body.clone())
    } else {
        Body::default()
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let made = &entry.headers;
    if let Some(v) = &made.etag {
        h.insert(header::ETAG, v.clone());
    }
    if let Some(v) = &made.last_modified {
        h.insert(header::LAST_MODIFIED, v.clone());
    }
    h.insert(header::CACHE_CONTROL, policy.cache_control.clone());
    h.insert("x-cache", HeaderValue::from_static(tier.header()));
    if policy.vary_accept {
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
    }
    if policy.cors {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    if !not_modified {
        if let Some(v) = &made.content_type {
            h.insert(header::CONTENT_TYPE, v.clone());
        }
        h.insert(header::CONTENT_LENGTH, made.content_length.clone());
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    resp
}

/// A short plain-text error: `404 Not Found: upstream answered 404`.
pub fn error(status: u16, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        message
    );
    text(status, "text/plain; charset=utf-8", body)
}

/// A non-image response that must not be cached.
pub fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    resp
}

fn set<K: header::IntoHeaderName>(h: &mut HeaderMap, name: K, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// RFC 9110 §13.1: `If-None-Match` (weak comparison, lists, `*`) wins over `If-Modified-Since`.
fn is_not_modified(request: &HeaderMap, etag: &str, last_modified: &str) -> bool {
    use headers::HeaderMapExt;
    // RFC 9110 §13.1.2: If-None-Match (weak comparison; lists, `*`) decides when present; only
    // then If-Modified-Since. An unparsable If-None-Match counts as absent.
    if request.contains_key(header::IF_NONE_MATCH) {
        if let (Some(inm), Ok(ours)) = (
            request.typed_get::<headers::IfNoneMatch>(),
            etag.parse::<headers::ETag>(),
        ) {
            return !inm.precondition_passes(&ours);
        }
    }
    let Some(ims) = request.typed_get::<headers::IfModifiedSince>() else {
        return false;
    };
    httpdate::parse_http_date(last_modified).is_ok_and(|lm| !ims.is_modified(lm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn conditionals() {
        let lm = "Tue, 08 Jun 2021 00:39:00 GMT";
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"a\", W/\"b\"")]),
            "\"b\"",
            lm
        ));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "*")]),
            "\"b\"",
            lm
        ));
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "\"c\"")]),
            "\"b\"",
            lm
        ));
        assert!(is_not_modified(
            &headers(&[("if-modified-since", lm)]),
            "\"b\"",
            lm
        ));
        assert!(!is_not_modified(
            &headers(&[("if-modified-since", "Mon, 07 Jun 2021 00:39:00 GMT")]),
            "\"b\"",
            lm
        ));
        // Several header lines are one list.
        let mut two = headers(&[("if-none-match", "\"x\"")]);
        two.append("if-none-match", HeaderValue::from_static("\"b\""));
        assert!(is_not_modified(&two, "\"b\"", lm));
        // If-None-Match takes precedence.
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "\"c\""), ("if-modified-since", lm)]),
            "\"b\"",
            lm
        ));
    }
}
