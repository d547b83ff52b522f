//! `imgmirror serve`: the logging setup, the first event loop's runtime, and the signals that
//! stop the service gracefully; the service itself is [`crate::server`].

use super::{ConfigArg, Failure};
use crate::config::Config;

/// Runs `imgmirror serve` until SIGINT or SIGTERM.
pub(super) fn run(
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
