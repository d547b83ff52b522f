//! `imgmirror warm`, `rewrite --warm` and `export` through the binary, against a loopback origin:
//! the mirror is filled from the posts, dead links are reported, and an export is a folder a static
//! file server can serve at the routes' paths.

use crate::common;

use std::path::Path;

use common::{client, image, Origin, Reply};

const POST: &str =
    "---\nheadimg: 'https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/a_1024.jpg'\n---\n\
<img src=\"https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/b_1024.jpg\">\n\
<img data-original=\"http://zkres2.myzaker.com/gone_1024.jpg\">\n";

/// A folder with posts and a config that maps the image host onto `origin`.
fn site(origin: &Origin) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("posts/x")).unwrap();
    std::fs::write(dir.path().join("posts/x/one.md"), POST).unwrap();
    let config = format!(
        "[cache]\ndir = \"mirror\"\n[upstream]\nresolve = {{ \"zkres2.myzaker.com\" = \"{}\" }}\n[rewrite]\nmirror_hosts = [\"*.myzaker.com\"]\n",
        origin.addr
    );
    std::fs::write(dir.path().join("imgmirror.toml"), config).unwrap();
    dir
}

/// The site's config for an in-process service on an ephemeral port, with the site's mirror.
fn service_config(dir: &Path) -> imgmirror::config::Config {
    let text = std::fs::read_to_string(dir.join("imgmirror.toml")).unwrap();
    let mut cfg = imgmirror::config::Config::from_parts("t", &text, &[]).unwrap();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.cache.dir = dir.join("mirror");
    cfg
}

async fn imgmirror(dir: &Path, args: &[&str]) -> (i32, String) {
    let config = dir.join("imgmirror.toml");
    let config = config.to_str().expect("a UTF-8 temp path");
    let out = common::bin::run_async(dir, args, &[("IMGMIRROR_CONFIG", config)]).await;
    (out.code, out.stderr)
}

fn origin_with_images(origin: &Origin) {
    origin.set("/a_1024.jpg", Reply::jpeg(image("news-dogs.jpg")));
    origin.set("/b_1024.jpg", Reply::jpeg(image("news-mountain.jpg")));
    origin.set("/gone_1024.jpg", Reply::Status(404));
}

#[tokio::test]
async fn warm_fills_the_mirror_and_reports_dead_links() {
    let origin = Origin::start().await;
    origin_with_images(&origin);
    let site = site(&origin);
    let d = site.path();
    let (code, err) = imgmirror(d, &["warm", "--report", "warm.json", "posts"]).await;
    assert_eq!(code, 1, "a dead link is a problem: {err}");
    assert!(
        err.contains("dead link: http://zkres2.myzaker.com/gone_1024.jpg (404"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("warm.json")).unwrap()).unwrap();
    assert_eq!(report["images"], 3);
    assert_eq!(report["fetched"], 2);
    assert_eq!(report["dead"][0]["status"], 404);
    // The posts were not touched.
    assert_eq!(
        std::fs::read_to_string(d.join("posts/x/one.md")).unwrap(),
        POST
    );
    // A second warm finds everything mirrored and asks the origin nothing new (404s are remembered
    // only in memory, so the dead link is asked again).
    let hits = origin.total_hits();
    let (_, err) = imgmirror(d, &["warm", "posts"]).await;
    assert!(
        err.contains("0 fetched, 0 archived, 2 already mirrored"),
        "{err}"
    );
    assert_eq!(origin.total_hits(), hits + 1);

    // The service then answers from the mirror with the origin gone.
    origin.stop();
    let svc = imgmirror::server::start(service_config(d)).await.unwrap();
    let r = client()
        .get(common::route_url(
            svc.addr,
            "http://zkres2.myzaker.com/b_1024.jpg",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    assert_eq!(r.bytes().await.unwrap(), image("news-mountain.jpg"));
    svc.shutdown().await;
}

#[tokio::test]
async fn rewrite_warm_then_export_serves_statically() {
    let origin = Origin::start().await;
    origin_with_images(&origin);
    let site = site(&origin);
    let d = site.path();
    let (code, err) = imgmirror(d, &["rewrite", "--warm", "posts"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 fetched") && err.contains("1 dead"), "{err}");
    let post = std::fs::read_to_string(d.join("posts/x/one.md")).unwrap();
    assert!(
        post.contains("headimg: '/i/orig/http/zkres2.myzaker.com/a_1024.jpg'"),
        "{post}"
    );

    // A variant, made by the service, to export with --variants.
    let svc = imgmirror::server::start(service_config(d)).await.unwrap();
    let opts = imgmirror::route::Options {
        width: Some(100),
        ..Default::default()
    };
    let variant =
        imgmirror::route::encode("http://zkres2.myzaker.com/b_1024.jpg", &opts, None).unwrap();
    let body = common::get(&format!("http://{}{variant}", svc.addr))
        .await
        .bytes()
        .await
        .unwrap();
    svc.shutdown().await;

    let (code, err) = imgmirror(d, &["export", "--variants", "site"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 files written"), "{err}");
    let original = d.join("site/i/orig/http/zkres2.myzaker.com/a_1024.jpg");
    assert_eq!(std::fs::read(original).unwrap(), image("news-dogs.jpg"));
    assert_eq!(
        std::fs::read(d.join(format!("site{variant}"))).unwrap(),
        body
    );
    // Every route in the rewritten post exists in the export (but the dead one).
    for route in [
        "/i/orig/http/zkres2.myzaker.com/a_1024.jpg",
        "/i/orig/http/zkres2.myzaker.com/b_1024.jpg",
    ] {
        assert!(post.contains(route));
        assert!(d.join(format!("site{route}")).is_file(), "{route}");
    }
}

/// An export is served by a real nginx whose workers run as `nobody` (files 0644, folders 0755:
/// the old 0600 files gave 403 for every image); a route that is a folder of another (`…/p/a`
/// and `…/p/a/b.jpg`) gets its documented place (`…/p/a/%file`) instead of "File exists"; and a
/// symlink planted in the export folder is not followed.
#[tokio::test]
async fn export_is_readable_by_nobody_has_a_place_for_every_route_and_follows_no_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let Some(nginx) = common::web::Nginx::binary() else {
        return;
    };
    if !common::is_root("nginx workers running as nobody") {
        return;
    }
    let origin = Origin::start().await;
    origin.set("/p/a", Reply::jpeg(image("news-dogs.jpg")));
    origin.set("/p/a/b.jpg", Reply::jpeg(image("news-mountain.jpg")));
    origin.set("/q/c.jpg", Reply::jpeg(image("news-dogs.jpg")));
    let site = site(&origin);
    let d = site.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        d.join("posts/x/one.md"),
        "<img src=\"http://zkres2.myzaker.com/p/a\"> <img src=\"http://zkres2.myzaker.com/p/a/b.jpg\">\n\
         <img src=\"http://zkres2.myzaker.com/q/c.jpg\">\n",
    )
    .unwrap();
    let (code, err) = imgmirror(d, &["warm", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    // A symlink planted where the export would write q/c.jpg, pointing outside.
    let outside = tempfile::tempdir().unwrap();
    let host = d.join("site/i/orig/http/zkres2.myzaker.com");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(outside.path(), host.join("q")).unwrap();
    let (code, err) = imgmirror(d, &["export", "site"]).await;
    assert_eq!(code, 1, "a skipped record is a problem: {err}");
    assert!(err.contains("2 files written"), "{err}");
    assert!(err.contains("is a symlink: not followed"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // 0644 and 0755 less the umask: at most those, readable by all with a umask of 022.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&host.join("p/a/%file")) & !0o644, 0);
    assert_eq!(mode(&host.join("p")) & !0o755, 0);

    let prefix = tempfile::tempdir().unwrap();
    let body = format!(
        "root {};\nlocation / {{ try_files $uri $uri/%file =404; }}",
        d.join("site").display()
    );
    let web =
        common::web::Nginx::start_as(&nginx, prefix.path(), &body, Some("nobody nogroup")).await;
    for (route, want) in [
        ("/i/orig/http/zkres2.myzaker.com/p/a", "news-dogs.jpg"),
        (
            "/i/orig/http/zkres2.myzaker.com/p/a/b.jpg",
            "news-mountain.jpg",
        ),
    ] {
        let r = common::get(&format!("{}{route}", web.origin())).await;
        assert_eq!(r.status(), 200, "{route}: {}", web.error_log());
        assert_eq!(r.bytes().await.unwrap(), image(want), "{route}");
    }
}

#[tokio::test]
async fn export_without_a_mirror_is_a_usage_error() {
    let origin = Origin::start().await;
    let site = site(&origin);
    let (code, err) = imgmirror(site.path(), &["export", "out"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no mirror there"), "{err}");
}

#[tokio::test]
async fn purge_drops_an_image_from_the_mirror_and_a_running_service() {
    const TOKEN: &str = "purge-token-for-tests-0123";
    let origin = Origin::start().await;
    origin_with_images(&origin);
    let site = site(&origin);
    let d = site.path();
    // A running service on a known loopback port, sharing the site's mirror.
    let port = common::free_port();
    let text = std::fs::read_to_string(d.join("imgmirror.toml")).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[security]\npurge_token = \"{TOKEN}\"\n{text}"
    );
    std::fs::write(d.join("imgmirror.toml"), &text).unwrap();
    // The posts' links on record (nothing fetched): the service fetches only known links.
    let (code, err) = imgmirror(d, &["rewrite", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(origin.total_hits(), 0);
    let mut cfg = service_config(d);
    cfg.server.listen = format!("127.0.0.1:{port}");
    let svc = imgmirror::server::start(cfg).await.unwrap();
    let c = client();
    let url = "http://zkres2.myzaker.com/a_1024.jpg";
    let original = common::route_url(svc.addr, url);
    let opts = imgmirror::route::Options {
        width: Some(50),
        ..Default::default()
    };
    let variant = format!(
        "http://{}{}",
        svc.addr,
        imgmirror::route::encode(url, &opts, None).unwrap()
    );
    for u in [&original, &variant, &original] {
        assert_eq!(common::get(u).await.status(), 200);
    }
    assert_eq!(
        common::get(&original).await.headers()["x-cache"],
        "HIT-MEMORY"
    );
    assert_eq!(origin.hits("/a_1024.jpg"), 1);

    let route = imgmirror::route::encode(url, &Default::default(), None).unwrap();
    let (code, err) = imgmirror(d, &["purge", &route]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2 mirror record(s) dropped") && err.contains("memory purged"),
        "{err}"
    );
    let blobs = walkdir::WalkDir::new(d.join("mirror/objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    assert_eq!(blobs, 0, "the purged image's blobs are gone");
    // Both the original and the variant are fetched again.
    let r = common::get(&variant).await;
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(origin.hits("/a_1024.jpg"), 2);
    // On the public listener purge needs the token (being on loopback is not enough: behind a
    // same-host proxy every client is), and url= parameters.
    let purge = format!("http://{}/purge", svc.addr);
    let r = c.post(&purge).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(&purge)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.post(&purge).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let (code, err) = imgmirror(d, &["purge", "not-a-url"]).await;
    assert_eq!(code, 2, "{err}");
    svc.shutdown().await;
}

/// A mirrored original's record keeps the size it is shown at (after EXIF orientation: a photo
/// stored on its side is recorded upright), read from its header when it is mirrored; a record
/// of an older release, which has none, gets it from the next `warm`.
#[tokio::test]
async fn records_keep_the_shown_size_and_warm_fills_it_in_for_older_records() {
    use imgmirror::store::{record_path, Kind};
    let origin = Origin::start().await;
    origin_with_images(&origin);
    let turned = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/exif-orientation/Landscape_6.jpg"),
    )
    .unwrap();
    origin.set("/gone_1024.jpg", Reply::jpeg(turned.into()));
    let site = site(&origin);
    let d = site.path();
    let (code, err) = imgmirror(d, &["warm", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    let record_of = |url: &str| -> serde_json::Value {
        let path = d.join("mirror").join(record_path(Kind::Original, url));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let turned_url = "http://zkres2.myzaker.com/gone_1024.jpg";
    let (w, h) = imgmirror::transform::probe(&image("news-dogs.jpg"))
        .map(|(_, w, h)| (w, h))
        .unwrap();
    assert_eq!(
        record_of("http://zkres2.myzaker.com/a_1024.jpg")["shown"],
        serde_json::json!([w, h])
    );
    // Stored 1200 wide and 1800 high, tagged to be turned: shown 1800 wide.
    assert_eq!(
        record_of(turned_url)["shown"],
        serde_json::json!([1800, 1200])
    );
    // An older release's record: no size; the next warm adds it without fetching anything.
    let path = d
        .join("mirror")
        .join(record_path(Kind::Original, turned_url));
    let mut old = record_of(turned_url);
    old.as_object_mut().unwrap().remove("shown");
    std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
    let hits = origin.total_hits();
    let (code, err) = imgmirror(d, &["warm", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(origin.total_hits(), hits);
    assert_eq!(
        record_of(turned_url)["shown"],
        serde_json::json!([1800, 1200])
    );
}

/// `[rewrite.responsive]` through `rewrite --warm`: each `<img>` of a mirrored image gains the
/// original's shown size, a `srcset` of WebP width routes never wider than the original (with
/// `sizes`; `data-srcset` on a tag a theme lazy-loads), lazy loading on all but the post's first
/// image, and its average colour behind it; nothing already there is duplicated, a second run
/// changes nothing, and every `srcset` entry serves an image of the width it claims.
#[tokio::test]
async fn responsive_rewrite_writes_sizes_srcset_lazy_and_colour_from_the_mirror() {
    let origin = Origin::start().await;
    origin_with_images(&origin);
    let site = site(&origin);
    let d = site.path();
    let post = "---\ntitle: t\n---\n\
<img src=\"https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/a_1024.jpg\" alt=\"first\">\n\
<img class=\"lazy\" data-original=\"http://zkres2.myzaker.com/b_1024.jpg\" src=\"data:image/gif;base64,R0lGODlhAQABAAAAACw=\">\n\
<img src=\"http://zkres2.myzaker.com/a_1024.jpg\" width=\"10\" height=\"20\" loading=\"eager\" style=\"x\"/>\n\
<img data-original=\"http://zkres2.myzaker.com/b_1024.jpg\" src=\"https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/b_1024.jpg\">\n";
    std::fs::write(d.join("posts/x/one.md"), post).unwrap();
    let mut config = std::fs::read_to_string(d.join("imgmirror.toml")).unwrap();
    config.push_str(
        "[rewrite.responsive]\nenabled = true\nwidths = [320, 640, 5000]\nplaceholder = \"color\"\n",
    );
    std::fs::write(d.join("imgmirror.toml"), config).unwrap();
    let (code, err) = imgmirror(d, &["rewrite", "--warm", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    let out = std::fs::read_to_string(d.join("posts/x/one.md")).unwrap();
    let tags: Vec<&str> = out.lines().filter(|l| l.starts_with("<img")).collect();
    let (a, b) = (
        "http/zkres2.myzaker.com/a_1024.jpg",
        "http/zkres2.myzaker.com/b_1024.jpg",
    );
    let size = |name: &str| {
        let (_, w, h) = imgmirror::transform::probe(&image(name)).unwrap();
        (w, h)
    };
    let ((aw, ah), (bw, _)) = (size("news-dogs.jpg"), size("news-mountain.jpg"));
    let colour = imgmirror::transform::average_colour(
        &image("news-dogs.jpg"),
        &imgmirror::transform::Limits {
            max_pixels: 50_000_000,
            max_frames: 256,
        },
    )
    .unwrap();
    let hex = format!("#{:02x}{:02x}{:02x}", colour[0], colour[1], colour[2]);
    // The first image: size, srcset (320, 640 and its own width; 5000 is wider than it), sizes,
    // colour; not lazy.
    assert_eq!(
        tags[0],
        format!(
            "<img src=\"/i/orig/{a}\" alt=\"first\" width=\"{aw}\" height=\"{ah}\" \
             srcset=\"/i/w320_webp/{a} 320w, /i/w640_webp/{a} 640w, /i/w{aw}_webp/{a} {aw}w\" \
             sizes=\"(max-width: 900px) 100vw, 900px\" style=\"background-color:{hex}\">"
        )
    );
    // A lazy-loaded tag: data-srcset, lazy.
    assert!(
        tags[1].contains(&format!(
            "data-srcset=\"/i/w320_webp/{b} 320w, /i/w640_webp/{b} 640w, /i/w{bw}_webp/{b} {bw}w\""
        )),
        "{}",
        tags[1]
    );
    assert!(
        tags[1].contains(" loading=\"lazy\" decoding=\"async\""),
        "{}",
        tags[1]
    );
    assert!(!tags[1].contains(" srcset="), "{}", tags[1]);
    // What was there stays; only what was missing is added (before the `/>`).
    assert_eq!(
        tags[2],
        format!(
            "<img src=\"/i/orig/{a}\" width=\"10\" height=\"20\" loading=\"eager\" style=\"x\" \
             srcset=\"/i/w320_webp/{a} 320w, /i/w640_webp/{a} 640w, /i/w{aw}_webp/{a} {aw}w\" \
             sizes=\"(max-width: 900px) 100vw, 900px\" decoding=\"async\"/>"
        )
    );
    // A lazy-loaded tag whose src already shows the image loads it now anyway: srcset, which
    // only picks the size.
    assert!(
        tags[3].contains(&format!(" srcset=\"/i/w320_webp/{b} 320w")),
        "{}",
        tags[3]
    );
    assert!(!tags[3].contains("data-srcset"), "{}", tags[3]);
    // A second run changes nothing.
    let (code, err) = imgmirror(d, &["rewrite", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("posts/x/one.md")).unwrap(),
        out
    );
    // warm --variants encodes every variant the posts name (six WebP widths), once.
    let (code, err) = imgmirror(d, &["warm", "--variants", "--report", "v.json", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("v.json")).unwrap()).unwrap();
    assert_eq!(
        (&report["variants"]["variants"], &report["variants"]["made"]),
        (&serde_json::json!(6), &serde_json::json!(6)),
        "{report}"
    );
    let (code, err) = imgmirror(d, &["warm", "--variants", "posts"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("6 variants: 0 made, 6 already made, 0 failed"),
        "{err}"
    );
    // export --variants writes each at its route's path: the srcset works with no service.
    let (code, err) = imgmirror(d, &["export", "--variants", "public"]).await;
    assert_eq!(code, 0, "{err}");
    for w in [320, 640] {
        let file = d.join(format!("public/i/w{w}_webp/{b}"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert_eq!(imgmirror::transform::probe(&bytes).unwrap().1, w);
    }
    // Every srcset entry serves a WebP of the width it claims, with the origin gone, from the
    // mirror: no reader encodes it.
    origin.stop();
    let svc = imgmirror::server::start(service_config(d)).await.unwrap();
    for (route, w) in [
        (format!("/i/w320_webp/{a}"), 320),
        (format!("/i/w640_webp/{b}"), 640),
        (format!("/i/w{aw}_webp/{a}"), aw),
    ] {
        let r = common::get(&format!("http://{}{route}", svc.addr)).await;
        assert_eq!(r.status(), 200, "{route}");
        assert_eq!(r.headers()["x-cache"], "HIT-DISK", "{route}");
        let body = r.bytes().await.unwrap();
        let (kind, got, _) = imgmirror::transform::probe(&body).unwrap();
        assert_eq!(
            (kind, got),
            (imgmirror::transform::Sniffed::Webp, w),
            "{route}"
        );
    }
    svc.shutdown().await;
}
