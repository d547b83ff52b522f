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
    let mut rewriter = crate::rewrite::Rewriter::new(&config);
    let options = BatchOptions {
        no_write: args.dry_run || args.check,
        diff: args.diff,
        out: args.out.clone(),
        extensions: config.rewrite.extensions.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    let mut report = BatchReport::default();
    let jobs = batch::collect(&args.paths, &options.extensions, &mut report);
    let writes = !args.check && !args.dry_run;
    // With [rewrite.responsive], the images must be in the mirror before the posts are written:
    // a first pass finds them, --warm mirrors them, and their sizes (and colours) are read
    // from the mirror for the pass that writes.
    let mut warm = None;
    if rewriter.is_responsive() {
        let mut scan = BatchReport::default();
        let scan_options = BatchOptions {
            no_write: true,
            extensions: options.extensions.clone(),
            ..BatchOptions::default()
        };
        batch::process(&rewriter, &jobs, &scan_options, &batch::stage, &mut scan);
        if args.warm && writes {
            warm = Some(super::warm::mirror_all(
                config.clone(),
                scan.upstreams.clone(),
            )?);
        }
        let urls = scan.upstreams.keys().cloned().collect();
        rewriter = rewriter.with_facts(facts_of(&config, urls));
    }
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
    if warm.is_none() && args.warm && writes {
        warm = Some(super::warm::mirror_all(config, report.upstreams.clone())?);
    }
    problems |= warm.as_ref().is_some_and(|w| !w.dead.is_empty());
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

/// What the mirror `config` names knows of each of `urls` that it holds, for the responsive
/// attributes: the size it is shown at (from its record, or its header for a record of an older
/// release) and, with `placeholder = "color"`, its average colour, with `"thumbhash"`, its
/// ThumbHash drawn small. An image not mirrored, or a
/// mirror that cannot be opened, gives nothing (its tags keep their links only), and says so.
fn facts_of(
    config: &Config,
    urls: Vec<String>,
) -> std::collections::BTreeMap<String, crate::rewrite::responsive::Facts> {
    use crate::config::Placeholder;
    use crate::rewrite::responsive::Facts;
    use crate::store::Kind;
    let mut out = std::collections::BTreeMap::new();
    let Ok(runtime) = super::runtime() else {
        return out;
    };
    let limits = crate::transform::Limits {
        max_pixels: config.image.max_pixels,
        max_frames: config.image.max_frames,
    };
    let placeholder = config.rewrite.responsive.placeholder;
    runtime.block_on(async {
        let tiers = match crate::store::open(config).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("imgmirror: responsive attributes: cannot open the mirror: {e}");
                return;
            }
        };
        let mut missing = 0;
        for url in urls {
            // The record alone when it has the size and no placeholder needs the pixels: the
            // blob (megabytes, hashed on read) is read only when it must be.
            if placeholder == Placeholder::None {
                if let Ok(Some(r)) = tiers.record(Kind::Original, &url).await {
                    if let Some((width, height)) = r.shown {
                        out.insert(url, Facts::sized(width, height));
                        continue;
                    }
                }
            }
            let Ok(Some(found)) = tiers.lookup(Kind::Original, &url).await else {
                missing += 1;
                continue;
            };
            let bytes = found.bytes;
            let shown = found.record.shown;
            let facts = tokio::task::spawn_blocking(move || {
                let (width, height) = shown.or_else(|| crate::transform::shown_size(&bytes))?;
                let colour = (placeholder == Placeholder::Color)
                    .then(|| crate::transform::average_colour(&bytes, &limits))
                    .flatten();
                let preview = (placeholder == Placeholder::Thumbhash)
                    .then(|| crate::transform::thumb_hash(&bytes, &limits))
                    .flatten()
                    .and_then(|hash| crate::transform::thumb_hash_png(&hash));
                Some(Facts {
                    width,
                    height,
                    colour,
                    preview,
                })
            })
            .await
            .ok()
            .flatten();
            match facts {
                Some(f) => {
                    out.insert(url, f);
                }
                None => missing += 1,
            }
        }
        if missing > 0 {
            eprintln!(
                "rewrite: {missing} images not in the mirror (or unreadable): their tags keep \
                 their links only; run with --warm"
            );
        }
    });
    out
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
