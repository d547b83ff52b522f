//! The filesystem backend: the mirror under `cache.dir` (the whole mirror with
//! `cache.store = "fs"`, the local disk tier in front of S3 otherwise).
//!
//! Every write is atomic ([`crate::fsutil::write_atomic`]: temporary file in the target folder,
//! fsync, rename), so a crash leaves no partial file; blocking file work runs off the reactor.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{
    blob_path, parse_record, record_path, sha256_hex, BoxFuture, Kind, MirrorStore, PutMode,
    Record, Usage,
};
use crate::fsutil::{write_atomic, PRIVATE};

/// The filesystem backend.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: Arc<PathBuf>,
}

impl FsStore {
    /// Opens (creating if needed) the mirror folder, sweeping the temporary files a crashed
    /// process left in it.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        for sub in ["objects", "urls", "variants", "links"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let swept = crate::fsutil::sweep(root, true);
        if swept > 0 {
            tracing::info!(swept, dir = %root.display(), "removed temporary files left by a crash");
        }
        Ok(FsStore {
            root: Arc::new(root.to_path_buf()),
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

    fn record_file(&self, kind: Kind, key: &str) -> PathBuf {
        self.root.join(record_path(kind, key))
    }

    fn read_record(&self, kind: Kind, key: &str) -> io::Result<Option<Record>> {
        match fs::read(self.record_file(kind, key)) {
            Ok(b) => Ok(parse_record(&b, Some(key))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_record(&self, kind: Kind, record: &Record, mode: PutMode) -> io::Result<bool> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let path = self.record_file(kind, &record.key);
        match mode {
            PutMode::Overwrite => write_atomic(&path, &json, PRIVATE).map(|()| true),
            PutMode::Create => crate::fsutil::write_new(&path, &json, PRIVATE),
        }
    }

    /// Records the links of `urls` not recorded yet, all made durable with one filesystem sync
    /// (a rewrite of ten thousand posts records tens of thousands of links). Returns how many
    /// were new.
    pub async fn put_links(&self, urls: Vec<String>, now: u64) -> io::Result<usize> {
        self.blocking(move |s| {
            let mut staged = Vec::new();
            for url in &urls {
                let path = s.record_file(Kind::Link, url);
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

    fn all_records(&self, kind: Kind) -> Vec<Record> {
        walkdir::WalkDir::new(self.root.join(kind.folder()))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json")
            })
            .filter_map(|e| parse_record(&fs::read(e.path()).ok()?, None))
            .collect()
    }

    fn scan_usage(&self) -> Usage {
        walkdir::WalkDir::new(self.root.join("objects"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| e.metadata().ok())
            .fold(Usage::default(), |u, m| Usage {
                blobs: u.blobs + 1,
                bytes: u.bytes + m.len(),
            })
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
        // Already there and whole: nothing to do. A blob whose bytes no longer match its name
        // (corrupted behind our back) is replaced atomically: the mirror heals itself.
        if self.read_blob(hash)?.is_some() {
            return Ok(());
        }
        write_atomic(&path, bytes, PRIVATE)
    }

    fn remove(path: Option<PathBuf>) -> io::Result<()> {
        match path.map(fs::remove_file) {
            Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
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
    fn name(&self) -> &'static str {
        "fs"
    }

    fn record<'a>(&'a self, kind: Kind, key: &'a str) -> BoxFuture<'a, io::Result<Option<Record>>> {
        let key = key.to_string();
        self.blocking(move |s| s.read_record(kind, &key))
    }

    fn put_record<'a>(
        &'a self,
        kind: Kind,
        record: &'a Record,
        mode: PutMode,
    ) -> BoxFuture<'a, io::Result<bool>> {
        let record = record.clone();
        self.blocking(move |s| s.write_record(kind, &record, mode))
    }

    fn delete_record<'a>(&'a self, kind: Kind, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        let key = key.to_string();
        self.blocking(move |s| FsStore::remove(Some(s.record_file(kind, &key))))
    }

    fn records(&self, kind: Kind) -> BoxFuture<'_, io::Result<Vec<Record>>> {
        self.blocking(move |s| Ok(s.all_records(kind)))
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
        self.blocking(move |s| FsStore::remove(s.blob_file(&hash)))
    }

    fn usage(&self) -> BoxFuture<'_, io::Result<Usage>> {
        self.blocking(|s| Ok(s.scan_usage()))
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
}
