//! The S3 backend: the mirror shared by every replica, as objects under `s3.prefix` in an
//! S3-compatible bucket (AWS S3, MinIO, Ceph, R2, moto), through the `object_store` crate.
//!
//! Blobs are content-addressed, so two replicas that mirror the same image write identical
//! objects; a new original's record is written with a conditional put (`If-None-Match: *`), so
//! of two racing replicas one record wins and both serve it. Bytes read back are checked against
//! their hash: a mismatch is a miss, never served, and the next put replaces the object.
//!
//! Credentials and region come from the standard `AWS_*` variables (`s3.region` when
//! `AWS_REGION` is unset). Requests are retried briefly (an unreachable S3 must not hold requests
//! for minutes) and time out.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig,
};

use super::{blob_path, sha256_hex, BoxFuture, Layout, Listed, MirrorStore, PutMode};
use crate::config::S3Config;

/// An S3 endpoint that does not accept a connection within this is down: the request fails over
/// to what the mirror does without S3 (a start exits 75, a lookup answers 503) instead of hanging.
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One S3 request (a blob of at most `upstream.max_bytes`, 25 MiB by default) within this, or it
/// is retried.
const S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Retries of a failed S3 request (50 ms, then 100 ms apart, at most 500 ms): enough for a
/// throttled or restarting endpoint, few enough that a request behind it still answers in time.
const S3_RETRIES: usize = 2;
/// No retry starts after this long since the first attempt.
const S3_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// The S3 backend.
#[derive(Clone, Debug)]
pub struct S3Store {
    inner: Arc<dyn ObjectStore>,
    /// `s3.prefix` without its trailing slash ("" for the bucket's root).
    prefix: String,
    /// For messages: `bucket "b" at http://127.0.0.1:9000`.
    place: String,
    layout: Arc<Layout>,
}

impl S3Store {
    /// Connects with credentials from the `AWS_*` variables. Builds the client only: see
    /// [`S3Store::verify`] for the check made at start.
    pub fn open(config: &S3Config) -> io::Result<S3Store> {
        let mut builder = AmazonS3Builder::from_env();
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region(&config.region);
        }
        S3Store::with_builder(config, builder)
    }

    /// Connects with a builder the caller prepared (credentials given explicitly, as tests do);
    /// `config` supplies the bucket, prefix, endpoint and `allow_http`.
    pub fn with_builder(config: &S3Config, builder: AmazonS3Builder) -> io::Result<S3Store> {
        let mut builder = builder
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(S3_CONNECT_TIMEOUT)
                    .with_timeout(S3_REQUEST_TIMEOUT)
                    .with_allow_http(config.allow_http),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: S3_RETRIES,
                retry_timeout: S3_RETRY_WINDOW,
            });
        if !config.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&config.endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let place = format!(
            "bucket {:?} at {}",
            config.bucket,
            if config.endpoint.is_empty() {
                "AWS"
            } else {
                &config.endpoint
            }
        );
        let inner = builder
            .build()
            .map_err(|e| io::Error::other(format!("{place}: {e}")))?;
        Ok(S3Store {
            inner: Arc::new(inner),
            prefix: config.prefix.trim_matches('/').to_string(),
            place,
            layout: Arc::default(),
        })
    }

    /// `bucket "b" at <endpoint>`, for messages.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Checks at start that the bucket exists and the credentials are accepted (a listing of the
    /// prefix); the error names the bucket and the endpoint.
    /// Errors are typed for the exit code: an endpoint that does not answer is temporary (S3
    /// still starting), anything the endpoint answered (no such bucket, bad credentials) is
    /// configuration.
    pub async fn verify(&self) -> Result<(), crate::start::StartError> {
        self.inner
            .list_with_delimiter(Some(&self.path("")))
            .await
            .map(|_| ())
            .map_err(|e| {
                let message = format!("{}: {}", self.place, first_line(&e));
                if crate::start::chain_is_temporary(&e) {
                    crate::start::StartError::Temporary(message)
                } else {
                    crate::start::StartError::Config(message)
                }
            })
    }

    fn path(&self, relative: &str) -> Path {
        match (self.prefix.is_empty(), relative.is_empty()) {
            (true, _) => Path::from(relative),
            (false, true) => Path::from(self.prefix.as_str()),
            (false, false) => Path::from(format!("{}/{relative}", self.prefix)),
        }
    }

    /// A listed object's path relative to the prefix.
    fn relative(&self, location: &Path) -> Option<String> {
        let full = location.as_ref();
        match self.prefix.is_empty() {
            true => Some(full.to_string()),
            false => full
                .strip_prefix(self.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .map(str::to_string),
        }
    }

    async fn fetch(&self, path: &Path) -> io::Result<Option<Bytes>> {
        match self.inner.get(path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| self.error(e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: object_store::Error) -> io::Error {
        let kind = match e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("S3 {}: {}", self.place, first_line(&e)))
    }
}

/// The first line of an error (object_store's carry the whole response body).
fn first_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

impl MirrorStore for S3Store {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>> {
        Box::pin(async move { self.fetch(&self.path(path)).await })
    }

    fn put<'a>(
        &'a self,
        path: &'a str,
        bytes: Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            let path = self.path(path);
            let opts = PutOptions {
                mode: match mode {
                    PutMode::Create => object_store::PutMode::Create,
                    PutMode::Overwrite => object_store::PutMode::Overwrite,
                },
                ..PutOptions::default()
            };
            match self
                .inner
                .put_opts(&path, PutPayload::from(bytes.clone()), opts)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                // A store without conditional puts: last writer wins (both records are valid).
                Err(object_store::Error::NotImplemented { .. }) => self
                    .inner
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| true)
                    .map_err(|e| self.error(e)),
                Err(e) => Err(self.error(e)),
            }
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { self.remove(&self.path(path)).await })
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
    ) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        Box::pin(async move {
            let prefix = self.path(dir.trim_end_matches('/'));
            let stream = match after {
                Some(a) => self.inner.list_with_offset(Some(&prefix), &self.path(a)),
                None => self.inner.list(Some(&prefix)),
            };
            let metas: Vec<_> = stream.try_collect().await.map_err(|e| self.error(e))?;
            let mut out: Vec<Listed> = metas
                .into_iter()
                .filter_map(|m| {
                    Some(Listed {
                        path: self.relative(&m.location)?,
                        size: m.size,
                        modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
                    })
                })
                .collect();
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
    }

    fn has_any<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            use futures_util::StreamExt;
            // The stream asks for a page at a time: its first item costs one LIST.
            let prefix = self.path(dir.trim_end_matches('/'));
            match self.inner.list(Some(&prefix)).next().await {
                None => Ok(false),
                Some(Ok(_)) => Ok(true),
                Some(Err(e)) => Err(self.error(e)),
            }
        })
    }

    fn children<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, io::Result<Vec<String>>> {
        Box::pin(async move {
            let listed = self
                .inner
                .list_with_delimiter(Some(&self.path(dir.trim_end_matches('/'))))
                .await
                .map_err(|e| self.error(e))?;
            let folders = listed.common_prefixes.iter();
            let files = listed.objects.iter().map(|m| &m.location);
            Ok(folders
                .chain(files)
                .filter_map(|p| p.filename().map(str::to_string))
                .collect())
        })
    }

    fn blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>> {
        Box::pin(async move {
            let Some(rel) = blob_path(hash) else {
                return Ok(None);
            };
            let bytes = self.fetch(&self.path(&rel)).await?;
            Ok(bytes.filter(|b| {
                let whole = sha256_hex(b) == hash;
                if !whole {
                    tracing::warn!(hash, "S3 blob does not match its hash: treated as missing");
                }
                whole
            }))
        })
    }

    fn put_blob<'a>(&'a self, hash: &'a str, bytes: &'a Bytes) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let rel = blob_path(hash).ok_or_else(|| io::Error::other("bad content hash"))?;
            // A PUT replaces the object atomically; identical bytes from two replicas are harmless,
            // and a corrupted object is healed by the refetch that follows its detection.
            self.inner
                .put(&self.path(&rel), PutPayload::from(bytes.clone()))
                .await
                .map(|_| ())
                .map_err(|e| self.error(e))
        })
    }

    fn delete_blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match blob_path(hash) {
                Some(rel) => self.remove(&self.path(&rel)).await,
                None => Ok(()),
            }
        })
    }

    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>> {
        // A real write: one PUT of a tiny object every replica overwrites (the readiness probe
        // runs every minute on every replica, so it costs one request, not two).
        Box::pin(async move {
            self.inner
                .put(&self.path(".readyz"), PutPayload::from_static(b"ok"))
                .await
                .map(|_| ())
                .map_err(|e| self.error(e))
        })
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }
}
