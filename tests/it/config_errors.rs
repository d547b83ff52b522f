//! Config loading through the binary: every error class exits 2 with one line naming the file (or
//! variable), the key and the problem; env overrides and `--config` resolution work.

use crate::common;

use std::path::Path;

fn imgmirror(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = common::bin::run(dir, args, env);
    (out.code, out.stdout, out.stderr)
}

/// Writes `toml` as a config and runs `imgmirror url` with it; returns (code, stderr).
fn with_config(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), toml).unwrap();
    let (code, _, err) = imgmirror(
        dir.path(),
        &["url", "--config", "c.toml", "http://example.com/a.jpg"],
        &[],
    );
    (code, err)
}

fn assert_config_error(toml: &str, expect: &[&str]) {
    let (code, err) = with_config(toml);
    assert_eq!(code, 2, "config {toml:?} gave {code}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains("c.toml"), "{err}");
    for e in expect {
        assert!(err.contains(e), "{err:?} lacks {e:?}");
    }
}

#[test]
fn unknown_keys_are_named() {
    assert_config_error(
        "[upstream]\ntimeout = 3\n",
        &["upstream.timeout", "unknown field"],
    );
    assert_config_error("[bogus]\n", &["bogus", "unknown field"]);
}

#[test]
fn wrong_types_are_named() {
    assert_config_error(
        "[upstream]\ntimeout_secs = \"x\"\n",
        &["upstream.timeout_secs", "invalid type"],
    );
    assert_config_error("[server]\ncors = 1\n", &["server.cors"]);
}

#[test]
fn syntax_errors_give_the_line() {
    assert_config_error("\n\n[server\n", &["line 3"]);
}

#[test]
fn unparsable_addresses() {
    assert_config_error("[server]\nlisten = \"localhost\"\n", &["server.listen"]);
    assert_config_error(
        "[server]\nadmin_listen = \"9090\"\n",
        &["server.admin_listen"],
    );
    assert_config_error(
        "[upstream.resolve]\n\"a.com\" = \"nowhere\"\n",
        &["upstream.resolve.a.com"],
    );
}

#[test]
fn too_many_event_loops() {
    assert_config_error(
        "[server]\nthreads = 100000\n",
        &["server.threads", "at most 256"],
    );
}

#[test]
fn bad_globs() {
    assert_config_error(
        "[upstream]\nallow_hosts = [\"a..b\"]\n",
        &["upstream.allow_hosts", "a..b"],
    );
    assert_config_error(
        "[rewrite]\nmirror_hosts = [\"**.x.com\"]\n",
        &["rewrite.mirror_hosts"],
    );
    assert_config_error(
        "[[rewrite.proxies]]\nname = \"x\"\nprefix = \"ftp://x/\"\n",
        &["rewrite.proxies[0].prefix"],
    );
}

#[test]
fn bad_archive_sources() {
    assert_config_error(
        "[archive]\nsources = [\"https://web.archive.org/web/{timestamp}id_/\"]\n",
        &["archive.sources[0]", "{url}"],
    );
    assert_config_error(
        "[archive]\nsources = [\"https://a.test/{url}\", \"ftp://b.test/{url}\"]\n",
        &["archive.sources[1]", "not an http(s) URL template"],
    );
    assert_config_error(
        "[archive]\nconcurrency = 0\n",
        &["archive.concurrency", "at least 1"],
    );
}

#[test]
fn preset_errors() {
    assert_config_error(
        "[presets.thumb]\nwidth = 0\n",
        &["presets.thumb.width", "at least 1"],
    );
    assert_config_error(
        "[presets.thumb]\nfit = \"stretch\"\n",
        &["presets.thumb.fit"],
    );
    assert_config_error("[presets.Thumb]\nwidth = 10\n", &["presets.Thumb"]);
    assert_config_error(
        "[rewrite.presets]\nbody = \"nope\"\n",
        &["rewrite.presets.body", "nope"],
    );
    // A front-matter key's preset must exist, and the key must be an image key.
    assert_config_error(
        "[rewrite.presets]\nheadimg = \"banner\"\n",
        &["rewrite.presets.headimg", "banner"],
    );
    assert_config_error(
        "[rewrite.presets]\ntitle = \"thumb\"\n[presets.thumb]\nwidth = 10\n",
        &["rewrite.presets.title", "rewrite.image_keys"],
    );
}

#[test]
fn previous_signing_keys_are_checked() {
    assert_config_error(
        "[security]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\nprevious_signing_keys = [\"short\"]\n",
        &["security.previous_signing_keys[0]", "too short"],
    );
    assert_config_error(
        "[security]\nprevious_signing_keys = [\"0123456789abcdef0123456789abcdef\"]\n",
        &["security.previous_signing_keys[0]", "not set"],
    );
}

/// `[cdn]`: each key is checked, and a purge header's value (often a token) is never echoed.
#[test]
fn cdn_keys_are_checked() {
    assert_config_error(
        "[cdn]\nsurrogate_key = \"Cache Tag\"\n",
        &["cdn.surrogate_key", "not a header name"],
    );
    assert_config_error(
        "[cdn]\npurge_url = \"http://127.0.0.1:6081/purge\"\n",
        &["cdn.purge_url", "{key}"],
    );
    assert_config_error(
        "[cdn]\npurge_url = \"ftp://cdn.example/{key}\"\n",
        &["cdn.purge_url", "http(s)"],
    );
    assert_config_error(
        "[cdn]\npurge_method = \"PUR GE\"\n",
        &["cdn.purge_method", "not an HTTP method"],
    );
    assert_config_error(
        "[cdn]\npurge_headers = { \"Fastly Key\" = \"t\" }\n",
        &["cdn.purge_headers.Fastly Key", "not a header name"],
    );
    let (code, err) = with_config("[cdn]\npurge_headers = { Fastly-Key = \"secret\\ntoken\" }\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cdn.purge_headers.Fastly-Key"), "{err}");
    assert!(!err.contains("secret"), "the value is not echoed: {err}");
    // Nor when it comes from the environment, as README advises for tokens: neither a value
    // that is not TOML nor one of the wrong type is repeated.
    for (value, secret) in [
        ("{ Fastly-Key = tok-3f9a }", "tok-3f9a"),
        ("{ Fastly-Key = 9137245 }", "9137245"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let env = [("IMGMIRROR_CDN__PURGE_HEADERS", value)];
        let (code, _, err) = imgmirror(dir.path(), &["url", "http://example.com/a.jpg"], &env);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("cdn.purge_headers"), "{err}");
        assert!(!err.contains(secret), "the value is not echoed: {err}");
    }
    // The key may go in the body alone (Cloudflare's purge by tag).
    let (code, err) = with_config(
        "[cdn]\npurge_url = \"http://127.0.0.1:1/purge_cache\"\npurge_body = '{\"tags\":[\"{key}\"]}'\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn short_signing_key() {
    assert_config_error(
        "[security]\nsigning_key = \"short\"\n",
        &["security.signing_key", "too short"],
    );
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = imgmirror(
        dir.path(),
        &["url", "--config", "nope.toml", "http://a/b.jpg"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("nope.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn env_overrides_apply_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = "k".repeat(32);
    let (code, out, err) = imgmirror(
        dir.path(),
        &["url", "http://example.com/a.jpg"],
        &[
            ("IMGMIRROR_SECURITY__SIGNING_KEY", &key),
            ("IMGMIRROR_REWRITE__PUBLIC_BASE", "https://img.example.org"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("https://img.example.org/s/"), "{out}");
    let (code, _, err) = imgmirror(
        dir.path(),
        &["url", "http://example.com/a.jpg"],
        &[("IMGMIRROR_CACHE__MEMORY_BYTES", "lots")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("IMGMIRROR_CACHE__MEMORY_BYTES") && err.contains("cache.memory_bytes"),
        "{err}"
    );
    let (code, _, err) = imgmirror(
        dir.path(),
        &["url", "http://example.com/a.jpg"],
        &[("IMGMIRROR_SERVER__LISTN", "x")],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("server.listn") && err.contains("unknown key"),
        "{err}"
    );
}

#[test]
fn config_resolution_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/imgmirror.toml"),
        "[rewrite]\npublic_base = \"https://default.example\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("env.toml"),
        "[rewrite]\npublic_base = \"https://env.example\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("flag.toml"),
        "[rewrite]\npublic_base = \"https://flag.example\"\n",
    )
    .unwrap();
    let url = "http://example.com/a.jpg";
    let (_, out, _) = imgmirror(dir.path(), &["url", url], &[]);
    assert!(out.starts_with("https://default.example/i/"), "{out}");
    let (_, out, _) = imgmirror(
        dir.path(),
        &["url", url],
        &[("IMGMIRROR_CONFIG", "env.toml")],
    );
    assert!(out.starts_with("https://env.example/i/"), "{out}");
    let (_, out, _) = imgmirror(
        dir.path(),
        &["url", "--config", "flag.toml", url],
        &[("IMGMIRROR_CONFIG", "env.toml")],
    );
    assert!(out.starts_with("https://flag.example/i/"), "{out}");
}

#[test]
fn shipped_config_loads_and_documents_every_key() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/imgmirror.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let (code, err) = with_config(&text);
    assert_eq!(code, 0, "{err}");
    let c = imgmirror::config::Config::from_parts("shipped", &text, &[]).unwrap();
    assert_eq!(c.rewrite.mirror_hosts.len(), 7);
    // Every key of the defaults appears in the shipped file (set or in a comment).
    let defaults = toml::Table::try_from(imgmirror::config::Config::default()).unwrap();
    for (section, keys) in defaults {
        assert!(
            text.contains(&format!("[{section}]")) || section == "presets",
            "{section}"
        );
        if let toml::Value::Table(keys) = keys {
            for k in keys.keys() {
                assert!(
                    text.contains(&format!("{k} =")) || text.contains(&format!("[{section}.{k}]")),
                    "{section}.{k} undocumented"
                );
            }
        }
    }
}

/// On an address other machines can reach, `serve` refuses to be an open image proxy: exit 2 and
/// one line saying what to set. Signed routes, `upstream.allow_hosts`, `server.open_proxy` or a
/// loopback address each make the same config acceptable.
#[test]
fn an_exposed_open_proxy_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\nlisten = \"0.0.0.0:0\"\n[upstream]\nfetch = \"any\"\n[cache]\ndir = \"{}\"\n",
        dir.path().join("m").display()
    );
    std::fs::write(dir.path().join("c.toml"), &toml).unwrap();
    let (code, _, err) = imgmirror(dir.path(), &["serve", "--config", "c.toml"], &[]);
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for needle in [
        "open image proxy",
        "upstream.fetch",
        "security.signing_key",
        "upstream.allow_hosts",
        "server.open_proxy",
    ] {
        assert!(lines[0].contains(needle), "{err}");
    }

    let exposed = imgmirror::config::Config::from_parts("t", &toml, &[]).unwrap();
    assert!(exposed.open_proxy_risk().is_some());
    let mut signed = exposed.clone();
    signed.security.signing_key = "k".repeat(40);
    let mut limited = exposed.clone();
    limited.upstream.allow_hosts = vec!["*.myzaker.com".into()];
    let mut accepted = exposed.clone();
    accepted.server.open_proxy = true;
    let mut local = exposed.clone();
    local.server.listen = "127.0.0.1:8080".into();
    // The default: only the posts' links are fetched, so an exposed listener is no open proxy.
    let mut known = exposed.clone();
    known.upstream.fetch = imgmirror::config::FetchPolicy::Known;
    for (what, c) in [
        ("known links only", known),
        ("signed", signed),
        ("limited", limited),
        ("accepted", accepted),
        ("loopback", local),
    ] {
        assert!(c.open_proxy_risk().is_none(), "{what}");
    }
}

/// SPEC §1: start failures that may clear by themselves exit 75 (the shipped unit restarts on
/// it), configuration errors 2 (it does not). Each case through the real binary: the address
/// still held by another process, `cache.dir` whose parent is not there (a volume not mounted
/// yet), and an S3 endpoint that does not answer (S3 still starting). Before, all three exited 2
/// and `RestartPreventExitStatus=2` left the service down for good.
#[test]
fn temporary_start_failures_exit_75_and_configuration_errors_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap().to_string();
    let free = common::free_port();
    let mirror = d.join("mirror");
    let cases: [(&str, String, i32, &str); 4] = [
        (
            "address in use",
            format!("[server]\nlisten = \"{held_addr}\"\n[cache]\ndir = \"{}\"\n", mirror.display()),
            75,
            "cannot listen",
        ),
        (
            "cache.dir not mounted",
            format!("[cache]\ndir = \"{}\"\n", d.join("not-mounted/imgmirror").display()),
            75,
            "not mounted yet",
        ),
        (
            "S3 not answering",
            format!(
                "[cache]\ndir = \"{}\"\nstore = \"s3\"\n[s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:{free}\"\nallow_http = true\n",
                mirror.display()
            ),
            75,
            "s3: cannot reach",
        ),
        (
            "a bad key",
            format!("[cache]\ndir = \"{}\"\nttl = 1\n", mirror.display()),
            2,
            "ttl",
        ),
    ];
    for (what, toml, code, says) in cases {
        std::fs::write(d.join("c.toml"), toml).unwrap();
        let (got, _, err) = imgmirror(
            d,
            &["serve", "--config", "c.toml"],
            &[
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
            ],
        );
        assert_eq!(got, code, "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
    }
    assert!(
        !d.join("not-mounted").exists(),
        "a missing parent is never created"
    );
    drop(held);
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/imgmirror.service"),
    )
    .unwrap();
    assert!(unit.contains("Restart=on-failure") && unit.contains("RestartPreventExitStatus=2"));
    assert!(!unit.contains("RestartPreventExitStatus=75"));
}
