//! Shared by the `*_transform` targets: the whole pipeline as the service runs it, on bytes of
//! one format. Like the mirror, it first asks `transform::budget` for the transform's peak and
//! runs only what the shipped `image.memory_bytes` (512 MiB) admits, with the shipped
//! `image.max_pixels` and `max_frames`: run with `-rss_limit_mb=700`, a fuzzed header whose
//! decode costs more than its admitted peak (a wrong budget) is an out-of-memory crash.
use imgmirror::route::Fit;
use imgmirror::transform::{self, budget, ForAnimation, Limits, OutFormat, Plan, Sniffed};

/// The shipped `image.memory_bytes`.
const MEMORY_BYTES: u64 = 512 << 20;

pub fn run(data: &[u8], kind: Sniffed) {
    if transform::sniff(data) != Some(kind) {
        return;
    }
    // The first byte past the signature picks the output, so every encoder is reached.
    let format = match data.len() % 4 {
        0 => OutFormat::Png,
        1 => OutFormat::Jpeg,
        2 => OutFormat::Webp,
        _ => OutFormat::Gif,
    };
    let plan = Plan {
        width: Some(64),
        height: None,
        fit: Fit::Inside,
        format: Some(format),
        quality: 50,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    };
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    match budget::peak_bytes(data, &plan, &limits) {
        Ok(peak) if peak <= MEMORY_BYTES => {
            let _ = transform::transform(data, &plan, &limits);
        }
        _ => {}
    }
}
