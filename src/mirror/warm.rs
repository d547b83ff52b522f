//! `imgmirror warm` (and `rewrite --warm`): puts every image the posts reference into the mirror
//! ahead of time, through the same path a request takes (policy checks, mirror, upstream,
//! sniffing), without HTTP.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use super::Mirror;
use crate::metrics::Tier;

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
    /// Links that could not be mirrored: dead, refused by policy, not images, ...
    pub dead: Vec<DeadLink>,
}

/// A link that could not be mirrored, with the status the service would answer and why.
#[derive(Debug, Serialize)]
pub struct DeadLink {
    pub url: String,
    pub status: u16,
    pub reason: String,
}

/// Mirrors every URL, `upstream.concurrency` at a time; `progress` is called after each.
pub async fn warm(
    mirror: Arc<Mirror>,
    urls: BTreeSet<String>,
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
    for url in urls {
        let (mirror, limit, progress) = (mirror.clone(), limit.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = match mirror.check(&url) {
                Err(e) => Err(e),
                Ok(()) => mirror.original(&url).await.map(|(_, tier)| tier),
            };
            progress();
            (url, result)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Ok(Tier::Miss))) => report.fetched += 1,
            Ok((_, Ok(Tier::Stale))) => report.stale += 1,
            Ok((_, Ok(_))) => report.already_mirrored += 1,
            Ok((url, Err(e))) => report.dead.push(DeadLink {
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
    report
}
