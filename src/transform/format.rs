//! Output formats and their capability table: what each can hold (alpha, animation, largest
//! side, quality, progressive). Every decision about a format reads it.

use super::*;

/// Formats the pipeline writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutFormat {
    /// JPEG (libjpeg-turbo).
    Jpeg,
    /// PNG.
    Png,
    /// WebP (libwebp), still or animated.
    Webp,
    /// GIF, still or animated.
    Gif,
    /// AVIF (rav1e).
    Avif,
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
    pub const ALL: [OutFormat; 5] = [
        OutFormat::Jpeg,
        OutFormat::Png,
        OutFormat::Webp,
        OutFormat::Gif,
        OutFormat::Avif,
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
            // Stills only (rav1e through ravif writes no AVIF sequences: an animation asked as
            // AVIF is its first frame). 16,384 is AV1 level 6's widest picture, the largest that
            // every AV1 decoder must take.
            OutFormat::Avif => Capabilities {
                alpha: true,
                animation: false,
                max_side: 16_384,
                quality: Some((1, 100)),
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

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            OutFormat::Jpeg => "image/jpeg",
            OutFormat::Png => "image/png",
            OutFormat::Webp => "image/webp",
            OutFormat::Gif => "image/gif",
            OutFormat::Avif => "image/avif",
        }
    }

    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            OutFormat::Jpeg => "jpeg",
            OutFormat::Png => "png",
            OutFormat::Webp => "webp",
            OutFormat::Gif => "gif",
            OutFormat::Avif => "avif",
        }
    }

    /// The output format a route's format option asks for; `None` for `original` (the source's).
    pub fn from_route(f: Format) -> Option<OutFormat> {
        match f {
            Format::Jpeg => Some(OutFormat::Jpeg),
            Format::Png => Some(OutFormat::Png),
            Format::Webp => Some(OutFormat::Webp),
            Format::Gif => Some(OutFormat::Gif),
            Format::Avif => Some(OutFormat::Avif),
            Format::Original => None,
        }
    }

    /// The output format that writes what `s` is; `None` for formats the pipeline does not write.
    pub fn from_sniffed(s: Sniffed) -> Option<OutFormat> {
        match s {
            Sniffed::Jpeg => Some(OutFormat::Jpeg),
            Sniffed::Png => Some(OutFormat::Png),
            Sniffed::Webp => Some(OutFormat::Webp),
            Sniffed::Gif => Some(OutFormat::Gif),
            Sniffed::Avif => Some(OutFormat::Avif),
            _ => None,
        }
    }
}
