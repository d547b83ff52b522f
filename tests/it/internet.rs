//! Operating in front of the internet, through the real binary (`imgmirror serve`, `url` and
//! `rewrite` as an operator runs them, each on a config file): signing-key rotation, presets
//! only, the cache headers a CDN may trust, and politeness to origins. The CDN purge has its own
//! module with Varnish ([`crate::cdn`]).

use crate::common;

use std::path::Path;

use bytes::Bytes;
use common::bin::{self, Service};
use common::{image, Origin, Reply, HOST};
use imgmirror::route::{self, Format, Options, SigningKey};

const DOGS: &str = "/dogs_1024.jpg";

/// `imgmirror serve` (the binary) on `dir/imgmirror.toml`: any link fetched, the origin's host
/// name mapped onto the test origin, the mirror in `dir/mirror`; `upstream` adds keys to
/// `[upstream]`, `rest` adds sections. Returns the service and the config's text.
async fn serve(origin: &Origin, dir: &Path, upstream: &str, rest: &str) -> Service {
    let config = format!(
        "[upstream]\nfetch = \"any\"\nresolve = {{ \"{HOST}\" = \"{}\" }}\n{upstream}\n\
         [cache]\ndir = \"mirror\"\n{rest}",
        origin.addr
    );
    std::fs::write(dir.join("imgmirror.toml"), config).unwrap();
    Service::start(dir, Path::new("imgmirror.toml")).await
}

/// An origin serving a photograph at [`DOGS`], and a folder for the service's config and mirror.
async fn dogs() -> (Origin, tempfile::TempDir) {
    let origin = Origin::start().await;
    origin.set(DOGS, Reply::jpeg(image("news-dogs.jpg")));
    (origin, tempfile::tempdir().unwrap())
}

/// The service URL of `upstream` with `options`, signed with `key` when there is one.
fn at(svc: &Service, upstream: &str, options: &Options, key: Option<&[u8]>) -> String {
    let key = key.map(|k| SigningKey::new(k).unwrap());
    let r = route::encode(upstream, options, key.as_ref()).unwrap();
    format!("http://{}{r}", svc.addr)
}

/// GETs `url` and returns its status, headers and body.
async fn get(url: &str, accept: &str) -> (u16, reqwest::header::HeaderMap, Bytes) {
    let r = common::get_with(url, &[("accept", accept)]).await;
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.bytes().await.unwrap())
}

/// Key rotation: the new key signs, the rotated-out one (`previous_signing_keys`) still verifies
/// the routes already in posts, any other key is refused; `imgmirror url` signs with the new key,
/// and `imgmirror rewrite` signs a post's old route again, once.
#[tokio::test]
async fn a_rotated_key_still_verifies_and_the_new_one_signs() {
    let (old, new) = ("o".repeat(32), "n".repeat(40));
    let (origin, dir) = dogs().await;
    let d = dir.path();
    let security =
        format!("[security]\nsigning_key = \"{new}\"\nprevious_signing_keys = [\"{old}\"]\n");
    let svc = serve(&origin, d, "", &security).await;
    let url = origin.url(DOGS);
    let none = Options::default();
    for (key, want) in [
        (Some(old.as_bytes()), 200),
        (Some(new.as_bytes()), 200),
        (Some(&[7u8; 32][..]), 403),
        (None, 403),
    ] {
        let (status, _, body) = get(&at(&svc, &url, &none, key), "*/*").await;
        assert_eq!(status, want, "{key:?}");
        if want == 200 {
            assert_eq!(body, image("news-dogs.jpg"));
        }
    }
    let signed_new =
        route::encode(&url, &none, Some(&SigningKey::new(new.as_bytes()).unwrap())).unwrap();
    let signed_old =
        route::encode(&url, &none, Some(&SigningKey::new(old.as_bytes()).unwrap())).unwrap();
    let out = bin::run_async(d, &["url", "--config", "imgmirror.toml", &url], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        signed_new,
        "imgmirror url signs with the new key"
    );

    std::fs::create_dir(d.join("posts")).unwrap();
    let post = d.join("posts/old.md");
    std::fs::write(
        &post,
        format!("---\ntitle: t\n---\n<img src=\"{signed_old}\">\n"),
    )
    .unwrap();
    let rewrite = ["rewrite", "--config", "imgmirror.toml", "posts"];
    let out = bin::run_async(d, &rewrite, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = format!("---\ntitle: t\n---\n<img src=\"{signed_new}\">\n");
    assert_eq!(std::fs::read_to_string(&post).unwrap(), want);
    let out = bin::run_async(d, &rewrite, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&post).unwrap(),
        want,
        "a second run changes nothing"
    );
    // The origin was asked once: the old and new routes are one image.
    assert_eq!(origin.hits(DOGS), 1);
}

/// `security.presets_only`: the original, a route naming a preset (and nothing more) and the
/// WebP routes of `[rewrite.responsive]`'s widths (what the rewriter writes in `srcset`s) are
/// served; any other variant is a 403 that fetches and encodes nothing.
#[tokio::test]
async fn presets_only_serves_the_original_and_presets_alone() {
    let (origin, dir) = dogs().await;
    let rest = "[security]\npresets_only = true\n[presets.thumb]\nwidth = 64\nformat = \"webp\"\n\
                [rewrite.responsive]\nenabled = true\nwidths = [96]\n";
    let svc = serve(&origin, dir.path(), "", rest).await;
    let url = origin.url(DOGS);
    let preset = Options {
        preset: Some("thumb".into()),
        ..Options::default()
    };
    let width = |w| Options {
        width: Some(w),
        ..Options::default()
    };
    let preset_and_width = Options {
        width: Some(50),
        ..preset.clone()
    };
    let webp = |w| Options {
        format: Some(Format::Webp),
        ..width(w)
    };
    for (options, want) in [
        (width(100), 403),
        (preset_and_width, 403),
        (width(96), 403),
        (webp(97), 403),
    ] {
        let (status, _, body) = get(&at(&svc, &url, &options, None), "*/*").await;
        assert_eq!(status, want, "{options:?}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("presets_only"), "{body}");
    }
    assert_eq!(origin.hits(DOGS), 0, "a refused route fetches nothing");
    let (status, h, body) = get(&at(&svc, &url, &Options::default(), None), "*/*").await;
    assert_eq!(status, 200);
    assert_eq!(body, image("news-dogs.jpg"));
    assert_eq!(h["content-type"], "image/jpeg");
    // `imgmirror url` on this config warns of a route the service will refuse, and only then.
    for (args, warned) in [
        (&["--width", "100"][..], true),
        (&["--preset", "thumb"][..], false),
        (&["--width", "96", "--format", "webp"][..], false),
    ] {
        let mut all = vec!["url", "--config", "imgmirror.toml", &url];
        all.extend(args);
        let out = bin::run_async(dir.path(), &all, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            out.stderr.contains("will answer 403"),
            warned,
            "{args:?}: {}",
            out.stderr
        );
    }
    let (status, h, body) = get(&at(&svc, &url, &preset, None), "*/*").await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "image/webp");
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 64);
    let (status, h, body) = get(&at(&svc, &url, &webp(96), None), "*/*").await;
    assert_eq!(status, 200, "a responsive width");
    assert_eq!(h["content-type"], "image/webp");
    assert_eq!(image::load_from_memory(&body).unwrap().width(), 96);
    assert_eq!(origin.hits(DOGS), 1);
}

/// The cache headers a CDN may trust: the original and a route naming its format are the same
/// bytes for every client, `immutable` with `stale-if-error`; a negotiated route varies on
/// `Accept` and is never `immutable` (a CDN that ignores `Vary` would pin one client's format for
/// everyone).
#[tokio::test]
async fn only_answers_that_never_vary_are_immutable() {
    let (origin, dir) = dogs().await;
    let svc = serve(&origin, dir.path(), "", "[image]\nauto_webp = true\n").await;
    let url = origin.url(DOGS);
    let immutable = "public, max-age=2592000, immutable, stale-if-error=604800";
    let named = Options {
        width: Some(120),
        format: Some(Format::Jpeg),
        ..Options::default()
    };
    for options in [Options::default(), named] {
        let (status, h, _) = get(&at(&svc, &url, &options, None), "image/webp,*/*").await;
        assert_eq!(status, 200, "{options:?}");
        assert_eq!(h["content-type"], "image/jpeg", "{options:?}");
        assert_eq!(h["cache-control"], immutable, "{options:?}");
        assert!(h.get("vary").is_none(), "{options:?}");
    }
    let negotiated = Options {
        width: Some(120),
        ..Options::default()
    };
    for (accept, want) in [("image/webp,*/*", "image/webp"), ("*/*", "image/jpeg")] {
        let (status, h, _) = get(&at(&svc, &url, &negotiated, None), accept).await;
        assert_eq!(status, 200, "{accept}");
        assert_eq!(h["content-type"], want, "{accept}");
        assert_eq!(h["vary"], "Accept", "{accept}");
        assert_eq!(h["cache-control"], "public, max-age=2592000", "{accept}");
    }
}

/// Polite to origins: a 429 with a `Retry-After` within `upstream.queue_wait_secs` is waited out
/// and asked once more (the reader gets the image); one asking for longer is answered 502 at
/// once; `upstream.referers` sends an origin that demands its own site's Referer that one.
#[tokio::test]
async fn origins_are_asked_politely() {
    let origin = Origin::start().await;
    let dogs = image("news-dogs.jpg");
    let throttled = |secs| Reply::ThrottledOnce {
        secs,
        then: Box::new(Reply::jpeg(dogs.clone())),
    };
    origin.set("/soon.jpg", throttled(1));
    origin.set("/later.jpg", throttled(60));
    let dir = tempfile::tempdir().unwrap();
    let upstream = "queue_wait_secs = 3\nreferers = { \"*.test\" = \"https://www.example.com/\" }";
    let svc = serve(&origin, dir.path(), upstream, "").await;
    let none = Options::default();
    let (status, _, body) = get(&at(&svc, &origin.url("/soon.jpg"), &none, None), "*/*").await;
    assert_eq!(status, 200);
    assert_eq!(body, dogs);
    assert_eq!(
        origin.hits("/soon.jpg"),
        2,
        "429, then the image after its Retry-After"
    );
    let (status, _, _) = get(&at(&svc, &origin.url("/later.jpg"), &none, None), "*/*").await;
    assert_eq!(
        status, 502,
        "a minute is longer than queue_wait_secs: an upstream failure"
    );
    assert_eq!(origin.hits("/later.jpg"), 1);
    // Every request carried the Referer configured for the host's glob.
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    for request in seen {
        assert_eq!(
            request.header("referer"),
            Some("https://www.example.com/"),
            "{request:?}"
        );
    }
}
