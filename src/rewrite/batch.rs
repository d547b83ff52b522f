//! The batch half of `imgmirror rewrite`: walking files and folders, rewriting in parallel,
//! writing atomically (temporary file in the same folder, made durable, then renamed; permissions
//! kept), diffs, and the JSON report. A failure on one file is recorded and the batch goes on.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use super::{DocReport, Rewriter};

/// What to do with rewritten files.
#[derive(Clone, Debug, Default)]
pub struct BatchOptions {
    /// Write nothing (`--dry-run` and `--check`).
    pub no_write: bool,
    /// Produce a review diff per changed file (see `rewrite::diff`).
    pub diff: bool,
    /// Write under this folder (keeping relative paths) instead of in place.
    pub out: Option<PathBuf>,
    /// File extensions walked in folders (explicitly named files are always read).
    pub extensions: Vec<String>,
    /// Show a progress bar.
    pub progress: bool,
}

/// One file to process: where it is and where it goes relative to `--out`.
#[derive(Clone, Debug)]
pub struct Job {
    /// The file.
    pub path: PathBuf,
    /// Its path relative to the argument it was found under (its place under `--out`).
    pub relative: PathBuf,
}

/// A path with a reason, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PathReason {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// A link found in a file, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct FileLink {
    /// The file.
    pub path: String,
    /// The link.
    pub link: String,
}

/// The whole batch's report (`--report FILE`), and the source of the stderr summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchReport {
    /// Files read.
    pub files_scanned: usize,
    /// Files changed (or that would change).
    pub files_changed: usize,
    /// Files read and left as they were.
    pub files_unchanged: usize,
    /// Files not read, with why (symlinks, special files, read-only files, ...).
    pub files_skipped: Vec<PathReason>,
    /// Files in walked folders whose extension is not in `rewrite.extensions`.
    pub files_ignored_by_extension: usize,
    /// Links replaced.
    pub links_rewritten: usize,
    /// Links replaced, by the proxy they went through (`direct` for mirror hosts).
    pub rewritten_by_proxy: BTreeMap<String, usize>,
    /// Links replaced, by where they were found.
    pub rewritten_by_context: BTreeMap<String, usize>,
    /// Links that were routes already.
    pub links_already_rewritten: usize,
    /// Mirrorable links deliberately not rewritten, by reason (`code`, `non_image`).
    pub links_left_alone: BTreeMap<String, usize>,
    /// Links that embed another URL through a proxy imgmirror does not know.
    pub unknown_proxies: Vec<FileLink>,
    /// Tags whose `src` and `data-original` unwrap to different URLs (both are rewritten).
    pub src_mismatches: Vec<FileLink>,
    /// Files that could not be read or written, and links that could not be encoded.
    pub errors: Vec<PathReason>,
    /// Temporary files a crashed earlier run left next to the posts, removed now.
    pub temp_files_removed: usize,
    /// Paths of the changed files (or those that would change).
    pub changed: Vec<String>,
    /// Unified diffs, in path order, when asked for.
    #[serde(skip)]
    pub diffs: Vec<String>,
    /// Every upstream URL referenced by the posts (for `--warm`), with the earliest front-matter
    /// `date` among the posts that reference it (Unix seconds; `None` when no post has a
    /// readable one): an archive is asked for the capture nearest to publication.
    #[serde(skip)]
    pub upstreams: std::collections::BTreeMap<String, Option<u64>>,
    /// Every route of ours the posts name (found, or written now), without `public_base`: the
    /// variants `warm --variants` makes.
    #[serde(skip)]
    pub routes: std::collections::BTreeSet<String>,
}

impl BatchReport {
    /// One-paragraph summary for stderr.
    pub fn summary(&self, verb: &str) -> String {
        let by_proxy: Vec<String> = self
            .rewritten_by_proxy
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "{} files scanned, {} {verb}, {} unchanged, {} skipped, {} errors; {} links rewritten{}; \
{} already rewritten; {} left alone; {} unknown proxy links; {} src/data-original mismatches",
            self.files_scanned,
            self.files_changed,
            self.files_unchanged,
            self.files_skipped.len(),
            self.errors.len(),
            self.links_rewritten,
            if by_proxy.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_proxy.join(", "))
            },
            self.links_already_rewritten,
            self.links_left_alone.values().sum::<usize>(),
            self.unknown_proxies.len(),
            self.src_mismatches.len(),
        )
    }
}

/// Lists the files under `paths`: named files as they are, folders walked recursively (sorted,
/// symlinks not followed) keeping files whose extension is in `extensions`.
pub fn collect(paths: &[PathBuf], extensions: &[String], report: &mut BatchReport) -> Vec<Job> {
    let mut jobs = Vec::new();
    for root in paths {
        // Named on the command line, a symlink stands for its target: a linked folder is
        // walked, a linked post is rewritten where it really lives (the link stays a link).
        let meta = match fs::metadata(root) {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(PathReason {
                    path: root.display().to_string(),
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        if !meta.is_dir() {
            if !meta.is_file() {
                // A FIFO would block the read forever; devices and sockets are no posts.
                report.files_skipped.push(PathReason {
                    path: root.display().to_string(),
                    reason: "not a regular file".into(),
                });
                continue;
            }
            let relative = root
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| root.clone());
            let path = match fs::symlink_metadata(root) {
                Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(root) {
                    Ok(target) => target,
                    Err(e) => {
                        report.errors.push(PathReason {
                            path: root.display().to_string(),
                            reason: format!("cannot resolve the link: {e}"),
                        });
                        continue;
                    }
                },
                _ => root.clone(),
            };
            jobs.push(Job { path, relative });
            continue;
        }
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    report.errors.push(PathReason {
                        path: e.path().map_or_else(
                            || root.display().to_string(),
                            |p| p.display().to_string(),
                        ),
                        reason: format!("cannot walk: {e}"),
                    });
                    continue;
                }
            };
            let ft = entry.file_type();
            if ft.is_dir() {
                continue;
            }
            let path = entry.path();
            let wanted = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if !wanted {
                report.files_ignored_by_extension += 1;
                continue;
            }
            if !ft.is_file() {
                report.files_skipped.push(PathReason {
                    path: path.display().to_string(),
                    reason: if ft.is_symlink() {
                        "symbolic link (not followed)".into()
                    } else {
                        "not a regular file".into()
                    },
                });
                continue;
            }
            let relative = path.strip_prefix(root).unwrap_or(path).to_path_buf();
            jobs.push(Job {
                path: path.to_path_buf(),
                relative,
            });
        }
    }
    jobs
}

/// What happened to one file; a file to write is staged until the batch commits.
enum Outcome {
    Unchanged(DocReport, Option<Staged>),
    Changed(DocReport, Option<String>, Option<Staged>),
    Failed(String, Option<DocReport>),
}

/// Stages a file's new bytes next to it, keeping what [`Keep`] says of the post (see
/// [`crate::fsutil::stage`]); tests pass one that fails.
pub type Sink = dyn Fn(&Path, &[u8], Keep) -> io::Result<Staged> + Sync;

/// Rewrites every job (in parallel), then commits every staged file at once (one filesystem sync,
/// then renames), and fills `report`.
pub fn process(
    rewriter: &Rewriter,
    jobs: &[Job],
    options: &BatchOptions,
    sink: &Sink,
    report: &mut BatchReport,
) {
    let bar = options.progress.then(|| {
        let pb = indicatif::ProgressBar::new(jobs.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    if !options.no_write {
        // What an earlier run that crashed left next to these posts.
        let folders: std::collections::BTreeSet<&Path> =
            jobs.iter().filter_map(|j| j.path.parent()).collect();
        report.temp_files_removed += folders
            .into_iter()
            .map(|d| crate::fsutil::sweep(d, false))
            .sum::<usize>();
    }
    let done = AtomicUsize::new(0);
    let mut outcomes: Vec<Outcome> = jobs
        .par_iter()
        .map(|job| {
            let o = one(rewriter, job, options, sink);
            done.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = &bar {
                b.inc(1);
            }
            o
        })
        .collect();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // Commit: take every staged file out of its outcome, make them durable and visible together.
    let mut staged = Vec::new();
    let mut owners = Vec::new();
    for (i, o) in outcomes.iter_mut().enumerate() {
        if let Outcome::Changed(_, _, s) | Outcome::Unchanged(_, s) = o {
            if let Some(s) = s.take() {
                staged.push(s);
                owners.push(i);
            }
        }
    }
    let in_place = options.out.is_none();
    let results = crate::fsutil::commit(staged, |target| !in_place || target.exists());
    for (i, r) in owners.into_iter().zip(results) {
        if let Err(e) = r {
            let o = std::mem::replace(&mut outcomes[i], Outcome::Failed(String::new(), None));
            let (Outcome::Changed(d, _, _) | Outcome::Unchanged(d, _)) = o else {
                continue;
            };
            let reason = if e.kind() == io::ErrorKind::NotFound && in_place {
                e.to_string()
            } else {
                format!("cannot write: {e}")
            };
            outcomes[i] = Outcome::Failed(reason, Some(d));
        }
    }
    for (job, outcome) in jobs.iter().zip(outcomes) {
        let path = job.path.display().to_string();
        let doc = match outcome {
            Outcome::Unchanged(d, _) => {
                report.files_scanned += 1;
                report.files_unchanged += 1;
                d
            }
            Outcome::Changed(d, diff, _) => {
                report.files_scanned += 1;
                report.files_changed += 1;
                report.changed.push(path.clone());
                report.diffs.extend(diff);
                d
            }
            Outcome::Failed(reason, d) => {
                report.errors.push(PathReason {
                    path: path.clone(),
                    reason,
                });
                match d {
                    Some(mut d) => {
                        // Its links were not rewritten after all: keep only the findings.
                        report.files_scanned += 1;
                        d.rewritten.clear();
                        d
                    }
                    None => continue,
                }
            }
        };
        merge(report, &path, doc);
    }
}

fn merge(report: &mut BatchReport, path: &str, doc: DocReport) {
    report.links_rewritten += doc.rewritten.len();
    for r in &doc.rewritten {
        *report
            .rewritten_by_proxy
            .entry(r.proxy.clone())
            .or_default() += 1;
        *report
            .rewritten_by_context
            .entry(r.context.as_str().to_string())
            .or_default() += 1;
    }
    report.links_already_rewritten += doc.already_rewritten;
    for (k, v) in doc.left_alone {
        *report.links_left_alone.entry(k.to_string()).or_default() += v;
    }
    let link = |l: String| FileLink {
        path: path.to_string(),
        link: l,
    };
    report
        .unknown_proxies
        .extend(doc.unknown_proxies.into_iter().map(link));
    report
        .src_mismatches
        .extend(doc.mismatches.into_iter().map(link));
    report
        .errors
        .extend(doc.errors.into_iter().map(|e| PathReason {
            path: path.to_string(),
            reason: format!("link not rewritten: {e}"),
        }));
    let date = doc.date.as_deref().and_then(crate::archive::post_date);
    report.routes.extend(doc.routes);
    for u in doc.upstreams {
        let earliest = report.upstreams.entry(u).or_insert(date);
        *earliest = match (*earliest, date) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

fn one(rewriter: &Rewriter, job: &Job, options: &BatchOptions, sink: &Sink) -> Outcome {
    // Read before the bytes: what the written file keeps (mode, owner, times) is the post's as
    // it was when read.
    let meta = match fs::metadata(&job.path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Failed("disappeared before it could be read".into(), None)
        }
        Err(e) => return Outcome::Failed(format!("cannot read: {e}"), None),
    };
    // In place the owner is kept too; a copy in --out belongs to whoever runs the job.
    let keep = Keep::Like {
        meta: &meta,
        owner: options.out.is_none(),
    };
    let bytes = match fs::read(&job.path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Failed("disappeared before it could be read".into(), None)
        }
        Err(e) => return Outcome::Failed(format!("cannot read: {e}"), None),
    };
    let (new, doc) = rewriter.rewrite(&bytes);
    let target = match &options.out {
        Some(out) => out.join(&job.relative),
        None => job.path.clone(),
    };
    let Some(new) = new else {
        // Unchanged files are still copied to --out, so the output folder is a complete tree.
        if options.out.is_some() && !options.no_write {
            return match write_out(&target, &bytes, keep, sink) {
                Ok(s) => Outcome::Unchanged(doc, Some(s)),
                Err(e) => {
                    Outcome::Failed(format!("cannot write {}: {e}", target.display()), Some(doc))
                }
            };
        }
        return Outcome::Unchanged(doc, None);
    };
    let diff = options
        .diff
        .then(|| super::diff::review_diff(&job.path, &bytes, &new));
    if options.no_write {
        return Outcome::Changed(doc, diff, None);
    }
    if options.out.is_none() {
        match fs::metadata(&job.path) {
            Ok(m) if m.permissions().readonly() => {
                return Outcome::Failed("read-only file: not modified".into(), Some(doc))
            }
            Ok(_) => {}
            Err(_) => {
                return Outcome::Failed(
                    "disappeared during the run: not recreated".into(),
                    Some(doc),
                )
            }
        }
    }
    match write_out(&target, &new, keep, sink) {
        Ok(s) => Outcome::Changed(doc, diff, Some(s)),
        Err(e) => Outcome::Failed(format!("cannot write {}: {e}", target.display()), Some(doc)),
    }
}

fn write_out(target: &Path, bytes: &[u8], keep: Keep, sink: &Sink) -> io::Result<Staged> {
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::fsutil::create_folders(parent)?;
    }
    sink(target, bytes, keep)
}

pub use crate::fsutil::{stage, stage_chunks, Keep, Staged};
