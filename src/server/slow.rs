//! Slow and idle clients: what one connection may hold, and for how long.
//!
//! * [`Activity`] is one connection's clock: requests being handled, response bodies not yet
//!   taken whole by hyper, and when either last moved. The connection's task races hyper's
//!   connection future against [`Activity::expired`], which ends when the connection has been idle
//!   (no request in flight, no unfinished body) for `server.idle_timeout_secs`, or when its
//!   unfinished bodies have not moved for `server.send_timeout_secs` (a client that reads
//!   nothing: an HTTP/1 socket that stays full, an HTTP/2 stream whose window stays 0). Dropping
//!   the connection then drops its bodies. Both protocols, because it is measured on the bodies
//!   and the requests, not on the socket (HTTP/2 pings move the socket of an idle connection).
//! * [`Unfinished`] bounds the bytes held by responses not yet taken whole, service-wide, by
//!   `cache.memory_bytes` on top of the memory cache: a response that would pass it is a 503
//!   ([`Unfinished::reserve`] in `server::handle`). Before, 30 clients that read nothing held
//!   758 MB (HTTP/1) and 874 MB (HTTP/2) of 17 MB bodies beside a 64 MiB cache.
//! * [`Tracked`] is the body hyper sends: the response's bytes handed out in slices of at most
//!   [`SLICE`] (so hyper takes them as the client reads, and a stalled client stalls the body),
//!   reporting each slice to its connection's [`Activity`] and holding its [`Reservation`] until
//!   the last slice is taken or the body is dropped. Slices are of the same allocation, so the
//!   sendfile path recognises them (`super::sendfile`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::respond::Body;

/// The most of a body hyper is handed at once: most images in one slice (one `sendfile`), and a
/// stalled client leaves the rest with the body, where the send timeout sees it.
pub const SLICE: usize = 256 << 10;

/// The longest a connection's watch sleeps before looking at its activity again.
const CHECK: Duration = Duration::from_secs(1);

/// One connection's requests and bodies, and when they last moved.
pub struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last request start or end, or body slice taken.
    last: AtomicU64,
    /// Requests whose answer is being made (their service future runs).
    handling: AtomicUsize,
    /// Bodies not yet taken whole.
    bodies: AtomicUsize,
    idle: Duration,
    send: Duration,
}

/// Why a connection was closed by its [`Activity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No request in flight and no unfinished body for `server.idle_timeout_secs`.
    Idle,
    /// Unfinished bodies not taken for `server.send_timeout_secs`.
    SendTimeout,
}

impl Expired {
    /// The label of `imgmirror_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Expired::Idle => "idle",
            Expired::SendTimeout => "send_timeout",
        }
    }
}

impl Activity {
    pub fn new(idle: Duration, send: Duration) -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
            bodies: AtomicUsize::new(0),
            idle,
            send,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Handling(self.clone())
    }

    /// Ends when the connection should be closed, saying why; never while it is in use.
    pub async fn expired(&self) -> Expired {
        loop {
            let now = self.now_ms();
            let last = self.last.load(Ordering::Relaxed);
            let wait = if self.bodies.load(Ordering::Relaxed) > 0 {
                let deadline = last.saturating_add(millis(self.send));
                if now >= deadline {
                    return Expired::SendTimeout;
                }
                deadline - now
            } else if self.handling.load(Ordering::Relaxed) > 0 {
                // A request being answered (an upstream fetch, a transform) is not idleness:
                // its own limits bound it.
                millis(self.idle)
            } else {
                let deadline = last.saturating_add(millis(self.idle));
                if now >= deadline {
                    return Expired::Idle;
                }
                deadline - now
            };
            // What the connection does meanwhile is not signalled (a body slice taken is the hot
            // path): look again at least every [`CHECK`] (a quarter of the shorter timeout).
            let check = millis(self.idle.min(self.send) / 4).clamp(10, millis(CHECK));
            tokio::time::sleep(Duration::from_millis(wait.clamp(1, check))).await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request in flight on a connection ([`Activity::request`]).
pub struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The bytes held by responses not yet taken whole, service-wide, within a limit.
pub struct Unfinished {
    held: AtomicU64,
    limit: u64,
}

impl Unfinished {
    pub fn new(limit: u64) -> Arc<Unfinished> {
        Arc::new(Unfinished {
            held: AtomicU64::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for a response body; `None` when that would pass the limit (one body
    /// alone always passes: a limit below the largest image must not refuse it for ever).
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let next = held
                .checked_add(bytes)
                .filter(|&n| n <= self.limit || held == 0)?;
            match self
                .held
                .compare_exchange_weak(held, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Reservation {
                        unfinished: self.clone(),
                        bytes,
                    })
                }
                Err(now) => held = now,
            }
        }
    }
}

/// Bytes of [`Unfinished`] held by one response, given back when dropped.
pub struct Reservation {
    unfinished: Arc<Unfinished>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.unfinished
            .held
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A response body handed to hyper in slices, tracked by its connection (see the module doc).
pub struct Tracked {
    rest: Bytes,
    activity: Option<Arc<Activity>>,
    reservation: Option<Reservation>,
}

impl Tracked {
    /// `body` (a whole `Full`) as a tracked body of `activity`'s connection, holding
    /// `reservation` until it is taken whole.
    pub async fn new(
        body: Body,
        activity: &Arc<Activity>,
        reservation: Option<Reservation>,
    ) -> Tracked {
        // A `Full` yields its one buffer at once: the same allocation, no copy.
        let rest = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let activity = (!rest.is_empty()).then(|| {
            activity.bodies.fetch_add(1, Ordering::Relaxed);
            activity.touch();
            activity.clone()
        });
        Tracked {
            rest,
            activity,
            reservation,
        }
    }

    /// Taken whole: the connection stops counting it, the reservation is given back.
    fn finish(&mut self) {
        if let Some(a) = self.activity.take() {
            a.bodies.fetch_sub(1, Ordering::Relaxed);
            a.touch();
        }
        self.reservation = None;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.finish();
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(SLICE);
        let slice = self.rest.split_to(n);
        if let Some(a) = &self.activity {
            a.touch();
        }
        if self.rest.is_empty() {
            self.finish();
        }
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_are_given_back() {
        let u = Unfinished::new(100);
        let a = u.reserve(60).unwrap();
        assert!(u.reserve(41).is_none());
        let b = u.reserve(40).unwrap();
        assert_eq!(u.held(), 100);
        drop(a);
        assert_eq!(u.held(), 40);
        drop(b);
        assert_eq!(u.held(), 0);
    }

    #[tokio::test]
    async fn a_body_is_sliced_from_one_allocation_and_counted_until_taken() {
        let data = Bytes::from(vec![7u8; SLICE * 2 + 10]);
        let activity = Activity::new(Duration::from_secs(60), Duration::from_secs(30));
        let u = Unfinished::new(u64::MAX);
        let r = u.reserve(data.len() as u64);
        let mut body = Tracked::new(Body::new(data.clone()), &activity, r).await;
        assert_eq!(activity.bodies.load(Ordering::Relaxed), 1);
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let d = frame.unwrap().into_data().unwrap();
            // Inside the original allocation (what sendfile recognises).
            let offset = d.as_ptr() as usize - data.as_ptr() as usize;
            assert!(offset + d.len() <= data.len());
            seen.push(d.len());
        }
        assert_eq!(seen, vec![SLICE, SLICE, 10]);
        assert_eq!(activity.bodies.load(Ordering::Relaxed), 0);
        assert_eq!(u.held(), 0);
    }
}
