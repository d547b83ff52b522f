//! Image sniffing, the completeness check and header probing on arbitrary bytes: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(kind) = imgmirror::transform::sniff(data) {
        let _ = imgmirror::transform::is_complete(data, kind);
    }
    let _ = imgmirror::transform::probe(data);
});
