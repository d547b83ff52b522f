//! Image formats and transformations. For originals this module only identifies what the bytes
//! are (never trusting the upstream's Content-Type); resizing and re-encoding live here too.

/// An image format recognised from its leading bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Jpeg,
    Png,
    Gif,
    Webp,
    Avif,
    Heic,
    Bmp,
    Ico,
    Tiff,
    Svg,
}

impl Sniffed {
    /// The Content-Type served for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Sniffed::Jpeg => "image/jpeg",
            Sniffed::Png => "image/png",
            Sniffed::Gif => "image/gif",
            Sniffed::Webp => "image/webp",
            Sniffed::Avif => "image/avif",
            Sniffed::Heic => "image/heic",
            Sniffed::Bmp => "image/bmp",
            Sniffed::Ico => "image/x-icon",
            Sniffed::Tiff => "image/tiff",
            Sniffed::Svg => "image/svg+xml",
        }
    }
}

/// How far into a text file to look for an `<svg` root element.
const SVG_SNIFF_LEN: usize = 4096;

/// Identifies an image from its bytes; `None` for anything else (an HTML error page named `.jpg`).
pub fn sniff(b: &[u8]) -> Option<Sniffed> {
    let starts = |m: &[u8]| b.starts_with(m);
    if starts(b"\xFF\xD8\xFF") {
        return Some(Sniffed::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Some(Sniffed::Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Some(Sniffed::Gif);
    }
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return Some(Sniffed::Webp);
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return match &b[8..12] {
            b"avif" | b"avis" => Some(Sniffed::Avif),
            b"heic" | b"heix" | b"mif1" | b"msf1" => Some(Sniffed::Heic),
            _ => None,
        };
    }
    if starts(b"BM") && b.len() >= 26 {
        return Some(Sniffed::Bmp);
    }
    if starts(b"\x00\x00\x01\x00") && b.len() >= 22 {
        return Some(Sniffed::Ico);
    }
    if starts(b"II*\x00") || starts(b"MM\x00*") {
        return Some(Sniffed::Tiff);
    }
    is_svg(b).then_some(Sniffed::Svg)
}

/// True when the text starts (after a BOM, whitespace, an XML declaration, comments and a doctype)
/// with an `<svg` element.
fn is_svg(b: &[u8]) -> bool {
    let mut s = &b[..b.len().min(SVG_SNIFF_LEN)];
    s = s.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(s);
    loop {
        let n = s.iter().take_while(|c| c.is_ascii_whitespace()).count();
        s = &s[n..];
        let skip_to = |s: &[u8], end: &[u8]| -> Option<usize> {
            s.windows(end.len())
                .position(|w| w == end)
                .map(|p| p + end.len())
        };
        let next = if s.starts_with(b"<?") {
            skip_to(s, b"?>")
        } else if s.starts_with(b"<!--") {
            skip_to(s, b"-->")
        } else if s.len() >= 9 && s[..9].eq_ignore_ascii_case(b"<!doctype") {
            skip_to(s, b">")
        } else {
            return s.len() >= 5
                && s[..4].eq_ignore_ascii_case(b"<svg")
                && (s[4].is_ascii_whitespace() || s[4] == b'>' || s[4] == b'/');
        };
        match next {
            Some(n) => s = &s[n..],
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Sniffed::Jpeg));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Sniffed::Webp));
        assert_eq!(sniff(b"\0\0\0\x1cftypavif"), Some(Sniffed::Avif));
        assert_eq!(
            sniff(b"\xEF\xBB\xBF<?xml version='1.0'?>\n<!-- c --><!DOCTYPE svg><svg xmlns='x'/>"),
            Some(Sniffed::Svg)
        );
        assert_eq!(
            sniff(b"<!DOCTYPE html><html><body>Not found</body></html>"),
            None
        );
        assert_eq!(sniff(b""), None);
    }
}
