//! The binary's one top-level error, and the exit code each variant maps to.

use std::path::PathBuf;

use shared::exit;
use shared::job::JobError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("glob `{pattern}` matched no files")]
    GlobNoMatch { pattern: String },
    #[error("glob `{pattern}`: {message}")]
    GlobInvalid { pattern: String, message: String },
    #[error("cannot read input {path}: {source}")]
    InputUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    UrlInvalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("urls file {path} lists no URLs: expected one http:// or https:// URL per line")]
    UrlsEmpty { path: PathBuf },
    #[error("cannot write results to {path}: {source}")]
    Results {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the journal {path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resume from {path}: {reason}")]
    JournalInvalid { path: PathBuf, reason: String },
    #[error(
        "cannot resume from {path}: {changes} since the journal began (run without --resume and with --force to start over)"
    )]
    JournalMismatch { path: PathBuf, changes: String },
    #[error(
        "an unfinished journal of an earlier run of this job exists at {path}: pass --resume to continue it, or --force to start over"
    )]
    JournalExists { path: PathBuf },
    #[error("--resume needs a results file: set [output] results or pass --results")]
    ResumeWithoutResults,
    #[error("--resume needs the journal, but this job sets [output] journal = false")]
    ResumeWithoutJournal,
    #[error("workers cannot start: {reason}")]
    WorkersCannotStart { reason: String },
    #[error("{key} needs worker processes; it cannot apply to --executor {executor}")]
    ExecutorConflict { key: &'static str, executor: &'static str },
    #[error("item {item} is out of range: the job has {items} items")]
    ItemOutOfRange { item: u64, items: u64 },
    #[error("compare: {reason}")]
    CompareFailed { reason: String },
    #[error("bench: {measurement}: {reason}")]
    Bench { measurement: &'static str, reason: String },
    #[error("cannot draw the chart {path}: {message}")]
    Chart { path: PathBuf, message: String },
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Job(_)
            | Error::GlobNoMatch { .. }
            | Error::GlobInvalid { .. }
            | Error::InputUnreadable { .. }
            | Error::UrlInvalid { .. }
            | Error::UrlsEmpty { .. }
            | Error::ItemOutOfRange { .. }
            | Error::ExecutorConflict { .. }
            | Error::JournalInvalid { .. }
            | Error::JournalMismatch { .. }
            | Error::JournalExists { .. }
            | Error::ResumeWithoutResults
            | Error::ResumeWithoutJournal => exit::USAGE,
            Error::Results { .. }
            | Error::Journal { .. }
            | Error::WorkersCannotStart { .. }
            | Error::Internal { .. }
            | Error::CompareFailed { .. }
            | Error::Bench { .. }
            | Error::Chart { .. } => exit::INTERNAL,
        }
    }
}
