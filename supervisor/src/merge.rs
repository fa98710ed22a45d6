//! `supervisor merge`: the shards' results files back into the job's one results file, and the reduction across
//! all of them.
//!
//! Every shard file (`results.shard-0003-of-0016.jsonl`, see [`crate::shard`]) is read and checked against the
//! split: each item of the job must be recorded exactly once, by the shard whose block holds it. Missing shard
//! files, missing items (a shard stopped early: its journal is named, for `--resume`), items recorded twice and
//! items in the wrong shard are all reported, by shard and item, and nothing is written (exit 2). Otherwise the
//! records are written to the results file atomically — by item for `order = "input"`, shard after shard as
//! each finished for `"completion"` — and the values of the `ok` items are reduced as one run would.

use std::collections::BTreeSet;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;
use shared::exit;
use shared::item::Value;
use shared::job::{JobSpec, Order};

use crate::atomic::AtomicFile;
use crate::cli::MergeArgs;
use crate::error::Error;
use crate::journal::{LineIndex, journal_path};
use crate::lock::ResultsLock;
use crate::record::Record;
use crate::report::FailedItem;
use crate::results::{Reducer, Status};
use crate::shard::Shard;

/// Problems listed before the rest are only counted.
const PROBLEMS_SHOWN: usize = 20;

/// What `merge` prints (`--json`).
#[derive(Debug, Serialize)]
pub struct MergeSummary {
    pub job: String,
    pub shards: u64,
    pub items: u64,
    pub ok: u64,
    pub failed: u64,
    pub reduce: String,
    #[serde(serialize_with = "optional_value")]
    pub reduced: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reduce_error: Option<String>,
    pub results: PathBuf,
    /// The first failures (at most 20).
    pub failures: Vec<FailedItem>,
}

/// Merges the shard files of `spec` (a job of `items` items) and prints the summary.
pub fn run(args: &MergeArgs, mut spec: JobSpec, items: u64) -> Result<i32, Error> {
    if let Some(results) = &args.results {
        spec.output.results = Some(std::path::absolute(results).map_err(|source| Error::Results {
            path: results.clone(),
            source,
        })?);
    }
    let Some(results) = spec.output.results.clone() else {
        return Err(Error::MergeIncomplete {
            results: spec.path.clone(),
            problems: "  the job has no results file: set [output] results or pass --results".into(),
        });
    };
    let count = match args.shards {
        Some(count) => count,
        None => shard_count_from_files(&results)?,
    };
    // No run of the job writes the merged file meanwhile, nor another merge.
    let _lock = ResultsLock::acquire(&results)?;
    let merged = merge(
        &results,
        count,
        items,
        spec.output.order,
        Reducer::new(spec.output.reduce),
    )?;
    let summary = MergeSummary {
        job: spec.name.clone(),
        shards: count,
        items,
        ok: merged.ok,
        failed: merged.failed,
        reduce: merged.reducer.kind().to_string(),
        reduced: merged.reducer.value(),
        reduce_error: merged.reducer.problem.clone(),
        results,
        failures: merged.failures,
    };
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer(&mut out, &summary)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        print_human(&summary, &mut out)
    };
    let _ = printed.and_then(|()| out.flush());
    Ok(if summary.failed > 0 {
        exit::ITEMS_FAILED
    } else {
        exit::OK
    })
}

fn print_human(summary: &MergeSummary, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: merged {} shard{}: {} items, {} ok, {} failed",
        summary.job,
        summary.shards,
        if summary.shards == 1 { "" } else { "s" },
        summary.items,
        summary.ok,
        summary.failed
    )?;
    crate::report::write_reduced(
        out,
        &summary.reduce,
        summary.reduced.as_ref(),
        summary.reduce_error.as_deref(),
    )?;
    writeln!(out, "results: {}", summary.results.display())?;
    if !summary.failures.is_empty() {
        writeln!(
            out,
            "failed items{}:",
            if summary.failed > 20 { " (first 20)" } else { "" }
        )?;
        for failed in &summary.failures {
            writeln!(
                out,
                "  item {}: {}: {}",
                failed.item, failed.failure.kind, failed.failure.message
            )?;
        }
    }
    Ok(())
}

fn optional_value<S: serde::Serializer>(value: &Option<Value>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.json().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// The shard count named by the shard files beside `results`; they must all agree.
fn shard_count_from_files(results: &Path) -> Result<u64, Error> {
    let dir = results.parent().unwrap_or(Path::new("."));
    let mut counts = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Some(count) = shard_file_count(results, &entry.path()) {
                counts.insert(count);
            }
        }
    }
    let example = Shard { index: 0, count: 4 }.results_path(results);
    match counts.len() {
        1 => Ok(counts.into_iter().next().unwrap_or(1)),
        0 => Err(Error::MergeIncomplete {
            results: results.to_path_buf(),
            problems: format!(
                "  no shard files found in {} (named like {})",
                dir.display(),
                example
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned())
            ),
        }),
        _ => Err(Error::MergeIncomplete {
            results: results.to_path_buf(),
            problems: format!(
                "  shard files of different shard counts are there ({}): pass --shards N to choose",
                counts.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// The shard count of `path` if it is a shard file of `results` (its name is `results_path` of some shard).
fn shard_file_count(results: &Path, path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let marker = name.find(".shard-")?;
    let rest = &name[marker + ".shard-".len()..];
    let (index, rest) = rest.split_once("-of-")?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let count: u64 = rest[..digits].parse().ok()?;
    let index: u64 = index.parse().ok()?;
    let shard = Shard::new(index, count).ok()?;
    (shard.results_path(results) == path).then_some(count)
}

/// What the shards recorded together.
struct Merged {
    ok: u64,
    failed: u64,
    reducer: Reducer,
    failures: Vec<FailedItem>,
}

/// Checks the `count` shard files of `results` and writes the merged file.
///
/// Each shard file is streamed twice (checked and indexed, then copied by item or in its own order): memory
/// follows the runs of items in the shard files (see [`LineIndex`]), not the job's item count or the files' size.
fn merge(results: &Path, count: u64, items: u64, order: Order, mut reducer: Reducer) -> Result<Merged, Error> {
    let mut problems = Vec::new();
    let mut missing_shards = Vec::new();
    let write_error = |source| Error::Results {
        path: results.to_path_buf(),
        source,
    };
    let mut out = AtomicFile::create(results).map_err(write_error)?;
    let (mut ok, mut failed) = (0, 0);
    let mut failures = Vec::new();
    for index in 0..count {
        let shard = Shard { index, count };
        let span = shard.span(items);
        let path = shard.results_path(results);
        // A shard still running has not written its file yet, or will replace it: name it rather than merge.
        match ResultsLock::acquire(&path) {
            Ok(lock) => drop(lock),
            Err(Error::ResultsLocked { holder, .. }) => {
                problems.push(format!(
                    "shard {shard} (items {}..{}): another run ({holder}) is still writing {}: wait for it",
                    span.start,
                    span.end,
                    path.display()
                ));
                continue;
            }
            Err(error) => return Err(error),
        }
        let read_error = |source| Error::Results {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                missing_shards.push(index);
                problems.push(format!(
                    "shard {shard} (items {}..{}): {} is missing{}",
                    span.start,
                    span.end,
                    path.display(),
                    journal_hint(&path)
                ));
                continue;
            }
            Err(source) => return Err(read_error(source)),
        };
        let mut lines = LineIndex::default();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        let (mut offset, mut number) = (0u64, 0u64);
        loop {
            line.clear();
            let len = std::io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(read_error)?;
            if len == 0 {
                break;
            }
            number += 1;
            let at = offset;
            offset += len as u64;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.is_empty() {
                continue;
            }
            let parsed: Record = match crate::record::parse(text) {
                Ok(parsed) if !parsed.retrying => parsed,
                Ok(_) => {
                    problems.push(format!(
                        "{} line {number}: a journal's retry line, not a final record",
                        path.display()
                    ));
                    continue;
                }
                Err(error) => {
                    problems.push(format!("{} line {number}: not a record ({error})", path.display()));
                    continue;
                }
            };
            let item = parsed.item;
            if item >= items {
                problems.push(format!(
                    "{} line {number}: item {item} is beyond the job's {items} items",
                    path.display(),
                ));
                continue;
            }
            if !span.contains(&item) {
                problems.push(format!(
                    "{} line {number}: item {item} is recorded in shard {shard}'s file (items {}..{}) but belongs to \
                     shard {}/{count}: were the shards run with another shard count or input?",
                    path.display(),
                    span.start,
                    span.end,
                    Shard::owner(item, items, count),
                ));
                continue;
            }
            if lines.contains(item) {
                problems.push(format!("item {item} is recorded twice in {}", path.display()));
                continue;
            }
            lines.push(item, at);
            match parsed.status {
                Status::Ok => {
                    ok += 1;
                    reducer.add(parsed.value.as_ref().unwrap_or(&Value::Null));
                }
                Status::Failed => {
                    failed += 1;
                    if let Some(failure) = parsed.error
                        && failures.len() < 20
                    {
                        failures.push(FailedItem { item, failure });
                    }
                }
            }
        }
        let unrecorded = lines.missing(span.clone());
        if !unrecorded.is_empty() {
            let total: u64 = unrecorded.iter().map(|r| r.end - r.start).sum();
            problems.push(format!(
                "shard {shard} (items {}..{}): {total} item{} missing from {}: {}{}",
                span.start,
                span.end,
                if total == 1 { "" } else { "s" },
                path.display(),
                describe_ranges(&unrecorded),
                journal_hint(&path)
            ));
        }
        if problems.is_empty() {
            let mut write_failed = None;
            let read = lines.read(&path, order == Order::Input, |_, line| {
                // A last line without its newline gets one.
                let newline: &[u8] = if line.ends_with(b"\n") { b"" } else { b"\n" };
                let written = out
                    .writer()
                    .write_all(line)
                    .and_then(|()| out.writer().write_all(newline));
                written.map_err(|error| {
                    write_failed = Some(error);
                    std::io::Error::other("write failed")
                })
            });
            if let Some(error) = write_failed {
                return Err(write_error(error));
            }
            read.map_err(read_error)?;
        }
    }
    if !problems.is_empty() {
        let shown = problems.len().min(PROBLEMS_SHOWN);
        let mut text: Vec<String> = problems[..shown].iter().map(|p| format!("  {p}")).collect();
        if problems.len() > shown {
            text.push(format!("  … and {} more problems", problems.len() - shown));
        }
        if !missing_shards.is_empty() {
            text.push(format!(
                "  missing shards: {} of {count}",
                missing_shards.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
        return Err(Error::MergeIncomplete {
            results: results.to_path_buf(),
            problems: text.join("\n"),
        });
    }
    out.commit(true).map_err(write_error)?;
    Ok(Merged {
        ok,
        failed,
        reducer,
        failures,
    })
}

/// `items 3, 10..20, 31` (the first ten runs).
fn describe_ranges(ranges: &[Range<u64>]) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(10)
        .map(|r| {
            if r.end - r.start == 1 {
                r.start.to_string()
            } else {
                format!("{}..{}", r.start, r.end)
            }
        })
        .collect();
    if ranges.len() > 10 {
        parts.push(format!("… ({} more runs)", ranges.len() - 10));
    }
    format!("items {}", parts.join(", "))
}

/// A hint when the shard's journal is there: the shard stopped early and can be resumed.
fn journal_hint(shard_results: &Path) -> String {
    let journal = journal_path(shard_results);
    if journal.exists() {
        format!(
            " — its journal {} exists: run that shard again with --resume",
            journal.display()
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_items_are_grouped_into_runs() {
        let mut lines = LineIndex::default();
        for (offset, item) in [0, 3, 5].into_iter().enumerate() {
            lines.push(item, offset as u64);
        }
        assert_eq!(lines.missing(0..6), vec![1..3, 4..5]);
        assert_eq!(describe_ranges(&lines.missing(0..6)), "items 1..3, 4");
        assert_eq!(lines.missing(2..u64::MAX), vec![2..3, 4..5, 6..u64::MAX]);
    }

    #[test]
    fn shard_files_are_recognized_by_name() {
        let results = Path::new("/r/out.jsonl");
        assert_eq!(
            shard_file_count(results, Path::new("/r/out.shard-0003-of-0016.jsonl")),
            Some(16)
        );
        assert_eq!(
            shard_file_count(results, Path::new("/r/out.shard-0003-of-0016.jsonl.journal")),
            None
        );
        assert_eq!(
            shard_file_count(results, Path::new("/r/other.shard-0003-of-0016.jsonl")),
            None
        );
        assert_eq!(shard_file_count(results, Path::new("/r/out.shard-3-of-16.jsonl")), None);
    }
}
