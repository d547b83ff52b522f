//! Atomic file writes: a file is either its old bytes or its new bytes, never a mix, whatever
//! crashes when. Used by the mirror's filesystem tier, by `rewrite` (thousands of posts staged,
//! then made durable with one `syncfs` per filesystem and renamed) and by report files.
//!
//! What a written file keeps is decided here, once ([`Keep`]): a file of imgmirror's own gets
//! a fixed mode less the umask; a post rewritten in place keeps its permission bits (never
//! setuid, setgid or sticky), its owner (or is refused, untouched, when the owner cannot be
//! kept) and its access and modification times, so a site generator that dates posts by mtime
//! sees the post as it was (SPEC §3, the write rule).
//!
//! Temporary files are named `.imgmirror-<pid>-<random>.tmp` next to their target, so what a
//! crash leaves behind can be found and swept by a later run ([`sweep`]): a file whose process
//! is gone is garbage. Staged files hold no open descriptor, so a batch of any size fits the
//! process's descriptor limit.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// Mode of the mirror's own files (records, blobs): readable by the service's user only.
pub const PRIVATE: Keep<'static> = Keep::Mode(0o600);
/// Mode of files meant to be served or read by others (export, reports): `0644` less the umask.
pub const PUBLIC: Keep<'static> = Keep::Mode(0o644);
/// Mode of every folder made on the way to a file: `0755` less the umask.
const FOLDER_MODE: u32 = 0o755;

/// What a file written here keeps, or is given.
#[derive(Clone, Copy, Debug)]
pub enum Keep<'a> {
    /// A file of imgmirror's own: this mode, less the process's umask (applied by `open`).
    Mode(u32),
    /// The metadata of the file this one stands for (a post, read just before): its permission
    /// bits without setuid/setgid/sticky, its access and modification times, and, with `owner`,
    /// its owner and group: a file whose owner cannot be kept is not written (`PermissionDenied`).
    Like {
        /// The metadata of the file stood for.
        meta: &'a fs::Metadata,
        /// Keep its owner and group too.
        owner: bool,
    },
}

/// Writes a file atomically: temporary file in the same folder, fsync, rename; the folder is
/// created when missing (`0755` less the umask). A failure removes the temporary file and
/// leaves the target untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], keep: Keep) -> io::Result<()> {
    let staged = stage_chunks(path, [Ok(bytes)], keep)?;
    fsync_path(&staged.tmp)?;
    staged.tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Prefix and suffix of every temporary file: `.imgmirror-<pid>-<random>.tmp`.
const TEMP_PREFIX: &str = ".imgmirror-";
const TEMP_SUFFIX: &str = ".tmp";

fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", std::process::id())
}

/// Fsyncs a file by path (staged files keep no descriptor open).
fn fsync_path(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Removes the temporary files in `dir` (and below it, with `recursive`) that a crashed process
/// left: those whose process no longer runs (on Linux, by `/proc/<pid>`; elsewhere, those older
/// than an hour). Returns how many were removed.
pub fn sweep(dir: &Path, recursive: bool) -> usize {
    let walk = walkdir::WalkDir::new(dir).max_depth(if recursive { usize::MAX } else { 1 });
    let mut removed = 0;
    for e in walk.into_iter().filter_map(Result::ok) {
        if !e.file_type().is_file() {
            continue;
        }
        let Some(name) = e.file_name().to_str() else {
            continue;
        };
        if is_stale_temp(name, e.path()) && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// True for one of our temporary files whose writer is gone.
fn is_stale_temp(name: &str, path: &Path) -> bool {
    let Some(rest) = name
        .strip_prefix(TEMP_PREFIX)
        .and_then(|r| r.strip_suffix(TEMP_SUFFIX))
    else {
        return false;
    };
    let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) if pid == std::process::id() => false,
        #[cfg(target_os = "linux")]
        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        // Older names without a pid, or no /proc: judged by age.
        _ => fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600)),
    }
}

/// Writes a file atomically only if none exists at `path` (the rename refuses to replace one).
/// Returns `false`, writing nothing, when the file already existed.
pub fn write_new(path: &Path, bytes: &[u8], keep: Keep) -> io::Result<bool> {
    let staged = stage_chunks(path, [Ok(bytes)], keep)?;
    fsync_path(&staged.tmp)?;
    match staged.tmp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error),
    }
}

/// A file written under a temporary name next to its target: neither durable nor visible yet.
/// Dropping it deletes the temporary file. [`commit`] makes a batch of them durable and visible.
pub struct Staged {
    tmp: tempfile::TempPath,
    target: PathBuf,
}

impl Staged {
    /// Where it will be once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }
}

/// Stages `bytes` for `path`.
pub fn stage(path: &Path, bytes: &[u8], keep: Keep) -> io::Result<Staged> {
    stage_chunks(path, [Ok(bytes)], keep)
}

/// Makes every missing folder of `dir` with `FOLDER_MODE` (0755) less the umask.
pub fn create_folders(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, FOLDER_MODE);
    builder.create(dir)
}

/// [`stage`] from chunks; an `Err` chunk aborts (tests inject write failures this way) and the
/// temporary file is removed.
pub fn stage_chunks<'a>(
    path: &Path,
    chunks: impl IntoIterator<Item = io::Result<&'a [u8]>>,
    keep: Keep,
) -> io::Result<Staged> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_folders(dir)?;
    let prefix = temp_prefix();
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_SUFFIX);
    #[cfg(unix)]
    if let Keep::Mode(mode) = keep {
        // Given to open(2), which takes the umask off.
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    for chunk in chunks {
        io::Write::write_all(&mut tmp, chunk?)?;
    }
    if let Keep::Like { meta, owner } = keep {
        // On the open descriptor: no second path lookup.
        keep_metadata(tmp.as_file(), meta, owner)?;
    }
    // Close the descriptor: the path alone is kept until commit.
    Ok(Staged {
        tmp: tmp.into_temp_path(),
        target: path.to_path_buf(),
    })
}

/// Gives `file` what it keeps of `meta` (see [`Keep::Like`]): owner first (a change of owner
/// clears set-id bits), then the permission bits, then the times (last: nothing may touch the
/// file after them).
fn keep_metadata(file: &fs::File, meta: &fs::Metadata, owner: bool) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if owner {
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
                let uid = rustix::fs::Uid::from_raw(meta.uid());
                let gid = rustix::fs::Gid::from_raw(meta.gid());
                rustix::fs::fchown(file, Some(uid), Some(gid)).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "owned by uid {} gid {}, which this user cannot keep ({}): not modified",
                            meta.uid(),
                            meta.gid(),
                            io::Error::from(e)
                        ),
                    )
                })?;
            }
        }
        // Never setuid, setgid or sticky: a post is not a program.
        file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))?;
    }
    #[cfg(not(unix))]
    {
        let _ = owner;
        file.set_permissions(meta.permissions())?;
    }
    let mut times = fs::FileTimes::new();
    if let Ok(t) = meta.accessed() {
        times = times.set_accessed(t);
    }
    if let Ok(t) = meta.modified() {
        times = times.set_modified(t);
    }
    file.set_times(times)
}

/// Makes staged files durable, then renames each over its target, then makes the renames durable.
/// On Linux one `syncfs` per filesystem replaces an fsync per file (the same guarantee: no target
/// is replaced before its new bytes are on disk), which is what makes batches of thousands of posts
/// fast. `still_there(target)` is asked just before each rename (in-place rewrites must not
/// resurrect a post deleted meanwhile). Returns one result per staged file, in order.
pub fn commit(
    staged: Vec<Staged>,
    still_there: impl Fn(&Path) -> bool + Sync,
) -> Vec<io::Result<()>> {
    // One open folder per filesystem: synced before the renames (the staged bytes) and after
    // (the renames). Up to 64 filesystems; past that, files fall back to their own fsync.
    let mut folders: Vec<fs::File> = Vec::new();
    let mut covered = true;
    for s in &staged {
        let dir = match s.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !same_filesystem(&folders, dir) {
            match fs::File::open(dir) {
                Ok(f) if folders.len() < 64 => folders.push(f),
                _ => covered = false,
            }
        }
    }
    let synced = if covered {
        sync_filesystems(folders.iter())
    } else {
        Err(io::Error::other("more filesystems than one sync covers"))
    };
    // The renames run on the rayon pool: each is a metadata operation the disk may make wait, and
    // the files are independent (all their bytes are on disk already).
    let results = staged
        .into_par_iter()
        .map(|s| {
            if let Err(e) = &synced {
                // The batch sync failed: fall back to this file's own fsync.
                tracing::debug!(error = %e, "filesystem sync failed; fsyncing files one by one");
                fsync_path(&s.tmp)?;
            }
            if !still_there(&s.target) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "disappeared during the run: not recreated",
                ));
            }
            s.tmp.persist(&s.target).map(|_| ()).map_err(|e| e.error)
        })
        .collect();
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
    let mut seen = std::collections::HashSet::new();
    for f in files {
        if seen.insert(f.metadata()?.dev()) {
            rustix::fs::syncfs(f)?;
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
