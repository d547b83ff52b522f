//! The filesystem backend: the mirror under `cache.dir` (the whole mirror with
//! `cache.store = "fs"`, the local disk tier in front of S3 otherwise).
//!
//! Every write is atomic ([`crate::fsutil::write_atomic`]: temporary file in the target folder,
//! fsync, rename), so a crash leaves no partial file; blocking file work runs off the reactor.
//! A folder of one image's variants or of one blob's markers is removed with its last file.
//!
//! Usage is counted as it changes ([`FsStore::counted_usage`]): `usage.json` holds the last
//! count (`gc` writes it), each process adds what it wrote or deleted since as a small file in
//! `usage.d/` ([`FsStore::flush_usage`]), and the service folds those into `usage.json` every
//! minute ([`FsStore::fold_usage`]). Nothing here walks the mirror but [`MirrorStore::list`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use super::{
    blob_path, gc::Snapshot, parse_record, sha256_hex, BoxFuture, Kind, Layout, Listed,
    MirrorStore, PutMode, Record, Usage,
};
use crate::fsutil::{write_atomic, PRIVATE};

/// The folder of the usage changes not yet folded into `usage.json`.
const USAGE_CHANGES: &str = "usage.d";
/// The file a running service keeps in the mirror ([`FsStore::mark_running`]).
const RUNNING: &str = ".running";

/// What this process changed in the blobs since its last [`FsStore::flush_usage`], and what it
/// read.
#[derive(Debug, Default)]
struct Counters {
    blobs: AtomicI64,
    bytes: AtomicI64,
    /// Record files read (`*.json` under a record folder): the scale tests' measure.
    records_read: AtomicU64,
}

/// The filesystem backend.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: Arc<PathBuf>,
    layout: Arc<Layout>,
    counters: Arc<Counters>,
}

impl FsStore {
    /// Opens (creating if needed) the mirror folder, sweeping the temporary files a crashed
    /// process left at its top (those deeper are `gc`'s: nothing walks the mirror at start).
    pub fn open(root: &Path) -> io::Result<FsStore> {
        for sub in ["objects", "urls", "variants", "links"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let swept = crate::fsutil::sweep(root, false);
        if swept > 0 {
            tracing::info!(swept, dir = %root.display(), "removed temporary files left by a crash");
        }
        Ok(FsStore {
            root: Arc::new(root.to_path_buf()),
            layout: Arc::default(),
            counters: Arc::default(),
        })
    }

    /// The mirror's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (`None` for a malformed hash: hashes come from records, but a record
    /// is outside data once it is on disk).
    pub fn blob_file(&self, hash: &str) -> Option<PathBuf> {
        blob_path(hash).map(|p| self.root.join(p))
    }

    /// Notes that a service runs on this mirror (a file with its pid), and says whether the
    /// previous one stopped without [`FsStore::mark_stopped`] (killed, crashed): what it was
    /// writing may have left temporary files, and the changes it had not recorded are missing
    /// from the count, so a `gc` pass is due at once.
    pub fn mark_running(&self) -> io::Result<bool> {
        let path = self.root.join(RUNNING);
        let unclean = path.exists();
        write_atomic(&path, std::process::id().to_string().as_bytes(), PRIVATE)?;
        Ok(unclean)
    }

    /// Notes that the service stopped cleanly (its usage recorded).
    pub fn mark_stopped(&self) {
        let _ = fs::remove_file(self.root.join(RUNNING));
    }

    /// Record files read since the store was opened.
    pub fn records_read(&self) -> u64 {
        self.counters.records_read.load(Ordering::Relaxed)
    }

    /// The path of a relative name, refused when it could leave the root.
    fn file(&self, relative: &str) -> io::Result<PathBuf> {
        let bad = relative.is_empty()
            || relative.starts_with('/')
            || relative.split('/').any(|p| p == ".." || p == ".");
        if bad {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a mirror path: {relative:?}"),
            ));
        }
        Ok(self.root.join(relative))
    }

    fn read(&self, relative: &str) -> io::Result<Option<Bytes>> {
        let path = self.file(relative)?;
        let is_record = ["urls/", "variants/", "links/"]
            .iter()
            .any(|f| relative.starts_with(f));
        if is_record {
            self.counters.records_read.fetch_add(1, Ordering::Relaxed);
        }
        match fs::read(path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&self, relative: &str, bytes: &[u8], mode: PutMode) -> io::Result<bool> {
        let path = self.file(relative)?;
        let once = || match mode {
            PutMode::Overwrite => write_atomic(&path, bytes, PRIVATE).map(|()| true),
            PutMode::Create => crate::fsutil::write_new(&path, bytes, PRIVATE),
        };
        // A folder emptied (and removed) by a concurrent delete between making it and writing
        // in it: once more.
        match once() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => once(),
            done => done,
        }
    }

    fn remove(&self, relative: &str) -> io::Result<()> {
        let path = self.file(relative)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // The folder of one image's variants or one blob's markers goes with its last file
        // (`variants/ef/ef01…/x.json`, `refs/ab/abcd…/o-…`); a folder not empty stays.
        let depth = relative.matches('/').count();
        if depth == 3 && (relative.starts_with("variants/") || relative.starts_with("refs/")) {
            if let Some(parent) = path.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    fn walk(&self, dir: &str, after: Option<&str>) -> io::Result<Vec<Listed>> {
        let base = self.file(dir.trim_end_matches('/'))?;
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(&base).into_iter() {
            let e = match e {
                Ok(e) => e,
                Err(e) if e.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound) => {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            // Temporary files (`.imgmirror-…`) and probes are nobody's objects.
            if !e.file_type().is_file() || e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(relative) = e.path().strip_prefix(self.root.as_path()) else {
                continue;
            };
            let Some(path) = relative.to_str().map(str::to_string) else {
                continue;
            };
            if after.is_some_and(|a| path.as_str() <= a) {
                continue;
            }
            let meta = e.metadata()?;
            out.push(Listed {
                path,
                size: meta.len(),
                modified: unix_secs(&meta),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_blob(&self, hash: &str) -> io::Result<Option<Bytes>> {
        let Some(path) = self.blob_file(hash) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(b) if sha256_hex(&b) == hash => Ok(Some(Bytes::from(b))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_blob(&self, hash: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self
            .blob_file(hash)
            .ok_or_else(|| io::Error::other("bad content hash"))?;
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Counted only by the writer that created it (two first writes of one image
                // at once make one file).
                if crate::fsutil::write_new(&path, bytes, PRIVATE)? {
                    self.count(1, bytes.len() as i64);
                }
                Ok(())
            }
            Err(e) => Err(e),
            // Already there and whole: its time is renewed, so that `gc`'s grace period
            // protects it as a new blob (it may have been an orphan a record now uses).
            Ok(_) if self.read_blob(hash)?.is_some() => fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now())),
            // Its bytes no longer match its name (corrupted behind our back): replaced
            // atomically, the mirror heals itself.
            Ok(old) => {
                write_atomic(&path, bytes, PRIVATE)?;
                self.count(0, bytes.len() as i64 - old.len() as i64);
                Ok(())
            }
        }
    }

    fn remove_blob(&self, hash: &str) -> io::Result<()> {
        let Some(path) = self.blob_file(hash) else {
            return Ok(());
        };
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                self.count(-1, -(size as i64));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn count(&self, blobs: i64, bytes: i64) {
        self.counters.blobs.fetch_add(blobs, Ordering::Relaxed);
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Writes what this process changed in the blobs since the last flush to `usage.d/`, for
    /// the service's count (a command that wrote to the mirror calls it before it exits).
    pub fn flush_usage(&self) -> io::Result<()> {
        let blobs = self.counters.blobs.swap(0, Ordering::Relaxed);
        let bytes = self.counters.bytes.swap(0, Ordering::Relaxed);
        if blobs == 0 && bytes == 0 {
            return Ok(());
        }
        let change = Change { blobs, bytes };
        let name = format!(
            "{USAGE_CHANGES}/{}-{:016x}.json",
            std::process::id(),
            fastrand::u64(..)
        );
        let json = serde_json::to_vec(&change).map_err(io::Error::other)?;
        self.write(&name, &json, PutMode::Overwrite)
            .map(drop)
            .inspect_err(|_| {
                // Not written: kept for the next flush.
                self.count(blobs, bytes);
            })
    }

    /// The blobs as counted: the last `gc` count, plus every change recorded since. `None` when
    /// the mirror was never counted (a `gc` pass counts it).
    pub fn counted_usage(&self) -> io::Result<Option<Usage>> {
        let Some(snapshot) = self.snapshot()? else {
            return Ok(None);
        };
        let (changes, _) = self.changes()?;
        let unflushed = Change {
            blobs: self.counters.blobs.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
        };
        Ok(Some(apply(snapshot.usage, [changes, unflushed])))
    }

    /// Folds the recorded changes into `usage.json` (the service, every minute) and returns
    /// the count, as [`FsStore::counted_usage`].
    pub fn fold_usage(&self) -> io::Result<Option<Usage>> {
        self.flush_usage()?;
        let Some(mut snapshot) = self.snapshot()? else {
            return Ok(None);
        };
        let (changes, files) = self.changes()?;
        if files.is_empty() {
            return Ok(Some(snapshot.usage));
        }
        snapshot.usage = apply(snapshot.usage, [changes]);
        let json = serde_json::to_vec_pretty(&snapshot).map_err(io::Error::other)?;
        self.write(super::gc::USAGE, &json, PutMode::Overwrite)?;
        for f in files {
            let _ = fs::remove_file(f);
        }
        Ok(Some(snapshot.usage))
    }

    /// This process's changes not written to `usage.d/` yet.
    pub(super) fn unflushed(&self) -> Change {
        Change {
            blobs: self.counters.blobs.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
        }
    }

    /// Forgets what a recount included (`gc` wrote a new `usage.json`): the change files listed
    /// and this process's changes as they were (`before`), both taken before the recount
    /// started. What changed while it ran stays counted: a blob written then may be counted
    /// twice until the next pass, never missed.
    pub(super) fn clear_changes(&self, files: Vec<PathBuf>, before: Change) {
        self.count(-before.blobs, -before.bytes);
        for f in files {
            let _ = fs::remove_file(f);
        }
    }

    fn snapshot(&self) -> io::Result<Option<Snapshot>> {
        Ok(self
            .read(super::gc::USAGE)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// The changes recorded in `usage.d/`, summed, and their files.
    pub(super) fn changes(&self) -> io::Result<(Change, Vec<PathBuf>)> {
        let mut sum = Change::default();
        let mut files = Vec::new();
        let entries = match fs::read_dir(self.root.join(USAGE_CHANGES)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((sum, files)),
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let change = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Change>(&b).ok());
            if let Some(c) = change {
                sum.blobs = sum.blobs.saturating_add(c.blobs);
                sum.bytes = sum.bytes.saturating_add(c.bytes);
                files.push(e.path());
            }
        }
        Ok((sum, files))
    }

    /// Records the links of `urls` not recorded yet, all made durable with one filesystem sync
    /// (a rewrite of ten thousand posts records tens of thousands of links). Returns how many
    /// were new.
    pub async fn put_links(&self, urls: Vec<String>, now: u64) -> io::Result<usize> {
        self.blocking(move |s| {
            let mut staged = Vec::new();
            for url in &urls {
                let path = s.root.join(super::record_path(Kind::Link, url));
                if path.exists() {
                    continue;
                }
                let json =
                    serde_json::to_vec_pretty(&Record::link(url, now)).map_err(io::Error::other)?;
                staged.push(crate::fsutil::stage(&path, &json, PRIVATE)?);
            }
            let results = crate::fsutil::commit(staged, |_| true);
            let new = results.len();
            results.into_iter().collect::<io::Result<()>>()?;
            Ok(new)
        })
        .await
    }

    /// Runs blocking file work off the async reactor.
    fn blocking<'a, T: Send + 'static>(
        &'a self,
        f: impl FnOnce(FsStore) -> io::Result<T> + Send + 'static,
    ) -> BoxFuture<'a, io::Result<T>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(this))
                .await
                .map_err(|e| io::Error::other(format!("store task failed: {e}")))?
        })
    }
}

/// A change in blobs and bytes (one file of `usage.d/`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Change {
    blobs: i64,
    bytes: i64,
}

/// A count with changes applied (never below zero: a count that drifted is `gc`'s to fix).
fn apply(usage: Usage, changes: impl IntoIterator<Item = Change>) -> Usage {
    let (mut blobs, mut bytes) = (usage.blobs as i64, usage.bytes as i64);
    for c in changes {
        blobs = blobs.saturating_add(c.blobs);
        bytes = bytes.saturating_add(c.bytes);
    }
    Usage {
        blobs: u64::try_from(blobs).unwrap_or(0),
        bytes: u64::try_from(bytes).unwrap_or(0),
    }
}

fn unix_secs(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

impl MirrorStore for FsStore {
    fn name(&self) -> &'static str {
        "fs"
    }

    fn get<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>> {
        let path = path.to_string();
        self.blocking(move |s| s.read(&path))
    }

    fn put<'a>(
        &'a self,
        path: &'a str,
        bytes: Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>> {
        let path = path.to_string();
        self.blocking(move |s| s.write(&path, &bytes, mode))
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let path = path.to_string();
        self.blocking(move |s| s.remove(&path))
    }

    fn list<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
    ) -> BoxFuture<'a, io::Result<Vec<Listed>>> {
        let (dir, after) = (dir.to_string(), after.map(str::to_string));
        self.blocking(move |s| s.walk(&dir, after.as_deref()))
    }

    fn has_any<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        let dir = dir.to_string();
        self.blocking(
            move |s| match fs::read_dir(s.file(dir.trim_end_matches('/'))?) {
                Ok(mut entries) => Ok(entries.next().is_some()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        )
    }

    fn children<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, io::Result<Vec<String>>> {
        let dir = dir.to_string();
        self.blocking(move |s| {
            let entries = match fs::read_dir(s.file(dir.trim_end_matches('/'))?) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            Ok(entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect())
        })
    }

    fn records(&self, kind: Kind) -> BoxFuture<'_, io::Result<Vec<Record>>> {
        // One blocking walk that reads as it goes (a task per record would cost more than the
        // read).
        self.blocking(move |s| {
            let listed = s.walk(&format!("{}/", kind.folder()), None)?;
            let mut out = Vec::new();
            for l in listed.iter().filter(|l| l.path.ends_with(".json")) {
                // A record that cannot be read is an error, not an absence: `gc` decides from
                // this list which blobs nobody uses.
                if let Some(r) = s.read(&l.path)?.and_then(|b| parse_record(&b, None)) {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }

    fn blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>> {
        let hash = hash.to_string();
        self.blocking(move |s| s.read_blob(&hash))
    }

    fn put_blob<'a>(&'a self, hash: &'a str, bytes: &'a Bytes) -> BoxFuture<'a, io::Result<()>> {
        let (hash, bytes) = (hash.to_string(), bytes.clone());
        self.blocking(move |s| s.write_blob(&hash, &bytes))
    }

    fn delete_blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let hash = hash.to_string();
        self.blocking(move |s| s.remove_blob(&hash))
    }

    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>> {
        self.blocking(|s| {
            let mut f = tempfile::Builder::new()
                .prefix(".readyz-")
                .tempfile_in(s.root.as_path())?;
            // A real write of a few KiB, synced: a full disk or a read-only mount fails here.
            io::Write::write_all(&mut f, &[0u8; 4096])?;
            f.as_file().sync_all()
        })
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn counted(&self) -> BoxFuture<'_, io::Result<Option<Usage>>> {
        self.blocking(|s| s.counted_usage())
    }
}
