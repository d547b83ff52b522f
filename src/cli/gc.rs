//! `imgmirror gc`: one whole pass over the mirror (`store::gc`), the local disk then S3 when
//! shared; prints what it found, one line per store, and the report as JSON on stdout.

use super::{ConfigArg, Failure, EXIT_PROBLEMS};
use crate::clock::Clock;

/// Runs `imgmirror gc`.
pub(super) fn run(config: ConfigArg, dry_run: bool) -> Result<u8, Failure> {
    let config = super::mirror_config(&config)?;
    let runtime = super::runtime()?;
    let now = crate::clock::SystemClock.now_secs();
    let reports = runtime.block_on(async {
        let tiers = crate::store::open(&config).await?;
        tiers.collect(now, dry_run).await.map_err(|e| Failure {
            code: EXIT_PROBLEMS,
            message: format!("gc: {e}"),
        })
    })?;
    for r in &reports {
        eprintln!(
            "gc {}{}: {} records; {} unreferenced blobs ({} bytes) {}; {} markers added, {} removed; \
             {} variant records moved from layout 1; {} old events; {} blobs, {} bytes kept",
            r.store,
            if dry_run { " (dry run)" } else { "" },
            r.records,
            r.blobs_deleted,
            r.bytes_deleted,
            if dry_run { "to delete" } else { "deleted" },
            r.markers_added,
            r.markers_removed,
            r.moved,
            r.events_deleted,
            r.usage.blobs,
            r.usage.bytes,
        );
    }
    let json = serde_json::to_string_pretty(&reports).map_err(|e| Failure {
        code: EXIT_PROBLEMS,
        message: format!("gc: {e}"),
    })?;
    println!("{json}");
    Ok(0)
}
