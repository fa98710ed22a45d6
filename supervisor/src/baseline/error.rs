//! The baselines' error: what can stop `bench` or `compare` besides what stops a run (loading the job, starting
//! workers), which they pass on as the core's [`crate::error::Error`] with its own exit code.

use std::path::PathBuf;

use shared::exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading the job or starting the pool failed as it would for `supervisor run`.
    #[error(transparent)]
    Run(#[from] crate::error::Error),
    #[error("compare: {reason}")]
    Compare { reason: String },
    #[error("bench: {measurement}: {reason}")]
    Bench { measurement: &'static str, reason: String },
    #[error("cannot draw the chart {path}: {message}")]
    Chart { path: PathBuf, message: String },
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this executable's path: {source}")]
    Exe {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code for this error: a run's own code, else 3 (the measurement could not be made).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Run(error) => error.exit_code(),
            Error::Compare { .. }
            | Error::Bench { .. }
            | Error::Chart { .. }
            | Error::File { .. }
            | Error::Exe { .. }
            | Error::Start { .. } => exit::INTERNAL,
        }
    }
}
