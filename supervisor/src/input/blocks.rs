//! A sparse index over the items of one file that can only be found by reading it in order (line-aligned
//! chunks, lines): where every [`BLOCK`]-th item starts, and the last few blocks decoded in full.
//!
//! The listing pass calls [`Blocks::push`] for every item in order and keeps 8 bytes per block, never a
//! descriptor per item. A lookup decodes the item's block by reading from its mark (the kind says how, through
//! the `decode` function it passes), and keeps it in a small cache, because batches and records go through the
//! items nearly in order. Which bytes an item is, and how the file is read, are the kind's; the index and the
//! cache are this module's.

use std::collections::VecDeque;
use std::sync::Mutex;

use shared::item::{BatchItems, Chunk};

/// Items per block: one mark (8 bytes) per block, and the most items one lookup decodes.
pub const BLOCK: u64 = 1024;
/// Decoded blocks kept: enough for the batch being built, the records coming back and a retry or two.
const CACHED: usize = 4;

/// The descriptor of an item that cannot be found any more (the file shrank or became unreadable after it was
/// listed): past any file's end, so the worker fails the item saying the file shrank.
pub const LOST: Chunk = Chunk {
    offset: u64::MAX,
    len: 0,
};

#[derive(Debug, Default)]
pub struct Blocks {
    count: u64,
    /// `marks[k]`: where item `k * BLOCK` starts.
    marks: Vec<u64>,
    /// Recently decoded blocks, most recent last.
    cache: Mutex<VecDeque<(u64, Vec<Chunk>)>>,
}

impl Blocks {
    /// Notes the next item, which starts at byte `offset`.
    pub fn push(&mut self, offset: u64) {
        if self.count.is_multiple_of(BLOCK) {
            self.marks.push(offset);
        }
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes the index holds (the marks).
    pub fn index_bytes(&self) -> usize {
        self.marks.capacity() * std::mem::size_of::<u64>()
    }

    /// Calls `each` with the descriptor of every item `first .. first + len`, in order. `decode(from, want)`
    /// reads the `want` items that start at byte `from`; fewer (none on a read error) when the file changed,
    /// and the missing ones are then [`LOST`].
    pub fn each(&self, first: u64, len: u64, decode: impl Fn(u64, usize) -> Vec<Chunk>, mut each: impl FnMut(Chunk)) {
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut index = first;
        let end = (first + len).min(self.count);
        while index < end {
            let number = index / BLOCK;
            // Least recently used first: a hit moves to the back, a miss evicts the front.
            let block = match cache.iter().position(|(cached, _)| *cached == number) {
                Some(at) => cache.remove(at),
                None => {
                    if cache.len() == CACHED {
                        cache.pop_front();
                    }
                    let from = self.marks[number as usize];
                    let want = BLOCK.min(self.count - number * BLOCK) as usize;
                    Some((number, decode(from, want)))
                }
            };
            cache.extend(block);
            let Some((_, items)) = cache.back() else { break };
            let stop = end.min((number + 1) * BLOCK);
            for item in index..stop {
                each(items.get((item - number * BLOCK) as usize).copied().unwrap_or(LOST));
            }
            index = stop;
        }
        for _ in end.max(first)..first + len {
            each(LOST);
        }
    }

    /// The byte ranges of items `first .. first + len`, as a batch carries them.
    pub fn batch(&self, first: u64, len: u64, decode: impl Fn(u64, usize) -> Vec<Chunk>) -> BatchItems {
        let mut chunks = Vec::with_capacity(len as usize);
        self.each(first, len, decode, |chunk| chunks.push(chunk));
        BatchItems::Chunks(chunks)
    }

    /// The descriptor of item `index`.
    pub fn get(&self, index: u64, decode: impl Fn(u64, usize) -> Vec<Chunk>) -> Chunk {
        let mut found = LOST;
        self.each(index, 1, decode, |item| found = item);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_found_from_their_block_mark() {
        // Items of 3 bytes each: item i starts at 3i.
        let mut blocks = Blocks::default();
        let n = 5 * BLOCK + 5;
        for i in 0..n {
            blocks.push(3 * i);
        }
        assert_eq!(blocks.marks, (0..6).map(|k| 3 * k * BLOCK).collect::<Vec<_>>());
        let decode = |from: u64, want: usize| {
            (0..want as u64)
                .map(|k| Chunk {
                    offset: from + 3 * k,
                    len: 3,
                })
                .collect::<Vec<_>>()
        };
        let mut seen = Vec::new();
        blocks.each(BLOCK - 2, BLOCK + 4, decode, |item| seen.push(item.offset));
        assert_eq!(seen, (BLOCK - 2..2 * BLOCK + 2).map(|i| 3 * i).collect::<Vec<_>>());
        // Past the end, or a block that decodes short (the file shrank): lost.
        assert_eq!(blocks.get(n, decode), LOST);
        assert_eq!(
            blocks.get(5, |_, _| Vec::new()),
            Chunk { offset: 15, len: 3 },
            "block 0 is cached"
        );
        assert_eq!(
            blocks.get(2 * BLOCK + 7, |_, _| Vec::new()),
            Chunk {
                offset: 3 * (2 * BLOCK + 7),
                len: 3
            }
        );
        // Blocks 3, 4 and 5 evict the least recently used, 1 and then 0 (used after 1), but not 2 (used after 0).
        blocks.get(3 * BLOCK, decode);
        blocks.get(4 * BLOCK, decode);
        blocks.get(5 * BLOCK, decode);
        assert_eq!(
            blocks.get(2 * BLOCK, |_, _| Vec::new()),
            Chunk {
                offset: 6 * BLOCK,
                len: 3
            }
        );
        assert_eq!(blocks.get(5, |_, _| Vec::new()), LOST, "block 0 was evicted");
    }
}
