//! What operators see: exact counts on `/metrics` (parsed) and `/stats` after a scripted sequence,
//! hit-ratio windows that move with an injected clock, the admin listener, JSON request logs that
//! carry no secrets, and the status page rendered by a real headless Chromium.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{client, config, image, Origin, Reply, Served};
use imgmirror::clock::ManualClock;
use imgmirror::deps::Deps;
use imgmirror::server;

/// 1,800,000,000 is a whole minute, so minute windows are easy to reason about.
const T0: u64 = 1_800_000_000;

/// Samples by (metric name, sorted labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses the exposition into (metric name, sorted labels) -> value.
fn scrape(text: &str) -> Samples {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("exposition parses");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert((s.metric, labels), v);
    }
    out
}

async fn fetch_stats(addr: std::net::SocketAddr) -> serde_json::Value {
    common::json(&format!("http://{addr}/stats")).await
}

fn get(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *m.get(&(name.to_string(), l))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test]
async fn metrics_and_stats_count_a_scripted_sequence_exactly() {
    let origin = Origin::start().await;
    let a = image("news-dogs.jpg");
    let b = image("news-mountain.jpg");
    origin.set("/a.jpg", Reply::jpeg(a.clone()));
    origin.set("/b.jpg", Reply::jpeg(b.clone()));
    origin.set("/c.jpg", Reply::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let cfg = config(&origin, dir.path(), &[], |c| {
        c.cache.ttl_secs = 100;
        c.cache.negative_ttl_secs = 30;
    });
    // A first instance puts a.jpg in the mirror.
    let warm = server::start_with(cfg.clone(), Deps::default().clock(clock.clone()))
        .await
        .unwrap();
    let url = |addr, path: &str| common::route_url(addr, &origin.url(path));
    assert_eq!(common::get(&url(warm.addr, "/a.jpg")).await.status(), 200);
    warm.shutdown().await;

    let svc = server::start_with(cfg, Deps::default().clock(clock.clone()))
        .await
        .unwrap();
    let c = client();
    // The mirror is measured at start (in the background): wait for it, so the count below is
    // that scan plus this sequence's writes.
    let scanned = common::eventually(|| async {
        let m = scrape(&common::text(&c, svc.addr, "/metrics").await);
        get(&m, "imgmirror_mirror_objects", &[]) == 1.0
    })
    .await;
    assert!(scanned, "the mirror scan at start never reported a.jpg");
    let r = common::get(&url(svc.addr, "/a.jpg")).await;
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(
        common::get(&url(svc.addr, "/a.jpg")).await.headers()["x-cache"],
        "HIT-MEMORY"
    );
    let r = common::get_with(
        &url(svc.addr, "/a.jpg"),
        &[("if-none-match", etag.as_str())],
    )
    .await;
    assert_eq!(r.status(), 304);
    assert_eq!(
        common::get(&url(svc.addr, "/b.jpg")).await.headers()["x-cache"],
        "MISS"
    );
    assert_eq!(common::get(&url(svc.addr, "/c.jpg")).await.status(), 502);
    clock.advance(101);
    origin.set("/a.jpg", Reply::Status(500));
    assert_eq!(
        common::get(&url(svc.addr, "/a.jpg")).await.headers()["x-cache"],
        "STALE"
    );

    let stats: serde_json::Value = fetch_stats(svc.addr).await;
    assert_eq!(stats["hits"], 3);
    assert_eq!(stats["misses"], 2);
    assert_eq!(stats["hit_ratio"], 0.6);
    assert_eq!(stats["memory"]["hits"], 2);
    assert_eq!(stats["disk"]["hits"], 1);
    assert_eq!(stats["stale"], 1);
    assert_eq!(stats["upstream"]["fetches"], 3);
    assert_eq!(stats["upstream"]["errors"], 2);
    assert_eq!(stats["upstream"]["bytes"], b.len() as u64);
    assert_eq!(stats["uptime_secs"], 101);
    // At T0+101: the last 60 s (rolling) hold only the stale answer, a miss.
    assert_eq!(stats["hit_ratio_1m"], 0.0);
    assert_eq!(stats["hit_ratio_5m"], 0.6);
    assert_eq!(stats["hit_ratio_15m"], 0.6);
    assert_eq!(stats["hosts"][0]["host"], "origin.test");
    assert_eq!(stats["hosts"][0]["fetches"], 3);

    let m = scrape(
        &common::get(&format!("http://{}/metrics", svc.addr))
            .await
            .text()
            .await
            .unwrap(),
    );
    let lookups = "imgmirror_cache_lookups_total";
    assert_eq!(
        get(&m, lookups, &[("tier", "memory"), ("result", "hit")]),
        2.0
    );
    assert_eq!(
        get(&m, lookups, &[("tier", "memory"), ("result", "miss")]),
        3.0
    );
    assert_eq!(
        get(&m, lookups, &[("tier", "disk"), ("result", "hit")]),
        1.0
    );
    assert_eq!(
        get(&m, lookups, &[("tier", "disk"), ("result", "miss")]),
        2.0
    );
    assert_eq!(get(&m, "imgmirror_stale_responses_total", &[]), 1.0);
    assert_eq!(
        get(&m, "imgmirror_upstream_fetches_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        get(
            &m,
            "imgmirror_upstream_fetches_total",
            &[("outcome", "error")]
        ),
        2.0
    );
    assert_eq!(
        get(&m, "imgmirror_upstream_received_bytes_total", &[]),
        b.len() as f64
    );
    let requests = "imgmirror_requests_total";
    assert_eq!(
        get(&m, requests, &[("kind", "image"), ("status", "2xx")]),
        4.0
    );
    assert_eq!(
        get(&m, requests, &[("kind", "image"), ("status", "3xx")]),
        1.0
    );
    assert_eq!(
        get(&m, requests, &[("kind", "image"), ("status", "5xx")]),
        1.0
    );
    assert_eq!(
        get(&m, requests, &[("kind", "stats"), ("status", "2xx")]),
        1.0
    );
    assert_eq!(
        get(&m, "imgmirror_upstream_fetch_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(
        get(&m, "imgmirror_served_bytes_total", &[]),
        (3 * a.len() + b.len()) as f64
    );
    assert_eq!(
        get(
            &m,
            "imgmirror_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(get(&m, "imgmirror_memory_cache_entries", &[]), 2.0);
    assert!(get(&m, "imgmirror_memory_cache_bytes", &[]) >= (a.len() + b.len()) as f64);
    // The mirror holds a.jpg (from the first instance) and b.jpg.
    assert_eq!(get(&m, "imgmirror_mirror_objects", &[]), 2.0);
    assert_eq!(
        get(&m, "imgmirror_mirror_bytes", &[]),
        (a.len() + b.len()) as f64
    );
    // The alerts' inputs: the same hits and misses as /stats, readiness, the disk budget.
    let answers = "imgmirror_image_answers_total";
    assert_eq!(get(&m, answers, &[("result", "hit")]), 3.0);
    assert_eq!(get(&m, answers, &[("result", "miss")]), 2.0);
    assert_eq!(get(&m, "imgmirror_ready", &[]), 1.0);
    assert_eq!(get(&m, "imgmirror_disk_budget_bytes", &[]), 0.0);
    for (name, _) in m.keys() {
        assert!(name.starts_with("imgmirror_"), "{name}");
    }

    // Windows move with the clock: six minutes on, the last 5 minutes saw nothing.
    clock.advance(360);
    let stats: serde_json::Value = fetch_stats(svc.addr).await;
    assert_eq!(stats["hit_ratio_1m"], serde_json::Value::Null);
    assert_eq!(stats["hit_ratio_5m"], serde_json::Value::Null);
    assert_eq!(stats["hit_ratio_15m"], 0.6);
    assert_eq!(stats["hit_ratio"], 0.6);
    svc.shutdown().await;
}

#[tokio::test]
async fn admin_listener_takes_the_operator_endpoints() {
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|c| c.server.admin_listen = "127.0.0.1:0".into()).await;
    origin.set("/a.jpg", Reply::jpeg(image("news-dogs.jpg")));
    let admin = svc.admin_addr.expect("admin listener");
    let status = |addr: std::net::SocketAddr, path: &str| {
        let url = format!("http://{addr}{path}");
        async move { common::get(&url).await.status().as_u16() }
    };
    for path in ["/metrics", "/stats", "/"] {
        assert_eq!(status(svc.addr, path).await, 404, "public {path}");
        assert_eq!(status(admin, path).await, 200, "admin {path}");
    }
    // Probes work on both; image routes only on the public listener (an admin listener on a pod
    // address must not be an open image proxy), and the origin is not asked for the admin one.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(svc.addr, path).await, 200, "public {path}");
        assert_eq!(status(admin, path).await, 200, "admin {path}");
    }
    let route = imgmirror::route::encode(
        &origin.url("/a.jpg"),
        &imgmirror::route::Options::default(),
        None,
    )
    .unwrap();
    let r = common::get(&format!("http://{admin}{route}")).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("server.listen"));
    assert_eq!(origin.total_hits(), 0);
    assert_eq!(status(svc.addr, &route).await, 200);
    svc.shutdown().await;
}

/// Runs the real binary with JSON logs and checks one request line; neither the signing key nor
/// the upstream's query string may appear in the logs.
#[tokio::test]
async fn json_request_logs_without_secrets() {
    let origin = Origin::start().await;
    origin.set("/p.jpg?token=s3cr3t", Reply::jpeg(image("news-dogs.jpg")));
    let dir = tempfile::tempdir().unwrap();
    let key = "k3y-0123456789abcdef0123456789abcdef";
    let port = common::free_port();
    let mut cmd = common::bin::imgmirror(dir.path());
    cmd.args([
        "serve",
        "--log-format",
        "json",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env("RUST_LOG", "info")
    .env("IMGMIRROR_CACHE__DIR", dir.path())
    .env("IMGMIRROR_SECURITY__SIGNING_KEY", key)
    .env(
        "IMGMIRROR_UPSTREAM__RESOLVE",
        format!("{{ \"origin.test\" = \"{}\" }}", origin.addr),
    )
    .stderr(std::process::Stdio::piped());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let signing = imgmirror::route::SigningKey::new(key.as_bytes()).unwrap();
    let route = imgmirror::route::encode(
        &origin.url("/p.jpg?token=s3cr3t"),
        &Default::default(),
        Some(&signing),
    )
    .unwrap();
    let c = client();
    let mut ok = false;
    // Up to 20 s for a start on a loaded machine; an exit ends the wait at once.
    for _ in 0..400 {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{port}{route}"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            ok = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("imgmirror serve exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "service did not start");
    // SIGTERM: graceful stop, exit 0.
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains(key), "signing key in logs");
    assert!(!logs.contains("s3cr3t"), "query secret in logs");
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request" && v["kind"] == "image")
        .unwrap_or_else(|| panic!("no JSON request line in:\n{logs}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["tier"], "MISS");
    assert_eq!(line["upstream"], "http://origin.test/p.jpg");
    assert!(line["bytes"].as_u64().unwrap() > 1000);
    assert!(line["ms"].as_f64().is_some() && line["id"].is_string());
}

/// The status page in a real headless Chromium: it loads with no console errors, and its cards
/// and chart show what `/stats` reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_the_stats_in_chromium() {
    let Some(chromium) = common::web::chromium() else {
        return;
    };
    let Served {
        origin,
        dir: _dir,
        svc,
    } = Served::start(|_| {}).await;
    origin.set("*", Reply::jpeg(image("news-dogs.jpg")));
    // The chart bins by the clock's minute: the four requests go into one bin, not across the
    // end of a minute.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 60);
    if into_minute >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    for path in ["/1.jpg", "/1.jpg", "/1.jpg", "/2.jpg"] {
        assert_eq!(
            common::get(&common::route_url(svc.addr, &origin.url(path)))
                .await
                .status(),
            200
        );
    }
    let stats: serde_json::Value = fetch_stats(svc.addr).await;
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64()),
        (Some(2), Some(2))
    );

    let rendered = common::web::render(&chromium, &format!("http://{}/", svc.addr)).await;
    let (dom, log) = (&rendered.dom, &rendered.log);
    for bad in [
        "Uncaught",
        "Refused to",
        "id=\"updated\">cannot read stats",
        ":CONSOLE",
    ] {
        let offending: Vec<&str> = log
            .lines()
            .chain(dom.lines())
            .filter(|l| l.contains(bad))
            .collect();
        assert!(offending.is_empty(), "{bad}: {offending:#?}");
    }
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the script did not finish: {dom:.2000}"
    );
    assert!(dom.contains("id=\"hits\">2<"), "{dom:.3000}");
    assert!(dom.contains("id=\"misses\">2<"));
    assert!(dom.contains("id=\"ratio\">50.0%<"));
    assert!(dom.contains("id=\"t-memory\">2<"));
    // The chart has this minute's bar with the figures /stats reports.
    assert!(
        dom.contains("class=\"point\" data-hits=\"2\" data-misses=\"2\""),
        "{dom:.4000}"
    );
    svc.shutdown().await;
}
