//! `imgmirror url`: the route for an upstream URL with options, or (`--decode`) the upstream
//! URL and options a route holds.

use super::{Failure, UrlArgs};
use crate::config::Config;
use crate::route::{self, Fit, Format, Options};

/// Runs `imgmirror url`.
pub(super) fn run(args: UrlArgs) -> Result<u8, Failure> {
    let config = Config::load(args.config.config.as_deref())?;
    let key = config.signing_key();
    if let Some(link) = &args.decode {
        let route_str = route::route_part(link, &config.rewrite.public_base).ok_or_else(|| {
            Failure::usage(format!(
                "{link:?} is not a route (routes start with /i/ or /s/, optionally behind rewrite.public_base)"
            ))
        })?;
        let decoded = route::decode(route_str, key.as_ref())
            .map_err(|e| Failure::usage(format!("cannot decode {link:?}: {e}")))?;
        let signed = route_str.starts_with("/s/");
        if args.json {
            let o = &decoded.options;
            let json = serde_json::json!({
                "upstream": decoded.upstream,
                "signed": signed,
                "signature_checked": signed && key.is_some(),
                "options": {
                    "preset": o.preset,
                    "width": o.width,
                    "height": o.height,
                    "fit": o.fit.map(Fit::as_str),
                    "format": o.format.map(Format::as_str),
                    "quality": o.quality,
                    "progressive": o.progressive,
                }
            });
            println!("{json}");
        } else {
            eprintln!("options: {}", decoded.options);
            if signed && key.is_none() {
                eprintln!("note: signature not checked (no security.signing_key configured)");
            }
            println!("{}", decoded.upstream);
        }
        return Ok(0);
    }
    let upstream = args
        .upstream_url
        .ok_or_else(|| Failure::usage("an UPSTREAM_URL is required"))?;
    let options = Options {
        preset: args.preset,
        width: args.width,
        height: args.height,
        fit: args.fit,
        format: args.format,
        quality: args.quality,
        progressive: args.progressive,
    };
    if let Some(p) = &options.preset {
        if !config.presets.contains_key(p) {
            eprintln!("warning: no preset {p:?} in this config; the server will answer 400 unless its config has one");
        }
    }
    if config.security.presets_only
        && !options.is_original()
        && !crate::mirror::plan::in_config(&config, &options)
    {
        eprintln!("warning: this config serves only the original, presets and the responsive widths (security.presets_only); the server will answer 403");
    }
    let r = route::encode(&upstream, &options, key.as_ref())
        .map_err(|e| Failure::usage(format!("cannot encode {upstream:?}: {e}")))?;
    println!("{}{}", config.rewrite.public_base.trim_end_matches('/'), r);
    Ok(0)
}
