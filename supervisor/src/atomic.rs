//! Files replaced atomically: written beside their final name, fsync'ed, then renamed over it.
//!
//! The results file, the journal when a run starts or resumes, and `merge`'s output are all written this way, so
//! a reader (or a crash) sees the old file or the new one, never half of one. This module owns the temporary
//! files that takes: `.<name>.tmp-<pid>` beside the target. An [`AtomicFile`] removes its temporary file on
//! every path that does not end in the rename (an error, a full disk, a panic), and [`remove_stale_temps`]
//! removes those of runs that died before they could. It never renames over anything but a regular file: a
//! device, a FIFO or a socket at the target stays as it is and the write fails (loading the job refuses such
//! paths first; this is the last line). What goes into the file is the caller's.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written beside `target`, renamed over it by [`AtomicFile::commit`].
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    out: BufWriter<File>,
}

impl AtomicFile {
    /// Starts writing; the target must be a regular file or absent.
    pub fn create(target: &Path) -> std::io::Result<AtomicFile> {
        refuse_non_regular(target)?;
        let temp = temp_beside(target);
        let file = File::create(&temp)?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }

    /// Where the content goes.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        &mut self.out
    }

    /// The temporary file (to read back what was written, after flushing the writer).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes, fsyncs (when `durable`), and renames the file over its target. On error the temporary file is
    /// removed and the target is untouched.
    pub fn commit(mut self, durable: bool) -> std::io::Result<()> {
        self.out.flush()?;
        if durable {
            self.out.get_ref().sync_all()?;
        }
        refuse_non_regular(&self.target)?;
        std::fs::rename(&self.temp, &self.target)?;
        // Renamed: nothing is left to remove.
        self.temp = PathBuf::new();
        if durable {
            sync_parent(&self.target)?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Removes a file of this process when dropped: the staging file of a run with `journal = false` is gone
/// however the run ends (it is never resumable).
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An error unless `path` is a regular file or absent (a symlink counts as what it points to).
pub fn refuse_non_regular(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file: refusing to replace it", path.display()),
        )),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// A temporary path in the same folder as `path` (so that renaming it over `path` is atomic).
pub fn temp_beside(path: &Path) -> PathBuf {
    private_beside(path, "tmp")
}

/// `.<name>.<kind>-<pid>` beside `path`: a file of this process only, which [`remove_stale_temps`] removes once
/// the process is gone (`kind` is `tmp` or `staging`).
pub fn private_beside(path: &Path, kind: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Makes a rename in `path`'s folder durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

/// Removes temporary files a dead run left beside `path` (`.<name>.tmp-<pid>` and `.<name>.staging-<pid>` of
/// a process that is gone). Called before a run writes anything, so that they never fill the disk that
/// recovery needs.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let prefixes = [format!(".{name}.tmp-"), format!(".{name}.staging-")];
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else { continue };
        let pid = prefixes
            .iter()
            .find_map(|prefix| file_name.strip_prefix(prefix.as_str())?.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("atomic-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_dropped_file_leaves_no_temp_and_a_committed_one_replaces_its_target() {
        let dir = temp_dir("commit");
        let target = dir.join("r.jsonl");
        std::fs::write(&target, "old\n").expect("write");
        let mut file = AtomicFile::create(&target).expect("create");
        file.writer().write_all(b"half").expect("write");
        drop(file);
        assert_eq!(names(&dir), ["r.jsonl"]);
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "old\n");
        let mut file = AtomicFile::create(&target).expect("create");
        file.writer().write_all(b"new\n").expect("write");
        file.commit(true).expect("commit");
        assert_eq!(names(&dir), ["r.jsonl"]);
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "new\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_fifo_at_the_target_is_never_replaced() {
        let dir = temp_dir("fifo");
        let target = dir.join("r.jsonl");
        let status = std::process::Command::new("mkfifo")
            .arg(&target)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        assert!(AtomicFile::create(&target).is_err());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&target).expect("stat").file_type().is_fifo());
        assert_eq!(names(&dir), ["r.jsonl"], "no temp left");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn stale_temps_of_a_dead_pid_are_removed_and_a_live_ones_kept() {
        let dir = temp_dir("stale");
        let target = dir.join("r.jsonl");
        // Pids above the kernel's limit (2^22) are never alive.
        std::fs::write(dir.join(".r.jsonl.tmp-4194400"), "x").expect("write");
        std::fs::write(dir.join(".r.jsonl.staging-4194401"), "x").expect("write");
        std::fs::write(dir.join(".r.jsonl.journal.tmp-4194402"), "x").expect("write");
        let live = format!(".r.jsonl.tmp-{}", std::process::id());
        std::fs::write(dir.join(&live), "x").expect("write");
        remove_stale_temps(&target);
        remove_stale_temps(&dir.join("r.jsonl.journal"));
        assert_eq!(names(&dir), [live]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
