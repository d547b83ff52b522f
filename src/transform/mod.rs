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
//!
//! This module holds the pipeline ([`transform`]) and its types; the steps are submodules, one
//! per concern, so a new codec touches `format` (its capability row), `decode` and `encode`:
//! `sniff` (what bytes are, whether they are whole, the header probe, frame counts), `format`
//! (output formats and the capability table), `geometry` (fit, crop, DCT scale), `decode`,
//! `encode` (resize and encode a still), `animate` (every frame of an animation), and `budget`
//! (what a transform will cost in memory, known before it runs).

use crate::route::{Fit, Format};

mod animate;
mod avif;
pub mod budget;
mod colour;
mod decode;
mod encode;
mod format;
mod geometry;
mod sniff;

use animate::*;
use avif::*;
use colour::*;
use decode::*;
use encode::*;
pub use format::*;
use geometry::*;
pub use sniff::*;

/// The largest ICC profile carried into an output (real profiles are a few KB to a few hundred).
pub const MAX_ICC_BYTES: usize = 1 << 20;

/// What to make from a source. Width and height are checked against `image.max_dimension` by the
/// caller; `None` for both keeps the size (a format change only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Width of the box, in pixels.
    pub width: Option<u32>,
    /// Height of the box, in pixels.
    pub height: Option<u32>,
    /// How to fill a width x height box (`inside` when the route names none: never enlarge).
    pub fit: Fit,
    /// `None` keeps the source's format.
    pub format: Option<OutFormat>,
    /// JPEG and WebP quality, 1 to 100.
    pub quality: u8,
    /// Progressive JPEG (ignored for other formats).
    pub progressive: bool,
    /// What an animated source becomes when `format` holds no frames (AVIF).
    pub animated: ForAnimation,
}

/// The format of an animated source whose planned format holds a still only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForAnimation {
    /// The planned format: its first frame (a format named in the route).
    #[default]
    AsPlanned,
    /// The source's own format, every frame kept (a negotiated format).
    Own,
    /// This format, every frame kept (negotiated AVIF for a client that takes WebP too).
    Instead(OutFormat),
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
    /// The bytes are no image format the pipeline knows.
    NotImage,
    #[error("cannot resize or convert {0} images")]
    /// A known format the pipeline does not decode (SVG, BMP, ...).
    Unsupported(&'static str),
    #[error(
        "output would be {width}x{height} = {pixels} pixels, more than image.max_pixels ({max})"
    )]
    /// The output would hold more than `image.max_pixels`.
    OutputTooLarge {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
        /// Their product.
        pixels: u64,
        /// `image.max_pixels`.
        max: u64,
    },
    #[error("{format} holds at most {max} pixels per side; the output would be {width}x{height}")]
    /// The output is wider or taller than the format can hold.
    TooWideForFormat {
        /// The output format.
        format: &'static str,
        /// Its largest side.
        max: u32,
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
    #[error("source is {width}x{height} = {pixels} pixels, more than image.max_pixels ({max})")]
    /// The source holds more than `image.max_pixels` (checked from its header, before decoding).
    TooManyPixels {
        /// Source width.
        width: u32,
        /// Source height.
        height: u32,
        /// Their product.
        pixels: u64,
        /// `image.max_pixels`.
        max: u64,
    },
    #[error("animation of {frames} frames, more than image.max_frames ({max})")]
    /// An animation with more frames than `image.max_frames`.
    TooManyFrames {
        /// Frames in the source.
        frames: usize,
        /// `image.max_frames`.
        max: usize,
    },
    #[error(
        "animation of {frames} frames of {pixels} pixels, more than {ANIMATION_BUDGET} x image.max_pixels in all"
    )]
    /// An animation whose frames together hold too many pixels.
    AnimationTooLarge {
        /// Frames in the source.
        frames: usize,
        /// Pixels of all frames together.
        pixels: u64,
    },
    #[error("cannot decode the image: {0}")]
    /// The decoder failed (a broken or truncated file).
    Decode(String),
    #[error("cannot encode the image: {0}")]
    /// The encoder failed.
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
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// Their format.
    pub format: OutFormat,
}

/// Frames of a source, counted from its structure (1 for a still or a format without frames).
fn frame_count(bytes: &[u8], kind: Sniffed) -> usize {
    match kind {
        Sniffed::Gif => gif_frames(bytes).unwrap_or(1),
        Sniffed::Webp => webp_frames(bytes).unwrap_or(1),
        _ => 1,
    }
}

/// The format a plan writes for a source of `kind` (whose own output format is `own`) with
/// `frames` frames.
fn output_format(
    plan: &Plan,
    kind: Sniffed,
    own: Option<OutFormat>,
    frames: usize,
) -> Result<OutFormat, TransformError> {
    Ok(match (plan.format, own) {
        (Some(f), Some(own)) if frames > 1 && !f.capabilities().animation => match plan.animated {
            ForAnimation::AsPlanned => f,
            ForAnimation::Own => own,
            ForAnimation::Instead(other) => other,
        },
        (Some(f), _) => f,
        (None, Some(own)) => own,
        (None, None) => return Err(TransformError::Unsupported(kind.content_type())),
    })
}

/// The source's format and size from its header, refused past `image.max_pixels` (or empty)
/// before any pixel is allocated.
fn probe_within(bytes: &[u8], limits: &Limits) -> Result<(Sniffed, u32, u32, u64), TransformError> {
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
    Ok((kind, w, h, pixels))
}

/// An image's size as a browser shows it, read from its header alone (no pixel decoded): width
/// and height after its EXIF (JPEG) or `irot` (AVIF) orientation. `None` when the header cannot
/// be read.
pub fn shown_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let (kind, w, h) = probe(bytes).ok()?;
    let orientation = match kind {
        Sniffed::Jpeg => jpeg_metadata(bytes).orientation,
        Sniffed::Avif => avif_orientation(bytes),
        _ => image::metadata::Orientation::NoTransforms,
    };
    Some(if swaps_axes(orientation) {
        (h, w)
    } else {
        (w, h)
    })
}

/// An image's average colour (what it looks like from afar: a placeholder behind it while it
/// loads): the whole pipeline down to one pixel (the resize averages every source pixel into
/// it), as RGB; `None` when it does not decode within `limits`.
pub fn average_colour(bytes: &[u8], limits: &Limits) -> Option<[u8; 3]> {
    let pixel = small_copy(bytes, 1, Fit::Fill, limits)?.to_rgb8();
    pixel.pixels().next().map(|p| p.0)
}

/// The image resized by the whole pipeline into a `side` x `side` box (`fit`), as PNG (lossless),
/// decoded again; `None` when it does not decode within `limits`.
fn small_copy(bytes: &[u8], side: u32, fit: Fit, limits: &Limits) -> Option<image::DynamicImage> {
    let plan = Plan {
        width: Some(side),
        height: Some(side),
        fit,
        format: Some(OutFormat::Png),
        quality: 100,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    };
    let out = transform(bytes, &plan, limits).ok()?;
    image::load_from_memory(&out.bytes).ok()
}

/// An image's ThumbHash (github.com/evanw/thumbhash): the image resized to fit 100x100 (the
/// format's limit) as RGBA, encoded; `None` when it does not decode within `limits`.
pub fn thumb_hash(bytes: &[u8], limits: &Limits) -> Option<Vec<u8>> {
    let small = small_copy(bytes, 100, Fit::Inside, limits)?.to_rgba8();
    let (w, h) = (small.width() as usize, small.height() as usize);
    (w <= 100 && h <= 100 && w > 0 && h > 0)
        .then(|| thumbhash::rgba_to_thumb_hash(w, h, small.as_raw()))
}

/// A ThumbHash drawn as a small PNG (about 32 px on its long side), for a `data:` URL: what a
/// browser shows behind the image until it arrives, with no script. `None` for a malformed hash.
pub fn thumb_hash_png(hash: &[u8]) -> Option<Vec<u8>> {
    let (w, h, rgba) = thumbhash::thumb_hash_to_rgba(hash).ok()?;
    let img = image::RgbaImage::from_raw(u32::try_from(w).ok()?, u32::try_from(h).ok()?, rgba)?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).ok()?;
    Some(out.into_inner())
}

/// Runs the whole pipeline.
pub fn transform(bytes: &[u8], plan: &Plan, limits: &Limits) -> Result<Output, TransformError> {
    let (kind, w, h, pixels) = probe_within(bytes, limits)?;
    let own = OutFormat::from_sniffed(kind);
    let frames = frame_count(bytes, kind);
    let format = output_format(plan, kind, own, frames)?;
    let meta = match kind {
        Sniffed::Jpeg => jpeg_metadata(bytes),
        Sniffed::Avif => SourceMeta {
            orientation: avif_orientation(bytes),
            icc: None,
        },
        _ => SourceMeta::default(),
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
        Sniffed::Avif => {
            // Planned on the sequence header's largest frame: a smaller frame is refused, not
            // stretched.
            let img = decode_avif(bytes)?;
            if (img.width(), img.height()) != (w, h) {
                return Err(TransformError::Decode(format!(
                    "AVIF: the frame is {}x{}, its sequence header says {w}x{h}",
                    img.width(),
                    img.height()
                )));
            }
            (img, meta.orientation, None)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(Sniffed::Jpeg));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Sniffed::Webp));
        assert_eq!(sniff(b"\0\0\0\x1cftypavif"), Some(Sniffed::Avif));
        assert_eq!(
            sniff(b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif"),
            Some(Sniffed::Avif)
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic"),
            Some(Sniffed::Heic)
        );
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
