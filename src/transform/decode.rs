//! Decoding a still source: JPEG through libjpeg-turbo (DCT-scaled, EXIF orientation and ICC
//! read from its markers), PNG and GIF through `image` with allocation limits that follow the
//! source's own size, a still WebP's pixels through libwebp (its metadata through `image`). AVIF
//! has a module of its own (`avif`).

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
    if jpeg_precision(bytes) == Some(12) {
        return decode_jpeg12(bytes);
    }
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

/// A JPEG's sample precision in bits, from its first frame header (SOF0 to SOF15; 8 for baseline,
/// 8 or 12 for extended and progressive, 2 to 16 for lossless); `None` when no frame header is
/// found before the scan.
pub(crate) fn jpeg_precision(b: &[u8]) -> Option<u8> {
    let mut i = 2usize;
    loop {
        if *b.get(i)? != 0xFF {
            return None;
        }
        let marker = *b.get(i + 1)?;
        match marker {
            // Fill bytes before a marker.
            0xFF => i += 1,
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => i += 2,
            // The scan starts: no frame header came first.
            0xDA | 0xD9 => return None,
            // Frame headers, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => return b.get(i + 4).copied(),
            _ => {
                let len = usize::from(u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]));
                i = i.checked_add(2 + len)?;
            }
        }
    }
}

/// Decodes a 12-bit JPEG (extended sequential or progressive, as medical and some camera
/// pipelines write) through libjpeg-turbo 3's 12-bit API (`tj3Decompress12`, which the
/// `turbojpeg` crate does not wrap), at full size (no DCT scaling), rounding the samples to 8
/// bits. Browsers do not show 12-bit JPEGs at all; imgmirror's variants do.
fn decode_jpeg12(bytes: &[u8]) -> Result<DynamicImage, TransformError> {
    use turbojpeg::raw;
    /// The decompressor, destroyed when dropped.
    struct Handle(raw::tjhandle);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tj3Init and is destroyed once.
            unsafe { raw::tj3Destroy(self.0) }
        }
    }
    let fail = |h: &Handle, what: &str| {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle (or a
        // static one), read before the handle is used again.
        let why = unsafe { std::ffi::CStr::from_ptr(raw::tj3GetErrorStr(h.0)) };
        TransformError::Decode(format!("12-bit JPEG: {what}: {}", why.to_string_lossy()))
    };
    // SAFETY: tj3Init takes no pointers; a NULL result is checked.
    let h = Handle(unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as i32) });
    if h.0.is_null() {
        return Err(TransformError::Decode(
            "12-bit JPEG: no decompressor".into(),
        ));
    }
    // SAFETY (every call below): `h` is a live decompressor; libjpeg-turbo reads `bytes.len()`
    // bytes of `bytes`, and writes at most `width * height * 3` samples into `samples`, which
    // holds exactly that many (pitch 0: rows of `width * 3` samples).
    unsafe {
        // Corrupt or truncated data is an error (as the 8-bit path), not a half-grey image.
        raw::tj3Set(h.0, raw::TJPARAM_TJPARAM_STOPONWARNING as i32, 1);
        // A progressive file of thousands of scans is refused, not decoded for seconds.
        raw::tj3Set(h.0, raw::TJPARAM_TJPARAM_SCANLIMIT as i32, 500);
        if raw::tj3DecompressHeader(h.0, bytes.as_ptr(), bytes.len() as raw::size_t) != 0 {
            return Err(fail(&h, "header"));
        }
    }
    // SAFETY: as above.
    let (w, height) = unsafe {
        (
            raw::tj3Get(h.0, raw::TJPARAM_TJPARAM_JPEGWIDTH as i32),
            raw::tj3Get(h.0, raw::TJPARAM_TJPARAM_JPEGHEIGHT as i32),
        )
    };
    let (Ok(w), Ok(height)) = (u32::try_from(w), u32::try_from(height)) else {
        return Err(TransformError::Decode("12-bit JPEG: no size".into()));
    };
    let len = (w as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| TransformError::Decode("12-bit JPEG: too large".into()))?;
    let mut samples = vec![0i16; len];
    // SAFETY: as above.
    let status = unsafe {
        raw::tj3Decompress12(
            h.0,
            bytes.as_ptr(),
            bytes.len() as raw::size_t,
            samples.as_mut_ptr(),
            0,
            raw::TJPF_TJPF_RGB,
        )
    };
    if status != 0 {
        return Err(fail(&h, "data"));
    }
    drop(h);
    let narrow = |v: i16| ((u32::from(v.clamp(0, 4095) as u16) * 255 + 2047) / 4095) as u8;
    // Into a buffer of its own (collecting from `samples` by value would reuse, and keep, the
    // 16-bit allocation, twice the size).
    let pixels: Vec<u8> = samples.iter().copied().map(narrow).collect();
    drop(samples);
    image::RgbImage::from_raw(w, height, pixels)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| TransformError::Decode("12-bit JPEG: too few samples".into()))
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
