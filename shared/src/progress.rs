//! The progress slot: what a worker is running right now, readable by the supervisor at any moment without a
//! message.
//!
//! The worker stamps the slot before and after each item (a few atomic stores and a clock read). The
//! supervisor reads it when a worker dies — the item it was running is the one that killed it, found in one
//! step — and on a timer to enforce per-item timeouts. The slot is a seqlock over words of a [`SharedPage`]:
//! the writer makes the sequence odd, writes, makes it even; a reader retries until it sees the same even
//! sequence before and after reading.

use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::region::SharedPage;

const SEQ: usize = 0;
const BATCH: usize = 1;
const ITEM: usize = 2;
const STARTED_NS: usize = 3;
const RUNNING: usize = 4;

/// What a worker was doing at the moment the slot was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub batch: u64,
    pub item: u64,
    /// `CLOCK_MONOTONIC` time the item started, in nanoseconds.
    pub started_ns: u64,
    /// False between items.
    pub running: bool,
}

/// Worker side.
#[derive(Debug)]
pub struct ProgressWriter {
    page: SharedPage,
}

impl ProgressWriter {
    pub fn new(page: SharedPage) -> ProgressWriter {
        ProgressWriter { page }
    }

    /// Marks item `item` of batch `batch` as running from now.
    pub fn begin(&self, batch: u64, item: u64) {
        self.write(batch, item, monotonic_ns(), true);
    }

    /// Marks the worker as between items.
    pub fn end(&self, batch: u64, item: u64) {
        self.write(batch, item, 0, false);
    }

    fn write(&self, batch: u64, item: u64, started_ns: u64, running: bool) {
        let words = self.page.words();
        let seq = words[SEQ].load(Ordering::Relaxed);
        words[SEQ].store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        words[BATCH].store(batch, Ordering::Relaxed);
        words[ITEM].store(item, Ordering::Relaxed);
        words[STARTED_NS].store(started_ns, Ordering::Relaxed);
        words[RUNNING].store(u64::from(running), Ordering::Relaxed);
        words[SEQ].store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// Supervisor side.
#[derive(Debug)]
pub struct ProgressReader {
    page: SharedPage,
}

impl ProgressReader {
    pub fn new(page: SharedPage) -> ProgressReader {
        ProgressReader { page }
    }

    /// The path the worker opens to map the slot.
    pub fn path(&self) -> std::path::PathBuf {
        self.page.proc_path()
    }

    /// A consistent snapshot, or `None` if the worker never wrote one or the slot stays inconsistent (a worker
    /// that died mid-write leaves the sequence odd).
    pub fn read(&self) -> Option<Snapshot> {
        let words: &[AtomicU64] = self.page.words();
        for _ in 0..64 {
            let before = words[SEQ].load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            let snapshot = Snapshot {
                batch: words[BATCH].load(Ordering::Relaxed),
                item: words[ITEM].load(Ordering::Relaxed),
                started_ns: words[STARTED_NS].load(Ordering::Relaxed),
                running: words[RUNNING].load(Ordering::Relaxed) == 1,
            };
            fence(Ordering::Acquire);
            if before.is_multiple_of(2) && words[SEQ].load(Ordering::Relaxed) == before {
                return Some(snapshot);
            }
            std::hint::spin_loop();
        }
        None
    }
}

pub use sys::cpu::monotonic_ns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_across_mappings() {
        let reader = ProgressReader::new(SharedPage::create().expect("memfd"));
        assert_eq!(reader.read(), None);
        let writer = ProgressWriter::new(SharedPage::open(&reader.path()).expect("open"));
        let before = monotonic_ns();
        writer.begin(7, 1234);
        let snapshot = reader.read().expect("consistent");
        assert_eq!((snapshot.batch, snapshot.item, snapshot.running), (7, 1234, true));
        assert!(snapshot.started_ns >= before && snapshot.started_ns <= monotonic_ns());
        writer.end(7, 1234);
        assert!(!reader.read().expect("consistent").running);
    }

    #[test]
    fn concurrent_reads_never_see_a_torn_slot() {
        let reader = ProgressReader::new(SharedPage::create().expect("memfd"));
        let path = reader.path();
        let writer = std::thread::spawn(move || {
            let writer = ProgressWriter::new(SharedPage::open(&path).expect("open"));
            for i in 1..200_000u64 {
                writer.begin(i, i * 3);
            }
        });
        let mut seen = 0;
        while !writer.is_finished() {
            if let Some(snapshot) = reader.read() {
                assert_eq!(snapshot.item, snapshot.batch * 3, "torn read");
                seen += 1;
            }
        }
        writer.join().expect("writer");
        assert!(seen > 0);
    }
}
