//! The whole pipeline on AVIF-shaped bytes (container parse, sequence-header probe, libaom
//! decode, YUV to RGB, resize, PNG encode): an image or a typed error, never a panic.
#![no_main]
use imgmirror::route::Fit;
use imgmirror::transform::{self, ForAnimation, Limits, OutFormat, Plan, Sniffed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if transform::sniff(data) != Some(Sniffed::Avif) {
        return;
    }
    let plan = Plan {
        width: Some(16),
        height: None,
        fit: Fit::Inside,
        format: Some(OutFormat::Png),
        quality: 50,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    };
    let limits = Limits {
        max_pixels: 4_000_000,
        max_frames: 16,
    };
    let _ = transform::transform(data, &plan, &limits);
});
