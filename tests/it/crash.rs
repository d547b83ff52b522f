//! Crash consistency: `kill -9` of `imgmirror serve` under cold load and of `imgmirror rewrite`
//! mid-batch. Afterwards every post is fully old or fully new, every mirror record's blob matches
//! its hash, and nothing temporary is left once the next run has started. And a disk that refuses
//! writes: the service says it is not ready, keeps answering, and leaves nothing half written.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin::{self, Service};
use common::{client, image, route_url, Origin, Reply, HOST};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".imgmirror-"))
        })
        .collect()
}

/// Every record in the mirror points at a blob whose bytes match its hash.
fn assert_mirror_consistent(mirror: &Path) {
    for record in files_under(&mirror.join("urls"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let hash = r["hash"].as_str().unwrap();
        let blob = mirror
            .join("objects")
            .join(&hash[..2])
            .join(&hash[2..4])
            .join(hash);
        let bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{record:?}: blob {e}"));
        assert_eq!(imgmirror::store::sha256_hex(&bytes), hash, "{record:?}");
    }
}

/// A pid that no longer runs: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test]
async fn kill_9_under_cold_load_leaves_a_consistent_mirror() {
    let origin = Origin::start().await;
    let dogs = image("news-dogs.jpg");
    let mountain = image("news-mountain.jpg");
    for i in 0..60u64 {
        let body = if i % 2 == 0 {
            dogs.clone()
        } else {
            mountain.clone()
        };
        origin.set(
            &format!("/{i}.jpg"),
            Reply::slow_jpeg(Duration::from_millis(i * 40), body),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    // 60 slow images of one host at once: as many slots for it (per_host_concurrency).
    let config = format!(
        "[cache]\ndir = \"{}\"\n[upstream]\nfetch = \"any\"\nper_host_concurrency = 64\n\
         concurrency = 64\nresolve = {{ \"{HOST}\" = \"{}\" }}\n",
        mirror.display(),
        origin.addr
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let start = || {
        let mut cmd = bin::imgmirror(dir.path());
        cmd.args(["serve", "--config", "c.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Service::spawn(cmd)
    };
    let mut service = start().await;
    let addr = service.addr;
    let mut load = tokio::task::JoinSet::new();
    let c = client();
    for i in 0..60 {
        let (c, url) = (
            c.clone(),
            route_url(addr, &origin.url(&format!("/{i}.jpg"))),
        );
        load.spawn(async move { c.get(url).send().await.map(|r| r.status()) });
    }
    // Kill once a few images are mirrored, while most are still being fetched.
    let urls = mirror.join("urls");
    assert!(common::eventually(|| async { files_under(&urls).len() >= 3 }).await);
    service.kill();
    while load.join_next().await.is_some() {}
    let mirrored = files_under(&mirror.join("urls")).len();
    assert!(
        mirrored > 0 && mirrored < 60,
        "the kill landed mid-load: {mirrored} mirrored"
    );
    assert_mirror_consistent(&mirror);

    // What a crash leaves (planted, since the kill rarely lands inside a write) is swept at start.
    let planted = mirror
        .join("objects")
        .join(format!(".imgmirror-{}-x.tmp", dead_pid()));
    std::fs::write(&planted, b"partial").unwrap();
    let service = start().await;
    let addr = service.addr;
    // The killed service left its mark: the first maintenance pass after the start (a gc)
    // sweeps what it left.
    assert!(
        common::eventually(|| async { temp_files(&mirror).is_empty() }).await,
        "{:?}",
        temp_files(&mirror)
    );
    // The restarted service serves what was mirrored, and mirrors the rest.
    let mut again = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (c, url) = (
            c.clone(),
            route_url(addr, &origin.url(&format!("/{i}.jpg"))),
        );
        again.spawn(async move { (i, c.get(url).send().await.unwrap().status()) });
    }
    while let Some(done) = again.join_next().await {
        let (i, status) = done.unwrap();
        assert_eq!(status, 200, "{i}");
    }
    assert_mirror_consistent(&mirror);
}

const POST: &str = "---\nheadimg: 'https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/a_1024.jpg'\n---\n<img src=\"https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/b_1024.jpg\">\n";

#[test]
fn kill_9_mid_rewrite_leaves_every_post_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let posts = dir.path().join("posts");
    std::fs::create_dir_all(&posts).unwrap();
    // The rewritten form of POST, from a run on one file.
    std::fs::write(dir.path().join("one.md"), POST).unwrap();
    let rewrite = |args: &[&str]| {
        let mut cmd = bin::imgmirror(dir.path());
        cmd.arg("rewrite")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    assert!(rewrite(&["one.md"]).status().unwrap().success());
    let new = std::fs::read_to_string(dir.path().join("one.md")).unwrap();
    assert_ne!(new, POST);
    for i in 0..4000 {
        std::fs::write(posts.join(format!("p{i:04}.md")), POST).unwrap();
    }
    let mut child = rewrite(&["posts"]).spawn().unwrap();
    // Kill once staging has begun (temporary files appear), or after 3 s at the latest.
    for _ in 0..300 {
        if !temp_files(&posts).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut old, mut fresh) = (0, 0);
    for p in files_under(&posts) {
        if p.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&p).unwrap();
            if text == POST {
                old += 1;
            } else {
                assert_eq!(text, new, "{p:?} is neither old nor new");
                fresh += 1;
            }
        }
    }
    assert_eq!(old + fresh, 4000);
    // The next run finishes the job and sweeps what the killed one left.
    assert!(rewrite(&["posts"]).status().unwrap().success());
    assert!(
        temp_files(&posts).is_empty(),
        "{:?}",
        temp_files(&posts).len()
    );
    for p in files_under(&posts) {
        assert_eq!(std::fs::read_to_string(&p).unwrap(), new, "{p:?}");
    }
}

/// Every write to the mirror fails, as on a full disk: the service runs with its file-size limit
/// at 2 KiB (`ulimit -f`), with SIGXFSZ ignored so that an oversized write returns an error
/// instead of killing the process (what ENOSPC does on a full disk). `/readyz` answers 503 and
/// says why while `/healthz` stays 200; images are still served from the origin, and the mirror
/// holds no record, no blob and no temporary file afterwards. Once writes work again, the next
/// start is ready and mirrors what it serves.
#[tokio::test]
async fn a_disk_that_refuses_writes_makes_the_service_unready_and_leaves_nothing_behind() {
    let origin = Origin::start().await;
    let dogs = image("news-dogs.jpg");
    assert!(dogs.len() > 2048);
    origin.set("/a.jpg", Reply::jpeg(dogs.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[cache]\ndir = \"{}\"\n[upstream]\nfetch = \"any\"\nresolve = {{ \"{HOST}\" = \"{}\" }}\n",
            mirror.display(),
            origin.addr
        ),
    )
    .unwrap();
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "trap '' XFSZ; ulimit -f 2 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_imgmirror"),
        "serve",
        "--config",
    ])
    .arg(&config)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut full = Service::spawn(bin::command(sh, dir.path())).await;

    let r = common::get(&full.url("/readyz")).await;
    assert_eq!(r.status(), 503);
    let why = r.text().await.unwrap();
    assert!(why.contains("not writable"), "{why}");
    let metrics = common::get(&full.url("/metrics"))
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nimgmirror_ready 0\n"), "{metrics}");
    assert_eq!(full.status("/healthz").await, 200);
    let url = route_url(full.addr, &origin.url("/a.jpg"));
    for _ in 0..2 {
        let r = common::get(&url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), dogs);
    }
    assert!(full.terminate().success(), "a graceful stop even so");
    assert!(files_under(&mirror.join("urls")).is_empty());
    assert!(files_under(&mirror.join("objects")).is_empty());
    assert!(temp_files(&mirror).is_empty(), "{:?}", temp_files(&mirror));
    // Nothing but the mirror's own two small files (its layout's version, its count).
    let left: Vec<PathBuf> = files_under(&mirror)
        .into_iter()
        .filter(|p| !p.ends_with("layout.json") && !p.ends_with("usage.json"))
        .collect();
    assert!(left.is_empty(), "nothing else is left: {left:?}");

    // The disk has room again.
    let mut cmd = bin::imgmirror(dir.path());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let ok = Service::spawn(cmd).await;
    assert_eq!(ok.status("/readyz").await, 200);
    let url = route_url(ok.addr, &origin.url("/a.jpg"));
    assert_eq!(common::get(&url).await.bytes().await.unwrap(), dogs);
    assert_eq!(files_under(&mirror.join("urls")).len(), 1);
    assert_mirror_consistent(&mirror);
}
