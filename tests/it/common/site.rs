//! A site generated twice, before and after `imgmirror rewrite`, compared: every file the same
//! except that each image link is exactly its route, in each form a generator writes a link. Used
//! with Hexo (`tests/it/browser.rs`) and Hugo (`tests/it/hugo.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `dir`, by path relative to it.
pub fn files_under(dir: &Path) -> BTreeMap<PathBuf, PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                e.path().to_path_buf(),
            )
        })
        .collect()
}

/// `s` as HTML attribute text.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// A page's text with what differs between two generations of the same site masked: the
/// theme's build time (`lastupdate: new Date(<ms>)`, Volantis' `theme.getStartTime`).
fn without_build_time(page: &str) -> String {
    const MARK: &str = "lastupdate: new Date(";
    let mut out = String::with_capacity(page.len());
    let mut rest = page;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at + MARK.len()]);
        rest = rest[at + MARK.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// `page` with every image link of `links` (link as the post had it, the route that replaced
/// it; longest first) written as a token naming its route, in each form Hexo writes a link: as
/// it is, attribute-escaped, and, for a link Hexo's external-link filter marked, with the
/// `target="_blank" rel="noopener"` it adds to external links (it leaves root-relative routes
/// alone; README "Rewriting" says what `rewrite.public_base` does about it). `side` 0 reads the
/// links, 1 the routes. Then every `<img>` tag's attributes are sorted (see
/// [`img_attributes_sorted`]).
fn tokenised(page: &str, links: &[(String, String)], side: usize) -> String {
    let mut page = without_build_time(page);
    let mut ids = BTreeMap::new();
    for (link, route) in links {
        let id = ids.len();
        let id = *ids.entry(route.as_str()).or_insert(id);
        let text = if side == 0 { link } else { route };
        if !page.contains(text.as_str()) && !page.contains(&escape(text)) {
            continue;
        }
        let token = format!("\u{1}{id}\u{1}");
        if side == 0 {
            for form in [text.clone(), escape(text)] {
                page = page.replace(
                    &format!("<a target=\"_blank\" rel=\"noopener\" href=\"{form}\""),
                    &format!("<a href=\"{token}\""),
                );
            }
        }
        page = page
            .replace(&escape(text), &token)
            .replace(text.as_str(), &token);
    }
    img_attributes_sorted(&page)
}

/// `page` with the attributes of each `<img>` tag in sorted order. The theme's lazy-load filter
/// (Volantis `scripts/filters/z-lazyload.js`) inserts its `class`/`data-srcset`/`srcset` after
/// the first place in the tag where the `src` value occurs: before the rewrite that is `src`
/// itself, after it `data-original`, which now names the same route as `src`. The same
/// attributes, in another order: tags are compared as sets of attributes.
fn img_attributes_sorted(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut rest = page;
    while let Some(at) = rest.find("<img") {
        out.push_str(&rest[..at]);
        let tag = &rest[at + 4..];
        let mut attrs = Vec::new();
        let mut chars = tag.char_indices().peekable();
        let mut end = tag.len();
        while let Some(&(i, c)) = chars.peek() {
            if c == '>' {
                end = i + 1;
                break;
            }
            if c.is_whitespace() || c == '/' {
                chars.next();
                continue;
            }
            let start = i;
            let mut quote = None;
            let mut stop = tag.len();
            for (j, c) in chars.by_ref() {
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == '"' || c == '\'' => quote = Some(c),
                    None if c.is_whitespace() || c == '>' => {
                        stop = j;
                        break;
                    }
                    None => {}
                }
            }
            attrs.push(&tag[start..stop]);
            if tag[stop..].starts_with('>') {
                end = stop + 1;
                break;
            }
        }
        attrs.sort_unstable();
        out.push_str("<img ");
        out.push_str(&attrs.join(" "));
        out.push('>');
        rest = &tag[end.min(tag.len())..];
    }
    out.push_str(rest);
    out
}

/// Every file of the site generated before the rewrite (`before`) is in the one generated after
/// it (`after`) and the same, except that each image link is exactly its route; returns how many
/// links the pages held.
pub fn assert_same_but_image_links(
    before: &Path,
    after: &Path,
    links: &[(String, String)],
) -> usize {
    let (old, new) = (files_under(before), files_under(after));
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>(),
        "the two generations made different files"
    );
    let mut replaced = 0;
    for (rel, old_path) in &old {
        let (a, b) = (
            std::fs::read(old_path).unwrap(),
            std::fs::read(&new[rel]).unwrap(),
        );
        if a == b {
            continue;
        }
        let (Ok(a), Ok(b)) = (String::from_utf8(a), String::from_utf8(b)) else {
            panic!("{rel:?}: a binary file changed");
        };
        let (ta, tb) = (tokenised(&a, links, 0), tokenised(&b, links, 1));
        if ta != tb {
            let at = ta
                .char_indices()
                .zip(tb.chars())
                .find(|((_, x), y)| x != y)
                .map_or(ta.len().min(tb.len()), |((i, _), _)| i);
            let from = ta[..at].char_indices().rev().nth(120).map_or(0, |(i, _)| i);
            panic!(
                "{rel:?}: the pages differ by more than image links, at byte {at}:\n\
                 before: {:.600}\n after: {:.600}",
                &ta[from..],
                &tb[(0..=from.min(tb.len()))
                    .rev()
                    .find(|&i| tb.is_char_boundary(i))
                    .unwrap_or(0)..]
            );
        }
        replaced += ta.matches('\u{1}').count() / 2;
    }
    replaced
}

/// Copies the 30 fixture posts (`tests/fixtures/posts`, without its SOURCES.md) under `to`, each
/// at the path `name` makes of its path in the fixtures (a generator's file-name rules), and
/// returns them, sorted. Each gets its own modification time, an hour apart (themes list "recent
/// posts" by it, and Hugo's `:fileModTime` dates a page by it), so a rewrite that lost it would
/// change pages.
pub fn copy_fixture_posts(to: &Path, name: impl Fn(&str) -> String) -> Vec<PathBuf> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/posts");
    let mut sources: Vec<PathBuf> = walkdir::WalkDir::new(&fixtures)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "md"))
        .filter(|e| e.file_name() != "SOURCES.md")
        .map(|e| e.into_path())
        .collect();
    sources.sort();
    let mut out = Vec::new();
    for (i, post) in sources.iter().enumerate() {
        let rel = post.strip_prefix(&fixtures).expect("under the fixtures");
        let path = to.join(name(&rel.to_string_lossy()));
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("the post's folder");
        std::fs::copy(post, &path).expect("copy a post");
        let when = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(1_700_000_000 + 3_600 * i as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .expect("the post's modification time");
        out.push(path);
    }
    out.sort();
    out
}

/// Runs a site generator's `cmd` in UTC (as `what`), and panics with its output when it fails or
/// logs any of `complaints` (a generator that logs an error may still exit 0).
pub fn generate_with(mut cmd: std::process::Command, what: &str, complaints: &[&str]) {
    let out = cmd.env("TZ", "UTC").output().expect("run the generator");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{log}");
    assert!(
        !complaints.iter().any(|c| log.contains(c)),
        "{what} complained:\n{log}"
    );
}
