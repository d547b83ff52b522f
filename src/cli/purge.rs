//! `imgmirror purge`: drops images from every tier of the mirror (`store::ops`), then asks a
//! running service to drop them from memory.

use super::{ConfigArg, Failure, EXIT_PROBLEMS};
use crate::clock::Clock;
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
        tiers.flush_usage();
        // Every replica drops them from its memory and local disk within seconds.
        if let Some(shared) = tiers.shared() {
            let now_ms = crate::clock::SystemClock.now_millis();
            let told = crate::store::events::publish(
                shared,
                crate::store::events::What::Purged,
                upstreams.clone(),
                now_ms,
            );
            match runtime.block_on(told) {
                Ok(()) => eprintln!("replicas: told through the shared mirror"),
                Err(e) => {
                    problems = true;
                    eprintln!("imgmirror: cannot tell the other replicas: {e}");
                }
            }
        }
    }
    // Tell a running service to drop them from memory too.
    let addr = crate::server::purge_target(&config).map_err(Failure::usage)?;
    match runtime.block_on(crate::server::request_purge(&config, addr, &upstreams)) {
        Ok(()) => eprintln!("running service at {addr}: memory purged (and the CDN, if any)"),
        Err(crate::server::PurgeRefused::NotRunning) => {
            eprintln!("no service answering at {addr}: only the mirror was purged");
            // No service to ask: the CDN in front is asked from here.
            match runtime.block_on(crate::cdn::purge(&config.cdn, &upstreams)) {
                Ok(0) => {}
                Ok(n) => eprintln!("cdn: {n} purge key(s) purged"),
                Err(e) => {
                    problems = true;
                    eprintln!("imgmirror: the CDN did not purge: {e}");
                }
            }
        }
        Err(crate::server::PurgeRefused::NoClient(e)) => {
            eprintln!("imgmirror: cannot build an HTTP client: {e}")
        }
        Err(crate::server::PurgeRefused::Refused(why)) => {
            problems = true;
            eprintln!("imgmirror: service at {addr} {why}");
        }
    }
    Ok(if problems { EXIT_PROBLEMS } else { 0 })
}
