//! The command line: the clap definitions of every command and flag, and the dispatch to one
//! module per command. Exit codes are decided in one place (`exit`): 0 success, 1 the job ran
//! but found problems, 2 usage or configuration error, 75 a temporary failure at start. The
//! commands' modules load the config, call the library's work ([`crate::rewrite`],
//! [`crate::mirror`], [`crate::store::ops`], [`crate::server`]) and print; they hold no work of
//! their own.

mod exit;
mod export;
mod gc;
mod purge;
mod rewrite;
mod serve;
mod url;
mod warm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::route::{Fit, Format};
pub use exit::{Failure, EXIT_PROBLEMS, EXIT_TEMPORARY, EXIT_USAGE};

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ConfigArg {
    /// Config file (TOML). Default: $IMGMIRROR_CONFIG, else config/imgmirror.toml if present.
    #[arg(long, value_name = "F")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    #[command(
        after_help = "Examples:\n  imgmirror warm --report dead-links.json source/_posts\n  \
imgmirror warm --variants source/_posts            # also encode every variant the posts name"
    )]
    Warm {
        #[command(flatten)]
        config: ConfigArg,
        /// Write a JSON report (including dead links) to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Also encode every variant the posts' routes name (their `srcset`s, presets and
        /// widths), and each format a client may negotiate for a route that names none.
        #[arg(long)]
        variants: bool,
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
    /// Delete blobs no record points at and recount the mirror's usage (the only command that
    /// reads the whole mirror; the service runs it every cache.gc_interval_secs).
    #[command(
        after_help = "Examples:\n  imgmirror gc --dry-run   # say what would go\n  imgmirror gc"
    )]
    Gc {
        #[command(flatten)]
        config: ConfigArg,
        /// Change nothing; say what would be deleted and counted.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct RewriteArgs {
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
pub(crate) struct UrlArgs {
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
pub(crate) fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Url(args) => url::run(args),
        Command::Serve {
            config,
            listen,
            log_format,
        } => serve::run(config, listen, log_format),
        Command::Rewrite(args) => rewrite::run(args),
        Command::Warm {
            config,
            report,
            variants,
            paths,
        } => warm::run(config, report, variants, paths),
        Command::Export {
            config,
            variants,
            dir,
        } => export::run(config, variants, dir),
        Command::Purge { config, targets } => purge::run(config, targets),
        Command::Gc { config, dry_run } => gc::run(config, dry_run),
    }
}

/// The config of a command that reads an existing mirror (`export`, `gc`): a filesystem mirror
/// whose folder is missing is a usage error, not a new empty mirror.
fn mirror_config(config: &ConfigArg) -> Result<crate::config::Config, Failure> {
    let config = crate::config::Config::load(config.config.as_deref())?;
    if config.cache.store == crate::config::StoreKind::Fs && !config.cache.dir.is_dir() {
        return Err(Failure::usage(format!(
            "cache.dir {}: no mirror there",
            config.cache.dir.display()
        )));
    }
    Ok(config)
}

/// A tokio runtime for a command's async work.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new()
        .map_err(|e| Failure::usage(format!("cannot start the runtime: {e}")))
}

/// Writes a command's JSON report to `path` (atomically, 0644).
fn write_report(path: &Path, report: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Failure::usage(format!("cannot serialise the report: {e}")))?;
    crate::fsutil::write_atomic(path, text.as_bytes(), crate::fsutil::PUBLIC).map_err(|e| Failure {
        code: EXIT_PROBLEMS,
        message: format!("cannot write report {}: {e}", path.display()),
    })
}
