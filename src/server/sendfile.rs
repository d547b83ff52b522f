//! Response bodies sent from the mirror's files with `sendfile(2)`.
//!
//! A memory hit's body is in memory, and writing it to a socket copies every byte into the
//! kernel: for a 200 KB original that copy was 28 % of the service's CPU per request
//! (BENCHMARKS.md). An entry whose body is also in an open mirror file ([`BodyFile`], checked
//! byte for byte when opened) is sent from that file instead: the kernel hands page-cache pages to
//! the socket and copies nothing.
//!
//! The files are this module's: a memory entry knows only where the local mirror keeps its bytes
//! (`Entry::local_file`). [`Files`] opens that file the first time the entry is answered (in the
//! background: that answer is copied), checks it byte for byte, and keeps it open for the next
//! answers, at most [`MAX_OPEN`] files at once.
//!
//! hyper writes the body; it does not know about files. So the image handler hands a [`FileBody`]
//! (the body's `Bytes` and the file) down with its response, the connection's service moves
//! it into the connection's [`Pending`] list, and [`Conn`], the socket as hyper sees it, looks at
//! every buffer hyper writes: a buffer that lies inside a pending body's bytes is that body, from
//! the same offset, and is sent from the file. Pending bodies hold their `Bytes`, so the memory at
//! those addresses cannot be freed and reused for other bytes while they are pending. The response
//! head goes out first with `MSG_MORE`, so head and body leave in the same segments, as one
//! `writev` did.
//!
//! Only HTTP/1 responses are sent this way: HTTP/2 frames a body in its own buffers and may end a
//! stream half way, which would leave bodies pending for the connection's life.
//!
//! Nothing is lost when a file misbehaves: if `sendfile` fails or the file ends early (changed on
//! disk by someone else), that body is forgotten and the rest of it is written from memory.
//!

use std::io::{self, IoSlice};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rustix::net::{SendAncillaryBuffer, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::cache::Entry;
use crate::metrics::Metrics;

/// Bodies smaller than this are copied: the saving does not pay for the descriptor.
pub const MIN_LEN: usize = 64 * 1024;
/// Mirror files open for sending at most at once; past it, bodies are copied.
pub const MAX_OPEN: usize = 512;
/// A file no answer used for this long is closed (a purged blob's space is then given back).
const IDLE: Duration = Duration::from_secs(300);

/// The mirror files bodies are sent from, by blob hash: opened for an entry's first answer,
/// kept open while answers use them, at most [`MAX_OPEN`] at once.
pub struct Files {
    slots: moka::sync::Cache<String, Slot>,
    /// Files open now, this service's alone: every [`BodyFile`] holds one until it closes.
    open: Arc<AtomicUsize>,
}

/// What is known of one blob's file.
#[derive(Clone)]
enum Slot {
    /// Being opened in the background.
    Opening,
    /// Open and checked.
    Open(Arc<BodyFile>),
    /// Missing (not written to the local disk yet, or evicted), different from the body, or no
    /// room, when last tried: the body is copied until [`RETRY_UNUSABLE`] has passed.
    Unusable(std::time::Instant),
}

/// How long a blob whose file could not be used is not tried again.
const RETRY_UNUSABLE: Duration = Duration::from_secs(30);

impl Default for Files {
    fn default() -> Files {
        Files {
            slots: moka::sync::Cache::builder()
                .max_capacity(MAX_OPEN as u64)
                .time_to_idle(IDLE)
                .build(),
            open: Arc::default(),
        }
    }
}

impl Files {
    /// The body of `entry` as a [`FileBody`], when its local mirror file is open and checked.
    /// The first time, the file is opened off the event loop for the answers that follow, and
    /// this answer is copied.
    pub fn body_of(&self, entry: &Entry) -> Option<FileBody> {
        if entry.body.len() < MIN_LEN {
            return None;
        }
        let path = entry.local_file.as_ref()?;
        let slot = self
            .slots
            .entry_by_ref(&entry.hash)
            .or_insert(Slot::Opening);
        let retry = match slot.value() {
            Slot::Open(file) => {
                return Some(FileBody {
                    bytes: entry.body.clone(),
                    file: file.clone(),
                })
            }
            Slot::Opening => slot.is_fresh(),
            Slot::Unusable(at) => at.elapsed() >= RETRY_UNUSABLE,
        };
        if retry {
            // A retry marks the blob as being opened again; a fresh slot already says so.
            if !slot.is_fresh() {
                self.slots.insert(entry.hash.clone(), Slot::Opening);
            }
            let (slots, open) = (self.slots.clone(), self.open.clone());
            let (hash, path, body) = (entry.hash.clone(), path.clone(), entry.body.clone());
            tokio::task::spawn_blocking(move || {
                let slot = match BodyFile::open(&path, &body, &open) {
                    Some(file) => Slot::Open(Arc::new(file)),
                    None => Slot::Unusable(std::time::Instant::now()),
                };
                slots.insert(hash, slot);
            });
        }
        None
    }
}

/// An open file whose first `len` bytes were found equal to an entry's body when it was opened
/// (`BodyFile::open`). Mirror blobs are content-addressed and replaced only by rename, so the
/// open file keeps those bytes for as long as it is open (a purge or eviction unlinks the name,
/// not the open file).
#[derive(Debug)]
pub struct BodyFile {
    file: std::fs::File,
    len: u64,
    /// Its place among the open ones.
    _place: Place,
}

impl BodyFile {
    /// Opens `path` for `body` when the file holds exactly `body` (compared byte for byte, in
    /// 64 KiB reads) and fewer than [`MAX_OPEN`] are `open`. Blocking: call it off the event
    /// loop.
    fn open(path: &Path, body: &[u8], open: &Arc<AtomicUsize>) -> Option<BodyFile> {
        use std::io::Read;
        let taken = open.fetch_add(1, Ordering::AcqRel);
        // Given back when dropped: on every early return, or with the BodyFile.
        let place = Place(open.clone());
        if taken >= MAX_OPEN {
            return None;
        }
        let mut file = std::fs::File::open(path).ok()?;
        if file.metadata().ok()?.len() != body.len() as u64 {
            return None;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < body.len() {
            let want = chunk.len().min(body.len() - at);
            file.read_exact(&mut chunk[..want]).ok()?;
            if chunk[..want] != body[at..at + want] {
                return None;
            }
            at += want;
        }
        Some(BodyFile {
            file,
            len: body.len() as u64,
            _place: place,
        })
    }

    /// The open file.
    fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// How many bytes of it are the body.
    fn size(&self) -> u64 {
        self.len
    }
}

/// One place among the open files, given back when dropped.
#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body whose bytes are also in `file`.
#[derive(Clone, Debug)]
pub struct FileBody {
    /// The body as the response holds it: the same allocation, kept alive while pending.
    pub bytes: Bytes,
    /// The open file holding the same bytes from offset 0.
    pub file: Arc<BodyFile>,
}

/// Bodies a connection has been given and not finished; more than this and the oldest is
/// dropped (it is then written from memory, if it is still being written at all).
const MAX_PENDING: usize = 16;

/// The [`FileBody`]s of one connection's responses, shared by its service and its [`Conn`]. Only
/// HTTP/1 responses are given (see `accept_loop`): HTTP/1 writes each body whole, in order, so a
/// body leaves the list when its last byte is sent, or with the connection.
#[derive(Clone, Default)]
pub struct Pending(Arc<Mutex<PendingBodies>>);

/// The bodies, each with its number on this connection.
#[derive(Default)]
pub struct PendingBodies {
    bodies: Vec<(u64, FileBody)>,
    next: u64,
}

/// A pending body found for a buffer: its number, its file, and the buffer's offset in it.
struct Found {
    id: u64,
    file: Arc<BodyFile>,
    offset: u64,
}

impl Pending {
    /// A response's body is about to be written.
    pub fn push(&self, body: FileBody) {
        let mut pending = self.lock();
        if pending.bodies.len() >= MAX_PENDING {
            pending.bodies.remove(0);
        }
        let id = pending.next;
        pending.next += 1;
        pending.bodies.push((id, body));
    }

    fn lock(&self) -> MutexGuard<'_, PendingBodies> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first of `bufs` that lies inside a pending body, with its index (one lock per write).
    fn find(&self, bufs: &[IoSlice<'_>]) -> Option<(usize, Found)> {
        let pending = self.lock();
        if pending.bodies.is_empty() {
            return None;
        }
        bufs.iter().enumerate().find_map(|(i, buf)| {
            let start = buf.as_ptr() as usize;
            let end = start + buf.len();
            pending.bodies.iter().find_map(|(id, b)| {
                let from = b.bytes.as_ptr() as usize;
                (!buf.is_empty() && start >= from && end <= from + b.bytes.len()).then(|| {
                    let found = Found {
                        id: *id,
                        file: b.file.clone(),
                        offset: (start - from) as u64,
                    };
                    (i, found)
                })
            })
        })
    }

    /// Forgets body `id` (all sent, or its file failed).
    fn forget(&self, id: u64) {
        self.lock().bodies.retain(|(n, _)| *n != id);
    }
}

/// A public connection's socket as hyper reads and writes it.
pub struct Conn {
    stream: TcpStream,
    pending: Pending,
    metrics: Arc<Metrics>,
    /// Whether `TCP_NODELAY` is set (on the first body sent from a file).
    nodelay: bool,
}

impl Conn {
    /// A connection whose bodies in `pending` go out with `sendfile(2)`.
    pub fn new(stream: TcpStream, pending: Pending, metrics: Arc<Metrics>) -> Conn {
        Conn {
            stream,
            pending,
            metrics,
            nodelay: false,
        }
    }

    /// Peeks at the first bytes the client sent.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }

    /// Writes `bufs` with `MSG_MORE`: what follows (a body from a file) joins them.
    fn poll_head(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.poll_send(cx, || {
            rustix::net::sendmsg(
                &self.stream,
                bufs,
                &mut SendAncillaryBuffer::default(),
                SendFlags::MORE | SendFlags::NOSIGNAL,
            )
        })
    }

    /// Sends `buf`, which is the bytes of `file` from `offset`, from the file; from memory when
    /// the file fails or ends early.
    fn poll_file(
        &mut self,
        cx: &mut Context<'_>,
        body: Found,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Found { id, file, offset } = body;
        if !self.nodelay {
            // As nginx's `tcp_nodelay`: without it, the body's last short segment waits for
            // the client's delayed ACK of the one before (40 ms on loopback).
            self.nodelay = true;
            let _ = self.stream.set_nodelay(true);
        }
        let mut at = offset;
        let sent = ready!(self.poll_send(cx, || {
            rustix::fs::sendfile(&self.stream, file.file(), Some(&mut at), buf.len())
        }));
        match sent {
            Ok(n) if n > 0 => {
                self.metrics.sent_from_file(n);
                if offset + n as u64 >= file.size() {
                    self.pending.forget(id);
                }
                Poll::Ready(Ok(n))
            }
            // The file is shorter than when it was checked, or cannot be read: the body's
            // bytes are in memory, and the rest goes from there.
            _ => {
                self.pending.forget(id);
                Pin::new(&mut self.stream).poll_write(cx, buf)
            }
        }
    }

    /// Runs a non-blocking send on the socket once it is writable.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        mut send: impl FnMut() -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self
                .stream
                .try_io(Interest::WRITABLE, || send().map_err(io::Error::from))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.pending.find(bufs) {
            None => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
            // What comes before the body (the response head), then the body from its file.
            Some((0, found)) => this.poll_file(cx, found, &bufs[0]),
            Some((i, _)) => this.poll_head(cx, &bufs[..i]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
