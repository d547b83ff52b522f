//! Peak memory of one transform, per source pixel: the measurement behind
//! `transform::budget`'s bytes-per-pixel table (`image.memory_bytes` admission). Reads a source
//! image, runs the whole pipeline once (`transform::transform`) to the given width and format,
//! and prints the process's peak resident set (VmHWM) above what it held before, per source and
//! per output pixel, next to what `transform::budget::peak_bytes` admits it for. Run once per
//! process: VmHWM never goes down. `scripts/peak-memory` makes the sources and runs every case.
//!
//! Run: `cargo run --release --example peak_memory -- SOURCE WIDTH FORMAT`

use imgmirror::route::Fit;
use imgmirror::transform::{self, budget, ForAnimation, Limits, OutFormat, Plan};

/// A `/proc/self/status` field in bytes.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

/// `make W H OUT.png|OUT.jpg`: a photograph-like source (smooth gradients with grain), so the
/// encoders see what photos give them.
fn make(mut args: impl Iterator<Item = String>) -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: peak_memory make W H OUT.(png|jpg)";
    let w: u32 = args.next().ok_or(usage)?.parse()?;
    let h: u32 = args.next().ok_or(usage)?.parse()?;
    let out = args.next().ok_or(usage)?;
    let mut seed = 0x9e37_79b9_u32;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let grain = (seed % 24) as u8;
        image::Rgb([
            ((x * 255 / w) as u8).saturating_add(grain),
            ((y * 255 / h) as u8).saturating_add(grain),
            (((x + y) * 127 / (w + h)) as u8).saturating_add(grain),
        ])
    });
    img.save(&out)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("make") {
        args.next();
        return make(args);
    }
    let usage = "usage: peak_memory SOURCE WIDTH FORMAT(jpeg|png|webp|avif|gif)";
    let source = args.next().ok_or(usage)?;
    let width: u32 = args.next().ok_or(usage)?.parse()?;
    let format = match args.next().ok_or(usage)?.as_str() {
        "jpeg" => OutFormat::Jpeg,
        "png" => OutFormat::Png,
        "webp" => OutFormat::Webp,
        "avif" => OutFormat::Avif,
        "gif" => OutFormat::Gif,
        _ => return Err(usage.into()),
    };
    let bytes = std::fs::read(&source)?;
    let (kind, w, h) = transform::probe(&bytes)?;
    let plan = Plan {
        width: Some(width),
        height: None,
        fit: Fit::Inside,
        format: Some(format),
        quality: 80,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    };
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    let admitted = budget::peak_bytes(&bytes, &plan, &limits)?;
    let before = status_kib("VmRSS:");
    let out = transform::transform(&bytes, &plan, &limits)?;
    let peak = status_kib("VmHWM:").saturating_sub(before);
    // `PEAK_OUT=FILE` keeps the output (how the benchmark's large AVIF is made with rav1e).
    if let Some(path) = std::env::var_os("PEAK_OUT") {
        std::fs::write(path, &out.bytes)?;
    }
    let pixels = u64::from(w) * u64::from(h);
    println!(
        "{source}\t{}\t{w}x{h}\t-> {width} {}\t{} bytes out\tpeak {:.1} MiB\t{:.2} B/source px\tadmitted {:.1} MiB",
        kind.content_type(),
        format.name(),
        out.bytes.len(),
        peak as f64 / 1048576.0,
        peak as f64 / pixels as f64,
        admitted as f64 / 1048576.0,
    );
    if peak > admitted {
        eprintln!("peak above the admitted budget");
        std::process::exit(1);
    }
    Ok(())
}
