//! Explaining SIGBUS: the signal a worker gets when it reads a page of a mapped input file past the file's end,
//! i.e. when the file shrank while the job ran (truncated, or rewritten in place by another program).
//!
//! Workers map the input read-only; the supervisor listed it before any worker started. When a worker dies by
//! SIGBUS on a file item, the supervisor compares the file as it is now with what it listed and says so in the
//! item's failure ("input file X shrank from A to B bytes while mapped"), instead of a bare "killed by SIGBUS".
//! The job carries on: replacement workers map the file as it is now, and items that lie past its new end fail
//! with an `error` that says the same (see `child::worker`), while items before it run normally.

use std::path::Path;

use crate::plan::Items;

/// Why a worker that died by SIGBUS on item `item` did, when the item reads a file; `None` for range and URL items
/// (a fetched body lives in the arena, which never shrinks).
pub fn explain(items: &Items, item: u64) -> Option<String> {
    match items {
        Items::Range { .. } | Items::Urls { .. } => None,
        Items::Chunks { path, chunks } => {
            let listed = chunks.last().map_or(0, |last| last.offset + last.len);
            let chunk = chunks.get(usize::try_from(item).ok()?)?;
            let range = format!("bytes {}..{} of it", chunk.offset, chunk.offset + chunk.len);
            Some(describe(path, Some(listed), &range))
        }
        Items::Files(files) => {
            let path = files.get(usize::try_from(item).ok()?)?;
            Some(describe(path, None, "it"))
        }
    }
}

fn describe(path: &Path, listed: Option<u64>, reading: &str) -> String {
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

/// A warning when the `file` input's size now differs from the size it was listed with: items whose last page
/// only partly lies past a new end read zeros there instead of faulting, so their results may be wrong without
/// an error. `None` when the size is unchanged (or for other inputs).
pub fn changed_during_job(items: &Items) -> Option<String> {
    let Items::Chunks { path, chunks } = items else {
        return None;
    };
    let listed = chunks.last().map_or(0, |last| last.offset + last.len);
    let now = std::fs::metadata(path).map(|meta| meta.len()).ok()?;
    (now != listed).then(|| {
        format!(
            "warning: input file {} changed size during the job ({listed} → {now} bytes): results of items that \
             read it may be wrong",
            path.display()
        )
    })
}
