//! The command line: argument parsing (clap), config loading, and mapping outcomes to exit codes
//! (0 success, 1 the job ran but found problems, 2 usage or configuration error, 75 a temporary
//! failure at start). Each command's
//! work lives in its own module; this file only wires flags to it and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::route::{self, Fit, Format, Options};

/// Exit code: the job ran but found problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: a temporary failure at start (address in use, store unreachable, `cache.dir` not
/// mounted yet): try again later (`EX_TEMPFAIL`; the systemd unit restarts on it).
pub const EXIT_TEMPORARY: u8 = 75;

#[derive(Parser, Debug)]
#[command(
    name = "imgmirror",
    version,
    about = "Mirror the images your blog posts borrow through CORS proxies, and serve them yourself",
    long_about = "imgmirror rewrites proxied image links in Markdown/HTML posts into local routes, \
then serves those routes: it fetches each image once, keeps the original in a durable mirror, \
resizes on request and caches hot responses.\n\n\
Config: --config F, else $IMGMIRROR_CONFIG, else config/imgmirror.toml when it exists, else \
built-in defaults. Any key can be overridden with IMGMIRROR_<SECTION>__<KEY>.\n\n\
Exit codes: 0 success; 1 the job ran but found problems; 2 usage or configuration error; 75 a \
temporary failure at start (address in use, store unreachable, cache.dir not mounted yet)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file (TOML). Default: $IMGMIRROR_CONFIG, else config/imgmirror.toml if present.
    #[arg(long, value_name = "F")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP service that answers routes.
    #[command(
        after_help = "Example:\n  imgmirror serve --config config/imgmirror.toml --listen 0.0.0.0:8080"
    )]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Address to listen on (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Log format: human-readable text or one JSON object per line.
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Rewrite proxied image links in posts (files or folders) into local routes.
    #[command(after_help = "Examples:\n  imgmirror rewrite source/_posts\n  \
imgmirror rewrite --check source/_posts          # CI: exit 1 if anything is left to rewrite\n  \
imgmirror rewrite --diff --dry-run post.md       # show what would change\n  \
imgmirror rewrite --out build/posts --report r.json source/_posts")]
    Rewrite(RewriteArgs),
    /// Fetch every image the posts reference into the mirror, without rewriting.
    #[command(after_help = "Example:\n  imgmirror warm --report dead-links.json source/_posts")]
    Warm {
        #[command(flatten)]
        config: ConfigArg,
        /// Write a JSON report (including dead links) to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Post files or folders.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the local route for an upstream URL, or (--decode) the URL a route stands for.
    #[command(after_help = "Examples:\n  \
imgmirror url http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg\n  \
imgmirror url --width 320 --format webp http://example.com/a.jpg\n  \
imgmirror url --decode /i/orig/http/zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg")]
    Url(UrlArgs),
    /// Write the mirror to DIR at the paths of its routes, for a plain static file server.
    #[command(
        after_help = "Example:\n  imgmirror export --variants /srv/www/img   # then: nginx root /srv/www/img;"
    )]
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Also export derived variants.
        #[arg(long)]
        variants: bool,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Drop images (original and variants) from the mirror and a running service's memory.
    #[command(
        after_help = "Examples:\n  imgmirror purge /i/orig/http/zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg\n  \
imgmirror purge http://zkres2.myzaker.com/202106/60bf2cd9b15ec00d107f7039_1024.jpg"
    )]
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(required = true, value_name = "ROUTE|URL")]
        targets: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct RewriteArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Change nothing; say what would change.
    #[arg(long)]
    pub dry_run: bool,
    /// Change nothing; exit 1 when a rewritable link remains (for a blog's CI).
    #[arg(long)]
    pub check: bool,
    /// Print a unified diff of every change.
    #[arg(long)]
    pub diff: bool,
    /// Write rewritten files under DIR (keeping relative paths) instead of in place.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// After rewriting, fetch the referenced images into the mirror.
    #[arg(long)]
    pub warm: bool,
    /// Write a JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Post files or folders (walked recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UrlArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// A preset from [presets.*]; the options below override its fields.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    #[arg(long, value_name = "W")]
    pub width: Option<u32>,
    #[arg(long, value_name = "H")]
    pub height: Option<u32>,
    /// cover | contain | fill | inside
    #[arg(long, value_name = "MODE", value_parser = parse_fit)]
    pub fit: Option<Fit>,
    /// jpeg | png | webp | gif | avif | original
    #[arg(long, value_name = "FMT", value_parser = parse_format)]
    pub format: Option<Format>,
    /// 1 to 100
    #[arg(long, value_name = "Q", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: Option<u8>,
    /// Progressive JPEG (no effect on other formats)
    #[arg(long)]
    pub progressive: bool,
    /// Decode ROUTE instead: print its upstream URL on the last line of stdout, options on stderr.
    #[arg(long, value_name = "ROUTE", conflicts_with_all = ["preset", "width", "height", "fit", "format", "quality", "progressive", "upstream_url"])]
    pub decode: Option<String>,
    /// With --decode: print one JSON object (upstream, options, signed) on stdout instead.
    #[arg(long, requires = "decode")]
    pub json: bool,
    /// The upstream http(s) URL to encode.
    #[arg(value_name = "UPSTREAM_URL", required_unless_present = "decode")]
    pub upstream_url: Option<String>,
}

fn parse_fit(s: &str) -> Result<Fit, String> {
    Fit::parse(s).ok_or_else(|| format!("{s:?} is not one of cover, contain, fill, inside"))
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of jpeg, png, webp, gif, avif, original"))
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

/// The one place a start error gets its exit code.
impl From<crate::start::StartError> for Failure {
    fn from(e: crate::start::StartError) -> Failure {
        match e {
            crate::start::StartError::Config(message) => Failure::usage(message),
            crate::start::StartError::Temporary(message) => Failure {
                code: EXIT_TEMPORARY,
                message: format!("{message} (temporary: try again later)"),
            },
        }
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Failure {
        Failure::usage(format!("config error: {e}"))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("imgmirror: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Runs a parsed command; `Ok(code)` is 0 or [`EXIT_PROBLEMS`].
pub fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Url(args) => url_command(args),
        Command::Serve {
            config,
            listen,
            log_format,
        } => serve_command(config, listen, log_format),
        Command::Rewrite(args) => rewrite_command(args),
        Command::Warm {
            config,
            report,
            paths,
        } => warm_command(config, report, paths),
        Command::Export {
            config,
            variants,
            dir,
        } => export_command(config, variants, dir),
        Command::Purge { config, targets } => purge_command(config, targets),
    }
}

fn url_command(args: UrlArgs) -> Result<u8, Failure> {
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
    let r = route::encode(&upstream, &options, key.as_ref())
        .map_err(|e| Failure::usage(format!("cannot encode {upstream:?}: {e}")))?;
    println!("{}{}", config.rewrite.public_base.trim_end_matches('/'), r);
    Ok(0)
}

fn rewrite_command(args: RewriteArgs) -> Result<u8, Failure> {
    use crate::rewrite::batch::{self, BatchOptions, BatchReport};
    use std::io::IsTerminal;

    let config = Config::load(args.config.config.as_deref())?;
    if let Some(out) = &args.out {
        if out.exists() && !out.is_dir() {
            return Err(Failure::usage(format!(
                "--out {}: exists and is not a folder",
                out.display()
            )));
        }
    }
    let rewriter = crate::rewrite::Rewriter::new(&config);
    let options = BatchOptions {
        no_write: args.dry_run || args.check,
        diff: args.diff,
        out: args.out.clone(),
        extensions: config.rewrite.extensions.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    let mut report = BatchReport::default();
    let jobs = batch::collect(&args.paths, &options.extensions, &mut report);
    batch::process(&rewriter, &jobs, &options, &batch::stage, &mut report);

    for d in &report.diffs {
        print!("{d}");
    }
    if args.dry_run && !args.diff {
        for p in &report.changed {
            println!("would rewrite {p}");
        }
    }
    if args.check {
        for p in &report.changed {
            eprintln!("{p}: has links to rewrite");
        }
    }
    for e in &report.errors {
        eprintln!("imgmirror: {}: {}", e.path, e.reason);
    }
    let verb = if options.no_write {
        "would change"
    } else {
        "changed"
    };
    eprintln!("rewrite: {}", report.summary(verb));
    let mut problems = !report.errors.is_empty() || (args.check && report.files_changed > 0);
    // The links go on record, so that the service (`upstream.fetch = "known"`) fetches them;
    // --warm records them itself before fetching.
    if !options.no_write && !args.warm && !report.upstreams.is_empty() {
        let urls = report.upstreams.keys().cloned().collect();
        match record_links(&config, urls) {
            Ok(new) => eprintln!(
                "rewrite: {} links on record in the mirror ({new} new)",
                report.upstreams.len()
            ),
            Err(e) => {
                eprintln!(
                    "imgmirror: cannot record the posts' links in the mirror, so the service \
                     will refuse them until `imgmirror warm` records them: {e}"
                );
                problems = true;
            }
        }
    }
    let warm = if args.warm && !args.check && !args.dry_run {
        let warm = run_warm(config, report.upstreams.clone())?;
        problems |= !warm.dead.is_empty();
        Some(warm)
    } else {
        None
    };
    if let Some(path) = &args.report {
        let mut json = serde_json::to_value(&report)
            .map_err(|e| Failure::usage(format!("cannot serialise the report: {e}")))?;
        // With --warm, what warming did goes in the same report.
        if let (Some(w), Some(map)) = (&warm, json.as_object_mut()) {
            map.insert("warm".into(), warm_json(w));
        }
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        crate::fsutil::write_atomic(path, text.as_bytes(), crate::fsutil::PUBLIC).map_err(|e| {
            Failure {
                code: EXIT_PROBLEMS,
                message: format!("cannot write report {}: {e}", path.display()),
            }
        })?;
    }
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}

/// The JSON of a warm run, in `warm --report` and `rewrite --warm --report`.
fn warm_json(warm: &crate::mirror::warm::WarmReport) -> serde_json::Value {
    serde_json::json!({
        "images": warm.images,
        "fetched": warm.fetched,
        "archived": warm.archived,
        "already_mirrored": warm.already_mirrored,
        "stale": warm.stale,
        "dead": warm.dead,
    })
}

/// Records `urls` as links of the posts in the mirror `config` names (see
/// [`crate::store::Tiers::know`]); returns how many were new.
fn record_links(config: &Config, urls: Vec<String>) -> Result<usize, String> {
    let runtime = runtime().map_err(|f| f.message)?;
    runtime.block_on(async {
        let tiers = crate::store::open(config)
            .await
            .map_err(|e| e.to_string())?;
        tiers
            .know(
                urls,
                crate::metrics::Clock::now_secs(&crate::metrics::SystemClock),
            )
            .await
            .map_err(|e| format!("cache: {e}"))
    })
}

/// Mirrors `urls` with a service state built from `config` (no listener), printing dead links.
fn run_warm(
    config: Config,
    urls: std::collections::BTreeMap<String, Option<u64>>,
) -> Result<crate::mirror::warm::WarmReport, Failure> {
    use std::io::IsTerminal;
    let runtime = runtime()?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(urls.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let report = runtime.block_on(async {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(std::sync::Arc::new(
            crate::metrics::SystemClock,
        )));
        let now = metrics.now();
        let mirror = crate::mirror::Mirror::open(std::sync::Arc::new(config), metrics).await?;
        // Every link seen goes on record first, fetched or not (the service fetches only known
        // links, and a dead link may come back or be rescued later).
        mirror
            .tiers()
            .know(urls.keys().cloned().collect(), now)
            .await
            .map_err(|e| Failure {
                code: EXIT_PROBLEMS,
                message: format!("cannot record the posts' links in the mirror: {e}"),
            })?;
        let tick = bar.clone();
        Ok::<_, Failure>(
            crate::mirror::warm::warm(std::sync::Arc::new(mirror), urls, move || {
                if let Some(b) = &tick {
                    b.inc(1);
                }
            })
            .await,
        )
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for d in &report.dead {
        eprintln!(
            "imgmirror: dead link: {} ({}: {})",
            d.url, d.status, d.reason
        );
    }
    for a in &report.archived {
        eprintln!(
            "imgmirror: rescued from {}: {} (capture {}: {})",
            a.source, a.url, a.capture, a.capture_url
        );
    }
    eprintln!(
        "warm: {} images: {} fetched, {} archived, {} already mirrored, {} stale kept, {} dead",
        report.images,
        report.fetched,
        report.archived.len(),
        report.already_mirrored,
        report.stale,
        report.dead.len()
    );
    Ok(report)
}

fn warm_command(
    config: ConfigArg,
    report_path: Option<PathBuf>,
    paths: Vec<PathBuf>,
) -> Result<u8, Failure> {
    use crate::rewrite::batch::{self, BatchOptions, BatchReport};
    let config = Config::load(config.config.as_deref())?;
    let rewriter = crate::rewrite::Rewriter::new(&config);
    let options = BatchOptions {
        no_write: true,
        extensions: config.rewrite.extensions.clone(),
        ..BatchOptions::default()
    };
    let mut scan = BatchReport::default();
    let jobs = batch::collect(&paths, &options.extensions, &mut scan);
    batch::process(&rewriter, &jobs, &options, &batch::stage, &mut scan);
    for e in &scan.errors {
        eprintln!("imgmirror: {}: {}", e.path, e.reason);
    }
    let warm = run_warm(config, scan.upstreams.clone())?;
    if let Some(path) = report_path {
        let mut json = warm_json(&warm);
        if let Some(map) = json.as_object_mut() {
            map.insert("files_scanned".into(), scan.files_scanned.into());
            map.insert(
                "file_errors".into(),
                serde_json::to_value(&scan.errors).unwrap_or_default(),
            );
        }
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        crate::fsutil::write_atomic(&path, text.as_bytes(), crate::fsutil::PUBLIC).map_err(
            |e| Failure {
                code: EXIT_PROBLEMS,
                message: format!("cannot write report {}: {e}", path.display()),
            },
        )?;
    }
    let problems = !warm.dead.is_empty() || !scan.errors.is_empty();
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}

fn export_command(config: ConfigArg, variants: bool, dir: PathBuf) -> Result<u8, Failure> {
    let config = Config::load(config.config.as_deref())?;
    if config.cache.store == crate::config::StoreKind::Fs && !config.cache.dir.is_dir() {
        return Err(Failure::usage(format!(
            "cache.dir {}: no mirror there",
            config.cache.dir.display()
        )));
    }
    let runtime = runtime()?;
    let key = config.signing_key();
    let report = runtime.block_on(async {
        let tiers = crate::store::open(&config).await?;
        crate::store::ops::export(tiers.primary(), &dir, key.as_ref(), variants)
            .await
            .map_err(|e| Failure {
                code: EXIT_PROBLEMS,
                message: format!("cannot read the mirror: {e}"),
            })
    })?;
    for (k, why) in &report.skipped {
        eprintln!("imgmirror: not exported: {k}: {why}");
    }
    eprintln!(
        "export: {} files written to {}, {} skipped",
        report.written,
        dir.display(),
        report.skipped.len()
    );
    Ok(if report.skipped.is_empty() {
        0
    } else {
        EXIT_PROBLEMS
    })
}

fn serve_command(
    config: ConfigArg,
    listen: Option<String>,
    log_format: Option<String>,
) -> Result<u8, Failure> {
    use std::io::IsTerminal;

    let mut config = Config::load(config.config.as_deref())?;
    if let Some(l) = listen {
        if l.parse::<std::net::SocketAddr>().is_err() {
            return Err(Failure::usage(format!(
                "--listen {l:?}: not an address like 127.0.0.1:8080"
            )));
        }
        config.server.listen = l;
    }
    let json = match log_format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    // Held until `serve` returns: dropping it writes out the lines still buffered.
    let _log = init_logging(json);
    // This thread's runtime is the first of the service's event loops (`server.threads`); the
    // others start their own (see `server::start`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let running = crate::server::start(config).await?;
        tracing::info!(addr = %running.addr, admin = ?running.admin_addr, "imgmirror serving");
        let stop = running.stopper();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal: finishing in-flight requests");
            let _ = stop.send(true);
        });
        running.wait().await;
        tracing::info!("stopped");
        Ok(0)
    })
}

/// Logs to stderr: human-readable on a terminal, JSON lines otherwise (or with --log-format json).
/// The level comes from RUST_LOG (default `info`). Lines are batched in memory and written by a
/// flusher thread ([`crate::log`]): under load one `write` carries many request lines. The guard
/// writes out what is left when dropped.
fn init_logging(json: bool) -> crate::log::FlushGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = crate::log::BatchLog::new();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder.event_format(crate::log::JsonLines).try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn purge_command(config: ConfigArg, targets: Vec<String>) -> Result<u8, Failure> {
    let config = Config::load(config.config.as_deref())?;
    let key = config.signing_key();
    let mut upstreams = Vec::new();
    for t in &targets {
        let upstream = if let Some(r) = route::route_part(t, &config.rewrite.public_base) {
            route::decode(r, key.as_ref())
                .map_err(|e| Failure::usage(format!("{t:?}: {e}")))?
                .upstream
        } else if t.starts_with("http://") || t.starts_with("https://") {
            t.clone()
        } else {
            return Err(Failure::usage(format!(
                "{t:?} is neither a route nor an http(s) URL"
            )));
        };
        upstreams.push(upstream);
    }
    let mut problems = false;
    let runtime = runtime()?;
    if config.cache.store == crate::config::StoreKind::Fs && !config.cache.dir.is_dir() {
        eprintln!("no mirror at {}", config.cache.dir.display());
    } else {
        let tiers = runtime.block_on(crate::store::open(&config))?;
        for u in &upstreams {
            // From every tier (the local disk, then S3 when shared); counted in the mirror that
            // holds the whole of it.
            let mut dropped = Ok(0);
            for store in tiers.all() {
                let n = runtime.block_on(crate::store::ops::purge(store, u));
                if std::ptr::addr_eq(store, tiers.primary()) || n.is_err() {
                    dropped = n;
                }
                if dropped.is_err() {
                    break;
                }
            }
            match dropped {
                Ok(0) => eprintln!("{u}: not in the mirror"),
                Ok(n) => eprintln!("{u}: {n} mirror record(s) dropped"),
                Err(e) => {
                    problems = true;
                    eprintln!("imgmirror: {u}: cannot purge from the mirror: {e}");
                }
            }
        }
    }
    // Tell a running service to drop them from memory too.
    let addr = if config.server.admin_listen.is_empty() {
        &config.server.listen
    } else {
        &config.server.admin_listen
    };
    let mut addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| Failure::usage(format!("server address {addr:?} is not ip:port")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(upstreams.iter().map(|u| ("url", u)))
        .finish();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(5))
            .build();
        let sent = match client {
            Ok(c) => {
                let mut req = c.post(format!("http://{addr}/purge?{query}"));
                if config.server.admin_listen.is_empty() && !config.security.purge_token.is_empty()
                {
                    req = req.bearer_auth(&config.security.purge_token);
                }
                req.send().await
            }
            Err(e) => {
                eprintln!("imgmirror: cannot build an HTTP client: {e}");
                return;
            }
        };
        match sent {
            Ok(r) if r.status().is_success() => {
                eprintln!("running service at {addr}: memory purged")
            }
            Ok(r) => {
                problems = true;
                eprintln!(
                    "imgmirror: service at {addr} answered {} to the purge",
                    r.status()
                );
            }
            Err(_) => eprintln!("no service answering at {addr}: only the mirror was purged"),
        }
    });
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}

/// A tokio runtime for a command's async work.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new()
        .map_err(|e| Failure::usage(format!("cannot start the runtime: {e}")))
}
