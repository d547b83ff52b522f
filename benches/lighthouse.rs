//! The blog's pages in Lighthouse: the fixture posts' real Hexo site (Volantis) migrated twice,
//! plain (`rewrite --warm`: links only) and responsive (`[rewrite.responsive]` with a colour
//! placeholder, per-key presets for Volantis' banner and card, then `warm --variants`), each
//! served by nginx with the shipped sidecar snippet in front of `imgmirror serve`, the origins
//! stopped. Lighthouse 12.2.3 (`bench/lighthouse`, npm; mobile defaults) opens the first
//! `LIGHTHOUSE_PAGES` post pages (default 8) of each in Debian's Chromium, through
//! `bench/lighthouse/run.mjs` (Chromium 156's renamed trace field mapped back at start-up), and
//! the audits the images answer for are printed as two Markdown tables for BENCHMARKS.md.
//!
//! ```sh
//! (cd bench/lighthouse && npm ci --ignore-scripts) && cargo bench --bench lighthouse
//! ```
//!
//! Every other host (the theme's CDNs) is unresolvable in Chromium here, as in the browser test.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use common::bin::{self, Service};
use common::hexo::{Blog, Migration};
use common::web::{self, Nginx};

/// The image audits the issue names, in the order the tables show them.
const AUDITS: [&str; 6] = [
    "uses-responsive-images",
    "modern-image-formats",
    "offscreen-images",
    "uses-optimized-images",
    "lcp-lazy-loaded",
    "unsized-images",
];

/// What one page scored.
#[derive(Debug, Default)]
struct Page {
    /// Audit id → passed (a score of 1, or not applicable).
    passed: BTreeMap<&'static str, bool>,
    /// `unsized-images` items that are the post's own pictures (imgmirror's routes).
    unsized_own: usize,
    /// Image bytes transferred.
    image_bytes: u64,
    /// Layout shift Lighthouse attributes to images (`layout-shifts` items whose element is an
    /// `<img>`).
    image_shift: f64,
    /// The page's whole CLS, for reference.
    cls: f64,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lighthouse = root.join("bench/lighthouse");
    assert!(
        lighthouse
            .join("node_modules/lighthouse/package.json")
            .exists(),
        "Lighthouse is not installed: (cd bench/lighthouse && npm ci --ignore-scripts)"
    );
    let chromium = web::chromium().expect("Chromium (apt-get install chromium)");
    let nginx_bin = Nginx::binary().expect("nginx (apt-get install nginx)");
    let pages_wanted: usize = std::env::var("LIGHTHOUSE_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let work = tempfile::tempdir().expect("a work folder");
    let mut results = Vec::new();
    for responsive in [false, true] {
        let name = if responsive { "responsive" } else { "plain" };
        let dir = work.path().join(name);
        let blog = Blog::new(&dir.join("blog")).expect("Hexo (scripts/install-deps --test)");
        let posts = blog.add_fixture_posts();
        let mut config = common::shipped_config();
        if responsive {
            let r = &mut config.rewrite;
            r.responsive.enabled = true;
            r.responsive.placeholder = imgmirror::config::Placeholder::Color;
            // Volantis' banner (full width) and its 48-px-high thumbnail, as README's guide.
            for (key, name, preset) in [
                (
                    "headimg",
                    "banner",
                    "width = 720\nheight = 270\nfit = \"cover\"\nformat = \"webp\"",
                ),
                (
                    "thumbnail",
                    "thumb",
                    "width = 160\nheight = 96\nfit = \"cover\"\nformat = \"webp\"",
                ),
            ] {
                r.presets.keys.insert(key.into(), name.into());
                let preset = toml::from_str(preset).expect("a preset");
                config.presets.insert(name.into(), preset);
            }
        }
        if responsive {
            // The theme's own lazy-load filter off (README, "The responsive step"): it would
            // put its 1-px placeholder srcset before ours; native lazy loading replaces it.
            let volantis = "debug: false\nplugins:\n  lazyload:\n    enable: false\n";
            std::fs::write(blog.root.join("_config.volantis.yml"), volantis).unwrap();
        }
        let migration = Migration::start(&blog, &posts, config).await;
        for args in [
            &[
                "rewrite",
                "--config",
                "imgmirror.toml",
                "--warm",
                "source/_posts",
            ][..],
            &[
                "warm",
                "--config",
                "imgmirror.toml",
                "--variants",
                "source/_posts",
            ][..],
        ] {
            let out = bin::run(&blog.root, args, &[]);
            assert!(out.code == 0, "{args:?}: {}", out.stderr);
        }
        let public = blog.generate();
        let mut pages: Vec<String> = walkdir::WalkDir::new(&public)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() == "index.html")
            .filter(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|h| h.contains("id=\"imgmirror-test\""))
            })
            .map(|e| {
                let rel = e.path().parent().unwrap().strip_prefix(&public).unwrap();
                format!("/{}/", common::hexo::url_path(rel))
            })
            .collect();
        pages.sort();
        pages.truncate(pages_wanted);

        let mut cmd = bin::imgmirror(&blog.root);
        cmd.args(["serve", "--config", "imgmirror.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let service = Service::spawn(cmd).await;
        let snippet = std::fs::read_to_string(root.join("deploy/nginx/imgmirror-sidecar.conf"))
            .expect("the sidecar snippet")
            .replace("127.0.0.1:8080", &service.addr.to_string());
        let server = format!("root {};\nindex index.html;\n{snippet}", public.display());
        let nginx = Nginx::start(&nginx_bin, &dir.join("nginx"), &server).await;
        migration.origin.stop();
        let site = nginx.origin();
        let mut scored = Vec::new();
        for page in &pages {
            let report =
                lighthouse_run(&lighthouse, &chromium, &format!("{site}{page}"), &dir).await;
            scored.push((page.clone(), score(&report)));
        }
        drop(nginx);
        drop(service);
        results.push((name, scored));
    }
    print_tables(&results);
}

/// Runs Lighthouse (mobile defaults, performance only) on `url`; its JSON report.
async fn lighthouse_run(
    lighthouse: &Path,
    chromium: &Path,
    url: &str,
    dir: &Path,
) -> serde_json::Value {
    let out = dir.join("lighthouse.json");
    let status = tokio::process::Command::new("node")
        .arg(lighthouse.join("run.mjs"))
        .arg(url)
        .args([
            "--quiet",
            "--only-categories=performance",
            "--output=json",
            "--chrome-flags=--headless=new --no-sandbox --disable-gpu \
             --host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--output-path={}", out.display()))
        .env("CHROME_PATH", chromium)
        .current_dir(lighthouse)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run Lighthouse");
    assert!(status.success(), "Lighthouse failed on {url}");
    serde_json::from_slice(&std::fs::read(&out).expect("Lighthouse's report")).expect("JSON")
}

/// What the image audits say of one report.
fn score(report: &serde_json::Value) -> Page {
    let audits = &report["audits"];
    let mut page = Page::default();
    for id in AUDITS {
        let a = &audits[id];
        let passed = a["score"].as_f64() == Some(1.0) || a["scoreDisplayMode"] == "notApplicable";
        page.passed.insert(id, passed);
    }
    let items = |id: &str| {
        audits[id]["details"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    // The post's own pictures: imgmirror's routes, but not the theme layout's header image and
    // cards (`img.headimg`, `img.thumbnail`), which no attribute in a post can reach.
    page.unsized_own = items("unsized-images")
        .iter()
        .filter(|i| i["url"].as_str().is_some_and(|u| u.contains("/i/")))
        .filter(|i| {
            let snippet = i["node"]["snippet"].as_str().unwrap_or_default();
            !snippet.contains("headimg") && !snippet.contains("thumbnail")
        })
        .count();
    page.image_bytes = items("network-requests")
        .iter()
        .filter(|i| i["resourceType"] == "Image")
        .filter_map(|i| i["transferSize"].as_u64())
        .sum();
    page.image_shift = items("layout-shifts")
        .iter()
        .filter(|i| {
            i["node"]["snippet"]
                .as_str()
                .is_some_and(|s| s.starts_with("<img"))
        })
        .filter_map(|i| i["score"].as_f64())
        .sum();
    // What the responsive-images audit names, for the reader of the bench's output.
    for item in items("uses-responsive-images") {
        eprintln!(
            "  uses-responsive-images: {} ({} bytes wasted)",
            item["url"].as_str().unwrap_or_default(),
            item["wastedBytes"].as_f64().unwrap_or(0.0)
        );
    }
    page.cls = audits["cumulative-layout-shift"]["numericValue"]
        .as_f64()
        .unwrap_or(0.0);
    page
}

/// One Markdown table per site: a row per page, then the medians.
fn print_tables(results: &[(&str, Vec<(String, Page)>)]) {
    for (name, pages) in results {
        println!("\n### {name}\n");
        let head: Vec<&str> = AUDITS.to_vec();
        println!(
            "| page | {} | own unsized | image kB | image CLS | CLS |",
            head.join(" | ")
        );
        println!("|---|{}---|---|---|---|", "---|".repeat(AUDITS.len()));
        for (page, p) in pages {
            let marks: Vec<&str> = AUDITS
                .iter()
                .map(|a| if p.passed[a] { "pass" } else { "FAIL" })
                .collect();
            let short: String = percent_decoded(page)
                .chars()
                .rev()
                .take(24)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            println!(
                "| …{short} | {} | {} | {:.0} | {:.3} | {:.3} |",
                marks.join(" | "),
                p.unsized_own,
                p.image_bytes as f64 / 1000.0,
                p.image_shift,
                p.cls
            );
        }
        let mut bytes: Vec<u64> = pages.iter().map(|(_, p)| p.image_bytes).collect();
        bytes.sort_unstable();
        let median = bytes.get(bytes.len() / 2).copied().unwrap_or(0);
        let passing: Vec<String> = AUDITS
            .iter()
            .map(|a| {
                let n = pages.iter().filter(|(_, p)| p.passed[a]).count();
                format!("{n}/{}", pages.len())
            })
            .collect();
        println!(
            "| **all** | {} | | median {:.0} | | |",
            passing.join(" | "),
            median as f64 / 1000.0
        );
    }
}

/// `%XX` escapes undone (for the page names in the tables).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
