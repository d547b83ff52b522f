//! Image formats and transformations: identifying what bytes are (never trusting an upstream's
//! Content-Type), and the resize/re-encode pipeline for routes with options.
//!
//! The pipeline, in order: sniff the format → read only the header and refuse sources over
//! `image.max_pixels` before any pixel is allocated → decode (JPEG through libjpeg-turbo, scaled in
//! the DCT domain by 1/2, 1/4 or 1/8 when the target is at least that much smaller; PNG, GIF and
//! WebP through `image` with decoder limits) → apply the EXIF orientation → resize with
//! `fast_image_resize` (Lanczos3, cropping centred for `cover`) → encode (JPEG 4:2:0 through
//! libjpeg-turbo, PNG with alpha, lossy WebP through libwebp, GIF). EXIF and other metadata are
//! not written; an ICC profile is carried into JPEG, PNG and WebP output (GIF has none). An
//! animated GIF or WebP (frames counted from its structure, refused past `image.max_frames` or
//! [`ANIMATION_BUDGET`] x `image.max_pixels` frame-pixels) resized to GIF or WebP keeps every frame
//! and its delay; to JPEG or PNG, its first frame is the still. Every step is deterministic: the
//! same input and options give the same bytes.
//!
//! Knows nothing of HTTP or caching: bytes and options in, bytes or a typed error out. It is CPU
//! work: callers run it on a bounded blocking pool.

use std::io::Cursor;

use fast_image_resize as fir;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};

use crate::route::{Fit, Format};

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

/// The largest ICC profile carried into an output (real profiles are a few KB to a few hundred).
pub const MAX_ICC_BYTES: usize = 1 << 20;

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

/// True when the bytes hold a whole image of their format: its end structure is there (JPEG: an
/// end-of-image marker after the last start-of-scan; PNG: the `IEND` chunk; GIF: the trailer after
/// the last image block; WebP: as many bytes as the RIFF header declares; BMP: the declared file
/// size; SVG: a closing `</svg>`). A body cut short by a dropped connection or a lying
/// `Content-Length` fails here and is never mirrored. Formats without a cheap end check (AVIF, HEIC,
/// ICO, TIFF) are accepted as sniffed.
///
/// These are structural checks, not decodes: a few comparisons near the end of the buffer (a
/// backwards scan for JPEG), so the cost does not grow with the pixel count.
pub fn is_complete(b: &[u8], kind: Sniffed) -> bool {
    match kind {
        Sniffed::Jpeg => {
            let last = |m: &[u8; 2]| b.windows(2).rposition(|w| w == m);
            // Inside entropy-coded data 0xFF is always stuffed (FF 00) or a restart marker, so an
            // FF D9 after the last FF DA is the real end of the (main) image.
            matches!((last(&[0xFF, 0xDA]), last(&[0xFF, 0xD9])), (Some(sos), Some(eoi)) if eoi > sos)
        }
        Sniffed::Png => b
            .windows(12)
            .rev()
            .take(4096)
            .any(|w| w == b"\0\0\0\0IEND\xAE\x42\x60\x82"),
        Sniffed::Gif => {
            // The trailer 0x3B ends the stream; tolerate trailing padding (NULs, whitespace).
            let end = b.iter().rposition(|c| *c != 0 && !c.is_ascii_whitespace());
            end.is_some_and(|i| b[i] == 0x3B && i > 13)
        }
        Sniffed::Webp => {
            let declared = b
                .get(4..8)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
            declared.is_some_and(|n| n.saturating_add(8) <= b.len())
        }
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
        Sniffed::Avif | Sniffed::Heic | Sniffed::Ico | Sniffed::Tiff => true,
    }
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

/// Formats the pipeline writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

/// What an output format can hold, in one place: every decision about a format (keeping alpha,
/// keeping frames, refusing a size, whether quality or `progressive` mean anything) reads it,
/// so a new codec is one more row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Keeps an alpha channel (else alpha is composited over white).
    pub alpha: bool,
    /// Holds several frames with delays.
    pub animation: bool,
    /// The largest width or height the format (or its encoder) can hold.
    pub max_side: u32,
    /// The quality range the encoder takes; `None` when the output does not depend on it.
    pub quality: Option<(u8, u8)>,
    /// Can be written progressively (coarse to fine).
    pub progressive: bool,
}

impl OutFormat {
    /// Every output format.
    pub const ALL: [OutFormat; 4] = [
        OutFormat::Jpeg,
        OutFormat::Png,
        OutFormat::Webp,
        OutFormat::Gif,
    ];

    /// The capability table (README "Transformations" lists it).
    pub const fn capabilities(self) -> Capabilities {
        match self {
            OutFormat::Jpeg => Capabilities {
                alpha: false,
                animation: false,
                max_side: 65_535,
                quality: Some((1, 100)),
                progressive: true,
            },
            OutFormat::Png => Capabilities {
                alpha: true,
                animation: false,
                max_side: u32::MAX,
                quality: None,
                progressive: false,
            },
            // libwebp's limit; the `webp` crate panics past it, so it is checked first.
            OutFormat::Webp => Capabilities {
                alpha: true,
                animation: true,
                max_side: 16_383,
                quality: Some((1, 100)),
                progressive: false,
            },
            OutFormat::Gif => Capabilities {
                alpha: true,
                animation: true,
                max_side: 65_535,
                quality: None,
                progressive: false,
            },
        }
    }

    /// The largest width or height the format (or its encoder) can hold.
    pub fn max_side(self) -> u32 {
        self.capabilities().max_side
    }

    /// True for formats whose output does not depend on a quality setting.
    pub fn is_lossless(self) -> bool {
        self.capabilities().quality.is_none()
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutFormat::Jpeg => "image/jpeg",
            OutFormat::Png => "image/png",
            OutFormat::Webp => "image/webp",
            OutFormat::Gif => "image/gif",
        }
    }

    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            OutFormat::Jpeg => "jpeg",
            OutFormat::Png => "png",
            OutFormat::Webp => "webp",
            OutFormat::Gif => "gif",
        }
    }

    /// The output format a route's format option asks for; `None` for `original` (the source's).
    pub fn from_route(f: Format) -> Option<OutFormat> {
        match f {
            Format::Jpeg => Some(OutFormat::Jpeg),
            Format::Png => Some(OutFormat::Png),
            Format::Webp => Some(OutFormat::Webp),
            Format::Gif => Some(OutFormat::Gif),
            Format::Original => None,
        }
    }

    fn from_sniffed(s: Sniffed) -> Option<OutFormat> {
        match s {
            Sniffed::Jpeg => Some(OutFormat::Jpeg),
            Sniffed::Png => Some(OutFormat::Png),
            Sniffed::Webp => Some(OutFormat::Webp),
            Sniffed::Gif => Some(OutFormat::Gif),
            _ => None,
        }
    }
}

/// What to make from a source. Width and height are checked against `image.max_dimension` by the
/// caller; `None` for both keeps the size (a format change only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// How to fill a width x height box (`inside` when the route names none: never enlarge).
    pub fit: Fit,
    /// `None` keeps the source's format.
    pub format: Option<OutFormat>,
    /// JPEG and WebP quality, 1 to 100.
    pub quality: u8,
    /// Progressive JPEG (ignored for other formats).
    pub progressive: bool,
}

/// Bounds on what a source may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sources (each frame of an animation) and outputs with more pixels are refused before
    /// decoding.
    pub max_pixels: u64,
    /// Animated sources with more frames are refused before decoding.
    pub max_frames: usize,
}

/// What one animation may cost: its frames × the source's pixels, at most this many times
/// `image.max_pixels` (default: 200 million pixels decoded, e.g. 256 frames of 780,000).
pub const ANIMATION_BUDGET: u64 = 4;

/// Why a transform failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("not an image")]
    NotImage,
    #[error("cannot resize or convert {0} images")]
    Unsupported(&'static str),
    #[error(
        "output would be {width}x{height} = {pixels} pixels, more than image.max_pixels ({max})"
    )]
    OutputTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("{format} holds at most {max} pixels per side; the output would be {width}x{height}")]
    TooWideForFormat {
        format: &'static str,
        max: u32,
        width: u32,
        height: u32,
    },
    #[error("source is {width}x{height} = {pixels} pixels, more than image.max_pixels ({max})")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("animation of {frames} frames, more than image.max_frames ({max})")]
    TooManyFrames { frames: usize, max: usize },
    #[error(
        "animation of {frames} frames of {pixels} pixels, more than {ANIMATION_BUDGET} x image.max_pixels in all"
    )]
    AnimationTooLarge { frames: usize, pixels: u64 },
    #[error("cannot decode the image: {0}")]
    Decode(String),
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

impl TransformError {
    /// The HTTP status: 415 for what is not a (supported) image, 422 for sources too large or
    /// broken, 500 for an encoder failure.
    pub fn status(&self) -> u16 {
        match self {
            TransformError::NotImage | TransformError::Unsupported(_) => 415,
            TransformError::TooManyPixels { .. }
            | TransformError::OutputTooLarge { .. }
            | TransformError::TooWideForFormat { .. }
            | TransformError::TooManyFrames { .. }
            | TransformError::AnimationTooLarge { .. }
            | TransformError::Decode(_) => 422,
            TransformError::Encode(_) => 500,
        }
    }
}

/// A derived image.
#[derive(Debug)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub format: OutFormat,
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
        other => return Err(TransformError::Unsupported(other.content_type())),
    };
    Ok((kind, w, h))
}

fn image_format(kind: Sniffed) -> image::ImageFormat {
    match kind {
        Sniffed::Png => image::ImageFormat::Png,
        Sniffed::Gif => image::ImageFormat::Gif,
        Sniffed::Webp => image::ImageFormat::WebP,
        _ => image::ImageFormat::Jpeg,
    }
}

/// Runs the whole pipeline.
pub fn transform(bytes: &[u8], plan: &Plan, limits: &Limits) -> Result<Output, TransformError> {
    let (kind, w, h) = probe(bytes)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels || w == 0 || h == 0 {
        return Err(TransformError::TooManyPixels {
            width: w,
            height: h,
            pixels,
            max: limits.max_pixels,
        });
    }
    let format = match plan.format {
        Some(f) => f,
        None => {
            OutFormat::from_sniffed(kind).ok_or(TransformError::Unsupported(kind.content_type()))?
        }
    };
    let meta = match kind {
        Sniffed::Jpeg => jpeg_metadata(bytes),
        _ => JpegMeta::default(),
    };
    // Geometry is planned on the upright image; DCT scaling is uniform, so it holds for the
    // decoded one too.
    let swaps = swaps_axes(meta.orientation);
    let (uw, uh) = if swaps { (h, w) } else { (w, h) };
    let geometry = geometry(uw, uh, plan);
    let max_side = format.max_side();
    if geometry.width > max_side || geometry.height > max_side {
        return Err(TransformError::TooWideForFormat {
            format: format.name(),
            max: max_side,
            width: geometry.width,
            height: geometry.height,
        });
    }
    // `image.max_pixels` bounds what is produced too: a tiny source asked as 8192x8192 is refused
    // before anything is decoded or allocated.
    let out_pixels = u64::from(geometry.width) * u64::from(geometry.height);
    if out_pixels > limits.max_pixels {
        return Err(TransformError::OutputTooLarge {
            width: geometry.width,
            height: geometry.height,
            pixels: out_pixels,
            max: limits.max_pixels,
        });
    }
    // Animations: bounded by frame count and by frames x pixels before anything is decoded;
    // resized to GIF or WebP they keep every frame and its delay.
    let frames = match kind {
        Sniffed::Gif => gif_frames(bytes).unwrap_or(1),
        Sniffed::Webp => webp_frames(bytes).unwrap_or(1),
        _ => 1,
    };
    if frames > limits.max_frames {
        return Err(TransformError::TooManyFrames {
            frames,
            max: limits.max_frames,
        });
    }
    let budget = limits.max_pixels.saturating_mul(ANIMATION_BUDGET);
    let frame_pixels = (frames as u64).saturating_mul(pixels.max(out_pixels));
    if frames > 1 && frame_pixels > budget {
        return Err(TransformError::AnimationTooLarge {
            frames,
            pixels: pixels.max(out_pixels),
        });
    }
    if frames > 1 && format.capabilities().animation {
        // An animated WebP is assembled in memory: its frames get the budget of one image.
        if format == OutFormat::Webp
            && (frames as u64).saturating_mul(out_pixels) > limits.max_pixels
        {
            return Err(TransformError::AnimationTooLarge {
                frames,
                pixels: out_pixels,
            });
        }
        let bytes = resize_animation(bytes, kind, &geometry, pixels, format, plan.quality)?;
        return Ok(Output { bytes, format });
    }
    let (img, orientation, icc) = match kind {
        Sniffed::Jpeg => {
            let img = decode_jpeg(bytes, geometry.scale)?;
            (img, meta.orientation, meta.icc)
        }
        _ => decode_other(bytes, kind, pixels)?,
    };
    let mut img = normalise(img);
    img.apply_orientation(orientation);
    let sx = f64::from(img.width()) / f64::from(uw);
    let sy = f64::from(img.height()) / f64::from(uh);
    let (cx, cy, cw, ch) = geometry.crop;
    // Scaled decodes round sizes up (1051 / 2 = 526), so clamp the box to the decoded image.
    let (iw, ih) = (f64::from(img.width()), f64::from(img.height()));
    let (x, y) = ((cx * sx).min(iw - 1.0), (cy * sy).min(ih - 1.0));
    let crop = (x, y, (cw * sx).min(iw - x), (ch * sy).min(ih - y));
    let unchanged = (geometry.width, geometry.height) == (img.width(), img.height())
        && crop == (0.0, 0.0, f64::from(img.width()), f64::from(img.height()));
    let img = if unchanged {
        img
    } else {
        resize(&img, crop, geometry.width, geometry.height)?
    };
    // A colour profile is carried only while it is of a sane size: one that inflates to hundreds
    // of MB (a small PNG's compressed iCCP can) is dropped, never copied into the output.
    let icc = icc.filter(|p| p.len() <= MAX_ICC_BYTES);
    let bytes = encode(&img, format, plan, icc.as_deref())?;
    Ok(Output { bytes, format })
}

/// The resize, in upright source coordinates.
#[derive(Debug, PartialEq)]
struct Geometry {
    /// The part of the source used: left, top, width, height.
    crop: (f64, f64, f64, f64),
    width: u32,
    height: u32,
    /// Output pixels per source pixel (at most 1 when shrinking), for choosing a DCT scale.
    scale: f64,
}

fn geometry(sw: u32, sh: u32, plan: &Plan) -> Geometry {
    let (fw, fh) = (f64::from(sw), f64::from(sh));
    let full = (0.0, 0.0, fw, fh);
    let round = |v: f64| (v.round() as u32).max(1);
    let never_enlarge = plan.fit == Fit::Inside;
    let (crop, w, h) = match (plan.width, plan.height) {
        (None, None) => (full, sw, sh),
        (Some(w), None) => {
            let w = if never_enlarge { w.min(sw) } else { w };
            (full, w, round(fh * f64::from(w) / fw))
        }
        (None, Some(h)) => {
            let h = if never_enlarge { h.min(sh) } else { h };
            (full, round(fw * f64::from(h) / fh), h)
        }
        (Some(w), Some(h)) => match plan.fit {
            Fit::Fill => (full, w, h),
            Fit::Cover => {
                let (tw, th) = (f64::from(w), f64::from(h));
                if fw / fh > tw / th {
                    let cw = fh * tw / th;
                    (((fw - cw) / 2.0, 0.0, cw, fh), w, h)
                } else {
                    let ch = fw * th / tw;
                    ((0.0, (fh - ch) / 2.0, fw, ch), w, h)
                }
            }
            Fit::Contain | Fit::Inside => {
                let mut s = (f64::from(w) / fw).min(f64::from(h) / fh);
                if never_enlarge {
                    s = s.min(1.0);
                }
                (full, round(fw * s), round(fh * s))
            }
        },
    };
    let scale = (f64::from(w) / crop.2).max(f64::from(h) / crop.3);
    Geometry {
        crop,
        width: w,
        height: h,
        scale,
    }
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// What the JPEG markers say beyond the pixels.
struct JpegMeta {
    orientation: Orientation,
    /// The ICC profile, reassembled from its APP2 chunks.
    icc: Option<Vec<u8>>,
}

impl Default for JpegMeta {
    fn default() -> Self {
        JpegMeta {
            orientation: Orientation::NoTransforms,
            icc: None,
        }
    }
}

/// Reads the EXIF orientation (APP1) and the ICC profile (APP2) from a JPEG's markers.
fn jpeg_metadata(b: &[u8]) -> JpegMeta {
    let mut meta = JpegMeta::default();
    let mut icc_chunks: Vec<(u8, &[u8])> = Vec::new();
    let mut i = 2;
    while i + 4 <= b.len() && b[i] == 0xFF {
        let marker = b[i + 1];
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan: no more metadata
        }
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let Some(data) = b.get(i + 4..i + 2 + len) else {
            break;
        };
        if marker == 0xE1 && data.starts_with(b"Exif\0\0") {
            if let Some(o) = Orientation::from_exif_chunk(&data[6..]) {
                meta.orientation = o;
            }
        } else if marker == 0xE2 && data.starts_with(b"ICC_PROFILE\0") && data.len() > 14 {
            icc_chunks.push((data[12], &data[14..]));
        }
        i += 2 + len;
    }
    if !icc_chunks.is_empty() {
        icc_chunks.sort_by_key(|c| c.0);
        meta.icc = Some(
            icc_chunks
                .iter()
                .flat_map(|c| c.1.iter().copied())
                .collect(),
        );
    }
    meta
}

/// Decodes a JPEG with libjpeg-turbo, scaled in the DCT domain by the smallest of 1/8, 1/4, 1/2
/// that still gives at least `scale` of the source's size. CMYK/YCCK JPEGs, which libjpeg-turbo
/// cannot turn into RGB, go through `image`'s decoder at full size.
fn decode_jpeg(bytes: &[u8], scale: f64) -> Result<DynamicImage, TransformError> {
    let denom = [8usize, 4, 2]
        .into_iter()
        .find(|d| 1.0 / *d as f64 >= scale)
        .unwrap_or(1);
    let turbo = || -> Result<DynamicImage, turbojpeg::Error> {
        let mut d = turbojpeg::Decompressor::new()?;
        let factor = turbojpeg::ScalingFactor::new(1, denom);
        let header = d.read_header(bytes)?.scaled(factor);
        d.set_scaling_factor(factor)?;
        let (w, h) = (header.width, header.height);
        let mut pixels = vec![0u8; 3 * w * h];
        d.decompress(
            bytes,
            turbojpeg::Image {
                pixels: pixels.as_mut_slice(),
                width: w,
                pitch: 3 * w,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            },
        )?;
        let img = image::RgbImage::from_raw(w as u32, h as u32, pixels)
            .ok_or(turbojpeg::Error::IntegerOverflow("image size"))?;
        Ok(DynamicImage::ImageRgb8(img))
    };
    let cmyk = turbojpeg::read_header(bytes).is_ok_and(|h| {
        matches!(
            h.colorspace,
            turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
        )
    });
    if !cmyk {
        // libjpeg-turbo refuses truncated or corrupt data (warnings included): a clean error
        // rather than a half-grey image.
        return turbo().map_err(|e| TransformError::Decode(e.to_string()));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(image::ImageFormat::Jpeg);
    reader
        .decode()
        .map_err(|e| TransformError::Decode(e.to_string()))
}

/// Decodes PNG, GIF (first frame) and WebP through `image`, with its decoder limits set.
///
/// The allocation budget follows this source's own pixel count (already checked against
/// `image.max_pixels`), not the largest image allowed: it bounds the metadata a decoder inflates
/// too, so a small PNG whose compressed iCCP chunk inflates to hundreds of MB gets a budget of a
/// few MiB, the decoder gives up on the profile (and only on it), and the pixels decode as usual.
fn decode_other(
    bytes: &[u8],
    kind: Sniffed,
    pixels: u64,
) -> Result<(DynamicImage, Orientation, Option<Vec<u8>>), TransformError> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(image_format(kind));
    let mut l = image::Limits::default();
    // 16-bit RGBA is 8 bytes a pixel: the most any of these decoders allocates per pixel; the
    // rest is room for a profile of the largest size we carry and the decoders' own buffers.
    let slack = (MAX_ICC_BYTES as u64) * 2 + bytes.len() as u64;
    l.max_alloc = Some(pixels.saturating_mul(8).saturating_add(slack));
    reader.limits(l);
    let decode_err = |e: image::ImageError| TransformError::Decode(e.to_string());
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    Ok((img, orientation, icc))
}

/// 8-bit RGB, or RGBA when the image has alpha: the layouts the resizer's SIMD paths handle.
fn normalise(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => img,
        i if i.color().has_alpha() => DynamicImage::ImageRgba8(i.to_rgba8()),
        i => DynamicImage::ImageRgb8(i.to_rgb8()),
    }
}

fn resize(
    src: &DynamicImage,
    (x, y, w, h): (f64, f64, f64, f64),
    width: u32,
    height: u32,
) -> Result<DynamicImage, TransformError> {
    let mut dst = DynamicImage::new(width, height, src.color());
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .crop(x, y, w, h);
    fir::Resizer::new()
        .resize(src, &mut dst, &options)
        .map_err(|e| TransformError::Encode(format!("resize: {e}")))?;
    Ok(dst)
}

fn encode(
    img: &DynamicImage,
    format: OutFormat,
    plan: &Plan,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>, TransformError> {
    let quality = plan.quality;
    let enc = |e: String| TransformError::Encode(e);
    let (w, h) = (img.width(), img.height());
    match format {
        OutFormat::Jpeg => {
            let rgb = flatten(img);
            let mut c = turbojpeg::Compressor::new().map_err(|e| enc(e.to_string()))?;
            c.set_quality(i32::from(quality))
                .map_err(|e| enc(e.to_string()))?;
            c.set_subsamp(turbojpeg::Subsamp::Sub2x2)
                .map_err(|e| enc(e.to_string()))?;
            c.set_progressive(plan.progressive)
                .map_err(|e| enc(e.to_string()))?;
            let out = c
                .compress_to_vec(turbojpeg::Image {
                    pixels: rgb.as_raw().as_slice(),
                    width: w as usize,
                    pitch: 3 * w as usize,
                    height: h as usize,
                    format: turbojpeg::PixelFormat::RGB,
                })
                .map_err(|e| enc(e.to_string()))?;
            Ok(match icc {
                Some(p) => with_icc(&out, p),
                None => out,
            })
        }
        OutFormat::Png => {
            use image::ImageEncoder;
            let mut out = Vec::new();
            let mut e = image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            if let Some(p) = icc {
                let _ = e.set_icc_profile(p.to_vec()); // unsupported profiles are dropped, not fatal
            }
            e.write_image(img.as_bytes(), w, h, img.color().into())
                .map_err(|e| enc(e.to_string()))?;
            Ok(out)
        }
        OutFormat::Webp => {
            let q = f32::from(quality);
            let memory = match img {
                DynamicImage::ImageRgba8(i) => webp::Encoder::from_rgba(i.as_raw(), w, h).encode(q),
                other => webp::Encoder::from_rgb(flatten(other).as_raw(), w, h).encode(q),
            };
            Ok(match icc {
                Some(p) => webp_with_icc(&memory, p, w, h),
                None => memory.to_vec(),
            })
        }
        OutFormat::Gif => {
            let mut out = Vec::new();
            {
                let mut e = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
                e.encode_frame(image::Frame::new(img.to_rgba8()))
                    .map_err(|e| enc(e.to_string()))?;
            }
            Ok(out)
        }
    }
}

/// Resizes every frame of an animated GIF or WebP to `geometry`, keeping each frame's delay, and
/// encodes an animation that loops forever: GIF frame by frame (one canvas and one output frame
/// in memory), WebP through libwebp's animation encoder (the resized frames are held until it
/// assembles them; the caller bounds their total). The decoders composite each frame onto the
/// full canvas.
fn resize_animation(
    bytes: &[u8],
    kind: Sniffed,
    geometry: &Geometry,
    canvas_pixels: u64,
    format: OutFormat,
    quality: u8,
) -> Result<Vec<u8>, TransformError> {
    use image::{AnimationDecoder, ImageDecoder};
    let decode_err = |e: image::ImageError| TransformError::Decode(e.to_string());
    let encode_err = |e: String| TransformError::Encode(e);
    let mut l = image::Limits::default();
    l.max_alloc = Some(canvas_pixels.saturating_mul(8).saturating_add(1 << 20));
    let frames = match kind {
        Sniffed::Gif => {
            let mut d =
                image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(decode_err)?;
            d.set_limits(l).map_err(decode_err)?;
            d.into_frames()
        }
        Sniffed::Webp => {
            let mut d =
                image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).map_err(decode_err)?;
            d.set_limits(l).map_err(decode_err)?;
            d.into_frames()
        }
        other => return Err(TransformError::Unsupported(other.content_type())),
    };
    let (w, h) = (geometry.width, geometry.height);
    let resized = frames.map(|frame| {
        let frame = frame.map_err(decode_err)?;
        let (n, d) = frame.delay().numer_denom_ms();
        let canvas = DynamicImage::ImageRgba8(frame.into_buffer());
        let out = resize(&canvas, geometry.crop, w, h)?.to_rgba8();
        Ok::<_, TransformError>((out, n / d.max(1)))
    });
    let mut out = Vec::new();
    match format {
        OutFormat::Gif => {
            let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
            enc.set_repeat(image::codecs::gif::Repeat::Infinite)
                .map_err(|e| encode_err(e.to_string()))?;
            for frame in resized {
                let (img, ms) = frame?;
                let delay = image::Delay::from_numer_denom_ms(ms, 1);
                enc.encode_frame(image::Frame::from_parts(img, 0, 0, delay))
                    .map_err(|e| encode_err(e.to_string()))?;
            }
        }
        _ => {
            let frames: Vec<(image::RgbaImage, u32)> = resized.collect::<Result<_, _>>()?;
            let mut config =
                webp::WebPConfig::new().map_err(|()| encode_err("WebP config".into()))?;
            config.quality = f32::from(quality);
            let mut enc = webp::AnimEncoder::new(w, h, &config);
            enc.set_loop_count(0);
            let mut start = 0i32;
            for (img, ms) in &frames {
                enc.add_frame(webp::AnimFrame::from_rgba(img.as_raw(), w, h, start));
                start = start.saturating_add(i32::try_from(*ms).unwrap_or(i32::MAX));
            }
            let memory = enc
                .try_encode()
                .map_err(|e| encode_err(format!("animated WebP: {e:?}")))?;
            out = memory.to_vec();
        }
    }
    Ok(out)
}

/// The number of frames (`ANMF` chunks) in a WebP, read from its RIFF chunks without decoding
/// anything: 1 for a still image, `None` when the structure is broken.
pub fn webp_frames(b: &[u8]) -> Option<usize> {
    if b.get(0..4)? != b"RIFF" || b.get(8..12)? != b"WEBP" {
        return None;
    }
    let mut i = 12usize;
    let mut frames = 0;
    while i + 8 <= b.len() {
        let size = u32::from_le_bytes(b.get(i + 4..i + 8)?.try_into().ok()?) as usize;
        if b.get(i..i + 4)? == b"ANMF" {
            frames += 1;
        }
        i = i.checked_add(8)?.checked_add(size)?.checked_add(size & 1)?;
    }
    Some(frames.max(1))
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

/// RGB pixels; alpha is composited over white (JPEG has no alpha).
fn flatten(img: &DynamicImage) -> image::RgbImage {
    match img {
        DynamicImage::ImageRgba8(rgba) => {
            let mut rgb = image::RgbImage::new(rgba.width(), rgba.height());
            for (d, s) in rgb.pixels_mut().zip(rgba.pixels()) {
                let a = u16::from(s[3]);
                for c in 0..3 {
                    d[c] = ((u16::from(s[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
                }
            }
            rgb
        }
        other => other.to_rgb8(),
    }
}

/// Adds an ICC profile to a WebP file: the extended format's `VP8X` header (created, or its ICC
/// flag set) followed by an `ICCP` chunk, before the image data. Unparsable input is returned as is.
fn webp_with_icc(webp: &[u8], icc: &[u8], w: u32, h: u32) -> Vec<u8> {
    const ICC_FLAG: u8 = 0x20;
    if webp.len() < 20
        || &webp[..4] != b"RIFF"
        || &webp[8..12] != b"WEBP"
        || icc.len() > u32::MAX as usize / 2
    {
        return webp.to_vec();
    }
    // Split the chunks: (fourcc, data).
    let mut chunks: Vec<([u8; 4], &[u8])> = Vec::new();
    let mut i = 12;
    while i + 8 <= webp.len() {
        let fourcc = [webp[i], webp[i + 1], webp[i + 2], webp[i + 3]];
        let size =
            u32::from_le_bytes([webp[i + 4], webp[i + 5], webp[i + 6], webp[i + 7]]) as usize;
        let Some(data) = webp.get(i + 8..i + 8 + size) else {
            return webp.to_vec();
        };
        chunks.push((fourcc, data));
        i += 8 + size + (size & 1);
    }
    let mut vp8x: Vec<u8> = match chunks.first() {
        Some((f, d)) if f == b"VP8X" && d.len() >= 10 => d.to_vec(),
        _ => {
            let mut d = vec![0u8; 10];
            d[4..7].copy_from_slice(&(w.saturating_sub(1)).to_le_bytes()[..3]);
            d[7..10].copy_from_slice(&(h.saturating_sub(1)).to_le_bytes()[..3]);
            d
        }
    };
    vp8x[0] |= ICC_FLAG;
    let mut body = Vec::with_capacity(webp.len() + icc.len() + 32);
    let mut put = |fourcc: &[u8], data: &[u8]| {
        body.extend_from_slice(fourcc);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        if data.len() % 2 == 1 {
            body.push(0);
        }
    };
    put(b"VP8X", &vp8x);
    put(b"ICCP", icc);
    for (f, d) in chunks.iter().filter(|(f, _)| f != b"VP8X" && f != b"ICCP") {
        put(f, d);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    out
}

/// Inserts an ICC profile as APP2 chunks right after a JPEG's SOI marker.
fn with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    const CHUNK: usize = 65519 - 14;
    let chunks: Vec<&[u8]> = icc.chunks(CHUNK).collect();
    if chunks.len() > 255 || jpeg.len() < 2 {
        return jpeg.to_vec();
    }
    let mut out = Vec::with_capacity(jpeg.len() + icc.len() + 64);
    out.extend_from_slice(&jpeg[..2]);
    for (i, c) in chunks.iter().enumerate() {
        let len = (c.len() + 16) as u16;
        out.extend_from_slice(&[0xFF, 0xE2]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"ICC_PROFILE\0");
        out.push(i as u8 + 1);
        out.push(chunks.len() as u8);
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
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
