//! `imgmirror warm` (and `rewrite --warm`): puts every image the posts reference into the mirror
//! ahead of time, through the same path a request takes (policy checks, mirror, upstream,
//! sniffing), without HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::Mirror;
use crate::mirror::{Accepts, Tier};
use crate::route::Route;

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

impl DeadLink {
    /// `url`, refused with `status` for `why`.
    pub fn new(url: String, status: u16, why: &dyn std::fmt::Display) -> DeadLink {
        DeadLink {
            url,
            status,
            reason: why.to_string(),
        }
    }

    /// A task of the batch that ended without an answer (a panic caught by the runtime): 500,
    /// with no URL to name.
    fn task_failed(what: &str, e: &tokio::task::JoinError) -> DeadLink {
        DeadLink::new(String::new(), 500, &format!("{what} failed: {e}"))
    }
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
            Ok((url, Err(e), _)) => report.dead.push(DeadLink::new(url, e.status(), &e)),
            Err(e) => report.dead.push(DeadLink::task_failed("warming task", &e)),
        }
    }
    report.dead.sort_by(|a, b| a.url.cmp(&b.url));
    report.archived.sort_by(|a, b| a.url.cmp(&b.url));
    report
}

/// What `warm --variants` made, for the report.
#[derive(Debug, Default, Serialize)]
pub struct VariantReport {
    /// Variants asked for: each route the posts name, once per format a client may negotiate
    /// for it.
    pub variants: usize,
    /// Encoded and stored now.
    pub made: usize,
    /// Already stored, made from the original the mirror holds.
    pub already_made: usize,
    /// Could not be made (the original missing or undecodable, bad options, ...).
    pub failed: Vec<DeadLink>,
}

/// The pauses before `warm --variants` asks again for a variant answered 503 (overloaded).
const OVERLOADED_RETRIES: [std::time::Duration; 4] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
    std::time::Duration::from_secs(8),
];

/// The clients whose `Accept` makes a distinct variant of a route that names no format: AVIF and
/// WebP (every current browser), WebP only, neither.
const NEGOTIATED: [Accepts; 3] = [
    Accepts {
        avif: true,
        webp: true,
    },
    Accepts {
        avif: false,
        webp: true,
    },
    Accepts {
        avif: false,
        webp: false,
    },
];

/// Makes every variant `routes` name ahead of any reader: each route, and for one that names no
/// format while negotiation is on, each format a client may get for it (`NEGOTIATED`). The
/// same path as a request (the pool, its share of `image.memory_bytes`, `upstream.concurrency`
/// at a time); a variant already stored is not made again. `progress` is called after each.
pub async fn warm_variants(
    mirror: Arc<Mirror>,
    routes: Vec<Route>,
    progress: impl Fn() + Send + Sync + 'static,
) -> VariantReport {
    let config = mirror.config().clone();
    let jobs: Vec<(Route, Accepts)> = routes
        .into_iter()
        .filter(|r| !r.options.is_original())
        .flat_map(|r| {
            let accepts: &[Accepts] = match super::plan::varies_by_accept(&config, &r.options) {
                true => &NEGOTIATED,
                false => &NEGOTIATED[2..],
            };
            accepts
                .iter()
                .map(move |a| (r.clone(), *a))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut report = VariantReport {
        variants: jobs.len(),
        ..VariantReport::default()
    };
    let progress = Arc::new(progress);
    // As many at once as the transform pool runs (one per core), so none waits in its queue
    // long enough to be refused as a reader would be; an overloaded answer (the pool shared
    // with a running service, the memory budget) is retried after a pause.
    let width = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = Arc::new(tokio::sync::Semaphore::new(
        width.min(config.upstream.concurrency).max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (route, accepts) in jobs {
        let (mirror, limit, progress) = (mirror.clone(), limit.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let url = route.upstream.clone();
            let mut made = mirror.make_variant(route.clone(), accepts).await;
            for pause in OVERLOADED_RETRIES {
                match &made {
                    Err(e) if e.status() == 503 => {
                        tokio::time::sleep(pause).await;
                        made = mirror.make_variant(route.clone(), accepts).await;
                    }
                    _ => break,
                }
            }
            progress();
            (url, made)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Ok(true))) => report.made += 1,
            Ok((_, Ok(false))) => report.already_made += 1,
            Ok((url, Err(e))) => report.failed.push(DeadLink::new(url, e.status(), &e)),
            Err(e) => report
                .failed
                .push(DeadLink::task_failed("a variant task", &e)),
        }
    }
    report.failed.sort_by(|a, b| a.url.cmp(&b.url));
    report
}
