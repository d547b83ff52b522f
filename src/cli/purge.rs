//! `imgmirror purge`: drops images from every tier of the mirror (`store::ops`), then asks a
//! running service to drop them from memory.

use super::{ConfigArg, Failure, EXIT_PROBLEMS};
use crate::config::Config;
use crate::route;

/// Runs `imgmirror purge`.
pub(super) fn run(config: ConfigArg, targets: Vec<String>) -> Result<u8, Failure> {
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
    let runtime = super::runtime()?;
    if config.cache.store == crate::config::StoreKind::Fs && !config.cache.dir.is_dir() {
        eprintln!("no mirror at {}", config.cache.dir.display());
    } else {
        let tiers = runtime.block_on(crate::store::open(&config))?;
        for u in &upstreams {
            match runtime.block_on(crate::store::ops::purge_everywhere(&tiers, u)) {
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
