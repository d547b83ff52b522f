//! Archive rescue (SPEC §5): when an original is not mirrored and its origin is gone (404/410,
//! connection refused, a host that does not resolve), each `archive.sources` template is tried in
//! order for a copy. Owns the templates, the timestamps they take (and the post dates those come
//! from), the archive client (the same guard, pins, limits and redirect cap as the upstream one,
//! restricted to the archives' hosts and to `archive.concurrency` requests at once), the backoff
//! on 429/503, and what makes an archived answer acceptable: a whole image, like any original.
//! The mirror decides when to ask and what to keep; nothing here stores anything.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::transform;
use crate::upstream::{FetchError, Fetched, Lookup, StillWanted, Upstream};

/// Where a rescued original came from: a part of the mirror's record (the record schema is the
/// store's, so it does not change when this module does).
pub use crate::store::Capture;

/// An archived copy, checked: a complete image of format `kind`.
pub struct Rescued {
    /// The image.
    pub bytes: Bytes,
    /// Its format, sniffed.
    pub kind: transform::Sniffed,
    /// Which capture it came from.
    pub capture: Capture,
}

/// How one source's lookup ended, for metrics (`imgmirror_archive_lookups_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A whole image was found and mirrored.
    Rescued,
    /// 404/410: the archive holds no copy.
    NotFound,
    /// An answer that is not a whole image (an archive's HTML "not found" page with 200).
    NotImage,
    /// Anything else: refused by policy, throttled past the retries, a timeout, a 5xx.
    Error,
}

impl Outcome {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Rescued => "rescued",
            Outcome::NotFound => "not_found",
            Outcome::NotImage => "not_image",
            Outcome::Error => "error",
        }
    }
}

/// Retries of one source after a 429/503 (so at most this many + 1 requests).
const RETRIES: u32 = 3;
/// The first backoff; doubled after each 429/503 unless the archive says `Retry-After`.
const BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait honoured, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One `archive.sources` template.
struct Source {
    template: String,
    host: String,
}

/// The archives of a config, with their own client.
pub struct Archives {
    sources: Vec<Source>,
    client: Upstream,
}

impl Archives {
    /// `None` when `archive.enabled` is off (or no source is usable).
    pub fn new(config: &Config, lookup: Arc<dyn Lookup>) -> Result<Option<Archives>, String> {
        if !config.archive.enabled {
            return Ok(None);
        }
        let sources: Vec<Source> = config
            .archive
            .sources
            .iter()
            .filter_map(|t| {
                let probe = fill(t, "http://a.test/x.jpg", "20210608003900")?;
                let host = url::Url::parse(&probe)
                    .ok()?
                    .host_str()?
                    .to_ascii_lowercase();
                Some(Source {
                    template: t.clone(),
                    host,
                })
            })
            .collect();
        if sources.is_empty() {
            return Ok(None);
        }
        let hosts = sources.iter().map(|s| s.host.clone()).collect();
        let client =
            Upstream::restricted_to(&config.upstream, hosts, config.archive.concurrency, lookup)?;
        Ok(Some(Archives { sources, client }))
    }

    /// Tries every source in order for `url` near `timestamp` (YYYYMMDDhhmmss); `report` hears
    /// how each lookup ended. The first whole image wins.
    pub async fn rescue(
        &self,
        url: &str,
        timestamp: &str,
        wanted: StillWanted<'_>,
        report: impl Fn(&str, Outcome),
    ) -> Option<Rescued> {
        for source in &self.sources {
            let outcome = self.lookup(source, url, timestamp, wanted).await;
            match outcome {
                Ok(rescued) => {
                    report(&source.host, Outcome::Rescued);
                    return Some(rescued);
                }
                Err(o) => report(&source.host, o),
            }
        }
        None
    }

    async fn lookup(
        &self,
        source: &Source,
        url: &str,
        timestamp: &str,
        wanted: StillWanted<'_>,
    ) -> Result<Rescued, Outcome> {
        let Some(target) = fill(&source.template, url, timestamp) else {
            tracing::warn!(archive = %source.host, url, "the URL would leave the archive template's path: not asked");
            return Err(Outcome::Error);
        };
        let mut backoff = BACKOFF;
        for attempt in 0..=RETRIES {
            match self.client.fetch_while(&target, None, wanted).await {
                Ok(Fetched::Body {
                    bytes,
                    url: answered,
                    ..
                }) => {
                    // The completeness check reads every byte (PNG: inflates them): off the loop.
                    let checked = bytes.clone();
                    let kind = tokio::task::spawn_blocking(move || {
                        transform::sniff(&checked)
                            .filter(|kind| transform::is_complete(&checked, *kind))
                    })
                    .await
                    .ok()
                    .flatten();
                    let Some(kind) = kind else {
                        return Err(Outcome::NotImage);
                    };
                    let capture = Capture {
                        source: source.host.clone(),
                        timestamp: capture_time(answered.path())
                            .unwrap_or_else(|| timestamp.to_string()),
                        url: answered.to_string(),
                    };
                    return Ok(Rescued {
                        bytes,
                        kind,
                        capture,
                    });
                }
                Ok(Fetched::NotModified) => return Err(Outcome::Error),
                Err(FetchError::NotFound(_)) => return Err(Outcome::NotFound),
                Err(FetchError::Throttled { retry_after, .. }) if attempt < RETRIES => {
                    let wait = retry_after
                        .map_or(backoff, Duration::from_secs)
                        .min(MAX_BACKOFF);
                    tracing::info!(archive = %source.host, seconds = wait.as_secs_f64(), "archive throttled: backing off");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::info!(archive = %source.host, error = %e, "archive lookup failed");
                    return Err(Outcome::Error);
                }
            }
        }
        Err(Outcome::Error)
    }
}

/// A template with its placeholders filled; `None` when `url` could change the template's path
/// (SPEC §5). `{url}` is the upstream URL parsed and written back: its dot segments (`..`,
/// `%2e%2e`, `.%2E`) and backslashes are resolved inside it, so none is left to climb out of
/// the template's path, and userinfo and fragment are dropped (never sent). The filled URL must
/// still be on the template's host, under the template's path up to `{url}`.
fn fill(template: &str, url: &str, timestamp: &str) -> Option<String> {
    let mut upstream = url::Url::parse(url).ok()?;
    upstream.set_username("").ok()?;
    upstream.set_password(None).ok()?;
    upstream.set_fragment(None);
    let template = template.replace("{timestamp}", timestamp);
    let (before, _) = template.split_once("{url}")?;
    let fixed = url::Url::parse(before).ok()?;
    let filled = url::Url::parse(&template.replace("{url}", upstream.as_str())).ok()?;
    let same_place = filled.host_str() == fixed.host_str()
        && filled.port_or_known_default() == fixed.port_or_known_default()
        && filled.path().starts_with(fixed.path())
        && filled.username().is_empty()
        && filled.password().is_none();
    same_place.then(|| filled.to_string())
}

/// The 14-digit capture time in a Wayback-style path (`/web/20210608123456id_/…`), if any.
fn capture_time(path: &str) -> Option<String> {
    path.split('/')
        .filter_map(|seg| {
            let digits: String = seg.chars().take_while(char::is_ascii_digit).collect();
            (digits.len() == 14).then_some(digits)
        })
        .next()
}

/// Unix seconds as YYYYMMDDhhmmss (UTC).
pub fn timestamp(secs: u64) -> String {
    let t = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default();
    t.format("%Y%m%d%H%M%S").to_string()
}

/// A post's front-matter `date` as Unix seconds (UTC), in the forms these blogs use: RFC 2822
/// (`Tue, 08 Jun 2021 00:39:00 GMT`), RFC 3339 / ISO 8601 (`2021-07-31T05:06:47Z`, with or
/// without offset), `YYYY-MM-DD HH:MM:SS` (taken as UTC), `YYYY-MM-DD`. Anything else (`Invalid
/// Date`) is `None`, and the caller uses now.
pub fn post_date(text: &str) -> Option<u64> {
    use chrono::{NaiveDate, NaiveDateTime};
    let t = text.trim().trim_matches(|c| c == '\'' || c == '"').trim();
    let secs = if let Ok(d) = chrono::DateTime::parse_from_rfc2822(t) {
        d.timestamp()
    } else if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        d.timestamp()
    } else if let Some(d) = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y/%m/%d %H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    {
        d.and_utc().timestamp()
    } else {
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp()
    };
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_dates_in_the_corpus_forms() {
        let june = 1_623_112_740; // 2021-06-08 00:39:00 UTC
        for text in [
            "Tue, 08 Jun 2021 00:39:00 GMT",
            "'Tue, 08 Jun 2021 00:39:00 GMT'",
            "2021-06-08T00:39:00Z",
            "2021-06-08T08:39:00+08:00",
            "2021-06-08 00:39:00",
            "2021-06-08T00:39:00",
        ] {
            assert_eq!(post_date(text), Some(june), "{text}");
        }
        assert_eq!(post_date("2021-06-08"), Some(june - 39 * 60));
        for bad in ["Invalid Date", "", "yesterday", "2021-13-45"] {
            assert_eq!(post_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_and_capture_times() {
        assert_eq!(timestamp(1_623_112_740), "20210608003900");
        assert_eq!(
            capture_time("/web/20210609120000id_/http://a.test/x.jpg").as_deref(),
            Some("20210609120000")
        );
        assert_eq!(capture_time("/web/2021id_/http://a.test/x.jpg"), None);
        assert_eq!(
            fill(
                "https://w.test/web/{timestamp}id_/{url}",
                "http://a.test/x.jpg?a=1",
                "20210608003900"
            )
            .as_deref(),
            Some("https://w.test/web/20210608003900id_/http://a.test/x.jpg?a=1")
        );
    }

    /// SPEC §5: `{url}` cannot change the template's path, in any spelling of a dot segment or
    /// a backslash, and userinfo is never sent. The old code sent
    /// `GET /admin/delete-everything?confirm=yes` to the archive for the first of these.
    #[test]
    fn the_url_cannot_climb_out_of_the_template() {
        let template = "https://w.test/web/{timestamp}id_/{url}";
        for url in [
            "http://dead.test/img/../../../../admin/delete-everything?confirm=yes",
            "http://dead.test/img/%2e%2e/%2e%2e/%2e%2e/%2e%2e/admin/delete-everything",
            "http://dead.test/img/%2E%2E/%2E%2E/%2E%2E/%2E%2E/admin/x",
            "http://dead.test/img/.%2e/.%2E/%2e./%2E./admin/x",
            "http://dead.test/img\\..\\..\\..\\..\\admin\\x",
            "http://dead.test/img/..%5c..%5c..%5c..%5cadmin/x",
            "http://dead.test/./././../admin/x",
            "http://user:secret@dead.test/x.jpg",
            "http://user@dead.test/../../x.jpg#frag/../../..",
        ] {
            let Some(filled) = fill(template, url, "20210608003900") else {
                continue; // refused: nothing sent, which is also safe
            };
            let parsed = url::Url::parse(&filled).unwrap();
            assert_eq!(parsed.host_str(), Some("w.test"), "{url} -> {filled}");
            assert!(
                parsed
                    .path()
                    .starts_with("/web/20210608003900id_/http://dead.test/"),
                "{url} -> {filled}"
            );
            assert!(
                !filled.contains("user") && !filled.contains("secret"),
                "{url} -> {filled}"
            );
            assert!(!parsed.path().contains("/../"), "{url} -> {filled}");
            assert!(parsed.fragment().is_none(), "{url} -> {filled}");
        }
        // A template whose path prefix a URL cannot keep is refused, not sent elsewhere.
        assert!(fill("https://w.test/{url}", "not a url", "20210608003900").is_none());
    }
}
