//! The `file` input: one file split into line-aligned byte ranges of about `chunk_bytes` (`split = "lines"`), or
//! the whole file as one item (`split = "none"`).
//!
//! The file is read at each chunk boundary only, not mapped: the supervisor's memory stays independent of the
//! input's size (mapping it would fault in ~64 KiB around every boundary). A chunk's start depends on where the
//! one before it ended, so the listing walks the boundaries once and keeps one offset per 1024 chunks
//! (`input::blocks`), never a descriptor per chunk (with `chunk_bytes = 1` a chunk is a line). A batch carries the
//! byte ranges; every worker maps the file read-only once and reads its ranges.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shared::item::{BatchItems, Chunk, InputPlan};
use shared::job::Split;

use super::blocks::Blocks;
use super::{BodyOf, Source};
use crate::error::Error;
use crate::results::InputDesc;

#[derive(Debug)]
pub struct Chunks {
    path: PathBuf,
    file: std::fs::File,
    /// The file's size when it was listed: the end of the last chunk.
    size: u64,
    /// Target chunk size; `u64::MAX` for `split = "none"` (one chunk, the whole file).
    step: u64,
    blocks: Blocks,
}

impl Chunks {
    /// Splits the file at `path` as `split` says.
    pub fn open(path: &Path, split: Split, chunk_bytes: u64) -> Result<Chunks, Error> {
        let unreadable = |source| Error::InputUnreadable {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        let step = match split {
            Split::Lines => chunk_bytes,
            Split::None => u64::MAX,
        };
        let mut blocks = Blocks::default();
        let mut window = vec![0u8; WINDOW];
        let mut offset = 0;
        while offset < size {
            blocks.push(offset);
            offset = chunk_end(offset, size, step, &mut window, |at, buffer| file.read_at(buffer, at))
                .map_err(unreadable)?;
        }
        Ok(Chunks {
            path: path.to_path_buf(),
            file,
            size,
            step,
            blocks,
        })
    }

    /// The `want` chunks from byte `from` on (none if the file cannot be read now).
    fn decode(&self, from: u64, want: usize) -> Vec<Chunk> {
        let mut window = vec![0u8; WINDOW];
        let mut chunks = Vec::with_capacity(want);
        let mut offset = from;
        while chunks.len() < want && offset < self.size {
            match chunk_end(offset, self.size, self.step, &mut window, |at, buffer| {
                self.file.read_at(buffer, at)
            }) {
                Ok(end) => chunks.push(Chunk {
                    offset,
                    len: end - offset,
                }),
                Err(_) => return Vec::new(),
            }
            offset = chunks.last().map_or(offset, |last| last.offset + last.len);
        }
        chunks
    }

    fn chunk(&self, index: u64) -> Chunk {
        self.blocks.get(index, |from, want| self.decode(from, want))
    }
}

impl Source for Chunks {
    fn key(&self) -> &'static str {
        "file"
    }

    fn known_len(&self) -> Option<u64> {
        Some(self.blocks.count())
    }

    fn items(&self, first: u64, len: u64, _body: BodyOf<'_>) -> BatchItems {
        self.blocks.batch(first, len, |from, want| self.decode(from, want))
    }

    fn describe(&self, index: u64) -> InputDesc {
        super::byte_range(self.chunk(index))
    }

    fn plan(&self, _arena: Option<&Path>) -> InputPlan {
        InputPlan::File {
            path: self.path.clone(),
        }
    }

    fn batch_cap(&self) -> u64 {
        super::BYTE_RANGE_BATCH_CAP
    }

    fn fingerprint(&self) -> Result<String, Error> {
        let (size, modified) = super::stat(&self.path)?;
        Ok(format!(
            "file {} of {size} bytes modified at {modified} ns",
            self.path.display()
        ))
    }

    fn explain_sigbus(&self, index: u64) -> Option<String> {
        let chunk = self.chunk(index);
        let reading = format!("bytes {}..{} of it", chunk.offset, chunk.offset + chunk.len);
        Some(crate::sigbus::explain_file(&self.path, Some(self.size), &reading))
    }

    fn changed_during_job(&self) -> Option<String> {
        crate::sigbus::size_changed(&self.path, self.size)
    }
}

/// Bytes read at once when looking for the newline after a boundary.
const WINDOW: usize = 64 << 10;

/// Where the chunk that starts at `offset` ends: just after the first newline at or after byte
/// `offset + step - 1`, or at `size`. Reads through `read_at` with `window`, only around that byte.
fn chunk_end(
    offset: u64,
    size: u64,
    step: u64,
    window: &mut [u8],
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<u64> {
    let target = offset.saturating_add(step.max(1));
    let mut at = target - 1;
    while target < size && at < size {
        let want = window.len().min((size - at) as usize);
        let read = read_at(at, &mut window[..want])?;
        if read == 0 {
            break;
        }
        if let Some(found) = memchr::memchr(b'\n', &window[..read]) {
            return Ok(at + found as u64 + 1);
        }
        at += read as u64;
    }
    Ok(size)
}

/// Splits `size` bytes, read through `read_at`, into chunks of about `chunk_bytes`, each ending just after a
/// newline (or at the end). Every chunk at once: for tests and small inputs; [`Chunks`] keeps only marks.
pub fn line_chunks(
    size: u64,
    chunk_bytes: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<Vec<Chunk>> {
    let mut window = vec![0u8; WINDOW];
    let mut chunks = Vec::new();
    let mut offset = 0;
    while offset < size {
        let end = chunk_end(offset, size, chunk_bytes, &mut window, &mut read_at)?;
        chunks.push(Chunk {
            offset,
            len: end - offset,
        });
        offset = end;
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::test_files::{tempdir, wc_l};

    /// `line_chunks` over bytes in memory, read through small windows to exercise the window loop.
    fn chunks_of(data: &[u8], step: u64) -> Vec<Chunk> {
        line_chunks(data.len() as u64, step, |at, buffer| {
            let start = at as usize;
            let end = (start + buffer.len().min(3)).min(data.len());
            buffer[..end - start].copy_from_slice(&data[start..end]);
            Ok(end - start)
        })
        .expect("in-memory reads cannot fail")
    }

    #[test]
    fn chunks_are_line_aligned_and_cover_the_file() {
        let data = b"aaa\nbb\ncccccc\nd\n\ne";
        for step in 1..=data.len() as u64 + 2 {
            let chunks = chunks_of(data, step);
            let mut offset = 0;
            for chunk in &chunks {
                assert_eq!(chunk.offset, offset, "step {step}");
                assert!(chunk.len >= 1);
                offset += chunk.len;
                let end = offset as usize;
                assert!(
                    end == data.len() || data[end - 1] == b'\n',
                    "step {step}: chunk ends mid-line"
                );
            }
            assert_eq!(offset as usize, data.len(), "step {step}");
        }
        assert_eq!(
            chunks_of(data, 4),
            vec![
                Chunk { offset: 0, len: 4 },
                Chunk { offset: 4, len: 10 },
                // 18 bytes: from byte 14 the rest fits in one chunk.
                Chunk { offset: 14, len: 4 },
            ]
        );
        assert!(chunks_of(b"", 4).is_empty());
    }

    /// A serial split written independently: walk the bytes, close a chunk at the first newline once it holds
    /// at least `step` bytes.
    fn serial_split(data: &[u8], step: usize) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut start = 0;
        for (at, &byte) in data.iter().enumerate() {
            if byte == b'\n' && at + 1 - start >= step {
                chunks.push(Chunk {
                    offset: start as u64,
                    len: (at + 1 - start) as u64,
                });
                start = at + 1;
            }
        }
        if start < data.len() {
            chunks.push(Chunk {
                offset: start as u64,
                len: (data.len() - start) as u64,
            });
        }
        chunks
    }

    #[test]
    fn file_chunks_of_a_real_file_match_a_serial_split_and_wc() {
        let dir = tempdir("chunks");
        let mut text = Vec::new();
        let mut seed = 7u64;
        for line in 0..2000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            text.extend(std::iter::repeat_n(b'a' + (line % 26) as u8, (seed >> 58) as usize));
            text.push(b'\n');
        }
        text.extend_from_slice(b"no final newline");
        let path = dir.join("input.txt");
        std::fs::write(&path, &text).expect("write");
        for step in [1u64, 5, 64, 1000, 1 << 20] {
            let source = Chunks::open(&path, Split::Lines, step).expect("open");
            let expected = serial_split(&text, step as usize);
            let len = source.known_len().expect("known");
            assert_eq!(
                source.items(0, len, &|_| None),
                BatchItems::Chunks(expected.clone()),
                "step {step}"
            );
            // Item by item, from the far end back (each lookup may decode another block).
            for index in (0..len).rev() {
                assert_eq!(
                    source.chunk(index),
                    expected[index as usize],
                    "step {step}, chunk {index}"
                );
            }
            let newlines: usize = expected
                .iter()
                .map(|c| {
                    text[c.offset as usize..(c.offset + c.len) as usize]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                })
                .sum();
            assert_eq!(newlines as u128, wc_l(&path), "step {step}");
        }
        let whole = Chunks::open(&path, Split::None, 4).expect("open");
        assert_eq!(whole.known_len(), Some(1));
        assert_eq!(
            whole.describe(0),
            InputDesc::Chunk {
                offset: 0,
                len: text.len() as u64
            }
        );
        std::fs::write(&path, b"").expect("write");
        assert_eq!(Chunks::open(&path, Split::Lines, 4).expect("open").known_len(), Some(0));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
