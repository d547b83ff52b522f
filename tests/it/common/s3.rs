//! A real S3 server for tests: `moto_server` (PyPI `moto[server]`, installed by `.ci/run`) on a
//! free loopback port, started and stopped by the test itself.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Test credentials: moto accepts any.
pub const KEY_ID: &str = "testing";
pub const SECRET: &str = "testing";

/// A running moto S3 server. Killed on drop.
pub struct Moto {
    pub addr: SocketAddr,
    child: Mutex<Option<Child>>,
}

/// A free loopback port (bound, then released).
impl Moto {
    /// Starts moto on a free port and waits until it answers. Panics with the reason when the
    /// `moto_server` command is missing: `.ci/run` installs it, so a test never skips.
    pub async fn start() -> Moto {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let moto = Moto {
            addr,
            child: Mutex::new(None),
        };
        moto.restart().await;
        moto
    }

    /// `http://127.0.0.1:PORT`, for `s3.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts (again, after [`Moto::stop`]) on the same port. moto keeps its data in memory, so
    /// a restarted server is empty: tests recreate what they need.
    pub async fn restart(&self) {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: install it with `pip install 'moto[server]'` (.ci/run does)");
        *self.child.lock().unwrap() = Some(child);
        let c = client();
        for _ in 0..900 {
            if c.get(self.endpoint()).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not answer on {} within 45 s", self.addr);
    }

    /// Kills the server (an S3 outage).
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub async fn create_bucket(&self, name: &str) {
        let r = client()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create bucket {name}: {}",
            r.status()
        );
    }

    /// A plain S3 client on `bucket` (signed with the test credentials), for looking at and
    /// tampering with objects behind the service's back.
    pub fn raw(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_region("us-east-1")
            .build()
            .unwrap()
    }

    /// The object at `key` in `bucket`, if any.
    pub async fn get(&self, bucket: &str, key: &str) -> Option<bytes::Bytes> {
        use object_store::ObjectStoreExt;
        match self.raw(bucket).get(&key.into()).await {
            Ok(r) => Some(r.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    }

    /// Replaces the object at `key` behind the service's back.
    pub async fn put(&self, bucket: &str, key: &str, body: &'static [u8]) {
        use object_store::ObjectStoreExt;
        self.raw(bucket)
            .put(&key.into(), object_store::PutPayload::from_static(body))
            .await
            .unwrap();
    }

    /// Every key in `bucket`.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let metas: Vec<_> = self.raw(bucket).list(None).try_collect().await.unwrap();
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An HTTP proxy in front of moto that counts the S3 requests passing through it (the scale
/// tests assert how many requests a purge and an idle minute cost). Point `s3.endpoint` at
/// [`Counting::endpoint`]; moto does not check signatures, so the changed Host is fine.
pub struct Counting {
    pub addr: SocketAddr,
    seen: std::sync::Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    /// Starts a counting proxy in front of `moto`.
    pub async fn start(moto: &Moto) -> Counting {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: std::sync::Arc<Mutex<Vec<String>>> = Default::default();
        let (log, upstream) = (seen.clone(), moto.endpoint());
        let task = tokio::spawn(async move {
            let c = client();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, upstream, c) = (log.clone(), upstream.clone(), c.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (log, upstream, c) = (log.clone(), upstream.clone(), c.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let path = parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/".to_string(), |p| p.to_string());
                                log.lock().unwrap().push(format!("{} {path}", parts.method));
                                let body = body.collect().await?.to_bytes();
                                let mut fwd = c.request(parts.method, format!("{upstream}{path}"));
                                for (k, v) in &parts.headers {
                                    if k != http::header::HOST {
                                        fwd = fwd.header(k, v);
                                    }
                                }
                                let r = fwd.body(body).send().await.unwrap();
                                let mut resp = hyper::Response::builder().status(r.status());
                                for (k, v) in r.headers() {
                                    resp = resp.header(k, v);
                                }
                                let bytes = r.bytes().await.unwrap();
                                Ok::<_, hyper::Error>(
                                    resp.body(http_body_util::Full::new(bytes)).unwrap(),
                                )
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Counting { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT`, for `s3.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests seen since the last call (`METHOD /bucket/key?query`), and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}
