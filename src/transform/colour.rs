//! Colour: the pixel layouts the resizer works in, alpha composited where the output has none,
//! and ICC profiles carried into the outputs that hold one (JPEG APP2 chunks, WebP `ICCP`; PNG's
//! `iCCP` is written by its encoder). AVIF and GIF outputs carry none: AVIF is written as sRGB
//! (BT.601 matrix), GIF has no profile.

use image::DynamicImage;

use super::webp_chunks;

/// 8-bit RGB, or RGBA when the image has alpha: the layouts the resizer's SIMD paths handle.
pub(crate) fn normalise(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => img,
        i if i.color().has_alpha() => DynamicImage::ImageRgba8(i.to_rgba8()),
        i => DynamicImage::ImageRgb8(i.to_rgb8()),
    }
}

/// RGB pixels; alpha is composited over white (JPEG has no alpha).
pub(crate) fn flatten(img: &DynamicImage) -> image::RgbImage {
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
pub(crate) fn webp_with_icc(webp: &[u8], icc: &[u8], w: u32, h: u32) -> Vec<u8> {
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
    for c in webp_chunks(webp) {
        let Some(data) = webp.get(c.start..c.start + c.size) else {
            return webp.to_vec();
        };
        chunks.push((c.fourcc, data));
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
pub(crate) fn with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
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
