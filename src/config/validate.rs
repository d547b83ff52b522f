//! What types alone cannot check in a configuration: addresses, globs, ranges, key lengths,
//! preset references, and keys that contradict each other. Each problem is a [`ConfigError`]
//! naming its key.

use std::net::SocketAddr;

use super::{Config, ConfigError, HostGlob, ProxyPrefix, StoreKind, MAX_THREADS};
use crate::route;

/// The shortest `security.purge_token` accepted: 16 bytes (`openssl rand -hex 16` gives 32 hex
/// characters); a shorter bearer token on a public listener could be guessed.
pub const MIN_PURGE_TOKEN_LEN: usize = 16;

impl Config {
    /// Checks what types alone cannot: addresses, globs, ranges, key length, preset references.
    pub(super) fn validate(&self, src: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::new(src, key, msg));
        if let Err(e) = self.server.listen.parse::<SocketAddr>() {
            return err(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080 ({e})",
                    self.server.listen
                ),
            );
        }
        if !self.server.admin_listen.is_empty()
            && self.server.admin_listen.parse::<SocketAddr>().is_err()
        {
            return err(
                "server.admin_listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9090",
                    self.server.admin_listen
                ),
            );
        }
        for (key, globs) in [
            ("upstream.allow_hosts", &self.upstream.allow_hosts),
            ("upstream.deny_hosts", &self.upstream.deny_hosts),
            ("rewrite.mirror_hosts", &self.rewrite.mirror_hosts),
        ] {
            for g in globs {
                if let Err(why) = HostGlob::new(g) {
                    return err(key, format!("bad host glob {g:?}: {why}"));
                }
            }
        }
        let u = &self.upstream;
        for (key, v) in [
            ("upstream.timeout_secs", u.timeout_secs),
            ("upstream.max_bytes", u.max_bytes),
            ("upstream.concurrency", u.concurrency as u64),
            (
                "upstream.per_host_concurrency",
                u.per_host_concurrency as u64,
            ),
            ("upstream.queue_wait_secs", u.queue_wait_secs),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            ("server.send_timeout_secs", self.server.send_timeout_secs),
            (
                "server.header_timeout_secs",
                self.server.header_timeout_secs,
            ),
            ("server.max_in_flight", self.server.max_in_flight as u64),
            ("server.max_connections", self.server.max_connections as u64),
            ("image.max_pixels", self.image.max_pixels),
            ("image.memory_bytes", self.image.memory_bytes),
            ("image.max_frames", self.image.max_frames as u64),
            ("image.max_dimension", u64::from(self.image.max_dimension)),
            ("cache.gc_interval_secs", self.cache.gc_interval_secs),
        ] {
            if v == 0 {
                return err(key, "must be at least 1".into());
            }
        }
        for (host, addr) in &u.resolve {
            if addr.parse::<SocketAddr>().is_err() {
                return err(
                    &format!("upstream.resolve.{host}"),
                    format!("{addr:?} is not an address like 127.0.0.1:8080"),
                );
            }
        }
        if self.server.threads > MAX_THREADS {
            return err(
                "server.threads",
                format!("must be at most {MAX_THREADS} (0 = one per core)"),
            );
        }
        if !(1..=100).contains(&self.image.quality) {
            return err("image.quality", "must be 1 to 100".into());
        }
        if !self.security.signing_key.is_empty()
            && self.security.signing_key.len() < route::MIN_KEY_LEN
        {
            return err(
                "security.signing_key",
                format!(
                    "too short: {} bytes, at least {} needed (try: openssl rand -hex 32)",
                    self.security.signing_key.len(),
                    route::MIN_KEY_LEN
                ),
            );
        }
        for (i, k) in self.security.previous_signing_keys.iter().enumerate() {
            let key = format!("security.previous_signing_keys[{i}]");
            if self.security.signing_key.is_empty() {
                return err(
                    &key,
                    "previous keys verify beside security.signing_key, which is not set".into(),
                );
            }
            if k.len() < route::MIN_KEY_LEN {
                return err(
                    &key,
                    format!(
                        "too short: {} bytes, at least {}",
                        k.len(),
                        route::MIN_KEY_LEN
                    ),
                );
            }
        }
        for (glob, referer) in &self.upstream.referers {
            let key = format!("upstream.referers.{glob:?}");
            if let Err(why) = super::hosts::HostGlob::new(glob) {
                return err(&key, format!("{glob:?}: {why}"));
            }
            let ok = url::Url::parse(referer).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
                && http::HeaderValue::from_str(referer).is_ok();
            if !ok {
                return err(&key, format!("{referer:?}: an http(s) URL"));
            }
        }
        let cdn = &self.cdn;
        if !cdn.surrogate_key.is_empty()
            && http::HeaderName::from_bytes(cdn.surrogate_key.as_bytes()).is_err()
        {
            return err(
                "cdn.surrogate_key",
                format!("{:?} is not a header name", cdn.surrogate_key),
            );
        }
        if !cdn.purge_url.is_empty() {
            let sample = cdn.purge_url.replace("{key}", "0");
            let ok = url::Url::parse(&sample).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            let keyed = cdn.purge_url.contains("{key}") || cdn.purge_body.contains("{key}");
            if !ok || !keyed {
                return err(
                    "cdn.purge_url",
                    format!(
                        "{:?}: an http(s) URL with {{key}} where the purge key goes \
                         (or {{key}} in cdn.purge_body)",
                        cdn.purge_url
                    ),
                );
            }
        }
        for (name, value) in &cdn.purge_headers {
            let key = format!("cdn.purge_headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return err(&key, "not a header name".to_string());
            }
            // The value is often a secret: the error does not repeat it.
            if http::HeaderValue::from_str(value).is_err() {
                return err(&key, "not a header value (control characters?)".to_string());
            }
        }
        if reqwest::Method::from_bytes(cdn.purge_method.as_bytes()).is_err() {
            return err(
                "cdn.purge_method",
                format!("{:?} is not an HTTP method", cdn.purge_method),
            );
        }
        if !self.security.purge_token.is_empty()
            && self.security.purge_token.len() < MIN_PURGE_TOKEN_LEN
        {
            return err(
                "security.purge_token",
                format!(
                    "too short: {} bytes, at least {MIN_PURGE_TOKEN_LEN} needed (try: openssl rand -hex 16)",
                    self.security.purge_token.len()
                ),
            );
        }
        if self.archive.concurrency == 0 {
            return err("archive.concurrency", "must be at least 1".into());
        }
        for (i, t) in self.archive.sources.iter().enumerate() {
            let key = format!("archive.sources[{i}]");
            if !t.contains("{url}") {
                return err(
                    &key,
                    format!("{t:?} has no {{url}} to put the image's URL in"),
                );
            }
            let probe = t
                .replace("{url}", "http://a.test/x.jpg")
                .replace("{timestamp}", "20210608003900");
            match url::Url::parse(&probe) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => return err(&key, format!("{t:?} is not an http(s) URL template")),
            }
        }
        if self.cache.store == StoreKind::S3 && self.s3.bucket.is_empty() {
            return err("s3.bucket", "required when cache.store = \"s3\"".into());
        }
        for (name, p) in &self.presets {
            let key = |k: &str| format!("presets.{name}.{k}");
            if !route::is_preset_name(name) {
                return err(
                    &format!("presets.{name}"),
                    "preset names use a-z, 0-9 and - (at most 64)".into(),
                );
            }
            for (k, v) in [("width", p.width), ("height", p.height)] {
                match v {
                    Some(0) => return err(&key(k), "must be at least 1".into()),
                    Some(n) if n > self.image.max_dimension => {
                        return err(
                            &key(k),
                            format!(
                                "{n} exceeds image.max_dimension ({})",
                                self.image.max_dimension
                            ),
                        )
                    }
                    _ => {}
                }
            }
            if let Some(q) = p.quality {
                if !(1..=100).contains(&q) {
                    return err(&key("quality"), "must be 1 to 100".into());
                }
            }
        }
        let by_key = self.rewrite.presets.keys.iter().map(|(k, p)| {
            let key = format!("rewrite.presets.{k}");
            (key, Some(p))
        });
        for (key, preset) in [
            (
                "rewrite.presets.front_matter".to_string(),
                self.rewrite.presets.front_matter.as_ref(),
            ),
            (
                "rewrite.presets.body".to_string(),
                self.rewrite.presets.body.as_ref(),
            ),
        ]
        .into_iter()
        .chain(by_key)
        {
            if let Some(p) = preset {
                if !self.presets.contains_key(p) {
                    return err(&key, format!("no preset named {p:?} in [presets]"));
                }
            }
        }
        for k in self.rewrite.presets.keys.keys() {
            if !self.rewrite.image_keys.contains(k) {
                return err(
                    &format!("rewrite.presets.{k}"),
                    "unknown key: front_matter, body, or a front-matter key of rewrite.image_keys"
                        .into(),
                );
            }
        }
        let responsive = &self.rewrite.responsive;
        if responsive.widths.is_empty() {
            return err(
                "rewrite.responsive.widths",
                "must list at least one width".into(),
            );
        }
        for w in &responsive.widths {
            if *w == 0 || *w > self.image.max_dimension {
                return err(
                    "rewrite.responsive.widths",
                    format!(
                        "{w}: must be 1 to image.max_dimension ({})",
                        self.image.max_dimension
                    ),
                );
            }
        }
        if responsive.sizes.trim().is_empty() {
            return err("rewrite.responsive.sizes", "must not be empty".into());
        }
        for (i, p) in self.rewrite.proxies.iter().enumerate() {
            let key = format!("rewrite.proxies[{i}].prefix");
            if let Err(why) = ProxyPrefix::new(&p.prefix) {
                return err(&key, format!("{:?}: {why}", p.prefix));
            }
        }
        for (i, e) in self.rewrite.extensions.iter().enumerate() {
            if e.is_empty() || e.starts_with('.') {
                return err(
                    &format!("rewrite.extensions[{i}]"),
                    format!("{e:?}: write extensions without the dot"),
                );
            }
        }
        Ok(())
    }
}
