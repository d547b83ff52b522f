//! Work on the mirror written once against [`MirrorStore`], so it runs the same on `fs` and
//! `s3`: `imgmirror export` (the whole mirror), `imgmirror purge` and the release of a blob no
//! record uses any more (one image's records), and the disk budget (`cache.disk_bytes`, a
//! sample at a time).

use std::collections::HashSet;
use std::io;
use std::path::Path;

use super::{
    parse_record, ref_path, refs_dir, variants_dir, Kind, MirrorStore, Record, Tiers, VariantKey,
};
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

/// Drops an upstream URL from every tier: the local disk, then S3 when the mirror is shared
/// (where the other replicas learn of it through [`super::events`]). Returns how many records
/// the whole mirror ([`Tiers::primary`]) held; the first error stops.
pub async fn purge_everywhere(tiers: &Tiers, upstream: &str) -> io::Result<usize> {
    let local = purge(tiers.local(), upstream).await?;
    match tiers.shared() {
        Some(shared) => purge(shared, upstream).await,
        None => Ok(local),
    }
}

/// Drops an upstream URL's original and every variant made from it; blobs no other record
/// uses are deleted. Returns how many records were dropped. Costs what the image owns: its
/// record, one listing of its variants' folder, and per record its marker and (when it was the
/// last) its blob. A mirror still in layout version 1 is searched whole, as that layout needs.
pub async fn purge(store: &dyn MirrorStore, upstream: &str) -> io::Result<usize> {
    if store.layout().is_legacy() {
        return purge_searching(store, upstream).await;
    }
    let mut dropped = 0;
    if let Some(r) = store.record(Kind::Original, upstream).await? {
        drop_record(store, Kind::Original, &r).await?;
        dropped += 1;
    }
    for (path, record) in variants_of(store, upstream).await? {
        store.delete(&path).await?;
        if let Some(r) = record {
            release(store, &r.hash, Kind::Variant, &r.key).await?;
        }
        dropped += 1;
    }
    Ok(dropped)
}

/// The variant records of `upstream`: one listing of its folder, a read of each (`None` for one
/// that cannot be parsed: it is the image's all the same, by its place).
async fn variants_of(
    store: &dyn MirrorStore,
    upstream: &str,
) -> io::Result<Vec<(String, Option<Record>)>> {
    let mut out = Vec::new();
    for listed in store.list(&variants_dir(upstream), None).await? {
        let record = store
            .get(&listed.path)
            .await?
            .and_then(|b| parse_record(&b, None));
        out.push((listed.path, record));
    }
    Ok(out)
}

/// Drops the variants of `upstream` made from other bytes than `source` (the original's hash
/// now): after the original was replaced. Costs what the image owns. Returns how many.
pub async fn drop_stale_variants(
    store: &dyn MirrorStore,
    upstream: &str,
    source: &str,
) -> io::Result<usize> {
    let mut dropped = 0;
    for (_, record) in variants_of(store, upstream).await? {
        let Some(r) = record else {
            continue;
        };
        if r.source.as_deref() != Some(source) {
            drop_record(store, Kind::Variant, &r).await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// Deletes a record, then releases its blob ([`release`]). Returns the bytes freed.
pub async fn drop_record(store: &dyn MirrorStore, kind: Kind, record: &Record) -> io::Result<u64> {
    store.delete_record(kind, &record.key).await?;
    let freed = release(store, &record.hash, kind, &record.key).await?;
    Ok(if freed { record.size } else { 0 })
}

/// Deletes the marker that says record `(kind, key)` uses blob `hash`, and the blob when no
/// marker is left (no other record uses it). Returns whether the blob was deleted.
pub async fn release(
    store: &dyn MirrorStore,
    hash: &str,
    kind: Kind,
    key: &str,
) -> io::Result<bool> {
    let (Some(marker), Some(dir)) = (ref_path(hash, kind, key), refs_dir(hash)) else {
        return Ok(false);
    };
    store.delete(&marker).await?;
    // In layout 1 records have no markers: a blob with none may still be another's.
    if store.layout().is_legacy() || store.has_any(&dir).await? {
        return Ok(false);
    }
    store.delete_blob(hash).await?;
    Ok(true)
}

/// [`purge`] in a mirror of layout version 1: every variant record is read to find the
/// image's, and every record to know which blobs are still used.
async fn purge_searching(store: &dyn MirrorStore, upstream: &str) -> io::Result<usize> {
    let mut dropped = Vec::new();
    if let Some(r) = store.record(Kind::Original, upstream).await? {
        store.delete_record(Kind::Original, upstream).await?;
        dropped.push((Kind::Original, r));
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
            dropped.push((Kind::Variant, r));
        } else {
            kept.insert(r.hash);
        }
    }
    for (kind, r) in &dropped {
        if let Some(marker) = ref_path(&r.hash, *kind, &r.key) {
            store.delete(&marker).await?;
        }
        if !kept.contains(&r.hash) {
            store.delete_blob(&r.hash).await?;
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

/// Records read for one round of eviction: as Redis samples keys for its approximate LRU
/// (`maxmemory-samples`), the oldest of a small sample goes, so a round costs the same in a
/// mirror of any size.
pub const EVICTION_SAMPLE: usize = 16;

/// Keeps a store's blobs within `max_bytes` (`cache.disk_bytes`), from the counted usage (a
/// recount only when the store was never counted): variants go first, originals only when no
/// variant is left; within each, the oldest (variants by when they were made, originals by
/// when they were last confirmed) of a sample of [`EVICTION_SAMPLE`] records, taken from
/// folders chosen at random. A blob shared by several records goes with the last of them.
pub async fn enforce_budget(store: &dyn MirrorStore, max_bytes: u64) -> io::Result<Eviction> {
    let mut used = match store.counted().await? {
        Some(u) => u.bytes,
        None => store.usage().await?.bytes,
    };
    let mut out = Eviction::default();
    let mut kind = Kind::Variant;
    while used > max_bytes {
        let mut sample = sample(store, kind).await?;
        if sample.is_empty() {
            match kind {
                Kind::Variant => {
                    kind = Kind::Original;
                    continue;
                }
                Kind::Original | Kind::Link => break,
            }
        }
        sample.sort_by_key(|r| match kind {
            Kind::Variant => r.fetched_at,
            Kind::Original | Kind::Link => r.checked_at,
        });
        // The older half of the sample (at least one record) goes this round.
        let take = sample.len().div_ceil(2);
        for r in sample.into_iter().take(take) {
            if used <= max_bytes {
                break;
            }
            used = used.saturating_sub(drop_record(store, kind, &r).await?);
            match kind {
                Kind::Variant => out.variants += 1,
                Kind::Original | Kind::Link => out.originals += 1,
            }
        }
    }
    out.bytes_after = used;
    Ok(out)
}

/// Up to [`EVICTION_SAMPLE`] records of `kind` (originals or variants), from folders visited
/// from a random start.
async fn sample(store: &dyn MirrorStore, kind: Kind) -> io::Result<Vec<Record>> {
    let top = format!("{}/", kind.folder());
    let mut out = Vec::new();
    for shard in shuffled(store.children(&top).await?) {
        let dir = format!("{top}{shard}/");
        for child in shuffled(store.children(&dir).await?) {
            let path = format!("{dir}{child}");
            // A record file (originals; variants of layout 1), or one image's variant folder.
            let paths = match child.ends_with(".json") {
                true => vec![path],
                false => store
                    .list(&format!("{path}/"), None)
                    .await?
                    .into_iter()
                    .map(|l| l.path)
                    .collect(),
            };
            for p in paths {
                if let Some(r) = store.get(&p).await?.and_then(|b| parse_record(&b, None)) {
                    out.push(r);
                }
            }
            if out.len() >= EVICTION_SAMPLE {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Names in order from a random place: sorted, then rotated.
fn shuffled(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    if !names.is_empty() {
        let at = fastrand::usize(..names.len());
        names.rotate_left(at);
    }
    names
}
