//! The only whole-mirror pass (`imgmirror gc`, and the service at most every
//! `cache.gc_interval_secs`): moves the records of layout version 1 to their places, puts back
//! markers that are missing and removes those no record stands behind, deletes blobs no record
//! points at, recounts the blobs into `usage.json`, and drops replica events past their
//! retention. Blobs, markers and events younger than [`GRACE_SECS`] are left alone: a blob is
//! written before its marker and its record, so one written just before the pass listed the
//! records is not garbage.
//!
//! One pass at a time: a pass takes the store's lease (`gc.lease`, a conditional put), so of
//! several replicas whose pass over the bucket is due, one makes it, and a `gc` command beside a
//! service waits its turn.
//!
//! Also here: what a store says about itself when opened ([`open`]): its layout version, and a
//! first count for a mirror that is new.

use std::collections::HashSet;
use std::io;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    events, is_hash, legacy_variant_path, parse_record, record_path, ref_path, refs_dir, Kind,
    MirrorStore, PutMode, Usage,
};

/// The markers' folder of a listed blob's name (a hash).
fn refs_dir_of(hash: &str) -> String {
    refs_dir(hash).unwrap_or_default()
}

/// The file that names the layout's version.
pub const LAYOUT: &str = "layout.json";
/// The file of the last count ([`Snapshot`]).
pub const USAGE: &str = "usage.json";
/// The layout this release writes.
pub const LAYOUT_VERSION: u32 = 2;
/// Unreferenced blobs and stray markers younger than this are kept: a writer puts the blob,
/// then the marker, then the record, within seconds (an S3 write is retried for at most 5 s,
/// an upstream fetch takes at most `upstream.timeout_secs`); an hour is far beyond that.
pub const GRACE_SECS: u64 = 3600;

/// The file of the pass in progress: who holds it, until when (a conditional put takes it).
pub const LEASE: &str = "gc.lease";
/// How long a lease holds: a pass that has not ended by then (its process died) is taken over.
pub const LEASE_SECS: u64 = 6 * 3600;

/// The last count of a store's blobs (`usage.json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Blobs and bytes.
    #[serde(flatten)]
    pub usage: Usage,
    /// When they were counted (Unix seconds): the next pass is due `gc_interval_secs` after.
    pub counted_at: u64,
}

#[derive(Serialize, Deserialize)]
struct LayoutFile {
    version: u32,
}

/// Who holds a store's pass, and until when (`gc.lease`, written with a conditional put: of two
/// replicas whose passes are due at once, one makes it).
#[derive(Serialize, Deserialize)]
struct Lease {
    by: String,
    until: u64,
}

/// Takes the store's lease for a pass at `now`; an error says who holds it.
async fn take_lease(store: &dyn MirrorStore, now: u64) -> io::Result<()> {
    let ours = Lease {
        by: events::replica_id().to_string(),
        until: now.saturating_add(LEASE_SECS),
    };
    let json = Bytes::from(serde_json::to_vec(&ours).map_err(io::Error::other)?);
    if store.put(LEASE, json.clone(), PutMode::Create).await? {
        return Ok(());
    }
    let theirs = store
        .get(LEASE)
        .await?
        .and_then(|b| serde_json::from_slice::<Lease>(&b).ok());
    match theirs {
        Some(l) if l.until > now => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("another gc pass ({}) holds {LEASE} until {}", l.by, l.until),
        )),
        // Expired, or unreadable: its holder is gone.
        _ => store.put(LEASE, json, PutMode::Overwrite).await.map(drop),
    }
}

/// Reads what a store says about itself: its layout (a mirror with records and no
/// `layout.json` is of version 1, read as it is until [`collect`] moves it) and, for a new
/// mirror, writes the layout and a first count (zero). One read for a mirror already in this
/// layout; otherwise the top folders' names are listed (never the records).
pub async fn open(store: &dyn MirrorStore, now: u64) -> io::Result<()> {
    if store.get(LAYOUT).await?.is_some() {
        store.layout().set_legacy(false);
        return Ok(());
    }
    let has_records = !store.children("urls/").await?.is_empty()
        || !store.children("variants/").await?.is_empty();
    if has_records {
        store.layout().set_legacy(true);
        return Ok(());
    }
    if store.children("objects/").await?.is_empty() {
        write_snapshot(
            store,
            Snapshot {
                usage: Usage::default(),
                counted_at: now,
            },
        )
        .await?;
    }
    write_layout(store).await
}

/// The last count, if the store was ever counted.
pub async fn snapshot(store: &dyn MirrorStore) -> io::Result<Option<Snapshot>> {
    Ok(store
        .get(USAGE)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

async fn write_snapshot(store: &dyn MirrorStore, s: Snapshot) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(&s).map_err(io::Error::other)?;
    store
        .put(USAGE, Bytes::from(json), PutMode::Overwrite)
        .await
        .map(drop)
}

async fn write_layout(store: &dyn MirrorStore) -> io::Result<()> {
    let json = serde_json::to_vec(&LayoutFile {
        version: LAYOUT_VERSION,
    })
    .map_err(io::Error::other)?;
    store
        .put(LAYOUT, Bytes::from(json), PutMode::Overwrite)
        .await?;
    store.layout().set_legacy(false);
    Ok(())
}

/// What a pass found and did (with `dry_run`, what it would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `fs` or `s3`.
    pub store: &'static str,
    /// Variant records moved from layout version 1.
    pub moved: u64,
    /// Records seen (originals and variants).
    pub records: u64,
    /// Markers written for records that had none.
    pub markers_added: u64,
    /// Markers deleted: no record stood behind them.
    pub markers_removed: u64,
    /// Blobs deleted: no record pointed at them.
    pub blobs_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Replica events deleted past their retention.
    pub events_deleted: u64,
    /// The blobs kept, counted.
    pub usage: Usage,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// One whole pass over a store (see the module's documentation), at `now` (Unix seconds, the
/// system's clock: blobs' and markers' times are compared with it), under the store's lease
/// (none for a dry run, which writes nothing).
pub async fn collect(store: &dyn MirrorStore, now: u64, dry_run: bool) -> io::Result<Report> {
    if dry_run {
        return pass(store, now, true).await;
    }
    take_lease(store, now).await?;
    let done = pass(store, now, false).await;
    if let Err(e) = store.delete(LEASE).await {
        tracing::warn!(error = %e, "cannot give the gc lease back");
    }
    done
}

async fn pass(store: &dyn MirrorStore, now: u64, dry_run: bool) -> io::Result<Report> {
    let mut report = Report {
        store: store.name(),
        dry_run,
        ..Report::default()
    };
    let old_enough = |modified: u64| modified.saturating_add(GRACE_SECS) <= now;

    // Layout 1: variant records straight under their shard folder move to their image's.
    if store.layout().is_legacy() {
        for listed in store.list("variants/", None).await? {
            if listed.path.matches('/').count() != 2 {
                continue;
            }
            let Some(record) = store
                .get(&listed.path)
                .await?
                .and_then(|b| parse_record(&b, None))
            else {
                continue;
            };
            let to = record_path(Kind::Variant, &record.key);
            if to == listed.path || legacy_variant_path(&record.key) != listed.path {
                continue;
            }
            report.moved += 1;
            if !dry_run {
                // A record already at the new place (written since by this release) is newer.
                let json = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
                store.put(&to, Bytes::from(json), PutMode::Create).await?;
                store.delete(&listed.path).await?;
            }
        }
    }

    // What the records say: the markers there should be, and the blobs in use.
    let mut markers: HashSet<String> = HashSet::new();
    let mut used: HashSet<String> = HashSet::new();
    for kind in [Kind::Original, Kind::Variant] {
        for r in store.records(kind).await? {
            report.records += 1;
            if let Some(m) = ref_path(&r.hash, kind, &r.key) {
                markers.insert(m);
                used.insert(r.hash);
            }
        }
    }
    for listed in store.list("refs/", None).await? {
        if markers.remove(&listed.path) {
            continue;
        }
        if old_enough(listed.modified) {
            report.markers_removed += 1;
            if !dry_run {
                store.delete(&listed.path).await?;
            }
            continue;
        }
        // A young marker: its record may be on its way; its blob is in use.
        if let Some(hash) = listed.path.split('/').nth(2) {
            used.insert(hash.to_string());
        }
    }
    // Those left had no file.
    report.markers_added = markers.len() as u64;
    if !dry_run {
        for m in markers {
            store.put(&m, Bytes::new(), PutMode::Overwrite).await?;
        }
    }

    for listed in store.list("objects/", None).await? {
        let hash = listed.name();
        if !is_hash(hash) {
            continue;
        }
        // Looked at once more just before: a writer puts a blob's marker first.
        let unused = !used.contains(hash)
            && old_enough(listed.modified)
            && !store.has_any(&refs_dir_of(hash)).await?;
        if unused {
            report.blobs_deleted += 1;
            report.bytes_deleted += listed.size;
            if !dry_run {
                store.delete_blob(hash).await?;
            }
            continue;
        }
        report.usage.blobs += 1;
        report.usage.bytes += listed.size;
    }

    report.events_deleted = events::expire(store, now, dry_run).await?;

    if !dry_run {
        write_snapshot(
            store,
            Snapshot {
                usage: report.usage,
                counted_at: now,
            },
        )
        .await?;
        if store.layout().is_legacy() {
            write_layout(store).await?;
        }
    }
    Ok(report)
}
