//! Criterion benchmarks of the transform pipeline on real photographs (tests/fixtures/images):
//! decode (DCT-scaled for JPEG) + resize + encode, as a cold request pays it: every output
//! format (AVIF included), AVIF sources, and an animated GIF frame by frame.
//!
//! Run: `cargo bench --bench pipeline`

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imgmirror::route::Fit;
use imgmirror::transform::{transform, ForAnimation, Limits, OutFormat, Plan};

fn image(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images")
            .join(name),
    )
    .expect("fixture image")
}

fn pipeline(c: &mut Criterion) {
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    let mut g = c.benchmark_group("resize_640w");
    g.sample_size(30);
    for (name, format) in [
        ("news-mountain.jpg", OutFormat::Jpeg),   // 1000x750
        ("large-dragonfly.jpg", OutFormat::Jpeg), // 4000x3000: 1/4 DCT-scaled decode
        ("news-mountain.jpg", OutFormat::Webp),
        ("fig-alpha.png", OutFormat::Png), // 1000x677 RGBA
        ("bridge.gif", OutFormat::Gif),
        ("news-mountain.jpg", OutFormat::Avif), // rav1e speed 10, one thread
        ("news-mountain.avif", OutFormat::Jpeg), // libaom decode (4:2:0)
        ("fig-alpha.avif", OutFormat::Webp),    // 4:4:4 with alpha
    ] {
        let src = image(name);
        let plan = Plan {
            width: Some(640),
            height: None,
            fit: Fit::Inside,
            format: Some(format),
            quality: 85,
            progressive: false,
            animated: ForAnimation::AsPlanned,
        };
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new(format.name(), name), &src, |b, src| {
            b.iter(|| transform(src, &plan, &limits).expect("transform"))
        });
    }
    g.finish();

    // An animated GIF: 10 frames cut from a real photograph (1000x750, each shifted), to 320 px
    // wide, every frame kept.
    let photo = image::load_from_memory(&image("news-mountain.jpg"))
        .expect("decodes")
        .to_rgba8();
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut gif, 30);
        for i in 0..10u32 {
            let frame = image::imageops::crop_imm(&photo, i * 20, 0, 800, 600).to_image();
            enc.encode_frame(image::Frame::from_parts(
                frame,
                0,
                0,
                image::Delay::from_numer_denom_ms(100, 1),
            ))
            .expect("frame");
        }
    }
    let plan = Plan {
        width: Some(320),
        height: None,
        fit: Fit::Inside,
        format: Some(OutFormat::Gif),
        quality: 85,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    };
    let mut g = c.benchmark_group("animated_gif");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10));
    g.bench_function("10_frames_800x600_to_320w", |b| {
        b.iter(|| transform(&gif, &plan, &limits).expect("transform"))
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
