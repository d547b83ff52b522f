//! A mirror whose every operation costs what one image costs (SPEC §5 "At scale"), asserted by
//! counts, not times: records read per purge on the filesystem, S3 requests (through a counting
//! proxy in front of a real moto server) per purge and per idle minute of a replica; and a
//! mirror written in the previous layout opens, serves, and is moved by `imgmirror gc`.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::s3::{Counting, Moto, KEY_ID, SECRET};
use common::{image, Origin};
use imgmirror::config::{Config, StoreKind};
use imgmirror::deps::Deps;
use imgmirror::mirror::upkeep::{Follow, Upkeep};
use imgmirror::mirror::Mirror;
use imgmirror::store::{
    gc, legacy_variant_path, record_path, sha256_hex, FsStore, Kind, MirrorStore, PutMode, Record,
    S3Store, Tiers,
};

const BUCKET: &str = "scale";

fn record(key: &str, bytes: &[u8], source: Option<&str>) -> Record {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Record {
        source: source.map(String::from),
        ..Record::of_bytes(key, bytes, "image/jpeg", now)
    }
}

/// `n` images, each an original and two variants with bytes of their own.
async fn fill(tiers: &Tiers, n: usize) {
    for i in 0..n {
        let url = format!("http://img.test/{i}.jpg");
        let bytes = Bytes::from(format!("original {i}"));
        let o = record(&url, &bytes, None);
        tiers
            .store(Kind::Original, &o, &bytes, PutMode::Create)
            .await
            .unwrap();
        for w in [100, 200] {
            let v = Bytes::from(format!("variant {w} of {i}"));
            let key = format!("/i/w{w}/http/img.test/{i}.jpg");
            let r = record(&key, &v, Some(&o.hash));
            tiers
                .store(Kind::Variant, &r, &v, PutMode::Overwrite)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_purge_reads_only_the_images_own_records_on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let local = FsStore::open(dir.path()).unwrap();
    gc::open(&local, 0).await.unwrap();
    let tiers = Tiers::new(local.clone(), None);
    fill(&tiers, 300).await;
    let before = local.records_read();
    let n = imgmirror::store::ops::purge(&local, "http://img.test/7.jpg")
        .await
        .unwrap();
    assert_eq!(n, 3, "the original and its two variants");
    // The original's record and its two variants': not the 900 the mirror holds.
    assert_eq!(local.records_read() - before, 3);
    assert!(local
        .record(Kind::Original, "http://img.test/7.jpg")
        .await
        .unwrap()
        .is_none());
    assert!(local
        .blob(&sha256_hex(b"variant 100 of 7"))
        .await
        .unwrap()
        .is_none());
    // The image's folders went with it; the others are whole.
    let variants = imgmirror::store::variants_dir("http://img.test/7.jpg");
    assert!(!dir.path().join(&variants).exists());
    assert!(local
        .record(Kind::Variant, "/i/w200/http/img.test/8.jpg")
        .await
        .unwrap()
        .is_some());
    assert_eq!(local.usage().await.unwrap().blobs, 897);
    // The count kept as blobs changed agrees with a recount, without one.
    assert_eq!(
        local.counted_usage().unwrap(),
        Some(local.usage().await.unwrap())
    );
}

/// The S3 store behind `endpoint` (moto itself, or the counting proxy in front of it).
fn s3(endpoint: String) -> S3Store {
    let config = imgmirror::config::S3Config {
        bucket: BUCKET.into(),
        prefix: "imgmirror/".into(),
        region: "us-east-1".into(),
        endpoint,
        allow_http: true,
    };
    let builder = object_store::aws::AmazonS3Builder::new()
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .with_region("us-east-1");
    S3Store::with_builder(&config, builder).unwrap()
}

/// Tiers over S3 at `endpoint` with a local folder, opened as the service opens them.
async fn shared_tiers(endpoint: String, local: &Path) -> Tiers {
    let local = FsStore::open(local).unwrap();
    gc::open(&local, now()).await.unwrap();
    let shared = s3(endpoint);
    gc::open(&shared, now()).await.unwrap();
    Tiers::new(local, Some(Arc::new(shared)))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Requests that read the whole mirror: listings of all the blobs, markers or records.
fn walks(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| {
            let Some(query) = r.strip_prefix("GET /scale?") else {
                return false;
            };
            let prefix = query
                .split('&')
                .find_map(|p| p.strip_prefix("prefix="))
                .unwrap_or("");
            ["objects", "refs", "urls", "variants"].iter().any(|f| {
                prefix == format!("imgmirror%2F{f}%2F") || prefix == format!("imgmirror%2F{f}")
            })
        })
        .collect()
}

#[tokio::test]
async fn on_s3_a_purge_and_an_idle_minute_cost_a_bounded_number_of_requests() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let proxy = Counting::start(&moto).await;
    let filled = tempfile::tempdir().unwrap();
    fill(&shared_tiers(moto.endpoint(), filled.path()).await, 40).await;

    // `imgmirror purge` of one URL, the whole command (open, purge, tell the replicas).
    let site = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.cache.dir = site.path().join("local");
    config.cache.store = StoreKind::S3;
    config.s3.bucket = BUCKET.into();
    config.s3.endpoint = proxy.endpoint();
    config.s3.allow_http = true;
    config.server.listen = format!("127.0.0.1:{}", common::free_port());
    let path = site.path().join("imgmirror.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    proxy.take();
    let out = common::bin::run_async(
        site.path(),
        &[
            "purge",
            "--config",
            path.to_str().unwrap(),
            "http://img.test/3.jpg",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("3 mirror record(s) dropped"),
        "{}",
        out.stderr
    );
    let purge = proxy.take();
    assert!(purge.len() <= 20, "{} requests: {purge:#?}", purge.len());
    assert!(walks(&purge).is_empty(), "{purge:#?}");
    let keys = moto.keys(BUCKET).await;
    let blobs = keys.iter().filter(|k| k.contains("/objects/")).count();
    assert_eq!(blobs, 117, "the purged image's three blobs went");
    assert_eq!(keys.iter().filter(|k| k.contains("/events/")).count(), 1);

    // An idle replica: one maintenance minute and a minute's polls for other replicas' events.
    let local = tempfile::tempdir().unwrap();
    let tiers = shared_tiers(proxy.endpoint(), local.path()).await;
    let mut config = Config::default();
    config.cache.dir = local.path().to_path_buf();
    config.cache.store = StoreKind::S3;
    config.cache.disk_bytes = 1 << 30;
    let deps = Deps::default();
    let metrics = Arc::new(imgmirror::metrics::Metrics::new(deps.clock.clone()));
    let mirror = Arc::new(Mirror::with_tiers(Arc::new(config), tiers, metrics, &deps).unwrap());
    let mut upkeep = Upkeep::new(mirror.clone());
    let mut follow = Follow::new(mirror.clone()).await;
    upkeep.minute().await;
    follow.poll().await;
    proxy.take();
    upkeep.minute().await;
    let polls = 60_000 / imgmirror::store::events::FOLLOW_INTERVAL.as_millis() as usize;
    for _ in 0..polls {
        follow.poll().await;
    }
    let idle = proxy.take();
    assert!(idle.len() <= 10, "{} requests: {idle:#?}", idle.len());
    // One listing of the events per poll, and the readiness probe's one write.
    let polled = idle
        .iter()
        .filter(|r| r.contains("prefix=imgmirror%2Fevents"))
        .count();
    assert_eq!(polled, polls, "{idle:#?}");
    assert_eq!(idle.len(), polls + 1, "{idle:#?}");
    assert!(walks(&idle).is_empty(), "{idle:#?}");
}

#[tokio::test]
async fn a_mirror_of_the_previous_layout_serves_and_is_moved_by_gc() {
    let origin = Origin::start().await;
    let url = origin.url("/old.jpg");
    let (original, variant) = (image("news-dogs.jpg"), image("news-mountain.jpg"));
    let opts = imgmirror::route::Options {
        width: Some(50),
        ..Default::default()
    };
    let route = imgmirror::route::encode(&url, &opts, None).unwrap();

    // Written as the previous release wrote it: variants under their own hash, no markers, no
    // layout.json, no usage.json.
    let site = tempfile::tempdir().unwrap();
    let dir = site.path().join("mirror");
    let write = |relative: String, bytes: &[u8]| {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let o = record(&url, &original, None);
    let v = record(&route, &variant, Some(&o.hash));
    for (r, bytes) in [(&o, &original), (&v, &variant)] {
        let hash = &r.hash;
        write(
            format!("objects/{}/{}/{hash}", &hash[..2], &hash[2..4]),
            bytes,
        );
    }
    write(
        record_path(Kind::Original, &url),
        &serde_json::to_vec_pretty(&o).unwrap(),
    );
    write(
        legacy_variant_path(&route),
        &serde_json::to_vec_pretty(&v).unwrap(),
    );
    origin.stop();

    let mut config = Config::default();
    config.cache.dir = dir.clone();
    config.server.listen = "127.0.0.1:0".into();
    config.upstream.fetch = imgmirror::config::FetchPolicy::Any;
    config.upstream.allow_private = true;

    // Read as it is: the variant is found at its old place.
    let tiers = imgmirror::store::open(&config).await.unwrap();
    assert!(tiers.local().layout().is_legacy());
    let found = tiers.lookup(Kind::Variant, &route).await.unwrap().unwrap();
    assert_eq!(found.bytes, variant);
    drop(tiers);

    // `gc --dry-run` says what it would move and mark, and changes nothing.
    let text = toml::to_string(&config).unwrap();
    std::fs::write(site.path().join("imgmirror.toml"), text).unwrap();
    let gc = |dry: bool| {
        let args: &[&str] = match dry {
            true => &["gc", "--config", "imgmirror.toml", "--dry-run"],
            false => &["gc", "--config", "imgmirror.toml"],
        };
        common::bin::run_async(site.path(), args, &[])
    };
    let out = gc(true).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reports: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let fs = &reports[0];
    assert_eq!(
        (&fs["moved"], &fs["markers_added"]),
        (&1.into(), &2.into()),
        "{fs}"
    );
    assert!(dir.join(legacy_variant_path(&route)).is_file());
    assert!(!dir.join("layout.json").exists());

    // The service serves it at once from the disk, and its first pass (after it is ready)
    // moves it: a mirror of layout 1 is never counted.
    let svc = imgmirror::server::start(config.clone()).await.unwrap();
    let pages = [
        (common::route_url(svc.addr, &url), &original),
        (format!("http://{}{route}", svc.addr), &variant),
    ];
    for (path, bytes) in pages {
        let r = common::get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-cache"], "HIT-DISK", "{path}");
        assert_eq!(&r.bytes().await.unwrap(), bytes, "{path}");
    }
    let layout = dir.join("layout.json");
    assert!(common::eventually(|| async { layout.is_file() }).await);
    svc.shutdown().await;
    assert!(!dir.join(legacy_variant_path(&route)).exists());
    assert!(dir.join(record_path(Kind::Variant, &route)).is_file());
    let out = gc(false).await;
    let reports: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let fs = &reports[0];
    assert_eq!(
        (&fs["moved"], &fs["markers_added"]),
        (&0.into(), &0.into()),
        "{fs}"
    );
    assert_eq!(fs["usage"]["blobs"], 2, "{fs}");
    assert_eq!(fs["usage"]["bytes"], original.len() + variant.len(), "{fs}");

    // Moved: served as before, and purged image by image.
    let svc = imgmirror::server::start(config).await.unwrap();
    let r = common::get(&format!("http://{}{route}", svc.addr)).await;
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    assert_eq!(r.bytes().await.unwrap(), variant);
    svc.shutdown().await;
    let out = common::bin::run_async(
        site.path(),
        &["purge", "--config", "imgmirror.toml", &url],
        &[],
    )
    .await;
    assert!(
        out.stderr.contains("2 mirror record(s) dropped"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = walkdir::WalkDir::new(dir.join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
