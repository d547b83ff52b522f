//! `imgmirror warm`: scans posts for links, puts them on record and mirrors every one, printing
//! dead links and archive rescues; `mirror_all` is also `rewrite --warm`'s second half.

use std::path::PathBuf;

use super::{write_report, ConfigArg, Failure, EXIT_PROBLEMS};
use crate::config::Config;
use crate::mirror::warm::WarmReport;

/// Mirrors `urls` with a service state built from `config` (no listener), printing dead links.
pub(super) fn mirror_all(
    config: Config,
    urls: std::collections::BTreeMap<String, Option<u64>>,
) -> Result<WarmReport, Failure> {
    use std::io::IsTerminal;
    let runtime = super::runtime()?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(urls.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let report = runtime.block_on(async {
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
        // What was written goes into the count the running service keeps of the local disk.
        mirror.tiers().flush_usage();
        Ok::<_, Failure>(report)
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
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
    Ok(report)
}

/// Runs `imgmirror warm`.
pub(super) fn run(
    config: ConfigArg,
    report_path: Option<PathBuf>,
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
    let warm = mirror_all(config, scan.upstreams.clone())?;
    if let Some(path) = report_path {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            #[serde(flatten)]
            warm: &'a WarmReport,
            files_scanned: usize,
            file_errors: &'a [crate::rewrite::batch::PathReason],
        }
        let report = Report {
            warm: &warm,
            files_scanned: scan.files_scanned,
            file_errors: &scan.errors,
        };
        write_report(&path, &report)?;
    }
    let problems = !warm.dead.is_empty() || !scan.errors.is_empty();
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}
