//! Reading what a run wrote: the results file as the supervisor's own [`Record`] type (with [`InputExt`] for the
//! item descriptors), the `--json` summary's fields, and raw JSON numbers compared as text.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

/// One line of the results file: the supervisor's own record type, read with `value` as the type the test
/// expects (`u128` for counts and sums, `String` for digests, `serde_json::Value` for anything).
pub use supervisor::record::{InputDesc, Record};

/// What the tests ask of a record's input; panics name the input when it is not of the kind asked for.
pub trait InputExt {
    fn range(&self) -> (u64, u64);
    fn chunk(&self) -> (u64, u64);
    fn path(&self) -> Option<&Path>;
}

impl InputExt for InputDesc {
    fn range(&self) -> (u64, u64) {
        match self {
            InputDesc::Range { start, end } => (*start, *end),
            _ => panic!("not a range item: {self:?}"),
        }
    }

    fn chunk(&self) -> (u64, u64) {
        match self {
            InputDesc::Chunk { offset, len } => (*offset, *len),
            _ => panic!("not a chunk item: {self:?}"),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            InputDesc::File { path } => Some(path),
            _ => None,
        }
    }
}

/// Every line of the results file, each parsed as a [`Record`]; panics naming the first line that is not one.
pub fn read_records<V: supervisor::record::RecordValue + DeserializeOwned>(path: &Path) -> Vec<Record<V>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read results {}: {error}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: last line is not terminated",
        path.display()
    );
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{}:{}: not a valid record ({error}): {line}", path.display(), n + 1))
        })
        .collect()
}

/// The results file by item, each line parsed as a [`Record`]; panics on a second record of an item, with
/// `context` (the run) in the message.
pub fn records_by_item<V>(path: &Path, context: &str) -> BTreeMap<u64, Record<V>>
where
    V: supervisor::record::RecordValue + DeserializeOwned + std::fmt::Debug,
{
    let mut by_item = BTreeMap::new();
    for record in read_records::<V>(path) {
        let item = record.item;
        if let Some(first) = by_item.insert(item, record) {
            panic!(
                "two records for item {item}: {first:?} and {:?}\n{context}",
                by_item[&item]
            );
        }
    }
    by_item
}

/// Number of complete (newline-terminated) lines in `path` so far; 0 if it does not exist yet.
pub fn complete_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
}

/// The literal JSON text of the number after `"key":` in `json` (so that integers beyond 64 bits are compared
/// exactly, without going through a float).
pub fn raw_number<'a>(json: &'a str, key: &str) -> &'a str {
    let needle = format!("\"{key}\":");
    let at = json.find(&needle).unwrap_or_else(|| panic!("no {needle} in {json}")) + needle.len();
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.' || c == 'e' || c == 'E'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// `summary[key]` as a u64, with the whole summary in the panic message otherwise.
pub fn field_u64(summary: &serde_json::Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no integer `{key}`: {summary}"))
}

/// `worker_pids` of the summary.
pub fn worker_pids(summary: &serde_json::Value) -> Vec<u32> {
    summary["worker_pids"]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no `worker_pids` array: {summary}"))
        .iter()
        .map(|pid| {
            pid.as_u64()
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or_else(|| panic!("bad pid in {summary}"))
        })
        .collect()
}
