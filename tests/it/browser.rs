//! The blog owner's journey, end to end, with the components they really run. Every fixture post
//! (the seed and the 29 real ones) is rewritten and warmed by the real binary against a loopback
//! origin serving real photographs at the posts' image paths (hosts mapped with
//! `upstream.resolve`; https ones through a TLS origin with a test CA), rendered the way Hexo would
//! (front matter `headimg` as a header image, the Markdown body through a CommonMark renderer, the
//! theme's lazy loader that copies `data-original` into `src`), and served by real nginx that
//! proxies the route prefix to `imgmirror serve` with the shipped sidecar snippet
//! (`deploy/nginx/imgmirror-sidecar.conf`). With the origin stopped, every page is opened in
//! headless Chromium: every `<img>` loaded from imgmirror's routes through nginx, nothing was
//! requested from any other host (Chromium's resolver answers "not found" for every name), and no
//! console message was logged. Then `imgmirror export` into the site, imgmirror stopped, nginx
//! alone: the same pages, the same result. One screenshot per run goes to `target/tmp/`.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::bin::{self, Service};
use common::web::{self, Nginx};
use common::{image, Origin, Reply, TestCa};

/// What the test page's script reports once the window has loaded.
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

/// The theme's part of the page: the lazy loader ZAKER's markup expects (`data-original` becomes
/// `src`, as Hexo themes' lazyload does), then a report of every image once the page has loaded.
const SCRIPTS: &str = r#"<script>
var failed = [];
window.addEventListener('error', function (e) {
  failed.push(e.target && e.target.src ? e.target.src : String(e.message));
}, true);
document.querySelectorAll('img[data-original]').forEach(function (img) {
  img.src = img.getAttribute('data-original');
});
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return { src: img.currentSrc || img.src, width: img.naturalWidth,
             ok: img.complete && img.naturalWidth > 0 };
  });
  var resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  var pre = document.createElement('pre');
  pre.id = 'report';
  pre.textContent = JSON.stringify({ images: images, resources: resources, failed: failed });
  document.body.appendChild(pre);
});
</script>"#;

/// Splits a post into its front matter (YAML) and body, as Hexo does (a leading blank line is
/// allowed before the opening `---`).
fn split_post(text: &str) -> (serde_yaml_ng::Value, &str) {
    let t = text.trim_start_matches(['\n', '\r', '\u{feff}']);
    let Some(rest) = t
        .strip_prefix("---\n")
        .or_else(|| t.strip_prefix("---\r\n"))
    else {
        return (serde_yaml_ng::Value::Null, text);
    };
    let (yaml, body) = match rest.find("\n---") {
        Some(end) => {
            let after = &rest[end + 4..];
            (&rest[..end], after.split_once('\n').map_or("", |(_, b)| b))
        }
        None => (rest, ""),
    };
    let front = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("front matter: {e}"));
    (front, body)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// A post as its theme shows it: title, `headimg` as the header image, the body rendered.
fn render_post(text: &str) -> String {
    let (front, body) = split_post(text);
    let field = |k: &str| front.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let mut html = String::new();
    let options =
        pulldown_cmark::Options::ENABLE_TABLES | pulldown_cmark::Options::ENABLE_STRIKETHROUGH;
    pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new_ext(body, options));
    let header = match field("headimg") {
        "" => String::new(),
        src => format!(
            "<header><img class=\"headimg\" src=\"{}\"></header>",
            escape(src)
        ),
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\
         <link rel=\"icon\" href=\"data:,\"></head>\n<body>{header}\n<article>{html}</article>\n{SCRIPTS}\n</body></html>\n",
        escape(field("title"))
    )
}

fn posts_under(dir: &Path) -> Vec<PathBuf> {
    let mut posts: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "md"))
        .filter(|e| e.file_name() != "SOURCES.md") // where the fixtures come from, not a post
        .map(|e| e.into_path())
        .collect();
    posts.sort();
    posts
}

/// The report the page's script left in the DOM (`<pre id="report">`, text escaped by the
/// serialiser).
fn report_of(dom: &str) -> Option<Report> {
    let start = dom.find("<pre id=\"report\">")? + "<pre id=\"report\">".len();
    let end = start + dom[start..].find("</pre>")?;
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&json).ok()
}

/// Opens every page (file name, number of `<img>` elements in its HTML) through `site` and checks
/// each image; returns how many images loaded.
async fn check_pages(chromium: &Path, site: &str, pages: &[(String, usize)], when: &str) -> usize {
    use futures_util::StreamExt;
    let results: Vec<(String, usize, web::Rendered)> =
        futures_util::stream::iter(pages.iter().cloned())
            .map(|(page, images)| async move {
                let rendered = web::render(chromium, &format!("{site}/{page}")).await;
                (page, images, rendered)
            })
            .buffer_unordered(2)
            .collect()
            .await;
    let mut loaded = 0;
    for (page, images, rendered) in results {
        let report = report_of(&rendered.dom).unwrap_or_else(|| {
            panic!(
                "{when}: {page}: the page did not finish: {:.2000}\n{:.3000}",
                rendered.dom, rendered.log
            )
        });
        let console = rendered.console();
        assert!(console.is_empty(), "{when}: {page}: console: {console:#?}");
        assert!(
            report.failed.is_empty(),
            "{when}: {page}: failed to load: {:?}",
            report.failed
        );
        for img in &report.images {
            assert!(
                img.ok && img.width > 0,
                "{when}: {page}: an image did not load: {img:?}"
            );
            assert!(
                img.src.starts_with(&format!("{site}/i/"))
                    || img.src.starts_with(&format!("{site}/s/")),
                "{when}: {page}: an image not from imgmirror's routes: {img:?}"
            );
        }
        for r in &report.resources {
            assert!(
                r.starts_with(&format!("{site}/")),
                "{when}: {page}: fetched from outside the site: {r}"
            );
        }
        assert_eq!(
            report.images.len(),
            images,
            "{when}: {page}: images on the page"
        );
        loaded += report.images.len();
    }
    loaded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_shows_all_its_images_in_chromium_behind_nginx() {
    let (Some(chromium), Some(nginx_bin)) = (web::chromium(), Nginx::binary()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let blog = dir.path().join("blog");
    let posts = blog.join("source/_posts");
    let fixtures = root.join("tests/fixtures/posts");
    for post in posts_under(&fixtures) {
        let to = posts.join(post.strip_prefix(&fixtures).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&post, &to).unwrap();
    }
    let post_files = posts_under(&posts);
    assert_eq!(post_files.len(), 30);

    // The origin: a real photograph at every image path the posts reference, by format.
    let mut config = common::shipped_config();
    let rewriter = imgmirror::rewrite::Rewriter::new(&config);
    let mut upstreams = BTreeSet::new();
    for post in &post_files {
        let (_, report) = rewriter.rewrite(&std::fs::read(post).unwrap());
        upstreams.extend(report.rewritten.into_iter().map(|r| r.upstream));
    }
    let hosts: BTreeSet<String> = upstreams
        .iter()
        .map(|u| url::Url::parse(u).unwrap().host_str().unwrap().to_string())
        .collect();
    let ca = TestCa::new(&hosts.iter().cloned().collect::<Vec<_>>());
    let origin = Origin::start_with(Some(&ca)).await;
    let photos = [
        image("news-dogs.jpg"),
        image("news-mountain.jpg"),
        image("large-dragonfly.jpg"),
    ];
    origin.set("*", Reply::jpeg(photos[0].clone()));
    for (i, u) in upstreams.iter().enumerate() {
        let url = url::Url::parse(u).unwrap();
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let reply = if path.ends_with(".png") {
            Reply::Ok {
                body: image("fig-alpha.png"),
                content_type: "image/png",
                etag: None,
            }
        } else if path.ends_with(".gif") {
            Reply::Ok {
                body: image("bridge.gif"),
                content_type: "image/gif",
                etag: None,
            }
        } else {
            Reply::jpeg(photos[i % photos.len()].clone())
        };
        origin.set(&path, reply);
    }

    // The shipped config, with the mirror in the blog's folder and the posts' hosts on loopback.
    let ca_file = dir.path().join("test-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    config.upstream.ca_file = ca_file.display().to_string();
    config.cache.dir = blog.join("mirror");
    for h in &hosts {
        config
            .upstream
            .resolve
            .insert(h.clone(), origin.addr.to_string());
    }
    let config_file = blog.join("imgmirror.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();

    // The migration: rewrite and warm.
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

    // The site: every post rendered as Hexo would, into public/.
    let public = blog.join("public");
    std::fs::create_dir_all(&public).unwrap();
    let mut pages = Vec::new();
    for (i, post) in post_files.iter().enumerate() {
        let text = std::fs::read_to_string(post).unwrap();
        assert!(!text.contains("workers.dev/?"), "{post:?} still proxied");
        let page = format!("post-{i:02}.html");
        let html = render_post(&text);
        std::fs::write(public.join(&page), &html).unwrap();
        pages.push((page, html.matches("<img").count()));
    }

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
    let shown = check_pages(&chromium, &site, &pages, "served by imgmirror").await;
    // Every element counted (the posts hold 187 `<img>`, header images included).
    assert!(shown > 150, "only {shown} images on the pages");
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
        &format!("{site}/{showcase}"),
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
    let exported = check_pages(&chromium, &site, &pages, "exported, nginx alone").await;
    assert_eq!(exported, shown);
    web::screenshot(
        &chromium,
        &format!("{site}/{showcase}"),
        &shots.join("browser-e2e-exported.png"),
    )
    .await;
}
