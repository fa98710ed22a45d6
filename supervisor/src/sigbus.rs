//! Explaining SIGBUS: the signal a worker gets when it reads a page of a mapped input file past the file's end,
//! i.e. when the file shrank while the job ran (truncated, or rewritten in place by another program).
//!
//! Workers map the input read-only; the supervisor listed it before any worker started. When a worker dies by
//! SIGBUS on a file item, the supervisor compares the file as it is now with what it listed and says so in the
//! item's failure ("input file X shrank from A to B bytes while mapped"), instead of a bare "killed by SIGBUS".
//! The job carries on: replacement workers map the file as it is now, and items that lie past its new end fail
//! with an `error` that says the same (see `child::worker`), while items before it run normally.

use std::path::Path;

/// Each kind of input explains a SIGBUS of its items ([`crate::input::Source::explain_sigbus`]) with this: the
/// explanation for a worker killed by SIGBUS while `reading` (e.g. "bytes 0..10 of it") the file at `path`,
/// which was `listed` bytes long when the job listed it (`None`: not known, for whole files).
pub fn explain_file(path: &Path, listed: Option<u64>, reading: &str) -> String {
    let now = std::fs::metadata(path).map(|meta| meta.len());
    let path = path.display();
    match (listed, now) {
        (Some(listed), Ok(now)) if now < listed => format!(
            "input file {path} shrank from {listed} to {now} bytes while mapped: the worker was killed by SIGBUS \
             reading {reading} (the input must not change during the job)"
        ),
        (_, Ok(now)) => format!(
            "worker killed by SIGBUS reading input file {path} (now {now} bytes): a mapped file that shrinks \
             while it is read faults; was it truncated or rewritten during the job?"
        ),
        (_, Err(error)) => format!(
            "worker killed by SIGBUS reading input file {path}, which is now gone ({error}): the input must not \
             change during the job"
        ),
    }
}

/// The warning a source gives when the one mapped input file's size now differs from the size it was listed with
/// (see [`crate::input::Source::changed_during_job`]), for the file at `path`, listed `listed` bytes long: items
/// whose last page only partly lies past a new end read zeros there instead of faulting, so their results may be
/// wrong without an error. `None` when the size is unchanged.
pub fn size_changed(path: &Path, listed: u64) -> Option<String> {
    let now = std::fs::metadata(path).map(|meta| meta.len()).ok()?;
    (now != listed).then(|| {
        format!(
            "warning: input file {} changed size during the job ({listed} → {now} bytes): results of items that \
             read it may be wrong",
            path.display()
        )
    })
}
