//! Decoding a still source: JPEG through libjpeg-turbo (DCT-scaled, EXIF orientation and ICC
//! read from its markers), PNG and GIF through `image` with allocation limits that follow the
//! source's own size, a still WebP's pixels through libwebp (its metadata through `image`), AVIF through libaom (`aom-decode`: avif-parse for the container, the yuv
//! crate for the matrix and range the file declares).

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};

use super::*;

/// What a source says beyond its pixels: a JPEG's markers, an AVIF's transformative properties.
pub(crate) struct SourceMeta {
    pub(crate) orientation: Orientation,
    /// The ICC profile, reassembled from its APP2 chunks.
    pub(crate) icc: Option<Vec<u8>>,
}

impl Default for SourceMeta {
    fn default() -> Self {
        SourceMeta {
            orientation: Orientation::NoTransforms,
            icc: None,
        }
    }
}

/// Reads the EXIF orientation (APP1) and the ICC profile (APP2) from a JPEG's markers.
pub(crate) fn jpeg_metadata(b: &[u8]) -> SourceMeta {
    let mut meta = SourceMeta::default();
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

/// How an AVIF's primary image is to be shown (`irot`, then `imir`, as browsers apply them): read from its `meta` box (`pitm`, and the `ipco` properties `ipma` associates with
/// that item, in association order). A file that cannot be read that far says nothing here (the
/// decoder refuses it later).
pub(crate) fn avif_orientation(bytes: &[u8]) -> Orientation {
    avif_transforms(bytes).unwrap_or(Orientation::NoTransforms)
}

/// ISOBMFF boxes laid end to end: (type, payload). Stops at the first malformed size.
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as u64;
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, data.len() as u64),
            1 => (16, u64::from_be_bytes(data.get(8..16)?.try_into().ok()?)),
            n => (8, n),
        };
        let size = usize::try_from(size).ok()?;
        let payload = data.get(header..size)?;
        data = &data[size..];
        Some((kind, payload))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| k == kind).map(|(_, p)| p)
}

fn avif_transforms(bytes: &[u8]) -> Option<Orientation> {
    // `meta`, `pitm` and `ipma` are full boxes: version and flags come first.
    let meta = child(bytes, b"meta")?.get(4..)?;
    let pitm = child(meta, b"pitm")?;
    let primary = match pitm.first()? {
        0 => u32::from(u16::from_be_bytes(pitm.get(4..6)?.try_into().ok()?)),
        _ => u32::from_be_bytes(pitm.get(4..8)?.try_into().ok()?),
    };
    let iprp = child(meta, b"iprp")?;
    let properties: Vec<([u8; 4], &[u8])> = boxes(child(iprp, b"ipco")?).collect();
    let ipma = child(iprp, b"ipma")?;
    let (version, wide) = (*ipma.first()?, ipma.get(3)? & 1 == 1);
    let count = u32::from_be_bytes(ipma.get(4..8)?.try_into().ok()?);
    let mut at = 8;
    // Rotation clockwise in quarter turns, then a horizontal flip: the state after each
    // transformative property, in association order.
    let (mut rot, mut flip) = (0u8, false);
    for _ in 0..count {
        let item = match version {
            0 => {
                at += 2;
                u32::from(u16::from_be_bytes(ipma.get(at - 2..at)?.try_into().ok()?))
            }
            _ => {
                at += 4;
                u32::from_be_bytes(ipma.get(at - 4..at)?.try_into().ok()?)
            }
        };
        let associations = *ipma.get(at)?;
        at += 1;
        for _ in 0..associations {
            let index = match wide {
                true => {
                    at += 2;
                    usize::from(u16::from_be_bytes(ipma.get(at - 2..at)?.try_into().ok()?) & 0x7FFF)
                }
                false => {
                    at += 1;
                    usize::from(ipma.get(at - 1)? & 0x7F)
                }
            };
            if item != primary || index == 0 {
                continue;
            }
            let Some((kind, payload)) = properties.get(index - 1) else {
                continue;
            };
            // Turning a flipped image turns the other way under the flip.
            let mut turn = |quarters_cw: u8| {
                rot = match flip {
                    false => (rot + quarters_cw) % 4,
                    true => (rot + 4 - quarters_cw) % 4,
                }
            };
            match kind {
                // Anticlockwise quarter turns.
                b"irot" => turn((4 - (payload.first()? & 3)) % 4),
                // 1: left and right swap; 0: top and bottom (a half turn and a left-right
                // flip). As Chromium 156 (libavif) shows the AV1 AVIF suite's mirrored samples
                // (the HEIF texts have named this field's two values both ways).
                b"imir" => {
                    if payload.first()? & 1 == 0 {
                        turn(2);
                    }
                    flip = !flip;
                }
                _ => {}
            }
        }
    }
    Some(match (rot, flip) {
        (0, false) => Orientation::NoTransforms,
        (0, true) => Orientation::FlipHorizontal,
        (1, false) => Orientation::Rotate90,
        (1, true) => Orientation::Rotate90FlipH,
        (2, false) => Orientation::Rotate180,
        (2, true) => Orientation::FlipVertical,
        (3, false) => Orientation::Rotate270,
        _ => Orientation::Rotate270FlipH,
    })
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
    let img = match (kind == Sniffed::Webp).then(|| webp_still(bytes)).flatten() {
        Some(pixels) => pixels?,
        None => DynamicImage::from_decoder(decoder).map_err(decode_err)?,
    };
    Ok((img, orientation, icc))
}

/// A still WebP's pixels decoded by libwebp, the decoder browsers use, bit for bit. `image`'s
/// own WebP decoder differs where the format leaves room: a colour-index pixel past the end of
/// its palette is transparent black in libwebp (and so in Chromium), as the lossless spec says,
/// even in a file whose header declares no alpha (libwebp-test-data's `bad_palette_index.webp`);
/// image-webp showed it opaque. So every still is decoded as RGBA; one whose header declares no
/// alpha and whose pixels are all opaque becomes RGB, as before. `None` for an animation (its
/// first frame is `image`'s) and for a file libwebp cannot read the header of (then `image`
/// says why).
fn webp_still(bytes: &[u8]) -> Option<Result<DynamicImage, TransformError>> {
    let features = webp::BitstreamFeatures::new(bytes)?;
    if features.has_animation() {
        return None;
    }
    let (w, h) = (features.width(), features.height());
    let stride = w.checked_mul(4).and_then(|s| i32::try_from(s).ok());
    let len = (w as usize)
        .checked_mul(h as usize)
        .and_then(|n| n.checked_mul(4));
    let (Some(stride), Some(len)) = (stride, len) else {
        return Some(Err(TransformError::Decode("the WebP is too large".into())));
    };
    let mut rgba = vec![0u8; len];
    // SAFETY: libwebp reads `bytes.len()` bytes of `bytes` and writes at most `len` bytes into
    // `rgba` (`h` rows of `stride` bytes: the size its own header check gave), or nothing and
    // NULL when the file does not decode. Neither buffer is used by it after the call returns.
    let written = unsafe {
        libwebp_sys::WebPDecodeRGBAInto(bytes.as_ptr(), bytes.len(), rgba.as_mut_ptr(), len, stride)
    };
    if written.is_null() {
        return Some(Err(TransformError::Decode(
            "the WebP does not decode (libwebp)".into(),
        )));
    }
    let Some(img) = image::RgbaImage::from_raw(w, h, rgba) else {
        return Some(Err(TransformError::Decode("the WebP is too large".into())));
    };
    let opaque = !features.has_alpha() && img.pixels().all(|p| p[3] == 255);
    Some(Ok(match opaque {
        true => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8()),
        false => DynamicImage::ImageRgba8(img),
    }))
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

#[cfg(test)]
mod avif_orientation_tests {
    //! Link-U's samples (tests/fixtures/av1-avif): their `irot`/`imir` as an orientation.
    use super::*;

    #[test]
    fn link_u_samples() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/av1-avif");
        for (name, want) in [
            ("kimono.avif", Orientation::NoTransforms),
            // Stored turned 90 degrees anticlockwise, shown turned back (`irot` 3).
            ("kimono.rotate90.avif", Orientation::Rotate90),
            ("kimono.rotate270.avif", Orientation::Rotate270),
            ("kimono.mirror-horizontal.avif", Orientation::FlipHorizontal),
            ("kimono.mirror-vertical.avif", Orientation::FlipVertical),
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(avif_transforms(&bytes), Some(want), "{name}");
        }
    }
}
