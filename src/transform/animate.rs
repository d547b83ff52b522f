//! Animations: every frame of an animated GIF or WebP resized to the same geometry and
//! re-encoded with its delay, as GIF (frame by frame) or WebP (libwebp's animation encoder).

use std::io::Cursor;

use image::DynamicImage;

use super::*;

/// Resizes every frame of an animated GIF or WebP to `geometry`, keeping each frame's delay, and
/// encodes an animation that loops forever: GIF frame by frame (one canvas and one output frame
/// in memory), WebP through libwebp's animation encoder (the resized frames are held until it
/// assembles them; the caller bounds their total). The decoders composite each frame onto the
/// full canvas.
pub(crate) fn resize_animation(
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
            set_last_duration(&mut out, u32::try_from(start).unwrap_or(0));
        }
    }
    Ok(out)
}

/// Sets the last frame's duration in an animated WebP so that all frames add up to `total_ms`.
/// The `webp` crate ends an animation with a timestamp of 0, which leaves libwebp to guess the
/// last frame's duration (half the one asked for, measured with `webpmux -info`). A duration is
/// the 24-bit field at offset 12 of each `ANMF` chunk; frames libwebp merged are accounted for
/// because the last one gets whatever the earlier ones leave.
pub(crate) fn set_last_duration(webp: &mut [u8], total_ms: u32) {
    let duration = |b: &[u8], at: usize| -> u32 {
        b.get(at..at + 3)
            .map_or(0, |d| u32::from_le_bytes([d[0], d[1], d[2], 0]))
    };
    let (mut elapsed, mut last) = (0u32, None::<usize>);
    for c in webp_chunks(webp).filter(|c| &c.fourcc == b"ANMF" && c.size >= 16) {
        if let Some(prev) = last {
            elapsed = elapsed.saturating_add(duration(webp, prev));
        }
        last = Some(c.start + 12);
    }
    if let Some(field) = last.and_then(|at| webp.get_mut(at..at + 3)) {
        let ms = total_ms.saturating_sub(elapsed).min(0xFF_FFFF);
        field.copy_from_slice(&ms.to_le_bytes()[..3]);
    }
}
