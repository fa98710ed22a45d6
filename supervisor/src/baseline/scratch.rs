//! What the commands that run jobs of their own (`compare`, `bench`) need around those runs: a private scratch
//! folder, removed on drop, and the path of this binary to start them with.

use std::path::PathBuf;

use super::Error;

#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// Creates a fresh folder `$TMPDIR/supervisor-<purpose>-<pid>-<n>`, private to this user (mode 0700). It
    /// must not exist yet: a folder someone else made in a shared `/tmp` under a name they guessed is never used.
    pub fn new(purpose: &str) -> Result<Scratch, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut attempt = 0u32;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos());
            let path = base.join(format!("supervisor-{purpose}-{}-{nanos:08x}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Scratch { path }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(source) => {
                    return Err(Error::File {
                        action: "create the scratch folder",
                        path,
                        source,
                    });
                }
            }
        }
    }
}

/// This binary, which `compare` and `bench` start as `supervisor run …` (or as `__bench-echo`).
pub fn this_exe() -> Result<PathBuf, Error> {
    std::env::current_exe().map_err(|source| Error::Exe { source })
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn scratch_folders_are_fresh_private_and_removed() {
        let first = super::Scratch::new("test").expect("scratch");
        let second = super::Scratch::new("test").expect("scratch");
        assert_ne!(first.path, second.path);
        let mode = std::fs::metadata(&first.path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = first.path.clone();
        drop(first);
        assert!(!path.exists());
    }
}
