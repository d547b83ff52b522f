//! Exit codes, decided in one place: every failure a command can end with is a [`Failure`]
//! carrying its code, and the errors of the library (start, config) get theirs here.

/// Exit code: the job ran but found problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: a temporary failure at start (address in use, store unreachable, `cache.dir` not
/// mounted yet): try again later (`EX_TEMPFAIL`; the systemd unit restarts on it).
pub const EXIT_TEMPORARY: u8 = 75;

/// Why a command stopped, and with which exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What is printed after `imgmirror: `.
    pub message: String,
}

impl Failure {
    /// A usage or configuration error (exit 2).
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
