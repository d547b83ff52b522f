//! A fake Wayback Machine on loopback that behaves like the real one for raw (`id_`) requests:
//! `GET /web/<timestamp>id_/<url>` redirects (302) to the capture nearest to `<timestamp>`,
//! answers the capture's raw bytes at its exact timestamp, and 404 for a URL it holds no capture
//! of. Scriptable: a URL can answer an HTML page with status 200 (an archive's "not found" page
//! that is not an image), or 429 once before behaving. Every request is recorded.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[derive(Default)]
struct Script {
    /// URL → (timestamp, bytes, content type), any order.
    captures: HashMap<String, Vec<(String, Bytes, &'static str)>>,
    html: HashSet<String>,
    throttle_once: HashSet<String>,
    seen: Vec<String>,
}

/// The fake archive; stops when dropped.
pub struct Wayback {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Wayback {
    pub async fn start() -> Wayback {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, s).await;
                });
            }
        });
        Wayback { addr, script, task }
    }

    /// Adds a capture of `url` at `timestamp` (YYYYMMDDhhmmss).
    pub fn capture(&self, url: &str, timestamp: &str, bytes: Bytes, content_type: &'static str) {
        self.script
            .lock()
            .unwrap()
            .captures
            .entry(url.to_string())
            .or_default()
            .push((timestamp.to_string(), bytes, content_type));
    }

    /// `url` answers an HTML page with 200, as archives do for what they do not hold.
    pub fn html_for(&self, url: &str) {
        self.script.lock().unwrap().html.insert(url.to_string());
    }

    /// `url` answers 429 (Retry-After: 1) once, then as usual.
    pub fn throttle_once(&self, url: &str) {
        self.script
            .lock()
            .unwrap()
            .throttle_once
            .insert(url.to_string());
    }

    /// Request targets received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.script.lock().unwrap().seen.clone()
    }
}

impl Drop for Wayback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits `/web/<timestamp>id_/<url>` into its parts.
fn parse(target: &str) -> Option<(String, String)> {
    let rest = target.strip_prefix("/web/")?;
    let (ts, url) = rest.split_once("id_/")?;
    ts.chars()
        .all(|c| c.is_ascii_digit())
        .then(|| (ts.to_string(), url.to_string()))
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    script: Arc<Mutex<Script>>,
) -> std::io::Result<()> {
    let Some(head) = super::read_head(&mut stream).await? else {
        return Ok(());
    };
    let target = head
        .split("\r\n")
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let (status, headers, body): (u16, Vec<(String, String)>, Bytes) = {
        let mut s = script.lock().unwrap();
        s.seen.push(target.clone());
        match parse(&target) {
            None => (404, vec![], Bytes::from_static(b"not a wayback path")),
            Some((_, url)) if s.html.contains(&url) => (
                200,
                vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
                Bytes::from_static(
                    b"<!doctype html><title>Wayback Machine</title><p>Hrm. The Wayback Machine has not archived that URL.</p>",
                ),
            ),
            Some((_, url)) if s.throttle_once.remove(&url) => (
                429,
                vec![("Retry-After".into(), "1".into())],
                Bytes::from_static(b"slow down"),
            ),
            Some((ts, url)) => match s.captures.get(&url) {
                None => (404, vec![], Bytes::from_static(b"no capture")),
                Some(caps) => {
                    let want: u64 = ts.parse().unwrap_or(0);
                    let (cts, bytes, ctype) = caps
                        .iter()
                        .min_by_key(|(t, _, _)| t.parse::<u64>().unwrap_or(0).abs_diff(want))
                        .expect("a capture")
                        .clone();
                    if cts == ts {
                        (200, vec![("Content-Type".into(), ctype.into())], bytes)
                    } else {
                        (
                            302,
                            vec![("Location".into(), format!("/web/{cts}id_/{url}"))],
                            Bytes::new(),
                        )
                    }
                }
            },
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}
