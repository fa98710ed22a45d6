//! From a validated job spec to a run plan: the task checked against its input, and the list of items.
//!
//! Items are listed once, before any worker starts: sub-ranges are computed, a `file` input is split into
//! line-aligned byte ranges (by mapping it and looking for the newline after each boundary — only those pages
//! are touched), a `glob` is expanded and sorted. Listing runs on tokio's blocking pool so that a slow
//! filesystem does not stall the runtime.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use builtins::{InputKind, TaskInfo};
use shared::item::{Batch, BatchItems, Chunk, FetchedBody, InputPlan, range_item_count};
use shared::job::{InputSpec, JobSpec, Split};

use crate::error::Error;
use crate::results::InputDesc;

/// The items of a job, in input order.
#[derive(Debug)]
pub enum Items {
    Range {
        start: u64,
        end: u64,
        chunk: u64,
    },
    Chunks {
        path: PathBuf,
        chunks: Vec<Chunk>,
    },
    Files(Vec<PathBuf>),
    /// A `urls` input: item `i` is the body of `urls[i]`, fetched by the supervisor (see [`crate::fetch`]).
    Urls {
        path: PathBuf,
        urls: Arc<Vec<String>>,
    },
}

/// The kind of items a job's input produces.
pub fn input_kind(input: &InputSpec) -> InputKind {
    match input {
        InputSpec::Range { .. } => InputKind::Range,
        InputSpec::File {
            split: Split::Lines, ..
        } => InputKind::Chunks,
        InputSpec::File { split: Split::None, .. } | InputSpec::Glob { .. } | InputSpec::Urls { .. } => {
            InputKind::WholeFiles
        }
    }
}

/// Checks `[task]`: the builtin exists, accepts its `args`, and accepts the job's kind of input.
pub fn check_task(spec: &JobSpec) -> Result<Option<&'static TaskInfo>, Error> {
    let task = &spec.task;
    if task.user.is_some() {
        // Placeholders, programs and options were checked when the job file was loaded.
        return Ok(None);
    }
    let Some(info) = builtins::lookup(&task.builtin) else {
        let names: Vec<&str> = builtins::all().iter().map(|info| info.name).collect();
        return Err(spec
            .error_at(
                task.builtin_span.clone(),
                &format!(
                    "unknown builtin `{}`: expected one of {}",
                    task.builtin,
                    names.join(", ")
                ),
            )
            .into());
    };
    if let Err(message) = (info.build)(&task.args) {
        return Err(spec.error_at(task.args_span.clone(), &message).into());
    }
    let kind = input_kind(&spec.input);
    if !info.inputs.contains(&kind) {
        let accepted: Vec<&str> = info.inputs.iter().map(|kind| kind.describe()).collect();
        let hint = match (info.name, kind) {
            (_, InputKind::Chunks) if info.inputs.contains(&InputKind::WholeFiles) => {
                " (use a `glob` input, or `split = \"none\"` to make the file one item)"
            }
            _ => "",
        };
        return Err(spec
            .error_at(
                task.builtin_span.clone(),
                &format!(
                    "task `{}` takes {} but this job's input gives {}{hint}",
                    info.name,
                    accepted.join(" or "),
                    kind.describe()
                ),
            )
            .into());
    }
    Ok(Some(info))
}

/// Makes the task's `path` arguments (those an [`ArgInfo`](builtins::ArgInfo) documents with kind `path`)
/// absolute, relative to the job file's folder like every other path in a job file. Workers run in the
/// supervisor's current folder, which need not be the job's, so this is done here, before the args are sent.
pub fn resolve_path_args(spec: &mut JobSpec, info: &TaskInfo) {
    let dir = spec.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let serde_json::Value::Object(args) = &mut spec.task.args else {
        return;
    };
    for arg in info.args.iter().filter(|arg| arg.kind == "path") {
        if let Some(serde_json::Value::String(value)) = args.get_mut(arg.name) {
            let path = Path::new(value.as_str());
            if path.is_relative() && !value.is_empty() {
                *value = dir.join(path).display().to_string();
            }
        }
    }
}

impl Items {
    /// Lists the items of the job's input. A glob that matches nothing or is malformed is reported at its place
    /// in the job file.
    pub async fn list(spec: &JobSpec) -> Result<Items, Error> {
        let input = spec.input.clone();
        let listed = tokio::task::spawn_blocking(move || Items::list_blocking(&input))
            .await
            .map_err(|join| Error::Internal {
                message: format!("listing input failed: {join}"),
            })?;
        listed.map_err(|error| match error {
            Error::GlobNoMatch { .. } | Error::InputUnreadable { .. } => {
                spec.error_at(spec.input_span.clone(), &error.to_string()).into()
            }
            Error::GlobInvalid { pattern, message } => {
                let message = glob_syntax_message(spec, &pattern, &message);
                spec.error_at(spec.input_span.clone(), &message).into()
            }
            other => other,
        })
    }

    fn list_blocking(input: &InputSpec) -> Result<Items, Error> {
        match input {
            InputSpec::Range { start, end, chunk } => Ok(Items::Range {
                start: *start,
                end: *end,
                chunk: *chunk,
            }),
            InputSpec::File {
                path,
                split,
                chunk_bytes,
            } => {
                // The file is read at each chunk boundary only, not mapped: the supervisor's memory stays
                // independent of the input's size (mapping it would fault in ~64 KiB around every boundary).
                let unreadable = |source| Error::InputUnreadable {
                    path: path.clone(),
                    source,
                };
                let file = std::fs::File::open(path).map_err(unreadable)?;
                let size = file.metadata().map_err(unreadable)?.len();
                let chunks = match split {
                    Split::Lines => {
                        line_chunks(size, *chunk_bytes, |at, buffer| file.read_at(buffer, at)).map_err(unreadable)?
                    }
                    Split::None => vec![Chunk { offset: 0, len: size }],
                };
                Ok(Items::Chunks {
                    path: path.clone(),
                    chunks,
                })
            }
            InputSpec::Glob { pattern } => {
                let entries = glob::glob(pattern).map_err(|error| Error::GlobInvalid {
                    pattern: pattern.clone(),
                    message: format!("{} at character {}", error.msg, error.pos),
                })?;
                let mut files = Vec::new();
                let mut skipped = 0;
                for entry in entries {
                    let path = entry.map_err(|error| Error::InputUnreadable {
                        path: error.path().to_path_buf(),
                        source: std::io::Error::new(error.error().kind(), error.error().to_string()),
                    })?;
                    if path.is_file() {
                        files.push(path);
                    } else {
                        skipped += 1;
                    }
                }
                if files.is_empty() {
                    return Err(Error::GlobNoMatch {
                        pattern: pattern.clone(),
                        skipped,
                    });
                }
                files.sort();
                Ok(Items::Files(files))
            }
            InputSpec::Urls { path, .. } => Ok(Items::Urls {
                path: path.clone(),
                urls: Arc::new(read_urls(path)?),
            }),
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Items::Range { start, end, chunk } => range_item_count(*start, *end, *chunk),
            Items::Chunks { chunks, .. } => chunks.len() as u64,
            Items::Files(files) => files.len() as u64,
            Items::Urls { urls, .. } => urls.len() as u64,
        }
    }

    /// The files of a glob input (empty for other inputs).
    pub fn files(&self) -> &[PathBuf] {
        match self {
            Items::Files(files) => files,
            Items::Range { .. } | Items::Chunks { .. } | Items::Urls { .. } => &[],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What every worker is told about the input at start-up. `arena` is the path of the fetched-body arena, for
    /// a `urls` input.
    pub fn input_plan(&self, arena: Option<&Path>) -> InputPlan {
        match self {
            Items::Urls { .. } => InputPlan::Arena {
                path: arena.map(Path::to_path_buf).unwrap_or_default(),
            },
            Items::Range { start, end, chunk } => InputPlan::Range {
                start: *start,
                end: *end,
                chunk: *chunk,
            },
            Items::Chunks { path, .. } => InputPlan::File { path: path.clone() },
            Items::Files(_) => InputPlan::Files,
        }
    }

    /// Largest batch for this kind of input: descriptors must keep messages small.
    pub fn batch_cap(&self) -> u64 {
        match self {
            Items::Range { .. } => 1 << 20,
            Items::Chunks { .. } => 4096,
            Items::Files(_) | Items::Urls { .. } => 1024,
        }
    }

    /// The batch of items `first .. first + len`. For a `urls` input, `body` gives each item's slot in the
    /// arena (the dispatcher knows them; an item without one gets an empty body).
    pub fn batch(&self, id: u64, first: u64, len: u64, body: impl Fn(u64) -> Option<(u64, u64)>) -> Batch {
        let span = first as usize..(first + len) as usize;
        let items = match self {
            Items::Urls { urls, .. } => BatchItems::Fetched(
                (first..first + len)
                    .map(|item| {
                        let (offset, len) = body(item).unwrap_or((0, 0));
                        FetchedBody {
                            offset,
                            len,
                            url: urls[item as usize].clone(),
                        }
                    })
                    .collect(),
            ),
            Items::Range { .. } => BatchItems::Range { count: len },
            Items::Chunks { chunks, .. } => BatchItems::Chunks(chunks[span].to_vec()),
            Items::Files(files) => BatchItems::Files(files[span].to_vec()),
        };
        Batch { id, first, items }
    }

    /// The input of item `index`, for its record.
    pub fn describe(&self, index: u64) -> InputDesc {
        match self {
            Items::Range { start, end, chunk } => {
                let lo = start + index * chunk;
                InputDesc::Range {
                    start: lo,
                    end: lo.saturating_add(*chunk).min(*end),
                }
            }
            Items::Chunks { chunks, .. } => {
                let chunk = chunks[index as usize];
                InputDesc::Chunk {
                    offset: chunk.offset,
                    len: chunk.len,
                }
            }
            Items::Files(files) => InputDesc::File {
                path: files[index as usize].clone(),
            },
            Items::Urls { urls, .. } => InputDesc::Url {
                url: urls[index as usize].clone(),
            },
        }
    }
}

/// A glob syntax error in terms of the pattern as written in the job file: the pattern the supervisor expands is
/// absolute (the job's folder, escaped, then the pattern), so its byte positions mean nothing to the user.
fn glob_syntax_message(spec: &JobSpec, pattern: &str, message: &str) -> String {
    let folder = spec
        .path
        .parent()
        .map(|dir| glob::Pattern::escape(&dir.to_string_lossy()));
    let prefix = folder.map(|folder| format!("{folder}/")).unwrap_or_default();
    // glob counts positions in characters from 0.
    let (written, offset) = match pattern.strip_prefix(&prefix) {
        Some(rest) if !prefix.is_empty() => (rest, prefix.chars().count()),
        _ => (pattern, 0),
    };
    let detail = match message
        .rsplit_once(" at character ")
        .map(|(what, at)| (what, at.parse::<usize>()))
    {
        Some((what, Ok(at))) => format!("{what} at character {}", at.saturating_sub(offset) + 1),
        _ => message.to_string(),
    };
    format!("`glob = \"{written}\"` is not a valid pattern: {detail}; expected a pattern such as `images/*.jpg`")
}

/// Reads a urls file: one URL per line; blank lines and lines starting with `#` (after leading blanks) are
/// skipped. Every URL must be absolute `http://` or `https://` with a host; the first that is not is reported
/// with its line number.
pub fn read_urls(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read(path).map_err(|source| Error::InputUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |line: usize, message: String| Error::UrlInvalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut urls = Vec::new();
    for (number, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = number + 1;
        let raw = std::str::from_utf8(raw).map_err(|_| invalid(line, "not UTF-8 text".into()))?;
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let url = reqwest::Url::parse(entry).map_err(|error| {
            invalid(
                line,
                format!("`{entry}` is not a URL ({error}): expected e.g. https://example.org/data.bin"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                line,
                format!("`{entry}`: expected an http:// or https:// URL with a host"),
            ));
        }
        urls.push(entry.to_string());
    }
    if urls.is_empty() {
        return Err(Error::UrlsEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(urls)
}

/// Splits `data` into chunks of about `chunk_bytes`, each ending just after a newline (or at the end).
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
}
