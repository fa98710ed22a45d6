//! Read-only memory-mapped files: how workers see input without copying it through the channel.
//!
//! This module holds the crate's only `unsafe`: creating mappings, and viewing a shared page as atomics.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use memmap2::{Mmap, MmapOptions, MmapRaw};

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

/// One page of memory shared between the supervisor and one worker, seen by both as 64-bit atomics.
///
/// The supervisor creates it as an anonymous memfd (nothing on any filesystem; it vanishes with the last
/// process holding it) and tells the worker its `/proc/<pid>/fd/<n>` path, which the worker opens and maps.
#[derive(Debug)]
pub struct SharedPage {
    map: MmapRaw,
    file: File,
}

/// Size of a [`SharedPage`] in bytes.
pub const SHARED_PAGE_BYTES: usize = 4096;

impl SharedPage {
    /// Creates a zeroed page (supervisor side).
    pub fn create() -> io::Result<SharedPage> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"supervisor-progress".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(SHARED_PAGE_BYTES as u64)?;
        SharedPage::map(file)
    }

    /// Opens a page created by another process from its `/proc/<pid>/fd/<n>` path (worker side).
    pub fn open(path: &Path) -> io::Result<SharedPage> {
        let file = File::options().read(true).write(true).open(path)?;
        if file.metadata()?.len() < SHARED_PAGE_BYTES as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared page is too small"));
        }
        SharedPage::map(file)
    }

    fn map(file: File) -> io::Result<SharedPage> {
        let map = MmapOptions::new().len(SHARED_PAGE_BYTES).map_raw(&file)?;
        Ok(SharedPage { map, file })
    }

    /// The path another process can open to map this page.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd()))
    }

    /// The page as 64-bit atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is SHARED_PAGE_BYTES long, page-aligned (so aligned for u64), and lives as long as
        // `self`. `AtomicU64` has the layout of `u64`, and every access to the page, in this process and the
        // other, goes through these atomics, so there are no data races. Any bit pattern is a valid u64.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().cast::<AtomicU64>(),
                SHARED_PAGE_BYTES / size_of::<u64>(),
            )
        }
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

    #[test]
    fn a_shared_page_is_shared_through_its_proc_path() {
        use std::sync::atomic::Ordering;
        let page = SharedPage::create().expect("memfd");
        let other = SharedPage::open(&page.proc_path()).expect("open by path");
        page.words()[3].store(0xdead_beef, Ordering::Release);
        assert_eq!(other.words()[3].load(Ordering::Acquire), 0xdead_beef);
        assert_eq!(other.words().len(), SHARED_PAGE_BYTES / 8);
    }
}
