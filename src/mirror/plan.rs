//! A route's options, merged with its preset and checked against the limits, as the transform
//! [`Plan`](crate::transform::Plan) to run (or none, for the original).

use super::LoadError;
use crate::config::Config;
use crate::route::{self, Options};
use crate::store::Negotiated;
use crate::transform;

/// A transform to run, and the format `Accept` negotiation chose when the route named none.
#[derive(Clone, Debug)]
pub struct Planned {
    /// What the transform makes.
    pub plan: transform::Plan,
    /// The format `Accept` chose, when the route named none.
    pub negotiated: Option<Negotiated>,
}

/// The formats a request's `Accept` lists with a quality above zero (`q=0` is "not acceptable").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepts {
    /// `image/webp` is acceptable.
    pub webp: bool,
    /// `image/avif` is acceptable.
    pub avif: bool,
}

/// Whether a route with `options` answers according to the request's `Accept`: negotiation is on
/// (`image.auto_webp`, `image.auto_avif`) and the route transforms without naming a format.
pub fn varies_by_accept(config: &Config, options: &Options) -> bool {
    (config.image.auto_webp || config.image.auto_avif)
        && !options.is_original()
        && options.format.is_none()
}

/// With `security.presets_only`, the variants a client can make the service encode and store
/// are the config's: a preset with nothing added to it, and, with `[rewrite.responsive]`
/// enabled, the WebP routes of its `widths` the rewriter writes in `srcset`s (whose widest
/// candidate is then the original itself).
pub fn in_config(config: &Config, options: &Options) -> bool {
    let preset = route::Options {
        preset: options.preset.clone(),
        ..route::Options::default()
    };
    if options.preset.is_some() && *options == preset {
        return true;
    }
    let responsive = &config.rewrite.responsive;
    responsive.enabled
        && responsive.widths.iter().any(|&w| {
            *options
                == route::Options {
                    width: Some(w),
                    format: Some(route::Format::Webp),
                    ..route::Options::default()
                }
        })
}

/// The plan for `options` (`None` for the original). When the route names no format, negotiation
/// picks AVIF (`image.auto_avif`) before WebP (`image.auto_webp`) among those `accepts` lists.
/// Errors are 400s: an unknown preset, sizes over `image.max_dimension`.
pub fn plan(
    config: &Config,
    options: &Options,
    accepts: Accepts,
) -> Result<Option<Planned>, LoadError> {
    if options.is_original() {
        return Ok(None);
    }
    if config.security.presets_only && !in_config(config, options) {
        return Err(LoadError::NotAPreset);
    }
    let merged = match &options.preset {
        Some(name) => config
            .presets
            .get(name)
            .ok_or_else(|| LoadError::BadOptions(format!("no preset named {name:?}")))?
            .resolve(options),
        None => options.clone(),
    };
    let max = config.image.max_dimension;
    for (what, v) in [("width", merged.width), ("height", merged.height)] {
        if let Some(v) = v.filter(|v| *v > max) {
            return Err(LoadError::BadOptions(format!(
                "{what} {v} exceeds image.max_dimension ({max})"
            )));
        }
    }
    let image = &config.image;
    let webp = image.auto_webp && accepts.webp;
    let negotiated = match merged.format {
        Some(_) => None,
        None if image.auto_avif && accepts.avif && webp => Some(Negotiated::AvifOrWebp),
        None if image.auto_avif && accepts.avif => Some(Negotiated::Avif),
        None if webp => Some(Negotiated::Webp),
        None => None,
    };
    use transform::{ForAnimation, OutFormat};
    let (format, animated) = match (merged.format, negotiated) {
        (Some(f), _) => (OutFormat::from_route(f), ForAnimation::AsPlanned),
        // AVIF holds stills only: an animation stays one, as WebP when the client takes it.
        (None, Some(Negotiated::AvifOrWebp)) => (
            Some(OutFormat::Avif),
            ForAnimation::Instead(OutFormat::Webp),
        ),
        (None, Some(Negotiated::Avif)) => (Some(OutFormat::Avif), ForAnimation::Own),
        (None, Some(Negotiated::Webp)) => (Some(OutFormat::Webp), ForAnimation::Own),
        (None, None) => (None, ForAnimation::AsPlanned),
    };
    Ok(Some(Planned {
        plan: transform::Plan {
            width: merged.width,
            height: merged.height,
            fit: merged.fit.unwrap_or(route::Fit::Inside),
            format,
            quality: merged.quality.unwrap_or(config.image.quality),
            progressive: merged.progressive,
            animated,
        },
        negotiated,
    }))
}
