//! One behaviour suite for the mirror store trait, run against both backends: the filesystem
//! (`cache.store = "fs"`) and S3 (a real moto server on loopback). Records and blobs round-trip,
//! conditional puts let the first writer win, corrupted blobs read as missing and are healed by
//! the next put, listing, deleting and usage agree, and export, purge and the disk budget (written
//! once against the trait) behave the same on both.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::s3::{Moto, KEY_ID, SECRET};
use imgmirror::config::S3Config;
use imgmirror::store::{
    gc, ops, ref_path, sha256_hex, FsStore, Kind, MirrorStore, PutMode, Record, S3Store, Usage,
};
use object_store::aws::AmazonS3Builder;

const BUCKET: &str = "suite";

/// Overwrites a blob (by hash) behind the store's back.
type Corrupt = Box<dyn Fn(&str) -> futures_util::future::BoxFuture<'static, ()>>;

/// A backend under test, with a way to corrupt a blob behind its back.
struct Backend {
    store: Arc<dyn MirrorStore>,
    corrupt: Corrupt,
    _keep: Box<dyn std::any::Any>,
}

fn fs_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let s = store.clone();
    Backend {
        store: Arc::new(store),
        corrupt: Box::new(move |hash| {
            let path = s.blob_file(hash).unwrap();
            Box::pin(async move { std::fs::write(path, b"garbage").unwrap() })
        }),
        _keep: Box::new(dir),
    }
}

fn s3_config(moto: &Moto, prefix: &str) -> S3Config {
    S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        region: "us-east-1".into(),
        endpoint: moto.endpoint(),
        allow_http: true,
    }
}

/// An S3 store on moto with explicit test credentials (no process environment involved).
pub fn s3_store(config: &S3Config) -> S3Store {
    let builder = AmazonS3Builder::new()
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .with_region("us-east-1");
    S3Store::with_builder(config, builder).unwrap()
}

async fn s3_backend() -> Backend {
    let moto = Arc::new(Moto::start().await);
    moto.create_bucket(BUCKET).await;
    let store = s3_store(&s3_config(&moto, "mirror/"));
    store.verify().await.unwrap();
    let m = moto.clone();
    Backend {
        store: Arc::new(store),
        corrupt: Box::new(move |hash| {
            let m = m.clone();
            let key = format!("mirror/{}", imgmirror::store::blob_path(hash).unwrap());
            Box::pin(async move { m.put(BUCKET, &key, b"garbage").await })
        }),
        _keep: Box::new(moto),
    }
}

fn record(key: &str, bytes: &Bytes, at: u64, source: Option<&str>) -> Record {
    Record {
        etag: Some("\"e\"".into()),
        source: source.map(String::from),
        ..Record::of_bytes(key, bytes, "image/jpeg", at)
    }
}

async fn put(store: &dyn MirrorStore, kind: Kind, r: &Record, bytes: &Bytes) {
    store
        .put_image(kind, r, bytes, PutMode::Overwrite)
        .await
        .unwrap();
}

async fn round_trip(b: &Backend) {
    let s = b.store.as_ref();
    let bytes = Bytes::from_static(b"\x89PNG\r\n\x1a\nrest");
    let r = record("http://a.test/b.png", &bytes, 1, None);
    assert_eq!(s.record(Kind::Original, &r.key).await.unwrap(), None);
    put(s, Kind::Original, &r, &bytes).await;
    assert_eq!(
        s.record(Kind::Original, &r.key).await.unwrap(),
        Some(r.clone())
    );
    // Kinds are separate namespaces.
    assert_eq!(s.record(Kind::Variant, &r.key).await.unwrap(), None);
    assert_eq!(s.blob(&r.hash).await.unwrap(), Some(bytes.clone()));
    assert_eq!(
        s.record(Kind::Original, "http://a.test/c.png")
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.blob("../../etc/passwd").await.unwrap(), None);

    // A conditional put loses to the record already there, which stays.
    let mut later = r.clone();
    later.fetched_at = 99;
    assert!(!s
        .put_record(Kind::Original, &later, PutMode::Create)
        .await
        .unwrap());
    assert_eq!(
        s.record(Kind::Original, &r.key).await.unwrap(),
        Some(r.clone())
    );
    assert!(s
        .put_record(Kind::Original, &later, PutMode::Overwrite)
        .await
        .unwrap());
    assert_eq!(s.record(Kind::Original, &r.key).await.unwrap(), Some(later));
    let fresh = record("http://a.test/new.png", &bytes, 1, None);
    assert!(s
        .put_record(Kind::Original, &fresh, PutMode::Create)
        .await
        .unwrap());

    // Corrupted behind the store's back: reads as missing; the next put heals it.
    (b.corrupt)(&r.hash).await;
    assert_eq!(s.blob(&r.hash).await.unwrap(), None);
    s.put_blob(&r.hash, &bytes).await.unwrap();
    assert_eq!(s.blob(&r.hash).await.unwrap(), Some(bytes.clone()));

    assert_eq!(s.records(Kind::Original).await.unwrap().len(), 2);
    assert_eq!(
        s.usage().await.unwrap(),
        Usage {
            blobs: 1,
            bytes: bytes.len() as u64
        }
    );
    s.delete_record(Kind::Original, &r.key).await.unwrap();
    s.delete_record(Kind::Original, &r.key).await.unwrap(); // absent is fine
    s.delete_blob(&r.hash).await.unwrap();
    s.delete_blob(&r.hash).await.unwrap();
    assert_eq!(s.blob(&r.hash).await.unwrap(), None);
    assert_eq!(s.records(Kind::Original).await.unwrap(), vec![fresh]);
    s.check_writable().await.unwrap();
}

async fn budget_evicts_variants_first(b: &Backend) {
    let s = b.store.as_ref();
    let (o1, o2) = (Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 1000]));
    let (v1, v2) = (Bytes::from(vec![3u8; 100]), Bytes::from(vec![4u8; 100]));
    put(
        s,
        Kind::Original,
        &record("http://a.test/1.jpg", &o1, 10, None),
        &o1,
    )
    .await;
    put(
        s,
        Kind::Original,
        &record("http://a.test/2.jpg", &o2, 20, None),
        &o2,
    )
    .await;
    let v10 = "/i/w10/http/a.test/1.jpg";
    let v20 = "/i/w20/http/a.test/1.jpg";
    put(s, Kind::Variant, &record(v10, &v1, 30, Some("x")), &v1).await;
    put(s, Kind::Variant, &record(v20, &v2, 40, Some("x")), &v2).await;
    let e = ops::enforce_budget(s, 2200).await.unwrap();
    assert_eq!((e.variants, e.originals, e.bytes_after), (0, 0, 2200));
    let e = ops::enforce_budget(s, 2100).await.unwrap();
    assert_eq!((e.variants, e.originals, e.bytes_after), (1, 0, 2100));
    assert!(s.record(Kind::Variant, v10).await.unwrap().is_none());
    assert!(s.record(Kind::Variant, v20).await.unwrap().is_some());
    let e = ops::enforce_budget(s, 1500).await.unwrap();
    assert_eq!((e.variants, e.originals, e.bytes_after), (1, 1, 1000));
    assert!(s
        .record(Kind::Original, "http://a.test/1.jpg")
        .await
        .unwrap()
        .is_none());
    assert!(s
        .record(Kind::Original, "http://a.test/2.jpg")
        .await
        .unwrap()
        .is_some());
    assert_eq!(s.blob(&sha256_hex(&o1)).await.unwrap(), None);
    assert_eq!(s.usage().await.unwrap().bytes, 1000);
}

async fn purge_and_export(b: &Backend) {
    let s = b.store.as_ref();
    let (a, bb) = (Bytes::from(vec![5u8; 50]), Bytes::from(vec![6u8; 60]));
    let (va, shared) = (Bytes::from(vec![7u8; 10]), Bytes::from(vec![8u8; 10]));
    put(
        s,
        Kind::Original,
        &record("http://a.test/a.jpg", &a, 1, None),
        &a,
    )
    .await;
    put(
        s,
        Kind::Original,
        &record("http://a.test/b.jpg", &bb, 1, None),
        &bb,
    )
    .await;
    put(
        s,
        Kind::Variant,
        &record("/i/w10/http/a.test/a.jpg", &va, 1, Some("x")),
        &va,
    )
    .await;
    put(
        s,
        Kind::Variant,
        &record(
            "/i/w10/http/a.test/a.jpg#accept-webp",
            &shared,
            1,
            Some("x"),
        ),
        &shared,
    )
    .await;
    // The same bytes as another image's variant: kept for that one.
    put(
        s,
        Kind::Variant,
        &record("/i/w10/http/a.test/b.jpg", &shared, 1, Some("y")),
        &shared,
    )
    .await;

    let out = tempfile::tempdir().unwrap();
    let report = ops::export(s, out.path(), None, true).await.unwrap();
    assert_eq!(report.written, 4, "{report:?}");
    assert_eq!(
        report.skipped.len(),
        1,
        "the negotiated variant: {report:?}"
    );
    assert_eq!(
        std::fs::read(out.path().join("i/orig/http/a.test/a.jpg")).unwrap(),
        a.to_vec()
    );
    assert_eq!(
        std::fs::read(out.path().join("i/w10/http/a.test/a.jpg")).unwrap(),
        va.to_vec()
    );

    assert_eq!(ops::purge(s, "http://a.test/a.jpg").await.unwrap(), 3);
    assert!(s
        .record(Kind::Original, "http://a.test/a.jpg")
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.blob(&sha256_hex(&a)).await.unwrap(), None);
    assert_eq!(s.blob(&sha256_hex(&va)).await.unwrap(), None);
    assert_eq!(
        s.blob(&sha256_hex(&shared)).await.unwrap(),
        Some(shared.clone())
    );
    assert!(s
        .record(Kind::Original, "http://a.test/b.jpg")
        .await
        .unwrap()
        .is_some());
    assert_eq!(ops::purge(s, "http://a.test/a.jpg").await.unwrap(), 0);
}

/// `gc`: blobs no record points at go once past the grace period, markers are put back and
/// cleared, the blobs kept are counted into `usage.json`; a dry run changes nothing.
async fn gc_collects_and_counts(b: &Backend) {
    let s = b.store.as_ref();
    let (kept, orphan, unmarked) = (
        Bytes::from(vec![9u8; 100]),
        Bytes::from(vec![10u8; 70]),
        Bytes::from(vec![11u8; 30]),
    );
    let a = record("http://a.test/kept.jpg", &kept, 1, None);
    put(s, Kind::Original, &a, &kept).await;
    // A blob whose writer died before its record.
    s.put_blob(&sha256_hex(&orphan), &orphan).await.unwrap();
    // A record whose marker is missing (as in a mirror of layout 1)...
    let v = record("/i/w10/http/a.test/kept.jpg", &unmarked, 1, Some("x"));
    put(s, Kind::Variant, &v, &unmarked).await;
    let marker = ref_path(&v.hash, Kind::Variant, &v.key).unwrap();
    s.delete(&marker).await.unwrap();
    // ... and a marker no record stands behind.
    let stray = ref_path(&a.hash, Kind::Variant, "/i/w99/http/a.test/gone.jpg").unwrap();
    s.put(&stray, Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let later = now + gc::GRACE_SECS + 60;
    let dry = gc::collect(s, later, true).await.unwrap();
    assert_eq!(
        (dry.records, dry.blobs_deleted, dry.bytes_deleted),
        (2, 1, 70),
        "{dry:?}"
    );
    assert_eq!((dry.markers_added, dry.markers_removed), (1, 1), "{dry:?}");
    assert_eq!(
        s.blob(&sha256_hex(&orphan)).await.unwrap(),
        Some(orphan.clone())
    );
    assert!(s.get(&marker).await.unwrap().is_none());
    assert!(s.get(&stray).await.unwrap().is_some());

    // Within the grace period the orphan stays (its record may be on its way).
    let young = gc::collect(s, now, false).await.unwrap();
    assert_eq!(young.blobs_deleted, 0, "{young:?}");
    assert_eq!(young.markers_removed, 0, "{young:?}");
    assert!(
        s.get(&marker).await.unwrap().is_some(),
        "the missing marker is put back"
    );

    let done = gc::collect(s, later, false).await.unwrap();
    assert_eq!(
        (done.blobs_deleted, done.markers_removed),
        (1, 1),
        "{done:?}"
    );
    assert_eq!(s.blob(&sha256_hex(&orphan)).await.unwrap(), None);
    assert!(s.get(&stray).await.unwrap().is_none());
    let counted = Usage {
        blobs: 2,
        bytes: 130,
    };
    assert_eq!(done.usage, counted);
    assert_eq!(s.usage().await.unwrap(), counted);
    let snapshot = gc::snapshot(s).await.unwrap().unwrap();
    assert_eq!((snapshot.usage, snapshot.counted_at), (counted, later));
    // Nothing the records use went.
    assert_eq!(s.blob(&a.hash).await.unwrap(), Some(kept));
    assert_eq!(s.blob(&v.hash).await.unwrap(), Some(unmarked));

    // One pass at a time: a lease another holds is respected, an expired one taken over, and
    // the lease is given back at the end.
    let lease = |until: u64| Bytes::from(format!(r#"{{"by":"other","until":{until}}}"#));
    s.put(gc::LEASE, lease(later + 100), PutMode::Overwrite)
        .await
        .unwrap();
    let held = gc::collect(s, later, false).await.unwrap_err().to_string();
    assert!(held.contains("another gc pass (other)"), "{held}");
    assert!(
        gc::collect(s, later, true).await.is_ok(),
        "a dry run takes no lease"
    );
    s.put(gc::LEASE, lease(later - 1), PutMode::Overwrite)
        .await
        .unwrap();
    gc::collect(s, later, false).await.unwrap();
    assert!(s.get(gc::LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn fs_store_behaviour() {
    round_trip(&fs_backend()).await;
    budget_evicts_variants_first(&fs_backend()).await;
    purge_and_export(&fs_backend()).await;
    gc_collects_and_counts(&fs_backend()).await;
}

#[tokio::test]
async fn s3_store_behaviour() {
    let b = s3_backend().await;
    round_trip(&b).await;
    let b = s3_backend().await;
    budget_evicts_variants_first(&b).await;
    let b = s3_backend().await;
    purge_and_export(&b).await;
    let b = s3_backend().await;
    gc_collects_and_counts(&b).await;
}

#[tokio::test]
async fn a_missing_bucket_is_named_with_its_endpoint() {
    let moto = Moto::start().await;
    let mut config = s3_config(&moto, "p/");
    config.bucket = "no-such-bucket".into();
    let err = s3_store(&config).verify().await.unwrap_err().to_string();
    assert!(err.contains("\"no-such-bucket\""), "{err}");
    assert!(err.contains(&moto.endpoint()), "{err}");
    assert!(!err.contains('\n'), "{err}");
}
