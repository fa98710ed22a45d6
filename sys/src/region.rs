//! Memory mappings: read-only mapped files (how workers see input without copying it through the channel), and
//! memory shared between processes (progress slots; the arena of fetched bodies; bulk hand-offs).
//!
//! Every shared region is a memfd whose size is sealed once set (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`).
//! Without the seals any process of the same user can reopen the memfd through `/proc/<creator>/fd/<n>` and
//! truncate it, and the creator's next access to a page past the new end dies of SIGBUS: a task could kill the
//! supervisor that way. With them, `ftruncate` fails with `EPERM` for everyone, creator included; writing and
//! punching holes (how the arena gives pages back) still work. What goes into the regions, and who may write
//! what when, is for the processes that share them to agree on.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::fd::AsRawFd;
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

/// Opens `path` for reading if it is a regular file, without ever blocking: a FIFO (or a device, a socket) put
/// in place of an input after the job listed it would block an `open` until a writer appears. The open does not
/// wait (`O_NONBLOCK`), and what it opened is checked (`fstat`) before anything reads it.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file (inputs must be regular files)"),
    ))
}

impl MappedFile {
    /// Opens (see [`open_regular`]) and maps `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_regular(path)?;
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

/// Memory shared between processes: an anonymous memfd (nothing on any filesystem; it vanishes with the last
/// process holding it), mapped read-write and `MAP_SHARED` by each.
///
/// The creating process tells the other one its `/proc/<pid>/fd/<n>` path ([`SharedRegion::proc_path`]), which
/// the other opens and maps. The bytes are never handed out as a Rust slice, since the other process may change
/// them at any time: they are written with [`SharedRegion::write`] and read as atomic words
/// ([`SharedRegion::words`]). Who writes what when is for the two processes to agree on, by message.
#[derive(Debug)]
pub struct SharedRegion {
    map: MmapRaw,
    file: File,
}

impl SharedRegion {
    /// Creates a zeroed region of `len` bytes (a multiple of 8, so that it is all words).
    pub fn create(len: usize) -> io::Result<SharedRegion> {
        SharedRegion::create_named(c"supervisor-shared", len)
    }

    /// Creates the arena that fetched bodies are written into (a `urls` input), `len` bytes long. A memfd is
    /// sparse: pages exist (and count as memory) only once written, and [`SharedRegion::release`] gives them back.
    pub fn create_arena(len: usize) -> io::Result<SharedRegion> {
        SharedRegion::create_named(c"supervisor-arena", len)
    }

    /// Frees the memory behind `offset .. offset + len` (`fallocate` with `FALLOC_FL_PUNCH_HOLE`): the range
    /// reads as zeros afterwards, and its pages no longer count towards anyone's memory. Whole pages inside the
    /// range are freed; partial pages at its ends are zeroed.
    pub fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot release {len} bytes at offset {offset} of a {}-byte shared region",
                    self.len()
                ),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        // Allowed on a sealed memfd: only F_SEAL_WRITE forbids punching holes, and the size does not change.
        nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )?;
        Ok(())
    }

    fn create_named(name: &CStr, len: usize) -> io::Result<SharedRegion> {
        if len == 0 || !len.is_multiple_of(size_of::<u64>()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a shared region must be a non-zero multiple of 8 bytes, not {len}"),
            ));
        }
        let file = memfd(name, true)?;
        file.set_len(len as u64)?;
        seal_size(&file)?;
        SharedRegion::map(file, len)
    }

    /// Opens a region created by another process from its `/proc/<pid>/fd/<n>` path, and maps all of it.
    pub fn open(path: &Path) -> io::Result<SharedRegion> {
        let file = File::options().read(true).write(true).open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "shared region is too large to map"))?;
        if len == 0 || !len.is_multiple_of(size_of::<u64>()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared region of {len} bytes is not a non-zero multiple of 8"),
            ));
        }
        SharedRegion::map(file, len)
    }

    /// Opens a region like [`SharedRegion::open`], mapping only its first `len` bytes (it must have that many).
    fn open_prefix(path: &Path, len: usize) -> io::Result<SharedRegion> {
        let file = File::options().read(true).write(true).open(path)?;
        if file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared region is too small"));
        }
        SharedRegion::map(file, len)
    }

    fn map(file: File, len: usize) -> io::Result<SharedRegion> {
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(SharedRegion { map, file })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a region has at least one word.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The path another process can open to map this region.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd()))
    }

    /// The region as 64-bit atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `len` bytes long (a multiple of 8, checked when it was made), page-aligned (so
        // aligned for u64), and lives as long as `self`. `AtomicU64` has the layout of `u64` and is interior
        // mutable, so writes by `write` or by the other process do not break the shared reference; reads through
        // the atomics cannot race in the sense of undefined behaviour. Any bit pattern is a valid u64.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.len() / size_of::<u64>()) }
    }

    /// Copies `bytes` into the region at byte `offset` (a plain `memcpy`, as fast as private memory).
    ///
    /// Another process reading these bytes while the copy runs may see some old and some new bytes: tell it by
    /// message when the write is done.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        if offset.checked_add(bytes.len()).is_none_or(|end| end > self.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot write {} bytes at offset {offset} of a {}-byte shared region",
                    bytes.len(),
                    self.len()
                ),
            ));
        }
        // SAFETY: the destination range `offset .. offset + bytes.len()` lies inside the mapping (checked above),
        // which lives as long as `self`. The source is a Rust slice, which cannot point into the mapping (this
        // type never hands out a byte slice of it), so the ranges do not overlap. The mapping is only ever
        // accessed through raw pointers and interior-mutable atomics, so writing through `&self` invalidates no
        // reference.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(offset), bytes.len()) };
        Ok(())
    }
}

/// A new, empty, close-on-exec memfd named `name` (the name shows in `/proc/<pid>/fd` and `/proc/<pid>/maps`).
/// With `sealable`, its size can be sealed later ([`seal_size`]); without, it can never be sealed.
pub fn memfd(name: &CStr, sealable: bool) -> io::Result<File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let mut flags = MFdFlags::MFD_CLOEXEC;
    if sealable {
        flags |= MFdFlags::MFD_ALLOW_SEALING;
    }
    Ok(File::from(memfd_create(name, flags)?))
}

/// Seals the size of a memfd made with `sealable` (`F_SEAL_SHRINK | F_SEAL_GROW`) and then the seals themselves
/// (`F_SEAL_SEAL`), so that no process holding or reopening it can ever truncate or grow it again.
pub fn seal_size(file: &File) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(())
}

/// A read-only view of a [`SharedRegion`] made by another process (`PROT_READ`, `MAP_SHARED`): how a worker sees
/// the arena of fetched bodies.
///
/// Unlike [`SharedRegion`] it hands out byte slices. That is sound only because the two processes agree, by
/// message, that the writer never changes a range while a reader may hold a slice of it: the supervisor writes a
/// body before it names it in a batch and frees it only after the item's result came back (the same contract as
/// mapped input files, which must not change during the job).
#[derive(Debug)]
pub struct SharedView {
    map: Option<Mmap>,
}

impl SharedView {
    /// Opens a region created by another process from its `/proc/<pid>/fd/<n>` path, read-only, and maps all of it.
    pub fn open(path: &Path) -> io::Result<SharedView> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "shared region is too large to map"))?;
        let map = if len == 0 {
            None
        } else {
            // SAFETY: a read-only shared mapping. Its bytes may be changed by the process that created the region;
            // by the contract above (see the type's documentation) it never changes a range a slice was taken of.
            Some(unsafe { MmapOptions::new().len(len).map(&file)? })
        };
        Ok(SharedView { map })
    }

    /// The bytes `offset .. offset + len`, or `None` when they are not all inside the region.
    pub fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let bytes: &[u8] = self.map.as_deref().unwrap_or(&[]);
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        bytes.get(start..end)
    }
}

/// One page of memory shared between the supervisor and one worker, seen by both as 64-bit atomics: a
/// [`SharedRegion`] of [`SHARED_PAGE_BYTES`].
///
/// The supervisor creates it and tells the worker its `/proc/<pid>/fd/<n>` path, which the worker opens and maps.
#[derive(Debug)]
pub struct SharedPage {
    region: SharedRegion,
}

/// Size of a [`SharedPage`] in bytes.
pub const SHARED_PAGE_BYTES: usize = 4096;

impl SharedPage {
    /// Creates a zeroed page (supervisor side).
    pub fn create() -> io::Result<SharedPage> {
        let region = SharedRegion::create_named(c"supervisor-progress", SHARED_PAGE_BYTES)?;
        Ok(SharedPage { region })
    }

    /// Opens a page created by another process from its `/proc/<pid>/fd/<n>` path (worker side).
    pub fn open(path: &Path) -> io::Result<SharedPage> {
        let region = SharedRegion::open_prefix(path, SHARED_PAGE_BYTES)?;
        Ok(SharedPage { region })
    }

    /// The path another process can open to map this page.
    pub fn proc_path(&self) -> PathBuf {
        self.region.proc_path()
    }

    /// The page as 64-bit atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        self.region.words()
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

    #[test]
    fn an_arena_is_read_through_a_view_and_released_pages_read_as_zeros() {
        let len = 4 * 4096;
        let arena = SharedRegion::create_arena(len).expect("memfd");
        let view = SharedView::open(&arena.proc_path()).expect("view");
        arena.write(4096, b"body bytes").expect("write");
        assert_eq!(view.slice(4096, 10), Some(&b"body bytes"[..]));
        assert_eq!(view.slice(len as u64 - 1, 2), None, "past the end");
        assert_eq!(view.slice(u64::MAX, 2), None, "overflow");
        arena.release(4096, 4096).expect("punch hole");
        assert_eq!(view.slice(4096, 10), Some(&[0u8; 10][..]));
        assert!(arena.release(len - 4096, 8192).is_err());
    }

    /// Any process of the same user can reopen a region through its `/proc` path; truncating it would make the
    /// creator's next access die of SIGBUS. Every kind of region refuses a change of size, through any handle.
    #[test]
    fn no_shared_region_can_be_truncated_or_grown() {
        let page = SharedPage::create().expect("memfd");
        let arena = SharedRegion::create_arena(4 * 4096).expect("memfd");
        let region = SharedRegion::create(4096).expect("memfd");
        for path in [page.proc_path(), arena.proc_path(), region.proc_path()] {
            let reopened = File::options().write(true).open(&path).expect("reopen through /proc");
            let len = reopened.metadata().expect("metadata").len();
            for new_len in [0, len - 8, len + 4096] {
                let error = reopened.set_len(new_len).expect_err("a sealed memfd changed size");
                assert_eq!(
                    error.raw_os_error(),
                    Some(libc::EPERM),
                    "{path:?} to {new_len}: {error}"
                );
            }
            assert_eq!(reopened.metadata().expect("metadata").len(), len);
        }
        // The seals cannot be removed or changed either.
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        assert!(fcntl(&region.file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)).is_err());
        page.words()[0].store(1, std::sync::atomic::Ordering::Relaxed);
        arena.release(4096, 4096).expect("punching holes still works");
    }

    #[test]
    fn a_shared_region_of_any_size_is_shared_and_bounds_checked() {
        use std::sync::atomic::Ordering;
        let len = 3 * 4096 + 8;
        let region = SharedRegion::create(len).expect("memfd");
        let other = SharedRegion::open(&region.proc_path()).expect("open by path");
        assert_eq!(other.len(), len);
        assert_eq!(other.words().len(), len / 8);
        region.write(len - 8, &7u64.to_le_bytes()).expect("last word");
        region.write(4096, &[1, 2, 3]).expect("inside");
        assert_eq!(other.words()[len / 8 - 1].load(Ordering::Acquire), 7);
        assert_eq!(other.words()[512].load(Ordering::Acquire), 0x03_02_01);
        assert!(region.write(len - 7, &[0; 8]).is_err(), "one byte past the end");
        assert!(region.write(usize::MAX, &[0]).is_err(), "offset overflow");
        assert!(SharedRegion::create(0).is_err());
        assert!(SharedRegion::create(12).is_err());
        // A page opened from a larger region maps only its first page.
        assert_eq!(
            SharedPage::open(&region.proc_path()).expect("page").words().len(),
            SHARED_PAGE_BYTES / 8
        );
    }
}
