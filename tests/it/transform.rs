//! The resize/re-encode pipeline on real photographs, and derived images over HTTP: every fit mode
//! and format, EXIF orientations 1-8, pixel bombs refused before allocation, broken input, Accept
//! negotiation, determinism.

use crate::common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::images::{animated_gif, decode, gif_frames_of, webp_frames_of};
use common::{client, config, image, Origin, Reply, Served};
use imgmirror::route::{self, Fit, Format, Options};
use imgmirror::server;
use imgmirror::transform::{self, ForAnimation, Limits, OutFormat, Plan, Sniffed, TransformError};

/// Records the largest single allocation made by each thread, to show bombs are refused before
/// any big buffer exists (per thread, so tests running alongside do not count).
struct PeakAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot is gone while the thread's locals are being destroyed.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

/// The largest allocation this thread made while running `f`.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

const LIMITS: Limits = Limits {
    max_pixels: 50_000_000,
    max_frames: 256,
};

fn plan(width: Option<u32>, height: Option<u32>, fit: Fit, format: Option<OutFormat>) -> Plan {
    Plan {
        width,
        height,
        fit,
        format,
        quality: 82,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    }
}

/// Decodes an output and returns (format, width, height, has alpha).
fn inspect(bytes: &[u8]) -> (Sniffed, u32, u32, bool) {
    let kind = transform::sniff(bytes).expect("output is an image");
    let img = decode(bytes);
    (kind, img.width(), img.height(), img.color().has_alpha())
}

#[test]
fn fit_modes_give_the_right_dimensions() {
    let src = image("news-mountain.jpg"); // 1000x750
    let cases = [
        (Some(640), None, Fit::Inside, (640, 480)),
        (None, Some(300), Fit::Inside, (400, 300)),
        (Some(2000), None, Fit::Inside, (1000, 750)),
        (Some(2000), None, Fit::Contain, (2000, 1500)),
        (Some(320), Some(320), Fit::Cover, (320, 320)),
        (Some(320), Some(320), Fit::Contain, (320, 240)),
        (Some(320), Some(320), Fit::Inside, (320, 240)),
        (Some(320), Some(320), Fit::Fill, (320, 320)),
        (Some(3000), Some(3000), Fit::Inside, (1000, 750)),
        (Some(100), Some(400), Fit::Cover, (100, 400)),
        (None, None, Fit::Inside, (1000, 750)),
    ];
    for (w, h, fit, want) in cases {
        let out = transform::transform(&src, &plan(w, h, fit, None), &LIMITS).unwrap();
        let (kind, ow, oh, _) = inspect(&out.bytes);
        assert_eq!(kind, Sniffed::Jpeg);
        assert_eq!((ow, oh), want, "{w:?}x{h:?} {fit:?}");
    }
    // A 4000x3000 photo goes through the 1/4 DCT-scaled decode and still lands on the exact size.
    let big = image("large-dragonfly.jpg");
    let out =
        transform::transform(&big, &plan(Some(640), None, Fit::Inside, None), &LIMITS).unwrap();
    let (_, w, h, _) = inspect(&out.bytes);
    assert_eq!((w, h), (640, 480));
}

/// A 64x32 JPEG whose top-left 16x16 block is red (the rest blue), tagged with an EXIF orientation.
fn oriented_jpeg(orientation: u16) -> Vec<u8> {
    let mut img = image::RgbImage::from_pixel(64, 32, image::Rgb([0, 0, 255]));
    for y in 0..16 {
        for x in 0..16 {
            img.put_pixel(x, y, image::Rgb([255, 0, 0]));
        }
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&img)
        .unwrap();
    // APP1: "Exif\0\0", big-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, 1.
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientations_1_to_8() {
    // Where the stored top-left red block must appear once the orientation is applied.
    let expect = [
        (1, "TL"),
        (2, "TR"),
        (3, "BR"),
        (4, "BL"),
        (5, "TL"),
        (6, "TR"),
        (7, "BR"),
        (8, "BL"),
    ];
    for (o, corner) in expect {
        let src = oriented_jpeg(o);
        let out = transform::transform(
            &src,
            &plan(None, None, Fit::Inside, Some(OutFormat::Png)),
            &LIMITS,
        )
        .unwrap();
        let img = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
        let swapped = o >= 5;
        assert_eq!(
            (img.width(), img.height()),
            if swapped { (32, 64) } else { (64, 32) },
            "orientation {o}"
        );
        let (w, h) = (img.width() - 4, img.height() - 4);
        let at = match corner {
            "TL" => (3, 3),
            "TR" => (w, 3),
            "BR" => (w, h),
            _ => (3, h),
        };
        let p = img.get_pixel(at.0, at.1);
        assert!(
            p[0] > 200 && p[2] < 60,
            "orientation {o}: {corner} is {p:?}"
        );
    }
    // Resizing an orientation-6 image: the requested width applies to the upright image.
    let out = transform::transform(
        &oriented_jpeg(6),
        &plan(Some(16), None, Fit::Inside, Some(OutFormat::Png)),
        &LIMITS,
    )
    .unwrap();
    let (_, w, h, _) = inspect(&out.bytes);
    assert_eq!((w, h), (16, 32));
}

/// A PNG that declares `w` x `h` RGB pixels but carries (almost) no data.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&common::images::crc32(&body).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// A real JPEG whose frame header is patched to claim `w` x `h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut b = image("news-dogs.jpg").to_vec();
    let sof = b
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline SOF0");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

#[test]
fn pixel_bombs_are_refused_before_allocating() {
    let bombs = [png_bomb(100_000, 100_000), jpeg_claiming(60_000, 60_000)];
    for bomb in &bombs {
        let (result, largest) = largest_allocation(|| {
            transform::transform(bomb, &plan(Some(100), None, Fit::Inside, None), &LIMITS)
        });
        let err = result.unwrap_err();
        assert!(matches!(err, TransformError::TooManyPixels { .. }), "{err}");
        assert_eq!(err.status(), 422);
        // Nothing near the 30 GB (PNG) or 10 GB (JPEG) the headers ask for was ever requested.
        assert!(largest < 1 << 20, "{largest}");
    }
}

/// An AVIF source is measured from its AV1 sequence header (the largest frame the decoder can
/// make) and refused past `image.max_pixels` before libaom allocates anything; a cut AVIF is not
/// whole, so it is never mirrored.
#[test]
fn avif_sources_are_bounded_before_decoding() {
    let avif = image("news-mountain.avif");
    assert_eq!(transform::probe(&avif).unwrap(), (Sniffed::Avif, 1000, 750));
    let small = Limits {
        max_pixels: 100_000,
        max_frames: 256,
    };
    let (result, largest) = largest_allocation(|| {
        transform::transform(&avif, &plan(Some(64), None, Fit::Inside, None), &small)
    });
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            TransformError::TooManyPixels {
                width: 1000,
                height: 750,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.status(), 422);
    // The container is read (a copy of the 76 KB item), no frame buffer is made.
    assert!(largest < 256 << 10, "{largest}");
    assert!(transform::is_complete(&avif, Sniffed::Avif));
    for cut in [avif.len() - 1, avif.len() / 2, 40] {
        assert!(
            !transform::is_complete(&avif[..cut], Sniffed::Avif),
            "{cut}"
        );
    }
    // An AVIF sequence (major brand `avis`) is read by its still image (`meta`), the first
    // frame; one with no still (here the `meta` box renamed `free`) is not decoded: 415, as for
    // other formats the pipeline cannot read.
    let mut sequence = avif.to_vec();
    sequence[8..12].copy_from_slice(b"avis");
    let out = transform::transform(&sequence, &plan(Some(64), None, Fit::Inside, None), &LIMITS)
        .expect("a sequence's still");
    assert_eq!(transform::probe(&out.bytes).unwrap().1, 64);
    let meta = sequence.windows(4).position(|w| w == b"meta").unwrap();
    sequence[meta..meta + 4].copy_from_slice(b"free");
    let err = transform::transform(&sequence, &plan(Some(64), None, Fit::Inside, None), &LIMITS)
        .unwrap_err();
    assert_eq!(err.status(), 415, "{err}");
    // Its AV1 data broken: a clean 422.
    let mut broken = avif.to_vec();
    let n = broken.len();
    broken[n - 30_000..n - 20_000].fill(0x55);
    let err = transform::transform(&broken, &plan(Some(64), None, Fit::Inside, None), &LIMITS)
        .unwrap_err();
    assert_eq!(err.status(), 422, "{err}");
}

#[test]
fn broken_and_unsupported_inputs_give_clean_errors() {
    let dogs = image("news-dogs.jpg");
    for cut in [200, 2000, dogs.len() / 2] {
        let r = transform::transform(
            &dogs[..cut],
            &plan(Some(100), None, Fit::Inside, None),
            &LIMITS,
        );
        match r {
            Err(e) => assert!(matches!(e, TransformError::Decode(_)), "cut {cut}: {e}"),
            Ok(out) => panic!(
                "cut {cut}: a truncated JPEG decoded to {} bytes",
                out.bytes.len()
            ),
        }
    }
    let html = b"<!DOCTYPE html><html></html>";
    assert_eq!(
        transform::transform(html, &plan(Some(10), None, Fit::Inside, None), &LIMITS).unwrap_err(),
        TransformError::NotImage
    );
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'/>";
    assert_eq!(
        transform::transform(svg, &plan(Some(10), None, Fit::Inside, None), &LIMITS)
            .unwrap_err()
            .status(),
        415
    );
    let png = image("fig-alpha.png");
    let r = transform::transform(
        &png[..png.len() / 3],
        &plan(Some(100), None, Fit::Inside, None),
        &LIMITS,
    );
    assert!(matches!(r, Err(TransformError::Decode(_))), "{r:?}");
}

/// `image.max_pixels` bounds the output too, and every format refuses sizes it cannot hold with
/// a 422, before decoding: a 64x48 PNG asked as 8192x8192 `fill`, a 20000x100 source as WebP
/// (whose encoder would panic past 16383 px).
#[test]
fn outputs_are_bounded_before_any_work() {
    let mut tiny = Vec::new();
    image::RgbImage::new(64, 48)
        .write_to(
            &mut std::io::Cursor::new(&mut tiny),
            image::ImageFormat::Png,
        )
        .unwrap();
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    let err = transform::transform(
        &tiny,
        &plan(Some(8192), Some(8192), Fit::Fill, Some(OutFormat::Gif)),
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(err, TransformError::OutputTooLarge { .. }),
        "{err}"
    );
    assert_eq!(err.status(), 422);

    let mut wide = Vec::new();
    image::RgbImage::new(20_000, 100)
        .write_to(
            &mut std::io::Cursor::new(&mut wide),
            image::ImageFormat::Png,
        )
        .unwrap();
    let err = transform::transform(
        &wide,
        &plan(None, None, Fit::Inside, Some(OutFormat::Webp)),
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(err, TransformError::TooWideForFormat { max: 16_383, .. }),
        "{err}"
    );
    assert_eq!(err.status(), 422);
    // The same source as PNG is fine.
    let out = transform::transform(
        &wide,
        &plan(Some(10_000), None, Fit::Inside, Some(OutFormat::Png)),
        &limits,
    )
    .unwrap();
    assert_eq!(inspect(&out.bytes).1, 10_000);
}

#[test]
fn encoding_is_deterministic() {
    let src = image("news-mountain.jpg");
    for f in OutFormat::ALL {
        let p = plan(Some(320), Some(200), Fit::Cover, Some(f));
        let a = transform::transform(&src, &p, &LIMITS).unwrap().bytes;
        let b = transform::transform(&src, &p, &LIMITS).unwrap().bytes;
        assert!(a == b, "{f:?} output differs between runs");
    }
}

// ---------- over HTTP ----------

/// Quality does not change a lossless output, so it makes no new cache key and no new work.
#[tokio::test]
async fn quality_or_progressive_on_a_lossless_format_is_one_variant() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    origin.set("/m.jpg", Reply::jpeg(image("news-mountain.jpg")));
    let upstream = origin.url("/m.jpg");
    let png = |q| Options {
        width: Some(40),
        format: Some(Format::Png),
        quality: Some(q),
        ..Options::default()
    };
    let first = common::get(&common::route_url_with(svc.addr, &upstream, &png(50))).await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let first = first.bytes().await.unwrap();
    for q in [90, 10] {
        let r = common::get(&common::route_url_with(svc.addr, &upstream, &png(q))).await;
        assert_eq!(r.headers()["x-cache"], "HIT-MEMORY", "q{q}");
        assert_eq!(r.bytes().await.unwrap(), first);
    }
    // Neither is `progressive` on a PNG.
    let progressive = Options {
        progressive: true,
        ..png(70)
    };
    let r = common::get(&common::route_url_with(svc.addr, &upstream, &progressive)).await;
    assert_eq!(r.headers()["x-cache"], "HIT-MEMORY", "progressive PNG");
    assert_eq!(r.bytes().await.unwrap(), first);
    let variants = walkdir::WalkDir::new(dir.path().join("variants"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    assert_eq!(variants, 1);
    svc.shutdown().await;
}

#[tokio::test]
async fn derived_images_over_http() {
    let origin = Origin::start().await;
    origin.set("/m.jpg", Reply::jpeg(image("news-mountain.jpg")));
    origin.set(
        "/bomb.png",
        Reply::Ok {
            body: png_bomb(100_000, 100_000).into(),
            content_type: "image/png",
            etag: None,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&origin, dir.path(), &[], |c| {
        c.image.auto_webp = true;
        c.presets.insert(
            "thumb".into(),
            imgmirror::config::Preset {
                width: Some(120),
                height: Some(120),
                fit: Some(Fit::Cover),
                format: Some(Format::Png),
                quality: None,
                progressive: false,
            },
        );
    });
    let svc = server::start(cfg.clone()).await.unwrap();
    let c = client();
    let url = origin.url("/m.jpg");
    let w640 = Options {
        width: Some(640),
        ..Default::default()
    };

    // No format in the route: JPEG by default, WebP when Accept lists it, with Vary: Accept.
    let r = common::get(&common::route_url_with(svc.addr, &url, &w640)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["vary"], "Accept");
    let jpeg = r.bytes().await.unwrap();
    assert_eq!(inspect(&jpeg).1, 640);
    let r = common::get_with(
        &common::route_url_with(svc.addr, &url, &w640),
        &[("accept", "image/avif,image/webp,*/*")],
    )
    .await;
    assert_eq!(r.headers()["content-type"], "image/webp");
    assert_eq!(r.headers()["vary"], "Accept");
    let webp = r.bytes().await.unwrap();
    assert_eq!(inspect(&webp).0, Sniffed::Webp);
    // The same route twice: byte-identical (the second from memory).
    let r = common::get(&common::route_url_with(svc.addr, &url, &w640)).await;
    assert_eq!(r.headers()["x-cache"], "HIT-MEMORY");
    assert_eq!(r.bytes().await.unwrap(), jpeg);
    // An explicit format is not negotiated.
    let png = Options {
        width: Some(100),
        format: Some(Format::Png),
        ..Default::default()
    };
    let r = common::get_with(
        &common::route_url_with(svc.addr, &url, &png),
        &[("accept", "image/webp")],
    )
    .await;
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.headers().get("vary").is_none());
    // Presets.
    let thumb = Options {
        preset: Some("thumb".into()),
        ..Default::default()
    };
    let r = common::get(&common::route_url_with(svc.addr, &url, &thumb)).await;
    let (k, w, h, _) = inspect(&r.bytes().await.unwrap());
    assert_eq!((k, w, h), (Sniffed::Png, 120, 120));
    let nope = Options {
        preset: Some("nope".into()),
        ..Default::default()
    };
    assert_eq!(
        common::get(&common::route_url_with(svc.addr, &url, &nope))
            .await
            .status(),
        400
    );
    // Limits: sizes over max_dimension are 400, pixel bombs 422.
    let huge = Options {
        width: Some(9000),
        ..Default::default()
    };
    assert_eq!(
        common::get(&common::route_url_with(svc.addr, &url, &huge))
            .await
            .status(),
        400
    );
    let r = c
        .get(common::route_url_with(
            svc.addr,
            &origin.url("/bomb.png"),
            &w640,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("max_pixels"));
    // The original stays byte for byte.
    let r = common::get(&common::route_url_with(svc.addr, &url, &Options::default())).await;
    assert_eq!(r.bytes().await.unwrap(), image("news-mountain.jpg"));
    assert_eq!(
        origin.hits("/m.jpg"),
        1,
        "one fetch served the original and every variant"
    );
    svc.shutdown().await;

    // Variants are mirrored: after a restart without the origin they come from disk, unchanged.
    origin.stop();
    let svc = server::start(cfg).await.unwrap();
    let r = common::get(&common::route_url_with(svc.addr, &url, &w640)).await;
    assert_eq!(r.headers()["x-cache"], "HIT-DISK");
    assert_eq!(r.bytes().await.unwrap(), jpeg);
    let r = common::get(&common::route_url_with(svc.addr, &url, &thumb)).await;
    assert_eq!(r.status(), 200);
    svc.shutdown().await;
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]

        /// Real images with bytes flipped and cut: an image or a clean error, never a panic.
        #[test]
        fn mutated_images_never_panic(which in 0usize..6, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
            let names = ["news-dogs.jpg", "fig-alpha.png", "bridge.gif", "news-mountain.jpg", "news-mountain.avif", "fig-alpha.avif"];
            let mut b = image(names[which]).to_vec();
            for (i, v) in flips {
                let at = i.index(b.len());
                b[at] = v;
            }
            let keep = 16 + cut.index(b.len() - 16);
            b.truncate(keep);
            let plan = plan(Some(64), Some(64), Fit::Cover, Some(OutFormat::Png));
            match transform::transform(&b, &plan, &LIMITS) {
                Ok(out) => prop_assert!(transform::sniff(&out.bytes).is_some()),
                Err(e) => prop_assert!([415, 422].contains(&e.status()), "{e}"),
            }
        }
    }
}

/// A real photo with an ICC profile inserted (APP2 `ICC_PROFILE`), as cameras and editors write it.
fn jpeg_with_icc(icc: &[u8]) -> Vec<u8> {
    let jpeg = image("news-dogs.jpg");
    let mut app2 = b"ICC_PROFILE\0\x01\x01".to_vec();
    app2.extend_from_slice(icc);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE2]);
    out.extend_from_slice(&((app2.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app2);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A colour profile over `MAX_ICC_BYTES` (here a 256 MiB one, which compresses to 256 KB in a
/// small PNG's iCCP chunk) is dropped, never copied into the output, and never inflated whole:
/// the decoder's budget follows the image's own size, so a 64x48 source cannot make it hold more
/// than a few MiB.
#[test]
fn oversized_icc_profiles_are_dropped_without_being_inflated() {
    use image::{ImageDecoder, ImageEncoder};
    let mut src = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut src);
    enc.set_icc_profile(vec![0u8; 256 << 20]).unwrap();
    enc.write_image(
        &[128u8; 64 * 48 * 3],
        64,
        48,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    assert!(src.len() < 1 << 20, "a small file: {}", src.len());
    for (format, fmt) in [
        (OutFormat::Png, image::ImageFormat::Png),
        (OutFormat::Webp, image::ImageFormat::WebP),
    ] {
        let (out, largest) = largest_allocation(|| {
            transform::transform(
                &src,
                &plan(Some(32), None, Fit::Inside, Some(format)),
                &LIMITS,
            )
        });
        let out = out.unwrap();
        assert!(
            largest < 8 << 20,
            "{format:?}: an allocation of {largest} bytes"
        );
        assert!(
            out.bytes.len() < 64 * 1024,
            "{format:?}: {} bytes",
            out.bytes.len()
        );
        let mut reader = image::ImageReader::new(std::io::Cursor::new(&out.bytes));
        reader.set_format(fmt);
        let mut decoder = reader.into_decoder().unwrap();
        assert_eq!(decoder.icc_profile().unwrap(), None, "{format:?}");
    }
}

#[test]
fn icc_profiles_are_kept_in_jpeg_png_and_webp_output() {
    use image::ImageDecoder;
    // Not a valid profile for a colour engine, but carried byte for byte, which is what is tested.
    let icc: Vec<u8> = (0..3001u32).map(|i| (i % 251) as u8).collect();
    let src = jpeg_with_icc(&icc);
    for (format, fmt) in [
        (OutFormat::Jpeg, image::ImageFormat::Jpeg),
        (OutFormat::Png, image::ImageFormat::Png),
        (OutFormat::Webp, image::ImageFormat::WebP),
    ] {
        let out = transform::transform(
            &src,
            &plan(Some(200), None, Fit::Inside, Some(format)),
            &LIMITS,
        )
        .unwrap();
        let mut reader = image::ImageReader::new(std::io::Cursor::new(&out.bytes));
        reader.set_format(fmt);
        let mut decoder = reader.into_decoder().unwrap();
        assert_eq!(
            decoder.icc_profile().unwrap().as_deref(),
            Some(&icc[..]),
            "{format:?}"
        );
        let img = image::DynamicImage::from_decoder(decoder).unwrap();
        assert_eq!(img.width(), 200, "{format:?}");
    }
    // With alpha (libwebp writes the extended format itself): the profile joins its VP8X header.
    let png = transform::transform(
        &image("fig-alpha.png"),
        &plan(Some(100), None, Fit::Inside, Some(OutFormat::Png)),
        &LIMITS,
    )
    .unwrap();
    assert!(inspect(&png.bytes).3);
}

mod sizes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        /// Any requested size on odd-sized photos (700x1051 has odd DCT-scaled sizes) works, and
        /// cover and fill give exactly the box.
        #[test]
        fn any_size_any_fit(which in 0usize..2, w in prop::option::of(1u32..1200), h in prop::option::of(1u32..1200), fit in prop::sample::select(Fit::ALL.to_vec())) {
            // JPEG in and out: libjpeg-turbo is optimised C even in debug builds, so 150 cases stay fast.
            let names = ["news-dogs.jpg", "news-mountain.jpg"];
            let src = image(names[which]);
            let out = transform::transform(&src, &plan(w, h, fit, Some(OutFormat::Jpeg)), &LIMITS);
            let out = out.map_err(|e| TestCaseError::fail(format!("{w:?}x{h:?} {fit:?}: {e}")))?;
            let (_, ow, oh, _) = inspect(&out.bytes);
            if let (Some(w), Some(h), Fit::Cover | Fit::Fill) = (w, h, fit) {
                prop_assert_eq!((ow, oh), (w, h));
            }
            if let (Some(w), None) = (w, h) {
                if fit != Fit::Inside {
                    prop_assert_eq!(ow, w);
                }
            }
        }
    }
}

/// Resizing an animated GIF to GIF keeps every frame and its delay; to another format, the first
/// frame is the still. The frame count is read from the block structure alone.
#[test]
fn animated_gifs_keep_every_frame_and_its_delay() {
    let (red, green, blue) = ([255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]);
    let src = animated_gif(&[(red, 100), (green, 200), (blue, 300)], 200, 100);
    assert_eq!(transform::gif_frames(&src), Some(3));
    assert_eq!(transform::gif_frames(&image("bridge.gif")), Some(1));
    let out = transform::transform(
        &src,
        &plan(Some(100), None, Fit::Inside, Some(OutFormat::Gif)),
        &LIMITS,
    )
    .unwrap();
    let frames = gif_frames_of(&out.bytes);
    assert_eq!(frames.len(), 3, "{frames:?}");
    for ((w, h, ms, centre), (want_ms, want)) in
        frames.iter().zip([(100, red), (200, green), (300, blue)])
    {
        assert_eq!((*w, *h, *ms), (100, 50, want_ms));
        let dist: i32 = centre
            .iter()
            .zip(want)
            .map(|(a, b)| (i32::from(*a) - i32::from(b)).abs())
            .sum();
        assert!(dist < 40, "{centre:?} is not {want:?}");
    }
    // No format option (the source's is kept), and a cover crop: still every frame.
    let out =
        transform::transform(&src, &plan(Some(50), Some(50), Fit::Cover, None), &LIMITS).unwrap();
    let frames = gif_frames_of(&out.bytes);
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| (f.0, f.1) == (50, 50)));
    // To PNG: the first frame, as a still.
    let png = transform::transform(
        &src,
        &plan(Some(100), None, Fit::Inside, Some(OutFormat::Png)),
        &LIMITS,
    )
    .unwrap();
    let still = image::load_from_memory(&png.bytes).unwrap().to_rgba8();
    assert_eq!(still.dimensions(), (100, 50));
    assert!(still.get_pixel(50, 25).0[0] > 200, "the first frame is red");
}

/// Frame bombs are refused with 422 before any frame is decoded: more frames than
/// `image.max_frames`, frames x pixels over the animation budget, and a logical screen of
/// 60000x60000 around a 1x1 frame.
#[test]
fn frame_bombs_are_refused_before_decoding() {
    let many: Vec<([u8; 4], u32)> = (0..300).map(|i| ([i as u8, 0, 0, 255], 10)).collect();
    let bomb = animated_gif(&many, 2, 2);
    let (result, largest) = largest_allocation(|| {
        transform::transform(
            &bomb,
            &plan(Some(1), None, Fit::Inside, Some(OutFormat::Gif)),
            &LIMITS,
        )
    });
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            TransformError::TooManyFrames {
                frames: 300,
                max: 256
            }
        ),
        "{err}"
    );
    assert_eq!(err.status(), 422);
    assert!(largest < 1 << 20, "{largest}");

    let heavy = animated_gif(&vec![([9, 9, 9, 255], 10); 50], 100, 100);
    let small = Limits {
        max_pixels: 100_000,
        max_frames: 256,
    };
    let err =
        transform::transform(&heavy, &plan(Some(50), None, Fit::Inside, None), &small).unwrap_err();
    assert!(
        matches!(err, TransformError::AnimationTooLarge { frames: 50, .. }),
        "{err}"
    );
    assert_eq!(err.status(), 422);

    let mut screen = animated_gif(&[([1, 2, 3, 255], 10), ([3, 2, 1, 255], 10)], 1, 1);
    screen[6..8].copy_from_slice(&60_000u16.to_le_bytes());
    screen[8..10].copy_from_slice(&60_000u16.to_le_bytes());
    let (result, largest) = largest_allocation(|| {
        transform::transform(&screen, &plan(Some(100), None, Fit::Inside, None), &LIMITS)
    });
    let err = result.unwrap_err();
    assert!(matches!(err, TransformError::TooManyPixels { .. }), "{err}");
    assert!(largest < 1 << 20, "{largest}");
    // The process's peak resident set so far (every test of this binary that ran meanwhile
    // included) stays far under the 600 MiB the issue allows for a bomb.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 600 * 1024, "peak RSS {peak_kib} KiB");
}

/// An animated GIF asked as WebP becomes an animated WebP with the same frames and delays, and an
/// animated WebP source resizes to GIF or WebP keeping its frames. Frames are counted from the
/// RIFF chunks alone.
#[test]
fn animations_convert_between_gif_and_webp() {
    let (red, green, blue) = ([255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]);
    let gif = animated_gif(&[(red, 100), (green, 200), (blue, 300)], 200, 100);
    let webp = transform::transform(
        &gif,
        &plan(Some(100), None, Fit::Inside, Some(OutFormat::Webp)),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(transform::sniff(&webp.bytes), Some(Sniffed::Webp));
    assert_eq!(transform::webp_frames(&webp.bytes), Some(3));
    let frames = webp_frames_of(&webp.bytes);
    assert_eq!(frames.len(), 3, "{frames:?}");
    for ((w, h, _, centre), want) in frames.iter().zip([red, green, blue]) {
        assert_eq!((*w, *h), (100, 50));
        let dist: i32 = centre
            .iter()
            .zip(want)
            .map(|(a, b)| (i32::from(*a) - i32::from(b)).abs())
            .sum();
        assert!(dist < 60, "{centre:?} is not {want:?}");
    }
    assert_eq!((frames[0].2, frames[1].2), (100, 200), "{frames:?}");

    // The animated WebP as a source: to GIF and to WebP, every frame kept.
    let back = transform::transform(
        &webp.bytes,
        &plan(Some(50), None, Fit::Inside, Some(OutFormat::Gif)),
        &LIMITS,
    )
    .unwrap();
    let frames = gif_frames_of(&back.bytes);
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert!(frames.iter().all(|f| (f.0, f.1) == (50, 25)));
    assert_eq!((frames[0].2, frames[1].2), (100, 200));
    let again = transform::transform(
        &webp.bytes,
        &plan(Some(40), None, Fit::Inside, None),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(again.format, OutFormat::Webp);
    assert_eq!(webp_frames_of(&again.bytes).len(), 3);
    // A still WebP is one frame.
    let still = transform::transform(
        &image("news-mountain.jpg"),
        &plan(Some(64), None, Fit::Inside, Some(OutFormat::Webp)),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(transform::webp_frames(&still.bytes), Some(1));
}

/// Progressive JPEG is an option (route token `progressive`, preset key `progressive`), off by
/// default: the output is a progressive JPEG (SOF2) of the same size that any decoder reads; on a
/// format other than JPEG it changes nothing (and makes no new cache key).
#[test]
fn progressive_jpeg_is_an_option() {
    let src = image("news-mountain.jpg");
    let mut p = plan(Some(320), None, Fit::Inside, Some(OutFormat::Jpeg));
    let baseline = transform::transform(&src, &p, &LIMITS).unwrap();
    p.progressive = true;
    let progressive = transform::transform(&src, &p, &LIMITS).unwrap();
    let has = |b: &[u8], marker: [u8; 2]| b.windows(2).any(|w| w == marker);
    assert!(has(&baseline.bytes, [0xFF, 0xC0]) && !has(&baseline.bytes, [0xFF, 0xC2]));
    assert!(has(&progressive.bytes, [0xFF, 0xC2]), "SOF2: progressive");
    let (_, w, h, _) = inspect(&progressive.bytes);
    assert_eq!((w, h), (320, 240));
    let route = imgmirror::route::Options {
        width: Some(320),
        format: Some(Format::Jpeg),
        progressive: true,
        ..Default::default()
    };
    let encoded = route::encode("http://a.test/x.jpg", &route, None).unwrap();
    assert!(
        encoded.starts_with("/i/w320_jpeg_progressive/"),
        "{encoded}"
    );
    assert_eq!(route::decode(&encoded, None).unwrap().options, route);
    assert!(route::decode("/i/w320_progressive_jpeg/http/a.test/x.jpg", None).is_err());
    // On PNG it is nothing.
    let mut png = plan(Some(320), None, Fit::Inside, Some(OutFormat::Png));
    let a = transform::transform(&src, &png, &LIMITS).unwrap();
    png.progressive = true;
    let b = transform::transform(&src, &png, &LIMITS).unwrap();
    assert_eq!(a.bytes, b.bytes);
}

/// The capability table says what the encoders do: alpha kept exactly where it says so, and a
/// side past `max_side` refused with 422 before any work.
#[test]
fn the_capability_table_matches_the_encoders() {
    let src = image("fig-alpha.png"); // RGBA
    for format in OutFormat::ALL {
        let caps = format.capabilities();
        let out = transform::transform(
            &src,
            &plan(Some(64), None, Fit::Inside, Some(format)),
            &LIMITS,
        )
        .unwrap();
        let (_, w, _, alpha) = inspect(&out.bytes);
        assert_eq!(w, 64, "{format:?}");
        assert_eq!(alpha, caps.alpha, "{format:?}: alpha");
        assert_eq!(format.is_lossless(), caps.quality.is_none(), "{format:?}");
        if caps.max_side < 65_535 {
            let wide = plan(Some(caps.max_side + 1), Some(10), Fit::Fill, Some(format));
            let err = transform::transform(&src, &wide, &LIMITS).unwrap_err();
            assert!(
                matches!(err, TransformError::TooWideForFormat { .. }),
                "{format:?}: {err}"
            );
            assert_eq!(err.status(), 422);
        }
    }
}

/// SPEC §5's complete-image rule for JPEG: a whole file (here the 4000x3000 photo and one with
/// an EXIF thumbnail, whose own end marker sits inside APP1) is complete; cut anywhere in its
/// scan or anywhere before the last 2 bytes, it is not, even when an embedded image's FF D9
/// comes before the cut.
#[test]
fn a_cut_jpeg_is_incomplete_wherever_it_is_cut() {
    let photo = common::image("large-dragonfly.jpg");
    assert!(transform::is_complete(&photo, Sniffed::Jpeg));
    for cut in [
        photo.len() - 1,
        photo.len() - 2,
        photo.len() * 3 / 4,
        photo.len() / 2,
        1000,
        3,
    ] {
        assert!(
            !transform::is_complete(&photo[..cut], Sniffed::Jpeg),
            "cut at {cut}"
        );
    }
    // An APP1 segment holding a tiny whole JPEG (SOI, SOS, EOI), before the main image's scan.
    let embedded: &[u8] = &[0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x11, 0xFF, 0xD9];
    let mut with_thumb = vec![0xFF, 0xD8, 0xFF, 0xE1];
    with_thumb.extend_from_slice(&u16::try_from(embedded.len() + 2).unwrap().to_be_bytes());
    with_thumb.extend_from_slice(embedded);
    with_thumb.extend_from_slice(&photo[2..]);
    assert!(transform::is_complete(&with_thumb, Sniffed::Jpeg));
    let cut = with_thumb.len() / 2;
    assert!(!transform::is_complete(&with_thumb[..cut], Sniffed::Jpeg));
}

/// Issue #23 item 2: every transform is admitted against `image.memory_bytes` by its measured
/// peak (`transform::budget`). A budget smaller than one resize's peak refuses it (422, saying
/// how much it needs) before anything is decoded; a budget for one at a time runs concurrent
/// resizes one after another, every one answered. The original is served whatever the budget.
#[tokio::test]
async fn transforms_are_admitted_by_their_peak_memory() {
    let origin = Origin::start().await;
    let photo = image("news-mountain.jpg");
    origin.set("/m.jpg", Reply::jpeg(photo.clone()));
    let plan = plan(Some(900), None, Fit::Inside, Some(OutFormat::Webp));
    let limits = Limits {
        max_pixels: 50_000_000,
        max_frames: 256,
    };
    let peak = transform::budget::peak_bytes(&photo, &plan, &limits).unwrap();
    assert!(peak > transform::budget::OVERHEAD, "{peak}");
    let route_with = |width: u32| {
        let o = Options {
            width: Some(width),
            format: Some(Format::Webp),
            ..Default::default()
        };
        route::encode(&origin.url("/m.jpg"), &o, None).unwrap()
    };

    // Too small for one: 422, nothing decoded, the original still served.
    let dir = tempfile::tempdir().unwrap();
    let svc = server::start(config(&origin, dir.path(), &[], |c| {
        c.image.memory_bytes = peak / 2;
    }))
    .await
    .unwrap();
    let r = common::get(&format!("http://{}{}", svc.addr, route_with(900))).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.contains("image.memory_bytes"), "{text}");
    let r = common::get(&common::route_url(svc.addr, &origin.url("/m.jpg"))).await;
    assert_eq!(r.status(), 200);
    svc.shutdown().await;

    // Room for one at a time: eight concurrent resizes (distinct widths, so nothing coalesces)
    // all answered, one after another.
    let dir = tempfile::tempdir().unwrap();
    let svc = server::start(config(&origin, dir.path(), &[], |c| {
        c.image.memory_bytes = peak + peak / 2;
    }))
    .await
    .unwrap();
    let mut all = tokio::task::JoinSet::new();
    for i in 0..8 {
        let url = format!("http://{}{}", svc.addr, route_with(900 - i));
        all.spawn(async move { common::get(&url).await.status().as_u16() });
    }
    while let Some(status) = all.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    svc.shutdown().await;
}
