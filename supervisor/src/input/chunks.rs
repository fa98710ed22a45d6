//! The `file` input: one file split into line-aligned byte ranges of about `chunk_bytes` (`split = "lines"`), or
//! the whole file as one item (`split = "none"`).
//!
//! The file is read at each chunk boundary only, not mapped: the supervisor's memory stays independent of the
//! input's size (mapping it would fault in ~64 KiB around every boundary). The listing holds one 16-byte
//! descriptor per chunk, i.e. `size / chunk_bytes` of them (64 K for 1 TiB at the default 16 MiB). A batch
//! carries the byte ranges; every worker maps the file read-only once and reads its ranges.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shared::item::{BatchItems, Chunk, InputPlan};
use shared::job::Split;

use super::{BodyOf, Source};
use crate::error::Error;
use crate::results::InputDesc;

#[derive(Debug)]
pub struct Chunks {
    path: PathBuf,
    chunks: Vec<Chunk>,
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
        let chunks = match split {
            Split::Lines => {
                line_chunks(size, chunk_bytes, |at, buffer| file.read_at(buffer, at)).map_err(unreadable)?
            }
            Split::None => vec![Chunk { offset: 0, len: size }],
        };
        Ok(Chunks {
            path: path.to_path_buf(),
            chunks,
        })
    }

    /// The file's size when it was listed: the end of the last chunk.
    fn listed_size(&self) -> u64 {
        self.chunks.last().map_or(0, |last| last.offset + last.len)
    }

    fn chunk(&self, index: u64) -> Option<Chunk> {
        self.chunks.get(usize::try_from(index).ok()?).copied()
    }
}

impl Source for Chunks {
    fn key(&self) -> &'static str {
        "file"
    }

    fn known_len(&self) -> Option<u64> {
        Some(self.chunks.len() as u64)
    }

    fn items(&self, first: u64, len: u64, _body: BodyOf<'_>) -> BatchItems {
        BatchItems::Chunks(self.chunks[first as usize..(first + len) as usize].to_vec())
    }

    fn describe(&self, index: u64) -> InputDesc {
        super::byte_range(self.chunk(index).unwrap_or(Chunk { offset: 0, len: 0 }))
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
        let chunk = self.chunk(index)?;
        let reading = format!("bytes {}..{} of it", chunk.offset, chunk.offset + chunk.len);
        Some(crate::sigbus::explain_file(
            &self.path,
            Some(self.listed_size()),
            &reading,
        ))
    }

    fn changed_during_job(&self) -> Option<String> {
        crate::sigbus::size_changed(&self.path, self.listed_size())
    }
}

/// Splits `size` bytes, read through `read_at`, into chunks of about `chunk_bytes`, each ending just after a
/// newline (or at the end).
pub fn line_chunks(
    size: u64,
    chunk_bytes: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<Vec<Chunk>> {
    let step = chunk_bytes.max(1);
    let mut window = vec![0u8; 64 << 10];
    let mut chunks = Vec::new();
    let mut offset = 0;
    while offset < size {
        let target = offset.saturating_add(step);
        let mut end = size;
        // Look for the first newline at or after byte `target - 1`: the chunk ends just after it.
        let mut at = target - 1;
        while target < size && at < size {
            let want = window.len().min((size - at) as usize);
            let read = read_at(at, &mut window[..want])?;
            if read == 0 {
                break;
            }
            if let Some(found) = memchr::memchr(b'\n', &window[..read]) {
                end = at + found as u64 + 1;
                break;
            }
            at += read as u64;
        }
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
            assert_eq!(source.chunks, expected, "step {step}");
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
