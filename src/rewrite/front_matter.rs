//! The YAML front matter of a post, on raw bytes: where it is, the values of the image keys
//! (`headimg:`, `thumbnail:`, lists of them) with their quoting, and how a new value is written
//! in the same quoting. Every result is a byte span into the original document.

use std::ops::Range;

use super::html::find_ci;
use super::markdown::{indent, line_at, trim_end};

/// Quoting of a YAML scalar, which decides how a new value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YamlStyle {
    /// Unquoted.
    Plain,
    /// In single quotes.
    Single,
    /// In double quotes.
    Double,
}

/// One image value in the front matter.
#[derive(Debug)]
pub struct YamlValue {
    /// Span of the scalar's content (inside the quotes, if any).
    pub span: Range<usize>,
    /// The value with YAML escapes undone.
    pub value: String,
    /// Its quoting, kept when it is replaced.
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
}
