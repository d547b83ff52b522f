//! Encode time and size of AVIF at several rav1e speeds and qualities against WebP and JPEG, on
//! real photographs resized to 640 px: the measurement behind `transform::AVIF_SPEED`. Writes the
//! reference (the resized photo, PNG) and every encode into a folder and prints one line per
//! encode (`file ms bytes`); `scripts/encode-compare` adds each one's DSSIM against the reference.
//!
//! Run: `cargo run --release --example encode_compare -- OUT_DIR`

use std::path::{Path, PathBuf};
use std::time::Instant;

use imgmirror::route::Fit;
use imgmirror::transform::{transform, ForAnimation, Limits, OutFormat, Plan};

/// The median of three runs of `f`, in milliseconds, and its last result.
fn timed<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        out = Some(f());
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[1], out.expect("ran"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: encode_compare OUT_DIR")?
        .into();
    std::fs::create_dir_all(&out)?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    for name in ["news-mountain.jpg", "large-dragonfly.jpg"] {
        let src = std::fs::read(fixtures.join(name))?;
        let plan = Plan {
            width: Some(640),
            height: None,
            fit: Fit::Inside,
            format: Some(OutFormat::Png),
            quality: 100,
            progressive: false,
            animated: ForAnimation::AsPlanned,
        };
        let png = transform(&src, &plan, &limits)?.bytes;
        let stem = name.trim_end_matches(".jpg");
        std::fs::write(out.join(format!("{stem}.ref.png")), &png)?;
        let rgb = image::load_from_memory(&png)?.to_rgb8();
        let (w, h) = rgb.dimensions();
        let pixels: Vec<ravif::RGB8> = rgb
            .pixels()
            .map(|p| ravif::RGB8::new(p[0], p[1], p[2]))
            .collect();
        let report = |file: String, ms: f64, bytes: &[u8]| -> std::io::Result<()> {
            std::fs::write(out.join(&file), bytes)?;
            println!("{file} {ms:.1} {}", bytes.len());
            Ok(())
        };
        for speed in [4u8, 6, 8, 10] {
            for q in [50u8, 60, 70, 80] {
                let enc = ravif::Encoder::new()
                    .with_quality(f32::from(q))
                    .with_speed(speed)
                    .with_bit_depth(ravif::BitDepth::Eight)
                    .with_num_threads(Some(1));
                let (ms, avif) =
                    timed(|| enc.encode_rgb(ravif::Img::new(&pixels[..], w as usize, h as usize)));
                report(
                    format!("{stem}.avif-s{speed}-q{q}.avif"),
                    ms,
                    &avif?.avif_file,
                )?;
            }
        }
        for q in [60u8, 70, 80, 90] {
            let (ms, webp) = timed(|| {
                webp::Encoder::from_rgb(rgb.as_raw(), w, h)
                    .encode(f32::from(q))
                    .to_vec()
            });
            report(format!("{stem}.webp-q{q}.webp"), ms, &webp)?;
            let (ms, jpeg) = timed(|| {
                let mut c = turbojpeg::Compressor::new()?;
                c.set_quality(i32::from(q))?;
                c.set_subsamp(turbojpeg::Subsamp::Sub2x2)?;
                c.compress_to_vec(turbojpeg::Image {
                    pixels: rgb.as_raw().as_slice(),
                    width: w as usize,
                    pitch: 3 * w as usize,
                    height: h as usize,
                    format: turbojpeg::PixelFormat::RGB,
                })
            });
            report(format!("{stem}.jpeg-q{q}.jpg"), ms, &jpeg?)?;
        }
    }
    Ok(())
}
