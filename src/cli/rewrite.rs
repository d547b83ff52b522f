//! `imgmirror rewrite`: rewrites posts in place (or into `--out`), prints what changed, puts the
//! posts' links on record in the mirror, and with `--warm` mirrors them.

use super::{write_report, Failure, RewriteArgs, EXIT_PROBLEMS};
use crate::clock::Clock;
use crate::config::Config;

/// Runs `imgmirror rewrite`.
pub(super) fn run(args: RewriteArgs) -> Result<u8, Failure> {
    use crate::rewrite::batch::{self, BatchOptions, BatchReport};
    use std::io::IsTerminal;

    let config = Config::load(args.config.config.as_deref())?;
    if let Some(out) = &args.out {
        if out.exists() && !out.is_dir() {
            return Err(Failure::usage(format!(
                "--out {}: exists and is not a folder",
                out.display()
            )));
        }
    }
    let rewriter = crate::rewrite::Rewriter::new(&config);
    let options = BatchOptions {
        no_write: args.dry_run || args.check,
        diff: args.diff,
        out: args.out.clone(),
        extensions: config.rewrite.extensions.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    let mut report = BatchReport::default();
    let jobs = batch::collect(&args.paths, &options.extensions, &mut report);
    batch::process(&rewriter, &jobs, &options, &batch::stage, &mut report);

    for d in &report.diffs {
        print!("{d}");
    }
    if args.dry_run && !args.diff {
        for p in &report.changed {
            println!("would rewrite {p}");
        }
    }
    if args.check {
        for p in &report.changed {
            eprintln!("{p}: has links to rewrite");
        }
    }
    for e in &report.errors {
        eprintln!("imgmirror: {}: {}", e.path, e.reason);
    }
    let verb = if options.no_write {
        "would change"
    } else {
        "changed"
    };
    eprintln!("rewrite: {}", report.summary(verb));
    let mut problems = !report.errors.is_empty() || (args.check && report.files_changed > 0);
    // The links go on record, so that the service (`upstream.fetch = "known"`) fetches them;
    // --warm records them itself before fetching.
    if !options.no_write && !args.warm && !report.upstreams.is_empty() {
        let urls = report.upstreams.keys().cloned().collect();
        match record_links(&config, urls) {
            Ok(new) => eprintln!(
                "rewrite: {} links on record in the mirror ({new} new)",
                report.upstreams.len()
            ),
            Err(e) => {
                eprintln!(
                    "imgmirror: cannot record the posts' links in the mirror, so the service \
                     will refuse them until `imgmirror warm` records them: {e}"
                );
                problems = true;
            }
        }
    }
    let warm = if args.warm && !args.check && !args.dry_run {
        let warm = super::warm::mirror_all(config, report.upstreams.clone())?;
        problems |= !warm.dead.is_empty();
        Some(warm)
    } else {
        None
    };
    if let Some(path) = &args.report {
        // With --warm, what warming did goes in the same report.
        #[derive(serde::Serialize)]
        struct Report<'a> {
            #[serde(flatten)]
            rewrite: &'a BatchReport,
            #[serde(skip_serializing_if = "Option::is_none")]
            warm: Option<&'a crate::mirror::warm::WarmReport>,
        }
        let report = Report {
            rewrite: &report,
            warm: warm.as_ref(),
        };
        write_report(path, &report)?;
    }
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}

/// Records `urls` as links of the posts in the mirror `config` names (see
/// [`crate::store::Tiers::know`]); returns how many were new.
fn record_links(config: &Config, urls: Vec<String>) -> Result<usize, String> {
    let runtime = super::runtime().map_err(|f| f.message)?;
    runtime.block_on(async {
        let tiers = crate::store::open(config)
            .await
            .map_err(|e| e.to_string())?;
        tiers
            .know(urls, crate::clock::SystemClock.now_secs())
            .await
            .map_err(|e| format!("cache: {e}"))
    })
}
