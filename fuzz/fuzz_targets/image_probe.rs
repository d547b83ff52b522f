//! Image sniffing, the completeness check, header probing and the frame counters (GIF blocks,
//! WebP chunks) on arbitrary bytes: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(kind) = imgmirror::transform::sniff(data) {
        let _ = imgmirror::transform::is_complete(data, kind);
    }
    let _ = imgmirror::transform::probe(data);
    let _ = imgmirror::transform::gif_frames(data);
    let _ = imgmirror::transform::webp_frames(data);
});
