//! Work on a whole mirror, written once against [`MirrorStore`] so it runs the same on `fs` and
//! `s3`: `imgmirror export`, `imgmirror purge` and the disk budget (`cache.disk_bytes`).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;

use super::{Kind, MirrorStore, Record, Tiers, VariantKey};
use crate::route::{decode, encode, Options, SigningKey};

/// What `imgmirror export` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ExportReport {
    /// Files written (originals and variants).
    pub written: usize,
    /// Records not exported, with why.
    pub skipped: Vec<(String, String)>,
}

/// Name of the file that holds a route whose path is also a folder of another route (`…/a` and
/// `…/a/b.jpg`): `…/a/%file`. No URL path has it (`%` must start a `%XX` escape), so it cannot
/// meet another route's file; nginx serves it with `try_files $uri $uri/%file`.
pub const FOLDER_FILE: &str = "%file";

/// Writes every mirrored original (and, with `variants`, every stored variant) under `dir` at
/// the path of its route, so a static file server answers the same URLs. Signed routes are
/// written with their signature when `key` is given. Files are `0644` and folders `0755` (less
/// the umask), so a web server running as another user reads them. A route whose path is a
/// folder of another route goes to [`FOLDER_FILE`] inside that folder. Nothing under `dir` that
/// is a symlink is followed: such a route is skipped, with why.
pub async fn export(
    store: &dyn MirrorStore,
    dir: &Path,
    key: Option<&SigningKey>,
    variants: bool,
) -> io::Result<ExportReport> {
    let mut report = ExportReport::default();
    let kinds: &[Kind] = if variants {
        &[Kind::Original, Kind::Variant]
    } else {
        &[Kind::Original]
    };
    // First every route's path, so a path that is another's folder is known before writing.
    let mut planned: Vec<(Record, String)> = Vec::new();
    for &kind in kinds {
        let mut records = store.records(kind).await?;
        records.sort_by(|a, b| a.key.cmp(&b.key));
        for r in records {
            let route = match kind {
                // Links have no bytes (and `kinds` names none).
                Kind::Link => continue,
                Kind::Original => encode(&r.key, &Options::default(), key),
                Kind::Variant => match VariantKey::parse(&r.key) {
                    Some(v) if v.negotiated.is_some() => {
                        report
                            .skipped
                            .push((r.key, "depends on Accept negotiation".into()));
                        continue;
                    }
                    Some(v) => {
                        decode(&v.route, None).and_then(|d| encode(&d.upstream, &d.options, key))
                    }
                    None => {
                        report.skipped.push((r.key, "not a variant key".into()));
                        continue;
                    }
                },
            };
            match route {
                Ok(route) if !route.ends_with('/') => {
                    planned.push((r, route.trim_start_matches('/').to_string()))
                }
                Ok(_) => report
                    .skipped
                    .push((r.key, "the URL ends in / (a folder, not a file)".into())),
                Err(e) => report.skipped.push((r.key, e.to_string())),
            }
        }
    }
    let paths: std::collections::BTreeSet<&str> = planned.iter().map(|(_, p)| p.as_str()).collect();
    let is_folder = |p: &str| {
        let folder = format!("{p}/");
        paths
            .range(folder.as_str()..)
            .next()
            .is_some_and(|next| next.starts_with(&folder))
    };
    let targets: Vec<std::path::PathBuf> = planned
        .iter()
        .map(|(_, p)| match is_folder(p) {
            true => dir.join(p).join(FOLDER_FILE),
            false => dir.join(p),
        })
        .collect();
    for ((r, _), target) in planned.into_iter().zip(targets) {
        if let Some(link) = symlink_under(dir, &target) {
            report.skipped.push((
                r.key,
                format!("{} is a symlink: not followed", link.display()),
            ));
            continue;
        }
        let Ok(Some(bytes)) = store.blob(&r.hash).await else {
            report
                .skipped
                .push((r.key, "bytes missing or corrupt in the mirror".into()));
            continue;
        };
        let written = tokio::task::spawn_blocking(move || {
            crate::fsutil::write_atomic(&target, &bytes, crate::fsutil::PUBLIC)
        })
        .await
        .map_err(io::Error::other)?;
        match written {
            Ok(()) => report.written += 1,
            Err(e) => report.skipped.push((r.key, format!("cannot write: {e}"))),
        }
    }
    Ok(report)
}

/// The first path from `dir` (exclusive) down to `target` (inclusive) that is a symlink.
fn symlink_under(dir: &Path, target: &Path) -> Option<std::path::PathBuf> {
    let relative = target.strip_prefix(dir).ok()?;
    let mut at = dir.to_path_buf();
    for part in relative.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Some(at),
            Ok(_) => {}
            Err(_) => return None, // missing from here down: made by us, not followed
        }
    }
    None
}

/// Drops an upstream URL from every tier: the local disk, then S3 when the mirror is shared.
/// Returns how many records the whole mirror ([`Tiers::primary`]) held; the first error stops.
pub async fn purge_everywhere(tiers: &Tiers, upstream: &str) -> io::Result<usize> {
    let local = purge(tiers.local(), upstream).await?;
    match tiers.shared() {
        Some(shared) => purge(shared, upstream).await,
        None => Ok(local),
    }
}

/// Drops an upstream URL's original and every variant made from it; blobs no other record
/// uses are deleted. Returns how many records were dropped.
pub async fn purge(store: &dyn MirrorStore, upstream: &str) -> io::Result<usize> {
    let mut dropped = Vec::new();
    if let Some(r) = store.record(Kind::Original, upstream).await? {
        store.delete_record(Kind::Original, upstream).await?;
        dropped.push(r.hash);
    }
    let mut kept = HashSet::new();
    for r in store.records(Kind::Original).await? {
        kept.insert(r.hash);
    }
    for r in store.records(Kind::Variant).await? {
        let of_upstream = VariantKey::parse(&r.key)
            .and_then(|v| v.upstream())
            .is_some_and(|u| u == upstream);
        if of_upstream {
            store.delete_record(Kind::Variant, &r.key).await?;
            dropped.push(r.hash);
        } else {
            kept.insert(r.hash);
        }
    }
    for h in &dropped {
        if !kept.contains(h) {
            store.delete_blob(h).await?;
        }
    }
    Ok(dropped.len())
}

/// What one pass of [`enforce_budget`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Variant records dropped.
    pub variants: usize,
    /// Original records dropped.
    pub originals: usize,
    /// Bytes of blobs in the store afterwards.
    pub bytes_after: u64,
}

/// Keeps a store's blobs within `max_bytes` (`cache.disk_bytes`): variants go first (oldest
/// first), originals only when variants are not enough (least recently confirmed first). A blob
/// shared by several records goes with the last of them.
pub async fn enforce_budget(store: &dyn MirrorStore, max_bytes: u64) -> io::Result<Eviction> {
    let mut records: Vec<(Kind, Record)> = Vec::new();
    for kind in [Kind::Variant, Kind::Original] {
        records.extend(store.records(kind).await?.into_iter().map(|r| (kind, r)));
    }
    let mut refs: HashMap<String, (u64, usize)> = HashMap::new();
    for (_, r) in &records {
        refs.entry(r.hash.clone()).or_insert((r.size, 0)).1 += 1;
    }
    let mut total: u64 = refs.values().map(|(size, _)| size).sum();
    let mut out = Eviction::default();
    // Variants before originals; within each, the oldest first.
    // (Links hold no bytes and are never listed here.)
    records.sort_by_key(|(kind, r)| match kind {
        Kind::Variant => (0, r.fetched_at),
        Kind::Original | Kind::Link => (1, r.checked_at),
    });
    for (kind, r) in records {
        if total <= max_bytes {
            break;
        }
        store.delete_record(kind, &r.key).await?;
        match kind {
            Kind::Variant => out.variants += 1,
            Kind::Original | Kind::Link => out.originals += 1,
        }
        if let Some(entry) = refs.get_mut(&r.hash) {
            entry.1 -= 1;
            if entry.1 == 0 {
                store.delete_blob(&r.hash).await?;
                total = total.saturating_sub(entry.0);
            }
        }
    }
    out.bytes_after = total;
    Ok(out)
}
