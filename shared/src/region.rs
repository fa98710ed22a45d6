//! Read-only memory-mapped files: how workers see input without copying it through the channel.
//!
//! This module holds the crate's only `unsafe`: creating the mapping.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

/// A whole file mapped read-only (`PROT_READ`, `MAP_PRIVATE`); unmapped on drop.
///
/// An empty file has no mapping (mmap of length 0 fails) and derefs to an empty slice.
#[derive(Debug)]
pub struct MappedFile {
    map: Option<Mmap>,
    path: PathBuf,
}

impl MappedFile {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only and private, so this process cannot change the bytes behind a
            // shared `&[u8]`. Another process truncating the file while it is mapped makes later reads fault with
            // SIGBUS (a crash of this worker, which the supervisor attributes to the item); another process
            // writing to it changes what we read. Both are documented limits of mapped input: the input must
            // not be modified during the job.
            let map = unsafe { MmapOptions::new().len(len as usize).map(&file)? };
            Some(map)
        };
        Ok(MappedFile {
            map,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_contents_and_empty_files() {
        let dir = std::env::temp_dir().join(format!("shared-region-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let full = dir.join("full");
        let empty = dir.join("empty");
        std::fs::write(&full, b"hello\nworld\n").expect("write");
        std::fs::write(&empty, b"").expect("write");
        assert_eq!(&*MappedFile::open(&full).expect("maps"), b"hello\nworld\n");
        assert!(MappedFile::open(&empty).expect("maps").is_empty());
        assert!(MappedFile::open(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
