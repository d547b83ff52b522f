//! Decoding a still source: JPEG through libjpeg-turbo (DCT-scaled, EXIF orientation and ICC
//! read from its markers), PNG, GIF and WebP through `image` with allocation limits that follow the
//! source's own size, AVIF through libaom (`aom-decode`: avif-parse for the container, the yuv
//! crate for the matrix and range the file declares).

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};

use super::*;

/// What the JPEG markers say beyond the pixels.
pub(crate) struct JpegMeta {
    pub(crate) orientation: Orientation,
    /// The ICC profile, reassembled from its APP2 chunks.
    pub(crate) icc: Option<Vec<u8>>,
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
pub(crate) fn jpeg_metadata(b: &[u8]) -> JpegMeta {
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
pub(crate) fn decode_jpeg(bytes: &[u8], scale: f64) -> Result<DynamicImage, TransformError> {
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
pub(crate) fn decode_other(
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

/// Decodes an AVIF's primary image (for an AVIF sequence, its still) with its alpha item applied
/// (un-premultiplied when the file says so), as 8-bit or 16-bit RGB(A) or grey. Its size was
/// checked by [`probe`] against `image.max_pixels` from the AV1 sequence header, the most any
/// frame of it can be.
pub(crate) fn decode_avif(bytes: &[u8]) -> Result<DynamicImage, TransformError> {
    use aom_decode::avif::{Avif, Image};
    let config = aom_decode::Config { threads: 1 };
    // The decoder (its frame buffers) is dropped as soon as the pixels are converted to RGB.
    let decoded = Avif::decode(bytes, &config)
        .and_then(|mut avif| avif.convert())
        .map_err(|e| TransformError::Decode(format!("AVIF: {e}")))?;
    // Each decoded layout copied row by row into an `image` buffer of exactly its size, 8 bits
    // per channel (what every later step works in): one allocation, no growth, no intermediate
    // contiguous copy, and 16-bit pixels never held twice. Peak: the decoder's RGB plus this
    // buffer (BENCHMARKS.md, "Memory per transform").
    macro_rules! buffer {
        ($img:expr, $variant:ident, $channels:expr, |$p:ident| $parts:expr) => {{
            let img = $img;
            let (w, h) = (img.width(), img.height());
            let mut raw = Vec::with_capacity(w * h * $channels);
            for row in img.rows() {
                for $p in row {
                    raw.extend_from_slice(&$parts);
                }
            }
            drop(img);
            let (w, h) = (u32::try_from(w).ok(), u32::try_from(h).ok());
            w.zip(h)
                .and_then(|(w, h)| image::ImageBuffer::from_raw(w, h, raw))
                .map(DynamicImage::$variant)
        }};
    }
    // 16-bit channels to 8: the high byte, as `image`'s own conversion rounds (v * 255 / 65535).
    let narrow = |v: u16| ((u32::from(v) * 255 + 32767) / 65535) as u8;
    let img = match decoded {
        Image::RGB8(i) => buffer!(i, ImageRgb8, 3, |p| [p.r, p.g, p.b]),
        Image::RGBA8(i) => buffer!(i, ImageRgba8, 4, |p| [p.r, p.g, p.b, p.a]),
        Image::RGB16(i) => buffer!(i, ImageRgb8, 3, |p| [narrow(p.r), narrow(p.g), narrow(p.b)]),
        Image::RGBA16(i) => buffer!(i, ImageRgba8, 4, |p| [
            narrow(p.r),
            narrow(p.g),
            narrow(p.b),
            narrow(p.a)
        ]),
        Image::Gray8(i) => buffer!(i, ImageRgb8, 3, |p| [*p, *p, *p]),
        Image::Gray16(i) => buffer!(i, ImageRgb8, 3, |p| {
            let v = narrow(*p);
            [v, v, v]
        }),
    };
    img.ok_or_else(|| {
        TransformError::Decode("AVIF: decoded planes do not match the image size".into())
    })
}
