//! The journal: durable results while a job runs, and `--resume` after the supervisor dies.
//!
//! ## Format (version 1)
//! `<results>.journal` is a text file of JSON lines. The first line is a header,
//! `{"journal":1,"fingerprint":{…}}`; every other line is one final record, exactly as it will appear in the
//! results file, in the order items finished. Records are appended in the groups the dispatcher produces
//! (one `write` each), and the file is fsync'ed at least every [`SYNC_INTERVAL`] and at the end. If an item has
//! several lines (only with `--retry-failed`), the last one counts.
//!
//! ## Recovery
//! [`Journal::recover`] reads a journal back: a last line without its newline (the process died mid-write) and
//! any line that is not a record of this job are dropped and reported, never misread. The fingerprint — job
//! file digest, task and args, and the input's size and modification time — must match, or resume is refused
//! with a message naming what changed. The surviving lines are rewritten into a fresh journal (atomically) that
//! the resumed run appends to.
//!
//! ## The results file
//! At the end, [`finalize`] derives the results file from the journal — sorted by item for `order = "input"`,
//! as finished for `"completion"` — writes it to a temporary file in the same folder, fsyncs it, and renames it
//! into place. Only then is the journal removed — it is kept when items are missing (for `--resume`), when
//! items failed (for `--retry-failed`), or with `--keep-journal`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::item::Value;
use shared::job::Order;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::results::{Failure, Record, Status};
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

/// The part of a record (a journal line, a line of a results file) that recovery and `merge` read.
#[derive(Deserialize)]
pub(crate) struct Line<'a> {
    pub item: u64,
    pub status: Status,
    #[serde(borrow)]
    pub value: Option<&'a RawValue>,
    pub error: Option<Failure>,
}

/// What a journal says was done.
#[derive(Debug, Default)]
pub struct Done {
    /// For each item, whether it has a record (and needs no run).
    pub done: Vec<bool>,
    pub ok: u64,
    pub failed: u64,
    /// Values of the ok items, for the reduction.
    pub values: Vec<Value>,
    /// Failed items with their failure, in item order.
    pub failures: Vec<(u64, Failure)>,
}

/// A journal read back by [`Journal::recover`].
#[derive(Debug)]
pub struct Journal {
    /// Valid lines (each with its newline), in file order.
    lines: Vec<Vec<u8>>,
    /// What was dropped and why, for the user.
    pub dropped: Vec<String>,
}

impl Journal {
    /// Reads the journal at `path` and checks it belongs to this job.
    pub fn recover(path: &Path, expected: &Fingerprint) -> Result<Journal, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Journal {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| Error::JournalInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let header_end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| invalid("it has no header".into()))?;
        let header: Header = serde_json::from_slice(&bytes[..header_end])
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
        let mut lines = Vec::new();
        let mut dropped = Vec::new();
        let mut rest = &bytes[header_end + 1..];
        let mut number = 1;
        while !rest.is_empty() {
            number += 1;
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                dropped.push(format!(
                    "line {number}: a torn last record of {} bytes (no newline)",
                    rest.len()
                ));
                break;
            };
            let line = &rest[..end];
            match serde_json::from_slice::<Line<'_>>(line) {
                Ok(parsed) if expected.span().contains(&parsed.item) => lines.push(rest[..=end].to_vec()),
                Ok(parsed) if parsed.item < expected.items => dropped.push(format!(
                    "line {number}: item {} is not in this run's shard (items {}..{})",
                    parsed.item,
                    expected.span().start,
                    expected.span().end
                )),
                Ok(parsed) => dropped.push(format!(
                    "line {number}: item {} is beyond the job's {} items",
                    parsed.item, expected.items
                )),
                Err(error) => dropped.push(format!("line {number}: not a record ({error})")),
            }
            rest = &rest[end + 1..];
        }
        Ok(Journal { lines, dropped })
    }

    /// The items the journal records. With `retry_failed`, failed items do not count as done.
    pub fn done(&self, items: u64, retry_failed: bool) -> Done {
        let mut last: Vec<Option<usize>> = vec![None; items as usize];
        for (index, line) in self.lines.iter().enumerate() {
            if let Ok(parsed) = serde_json::from_slice::<Line<'_>>(line) {
                last[parsed.item as usize] = Some(index);
            }
        }
        let mut done = Done {
            done: vec![false; items as usize],
            ..Done::default()
        };
        for (item, index) in last.iter().enumerate() {
            let Some(index) = index else { continue };
            let Ok(line) = serde_json::from_slice::<Line<'_>>(&self.lines[*index]) else {
                continue;
            };
            match line.status {
                Status::Ok => {
                    done.done[item] = true;
                    done.ok += 1;
                    // An ok record always has a value; serde reads `"value":null` as `None`.
                    done.values
                        .push(line.value.map_or(Value::Null, |value| value_from_json(value.get())));
                }
                Status::Failed if !retry_failed => {
                    done.done[item] = true;
                    done.failed += 1;
                    if let Some(error) = line.error {
                        done.failures.push((item as u64, error));
                    }
                }
                Status::Failed => {}
            }
        }
        done
    }
}

/// A result value read back from JSON, exactly for integers of any size (which `serde_json::Value` would turn
/// into lossy floats beyond 64 bits).
pub fn value_from_json(text: &str) -> Value {
    let text = text.trim();
    if let Ok(n) = text.parse::<u128>() {
        return Value::UInt(n);
    }
    if let Ok(n) = text.parse::<i128>() {
        return Value::Int(n);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => from_json_value(value),
        Err(_) => Value::Null,
    }
}

fn from_json_value(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::UInt(u128::from(u)),
            (None, Some(i), _) => Value::Int(i128::from(i)),
            (_, _, Some(f)) => Value::Float(f),
            _ => Value::Null,
        },
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Array(items) => Value::List(items.into_iter().map(from_json_value).collect()),
        serde_json::Value::Object(map) => Value::Map(map.into_iter().map(|(k, v)| (k, from_json_value(v))).collect()),
    }
}

/// Whether the journal at `path` records every item of its job (a finished run: the results file holds the
/// same records, so replacing the journal loses nothing). Unreadable journals count as unfinished.
pub fn is_finished(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let Some(header_end) = bytes.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let Ok(header) = serde_json::from_slice::<Header>(&bytes[..header_end]) else {
        return false;
    };
    let span = header.fingerprint.span();
    let mut seen = vec![false; (span.end - span.start) as usize];
    for line in bytes[header_end + 1..]
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| line.ends_with(b"\n"))
    {
        if let Some(item) = item_of(line).filter(|item| span.contains(item)) {
            seen[(item - span.start) as usize] = true;
        }
    }
    seen.iter().all(|&seen| seen)
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
    let name = results
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    results.with_file_name(format!(".{name}.staging-{}", std::process::id()))
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
        recovered: Option<&Journal>,
        durable: bool,
    ) -> Result<JournalWriter, Error> {
        let io = |source| Error::Journal {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let temp = temp_beside(path);
        let mut out = BufWriter::new(File::create(&temp).map_err(io)?);
        let header = Header {
            journal: JOURNAL_VERSION,
            fingerprint: fingerprint.clone(),
        };
        serde_json::to_writer(&mut out, &header).map_err(|error| io(error.into()))?;
        out.write_all(b"\n").map_err(io)?;
        for line in recovered.map(|journal| journal.lines.as_slice()).unwrap_or_default() {
            out.write_all(line).map_err(io)?;
        }
        let file = out.into_inner().map_err(|error| io(error.into_error()))?;
        if durable {
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temp, path).map_err(io)?;
        if durable {
            sync_parent(path).map_err(io)?;
        }
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

/// No line for this item in the journal (see [`finalize`]).
const NO_LINE: u64 = u64::MAX;

/// Writes the results file from the journal, atomically; returns the number of records written.
///
/// The journal is streamed, never read whole: a first pass notes where each item's last line is (16 bytes per
/// item), a second reads those lines at their offsets through a 1 MiB buffer and writes them, in item order
/// (records arrive nearly in item order, so most seeks stay inside the buffer) or sorted by offset for completion
/// order (one forward pass). The supervisor's memory stays small however many records the job has.
pub fn finalize(journal: &Path, results: &Path, order: Order, items: u64) -> Result<u64, Error> {
    let read_error = |source| Error::Journal {
        path: journal.to_path_buf(),
        source,
    };
    let write_error = |source| Error::Results {
        path: results.to_path_buf(),
        source,
    };
    // Every line after the header was written by us (or kept by recovery), so each is a record ending in '\n'.
    // Where each item's last line is, by item: that is input order.
    let mut latest: Vec<(u64, u32)> = vec![(NO_LINE, 0); items as usize];
    for_each_record(journal, |offset, line| {
        if let Some(item) = item_of(line).filter(|&item| item < items) {
            latest[item as usize] = (offset, u32::try_from(line.len()).unwrap_or(u32::MAX));
        }
        Ok(())
    })
    .map_err(read_error)?;
    latest.retain(|&(offset, _)| offset != NO_LINE);
    if order == Order::Completion {
        // Journal order: one forward pass, skipping the lines an item's later line replaced.
        latest.sort_unstable();
    }
    let temp = temp_beside(results);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&temp).map_err(write_error)?);
    let mut reader = BufReader::with_capacity(1 << 20, File::open(journal).map_err(read_error)?);
    let mut position = 0u64;
    let mut line = Vec::new();
    for &(offset, len) in &latest {
        if offset != position {
            reader
                .seek_relative(offset as i64 - position as i64)
                .map_err(read_error)?;
        }
        line.resize(len as usize, 0);
        reader.read_exact(&mut line).map_err(read_error)?;
        position = offset + u64::from(len);
        out.write_all(&line).map_err(write_error)?;
    }
    let written = latest.len() as u64;
    let file = out.into_inner().map_err(|error| write_error(error.into_error()))?;
    file.sync_all().map_err(write_error)?;
    std::fs::rename(&temp, results).map_err(write_error)?;
    sync_parent(results).map_err(write_error)?;
    remove_stale_temps(results);
    remove_stale_temps(journal);
    Ok(written)
}

/// Removes temporary files a killed run left beside `path` (`.<name>.tmp-<pid>` and `.<name>.staging-<pid>`
/// of a process that is gone).
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let prefixes = [format!(".{name}.tmp-"), format!(".{name}.staging-")];
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else { continue };
        let pid = prefixes
            .iter()
            .find_map(|prefix| file_name.strip_prefix(prefix.as_str())?.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The item of a journal line. Records start with `{"item":N,` (we write them); anything else is parsed.
fn item_of(line: &[u8]) -> Option<u64> {
    if let Some(rest) = line.strip_prefix(b"{\"item\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits) == Some(&b',') {
            return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
        }
    }
    serde_json::from_slice::<Line<'_>>(line).ok().map(|line| line.item)
}

/// A temporary path in the same folder as `path` (so that renaming it over `path` is atomic).
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Makes a rename in `path`'s folder durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
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
        let journal = Journal::recover(&path, &fingerprint()).expect("recovers");
        assert_eq!(journal.lines.len(), 3, "{:?}", journal.dropped);
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
        let done = journal.done(10, false);
        assert_eq!((done.ok, done.failed), (2, 1));
        assert_eq!(done.done.iter().filter(|&&d| d).count(), 3);
        assert!(done.done[0] && done.done[3] && done.done[5] && !done.done[4]);
        let retry = journal.done(10, true);
        assert!(!retry.done[3] && retry.failed == 0);
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
        let journal = Journal::recover(&path, &sharded).expect("recovers");
        assert_eq!(journal.lines.len(), 5, "{:?}", journal.dropped);
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
        match Journal::recover(&path, &other) {
            Err(Error::JournalMismatch { changes, .. }) => assert!(
                changes.contains("the shard changed: the journal is of shard 1/2, this run is shard 0/2"),
                "{changes}"
            ),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        match Journal::recover(&path, &fingerprint()) {
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
        match Journal::recover(&path, &now) {
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

    #[test]
    fn big_integers_are_read_back_exactly() {
        assert_eq!(
            value_from_json("333333328333333350000000"),
            Value::UInt(333_333_328_333_333_350_000_000)
        );
        assert_eq!(value_from_json("-5"), Value::Int(-5));
        assert_eq!(value_from_json("2.5"), Value::Float(2.5));
        assert_eq!(value_from_json("\"abc\""), Value::Text("abc".into()));
        assert_eq!(
            value_from_json("[1,null]"),
            Value::List(vec![Value::UInt(1), Value::Null])
        );
    }
}
