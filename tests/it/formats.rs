//! Every output format from every input format — JPEG, PNG with alpha, GIF still and animated,
//! WebP still and animated, AVIF with and without alpha — read back by decoders independent of
//! the encoders that wrote them (`image`'s readers, Debian's `avifdec`, `gifsicle`, `webpmux`):
//! sizes, alpha kept where the format holds it, frame counts and delays. Then `Accept`
//! negotiation of AVIF and WebP over HTTP, `q=0` included.

use crate::common;

use common::images::{
    animated_gif, avifdec, decode, gif_frames_of, gifsicle_info, webp_frames_of, webpmux_info,
};
use common::{config, image, Origin, Reply};
use imgmirror::route::{self, Fit, Format, Options};
use imgmirror::server;
use imgmirror::transform::{self, ForAnimation, Limits, OutFormat, Plan, Sniffed};

const LIMITS: Limits = Limits {
    max_pixels: 50_000_000,
    max_frames: 256,
};

fn plan(width: u32, format: Option<OutFormat>) -> Plan {
    Plan {
        width: Some(width),
        height: None,
        fit: Fit::Inside,
        format,
        quality: 70,
        progressive: false,
        animated: ForAnimation::AsPlanned,
    }
}

/// A source of the matrix: its bytes, size, whether it has transparent pixels, and its frames'
/// delays in ms (empty for a still).
struct Source {
    name: &'static str,
    bytes: Vec<u8>,
    size: (u32, u32),
    alpha: bool,
    delays: Vec<u32>,
}

/// The format a sniffed output is.
fn sniffed(format: OutFormat) -> Sniffed {
    match format {
        OutFormat::Jpeg => Sniffed::Jpeg,
        OutFormat::Png => Sniffed::Png,
        OutFormat::Webp => Sniffed::Webp,
        OutFormat::Gif => Sniffed::Gif,
        OutFormat::Avif => Sniffed::Avif,
    }
}

fn sources() -> Vec<Source> {
    let (red, green, blue) = ([255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 128]);
    let gif = animated_gif(&[(red, 100), (green, 200), (blue, 300)], 200, 100);
    let webp_anim = transform::transform(&gif, &plan(160, Some(OutFormat::Webp)), &LIMITS)
        .expect("animated WebP")
        .bytes;
    let webp_still = transform::transform(
        &image("news-mountain.jpg"),
        &plan(400, Some(OutFormat::Webp)),
        &LIMITS,
    )
    .expect("WebP")
    .bytes;
    let fixture = |name: &'static str, size, alpha| Source {
        name,
        bytes: image(name).to_vec(),
        size,
        alpha,
        delays: vec![],
    };
    let made = |name, bytes, size, delays: &[u32]| Source {
        name,
        bytes,
        size,
        alpha: false,
        delays: delays.to_vec(),
    };
    vec![
        fixture("news-mountain.jpg", (1000, 750), false),
        fixture("fig-alpha.png", (1000, 677), true),
        fixture("bridge.gif", (1000, 563), false),
        made("animated gif", gif, (200, 100), &[100, 200, 300]),
        made("still webp", webp_still, (400, 300), &[]),
        made("animated webp", webp_anim, (160, 80), &[100, 200, 300]),
        fixture("news-mountain.avif", (1000, 750), false),
        fixture("fig-alpha.avif", (1000, 677), true),
    ]
}

#[test]
fn every_output_format_from_every_input_format() {
    for src in sources() {
        let (kind, w, h) = transform::probe(&src.bytes).unwrap();
        assert_eq!((w, h), src.size, "{}: probed size", src.name);
        let mut outputs: Vec<Option<OutFormat>> = OutFormat::ALL.into_iter().map(Some).collect();
        outputs.push(None); // `original`: the source's own format
        for format in outputs {
            let what = format!("{} -> {format:?}", src.name);
            let out = transform::transform(&src.bytes, &plan(120, format), &LIMITS)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let want = format.unwrap_or_else(|| OutFormat::from_sniffed(kind).unwrap());
            assert_eq!(out.format, want, "{what}");
            assert_eq!(transform::sniff(&out.bytes), Some(sniffed(want)), "{what}");
            let caps = want.capabilities();
            let img = decode(&out.bytes);
            let height = (f64::from(src.size.1) * 120.0 / f64::from(src.size.0)).round() as u32;
            assert_eq!(img.width(), 120, "{what}: width");
            assert!(
                img.height().abs_diff(height) <= 1,
                "{what}: {}",
                img.height()
            );
            // Alpha: kept where the format holds it (the corner of the ellipse mask is clear),
            // composited over white where it does not.
            if src.alpha {
                let corner = img.to_rgba8().get_pixel(0, 0).0;
                if caps.alpha {
                    assert!(corner[3] < 64, "{what}: alpha lost: {corner:?}");
                } else {
                    assert!(corner[..3].iter().all(|c| *c > 230), "{what}: {corner:?}");
                }
            }
            // Frames: every frame and its delay where the format holds an animation, by two
            // readers; otherwise the first frame as a still.
            let animated = !src.delays.is_empty() && caps.animation;
            match want {
                OutFormat::Gif => {
                    let (n, delays) = gifsicle_info(&out.bytes);
                    let frames = gif_frames_of(&out.bytes);
                    if animated {
                        assert_eq!((n, &delays), (3, &src.delays), "{what}: gifsicle");
                        let by_image: Vec<u32> = frames.iter().map(|f| f.2).collect();
                        assert_eq!(by_image, src.delays, "{what}");
                    } else {
                        assert_eq!((n, frames.len()), (1, 1), "{what}");
                    }
                }
                OutFormat::Webp if animated => {
                    let (n, durations) = webpmux_info(&out.bytes);
                    assert_eq!((n, &durations), (3, &src.delays), "{what}: webpmux");
                    assert_eq!(webp_frames_of(&out.bytes).len(), 3, "{what}");
                }
                OutFormat::Webp => assert_eq!(transform::webp_frames(&out.bytes), Some(1)),
                _ => {}
            }
        }
    }
}

/// An AVIF source's colours survive: its decode by libaom here matches Debian's dav1d-based
/// `avifdec` of the same file, pixel for pixel within rounding.
#[test]
fn avif_sources_decode_like_an_independent_decoder() {
    for name in ["news-mountain.avif", "fig-alpha.avif"] {
        let src = image(name);
        let out = transform::transform(
            &src,
            &Plan {
                width: None,
                ..plan(1, Some(OutFormat::Png))
            },
            &LIMITS,
        )
        .unwrap();
        let ours = image::load_from_memory(&out.bytes).unwrap().to_rgba8();
        let theirs = avifdec(&src).to_rgba8();
        assert_eq!(ours.dimensions(), theirs.dimensions(), "{name}");
        let diffs: Vec<u8> = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = diffs.iter().map(|d| f64::from(*d)).sum::<f64>() / diffs.len() as f64;
        let worst = diffs.iter().max().unwrap();
        // Measured: mean 0.21 and 0.17; the largest differences (up to 19) are at sharp edges,
        // where the two decoders upsample 4:2:0 chroma differently.
        assert!(mean < 1.0, "{name}: mean channel difference {mean:.2}");
        assert!(*worst < 48, "{name}: a channel differs by {worst}");
    }
}

/// `image.auto_avif` and `image.auto_webp` over HTTP: AVIF before WebP when `Accept` lists both,
/// `q=0` honoured, wildcards naming neither, `Vary: Accept` on every negotiated route, a named
/// format never negotiated, an animated GIF kept animated (as WebP, or as GIF) rather than
/// flattened into AVIF, and AVIF transforms timed on `/metrics`.
#[tokio::test]
async fn avif_and_webp_negotiation_over_http() {
    let origin = Origin::start().await;
    origin.set("/m.jpg", Reply::jpeg(image("news-mountain.jpg")));
    let (red, green) = ([255, 0, 0, 255], [0, 255, 0, 255]);
    origin.set(
        "/a.gif",
        Reply::Ok {
            body: animated_gif(&[(red, 100), (green, 200)], 200, 100).into(),
            content_type: "image/gif",
            etag: None,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&origin, dir.path(), &[], |c| {
        c.image.auto_avif = true;
        c.image.auto_webp = true;
    });
    let svc = server::start(cfg).await.unwrap();
    let photo = origin.url("/m.jpg");
    let w320 = Options {
        width: Some(320),
        ..Default::default()
    };
    let url = common::route_url_with(svc.addr, &photo, &w320);
    for (accept, want) in [
        ("image/avif,image/webp,*/*;q=0.8", "image/avif"),
        ("image/webp,image/avif;q=0.5", "image/avif"),
        ("image/avif;q=0,image/webp,*/*", "image/webp"),
        ("image/avif;q=0, image/webp;q=0", "image/jpeg"),
        ("image/webp", "image/webp"),
        ("*/*", "image/jpeg"),
        ("", "image/jpeg"),
    ] {
        let r = common::get_with(&url, &[("accept", accept)]).await;
        assert_eq!(r.status(), 200, "{accept}");
        assert_eq!(r.headers()["content-type"], want, "{accept}");
        assert_eq!(r.headers()["vary"], "Accept", "{accept}");
        // Negotiated bytes are never marked immutable: a CDN that ignores Vary would pin one
        // client's format for everyone.
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=2592000",
            "{accept}"
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(decode(&body).width(), 320, "{accept}");
    }
    // The AVIF variant is kept apart from the others: asked again, from memory, same bytes.
    let avif = common::get_with(&url, &[("accept", "image/avif")]).await;
    assert_eq!(avif.headers()["x-cache"], "HIT-MEMORY");
    // A named format is never negotiated and does not vary.
    let jpeg = Options {
        format: Some(Format::Jpeg),
        ..w320.clone()
    };
    let r = common::get_with(
        &common::route_url_with(svc.addr, &photo, &jpeg),
        &[("accept", "image/avif")],
    )
    .await;
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert!(r.headers().get("vary").is_none());
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=2592000, immutable, stale-if-error=604800"
    );
    // An animation stays one: AVIF is stills only here, so for a client that takes WebP too it
    // becomes an animated WebP, and for one that takes AVIF alone it keeps its own format.
    let w100 = Options {
        width: Some(100),
        ..Default::default()
    };
    let gif_url = common::route_url_with(svc.addr, &origin.url("/a.gif"), &w100);
    let r = common::get_with(&gif_url, &[("accept", "image/avif,image/webp,*/*")]).await;
    assert_eq!(r.headers()["content-type"], "image/webp");
    assert_eq!(webpmux_info(&r.bytes().await.unwrap()), (2, vec![100, 200]));
    let r = common::get_with(&gif_url, &[("accept", "image/avif,*/*")]).await;
    assert_eq!(r.headers()["content-type"], "image/gif");
    assert_eq!(
        gifsicle_info(&r.bytes().await.unwrap()),
        (2, vec![100, 200])
    );
    // A still for the AVIF-only client and the AVIF+WebP one: both AVIF.
    let r = common::get_with(&url, &[("accept", "image/avif,*/*")]).await;
    assert_eq!(r.headers()["content-type"], "image/avif");
    // The original is the original, whatever Accept says.
    let r = common::get_with(
        &common::route_url(svc.addr, &photo),
        &[("accept", "image/avif")],
    )
    .await;
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().await.unwrap(), image("news-mountain.jpg"));
    // AVIF encodes are timed by format.
    let metrics = common::text(&common::client(), svc.addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("imgmirror_transform_duration_seconds_count{format=\"avif\"}")),
        "{metrics}"
    );
    svc.shutdown().await;

    // With AVIF negotiation alone, a WebP-only client gets the default.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&origin, dir.path(), &[], |c| c.image.auto_avif = true);
    let svc = server::start(cfg).await.unwrap();
    let url = common::route_url_with(svc.addr, &photo, &w320);
    let r = common::get_with(&url, &[("accept", "image/webp,*/*")]).await;
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["vary"], "Accept");
    let r = common::get_with(&url, &[("accept", "image/avif")]).await;
    assert_eq!(r.headers()["content-type"], "image/avif");
    svc.shutdown().await;
}

/// `avif` is a format everywhere SPEC names formats: `imgmirror url --format avif`, a preset's
/// `format = "avif"`, and the route token.
#[test]
fn avif_is_a_format_of_the_cli_and_presets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[presets.hero]\nwidth = 640\nformat = \"avif\"\n",
    )
    .unwrap();
    let out = common::bin::run(
        dir.path(),
        &[
            "url",
            "--width",
            "320",
            "--format",
            "avif",
            "http://a.test/x.jpg",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "/i/w320_avif/http/a.test/x.jpg");
    let out = common::bin::run(
        dir.path(),
        &[
            "url",
            "--config",
            "c.toml",
            "--preset",
            "hero",
            "http://a.test/x.jpg",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let route = out.stdout.trim().to_string();
    let cfg = imgmirror::config::Config::load(Some(&dir.path().join("c.toml"))).unwrap();
    let opts = route::decode(&route, None).unwrap().options;
    let planned = imgmirror::mirror::plan(&cfg, &opts, Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(planned.plan.format, Some(OutFormat::Avif));
    assert_eq!(planned.plan.width, Some(640));
}
