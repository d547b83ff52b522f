//! `imgmirror warm`: scans posts for links, puts them on record and mirrors every one, printing
//! dead links and archive rescues, and with `--variants` encodes every variant the posts' routes
//! name; `mirror_all` is also `rewrite --warm`'s second half.

use std::path::PathBuf;

use super::{write_report, ConfigArg, Failure, EXIT_PROBLEMS};
use crate::config::Config;
use crate::mirror::warm::{VariantReport, WarmReport};

/// Mirrors `urls` with a service state built from `config` (no listener), printing dead links.
pub(super) fn mirror_all(
    config: Config,
    urls: std::collections::BTreeMap<String, Option<u64>>,
) -> Result<WarmReport, Failure> {
    mirror_with_variants(config, urls, None).map(|(warm, _)| warm)
}

/// A progress bar on a terminal, counting `len` of `what`.
fn bar(len: usize, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(len as u64);
        let template = format!("{{bar:40}} {{pos}}/{{len}} {what} {{elapsed}}");
        pb.set_style(
            indicatif::ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    })
}

/// [`mirror_all`], then, given `routes` (`--variants`), every variant they name.
fn mirror_with_variants(
    config: Config,
    urls: std::collections::BTreeMap<String, Option<u64>>,
    routes: Option<std::collections::BTreeSet<String>>,
) -> Result<(WarmReport, Option<VariantReport>), Failure> {
    let runtime = super::runtime()?;
    let bar = bar(urls.len(), "images");
    let key = config.signing_key();
    let (report, variants) = runtime.block_on(async {
        let deps = crate::deps::Deps::default();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(deps.clock.clone()));
        let now = deps.clock.now_secs();
        let mirror =
            crate::mirror::Mirror::open(std::sync::Arc::new(config), metrics, &deps).await?;
        // Every link seen goes on record first, fetched or not (the service fetches only known
        // links, and a dead link may come back or be rescued later).
        mirror
            .tiers()
            .know(urls.keys().cloned().collect(), now)
            .await
            .map_err(|e| Failure {
                code: EXIT_PROBLEMS,
                message: format!("cannot record the posts' links in the mirror: {e}"),
            })?;
        let tick = bar.clone();
        let mirror = std::sync::Arc::new(mirror);
        let report = crate::mirror::warm::warm(mirror.clone(), urls, move || {
            if let Some(b) = &tick {
                b.inc(1);
            }
        })
        .await;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let variants = match routes {
            None => None,
            Some(routes) => {
                let mut decoded = Vec::new();
                let mut bad = Vec::new();
                for r in routes {
                    match crate::route::decode(&r, key.as_ref()) {
                        Ok(route) => decoded.push(route),
                        Err(e) => bad.push(crate::mirror::warm::DeadLink::new(r, e.status(), &e)),
                    }
                }
                let bar = self::bar(decoded.len(), "routes");
                let tick = bar.clone();
                let mut made =
                    crate::mirror::warm::warm_variants(mirror.clone(), decoded, move || {
                        if let Some(b) = &tick {
                            b.inc(1);
                        }
                    })
                    .await;
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                made.failed.extend(bad);
                Some(made)
            }
        };
        // A replaced original asked the CDN to purge it: sent before the runtime ends.
        mirror.purges_sent().await;
        // What was written goes into the count the running service keeps of the local disk.
        mirror.tiers().flush_usage();
        Ok::<_, Failure>((report, variants))
    })?;
    for d in &report.dead {
        eprintln!(
            "imgmirror: dead link: {} ({}: {})",
            d.url, d.status, d.reason
        );
    }
    for a in &report.archived {
        eprintln!(
            "imgmirror: rescued from {}: {} (capture {}: {})",
            a.source, a.url, a.capture, a.capture_url
        );
    }
    eprintln!(
        "warm: {} images: {} fetched, {} archived, {} already mirrored, {} stale kept, {} dead",
        report.images,
        report.fetched,
        report.archived.len(),
        report.already_mirrored,
        report.stale,
        report.dead.len()
    );
    if let Some(v) = &variants {
        for f in &v.failed {
            eprintln!(
                "imgmirror: variant not made: {} ({}: {})",
                f.url, f.status, f.reason
            );
        }
        eprintln!(
            "warm: {} variants: {} made, {} already made, {} failed",
            v.variants,
            v.made,
            v.already_made,
            v.failed.len()
        );
    }
    Ok((report, variants))
}

/// Runs `imgmirror warm`.
pub(super) fn run(
    config: ConfigArg,
    report_path: Option<PathBuf>,
    variants: bool,
    paths: Vec<PathBuf>,
) -> Result<u8, Failure> {
    use crate::rewrite::batch::{self, BatchOptions, BatchReport};
    let config = Config::load(config.config.as_deref())?;
    let rewriter = crate::rewrite::Rewriter::new(&config);
    let options = BatchOptions {
        no_write: true,
        extensions: config.rewrite.extensions.clone(),
        ..BatchOptions::default()
    };
    let mut scan = BatchReport::default();
    let jobs = batch::collect(&paths, &options.extensions, &mut scan);
    batch::process(&rewriter, &jobs, &options, &batch::stage, &mut scan);
    for e in &scan.errors {
        eprintln!("imgmirror: {}: {}", e.path, e.reason);
    }
    let routes = variants.then(|| scan.routes.clone());
    let (warm, made) = mirror_with_variants(config, scan.upstreams.clone(), routes)?;
    if let Some(path) = report_path {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            #[serde(flatten)]
            warm: &'a WarmReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            variants: Option<&'a VariantReport>,
            files_scanned: usize,
            file_errors: &'a [crate::rewrite::batch::PathReason],
        }
        let report = Report {
            warm: &warm,
            variants: made.as_ref(),
            files_scanned: scan.files_scanned,
            file_errors: &scan.errors,
        };
        write_report(&path, &report)?;
    }
    let problems = !warm.dead.is_empty()
        || !scan.errors.is_empty()
        || made.as_ref().is_some_and(|m| !m.failed.is_empty());
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}
