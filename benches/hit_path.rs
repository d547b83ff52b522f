//! Criterion benchmarks of the cache-hit path in process: a request in, a response out, through
//! everything behind the socket (guard, route decode, memory cache, headers, metrics, the JSON
//! log line into the batching writer), with a real photograph held in memory. What the kernel
//! and hyper's HTTP/1 codec add is measured by the shared harness with wrk (BENCHMARKS.md).
//!
//! Run: `cargo bench --bench hit_path`

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback origin answering every request with the same JPEG (the first fetch only).
async fn origin(jpeg: Vec<u8>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let jpeg = jpeg.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    jpeg.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&jpeg).await;
            });
        }
    });
    addr
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The service's own log line, JSON, into the batching writer (discarded).
    let (writer, _guard) = imgmirror::log::BatchLog::with_sink(Box::new(std::io::sink()));
    let _ = tracing_subscriber::fmt()
        .event_format(imgmirror::log::JsonLines)
        .with_writer(writer)
        .try_init();
    let jpeg = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/news-mountain.jpg"),
    )
    .expect("fixture image");
    let dir = tempfile::tempdir().expect("temp dir");
    let (state, upstream) = rt.block_on(async {
        let addr = origin(jpeg).await;
        let mut config = imgmirror::config::Config::default();
        config.cache.dir = dir.path().to_path_buf();
        // The benchmark's route is no post's link: a generic proxy, as before `upstream.fetch`.
        config.upstream.fetch = imgmirror::config::FetchPolicy::Any;
        config
            .upstream
            .resolve
            .insert("origin.test".into(), addr.to_string());
        let state = imgmirror::server::State::new(config, &imgmirror::deps::Deps::default())
            .await
            .expect("state");
        (
            Arc::new(state),
            "http://origin.test/news-mountain.jpg".to_string(),
        )
    });
    let route = |width: Option<u32>| {
        let options = imgmirror::route::Options {
            width,
            quality: width.map(|_| 85),
            ..Default::default()
        };
        imgmirror::route::encode(&upstream, &options, None).expect("route")
    };
    let request = |path: &str, etag: Option<&str>| {
        let mut b = Request::get(path).header("accept", "image/avif,image/webp,*/*");
        if let Some(e) = etag {
            b = b.header("if-none-match", e);
        }
        b.body(()).expect("request")
    };
    let mut g = c.benchmark_group("hit");
    for (name, path) in [("original", route(None)), ("resized_640", route(Some(640)))] {
        // Warm: the first answer fetches (and resizes); the next ones are memory hits.
        let etag = rt.block_on(async {
            let r = imgmirror::server::answer(state.clone(), request(&path, None)).await;
            assert_eq!(r.status(), 200, "{name}");
            let r = imgmirror::server::answer(state.clone(), request(&path, None)).await;
            assert_eq!(r.headers()["x-cache"], "HIT-MEMORY", "{name}");
            r.headers()["etag"].to_str().expect("etag").to_string()
        });
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| imgmirror::server::answer(state.clone(), request(&path, None)))
        });
        g.bench_function(format!("{name}_304"), |b| {
            b.to_async(&rt)
                .iter(|| imgmirror::server::answer(state.clone(), request(&path, Some(&etag))))
        });
    }
    g.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
