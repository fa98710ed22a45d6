//! A private scratch folder for commands that run jobs of their own (`compare`, `bench`), removed on drop.

use std::path::PathBuf;

use crate::error::Error;

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
                Err(source) => return Err(Error::Results { path, source }),
            }
        }
    }
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
