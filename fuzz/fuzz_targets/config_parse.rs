//! Config loading on arbitrary TOML: never panics; an error is one line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = imgmirror::config::Config::from_parts("fuzz.toml", text, &[]) {
        assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
    }
});
