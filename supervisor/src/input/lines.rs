//! The `lines` input: one item per line of a file. A line is its text without the `\n` that ends it, nor the
//! `\r` before that `\n` (CRLF files give the same items as LF files); a last line without a final newline is
//! an item, an empty file has none, and an empty line is an empty item.
//!
//! An item is a byte range of the file, like a chunk of a `file` input: a batch carries `(offset, len)` per
//! line, and the worker reads it from the file it mapped once, so workers and every task that reads chunks need
//! no new code.
//!
//! The length is known before any item runs: [`Lines::open`] counts the lines in one pass (`memchr` over 1 MiB
//! reads, at memory speed from the page cache), because sharding and the progress total need it, and resuming
//! by index needs the numbering fixed. The pass keeps one offset per block of 1024 lines (`input::blocks`: about
//! 800 KB for 10^8 lines), never one per line; a line's place is found by scanning its block from that mark.
//! The supervisor reads the file with `pread`, never maps it, so its memory does not grow with the file.
//!
//! A journal of a `lines` job is resumed only against the same file: the fingerprint records the file's size,
//! modification time and line count.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shared::item::{BatchItems, Chunk, InputPlan};

use super::blocks::Blocks;
use super::{BodyOf, Source};
use crate::error::Error;
use crate::results::InputDesc;

/// Bytes read at once by the counting pass.
const COUNT_WINDOW: usize = 1 << 20;
/// Bytes read at once when a block is decoded.
const BLOCK_WINDOW: usize = 64 << 10;

#[derive(Debug)]
pub struct Lines {
    path: PathBuf,
    file: File,
    /// Bytes counted; the end of the last line.
    size: u64,
    blocks: Blocks,
}

impl Lines {
    /// Opens the file at `path` and counts its lines.
    pub fn open(path: &Path) -> Result<Lines, Error> {
        let unreadable = |source| Error::InputUnreadable {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        let mut blocks = Blocks::default();
        let end = scan(&file, 0, size, COUNT_WINDOW, |line| {
            blocks.push(line.offset);
            true
        })
        .map_err(unreadable)?;
        Ok(Lines {
            path: path.to_path_buf(),
            file,
            size: end,
            blocks,
        })
    }

    /// Bytes the index holds, for the test that it stays small.
    pub fn index_bytes(&self) -> usize {
        self.blocks.index_bytes()
    }

    /// The `want` lines from byte `from` on (fewer if the file changed since it was counted).
    fn decode(&self, from: u64, want: usize) -> Vec<Chunk> {
        let mut lines = Vec::with_capacity(want);
        let scanned = scan(&self.file, from, self.size, BLOCK_WINDOW, |line| {
            lines.push(line);
            lines.len() < want
        });
        if scanned.is_err() {
            lines.clear();
        }
        lines
    }

    fn line(&self, index: u64) -> Chunk {
        self.blocks.get(index, |from, want| self.decode(from, want))
    }
}

impl Source for Lines {
    fn key(&self) -> &'static str {
        "lines"
    }

    fn known_len(&self) -> Option<u64> {
        Some(self.blocks.count())
    }

    fn items(&self, first: u64, len: u64, _body: BodyOf<'_>) -> BatchItems {
        self.blocks.batch(first, len, |from, want| self.decode(from, want))
    }

    fn describe(&self, index: u64) -> InputDesc {
        super::byte_range(self.line(index))
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
            "lines of {} ({} lines) of {size} bytes modified at {modified} ns",
            self.path.display(),
            self.blocks.count()
        ))
    }

    fn explain_sigbus(&self, index: u64) -> Option<String> {
        let line = self.line(index);
        let reading = format!(
            "line {} (bytes {}..{}) of it",
            index + 1,
            line.offset,
            line.offset.saturating_add(line.len)
        );
        Some(crate::sigbus::explain_file(&self.path, Some(self.size), &reading))
    }

    fn changed_during_job(&self) -> Option<String> {
        crate::sigbus::size_changed(&self.path, self.size)
    }
}

/// Reads `file` from `from` to at most `end` in windows of `window` bytes and calls `each` with every line
/// found (text without its `\n` or `\r\n`), until it returns `false`. Returns where reading stopped: `end`, or
/// less when the file is shorter now.
fn scan(file: &File, from: u64, end: u64, window: usize, mut each: impl FnMut(Chunk) -> bool) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; window];
    let mut start = from;
    let mut at = from;
    // Whether the byte just before `at` is `\r`: a `\n` at the start of a window may end a CRLF.
    let mut after_cr = false;
    while at < end {
        let want = buffer.len().min((end - at) as usize);
        let read = file.read_at(&mut buffer[..want], at)?;
        if read == 0 {
            break;
        }
        let bytes = &buffer[..read];
        for found in memchr::memchr_iter(b'\n', bytes) {
            let newline = at + found as u64;
            let cr = if found > 0 { bytes[found - 1] == b'\r' } else { after_cr };
            let text_end = if cr && newline > start { newline - 1 } else { newline };
            if !each(Chunk {
                offset: start,
                len: text_end - start,
            }) {
                return Ok(at + read as u64);
            }
            start = newline + 1;
        }
        after_cr = bytes[read - 1] == b'\r';
        at += read as u64;
    }
    if start < at {
        each(Chunk {
            offset: start,
            len: at - start,
        });
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::test_files::{tempdir, wc_l};

    /// The lines of `text` by a serial loop written independently: split at `\n`, drop one trailing `\r`, no
    /// item after a final newline.
    fn serial_lines(text: &[u8]) -> Vec<Vec<u8>> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut current = Vec::new();
        for &byte in text {
            if byte == b'\n' {
                if current.last() == Some(&b'\r') {
                    current.pop();
                }
                lines.push(std::mem::take(&mut current));
            } else {
                current.push(byte);
            }
        }
        if !current.is_empty() {
            lines.push(current);
        }
        lines
    }

    /// The text of every item of `source`, read back from `text` by its descriptors (as a worker would).
    fn items_text(source: &Lines, text: &[u8], batch: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let len = source.known_len().expect("known");
        let mut first = 0;
        while first < len {
            let n = batch.min(len - first);
            let BatchItems::Chunks(chunks) = source.items(first, n, &|_| None) else {
                panic!("lines are chunks");
            };
            assert_eq!(chunks.len() as u64, n);
            for (k, chunk) in chunks.iter().enumerate() {
                assert_eq!(
                    source.describe(first + k as u64),
                    InputDesc::Chunk {
                        offset: chunk.offset,
                        len: chunk.len
                    }
                );
                out.push(text[chunk.offset as usize..(chunk.offset + chunk.len) as usize].to_vec());
            }
            first += n;
        }
        out
    }

    fn check(name: &str, text: &[u8]) {
        let dir = tempdir(&format!("lines-{name}"));
        let path = dir.join("input.txt");
        std::fs::write(&path, text).expect("write");
        let source = Lines::open(&path).expect("open");
        let expected = serial_lines(text);
        assert_eq!(source.known_len(), Some(expected.len() as u64), "{name}");
        // `wc -l` counts newlines: one fewer than the items when the last line has no final newline.
        let unterminated = u128::from(!text.is_empty() && text.last() != Some(&b'\n'));
        assert_eq!(wc_l(&path) + unterminated, expected.len() as u128, "{name}");
        for batch in [1, 7, 1000, 5000] {
            assert_eq!(items_text(&source, text, batch), expected, "{name}, batches of {batch}");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn lines_with_and_without_a_final_newline() {
        check("final", b"one\ntwo words\n\nfour\n");
        check("no-final", b"one\ntwo words\n\nfour");
        check("single", b"x");
        check("only-newlines", b"\n\n\n");
    }

    #[test]
    fn lines_of_an_empty_file_are_none() {
        check("empty", b"");
    }

    #[test]
    fn crlf_lines_give_the_same_items_as_lf_lines() {
        check("crlf", b"a\r\nbb\r\n\r\nlone\rcr\r\nlast");
        check("cr-alone", b"\r\n\r");
        let dir = tempdir("crlf-same");
        let (lf, crlf) = (dir.join("lf"), dir.join("crlf"));
        std::fs::write(&lf, b"x\ny\n\nz").expect("write");
        std::fs::write(&crlf, b"x\r\ny\r\n\r\nz").expect("write");
        let (lf, crlf) = (Lines::open(&lf).expect("open"), Lines::open(&crlf).expect("open"));
        let text = |source: &Lines, bytes: &[u8]| items_text(source, bytes, 3);
        assert_eq!(text(&lf, b"x\ny\n\nz"), text(&crlf, b"x\r\ny\r\n\r\nz"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn many_lines_across_blocks_and_windows_keep_a_small_index() {
        // Lines of varied length (some longer than a block window), about 3.5 blocks, CRLF here and there.
        let mut text = Vec::new();
        let mut seed = 11u64;
        for line in 0..(3 * crate::input::blocks::BLOCK + 517) {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = if line % 997 == 0 {
                BLOCK_WINDOW + 3
            } else {
                (seed >> 57) as usize
            };
            text.extend(std::iter::repeat_n(b'a' + (line % 26) as u8, len));
            text.extend_from_slice(if line % 5 == 0 { b"\r\n" } else { b"\n" });
        }
        check("many", &text);
        let dir = tempdir("lines-index");
        let path = dir.join("input.txt");
        std::fs::write(&path, &text).expect("write");
        let source = Lines::open(&path).expect("open");
        // One mark per block: 4 blocks, nowhere near one descriptor per line.
        assert_eq!(source.index_bytes(), 4 * 8);
        // Jumping around (a retry far behind) decodes the right block again.
        let last = source.known_len().expect("known") - 1;
        let far = source.describe(last);
        let near = source.describe(1);
        assert_eq!(source.describe(last), far);
        assert_eq!(source.describe(1), near);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn lines_lost_after_the_file_shrank_are_past_its_end() {
        let dir = tempdir("lines-shrank");
        let path = dir.join("input.txt");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        let source = Lines::open(&path).expect("open");
        std::fs::write(&path, "a\n").expect("truncate");
        assert_eq!(source.describe(0), InputDesc::Chunk { offset: 0, len: 1 });
        assert_eq!(
            source.describe(2),
            InputDesc::Chunk {
                offset: u64::MAX,
                len: 0
            }
        );
        assert!(source.changed_during_job().is_some());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
