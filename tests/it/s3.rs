//! The mirror shared in S3 (`cache.store = "s3"`), end to end: real `imgmirror serve` processes
//! (replicas) against a real S3 server (moto on loopback) and a loopback origin. One replica
//! serves what another mirrored with the origin gone; concurrent cold requests over two replicas
//! make one consistent object; an S3 outage keeps hits answering, makes `/readyz` 503 and cold
//! images a clear 503, and recovery needs no restart; a corrupted object is detected and healed;
//! a missing bucket stops the start with one line.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin::{self, Service};
use common::s3::{Moto, KEY_ID, SECRET};
use common::{client, image, route_url, Origin, Reply, HOST};
use imgmirror::config::{Config, StoreKind};

const BUCKET: &str = "shared";
const DOGS: &str = "/202106/dogs_1024.jpg";

/// One `imgmirror serve` process. Killed on drop.
struct Replica {
    addr: SocketAddr,
    _service: Service,
    _dir: tempfile::TempDir,
}

/// A replica's config: its own local tier, the shared bucket on `moto`, the origin mapped.
fn replica_config(moto: &Moto, origin: &Origin, local: &Path) -> Config {
    let mut c = Config::default();
    c.cache.dir = local.to_path_buf();
    c.cache.store = StoreKind::S3;
    c.s3.bucket = BUCKET.into();
    c.s3.endpoint = moto.endpoint();
    c.s3.allow_http = true;
    c.upstream.timeout_secs = 5;
    // Routes here are not recorded links (the record itself is tested in
    // `links_recorded_through_one_replica_are_known_to_another`).
    c.upstream.fetch = imgmirror::config::FetchPolicy::Any;
    c.upstream
        .resolve
        .insert(HOST.to_string(), origin.addr.to_string());
    c
}

/// A stand-in for the CDN's purge API: answers 200 to anything and records what it was asked.
/// `replica` names the replica in its purge URLs (`/{replica}/{key}`), to tell who purged.
fn cdn_purges_to(cdn: &Origin, config: &mut Config, replica: &str) {
    cdn.set("*", Reply::Status(200));
    config.cdn.purge_url = format!("http://{}/{replica}/{{key}}", cdn.addr);
}

/// Asserts that `cdn` is asked (within 4 s) to purge `upstream` by each of `replicas`.
async fn assert_cdn_purged_by(cdn: &Origin, replicas: &[&str], upstream: &str) {
    for replica in replicas {
        let path = format!("/{replica}/{}", imgmirror::cdn::purge_key(upstream));
        let asked = common::eventually(|| async { cdn.hits(&path) > 0 }).await;
        assert!(asked, "no purge from {replica}: {:?}", cdn.requests());
    }
}

fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let path = dir.join("imgmirror.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    path
}

/// `imgmirror serve --config <config>` with moto's credentials.
fn command(config: &Path) -> Command {
    let dir = config.parent().expect("the config's folder");
    let mut cmd = bin::imgmirror(dir);
    cmd.env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null());
    cmd
}

impl Replica {
    async fn start(config: Config) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &config);
        let mut cmd = command(&path);
        cmd.stderr(Stdio::null());
        let service = Service::spawn(cmd).await;
        Replica {
            addr: service.addr,
            _service: service,
            _dir: dir,
        }
    }

    fn url(&self, upstream: &str) -> String {
        route_url(self.addr, upstream)
    }

    async fn stats(&self) -> serde_json::Value {
        let text = common::text(&client(), self.addr, "/stats").await;
        serde_json::from_str(&text).unwrap()
    }

    async fn status(&self, path: &str) -> u16 {
        common::get(&format!("http://{}{path}", self.addr))
            .await
            .status()
            .as_u16()
    }
}

/// A body, compared by content but shown by length and hash (image bytes make unreadable
/// assertion messages).
#[derive(PartialEq, Eq)]
struct Body(bytes::Bytes);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hash = imgmirror::store::sha256_hex(&self.0);
        write!(f, "{} bytes, sha256 {}", self.0.len(), &hash[..12])
    }
}

/// (status, X-Cache, body) of a GET.
async fn get(url: &str) -> (u16, String, Body) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let tier = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, tier, Body(r.bytes().await.unwrap()))
}

async fn setup() -> (Moto, Origin) {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    (moto, Origin::start().await)
}

#[tokio::test]
async fn a_replica_serves_what_another_mirrored_after_the_origin_is_gone() {
    let (moto, origin) = setup().await;
    let dogs = image("news-dogs.jpg");
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Replica::start(replica_config(&moto, &origin, da.path())).await;
    let b = Replica::start(replica_config(&moto, &origin, db.path())).await;
    let upstream = origin.url(DOGS);

    assert_eq!(
        get(&a.url(&upstream)).await,
        (200, "MISS".into(), Body(dogs.clone()))
    );
    origin.stop();
    // B never fetched it: S3 answers, then B's local disk keeps a copy, then memory.
    assert_eq!(
        get(&b.url(&upstream)).await,
        (200, "HIT-S3".into(), Body(dogs.clone()))
    );
    assert_eq!(
        get(&b.url(&upstream)).await,
        (200, "HIT-MEMORY".into(), Body(dogs.clone()))
    );
    // A variant made on B from the shared original.
    let small = format!("http://{}/i/w200/http/{HOST}{DOGS}", b.addr);
    let (status, tier, body) = get(&small).await;
    assert_eq!(
        (status, tier.as_str()),
        (200, "HIT-MEMORY"),
        "original from memory"
    );
    let decoded = ::image::load_from_memory(&body.0).unwrap();
    assert_eq!(decoded.width(), 200);
    assert_eq!(origin.hits(DOGS), 1);

    let stats = b.stats().await;
    assert_eq!(stats["s3"]["hits"], 1, "{stats}");
    assert_eq!(stats["memory"]["hits"], 2, "{stats}");
    assert_eq!(stats["misses"], 0, "{stats}");
    let metrics = common::get(&format!("http://{}/metrics", b.addr))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("imgmirror_cache_lookups_total{tier=\"s3\",result=\"hit\"} 1"),
        "{metrics}"
    );
    // A filesystem-only service shows no s3 tier.
    assert!(a.stats().await["s3"]["hits"] == 0);
    // The bucket holds one blob and one record for the original (plus the variant's).
    let keys = moto.keys(BUCKET).await;
    let under = |p: &str| keys.iter().filter(|k| k.starts_with(p)).count();
    assert_eq!(under("imgmirror/urls/"), 1, "{keys:?}");
    assert_eq!(under("imgmirror/variants/"), 1, "{keys:?}");
    assert_eq!(under("imgmirror/objects/"), 2, "{keys:?}");
}

#[tokio::test]
async fn concurrent_cold_requests_over_two_replicas_make_one_consistent_object() {
    let (moto, origin) = setup().await;
    let dogs = image("news-dogs.jpg");
    origin.set(
        DOGS,
        Reply::slow_jpeg(Duration::from_millis(300), dogs.clone()),
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Replica::start(replica_config(&moto, &origin, da.path())).await;
    let b = Replica::start(replica_config(&moto, &origin, db.path())).await;
    let upstream = origin.url(DOGS);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let url = if i % 2 == 0 {
            a.url(&upstream)
        } else {
            b.url(&upstream)
        };
        tasks.spawn(async move { get(&url).await });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, _, body) = done.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, Body(dogs.clone()));
    }
    // Each replica coalesces its own: at most one fetch per replica.
    assert!(origin.hits(DOGS) <= 2, "{}", origin.hits(DOGS));
    let keys = moto.keys(BUCKET).await;
    let count = |folder: &str| keys.iter().filter(|k| k.contains(folder)).count();
    assert_eq!(
        (count("/urls/"), count("/objects/"), count("/refs/")),
        (1, 1, 1),
        "one record, one blob, one marker: {keys:?}"
    );
    let record_key = keys.iter().find(|k| k.contains("/urls/")).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&moto.get(BUCKET, record_key).await.unwrap()).unwrap();
    let blob_key = keys.iter().find(|k| k.contains("/objects/")).unwrap();
    assert!(blob_key.ends_with(record["hash"].as_str().unwrap()));
    assert!(moto.get(BUCKET, blob_key).await.unwrap() == dogs);
    // Both replicas serve the same bytes, with the same ETag.
    let ea = client().get(a.url(&upstream)).send().await.unwrap();
    let eb = client().get(b.url(&upstream)).send().await.unwrap();
    assert_eq!(ea.headers()["etag"], eb.headers()["etag"]);
}

#[tokio::test]
async fn an_s3_outage_keeps_hits_answering_and_recovers_without_a_restart() {
    let (moto, origin) = setup().await;
    let dogs = image("news-dogs.jpg");
    let mountain = image("news-mountain.jpg");
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    origin.set("/cold.jpg", Reply::jpeg(mountain.clone()));
    let dir = tempfile::tempdir().unwrap();
    // Nothing fits in memory: every hit below comes from the local disk tier.
    let mut config = replica_config(&moto, &origin, dir.path());
    config.cache.memory_bytes = 1;
    let a = Replica::start(config).await;
    let (dogs_url, cold_url) = (a.url(&origin.url(DOGS)), a.url(&origin.url("/cold.jpg")));
    assert_eq!(get(&dogs_url).await.0, 200);
    assert_eq!(a.status("/readyz").await, 200);

    moto.stop();
    assert_eq!(
        get(&dogs_url).await,
        (200, "HIT-DISK".into(), Body(dogs.clone()))
    );
    assert_eq!(a.status("/readyz").await, 503);
    let r = client().get(&cold_url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        origin.hits("/cold.jpg"),
        0,
        "nothing fetched that cannot be mirrored"
    );

    // S3 comes back (moto restarts empty: the operator's bucket is there again).
    moto.restart().await;
    moto.create_bucket(BUCKET).await;
    assert!(common::eventually(|| async { a.status("/readyz").await == 200 }).await);
    assert_eq!(
        get(&cold_url).await,
        (200, "MISS".into(), Body(mountain.clone()))
    );
    let keys = moto.keys(BUCKET).await;
    assert!(
        keys.iter().any(|k| k.contains("/urls/")),
        "mirrored again: {keys:?}"
    );
}

#[tokio::test]
async fn a_corrupted_object_is_detected_refetched_and_healed() {
    let (moto, origin) = setup().await;
    let dogs = image("news-dogs.jpg");
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Replica::start(replica_config(&moto, &origin, da.path())).await;
    let upstream = origin.url(DOGS);
    assert_eq!(get(&a.url(&upstream)).await.0, 200);
    let keys = moto.keys(BUCKET).await;
    let blob_key = keys
        .iter()
        .find(|k| k.contains("/objects/"))
        .unwrap()
        .clone();
    moto.put(BUCKET, &blob_key, b"not the image any more").await;

    let b = Replica::start(replica_config(&moto, &origin, db.path())).await;
    assert_eq!(
        get(&b.url(&upstream)).await,
        (200, "MISS".into(), Body(dogs.clone()))
    );
    assert_eq!(
        origin.hits(DOGS),
        2,
        "refetched, never served the corrupt bytes"
    );
    assert!(moto.get(BUCKET, &blob_key).await.unwrap() == dogs, "healed");
}

#[tokio::test]
async fn a_missing_bucket_stops_the_start_with_one_line() {
    let (moto, origin) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = replica_config(&moto, &origin, &dir.path().join("m"));
    config.s3.bucket = "no-such-bucket".into();
    let path = write_config(dir.path(), &config);
    let out = tokio::process::Command::from(command(&path))
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("imgmirror")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("\"no-such-bucket\""), "{stderr}");
    assert!(lines[0].contains(&moto.endpoint()), "{stderr}");
}

/// `upstream.fetch = "known"` across replicas: the links `imgmirror rewrite` records through one
/// replica's config land in the shared bucket, so another replica (its own empty local disk)
/// fetches them, and refuses, without contacting the origin, a link nobody recorded.
#[tokio::test]
async fn links_recorded_through_one_replica_are_known_to_another() {
    let (moto, origin) = setup().await;
    origin.set("/linked.jpg", Reply::jpeg(image("news-dogs.jpg")));
    origin.set("/unlinked.jpg", Reply::jpeg(image("news-dogs.jpg")));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut writer = replica_config(&moto, &origin, &a.path().join("local"));
    writer.upstream.fetch = imgmirror::config::FetchPolicy::Known;
    // The rewrite's side: posts with one link, rewritten in place, the link on record in S3.
    std::fs::create_dir_all(a.path().join("posts")).unwrap();
    std::fs::write(
        a.path().join("posts/p.md"),
        format!("<img src=\"https://cors.zfour.workers.dev/?http://{HOST}/linked.jpg\">\n"),
    )
    .unwrap();
    let config = write_config(a.path(), &writer);
    let out = common::bin::finish({
        let mut cmd = common::bin::imgmirror(a.path());
        cmd.env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .arg("rewrite")
            .arg("--config")
            .arg(&config)
            .arg("posts");
        cmd
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(origin.total_hits(), 0);
    // Another replica, its own empty local disk.
    let mut reader = writer.clone();
    reader.cache.dir = b.path().join("local");
    let replica = Replica::start(reader).await;
    assert_eq!(
        replica
            .status(&route_path(&format!("http://{HOST}/linked.jpg")))
            .await,
        200
    );
    assert_eq!(
        replica
            .status(&route_path(&format!("http://{HOST}/unlinked.jpg")))
            .await,
        403
    );
    assert_eq!(origin.hits("/linked.jpg"), 1);
    assert_eq!(origin.hits("/unlinked.jpg"), 0);
}

fn route_path(upstream: &str) -> String {
    imgmirror::route::encode(upstream, &Default::default(), None).unwrap()
}

/// Issue #23 item 9: S3 that answers the lookup but is gone when the fetched copy is written
/// gives the same answer as S3 gone at the lookup, a 503 with `Retry-After`, not bytes the
/// shared mirror does not keep (before, the image was served unmirrored). The origin is slow, so
/// S3 is stopped while its answer is on the way.
#[tokio::test]
async fn an_s3_write_that_fails_after_the_lookup_is_a_503() {
    let (moto, origin) = setup().await;
    origin.set(
        "/slow.jpg",
        Reply::slow_jpeg(Duration::from_secs(3), image("news-dogs.jpg")),
    );
    let dir = tempfile::tempdir().unwrap();
    let a = Replica::start(replica_config(&moto, &origin, dir.path())).await;
    let url = a.url(&origin.url("/slow.jpg"));
    let request = tokio::spawn(async move { client().get(&url).send().await.unwrap() });
    // The lookup (a miss) is done once the origin has the request.
    assert!(common::eventually(|| async { origin.hits("/slow.jpg") == 1 }).await);
    moto.stop();
    let r = request.await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("mirror store is unavailable"));
    assert_eq!(origin.hits("/slow.jpg"), 1);
}

/// Asks replica `r` for `upstream` until it serves `want`, for at most `within`; returns how
/// long it took.
async fn until_served(
    r: &Replica,
    upstream: &str,
    want: &bytes::Bytes,
    within: Duration,
) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let (status, _, body) = get(&r.url(upstream)).await;
        if status == 200 && body.0 == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {status} {body:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SPEC §5: a purge on one replica is honoured by every replica within 10 s, through the shared
/// store alone. `imgmirror purge` beside replica A (with A's config, token included) drops the
/// image from S3 and A's memory and writes an event; replica B, which held the image in memory
/// and on its local disk, drops it when it next polls the events (every 7.5 s) and fetches the
/// origin's new bytes.
#[tokio::test]
async fn a_purge_beside_one_replica_is_honoured_by_the_other() {
    const TOKEN: &str = "a-purge-token-of-the-replicas";
    let (moto, origin) = setup().await;
    let (dogs, mountain) = (image("news-dogs.jpg"), image("news-mountain.jpg"));
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cdn = Origin::start().await;
    let mut config_a = replica_config(&moto, &origin, da.path());
    config_a.security.purge_token = TOKEN.into();
    cdn_purges_to(&cdn, &mut config_a, "a");
    let mut config_b = replica_config(&moto, &origin, db.path());
    cdn_purges_to(&cdn, &mut config_b, "b");
    let a = Replica::start(config_a.clone()).await;
    let b = Replica::start(config_b).await;
    let upstream = origin.url(DOGS);
    assert_eq!(get(&a.url(&upstream)).await.2, Body(dogs.clone()));
    assert_eq!(get(&b.url(&upstream)).await.2, Body(dogs.clone()));
    let (_, tier, _) = get(&b.url(&upstream)).await;
    assert_eq!(tier, "HIT-MEMORY", "B keeps it in memory");
    // The origin has other bytes now: only a purge makes B let go of its copy.
    origin.set(DOGS, Reply::jpeg(mountain.clone()));

    let cli = tempfile::tempdir().unwrap();
    // The command runs beside A with A's config: its local disk, its address, its token.
    let mut config_cli = config_a.clone();
    config_cli.server.listen = a.addr.to_string();
    let path = write_config(cli.path(), &config_cli);
    let out = bin::run_async(
        cli.path(),
        &["purge", "--config", path.to_str().unwrap(), &upstream],
        &[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("memory purged"), "{}", out.stderr);
    assert!(out.stderr.contains("replicas: told"), "{}", out.stderr);
    // A at once (its memory was purged over HTTP, S3 by the command).
    assert_eq!(get(&a.url(&upstream)).await.2, Body(mountain.clone()));
    // B within the 10 s (a poll every 7.5 s); 30 s at most here, for a loaded machine.
    let took = until_served(&b, &upstream, &mountain, Duration::from_secs(30)).await;
    eprintln!("replica B served the purged image anew after {took:?}");
    let (_, tier, _) = get(&b.url(&upstream)).await;
    assert_eq!(tier, "HIT-MEMORY");
    // The CDN in front was asked by A (the purge), and again by B once B had let go: a copy the
    // CDN refetched from B in between is dropped too.
    assert_cdn_purged_by(&cdn, &["a", "b"], &upstream).await;
}

/// A revalidation on one replica that finds new bytes (the origin replaced the image) is
/// honoured by the other: A (`ttl_secs` = 1) revalidates and mirrors the new bytes; B (a month's
/// ttl) drops its copy on A's event and serves the new bytes from S3, without asking the origin.
#[tokio::test]
async fn an_original_replaced_on_one_replica_is_replaced_on_the_other() {
    let (moto, origin) = setup().await;
    let (dogs, mountain) = (image("news-dogs.jpg"), image("news-mountain.jpg"));
    origin.set(DOGS, Reply::jpeg(dogs.clone()));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cdn = Origin::start().await;
    let mut config_a = replica_config(&moto, &origin, da.path());
    config_a.cache.ttl_secs = 1;
    cdn_purges_to(&cdn, &mut config_a, "a");
    let mut config_b = replica_config(&moto, &origin, db.path());
    cdn_purges_to(&cdn, &mut config_b, "b");
    let a = Replica::start(config_a).await;
    let b = Replica::start(config_b).await;
    let upstream = origin.url(DOGS);
    assert_eq!(get(&a.url(&upstream)).await.2, Body(dogs.clone()));
    assert_eq!(get(&b.url(&upstream)).await.2, Body(dogs.clone()));
    // New bytes under a new validator: A's conditional request gets them.
    origin.set(
        DOGS,
        Reply::Ok {
            body: mountain.clone(),
            content_type: "image/jpeg",
            etag: Some("\"v2\""),
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&a.url(&upstream)).await.2, Body(mountain.clone()));
    let asked = origin.hits(DOGS);
    until_served(&b, &upstream, &mountain, Duration::from_secs(30)).await;
    assert_eq!(origin.hits(DOGS), asked, "B took the new bytes from S3");
    // The old bytes are no record's any more: gone from S3.
    let old = format!("/{}", imgmirror::store::sha256_hex(&dogs));
    let keys = moto.keys(BUCKET).await;
    assert!(!keys.iter().any(|k| k.ends_with(&old)), "{keys:?}");
    // The CDN in front held the old bytes as immutable: A asked it to drop them when it
    // mirrored the new ones, and B once it had let go of its copy.
    assert_cdn_purged_by(&cdn, &["a", "b"], &upstream).await;
}
