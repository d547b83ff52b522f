//! Waiting for a place (a semaphore permit) only while someone still wants the work: a fetch slot
//! or a place on the transform pool whose requests have all gone is given up instead of taken for
//! nobody. Shared by the upstream's fetch slots and the mirror's transform queue.

use std::future::Future;
use std::time::Duration;

use tokio::sync::AcquireError;

/// How often a waiter checks that someone still wants its work.
pub const WANTED_CHECK: Duration = Duration::from_millis(100);

/// Why a wait ended without a permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotAcquired {
    /// The semaphore was closed: the service is stopping.
    Closed,
    /// Nobody wants the work any more.
    Unwanted,
}

/// Awaits `acquire` while `wanted()` holds (checked every [`WANTED_CHECK`]).
pub async fn while_wanted<P>(
    acquire: impl Future<Output = Result<P, AcquireError>>,
    wanted: impl Fn() -> bool,
) -> Result<P, NotAcquired> {
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            permit = &mut acquire => return permit.map_err(|_| NotAcquired::Closed),
            _ = tokio::time::sleep(WANTED_CHECK) => {
                if !wanted() {
                    return Err(NotAcquired::Unwanted);
                }
            }
        }
    }
}
