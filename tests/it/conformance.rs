//! The formats' own conformance suites through the real service (issue #26): every valid file is
//! served byte for byte as its original and made into variants whose pixels match a reference
//! decoded independently of imgmirror; every invalid file is refused and never mirrored; nothing
//! answers 500.
//!
//! PngSuite (2017jul19, Willem van Schaik; `tests/fixtures/pngsuite/LICENSE`): its 161 valid
//! files and the 14 it marks invalid (`x*.png`), with references made by
//! `scripts/pngsuite-fixtures` from lunapaint/pngsuite's pixels (Paint.NET's decoding).
//!
//! EXIF orientation (recurser/exif-orientation-examples, Dave Perrett, MIT;
//! `tests/fixtures/exif-orientation/LICENSE`): the nine landscape samples (no tag, then 1 to 8),
//! with references made by `scripts/exif-orientation-fixtures` (ImageMagick's `-auto-orient`).
//!
//! AV1 AVIF (`scripts/avif-fixtures`): Link-U's transformation samples and its fox at every
//! profile (CC-BY-SA 4.0), Microsoft's samples (BSD-2-Clause), a grid and a sequence made by
//! avifenc, the grid again with its descriptor in `idat` (as libheif writes grids), the sequence
//! again with no still (its frames in its tracks alone); references by Debian's avifdec at test
//! time.
//!
//! libjpeg-turbo's 12-bit test image (Modified BSD; `scripts/jpeg12-fixtures`).
//!
//! libwebp-test-data (libwebp's BSD licence, `tests/fixtures/libwebp/COPYING`;
//! `scripts/libwebp-fixtures`): 129 files, the reference being libwebp's own decoding (Debian's
//! `dwebp`, checked against the suite's `libwebp_tests.md5`).

use crate::common;

use std::path::{Path, PathBuf};

use common::{Reply, Served};
use imgmirror::route::{encode, Format, Options};
use imgmirror::store::{record_path, Kind};

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pngsuite")
}

/// The suite's files: (name, bytes), sorted.
fn files() -> Vec<(String, bytes::Bytes)> {
    names_in(&suite(), ".png")
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(suite().join(&n)).expect("a suite file");
            (n, bytes::Bytes::from(bytes))
        })
        .collect()
}

/// How far a half-size variant may be from the reference resized by another Lanczos3: at most
/// this on one channel of one pixel (the two implementations ring differently at the suite's
/// sharp edges: up to 22 seen, on a few pixels), and this on average (what a wrong colour type,
/// gamma, palette or alpha would move by tens).
const MAX_RESIZED: u8 = 24;
const MEAN_RESIZED: f64 = 1.5;

/// Puts `bytes` on `origin` at `/<name>` and asks the service at `addr` for its original:
/// (the upstream URL, the status, the body).
async fn original(
    c: &reqwest::Client,
    origin: &common::Origin,
    addr: std::net::SocketAddr,
    name: &str,
    bytes: &bytes::Bytes,
    content_type: &'static str,
) -> (String, u16, bytes::Bytes) {
    let reply = Reply::Ok {
        body: bytes.clone(),
        content_type,
        etag: None,
    };
    origin.set(&format!("/{name}"), reply);
    let url = origin.url(&format!("/{name}"));
    let r = c.get(common::route_url(addr, &url)).send().await.unwrap();
    let status = r.status().as_u16();
    (url, status, r.bytes().await.unwrap())
}

/// The PNG variant of `url` at `width` px from the service at `addr`, decoded, and of the size
/// `want`; else what went wrong.
async fn png_variant(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
    url: &str,
    width: u32,
    want: (u32, u32),
) -> Result<image::RgbaImage, String> {
    let options = Options {
        width: Some(width),
        format: Some(Format::Png),
        ..Options::default()
    };
    let route = encode(url, &options, None).map_err(|e| e.to_string())?;
    let r = c
        .get(format!("http://{addr}{route}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    if status != 200 {
        return Err(format!("at {width} px: {status}"));
    }
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    let got = image::load_from_memory(&body)
        .map_err(|e| format!("at {width} px: {e}"))?
        .to_rgba8();
    match got.dimensions() == want {
        true => Ok(got),
        false => Err(format!(
            "at {width} px: {:?}, not {want:?}",
            got.dimensions()
        )),
    }
}

/// [`png_variant`] at `reference`'s own size.
async fn same_size(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
    url: &str,
    reference: &image::RgbaImage,
) -> Result<image::RgbaImage, String> {
    let size = reference.dimensions();
    png_variant(c, addr, url, size.0, size).await
}

/// `result`'s value, or `None` with its failure noted in `problems` under `name`.
fn noted<T>(result: Result<T, String>, name: &str, problems: &mut Vec<String>) -> Option<T> {
    result
        .map_err(|why| problems.push(format!("{name}: {why}")))
        .ok()
}

/// Puts an invalid file (`bytes`, as `name`) on `origin` and asks the service for it: `None`
/// when it was refused (415: not an image of its type; 502: an upstream failure, a file that does
/// not decode to its end) and nothing of it was mirrored under `mirror`, else what happened.
async fn refused(
    c: &reqwest::Client,
    origin: &common::Origin,
    addr: std::net::SocketAddr,
    mirror: &Path,
    name: &str,
    bytes: &bytes::Bytes,
    content_type: &'static str,
) -> Option<String> {
    let (url, status, _) = original(c, origin, addr, name, bytes, content_type).await;
    let mirrored = mirror.join(record_path(Kind::Original, &url)).exists();
    (!matches!(status, 415 | 502) || mirrored)
        .then(|| format!("{name}: invalid, yet {status}, mirrored {mirrored}"))
}

/// The names of the files in `folder` ending in `ext` (with its dot), sorted.
fn names_in(folder: &Path, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{folder:?}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    names.sort();
    names
}

/// Fails with every problem found, one per line.
fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The largest difference of one channel between two RGBA images of one size, and their mean
/// absolute difference per channel.
fn difference(a: &image::RgbaImage, b: &image::RgbaImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut max, mut sum) = (0u8, 0u64);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
    }
    (max, sum as f64 / a.as_raw().len() as f64)
}

/// Premultiplied by alpha: fully transparent pixels of any colour are the same (a decoder may
/// keep or drop the colour under alpha 0; what shows is the same).
fn shown(img: &image::RgbaImage) -> image::RgbaImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let a = u16::from(p[3]);
        for c in 0..3 {
            p[c] = ((u16::from(p[c]) * a + 127) / 255) as u8;
        }
    }
    out
}

/// Half of `img` (as shown: premultiplied), by the `image` crate's own Lanczos3 (the service
/// resizes with fast_image_resize's: another implementation of the same filter).
fn halved(img: &image::RgbaImage) -> image::RgbaImage {
    let (w, h) = (img.width() / 2, img.height() / 2);
    image::imageops::resize(&shown(img), w, h, image::imageops::FilterType::Lanczos3)
}

/// Compares the PNG variants of `url` (`name`) with `reference`: at its own size (decode and
/// encode, no resampling) within `same` (the largest difference on one channel, the mean), and,
/// when its sides are even, at half its size within [`MAX_RESIZED`] and [`MEAN_RESIZED`] of the
/// reference resized by another Lanczos3 (the service's filter is not a box; the mean bounds what
/// a wrong colour, gamma or alpha would move). Both as shown: premultiplied by alpha.
async fn compared_at_two_sizes(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
    url: &str,
    name: &str,
    reference: &image::RgbaImage,
    same: (u8, f64),
    problems: &mut Vec<String>,
) {
    let (w, h) = reference.dimensions();
    let mut sizes = vec![(w, shown(reference), same)];
    if w % 2 == 0 && h % 2 == 0 && w >= 2 && h >= 2 {
        sizes.push((w / 2, halved(reference), (MAX_RESIZED, MEAN_RESIZED)));
    }
    for (width, want, (max_ok, mean_ok)) in sizes {
        match png_variant(c, addr, url, width, want.dimensions()).await {
            Ok(got) => {
                let (max, mean) = difference(&shown(&got), &want);
                if max > max_ok || mean > mean_ok {
                    problems.push(format!(
                        "{name} at {width} px: differs from the reference by up to {max}, {mean:.3} on average"
                    ));
                }
            }
            Err(why) => problems.push(format!("{name} ({w}x{h}): {why}")),
        }
    }
}

#[tokio::test]
async fn every_pngsuite_file_is_served_right_or_refused() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let files = files();
    assert_eq!(files.len(), 175, "the whole suite is committed");
    let c = common::client();
    let mut problems = Vec::new();
    for (name, bytes) in &files {
        if name.starts_with('x') {
            // Invalid (PngSuite's x-files): refused, nothing of it kept.
            let why = refused(&c, &origin, svc.addr, dir.path(), name, bytes, "image/png").await;
            problems.extend(why);
            continue;
        }
        let (url, status, body) = original(&c, &origin, svc.addr, name, bytes, "image/png").await;
        if status != 200 || body != *bytes {
            problems.push(format!("{name}: original {status}, {} bytes", body.len()));
            continue;
        }
        let reference = image::load_from_memory(
            &std::fs::read(suite().join("reference").join(name)).expect("a reference"),
        )
        .expect("the reference decodes")
        .to_rgba8();
        // Same size: 16 to 8 bits may round either way.
        let same = (1, 0.5);
        compared_at_two_sizes(&c, svc.addr, &url, name, &reference, same, &mut problems).await;
    }
    svc.shutdown().await;
    assert_no_problems(&problems);
}

/// How far a 120-px variant of an EXIF orientation sample may be, on average per channel, from
/// ImageMagick's (`-auto-orient -resize 120x`, another decoder's orientation and another resize
/// filter): a wrong orientation moves it by tens (the picture is an asymmetric figure).
const MEAN_ORIENTED: f64 = 4.0;

/// Serves each sample of `folder` (`names`, with `content_type`) and compares its PNG variant as
/// wide as its reference (`reference/<stem>.png`) with that reference: the original byte for
/// byte, the variant within [`MEAN_ORIENTED`] on average.
async fn shown_as_references(folder: &str, names: &[String], content_type: &'static str) {
    let Served {
        origin,
        svc,
        dir: _dir,
    } = Served::start(|_| {}).await;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder);
    let c = common::client();
    let mut problems = Vec::new();
    let mut compared = 0;
    for name in names {
        let bytes = bytes::Bytes::from(std::fs::read(folder.join(name)).expect("a sample"));
        let (url, status, body) = original(&c, &origin, svc.addr, name, &bytes, content_type).await;
        if status != 200 || body != bytes {
            problems.push(format!("{name}: original {status}, {} bytes", body.len()));
            continue;
        }
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        let reference = image::open(folder.join("reference").join(format!("{stem}.png")))
            .expect("the reference decodes")
            .to_rgba8();
        let same = same_size(&c, svc.addr, &url, &reference).await;
        let Some(got) = noted(same, name, &mut problems) else {
            continue;
        };
        let (_, mean) = difference(&got, &reference);
        if mean > MEAN_ORIENTED {
            problems.push(format!("{name}: {mean:.2} on average from the reference"));
        }
        compared += 1;
    }
    svc.shutdown().await;
    assert_no_problems(&problems);
    assert_eq!(compared, names.len());
}

#[tokio::test]
async fn every_exif_orientation_sample_is_shown_upright() {
    let names: Vec<String> = (0..=8).map(|i| format!("Landscape_{i}.jpg")).collect();
    shown_as_references("exif-orientation", &names, "image/jpeg").await;
}

/// AVIF `irot` and `imir` applied (Link-U's kimono, stored upright, turned 90 and 270 degrees,
/// mirrored about either axis, mirrored and turned, each marked to be shown upright again): every
/// one shows the upright kimono, as the suite says.
#[tokio::test]
async fn avif_rotation_and_mirroring_are_applied() {
    let names: Vec<String> = [
        "",
        ".rotate90",
        ".rotate270",
        ".mirror-horizontal",
        ".mirror-vertical",
        ".mirror-vertical.rotate270",
    ]
    .iter()
    .map(|t| format!("kimono{t}.avif"))
    .collect();
    shown_as_references("av1-avif", &names, "image/avif").await;
}

/// libwebp's own test data (webmproject/libwebp-test-data, under libwebp's BSD licence:
/// `tests/fixtures/libwebp/COPYING`; `scripts/libwebp-fixtures`).
fn libwebp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libwebp")
}

/// What Debian's `dwebp` (libwebp itself) decodes `file` to: RGBA pixels, and the MD5 of the PAM
/// it wrote, the form the suite's `libwebp_tests.md5` lists.
fn dwebp(file: &Path) -> (image::RgbaImage, String) {
    let dir = tempfile::tempdir().unwrap();
    let pam = dir.path().join("out.pam");
    common::images::run_tool(
        "dwebp",
        &[
            "-quiet".as_ref(),
            "-pam".as_ref(),
            file.as_os_str(),
            "-o".as_ref(),
            pam.as_os_str(),
        ],
    );
    let md5 = common::images::run_tool("md5sum", &[pam.as_os_str()]);
    let bytes = std::fs::read(&pam).unwrap();
    // "P7\nWIDTH w\nHEIGHT h\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n", then RGBA rows.
    let end = bytes
        .windows(7)
        .position(|w| w == b"ENDHDR\n")
        .expect("a PAM header")
        + 7;
    let header = String::from_utf8_lossy(&bytes[..end]);
    let field = |k: &str| -> u32 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
            .expect("a PAM dimension")
    };
    let image = image::RgbaImage::from_raw(field("WIDTH"), field("HEIGHT"), bytes[end..].to_vec())
        .expect("RGBA samples");
    (image, md5[..32].to_string())
}

/// Every file of libwebp's test data (lossy VP8 of every coding feature the VP8 test vectors
/// exercise, lossless VP8L with every transform and colour-cache size, alpha planes with every
/// filter and compression) through the real service: the original byte for byte, the same-size
/// PNG variant as libwebp decodes it (libwebp's decoding checked against the suite's own MD5
/// list first) exactly, lossy files included (imgmirror decodes WebP with libwebp too), the
/// half-size one within the resize tolerance; and a truncated copy of one file
/// of each kind refused and not mirrored.
#[tokio::test]
async fn every_libwebp_test_file_is_served_as_libwebp_decodes_it() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let md5s: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(libwebp().join("libwebp_tests.md5"))
            .expect("the suite's MD5 list")
            .lines()
            .filter_map(|l| {
                let (md5, name) = l.split_once("  ")?;
                Some((name.strip_suffix(".pam")?.to_string(), md5.to_string()))
            })
            .collect();
    let names = names_in(&libwebp(), ".webp");
    assert_eq!(names.len(), 129, "the whole suite is committed");
    let c = common::client();
    let mut problems = Vec::new();
    let mut listed = 0;
    for name in &names {
        let path = libwebp().join(name);
        let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
        let (url, status, body) = original(&c, &origin, svc.addr, name, &bytes, "image/webp").await;
        if status != 200 || body != bytes {
            problems.push(format!("{name}: original {status}, {} bytes", body.len()));
            continue;
        }
        let (reference, md5) = dwebp(&path);
        if let Some(want) = md5s.get(name) {
            assert_eq!(
                &md5, want,
                "{name}: dwebp disagrees with the suite's MD5 list"
            );
            listed += 1;
        }
        compared_at_two_sizes(
            &c,
            svc.addr,
            &url,
            name,
            &reference,
            (0, 0.0),
            &mut problems,
        )
        .await;
    }
    // Cut short: the first half of a lossy, a lossless and a lossy-with-alpha file.
    for name in ["test.webp", "lossless1.webp", "lossy_alpha1.webp"] {
        let bytes = std::fs::read(libwebp().join(name)).unwrap();
        let cut = bytes::Bytes::from(bytes[..bytes.len() / 2].to_vec());
        let cut_name = format!("cut-{name}");
        let why = refused(
            &c,
            &origin,
            svc.addr,
            dir.path(),
            &cut_name,
            &cut,
            "image/webp",
        )
        .await;
        problems.extend(why);
    }
    svc.shutdown().await;
    assert_eq!(listed, 96, "files the suite's MD5 list names");
    assert_no_problems(&problems);
}

/// How far an AVIF's same-size variant may be from what Debian's avifdec (libavif 0.11 with
/// dav1d, another AV1 decoder) decodes, on average per channel: the AV1 frames decode alike, but
/// libavif upsamples 4:2:0 chroma by a filter and imgmirror (as aom-decode) by the nearest sample,
/// which moves single pixels at sharp colour edges (up to [`MAX_AVIF`], seen 56) and the mean by
/// about 0.5; a wrong range or matrix (washed-out or tinted colour) moves it by 5 to 9.
const MEAN_AVIF: f64 = 1.0;
const MAX_AVIF: u8 = 64;

/// Microsoft's `Monochrome.avif` (limited range, no `nclx`), as Chromium 156 shows it: the mean
/// of its grey, measured by drawing it on a canvas (`getImageData`) in headless Chromium. Debian's
/// avifdec 0.11 decodes it darker (147.9, its limited range not expanded); imgmirror follows the
/// browser.
const MONOCHROME_IN_CHROMIUM: f64 = 153.59;

/// The AV1 AVIF suite beyond orientation (`tests/fixtures/av1-avif`; `scripts/avif-fixtures`):
/// Link-U's fox at every profile, bit depth and chroma layout, Microsoft's samples (full range
/// with the matrix unspecified, 4:4:4, monochrome, alpha, 10 bits, reduced headers, thumbnails,
/// a rotation), a 2x2 grid (and the same with its descriptor in `idat`) and a sequence with alpha
/// (and the same with no still) made by avifenc. Each: the original byte for
/// byte, the same-size PNG variant within [`MEAN_AVIF`] of avifdec's decoding; and the first half
/// of one refused and not mirrored.
#[tokio::test]
async fn every_av1_avif_file_is_shown_as_libavif_decodes_it() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/av1-avif");
    let names: Vec<String> = names_in(&folder, ".avif")
        .into_iter()
        .filter(|n| !n.starts_with("kimono")) // the orientation test's
        .collect();
    assert_eq!(names.len(), 21, "the committed subset");
    let c = common::client();
    let mut problems = Vec::new();
    for name in &names {
        let bytes = bytes::Bytes::from(std::fs::read(folder.join(name)).unwrap());
        let (url, status, body) = original(&c, &origin, svc.addr, name, &bytes, "image/avif").await;
        if status != 200 || body != bytes {
            problems.push(format!("{name}: original {status}, {} bytes", body.len()));
            continue;
        }
        let mut reference = common::images::avifdec(&bytes).to_rgba8();
        if name == "Ronda_rotate90.avif" {
            // avifdec 0.11 does not apply `irot`; the suite says: shown turned 90 degrees
            // clockwise.
            reference = image::imageops::rotate90(&reference);
        }
        let size = reference.dimensions();
        let same = same_size(&c, svc.addr, &url, &reference).await;
        let Some(got) = noted(same, name, &mut problems) else {
            continue;
        };
        if name == "Monochrome.avif" {
            let grey =
                got.pixels().map(|p| f64::from(p[0])).sum::<f64>() / f64::from(size.0 * size.1);
            if (grey - MONOCHROME_IN_CHROMIUM).abs() > 0.5 {
                problems.push(format!(
                    "{name}: mean grey {grey:.2}, Chromium shows {MONOCHROME_IN_CHROMIUM}"
                ));
            }
            continue;
        }
        let (max, mean) = difference(&shown(&got), &shown(&reference));
        if max > MAX_AVIF || mean > MEAN_AVIF {
            problems.push(format!(
                "{name}: differs from avifdec's decoding by up to {max}, {mean:.3} on average"
            ));
        }
    }
    let bytes = std::fs::read(folder.join("Irvine_CA.avif")).unwrap();
    let cut = bytes::Bytes::from(bytes[..bytes.len() / 2].to_vec());
    let (name, mirror) = ("cut-Irvine_CA.avif", dir.path());
    problems.extend(refused(&c, &origin, svc.addr, mirror, name, &cut, "image/avif").await);
    svc.shutdown().await;
    assert_no_problems(&problems);
}

/// How far the 12-bit JPEG's same-size variant may be from the 16-bit picture it was compressed
/// from, on average per channel (JPEG's own loss at the quality it was made with); a decode
/// that took the 12-bit samples for 8-bit ones, or a wrong colour transform, moves it by tens.
const MEAN_JPEG_12: f64 = 3.0;

/// libjpeg-turbo's 12-bit test image (`tests/fixtures/libjpeg-turbo`, Modified BSD;
/// `scripts/jpeg12-fixtures`): served byte for byte, its same-size PNG variant within
/// [`MEAN_JPEG_12`] of the picture it was made from; cut in half: refused, not mirrored.
#[tokio::test]
async fn a_12_bit_jpeg_is_decoded() {
    let Served { origin, dir, svc } = Served::start(|_| {}).await;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libjpeg-turbo");
    let bytes = bytes::Bytes::from(std::fs::read(folder.join("monkey12.jpg")).unwrap());
    let c = common::client();
    let (url, status, body) =
        original(&c, &origin, svc.addr, "monkey12.jpg", &bytes, "image/jpeg").await;
    assert_eq!((status, &body), (200, &bytes));
    let reference = image::open(folder.join("reference/monkey12.png"))
        .unwrap()
        .to_rgba8();
    let size = reference.dimensions();
    let got = same_size(&c, svc.addr, &url, &reference).await.unwrap();
    let (max, mean) = difference(&got, &reference);
    eprintln!("monkey12.jpg: {max} at most, {mean:.3} on average");
    assert!(
        mean <= MEAN_JPEG_12,
        "{mean:.3} on average from the reference"
    );
    let half = got.width() / 2;
    let small = png_variant(
        &c,
        svc.addr,
        &url,
        half,
        (half, (size.1 * half + size.0 / 2) / size.0),
    )
    .await;
    assert!(small.is_ok(), "{small:?}");
    let cut = bytes.slice(..bytes.len() / 2);
    let (name, mirror) = ("cut-monkey12.jpg", dir.path());
    let why = refused(&c, &origin, svc.addr, mirror, name, &cut, "image/jpeg").await;
    assert_eq!(why, None);
    svc.shutdown().await;
}
