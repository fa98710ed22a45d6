//! The exclusive lock of a results file: one run (or `merge`) at a time writes a results file and its journal.
//!
//! Two runs of one job at once would append to one journal and rename their results over each other: records
//! are lost while each run reports success. So every command that writes a results file first takes
//! `<results>.lock`, an `flock` held for the whole run (resume, finalize and the journal's removal included).
//! The holder writes its pid into the file, so a refused run can name it. The kernel drops the lock when the
//! holder dies, even by SIGKILL, so a lock is never stale: a free lock with an unfinished journal is a dead run
//! (resume it), a held lock is a live one (wait for it, or stop it).
//!
//! The file is removed when the holder ends. A run that opened it just before, and locks it just after, holds a
//! lock on a file that no longer has a name: it checks that the path still names the file it locked, and starts
//! over if not. Whether a results file may be written at all (a regular file or nothing) is for the job's
//! loading and [`crate::journal`]; this module only guards against a second writer.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// `results.jsonl` → `results.jsonl.lock`.
pub fn lock_path(results: &Path) -> PathBuf {
    let mut name = results.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The lock of one results file, held until dropped.
#[derive(Debug)]
pub struct ResultsLock {
    file: File,
    path: PathBuf,
}

/// Who holds a results file's lock, for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The lock is held by this pid.
    Pid(u32),
    /// The lock is held, but its holder has not written its pid yet (or wrote something else).
    Unknown,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Pid(pid) => write!(f, "pid {pid}"),
            Holder::Unknown => f.write_str("pid unknown"),
        }
    }
}

/// Attempts before giving up on a lock file that keeps being removed under us (a holder that ends each time
/// is a run that ended: a few rounds suffice).
const ATTEMPTS: u32 = 100;

impl ResultsLock {
    /// Takes the lock of `results` without waiting; a held lock is [`Error::ResultsLocked`] naming its holder.
    pub fn acquire(results: &Path) -> Result<ResultsLock, Error> {
        let path = lock_path(results);
        let io = |source| Error::Lock {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        for _ in 0..ATTEMPTS {
            // No following a symlink, and no blocking on a FIFO someone put there: only a regular file is a lock.
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .map_err(io)?;
            let opened = file.metadata().map_err(io)?;
            if !opened.file_type().is_file() {
                return Err(Error::LockNotAFile { path });
            }
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::ResultsLocked {
                        results: results.to_path_buf(),
                        holder: read_holder(&mut file),
                        lock: path,
                    });
                }
                Err(TryLockError::Error(source)) => return Err(io(source)),
            }
            // The holder before us may have removed the file between our open and our lock.
            match std::fs::symlink_metadata(&path) {
                Ok(named) if named.dev() == opened.dev() && named.ino() == opened.ino() => {}
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io(source)),
            }
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            return Ok(ResultsLock { file, path });
        }
        Err(io(std::io::Error::other(
            "the lock file kept being replaced while taking it",
        )))
    }

    /// Where the lock is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ResultsLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other run can lock this file and then see it vanish; a run that opened
        // it before retries on a fresh one (see `acquire`). Closing the file releases the lock.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// The pid a lock's holder wrote. It writes it right after locking, so a contender that came in between waits
/// a moment for it.
fn read_holder(file: &mut File) -> Holder {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok()
            && file.read_to_string(&mut text).is_ok()
            && let Ok(pid) = text.trim().parse::<u32>()
        {
            return Holder::Pid(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Holder::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lock-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_free_again_after_the_first_ends() {
        let dir = temp_dir("second");
        let results = dir.join("r.jsonl");
        let first = ResultsLock::acquire(&results).expect("first lock");
        assert_eq!(
            std::fs::read_to_string(lock_path(&results)).expect("read").trim(),
            std::process::id().to_string()
        );
        match ResultsLock::acquire(&results) {
            Err(Error::ResultsLocked { holder, .. }) => assert_eq!(holder, Holder::Pid(std::process::id())),
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop(first);
        assert!(!lock_path(&results).exists(), "the lock file is removed by its holder");
        let again = ResultsLock::acquire(&results).expect("free again");
        drop(again);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_lock_path_that_is_not_a_regular_file_is_refused() {
        let dir = temp_dir("fifo");
        let results = dir.join("r.jsonl");
        let status = std::process::Command::new("mkfifo")
            .arg(lock_path(&results))
            .status()
            .expect("mkfifo");
        assert!(status.success());
        match ResultsLock::acquire(&results) {
            Err(Error::LockNotAFile { .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
