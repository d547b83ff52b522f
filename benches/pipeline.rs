//! Criterion benchmarks of the transform pipeline on real photographs (tests/fixtures/images):
//! decode (DCT-scaled for JPEG) + resize + encode, as a cold request pays it.
//!
//! Run: `cargo bench --bench pipeline`

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imgmirror::route::Fit;
use imgmirror::transform::{transform, Limits, OutFormat, Plan};

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
    };
    let mut g = c.benchmark_group("resize_640w");
    g.sample_size(30);
    for (name, format) in [
        ("news-mountain.jpg", OutFormat::Jpeg),   // 1000x750
        ("large-dragonfly.jpg", OutFormat::Jpeg), // 4000x3000: 1/4 DCT-scaled decode
        ("news-mountain.jpg", OutFormat::Webp),
        ("fig-alpha.png", OutFormat::Png), // 1000x677 RGBA
        ("bridge.gif", OutFormat::Gif),
    ] {
        let src = image(name);
        let plan = Plan {
            width: Some(640),
            height: None,
            fit: Fit::Inside,
            format: Some(format),
            quality: 85,
        };
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new(format.name(), name), &src, |b, src| {
            b.iter(|| transform(src, &plan, &limits).expect("transform"))
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
