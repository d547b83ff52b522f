//! The rewriter on arbitrary documents: never panics, and rewriting is idempotent.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static REWRITER: OnceLock<imgmirror::rewrite::Rewriter> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let rewriter = REWRITER.get_or_init(|| {
        let mut config = imgmirror::config::Config::default();
        config.rewrite.mirror_hosts = vec!["*.myzaker.com".into()];
        imgmirror::rewrite::Rewriter::new(&config)
    });
    if let (Some(once), _) = rewriter.rewrite(data) {
        let (twice, _) = rewriter.rewrite(&once);
        assert!(twice.is_none(), "a rewritten document rewrites again");
    }
});
