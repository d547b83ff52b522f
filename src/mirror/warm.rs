//! `imgmirror warm` (and `rewrite --warm`): puts every image the posts reference into the mirror
//! ahead of time, through the same path a request takes (policy checks, mirror, upstream,
//! sniffing), without HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::Mirror;
use crate::mirror::Tier;

/// What warming found, for the report and the exit code.
#[derive(Debug, Default, Serialize)]
pub struct WarmReport {
    /// Upstream URLs the posts reference.
    pub images: usize,
    /// Fetched from the upstream now (or revalidated).
    pub fetched: usize,
    /// Already in the mirror and fresh.
    pub already_mirrored: usize,
    /// Served from the mirror because the upstream failed (the copy is kept).
    pub stale: usize,
    /// Origin gone, rescued from a web archive (and mirrored): which capture each came from.
    pub archived: Vec<ArchivedLink>,
    /// Links that could not be mirrored: dead, refused by policy, not images, ...
    pub dead: Vec<DeadLink>,
}

/// A link that could not be mirrored, with the status the service would answer and why.
#[derive(Debug, Serialize)]
pub struct DeadLink {
    /// The upstream URL.
    pub url: String,
    /// The status the service would answer for it.
    pub status: u16,
    /// Why.
    pub reason: String,
}

/// An image rescued from a web archive.
#[derive(Debug, Serialize)]
pub struct ArchivedLink {
    /// The upstream URL.
    pub url: String,
    /// The archive (its host).
    pub source: String,
    /// The capture's time, YYYYMMDDhhmmss.
    pub capture: String,
    /// The URL the archive answered from.
    pub capture_url: String,
}

/// Mirrors every URL, `upstream.concurrency` at a time; `progress` is called after each. Each
/// URL comes with the date of the earliest post that references it (Unix seconds), the moment
/// an archive copy should be nearest to if its origin is gone; `None` is now.
pub async fn warm(
    mirror: Arc<Mirror>,
    urls: BTreeMap<String, Option<u64>>,
    progress: impl Fn() + Send + Sync + 'static,
) -> WarmReport {
    let mut report = WarmReport {
        images: urls.len(),
        ..WarmReport::default()
    };
    let progress = Arc::new(progress);
    let limit = Arc::new(tokio::sync::Semaphore::new(
        mirror.config().upstream.concurrency,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (url, when) in urls {
        let (mirror, limit, progress) = (mirror.clone(), limit.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = match mirror.check(&url) {
                Err(e) => Err(e),
                Ok(()) => match mirror.original_at(&url, when, &|| true).await {
                    // Records of older releases learn the image's size here.
                    Ok((entry, tier)) => {
                        mirror.shown_size(&url, &entry.body).await;
                        Ok(tier)
                    }
                    Err(e) => Err(e),
                },
            };
            let archived = match result {
                Ok(Tier::Archive) => mirror.capture_of(&url).await,
                _ => None,
            };
            progress();
            (url, result, archived)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Ok(Tier::Miss), _)) => report.fetched += 1,
            Ok((_, Ok(Tier::Stale), _)) => report.stale += 1,
            Ok((url, Ok(Tier::Archive), capture)) => report.archived.push(ArchivedLink {
                url,
                source: capture
                    .as_ref()
                    .map(|c| c.source.clone())
                    .unwrap_or_default(),
                capture: capture
                    .as_ref()
                    .map(|c| c.timestamp.clone())
                    .unwrap_or_default(),
                capture_url: capture.map(|c| c.url).unwrap_or_default(),
            }),
            Ok((_, Ok(_), _)) => report.already_mirrored += 1,
            Ok((url, Err(e), _)) => report.dead.push(DeadLink {
                url,
                status: e.status(),
                reason: e.to_string(),
            }),
            Err(e) => report.dead.push(DeadLink {
                url: String::new(),
                status: 500,
                reason: format!("warming task failed: {e}"),
            }),
        }
    }
    report.dead.sort_by(|a, b| a.url.cmp(&b.url));
    report.archived.sort_by(|a, b| a.url.cmp(&b.url));
    report
}
