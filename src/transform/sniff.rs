//! What bytes are, never trusting an upstream's Content-Type: the format sniffed from magic bytes,
//! whether a body is a whole image (its format's end structure), the header probe (dimensions
//! without decoding a pixel), and frame counts read from the file structure.

use std::io::Cursor;

use super::*;

/// An image format recognised from its leading bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// GIF.
    Gif,
    /// WebP.
    Webp,
    /// AVIF.
    Avif,
    /// HEIC (served as is, never transformed).
    Heic,
    /// BMP (served as is).
    Bmp,
    /// ICO (served as is).
    Ico,
    /// TIFF (served as is).
    Tiff,
    /// SVG (served as is, under a sandbox CSP).
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
pub(crate) const SVG_SNIFF_LEN: usize = 4096;

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
        // A generic HEIF brand (`mif1`, `msf1`) holds AVIF when a compatible brand says so.
        let size = usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
        let compatible = b.get(16..size.min(b.len())).unwrap_or_default();
        let lists_avif = compatible
            .chunks_exact(4)
            .any(|brand| brand == b"avif" || brand == b"avis");
        return match &b[8..12] {
            b"avif" | b"avis" => Some(Sniffed::Avif),
            b"mif1" | b"msf1" if lists_avif => Some(Sniffed::Avif),
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

/// True when the bytes hold a whole image of their format: its end structure is there (JPEG: an
/// end-of-image marker after the last start-of-scan; PNG: the `IEND` chunk, and the whole file
/// reads as a decoder reads it, `png_decodes`; GIF: the trailer after
/// the last image block; WebP: as many bytes as the RIFF header declares, in whole chunks; BMP: the declared file
/// size; SVG: a closing `</svg>`; AVIF and HEIC: top-level boxes that end where the bytes do). A
/// body cut short by a dropped connection or a lying `Content-Length` fails here and is never
/// mirrored. Formats without a cheap end check (ICO, TIFF) are accepted as sniffed.
///
/// These are structural checks, not decodes (a few comparisons near the end of the buffer, a
/// backwards scan for JPEG), except PNG's: its chunks carry checksums and its data one zlib
/// stream, both cheap to verify and the commonest ways a PNG is broken. Call it off the event
/// loop.
pub fn is_complete(b: &[u8], kind: Sniffed) -> bool {
    match kind {
        Sniffed::Jpeg => {
            // The last marker FF xx, found from the end over the 0xFF bytes alone (memrchr skips
            // the rest with SIMD: a 4000x3000 photo's 1.3 MB is scanned in a fraction of a ms).
            let last =
                |marker: u8| memchr::memrchr_iter(0xFF, b).find(|&i| b.get(i + 1) == Some(&marker));
            // Inside entropy-coded data 0xFF is always stuffed (FF 00) or a restart marker, so an
            // FF D9 after the last FF DA is the real end of the (main) image.
            matches!((last(0xDA), last(0xD9)), (Some(sos), Some(eoi)) if eoi > sos)
        }
        Sniffed::Png => {
            b.windows(12)
                .rev()
                .take(4096)
                .any(|w| w == b"\0\0\0\0IEND\xAE\x42\x60\x82")
                && png_decodes(b)
        }
        Sniffed::Gif => {
            // The trailer 0x3B ends the stream; tolerate trailing padding (NULs, whitespace).
            let end = b.iter().rposition(|c| *c != 0 && !c.is_ascii_whitespace());
            end.is_some_and(|i| b[i] == 0x3B && i > 13)
        }
        Sniffed::Webp => webp_chunks_whole(b),
        Sniffed::Bmp => {
            let declared = b
                .get(2..6)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
            // Some writers leave the size 0; then only the pixel data offset can be checked.
            declared.is_some_and(|n| n == 0 || n <= b.len())
        }
        Sniffed::Svg => {
            let tail = &b[b.len().saturating_sub(SVG_SNIFF_LEN)..];
            tail.windows(6).any(|w| w.eq_ignore_ascii_case(b"</svg>"))
        }
        Sniffed::Avif | Sniffed::Heic => isobmff_complete(b),
        Sniffed::Ico | Sniffed::Tiff => true,
    }
}

/// PNGs of up to this many pixels are read to their end at mirror time ([`image.max_pixels`]'s
/// default is 50 M): the check's cost is one inflate of the pixel data, so it is bounded here,
/// where a larger file (a 1 MB zlib stream may declare gigabytes) would let a hostile origin
/// spend seconds of CPU per URL. Measured (2026-12-06, a throwaway test in the dev profile, whose
/// `png` and inflate crates are optimised): a 198 KB PNG declaring 8000x4000 RGBA took 666 ms to
/// check, so 16 M pixels cost about a third of a second at worst.
///
/// [`image.max_pixels`]: crate::config::ImageConfig::max_pixels
const PNG_CHECKED_PIXELS: u64 = 16_000_000;

/// True when a PNG reads to its end as a decoder reads it (up to [`PNG_CHECKED_PIXELS`]): a
/// valid `IHDR` (possible colour type and bit depth, sizes not 0), every chunk's CRC right, image
/// data present, the default image's zlib stream whole (Adler-32 checked) and of the size the
/// header implies, then `IEND`. An APNG's later frames (`fdAT`) have their CRCs checked, not
/// their data inflated. The rows are decoded one at a time into one row's buffer, never the whole
/// image, so memory stays at a row and the zlib window whatever the pixel count; the time is one
/// inflate of the data, off the event loop as every completeness check. A PNG that fails here
/// would be served as an original that no browser shows and no resize decodes (issue #26).
fn png_decodes(b: &[u8]) -> bool {
    // IHDR's width and height (the signature, then its length and type, then the fields).
    let pixels = b.get(16..24).map(|d| {
        let side = |i: usize| u64::from(u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]));
        side(0) * side(4)
    });
    if pixels.is_some_and(|p| p > PNG_CHECKED_PIXELS) {
        // Too large to inflate at mirror time for nothing: `IEND` alone, as before; such a file
        // is refused by `image.max_pixels` before any resize decodes it.
        return true;
    }
    let mut decoder = png::Decoder::new(std::io::Cursor::new(b));
    decoder.ignore_checksums(false);
    decoder.set_transformations(png::Transformations::IDENTITY);
    let Ok(mut reader) = decoder.read_info() else {
        return false;
    };
    loop {
        match reader.next_row() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    reader.finish().is_ok()
}

/// True when a WebP's RIFF container is whole: the bytes hold the size RIFF declares, and the
/// chunks inside it, read by their sizes ([`webp_chunks`]), end where RIFF says (a last chunk's
/// padding byte may be missing), the first one an image (`VP8 `, `VP8L` or `VP8X`). A file cut
/// short, or one whose chunk sizes lie, fails; what a chunk's bitstream holds is the decoder's to
/// check.
fn webp_chunks_whole(b: &[u8]) -> bool {
    let declared = b
        .get(4..8)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
    let Some(end) = declared.and_then(|n| n.checked_add(8)) else {
        return false;
    };
    if end > b.len() || !matches!(b.get(12..16), Some(b"VP8 " | b"VP8L" | b"VP8X")) {
        return false;
    }
    let mut reached = 12;
    for c in webp_chunks(&b[..end]) {
        match c.start.checked_add(c.size) {
            Some(data_end) if data_end <= end => reached = (data_end + (c.size & 1)).min(end),
            _ => return false,
        }
    }
    reached == end
}

/// True when an ISO base media file (AVIF, HEIC) is whole: its top-level boxes, read by their
/// sizes alone, end at the end of the bytes (NUL padding and fewer than 8 stray bytes tolerated). A cut file's last box, usually
/// `mdat`, runs past it. A box of size 0 runs to the end by definition.
fn isobmff_complete(b: &[u8]) -> bool {
    let mut i = 0usize;
    while i < b.len() {
        // Padding, or a few stray bytes too short to be a box, after the last box.
        if b[i..].iter().all(|c| *c == 0) || b.len() - i < 8 {
            return i > 0;
        }
        let head = &b[i..i + 8];
        let size = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
            0 => return true,
            1 => match b.get(i + 8..i + 16).and_then(|l| l.try_into().ok()) {
                Some(large) if u64::from_be_bytes(large) >= 16 => u64::from_be_bytes(large),
                _ => return false,
            },
            n => u64::from(n),
        };
        match usize::try_from(size).ok().and_then(|s| i.checked_add(s)) {
            Some(end) if size >= 8 && end <= b.len() => i = end,
            _ => return false,
        }
    }
    i > 0
}

/// True when the text starts (after a BOM, whitespace, an XML declaration, comments and a doctype)
/// with an `<svg` element.
pub(crate) fn is_svg(b: &[u8]) -> bool {
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

/// The format and dimensions of an image, read from its header only (no pixel is decoded).
pub fn probe(bytes: &[u8]) -> Result<(Sniffed, u32, u32), TransformError> {
    let kind = sniff(bytes).ok_or(TransformError::NotImage)?;
    let (w, h) = match kind {
        Sniffed::Jpeg => {
            let header =
                turbojpeg::read_header(bytes).map_err(|e| TransformError::Decode(e.to_string()))?;
            (
                u32::try_from(header.width).unwrap_or(u32::MAX),
                u32::try_from(header.height).unwrap_or(u32::MAX),
            )
        }
        Sniffed::Png => {
            // IHDR only: going through `image` would read every chunk up to the pixel data and
            // inflate a compressed colour profile, whatever its size, just to learn two numbers.
            let mut decoder = png::Decoder::new(Cursor::new(bytes));
            let info = decoder
                .read_header_info()
                .map_err(|e| TransformError::Decode(e.to_string()))?;
            (info.width, info.height)
        }
        Sniffed::Gif | Sniffed::Webp => {
            let mut reader = image::ImageReader::new(Cursor::new(bytes));
            reader.set_format(image_format(kind));
            reader.no_limits(); // only the header is read here; limits apply when decoding
            reader
                .into_dimensions()
                .map_err(|e| TransformError::Decode(e.to_string()))?
        }
        Sniffed::Avif => avif_size(bytes)?,
        other => return Err(TransformError::Unsupported(other.content_type())),
    };
    Ok((kind, w, h))
}

/// An AVIF's size: the largest frame its primary item's AV1 sequence header allows, which is
/// what libaom allocates (a grid: its canvas). Its alpha item, decoded too, may not be larger. An
/// image sequence (`avis`) is read by its still image, the first frame, or, with no still, by
/// its tracks' first frames; one whose tracks cannot be read, and files of another major brand
/// (`mif1` listing `avif`), are not decoded (415).
fn avif_size(bytes: &[u8]) -> Result<(u32, u32), TransformError> {
    if let Some(g) = super::avif::grid(bytes) {
        return Ok((g.width, g.height));
    }
    if let Some(frames) = super::avif::first_frames(bytes) {
        let bad = || TransformError::Decode("AVIF sequence: no AV1 sequence header".into());
        let (w, h) = super::avif::frame_size(frames.colour).ok_or_else(bad)?;
        if let Some(alpha) = frames.alpha {
            let (aw, ah) = super::avif::frame_size(alpha).ok_or_else(bad)?;
            if aw > w || ah > h {
                return Err(TransformError::Decode(format!(
                    "AVIF: the alpha image ({aw}x{ah}) is larger than the image ({w}x{h})"
                )));
            }
        }
        return Ok((w, h));
    }
    let Some(bytes) = super::avif::as_still(bytes) else {
        return Err(TransformError::Unsupported(match bytes.get(8..12) {
            Some(b"avis") => "AVIF sequence whose tracks cannot be read",
            // avif-parse reads files whose major brand is `avif` only.
            _ => "AVIF (major brand not avif)",
        }));
    };
    let err = |e: aom_decode::avif::AvifParseError| TransformError::Decode(format!("AVIF: {e}"));
    let avif = aom_decode::avif::Avif::parse_avif(&bytes)
        .map_err(|e| TransformError::Decode(format!("AVIF: {e}")))?;
    let colour = avif.primary_item_metadata().map_err(err)?;
    let (w, h) = (colour.max_frame_width.get(), colour.max_frame_height.get());
    if let Some(alpha) = avif.alpha_item_metadata().map_err(err)? {
        if alpha.max_frame_width.get() > w || alpha.max_frame_height.get() > h {
            return Err(TransformError::Decode(format!(
                "AVIF: the alpha image ({}x{}) is larger than the image ({w}x{h})",
                alpha.max_frame_width, alpha.max_frame_height
            )));
        }
    }
    Ok((w, h))
}

pub(crate) fn image_format(kind: Sniffed) -> image::ImageFormat {
    match kind {
        Sniffed::Png => image::ImageFormat::Png,
        Sniffed::Gif => image::ImageFormat::Gif,
        Sniffed::Webp => image::ImageFormat::WebP,
        _ => image::ImageFormat::Jpeg,
    }
}

/// The number of frames (`ANMF` chunks) in a WebP, read from its RIFF chunks without decoding
/// anything: 1 for a still image, `None` when the structure is broken.
pub fn webp_frames(b: &[u8]) -> Option<usize> {
    if b.get(0..4)? != b"RIFF" || b.get(8..12)? != b"WEBP" {
        return None;
    }
    let frames = webp_chunks(b).filter(|c| &c.fourcc == b"ANMF").count();
    Some(frames.max(1))
}

/// One chunk of a RIFF (WebP) file: its four-character code, where its data starts and the size
/// its header declares (which may run past the end of a cut file: check before slicing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chunk {
    pub(crate) fourcc: [u8; 4],
    pub(crate) start: usize,
    pub(crate) size: usize,
}

/// The chunks after a WebP's 12-byte RIFF header, read from their headers alone, up to the last
/// whole chunk header (each chunk padded to an even size).
pub(crate) fn webp_chunks(b: &[u8]) -> impl Iterator<Item = Chunk> + '_ {
    let mut at = Some(12usize);
    std::iter::from_fn(move || {
        let i = at?;
        let head = b.get(i..i.checked_add(8)?)?;
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        at = (i + 8)
            .checked_add(size)
            .and_then(|n| n.checked_add(size & 1));
        Some(Chunk {
            fourcc: [head[0], head[1], head[2], head[3]],
            start: i + 8,
            size,
        })
    })
}

/// The number of frames (image descriptors) in a GIF, read from its block structure without
/// decoding any pixel; `None` when the structure is broken.
pub fn gif_frames(b: &[u8]) -> Option<usize> {
    let table = |packed: u8| {
        if packed & 0x80 != 0 {
            3usize << ((packed & 7) + 1)
        } else {
            0
        }
    };
    // Header (6) and logical screen descriptor (7), then the global colour table.
    let mut i = 13usize.checked_add(table(*b.get(10)?))?;
    let sub_blocks = |mut i: usize| -> Option<usize> {
        loop {
            let len = usize::from(*b.get(i)?);
            i += 1;
            if len == 0 {
                return Some(i);
            }
            i = i.checked_add(len)?;
        }
    };
    let mut frames = 0;
    loop {
        match *b.get(i)? {
            0x2C => {
                // Image descriptor (10 bytes), local colour table, LZW code size, data.
                let packed = *b.get(i + 9)?;
                i = (i + 10).checked_add(table(packed))? + 1;
                i = sub_blocks(i)?;
                frames += 1;
            }
            0x21 => i = sub_blocks(i + 2)?,
            0x3B => return Some(frames),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `width` x 2 RGBA PNG of `frames` frames (an APNG past one), from the `png` encoder.
    fn png_of(width: u32, frames: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, 2);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        if frames > 1 {
            encoder.set_animated(frames, 0).unwrap();
        }
        let mut writer = encoder.write_header().unwrap();
        for f in 0..frames {
            let pixels: Vec<u8> = (0..width * 2 * 4).map(|i| (i + f) as u8).collect();
            writer.write_image_data(&pixels).unwrap();
        }
        writer.finish().unwrap();
        out
    }

    /// What the decode check must keep accepting: stills, animations (the default image
    /// decoded, later frames' chunks checked), and bytes after `IEND` (some writers pad).
    #[test]
    fn whole_pngs_are_complete() {
        for png in [png_of(300, 1), png_of(17, 3)] {
            assert!(is_complete(&png, Sniffed::Png));
            let mut padded = png.clone();
            padded.extend_from_slice(b"\0\0\0\0");
            assert!(is_complete(&padded, Sniffed::Png));
            assert!(!is_complete(&png[..png.len() - 20], Sniffed::Png));
        }
    }

    /// A WebP is whole when its chunks fill what RIFF declares: two files of
    /// libwebp's suite are (an extended file with an alpha chunk, a lossless one); the same cut anywhere, or with a chunk size that runs past the end,
    /// or with RIFF declaring less than the chunks hold, is not.
    #[test]
    fn whole_webps_are_complete() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in ["lossy_alpha1.webp", "lossless1.webp"] {
            let webp = std::fs::read(dir.join("libwebp").join(name)).unwrap();
            assert!(is_complete(&webp, Sniffed::Webp));
            for cut in [13, 30, webp.len() / 2, webp.len() - 1] {
                assert!(!is_complete(&webp[..cut], Sniffed::Webp), "cut at {cut}");
            }
            let mut lying = webp.clone();
            lying[16] = lying[16].wrapping_add(2); // the first chunk's size, 2 bytes longer
            assert!(!is_complete(&lying, Sniffed::Webp));
            let mut short = webp.clone();
            let declared = u32::from_le_bytes([webp[4], webp[5], webp[6], webp[7]]) - 2;
            short[4..8].copy_from_slice(&declared.to_le_bytes());
            assert!(!is_complete(&short, Sniffed::Webp));
        }
    }
}
