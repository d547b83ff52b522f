//! Response bodies sent from the mirror's files with `sendfile(2)`.
//!
//! A memory hit's body is in memory, and writing it to a socket copies every byte into the
//! kernel: for a 200 KB original that copy was 28 % of the service's CPU per request
//! (BENCHMARKS.md). An entry whose body is also in an open mirror file ([`BodyFile`], checked
//! byte for byte when opened) is sent from that file instead: the kernel hands page-cache pages to
//! the socket and copies nothing.
//!
//! hyper writes the body; it does not know about files. So [`respond::image`] puts a [`FileBody`]
//! (the body's `Bytes` and the file) in the response's extensions, the connection's service moves
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
//! [`respond::image`]: super::respond::image

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use rustix::net::{SendAncillaryBuffer, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::cache::BodyFile;
use crate::metrics::Metrics;

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
