//! `imgmirror serve` over real loopback HTTP with real image bytes: originals byte for byte,
//! caching headers and 304s, every error status with its cause, the SSRF guard, coalescing,
//! restarts without the origin, revalidation and stale-if-error, load shedding, graceful shutdown,
//! and every route the rewriter writes for the fixture posts.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{client, config, image, route_url, Origin, Reply, Served, HOST};
use imgmirror::clock::ManualClock;
use imgmirror::deps::Deps;
use imgmirror::route::{self, Options, SigningKey};
use imgmirror::server;

const DOGS: &str = "/202106/dogs_1024.jpg";

#[tokio::test]
async fn original_byte_for_byte_with_caching_headers() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|_| {}).await;
    let dogs = image("news-dogs.jpg");
    // The origin lies about the type: the service sniffs the bytes.
    origin.set(
        DOGS,
        Reply::Ok {
            body: dogs.clone(),
            content_type: "text/plain",
            etag: Some("\"v1\""),
        },
    );
    let url = route_url(svc.addr, &origin.url(DOGS));
    let c = client();

    let r = common::get(&url).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(h["content-length"], dogs.len().to_string().as_str());
    // The original: the same bytes for every client, kept by caches as they are.
    assert_eq!(
        h["cache-control"],
        "public, max-age=2592000, immutable, stale-if-error=604800"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["last-modified"], "Tue, 08 Jun 2021 00:39:00 GMT");
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    assert_eq!(r.bytes().await.unwrap(), dogs);

    let r = common::get(&url).await;
    assert_eq!(r.headers()["x-cache"], "HIT-MEMORY");
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.bytes().await.unwrap(), dogs);

    let r = common::get_with(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = common::get_with(&url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status(), 200);
    let r = common::get_with(
        &url,
        &[("if-modified-since", "Tue, 08 Jun 2021 00:39:00 GMT")],
    )
    .await;
    assert_eq!(r.status(), 304);
    let r = common::get_with(
        &url,
        &[("if-modified-since", "Mon, 07 Jun 2021 00:39:00 GMT")],
    )
    .await;
    assert_eq!(r.status(), 200);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        dogs.len().to_string().as_str()
    );
    assert!(r.bytes().await.unwrap().is_empty());

    // HTTP/2 (prior knowledge, h2c) on the same port.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.bytes().await.unwrap(), dogs);

    assert_eq!(origin.hits(DOGS), 1, "one upstream fetch in all");
    // Neither Referer nor a proxy: the origin sees our User-Agent and no Referer.
    let seen = &origin.requests()[0];
    assert!(seen.header("user-agent").unwrap().starts_with("imgmirror/"));
    assert!(seen.header("referer").is_none());
    svc.shutdown().await;
}

#[tokio::test]
async fn errors_map_to_statuses_and_are_never_cached() {
    let Served { origin, dir, svc } = Served::start(|c| {
        // The slow image below takes 3 s; the others must not hit it on a loaded machine.
        c.upstream.timeout_secs = 2;
        c.upstream.max_bytes = 200_000;
    })
    .await;
    let dogs = image("news-dogs.jpg");
    origin.set("/404.jpg", Reply::Status(404));
    origin.set("/410.jpg", Reply::Status(410));
    origin.set("/500.jpg", Reply::Status(500));
    origin.set(
        "/slow.jpg",
        Reply::slow_jpeg(Duration::from_secs(3), dogs.clone()),
    );
    origin.set(
        "/reset.jpg",
        Reply::Truncated {
            declared: dogs.len(),
            sent: dogs.slice(..1000),
        },
    );
    origin.set("/big.jpg", Reply::jpeg(Bytes::from(vec![0xFF; 300_000])));
    origin.set("/big-chunked.jpg", Reply::Chunked { len: 300_000 });
    origin.set(
        "/page.jpg",
        Reply::Ok {
            body: Bytes::from_static(b"<!DOCTYPE html><html>blocked</html>"),
            content_type: "image/jpeg",
            etag: None,
        },
    );
    origin.set("/flaky.jpg", Reply::Status(500));
    let c = client();
    let get = |path: &str| c.get(route_url(svc.addr, &origin.url(path))).send();
    for (path, status, why) in [
        ("/404.jpg", 404, "upstream answered 404"),
        ("/410.jpg", 404, "upstream answered 410"),
        ("/500.jpg", 502, "upstream answered 500"),
        ("/slow.jpg", 504, "timed out"),
        ("/reset.jpg", 502, "upstream failed"),
        ("/big.jpg", 413, "larger than 200000"),
        ("/big-chunked.jpg", 413, "larger than 200000"),
        ("/page.jpg", 415, "not an image"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        let body = r.text().await.unwrap();
        assert!(body.contains(why), "{path}: {body}");
        assert!(body.len() < 300, "short bodies: {body}");
    }
    // 404s are remembered (negative cache): no second upstream request.
    let r = get("/404.jpg").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("remembered"));
    assert_eq!(origin.hits("/404.jpg"), 1);
    // Other errors are not cached: once the origin recovers, the image is served.
    assert_eq!(get("/flaky.jpg").await.unwrap().status(), 502);
    origin.set("/flaky.jpg", Reply::jpeg(dogs.clone()));
    let r = get("/flaky.jpg").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), dogs);
    // Nothing failed was mirrored.
    assert_eq!(count_files(&dir.path().join("urls")), 1);

    // Malformed routes: 400 (sent raw: an HTTP client would normalise `..`).
    for bad in [
        "/i/orig/ftp/x/a.jpg",
        "/i/blur9/http/origin.test/a.jpg",
        "/i/orig/http/origin.test/../x",
        "/i/orig/http/origin.test/%2e%2e/x",
        "/i/orig/http/origin.test/a%20b",
        "/i/orig/http/origin.test/a~2",
    ] {
        let (status, body) = raw_get(svc.addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A short or empty signature is a bad signature like any other: 403.
    for bad in ["/s/short/orig/http/origin.test/a.jpg", "/s/"] {
        let (status, body) = raw_get(svc.addr, bad).await;
        assert_eq!(status, 403, "{bad}: {body}");
    }
    let long = format!("/i/orig/http/origin.test/{}", "a".repeat(5000));
    assert_eq!(raw_get(svc.addr, &long).await.0, 400);
    let r = common::get(&format!("http://{}/nope", svc.addr)).await;
    assert_eq!(r.status(), 404);
    let r = c
        .post(route_url(svc.addr, &origin.url("/x.jpg")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    svc.shutdown().await;
}

/// A GET with the path sent exactly as given; returns (status, body).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn count_files(dir: &std::path::Path) -> usize {
    walk_files(dir).len()
}

/// Every regular file under `dir`, sorted.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn signed_routes() {
    let key = "0123456789abcdef0123456789abcdef".to_string();
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|c| c.security.signing_key = key.clone()).await;
    origin.set(DOGS, Reply::jpeg(image("news-dogs.jpg")));
    let k = SigningKey::new(key.as_bytes()).unwrap();
    let signed = route::encode(&origin.url(DOGS), &Options::default(), Some(&k)).unwrap();
    let r = common::get(&format!("http://{}{signed}", svc.addr)).await;
    assert_eq!(r.status(), 200);
    let unsigned = route::encode(&origin.url(DOGS), &Options::default(), None).unwrap();
    let r = common::get(&format!("http://{}{unsigned}", svc.addr)).await;
    assert_eq!(r.status(), 403);
    let other = SigningKey::new(&[9u8; 32]).unwrap();
    let forged = route::encode(&origin.url(DOGS), &Options::default(), Some(&other)).unwrap();
    let r = common::get(&format!("http://{}{forged}", svc.addr)).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("bad signature"));
    assert_eq!(origin.hits(DOGS), 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn ssrf_guard_refuses_private_addresses_in_every_spelling() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|c| c.upstream.deny_hosts = vec!["*.denied.test".into()]).await;
    origin.set("*", Reply::jpeg(image("news-dogs.jpg")));
    origin.set(
        "/redirect-literal.jpg",
        Reply::Redirect(format!(
            "http://127.0.0.1:{}/secret.jpg",
            origin.addr.port()
        )),
    );
    origin.set(
        "/redirect-name.jpg",
        Reply::Redirect(format!(
            "http://localhost:{}/secret.jpg",
            origin.addr.port()
        )),
    );
    origin.set(
        "/redirect-ok.jpg",
        Reply::Redirect(format!("http://{HOST}/fine.jpg")),
    );
    let port = origin.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/secret.jpg"),
        format!("http://2130706433:{port}/secret.jpg"),
        format!("http://0x7f000001:{port}/secret.jpg"),
        format!("http://0177.0.0.1:{port}/secret.jpg"),
        format!("http://127.1:{port}/secret.jpg"),
        format!("http://[::ffff:127.0.0.1]:{port}/secret.jpg"),
        format!("http://[::ffff:7f00:1]:{port}/secret.jpg"),
        format!("http://[::1]:{port}/secret.jpg"),
        format!("http://localhost:{port}/secret.jpg"),
        format!("http://0.0.0.0:{port}/secret.jpg"),
        format!("http://10.0.0.1:{port}/secret.jpg"),
        format!("http://169.254.169.254:{port}/latest/meta-data"),
        format!("http://cdn.denied.test:{port}/secret.jpg"),
    ] {
        let r = common::get(&route_url(svc.addr, &url)).await;
        assert_eq!(r.status(), 403, "{url}");
        let body = r.text().await.unwrap();
        assert!(body.contains("refused by policy"), "{url}: {body}");
    }
    for path in ["/redirect-literal.jpg", "/redirect-name.jpg"] {
        let r = common::get(&route_url(svc.addr, &origin.url(path))).await;
        assert_eq!(r.status(), 403, "{path}");
    }
    assert_eq!(
        origin.hits("/secret.jpg"),
        0,
        "the private address was never contacted"
    );
    // An allowed redirect is followed.
    let r = common::get(&route_url(svc.addr, &origin.url("/redirect-ok.jpg"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(origin.hits("/fine.jpg"), 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn allow_hosts_limits_origins() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::with_hosts(&["a.myzaker.com", "other.test"], |c| {
        c.upstream.allow_hosts = vec!["*.myzaker.com".into()]
    })
    .await;
    origin.set("*", Reply::jpeg(image("news-dogs.jpg")));
    let ok = common::get(&route_url(svc.addr, "http://a.myzaker.com/x.jpg")).await;
    assert_eq!(ok.status(), 200);
    let no = common::get(&route_url(svc.addr, "http://other.test/x.jpg")).await;
    assert_eq!(no.status(), 403);
    assert!(no.text().await.unwrap().contains("allow_hosts"));
    svc.shutdown().await;
}

/// 200 concurrent requests for a cold route make one upstream fetch, with one event loop or
/// several (`server.threads`: runtimes on threads of their own accepting from one socket, sharing
/// memory, coalescing and counts; each request is a connection of its own, so the kernel picks a
/// loop for every one). Shutdown stops every loop and closes the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_upstream_fetch() {
    for threads in [1, 4] {
        let origin = Origin::start().await;
        let dogs = image("news-dogs.jpg");
        origin.set(
            DOGS,
            Reply::slow_jpeg(Duration::from_millis(300), dogs.clone()),
        );
        let dir = tempfile::tempdir().unwrap();
        let svc = server::start(config(&origin, dir.path(), &[], |c| {
            c.server.threads = threads;
        }))
        .await
        .unwrap();
        let url = route_url(svc.addr, &origin.url(DOGS));
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let r = common::get(&url).await;
                (r.status().as_u16(), r.bytes().await.unwrap())
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "threads = {threads}");
            assert_eq!(body, dogs, "threads = {threads}");
        }
        assert_eq!(origin.hits(DOGS), 1, "threads = {threads}");
        // One miss (the request that fetched); every other answer was a hit, from memory or by
        // waiting for that fetch (SPEC §4: coalesced answers are hits).
        let stats: serde_json::Value =
            serde_json::from_str(&common::text(&c, svc.addr, "/stats").await).unwrap();
        assert_eq!(stats["misses"], 1, "threads = {threads}: {stats}");
        assert_eq!(stats["hits"], 199, "threads = {threads}: {stats}");
        assert!(stats["coalesced"].as_u64().unwrap() >= 1, "{stats}");
        drop(c);
        let addr = svc.addr;
        tokio::time::timeout(Duration::from_secs(15), svc.shutdown())
            .await
            .expect("every event loop stops");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "threads = {threads}: still accepting after shutdown"
        );
    }
}

#[tokio::test]
async fn a_restart_serves_the_mirror_without_the_origin() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let dogs = image("news-dogs.jpg");
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let url = route_url(svc.addr, &origin.url(DOGS));
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    svc.shutdown().await;
    origin.stop();

    let svc = server::start(config(&origin, dir.path(), &[], |_| {}))
        .await
        .unwrap();
    let url = route_url(svc.addr, &origin.url(DOGS));
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    assert_eq!(origin.hits(DOGS), 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn revalidation_and_stale_if_error() {
    let origin = Origin::start().await;
    let dogs = image("news-dogs.jpg");
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let cfg = config(&origin, dir.path(), &[], |c| {
        c.cache.ttl_secs = 100;
        c.cache.negative_ttl_secs = 30;
    });
    let svc = server::start_with(cfg, Deps::default().clock(clock.clone()))
        .await
        .unwrap();
    let url = route_url(svc.addr, &origin.url(DOGS));
    assert_eq!(common::get(&url).await.headers()["x-cache"], "MISS");
    clock.advance(50);
    assert_eq!(common::get(&url).await.headers()["x-cache"], "HIT-MEMORY");

    // Past the TTL: a conditional request; the origin's 304 keeps the copy.
    clock.advance(60);
    let r = common::get(&url).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    assert_eq!(origin.hits(DOGS), 2);
    assert_eq!(origin.requests()[1].header("if-none-match"), Some("\"v1\""));
    assert_eq!(common::get(&url).await.headers()["x-cache"], "HIT-MEMORY");

    // Past the TTL again, the origin fails: the mirrored copy is served, marked stale, with a
    // short max-age; the upstream is asked again only after negative_ttl_secs.
    clock.advance(101);
    origin.set(DOGS, Reply::Status(500));
    let r = common::get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(r.headers()["cache-control"], "public, max-age=30");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    assert_eq!(origin.hits(DOGS), 3);
    let r = common::get(&url).await;
    assert_eq!(r.headers()["x-cache"], "HIT-MEMORY");
    assert_eq!(origin.hits(DOGS), 3);

    // The origin vanishes altogether (connection refused, or 404): still served.
    clock.advance(31);
    origin.stop();
    let r = common::get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    svc.shutdown().await;
}

#[tokio::test]
async fn load_is_shed_with_a_fast_503() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|c| c.server.max_in_flight = 1).await;
    origin.set(
        DOGS,
        Reply::slow_jpeg(Duration::from_secs(3), image("news-dogs.jpg")),
    );
    let url = route_url(svc.addr, &origin.url(DOGS));
    let slow = tokio::spawn({
        let url = url.clone();
        async move { common::get(&url).await.status() }
    });
    // The slow request holds the only place once the origin has it.
    assert!(common::eventually(|| async { origin.hits(DOGS) == 1 }).await);
    let r = common::get(&format!("http://{}/healthz", svc.addr)).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("overloaded"));
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        common::get(&format!("http://{}/healthz", svc.addr))
            .await
            .status(),
        200
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|_| {}).await;
    let dogs = image("news-dogs.jpg");
    origin.set(
        DOGS,
        Reply::slow_jpeg(Duration::from_millis(1500), dogs.clone()),
    );
    let addr = svc.addr;
    let url = route_url(addr, &origin.url(DOGS));
    let inflight = tokio::spawn(async move {
        let r = client().get(&url).send().await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    });
    // In flight once the origin has it.
    assert!(common::eventually(|| async { origin.hits(DOGS) == 1 }).await);
    svc.shutdown().await;
    let (status, body) = inflight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, dogs);
    assert!(
        client()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let svc = server::start(config(&origin, &mirror, &[], |_| {}))
        .await
        .unwrap();
    assert_eq!(
        common::get(&format!("http://{}/healthz", svc.addr))
            .await
            .status(),
        200
    );
    assert_eq!(
        common::get(&format!("http://{}/readyz", svc.addr))
            .await
            .status(),
        200
    );
    std::fs::remove_dir_all(&mirror).unwrap();
    let r = common::get(&format!("http://{}/readyz", svc.addr)).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("not writable"));
    assert_eq!(
        common::get(&format!("http://{}/healthz", svc.addr))
            .await
            .status(),
        200
    );
    svc.shutdown().await;
}

/// The "done when" of the serving issue: every route the rewriter writes for the real posts is
/// served with the shipped config (hosts mapped onto a loopback origin), also after the origin dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_route_the_rewriter_writes_for_the_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("config/imgmirror.toml")).unwrap();
    let mut cfg = imgmirror::config::Config::from_parts("shipped", &shipped, &[]).unwrap();
    let rewriter = imgmirror::rewrite::Rewriter::new(&cfg);
    let mut upstreams = std::collections::BTreeSet::new();
    for entry in walkdir::WalkDir::new(root.join("tests/fixtures/posts")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let (_, report) = rewriter.rewrite(&std::fs::read(entry.path()).unwrap());
            upstreams.extend(report.rewritten.into_iter().map(|r| (r.route, r.upstream)));
        }
    }
    assert!(upstreams.len() > 100, "{}", upstreams.len());

    let hosts: std::collections::BTreeSet<String> = upstreams
        .iter()
        .map(|(_, u)| url::Url::parse(u).unwrap().host_str().unwrap().to_string())
        .collect();
    // https upstreams (juejin, cnBeta, yunyingpai) meet a TLS origin whose test CA the service
    // trusts through upstream.ca_file.
    let ca = common::TestCa::new(&hosts.iter().cloned().collect::<Vec<_>>());
    let origin = Origin::start_with(Some(&ca)).await;
    let jpeg = image("news-dogs.jpg");
    origin.set("*", Reply::jpeg(jpeg.clone()));
    origin.set("/content/delete/87343", Reply::Status(200)); // the non-image the CSRF post proxies
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    cfg.upstream.ca_file = ca_file.display().to_string();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.cache.dir = dir.path().join("mirror");
    for h in &hosts {
        cfg.upstream
            .resolve
            .insert(h.clone(), origin.addr.to_string());
    }
    // The links go on record as `imgmirror rewrite` records them: the shipped config fetches
    // only known links (upstream.fetch = "known").
    let tiers = imgmirror::store::open(&cfg).await.unwrap();
    let links = upstreams.iter().map(|(_, u)| u.clone()).collect();
    tiers.know(links, 1).await.unwrap();
    // The CSRF post's headimg proxies an article page: 415 while the origin answers, 502 once it
    // is gone (non-images are never mirrored).
    for (round, non_image) in [("origin up", 415), ("origin dead, after a restart", 502)] {
        let svc = server::start(cfg.clone()).await.unwrap();
        for (route, upstream) in &upstreams {
            let r = common::get(&format!("http://{}{route}", svc.addr)).await;
            if upstream.contains("www.a.com") {
                assert_eq!(r.status(), non_image, "{round}: {upstream}");
            } else {
                assert_eq!(r.status(), 200, "{round}: {upstream}");
                assert_eq!(r.bytes().await.unwrap(), jpeg, "{round}: {upstream}");
            }
        }
        svc.shutdown().await;
        origin.stop();
    }
}

use bytes::Bytes;

#[tokio::test]
async fn the_mirror_is_kept_within_disk_bytes() {
    let origin = Origin::start().await;
    let (a, b) = (image("news-dogs.jpg"), image("news-mountain.jpg"));
    origin.set("/a.jpg", Reply::jpeg(a.clone()));
    origin.set("/b.jpg", Reply::jpeg(b.clone()));
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    // The clock stands years ahead of the files' times: no `gc` pass is due in this test (its
    // recount would race the writes below; the budget is what is tested).
    let no_gc = |c: &mut imgmirror::config::Config| c.cache.gc_interval_secs = 1 << 40;
    let svc = server::start_with(
        config(&origin, dir.path(), &[], no_gc),
        Deps::default().clock(clock.clone()),
    )
    .await
    .unwrap();
    let c = client();
    assert_eq!(
        common::get(&route_url(svc.addr, &origin.url("/a.jpg")))
            .await
            .status(),
        200
    );
    clock.advance(10);
    assert_eq!(
        common::get(&route_url(svc.addr, &origin.url("/b.jpg")))
            .await
            .status(),
        200
    );
    svc.shutdown().await;
    assert_eq!(count_files(&dir.path().join("objects")), 2);

    // Restarted with room for one original: the least recently confirmed (a.jpg) goes.
    let budget = (b.len() + 1000) as u64;
    let svc = server::start_with(
        config(&origin, dir.path(), &[], |c| {
            no_gc(c);
            c.cache.disk_bytes = budget
        }),
        Deps::default().clock(clock),
    )
    .await
    .unwrap();
    let objects = dir.path().join("objects");
    assert!(
        common::eventually(|| async { count_files(&objects) == 1 }).await,
        "nothing evicted"
    );
    // The eviction is counted once the pass returns (just after the file goes).
    let counted = common::eventually(|| async {
        common::text(&c, svc.addr, "/metrics")
            .await
            .lines()
            .any(|l| l == "imgmirror_mirror_evictions_total{kind=\"original\"} 1")
    })
    .await;
    assert!(counted, "the eviction was not counted");
    origin.stop();
    let r = common::get(&route_url(svc.addr, &origin.url("/b.jpg"))).await;
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    assert_eq!(
        common::get(&route_url(svc.addr, &origin.url("/a.jpg")))
            .await
            .status(),
        502
    );
    svc.shutdown().await;
}

/// A client that never finishes its request headers is disconnected after the header read
/// timeout (`server.header_timeout_secs`, 2 s here), so slow-loris connections cannot pile up.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Served {
        svc,
        origin: _origin,
        dir: _dir,
    } = Served::start(|c| c.server.header_timeout_secs = 2).await;
    // One connection that never sends a byte (protocol detection), one that stops mid-headers.
    let mut silent = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
    // Timed from before the connection: the service's timer starts at accept, after this.
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "closed too early: {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent connection stays open");
    assert!(buf.is_empty());
    svc.shutdown().await;
}

/// Past `server.max_connections` a new public connection gets an immediate 503 and is closed,
/// while the admin listener still answers; when connections go away, service resumes.
#[tokio::test]
async fn connections_are_capped_and_the_admin_listener_stays_reachable() {
    use tokio::io::AsyncReadExt;
    let Served {
        origin: _origin,
        dir: _dir,
        svc,
    } = Served::start(|c| {
        c.server.max_connections = 8;
        c.server.admin_listen = "127.0.0.1:0".into();
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(svc.addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    let admin = svc.admin_addr.unwrap();
    assert_eq!(common::text(&client(), admin, "/healthz").await, "ok\n");
    drop(held);
    assert!(
        common::eventually(|| async {
            reqwest::Client::new()
                .get(format!("http://{}/healthz", svc.addr))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    svc.shutdown().await;
}

/// SPEC §5: a mirrored original is a complete image. Bodies cut short (a dropped connection with
/// no Content-Length; a Content-Length smaller than the image, so the client stops early) are
/// 502s: nothing stored, nothing cached, the next request asks the origin again, and a later whole
/// answer is mirrored.
#[tokio::test]
async fn truncated_originals_are_never_mirrored_or_cached() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let dogs = image("news-dogs.jpg");
    let png = image("fig-alpha.png");
    let gif = image("bridge.gif");
    let half = |b: &Bytes| b.slice(..b.len() / 2);
    origin.set("/cut.jpg", Reply::Cut { sent: half(&dogs) });
    origin.set("/cut.png", Reply::Cut { sent: half(&png) });
    origin.set("/cut.gif", Reply::Cut { sent: half(&gif) });
    origin.set(
        "/short.jpg",
        Reply::ShortLength {
            declared: dogs.len() - 2,
            body: dogs.clone(),
        },
    );
    let paths = ["/cut.jpg", "/cut.png", "/cut.gif", "/short.jpg"];
    for path in paths {
        for _ in 0..2 {
            let r = common::get(&route_url(svc.addr, &origin.url(path))).await;
            assert_eq!(r.status(), 502, "{path}");
            assert_eq!(r.headers()["cache-control"], "no-store");
            let body = r.text().await.unwrap();
            assert!(body.contains("incomplete"), "{path}: {body}");
        }
        assert_eq!(origin.hits(path), 2, "{path}: asked again, nothing cached");
    }
    let records = walk_files(&dir.path().join("urls"));
    assert!(records.is_empty(), "nothing mirrored: {records:?}");
    assert!(walk_files(&dir.path().join("objects")).is_empty());
    // The whole image, once the origin sends it, is mirrored.
    origin.set("/cut.jpg", Reply::jpeg(dogs.clone()));
    let r = common::get(&route_url(svc.addr, &origin.url("/cut.jpg"))).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == dogs);
    assert_eq!(walk_files(&dir.path().join("urls")).len(), 1);
    svc.shutdown().await;
}

/// The PNG `png` with the chunk at `at` (its length field's offset) given new data and a right
/// CRC.
fn with_chunk_data(png: &[u8], at: usize, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
    let kind = png[at + 4..at + 8].to_vec();
    let mut data = png[at + 8..at + 8 + len].to_vec();
    edit(&mut data);
    let mut out = png[..at].to_vec();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&kind);
    out.extend_from_slice(&data);
    let mut checked = kind.clone();
    checked.extend_from_slice(&data);
    out.extend_from_slice(&common::images::crc32(&checked).to_be_bytes());
    out.extend_from_slice(&png[at + 12 + len..]);
    out
}

/// Offsets of the chunks of type `kind` in `png`.
fn chunks(png: &[u8], kind: &[u8; 4]) -> Vec<usize> {
    let mut at = 8;
    let mut found = Vec::new();
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == kind {
            found.push(at);
        }
        at += 12 + len;
    }
    found
}

/// PNGs that end in `IEND` but cannot be decoded to their end (issue #26: such files were
/// mirrored and served as originals, then refused on resize): an impossible colour type, a wrong
/// header checksum, no image data, corrupt image data (chunk checksums right, the zlib stream
/// not) are each a 502, asked again next time, and mirrored nowhere. The valid file is mirrored.
#[tokio::test]
async fn broken_pngs_are_never_mirrored() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let good = image("fig-alpha.png").to_vec();
    let ihdr = chunks(&good, b"IHDR")[0];
    let idat = chunks(&good, b"IDAT");
    assert!(!idat.is_empty());
    let bad_colour = with_chunk_data(&good, ihdr, |d| d[9] = 5);
    let mut bad_crc = good.clone();
    bad_crc[ihdr + 8 + 13] ^= 0xFF;
    let mut no_data = good.clone();
    for &at in idat.iter().rev() {
        let len = u32::from_be_bytes(good[at..at + 4].try_into().unwrap()) as usize;
        no_data.drain(at..at + 12 + len);
    }
    let corrupt = with_chunk_data(&good, idat[0], |d| {
        let middle = d.len() / 2;
        d[middle] ^= 0x55;
        d[middle + 1] ^= 0xAA;
    });
    let png = |body: Vec<u8>| Reply::Ok {
        body: Bytes::from(body),
        content_type: "image/png",
        etag: None,
    };
    origin.set("/colour.png", png(bad_colour));
    origin.set("/crc.png", png(bad_crc));
    origin.set("/no-data.png", png(no_data));
    origin.set("/corrupt.png", png(corrupt));
    origin.set("/good.png", png(good.clone()));
    for path in ["/colour.png", "/crc.png", "/no-data.png", "/corrupt.png"] {
        for _ in 0..2 {
            let r = common::get(&route_url(svc.addr, &origin.url(path))).await;
            assert_eq!(r.status(), 502, "{path}");
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
        assert_eq!(origin.hits(path), 2, "{path}: asked again, nothing cached");
    }
    assert!(walk_files(&dir.path().join("urls")).is_empty());
    assert!(walk_files(&dir.path().join("objects")).is_empty());
    let r = common::get(&route_url(svc.addr, &origin.url("/good.png"))).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == good);
    assert_eq!(walk_files(&dir.path().join("urls")).len(), 1);
    svc.shutdown().await;
}

/// A blob whose bytes were changed behind the service's back is detected, refetched and
/// replaced: the mirror heals itself.
#[tokio::test]
async fn a_corrupted_blob_is_refetched_and_repaired() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let dogs = image("news-dogs.jpg");
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let url = origin.url(DOGS);
    assert_eq!(common::get(&route_url(svc.addr, &url)).await.status(), 200);
    svc.shutdown().await;
    let blobs = walk_files(&dir.path().join("objects"));
    assert_eq!(blobs.len(), 1);
    std::fs::write(&blobs[0], b"rotten bytes").unwrap();

    // A fresh service (nothing in memory): the bad blob is a miss, refetched and replaced.
    let svc = server::start(config(&origin, dir.path(), &[], |_| {}))
        .await
        .unwrap();
    let r = common::get(&route_url(svc.addr, &url)).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert!(r.bytes().await.unwrap() == dogs);
    assert_eq!(origin.hits(DOGS), 2);
    assert!(
        std::fs::read(&blobs[0]).unwrap() == dogs,
        "repaired in place"
    );
    svc.shutdown().await;
}

/// A pin in `upstream.resolve` maps a host to one address and one port: a redirect to the
/// pinned host on another port (in any case), or to another pinned host with a port, still
/// connects to the pinned address and port, never to another port of it.
#[tokio::test]
async fn redirects_cannot_move_a_pinned_host_to_another_port() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::with_hosts(&["second.test"], |_| {}).await;
    let other = Origin::start().await; // a second service on the same address, another port
    let dogs = image("news-dogs.jpg");
    other.set("*", Reply::jpeg(dogs.clone()));
    origin.set("/x.jpg", Reply::jpeg(dogs.clone()));
    let port = other.addr.port();
    origin.set(
        "/to-port.jpg",
        Reply::Redirect(format!("http://{HOST}:{port}/x.jpg")),
    );
    origin.set(
        "/to-upper.jpg",
        Reply::Redirect(format!("http://ORIGIN.TEST:{port}/x.jpg")),
    );
    origin.set(
        "/to-second-pin.jpg",
        Reply::Redirect(format!("http://second.test:{port}/x.jpg")),
    );
    for path in ["/to-port.jpg", "/to-upper.jpg", "/to-second-pin.jpg"] {
        let r = common::get(&route_url(svc.addr, &origin.url(path))).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.bytes().await.unwrap() == dogs);
    }
    assert_eq!(other.total_hits(), 0, "the other port was never contacted");
    assert_eq!(
        origin.hits("/x.jpg"),
        3,
        "each redirect went to the pinned port"
    );
    svc.shutdown().await;
}

/// Error bodies say why, but never echo the upstream URL's query (it may carry tokens): not for
/// a failed fetch, not for a refused redirect. (The request log strips it as well.)
#[tokio::test]
async fn error_bodies_do_not_echo_upstream_queries() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|_| {}).await;
    let dogs = image("news-dogs.jpg");
    origin.set(
        "/reset.jpg?token=query-secret",
        Reply::Truncated {
            declared: dogs.len(),
            sent: dogs.slice(..100),
        },
    );
    origin.set(
        "/hop.jpg?token=query-secret",
        Reply::Redirect("http://127.0.0.1:9/x.jpg?token=hop-secret".into()),
    );
    for (path, status) in [
        ("/reset.jpg?token=query-secret", 502),
        ("/hop.jpg?token=query-secret", 403),
    ] {
        let r = common::get(&route_url(svc.addr, &origin.url(path))).await;
        assert_eq!(r.status(), status, "{path}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("secret"), "{path}: {body}");
    }
    svc.shutdown().await;
}

/// The value of `imgmirror_sendfile_bytes_total` on the service's `/metrics`.
async fn sendfile_bytes(c: &reqwest::Client, addr: std::net::SocketAddr) -> u64 {
    let metrics = common::text(c, addr, "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("imgmirror_sendfile_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no imgmirror_sendfile_bytes_total in:\n{metrics}"))
}

/// Large bodies held in memory are sent from the mirror's file of the same bytes (sendfile),
/// byte for byte as from memory: over keep-alive HTTP/1 mixed with small bodies, HEAD and 304,
/// pipelined; over HTTP/2 they are copied. A blob cut short on disk after it was opened loses nothing: the
/// rest of the body comes from memory.
#[tokio::test]
async fn large_bodies_go_from_the_mirror_file_byte_for_byte() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let photo = image("news-mountain.jpg");
    assert!(
        photo.len() > 64 * 1024,
        "a body large enough to be sent from its file"
    );
    origin.set(DOGS, Reply::jpeg(photo.clone()));
    let url = route_url(svc.addr, &origin.url(DOGS));
    let small = common::route_url_with(
        svc.addr,
        &origin.url(DOGS),
        &Options {
            width: Some(64),
            ..Options::default()
        },
    );
    let c = client();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    same_bytes(&r.bytes().await.unwrap(), &photo);
    let before = sendfile_bytes(&c, svc.addr).await;

    // One keep-alive connection: the large body, a small one (copied), HEAD, a 304, again.
    let etag = {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "HIT-MEMORY");
        let etag = r.headers()["etag"].clone();
        same_bytes(&r.bytes().await.unwrap(), &photo);
        etag
    };
    let thumb = c.get(&small).send().await.unwrap().bytes().await.unwrap();
    assert!(thumb.len() < 64 * 1024 && thumb.starts_with(&[0xFF, 0xD8]));
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(
        r.headers()["content-length"],
        photo.len().to_string().as_str()
    );
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    same_bytes(
        &c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        &photo,
    );
    assert_eq!(
        sendfile_bytes(&c, svc.addr).await - before,
        2 * photo.len() as u64,
        "the two large GETs, and nothing else, went from the file"
    );

    // Pipelined: three requests written at once, three whole answers in order.
    let path = url
        .trim_start_matches(&format!("http://{}", svc.addr))
        .to_string();
    let small_path = small
        .trim_start_matches(&format!("http://{}", svc.addr))
        .to_string();
    let answers = tokio::task::spawn_blocking({
        let addr = svc.addr;
        move || pipelined(addr, &[&path, &small_path, &path])
    })
    .await
    .unwrap();
    assert_eq!(answers.len(), 3);
    for (got, want) in answers.iter().zip([&photo, &thumb, &photo]) {
        same_bytes(got, want);
    }
    let after_pipelined = sendfile_bytes(&c, svc.addr).await;
    assert_eq!(after_pipelined - before, 4 * photo.len() as u64);

    // HTTP/2 frames bodies in its own buffers: copied, byte for byte.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = h2.get(&url).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        same_bytes(&r.bytes().await.unwrap(), &photo);
    }
    assert_eq!(sendfile_bytes(&c, svc.addr).await, after_pipelined);

    // The blob cut to half on disk (in place: the open file sees it): the first half comes
    // from the file, the rest from memory.
    let blob = walkdir::WalkDir::new(dir.path().join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.len() == photo.len() as u64))
        .expect("the original's blob")
        .into_path();
    let half = photo.len() as u64 / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(half)
        .unwrap();
    let before = sendfile_bytes(&c, svc.addr).await;
    same_bytes(
        &c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        &photo,
    );
    let from_file = sendfile_bytes(&c, svc.addr).await - before;
    assert_eq!(from_file, half, "from a file of {half} bytes");
    same_bytes(
        &c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        &photo,
    );
    svc.shutdown().await;
}

/// Writes GETs of `paths` on one connection at once, then reads the answers' bodies in order.
fn pipelined(addr: std::net::SocketAddr, paths: &[&str]) -> Vec<Vec<u8>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let requests: String = paths
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: {addr}\r\n\r\n"))
        .collect();
    stream.write_all(requests.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut bodies = Vec::new();
    for _ in paths {
        let mut length = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length.expect("a content-length")];
        reader.read_exact(&mut body).unwrap();
        bodies.push(body);
    }
    bodies
}

/// Asserts `got == want`, naming the first differing byte rather than printing both bodies.
fn same_bytes(got: &[u8], want: &[u8]) {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "{} bytes where {} were expected; first difference at {first:?}",
        got.len(),
        want.len()
    );
}

/// Work nobody waits for (issue: 400 dropped requests for slow images left a normal cold request
/// unanswered after 60 s). Requests for slow images on one host, each dropped by its client right
/// after sending (HTTP/1: the connection closed; HTTP/2: streams reset), then a cold request for
/// another host: it is answered while the slow host's fetches are still running (one slow host
/// holds at most `per_host_concurrency` slots, never all of them), and the queued fetches whose
/// clients left give up before contacting the origin (the old code fetched every one of them).
#[tokio::test]
async fn dropped_requests_for_a_slow_host_neither_block_others_nor_reach_the_origin() {
    use tokio::io::AsyncWriteExt;
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::with_hosts(&["slow.test", "fast.test"], |c| {
        c.upstream.concurrency = 4;
        c.upstream.per_host_concurrency = 2;
        // Long enough that no queued fetch is turned away for waiting: they go because their
        // clients went.
        c.upstream.queue_wait_secs = 60;
    })
    .await;
    let slow = Duration::from_secs(8);
    for i in 0..60 {
        origin.set(
            &format!("/slow/{i}.jpg"),
            Reply::slow_jpeg(slow, image("news-dogs.jpg")),
        );
    }
    origin.set("/fast.jpg", Reply::jpeg(image("news-mountain.jpg")));
    let slow_hits = || {
        (0..60)
            .map(|i| origin.hits(&format!("/slow/{i}.jpg")))
            .sum::<usize>()
    };
    // HTTP/1: each request sent, its connection closed at once.
    for i in 0..30 {
        let url = imgmirror::route::encode(
            &format!("http://slow.test/slow/{i}.jpg"),
            &Options::default(),
            None,
        )
        .unwrap();
        let mut s = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
        s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        drop(s);
    }
    // HTTP/2: streams opened on one connection and reset by the client going away.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for i in 30..60 {
        let url = route_url(svc.addr, &format!("http://slow.test/slow/{i}.jpg"));
        let c = h2.clone();
        streams.push(tokio::spawn(async move { c.get(url).send().await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in &streams {
        s.abort();
    }
    drop(h2);

    // Another host's cold image is answered while the slow fetches still run.
    let r = common::get(&route_url(svc.addr, "http://fast.test/fast.jpg")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), image("news-mountain.jpg"));
    let stats = common::json(&format!("http://{}/stats", svc.addr)).await;
    assert_eq!(
        stats["upstream"]["fetches"], 1,
        "only the fast fetch has ended: the slow ones still run: {stats}"
    );
    assert!(
        slow_hits() <= 2,
        "one host holds at most 2 slots: {}",
        slow_hits()
    );

    // Once the running fetches end, nothing queued behind them is sent: nobody wants it.
    let settled = common::eventually_within(Duration::from_secs(20), || async {
        let s = common::json(&format!("http://{}/stats", svc.addr)).await;
        s["upstream"]["fetches"].as_u64() >= Some(3)
    })
    .await;
    assert!(settled, "the two slow fetches ended");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow_hits(),
        2,
        "queued fetches of dropped requests reached the origin"
    );
    svc.shutdown().await;
}

/// Reads from `s` until the server closes it (EOF or reset); returns the bytes read, or `None`
/// if it was still open after `limit` (a liveness bound, not a measurement).
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(all)
}

/// The HTTP/2 connection preface and a SETTINGS frame (with `settings`: id and value pairs).
fn h2_preface(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let len = settings.len() * 6;
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x4,
        0,
        0,
        0,
        0,
        0,
    ]);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

/// A HEADERS frame on stream 1 for `GET path` (HPACK: static-table names, literal values).
fn h2_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (name_index, value) in [(0x44u8, path), (0x41, "x")] {
        // :path and :authority, literal with an indexed name, no Huffman (values < 127 bytes).
        assert!(value.len() < 127);
        block.push(name_index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let len = block.len();
    let mut out = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x1,
        0x5,
        0,
        0,
        0,
        1,
    ];
    out.extend_from_slice(&block);
    out
}

/// Issue #23 item 4: idle connections of both protocols are closed after
/// `server.idle_timeout_secs`, so they cannot fill `server.max_connections` for good (before, 40
/// idle HTTP/2 connections took all 40 places and a fresh client got 503 for ever).
#[tokio::test]
async fn idle_connections_of_both_protocols_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Served {
        origin: _origin,
        dir: _dir,
        svc,
    } = Served::start(|c| {
        c.server.max_connections = 4;
        // Long enough that the first idle connection is still open when the fifth is refused.
        c.server.idle_timeout_secs = 3;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        // HTTP/1: one request answered, then nothing.
        let mut s = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        idle.push(s);
        // HTTP/2: the preface and settings, then nothing.
        let mut s = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
        s.write_all(&h2_preface(&[])).await.unwrap();
        let mut frame = [0u8; 9];
        s.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame[3], 0x4, "the server's SETTINGS");
        idle.push(s);
    }
    // Every place taken: a fifth connection is refused.
    let mut fifth = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
    let refused = read_until_closed(&mut fifth, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(refused.starts_with(b"HTTP/1.1 503"));
    // The idle ones are closed by the service.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            read_until_closed(s, Duration::from_secs(20))
                .await
                .is_some(),
            "idle connection {i} (HTTP/{}) still open",
            if i % 2 == 0 { 1 } else { 2 }
        );
    }
    let ok = common::eventually(|| async {
        client()
            .get(format!("http://{}/healthz", svc.addr))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        ok,
        "a fresh client is served once idle connections are gone"
    );
    let metrics = common::text(&client(), svc.addr, "/metrics").await;
    let closed = metrics
        .lines()
        .find(|l| l.starts_with("imgmirror_connections_closed_total{reason=\"idle\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(closed >= 4.0, "{metrics}");
    svc.shutdown().await;
}

/// Issue #23 item 4: a client that reads nothing of a large image is dropped after
/// `server.send_timeout_secs` on both protocols (HTTP/1: its socket stays full; HTTP/2: its
/// stream window stays 0), and while its response is unfinished it holds a place in the
/// service-wide bound (`cache.memory_bytes`): another large response is a 503 rather than more
/// memory. Before, 30 such clients held 758 MB (HTTP/1) and 874 MB (HTTP/2) for ever.
#[tokio::test]
async fn clients_that_read_nothing_are_dropped_and_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A 12 MB PNG of noise: larger than any socket buffer on the way.
    let mut seed = 0x2545_f491_u32;
    let noise = image::RgbImage::from_fn(2000, 2000, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        image::Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
    });
    let mut png = Vec::new();
    noise
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert!(png.len() > 10 << 20, "{}", png.len());
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|c| {
        c.server.send_timeout_secs = 3;
        c.cache.memory_bytes = 16 << 20;
    })
    .await;
    origin.set(
        "/big.png",
        Reply::Ok {
            body: bytes::Bytes::from(png.clone()),
            content_type: "image/png",
            etag: None,
        },
    );
    let route =
        imgmirror::route::encode(&origin.url("/big.png"), &Options::default(), None).unwrap();
    // Warm it (read whole), so the stalled clients below are memory hits.
    let whole = common::get(&format!("http://{}{route}", svc.addr)).await;
    assert_eq!(whole.bytes().await.unwrap().len(), png.len());
    let held = || async {
        let m = common::text(&client(), svc.addr, "/metrics").await;
        m.lines()
            .find(|l| l.starts_with("imgmirror_unfinished_response_bytes "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for protocol in [1, 2] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stalled = socket.connect(svc.addr).await.unwrap();
        if protocol == 1 {
            stalled
                .write_all(format!("GET {route} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
        } else {
            // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may send no DATA on any stream.
            stalled.write_all(&h2_preface(&[(0x4, 0)])).await.unwrap();
            stalled.write_all(&h2_get(&route)).await.unwrap();
        }
        let mut some = [0u8; 9];
        stalled.read_exact(&mut some).await.unwrap();
        assert!(
            common::eventually(|| async { held().await >= png.len() as u64 }).await,
            "HTTP/{protocol}: the stalled response holds its bytes"
        );
        // Another large response now would pass cache.memory_bytes: 503, not more memory.
        let r = common::get(&format!("http://{}{route}", svc.addr)).await;
        assert_eq!(r.status(), 503, "HTTP/{protocol}");
        assert!(r.text().await.unwrap().contains("slow clients"));
        // The stalled client is dropped, with what it held (watched without reading from it:
        // reading would un-stall it).
        let closed = || async {
            let m = common::text(&client(), svc.addr, "/metrics").await;
            m.contains(&format!(
                "imgmirror_connections_closed_total{{reason=\"send_timeout\"}} {protocol}"
            ))
        };
        assert!(
            common::eventually_within(Duration::from_secs(15), closed).await,
            "HTTP/{protocol}: not dropped: {}",
            common::text(&client(), svc.addr, "/metrics").await
        );
        let got = read_until_closed(&mut stalled, Duration::from_secs(20)).await;
        let got = got.unwrap_or_else(|| panic!("HTTP/{protocol}: still open"));
        assert!(
            got.len() < png.len(),
            "HTTP/{protocol}: it read nothing, yet got it all"
        );
        assert!(
            common::eventually(|| async { held().await == 0 }).await,
            "HTTP/{protocol}: the bytes are given back"
        );
        let r = common::get(&format!("http://{}{route}", svc.addr)).await;
        assert_eq!(r.status(), 200, "HTTP/{protocol}");
        assert_eq!(r.bytes().await.unwrap().len(), png.len());
    }
    let metrics = common::text(&client(), svc.addr, "/metrics").await;
    assert!(
        metrics.contains("imgmirror_connections_closed_total{reason=\"send_timeout\"} 2"),
        "{metrics}"
    );
    svc.shutdown().await;
}
