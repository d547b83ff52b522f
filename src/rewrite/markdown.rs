//! Markdown-level structure on raw bytes: the regions where nothing may be rewritten (code,
//! comments, scripts), Markdown link destinations, reference definitions and bare URLs (the YAML
//! front matter is [`super::front_matter`]'s). Every result is a byte span into the original
//! document.

use std::ops::Range;

use super::Mask;

use super::html::find_ci;

/// The line starting at `pos` (without `\n` and a trailing `\r`) and the start of the next line
/// (the document's length for its last line, which may lack a `\n`).
pub(super) fn line_at(doc: &[u8], pos: usize) -> (&[u8], usize) {
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

pub(super) fn trim_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &s[..n]
}

pub(super) fn indent(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| b == b' ' || b == b'\t').count()
}

/// Marks the regions of the body (from `body_start`) where nothing is rewritten: fenced and
/// indented code, inline code spans, `<pre>`, `<code>`, `<script>` elements and HTML comments.
/// Also returns the spans of reference-definition destinations (`[id]: url`).
pub fn protect(doc: &[u8], body_start: usize, mask: &mut [Mask]) -> Vec<Range<usize>> {
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
            mask[pos..close].fill(Mask::Protected);
            pos = close;
            prev_blank = true;
            prev_indented_code = false;
            continue;
        } else if !blank
            && (line.starts_with(b"    ") || line.starts_with(b"\t"))
            && (prev_blank || prev_indented_code)
        {
            mask[pos..pos + line.len()].fill(Mask::Protected);
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
fn code_spans(doc: &[u8], start: usize, end: usize, mask: &mut [Mask]) {
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
                mask[i..c].fill(Mask::Protected);
                i = c;
            }
            None => i += n,
        }
    }
}

/// Marks `<script>` elements and `<!-- -->` comments as [`Mask::Protected`], and `<pre>` and
/// `<code>` elements as [`Mask::CodeText`] (each to the document's end when unclosed). Other tags
/// are skipped whole, so what looks like an element inside an attribute value is none.
fn protect_elements(doc: &[u8], from: usize, mask: &mut [Mask]) {
    let mut i = from;
    while i < doc.len() {
        if doc[i] != b'<' || mask[i] == Mask::Protected {
            i += 1;
            continue;
        }
        let rest = &doc[i..];
        let (end, kind) = if rest.starts_with(b"<!--") {
            let end = find_ci(&rest[4..], b"-->").map_or(doc.len(), |p| i + 4 + p + 3);
            (end, Mask::Protected)
        } else if let Some(name) = ["pre", "code", "script"]
            .into_iter()
            .find(|n| starts_tag(rest, n.as_bytes()))
        {
            let kind = if name == "script" {
                Mask::Protected
            } else {
                Mask::CodeText
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
            // Any other start tag is passed whole, as the HTML step and a browser read it: a
            // `<pre` inside its unquoted attribute value (`<img src=a.jpg<pre>`) is part of the
            // value, not an element (else the rewrite of that value changes what is code). A
            // "tag" that runs into code (a span or fence already marked) is none, as the HTML
            // step also refuses it: what follows its `<` is scanned as usual.
            i = super::html::parse_tag(doc, i)
                .filter(|tag| !mask[tag.span.clone()].contains(&Mask::Protected))
                .map_or(i + 1, |tag| tag.span.end.max(i + 1));
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

/// A whole inline image, `![alt](destination "title")`: spans in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineImage {
    /// From `!` to just after `)`.
    pub whole: Range<usize>,
    /// The alt text (raw Markdown inline text).
    pub alt: Range<usize>,
    /// The destination.
    pub destination: Range<usize>,
    /// The title, inside its quotes or parentheses.
    pub title: Option<Range<usize>>,
}

/// The whole inline image whose `](` is at `at`; `None` for a link, or when the image does not
/// end where CommonMark ends it (a destination, an optional title, then `)`).
pub fn inline_image(doc: &[u8], at: usize) -> Option<InlineImage> {
    let (destination, true) = inline_destination(doc, at)? else {
        return None;
    };
    let open = link_text_open(doc, at)?;
    let mut i = destination.end;
    if doc.get(i) == Some(&b'>') {
        i += 1; // the `<...>` form
    }
    let skip = |mut i: usize| {
        while doc
            .get(i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            i += 1;
        }
        i
    };
    i = skip(i);
    let mut title = None;
    if let Some(&q) = doc.get(i).filter(|b| matches!(b, b'"' | b'\'' | b'(')) {
        let close = if q == b'(' { b')' } else { q };
        let start = i + 1;
        let len = doc.get(start..)?.iter().position(|&b| b == close)?;
        title = Some(start..start + len);
        i = skip(start + len + 1);
    }
    (doc.get(i) == Some(&b')')).then(|| InlineImage {
        whole: open - 1..i + 1,
        alt: open + 1..at,
        destination,
        title,
    })
}

/// The `[` that opens the link text whose `](` is at `at` (nested brackets counted, escaped
/// ones skipped, not past a blank line or 4 KiB).
fn link_text_open(doc: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut k = at;
    loop {
        if k == 0 {
            return None;
        }
        k -= 1;
        match doc[k] {
            b']' if k == 0 || doc[k - 1] != b'\\' => depth += 1,
            b'[' if k == 0 || doc[k - 1] != b'\\' => {
                if depth == 0 {
                    return Some(k);
                }
                depth -= 1;
            }
            b'\n' if k > 0 && doc[k - 1] == b'\n' => return None, // paragraphs end at blank lines
            _ => {}
        }
        if at - k > 4096 {
            return None;
        }
    }
}

/// The destination of an inline link or image whose `](` is at `at`: (span, is it an image).
pub fn inline_destination(doc: &[u8], at: usize) -> Option<(Range<usize>, bool)> {
    // Find the `[` that opens this link text, to see whether `!` precedes it.
    let open = link_text_open(doc, at)?;
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

    #[test]
    fn protected_regions() {
        let doc = b"a `http://x/1.jpg` b\n\n```\nhttp://x/2.jpg\n```\n\n    http://x/3.jpg\n\n<pre>http://x/4.jpg</pre> <!-- http://x/5.jpg --> http://x/6.jpg\n";
        let mut mask = vec![Mask::Free; doc.len()];
        protect(doc, 0, &mut mask);
        for n in 1..=5 {
            let needle = format!("x/{n}.jpg");
            let p = find_ci(doc, needle.as_bytes()).unwrap();
            let want = if n == 4 {
                Mask::CodeText
            } else {
                Mask::Protected
            };
            assert_eq!(mask[p], want, "{n}");
        }
        let p = find_ci(doc, b"x/6.jpg").unwrap();
        assert_eq!(mask[p], Mask::Free);
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
