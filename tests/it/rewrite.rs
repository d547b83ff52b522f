//! The rewriter end to end: golden files from the real corpus, invariants over every fixture and
//! over generated documents, odd encodings, and batch behaviour through the binary (failures,
//! --out, --check, --diff, --report, 10,000 files).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgmirror::config::Config;
use imgmirror::rewrite::batch::{self, BatchOptions, BatchReport};
use imgmirror::rewrite::html::decode_entities;
use imgmirror::rewrite::unwrap::Unwrapper;
use imgmirror::rewrite::Rewriter;
use imgmirror::route;
use proptest::prelude::*;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

use common::shipped_config;

/// Every `.md` under a folder, sorted, as paths relative to it.
fn posts(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    out.sort();
    out
}

/// Checks the invariants of one rewrite: edits are ordered, disjoint spans; the output is the input
/// with exactly those spans replaced; each replaced link unwraps to the URL its route decodes to;
/// a second run changes nothing.
fn check_invariants(rw: &Rewriter, unwrapper: &Unwrapper, input: &[u8]) -> Vec<u8> {
    let (out, report) = rw.rewrite(input);
    let out = out.unwrap_or_else(|| input.to_vec());
    assert_eq!(report.spans.len(), report.rewritten.len());
    let mut rebuilt = Vec::new();
    let mut at = 0;
    for (span, r) in report.spans.iter().zip(&report.rewritten) {
        assert!(span.start >= at, "overlapping or unordered spans");
        rebuilt.extend_from_slice(&input[at..span.start]);
        rebuilt.extend_from_slice(r.route.as_bytes());
        at = span.end;
        // The replaced span, read as its context reads it: raw (YAML plain, CSS in <style>, bare
        // text), YAML-quoted, or with character references decoded (HTML, Markdown).
        let raw = String::from_utf8_lossy(&input[span.clone()]).into_owned();
        let decoded =
            String::from_utf8_lossy(&decode_entities(&input[span.clone()]).text).into_owned();
        let readings = [
            raw.replace("''", "'"),
            raw.replace("\\\"", "\""),
            raw.clone(),
            decoded,
        ];
        let unwraps = readings
            .iter()
            .any(|v| unwrapper.classify(v.trim()).upstream() == Some(r.upstream.as_str()));
        assert!(unwraps, "span {raw:?} does not unwrap to {}", r.upstream);
        let decoded = route::decode(route::route_part(&r.route, "").unwrap(), None).unwrap();
        assert_eq!(decoded.upstream, r.upstream);
    }
    rebuilt.extend_from_slice(&input[at..]);
    assert_eq!(rebuilt, out, "bytes outside rewritten spans changed");
    let (again, _) = rw.rewrite(&out);
    assert!(again.is_none(), "second run changed something");
    out
}

#[test]
fn golden_corpus() {
    let config = shipped_config();
    let rw = Rewriter::new(&config);
    let src = manifest().join("tests/fixtures/posts");
    let expected_dir = manifest().join("tests/fixtures/expected");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let files = posts(&src);
    assert_eq!(files.len(), 31);
    for rel in files {
        let input = fs::read(src.join(&rel)).unwrap();
        let (out, _) = rw.rewrite(&input);
        let out = out.unwrap_or(input);
        let golden = expected_dir.join(&rel);
        if update {
            fs::create_dir_all(golden.parent().unwrap()).unwrap();
            fs::write(&golden, &out).unwrap();
        }
        let want = fs::read(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        assert!(
            want == out,
            "{} differs from its golden file",
            rel.display()
        );
    }
}

#[test]
fn invariants_over_fixtures() {
    let config = shipped_config();
    let rw = Rewriter::new(&config);
    let unwrapper = Unwrapper::new(&config.rewrite);
    let src = manifest().join("tests/fixtures/posts");
    let mut total = 0;
    for rel in posts(&src) {
        let input = fs::read(src.join(&rel)).unwrap();
        let out = check_invariants(&rw, &unwrapper, &input);
        // No proxied image link is left outside code, in any file.
        let text = String::from_utf8_lossy(&out);
        for line in text
            .lines()
            .filter(|l| l.contains("https://cors.zfour.workers.dev/?http"))
        {
            assert!(
                line.contains("<code>") || line.contains("a.com:8002"),
                "{}: proxied link left: {line:.200}",
                rel.display()
            );
        }
        total += rw.rewrite(&input).1.rewritten.len();
    }
    // 149 proxied links (grep finds 38 in front matter and 111 in `src`, one of them an `<img>`
    // inside `<code>`: a real element) and 174 direct links on mirror hosts (data-original,
    // data-gif-url, unproxied juejin/cnBeta/yunyingpai/dockone images, 6 picsum.photos headers).
    assert_eq!(total, 323);
}

#[test]
fn seed_post_rewrites_as_expected() {
    let config = shipped_config();
    let rw = Rewriter::new(&config);
    let input =
        fs::read(manifest().join("tests/fixtures/posts/zaker-2021-06-08-community.md")).unwrap();
    let (out, report) = rw.rewrite(&input);
    let out = String::from_utf8(out.unwrap()).unwrap();
    let route = "/i/orig/http/zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg";
    assert!(out.contains(&format!("headimg: '{route}'")));
    assert!(out.contains(&format!("thumbnail: '{route}'")));
    assert!(out.contains(&format!("data-original=\"{route}\"")));
    assert!(out.contains(&format!("src=\"{route}\"")));
    assert!(!out.contains("workers.dev"));
    assert!(report.mismatches.is_empty());
    assert!(out.starts_with("\n---\ntitle: '到地方考察"));
}

fn rewriter_for(toml: &str) -> (Rewriter, Unwrapper) {
    let config = Config::from_parts("test", toml, &[]).unwrap();
    (Rewriter::new(&config), Unwrapper::new(&config.rewrite))
}

const BASE: &str = "[rewrite]\nmirror_hosts = [\"*.myzaker.com\"]\n";

#[test]
fn gbk_file_is_rewritten_without_decoding() {
    let (rw, un) = rewriter_for(BASE);
    let mut doc = b"---\ntitle: \xD6\xD0\xCE\xC4\nheadimg: https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a_1024.jpg\n---\n\xD6\xD0<img src=\"https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/b.jpg\">\xCE\xC4".to_vec();
    assert!(std::str::from_utf8(&doc).is_err());
    let out = check_invariants(&rw, &un, &doc);
    assert!(out.windows(4).any(|w| w == b"\xD6\xD0\xCE\xC4"));
    assert!(std::str::from_utf8(&out).is_err());
    doc.clear();
    assert!(String::from_utf8_lossy(&out).contains("/i/orig/http/zkres1.myzaker.com/b.jpg"));
}

#[test]
fn crlf_and_bom_are_kept() {
    let (rw, un) = rewriter_for(BASE);
    let doc = b"\xEF\xBB\xBF\r\n---\r\nthumbnail: \"https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg\"  \r\n---\r\n![x](https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/b.png \"t\")  \r\nno final newline";
    let out = check_invariants(&rw, &un, doc);
    let want = b"\xEF\xBB\xBF\r\n---\r\nthumbnail: \"/i/orig/http/zkres1.myzaker.com/a.jpg\"  \r\n---\r\n![x](/i/orig/http/zkres1.myzaker.com/b.png \"t\")  \r\nno final newline";
    assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
}

#[test]
fn entities_are_decoded_and_reescaped() {
    let (rw, un) = rewriter_for(BASE);
    let doc = b"<img src=\"https://corsproxy.io/?url=http%3A%2F%2Fzkres1.myzaker.com%2Fa.jpg%3Fx%3D1&amp;w=1\" style=\"background:url(&quot;https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/c.jpg?a=1&amp;b=2&quot;)\">";
    let out = String::from_utf8(check_invariants(&rw, &un, doc)).unwrap();
    assert_eq!(
        out,
        "<img src=\"/i/orig/http/zkres1.myzaker.com/a.jpg~3Fx~3D1\" style=\"background:url(&quot;/i/orig/http/zkres1.myzaker.com/c.jpg~3Fa~3D1~26b~3D2&quot;)\">"
    );
}

#[test]
fn left_alone_and_counted() {
    let (rw, _) = rewriter_for(BASE);
    let doc =
        "```\n<img src=\"https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg\">\n```\n\
`https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/b.jpg`\n\n\
<a href=\"https://cors.zfour.workers.dev/?http://example.com/article/1\">article</a>\n\
<img src=\"https://unknown.example/fetch?u=http://example.com/x.jpg\">\n\
<!-- <img src=\"https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/c.jpg\"> -->\n\
<script>var u = \"https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/d.jpg\";</script>\n\
https://gimg2.example/src=http://zkres1.myzaker.com/e.jpg\n";
    let (out, report) = rw.rewrite(doc.as_bytes());
    assert!(out.is_none(), "{}", String::from_utf8_lossy(&out.unwrap()));
    assert_eq!(report.left_alone.get("code"), Some(&4));
    assert_eq!(report.left_alone.get("non_image"), Some(&1));
    assert_eq!(report.unknown_proxies.len(), 2);
}

/// Inside HTML `<pre>` and `<code>`, text is code shown to the reader (left alone), but a tag is
/// a real element the browser loads: the browser end-to-end test found the CSRF post's
/// `<code><img src=proxy></code>` fetching through the proxy after a migration.
#[test]
fn tags_inside_html_code_are_real_elements() {
    let (rw, un) = rewriter_for(BASE);
    let p = "https://cors.zfour.workers.dev/?http://zkres1.myzaker.com";
    let doc = format!(
        "<p><code><img src=\"{p}/a.jpg\"> {p}/b.jpg</code></p>\n<pre>x <img src=\"{p}/c.jpg\"></pre>\n"
    );
    let out = String::from_utf8(check_invariants(&rw, &un, doc.as_bytes())).unwrap();
    assert_eq!(
        out,
        format!(
            "<p><code><img src=\"/i/orig/http/zkres1.myzaker.com/a.jpg\"> {p}/b.jpg</code></p>\n\
             <pre>x <img src=\"/i/orig/http/zkres1.myzaker.com/c.jpg\"></pre>\n"
        )
    );
    assert_eq!(
        rw.rewrite(doc.as_bytes()).1.left_alone.get("code"),
        Some(&1)
    );
}

#[test]
fn contexts_and_forms() {
    let (rw, un) = rewriter_for(
        "[rewrite]\nmirror_hosts = [\"*.myzaker.com\"]\n[[rewrite.proxies]]\nname = \"mine\"\nprefix = \"https://*.example.net/fetch/\"\n",
    );
    let z = "zkres1.myzaker.com/p/";
    let doc = format!(
        "---\nphotos:\n  - https://wsrv.nl/?url=ssl:{z}1.jpg&w=300\n  - '//{z}2.jpg'\nimages: [\"https://i1.wp.com/{z}3.jpg?ssl=1\", http://{z}4.jpg]\ncover: https://a.b.example.net/fetch/http%3A%2F%2F{z}5.jpg\n---\n\
<IMG SRC='https://cors-anywhere.herokuapp.com/http://{z}6.jpg' data-srcset=\"https://api.allorigins.win/raw?url=http%3A%2F%2F{z}7.jpg 1x, http://{z}8.jpg 2x\">\n\
<picture><source srcset=\"http://{z}9.webp\"></picture><video poster=http://{z}10.jpg></video>\n\
<style>.a{{background:url('https://api.codetabs.com/v1/proxy?quest=http://{z}11.png')}}</style>\n\n\
[![a](https://corsproxy.io/?http://{z}12.gif)](http://{z}13.jpg) ![b](<https://cors.zfour.workers.dev/?http://{z}14.jpg> 'c')\n\n\
[ref]: https://cors.bridged.cc/http://{z}15.png \"title\"\n\n\
see http://{z}16.jpg。 and https://cors.zfour.workers.dev/?https://images.weserv.nl/?url=http://{z}17.jpg\n"
    );
    let out = String::from_utf8(check_invariants(&rw, &un, doc.as_bytes())).unwrap();
    for n in 1..=17 {
        assert!(
            out.contains(&format!("zkres1.myzaker.com/p/{n}.")),
            "{n} missing from {out}"
        );
    }
    let (_, report) = rw.rewrite(doc.as_bytes());
    assert_eq!(report.rewritten.len(), 17, "{:#?}", report.rewritten);
    assert!(
        !out.contains("http://") && !out.contains("https://") && !out.contains("//zkres"),
        "{out}"
    );
    assert!(out.contains("'/i/orig/https/zkres1.myzaker.com/p/2.jpg'"));
    assert!(out.contains("。 and"));
}

// ---------- generated documents ----------

/// A fragment of a generated document: its text and, when it holds a link that must be
/// rewritten, the upstream URL.
#[derive(Clone, Debug)]
struct Fragment {
    text: String,
    expect: Option<String>,
    /// Must come out byte for byte (code, non-images, unknown proxies, filler).
    verbatim: bool,
}

fn upstream_strategy() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        "[a-f0-9]{6,24}",
        prop_oneof![Just("jpg"), Just("png"), Just("gif"), Just("webp")],
        prop::option::of("[a-z]=[0-9]{1,3}"),
    )
        .prop_map(|(s, name, ext, q)| {
            let mut u = format!("{s}://zkres2.myzaker.com/202106/{name}_1024.{ext}");
            if let Some(q) = q {
                u.push('?');
                u.push_str(&q);
            }
            u
        })
}

fn wrap_strategy() -> impl Strategy<Value = (String, String)> {
    (upstream_strategy(), 0usize..6).prop_map(|(u, form)| {
        let enc = u
            .replace('%', "%25")
            .replace(':', "%3A")
            .replace('/', "%2F")
            .replace('?', "%3F")
            .replace('=', "%3D");
        let link = match form {
            0 => format!("https://cors.zfour.workers.dev/?{u}"),
            1 => format!("//cors.zfour.workers.dev/?{enc}"),
            2 => format!("https://api.allorigins.win/raw?url={enc}"),
            3 => format!("https://cors-anywhere.herokuapp.com/{u}"),
            4 => format!(
                "https://cors.zfour.workers.dev/?https://api.codetabs.com/v1/proxy?quest={u}"
            ),
            _ => u.clone(),
        };
        (link, u)
    })
}

fn fragment_strategy() -> impl Strategy<Value = Fragment> {
    let rewritten = (wrap_strategy(), 0usize..9).prop_map(|((link, up), ctx)| {
        let attr = link.replace('&', "&amp;");
        let text = match ctx {
            0 => format!("<img class=\"x\" src=\"{attr}\" alt=\"a\">"),
            1 => format!("<img data-original='{attr}'>"),
            2 => format!("<div style=\"background-image:url(&quot;{attr}&quot;)\"></div>"),
            3 => format!("![alt]({link} \"title\")"),
            4 => format!("![alt](<{link}>)"),
            5 => format!("<img srcset=\"{attr} 2x\">"),
            6 => format!("\n\n[r{}]: {link}\n\n", up.len()),
            // A tag inside HTML `<code>` is a real element (its text would be left alone).
            7 => format!("<code><img src=\"{attr}\"></code>"),
            // Bare protocol-relative `//host/...` in prose is not taken for a link (README).
            _ if link.starts_with("//") => format!(" https:{link} "),
            _ => format!(" {link} "),
        };
        Fragment {
            text,
            expect: Some(up),
            verbatim: false,
        }
    });
    let untouched = (wrap_strategy(), 0usize..6).prop_map(|((link, _), ctx)| {
        let text = match ctx {
            0 => format!("\n\n```\n<img src=\"{link}\">\n```\n\n"),
            1 => format!("`{link}`"),
            2 => format!("<code>{link}</code>"),
            3 => format!("<!-- <img src=\"{link}\"> -->"),
            4 => "<a href=\"https://cors.zfour.workers.dev/?http://example.com/article/7\">a</a>"
                .to_string(),
            _ => "<img src=\"https://unknown.example/p?u=http://zkres2.myzaker.com/x.jpg\">"
                .to_string(),
        };
        Fragment {
            text,
            expect: None,
            verbatim: true,
        }
    });
    let filler = "[ a-zA-Z0-9中文。，）\\-*_#>\n]{0,40}".prop_map(|t| Fragment {
        text: t,
        expect: None,
        verbatim: true,
    });
    prop_oneof![3 => rewritten, 2 => untouched, 3 => filler]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn generated_documents(frags in prop::collection::vec(fragment_strategy(), 0..12), fm in prop::option::of(wrap_strategy()), quote in 0usize..3, crlf in any::<bool>()) {
        let (rw, un) = rewriter_for(BASE);
        let mut doc = String::new();
        let mut expected = Vec::new();
        if let Some((link, up)) = &fm {
            let v = match quote { 0 => format!("'{link}'"), 1 => format!("\"{link}\""), _ => link.clone() };
            doc.push_str(&format!("---\ntitle: t\nheadimg: {v}\n---\n"));
            expected.push(up.clone());
        }
        // Separate fragments so Markdown and HTML blocks do not run into each other.
        for f in &frags {
            doc.push_str("\n\n");
            doc.push_str(&f.text);
            if let Some(u) = &f.expect { expected.push(u.clone()); }
        }
        if crlf { doc = doc.replace('\n', "\r\n"); }
        let out = check_invariants(&rw, &un, doc.as_bytes());
        let (_, report) = rw.rewrite(doc.as_bytes());
        let got: Vec<String> = report.rewritten.iter().map(|r| r.upstream.clone()).collect();
        let mut e = expected.clone();
        e.sort();
        let mut g = got.clone();
        g.sort();
        prop_assert_eq!(g, e, "doc: {}", doc);
        let out = String::from_utf8(out).unwrap();
        for f in frags.iter().filter(|f| f.verbatim) {
            let t = if crlf { f.text.replace('\n', "\r\n") } else { f.text.clone() };
            prop_assert!(out.contains(&t), "{:?} changed", t);
        }
    }
}

// ---------- batch behaviour ----------

fn imgmirror(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = common::bin::run(dir, args, &[]);
    (out.code, out.stdout, out.stderr)
}

const POST: &str = "---\nheadimg: 'https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/a_1024.jpg'\n---\n<img src=\"https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/b_1024.jpg\">\n";

fn tree_with_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("config")).unwrap();
    fs::write(dir.path().join("config/imgmirror.toml"), BASE).unwrap();
    fs::create_dir_all(dir.path().join("posts/a/b")).unwrap();
    fs::write(dir.path().join("posts/one.md"), POST).unwrap();
    fs::write(dir.path().join("posts/a/b/two.html"), POST).unwrap();
    fs::write(dir.path().join("posts/a/image.jpg"), POST).unwrap(); // not a post: ignored
    dir
}

#[test]
fn check_dry_run_diff_and_report() {
    let dir = tree_with_config();
    let d = dir.path();
    let (code, out, err) = imgmirror(d, &["rewrite", "--check", "posts"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("one.md: has links to rewrite"), "{err}");
    assert_eq!(fs::read_to_string(d.join("posts/one.md")).unwrap(), POST);

    let (code, out, _) = imgmirror(d, &["rewrite", "--dry-run", "--diff", "posts"]);
    assert_eq!(code, 0);
    assert!(out.contains("\n@@ line 2 @@\n-headimg: 'https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/a_1024.jpg'"), "{out}");
    assert!(
        out.contains("+headimg: '/i/orig/http/zkres2.myzaker.com/202106/a_1024.jpg'"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(d.join("posts/one.md")).unwrap(), POST);

    let (code, _, err) = imgmirror(d, &["rewrite", "--report", "r.json", "posts"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("3 files scanned") || err.contains("2 files scanned"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["files_scanned"], 2);
    assert_eq!(report["files_changed"], 2);
    assert_eq!(report["files_ignored_by_extension"], 1);
    assert_eq!(report["links_rewritten"], 4);
    assert_eq!(report["rewritten_by_proxy"]["workers.dev"], 4);
    assert_eq!(report["rewritten_by_context"]["front_matter"], 2);
    assert_eq!(report["rewritten_by_context"]["html_attribute"], 2);
    assert_eq!(
        fs::read_to_string(d.join("posts/a/image.jpg")).unwrap(),
        POST
    );

    let (code, _, _) = imgmirror(d, &["rewrite", "--check", "posts"]);
    assert_eq!(code, 0, "nothing left after the rewrite");
}

/// `--diff` on a ZAKER post, whose body is one HTML line of 10 KB: every changed link is shown
/// in a few lines of context with its line and column, never the whole paragraph.
#[test]
fn diff_of_a_one_line_html_body_shows_each_link_in_context() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seed = manifest().join("tests/fixtures/posts/zaker-2021-06-08-community.md");
    fs::copy(&seed, d.join("post.md")).unwrap();
    fs::copy(
        manifest().join("config/imgmirror.toml"),
        d.join("imgmirror.toml"),
    )
    .unwrap();
    let text = fs::read_to_string(&seed).unwrap();
    let body = text.lines().max_by_key(|l| l.len()).unwrap();
    assert!(
        body.len() > 5000,
        "the body is one long line: {}",
        body.len()
    );
    let (code, out, err) = imgmirror(
        d,
        &[
            "rewrite",
            "--config",
            "imgmirror.toml",
            "--dry-run",
            "--diff",
            "post.md",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("--- a/post.md\n+++ b/post.md\n"),
        "{out:.300}"
    );
    let longest = out.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest < 300, "a diff line of {longest} characters");
    let (_, report) = Rewriter::new(&shipped_config()).rewrite(text.as_bytes());
    for r in &report.rewritten {
        assert!(
            out.lines()
                .any(|l| l.starts_with('+') && l.contains(&r.route)),
            "{} not shown",
            r.route
        );
    }
    // The body's links are reported at their line with a column; front matter lines are whole.
    let body_line = text.lines().position(|l| l == body).unwrap() + 1;
    assert!(
        out.contains(&format!("@@ line {body_line}, column ")),
        "{out:.600}"
    );
    assert!(out.contains("@@ line 8 @@\n-headimg: 'https://cors.zfour.workers.dev/?http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg'\n"), "{out:.600}");
    assert_eq!(fs::read_to_string(d.join("post.md")).unwrap(), text);
}

#[test]
fn out_keeps_relative_paths_and_sources() {
    let dir = tree_with_config();
    let d = dir.path();
    let (code, _, err) = imgmirror(d, &["rewrite", "--out", "build", "posts"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read_to_string(d.join("posts/a/b/two.html")).unwrap(),
        POST
    );
    let two = fs::read_to_string(d.join("build/a/b/two.html")).unwrap();
    assert!(two.contains("/i/orig/http/zkres2.myzaker.com/202106/b_1024.jpg"));
    assert!(d.join("build/one.md").exists());
}

#[test]
fn read_only_file_is_reported_and_the_batch_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tree_with_config();
    let d = dir.path();
    let ro = d.join("posts/one.md");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
    let (code, _, err) = imgmirror(d, &["rewrite", "posts"]);
    assert_eq!(code, 1);
    assert!(err.contains("one.md: read-only file"), "{err}");
    assert_eq!(fs::read_to_string(&ro).unwrap(), POST);
    assert!(fs::read_to_string(d.join("posts/a/b/two.html"))
        .unwrap()
        .contains("/i/orig/"));
}

#[test]
fn permissions_are_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tree_with_config();
    let d = dir.path();
    let f = d.join("posts/one.md");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, _) = imgmirror(d, &["rewrite", "posts/one.md"]);
    assert_eq!(code, 0);
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

/// SPEC §3's write rule as root over a post owned by `nobody` with setuid and setgid bits: the
/// rewritten post belongs to `nobody` still, has no set-id bit, and keeps its modification time
/// (Hexo's `updated_option: mtime` dates posts by it). The old code left a root-owned setuid
/// file with the mtime of the rewrite.
#[test]
fn root_rewrite_keeps_owner_and_mtime_and_drops_set_id_bits() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !common::is_root("a rewrite of a post owned by another user") {
        return;
    }
    let dir = tree_with_config();
    let d = dir.path();
    let f = d.join("posts/one.md");
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_622_505_600); // 2021-06-01
    std::os::unix::fs::chown(&f, Some(common::NOBODY), Some(common::NOBODY)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(then).set_accessed(then))
        .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o6755);
    let (code, _, err) = imgmirror(d, &["rewrite", "posts/one.md"]);
    assert_eq!(code, 0, "{err}");
    let meta = fs::metadata(&f).unwrap();
    assert!(fs::read_to_string(&f).unwrap().contains("/i/orig/"));
    assert_eq!(
        meta.mode() & 0o7777,
        0o755,
        "set-id bits dropped, the rest kept"
    );
    assert_eq!((meta.uid(), meta.gid()), (common::NOBODY, common::NOBODY));
    assert_eq!(meta.modified().unwrap(), then);
}

/// A user who cannot give the new file the post's owner (here `nobody`, over a root-owned post
/// it may write) does not replace it: the post stays as it was, byte for byte and owner, and the
/// error says why.
#[test]
fn a_post_whose_owner_cannot_be_kept_is_refused_untouched() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    if !common::is_root("dropping to nobody") {
        return;
    }
    let dir = tree_with_config();
    let d = dir.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(d.join("posts"), fs::Permissions::from_mode(0o777)).unwrap();
    let f = d.join("posts/one.md");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
    let mut cmd = common::bin::imgmirror(d);
    cmd.args(["rewrite", "posts/one.md"])
        .uid(common::NOBODY)
        .gid(common::NOBODY);
    let out = common::bin::finish(cmd);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("one.md") && out.stderr.contains("cannot keep"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read_to_string(&f).unwrap(), POST);
    assert_eq!(fs::metadata(&f).unwrap().uid(), 0);
    let leftovers = fs::read_dir(d.join("posts"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn unreadable_path_is_reported() {
    let dir = tree_with_config();
    let (code, _, err) = imgmirror(dir.path(), &["rewrite", "posts", "missing.md"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.md: cannot read"), "{err}");
}

#[test]
fn file_that_disappears_mid_run() {
    let dir = tree_with_config();
    let config = Config::from_parts("t", BASE, &[]).unwrap();
    let rw = Rewriter::new(&config);
    let mut report = BatchReport::default();
    let exts = config.rewrite.extensions.clone();
    let jobs = batch::collect(&[dir.path().join("posts")], &exts, &mut report);
    assert_eq!(jobs.len(), 2);
    fs::remove_file(dir.path().join("posts/one.md")).unwrap();
    let options = BatchOptions {
        extensions: exts,
        ..Default::default()
    };
    batch::process(&rw, &jobs, &options, &batch::stage, &mut report);
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].reason.contains("disappeared"));
    assert!(
        !dir.path().join("posts/one.md").exists(),
        "a vanished post must not be recreated"
    );
    assert_eq!(report.files_changed, 1);
}

#[test]
fn injected_write_failure_leaves_nothing_half_written() {
    let dir = tree_with_config();
    let config = Config::from_parts("t", BASE, &[]).unwrap();
    let rw = Rewriter::new(&config);
    let mut report = BatchReport::default();
    let exts = config.rewrite.extensions.clone();
    let jobs = batch::collect(&[dir.path().join("posts")], &exts, &mut report);
    fn failing(path: &Path, bytes: &[u8], keep: batch::Keep) -> std::io::Result<batch::Staged> {
        let half = &bytes[..bytes.len() / 2];
        batch::stage_chunks(
            path,
            [Ok(half), Err(std::io::Error::other("injected: disk full"))],
            keep,
        )
    }
    let options = BatchOptions {
        extensions: exts,
        ..Default::default()
    };
    batch::process(&rw, &jobs, &options, &failing, &mut report);
    assert_eq!(report.errors.len(), 2);
    assert!(report.errors[0].reason.contains("injected: disk full"));
    for f in ["posts/one.md", "posts/a/b/two.html"] {
        assert_eq!(fs::read_to_string(dir.path().join(f)).unwrap(), POST, "{f}");
    }
    let leftovers: Vec<_> = walkdir::WalkDir::new(dir.path())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn ten_thousand_files_in_nested_folders() {
    let dir = tree_with_config();
    let d = dir.path();
    let root = d.join("many");
    for i in 0..10_000 {
        let sub = root.join(format!("{}/{}", i % 10, (i / 10) % 100));
        if i < 1000 {
            fs::create_dir_all(&sub).unwrap();
        }
        fs::write(
            sub.join(format!("post-{i}.md")),
            POST.replace("a_1024", &format!("p{i}_1024")),
        )
        .unwrap();
    }
    let (code, _, err) = imgmirror(d, &["rewrite", "--report", "r.json", "many"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["files_changed"], 10_000);
    assert_eq!(report["links_rewritten"], 20_000);
    let sample = fs::read_to_string(root.join("7/77/post-777.md")).unwrap();
    assert!(sample.contains("headimg: '/i/orig/http/zkres2.myzaker.com/202106/p777_1024.jpg'"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary bytes: no panic, and the invariants still hold.
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
        let (rw, un) = rewriter_for(BASE);
        check_invariants(&rw, &un, &bytes);
    }

    /// A soup of every syntax the scanners look at, in any order.
    #[test]
    fn syntax_soup(parts in prop::collection::vec(prop::sample::select(vec![
        "<img src=", "<IMG SRC='", "\"", "'", "![", "[", "]", "](", "(", ")", "<", ">", "`", "```\n",
        "---\n", "headimg: ", "photos:\n  - ", "images: [", "https://cors.zfour.workers.dev/?",
        "http://zkres2.myzaker.com/a.jpg", "//zkres1.myzaker.com/b.png", "&amp;", "&quot;", "<!--",
        "-->", "<pre>", "</pre>", "<code>", "<style>", "</style>", "url(", "srcset=\"", ", ", " 2x",
        "\n", "\r\n", " ", "    ", "\u{FEFF}", "中文", "[r]: ", "%3A%2F%2F", "?url=", "data-original=",
    ]), 0..60)) {
        let (rw, un) = rewriter_for(BASE);
        let doc: String = parts.concat();
        check_invariants(&rw, &un, doc.as_bytes());
    }
}

/// Found by `syntax_soup` (2026-12-06): `<pre` inside an unquoted attribute value is part of the
/// value (as a browser's tokenizer reads it), not an element. The code scan took it for one, so
/// the URL after it counted as code; the first run rewrote the value (and the `<pre` in it), and
/// the second then rewrote the URL too. Both are rewritten in one run now, and a second changes
/// nothing.
#[test]
fn a_tag_inside_an_unquoted_attribute_value_is_no_element() {
    let (rw, un) = rewriter_for(BASE);
    let doc =
        b"<img src=http://zkres2.myzaker.com/a.jpg<pre>http://zkres2.myzaker.com/a.jpg<img src=";
    let out = String::from_utf8(check_invariants(&rw, &un, doc)).unwrap();
    assert_eq!(
        out,
        "<img src=/i/orig/http/zkres2.myzaker.com/a.jpg~3Cpre>/i/orig/http/zkres2.myzaker.com/a.jpg<img src="
    );
}

/// The other side of the case above (found in review): a "tag" whose span runs into an inline
/// code span is no tag (the HTML step refuses it too), so a `<script>` inside that span is still
/// a script and the URL in it is left alone.
#[test]
fn a_tag_that_runs_into_code_does_not_hide_a_script() {
    let (rw, un) = rewriter_for(BASE);
    let doc = b"<b title=\"x>\n<script>var u = 'http://zkres2.myzaker.com/b.jpg';</script>\n\nType `\"` then >.\n";
    let out = check_invariants(&rw, &un, doc);
    assert_eq!(out, doc.to_vec(), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn rewrite_presets_apply_per_context() {
    let (rw, un) = rewriter_for(
        "[rewrite]\nmirror_hosts = [\"*.myzaker.com\"]\n[rewrite.presets]\nfront_matter = \"thumb\"\nbody = \"content\"\n\
[presets.thumb]\nwidth = 320\nheight = 320\nfit = \"cover\"\n[presets.content]\nwidth = 800\n",
    );
    let doc = b"---\nthumbnail: 'https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg'\n---\n<img src=\"https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg\">\n";
    let out = String::from_utf8(check_invariants(&rw, &un, doc)).unwrap();
    assert!(
        out.contains("thumbnail: '/i/p-thumb/http/zkres1.myzaker.com/a.jpg'"),
        "{out}"
    );
    assert!(
        out.contains("src=\"/i/p-content/http/zkres1.myzaker.com/a.jpg\""),
        "{out}"
    );
    // Already rewritten with a preset: a second run leaves it (check_invariants ran it twice).
}

/// A front-matter key names its own preset (the theme's banner and card), winning over
/// `front_matter`; keys without one keep `front_matter`'s, the body keeps `body`'s.
#[test]
fn rewrite_presets_apply_per_front_matter_key() {
    let (rw, un) = rewriter_for(
        "[rewrite]\nmirror_hosts = [\"*.myzaker.com\"]\n[rewrite.presets]\nfront_matter = \"thumb\"\n\
headimg = \"banner\"\n[presets.thumb]\nwidth = 320\nheight = 320\nfit = \"cover\"\n\
[presets.banner]\nwidth = 1200\nheight = 400\nfit = \"cover\"\n",
    );
    let doc = b"---\nheadimg: 'https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg'\n\
thumbnail: 'https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg'\n\
photos:\n  - http://zkres1.myzaker.com/b.jpg\n---\n<img src=\"http://zkres1.myzaker.com/a.jpg\">\n";
    let out = String::from_utf8(check_invariants(&rw, &un, doc)).unwrap();
    for want in [
        "headimg: '/i/p-banner/http/zkres1.myzaker.com/a.jpg'",
        "thumbnail: '/i/p-thumb/http/zkres1.myzaker.com/a.jpg'",
        "  - /i/p-thumb/http/zkres1.myzaker.com/b.jpg",
        "src=\"/i/orig/http/zkres1.myzaker.com/a.jpg\"",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
}

/// More changed posts than the process may open files: staged posts hold no descriptor, so a
/// batch of 600 rewrites under `ulimit -n 128` succeeds and every post is rewritten.
#[test]
fn a_batch_larger_than_the_descriptor_limit_succeeds() {
    let dir = tree_with_config();
    fs::create_dir_all(dir.path().join("posts")).unwrap();
    for i in 0..600 {
        fs::write(dir.path().join(format!("posts/p{i}.md")), POST).unwrap();
    }
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "ulimit -n 128 && exec \"$0\" rewrite posts",
        env!("CARGO_BIN_EXE_imgmirror"),
    ]);
    let out = common::bin::finish(common::bin::command(sh, dir.path()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    for i in [0, 299, 599] {
        let text = fs::read_to_string(dir.path().join(format!("posts/p{i}.md"))).unwrap();
        assert!(!text.contains("workers.dev"), "p{i}: {text}");
    }
}

/// Temporary files a crashed run left next to posts (their process is gone) are swept by the
/// next run; one whose process still runs is not touched.
#[test]
fn the_next_run_sweeps_what_a_crashed_run_left() {
    let dir = tree_with_config();
    fs::create_dir_all(dir.path().join("posts")).unwrap();
    fs::write(dir.path().join("posts/a.md"), POST).unwrap();
    // A pid that is certainly gone: a child that has exited and been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir
        .path()
        .join(format!("posts/.imgmirror-{dead}-abc123.tmp"));
    let live = dir.path().join(format!(
        "posts/.imgmirror-{}-def456.tmp",
        std::process::id()
    ));
    fs::write(&stale, b"half a post").unwrap();
    fs::write(&live, b"another run's work in progress").unwrap();
    let (code, _, stderr) = imgmirror(dir.path(), &["rewrite", "--report", "r.json", "posts"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stale.exists(), "the crashed run's file is swept");
    assert!(live.exists(), "a running process's file is left alone");
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(report["temp_files_removed"], 1);
}

/// Named on the command line, a symlink's target is rewritten (the link stays a link), and a
/// FIFO is skipped with a reason instead of blocking the run.
#[test]
fn symlinks_and_fifos_on_the_command_line() {
    let dir = tree_with_config();
    fs::create_dir_all(dir.path().join("posts")).unwrap();
    fs::write(dir.path().join("posts/real.md"), POST).unwrap();
    std::os::unix::fs::symlink("posts/real.md", dir.path().join("link.md")).unwrap();
    let fifo = dir.path().join("pipe.md");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (code, _, stderr) = imgmirror(
        dir.path(),
        &["rewrite", "--report", "r.json", "link.md", "pipe.md"],
    );
    assert_eq!(code, 0, "{stderr}");
    let link = fs::symlink_metadata(dir.path().join("link.md")).unwrap();
    assert!(link.file_type().is_symlink(), "the link is still a link");
    let text = fs::read_to_string(dir.path().join("posts/real.md")).unwrap();
    assert!(!text.contains("workers.dev"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    let skipped = report["files_skipped"].to_string();
    assert!(
        skipped.contains("pipe.md") && skipped.contains("not a regular file"),
        "{skipped}"
    );
}

/// Inputs `cargo fuzz` found crashing the rewriter (`fuzz/`, target `rewrite_document`), kept as
/// regression cases: each rewrites without a panic, and a second run changes nothing.
#[test]
fn fuzz_crashes_stay_fixed() {
    let config = shipped_config();
    let rw = Rewriter::new(&config);
    let dir = manifest().join("tests/fixtures/fuzz");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let doc = fs::read(&path).unwrap();
        if let (Some(out), _) = rw.rewrite(&doc) {
            assert!(rw.rewrite(&out).0.is_none(), "{path:?}: not idempotent");
        }
        n += 1;
    }
    assert!(n >= 1, "the fuzz regression inputs are there");
}

/// `placeholder = "thumbhash"`: the image's ThumbHash, drawn as a small PNG, is the tag's
/// background while it loads; the preview looks like the image (its mean colour within a few
/// levels of the image's own average); a tag with a `style` keeps it.
#[test]
fn thumbhash_placeholder_is_a_small_preview_of_the_image() {
    use imgmirror::rewrite::responsive::Facts;
    use imgmirror::transform::{self, Limits};
    let photo = common::image("news-mountain.jpg");
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    let hash = transform::thumb_hash(&photo, &limits).expect("a ThumbHash");
    assert!(hash.len() < 40, "{} bytes", hash.len());
    let png = transform::thumb_hash_png(&hash).expect("a preview");
    eprintln!(
        "thumbhash: {} bytes, preview PNG {} bytes",
        hash.len(),
        png.len()
    );
    let preview = image::load_from_memory(&png).unwrap().to_rgb8();
    assert!(preview.width() <= 32 && preview.height() <= 32);
    let mean = |c: usize| {
        preview.pixels().map(|p| f64::from(p[c])).sum::<f64>()
            / f64::from(preview.width() * preview.height())
    };
    let average = transform::average_colour(&photo, &limits).unwrap();
    for (c, want) in average.iter().enumerate() {
        assert!((mean(c) - f64::from(*want)).abs() < 12.0, "channel {c}");
    }
    let (rw, _) = rewriter_for(&format!(
        "{BASE}[rewrite.responsive]\nenabled = true\nplaceholder = \"thumbhash\"\n"
    ));
    let facts = Facts {
        preview: Some(png.clone()),
        ..Facts::sized(1000, 750)
    };
    let rw = rw.with_facts([("http://zkres1.myzaker.com/a.jpg".to_string(), facts)].into());
    let doc = b"<img src=\"http://zkres1.myzaker.com/a.jpg\">\n<img src=\"http://zkres1.myzaker.com/a.jpg\" style=\"x\">\n";
    let (out, _) = rw.rewrite(doc);
    let out = String::from_utf8(out.unwrap()).unwrap();
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(&png);
    let want = format!(
        " style=\"background-image:url(data:image/png;base64,{data});background-size:cover\">"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(&want), "{}", lines[0]);
    assert!(
        lines[1].contains(" style=\"x\"") && !lines[1].contains("background"),
        "{}",
        lines[1]
    );
}

/// `markdown = true`: a Markdown image of a mirrored image becomes an `<img>` tag (its route,
/// alt text and title, and the responsive attributes; the post's first image is not lazy); one
/// the mirror does not hold keeps its Markdown, with its route; a second run changes nothing.
#[test]
fn markdown_images_become_responsive_tags() {
    use imgmirror::rewrite::responsive::Facts;
    let (rw, _) = rewriter_for(&format!(
        "{BASE}[rewrite.responsive]\nenabled = true\nmarkdown = true\nwidths = [320]\n"
    ));
    let facts = Facts::sized(1000, 750);
    let rw = rw.with_facts(
        [
            ("http://zkres1.myzaker.com/a.jpg".to_string(), facts.clone()),
            ("http://zkres1.myzaker.com/c.jpg".to_string(), facts),
        ]
        .into(),
    );
    let doc = "Text.\n\n![a \"cat\"](https://cors.zfour.workers.dev/?http://zkres1.myzaker.com/a.jpg \"A title\")\n\n\
![b](http://zkres1.myzaker.com/b.jpg)\n\n![c](<http://zkres1.myzaker.com/c.jpg>)\n\n`![code](http://zkres1.myzaker.com/a.jpg)`\n";
    let (out, _) = rw.rewrite(doc.as_bytes());
    let out = String::from_utf8(out.unwrap()).unwrap();
    let a = "http/zkres1.myzaker.com/a.jpg";
    let c = "http/zkres1.myzaker.com/c.jpg";
    let want = format!(
        "Text.\n\n<img src=\"/i/orig/{a}\" alt=\"a &quot;cat&quot;\" title=\"A title\" width=\"1000\" height=\"750\" \
srcset=\"/i/w320_webp/{a} 320w, /i/w1000_webp/{a} 1000w\" sizes=\"(max-width: 900px) 100vw, 900px\">\n\n\
![b](/i/orig/http/zkres1.myzaker.com/b.jpg)\n\n<img src=\"/i/orig/{c}\" alt=\"c\" width=\"1000\" height=\"750\" \
srcset=\"/i/w320_webp/{c} 320w, /i/w1000_webp/{c} 1000w\" sizes=\"(max-width: 900px) 100vw, 900px\" \
loading=\"lazy\" decoding=\"async\">\n\n`![code](http://zkres1.myzaker.com/a.jpg)`\n"
    );
    assert_eq!(out, want);
    let (again, _) = rw.rewrite(out.as_bytes());
    assert_eq!(again, None, "a second run changed the post");
}

/// With `security.presets_only`, the service makes only the configured widths: the widest
/// `srcset` candidate is the original itself, not a route of the original's own width.
#[test]
fn with_presets_only_the_widest_candidate_is_the_original() {
    use imgmirror::rewrite::responsive::Facts;
    let (rw, _) = rewriter_for(&format!(
        "{BASE}[security]\npresets_only = true\n[rewrite.responsive]\nenabled = true\nwidths = [320, 640, 2000]\n"
    ));
    let facts = Facts::sized(1000, 750);
    let rw = rw.with_facts([("http://zkres1.myzaker.com/a.jpg".to_string(), facts)].into());
    let (out, report) = rw.rewrite(b"<img src=\"http://zkres1.myzaker.com/a.jpg\">\n");
    let out = String::from_utf8(out.unwrap()).unwrap();
    let a = "http/zkres1.myzaker.com/a.jpg";
    assert_eq!(
        out,
        format!(
            "<img src=\"/i/orig/{a}\" width=\"1000\" height=\"750\" \
srcset=\"/i/w320_webp/{a} 320w, /i/w640_webp/{a} 640w, /i/orig/{a} 1000w\" \
sizes=\"(max-width: 900px) 100vw, 900px\">\n"
        )
    );
    assert!(report.routes.contains(&format!("/i/w640_webp/{a}")));
}
