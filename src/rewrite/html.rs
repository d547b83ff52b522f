//! HTML and CSS scanning on raw bytes, with exact byte spans: start tags and their attributes,
//! character references (decoded with a map back to raw offsets), `srcset` candidate lists (the
//! WHATWG algorithm) and CSS `url(...)` values. Nothing here decides what to rewrite.

use std::ops::Range;

/// A start tag: where it is, its lower-cased name, and its attributes.
#[derive(Debug)]
pub struct Tag {
    /// From `<` to just after `>`.
    pub span: Range<usize>,
    /// The element's name, lower case.
    pub name: String,
    /// Its attributes, in order.
    pub attrs: Vec<Attr>,
}

/// One attribute of a start tag.
#[derive(Debug)]
pub struct Attr {
    /// Lower-cased name.
    pub name: String,
    /// Raw value span (inside the quotes, if any); `None` for a valueless attribute.
    pub value: Option<Range<usize>>,
    /// The quote character around the value, if any.
    pub quote: Option<u8>,
}

/// Parses the start tag at `doc[at]` (which must be `<` followed by an ASCII letter). `None` when
/// it is not a well-formed start tag (unterminated quote, no `>`).
pub fn parse_tag(doc: &[u8], at: usize) -> Option<Tag> {
    let mut i = at + 1;
    if !doc.get(i)?.is_ascii_alphabetic() {
        return None;
    }
    let name_start = i;
    while i < doc.len() && (doc[i].is_ascii_alphanumeric() || doc[i] == b'-') {
        i += 1;
    }
    // `<https://x>` (a Markdown autolink) or `<a.b>` is no tag.
    if !(is_space(*doc.get(i)?) || doc[i] == b'/' || doc[i] == b'>') {
        return None;
    }
    let name = String::from_utf8_lossy(&doc[name_start..i]).to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < doc.len() && (is_space(doc[i]) || doc[i] == b'/') {
            i += 1;
        }
        match doc.get(i)? {
            b'>' => {
                return Some(Tag {
                    span: at..i + 1,
                    name,
                    attrs,
                })
            }
            b'<' => return None, // a stray `<` inside a tag: not a tag we can trust
            _ => {}
        }
        let an_start = i;
        i += 1; // the first character may be `=`
        while i < doc.len() && !is_space(doc[i]) && !matches!(doc[i], b'/' | b'>' | b'=') {
            i += 1;
        }
        let attr_name = String::from_utf8_lossy(&doc[an_start..i]).to_ascii_lowercase();
        let mut j = i;
        while j < doc.len() && is_space(doc[j]) {
            j += 1;
        }
        if doc.get(j) != Some(&b'=') {
            attrs.push(Attr {
                name: attr_name,
                value: None,
                quote: None,
            });
            continue;
        }
        j += 1;
        while j < doc.len() && is_space(doc[j]) {
            j += 1;
        }
        match doc.get(j)? {
            &q @ (b'"' | b'\'') => {
                let close = doc[j + 1..].iter().position(|&b| b == q)? + j + 1;
                attrs.push(Attr {
                    name: attr_name,
                    value: Some(j + 1..close),
                    quote: Some(q),
                });
                i = close + 1;
            }
            _ => {
                let vs = j;
                while j < doc.len() && !is_space(doc[j]) && doc[j] != b'>' {
                    j += 1;
                }
                attrs.push(Attr {
                    name: attr_name,
                    value: Some(vs..j),
                    quote: None,
                });
                i = j;
            }
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Text with character references decoded, and for every decoded byte the raw span it came from.
pub struct Decoded {
    /// The decoded value.
    pub text: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Decoded {
    /// The raw span (relative to the decoded input) of decoded bytes `r`.
    pub fn raw_range(&self, r: Range<usize>) -> Range<usize> {
        if r.is_empty() {
            let at = self
                .spans
                .get(r.start)
                .map_or_else(|| self.spans.last().map_or(0, |s| s.1), |s| s.0);
            return at..at;
        }
        self.spans[r.start].0..self.spans[r.end - 1].1
    }
}

/// Decodes `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&nbsp;` and numeric references (`&#38;`,
/// `&#x26;`), each with its `;`. Anything else is kept as it is.
pub fn decode_entities(raw: &[u8]) -> Decoded {
    let mut text = Vec::with_capacity(raw.len());
    let mut spans = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'&' {
            if let Some((ch, len)) = entity_at(&raw[i..]) {
                let mut buf = [0u8; 4];
                for &b in ch.encode_utf8(&mut buf).as_bytes() {
                    text.push(b);
                    spans.push((i, i + len));
                }
                i += len;
                continue;
            }
        }
        text.push(raw[i]);
        spans.push((i, i + 1));
        i += 1;
    }
    Decoded { text, spans }
}

/// The character a reference at the start of `s` stands for, and the reference's length.
fn entity_at(s: &[u8]) -> Option<(char, usize)> {
    let semi = s.iter().take(12).position(|&b| b == b';')?;
    let body = std::str::from_utf8(&s[1..semi]).ok()?;
    let ch = if let Some(num) = body.strip_prefix('#') {
        // Digits only: `from_str_radix` and `parse` would also take a sign (`&#x+26;`).
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u32::from_str_radix(hex, 16).ok()?
            }
            None if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) => {
                num.parse().ok()?
            }
            _ => return None,
        };
        char::from_u32(code).filter(|&c| c != '\0')?
    } else {
        match body {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            "nbsp" => '\u{a0}',
            _ => return None,
        }
    };
    Some((ch, semi + 1))
}

/// Escapes a new attribute value for its quoting: `&` always, and the quote character in use.
pub fn escape_attr(value: &str, quote: Option<u8>) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' if quote != Some(b'\'') => out.push_str("&quot;"),
            '\'' if quote == Some(b'\'') => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The URL spans of a `srcset` value, following the WHATWG "parse a srcset attribute" algorithm:
/// URLs may contain commas; a URL ending in commas loses them; descriptors run to the next comma
/// outside parentheses.
pub fn srcset_urls(v: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < v.len() && (is_space(v[i]) || v[i] == b',') {
            i += 1;
        }
        if i >= v.len() {
            return out;
        }
        let start = i;
        while i < v.len() && !is_space(v[i]) {
            i += 1;
        }
        let mut end = i;
        if v[end - 1] == b',' {
            while end > start && v[end - 1] == b',' {
                end -= 1;
            }
        } else {
            // Descriptors: up to a comma outside parentheses.
            let mut depth = 0usize;
            while i < v.len() {
                match v[i] {
                    b'(' => depth += 1,
                    b')' => depth = depth.saturating_sub(1),
                    b',' if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
        }
        if end > start {
            out.push(start..end);
        }
    }
}

/// The spans of the URLs inside every `url(...)` of a CSS text (quotes excluded).
pub fn css_urls(css: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = find_ci(&css[i..], b"url(") {
        let mut j = i + p + 4;
        // `url(` must not be the tail of an identifier such as `myurl(`.
        let boundary =
            i + p == 0 || !(css[i + p - 1].is_ascii_alphanumeric() || css[i + p - 1] == b'-');
        while j < css.len() && is_space(css[j]) {
            j += 1;
        }
        let Some(&first) = css.get(j) else { break };
        let span = if first == b'"' || first == b'\'' {
            css[j + 1..]
                .iter()
                .position(|&b| b == first || b == b'\n')
                .filter(|&n| css[j + 1 + n] == first)
                .map(|n| j + 1..j + 1 + n)
        } else {
            css[j..]
                .iter()
                .position(|&b| b == b')' || is_space(b) || b == b'"' || b == b'\'')
                .filter(|&n| css[j + n] == b')' || is_space(css[j + n]))
                .map(|n| j..j + n)
        };
        match span {
            Some(s) => {
                i = s.end;
                if boundary && !s.is_empty() {
                    out.push(s);
                }
            }
            None => i = j,
        }
    }
    out
}

/// Case-insensitive search for an ASCII needle.
pub fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(doc: &[u8], r: &Range<usize>) -> String {
        String::from_utf8_lossy(&doc[r.clone()]).into_owned()
    }

    #[test]
    fn tags_with_odd_syntax() {
        let doc = b"<IMG  SRC = 'a.jpg'\n data-x=b.png onclick alt=\"x > y\" >";
        let t = parse_tag(doc, 0).unwrap();
        assert_eq!(t.name, "img");
        assert_eq!(t.span.end, doc.len());
        let names: Vec<_> = t.attrs.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["src", "data-x", "onclick", "alt"]);
        assert_eq!(s(doc, t.attrs[0].value.as_ref().unwrap()), "a.jpg");
        assert_eq!(s(doc, t.attrs[1].value.as_ref().unwrap()), "b.png");
        assert!(t.attrs[2].value.is_none());
        assert_eq!(s(doc, t.attrs[3].value.as_ref().unwrap()), "x > y");
        assert!(parse_tag(b"<img src='a", 0).is_none());
    }

    #[test]
    fn entities_map_back() {
        let raw = b"a.jpg?x=1&amp;y=&#50;&unknown;";
        let d = decode_entities(raw);
        assert_eq!(d.text, b"a.jpg?x=1&y=2&unknown;");
        assert_eq!(d.raw_range(0..d.text.len()), 0..raw.len());
        assert_eq!(d.raw_range(9..10), 9..14);
        // A sign is no digit: these stay as written.
        for odd in ["&#x+26;", "&#+38;", "&#-38;", "&#x;", "&#;"] {
            assert_eq!(
                decode_entities(odd.as_bytes()).text,
                odd.as_bytes(),
                "{odd}"
            );
        }
        assert_eq!(decode_entities(b"&#x26;&#38;").text, b"&&");
    }

    #[test]
    fn srcset_per_spec() {
        let v =
            b"/cdn-cgi/image/fit=contain,width=320/a.jpg 320w, b.jpg 2x,c.jpg,, d.jpg (x, y) 1x";
        let urls: Vec<_> = srcset_urls(v).iter().map(|r| s(v, r)).collect();
        assert_eq!(
            urls,
            [
                "/cdn-cgi/image/fit=contain,width=320/a.jpg",
                "b.jpg",
                "c.jpg",
                "d.jpg"
            ]
        );
    }

    #[test]
    fn css_url_forms() {
        let css = b"a{background:url(\"x.jpg\")} b{background-image: url( 'y.png' )} c{b:URL(z.gif)} d{e:myurl(q)}";
        let urls: Vec<_> = css_urls(css).iter().map(|r| s(css, r)).collect();
        assert_eq!(urls, ["x.jpg", "y.png", "z.gif"]);
    }
}
