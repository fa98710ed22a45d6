//! The binary's one top-level error, and the exit code each variant maps to.

use std::path::PathBuf;

use shared::exit;
use shared::job::JobError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("glob `{pattern}` matched no files{}", skipped_note(*.skipped))]
    GlobNoMatch {
        pattern: String,
        /// Matches that are not regular files (folders, devices…), which are not items.
        skipped: usize,
    },
    #[error("glob `{pattern}`: {message}")]
    GlobInvalid { pattern: String, message: String },
    #[error("cannot read input {path}: {source}")]
    InputUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--results {path} is a folder: expected a file path")]
    ResultsIsFolder { path: PathBuf },
    #[error(
        "cannot write results to {path}: it is {what}: expected a regular file or a path that does not exist yet \
         (the run would replace it with its results)"
    )]
    OutputNotWritable { path: PathBuf, what: String },
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
        "an unfinished journal of an earlier run of this job exists at {path} and no run is writing it now: pass --resume to continue it, or --force to start over"
    )]
    JournalExists { path: PathBuf },
    #[error(
        "another run ({holder}) is writing {results}: wait for it or stop it, then run again (it holds the lock {lock})"
    )]
    ResultsLocked {
        results: PathBuf,
        holder: crate::lock::Holder,
        lock: PathBuf,
    },
    #[error("cannot lock the results with {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lock {path} is not a regular file: remove it or choose another results path")]
    LockNotAFile { path: PathBuf },
    #[error("--resume needs a results file: set [output] results or pass --results")]
    ResumeWithoutResults,
    #[error("--resume needs the journal, but this job sets [output] journal = false")]
    ResumeWithoutJournal,
    #[error(
        "{what} needs an input whose length is known before the run, but this job's `{input}` input is a \
         stream: run it whole, in one run (see \"What resume means for a stream\" in docs/design.md)"
    )]
    StreamNotShardable { what: &'static str, input: &'static str },
    #[error(
        "--resume cannot resume this job: its `{input}` input is a stream, which cannot be read again from \
         where the stopped run was; run it again from the start (see \"What resume means for a stream\" in \
         docs/design.md)"
    )]
    StreamNotResumable { input: &'static str },
    #[error("workers cannot start: {reason}")]
    WorkersCannotStart { reason: String },
    #[error("{key} needs worker processes; it cannot apply to --executor {executor}")]
    ExecutorConflict { key: &'static str, executor: &'static str },
    #[error("`worker_bin` cannot be used with {key}: {}", shared::job::WORKER_BIN_NEEDS)]
    WorkerBinConflict { key: &'static str },
    #[error(
        "replay runs an item inside the supervisor, which cannot run the worker_bin {}: run the job with --workers 1 \
         and a debugger attached to the worker instead",
        path.display()
    )]
    ReplayWorkerBin { path: std::path::PathBuf },
    #[error("item {item} is out of range: the job has {items} items, numbered from 0")]
    ItemOutOfRange { item: u64, items: u64 },
    #[error("cannot choose a shard: {reason}")]
    Shard { reason: String },
    #[error("cannot merge the shards of {results}:\n{problems}")]
    MergeIncomplete { results: PathBuf, problems: String },
    #[error("cannot export: {reason}")]
    Export { reason: String },
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
            | Error::WorkerBinConflict { .. }
            | Error::ReplayWorkerBin { .. }
            | Error::JournalInvalid { .. }
            | Error::JournalMismatch { .. }
            | Error::JournalExists { .. }
            | Error::ResultsLocked { .. }
            | Error::LockNotAFile { .. }
            | Error::ResultsIsFolder { .. }
            | Error::OutputNotWritable { .. }
            | Error::ResumeWithoutResults
            | Error::ResumeWithoutJournal
            | Error::StreamNotShardable { .. }
            | Error::StreamNotResumable { .. }
            | Error::Shard { .. }
            | Error::MergeIncomplete { .. }
            | Error::Export { .. } => exit::USAGE,
            Error::Results { .. }
            | Error::Journal { .. }
            | Error::Lock { .. }
            | Error::WorkersCannotStart { .. }
            | Error::Internal { .. } => exit::INTERNAL,
        }
    }
}

/// " (it matched 2 paths that are not regular files, e.g. folders)" when some were skipped.
fn skipped_note(skipped: usize) -> String {
    match skipped {
        0 => String::new(),
        1 => " (it matched 1 path that is not a regular file, e.g. a folder)".to_string(),
        n => format!(" (it matched {n} paths that are not regular files, e.g. folders)"),
    }
}
