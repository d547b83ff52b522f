//! `imgmirror export`: writes the mirror as static files under their routes (`store::ops`).

use std::path::PathBuf;

use super::{ConfigArg, Failure, EXIT_PROBLEMS};

/// Runs `imgmirror export`.
pub(super) fn run(config: ConfigArg, variants: bool, dir: PathBuf) -> Result<u8, Failure> {
    let config = super::mirror_config(&config)?;
    let runtime = super::runtime()?;
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
