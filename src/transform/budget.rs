//! What a transform costs in memory at its peak, known before any pixel is decoded, so the
//! mirror can admit transforms against one service-wide budget (`image.memory_bytes`) instead of
//! finding out from the kernel's OOM killer: two concurrent resizes of one legal 8192x6000 AVIF
//! once reached 1.73 GB.
//!
//! The figure is (decoded source pixels × the source format's bytes per pixel) + (output pixels ×
//! the output format's bytes per pixel) + a fixed overhead, the bytes per pixel measured with
//! `examples/peak_memory.rs` (`scripts/peak-memory`: the peak resident set of one transform in a
//! fresh process, per pixel) and rounded up; BENCHMARKS.md "Memory per transform" has the runs.
//! The table errs high: admitting too little costs a wait, too much an OOM kill.

use super::*;

/// Peak bytes per decoded source pixel while a still is decoded and resized, by source format:
/// the decoder's own buffers, the RGB(A) image, and the copy an EXIF rotation makes.
fn decode_bytes_per_pixel(kind: Sniffed) -> u64 {
    match kind {
        // libjpeg-turbo writes RGB (3) straight into our buffer; a rotation copies it (3).
        Sniffed::Jpeg => 6,
        // `image` decodes to the native layout (RGBA16: 8) then converts to 8 bits (4).
        Sniffed::Png => 12,
        // libwebp writes RGBA (4) into our buffer beside its own YUV planes (lossy: 1.5) or
        // ARGB image (lossless: 4); an opaque still then becomes RGB (3) beside the RGBA.
        Sniffed::Webp => 8,
        // The canvas (RGBA), the indexed frame, and the conversion (not measured: rounded up).
        Sniffed::Gif => 8,
        // libaom keeps a mode-info record per 4x4 block (about 9 B/px) beside its frame (1.5 to
        // 6), then aom-decode's RGB (3 to 8) and our 8-bit copy (3 or 4): 17.0 (4:2:0, 8 bits)
        // to 24.8 (4:4:4, 10 bits) measured. `transform::avif` now converts straight into the
        // 8-bit buffer (no RGB in between), so this is 3 to 8 more than needed; kept until
        // measured again. An alpha item is a second image: see `AVIF_ALPHA`.
        Sniffed::Avif => 26,
        _ => 12,
    }
}

/// Peak bytes per output pixel of the resize target and the encoder, by output format.
fn encode_bytes_per_pixel(format: OutFormat) -> u64 {
    match format {
        // The resized RGB(A) (4), libjpeg-turbo's planes, the compressed output.
        OutFormat::Jpeg => 8,
        // The resized RGBA (4), the filtered rows and the deflate window.
        OutFormat::Png => 10,
        // libwebp's ARGB and YUV copies and its analysis buffers.
        OutFormat::Webp => 16,
        // The palette quantiser's buffers.
        OutFormat::Gif => 12,
        // rav1e: source planes, reference frames and its per-block state (17 measured at
        // 8192x6000; small outputs are mostly the fixed overhead).
        OutFormat::Avif => 24,
    }
}

/// What an AVIF's alpha item adds per pixel: its own decode (mode info and frame, a 4:0:0 plane).
const AVIF_ALPHA: u64 = 14;

/// True when an AVIF declares an alpha item (its `auxC` property's URN): searched in the bytes,
/// without parsing the container a second time (the parser copies the payload).
fn avif_has_alpha(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"auxiliary:alpha").is_some()
}

/// Peak bytes per pixel of a 12-bit JPEG: libjpeg-turbo's 16-bit samples and their 8-bit copy.
const JPEG_12_BIT: u64 = 9;

/// Every transform's fixed cost: codec contexts, tables, thread stacks, allocator slack.
pub const OVERHEAD: u64 = 16 << 20;

/// The peak bytes `transform(bytes, plan, limits)` may use (see the module doc). Errors are the
/// transform's own (not an image, over the pixel limits): the caller answers them without
/// admitting anything.
pub fn peak_bytes(bytes: &[u8], plan: &Plan, limits: &Limits) -> Result<u64, TransformError> {
    let (kind, w, h, pixels) = probe_within(bytes, limits)?;
    let frames = frame_count(bytes, kind);
    let format = output_format(plan, kind, OutFormat::from_sniffed(kind), frames)?;
    let swaps = match kind {
        Sniffed::Jpeg => swaps_axes(jpeg_metadata(bytes).orientation),
        Sniffed::Avif => swaps_axes(avif_orientation(bytes)),
        _ => false,
    };
    let (uw, uh) = if swaps { (h, w) } else { (w, h) };
    let g = geometry(uw, uh, plan);
    let out_pixels = u64::from(g.width) * u64::from(g.height);
    // A JPEG decoded at 1/2, 1/4 or 1/8 in the DCT holds that many fewer pixels; a 12-bit one
    // is decoded whole.
    let twelve_bit = kind == Sniffed::Jpeg && jpeg_precision(bytes) == Some(12);
    let decoded = match kind {
        Sniffed::Jpeg if twelve_bit => pixels,
        Sniffed::Jpeg => {
            let denom = [8u64, 4, 2]
                .into_iter()
                .find(|d| 1.0 / *d as f64 >= g.scale)
                .unwrap_or(1);
            pixels.div_ceil(denom * denom) + u64::from(w.max(h))
        }
        _ => pixels,
    };
    let mut per_pixel = decode_bytes_per_pixel(kind);
    if twelve_bit {
        // 16-bit samples (6 bytes a pixel), then their 8-bit copy (3).
        per_pixel = JPEG_12_BIT;
    }
    if kind == Sniffed::Avif && avif_has_alpha(bytes) {
        per_pixel += AVIF_ALPHA;
    }
    let mut peak = decoded
        .saturating_mul(per_pixel)
        .saturating_add(out_pixels.saturating_mul(encode_bytes_per_pixel(format)))
        .saturating_add(OVERHEAD);
    if frames > 1 && format.capabilities().animation {
        // Every resized frame (RGBA) is kept until the animation is written.
        peak = peak.saturating_add((frames as u64).saturating_mul(out_pixels).saturating_mul(4));
    }
    Ok(peak)
}
