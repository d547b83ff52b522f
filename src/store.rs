//! The durable mirror: originals (and derived variants) kept on disk so the service answers even
//! after the origin is gone, and across restarts.
//!
//! Layout under `cache.dir` (filesystem backend):
//!
//! ```text
//! objects/ab/cd/abcd…        content-addressed blobs, named by the SHA-256 of their bytes
//! urls/ef/ef01….json         one record per upstream URL (named by the SHA-256 of the URL):
//!                            content hash, sniffed type, upstream validators, fetch/check times
//! variants/12/1234….json     one record per derived image (named by the SHA-256 of its key)
//! ```
//!
//! Every write is atomic (temporary file in the target folder, fsync, rename), blobs before the
//! records that point at them, so a crash leaves no partial file and no dangling record. Blobs are
//! checked against their hash when read; a corrupt one counts as missing.
//!
//! The [`MirrorStore`] trait is what the server uses, so another backend (S3) can stand beside
//! [`FsStore`].

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the mirror knows about one upstream URL (or one variant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The upstream URL (or, for a variant, its cache key).
    pub key: String,
    /// SHA-256 (hex) of the bytes.
    pub hash: String,
    /// Content type sniffed from the bytes.
    pub content_type: String,
    pub size: u64,
    /// The upstream's validators, for revalidation.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// When the bytes were fetched (Unix seconds).
    pub fetched_at: u64,
    /// When the upstream last confirmed (or failed to refute) the copy (Unix seconds).
    pub checked_at: u64,
    /// For a variant: the content hash of the original it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The mirror as the server sees it.
pub trait MirrorStore: Send + Sync {
    /// The record of an original, if mirrored.
    fn original<'a>(&'a self, url: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>>;
    /// The record of a derived variant, if stored.
    fn variant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>>;
    /// The bytes of a blob; `None` when missing or corrupt.
    fn blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>>;
    /// Stores the bytes (if new) and then the record of an original.
    fn put_original<'a>(
        &'a self,
        record: &'a Record,
        bytes: &'a Bytes,
    ) -> BoxFuture<'a, io::Result<()>>;
    /// Stores the bytes (if new) and then the record of a variant.
    fn put_variant<'a>(
        &'a self,
        record: &'a Record,
        bytes: &'a Bytes,
    ) -> BoxFuture<'a, io::Result<()>>;
    /// Rewrites an original's record (after a revalidation).
    fn update_original<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, io::Result<()>>;
    /// Proves the store can be written to now (for `/readyz`).
    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>>;
}

/// SHA-256 hex of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The filesystem backend.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: Arc<PathBuf>,
}

impl FsStore {
    /// Opens (creating if needed) the mirror folder.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        for sub in ["objects", "urls", "variants"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(FsStore {
            root: Arc::new(root.to_path_buf()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, hash: &str) -> Option<PathBuf> {
        // Hashes come from our own records; refuse anything that is not plain hex anyway.
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(
            self.root
                .join("objects")
                .join(&hash[..2])
                .join(&hash[2..4])
                .join(hash),
        )
    }

    fn record_path(&self, kind: &str, key: &str) -> PathBuf {
        let h = sha256_hex(key.as_bytes());
        self.root.join(kind).join(&h[..2]).join(format!("{h}.json"))
    }

    fn read_record(&self, kind: &str, key: &str) -> io::Result<Option<Record>> {
        let path = self.record_path(kind, key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // A record that does not parse, or belongs to another key, is treated as absent.
        Ok(serde_json::from_slice::<Record>(&bytes)
            .ok()
            .filter(|r| r.key == key))
    }

    /// Every readable record of a kind (`urls` or `variants`) with its file; unreadable ones are
    /// skipped (they read as absent everywhere else too).
    fn all_records(&self, kind: &str) -> Vec<(PathBuf, Record)> {
        walkdir::WalkDir::new(self.root.join(kind))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json")
            })
            .filter_map(|e| {
                let r = serde_json::from_slice::<Record>(&fs::read(e.path()).ok()?).ok()?;
                Some((e.path().to_path_buf(), r))
            })
            .collect()
    }

    /// (blobs, bytes) in the mirror now.
    pub fn usage(&self) -> (u64, u64) {
        walkdir::WalkDir::new(self.root.join("objects"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| e.metadata().ok())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
    }

    fn read_blob(&self, hash: &str) -> io::Result<Option<Bytes>> {
        let Some(path) = self.blob_path(hash) else {
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
            .blob_path(hash)
            .ok_or_else(|| io::Error::other("bad content hash"))?;
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    fn write_record(&self, kind: &str, record: &Record) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&self.record_path(kind, &record.key), &json)
    }

    fn put(&self, kind: &str, record: &Record, bytes: &[u8]) -> io::Result<()> {
        self.write_blob(&record.hash, bytes)?;
        self.write_record(kind, record)
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

impl MirrorStore for FsStore {
    fn original<'a>(&'a self, url: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>> {
        let url = url.to_string();
        self.blocking(move |s| s.read_record("urls", &url))
    }

    fn variant<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>> {
        let key = key.to_string();
        self.blocking(move |s| s.read_record("variants", &key))
    }

    fn blob<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, io::Result<Option<Bytes>>> {
        let hash = hash.to_string();
        self.blocking(move |s| s.read_blob(&hash))
    }

    fn put_original<'a>(
        &'a self,
        record: &'a Record,
        bytes: &'a Bytes,
    ) -> BoxFuture<'a, io::Result<()>> {
        let (record, bytes) = (record.clone(), bytes.clone());
        self.blocking(move |s| s.put("urls", &record, &bytes))
    }

    fn put_variant<'a>(
        &'a self,
        record: &'a Record,
        bytes: &'a Bytes,
    ) -> BoxFuture<'a, io::Result<()>> {
        let (record, bytes) = (record.clone(), bytes.clone());
        self.blocking(move |s| s.put("variants", &record, &bytes))
    }

    fn update_original<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, io::Result<()>> {
        let record = record.clone();
        self.blocking(move |s| s.write_record("urls", &record))
    }

    fn check_writable(&self) -> BoxFuture<'_, io::Result<()>> {
        self.blocking(|s| {
            let mut f = tempfile::Builder::new()
                .prefix(".readyz-")
                .tempfile_in(s.root.as_path())?;
            io::Write::write_all(&mut f, b"ok")?;
            f.as_file().sync_all()
        })
    }
}

/// What `imgmirror export` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ExportReport {
    /// Files written (originals and variants).
    pub written: usize,
    /// Records not exported, with why.
    pub skipped: Vec<(String, String)>,
}

impl FsStore {
    /// Writes every mirrored original (and, with `variants`, every stored variant) under `dir` at
    /// the path of its route, so a static file server answers the same URLs. Signed routes are
    /// written with their signature when `key` is given.
    pub fn export(
        &self,
        dir: &Path,
        key: Option<&crate::route::SigningKey>,
        variants: bool,
    ) -> ExportReport {
        use crate::route::{decode, encode, Options};
        let mut report = ExportReport::default();
        let kinds: &[&str] = if variants {
            &["urls", "variants"]
        } else {
            &["urls"]
        };
        for kind in kinds {
            let mut records: Vec<Record> =
                self.all_records(kind).into_iter().map(|(_, r)| r).collect();
            records.sort_by(|a, b| a.key.cmp(&b.key));
            for r in records {
                let route = if *kind == "urls" {
                    encode(&r.key, &Options::default(), key)
                } else if r.key.contains('#') {
                    report
                        .skipped
                        .push((r.key, "depends on Accept negotiation".into()));
                    continue;
                } else {
                    decode(&r.key, None).and_then(|d| encode(&d.upstream, &d.options, key))
                };
                let route = match route {
                    Ok(route) if !route.ends_with('/') => route,
                    Ok(_) => {
                        report
                            .skipped
                            .push((r.key, "the URL ends in / (a folder, not a file)".into()));
                        continue;
                    }
                    Err(e) => {
                        report.skipped.push((r.key, e.to_string()));
                        continue;
                    }
                };
                let bytes = match self.read_blob(&r.hash) {
                    Ok(Some(b)) => b,
                    _ => {
                        report
                            .skipped
                            .push((r.key, "bytes missing or corrupt in the mirror".into()));
                        continue;
                    }
                };
                match write_atomic(&dir.join(route.trim_start_matches('/')), &bytes) {
                    Ok(()) => report.written += 1,
                    Err(e) => report.skipped.push((r.key, format!("cannot write: {e}"))),
                }
            }
        }
        report
    }
}

impl FsStore {
    /// Drops an upstream URL's original and every variant made from it; blobs no other record
    /// uses are deleted. Returns how many records were dropped.
    pub fn purge(&self, upstream: &str) -> io::Result<usize> {
        let mut dropped = Vec::new();
        let path = self.record_path("urls", upstream);
        if let Some(r) = self.read_record("urls", upstream)? {
            fs::remove_file(&path)?;
            dropped.push(r.hash);
        }
        let mut kept_hashes = std::collections::HashSet::new();
        for kind in ["urls", "variants"] {
            for (path, r) in self.all_records(kind) {
                let of_upstream = kind == "variants"
                    && crate::route::decode(r.key.split('#').next().unwrap_or_default(), None)
                        .is_ok_and(|d| d.upstream == upstream);
                if of_upstream {
                    fs::remove_file(&path)?;
                    dropped.push(r.hash);
                } else {
                    kept_hashes.insert(r.hash);
                }
            }
        }
        for h in &dropped {
            if !kept_hashes.contains(h) {
                if let Some(p) = self.blob_path(h) {
                    let _ = fs::remove_file(p);
                }
            }
        }
        Ok(dropped.len())
    }
}

/// What one pass of [`FsStore::enforce_budget`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    pub variants: usize,
    pub originals: usize,
    /// Bytes of blobs in the mirror afterwards.
    pub bytes_after: u64,
}

impl FsStore {
    /// Keeps the mirror's blobs within `max_bytes` (`cache.disk_bytes`): variants go first (oldest
    /// first), originals only when variants are not enough (least recently confirmed first). A blob
    /// shared by several records goes with the last of them.
    pub fn enforce_budget(&self, max_bytes: u64) -> io::Result<Eviction> {
        let mut records: Vec<(bool, PathBuf, Record)> = Vec::new();
        for (kind, is_variant) in [("variants", true), ("urls", false)] {
            records.extend(
                self.all_records(kind)
                    .into_iter()
                    .map(|(p, r)| (is_variant, p, r)),
            );
        }
        let mut refs: std::collections::HashMap<String, (u64, usize)> =
            std::collections::HashMap::new();
        for (_, _, r) in &records {
            refs.entry(r.hash.clone()).or_insert((r.size, 0)).1 += 1;
        }
        let mut total: u64 = refs.values().map(|(size, _)| size).sum();
        let mut out = Eviction::default();
        // Variants before originals; within each, the oldest first.
        records.sort_by_key(|(is_variant, _, r)| {
            (
                !*is_variant,
                if *is_variant {
                    r.fetched_at
                } else {
                    r.checked_at
                },
            )
        });
        for (is_variant, path, r) in records {
            if total <= max_bytes {
                break;
            }
            fs::remove_file(&path)?;
            if is_variant {
                out.variants += 1;
            } else {
                out.originals += 1;
            }
            if let Some(entry) = refs.get_mut(&r.hash) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    if let Some(p) = self.blob_path(&r.hash) {
                        let _ = fs::remove_file(p);
                    }
                    total = total.saturating_sub(entry.0);
                }
            }
        }
        out.bytes_after = total;
        Ok(out)
    }
}

/// Writes a file atomically: temporary file in the same folder, fsync, rename; the folder is
/// created when missing and an existing target's permissions are kept. A failure removes the
/// temporary file and leaves the target untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let staged = stage_chunks(path, [Ok(bytes)])?;
    staged.tmp.as_file().sync_all()?;
    staged.tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A file written under a temporary name next to its target: neither durable nor visible yet.
/// Dropping it deletes the temporary file. [`commit`] makes a batch of them durable and visible.
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl Staged {
    pub fn target(&self) -> &Path {
        &self.target
    }
}

/// Stages `bytes` for `path`.
pub fn stage(path: &Path, bytes: &[u8]) -> io::Result<Staged> {
    stage_chunks(path, [Ok(bytes)])
}

/// [`stage`] from chunks; an `Err` chunk aborts (tests inject write failures this way) and the
/// temporary file is removed.
pub fn stage_chunks<'a>(
    path: &Path,
    chunks: impl IntoIterator<Item = io::Result<&'a [u8]>>,
) -> io::Result<Staged> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgmirror-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    for chunk in chunks {
        io::Write::write_all(&mut tmp, chunk?)?;
    }
    if let Ok(meta) = fs::metadata(path) {
        fs::set_permissions(tmp.path(), meta.permissions())?;
    }
    Ok(Staged {
        tmp,
        target: path.to_path_buf(),
    })
}

/// Makes staged files durable, then renames each over its target, then makes the renames durable.
/// On Linux one `syncfs` per filesystem replaces an fsync per file (the same guarantee: no target
/// is replaced before its new bytes are on disk), which is what makes batches of thousands of posts
/// fast. `still_there(target)` is asked just before each rename (in-place rewrites must not
/// resurrect a post deleted meanwhile). Returns one result per staged file, in order.
pub fn commit(staged: Vec<Staged>, still_there: impl Fn(&Path) -> bool) -> Vec<io::Result<()>> {
    let synced = sync_filesystems(staged.iter().map(|s| s.tmp.as_file()));
    // One open folder per filesystem, to make the renames durable afterwards.
    let mut folders: Vec<fs::File> = Vec::new();
    for s in &staged {
        if let Some(dir) = s.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if folders.len() < 64 && !same_filesystem(&folders, dir) {
                if let Ok(f) = fs::File::open(dir) {
                    folders.push(f);
                }
            }
        }
    }
    let mut results = Vec::with_capacity(staged.len());
    for s in staged {
        let r = (|| {
            if let Err(e) = &synced {
                // The batch sync failed: fall back to this file's own fsync.
                tracing::debug!(error = %e, "filesystem sync failed; fsyncing files one by one");
                s.tmp.as_file().sync_all()?;
            }
            if !still_there(&s.target) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "disappeared during the run: not recreated",
                ));
            }
            s.tmp.persist(&s.target).map(|_| ()).map_err(|e| e.error)
        })();
        results.push(r);
    }
    if let Err(e) = sync_filesystems(folders.iter()) {
        tracing::debug!(error = %e, "cannot sync after renaming");
    }
    results
}

/// True when `dir` lives on the filesystem of one of `open`.
fn same_filesystem(open: &[fs::File], dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(dev) = fs::metadata(dir).map(|m| m.dev()) else {
            return true; // unreadable: nothing to open anyway
        };
        open.iter()
            .any(|f| f.metadata().is_ok_and(|m| m.dev() == dev))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        !open.is_empty()
    }
}

/// Flushes every filesystem holding one of `files`.
#[cfg(target_os = "linux")]
fn sync_filesystems<'a>(files: impl Iterator<Item = &'a fs::File>) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let mut seen = std::collections::HashSet::new();
    for f in files {
        if seen.insert(f.metadata()?.dev()) {
            // SAFETY: syncfs takes a valid open descriptor, which `f` keeps open for the call.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystems<'a>(files: impl Iterator<Item = &'a fs::File>) -> io::Result<()> {
    for f in files {
        f.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let bytes = Bytes::from_static(b"\x89PNG\r\n\x1a\nrest");
        let record = Record {
            key: "http://a/b.png".into(),
            hash: sha256_hex(&bytes),
            content_type: "image/png".into(),
            size: bytes.len() as u64,
            etag: Some("\"e\"".into()),
            last_modified: None,
            fetched_at: 1,
            checked_at: 1,
            source: None,
        };
        store.put_original(&record, &bytes).await.unwrap();
        assert_eq!(
            store.original("http://a/b.png").await.unwrap(),
            Some(record.clone())
        );
        assert_eq!(store.blob(&record.hash).await.unwrap(), Some(bytes));
        assert_eq!(store.original("http://a/c.png").await.unwrap(), None);
        // A corrupted blob reads as missing.
        fs::write(store.blob_path(&record.hash).unwrap(), b"garbage").unwrap();
        assert_eq!(store.blob(&record.hash).await.unwrap(), None);
        assert_eq!(store.blob("../../etc/passwd").await.unwrap(), None);
        store.check_writable().await.unwrap();
    }

    #[tokio::test]
    async fn the_disk_budget_evicts_variants_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let rec = |key: &str, bytes: &Bytes, at: u64, source: Option<&str>| Record {
            key: key.into(),
            hash: sha256_hex(bytes),
            content_type: "image/jpeg".into(),
            size: bytes.len() as u64,
            etag: None,
            last_modified: None,
            fetched_at: at,
            checked_at: at,
            source: source.map(String::from),
        };
        let (o1, o2) = (Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 1000]));
        let (v1, v2) = (Bytes::from(vec![3u8; 100]), Bytes::from(vec![4u8; 100]));
        store
            .put_original(&rec("http://a/1.jpg", &o1, 10, None), &o1)
            .await
            .unwrap();
        store
            .put_original(&rec("http://a/2.jpg", &o2, 20, None), &o2)
            .await
            .unwrap();
        store
            .put_variant(&rec("/i/w10/http/a/1.jpg", &v1, 30, Some("x")), &v1)
            .await
            .unwrap();
        store
            .put_variant(&rec("/i/w20/http/a/1.jpg", &v2, 40, Some("x")), &v2)
            .await
            .unwrap();
        // Under budget: nothing goes.
        assert_eq!(
            store.enforce_budget(2200).unwrap(),
            Eviction {
                variants: 0,
                originals: 0,
                bytes_after: 2200
            }
        );
        // 2100 allowed: the older variant is enough.
        assert_eq!(
            store.enforce_budget(2100).unwrap(),
            Eviction {
                variants: 1,
                originals: 0,
                bytes_after: 2100
            }
        );
        assert!(store
            .variant("/i/w10/http/a/1.jpg")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .variant("/i/w20/http/a/1.jpg")
            .await
            .unwrap()
            .is_some());
        // 1500: the other variant, then the older original.
        assert_eq!(
            store.enforce_budget(1500).unwrap(),
            Eviction {
                variants: 1,
                originals: 1,
                bytes_after: 1000
            }
        );
        assert!(store.original("http://a/1.jpg").await.unwrap().is_none());
        assert!(store.original("http://a/2.jpg").await.unwrap().is_some());
        assert_eq!(store.blob(&sha256_hex(&o1)).await.unwrap(), None);
    }
}
