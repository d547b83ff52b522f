//! The route decoder on arbitrary paths: never panics; whatever decodes re-encodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(route) = imgmirror::route::decode(path, None) {
        let again = imgmirror::route::encode(&route.upstream, &route.options, None)
            .expect("a decoded route encodes");
        let back = imgmirror::route::decode(&again, None).expect("an encoded route decodes");
        assert_eq!(back.upstream, route.upstream);
    }
});
