//! Proxy recognition: turns a link that goes through a public CORS/image proxy into the upstream URL
//! it wraps, layer by layer (at most [`MAX_LAYERS`]), and classifies links that are not proxied.
//!
//! Knows nothing of documents or contexts: it takes one decoded URL string and answers.

use crate::config::{compile_globs, HostGlob, ProxyPrefix, RewriteConfig};

/// Most proxy layers unwrapped from one link; deeper nesting is left alone and reported.
pub const MAX_LAYERS: usize = 4;

/// How many times an embedded URL is percent-decoded at most (double-encoded values are common:
/// the Cloudflare-worker proxy decodes twice).
const MAX_DECODES: usize = 3;

/// What a link turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A proxied URL: the upstream and the proxies it went through, outermost first.
    Proxied {
        /// The image's own URL.
        upstream: String,
        /// The proxies, outermost first.
        proxies: Vec<String>,
    },
    /// A direct http(s) URL on a `mirror_hosts` host.
    Mirrored {
        /// The URL.
        upstream: String,
    },
    /// A URL whose query or path embeds another URL, through no proxy we know.
    UnknownProxy,
    /// Anything else: leave it alone.
    Other,
}

impl Link {
    /// The upstream URL to mirror, when there is one.
    pub fn upstream(&self) -> Option<&str> {
        match self {
            Link::Proxied { upstream, .. } | Link::Mirrored { upstream } => Some(upstream),
            _ => None,
        }
    }
}

/// A built-in proxy form.
#[derive(Clone, Copy, Debug)]
enum Builtin {
    /// `https://<anything>.workers.dev/?<URL>`
    Workers,
    /// `https://cors-anywhere.herokuapp.com/<URL>` and clones (`rest` is the path prefix).
    CorsAnywhere,
    /// `https://api.allorigins.win/raw?url=<URL>`
    AllOrigins,
    /// `https://corsproxy.io/?url=<URL>`, `https://corsproxy.io/?<URL>`
    CorsProxyIo,
    /// `https://api.codetabs.com/v1/proxy?quest=<URL>` (also `/v1/proxy/?quest=`)
    Codetabs,
    /// `https://images.weserv.nl/?url=<URL>`, `https://wsrv.nl/?url=<URL>`
    Weserv,
    /// `https://i0.wp.com/<host>/<path>` (i0 to i3)
    Photon,
}

/// The proxy table: built-ins (when enabled) and configured prefixes.
#[derive(Clone, Debug)]
pub struct Unwrapper {
    builtin: bool,
    custom: Vec<(String, ProxyPrefix)>,
    mirror_hosts: Vec<HostGlob>,
}

impl Unwrapper {
    /// Builds the table from a validated config.
    pub fn new(config: &RewriteConfig) -> Unwrapper {
        Unwrapper {
            builtin: config.builtin_proxies,
            custom: config
                .proxies
                .iter()
                .filter_map(|p| Some((p.name.clone(), ProxyPrefix::new(&p.prefix).ok()?)))
                .collect(),
            mirror_hosts: compile_globs(&config.mirror_hosts),
        }
    }

    /// Classifies a link (entities already decoded, surrounding whitespace trimmed).
    pub fn classify(&self, link: &str) -> Link {
        let mut current = link.to_string();
        let mut proxies = Vec::new();
        while let Some((name, inner)) = self.unwrap_once(&current) {
            proxies.push(name);
            current = inner;
            if proxies.len() > MAX_LAYERS {
                return Link::UnknownProxy;
            }
        }
        let Some(upstream) = absolute_http(&current) else {
            return if proxies.is_empty() {
                Link::Other
            } else {
                Link::UnknownProxy
            };
        };
        if !proxies.is_empty() {
            return Link::Proxied { upstream, proxies };
        }
        if embeds_url(&upstream) {
            return Link::UnknownProxy;
        }
        match host_of(&upstream) {
            Some(h) if self.mirror_hosts.iter().any(|g| g.matches(h)) => {
                Link::Mirrored { upstream }
            }
            _ => Link::Other,
        }
    }

    /// Unwraps one proxy layer: (proxy name, inner URL).
    fn unwrap_once(&self, link: &str) -> Option<(String, String)> {
        let (_, after) = strip_any_scheme(link)?;
        let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let host = &after[..host_end];
        let host_lc = host.to_ascii_lowercase();
        let rest = &after[host_end..];
        for (name, prefix) in &self.custom {
            if prefix.host.matches(&host_lc) {
                if let Some(inner) = rest.strip_prefix(prefix.rest.as_str()) {
                    if let Some(u) = embedded_url(inner, None) {
                        return Some((name.clone(), u));
                    }
                }
            }
        }
        if !self.builtin {
            return None;
        }
        let kind = builtin_for(&host_lc)?;
        let inner = match kind {
            Builtin::Workers => embedded_url(rest.strip_prefix("/?")?, None),
            Builtin::CorsAnywhere => {
                let path = if host_lc == "thingproxy.freeboard.io" {
                    rest.strip_prefix("/fetch/")?
                } else {
                    rest.strip_prefix('/')?
                };
                embedded_url(path, Some(SchemeLess::CorsAnywhere))
            }
            Builtin::AllOrigins => {
                let q = rest.strip_prefix("/raw?")?;
                embedded_url(query_param(q, "url")?, None)
            }
            Builtin::CorsProxyIo => {
                let q = rest.strip_prefix("/?")?;
                match q.strip_prefix("url=") {
                    Some(v) => embedded_url(param_value(v), None),
                    None => embedded_url(q, None),
                }
            }
            Builtin::Codetabs => {
                let q = rest
                    .strip_prefix("/v1/proxy?")
                    .or_else(|| rest.strip_prefix("/v1/proxy/?"))?;
                embedded_url(q.strip_prefix("quest=")?, None)
            }
            Builtin::Weserv => {
                let q = rest.strip_prefix("/?")?;
                embedded_url(query_param(q, "url")?, Some(SchemeLess::Weserv))
            }
            Builtin::Photon => {
                let path = rest.strip_prefix('/')?;
                let (path, query) = path.split_once('?').unwrap_or((path, ""));
                let ssl = query.split('&').any(|p| p == "ssl=1");
                let scheme = if ssl { "https" } else { "http" };
                // The origin's own query is not carried by Photon; only host and path are.
                (!path.is_empty() && path.contains('/')).then(|| format!("{scheme}://{path}"))
            }
        }?;
        Some((builtin_name(kind).to_string(), inner))
    }
}

fn builtin_for(host: &str) -> Option<Builtin> {
    Some(match host {
        h if h.ends_with(".workers.dev") => Builtin::Workers,
        "cors-anywhere.herokuapp.com"
        | "cors.bridged.cc"
        | "proxy.cors.sh"
        | "thingproxy.freeboard.io" => Builtin::CorsAnywhere,
        "api.allorigins.win" => Builtin::AllOrigins,
        "corsproxy.io" => Builtin::CorsProxyIo,
        "api.codetabs.com" => Builtin::Codetabs,
        "images.weserv.nl" | "wsrv.nl" => Builtin::Weserv,
        "i0.wp.com" | "i1.wp.com" | "i2.wp.com" | "i3.wp.com" => Builtin::Photon,
        _ => return None,
    })
}

fn builtin_name(kind: Builtin) -> &'static str {
    match kind {
        Builtin::Workers => "workers.dev",
        Builtin::CorsAnywhere => "cors-anywhere",
        Builtin::AllOrigins => "allorigins",
        Builtin::CorsProxyIo => "corsproxy.io",
        Builtin::Codetabs => "codetabs",
        Builtin::Weserv => "weserv",
        Builtin::Photon => "photon",
    }
}

/// How a proxy reads an embedded URL that has no scheme.
#[derive(Clone, Copy)]
enum SchemeLess {
    /// cors-anywhere: http, unless the port is 443.
    CorsAnywhere,
    /// weserv: http, or https when prefixed `ssl:`.
    Weserv,
}

/// `http://`, `https://` or `//` (any case) at the start: (length of that prefix, the rest).
fn strip_any_scheme(s: &str) -> Option<(usize, &str)> {
    for p in ["http://", "https://", "//"] {
        if s.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
        {
            // The prefix is ASCII, so the cut is on a character boundary.
            return Some((p.len(), &s[p.len()..]));
        }
    }
    None
}

/// An absolute http(s) URL from a link: `http(s)://` kept (scheme lower-cased), protocol-relative
/// `//host/...` read as https. `None` for anything else or a URL without a host.
pub fn absolute_http(s: &str) -> Option<String> {
    let starts = |p: &str| {
        s.as_bytes()
            .get(..p.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
    };
    let url = if starts("http://") {
        format!("http://{}", &s[7..])
    } else if starts("https://") {
        format!("https://{}", &s[8..])
    } else if s.starts_with("//") && !s.starts_with("///") {
        format!("https:{s}")
    } else {
        return None;
    };
    let parsed = url::Url::parse(&url).ok()?;
    parsed.host_str().filter(|h| !h.is_empty())?;
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return None;
    }
    Some(url)
}

/// The inner URL of a proxy, from the text that follows its prefix: raw, percent-encoded (once or
/// twice), or scheme-less where the proxy allows it. Decoding happens only while the value does
/// not yet look like a URL, so a literal `%2520` in a real file name survives.
fn embedded_url(value: &str, scheme_less: Option<SchemeLess>) -> Option<String> {
    let mut v = value.to_string();
    for _ in 0..MAX_DECODES {
        if looks_absolute(&v) {
            break;
        }
        // Decode only what is encoded URL structure (`%3A`, `%2F`, or those encoded again).
        let lower = v.to_ascii_lowercase();
        if !["%3a", "%2f", "%253a", "%252f"]
            .iter()
            .any(|m| lower.contains(m))
        {
            break;
        }
        v = percent_decode(&v)?;
    }
    if looks_absolute(&v) {
        return absolute_http(&v);
    }
    match scheme_less? {
        SchemeLess::Weserv => {
            let (scheme, rest) = match v.strip_prefix("ssl:") {
                Some(r) => ("https", r),
                None => ("http", v.as_str()),
            };
            scheme_less_url(scheme, rest)
        }
        SchemeLess::CorsAnywhere => {
            let host_end = v.find(['/', '?']).unwrap_or(v.len());
            let scheme = if v[..host_end].ends_with(":443") {
                "https"
            } else {
                "http"
            };
            scheme_less_url(scheme, &v)
        }
    }
}

/// `scheme://rest` when `rest` starts with something that looks like a host name.
fn scheme_less_url(scheme: &str, rest: &str) -> Option<String> {
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    let name = host.split(':').next().unwrap_or_default();
    if !name.contains('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return None;
    }
    absolute_http(&format!("{scheme}://{rest}"))
}

fn looks_absolute(v: &str) -> bool {
    strip_any_scheme(v).is_some()
}

/// The value of query parameter `name` in `query` (no leading `?`). A raw URL value (one that
/// already reads `scheme://`) runs to the end of the query only when no other parameter follows
/// the way an encoded one would; otherwise values end at the next `&`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    let mut start = 0;
    for part in query.split('&') {
        if let Some(v) = part.strip_prefix(name).and_then(|p| p.strip_prefix('=')) {
            let value_start = start + name.len() + 1;
            let tail = &query[value_start..];
            return Some(if looks_absolute(v) && tail.contains('?') {
                // A raw URL with its own query: everything after `name=` is the URL.
                tail
            } else {
                v
            });
        }
        start += part.len() + 1;
    }
    None
}

/// A `url=` value that starts the query: up to the next `&` when encoded, the rest when raw.
fn param_value(v: &str) -> &str {
    if looks_absolute(v) {
        v
    } else {
        v.split('&').next().unwrap_or(v)
    }
}

/// Percent-decodes a string (only `%` and two hex digits decode: `%+A` stays as it is); `None`
/// when the bytes do not form UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// The host of an absolute http(s) URL (port stripped), lower-cased by the URL parser.
fn host_of(url: &str) -> Option<&str> {
    let (_, after) = strip_any_scheme(url)?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..end];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    Some(if host.starts_with('[') {
        host
    } else {
        host.split(':').next().unwrap_or(host)
    })
}

/// True when a URL carries another URL after its host (raw or percent-encoded): the mark of a
/// proxy or redirector, such as `https://link.juejin.cn/?target=https%3A%2F%2F...`.
pub fn embeds_url(url: &str) -> bool {
    let Some((_, after)) = strip_any_scheme(url) else {
        return false;
    };
    let start = after.find(['/', '?']).unwrap_or(after.len());
    let rest = after[start..].to_ascii_lowercase();
    [
        "http://",
        "https://",
        "http%3a",
        "https%3a",
        "http%253a",
        "https%253a",
    ]
    .iter()
    .any(|m| rest.contains(m))
}

/// True when a URL's path ends in an image file extension (query and fragment ignored).
pub fn looks_like_image(url: &str) -> bool {
    const EXTS: [&str; 16] = [
        "jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "webp", "awebp", "avif", "svg", "bmp",
        "ico", "tif", "tiff", "image",
    ];
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let Some((_, after)) = strip_any_scheme(path) else {
        return false;
    };
    let Some(slash) = after.find('/') else {
        return false;
    };
    let last = after[slash..].rsplit('/').next().unwrap_or_default();
    match last.rsplit_once('.') {
        Some((_, ext)) => EXTS.iter().any(|e| e.eq_ignore_ascii_case(ext)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding_takes_only_two_hex_digits() {
        assert_eq!(percent_decode("a%2Fb%3a").as_deref(), Some("a/b:"));
        for odd in ["%+A", "%-1", "%zz", "%4", "%"] {
            assert_eq!(percent_decode(odd).as_deref(), Some(odd), "{odd}");
        }
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    use super::*;

    fn unwrapper() -> Unwrapper {
        let c = RewriteConfig {
            mirror_hosts: vec!["*.myzaker.com".into()],
            proxies: vec![crate::config::ProxyConfig {
                name: "example".into(),
                prefix: "https://*.example.net/fetch/".into(),
            }],
            ..RewriteConfig::default()
        };
        Unwrapper::new(&c)
    }

    fn up(link: &str) -> Option<String> {
        unwrapper().classify(link).upstream().map(String::from)
    }

    const Z: &str = "http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg";

    #[test]
    fn builtin_forms() {
        let cases = [
            format!("https://cors.zfour.workers.dev/?{Z}"),
            format!("//cors.zfour.workers.dev/?{Z}"),
            format!(
                "http://cors.zfour.workers.dev/?{}",
                Z.replace(':', "%3A").replace('/', "%2F")
            ),
            format!(
                "https://x.workers.dev/?{}",
                Z.replace(':', "%253A").replace('/', "%252F")
            ),
            format!("https://cors-anywhere.herokuapp.com/{Z}"),
            format!("https://cors.bridged.cc/{Z}"),
            format!("https://proxy.cors.sh/{Z}"),
            format!("https://thingproxy.freeboard.io/fetch/{Z}"),
            format!(
                "https://api.allorigins.win/raw?url={}",
                Z.replace(':', "%3A").replace('/', "%2F")
            ),
            format!(
                "https://corsproxy.io/?url={}",
                Z.replace(':', "%3A").replace('/', "%2F")
            ),
            format!("https://corsproxy.io/?{Z}"),
            format!("https://api.codetabs.com/v1/proxy?quest={Z}"),
            format!("https://api.codetabs.com/v1/proxy/?quest={Z}"),
            format!("https://images.weserv.nl/?url={Z}"),
            format!("https://wsrv.nl/?w=300&url={}", &Z[7..]),
            "https://i0.wp.com/zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg?w=300"
                .to_string(),
            format!("https://a.b.example.net/fetch/{Z}"),
            format!("https://cors.zfour.workers.dev/?https://images.weserv.nl/?url={Z}"),
        ];
        for c in &cases {
            assert_eq!(up(c).as_deref(), Some(Z), "{c}");
        }
    }

    #[test]
    fn scheme_rules() {
        assert_eq!(
            up("https://images.weserv.nl/?url=ssl:zkres2.myzaker.com/a.jpg").as_deref(),
            Some("https://zkres2.myzaker.com/a.jpg")
        );
        assert_eq!(
            up("https://cors-anywhere.herokuapp.com/example.com:443/x.jpg").as_deref(),
            Some("https://example.com:443/x.jpg")
        );
        assert_eq!(
            up("https://i2.wp.com/example.com/x.jpg?ssl=1").as_deref(),
            Some("https://example.com/x.jpg")
        );
        assert_eq!(
            up("//zkres2.myzaker.com/a.jpg").as_deref(),
            Some("https://zkres2.myzaker.com/a.jpg")
        );
    }

    #[test]
    fn inner_queries_and_literal_escapes_survive() {
        let inner = "http://example.com/a%2520b.jpg?x=1&y=2";
        assert_eq!(
            up(&format!("https://cors.zfour.workers.dev/?{inner}")).as_deref(),
            Some(inner)
        );
        let inner = "https://api.buoy.jp/sakura/table.php?lfourId=1014930";
        assert_eq!(
            up(&format!("https://api.codetabs.com/v1/proxy?quest={inner}")).as_deref(),
            Some(inner)
        );
    }

    #[test]
    fn classification() {
        let u = unwrapper();
        assert_eq!(u.classify("http://example.com/a.jpg"), Link::Other);
        assert_eq!(u.classify("/images/a.png"), Link::Other);
        assert_eq!(u.classify("data:image/png;base64,AAAA"), Link::Other);
        assert_eq!(
            u.classify("https://link.juejin.cn/?target=https%3A%2F%2Fgithub.com%2Fa"),
            Link::UnknownProxy
        );
        assert!(matches!(u.classify(Z), Link::Mirrored { .. }));
        let mut deep = Z.to_string();
        for _ in 0..5 {
            deep = format!("https://cors.zfour.workers.dev/?{deep}");
        }
        assert_eq!(u.classify(&deep), Link::UnknownProxy);
    }

    #[test]
    fn image_extensions() {
        assert!(looks_like_image(Z));
        assert!(looks_like_image(
            "https://p3-juejin.byteimg.com/t/a~tplv-k3u1fbpfcp-zoom-in-crop-mark:4536:0:0:0.awebp?"
        ));
        assert!(looks_like_image(
            "https://p1-juejin.byteimg.com/t/a~tplv-k3u1fbpfcp-watermark.image"
        ));
        assert!(!looks_like_image(
            "http://www.a.com:8002/content/delete/87343"
        ));
        assert!(!looks_like_image("http://example.com"));
        assert!(!looks_like_image("http://example.com/a.html?x=.jpg"));
    }
}
