//! The rewriter: finds proxied (and mirrored-host) image links in a post and replaces each with a
//! local route, touching no other byte. Works on bytes, so any ASCII-compatible encoding (UTF-8
//! with or without BOM, GBK, ...) passes through untouched.
//!
//! One document is handled in a fixed order, each step marking what it handled so later steps do
//! not see it again: front matter → protected regions (code, comments, scripts: counted, never
//! edited; the tags inside `<pre>`/`<code>` are real elements and stay open to the next step) →
//! HTML start tags (and `<style>` blocks) → Markdown destinations and reference definitions →
//! bare URLs in text. Edits are byte spans applied at the end.
//!
//! Submodules: [`unwrap`] (which links are proxies, and of what), [`front_matter`] (YAML), [`html`]
//! and [`markdown`]
//! (syntax scanners with exact spans), [`responsive`] (the attributes `[rewrite.responsive]` adds
//! to an `<img>`), [`batch`] (files, folders, atomic writes, the report),
//! [`diff`] (what `--diff` prints for review).
//! Nothing here knows about HTTP.

pub mod batch;
pub mod diff;
pub mod front_matter;
pub mod html;
pub mod markdown;
pub mod responsive;
pub mod unwrap;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Serialize;

use crate::config::Config;
use crate::route::{self, Options, SigningKey};
use unwrap::{looks_like_image, Link, Unwrapper};

/// What each byte of a document is to the rewriter, marked step by step: regions where nothing
/// is rewritten first, then what each step has handled, so no later step touches it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Not handled yet: a later step may rewrite it.
    Free,
    /// Code, comments, scripts: nothing is rewritten here ([`markdown::protect`]).
    Protected,
    /// Already handled by an earlier step (a tag, a destination, the front matter).
    Consumed,
    /// The inside of an HTML `<pre>` or `<code>` element: its text is code shown to the reader (a
    /// URL there stays as it is), but a tag in it is a real element that the browser loads (an
    /// `<img>` inside `<code>` is an image, not its source text), so tags there are rewritten.
    CodeText,
}

/// Where a link was found; names are the report's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    /// A front-matter value (`headimg:`, `thumbnail:`, lists of them).
    FrontMatter,
    /// An HTML attribute (`src`, `data-original`, `poster`, ...).
    HtmlAttribute,
    /// One candidate of a `srcset`.
    Srcset,
    /// A CSS `url(...)` in a `style` attribute or `<style>` block.
    Css,
    /// A Markdown image destination, `![alt](url)`.
    MarkdownImage,
    /// A Markdown link destination to an image, `[text](url)`.
    MarkdownLink,
    /// A Markdown reference definition, `[id]: url`.
    MarkdownReference,
    /// A bare URL in text.
    BareUrl,
}

impl Context {
    /// The report's key for this context.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::FrontMatter => "front_matter",
            Context::HtmlAttribute => "html_attribute",
            Context::Srcset => "srcset",
            Context::Css => "css",
            Context::MarkdownImage => "markdown_image",
            Context::MarkdownLink => "markdown_link",
            Context::MarkdownReference => "markdown_reference",
            Context::BareUrl => "bare_url",
        }
    }
}

/// One replaced link.
#[derive(Clone, Debug, Serialize)]
pub struct Rewritten {
    /// Where it was.
    pub context: Context,
    /// The proxies unwrapped, outermost first, joined by ` > `; `direct` for a mirror-host link.
    pub proxy: String,
    /// The link as the document had it (surrounding spaces trimmed): the text replaced.
    pub link: String,
    /// The image's own URL, every proxy unwrapped.
    pub upstream: String,
    /// The route written in its place.
    pub route: String,
}

/// What happened to one document.
#[derive(Clone, Debug, Default)]
pub struct DocReport {
    /// Every link replaced.
    pub rewritten: Vec<Rewritten>,
    /// Links seen but deliberately not rewritten, by reason (`code`, `non_image`, ...).
    pub left_alone: BTreeMap<&'static str, usize>,
    /// Links that embed another URL through a proxy we do not know.
    pub unknown_proxies: Vec<String>,
    /// `src` and `data-original` of one tag that unwrap to different URLs.
    pub mismatches: Vec<String>,
    /// Links that are already our routes.
    pub already_rewritten: usize,
    /// Every upstream URL the document references (rewritten now or before), for `warm`.
    pub upstreams: BTreeSet<String>,
    /// Every route of ours the document names (there before, or written now), without
    /// `public_base`, for `warm --variants`.
    pub routes: BTreeSet<String>,
    /// The front matter's `date`, as written (archive rescue asks for captures near it).
    pub date: Option<String>,
    /// Links that could not be turned into routes (too long, ...), with the reason.
    pub errors: Vec<String>,
    /// The byte spans replaced, in the input, in order.
    pub spans: Vec<Range<usize>>,
}

/// A configured rewriter; cheap to share across threads.
#[derive(Clone, Debug)]
pub struct Rewriter {
    unwrapper: Unwrapper,
    key: Option<SigningKey>,
    public_base: String,
    image_keys: Vec<String>,
    front_matter_options: Options,
    /// Front-matter keys with a preset of their own (`[rewrite.presets]` `headimg = "banner"`).
    key_options: BTreeMap<String, Options>,
    body_options: Options,
    /// `[rewrite.responsive]` when enabled.
    responsive: Option<responsive::Responsive>,
    /// What the mirror knows of each upstream URL ([`Rewriter::with_facts`]).
    facts: BTreeMap<String, responsive::Facts>,
}

impl Rewriter {
    /// A rewriter for `config`'s proxies, hosts, presets and keys.
    pub fn new(config: &Config) -> Rewriter {
        let preset = |p: &Option<String>| Options {
            preset: p.clone(),
            ..Options::default()
        };
        Rewriter {
            unwrapper: Unwrapper::new(&config.rewrite),
            key: config.signing_key(),
            public_base: config.rewrite.public_base.clone(),
            image_keys: config.rewrite.image_keys.clone(),
            front_matter_options: preset(&config.rewrite.presets.front_matter),
            key_options: config
                .rewrite
                .presets
                .keys
                .iter()
                .map(|(k, p)| (k.clone(), preset(&Some(p.clone()))))
                .collect(),
            body_options: preset(&config.rewrite.presets.body),
            responsive: config
                .rewrite
                .responsive
                .enabled
                .then(|| responsive::Responsive {
                    config: config.rewrite.responsive.clone(),
                    presets_only: config.security.presets_only,
                }),
            facts: BTreeMap::new(),
        }
    }

    /// This rewriter, knowing what the mirror knows of the images (by upstream URL): with
    /// `[rewrite.responsive]` enabled, an `<img>` of an image in `facts` gains the attributes it
    /// lacks ([`responsive`]). Without facts, only links change.
    pub fn with_facts(mut self, facts: BTreeMap<String, responsive::Facts>) -> Rewriter {
        self.facts = facts;
        self
    }

    /// True when `[rewrite.responsive]` is enabled: the batch then gathers the images' facts.
    pub fn is_responsive(&self) -> bool {
        self.responsive.is_some()
    }

    /// Rewrites one document. Returns the new bytes (`None` when nothing changed) and the report.
    pub fn rewrite(&self, doc: &[u8]) -> (Option<Vec<u8>>, DocReport) {
        let mut pass = Pass {
            rw: self,
            doc,
            mask: vec![Mask::Free; doc.len()],
            edits: Vec::new(),
            report: DocReport::default(),
            first_image: None,
        };
        pass.run();
        let Pass {
            mut edits,
            mut report,
            ..
        } = pass;
        edits.sort_by_key(|e| e.0.start);
        let mut out = Vec::with_capacity(doc.len() + edits.len() * 16);
        let mut at = 0;
        for (span, text, rewritten) in edits {
            if span.start < at {
                continue; // overlapping edits cannot happen by construction; never apply one twice
            }
            out.extend_from_slice(&doc[at..span.start]);
            out.extend_from_slice(text.as_bytes());
            at = span.end;
            report.spans.push(span);
            report.rewritten.extend(rewritten);
        }
        out.extend_from_slice(&doc[at..]);
        let changed = out != doc;
        (changed.then_some(out), report)
    }

    /// The upstream URL a link shows: the one a route of ours names, or the one the rewriter
    /// would rewrite this link to; `None` for any other link.
    fn upstream_of(&self, link: &str) -> Option<String> {
        if let Some(r) = route::route_part(link, &self.public_base) {
            return route::decode(r, None).ok().map(|d| d.upstream);
        }
        match self.unwrapper.classify(link) {
            Link::Proxied { upstream, .. } | Link::Mirrored { upstream } => Some(upstream),
            _ => None,
        }
    }

    /// Decides what a link becomes: `Some(rewrite)` (whose `route` is the new link) to rewrite it.
    fn link(
        &self,
        raw: &str,
        context: Context,
        image_context: bool,
        report: &mut DocReport,
    ) -> Option<Rewritten> {
        self.link_with(raw, context, image_context, None, report)
    }

    /// [`Rewriter::link`] with the route's options given (`None`: the context's).
    fn link_with(
        &self,
        raw: &str,
        context: Context,
        image_context: bool,
        options: Option<&Options>,
        report: &mut DocReport,
    ) -> Option<Rewritten> {
        let link = raw.trim();
        if let Some(r) = route::route_part(link, &self.public_base) {
            if let Ok(decoded) = route::decode(r, None) {
                report.upstreams.insert(decoded.upstream.clone());
                // With a signing key, a route signed with another one (a key rotated out) or
                // with none is made again with this one: the posts follow a key rotation.
                if let Some(key) = &self.key {
                    if let Ok(current) =
                        route::encode(&decoded.upstream, &decoded.options, Some(key))
                    {
                        if current != r {
                            report.routes.insert(current.clone());
                            return Some(Rewritten {
                                context,
                                proxy: "signed again".to_string(),
                                link: link.to_string(),
                                upstream: decoded.upstream,
                                route: format!(
                                    "{}{current}",
                                    self.public_base.trim_end_matches('/')
                                ),
                            });
                        }
                    }
                }
                report.already_rewritten += 1;
                report.routes.insert(r.to_string());
                return None;
            }
        }
        let classified = self.unwrapper.classify(link);
        let (upstream, proxy) = match classified {
            Link::Proxied { upstream, proxies } => (upstream, proxies.join(" > ")),
            Link::Mirrored { upstream } => (upstream, "direct".to_string()),
            Link::UnknownProxy => {
                report.unknown_proxies.push(link.to_string());
                return None;
            }
            Link::Other => return None,
        };
        if !image_context && !looks_like_image(&upstream) {
            if proxy != "direct" {
                *report.left_alone.entry("non_image").or_default() += 1;
            }
            return None;
        }
        let options = options.unwrap_or(if context == Context::FrontMatter {
            &self.front_matter_options
        } else {
            &self.body_options
        });
        match route::encode(&upstream, options, self.key.as_ref()) {
            Ok(r) => {
                let new = format!("{}{}", self.public_base.trim_end_matches('/'), r);
                report.upstreams.insert(upstream.clone());
                report.routes.insert(r.clone());
                Some(Rewritten {
                    context,
                    proxy,
                    link: link.to_string(),
                    upstream,
                    route: new,
                })
            }
            Err(e) => {
                report.errors.push(format!("{upstream}: {e}"));
                None
            }
        }
    }
}

/// What an attribute holds.
enum AttrKind {
    /// One URL; `true` when the attribute always holds an image.
    Url(bool),
    Srcset,
    Style,
}

fn attr_kind(tag: &str, attr: &str) -> Option<AttrKind> {
    Some(match attr {
        "src" => match tag {
            "img" | "input" | "image" => AttrKind::Url(true),
            "source" => AttrKind::Url(false),
            _ => return None,
        },
        "data-src" | "data-original" | "data-lazy-src" | "data-lazy-original" | "data-gif-url"
        | "data-canonical-src" | "poster" => AttrKind::Url(true),
        "srcset" | "data-srcset" => AttrKind::Srcset,
        "href" if tag == "a" => AttrKind::Url(false),
        "style" => AttrKind::Style,
        _ => return None,
    })
}

/// The state of one document's rewrite.
struct Pass<'a> {
    rw: &'a Rewriter,
    doc: &'a [u8],
    /// What each byte is so far.
    mask: Vec<Mask>,
    /// Replacements: span, new bytes, and what the link was (`None` for attributes added by
    /// [`responsive`], inserted at an empty span).
    edits: Vec<(Range<usize>, String, Option<Rewritten>)>,
    report: DocReport,
    /// Where the post's first image starts (an `<img>` tag or a Markdown image): it is never
    /// lazy-loaded.
    first_image: Option<usize>,
}

impl Pass<'_> {
    fn run(&mut self) {
        let doc = self.doc;
        let body_start = match front_matter::front_matter(doc) {
            Some((fm, body)) => {
                let date_key = ["date".to_string()];
                self.report.date = front_matter::front_matter_values(doc, fm.clone(), &date_key)
                    .into_iter()
                    .next()
                    .map(|v| v.value);
                // Key by key: a key may name its own preset.
                for key in &self.rw.image_keys {
                    let options = self.rw.key_options.get(key);
                    let keys = std::slice::from_ref(key);
                    let values = front_matter::front_matter_values(doc, fm.clone(), keys);
                    for v in values {
                        let context = Context::FrontMatter;
                        let report = &mut self.report;
                        if let Some(new) =
                            self.rw.link_with(&v.value, context, true, options, report)
                        {
                            let text = front_matter::yaml_escape(&new.route, v.style);
                            self.edits.push((v.span, text, Some(new)));
                        }
                    }
                }
                self.mask[..body].fill(Mask::Consumed);
                body
            }
            None => 0,
        };
        let refdefs = markdown::protect(doc, body_start, &mut self.mask);
        self.first_image = self.first_image_at(body_start);
        self.tags(body_start);
        self.count_protected();
        self.markdown_destinations(body_start, refdefs);
        self.bare_urls(body_start);
    }

    /// Counts mirrorable links left in protected regions and in code text (they stay as they
    /// are); runs after [`Pass::tags`], which consumes the tags inside `<pre>`/`<code>`.
    fn count_protected(&mut self) {
        let mut protected = runs(&self.mask, Mask::Protected);
        protected.extend(runs(&self.mask, Mask::CodeText));
        for run in protected {
            for r in markdown::bare_urls(self.doc, run) {
                let Ok(s) = std::str::from_utf8(&self.doc[r]) else {
                    continue;
                };
                if self.rw.unwrapper.classify(s).upstream().is_some() {
                    *self.report.left_alone.entry("code").or_default() += 1;
                }
            }
        }
    }

    fn tags(&mut self, from: usize) {
        let doc = self.doc;
        let mut i = from;
        while i + 1 < doc.len() {
            // Tags in code text are real elements too (see [`Mask::CodeText`]).
            let open = |m: Mask| m == Mask::Free || m == Mask::CodeText;
            if doc[i] != b'<' || !open(self.mask[i]) || !doc[i + 1].is_ascii_alphabetic() {
                i += 1;
                continue;
            }
            let Some(tag) = html::parse_tag(doc, i) else {
                i += 1;
                continue;
            };
            if !self.mask[tag.span.clone()].iter().all(|&m| open(m)) {
                i += 1;
                continue;
            }
            self.tag(&tag);
            self.mask[tag.span.clone()].fill(Mask::Consumed);
            i = tag.span.end;
            if tag.name == "style" {
                let end = html::find_ci(&doc[i..], b"</style").map_or(doc.len(), |p| i + p);
                for r in html::css_urls(&doc[i..end]) {
                    let span = i + r.start..i + r.end;
                    self.replace_raw(span, Context::Css, true);
                }
                self.mask[i..end].fill(Mask::Consumed);
                i = end;
            }
        }
    }

    fn tag(&mut self, tag: &html::Tag) {
        let mut seen: Vec<(&str, String)> = Vec::new();
        for a in &tag.attrs {
            let (Some(kind), Some(vr)) = (attr_kind(&tag.name, &a.name), a.value.clone()) else {
                continue;
            };
            let decoded = html::decode_entities(&self.doc[vr.clone()]);
            let urls: Vec<(Range<usize>, Context, bool)> = match kind {
                AttrKind::Url(image) => {
                    vec![(trimmed(&decoded.text), Context::HtmlAttribute, image)]
                }
                AttrKind::Srcset => html::srcset_urls(&decoded.text)
                    .into_iter()
                    .map(|r| (r, Context::Srcset, true))
                    .collect(),
                AttrKind::Style => html::css_urls(&decoded.text)
                    .into_iter()
                    .map(|r| (r, Context::Css, true))
                    .collect(),
            };
            for (r, context, image) in urls {
                let Ok(value) = std::str::from_utf8(&decoded.text[r.clone()]) else {
                    continue;
                };
                if a.name == "src" || a.name == "data-original" {
                    let up = self
                        .rw
                        .unwrapper
                        .classify(value)
                        .upstream()
                        .map(String::from);
                    if let Some(u) = up {
                        seen.push((
                            if a.name == "src" {
                                "src"
                            } else {
                                "data-original"
                            },
                            u,
                        ));
                    }
                }
                if let Some(new) = self.rw.link(value, context, image, &mut self.report) {
                    let raw = decoded.raw_range(r);
                    let span = vr.start + raw.start..vr.start + raw.end;
                    let text = html::escape_attr(&new.route, a.quote);
                    self.edits.push((span, text, Some(new)));
                }
            }
        }
        if let (Some(src), Some(orig)) = (
            seen.iter().find(|s| s.0 == "src"),
            seen.iter().find(|s| s.0 == "data-original"),
        ) {
            if src.1 != orig.1 {
                self.report.mismatches.push(format!(
                    "src unwraps to {} but data-original is {}",
                    src.1, orig.1
                ));
            }
        }
        if tag.name == "img" {
            self.responsive(tag);
        }
    }

    /// The upstream URL the tag's attribute `name` shows (a route of ours, or a link the
    /// rewriter rewrites), entities decoded.
    fn attr_upstream(&self, tag: &html::Tag, name: &str) -> Option<String> {
        let a = tag.attrs.iter().find(|a| a.name == name)?;
        let decoded = html::decode_entities(&self.doc[a.value.clone()?]);
        let value = std::str::from_utf8(&decoded.text).ok()?.trim().to_string();
        self.rw.upstream_of(&value)
    }

    /// Where the body's first image starts: the first `<img` start tag or Markdown image `![`
    /// outside code, whichever comes first.
    fn first_image_at(&self, from: usize) -> Option<usize> {
        let doc = self.doc;
        let open = |m: Mask| m == Mask::Free || m == Mask::CodeText;
        let tag = (from..doc.len().saturating_sub(4)).find(|&i| {
            doc[i] == b'<'
                && open(self.mask[i])
                && doc[i + 1..i + 4].eq_ignore_ascii_case(b"img")
                && doc
                    .get(i + 4)
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>')
        });
        let markdown = (from..doc.len().saturating_sub(1))
            .find(|&i| doc[i] == b'!' && doc[i + 1] == b'[' && self.mask[i] == Mask::Free);
        match (tag, markdown) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// With `[rewrite.responsive]`: the attributes an `<img>` of a mirrored image lacks, inserted
    /// before the end of its start tag. Its image is the first of `src`, `data-src`,
    /// `data-original`, `data-lazy-src` that is a route or a link the rewriter rewrites.
    fn responsive(&mut self, tag: &html::Tag) {
        let Some(config) = &self.rw.responsive else {
            return;
        };
        let upstream = ["src", "data-src", "data-original", "data-lazy-src"]
            .iter()
            .find_map(|name| self.attr_upstream(tag, name));
        let Some(facts) = upstream.as_ref().and_then(|u| self.rw.facts.get(u)) else {
            return;
        };
        let present: Vec<&str> = tag.attrs.iter().map(|a| a.name.as_str()).collect();
        let src_shows = upstream.is_some() && self.attr_upstream(tag, "src") == upstream;
        let (text, routes) = responsive::additions(
            config,
            &present,
            upstream.as_deref().unwrap_or_default(),
            facts,
            responsive::Place {
                first: self.first_image == Some(tag.span.start),
                src_shows,
            },
            self.rw.key.as_ref(),
            &self.rw.public_base,
        );
        self.report.routes.extend(routes);
        if text.is_empty() {
            return;
        }
        // Before `>`, or before `/>` when the slash is not part of an unquoted value.
        let end = tag.span.end - 1;
        let at = match (self.doc.get(end - 1), self.doc.get(end - 2)) {
            (Some(b'/'), Some(b)) if html_space_or_quote(*b) => end - 1,
            _ => end,
        };
        self.edits.push((at..at, text, None));
    }

    /// Rewrites the link at raw `span` (no entity decoding: YAML, `<style>`, bare text) if it
    /// should be.
    fn replace_raw(&mut self, span: Range<usize>, context: Context, image: bool) {
        let Ok(value) = std::str::from_utf8(&self.doc[span.clone()]) else {
            return;
        };
        if let Some(new) = self.rw.link(value, context, image, &mut self.report) {
            self.edits.push((span, new.route.clone(), Some(new)));
        }
    }

    /// Rewrites a Markdown destination: CommonMark decodes character references there, so the
    /// link is read decoded and the whole raw span replaced.
    fn replace_destination(&mut self, span: Range<usize>, context: Context, image: bool) {
        let decoded = html::decode_entities(&self.doc[span.clone()]);
        let Ok(value) = std::str::from_utf8(&decoded.text) else {
            return;
        };
        if let Some(new) = self.rw.link(value, context, image, &mut self.report) {
            self.edits.push((span, new.route.clone(), Some(new)));
        }
    }

    fn markdown_destinations(&mut self, from: usize, refdefs: Vec<Range<usize>>) {
        let doc = self.doc;
        let mut i = from;
        while let Some(p) = html::find_ci(&doc[i..], b"](") {
            let at = i + p;
            i = at + 2;
            if self.mask[at] != Mask::Free {
                continue;
            }
            let Some((span, is_image)) = markdown::inline_destination(doc, at) else {
                continue;
            };
            if self.mask[span.clone()].iter().any(|&m| m != Mask::Free) {
                continue;
            }
            if is_image && self.markdown_image_as_tag(at) {
                continue;
            }
            let context = if is_image {
                Context::MarkdownImage
            } else {
                Context::MarkdownLink
            };
            self.replace_destination(span.clone(), context, is_image);
            self.mask[span].fill(Mask::Consumed);
        }
        for span in refdefs {
            if self.mask[span.clone()].iter().all(|&m| m == Mask::Free) {
                self.replace_destination(span.clone(), Context::MarkdownReference, false);
                self.mask[span].fill(Mask::Consumed);
            }
        }
    }

    /// With `rewrite.responsive.markdown`: the Markdown image whose `](` is at `at`, of an
    /// image in the mirror, becomes an `<img>` tag with its route, alt text and title, and the
    /// responsive attributes ([`responsive`]); true when it did.
    fn markdown_image_as_tag(&mut self, at: usize) -> bool {
        let Some(config) = self.rw.responsive.as_ref().filter(|r| r.config.markdown) else {
            return false;
        };
        let doc = self.doc;
        let Some(img) = markdown::inline_image(doc, at) else {
            return false;
        };
        if self.mask[img.whole.clone()]
            .iter()
            .any(|&m| m != Mask::Free)
        {
            return false;
        }
        let decoded = html::decode_entities(&doc[img.destination.clone()]);
        let Ok(link) = std::str::from_utf8(&decoded.text) else {
            return false;
        };
        let link = link.trim().to_string();
        let Some(upstream) = self.rw.upstream_of(&link) else {
            return false;
        };
        let Some(facts) = self.rw.facts.get(&upstream) else {
            return false;
        };
        // The route: the one written now, or the one already there.
        let rewritten = self
            .rw
            .link(&link, Context::MarkdownImage, true, &mut self.report);
        let src = rewritten.as_ref().map_or(link.clone(), |r| r.route.clone());
        let text_of = |r: &Range<usize>| String::from_utf8_lossy(&doc[r.clone()]).into_owned();
        let mut tag = format!("<img src=\"{}\"", html::escape_attr(&src, Some(b'"')));
        tag.push_str(&format!(
            " alt=\"{}\"",
            html::escape_attr(&text_of(&img.alt), Some(b'"'))
        ));
        let mut present = vec!["src", "alt"];
        if let Some(t) = &img.title {
            tag.push_str(&format!(
                " title=\"{}\"",
                html::escape_attr(&text_of(t), Some(b'"'))
            ));
            present.push("title");
        }
        let (more, routes) = responsive::additions(
            config,
            &present,
            &upstream,
            facts,
            responsive::Place {
                first: self.first_image == Some(img.whole.start),
                src_shows: true,
            },
            self.rw.key.as_ref(),
            &self.rw.public_base,
        );
        self.report.routes.extend(routes);
        tag.push_str(&more);
        tag.push('>');
        self.edits.push((img.whole.clone(), tag, rewritten));
        self.mask[img.whole].fill(Mask::Consumed);
        true
    }

    fn bare_urls(&mut self, from: usize) {
        let free: Vec<Range<usize>> = runs(&self.mask, Mask::Free)
            .into_iter()
            .filter(|r| r.end > from)
            .collect();
        for run in free {
            for span in markdown::bare_urls(self.doc, run) {
                self.replace_raw(span, Context::BareUrl, false);
            }
        }
    }
}

/// The trimmed span of a value (ASCII whitespace removed at both ends).
fn trimmed(v: &[u8]) -> Range<usize> {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    start..end
}

/// Maximal runs of `value` in `mask`.
fn runs(mask: &[Mask], value: Mask) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < mask.len() {
        if mask[i] != value {
            i += 1;
            continue;
        }
        let s = i;
        while i < mask.len() && mask[i] == value {
            i += 1;
        }
        out.push(s..i);
    }
    out
}

/// Whitespace or a quote: what may stand before a tag's closing `/>` when the slash is not part
/// of an unquoted attribute value.
fn html_space_or_quote(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'"' | b'\'')
}
