//! Markdown-level structure on raw bytes: the YAML front matter and its image values, the regions
//! where nothing may be rewritten (code, comments, scripts), Markdown link destinations, reference
//! definitions and bare URLs. Every result is a byte span into the original document.

use std::ops::Range;

use super::html::find_ci;

/// Quoting of a YAML scalar, which decides how a new value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YamlStyle {
    Plain,
    Single,
    Double,
}

/// One image value in the front matter.
#[derive(Debug)]
pub struct YamlValue {
    /// Span of the scalar's content (inside the quotes, if any).
    pub span: Range<usize>,
    /// The value with YAML escapes undone.
    pub value: String,
    pub style: YamlStyle,
}

/// Where the front matter sits: the byte span of its content (between the fences) and where the
/// body starts. A file may start with a BOM and blank lines before `---`.
pub fn front_matter(doc: &[u8]) -> Option<(Range<usize>, usize)> {
    let mut pos = if doc.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    loop {
        let (line, next) = line_at(doc, pos);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            if next >= doc.len() {
                return None;
            }
            pos = next;
            continue;
        }
        if trim_end(line) != b"---" {
            return None;
        }
        pos = next;
        break;
    }
    let content_start = pos;
    while pos < doc.len() {
        let (line, next) = line_at(doc, pos);
        let t = trim_end(line);
        if t == b"---" || t == b"..." {
            return Some((content_start..pos, next));
        }
        pos = next;
    }
    None
}

/// The line starting at `pos` (without `\n` and a trailing `\r`) and the start of the next line
/// (the document's length for its last line, which may lack a `\n`).
fn line_at(doc: &[u8], pos: usize) -> (&[u8], usize) {
    let end = doc[pos..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(doc.len(), |n| pos + n);
    let mut line = &doc[pos..end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    (line, (end + 1).min(doc.len()))
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &s[..n]
}

fn indent(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| b == b' ' || b == b'\t').count()
}

/// The values of `keys` in the front matter `fm`: scalars in any quoting, block lists (`- url`) and
/// flow lists (`[a, 'b']`). Nested mappings are not followed.
pub fn front_matter_values(doc: &[u8], fm: Range<usize>, keys: &[String]) -> Vec<YamlValue> {
    let mut out = Vec::new();
    let mut pos = fm.start;
    // Indentation of the image key whose block list we are reading, if any.
    let mut list_of: Option<usize> = None;
    while pos < fm.end {
        let (line, next) = line_at(doc, pos);
        let ind = indent(line);
        let body = &line[ind..];
        if let Some(key_ind) = list_of {
            if body.starts_with(b"- ") || body == b"-" {
                if ind >= key_ind {
                    let vs = pos + ind + 1;
                    let ws = doc[vs..pos + line.len()]
                        .iter()
                        .take_while(|&&b| b == b' ' || b == b'\t')
                        .count();
                    out.extend(scalar(doc, vs + ws, pos + line.len()));
                    pos = next;
                    continue;
                }
            } else if body.is_empty() || body.starts_with(b"#") {
                pos = next;
                continue;
            }
            list_of = None;
        }
        if let Some(colon) = key_colon(body) {
            let key = &body[..colon];
            let is_image_key = keys.iter().any(|k| k.as_bytes() == key);
            if is_image_key {
                let after = pos + ind + colon + 1;
                let line_end = pos + line.len();
                let ws = doc[after..line_end]
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                let vs = after + ws;
                if vs >= line_end || doc[vs] == b'#' {
                    list_of = Some(ind);
                } else if doc[vs] == b'[' {
                    out.extend(flow_list(doc, vs + 1, line_end));
                } else {
                    out.extend(scalar(doc, vs, line_end));
                }
            }
        }
        pos = next;
    }
    out
}

/// Position of the `:` ending a simple `key:` at the start of `body` (key of letters, digits, `_`, `-`).
fn key_colon(body: &[u8]) -> Option<usize> {
    let n = body
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
        .count();
    (n > 0
        && body.get(n) == Some(&b':')
        && body.get(n + 1).is_none_or(|b| *b == b' ' || *b == b'\t'))
    .then_some(n)
}

/// A scalar starting at `vs` and ending by `end` (the end of its line or flow item).
fn scalar(doc: &[u8], vs: usize, end: usize) -> Option<YamlValue> {
    match doc.get(vs)? {
        b'\'' => {
            let mut i = vs + 1;
            let mut value = Vec::new();
            while i < end {
                if doc[i] == b'\'' {
                    if doc.get(i + 1) == Some(&b'\'') && i + 1 < end {
                        value.push(b'\'');
                        i += 2;
                        continue;
                    }
                    return Some(YamlValue {
                        span: vs + 1..i,
                        value: String::from_utf8(value).ok()?,
                        style: YamlStyle::Single,
                    });
                }
                value.push(doc[i]);
                i += 1;
            }
            None
        }
        b'"' => {
            let mut i = vs + 1;
            let mut value = Vec::new();
            while i < end {
                match doc[i] {
                    b'\\' if i + 1 < end => {
                        match doc[i + 1] {
                            b'"' | b'\\' | b'/' => value.push(doc[i + 1]),
                            _ => return None, // other escapes never hold URLs; leave alone
                        }
                        i += 2;
                    }
                    b'"' => {
                        return Some(YamlValue {
                            span: vs + 1..i,
                            value: String::from_utf8(value).ok()?,
                            style: YamlStyle::Double,
                        })
                    }
                    b => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
            None
        }
        _ => {
            // Plain: up to a ` #` comment or the end, trailing spaces excluded.
            let mut e = end;
            if let Some(p) = find_ci(&doc[vs..end], b" #") {
                e = vs + p;
            }
            let text = trim_end(&doc[vs..e]);
            let e = vs + text.len();
            Some(YamlValue {
                span: vs..e,
                value: String::from_utf8(text.to_vec()).ok()?,
                style: YamlStyle::Plain,
            })
        }
    }
}

/// Items of a flow list whose `[` was just before `start`.
fn flow_list(doc: &[u8], start: usize, end: usize) -> Vec<YamlValue> {
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        while i < end && matches!(doc[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        if i >= end || doc[i] == b']' {
            break;
        }
        let item_end = match doc[i] {
            b'\'' | b'"' => {
                let Some(v) = scalar(doc, i, end) else { break };
                let after = v.span.end + 1; // past the closing quote
                out.push(v);
                after
            }
            _ => {
                let e = doc[i..end]
                    .iter()
                    .position(|&b| b == b',' || b == b']')
                    .map_or(end, |n| i + n);
                out.extend(scalar(doc, i, e));
                e
            }
        };
        i = item_end;
    }
    out
}

/// How a YAML scalar is rewritten: the new content for the span, quoted as the old one was.
pub fn yaml_escape(value: &str, style: YamlStyle) -> String {
    match style {
        YamlStyle::Single => value.replace('\'', "''"),
        YamlStyle::Double => value.replace('\\', "\\\\").replace('"', "\\\""),
        YamlStyle::Plain => {
            let risky = value.contains(": ")
                || value.contains(" #")
                || value.contains(['[', ']', '{', '}', ','])
                || value.starts_with(['&', '*', '!', '|', '>', '\'', '"', '%', '@', '`', '-', '?']);
            if risky {
                // Quoting changes the span's surroundings, which is fine: the value stays valid YAML.
                format!("'{}'", value.replace('\'', "''"))
            } else {
                value.to_string()
            }
        }
    }
}

/// What a protected region is, for the report.
pub const PROTECTED: u8 = 1;

/// The inside of an HTML `<pre>` or `<code>` element: its text is code shown to the reader (a URL
/// there stays as it is), but a tag in it is a real element that the browser loads (an `<img>`
/// inside `<code>` is an image, not its source text), so tags there are rewritten.
pub const CODE_TEXT: u8 = 3;

/// Marks the regions of the body (from `body_start`) where nothing is rewritten: fenced and
/// indented code, inline code spans, `<pre>`, `<code>`, `<script>` elements and HTML comments.
/// Also returns the spans of reference-definition destinations (`[id]: url`).
pub fn protect(doc: &[u8], body_start: usize, mask: &mut [u8]) -> Vec<Range<usize>> {
    let mut refdefs = Vec::new();
    let mut pos = body_start;
    let mut in_html_block = false;
    let mut prev_blank = true;
    let mut prev_indented_code = false;
    while pos < doc.len() {
        let (line, next) = line_at(doc, pos);
        let blank = line.iter().all(|b| b.is_ascii_whitespace());
        let ind = indent(line);
        let body = &line[ind..];
        if in_html_block {
            in_html_block = !blank;
        } else if let Some(fence) = fence_open(line) {
            let close = find_fence_close(doc, next, fence);
            mask[pos..close].fill(PROTECTED);
            pos = close;
            prev_blank = true;
            prev_indented_code = false;
            continue;
        } else if !blank
            && (line.starts_with(b"    ") || line.starts_with(b"\t"))
            && (prev_blank || prev_indented_code)
        {
            mask[pos..pos + line.len()].fill(PROTECTED);
            prev_indented_code = true;
            prev_blank = false;
            pos = next;
            continue;
        } else if ind <= 3
            && body.first() == Some(&b'<')
            && body
                .get(1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'/' || *b == b'!')
        {
            in_html_block = true;
        } else if !blank {
            if ind <= 3 {
                if let Some(span) = refdef(body) {
                    refdefs.push(pos + ind + span.start..pos + ind + span.end);
                }
            }
            code_spans(doc, pos, pos + line.len(), mask);
        }
        prev_indented_code = prev_indented_code && blank;
        prev_blank = blank;
        pos = next;
    }
    protect_elements(doc, body_start, mask);
    refdefs
}

/// A fence opener: (fence char, length).
fn fence_open(line: &[u8]) -> Option<(u8, usize)> {
    let ind = indent(line);
    if ind > 3 {
        return None;
    }
    let rest = &line[ind..];
    let c = *rest.first()?;
    if c != b'`' && c != b'~' {
        return None;
    }
    let n = rest.iter().take_while(|&&b| b == c).count();
    if n < 3 || (c == b'`' && rest[n..].contains(&b'`')) {
        return None;
    }
    Some((c, n))
}

/// The end (start of the next line) of the closing fence, or the document's end.
fn find_fence_close(doc: &[u8], mut pos: usize, (c, n): (u8, usize)) -> usize {
    while pos < doc.len() {
        let (line, next) = line_at(doc, pos);
        let ind = indent(line);
        let rest = trim_end(&line[ind..]);
        if ind <= 3 && rest.len() >= n && rest.iter().all(|&b| b == c) {
            return next.min(doc.len());
        }
        pos = next;
    }
    doc.len()
}

/// Marks inline code spans (backtick runs closed by a run of the same length) on one line.
fn code_spans(doc: &[u8], start: usize, end: usize, mask: &mut [u8]) {
    let mut i = start;
    while i < end {
        if doc[i] != b'`' {
            i += 1;
            continue;
        }
        let n = doc[i..end].iter().take_while(|&&b| b == b'`').count();
        let mut j = i + n;
        let mut closed = None;
        while j < end {
            if doc[j] == b'`' {
                let m = doc[j..end].iter().take_while(|&&b| b == b'`').count();
                if m == n {
                    closed = Some(j + m);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match closed {
            Some(c) => {
                mask[i..c].fill(PROTECTED);
                i = c;
            }
            None => i += n,
        }
    }
}

/// Marks `<script>` elements and `<!-- -->` comments as [`PROTECTED`], and `<pre>` and `<code>`
/// elements as [`CODE_TEXT`] (each to the document's end when unclosed).
fn protect_elements(doc: &[u8], from: usize, mask: &mut [u8]) {
    let mut i = from;
    while i < doc.len() {
        if doc[i] != b'<' || mask[i] == PROTECTED {
            i += 1;
            continue;
        }
        let rest = &doc[i..];
        let (end, kind) = if rest.starts_with(b"<!--") {
            let end = find_ci(&rest[4..], b"-->").map_or(doc.len(), |p| i + 4 + p + 3);
            (end, PROTECTED)
        } else if let Some(name) = ["pre", "code", "script"]
            .into_iter()
            .find(|n| starts_tag(rest, n.as_bytes()))
        {
            let kind = if name == "script" {
                PROTECTED
            } else {
                CODE_TEXT
            };
            let close = format!("</{name}");
            let end = match find_ci(&rest[1..], close.as_bytes()) {
                Some(p) => {
                    let c = i + 1 + p;
                    doc[c..]
                        .iter()
                        .position(|&b| b == b'>')
                        .map_or(doc.len(), |q| c + q + 1)
                }
                None => doc.len(),
            };
            (end, kind)
        } else {
            i += 1;
            continue;
        };
        mask[i..end].fill(kind);
        i = end;
    }
}

/// True when `s` starts with `<name` followed by a tag boundary.
fn starts_tag(s: &[u8], name: &[u8]) -> bool {
    s.len() > name.len() + 1
        && s[1..=name.len()].eq_ignore_ascii_case(name)
        && matches!(
            s[name.len() + 1],
            b' ' | b'\t' | b'\n' | b'\r' | b'>' | b'/'
        )
}

/// The destination span (relative to `body`) of a reference definition `[id]: url "title"`.
fn refdef(body: &[u8]) -> Option<Range<usize>> {
    if body.first() != Some(&b'[') || body.get(1) == Some(&b'^') {
        return None;
    }
    let close = body.iter().position(|&b| b == b']')?;
    if close < 2 || body.get(close + 1) != Some(&b':') {
        return None;
    }
    let mut i = close + 2;
    while i < body.len() && (body[i] == b' ' || body[i] == b'\t') {
        i += 1;
    }
    if body.get(i) == Some(&b'<') {
        let e = body[i + 1..].iter().position(|&b| b == b'>')?;
        return Some(i + 1..i + 1 + e);
    }
    let e = body[i..]
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .map_or(body.len(), |n| i + n);
    (e > i).then_some(i..e)
}

/// The destination of an inline link or image whose `](` is at `at`: (span, is it an image).
pub fn inline_destination(doc: &[u8], at: usize) -> Option<(Range<usize>, bool)> {
    // Find the `[` that opens this link text, to see whether `!` precedes it.
    let mut depth = 0usize;
    let mut k = at;
    let open = loop {
        if k == 0 {
            return None;
        }
        k -= 1;
        match doc[k] {
            b']' if k == 0 || doc[k - 1] != b'\\' => depth += 1,
            b'[' if k == 0 || doc[k - 1] != b'\\' => {
                if depth == 0 {
                    break k;
                }
                depth -= 1;
            }
            b'\n' if k > 0 && doc[k - 1] == b'\n' => return None, // paragraphs end at blank lines
            _ => {}
        }
        if at - k > 4096 {
            return None;
        }
    };
    let is_image = open > 0 && doc[open - 1] == b'!';
    let mut i = at + 2;
    while i < doc.len() && (doc[i] == b' ' || doc[i] == b'\t') {
        i += 1;
    }
    if doc.get(i) == Some(&b'<') {
        let e = doc[i + 1..]
            .iter()
            .position(|&b| b == b'>' || b == b'\n')
            .map(|n| i + 1 + n)?;
        return (doc[e] == b'>').then_some((i + 1..e, is_image));
    }
    let start = i;
    let mut parens = 0usize;
    while i < doc.len() {
        match doc[i] {
            b'(' => parens += 1,
            b')' if parens == 0 => break,
            b')' => parens -= 1,
            b if b.is_ascii_whitespace() || b.is_ascii_control() => break,
            _ => {}
        }
        i += 1;
    }
    let end = i;
    while i < doc.len() && (doc[i] == b' ' || doc[i] == b'\t') {
        i += 1;
    }
    let follows = doc.get(i).copied();
    (end > start && matches!(follows, Some(b')' | b'"' | b'\'' | b'(' | b'\n' | b'\r')))
        .then_some((start..end, is_image))
}

/// Bytes a bare URL can hold: printable ASCII but for delimiters that end it in prose or markup.
fn is_bare_url_byte(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'"' | b'\''
                | b'<'
                | b'>'
                | b'('
                | b')'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'`'
                | b'\\'
                | b'|'
                | b'^'
        )
}

/// Bare `http://` / `https://` URLs in `doc[range]` that start at a boundary (so a URL inside
/// another URL is not one), with trailing sentence punctuation dropped.
pub fn bare_urls(doc: &[u8], range: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = range.start;
    while i < range.end {
        let hay = &doc[i..range.end];
        let Some(p) = find_ci(hay, b"http") else {
            break;
        };
        let s = i + p;
        let rest = &doc[s..range.end];
        let scheme_len = if rest.len() >= 7 && rest[..7].eq_ignore_ascii_case(b"http://") {
            7
        } else if rest.len() >= 8 && rest[..8].eq_ignore_ascii_case(b"https://") {
            8
        } else {
            i = s + 4;
            continue;
        };
        let at_boundary = s == 0 || !(is_bare_url_byte(doc[s - 1]));
        let mut e = s + scheme_len;
        while e < range.end && is_bare_url_byte(doc[e]) {
            e += 1;
        }
        if at_boundary {
            let mut end = e;
            while end > s + scheme_len
                && matches!(
                    doc[end - 1],
                    b'.' | b',' | b';' | b':' | b'!' | b'?' | b'*' | b'_' | b'~'
                )
            {
                end -= 1;
            }
            if end > s + scheme_len {
                out.push(s..end);
            }
        }
        i = e.max(s + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz` (rewrite_document): a closing `---` on the last line, with no
    /// newline after it, put the body start one past the end.
    #[test]
    fn front_matter_closing_on_the_last_line() {
        let doc = b"---\ntitle: x\n---";
        assert_eq!(front_matter(doc), Some((4..13, doc.len())));
        assert_eq!(front_matter(b"---\n---\r"), Some((4..4, 8)));
    }

    fn keys() -> Vec<String> {
        ["headimg", "thumbnail", "images", "photos"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn front_matter_after_blank_line_and_bom() {
        let doc = b"\xEF\xBB\xBF\n---\r\ntitle: x\r\n---\r\nbody\n---\n";
        let (fm, body) = front_matter(doc).unwrap();
        assert_eq!(&doc[fm], b"title: x\r\n");
        assert_eq!(&doc[body..], b"body\n---\n");
        assert!(front_matter(b"no front matter\n---\n").is_none());
    }

    #[test]
    fn yaml_values_in_every_quoting() {
        let doc = b"---\nheadimg: 'http://a/b''c.jpg'\nthumbnail: \"http://a/\\\"d.jpg\"\nimages: [http://a/1.jpg, 'http://a/2.jpg']\nphotos:\n  - http://a/3.jpg # c\n  - \"http://a/4.jpg\"\ntitle: 'http://a/no.jpg'\n---\n";
        let (fm, _) = front_matter(doc).unwrap();
        let vals: Vec<_> = front_matter_values(doc, fm, &keys())
            .into_iter()
            .map(|v| (v.value, v.style))
            .collect();
        assert_eq!(
            vals,
            [
                ("http://a/b'c.jpg".to_string(), YamlStyle::Single),
                ("http://a/\"d.jpg".to_string(), YamlStyle::Double),
                ("http://a/1.jpg".to_string(), YamlStyle::Plain),
                ("http://a/2.jpg".to_string(), YamlStyle::Single),
                ("http://a/3.jpg".to_string(), YamlStyle::Plain),
                ("http://a/4.jpg".to_string(), YamlStyle::Double),
            ]
        );
    }

    #[test]
    fn protected_regions() {
        let doc = b"a `http://x/1.jpg` b\n\n```\nhttp://x/2.jpg\n```\n\n    http://x/3.jpg\n\n<pre>http://x/4.jpg</pre> <!-- http://x/5.jpg --> http://x/6.jpg\n";
        let mut mask = vec![0u8; doc.len()];
        protect(doc, 0, &mut mask);
        for n in 1..=5 {
            let needle = format!("x/{n}.jpg");
            let p = find_ci(doc, needle.as_bytes()).unwrap();
            let want = if n == 4 { CODE_TEXT } else { PROTECTED };
            assert_eq!(mask[p], want, "{n}");
        }
        let p = find_ci(doc, b"x/6.jpg").unwrap();
        assert_eq!(mask[p], 0);
    }

    #[test]
    fn destinations() {
        let doc = b"[![a](http://x/img.jpg)](http://x/page) ![b](<http://x/a b.png> \"t\") ![c](http://x/a_(1).png)";
        let mut found = Vec::new();
        let mut i = 0;
        while let Some(p) = find_ci(&doc[i..], b"](") {
            if let Some((r, img)) = inline_destination(doc, i + p) {
                found.push((String::from_utf8_lossy(&doc[r]).into_owned(), img));
            }
            i += p + 2;
        }
        assert_eq!(
            found,
            [
                ("http://x/img.jpg".to_string(), true),
                ("http://x/page".to_string(), false),
                ("http://x/a b.png".to_string(), true),
                ("http://x/a_(1).png".to_string(), true),
            ]
        );
    }

    #[test]
    fn bare_url_boundaries() {
        let doc =
            "see http://x/a.jpg。 and (http://x/b.png), https://gimg.example/src=http://x/c.jpg."
                .as_bytes();
        let urls: Vec<_> = bare_urls(doc, 0..doc.len())
            .into_iter()
            .map(|r| String::from_utf8_lossy(&doc[r]).into_owned())
            .collect();
        assert_eq!(
            urls,
            [
                "http://x/a.jpg",
                "http://x/b.png",
                "https://gimg.example/src=http://x/c.jpg"
            ]
        );
    }
}
