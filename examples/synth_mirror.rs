//! Writes a synthetic mirror in the store's own layout, for `bench/scale.sh`: N originals
//! (`http://img.test/<i>.jpg`), each with two variants (`/i/w100/…`, `/i/w200/…`), every record
//! with a small blob of its own and its marker, then `layout.json` and `usage.json`.
//!
//! ```text
//! cargo run --release --example synth_mirror -- fs DIR N
//! cargo run --release --example synth_mirror -- s3 ENDPOINT BUCKET N     (AWS_* credentials)
//! ```
//!
//! The filesystem mirror is written with plain writes (no fsync: a benchmark's fixture), in
//! parallel; the S3 one through `object_store`, 32 puts at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use imgmirror::store::{blob_path, gc, record_path, ref_path, Kind, Record, Usage};
use rayon::prelude::*;

/// Every object of image `i`: (relative path, bytes); blobs first, as the service writes them.
fn image(i: u64, now: u64) -> Vec<(String, Vec<u8>)> {
    let url = format!("http://img.test/{i}.jpg");
    let mut out = Vec::new();
    let mut add = |kind: Kind, key: String, bytes: Vec<u8>, source: Option<String>| {
        let record = Record {
            source,
            ..Record::of_bytes(&key, &bytes, "image/jpeg", now)
        };
        let hash = record.hash.clone();
        let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
        out.push((blob_path(&hash).expect("a hash"), bytes));
        out.push((ref_path(&hash, kind, &key).expect("a blob"), Vec::new()));
        out.push((record_path(kind, &key), json));
        hash
    };
    let original = add(
        Kind::Original,
        url,
        format!("synthetic original {i} {}", "x".repeat(200)).into_bytes(),
        None,
    );
    for w in [100, 200] {
        add(
            Kind::Variant,
            format!("/i/w{w}/http/img.test/{i}.jpg"),
            format!("synthetic variant w{w} of {i} {}", "y".repeat(100)).into_bytes(),
            Some(original.clone()),
        );
    }
    out
}

fn is_blob(path: &str) -> bool {
    path.starts_with("objects/")
}

fn snapshot(usage: Usage, now: u64) -> Vec<u8> {
    serde_json::to_vec_pretty(&gc::Snapshot {
        usage,
        counted_at: now,
    })
    .expect("a snapshot serialises")
}

fn write_fs(dir: &Path, n: u64, now: u64) {
    let (blobs, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    (0..n).into_par_iter().for_each(|i| {
        for (rel, data) in image(i, now) {
            let path: PathBuf = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create a folder");
            }
            std::fs::write(&path, &data).expect("write a file");
            if is_blob(&rel) {
                blobs.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
    });
    for sub in ["links", "urls", "variants", "objects"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create a folder");
    }
    let usage = Usage {
        blobs: blobs.into_inner(),
        bytes: bytes.into_inner(),
    };
    std::fs::write(dir.join(gc::USAGE), snapshot(usage, now)).expect("write usage.json");
    std::fs::write(dir.join(gc::LAYOUT), br#"{"version":2}"#).expect("write layout.json");
    eprintln!(
        "{n} originals, {} records, {usage:?} in {}",
        3 * n,
        dir.display()
    );
}

async fn write_s3(endpoint: &str, bucket: &str, n: u64, now: u64) {
    use futures_util::StreamExt;
    use object_store::{ObjectStoreExt, PutPayload};
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .with_region("us-east-1")
        .build()
        .expect("an S3 client");
    let store = &store;
    let objects: Vec<(String, Vec<u8>)> = (0..n).flat_map(|i| image(i, now)).collect();
    let usage = objects
        .iter()
        .filter(|(p, _)| is_blob(p))
        .fold(Usage::default(), |u, (_, d)| Usage {
            blobs: u.blobs + 1,
            bytes: u.bytes + d.len() as u64,
        });
    let count = objects.len();
    futures_util::stream::iter(objects)
        .map(|(rel, data)| async move {
            let path = object_store::path::Path::from(format!("imgmirror/{rel}"));
            store
                .put(&path, PutPayload::from(data))
                .await
                .expect("put an object");
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    for (name, data) in [
        (gc::USAGE, snapshot(usage, now)),
        (gc::LAYOUT, br#"{"version":2}"#.to_vec()),
    ] {
        let path = object_store::path::Path::from(format!("imgmirror/{name}"));
        store
            .put(&path, PutPayload::from(Bytes::from(data)))
            .await
            .expect("put an object");
    }
    eprintln!("{n} originals, {count} objects in bucket {bucket} at {endpoint}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let usage = "usage: synth_mirror fs DIR N | synth_mirror s3 ENDPOINT BUCKET N";
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["fs", dir, n] => write_fs(Path::new(dir), n.parse().expect("N"), now),
        ["s3", endpoint, bucket, n] => tokio::runtime::Runtime::new()
            .expect("a runtime")
            .block_on(write_s3(endpoint, bucket, n.parse().expect("N"), now)),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
