//! Resizing (fast_image_resize, Lanczos3) and encoding a still: JPEG 4:2:0 (baseline or
//! progressive), PNG, lossy WebP, GIF, AVIF (rav1e through ravif), with a colour profile of sane
//! size carried where the format holds one (`colour`).

use fast_image_resize as fir;
use image::DynamicImage;

use super::*;

pub(crate) fn resize(
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

pub(crate) fn encode(
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
        OutFormat::Avif => encode_avif(img, quality).map_err(|e| enc(format!("AVIF: {e}"))),
    }
}

/// rav1e's speed preset for AVIF (1 slowest to 10 fastest); BENCHMARKS.md has the measurement
/// behind it (size and DSSIM against the source at each speed).
pub const AVIF_SPEED: u8 = 10;

/// AVIF through ravif: 8-bit YCbCr 4:4:4 at rav1e speed [`AVIF_SPEED`], one thread (the transform
/// pool is the parallelism), alpha written only when some pixel is not opaque.
fn encode_avif(img: &DynamicImage, quality: u8) -> Result<Vec<u8>, ravif::Error> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let q = f32::from(quality.clamp(1, 100));
    let encoder = ravif::Encoder::new()
        .with_quality(q)
        .with_alpha_quality(q)
        .with_speed(AVIF_SPEED)
        .with_bit_depth(ravif::BitDepth::Eight)
        .with_num_threads(Some(1));
    let encoded = match img {
        DynamicImage::ImageRgba8(rgba) => {
            let px: Vec<ravif::RGBA8> = rgba
                .pixels()
                .map(|p| ravif::RGBA8::new(p[0], p[1], p[2], p[3]))
                .collect();
            encoder.encode_rgba(ravif::Img::new(&px[..], w, h))?
        }
        other => {
            let px: Vec<ravif::RGB8> = flatten(other)
                .pixels()
                .map(|p| ravif::RGB8::new(p[0], p[1], p[2]))
                .collect();
            encoder.encode_rgb(ravif::Img::new(&px[..], w, h))?
        }
    };
    Ok(encoded.avif_file)
}
