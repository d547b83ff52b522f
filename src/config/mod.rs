//! Configuration: every key of SPEC §2, typed, with its default; loading from TOML, environment
//! overrides (`IMGMIRROR_<SECTION>__<KEY>`), and validation.
//!
//! Loading never half-succeeds: any problem is a [`ConfigError`] that names the file (or variable),
//! the key, and what is wrong, and the CLI turns it into exit code 2. Nothing here does I/O beyond
//! reading the one file and the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::route::{Fit, Format, Options, SigningKey};
use env::{apply_env, ENV_PREFIX};
pub use hosts::{any_glob_matches, compile_globs, HostGlob, ProxyPrefix};

mod env;
pub(crate) mod hosts;
mod validate;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "IMGMIRROR_CONFIG";
/// Config file used when neither `--config` nor `$IMGMIRROR_CONFIG` is given and it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/imgmirror.toml";
/// The whole configuration. Field docs say what each key protects or controls; defaults are in the
/// `Default` impls and in the shipped `config/imgmirror.toml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, connection limits, timeouts.
    pub server: ServerConfig,
    /// `[upstream]`: fetching originals and the SSRF policy.
    pub upstream: UpstreamConfig,
    /// `[image]`: transforms: negotiation, bounds, memory budget.
    pub image: ImageConfig,
    /// `[cache]`: the memory cache and the mirror (folder or S3).
    pub cache: CacheConfig,
    /// `[s3]`: the shared mirror, when `cache.store = "s3"`.
    pub s3: S3Config,
    /// `[security]`: route signing and the purge token.
    pub security: SecurityConfig,
    /// `[cdn]`: the CDN or caching proxy in front (purge keys, purge requests).
    pub cdn: CdnConfig,
    /// `[rewrite]`: what `imgmirror rewrite` replaces, and with what.
    pub rewrite: RewriteConfig,
    /// `[archive]`: rescue from web archives when an origin is gone.
    pub archive: ArchiveConfig,
    /// Named variants usable in routes (`p-NAME`) and by the rewriter.
    pub presets: BTreeMap<String, Preset>,
}

/// Rescue from web archives (SPEC §5): images whose origin is gone are looked up there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Off by default: turning it on sends the URLs of dead images to the archives below.
    pub enabled: bool,
    /// URL templates tried in order: `{url}` is the upstream URL as written, `{timestamp}` is
    /// YYYYMMDDhhmmss (the post's date when known, else now).
    pub sources: Vec<String>,
    /// Archive requests at once, per process (the Wayback Machine rate-limits).
    pub concurrency: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: false,
            sources: vec!["https://web.archive.org/web/{timestamp}id_/{url}".into()],
            concurrency: 2,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[server]`: the listeners and how connections are bounded.
pub struct ServerConfig {
    /// Address the public listener binds.
    pub listen: String,
    /// Send `Access-Control-Allow-Origin: *` on image responses.
    pub cors: bool,
    /// When set, `/metrics`, `/stats` and the status page are served only on this address.
    pub admin_listen: String,
    /// Requests handled at once; past it, requests get an immediate 503 (load shedding).
    pub max_in_flight: usize,
    /// Open client connections on the public listener; past it, a new connection gets an
    /// immediate 503 and is closed. Clamped to the process's file descriptor limit.
    pub max_connections: usize,
    /// Accept serving, on an address other machines can reach, routes that are neither signed
    /// nor limited to `upstream.allow_hosts` (an open image proxy). Off: `serve` refuses to start.
    pub open_proxy: bool,
    /// Event loops serving connections, each a single-threaded runtime on its own thread that
    /// keeps every connection it accepts (nginx's worker model); 0 = one per core.
    pub threads: usize,
    /// HTTP/1 and HTTP/2 connections with no request in flight are closed after this long.
    pub idle_timeout_secs: u64,
    /// A response whose client accepts no bytes for this long is dropped, with its body.
    pub send_timeout_secs: u64,
    /// A client must send its first byte and its whole request head within this long, or the
    /// connection is closed (slow-loris); an HTTP/2 peer must answer a keep-alive ping within it.
    pub header_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            cors: true,
            admin_listen: String::new(),
            max_in_flight: 1024,
            max_connections: 4096,
            open_proxy: false,
            threads: 0,
            idle_timeout_secs: 60,
            send_timeout_secs: 30,
            header_timeout_secs: 10,
        }
    }
}

/// What the service holds beyond its budgets: code, runtimes, connection buffers (4096
/// connections), the mirror's open files, allocator slack. Its idle resident set is about 20 MiB
/// and its peak under the hit benchmark about 120 MiB with a warm memory cache (BENCHMARKS.md).
pub const BASE_MEMORY: u64 = 128 << 20;

/// The most event loops `server.threads` may ask for.
pub const MAX_THREADS: usize = 256;

impl ServerConfig {
    /// The number of event loops: `threads`, or one per core when it is 0.
    pub fn event_loops(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[upstream]`: how originals are fetched, and from where they may not be.
pub struct UpstreamConfig {
    /// Allow fetching from loopback, private, link-local, ... addresses (SSRF guard off).
    pub allow_private: bool,
    /// When non-empty, only hosts matching one of these globs are fetched.
    pub allow_hosts: Vec<String>,
    /// Hosts matching these globs are never fetched.
    pub deny_hosts: Vec<String>,
    /// Whole-fetch deadline; past it the request answers 504.
    pub timeout_secs: u64,
    /// Largest original accepted; enforced while streaming, never buffered past.
    pub max_bytes: u64,
    /// Redirects followed (each hop checked like the first).
    pub max_redirects: usize,
    /// Parallel upstream fetches, service-wide.
    pub concurrency: usize,
    /// The `User-Agent` of every fetch.
    pub user_agent: String,
    /// Origins that block hotlinking expect no Referer, so none is sent unless this is set.
    pub send_referer: bool,
    /// Host glob -> the Referer to send to it: origins that refuse requests without their own
    /// site's (hotlink protection) get it; wins over `send_referer`.
    pub referers: BTreeMap<String, String>,
    /// host -> "ip:port": fetch that host from that address (like curl --resolve).
    pub resolve: BTreeMap<String, String>,
    /// PEM file of extra root certificates to trust for https origins (merged with the system's).
    pub ca_file: String,
    /// Which routes the service may fetch: only known links (the default), or any.
    pub fetch: FetchPolicy,
    /// Parallel fetches to one host: one slow or hostile host cannot take every slot.
    pub per_host_concurrency: usize,
    /// Longest a fetch waits for a slot (service-wide and per host); past it, 503.
    pub queue_wait_secs: u64,
}

/// What `imgmirror serve` may fetch from upstreams (`upstream.fetch`, SPEC §5 "Safe by default").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetchPolicy {
    /// Only upstream URLs the mirror knows (links recorded by `rewrite` or `warm`, fetched or
    /// not, and mirrored originals), hosts in `upstream.allow_hosts`, and signed routes; any
    /// other route is a 403 and nobody is contacted.
    #[default]
    Known,
    /// Every route: a generic image proxy.
    Any,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            allow_private: false,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            timeout_secs: 15,
            max_bytes: 26_214_400,
            max_redirects: 5,
            concurrency: 32,
            user_agent: format!("imgmirror/{}", env!("CARGO_PKG_VERSION")),
            send_referer: false,
            referers: BTreeMap::new(),
            resolve: BTreeMap::new(),
            ca_file: String::new(),
            fetch: FetchPolicy::Known,
            per_host_concurrency: 4,
            queue_wait_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[image]`: transforms.
pub struct ImageConfig {
    /// Sources with more pixels are refused before decoding (pixel bombs).
    pub max_pixels: u64,
    /// Largest width or height a route may request.
    pub max_dimension: u32,
    /// Default JPEG/WebP quality.
    pub quality: u8,
    /// Serve WebP to clients whose Accept lists it, with `Vary: Accept`.
    pub auto_webp: bool,
    /// Serve AVIF to clients whose Accept lists `image/avif`, preferred over WebP, with
    /// `Vary: Accept`.
    pub auto_avif: bool,
    /// Animated sources with more frames are refused (422); resizing keeps every frame.
    pub max_frames: usize,
    /// Decoders and encoders of all running transforms together stay under this: each is
    /// admitted by its format's measured peak (`transform::budget`); past it a transform waits,
    /// then 503.
    pub memory_bytes: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            max_pixels: 50_000_000,
            max_dimension: 8192,
            quality: 82,
            auto_webp: false,
            auto_avif: false,
            max_frames: 256,
            memory_bytes: 536_870_912,
        }
    }
}

/// Where the mirror lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The mirror in `cache.dir` on the local disk.
    Fs,
    /// The mirror in S3 (`[s3]`), with `cache.dir` as the local tier in front of it.
    S3,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[cache]`: memory and the mirror.
pub struct CacheConfig {
    /// Durable mirror of originals (and variants); survives restarts.
    pub dir: PathBuf,
    /// In-memory cache of hot responses, weighed in bytes.
    pub memory_bytes: u64,
    /// 0 = unbounded; otherwise variants are evicted first, originals last.
    pub disk_bytes: u64,
    /// After this an original is revalidated upstream; served stale on failure.
    pub ttl_secs: u64,
    /// How long an upstream 404/410 is remembered.
    pub negative_ttl_secs: u64,
    /// Where the mirror lives: `fs` (the local folder) or `s3` (shared by replicas).
    pub store: StoreKind,
    /// How often the service collects unreferenced blobs and recounts usage (`imgmirror gc`).
    pub gc_interval_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("mirror"),
            memory_bytes: 268_435_456,
            disk_bytes: 0,
            ttl_secs: 2_592_000,
            negative_ttl_secs: 300,
            store: StoreKind::Fs,
            gc_interval_secs: 86_400,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[s3]`: the shared mirror.
pub struct S3Config {
    /// The bucket (must exist).
    pub bucket: String,
    /// A key prefix inside the bucket (`""`: the bucket's root).
    pub prefix: String,
    /// The region (any, for S3-compatible stores that ignore it).
    pub region: String,
    /// An S3-compatible endpoint (`""`: AWS).
    pub endpoint: String,
    /// Allow `http://` endpoints (a loopback or private-network store).
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: "imgmirror/".into(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            allow_http: false,
        }
    }
}

/// `[cdn]`: a CDN or caching proxy in front (Cloudflare, Fastly, Varnish, nginx).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdnConfig {
    /// The response header naming each image answer's purge key (`Surrogate-Key`,
    /// `Cache-Tag`, `xkey`); "" names none.
    pub surrogate_key: String,
    /// On purge, one request per purge key to this URL (`{key}` substituted); "" sends none.
    pub purge_url: String,
    /// The method of those requests.
    pub purge_method: String,
    /// Headers those requests carry: a CDN's API token (Fastly's `Fastly-Key`, Cloudflare's
    /// `Authorization: Bearer …`), a `Content-Type` for the body.
    pub purge_headers: BTreeMap<String, String>,
    /// The body of those requests (`{key}` substituted), e.g. Cloudflare's
    /// `{"tags":["{key}"]}`; "" sends none.
    pub purge_body: String,
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            surrogate_key: String::new(),
            purge_url: String::new(),
            purge_method: "PURGE".into(),
            purge_headers: BTreeMap::new(),
            purge_body: String::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[security]`: signed routes and the purge token.
pub struct SecurityConfig {
    /// When set (at least 32 bytes), routes carry an HMAC-SHA256; unsigned or forged ones get 403.
    pub signing_key: String,
    /// Keys rotated out that still verify (not used to sign), each at least 32 bytes: a key
    /// can be replaced without breaking the routes in posts.
    pub previous_signing_keys: Vec<String>,
    /// When true, only the original, routes naming a preset (and nothing more) and, with
    /// `[rewrite.responsive]` enabled, the WebP routes of its widths are served: the variants a
    /// client can make the service encode and store are bounded by the config.
    pub presets_only: bool,
    /// When set (at least 16 bytes), `POST /purge` on the public listener is accepted with
    /// `Authorization: Bearer <token>`; otherwise purge is only accepted on `server.admin_listen`.
    pub purge_token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[rewrite]`: the batch rewriter.
pub struct RewriteConfig {
    /// Prefix of rewritten links: "" gives root-relative routes.
    pub public_base: String,
    /// File extensions the rewriter reads (without the dot).
    pub extensions: Vec<String>,
    /// Front-matter keys whose values are images.
    pub image_keys: Vec<String>,
    /// Direct (unproxied) image links on these hosts are rewritten too.
    pub mirror_hosts: Vec<String>,
    /// Recognise the proxies listed in SPEC §3.
    pub builtin_proxies: bool,
    /// More proxies: the upstream URL follows the prefix.
    pub proxies: Vec<ProxyConfig>,
    /// Which preset the rewriter applies, by context.
    pub presets: RewritePresets,
    /// What an image pipeline writes on each `<img>`, from the mirror.
    pub responsive: ResponsiveConfig,
}

impl Default for RewriteConfig {
    fn default() -> Self {
        RewriteConfig {
            public_base: String::new(),
            extensions: ["md", "markdown", "mdx", "html", "htm"]
                .map(String::from)
                .to_vec(),
            image_keys: [
                "headimg",
                "thumbnail",
                "cover",
                "image",
                "images",
                "banner_img",
                "index_img",
                "top_img",
                "photos",
            ]
            .map(String::from)
            .to_vec(),
            mirror_hosts: Vec::new(),
            builtin_proxies: true,
            proxies: Vec::new(),
            presets: RewritePresets::default(),
            responsive: ResponsiveConfig::default(),
        }
    }
}

/// `[rewrite.responsive]`: what every site generator's image pipeline writes on an `<img>`,
/// taken from the mirror (SPEC §3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponsiveConfig {
    /// Off by default: the rewrite changes links only.
    pub enabled: bool,
    /// `width`/`height` of the mirrored original (no layout shift).
    pub dimensions: bool,
    /// `srcset` widths (only those narrower than the original, and the original's own).
    pub widths: Vec<u32>,
    /// The `sizes` written beside a `srcset`.
    pub sizes: String,
    /// `loading="lazy" decoding="async"` on every image but a post's first.
    pub lazy: bool,
    /// What shows before the image arrives.
    pub placeholder: Placeholder,
    /// Also turn Markdown images into such `<img>` tags.
    pub markdown: bool,
}

impl Default for ResponsiveConfig {
    fn default() -> Self {
        ResponsiveConfig {
            enabled: false,
            dimensions: true,
            widths: vec![320, 640, 1024, 1600],
            sizes: "(max-width: 900px) 100vw, 900px".into(),
            lazy: true,
            placeholder: Placeholder::None,
            markdown: false,
        }
    }
}

/// `rewrite.responsive.placeholder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placeholder {
    /// Nothing.
    #[default]
    None,
    /// The image's average colour as the element's background.
    Color,
    /// A tiny blurred preview (ThumbHash) as the element's background.
    Thumbhash,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[[rewrite.proxies]]`: one CORS proxy whose links are unwrapped.
pub struct ProxyConfig {
    /// A name for reports.
    pub name: String,
    /// `https://mirror.example.net/fetch/`; `*` may stand for one or more host labels.
    pub prefix: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
/// `[rewrite.presets]`: the preset a rewritten link gets, by where it was found.
pub struct RewritePresets {
    /// Preset for links in front matter (absent = the original).
    pub front_matter: Option<String>,
    /// Preset for links in the body (absent = the original).
    pub body: Option<String>,
    /// Presets by front-matter key (`headimg = "banner"`), winning over `front_matter`: themes
    /// show one key as a wide banner and another as a small card. Every other key of this table
    /// lands here; each must be one of `rewrite.image_keys` (checked when the config loads).
    #[serde(flatten)]
    pub keys: BTreeMap<String, String>,
}

/// A named variant.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Preset {
    /// Width in pixels.
    pub width: Option<u32>,
    /// Height in pixels.
    pub height: Option<u32>,
    /// How the image fits the box.
    pub fit: Option<Fit>,
    /// Output format.
    pub format: Option<Format>,
    /// Encoder quality.
    pub quality: Option<u8>,
    /// Progressive JPEG output.
    pub progressive: bool,
}

impl Preset {
    /// The options this preset stands for, with `overrides` taking precedence field by field.
    pub fn resolve(&self, overrides: &Options) -> Options {
        Options {
            preset: None,
            width: overrides.width.or(self.width),
            height: overrides.height.or(self.height),
            fit: overrides.fit.or(self.fit),
            format: overrides.format.or(self.format),
            quality: overrides.quality.or(self.quality),
            progressive: overrides.progressive || self.progressive,
        }
    }
}

/// A configuration problem: where (file or variable), which key, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// The file, or `environment variable NAME`, or `built-in defaults`.
    pub source_name: String,
    /// Dotted key, e.g. `upstream.timeout_secs`; empty for file-level problems.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(source_name: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            source_name: source_name.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Which file `--config` resolution picks: the flag, else `$IMGMIRROR_CONFIG`, else
/// `config/imgmirror.toml` when it exists, else none (built-in defaults).
pub fn resolve_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_path_buf())
}

impl Config {
    /// Loads the file picked by [`resolve_path`], applies environment overrides, validates.
    pub fn load(flag: Option<&Path>) -> Result<Config, ConfigError> {
        let path = resolve_path(flag);
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| ConfigError::new(&name, "", format!("cannot read: {e}")))?;
                Config::from_parts(&name, &text, &env)
            }
            None => Config::from_parts("built-in defaults", "", &env),
        }
    }

    /// Builds a config from TOML text and `(name, value)` environment pairs (only those starting
    /// with `IMGMIRROR_` and holding `__` are overrides). Pure, for tests.
    pub fn from_parts(
        source_name: &str,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            ConfigError::new(
                source_name,
                "",
                format!("{at}{}", e.message().trim().replace('\n', " ")),
            )
        })?;
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::new(source_name, "", e.to_string()))?;
        let mut env: Vec<_> = env.to_vec();
        env.sort();
        // (dotted key, variable) of every override, so an error in a value the environment gave
        // names the variable rather than the file.
        let mut overrides = Vec::new();
        for (name, value) in &env {
            if let Some(key) = apply_env(&mut table, &defaults, name, value)? {
                overrides.push((key, name.as_str()));
            }
        }
        let named = |mut e: ConfigError| {
            // The key itself, an item or field under it (`a.b[1]`, `a.b.c`), or a table the
            // variable set a field of (`presets.thumb` for `IMGMIRROR_PRESETS__THUMB__WIDTH`).
            let under = |inner: &str, outer: &str| {
                inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            let by_env = overrides
                .iter()
                .rev()
                .find(|(key, _)| !e.key.is_empty() && (under(&e.key, key) || under(key, &e.key)));
            if let Some((_, name)) = by_env {
                e.source_name = format!("environment variable {name}");
            }
            e
        };
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let msg = match is_secret(&key) {
                    // serde repeats a wrong value ("invalid type: integer `123`").
                    true => "not a valid value (not repeated here: it may be a secret)".into(),
                    false => e.into_inner().message().trim().replace('\n', " "),
                };
                ConfigError::new(source_name, if key == "." { "" } else { &key }, msg)
            })
            .map_err(named)?;
        config.validate(source_name).map_err(named)?;
        Ok(config)
    }

    /// True when the service may fetch `url`'s upstream without knowing the link: a generic
    /// proxy (`upstream.fetch = "any"`), signed routes (with a key every accepted route is
    /// signed), or `upstream.allow_hosts` (checked before this: every fetched host is in it).
    pub fn fetches_unknown_links(&self) -> bool {
        self.upstream.fetch == FetchPolicy::Any
            || !self.security.signing_key.is_empty()
            || !self.upstream.allow_hosts.is_empty()
    }

    /// The most memory the service holds by its budgets, for sizing its unit or container
    /// (`MemoryMax`, a memory limit): the memory cache, as much again in responses slow clients
    /// have not taken (`server::slow`), every running transform's peak (`image.memory_bytes`),
    /// the remembered 404s, and [`BASE_MEMORY`].
    pub fn memory_ceiling(&self) -> u64 {
        self.cache
            .memory_bytes
            .saturating_mul(2)
            .saturating_add(self.image.memory_bytes)
            .saturating_add(crate::cache::NEGATIVE_BYTES)
            .saturating_add(BASE_MEMORY)
    }

    /// Why serving this config would make an open image proxy (`None` when it would not): a
    /// listener other machines can reach, `upstream.fetch = "any"`, no signing key, no
    /// `upstream.allow_hosts`, and `server.open_proxy` not set.
    pub fn open_proxy_risk(&self) -> Option<String> {
        let exposed = self
            .server
            .listen
            .parse::<std::net::SocketAddr>()
            .map_or(true, |a| !a.ip().is_loopback());
        let open = self.security.signing_key.is_empty()
            && self.upstream.allow_hosts.is_empty()
            && self.upstream.fetch == FetchPolicy::Any;
        (exposed && open && !self.server.open_proxy).then(|| {
            format!(
                "server.listen {}: reachable from other machines, upstream.fetch = \"any\", and \
                 routes are neither signed nor limited to hosts, so anyone could use this service \
                 as an open image proxy; set upstream.fetch = \"known\" (the default), or \
                 security.signing_key (openssl rand -hex 32, then rewrite the posts with it), or \
                 upstream.allow_hosts, or server.open_proxy = true to accept that",
                self.server.listen
            )
        })
    }

    /// The HMAC key of signed routes (`security.signing_key`, with the
    /// `previous_signing_keys` that still verify), when one is set.
    pub fn signing_key(&self) -> Option<SigningKey> {
        let previous = self.security.previous_signing_keys.iter();
        SigningKey::new(self.security.signing_key.as_bytes())
            .map(|k| k.with_previous(previous.map(String::as_bytes)))
    }
}

/// Keys whose values are secrets (signing keys, the purge token, a CDN API's token in
/// `cdn.purge_headers`): an error about one names the key, never its value.
pub(crate) fn is_secret(dotted: &str) -> bool {
    [
        "security.signing_key",
        "security.previous_signing_keys",
        "security.purge_token",
        "cdn.purge_headers",
    ]
    .iter()
    .any(|k| dotted.starts_with(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_override_types() {
        let c = Config::from_parts(
            "t",
            "",
            &env(&[
                ("IMGMIRROR_SERVER__LISTEN", "0.0.0.0:8080"),
                ("IMGMIRROR_UPSTREAM__TIMEOUT_SECS", "3"),
                ("IMGMIRROR_SECURITY__SIGNING_KEY", &"1".repeat(40)),
                ("IMGMIRROR_UPSTREAM__ALLOW_HOSTS", r#"["*.a.com"]"#),
                ("IMGMIRROR_CONFIG", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.upstream.timeout_secs, 3);
        assert_eq!(c.security.signing_key, "1".repeat(40));
        assert_eq!(c.upstream.allow_hosts, vec!["*.a.com"]);
    }

    #[test]
    fn a_bad_value_from_the_environment_names_its_variable() {
        for (var, value, key) in [
            ("IMGMIRROR_UPSTREAM__FETCH", "bogus", "upstream.fetch"),
            ("IMGMIRROR_IMAGE__MEMORY_BYTES", "0", "image.memory_bytes"),
        ] {
            let e = Config::from_parts("c.toml", "", &env(&[(var, value)])).unwrap_err();
            assert_eq!(e.source_name, format!("environment variable {var}"), "{e}");
            assert_eq!(e.key, key, "{e}");
        }
        // An item of a list, and a table the variable set a field of.
        let e = Config::from_parts(
            "c.toml",
            "",
            &env(&[("IMGMIRROR_REWRITE__EXTENSIONS", r#"["md", ".html"]"#)]),
        )
        .unwrap_err();
        assert_eq!(
            e.source_name, "environment variable IMGMIRROR_REWRITE__EXTENSIONS",
            "{e}"
        );
        let e = Config::from_parts(
            "c.toml",
            "",
            &env(&[("IMGMIRROR_PRESETS__THUMB__WIDTH", "100000")]),
        )
        .unwrap_err();
        assert_eq!(
            e.source_name, "environment variable IMGMIRROR_PRESETS__THUMB__WIDTH",
            "{e}"
        );
        // A key the file gave is still the file's.
        let e = Config::from_parts("c.toml", "[upstream]\nfetch = \"bogus\"\n", &[]).unwrap_err();
        assert_eq!(e.source_name, "c.toml");
    }
}
