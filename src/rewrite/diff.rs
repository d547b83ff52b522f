//! `rewrite --diff`: a diff made for reviewing a migration, not for `patch`. A rewrite replaces
//! links and never adds or removes a line, so old line N is new line N. A changed line of up to
//! [`WHOLE_LINE`] characters is shown whole; a longer one (a ZAKER post's body is one HTML line
//! of tens of KB) is shown as one `-`/`+` pair per changed link, with the link whole and a little
//! context either side, and the line and column where it starts. Lossy UTF-8 for display: the
//! file itself is never decoded.

use std::fmt::Write as _;
use std::path::Path;

/// Lines up to this many characters are shown whole.
pub const WHOLE_LINE: usize = 200;
/// Characters of context either side of a changed link in a long line.
const CONTEXT: usize = 40;

/// The review diff of one file: `--- a/PATH`, `+++ b/PATH`, then per changed line or link an
/// `@@ line N @@` (or `@@ line N, column C @@`) header and its `-`/`+` pair.
pub fn review_diff(path: &Path, old: &[u8], new: &[u8]) -> String {
    let old = String::from_utf8_lossy(old);
    let new = String::from_utf8_lossy(new);
    let name = path.display().to_string();
    let (old_lines, new_lines): (Vec<&str>, Vec<&str>) =
        (old.split('\n').collect(), new.split('\n').collect());
    if old_lines.len() != new_lines.len() {
        // Not a rewrite's change (lines added or removed): an ordinary unified diff.
        return similar::TextDiff::from_lines(old.as_ref(), new.as_ref())
            .unified_diff()
            .context_radius(1)
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string();
    }
    let mut out = format!("--- a/{name}\n+++ b/{name}\n");
    for (n, (a, b)) in old_lines.iter().zip(&new_lines).enumerate() {
        if a == b {
            continue;
        }
        let line = n + 1;
        if a.chars().count() <= WHOLE_LINE && b.chars().count() <= WHOLE_LINE {
            let _ = write!(out, "@@ line {line} @@\n-{a}\n+{b}\n");
            continue;
        }
        match changed_tokens(a, b) {
            Some(changes) => {
                for c in changes {
                    let _ = write!(
                        out,
                        "@@ line {line}, column {} @@\n-{}\n+{}\n",
                        c.column, c.old, c.new
                    );
                }
            }
            None => {
                let _ = write!(out, "@@ line {line} @@\n-{a}\n+{b}\n");
            }
        }
    }
    out
}

/// One changed stretch of a long line, with its context.
struct Change {
    /// 1-based, in characters, where the old stretch starts.
    column: usize,
    old: String,
    new: String,
}

/// What separates links from their surroundings in HTML, Markdown and YAML.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '(' | ')' | '<' | '>' | ',' | '[' | ']')
}

/// Splits a line into alternating runs of delimiters and of other characters.
fn tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut kind = None;
    for (i, c) in line.char_indices() {
        let k = is_delimiter(c);
        if kind.is_some_and(|prev| prev != k) {
            out.push(&line[start..i]);
            start = i;
        }
        kind = Some(k);
    }
    if start < line.len() {
        out.push(&line[start..]);
    }
    out
}

/// The changed tokens of a line pair with their context, merged when their contexts touch.
/// `None` when the two lines do not split into the same number of tokens (then the caller shows
/// them whole).
fn changed_tokens(a: &str, b: &str) -> Option<Vec<Change>> {
    let (ta, tb) = (tokens(a), tokens(b));
    if ta.len() != tb.len() {
        return None;
    }
    // Groups of changed token indices whose context windows overlap.
    let changed: Vec<usize> = (0..ta.len()).filter(|&i| ta[i] != tb[i]).collect();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        match groups.last_mut() {
            Some((_, end)) if chars_between(&ta, *end, i) <= 2 * CONTEXT => *end = i,
            _ => groups.push((i, i)),
        }
    }
    let mut out = Vec::new();
    for (first, last) in groups {
        let column = ta[..first].iter().map(|t| t.chars().count()).sum::<usize>() + 1;
        let before = tail(&ta[..first].concat(), CONTEXT);
        let after = head(&ta[last + 1..].concat(), CONTEXT);
        out.push(Change {
            column,
            old: format!("{before}{}{after}", ta[first..=last].concat()),
            new: format!("{before}{}{after}", tb[first..=last].concat()),
        });
    }
    Some(out)
}

/// Characters in the tokens strictly between indices `a` and `b`.
fn chars_between(tokens: &[&str], a: usize, b: usize) -> usize {
    tokens[a + 1..b].iter().map(|t| t.chars().count()).sum()
}

/// The last `n` characters of `s`, with `…` when cut.
fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    format!("…{}", s.chars().skip(count - n).collect::<String>())
}

/// The first `n` characters of `s`, with `…` when cut.
fn head(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    format!("{}…", s.chars().take(n).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_whole_long_lines_by_link() {
        let filler = "x".repeat(300);
        let old = format!(
            "title: t\nheadimg: 'https://p.test/?http://a.test/1.jpg'\n<p>{filler}<img src=\"https://p.test/?http://a.test/2.jpg\"> mid <img data-original=\"http://a.test/3.jpg\">{filler}</p>\n"
        );
        let new = format!(
            "title: t\nheadimg: '/i/orig/http/a.test/1.jpg'\n<p>{filler}<img src=\"/i/orig/http/a.test/2.jpg\"> mid <img data-original=\"/i/orig/http/a.test/3.jpg\">{filler}</p>\n"
        );
        let d = review_diff(Path::new("p.md"), old.as_bytes(), new.as_bytes());
        let want_head = "--- a/p.md\n+++ b/p.md\n@@ line 2 @@\n-headimg: 'https://p.test/?http://a.test/1.jpg'\n+headimg: '/i/orig/http/a.test/1.jpg'\n";
        assert!(d.starts_with(want_head), "{d}");
        // The two links of line 3 are close: one pair, both links whole, 40 characters of
        // context either side. The first link starts after `<p>`, 300 x and `<img src="`.
        assert!(d.contains("@@ line 3, column 314 @@\n"), "{d}");
        let (before, after) = (
            format!("…{}<img src=\"", "x".repeat(30)),
            format!("\">{}…", "x".repeat(38)),
        );
        let old_pair = format!(
            "-{before}https://p.test/?http://a.test/2.jpg\"> mid <img data-original=\"http://a.test/3.jpg{after}\n"
        );
        let new_pair = format!(
            "+{before}/i/orig/http/a.test/2.jpg\"> mid <img data-original=\"/i/orig/http/a.test/3.jpg{after}\n"
        );
        assert!(d.contains(&old_pair), "{d}");
        assert!(d.contains(&new_pair), "{d}");
        assert!(d.lines().all(|l| l.chars().count() < 200), "{d}");
    }

    #[test]
    fn far_apart_links_get_a_pair_each_and_unicode_is_counted_in_characters() {
        let gap = "中".repeat(500);
        let old =
            format!("<img src=\"http://a.test/1.jpg\">{gap}<img src=\"http://a.test/2.jpg\">");
        let new = format!("<img src=\"/i/1.jpg\">{gap}<img src=\"/i/2.jpg\">");
        let d = review_diff(Path::new("p.md"), old.as_bytes(), new.as_bytes());
        assert_eq!(d.matches("@@ line 1, column").count(), 2, "{d}");
        assert!(
            d.contains("@@ line 1, column 11 @@\n-<img src=\"http://a.test/1.jpg\">"),
            "{d}"
        );
        // 31 characters of the first tag, 500 of 中, then `<img src="`.
        assert!(d.contains("@@ line 1, column 542 @@\n"), "{d}");
    }

    #[test]
    fn changed_line_count_falls_back_to_a_unified_diff() {
        let d = review_diff(Path::new("p.md"), b"a\nb\n", b"a\nb\nc\n");
        assert!(d.contains("+c"), "{d}");
        assert!(d.starts_with("--- a/p.md\n+++ b/p.md\n@@ "), "{d}");
    }
}
