//! A private scratch folder for commands that run jobs of their own (`compare`, `bench`), removed on drop.

use std::path::PathBuf;

use crate::error::Error;

#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// Creates `$TMPDIR/supervisor-<purpose>-<pid>`.
    pub fn new(purpose: &str) -> Result<Scratch, Error> {
        let path = std::env::temp_dir().join(format!("supervisor-{purpose}-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| Error::Results {
            path: path.clone(),
            source,
        })?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
