//! AVIF sources: what the container says about the primary item (its transformative properties,
//! its `nclx` colour), and its pixels: the AV1 frames decoded by libaom (`aom-decode`, with
//! avif-parse for the container), turned into 8-bit RGB(A) here with the `yuv` crate's matrices,
//! under the colour rules libavif (and so Chromium) applies. Also the containers avif-parse does
//! not read: grids (`grid` items, their descriptor in `mdat` or `idat`) and image sequences
//! with no still image (the first sample of their tracks).

use aom_decode::avif::Avif;
use aom_decode::chroma::{yuv_420, yuv_422, yuv_444};
use aom_decode::color::{ChromaSampling, MatrixCoefficients, Range};
use aom_decode::{FrameTempRef, RowsIters};
use image::metadata::Orientation;
use image::DynamicImage;
use yuv::convert::RGBConvert;
use yuv::YUV;

use super::*;

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

/// The properties (`ipco` boxes: type, payload) that `ipma` associates with the primary item
/// (`pitm`), in association order. `None` when the `meta` box cannot be read that far.
fn primary_properties(bytes: &[u8]) -> Option<Vec<([u8; 4], &[u8])>> {
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
    let mut out = Vec::new();
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
            if item == primary && index > 0 {
                if let Some(property) = properties.get(index - 1) {
                    out.push(*property);
                }
            }
        }
    }
    Some(out)
}

/// How an AVIF's primary image is to be shown (`irot`, then `imir`, as browsers apply them):
/// its transformative properties, in association order. A file that cannot be read that far
/// says nothing here (the decoder refuses it later).
pub(crate) fn avif_orientation(bytes: &[u8]) -> Orientation {
    primary_properties(bytes)
        .and_then(|p| transforms(&p))
        .unwrap_or(Orientation::NoTransforms)
}

fn transforms(properties: &[([u8; 4], &[u8])]) -> Option<Orientation> {
    // Rotation clockwise in quarter turns, then a horizontal flip: the state after each
    // transformative property, in association order.
    let (mut rot, mut flip) = (0u8, false);
    for (kind, payload) in properties {
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
            // 1: left and right swap; 0: top and bottom (a half turn and a left-right flip). As
            // Chromium 156 (libavif) shows the AV1 AVIF suite's mirrored samples (the HEIF texts
            // have named this field's two values both ways).
            b"imir" => {
                if payload.first()? & 1 == 0 {
                    turn(2);
                }
                flip = !flip;
            }
            _ => {}
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

/// The primary item's `nclx` colour property (`colr` of type `nclx`): its matrix coefficients
/// (ITU-T H.273 code) and whether its samples use the full range.
fn nclx(bytes: &[u8]) -> Option<(u16, bool)> {
    primary_properties(bytes)?
        .into_iter()
        .filter(|(kind, _)| kind == b"colr")
        .find_map(|(_, p)| {
            // colour_type, primaries (2), transfer (2), matrix (2), full_range_flag (top bit).
            (p.get(..4)? == b"nclx")
                .then(|| {
                    Some((
                        u16::from_be_bytes(p.get(8..10)?.try_into().ok()?),
                        p.get(10)? & 0x80 != 0,
                    ))
                })
                .flatten()
        })
}

/// How YUV becomes RGB, as libavif decides: the container's `nclx` (matrix and range) when the
/// primary item has one, else what the AV1 sequence header says; a matrix left unspecified (2),
/// or one the `yuv` crate has no coefficients for, is BT.601, libavif's default.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Colour {
    matrix: MatrixCoefficients,
    range: Range,
}

fn colour(nclx: Option<(u16, bool)>, frame: &FrameTempRef<'_>) -> Colour {
    let (matrix, range) = match nclx {
        Some((code, full)) => (
            matrix_of(code),
            if full { Range::Full } else { Range::Limited },
        ),
        None => (frame.matrix_coefficients(), frame.range()),
    };
    let matrix = match matrix {
        Some(m) if RGBConvert::<u8>::new(range, m).is_ok() => m,
        _ => MatrixCoefficients::BT601,
    };
    Colour { matrix, range }
}

/// An H.273 matrix code as the `yuv` crate names it; `None` for unspecified and reserved codes.
fn matrix_of(code: u16) -> Option<MatrixCoefficients> {
    use MatrixCoefficients::*;
    Some(match code {
        0 => Identity,
        1 => BT709,
        4 => FCC,
        5 => BT470BG,
        6 => BT601,
        7 => SMPTE240,
        8 => YCgCo,
        // Constant luminance needs a post-step the `yuv` crate does not do: its NCL matrix is the
        // nearest (as aom-decode maps it too).
        9 | 10 => BT2020NCL,
        11 => SMPTE2085,
        12 => ChromatNCL,
        13 => ChromatCL,
        14 => ICtCp,
        _ => return None,
    })
}

/// 16-bit samples to 8: as `image`'s own conversion rounds (v * 255 / 65535).
fn narrow(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32767) / 65535) as u8
}

/// The colour frame as 8-bit RGB, or RGBA (alpha 255, to be filled) when `alpha`: written
/// straight into the `image` buffer, one allocation of exactly its size.
fn rgb_of(
    frame: &FrameTempRef<'_>,
    c: Colour,
    alpha: bool,
) -> Result<DynamicImage, TransformError> {
    let err = |e: &dyn std::fmt::Display| TransformError::Decode(format!("AVIF: {e}"));
    let channels = if alpha { 4 } else { 3 };
    let mut raw = Vec::new();
    let (w, h) = match frame.rows_iter().map_err(|e| err(&e))? {
        RowsIters::YuvPlanes8 {
            y,
            u,
            v,
            chroma_sampling,
        } => {
            let conv = RGBConvert::<u8>::new(c.range, c.matrix).map_err(|e| err(&e))?;
            let (w, h) = (y.width(), y.height());
            raw.reserve_exact(w * h * channels);
            let px: Box<dyn Iterator<Item = YUV<u8>>> = match chroma_sampling {
                ChromaSampling::Cs444 => Box::new(yuv_444(y, u, v)),
                ChromaSampling::Cs422 => Box::new(yuv_422(y, u, v)),
                _ => Box::new(yuv_420(y, u, v)),
            };
            for p in px {
                let rgb = conv.to_rgb(p);
                raw.extend_from_slice(&[rgb.r, rgb.g, rgb.b, 255][..channels]);
            }
            (w, h)
        }
        RowsIters::YuvPlanes16 {
            y,
            u,
            v,
            chroma_sampling,
            depth,
        } => {
            let conv = RGBConvert::<u16>::new(c.range, c.matrix, depth).map_err(|e| err(&e))?;
            let (w, h) = (y.width(), y.height());
            raw.reserve_exact(w * h * channels);
            let px: Box<dyn Iterator<Item = YUV<[u8; 2]>>> = match chroma_sampling {
                ChromaSampling::Cs444 => Box::new(yuv_444(y, u, v)),
                ChromaSampling::Cs422 => Box::new(yuv_422(y, u, v)),
                _ => Box::new(yuv_420(y, u, v)),
            };
            for p in px {
                let rgb = conv.to_rgb(YUV {
                    y: u16::from_ne_bytes(p.y),
                    u: u16::from_ne_bytes(p.u),
                    v: u16::from_ne_bytes(p.v),
                });
                raw.extend_from_slice(
                    &[narrow(rgb.r), narrow(rgb.g), narrow(rgb.b), 255][..channels],
                );
            }
            (w, h)
        }
        // Monochrome: the luma, scaled from its range, is the grey.
        RowsIters::Mono8(y) => {
            let conv = RGBConvert::<u8>::new(c.range, MatrixCoefficients::Identity)
                .map_err(|e| err(&e))?;
            let (w, h) = (y.width(), y.height());
            raw.reserve_exact(w * h * channels);
            for row in y {
                for &l in row {
                    let g = conv.to_luma(l);
                    raw.extend_from_slice(&[g, g, g, 255][..channels]);
                }
            }
            (w, h)
        }
        RowsIters::Mono16(y, depth) => {
            let conv = RGBConvert::<u16>::new(c.range, MatrixCoefficients::Identity, depth)
                .map_err(|e| err(&e))?;
            let (w, h) = (y.width(), y.height());
            raw.reserve_exact(w * h * channels);
            for row in y {
                for &l in row {
                    let g = narrow(conv.to_luma(u16::from_ne_bytes(l)));
                    raw.extend_from_slice(&[g, g, g, 255][..channels]);
                }
            }
            (w, h)
        }
    };
    let size = u32::try_from(w).ok().zip(u32::try_from(h).ok());
    let img = size.and_then(|(w, h)| match alpha {
        true => image::RgbaImage::from_raw(w, h, raw).map(DynamicImage::ImageRgba8),
        false => image::RgbImage::from_raw(w, h, raw).map(DynamicImage::ImageRgb8),
    });
    img.ok_or_else(|| TransformError::Decode("AVIF: the planes do not match the image size".into()))
}

/// Writes the alpha frame's luma (full or limited range, as its own sequence header says; no
/// matrix) into `img`'s alpha channel, un-premultiplying the colour when `premultiplied`.
fn add_alpha(
    img: &mut image::RgbaImage,
    frame: &FrameTempRef<'_>,
    premultiplied: bool,
) -> Result<(), TransformError> {
    let err = |e: &dyn std::fmt::Display| TransformError::Decode(format!("AVIF alpha: {e}"));
    let range = frame.range();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mismatch =
        || TransformError::Decode("AVIF: the alpha image is not the image's size".into());
    let mut pixels = img.pixels_mut();
    let mut put = |a: u8| -> Result<(), TransformError> {
        let p = pixels.next().ok_or_else(mismatch)?;
        p[3] = a;
        // Un-premultiplied as libavif does: rounded, and no colour under full transparency.
        if premultiplied && a != 255 {
            for c in 0..3 {
                p[c] = match a {
                    0 => 0,
                    a => ((u32::from(p[c]) * 255 + u32::from(a) / 2) / u32::from(a)).min(255) as u8,
                };
            }
        }
        Ok(())
    };
    match frame.rows_iter().map_err(|e| err(&e))? {
        RowsIters::YuvPlanes8 { y, .. } | RowsIters::Mono8(y) => {
            if (y.width(), y.height()) != (w, h) {
                return Err(mismatch());
            }
            let conv =
                RGBConvert::<u8>::new(range, MatrixCoefficients::Identity).map_err(|e| err(&e))?;
            for row in y {
                for &l in row {
                    put(conv.to_luma(l))?;
                }
            }
        }
        RowsIters::YuvPlanes16 { y, depth, .. } | RowsIters::Mono16(y, depth) => {
            if (y.width(), y.height()) != (w, h) {
                return Err(mismatch());
            }
            let conv = RGBConvert::<u16>::new(range, MatrixCoefficients::Identity, depth)
                .map_err(|e| err(&e))?;
            for row in y {
                for &l in row {
                    put(narrow(conv.to_luma(u16::from_ne_bytes(l))))?;
                }
            }
        }
    }
    Ok(())
}

/// The bytes avif-parse is given: the file itself, or, for an image sequence (major brand
/// `avis`) that carries a still image too (a `meta` box with a primary item, which libavif's
/// encoder writes: the first frame), a copy whose major brand reads `avif`. avif-parse refuses
/// every major brand but `avif`; the still it then reads is the one a sequence shows first.
/// `None` for a sequence with no still (its frames only in tracks: [`first_frames`]).
pub(crate) fn as_still(bytes: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    match bytes.get(8..12)? {
        b"avif" => Some(std::borrow::Cow::Borrowed(bytes)),
        b"avis" if has_primary_item(bytes) => {
            let mut copy = bytes.to_vec();
            copy[8..12].copy_from_slice(b"avif");
            Some(std::borrow::Cow::Owned(copy))
        }
        _ => None,
    }
}

/// Whether the file's `meta` box names a primary item (`pitm`): in a sequence, its still.
fn has_primary_item(bytes: &[u8]) -> bool {
    child(bytes, b"meta")
        .and_then(|meta| child(meta.get(4..)?, b"pitm"))
        .is_some()
}

/// The first frame of an image sequence that has no still image (an `avis` file whose `meta`
/// names no primary item: its frames are in its tracks alone), as libavif (and so Chromium) shows
/// it: the first sample of the colour track, and of the alpha track when there is one.
pub(crate) struct FirstFrames<'a> {
    /// The colour track's first AV1 sample.
    pub(crate) colour: &'a [u8],
    /// The alpha track's (`auxv` handler), if any.
    pub(crate) alpha: Option<&'a [u8]>,
    /// The colour track's `nclx` (in its `av01` sample entry), if any.
    nclx: Option<(u16, bool)>,
    /// A `prem` track reference: the colour is premultiplied by the alpha.
    premultiplied: bool,
}

/// The first samples of `bytes`' tracks, when `bytes` is an image sequence with no still
/// ([`as_still`] is `None`); `None` otherwise, or when the tracks cannot be read that far.
pub(crate) fn first_frames(bytes: &[u8]) -> Option<FirstFrames<'_>> {
    // (Not through `as_still`, which copies a sequence with a still whole.)
    if bytes.get(8..12)? != b"avis" || has_primary_item(bytes) {
        return None;
    }
    let moov = child(bytes, b"moov")?;
    let mut colour = None;
    let mut alpha = None;
    let mut premultiplied = false;
    for (_, trak) in boxes(moov).filter(|(kind, _)| kind == b"trak") {
        let mdia = child(trak, b"mdia")?;
        // hdlr: version and flags, pre_defined, then the handler type.
        let handler = child(mdia, b"hdlr")?.get(8..12)?;
        let stbl = child(child(mdia, b"minf")?, b"stbl")?;
        let (entry, sample) = first_sample(bytes, stbl)?;
        premultiplied |= child(trak, b"tref").is_some_and(|t| child(t, b"prem").is_some());
        match handler {
            b"auxv" if alpha.is_none() => alpha = Some(sample),
            b"pict" | b"vide" if colour.is_none() => colour = Some((entry, sample)),
            _ => {}
        }
    }
    let (entry, colour) = colour?;
    // The `av01` sample entry: a VisualSampleEntry's 78 bytes of fields, then its boxes.
    let nclx = boxes(entry.get(78..)?)
        .filter(|(kind, _)| kind == b"colr")
        .find_map(|(_, p)| {
            (p.get(..4)? == b"nclx").then_some(())?;
            Some((
                u16::from_be_bytes(p.get(8..10)?.try_into().ok()?),
                p.get(10)? & 0x80 != 0,
            ))
        });
    Some(FirstFrames {
        colour,
        alpha,
        nclx,
        premultiplied,
    })
}

/// A track's sample table's first `av01` sample entry (payload) and first sample: the first
/// chunk's offset (`stco`/`co64`) and the first sample's size (`stsz`), within `bytes`.
fn first_sample<'a>(bytes: &'a [u8], stbl: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    // stsd: version and flags, entry count, then the entries as boxes.
    let (kind, entry) = boxes(child(stbl, b"stsd")?.get(8..)?).next()?;
    if kind != *b"av01" {
        return None;
    }
    let number = |b: &[u8], at: usize, n: usize| {
        let mut f = Fields { data: b, at };
        f.take(n)
    };
    let stsz = child(stbl, b"stsz")?;
    let size = match number(stsz, 4, 4)? {
        0 if number(stsz, 8, 4)? > 0 => number(stsz, 12, 4)?,
        0 => return None,
        fixed => fixed,
    };
    let offset = match (child(stbl, b"stco"), child(stbl, b"co64")) {
        (Some(stco), _) if number(stco, 4, 4)? > 0 => number(stco, 8, 4)?,
        (_, Some(co64)) if number(co64, 4, 4)? > 0 => number(co64, 8, 8)?,
        _ => return None,
    };
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    Some((entry, bytes.get(start..end)?))
}

/// The AV1 sequence header's largest frame of an AV1 sample: what libaom allocates for it.
pub(crate) fn frame_size(sample: &[u8]) -> Option<(u32, u32)> {
    let m = aom_decode::avif::AV1Metadata::parse_av1_bitstream(sample).ok()?;
    Some((m.max_frame_width.get(), m.max_frame_height.get()))
}

/// Decodes a sequence's first frame ([`first_frames`]), with its alpha frame applied.
fn decode_first_frames(f: &FirstFrames<'_>) -> Result<DynamicImage, TransformError> {
    let err = |e: &dyn std::fmt::Display| TransformError::Decode(format!("AVIF sequence: {e}"));
    let config = aom_decode::Config { threads: 1 };
    let mut decoder = aom_decode::Decoder::new(&config).map_err(|e| err(&e))?;
    let frame = decoder.decode_frame(f.colour).map_err(|e| err(&e))?;
    let mut img = rgb_of(&frame, colour(f.nclx, &frame), f.alpha.is_some())?;
    if let (DynamicImage::ImageRgba8(rgba), Some(alpha)) = (&mut img, f.alpha) {
        let mut decoder = aom_decode::Decoder::new(&config).map_err(|e| err(&e))?;
        let frame = decoder.decode_frame(alpha).map_err(|e| err(&e))?;
        add_alpha(rgba, &frame, f.premultiplied)?;
    }
    Ok(img)
}

/// A big-endian reader over a box's payload, for the item boxes' variable-size fields.
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    /// The next `n` bytes (0, 1, 2, 4 or 8) as a number; 0 bytes read as 0.
    fn take(&mut self, n: usize) -> Option<u64> {
        let bytes = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    }
}

/// A grid image (`grid` item, ISO/IEC 23008-12 6.6.2.3): the canvas and the tiles, row by row,
/// each tile's AV1 data as the file's extents give it.
pub(crate) struct Grid {
    pub(crate) width: u32,
    pub(crate) height: u32,
    columns: u32,
    tiles: Vec<Vec<u8>>,
}

/// The primary item when it is a grid: its descriptor, and its tiles (`dimg` references, in
/// order) read through `iloc`. `None` when the primary item is no grid or the boxes cannot be
/// read (then avif-parse decides what the file is).
pub(crate) fn grid(bytes: &[u8]) -> Option<Grid> {
    let meta = child(bytes, b"meta")?.get(4..)?;
    let pitm = child(meta, b"pitm")?;
    let primary = match pitm.first()? {
        0 => u64::from(u16::from_be_bytes(pitm.get(4..6)?.try_into().ok()?)),
        _ => u64::from(u32::from_be_bytes(pitm.get(4..8)?.try_into().ok()?)),
    };
    // iinf: the primary item's type.
    let iinf = child(meta, b"iinf")?;
    let entries = match iinf.first()? {
        0 => 6,
        _ => 8,
    };
    let is_grid = boxes(iinf.get(entries..)?).any(|(kind, infe)| {
        let mut f = Fields { data: infe, at: 0 };
        let version = f.take(1).unwrap_or(0);
        f.at = 4;
        let id = f.take(if version >= 3 { 4 } else { 2 });
        f.take(2); // protection index
        kind == *b"infe"
            && version >= 2
            && id == Some(primary)
            && infe.get(f.at..f.at + 4) == Some(b"grid")
    });
    if !is_grid {
        return None;
    }
    // iref: the primary item's `dimg` references, the tiles in order.
    let iref = child(meta, b"iref")?;
    let wide = *iref.first()? != 0;
    let id_size = if wide { 4 } else { 2 };
    let tile_ids: Vec<u64> = boxes(iref.get(4..)?)
        .filter(|(kind, _)| kind == b"dimg")
        .find_map(|(_, r)| {
            let mut f = Fields { data: r, at: 0 };
            (f.take(id_size)? == primary).then_some(())?;
            let count = f.take(2)?;
            (0..count).map(|_| f.take(id_size)).collect()
        })?;
    // iloc: where each item's data lies: construction method 0, offsets into the file; 1,
    // offsets into the `idat` box (libheif puts grid descriptors there).
    let iloc = child(meta, b"iloc")?;
    let idat = child(meta, b"idat").unwrap_or_default();
    let mut f = Fields { data: iloc, at: 0 };
    let version = f.take(1)?;
    f.at = 4;
    let sizes = f.take(2)?;
    let (offset_size, length_size) = ((sizes >> 12) as usize, ((sizes >> 8) & 15) as usize);
    let (base_size, index_size) = (((sizes >> 4) & 15) as usize, (sizes & 15) as usize);
    // The standard allows 0, 4 and 8 bytes for each field.
    if [offset_size, length_size, base_size, index_size]
        .iter()
        .any(|n| !matches!(n, 0 | 4 | 8))
    {
        return None;
    }
    let per_extent = offset_size + length_size + if version >= 1 { index_size } else { 0 };
    let count = f.take(if version < 2 { 2 } else { 4 })?;
    let mut located = std::collections::HashMap::new();
    // Only the grid's own items are copied, and never more than the file holds in all: extents
    // that name one range many times cannot make the copies outgrow the file.
    let mut copied = 0usize;
    let needed: std::collections::HashSet<u64> =
        tile_ids.iter().copied().chain([primary]).collect();
    for _ in 0..count {
        let id = f.take(if version < 2 { 2 } else { 4 })?;
        let method = if version >= 1 { f.take(2)? & 15 } else { 0 };
        f.take(2)?; // data reference index
        let base = f.take(base_size)?;
        let extents = f.take(2)?;
        // Extents of no bytes at all would loop for nothing: at most one such; and the listed
        // ones must fit in what is left of the box.
        let room = (iloc.len() - f.at.min(iloc.len())) as u64;
        if (per_extent == 0 && extents > 1) || extents * per_extent as u64 > room {
            return None;
        }
        let source: &[u8] = match method {
            0 => bytes,
            1 => idat,
            _ => &[],
        };
        let wanted = method <= 1 && needed.contains(&id);
        let mut data = Vec::new();
        for _ in 0..extents {
            if version >= 1 && index_size > 0 {
                f.take(index_size)?;
            }
            let offset = base.checked_add(f.take(offset_size)?)?;
            let length = f.take(length_size)?;
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(usize::try_from(length).ok()?)?;
            if wanted {
                copied = copied.checked_add(end - start)?;
                if copied > bytes.len() {
                    return None;
                }
                data.extend_from_slice(source.get(start..end)?);
            }
        }
        if wanted {
            located.insert(id, data);
        }
    }
    let descriptor = located.get(&primary)?;
    let mut d = Fields {
        data: descriptor,
        at: 1,
    };
    let field = if d.take(1)? & 1 == 1 { 4 } else { 2 };
    let (rows, columns) = (d.take(1)? + 1, d.take(1)? + 1);
    let (width, height) = (d.take(field)?, d.take(field)?);
    if rows * columns != tile_ids.len() as u64 {
        return None;
    }
    let tiles = tile_ids
        .iter()
        .map(|id| located.remove(id))
        .collect::<Option<Vec<Vec<u8>>>>()?;
    // Every tile one size, read from its AV1 sequence header before anything is decoded, and
    // the tiles covering the canvas with less than a tile to spare (the standard's rule): a
    // canvas that says small over tiles that say huge is no grid here, and fails to decode.
    let size = |t: &[u8]| frame_size(t).map(|(w, h)| (u64::from(w), u64::from(h)));
    let (tw, th) = size(tiles.first()?)?;
    let covers = |tile: u64, n: u64, canvas: u64| tile * n >= canvas && tile * (n - 1) < canvas;
    if tiles.iter().any(|t| size(t) != Some((tw, th)))
        || !covers(tw, columns, width)
        || !covers(th, rows, height)
        // A tile never larger than the canvas, so what `image.max_pixels` checks on the
        // canvas bounds every tile too (a one-column grid's tile would pass `covers` at any
        // width).
        || tw > width
        || th > height
    {
        return None;
    }
    Some(Grid {
        width: u32::try_from(width).ok()?,
        height: u32::try_from(height).ok()?,
        columns: u32::try_from(columns).ok()?,
        tiles,
    })
}

/// A grid's canvas: each tile decoded by libaom and converted as the primary item's colour says,
/// laid left to right, top to bottom, clipped to the canvas (tiles are all one size). Grids with
/// an alpha item are refused (none seen yet).
fn decode_grid(bytes: &[u8], g: &Grid) -> Result<DynamicImage, TransformError> {
    let err = |e: &dyn std::fmt::Display| TransformError::Decode(format!("AVIF grid: {e}"));
    if memchr::memmem::find(bytes, b"auxiliary:alpha").is_some() {
        return Err(TransformError::Unsupported("AVIF grid with alpha"));
    }
    let mut decoder =
        aom_decode::Decoder::new(&aom_decode::Config { threads: 1 }).map_err(|e| err(&e))?;
    let mut canvas = image::RgbImage::new(g.width, g.height);
    // The grid's colour, read once (not per tile: a grid may have 65536).
    let nclx = nclx(bytes);
    let mut tile_size = None;
    for (i, tile) in g.tiles.iter().enumerate() {
        let frame = decoder.decode_frame(tile).map_err(|e| err(&e))?;
        let DynamicImage::ImageRgb8(tile) = rgb_of(&frame, colour(nclx, &frame), false)? else {
            return Err(TransformError::Decode(
                "AVIF grid: a tile is not RGB".into(),
            ));
        };
        // Every tile as large as the first (their headers said so; their frames must too).
        if *tile_size.get_or_insert(tile.dimensions()) != tile.dimensions() {
            return Err(TransformError::Decode(
                "AVIF grid: tiles of different sizes".into(),
            ));
        }
        let i = i as u32;
        let (x, y) = (
            (i % g.columns) * tile.width(),
            (i / g.columns) * tile.height(),
        );
        image::imageops::replace(&mut canvas, &tile, i64::from(x), i64::from(y));
    }
    Ok(DynamicImage::ImageRgb8(canvas))
}

/// Decodes an AVIF's primary image (a sequence's still, a grid's canvas) with its alpha item
/// applied (un-premultiplied when the file says so), as 8-bit RGB(A): libaom decodes the AV1 frames, the colour becomes RGB under the
/// rules of [`Colour`], and each frame is converted as soon as it is decoded (the decoder's
/// buffers are reused for the alpha frame). Its size was checked by [`probe`] against
/// `image.max_pixels` from the AV1 sequence header, the most any frame of it can be.
pub(crate) fn decode_avif(bytes: &[u8]) -> Result<DynamicImage, TransformError> {
    let err = |e: &dyn std::fmt::Display| TransformError::Decode(format!("AVIF: {e}"));
    if let Some(g) = grid(bytes) {
        return decode_grid(bytes, &g);
    }
    if let Some(frames) = first_frames(bytes) {
        return decode_first_frames(&frames);
    }
    let config = aom_decode::Config { threads: 1 };
    let still = as_still(bytes).ok_or(TransformError::Unsupported("AVIF sequence"))?;
    let parsed = Avif::parse_avif(&still).map_err(|e| err(&e))?;
    let (has_alpha, premultiplied) = (parsed.alpha_item.is_some(), parsed.premultiplied_alpha);
    let mut avif = Avif::from_parsed_avif_data(parsed, &config).map_err(|e| err(&e))?;
    let mut img = {
        let frame = avif.raw_color_data().map_err(|e| err(&e))?;
        rgb_of(&frame, colour(nclx(bytes), &frame), has_alpha)?
    };
    if let DynamicImage::ImageRgba8(rgba) = &mut img {
        let frame = avif
            .raw_alpha_data()
            .map_err(|e| err(&e))?
            .ok_or_else(|| TransformError::Decode("AVIF: the alpha item does not decode".into()))?;
        add_alpha(rgba, &frame, premultiplied)?;
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
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
            assert_eq!(avif_orientation(&bytes), want, "{name}");
        }
    }

    /// The made sequence with no still is read by its tracks: the colour track's first sample
    /// and the alpha track's, each an AV1 frame of the sequence's size; the sequence with its
    /// still is not (its still is read instead), nor is a still image.
    #[test]
    fn a_sequence_without_a_still_is_read_by_its_tracks() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/av1-avif");
        let bytes = std::fs::read(dir.join("sequence-alpha-no-still.avif")).unwrap();
        assert!(as_still(&bytes).is_none());
        let f = first_frames(&bytes).expect("the tracks' first frames");
        assert_eq!(frame_size(f.colour), Some((256, 192)));
        assert_eq!(f.alpha.and_then(frame_size), Some((256, 192)));
        assert!(!f.premultiplied);
        for still in ["sequence-alpha.avif", "fox.profile0.8bpc.yuv420.avif"] {
            let bytes = std::fs::read(dir.join(still)).unwrap();
            assert!(first_frames(&bytes).is_none(), "{still}");
        }
        // Cut a few bytes into `mdat`: the first sample runs past the end; no frames, no panic.
        let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap();
        assert!(first_frames(&bytes[..mdat + 16]).is_none());
    }

    /// The made 2x2 grid is read as one (256x192, four tiles); the same file whose descriptor
    /// claims a canvas four times wider than its tiles cover is not.
    #[test]
    fn grids_are_read_and_checked() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/av1-avif");
        let bytes = std::fs::read(dir.join("grid.avif")).unwrap();
        let g = grid(&bytes).expect("a grid");
        assert_eq!(
            (g.width, g.height, g.columns, g.tiles.len()),
            (256, 192, 2, 4)
        );
        // version 0, flags 0, 2 rows, 2 columns, 256, 192
        let descriptor = [0u8, 0, 1, 1, 1, 0, 0, 0xC0];
        let at = bytes
            .windows(8)
            .position(|w| w == descriptor)
            .expect("the descriptor");
        let mut wide = bytes.clone();
        wide[at + 4] = 4; // 1024 wide
        assert!(grid(&wide).is_none());
        assert!(grid(&std::fs::read(dir.join("kimono.avif")).unwrap()).is_none());
    }
}
