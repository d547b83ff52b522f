//! Images made for tests (animations of solid frames) and decoders independent of the encoders
//! under test: `image`'s GIF and WebP frame readers, and Debian's `avifdec` (libavif with dav1d),
//! `gifsicle` and `webpmux` run as programs on the bytes the pipeline wrote.

use std::process::Command;

/// An animated GIF of solid frames: (RGBA colour, delay in ms) each, `w`x`h`, looping forever.
pub fn animated_gif(frames: &[([u8; 4], u32)], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 30);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .unwrap();
        for (colour, ms) in frames {
            let buf = image::RgbaImage::from_pixel(w, h, image::Rgba(*colour));
            enc.encode_frame(image::Frame::from_parts(
                buf,
                0,
                0,
                image::Delay::from_numer_denom_ms(*ms, 1),
            ))
            .unwrap();
        }
    }
    out
}

/// The frames an animation decoder yields, as (width, height, delay in ms, centre pixel).
pub fn frames_of<'a>(decoder: impl image::AnimationDecoder<'a>) -> Vec<(u32, u32, u32, [u8; 4])> {
    decoder
        .into_frames()
        .map(|f| {
            let f = f.unwrap();
            let (n, d) = f.delay().numer_denom_ms();
            let buf = f.into_buffer();
            let centre = buf.get_pixel(buf.width() / 2, buf.height() / 2).0;
            (buf.width(), buf.height(), n / d, centre)
        })
        .collect()
}

/// The frames of a GIF, by `image`'s decoder.
pub fn gif_frames_of(bytes: &[u8]) -> Vec<(u32, u32, u32, [u8; 4])> {
    frames_of(image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap())
}

/// The frames of an animated WebP, by `image`'s decoder (image-webp), independent of libwebp.
pub fn webp_frames_of(bytes: &[u8]) -> Vec<(u32, u32, u32, [u8; 4])> {
    frames_of(image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(bytes)).unwrap())
}

/// Runs one of Debian's image tools (installed by `scripts/install-deps --test`) and returns its
/// standard output; a missing tool or a failed run fails the test with what it printed.
pub fn run_tool(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} cannot run ({e}): scripts/install-deps --test installs it")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program flag FILE` on `bytes` written to a temporary file called `name`.
fn tool_on(program: &str, flag: &str, name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(name);
    std::fs::write(&src, bytes).unwrap();
    run_tool(program, &[flag.as_ref(), src.as_os_str()])
}

/// Decodes a still (or an animation's first frame) by a decoder other than the encoder's:
/// `avifdec` for AVIF, `image` for the rest.
pub fn decode(bytes: &[u8]) -> image::DynamicImage {
    use imgmirror::transform::{sniff, Sniffed};
    if sniff(bytes) == Some(Sniffed::Avif) {
        avifdec(bytes)
    } else {
        image::load_from_memory(bytes).expect("output decodes")
    }
}

/// Decodes an AVIF with Debian's `avifdec` (libavif 0.11 with dav1d, not the libaom decoder
/// imgmirror uses) into PNG, read back by `image`.
pub fn avifdec(bytes: &[u8]) -> image::DynamicImage {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.avif");
    std::fs::write(&src, bytes).unwrap();
    let png = dir.path().join("out.png");
    run_tool(
        "avifdec",
        &[
            "--codec".as_ref(),
            "dav1d".as_ref(),
            src.as_os_str(),
            png.as_os_str(),
        ],
    );
    image::open(&png).expect("avifdec wrote a PNG")
}

/// (frame count, delays in ms) of a GIF by `gifsicle --info`.
pub fn gifsicle_info(bytes: &[u8]) -> (usize, Vec<u32>) {
    let info = tool_on("gifsicle", "--info", "in.gif", bytes);
    let frames = info
        .lines()
        .filter(|l| l.trim_start().starts_with("+ image #"))
        .count();
    let delays = info
        .lines()
        .filter_map(|l| l.split_once("delay ").map(|(_, d)| d))
        .filter_map(|d| d.split('s').next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0).round() as u32)
        .collect();
    (frames, delays)
}

/// (frame count, durations in ms) of an animated WebP by `webpmux -info`.
pub fn webpmux_info(bytes: &[u8]) -> (usize, Vec<u32>) {
    let info = tool_on("webpmux", "-info", "in.webp", bytes);
    let frames = info
        .lines()
        .find_map(|l| l.strip_prefix("Number of frames:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // Rows: "  1:   100    50    no        0        0      100 background ...": the 7th column.
    let durations = info
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
        .collect();
    (frames, durations)
}

/// CRC-32 (ISO-HDLC, PNG's), to write PNG chunks whose checksums are right around a field a test
/// breaks (or a pixel bomb's header).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
