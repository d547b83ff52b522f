//! The blog owner's journey, end to end, with the components they really run. Every fixture post
//! (the seed and the 29 real ones) goes into a real Hexo 8 site with the Volantis theme from npm
//! (`common::hexo`), which is generated once as it is. Then the real binary rewrites and warms the
//! posts against a loopback origin serving real photographs at the posts' image paths (hosts
//! mapped with `upstream.resolve`; https ones through a TLS origin with a test CA), and Hexo
//! generates the site again: every file of the two sites is the same except the image links, each
//! replaced by exactly its route. The generated site is served by real nginx that proxies the route
//! prefix to `imgmirror serve` with the shipped sidecar snippet
//! (`deploy/nginx/imgmirror-sidecar.conf`). With the origin stopped, every post page is opened in
//! headless Chromium: every image on the page is either the post's, loaded from imgmirror's
//! routes through nginx, or one of the theme's own ([`THEME_IMAGES`]); nothing asked any image
//! host or proxy (Chromium's resolver answers "not found" for every name; the theme's scripts,
//! fonts and images from its CDNs fail there, which is the theme's business). Then `imgmirror export` into the site, imgmirror stopped, nginx alone: the same
//! pages, the same result. One screenshot per run goes to `target/tmp/`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::bin::{self, Service};
use common::hexo::{Blog, Migration};
use common::site::{assert_same_but_image_links, files_under};
use common::web::{self, Nginx};

/// What the test page's script (`tests/hexo/scripts/imgmirror-report.js`) reports once the
/// window has loaded.
#[derive(serde::Deserialize, Debug)]
struct Report {
    /// Every `<img>`: its final URL and whether it decoded (complete, `naturalWidth > 0`).
    images: Vec<Img>,
    /// Every URL the page fetched (Resource Timing).
    resources: Vec<String>,
    /// Every element whose load failed (`error` events, captured on the window).
    failed: Vec<String>,
}

#[derive(serde::Deserialize, Debug)]
struct Img {
    src: String,
    width: u32,
    ok: bool,
}

/// How many `<img>` tags of `html` name one of imgmirror's routes (`/i/`, `/s/`).
fn route_images(html: &str) -> usize {
    html.split("<img")
        .skip(1)
        .filter(|tag| {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            ["\"/i/", "'/i/", "\"/s/", "'/s/"]
                .iter()
                .any(|p| tag.contains(p))
        })
        .count()
}

/// The report the page's script left in the DOM (`<pre id="imgmirror-report">`, text escaped by
/// the serialiser).
fn report_of(dom: &str) -> Option<Report> {
    const OPEN: &str = "<pre id=\"imgmirror-report\">";
    let start = dom.find(OPEN)? + OPEN.len();
    let end = start + dom[start..].find("</pre>")?;
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&json).ok()
}

/// Where the Volantis theme's own images come from (its logo, emoji and placeholders, loaded
/// from its CDNs, which the test's Chromium cannot reach): every other image on a post page must
/// be one of imgmirror's routes.
const THEME_IMAGES: [&str; 3] = ["https://unpkg.com/", "https://gcore.jsdelivr.net/", "data:"];

/// Opens every page (URL path, number of `<img>` tags naming a route) through `site` and checks
/// each of the post's images; `hosts` are the image hosts and proxies the posts used to name,
/// which nothing may ask. Returns how many images loaded.
async fn check_pages(
    chromium: &Path,
    site: &str,
    pages: &[(String, usize)],
    hosts: &BTreeSet<String>,
    when: &str,
) -> usize {
    use futures_util::StreamExt;
    let results: Vec<(String, usize, web::Rendered)> =
        futures_util::stream::iter(pages.iter().cloned())
            .map(|(page, images)| async move {
                let rendered = web::render(chromium, &format!("{site}{page}")).await;
                (page, images, rendered)
            })
            .buffer_unordered(2)
            .collect()
            .await;
    let routes = [format!("{site}/i/"), format!("{site}/s/")];
    let names_a_host = |s: &str| {
        hosts
            .iter()
            .any(|h| s.contains(&format!("//{h}/")) || s.contains(&format!("//{h}:")))
    };
    let mut loaded = 0;
    for (page, images, rendered) in results {
        let report = report_of(&rendered.dom).unwrap_or_else(|| {
            panic!(
                "{when}: {page}: the page did not finish: {:.2000}\n{:.3000}",
                rendered.dom, rendered.log
            )
        });
        // The theme's scripts from unpkg.com fail here and log; nothing about an image may.
        let console: Vec<&str> = rendered
            .console()
            .into_iter()
            .filter(|l| routes.iter().any(|r| l.contains(r.as_str())) || names_a_host(l))
            .collect();
        assert!(console.is_empty(), "{when}: {page}: console: {console:#?}");
        let failed: Vec<&String> = report
            .failed
            .iter()
            .filter(|f| routes.iter().any(|r| f.starts_with(r.as_str())) || names_a_host(f))
            .collect();
        assert!(
            failed.is_empty(),
            "{when}: {page}: failed to load: {failed:?}"
        );
        let mut shown = 0;
        for img in &report.images {
            assert!(
                !names_a_host(&img.src),
                "{when}: {page}: an image from its old host: {img:?}"
            );
            if routes.iter().any(|r| img.src.starts_with(r.as_str())) {
                assert!(
                    img.ok && img.width > 0,
                    "{when}: {page}: an image did not load: {img:?}"
                );
                shown += 1;
            } else {
                assert!(
                    THEME_IMAGES.iter().any(|t| img.src.starts_with(t)),
                    "{when}: {page}: an image neither imgmirror's nor the theme's: {img:?}"
                );
            }
        }
        for r in &report.resources {
            assert!(
                !names_a_host(r),
                "{when}: {page}: fetched from an image host: {r}"
            );
        }
        assert_eq!(shown, images, "{when}: {page}: images of the post shown");
        loaded += shown;
    }
    loaded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_of_a_real_hexo_site_shows_all_its_images_in_chromium_behind_nginx() {
    let (Some(chromium), Some(nginx_bin)) = (web::chromium(), Nginx::binary()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let Some(hexo) = Blog::new(&dir.path().join("blog")) else {
        return;
    };
    let blog = hexo.root.clone();
    let post_files = hexo.add_fixture_posts();
    assert_eq!(post_files.len(), 30);

    // The site as it was: generated from the posts as they are.
    let before = dir.path().join("public-before");
    std::fs::rename(hexo.generate(), &before).unwrap();

    // The origin: a real photograph at every image path the posts reference, by format; the
    // shipped config, with the mirror in the blog's folder and the posts' hosts on loopback.
    let config = common::shipped_config();
    let rewriter = imgmirror::rewrite::Rewriter::new(&config);
    let mut links = BTreeMap::new();
    for post in &post_files {
        let (_, report) = rewriter.rewrite(&std::fs::read(post).unwrap());
        for r in report.rewritten {
            links.insert(r.link, r.route);
        }
    }
    let migration = Migration::start(&hexo, &post_files, config).await;
    let (origin, upstreams) = (&migration.origin, &migration.upstreams);
    let mut old_hosts = migration.hosts.clone();
    old_hosts.extend(
        links
            .keys()
            .filter_map(|l| url::Url::parse(l).ok()?.host_str().map(str::to_string)),
    );

    // The migration: rewrite and warm, then the site generated again.
    let out = bin::run(
        &blog,
        &[
            "rewrite",
            "--config",
            "imgmirror.toml",
            "--warm",
            "source/_posts",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "rewrite --warm: {}", out.stderr);
    let fetched_before = origin.total_hits();
    assert!(
        fetched_before >= upstreams.len(),
        "warm fetched {fetched_before}"
    );
    for post in &post_files {
        let text = std::fs::read_to_string(post).unwrap();
        assert!(!text.contains("workers.dev/?"), "{post:?} still proxied");
    }
    let public = hexo.generate();

    // Hexo's pages, before and after: the same but for each image link, now its route.
    let mut links: Vec<(String, String)> = links.into_iter().collect();
    links.sort_by_key(|(link, _)| std::cmp::Reverse(link.len()));
    let replaced = assert_same_but_image_links(&before, &public, &links);
    assert!(replaced > 300, "only {replaced} image links in the site");
    eprintln!("hexo: the two generations differ by {replaced} image links and nothing else");

    // The post pages (the ones the report script is injected into), with their route images.
    let mut pages = Vec::new();
    for (rel, path) in files_under(&public) {
        let html = std::fs::read_to_string(&path).unwrap_or_default();
        if html.contains("id=\"imgmirror-test\"") {
            let page = common::hexo::url_path(rel.parent().unwrap_or(Path::new("")));
            pages.push((format!("/{page}/"), route_images(&html)));
        }
    }
    assert_eq!(pages.len(), 30, "post pages: {pages:?}");

    // imgmirror as a sidecar behind nginx, with the shipped snippet pointed at it.
    let mut cmd = bin::imgmirror(&blog);
    cmd.args(["serve", "--config", "imgmirror.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut service = Service::spawn(cmd).await;
    let snippet = std::fs::read_to_string(root.join("deploy/nginx/imgmirror-sidecar.conf"))
        .unwrap()
        .replace("127.0.0.1:8080", &service.addr.to_string());
    let server = format!("root {};\nindex index.html;\n{snippet}", public.display());
    let nginx = Nginx::start(&nginx_bin, &dir.path().join("nginx"), &server).await;

    origin.stop(); // from here on, the origins are gone
    let site = nginx.origin();
    let shown = check_pages(&chromium, &site, &pages, &old_hosts, "served by imgmirror").await;
    // Every post image counted (header and thumbnail images included).
    assert!(shown > 150, "only {shown} images on the pages");
    eprintln!(
        "chromium: {shown} images of {} post pages shown through nginx",
        pages.len()
    );
    assert_eq!(
        origin.total_hits(),
        fetched_before,
        "the pages needed the origin"
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let showcase = pages
        .iter()
        .max_by_key(|p| p.1)
        .map(|p| p.0.clone())
        .unwrap();
    web::screenshot(
        &chromium,
        &format!("{site}{showcase}"),
        &shots.join("browser-e2e-served.png"),
    )
    .await;
    drop(nginx);

    // imgmirror export into the site, imgmirror stopped: nginx alone serves the same pages.
    let out = bin::run(
        &blog,
        &["export", "--config", "imgmirror.toml", "public"],
        &[],
    );
    assert_eq!(out.code, 0, "export: {}", out.stderr);
    assert!(service.terminate().success());
    let server = format!("root {};\nindex index.html;", public.display());
    let nginx = Nginx::start(&nginx_bin, &dir.path().join("nginx-static"), &server).await;
    let site = nginx.origin();
    let exported = check_pages(
        &chromium,
        &site,
        &pages,
        &old_hosts,
        "exported, nginx alone",
    )
    .await;
    assert_eq!(exported, shown);
    web::screenshot(
        &chromium,
        &format!("{site}{showcase}"),
        &shots.join("browser-e2e-exported.png"),
    )
    .await;
}

/// The responsive step without any service: a page of rewritten `<img>` tags with their
/// `srcset`s (`[rewrite.responsive]`), its variants made ahead (`warm --variants`) and exported
/// into the site (`export --variants`), served by nginx alone with imgmirror and the origin
/// stopped. Chromium picks from each `srcset` what the screen needs (`sizes` is 100vw up to
/// 900 px): 250 device pixels (a 500-px window at a pixel ratio of 0.5) get the 320-px WebP
/// routes, 500 the 640-px ones, 1200 the original's own width (the widest there is); every
/// picked image loads from the exported files: the `srcset` works with no service.
#[tokio::test]
async fn an_exported_srcset_is_picked_by_chromium_with_no_service() {
    let (Some(chromium), Some(nginx_bin)) = (web::chromium(), Nginx::binary()) else {
        return;
    };
    let origin = common::Origin::start().await;
    // 1000 and 700 px wide.
    for (path, name) in [
        ("/mountain.jpg", "news-mountain.jpg"),
        ("/dogs.jpg", "news-dogs.jpg"),
    ] {
        origin.set(path, common::Reply::jpeg(common::image(name)));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let public = d.join("public");
    std::fs::create_dir(&public).unwrap();
    // Each image's `currentSrc` (the candidate Chromium picked) and whether it decoded.
    let page = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
        <meta name=\"viewport\" content=\"width=device-width\"></head><body>\n\
        <img src=\"http://images.example.org/mountain.jpg\" alt=\"a\">\n\
        <img src=\"http://images.example.org/dogs.jpg\" alt=\"b\">\n\
        <script>addEventListener('load', () => { const pre = document.createElement('pre'); \
        pre.id = 'picked'; pre.textContent = [...document.images].map(i => \
        new URL(i.currentSrc).pathname + (i.complete && i.naturalWidth > 0 ? ' loaded' : \
        ' failed')).join('\\n'); \
        document.body.append(pre); });</script>\n</body></html>\n";
    std::fs::write(public.join("index.html"), page).unwrap();
    let config = format!(
        "[upstream]\nresolve = {{ \"images.example.org\" = \"{}\" }}\n\
         [rewrite]\nmirror_hosts = [\"images.example.org\"]\n\
         [rewrite.responsive]\nenabled = true\nwidths = [320, 640]\n\
         [cache]\ndir = \"mirror\"\n",
        origin.addr
    );
    std::fs::write(d.join("imgmirror.toml"), config).unwrap();
    // Run async: the loopback origin answers on this test's runtime meanwhile.
    for args in [
        ["rewrite", "--warm", "public/index.html"],
        ["warm", "--variants", "public/index.html"],
        ["export", "--variants", "public"],
    ] {
        let mut all = vec![args[0], "--config", "imgmirror.toml"];
        all.extend(&args[1..]);
        let out = bin::run_async(d, &all, &[]).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }
    origin.stop();
    let rewritten = std::fs::read_to_string(public.join("index.html")).unwrap();
    assert!(rewritten.contains(" srcset=\""), "{rewritten}");

    let server = format!("root {};\nindex index.html;", public.display());
    let nginx = Nginx::start(&nginx_bin, &d.join("nginx"), &server).await;
    let (m, g) = (
        "http/images.example.org/mountain.jpg",
        "http/images.example.org/dogs.jpg",
    );
    let window = |width, scale| web::Window {
        width,
        height: 2000,
        scale,
    };
    for (window, want) in [
        (
            window(500, 0.5),
            [format!("w320_webp/{m}"), format!("w320_webp/{g}")],
        ),
        (
            window(500, 1.0),
            [format!("w640_webp/{m}"), format!("w640_webp/{g}")],
        ),
        (
            window(1200, 1.0),
            [format!("w1000_webp/{m}"), format!("w700_webp/{g}")],
        ),
    ] {
        let want: Vec<String> = want.iter().map(|w| format!("/i/{w} loaded")).collect();
        let rendered = web::render_in(&chromium, &nginx.origin(), Some(window)).await;
        let picked = rendered
            .dom
            .split_once("<pre id=\"picked\">")
            .and_then(|(_, rest)| rest.split_once("</pre>"))
            .map(|(p, _)| p.lines().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{window:?}: no report: {:.2000}", rendered.dom));
        assert_eq!(picked, want, "{window:?}");
    }
}
