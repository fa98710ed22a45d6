//! The journal: durable results while a job runs, and `--resume` after the supervisor dies.
//!
//! ## Format (version 1)
//! `<results>.journal` is a text file of JSON lines. The first line is a header,
//! `{"journal":1,"fingerprint":{…}}`; every other line is a [`Record`], in the order items finished. Most are
//! final records, exactly as they will appear in the results file. A failed attempt that will be retried is
//! journaled too, as a non-final line (`"retrying":true`), so that a run stopped before the retry ran resumes
//! the item's attempts where they were instead of starting over. Records are appended in the groups the
//! dispatcher produces (one `write` each), and the file is fsync'ed at least every [`SYNC_INTERVAL`] and at the
//! end. If an item has several final lines (only with `--retry-failed`), the last one counts.
//!
//! ## Recovery
//! [`Journal::recover`] reads a journal back: a last line without its newline (the process died mid-write) and
//! any line that is not a record of this job are dropped and reported, never misread. The fingerprint — job
//! file digest, task and args, and the input's size and modification time — must match, or resume is refused
//! with a message naming what changed. The journal is streamed, never read whole: a first pass copies the
//! surviving lines into a fresh journal (renamed into place when the run starts, so the resumed run appends to
//! it) while a [`LineIndex`] notes where each item's final line is; a second pass reads those lines to count them,
//! fold their values into the reduction and list the items not to run again (an [`ItemSet`]). Failed attempts
//! of items with no final line become [`Done::attempts`]. Memory follows the runs of recorded items and the
//! pending retries, never the job's item count or the journal's size.
//!
//! ## The results file
//! At the end, [`finalize`] derives the results file from the journal — sorted by item for `order = "input"`,
//! as finished for `"completion"` — through a [`LineIndex`], and writes it with an [`AtomicFile`] (a temporary
//! file in the same folder, fsync'ed, renamed into place, removed on any error). Only then is the journal removed — it is kept when items are missing (for `--resume`), when
//! items failed (for `--retry-failed`), or with `--keep-journal`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shared::job::Order;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::atomic::{AtomicFile, remove_stale_temps};
use crate::error::Error;
use crate::journal_index::line_item;
pub use crate::journal_index::{ItemSet, LineIndex};
use crate::record::{Failure, Record, Status};
use crate::results::Reducer;
use crate::shard::Shard;

/// Version of the journal format; a journal of another version is refused.
pub const JOURNAL_VERSION: u32 = 1;

/// Longest time between two fsyncs of the journal while records are being written.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The journal of a results file: `results.jsonl` → `results.jsonl.journal`.
pub fn journal_path(results: &Path) -> PathBuf {
    let mut name = results.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// What must not change between a run and its resumption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 of the job file's text.
    pub job_sha256: String,
    pub task: String,
    /// The task's args, as JSON.
    pub args: String,
    /// The input: its kind, bounds or paths, sizes and modification times (a digest for globs).
    pub input: String,
    pub items: u64,
    /// The shard this journal belongs to (absent when the run was not sharded); its items are the shard's block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

impl Fingerprint {
    /// What changed from `self` (the journal's) to `now`, in words; empty when nothing did.
    pub fn changes(&self, now: &Fingerprint) -> Vec<String> {
        let mut changes = Vec::new();
        if self.job_sha256 != now.job_sha256 {
            changes.push("the job file changed".to_string());
        }
        if self.task != now.task || self.args != now.args {
            changes.push(format!(
                "the task changed: was `{} {}`, now `{} {}`",
                self.task, self.args, now.task, now.args
            ));
        }
        if self.input != now.input {
            changes.push(format!("the input changed: was {}, now {}", self.input, now.input));
        }
        if self.items != now.items {
            changes.push(format!(
                "the number of items changed: was {}, now {}",
                self.items, now.items
            ));
        }
        if self.shard != now.shard {
            let describe = |shard: Option<Shard>| shard.map_or("not sharded".to_string(), |s| format!("shard {s}"));
            changes.push(format!(
                "the shard changed: the journal is of {}, this run is {}",
                describe(self.shard),
                describe(now.shard)
            ));
        }
        changes
    }

    /// The items this journal's run owns: its shard's block, or every item.
    pub fn span(&self) -> std::ops::Range<u64> {
        self.shard.map_or(0..self.items, |shard| shard.span(self.items))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    journal: u32,
    fingerprint: Fingerprint,
}

/// What a journal says was done.
#[derive(Debug, Default)]
pub struct Done {
    /// The items that have a record and need no run.
    pub done: ItemSet,
    pub ok: u64,
    pub failed: u64,
    /// The first failed items ([`FAILURES_KEPT`]) with their failure, in item order.
    pub failures: Vec<(u64, Failure)>,
    /// Items with no final record whose earlier attempts failed (and were to be retried): the failures, in
    /// order. A resumed run continues their attempts from there.
    pub attempts: HashMap<u64, Vec<Failure>>,
}

/// Failures [`Done`] lists (the summary shows the first 20).
pub const FAILURES_KEPT: usize = 20;

/// Dropped lines [`Recovered`] describes; the rest are counted.
const DROPPED_SHOWN: usize = 20;

/// A journal read back by [`Journal::recover`].
#[derive(Debug)]
pub struct Journal {
    /// The fresh journal: the header and the lines kept, waiting to be renamed over the old one.
    file: AtomicFile,
    /// What was dropped and why, for the user (the first 20, then a count).
    pub dropped: Vec<String>,
    /// What the kept lines say was done.
    pub done: Done,
}

impl Journal {
    /// Reads the journal at `path`, checks it belongs to this job, and notes what it says was done (with
    /// `retry_failed`, failed items are not done); the values of its ok items go into `reducer`.
    pub fn recover(
        path: &Path,
        expected: &Fingerprint,
        retry_failed: bool,
        reducer: &mut Reducer,
    ) -> Result<Journal, Error> {
        let io = |source| Error::Journal {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| Error::JournalInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(io)?;
        if !line.ends_with(b"\n") {
            return Err(invalid("it has no header".into()));
        }
        let header: Header = serde_json::from_slice(&line)
            .map_err(|error| invalid(format!("its header is not a journal header: {error}")))?;
        if header.journal != JOURNAL_VERSION {
            return Err(invalid(format!(
                "it is format version {}, this supervisor reads version {JOURNAL_VERSION}",
                header.journal
            )));
        }
        let changes = header.fingerprint.changes(expected);
        if !changes.is_empty() {
            return Err(Error::JournalMismatch {
                path: path.to_path_buf(),
                changes: changes.join("; "),
            });
        }
        // Pass 1: copy the lines that are records of this run into the fresh journal, indexing the final ones.
        let mut file = AtomicFile::create(path).map_err(io)?;
        let mut offset = line.len() as u64;
        file.writer().write_all(&line).map_err(io)?;
        let span = expected.span();
        let mut index = LineIndex::default();
        let mut retrying: HashMap<u64, Vec<Failure>> = HashMap::new();
        let mut dropped = Vec::new();
        let mut dropped_count = 0u64;
        let mut number = 1u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                break;
            }
            number += 1;
            let why = if !line.ends_with(b"\n") {
                Some(format!("a torn last record of {} bytes (no newline)", line.len()))
            } else {
                match crate::record::parse::<serde::de::IgnoredAny>(&line) {
                    Ok(record) if span.contains(&record.item) => {
                        if record.retrying {
                            if let Some(error) = record.error {
                                retrying.entry(record.item).or_default().push(error);
                            }
                        } else {
                            index.push(record.item, offset);
                        }
                        file.writer().write_all(&line).map_err(io)?;
                        offset += line.len() as u64;
                        None
                    }
                    Ok(record) if record.item < expected.items => Some(format!(
                        "item {} is not in this run's shard (items {}..{})",
                        record.item, span.start, span.end
                    )),
                    Ok(record) => Some(format!(
                        "item {} is beyond the job's {} items",
                        record.item, expected.items
                    )),
                    Err(error) => Some(format!("not a record ({error})")),
                }
            };
            if let Some(why) = why {
                dropped_count += 1;
                if dropped.len() < DROPPED_SHOWN {
                    dropped.push(format!("line {number}: {why}"));
                }
            }
        }
        if dropped_count > dropped.len() as u64 {
            dropped.push(format!("… and {} more lines", dropped_count - dropped.len() as u64));
        }
        file.writer().flush().map_err(io)?;
        // Pass 2: what the final lines say, by item.
        let mut done = Done::default();
        index
            .read(file.temp_path(), true, |item, line| {
                let record: Record = crate::record::parse(line).map_err(std::io::Error::other)?;
                match record.status {
                    Status::Ok => {
                        done.done.push(item);
                        done.ok += 1;
                        reducer.add(record.value.as_ref().unwrap_or(&shared::item::Value::Null));
                    }
                    Status::Failed if !retry_failed => {
                        done.done.push(item);
                        done.failed += 1;
                        if let Some(error) = record.error
                            && done.failures.len() < FAILURES_KEPT
                        {
                            done.failures.push((item, error));
                        }
                    }
                    Status::Failed => {}
                }
                Ok(())
            })
            .map_err(io)?;
        // Attempts of items that have a final line are history; the others continue.
        retrying.retain(|&item, _| !done.done.contains(item));
        done.attempts = retrying;
        Ok(Journal { file, dropped, done })
    }
}

/// Whether the journal at `path` records every item of its job (a finished run: the results file holds the
/// same records, so replacing the journal loses nothing). Unreadable journals count as unfinished.
pub fn is_finished(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = Vec::new();
    if reader.read_until(b'\n', &mut header).is_err() {
        return false;
    }
    let Ok(header) = serde_json::from_slice::<Header>(&header) else {
        return false;
    };
    let span = header.fingerprint.span();
    let Ok(index) = index_lines(path) else { return false };
    index.items_in(span.clone()) == span.end - span.start
}

/// Where the final line of each item of the journal at `path` is.
fn index_lines(path: &Path) -> std::io::Result<LineIndex> {
    let mut index = LineIndex::default();
    for_each_record(path, |offset, line| {
        // A line without its newline is a write that did not finish: not a record.
        if line.ends_with(b"\n")
            && let Some((item, true)) = line_item(line)
        {
            index.push(item, offset);
        }
        Ok(())
    })?;
    Ok(index)
}

/// Appends records to the journal from an async task (fsyncs go to the blocking pool).
#[derive(Debug)]
pub struct JournalWriter {
    sender: mpsc::Sender<Vec<Record>>,
    task: JoinHandle<Result<(), Error>>,
    path: PathBuf,
    /// Whether to fsync once more when the writer ends (see [`JournalWriter::finish`]).
    final_sync: Arc<AtomicBool>,
}

/// Where records are staged when `[output] journal = false`: the same format, but private to this process,
/// never fsync'ed, and removed once the results file is written (nothing is resumable).
pub fn staging_path(results: &Path) -> PathBuf {
    crate::atomic::private_beside(results, "staging")
}

impl JournalWriter {
    /// Starts a journal at `path`: a fresh one (header only) or, when resuming, the recovered lines. The file is
    /// first written beside its final name and renamed, so a journal on disk is always well-formed up to its
    /// last line.
    ///
    /// With `durable` false (`journal = false`) nothing is fsync'ed: the cost of the journal is exactly the
    /// difference between the two.
    pub fn create(
        path: &Path,
        fingerprint: &Fingerprint,
        recovered: Option<Journal>,
        durable: bool,
    ) -> Result<JournalWriter, Error> {
        let io = |source| Error::Journal {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = match recovered {
            Some(journal) => journal.file,
            None => {
                let mut file = AtomicFile::create(path).map_err(io)?;
                let header = Header {
                    journal: JOURNAL_VERSION,
                    fingerprint: fingerprint.clone(),
                };
                serde_json::to_writer(file.writer(), &header).map_err(|error| io(error.into()))?;
                file.writer().write_all(b"\n").map_err(io)?;
                file
            }
        };
        file.commit(durable).map_err(io)?;
        let file = File::options().append(true).open(path).map_err(io)?;
        // Groups of records waiting for the writer. Each is the records of one message from a worker (thousands
        // for tiny items): a few, not hundreds, so that a fast job waits for the disk instead of holding its
        // records in memory (1M noop records: peak RSS 104 MB with 256 groups, see BENCHMARKS.md).
        let (sender, receiver) = mpsc::channel(WRITER_QUEUE_GROUPS);
        let file = tokio::fs::File::from_std(file);
        let final_sync = Arc::new(AtomicBool::new(durable));
        let ending = Arc::clone(&final_sync);
        let task = tokio::spawn(append_records(file, path.to_path_buf(), receiver, durable, ending));
        Ok(JournalWriter {
            sender,
            task,
            path: path.to_path_buf(),
            final_sync,
        })
    }

    /// Queues records; waits when the writer is behind. Returns false if the writer stopped (its error is
    /// returned by [`JournalWriter::finish`]).
    pub async fn write(&self, records: Vec<Record>) -> bool {
        self.sender.send(records).await.is_ok()
    }

    /// Writes and fsyncs everything queued.
    ///
    /// `complete` says every item has a record: the results file is about to be written (and fsync'ed) from the
    /// journal, which is then removed, so its own last fsync is skipped. A machine crash before the results file
    /// is durable loses at most the records of the last [`SYNC_INTERVAL`], as at any time during the run; they
    /// run again on `--resume`.
    pub async fn finish(self, complete: bool) -> Result<PathBuf, Error> {
        self.final_sync.store(!complete, std::sync::atomic::Ordering::Relaxed);
        drop(self.sender);
        match self.task.await {
            Ok(result) => result.map(|()| self.path),
            Err(join) => Err(Error::Internal {
                message: format!("journal writer failed: {join}"),
            }),
        }
    }
}

async fn append_records(
    file: tokio::fs::File,
    path: PathBuf,
    mut receiver: mpsc::Receiver<Vec<Record>>,
    durable: bool,
    final_sync: Arc<AtomicBool>,
) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    let io = |source| Error::Journal {
        path: path.clone(),
        source,
    };
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut buffer = Vec::with_capacity(1 << 16);
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        // Written records are fsync'ed within SYNC_INTERVAL, also when no new record comes to trigger it.
        let sync_due = tokio::time::Instant::from_std(last_sync + SYNC_INTERVAL);
        let records = tokio::select! {
            records = receiver.recv() => match records {
                Some(records) => records,
                None => break,
            },
            () = tokio::time::sleep_until(sync_due), if unsynced => {
                out.get_ref().sync_data().await.map_err(io)?;
                last_sync = Instant::now();
                unsynced = false;
                continue;
            }
        };
        buffer.clear();
        for record in &records {
            serde_json::to_writer(&mut buffer, record).map_err(|error| io(error.into()))?;
            buffer.push(b'\n');
        }
        out.write_all(&buffer).await.map_err(io)?;
        // Each group reaches the kernel at once, so a killed supervisor loses nothing it had recorded.
        out.flush().await.map_err(io)?;
        if !durable {
            continue;
        }
        if last_sync.elapsed() >= SYNC_INTERVAL {
            out.get_ref().sync_data().await.map_err(io)?;
            last_sync = Instant::now();
            unsynced = false;
        } else if !unsynced {
            // The interval counts from the first unsynced write.
            unsynced = true;
            last_sync = Instant::now();
        }
    }
    out.flush().await.map_err(io)?;
    if durable && unsynced && final_sync.load(std::sync::atomic::Ordering::Relaxed) {
        out.get_ref().sync_data().await.map_err(io)?;
    }
    Ok(())
}

/// Groups of records the journal writer's queue holds before the dispatcher waits for it.
const WRITER_QUEUE_GROUPS: usize = 8;

/// Calls `each` with the byte offset and the bytes (newline included) of every line after the journal's header,
/// reading through a 1 MiB buffer.
fn for_each_record(journal: &Path, mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(journal)?);
    let mut line = Vec::new();
    let mut offset = reader.read_until(b'\n', &mut line)? as u64;
    loop {
        line.clear();
        let len = reader.read_until(b'\n', &mut line)?;
        if len == 0 {
            return Ok(());
        }
        each(offset, &line)?;
        offset += len as u64;
    }
}

/// Writes the results file from the journal, atomically; returns the number of records written.
///
/// The journal is streamed, never read whole: a first pass indexes where each item's last final line is (a
/// [`LineIndex`]: a few bytes per run of consecutive items), a second reads those lines through a 1 MiB buffer
/// and writes them, by item for input order or by offset for completion order. Memory stays small however many
/// records or items the job has. Only items below `items` are written.
pub fn finalize(journal: &Path, results: &Path, order: Order, items: u64) -> Result<u64, Error> {
    let read_error = |source| Error::Journal {
        path: journal.to_path_buf(),
        source,
    };
    let write_error = |source| Error::Results {
        path: results.to_path_buf(),
        source,
    };
    remove_stale_temps(results);
    let index = index_lines(journal).map_err(read_error)?;
    let mut out = AtomicFile::create(results).map_err(write_error)?;
    let mut written = 0u64;
    // Reading and writing errors are told apart by where they happened.
    let mut write_failed = None;
    let read = index.read(journal, order == Order::Input, |item, line| {
        if item < items {
            if let Err(error) = out.writer().write_all(line) {
                write_failed = Some(error);
                return Err(std::io::Error::other("write failed"));
            }
            written += 1;
        }
        Ok(())
    });
    if let Some(error) = write_failed {
        return Err(write_error(error));
    }
    read.map_err(read_error)?;
    out.commit(true).map_err(write_error)?;
    remove_stale_temps(journal);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            job_sha256: "ab".into(),
            task: "noop".into(),
            args: "{}".into(),
            input: "range 0..10".into(),
            items: 10,
            shard: None,
        }
    }

    fn line(item: u64, status: &str) -> String {
        match status {
            "ok" => format!(
                "{{\"item\":{item},\"status\":\"ok\",\"value\":{item},\"attempts\":1,\"pid\":1,\"elapsed_ms\":0.1,\"input\":{{\"start\":{item},\"end\":{}}}}}\n",
                item + 1
            ),
            _ => format!(
                "{{\"item\":{item},\"status\":\"failed\",\"error\":{{\"kind\":\"error\",\"message\":\"x\"}},\"attempts\":1,\"pid\":1,\"elapsed_ms\":0.1,\"input\":{{\"start\":{item},\"end\":{}}}}}\n",
                item + 1
            ),
        }
    }

    fn write_journal(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("r.jsonl.journal");
        let header = serde_json::to_string(&Header {
            journal: 1,
            fingerprint: fingerprint(),
        })
        .expect("json");
        std::fs::write(&path, format!("{header}\n{body}")).expect("write");
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("journal-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    fn recover(path: &Path, expected: &Fingerprint, retry_failed: bool) -> Result<Journal, Error> {
        let mut reducer = Reducer::new(shared::job::Reduce::Sum);
        Journal::recover(path, expected, retry_failed, &mut reducer)
    }

    /// The lines a recovered journal will hold, after its header.
    fn kept(journal: &Journal) -> Vec<String> {
        let text = std::fs::read_to_string(journal.file.temp_path()).expect("read");
        text.lines().skip(1).map(str::to_string).collect()
    }

    #[test]
    fn a_torn_tail_and_garbage_are_dropped_and_reported() {
        let dir = temp_dir("torn");
        let torn = &line(4, "ok")[..20];
        let body = format!(
            "{}{}not json at all\n{}{}{torn}",
            line(0, "ok"),
            line(3, "failed"),
            line(99, "ok"),
            line(5, "ok")
        );
        let path = write_journal(&dir, &body);
        let journal = recover(&path, &fingerprint(), false).expect("recovers");
        assert_eq!(kept(&journal).len(), 3, "{:?}", journal.dropped);
        assert_eq!(journal.dropped.len(), 3, "{:?}", journal.dropped);
        assert!(
            journal.dropped[0].contains("line 4: not a record"),
            "{:?}",
            journal.dropped
        );
        assert!(
            journal.dropped[1].contains("item 99 is beyond"),
            "{:?}",
            journal.dropped
        );
        assert!(
            journal.dropped[2].contains("torn last record of 20 bytes"),
            "{:?}",
            journal.dropped
        );
        let done = &journal.done;
        assert_eq!((done.ok, done.failed), (2, 1));
        assert_eq!(done.done.iter().collect::<Vec<_>>(), [0, 3, 5]);
        let retry = recover(&path, &fingerprint(), true).expect("recovers");
        assert_eq!(retry.done.done.iter().collect::<Vec<_>>(), [0, 5]);
        assert_eq!(retry.done.failed, 0);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_shards_journal_keeps_only_its_block_and_is_finished_when_the_block_is() {
        let dir = temp_dir("shard");
        // Shard 1 of 2 of 10 items owns items 5..10.
        let sharded = Fingerprint {
            shard: Some(Shard { index: 1, count: 2 }),
            ..fingerprint()
        };
        let path = dir.join("r.jsonl.journal");
        let header = serde_json::to_string(&Header {
            journal: 1,
            fingerprint: sharded.clone(),
        })
        .expect("json");
        let body: String = (3..10).map(|item| line(item, "ok")).collect();
        std::fs::write(&path, format!("{header}\n{body}")).expect("write");
        let journal = recover(&path, &sharded, false).expect("recovers");
        assert_eq!(kept(&journal).len(), 5, "{:?}", journal.dropped);
        assert!(
            journal.dropped[0].contains("item 3 is not in this run's shard (items 5..10)"),
            "{:?}",
            journal.dropped
        );
        assert!(is_finished(&path), "items 5..10 are all recorded");
        let body: String = (5..9).map(|item| line(item, "ok")).collect();
        std::fs::write(&path, format!("{header}\n{body}")).expect("write");
        assert!(!is_finished(&path), "item 9 is missing");
        // The same journal as another shard, or unsharded, is refused.
        let other = Fingerprint {
            shard: Some(Shard { index: 0, count: 2 }),
            ..fingerprint()
        };
        match recover(&path, &other, false) {
            Err(Error::JournalMismatch { changes, .. }) => assert!(
                changes.contains("the shard changed: the journal is of shard 1/2, this run is shard 0/2"),
                "{changes}"
            ),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        match recover(&path, &fingerprint(), false) {
            Err(Error::JournalMismatch { changes, .. }) => {
                assert!(changes.contains("this run is not sharded"), "{changes}")
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_changed_fingerprint_is_refused_naming_what_changed() {
        let dir = temp_dir("changed");
        let path = write_journal(&dir, "");
        let now = Fingerprint {
            input: "range 0..11".into(),
            items: 11,
            ..fingerprint()
        };
        match recover(&path, &now, false) {
            Err(Error::JournalMismatch { changes, .. }) => {
                assert!(
                    changes.contains("the input changed: was range 0..10, now range 0..11"),
                    "{changes}"
                );
                assert!(changes.contains("number of items changed"), "{changes}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A journal several times the reader's 1 MiB buffer, in reverse item order, with every item failed first
    /// and ok later: input order needs seeks far outside the buffer.
    #[test]
    fn finalize_streams_a_journal_larger_than_its_buffer() {
        let dir = temp_dir("finalize-large");
        let items = 40_000u64;
        let failed: String = (0..items).rev().map(|item| line(item, "failed")).collect();
        let ok: String = (0..items).rev().map(|item| line(item, "ok")).collect();
        assert!(failed.len() + ok.len() > 4 << 20, "larger than the buffer");
        let path = write_journal(&dir, &format!("{failed}{ok}"));
        let results = dir.join("r.jsonl");
        assert_eq!(finalize(&path, &results, Order::Input, items).expect("finalize"), items);
        let expected: String = (0..items).map(|item| line(item, "ok")).collect();
        assert!(
            std::fs::read_to_string(&results).expect("read") == expected,
            "input order"
        );
        assert_eq!(
            finalize(&path, &results, Order::Completion, items).expect("finalize"),
            items
        );
        assert!(
            std::fs::read_to_string(&results).expect("read") == ok,
            "completion order"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn finalize_sorts_by_item_and_the_last_line_of_an_item_wins() {
        let dir = temp_dir("finalize");
        let body = format!(
            "{}{}{}{}",
            line(2, "ok"),
            line(0, "failed"),
            line(1, "ok"),
            line(0, "ok")
        );
        let path = write_journal(&dir, &body);
        let results = dir.join("r.jsonl");
        assert_eq!(finalize(&path, &results, Order::Input, 10).expect("finalize"), 3);
        let text = std::fs::read_to_string(&results).expect("read");
        assert_eq!(text, format!("{}{}{}", line(0, "ok"), line(1, "ok"), line(2, "ok")));
        assert_eq!(finalize(&path, &results, Order::Completion, 10).expect("finalize"), 3);
        let text = std::fs::read_to_string(&results).expect("read");
        assert_eq!(text, format!("{}{}{}", line(2, "ok"), line(1, "ok"), line(0, "ok")));
        assert!(
            std::fs::read_dir(&dir).expect("dir").all(|e| !e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains(".tmp-"))
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A job of u64::MAX items with a thousand records: recovery holds their runs, not a slot per item (which
    /// could not be allocated), and a pending retry becomes the item's used attempts.
    #[test]
    fn recovery_memory_follows_the_records_not_the_jobs_item_count() {
        let dir = temp_dir("huge");
        let huge = Fingerprint {
            items: u64::MAX,
            ..fingerprint()
        };
        let path = dir.join("r.jsonl.journal");
        let header = serde_json::to_string(&Header {
            journal: 1,
            fingerprint: huge.clone(),
        })
        .expect("json");
        // Two interleaved batches far apart, a failed item, and a failed attempt waiting for its retry.
        let far = u64::MAX - 600;
        let mut body: String = (far..far + 500).map(|item| line(item, "ok")).collect();
        body.extend((0..500).map(|item| line(item, "ok")));
        body.push_str(&line(1_000_000, "failed"));
        let pending = Record::retrying(
            7_000_000,
            Failure {
                kind: crate::record::FailureKind::Exit,
                message: "exited with code 3".into(),
                signal: None,
                code: Some(3),
                stderr: None,
            },
            1,
            1,
            0.1,
            crate::record::InputDesc::Range { start: 0, end: 1 },
        );
        body.push_str(&serde_json::to_string(&pending).expect("json"));
        body.push('\n');
        std::fs::write(&path, format!("{header}\n{body}")).expect("write");
        let journal = recover(&path, &huge, false).expect("recovers");
        let done = &journal.done;
        assert_eq!((done.ok, done.failed), (1000, 1));
        assert_eq!(done.done.runs(), [0..500, 1_000_000..1_000_001, far..far + 500]);
        assert_eq!(done.attempts.len(), 1);
        assert_eq!(done.attempts[&7_000_000][0].code, Some(3));
        let results = dir.join("r.jsonl");
        assert_eq!(
            finalize(&path, &results, Order::Input, u64::MAX).expect("finalize"),
            1001
        );
        assert!(!is_finished(&path));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
