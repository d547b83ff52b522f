//! Shared test harness: a loopback origin whose every answer is scripted (including resets and
//! slow bodies), configs for a service on an ephemeral loopback port with its own mirror folder,
//! and one helper per repeated HTTP pattern. `bin` runs the real binary; `s3` runs moto.
#![allow(dead_code)]

pub mod bin;
pub mod hexo;
pub mod images;
pub mod s3;
pub mod site;
pub mod wayback;
pub mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Host names the tests map onto the origin with `upstream.resolve` (`.test` never resolves).
pub const HOST: &str = "origin.test";

/// Reads a test image from `tests/fixtures/images`.
pub fn image(name: &str) -> Bytes {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name);
    Bytes::from(std::fs::read(p).expect("fixture image"))
}

/// What the origin answers for a path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this body and Content-Type; answers 304 when `If-None-Match` matches `etag`.
    Ok {
        body: Bytes,
        content_type: &'static str,
        etag: Option<&'static str>,
    },
    /// A bare status with a short body.
    Status(u16),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// Declare `declared` bytes, send `sent`, then close the connection.
    Truncated { declared: usize, sent: Bytes },
    /// Send `sent` with no Content-Length, then close: a body cut short with no length to check.
    Cut { sent: Bytes },
    /// Declare `declared` bytes (fewer than `body` holds), then send all of `body`.
    ShortLength { declared: usize, body: Bytes },
    /// A body of `len` bytes with no Content-Length (chunked), for size caps while streaming.
    Chunked { len: usize },
    /// 302 to this location.
    Redirect(String),
    /// 429 with `Retry-After: <secs>` to the first request for the path, then `then`.
    ThrottledOnce { secs: u64, then: Box<Reply> },
}

impl Reply {
    pub fn jpeg(body: Bytes) -> Reply {
        Reply::Ok {
            body,
            content_type: "image/jpeg",
            etag: Some("\"v1\""),
        }
    }

    /// [`Reply::jpeg`] after `delay` (a slow origin, to make concurrent requests overlap).
    pub fn slow_jpeg(delay: std::time::Duration, body: Bytes) -> Reply {
        Reply::Delay(delay, Box::new(Reply::jpeg(body)))
    }
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted HTTP/1.1 origin on 127.0.0.1.
pub struct Origin {
    pub addr: SocketAddr,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A test certificate authority and a server certificate it signed for some host names.
pub struct TestCa {
    /// The CA certificate (PEM), for `upstream.ca_file`.
    pub ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TestCa {
    pub fn new(hosts: &[String]) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        use tokio_rustls::rustls;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(hosts.to_vec())
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Origin {
    /// A plain-HTTP origin.
    pub async fn start() -> Origin {
        Origin::start_with(None).await
    }

    /// An origin that speaks TLS (with `ca`'s certificate) to clients that open with a TLS
    /// handshake, and plain HTTP to the others, on one port.
    pub async fn start_with(ca: Option<&TestCa>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let replies: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, s) = (replies.clone(), seen.clone());
        let acceptor = ca.map(|c| c.acceptor.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, s, acceptor) = (r.clone(), s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let is_tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16);
                    match acceptor {
                        Some(a) if is_tls => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = serve(tls, r, s).await;
                            }
                        }
                        _ => {
                            let _ = serve(stream, r, s).await;
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            replies,
            seen,
            task,
        }
    }

    /// Scripts the answer for `path` (`*` answers every unscripted path).
    pub fn set(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_string(), reply);
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    pub fn total_hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening; connections are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// `http://origin.test:PORT{path}`; with `upstream.resolve`, reaches this origin.
    pub fn url(&self, path: &str) -> String {
        format!("http://{HOST}{path}")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request's head (up to the blank line, 64 KiB at most); `None` when the client went
/// away first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 65536 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    let Some(text) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let request = Seen {
        path: path.clone(),
        headers,
    };
    let asked_before = {
        let mut seen = seen.lock().unwrap();
        let n = seen.iter().filter(|s| s.path == path).count();
        seen.push(request.clone());
        n
    };
    let reply = {
        let r = replies.lock().unwrap();
        r.get(&path).or_else(|| r.get("*")).cloned()
    };
    let mut reply = reply.unwrap_or(Reply::Status(404));
    loop {
        match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                reply = *inner;
            }
            Reply::ThrottledOnce { secs, then } => {
                if asked_before > 0 {
                    reply = *then;
                    continue;
                }
                let head = format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                return Ok(());
            }
            Reply::Ok {
                body,
                content_type,
                etag,
            } => {
                if etag.is_some() && request.header("if-none-match") == etag {
                    let head = format!(
                        "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nConnection: close\r\n\r\n",
                        etag.unwrap_or_default()
                    );
                    stream.write_all(head.as_bytes()).await?;
                    return Ok(());
                }
                let mut head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nLast-Modified: Tue, 08 Jun 2021 00:39:00 GMT\r\nConnection: close\r\n",
                    body.len()
                );
                if let Some(e) = etag {
                    head.push_str(&format!("ETag: {e}\r\n"));
                }
                head.push_str("\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                return Ok(());
            }
            Reply::Status(code) => {
                let body = format!("<html><body>status {code}</body></html>");
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                return Ok(());
            }
            Reply::Truncated { declared, sent } => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {declared}\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&sent).await?;
                stream.flush().await?;
                return Ok(()); // dropping the stream closes it mid-body
            }
            Reply::Cut { sent } => {
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n",
                    )
                    .await?;
                stream.write_all(&sent).await?;
                stream.shutdown().await?;
                return Ok(());
            }
            Reply::ShortLength { declared, body } => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
                stream.shutdown().await?;
                return Ok(());
            }
            Reply::Chunked { len } => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                    .await?;
                let piece = vec![0xFFu8; 16384];
                let mut left = len;
                while left > 0 {
                    let n = left.min(piece.len());
                    stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    stream.write_all(&piece[..n]).await?;
                    stream.write_all(b"\r\n").await?;
                    left -= n;
                }
                stream.write_all(b"0\r\n\r\n").await?;
                stream.shutdown().await?;
                return Ok(());
            }
            Reply::Redirect(to) => {
                let head = format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                return Ok(());
            }
        }
    }
}

/// A config for a service on an ephemeral loopback port with its mirror in `dir`, reaching the
/// origin under `hosts` (and [`HOST`]); `extra` is TOML appended (later keys win per section, so
/// pass whole sections not already present, or use `patch`).
pub fn config(
    origin: &Origin,
    dir: &Path,
    hosts: &[&str],
    patch: impl FnOnce(&mut imgmirror::config::Config),
) -> imgmirror::config::Config {
    let mut c = imgmirror::config::Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.cache.dir = dir.to_path_buf();
    c.upstream.timeout_secs = 5;
    // These tests are about what happens to a route once fetched, not whether a post links it:
    // a generic proxy. `upstream.fetch = "known"` (the default) has its own tests
    // (tests/it/ssrf.rs, tests/it/browser.rs).
    c.upstream.fetch = imgmirror::config::FetchPolicy::Any;
    for h in hosts.iter().chain(std::iter::once(&HOST)) {
        c.upstream
            .resolve
            .insert(h.to_string(), origin.addr.to_string());
    }
    patch(&mut c);
    c
}

/// The setup most service tests share: a scripted loopback origin, a mirror folder of its own,
/// and `imgmirror serve` started in-process on [`config`] patched by `patch`. Destructure it
/// (`let Served { origin, dir, svc } = …`) or keep it whole; dropping it stops the origin and
/// removes the folder (the service stops with [`imgmirror::server::Running::shutdown`]).
pub struct Served {
    pub origin: Origin,
    pub dir: tempfile::TempDir,
    pub svc: imgmirror::server::Running,
}

impl Served {
    /// Starts the origin, then the service with the test config patched by `patch`.
    pub async fn start(patch: impl FnOnce(&mut imgmirror::config::Config)) -> Served {
        Served::with_hosts(&[], patch).await
    }

    /// [`Served::start`] with more host names pinned to the origin.
    pub async fn with_hosts(
        hosts: &[&str],
        patch: impl FnOnce(&mut imgmirror::config::Config),
    ) -> Served {
        let origin = Origin::start().await;
        let dir = tempfile::tempdir().expect("a temporary folder");
        let svc = imgmirror::server::start(config(&origin, dir.path(), hosts, patch))
            .await
            .expect("the test service starts");
        Served { origin, dir, svc }
    }
}

/// The shipped `config/imgmirror.toml`, parsed (as a fresh checkout's `imgmirror serve` reads it).
pub fn shipped_config() -> imgmirror::config::Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/imgmirror.toml");
    let text = std::fs::read_to_string(&path).expect("config/imgmirror.toml");
    imgmirror::config::Config::from_parts("config/imgmirror.toml", &text, &[])
        .expect("the shipped config parses")
}

/// An HTTP client for talking to the service (never through a proxy).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The service URL of an upstream URL with default options.
pub fn route_url(service: SocketAddr, upstream: &str) -> String {
    route_url_with(service, upstream, &imgmirror::route::Options::default())
}

/// The service URL of `upstream` with route options (unsigned).
pub fn route_url_with(
    service: SocketAddr,
    upstream: &str,
    options: &imgmirror::route::Options,
) -> String {
    let r = imgmirror::route::encode(upstream, options, None).unwrap();
    format!("http://{service}{r}")
}

/// A free loopback port for a server in another process that must be told its port (nginx,
/// moto, the binary). A port bound and released can be taken by anyone before the server binds
/// it, so ports come from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), where no port-0 listener of the tests and no
/// outgoing connection is ever placed, and none is handed out twice by one test process (each
/// binary starts at its own offset, from its process id). Each is checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral.max(10_001));
    let span = high - low;
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {high}")
}

/// A GET of `url` with [`client`] (panics on transport errors: the service is the test's own).
pub async fn get(url: &str) -> reqwest::Response {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A GET of `url` with extra request headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The parsed JSON of a GET of `url`.
pub async fn json(url: &str) -> serde_json::Value {
    let r = get(url).await;
    let status = r.status();
    let body = r.bytes().await.expect("a body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {url}: {status}, not JSON ({e}): {body:?}"))
}

/// The text of `http://{addr}{path}` (panics on transport errors: the service is the test's own).
pub async fn text(c: &reqwest::Client, addr: SocketAddr, path: &str) -> String {
    c.get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Calls `check` every 20 ms until it is true or 4 s have passed; returns its last answer. For
/// effects of background work (a startup scan, an eviction pass) that tests must wait for.
pub async fn eventually<F: std::future::Future<Output = bool>>(check: impl FnMut() -> F) -> bool {
    eventually_within(Duration::from_secs(4), check).await
}

/// [`eventually`] with another limit: `check` every 20 ms until it holds (true) or `limit` has
/// passed (false).
pub async fn eventually_within<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when the tests run as root (CI does): tests of ownership, setuid bits and user switching
/// need it. Outside CI a non-root run says `SKIPPED` and why; in CI it panics, so such a test
/// never passes by not running.
pub fn is_root(why: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let why = format!("{why} needs root (CI runs as root)");
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// Debian's `nobody` user and `nogroup` group, which tests drop to.
pub const NOBODY: u32 = 65534;
