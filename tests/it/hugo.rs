//! A second generator as judge of the rewrite: Debian's Hugo (0.111: goldmark for Markdown, Go's
//! `html/template`, which escapes and normalises URLs in attributes its own way), on a small site
//! of our own (`tests/hugo/`: the front matter's `headimg` as a banner, `thumbnail` on the list
//! pages, each post's modification time as its `Lastmod`). The 30 fixture posts, as they are, are
//! generated before and after `imgmirror rewrite` (the binary, the shipped config): every file is
//! the same except that each image link is exactly its route (`common::site`).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::bin;
use common::site::{assert_same_but_image_links, copy_fixture_posts, files_under, generate_with};

/// Runs `hugo` in `site` in UTC (panics with its output when it fails or warns); returns
/// `public/`, emptied first.
fn generate(hugo: &Path, site: &Path) -> std::path::PathBuf {
    let public = site.join("public");
    let _ = std::fs::remove_dir_all(&public);
    let mut cmd = Command::new(hugo);
    cmd.current_dir(site)
        .env("HUGO_CACHEDIR", site.join("cache"));
    generate_with(cmd, "hugo", &["ERROR", "WARN"]);
    public
}

#[test]
fn a_hugo_site_differs_only_by_its_image_links_after_the_rewrite() {
    let Some(hugo) = common::web::tool("Hugo", &["/usr/bin/hugo"], "apt-get install hugo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hugo");
    for rel in [
        "config.toml",
        "layouts/_default/single.html",
        "layouts/_default/list.html",
    ] {
        let to = site.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(template.join(rel), to).unwrap();
    }
    let posts = copy_fixture_posts(&site.join("content/posts"), str::to_string);
    assert_eq!(posts.len(), 30);
    let before = dir.path().join("public-before");
    std::fs::rename(generate(&hugo, &site), &before).unwrap();
    let pages = files_under(&before).len();
    assert_eq!(pages, 32, "30 posts, the home page and the posts' list");

    // The links the rewrite will replace, and the shipped config with the mirror beside the site.
    let mut config = common::shipped_config();
    config.cache.dir = dir.path().join("mirror");
    std::fs::write(
        dir.path().join("imgmirror.toml"),
        toml::to_string(&config).unwrap(),
    )
    .unwrap();
    let rewriter = imgmirror::rewrite::Rewriter::new(&config);
    let mut links = BTreeMap::new();
    for post in &posts {
        let (_, report) = rewriter.rewrite(&std::fs::read(post).unwrap());
        for r in report.rewritten {
            links.insert(r.link, r.route);
        }
    }
    let out = bin::run(
        dir.path(),
        &["rewrite", "--config", "imgmirror.toml", "site/content"],
        &[],
    );
    assert_eq!(out.code, 0, "rewrite: {}", out.stderr);
    assert!(out.stderr.contains("30 changed"), "{}", out.stderr);

    let after = generate(&hugo, &site);
    let mut links: Vec<(String, String)> = links.into_iter().collect();
    links.sort_by_key(|(link, _)| std::cmp::Reverse(link.len()));
    let replaced = assert_same_but_image_links(&before, &after, &links);
    assert!(replaced > 300, "only {replaced} image links in the site");
    eprintln!("hugo: the two generations differ by {replaced} image links and nothing else");
}
