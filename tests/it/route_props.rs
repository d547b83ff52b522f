//! Properties of the route contract: round trips for arbitrary URLs and options, signatures that
//! cannot be forged or moved, and a decoder that never panics.

use crate::common;

use imgmirror::route::{decode, encode, Fit, Format, Options, RouteError, SigningKey};
use proptest::prelude::*;

/// Arbitrary http(s) URLs: hosts (names, IPv4, IPv6, IDN), ports, paths with `%` escapes, dots,
/// double slashes and non-ASCII, queries (maybe empty: a trailing `?`) and fragments.
fn url_strategy() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![Just("http"), Just("https")];
    let host = prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z0-9]{1,8}){0,3}",
        Just("127.0.0.1".to_string()),
        Just("[::1]".to_string()),
        Just("[2001:db8::ff00:42:8329]".to_string()),
        Just("例子.测试".to_string()),
        Just("zkres2.myzaker.com".to_string()),
    ];
    let port = prop::option::of(1u16..);
    let segment = prop_oneof![
        "[A-Za-z0-9._~:@!$'()*+,;=-]{0,12}",
        "%[0-9A-Fa-f]{2}[a-z]{0,3}",
        Just("..".to_string()),
        Just(".".to_string()),
        Just("图片 文件.jpg".to_string()),
        Just("a~tplv-k3u1fbpfcp-zoom:4536:0.awebp".to_string()),
    ];
    let path = prop::collection::vec(segment, 0..6);
    let query = prop::option::of("[A-Za-z0-9=&%/?:,._~+-]{0,20}");
    let fragment = prop::option::of("[a-z0-9]{0,6}");
    (scheme, host, port, path, query, fragment).prop_map(|(s, h, p, path, q, f)| {
        let mut u = format!("{s}://{h}");
        if let Some(p) = p {
            u.push_str(&format!(":{p}"));
        }
        for seg in path {
            u.push('/');
            u.push_str(&seg);
        }
        if let Some(q) = q {
            u.push('?');
            u.push_str(&q);
        }
        if let Some(f) = f {
            u.push('#');
            u.push_str(&f);
        }
        u
    })
}

fn options_strategy() -> impl Strategy<Value = Options> {
    (
        prop::option::of("[a-z0-9-]{1,12}"),
        prop::option::of(1u32..100_000),
        prop::option::of(1u32..100_000),
        prop::option::of(prop::sample::select(Fit::ALL.to_vec())),
        prop::option::of(prop::sample::select(Format::ALL.to_vec())),
        prop::option::of(1u8..=100),
        any::<bool>(),
    )
        .prop_map(
            |(preset, width, height, fit, format, quality, progressive)| Options {
                preset,
                width,
                height,
                fit,
                format,
                quality,
                progressive,
            },
        )
}

fn key(b: u8) -> SigningKey {
    SigningKey::new(&[b; 32]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(u in url_strategy(), o in options_strategy()) {
        // Only URLs an HTTP client can fetch are encodable; the generator makes (almost) only those.
        prop_assume!(url::Url::parse(&u).is_ok());
        let r = encode(&u, &o, None).unwrap();
        let d = decode(&r, None).unwrap();
        prop_assert_eq!(&d.upstream, &u);
        prop_assert_eq!(&d.options, &o);
        // Safe in every context the rewriter writes to, and never normalised by a browser.
        for bad in [' ', '"', '\'', '(', ')', '<', '>', '&', '#', '\\', '%', ',', ':', '?'] {
            prop_assert!(!r.contains(bad), "{} contains {:?}", r, bad);
        }
        prop_assert!(!r.contains("//"));
        prop_assert!(!r.split('/').any(|s| s == "." || s == ".."));
        // Deterministic.
        prop_assert_eq!(encode(&u, &o, None).unwrap(), r);
    }

    #[test]
    fn signed_round_trip_and_forgery(u in url_strategy(), o in options_strategy(), flip in 0usize..43) {
        prop_assume!(url::Url::parse(&u).is_ok());
        let k = key(1);
        let r = encode(&u, &o, Some(&k)).unwrap();
        prop_assert_eq!(decode(&r, Some(&k)).unwrap().upstream, u.clone());
        // Wrong key.
        prop_assert_eq!(decode(&r, Some(&key(2))), Err(RouteError::BadSignature));
        // One signature character changed.
        let mut forged = r.clone().into_bytes();
        let i = 3 + flip;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        prop_assert!(decode(&forged, Some(&k)).is_err());
        // Truncated signature.
        let truncated = format!("/s/{}{}", &r[3..20], &r[3 + 43..]);
        prop_assert!(decode(&truncated, Some(&k)).is_err());
        // Signature moved onto another URL.
        let other = encode("http://other.example/x.jpg", &o, Some(&k)).unwrap();
        let moved = format!("{}{}", &r[..3 + 43], &other[3 + 43..]);
        prop_assert_eq!(decode(&moved, Some(&k)), Err(RouteError::BadSignature));
        // Unsigned when a key is set.
        let unsigned = encode(&u, &o, None).unwrap();
        prop_assert_eq!(decode(&unsigned, Some(&k)), Err(RouteError::Unsigned));
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = decode(&s, None);
        let _ = decode(&s, Some(&key(3)));
        let with_prefix = format!("/i/{s}");
        let _ = decode(&with_prefix, None);
        let signed = format!("/s/{s}");
        let _ = decode(&signed, Some(&key(3)));
    }

    #[test]
    fn decode_of_route_shaped_garbage_never_panics(s in "/[is]/[a-z0-9_~/.%-]{0,80}") {
        let _ = decode(&s, None);
    }
}

#[test]
fn seed_post_urls_round_trip() {
    for u in [
        "http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg",
        "http://zkres1.myzaker.com/202103/605729b6b15ec0510d2dbcef_raw.gif",
        "https://p3-juejin.byteimg.com/tos-cn-i-k3u1fbpfcp/abc~tplv-k3u1fbpfcp-zoom-in-crop-mark:4536:0:0:0.awebp?",
    ] {
        let r = encode(u, &Options::default(), None).unwrap();
        assert_eq!(decode(&r, None).unwrap().upstream, u);
    }
}

/// `imgmirror url` and `imgmirror url --decode` round-trip the seed post's image URLs through the
/// binary; `--json` carries the options.
#[test]
fn cli_round_trips_the_seed_post_urls() {
    let run = |args: &[&str]| {
        let out = common::bin::run(&std::env::temp_dir(), args, &[]);
        (Some(out.code), out.stdout, out.stderr)
    };
    let seed = "http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg";
    for u in [seed, "https://p3-juejin.byteimg.com/tos-cn-i-k3u1fbpfcp/abc~tplv-k3u1fbpfcp-zoom-in-crop-mark:4536:0:0:0.awebp?"] {
        let (code, route, _) = run(&["url", u]);
        assert_eq!(code, Some(0));
        let (code, out, err) = run(&["url", "--decode", route.trim()]);
        assert_eq!(code, Some(0));
        assert_eq!(out.lines().last(), Some(u));
        assert!(err.contains("options: orig"), "{err}");
    }
    let (_, route, _) = run(&[
        "url", "--width", "320", "--fit", "cover", "--format", "webp", seed,
    ]);
    assert_eq!(
        route.trim(),
        "/i/w320_cover_webp/http/zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg"
    );
    let (_, json, _) = run(&["url", "--decode", route.trim(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["upstream"], seed);
    assert_eq!(v["options"]["width"], 320);
    assert_eq!(v["options"]["fit"], "cover");
    // Bad input: exit 2 with a reason.
    let (code, _, err) = run(&["url", "ftp://example.com/a.jpg"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not an http(s) URL"), "{err}");
    let (code, _, err) = run(&["url", "--decode", "/i/orig/http/h/../x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("traversal"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Encoding arbitrary text (scheme-like prefixes, non-ASCII right after them) never panics.
    #[test]
    fn encode_never_panics(prefix in prop::sample::select(vec!["", "http", "https", "http:", "http:/", "http://", "HTTPS://", "//"]), rest in "\\PC{0,40}") {
        let s = format!("{prefix}{rest}");
        let _ = encode(&s, &Options::default(), None);
        let _ = imgmirror::route::route_part(&s, "https://cdn.example/");
    }
}
