//! Why the service (or a command's mirror) could not start, typed by what the operator should do:
//! fix the configuration, or wait. `cli` turns each into its exit code in one place (SPEC §1:
//! 2 for configuration errors, 75 for temporary ones, on which a service manager restarts).

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work as written (a bad key, a missing bucket, an open proxy on a
    /// public address): exit 2, and restarting will not help.
    #[error("{0}")]
    Config(String),
    /// Something that may work a moment later: the address still held by the old instance, the
    /// S3 endpoint not answering yet, `cache.dir`'s volume not mounted yet: exit 75.
    #[error("{0}")]
    Temporary(String),
}

impl From<String> for StartError {
    /// Errors without a kind are configuration errors.
    fn from(message: String) -> StartError {
        StartError::Config(message)
    }
}

/// True for I/O errors that say "not now" rather than "never": an address in use or not yet
/// assigned, a peer refusing or not answering, a network down.
pub fn is_temporary(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        AddrInUse
            | AddrNotAvailable
            | ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | TimedOut
            | NetworkUnreachable
            | HostUnreachable
            | NetworkDown
            | Interrupted
    )
}

/// True when an error, or any error in its source chain, is a temporary I/O error (an S3 client
/// error wraps the connection's `io::Error` several layers down).
pub fn chain_is_temporary(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some_and(is_temporary) {
            return true;
        }
        next = e.source();
    }
    false
}
