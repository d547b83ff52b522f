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
    pub plan: transform::Plan,
    pub negotiated: Option<Negotiated>,
}

/// The formats a request's `Accept` lists with a quality above zero (`q=0` is "not acceptable").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepts {
    pub webp: bool,
    pub avif: bool,
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
    let negotiated = match merged.format {
        Some(_) => None,
        None if image.auto_avif && accepts.avif => Some(Negotiated::Avif),
        None if image.auto_webp && accepts.webp => Some(Negotiated::Webp),
        None => None,
    };
    let format = match (merged.format, negotiated) {
        (Some(f), _) => transform::OutFormat::from_route(f),
        (None, Some(Negotiated::Avif)) => Some(transform::OutFormat::Avif),
        (None, Some(Negotiated::Webp)) => Some(transform::OutFormat::Webp),
        (None, None) => None,
    };
    Ok(Some(Planned {
        plan: transform::Plan {
            width: merged.width,
            height: merged.height,
            fit: merged.fit.unwrap_or(route::Fit::Inside),
            format,
            quality: merged.quality.unwrap_or(config.image.quality),
            progressive: merged.progressive,
            negotiated: negotiated.is_some(),
        },
        negotiated,
    }))
}
