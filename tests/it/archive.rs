//! Archive rescue, end to end and on loopback only: a fake Wayback Machine (`common::wayback`:
//! redirects to the nearest capture, raw bytes there, 404 for what it does not hold, an HTML page
//! with 200 for one URL, a 429 once) mapped with `upstream.resolve`, never a real archive. Gone
//! origins (404, a closed port, a name that does not resolve through the resolver seam) are
//! rescued byte for byte and mirrored with their capture; an origin 500 is not gone; nothing
//! anywhere stays a 404, remembered; the post's date picks the capture; a second warm fetches
//! nothing; a restart serves the archived copy; revalidation prefers the origin when it is back
//! with a real image, and only then.

use crate::common;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::bin;
use common::wayback::Wayback;
use common::{config, image, route_url, Origin, Reply, HOST};
use imgmirror::clock::ManualClock;
use imgmirror::deps::Deps;
use imgmirror::server;
use imgmirror::upstream::Lookup;

const T0: u64 = 1_800_000_000;

/// The resolver seam: every name "does not resolve" (no DNS is ever asked); the names asked for
/// are kept.
#[derive(Default)]
struct NoSuchHost(Mutex<Vec<String>>);

impl Lookup for NoSuchHost {
    fn lookup(
        &self,
        host: &str,
    ) -> imgmirror::store::BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        self.0.lock().unwrap().push(host.to_string());
        Box::pin(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "failed to lookup address information: Name or service not known",
            ))
        })
    }
}

/// A config reaching the origin (as `origin.test`) and the fake archive (as `archive.test`, and
/// `archive-b.test` for a second source), archive rescue on.
fn archive_config(
    origin: &Origin,
    wayback: &Wayback,
    dir: &Path,
    sources: &[&str],
) -> imgmirror::config::Config {
    config(origin, dir, &[], |c| {
        c.archive.enabled = true;
        c.archive.sources = sources.iter().map(|s| s.to_string()).collect();
        for h in ["archive.test", "archive-b.test"] {
            c.upstream
                .resolve
                .insert(h.into(), wayback.addr.to_string());
        }
    })
}

const WAYBACK: &str = "http://archive.test/web/{timestamp}id_/{url}";

fn record_of(mirror: &Path, url: &str) -> serde_json::Value {
    let path = mirror.join(imgmirror::store::record_path(
        imgmirror::store::Kind::Original,
        url,
    ));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap()
}

/// The value of the archive lookup counter for (source, outcome) on the service at `addr`.
async fn lookups(addr: std::net::SocketAddr, source: &str, outcome: &str) -> Option<f64> {
    let text = common::get(&format!("http://{addr}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    let line =
        format!("imgmirror_archive_lookups_total{{source=\"{source}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_origin_is_rescued_byte_exact_mirrored_with_its_capture_and_kept_after_a_restart() {
    let origin = Origin::start().await;
    origin.set("/a.jpg", Reply::Status(404));
    let wayback = Wayback::start().await;
    let dogs = image("news-dogs.jpg");
    let upstream = origin.url("/a.jpg");
    wayback.capture(&upstream, "20210601000000", dogs.clone(), "image/jpeg");
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_config(&origin, &wayback, dir.path(), &[WAYBACK]);
    let svc = server::start(cfg.clone()).await.unwrap();
    let url = route_url(svc.addr, &upstream);

    let r = common::get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "ARCHIVE");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    let r = common::get(&url).await;
    assert_eq!(r.headers()["x-cache"], "HIT-MEMORY");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    // One redirect to the capture, then its bytes.
    let asked = wayback.requests();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[1].starts_with("/web/20210601000000id_/"), "{asked:?}");

    let record = record_of(dir.path(), &upstream);
    assert_eq!(record["archive"]["source"], "archive.test");
    assert_eq!(record["archive"]["timestamp"], "20210601000000");
    assert_eq!(
        record["archive"]["url"],
        format!("http://archive.test/web/20210601000000id_/{upstream}")
    );
    assert_eq!(record["hash"], imgmirror::store::sha256_hex(&dogs));

    let stats = common::json(&format!("http://{}/stats", svc.addr)).await;
    assert_eq!(stats["archive"]["lookups"], 1);
    assert_eq!(stats["archive"]["rescued"], 1);
    assert_eq!(stats["archive"]["recent"][0]["url"], upstream);
    assert_eq!(stats["archive"]["recent"][0]["capture"], "20210601000000");
    assert_eq!(
        lookups(svc.addr, "archive.test", "rescued").await,
        Some(1.0)
    );
    // The status page lists the rescue (rendered by a real browser; skipped outside CI without
    // Chromium).
    if let Some(chromium) = common::web::chromium() {
        let page = common::web::render(&chromium, &format!("http://{}/", svc.addr)).await;
        assert!(page.console().is_empty(), "{:?}", page.console());
        assert!(page.dom.contains("id=\"rescued\">1<"), "{:.3000}", page.dom);
        assert!(
            page.dom
                .contains(&format!("<td>{upstream}</td><td>archive.test</td>")),
            "{:.4000}",
            page.dom
        );
    }
    svc.shutdown().await;

    // A restart with the origin still dead (stopped now) serves the archived copy from disk.
    origin.stop();
    let svc = server::start(cfg).await.unwrap();
    let r = common::get(&route_url(svc.addr, &upstream)).await;
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    assert_eq!(
        wayback.requests().len(),
        2,
        "the archive was not asked again"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn a_refused_connection_and_a_name_that_does_not_resolve_are_gone_too() {
    let origin = Origin::start().await;
    let wayback = Wayback::start().await;
    let (dogs, mountain) = (image("news-dogs.jpg"), image("news-mountain.jpg"));
    let closed = common::free_port(); // bound once, then released: nothing listens there
    let refused = "http://closed.test/r.jpg";
    let nxdomain = "http://nxdomain.test/n.jpg";
    wayback.capture(refused, "20210601000000", dogs.clone(), "image/jpeg");
    wayback.capture(nxdomain, "20210601000000", mountain.clone(), "image/jpeg");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = archive_config(&origin, &wayback, dir.path(), &[WAYBACK]);
    cfg.upstream
        .resolve
        .insert("closed.test".into(), format!("127.0.0.1:{closed}"));
    let lookup = Arc::new(NoSuchHost::default());
    let svc = server::start_with(
        cfg,
        Deps::default()
            .clock(Arc::new(ManualClock::new(T0)))
            .lookup(lookup.clone()),
    )
    .await
    .unwrap();
    for (upstream, want) in [(refused, &dogs), (nxdomain, &mountain)] {
        let r = common::get(&route_url(svc.addr, upstream)).await;
        assert_eq!(r.status(), 200, "{upstream}");
        assert_eq!(r.headers()["x-cache"], "ARCHIVE", "{upstream}");
        assert_eq!(&r.bytes().await.unwrap(), want, "{upstream}");
    }
    // The name was asked of the seam (and only that name: the archive is pinned), never of DNS.
    assert_eq!(*lookup.0.lock().unwrap(), ["nxdomain.test"]);
    svc.shutdown().await;
}

#[tokio::test]
async fn an_origin_500_is_not_gone_and_nothing_anywhere_stays_a_remembered_404() {
    let origin = Origin::start().await;
    origin.set("/broken.jpg", Reply::Status(500));
    origin.set("/none.jpg", Reply::Status(410));
    let wayback = Wayback::start().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = server::start(archive_config(&origin, &wayback, dir.path(), &[WAYBACK]))
        .await
        .unwrap();
    let broken = route_url(svc.addr, &origin.url("/broken.jpg"));
    assert_eq!(common::get(&broken).await.status(), 502);
    assert!(
        wayback.requests().is_empty(),
        "a 500 made an archive lookup"
    );

    let none = route_url(svc.addr, &origin.url("/none.jpg"));
    assert_eq!(common::get(&none).await.status(), 404);
    assert_eq!(wayback.requests().len(), 1);
    // Remembered for negative_ttl_secs: neither the origin nor the archive is asked again.
    assert_eq!(common::get(&none).await.status(), 404);
    assert_eq!(wayback.requests().len(), 1);
    assert_eq!(origin.hits("/none.jpg"), 1);
    assert_eq!(
        lookups(svc.addr, "archive.test", "not_found").await,
        Some(1.0)
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn an_html_page_is_not_an_image_a_429_is_waited_out_and_sources_go_in_order() {
    let origin = Origin::start().await;
    origin.set("*", Reply::Status(404));
    let wayback = Wayback::start().await;
    let dogs = image("news-dogs.jpg");
    let html = origin.url("/html.jpg");
    let slow = origin.url("/slow.jpg");
    wayback.capture(&html, "20210601000000", dogs.clone(), "image/jpeg");
    wayback.capture(&slow, "20210601000000", dogs.clone(), "image/jpeg");
    wayback.throttle_once(&slow);
    // The first source answers 200 with an HTML page for everything (as a bad mirror would).
    let first = Wayback::start().await;
    first.html_for(&html);
    first.html_for(&slow);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = archive_config(
        &origin,
        &wayback,
        dir.path(),
        &["http://archive-b.test/web/{timestamp}id_/{url}", WAYBACK],
    );
    cfg.upstream
        .resolve
        .insert("archive-b.test".into(), first.addr.to_string());
    let svc = server::start(cfg).await.unwrap();
    for upstream in [&html, &slow] {
        let r = common::get(&route_url(svc.addr, upstream)).await;
        assert_eq!(r.status(), 200, "{upstream}");
        assert_eq!(r.bytes().await.unwrap(), dogs, "{upstream}");
    }
    // The 429 was retried after its Retry-After (1 s) and then followed to the capture.
    let slow_asked = wayback
        .requests()
        .into_iter()
        .filter(|r| r.ends_with("/slow.jpg"))
        .count();
    assert_eq!(slow_asked, 3, "429, then the redirect, then the bytes");
    for (source, outcome, n) in [
        ("archive-b.test", "not_image", 2.0),
        ("archive.test", "rescued", 2.0),
    ] {
        assert_eq!(
            lookups(svc.addr, source, outcome).await,
            Some(n),
            "{source} {outcome}"
        );
    }
    svc.shutdown().await;
}

#[tokio::test]
async fn after_the_ttl_the_origin_comes_first_and_replaces_the_copy_only_with_a_real_image() {
    let origin = Origin::start().await;
    origin.set("/a.jpg", Reply::Status(404));
    let wayback = Wayback::start().await;
    let (dogs, mountain) = (image("news-dogs.jpg"), image("news-mountain.jpg"));
    let upstream = origin.url("/a.jpg");
    wayback.capture(&upstream, "20210601000000", dogs.clone(), "image/jpeg");
    let dir = tempfile::tempdir().unwrap();
    let cfg = archive_config(&origin, &wayback, dir.path(), &[WAYBACK]);
    let ttl = cfg.cache.ttl_secs;
    let clock = Arc::new(ManualClock::new(T0));
    let svc = server::start_with(cfg, Deps::default().clock(clock.clone()))
        .await
        .unwrap();
    let url = route_url(svc.addr, &upstream);
    assert_eq!(common::get(&url).await.bytes().await.unwrap(), dogs);

    // Past the TTL the origin answers an HTML page with 200 (a parked domain): not the image
    // coming back. The archived copy stays, served stale.
    clock.advance(ttl + 1);
    svc.state
        .mirror
        .forget_in_memory(vec![upstream.clone()])
        .await;
    origin.set(
        "/a.jpg",
        Reply::Ok {
            body: Bytes::from_static(b"<html>This domain is for sale</html>"),
            content_type: "text/html",
            etag: None,
        },
    );
    let r = common::get(&url).await;
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(r.bytes().await.unwrap(), dogs);
    assert_eq!(
        record_of(dir.path(), &upstream)["archive"]["source"],
        "archive.test"
    );
    // The origin was asked without the archive's validators.
    let asked = origin.requests();
    assert!(asked.iter().all(|s| s.header("if-none-match").is_none()));

    // Later, the origin is back with a real image: it replaces the archived copy.
    clock.advance(ttl + 1);
    svc.state
        .mirror
        .forget_in_memory(vec![upstream.clone()])
        .await;
    origin.set("/a.jpg", Reply::jpeg(mountain.clone()));
    let r = common::get(&url).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.bytes().await.unwrap(), mountain);
    let record = record_of(dir.path(), &upstream);
    assert!(record.get("archive").is_none(), "{record}");
    assert_eq!(record["hash"], imgmirror::store::sha256_hex(&mountain));
    assert_eq!(
        wayback.requests().len(),
        2,
        "the archive was asked only the first time"
    );
    svc.shutdown().await;
}

/// `imgmirror warm` through the binary: each post's date picks the nearest capture (a post with
/// `date: Invalid Date` uses now, so the latest), rescued images are reported apart from fetched
/// and dead ones with their capture, and a second run fetches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_uses_each_posts_date_and_reports_what_it_rescued() {
    let origin = Origin::start().await;
    origin.set("/live.jpg", Reply::jpeg(image("news-dogs.jpg")));
    origin.set("*", Reply::Status(404));
    let wayback = Wayback::start().await;
    let (old, new) = (image("news-mountain.jpg"), image("large-dragonfly.jpg"));
    let (june, undated, dead) = (
        origin.url("/june.jpg"),
        origin.url("/undated.jpg"),
        origin.url("/dead.jpg"),
    );
    for u in [&june, &undated] {
        wayback.capture(u, "20210601000000", old.clone(), "image/jpeg");
        wayback.capture(u, "20240101000000", new.clone(), "image/jpeg");
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cfg = archive_config(&origin, &wayback, &d.join("mirror"), &[WAYBACK]);
    cfg.rewrite.mirror_hosts = vec![HOST.into()];
    std::fs::write(d.join("imgmirror.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    std::fs::create_dir_all(d.join("posts")).unwrap();
    let post = |date: &str, img: &str| {
        format!("---\ntitle: t\ndate: {date}\n---\n<img src=\"https://cors.zfour.workers.dev/?{img}\">\n")
    };
    std::fs::write(
        d.join("posts/a.md"),
        post("Tue, 08 Jun 2021 00:39:00 GMT", &june),
    )
    .unwrap();
    std::fs::write(d.join("posts/b.md"), post("Invalid Date", &undated)).unwrap();
    std::fs::write(
        d.join("posts/c.md"),
        format!(
            "---\ndate: 2021-06-08 08:00:00\n---\n![x]({})\n![y]({})\n",
            origin.url("/live.jpg"),
            dead
        ),
    )
    .unwrap();

    let warm = |report: &'static str| async move {
        let args = [
            "warm",
            "--config",
            "imgmirror.toml",
            "--report",
            report,
            "posts",
        ];
        bin::run_async(d, &args, &[]).await
    };
    let out = warm("r1.json").await;
    assert_eq!(out.code, 1, "one dead link: {}", out.stderr);
    assert!(
        out.stderr.contains(
            "warm: 4 images: 1 fetched, 2 archived, 0 already mirrored, 0 stale kept, 1 dead"
        ),
        "{}",
        out.stderr
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("r1.json")).unwrap()).unwrap();
    let archived = report["archived"].as_array().unwrap();
    let capture_of = |u: &str| {
        archived
            .iter()
            .find(|a| a["url"] == u)
            .unwrap_or_else(|| panic!("{u} not archived: {report}"))["capture"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        capture_of(&june),
        "20210601000000",
        "nearest to the post's date"
    );
    assert_eq!(
        capture_of(&undated),
        "20240101000000",
        "no date: nearest to now"
    );
    assert_eq!(report["dead"][0]["url"], dead);
    assert_eq!(report["dead"][0]["status"], 404);
    assert_eq!(report["fetched"], 1);
    let mirror = d.join("mirror");
    assert_eq!(
        record_of(&mirror, &june)["hash"],
        imgmirror::store::sha256_hex(&old)
    );
    assert_eq!(
        record_of(&mirror, &undated)["hash"],
        imgmirror::store::sha256_hex(&new)
    );

    let asked = wayback.requests().len();
    let fetched = origin.total_hits();
    let out = warm("r2.json").await;
    assert!(
        out.stderr.contains(
            "warm: 4 images: 0 fetched, 0 archived, 3 already mirrored, 0 stale kept, 1 dead"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(
        wayback.requests().len(),
        asked + 1,
        "only the dead one is looked up again"
    );
    assert_eq!(
        origin.total_hits(),
        fetched + 1,
        "only the dead one is asked again"
    );
}
