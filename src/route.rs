//! The route contract: the only code that turns (upstream URL, options) into a local route and back.
//!
//! A route is a root-relative path that carries everything needed to serve an image, so any replica
//! can answer it with no shared state:
//!
//! ```text
//! /i/{options}/{scheme}/{escaped rest of the URL}
//! /s/{signature}/{options}/{scheme}/{escaped rest of the URL}      (when a signing key is set)
//! ```
//!
//! * `options` is `orig` (the original, byte for byte) or `_`-joined tokens in this fixed order:
//!   `p-{preset}`, `w{width}`, `h{height}`, a fit (`cover`, `contain`, `fill`, `inside`), a format
//!   (`jpeg`, `png`, `webp`, `gif`, `original`), `q{quality}`.
//! * `scheme` is `http` or `https`.
//! * The rest of the URL (everything after `scheme://`, host included) keeps `A-Z a-z 0-9 . _ -` and `/`
//!   as they are; every other byte becomes `~XX` (upper-case hex). A `/` that would start an empty
//!   segment and a segment that would read `.` or `..` are escaped too, so browsers and static file
//!   servers never normalise a route.
//! * `signature` is base64url (no padding) of HMAC-SHA256(key, the route from `/{options}` on).
//!
//! Example: `http://zkres2.myzaker.com/202106/60bf_1024.jpg` becomes
//! `/i/orig/http/zkres2.myzaker.com/202106/60bf_1024.jpg`.
//!
//! The encoding is canonical: every URL has exactly one route for a given set of options and key,
//! and [`decode`] refuses any spelling that [`encode`] would not have produced. Routes never contain
//! spaces, quotes, parentheses, `<>`, `&`, `#`, `\`, `%`, `,` or `:`, so they are safe unescaped in
//! HTML attributes, Markdown destinations, YAML scalars (any quoting, flow lists included) and CSS
//! `url()`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

/// Longest route accepted or produced, in bytes. Longer input is refused before any parsing, so a
/// hostile path cannot make the decoder do unbounded work.
pub const MAX_ROUTE_LEN: usize = 4096;

/// Shortest signing key accepted: HMAC-SHA256 keys shorter than the hash output weaken it.
pub const MIN_KEY_LEN: usize = 32;

/// Prefix of unsigned routes.
const UNSIGNED_PREFIX: &str = "/i/";
/// Prefix of signed routes.
const SIGNED_PREFIX: &str = "/s/";
/// The options segment of a route that asks for the original.
const ORIGINAL: &str = "orig";
/// The options token asking for progressive JPEG output.
const PROGRESSIVE: &str = "progressive";
/// Length of a base64url (no padding) HMAC-SHA256 signature.
const SIGNATURE_LEN: usize = 43;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How a resized image fills the requested box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Fill the box, cropping what overflows (centred).
    Cover,
    /// Fit inside the box keeping the aspect ratio; may enlarge.
    Contain,
    /// Stretch to exactly the box, ignoring the aspect ratio.
    Fill,
    /// Like `contain`, but never enlarge.
    Inside,
}

/// Output format of a derived image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `jpeg`.
    Jpeg,
    /// `png`.
    Png,
    /// `webp`.
    Webp,
    /// `gif`.
    Gif,
    /// `avif`.
    Avif,
    /// Keep the source's format.
    Original,
}

impl Fit {
    /// Every fit, in the order of its token name.
    pub const ALL: [Fit; 4] = [Fit::Cover, Fit::Contain, Fit::Fill, Fit::Inside];

    /// The token used in routes and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Cover => "cover",
            Fit::Contain => "contain",
            Fit::Fill => "fill",
            Fit::Inside => "inside",
        }
    }

    /// Parses a token; `None` when it names no fit.
    pub fn parse(s: &str) -> Option<Fit> {
        Fit::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 6] = [
        Format::Jpeg,
        Format::Png,
        Format::Webp,
        Format::Gif,
        Format::Avif,
        Format::Original,
    ];

    /// The token used in routes and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Avif => "avif",
            Format::Original => "original",
        }
    }

    /// Parses a token; `None` when it names no format.
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// What a route asks the server to do to the original. All `None` means "the original, byte for byte".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// A named preset from `[presets.*]`; explicit options below override its fields.
    pub preset: Option<String>,
    /// Width in pixels (at most `image.max_dimension`).
    pub width: Option<u32>,
    /// Height in pixels.
    pub height: Option<u32>,
    /// How the image fits the width x height box.
    pub fit: Option<Fit>,
    /// Output format; `None` keeps the source's (or negotiates, `image.auto_webp`/`auto_avif`).
    pub format: Option<Format>,
    /// 1 to 100.
    pub quality: Option<u8>,
    /// Progressive JPEG output (token `progressive`); no effect on other formats.
    pub progressive: bool,
}

impl Options {
    /// True when the route asks for the original bytes.
    pub fn is_original(&self) -> bool {
        *self == Options::default()
    }

    /// The options segment of a route (`orig` or tokens joined by `_`).
    fn segment(&self) -> Result<String, RouteError> {
        if self.is_original() {
            return Ok(ORIGINAL.to_string());
        }
        let mut tokens = Vec::new();
        if let Some(p) = &self.preset {
            if !is_preset_name(p) {
                return Err(RouteError::BadOption(format!(
                    "preset name {p:?} (use a-z, 0-9 and -)"
                )));
            }
            tokens.push(format!("p-{p}"));
        }
        if let Some(w) = self.width {
            tokens.push(format!("w{}", positive("width", w)?));
        }
        if let Some(h) = self.height {
            tokens.push(format!("h{}", positive("height", h)?));
        }
        if let Some(f) = self.fit {
            tokens.push(f.as_str().to_string());
        }
        if let Some(f) = self.format {
            tokens.push(f.as_str().to_string());
        }
        if self.progressive {
            tokens.push(PROGRESSIVE.to_string());
        }
        if let Some(q) = self.quality {
            if !(1..=100).contains(&q) {
                return Err(RouteError::BadOption(format!(
                    "quality {q} (must be 1 to 100)"
                )));
            }
            tokens.push(format!("q{q}"));
        }
        Ok(tokens.join("_"))
    }

    /// Parses an options segment, refusing unknown, repeated, out-of-order or non-canonical tokens.
    fn parse_segment(seg: &str) -> Result<Options, RouteError> {
        let mut opts = Options::default();
        if seg == ORIGINAL {
            return Ok(opts);
        }
        if seg.is_empty() {
            return Err(RouteError::Malformed("empty options segment"));
        }
        // Rank of each token kind, to enforce the canonical order (and so forbid repeats).
        let mut last_rank = 0u8;
        for tok in seg.split('_') {
            let rank = if let Some(name) = tok.strip_prefix("p-") {
                if !is_preset_name(name) {
                    return Err(RouteError::BadOption(format!("preset name {name:?}")));
                }
                opts.preset = Some(name.to_string());
                1
            } else if let Some(n) = tok.strip_prefix('w').and_then(canonical_number) {
                opts.width = Some(positive("width", n)?);
                2
            } else if let Some(n) = tok.strip_prefix('h').and_then(canonical_number) {
                opts.height = Some(positive("height", n)?);
                3
            } else if let Some(f) = Fit::parse(tok) {
                opts.fit = Some(f);
                4
            } else if let Some(f) = Format::parse(tok) {
                opts.format = Some(f);
                5
            } else if tok == PROGRESSIVE {
                opts.progressive = true;
                6
            } else if let Some(q) = tok.strip_prefix('q').and_then(canonical_number) {
                if !(1..=100).contains(&q) {
                    return Err(RouteError::BadOption(format!(
                        "quality {q} (must be 1 to 100)"
                    )));
                }
                opts.quality = Some(q as u8);
                7
            } else {
                return Err(RouteError::BadOption(format!("unknown option {tok:?}")));
            };
            if rank <= last_rank {
                return Err(RouteError::BadOption(format!(
                    "option {tok:?} repeated or out of order (order: p-, w, h, fit, format, progressive, q)"
                )));
            }
            last_rank = rank;
        }
        Ok(opts)
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.segment() {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "<invalid: {e}>"),
        }
    }
}

/// A decoded route: what to fetch and what to do with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The upstream URL, exactly as it was given to [`encode`] (scheme in lower case).
    pub upstream: String,
    /// What to do to it (all `None`: the original, byte for byte).
    pub options: Options,
}

/// Why a route could not be produced or read. Each variant maps to one HTTP status in the server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route longer than {MAX_ROUTE_LEN} bytes")]
    /// Longer than `MAX_ROUTE_LEN`.
    TooLong,
    #[error("malformed route: {0}")]
    /// Not `/i/<options>/<scheme>/<host>/<path>` (or the signed form); says which part.
    Malformed(&'static str),
    #[error("path traversal in route")]
    /// `..` or `.` segments.
    Traversal,
    #[error("bad option: {0}")]
    /// An option the route contract does not know, or out of range.
    BadOption(String),
    #[error("not an http(s) URL: {0}")]
    /// The upstream is not an http(s) URL.
    BadUrl(String),
    #[error("route is not signed (a signing key is configured)")]
    /// A signing key is configured and the route is unsigned.
    Unsigned,
    #[error("bad signature")]
    /// The signature does not match.
    BadSignature,
}

impl RouteError {
    /// The HTTP status the service answers with: 403 for a missing or forged signature, 400 for
    /// every other malformed route.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::Unsigned | RouteError::BadSignature => 403,
            _ => 400,
        }
    }
}

/// A signing key, checked for length when built.
#[derive(Clone)]
pub struct SigningKey {
    /// The key that signs (and verifies).
    key: Vec<u8>,
    /// Keys that still verify, not used to sign: the ones rotated out
    /// (`security.previous_signing_keys`), so routes already in posts keep working.
    previous: Vec<Vec<u8>>,
}

impl SigningKey {
    /// Wraps a key; `None` when it is shorter than [`MIN_KEY_LEN`] bytes.
    pub fn new(key: &[u8]) -> Option<SigningKey> {
        (key.len() >= MIN_KEY_LEN).then(|| SigningKey {
            key: key.to_vec(),
            previous: Vec::new(),
        })
    }

    /// This key, with `previous` keys that still verify (each at least [`MIN_KEY_LEN`] bytes;
    /// shorter ones are left out).
    pub fn with_previous<'a>(mut self, previous: impl IntoIterator<Item = &'a [u8]>) -> Self {
        self.previous.extend(
            previous
                .into_iter()
                .filter(|k| k.len() >= MIN_KEY_LEN)
                .map(<[u8]>::to_vec),
        );
        self
    }

    fn mac(key: &[u8], signed_part: &str) -> HmacSha256 {
        // new_from_slice accepts keys of any length for HMAC; the length was checked in `new`.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(signed_part.as_bytes());
        mac
    }

    fn sign(&self, signed_part: &str) -> String {
        URL_SAFE_NO_PAD.encode(Self::mac(&self.key, signed_part).finalize().into_bytes())
    }

    /// Checks a base64url signature against the signed part of a route, under the signing key
    /// and each previous one: every comparison constant-time (`verify_slice`), and every key
    /// tried, so the time taken does not tell which key matched.
    fn verify(&self, signed_part: &str, signature: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        std::iter::once(&self.key)
            .chain(&self.previous)
            .fold(false, |ok, key| {
                Self::mac(key, signed_part).verify_slice(&raw).is_ok() | ok
            })
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Turns an upstream URL and options into a route (signed when `key` is given).
pub fn encode(
    upstream: &str,
    options: &Options,
    key: Option<&SigningKey>,
) -> Result<String, RouteError> {
    check_url(upstream)?;
    encode_checked(upstream, options, key)
}

/// [`encode`] of an upstream URL already checked: a decoded [`Route`]'s, whose cache key the hit
/// path makes on every request without parsing the URL a second time.
pub(crate) fn encode_checked(
    upstream: &str,
    options: &Options,
    key: Option<&SigningKey>,
) -> Result<String, RouteError> {
    let (scheme, rest) = split_scheme(upstream)?;
    let unsigned = format!("/{}/{}/{}", options.segment()?, scheme, escape(rest));
    let route = match key {
        Some(k) => format!("/s/{}{}", k.sign(&unsigned), unsigned),
        None => format!("/i{unsigned}"),
    };
    if route.len() > MAX_ROUTE_LEN {
        return Err(RouteError::TooLong);
    }
    Ok(route)
}

/// Reads a route (a path starting with `/i/` or `/s/`; a query string is ignored). With a key, the
/// route must be signed with it; without one, a signature is accepted without being checked.
pub fn decode(route: &str, key: Option<&SigningKey>) -> Result<Route, RouteError> {
    if route.len() > MAX_ROUTE_LEN {
        return Err(RouteError::TooLong);
    }
    let path = route.split_once('?').map_or(route, |(p, _)| p);
    let unsigned = if let Some(rest) = path.strip_prefix(SIGNED_PREFIX) {
        // A short or empty signature is a bad signature (403) like any other.
        let (sig, unsigned) = rest
            .split_at_checked(SIGNATURE_LEN)
            .ok_or(RouteError::BadSignature)?;
        if !unsigned.starts_with('/')
            || !sig
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(RouteError::BadSignature);
        }
        if let Some(k) = key {
            if !k.verify(unsigned, sig) {
                return Err(RouteError::BadSignature);
            }
        }
        unsigned
    } else if let Some(rest) = path.strip_prefix(UNSIGNED_PREFIX) {
        if key.is_some() {
            return Err(RouteError::Unsigned);
        }
        // Keep the leading slash: `unsigned` always reads `/{options}/...`.
        &path[UNSIGNED_PREFIX.len() - 1..UNSIGNED_PREFIX.len() + rest.len()]
    } else {
        return Err(RouteError::Malformed("a route starts with /i/ or /s/"));
    };
    let mut parts = unsigned[1..].splitn(3, '/');
    let opts_seg = parts.next().unwrap_or_default();
    let scheme = parts
        .next()
        .ok_or(RouteError::Malformed("missing scheme"))?;
    let escaped = parts.next().ok_or(RouteError::Malformed("missing host"))?;
    if scheme != "http" && scheme != "https" {
        return Err(RouteError::Malformed("scheme must be http or https"));
    }
    if escaped.is_empty() {
        return Err(RouteError::Malformed("missing host"));
    }
    // Traversal first, so `..` in any spelling gets its own error rather than "non-canonical".
    let lower = escaped.to_ascii_lowercase();
    if escaped.split('/').any(|s| s == "." || s == "..")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
    {
        return Err(RouteError::Traversal);
    }
    let rest = unescape(escaped)?;
    if escape(&rest) != escaped {
        return Err(RouteError::Malformed("non-canonical escaping"));
    }
    let options = Options::parse_segment(opts_seg)?;
    let upstream = format!("{scheme}://{rest}");
    check_url(&upstream)?;
    Ok(Route { upstream, options })
}

/// Splits `http://rest` / `https://rest` (scheme case-insensitive) into ("http"|"https", rest).
fn split_scheme(url: &str) -> Result<(&'static str, &str), RouteError> {
    for scheme in ["http", "https"] {
        let n = scheme.len();
        let b = url.as_bytes();
        if b.len() > n + 3
            && b[..n].eq_ignore_ascii_case(scheme.as_bytes())
            && &b[n..n + 3] == b"://"
        {
            return Ok((scheme, &url[n + 3..]));
        }
    }
    Err(RouteError::BadUrl(truncate(url)))
}

/// Refuses what no HTTP client could fetch: unparsable URLs and URLs without a host.
fn check_url(url: &str) -> Result<(), RouteError> {
    match url::Url::parse(url) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(RouteError::BadUrl(truncate(url))),
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Bytes that pass through the escaping unchanged (besides `/`, handled per segment).
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Escapes everything after `scheme://` (see the module docs).
fn escape(rest: &str) -> String {
    let mut out = String::with_capacity(rest.len() + 16);
    for (i, seg) in rest.split('/').enumerate() {
        if i > 0 {
            // A `/` opening an empty segment (other than a trailing one) is escaped as part of it.
            out.push('/');
        }
        if seg == "." || seg == ".." {
            out.push_str(&"~2E".repeat(seg.len()));
            continue;
        }
        for &b in seg.as_bytes() {
            if is_plain(b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("~{b:02X}"));
            }
        }
    }
    collapse_empty_segments(out)
}

/// Rewrites every `//` (and a leading `/`) so that no empty segment appears except a trailing one:
/// the second slash of a pair becomes `~2F`.
fn collapse_empty_segments(s: String) -> String {
    if !s.contains("//") && !s.starts_with('/') {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut prev_slash = true; // the route's own `/` precedes `rest`
    for c in s.chars() {
        if c == '/' && prev_slash {
            out.push_str("~2F");
            prev_slash = false;
        } else {
            prev_slash = c == '/';
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`]; refuses bytes outside the route alphabet and bad escapes.
fn unescape(s: &str) -> Result<String, RouteError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'~' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(RouteError::Malformed("truncated ~ escape"))?;
            let hi = hex_digit(hex[0])?;
            let lo = hex_digit(hex[1])?;
            out.push(hi << 4 | lo);
            i += 3;
        } else if is_plain(b) || b == b'/' {
            out.push(b);
            i += 1;
        } else if b == b'%' {
            return Err(RouteError::Malformed(
                "percent-escapes are not used in routes",
            ));
        } else {
            return Err(RouteError::Malformed(
                "character outside the route alphabet",
            ));
        }
    }
    String::from_utf8(out).map_err(|_| RouteError::Malformed("escapes do not form UTF-8"))
}

fn hex_digit(b: u8) -> Result<u8, RouteError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(RouteError::Malformed(
            "~ escape needs two upper-case hex digits",
        )),
    }
}

/// Parses a decimal number with no sign and no leading zero (one spelling per value).
fn canonical_number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

fn positive(what: &str, n: u32) -> Result<u32, RouteError> {
    if n == 0 {
        Err(RouteError::BadOption(format!("{what} must be at least 1")))
    } else {
        Ok(n)
    }
}

/// Preset names: 1 to 64 of `a-z`, `0-9` and `-`, so they fit in an options token.
pub fn is_preset_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Finds where a route starts inside a link (after an optional `public_base` or scheme and host),
/// for `url --decode` and the rewriter's idempotency check. Returns the route part.
pub fn route_part<'a>(link: &'a str, public_base: &str) -> Option<&'a str> {
    let tail = if !public_base.is_empty() && link.starts_with(public_base) {
        &link[public_base
            .len()
            .saturating_sub(usize::from(public_base.ends_with('/')))..]
    } else if let Some(after) = link
        .strip_prefix("http://")
        .or_else(|| link.strip_prefix("https://"))
    {
        &after[after.find('/')?..]
    } else {
        link
    };
    (tail.starts_with(UNSIGNED_PREFIX) || tail.starts_with(SIGNED_PREFIX)).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg";

    #[test]
    fn seed_route_is_readable() {
        let r = encode(SEED, &Options::default(), None).unwrap();
        assert_eq!(
            r,
            "/i/orig/http/zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg"
        );
        assert_eq!(decode(&r, None).unwrap().upstream, SEED);
    }

    #[test]
    fn odd_urls_round_trip() {
        let urls = [
            "https://p3-juejin.byteimg.com/tos-cn-i-k3u1fbpfcp/a~tplv-k3u1fbpfcp-zoom-in-crop-mark:4536:0:0:0.awebp?",
            "http://h/a/../b/./c.jpg",
            "http://h//a.jpg",
            "http://h/",
            "http://h",
            "http://h?x=1",
            "http://h#frag",
            "http://[::1]:8080/x.png",
            "http://例子.测试/图片.jpg",
            "http://h/a%20b.jpg?x=%2F&y=(1)",
            "http://h/a/",
        ];
        for u in urls {
            let opts = Options {
                width: Some(320),
                fit: Some(Fit::Cover),
                ..Default::default()
            };
            let r = encode(u, &opts, None).unwrap();
            for bad in [
                ' ', '"', '\'', '(', ')', '<', '>', '&', '#', '\\', '%', ',', ':',
            ] {
                assert!(!r.contains(bad), "{r} contains {bad:?}");
            }
            assert!(!r.contains("//"), "{r}");
            assert!(!r.split('/').any(|s| s == "." || s == ".."), "{r}");
            let d = decode(&r, None).unwrap();
            assert_eq!(d.upstream, u);
            assert_eq!(d.options, opts);
        }
    }

    #[test]
    fn options_are_canonical() {
        let opts = Options {
            preset: Some("thumb".into()),
            width: Some(320),
            height: Some(200),
            fit: Some(Fit::Inside),
            format: Some(Format::Webp),
            quality: Some(80),
            progressive: false,
        };
        let r = encode("http://h/a.jpg", &opts, None).unwrap();
        assert_eq!(r, "/i/p-thumb_w320_h200_inside_webp_q80/http/h/a.jpg");
        assert_eq!(decode(&r, None).unwrap().options, opts);
        for bad in [
            "/i/h200_w320/http/h/a.jpg",
            "/i/w320_w320/http/h/a.jpg",
            "/i/w0320/http/h/a.jpg",
            "/i/w0/http/h/a.jpg",
            "/i/q101/http/h/a.jpg",
            "/i/blur5/http/h/a.jpg",
            "/i//http/h/a.jpg",
            "/i/w99999999999/http/h/a.jpg",
        ] {
            assert!(decode(bad, None).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn refuses_malformed_and_traversal() {
        assert_eq!(
            decode("/i/orig/http/h/../etc/passwd", None),
            Err(RouteError::Traversal)
        );
        assert_eq!(
            decode("/i/orig/http/h/%2e%2e/x", None),
            Err(RouteError::Traversal)
        );
        assert_eq!(
            decode("/i/orig/http/h/a%2Fb", None),
            Err(RouteError::Traversal)
        );
        assert!(decode("/i/orig/ftp/h/x", None).is_err());
        assert!(decode("/i/orig/http/h/a~2g", None).is_err());
        assert!(decode("/i/orig/http/h/a~2f", None).is_err());
        assert!(decode("/i/orig/http/h/a~41", None).is_err()); // `A` must stay plain
        assert!(decode("/x/orig/http/h", None).is_err());
        let long = format!("/i/orig/http/h/{}", "a".repeat(MAX_ROUTE_LEN));
        assert_eq!(decode(&long, None), Err(RouteError::TooLong));
        assert!(encode(
            &format!("http://h/{}", "a".repeat(MAX_ROUTE_LEN)),
            &Options::default(),
            None
        )
        .is_err());
    }

    #[test]
    fn signatures() {
        let key = SigningKey::new(&[7u8; 32]).unwrap();
        let other = SigningKey::new(&[8u8; 32]).unwrap();
        assert!(SigningKey::new(&[1u8; 31]).is_none());
        let r = encode(SEED, &Options::default(), Some(&key)).unwrap();
        assert!(r.starts_with("/s/"));
        assert_eq!(decode(&r, Some(&key)).unwrap().upstream, SEED);
        assert_eq!(decode(&r, Some(&other)), Err(RouteError::BadSignature));
        let unsigned = encode(SEED, &Options::default(), None).unwrap();
        assert_eq!(decode(&unsigned, Some(&key)), Err(RouteError::Unsigned));
        // Short and empty signatures are bad signatures too (403), not malformed routes (400).
        for short in ["/s/", "/s/abc", "/s/abc/orig/http/a.test/x.jpg"] {
            assert_eq!(
                decode(short, Some(&key)),
                Err(RouteError::BadSignature),
                "{short}"
            );
        }
    }

    #[test]
    fn route_part_finds_routes_behind_bases() {
        assert_eq!(route_part("/i/orig/http/h", ""), Some("/i/orig/http/h"));
        assert_eq!(
            route_part("https://cdn.example.com/i/orig/http/h", ""),
            Some("/i/orig/http/h")
        );
        assert_eq!(
            route_part(
                "https://cdn.example.com/img/i/orig/http/h",
                "https://cdn.example.com/img"
            ),
            Some("/i/orig/http/h")
        );
        assert_eq!(route_part("http://h/a.jpg", ""), None);
    }
}
