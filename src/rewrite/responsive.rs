//! What `[rewrite.responsive]` adds to a rewritten `<img>` (SPEC §3): the attributes every site
//! generator's image pipeline writes, taken from what the mirror knows of the image ([`Facts`]):
//! `width`/`height`, a `srcset` of fixed-format width routes with `sizes` (`data-srcset` on a tag a
//! theme lazy-loads), `loading="lazy" decoding="async"` on all but a post's first image, and a
//! placeholder. Only what the tag lacks is added, at its end, so a second run adds nothing.
//!
//! The `srcset` routes name their format (WebP, which every browser in use shows): a route that
//! names its format is the same bytes for every client, cacheable forever by any CDN and by
//! `imgmirror export`, where a negotiated one depends on `Vary: Accept`, which some CDNs ignore.

use crate::config::{Placeholder, ResponsiveConfig};
use crate::route::{self, Format, Options, SigningKey};

use super::html;

/// `[rewrite.responsive]` as the rewriter applies it.
#[derive(Clone, Debug)]
pub(super) struct Responsive {
    pub(super) config: ResponsiveConfig,
    /// `security.presets_only`: the service then makes a `srcset` route only for a width of
    /// `config.widths`, so the widest candidate is the original itself rather than a route of
    /// the original's own width.
    pub(super) presets_only: bool,
}

/// What the mirror knows of one image, for its `<img>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Its size as shown (after orientation).
    pub width: u32,
    /// Its height as shown.
    pub height: u32,
    /// Its average colour, when the placeholder asks for one.
    pub colour: Option<[u8; 3]>,
    /// Its ThumbHash drawn as a small PNG, when the placeholder asks for one.
    pub preview: Option<Vec<u8>>,
}

impl Facts {
    /// An image's size alone, shown at `width` x `height` (no placeholder).
    pub fn sized(width: u32, height: u32) -> Facts {
        Facts {
            width,
            height,
            colour: None,
            preview: None,
        }
    }
}

/// Attributes a theme's lazy loader reads the image from: a tag with one of them, and no `src`
/// that already shows the image, gets `data-srcset`, so nothing loads before the loader asks.
const LAZY_SOURCES: [&str; 3] = ["data-src", "data-original", "data-lazy-src"];

/// Where an `<img>` stands: whether it is its post's first image (never lazy), and whether its
/// `src` already names the image (so it loads now, whatever a lazy loader does: it gets
/// `srcset`, which only picks the size).
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    pub(super) first: bool,
    pub(super) src_shows: bool,
}

/// The text to insert at the end of an `<img>` start tag whose attributes are named `present`,
/// showing `upstream` (whose facts are `facts`) at `place`, and the routes it names. Empty when
/// the tag already has everything.
pub(super) fn additions(
    responsive: &Responsive,
    present: &[&str],
    upstream: &str,
    facts: &Facts,
    place: Place,
    key: Option<&SigningKey>,
    public_base: &str,
) -> (String, Vec<String>) {
    let config = &responsive.config;
    let has = |name: &str| present.contains(&name);
    let mut routes = Vec::new();
    let mut out = String::new();
    let mut add = |name: &str, value: &str| {
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        out.push_str(&html::escape_attr(value, Some(b'"')));
        out.push('"');
    };
    if config.dimensions && !has("width") && !has("height") {
        add("width", &facts.width.to_string());
        add("height", &facts.height.to_string());
    }
    if !has("srcset") && !has("data-srcset") {
        let widest = match responsive.presets_only {
            true => Widest::Original,
            false => Widest::OwnWidth,
        };
        let at = Links { key, public_base };
        let (srcset, named) = srcset(&config.widths, widest, upstream, facts.width, at);
        routes = named;
        if !srcset.is_empty() {
            let lazy = !place.src_shows && LAZY_SOURCES.iter().any(|a| has(a));
            add(if lazy { "data-srcset" } else { "srcset" }, &srcset);
            if !has("sizes") {
                add("sizes", &config.sizes);
            }
        }
    }
    if config.lazy && !place.first {
        if !has("loading") {
            add("loading", "lazy");
        }
        if !has("decoding") {
            add("decoding", "async");
        }
    }
    if !has("style") {
        match (config.placeholder, facts.colour, &facts.preview) {
            (Placeholder::Color, Some([r, g, b]), _) => {
                add("style", &format!("background-color:#{r:02x}{g:02x}{b:02x}"))
            }
            (Placeholder::Thumbhash, _, Some(png)) => {
                use base64::Engine;
                let data = base64::engine::general_purpose::STANDARD.encode(png);
                add(
                    "style",
                    &format!(
                        "background-image:url(data:image/png;base64,{data});background-size:cover"
                    ),
                )
            }
            _ => {}
        }
    }
    (out, routes)
}

/// The widest `srcset` candidate, at the original's own width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Widest {
    /// A WebP route of that width, like the others.
    OwnWidth,
    /// The original itself (`security.presets_only`, where only the configured widths are
    /// made).
    Original,
}

/// How routes are written: signed with `key`, behind `public_base`.
#[derive(Clone, Copy)]
struct Links<'a> {
    key: Option<&'a SigningKey>,
    public_base: &'a str,
}

/// `route w` candidates for each of `widths` narrower than the original (`width`), each a WebP
/// route of that width, and for the original's own width ([`Widest`]); and those routes
/// (without `public_base`). Empty when a route cannot be made.
fn srcset(
    widths: &[u32],
    widest: Widest,
    upstream: &str,
    width: u32,
    at: Links<'_>,
) -> (String, Vec<String>) {
    let mut ws: Vec<u32> = widths.iter().copied().filter(|w| *w < width).collect();
    ws.sort_unstable();
    ws.dedup();
    ws.push(width);
    let mut out = Vec::with_capacity(ws.len());
    let mut routes = Vec::with_capacity(ws.len());
    for w in ws {
        let options = match widest {
            Widest::Original if w == width => Options::default(),
            _ => Options {
                width: Some(w),
                format: Some(Format::Webp),
                ..Options::default()
            },
        };
        let Ok(r) = route::encode(upstream, &options, at.key) else {
            return (String::new(), Vec::new());
        };
        out.push(format!("{}{r} {w}w", at.public_base.trim_end_matches('/')));
        routes.push(r);
    }
    (out.join(", "), routes)
}
