//! Load, bounded: 20,000 requests at 256 concurrent connections mixing memory hits (original and
//! variant), cold routes and malformed routes, twice. Every answer has its expected status, and
//! the second round opens no more file descriptors than the first left (no leak per request).
//! Throughput and memory are measured by the benchmarks (BENCHMARKS.md), not asserted here.

mod common;

use common::{config, image, route_url, Origin, Reply};
use futures_util::StreamExt;
use imgmirror::server;

const REQUESTS: usize = 20_000;
const CONCURRENCY: usize = 256;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_mixed_requests_twice_without_leaks() {
    let origin = Origin::start().await;
    origin.set("*", Reply::jpeg(image("news-dogs.jpg")));
    let dir = tempfile::tempdir().unwrap();
    let svc = server::start(config(&origin, dir.path(), &[], |_| {}))
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let hit = route_url(svc.addr, &origin.url("/hot.jpg"));
    let variant = format!(
        "http://{}{}",
        svc.addr,
        imgmirror::route::encode(
            &origin.url("/hot.jpg"),
            &imgmirror::route::Options {
                width: Some(64),
                ..Default::default()
            },
            None
        )
        .unwrap()
    );
    for u in [&hit, &variant] {
        assert_eq!(client.get(u.as_str()).send().await.unwrap().status(), 200);
    }
    let bad = format!("http://{}/i/blur9/http/origin.test/a.jpg", svc.addr);
    let mut fds = Vec::new();
    for round in 0..2 {
        let jobs = (0..REQUESTS).map(|i| {
            let (url, want) = match i % 20 {
                0 => (
                    route_url(svc.addr, &origin.url(&format!("/cold-{round}-{i}.jpg"))),
                    200,
                ),
                1 => (bad.clone(), 400),
                2..=9 => (variant.clone(), 200),
                _ => (hit.clone(), 200),
            };
            let client = client.clone();
            async move {
                // A transport error on a pooled keep-alive connection (the server closing it as
                // the client reuses it) is retried once, as browsers do for idempotent requests.
                let r = match client.get(&url).send().await {
                    Err(e) if !e.is_timeout() => client.get(&url).send().await,
                    r => r,
                };
                let status = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                (url, want, status)
            }
        });
        let unexpected: Vec<(String, u16, u16)> = futures_util::stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .filter(|(_, want, got)| std::future::ready(want != got))
            .collect()
            .await;
        assert!(
            unexpected.is_empty(),
            "round {round}: {} unexpected, e.g. {:?}",
            unexpected.len(),
            unexpected.first()
        );
        fds.push(open_fds());
    }
    assert!(
        fds[1] <= fds[0] + 16,
        "descriptors grew between rounds: {fds:?}"
    );
    svc.shutdown().await;
}
