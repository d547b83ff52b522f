//! The blog's real generator for end-to-end tests: Hexo 8 with the Volantis theme (the theme whose
//! `headimg`/`thumbnail` front matter the fixture posts carry), from npm, pinned by
//! `tests/hexo/package-lock.json` and installed into `tests/hexo/node_modules` by
//! `scripts/install-deps --test` (`npm ci`). A [`Blog`] is a fresh site folder made from
//! `tests/hexo/` (its `package.json`, `_config.yml`, `_config.volantis.yml` and `scripts/`, with
//! `node_modules` linked), into which a test puts posts and runs `hexo generate` with Node.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::web::tool;
use super::{image, Origin, Reply, TestCa};

/// The committed site template.
fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hexo")
}

/// A Hexo site folder.
pub struct Blog {
    /// The site's root (`source/_posts`, `public`, the configs).
    pub root: PathBuf,
    node: PathBuf,
}

impl Blog {
    /// A new site at `root` from the template, or a skip outside CI when Node or the installed
    /// packages are missing (see [`tool`]: in CI a missing one fails the test).
    pub fn new(root: &Path) -> Option<Blog> {
        // The `node` on PATH, as scripts/install-deps checks it (its version included).
        let on_path: Vec<String> = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| format!("{d}/node"))
            .collect();
        let candidates: Vec<&str> = on_path.iter().map(String::as_str).collect();
        let node = tool("Node.js", &candidates, "Node.js 20.19 or newer")?;
        let modules = template().join("node_modules");
        let installed = modules.join("hexo/package.json");
        tool(
            "Hexo (tests/hexo/node_modules)",
            &[installed.to_str()?],
            "scripts/install-deps --test",
        )?;
        std::fs::create_dir_all(root.join("source/_posts")).expect("the site folder");
        for f in ["package.json", "_config.yml", "_config.volantis.yml"] {
            std::fs::copy(template().join(f), root.join(f)).expect("the site's config");
        }
        std::fs::create_dir_all(root.join("scripts")).expect("the site's scripts folder");
        for e in std::fs::read_dir(template().join("scripts")).expect("tests/hexo/scripts") {
            let e = e.expect("a site script");
            std::fs::copy(e.path(), root.join("scripts").join(e.file_name())).expect("copy");
        }
        std::os::unix::fs::symlink(&modules, root.join("node_modules")).expect("link the packages");
        Some(Blog {
            root: root.to_path_buf(),
            node,
        })
    }

    /// Where posts go.
    pub fn posts(&self) -> PathBuf {
        self.root.join("source/_posts")
    }

    /// Copies the 30 fixture posts in (`tests/fixtures/posts`, without its SOURCES.md) and
    /// returns them, sorted. Each gets its own modification time: Volantis lists "recent posts"
    /// by it (Hexo's `updated`), so a rewrite that lost it would change every page. Two fixture
    /// posts have a `%` in their file name, which Hexo 8 cannot process (`URIError: URI
    /// malformed` in hexo-util's encodeURL; the post is left out of the site), and one lives in
    /// a folder whose name starts with `_`, which Hexo skips: here they are named with `-` for
    /// `%` and without the leading `_`, as their owner would have to.
    pub fn add_fixture_posts(&self) -> Vec<PathBuf> {
        super::site::copy_fixture_posts(&self.posts(), |rel| {
            rel.replace('%', "-").replace("/_", "/")
        })
    }

    /// Where `hexo generate` writes the site.
    pub fn public(&self) -> PathBuf {
        self.root.join("public")
    }

    /// Runs `hexo clean` then `hexo generate` in UTC (panics with Hexo's output when either fails);
    /// returns `public/`.
    pub fn generate(&self) -> PathBuf {
        for step in ["clean", "generate"] {
            let mut cmd = Command::new(&self.node);
            cmd.arg("node_modules/hexo/bin/hexo")
                .arg(step)
                .current_dir(&self.root);
            super::site::generate_with(cmd, &format!("hexo {step}"), &["ERROR"]);
        }
        self.public()
    }
}

/// A blog's migration set up: an origin (plain and TLS, with a test CA) serving a real
/// photograph at every image path the posts reference, by format (PNG, GIF, else one of three
/// JPEGs), and the config, written to the blog's `imgmirror.toml`, that maps the posts' hosts
/// onto it and keeps the mirror in the blog's folder.
pub struct Migration {
    /// The origin; stop it to play the origins' disappearance.
    pub origin: Origin,
    /// Every upstream URL the posts reference.
    pub upstreams: BTreeSet<String>,
    /// Their hosts.
    pub hosts: BTreeSet<String>,
    /// The config written.
    pub config: imgmirror::config::Config,
    /// Kept alive with the origin.
    _ca: TestCa,
}

impl Migration {
    /// Starts the origin for the images of `posts` and writes `config`, completed, into the
    /// blog.
    pub async fn start(
        blog: &Blog,
        posts: &[PathBuf],
        mut config: imgmirror::config::Config,
    ) -> Migration {
        let rewriter = imgmirror::rewrite::Rewriter::new(&config);
        let mut upstreams = BTreeSet::new();
        for post in posts {
            let (_, report) = rewriter.rewrite(&std::fs::read(post).expect("a post"));
            upstreams.extend(report.upstreams);
        }
        let hosts: BTreeSet<String> = upstreams
            .iter()
            .filter_map(|u| Some(url::Url::parse(u).ok()?.host_str()?.to_string()))
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
            let Ok(url) = url::Url::parse(u) else {
                continue;
            };
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let (body, content_type) = if path.ends_with(".png") {
                (image("fig-alpha.png"), "image/png")
            } else if path.ends_with(".gif") {
                (image("bridge.gif"), "image/gif")
            } else {
                (photos[i % photos.len()].clone(), "image/jpeg")
            };
            let reply = Reply::Ok {
                body,
                content_type,
                etag: None,
            };
            origin.set(&path, reply);
        }
        let ca_file = blog.root.join("test-ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).expect("the test CA");
        config.upstream.ca_file = ca_file.display().to_string();
        config.cache.dir = blog.root.join("mirror");
        for h in &hosts {
            config
                .upstream
                .resolve
                .insert(h.clone(), origin.addr.to_string());
        }
        let text = toml::to_string(&config).expect("the config as TOML");
        std::fs::write(blog.root.join("imgmirror.toml"), text).expect("the config");
        Migration {
            origin,
            upstreams,
            hosts,
            config,
            _ca: ca,
        }
    }
}

/// A site file's path (relative) as a URL path: every byte but unreserved ones and `/`
/// percent-encoded.
pub fn url_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
