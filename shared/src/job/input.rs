//! `[input]`: where the items come from — exactly one source (`range`, `file`, `glob`, `urls` or `lines`) and
//! the keys that go with it.
//!
//! Checked here: which keys go with which source, every value's type and range, and that a range's items can be
//! numbered. Relative paths are resolved against the job file's folder. Left to the supervisor: whether the file
//! exists and is a regular file, and what a glob matches (`supervisor::spec_fs` and the input listing).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::raw::{RawInput, RawRange, Scalar};
use super::value::{self, Checked, Problem, Zero};
use crate::item::range_item_count;

/// Default `[input] chunk_bytes` for file inputs.
pub const DEFAULT_CHUNK_BYTES: u64 = 4 << 20;
/// Default `[input] fetch_concurrency` for `urls` inputs.
pub const DEFAULT_FETCH_CONCURRENCY: usize = 32;
/// Default `[input] fetch_timeout` for `urls` inputs.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `[input] fetch_retries` for `urls` inputs.
pub const DEFAULT_FETCH_RETRIES: u32 = 2;
/// Default `[input] fetch_retry_backoff` for `urls` inputs.
pub const DEFAULT_FETCH_RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Default `[input] max_in_flight_bytes` for `urls` inputs.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 256 << 20;
/// Smallest accepted `[input] max_in_flight_bytes` (one page).
pub const MIN_IN_FLIGHT_BYTES: u64 = 4096;
/// Largest accepted `[input] max_in_flight_bytes` (1 TiB).
pub const MAX_IN_FLIGHT_BYTES: u64 = 1 << 40;
/// Largest accepted `[input] fetch_concurrency`.
pub const MAX_FETCH_CONCURRENCY: u64 = 4096;
/// Most items a `range` may have: 2^53, so that every item number (and count) in the results is exact for any
/// JSON reader, `jq` and JavaScript included, which hold numbers as doubles. At a million items a second that is
/// 285 years of work: a range with more is a mistake, such as `end = 18446744073709551615`.
pub const MAX_RANGE_ITEMS: u64 = 1 << 53;

/// `[input]`: exactly one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// `range = { start, end, chunk }`: items are the sub-ranges `[lo, hi)` of `[start, end)`, `chunk` wide.
    Range { start: u64, end: u64, chunk: u64 },
    /// `file = "…"`: one file, split into items.
    File {
        path: PathBuf,
        split: Split,
        chunk_bytes: u64,
    },
    /// `glob = "…"`: one item per matching regular file, in sorted path order. The pattern is absolute.
    Glob { pattern: String },
    /// `urls = "…"`: a file of URLs, one per line; one item per URL, whose body the supervisor fetches.
    Urls { path: PathBuf, fetch: FetchSpec },
    /// `lines = "…"`: one item per line of a regular file, the line's text without its `\n` or `\r\n`.
    Lines { path: PathBuf },
}

/// How the bodies of a `urls` input are fetched (the `fetch_*` and `max_in_flight_bytes` keys of `[input]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSpec {
    /// `fetch_concurrency`: requests in progress at once.
    pub concurrency: usize,
    /// `fetch_timeout`: time one request may take (connecting, headers, body), not counting the wait for room in
    /// the in-flight budget.
    pub timeout: Duration,
    /// `fetch_retries`: further attempts after a failed request that may succeed later (a connection error, a
    /// timeout, a 5xx, 408 or 429 status).
    pub retries: u32,
    /// `fetch_retry_backoff`: wait before the first retry, doubled for each further one.
    pub retry_backoff: Duration,
    /// `max_in_flight_bytes`: fetched bodies held at once, waiting for or being processed by a worker.
    pub max_in_flight_bytes: u64,
}

/// How a `file` input is split into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Byte ranges of about `chunk_bytes`, each extended to end just after a newline (or at end of file).
    Lines,
    /// The whole file is one item.
    None,
}

/// `[input]` resolved, and where its source is written (for errors found when listing it).
pub(crate) fn input(raw: &Spanned<RawInput>, dir: &Path) -> Checked<(InputSpec, Range<usize>)> {
    let table = raw.get_ref();
    let sources = [
        ("range", table.range.as_ref().map(Spanned::span)),
        ("file", table.file.as_ref().map(Spanned::span)),
        ("glob", table.glob.as_ref().map(Spanned::span)),
        ("urls", table.urls.as_ref().map(Spanned::span)),
        ("lines", table.lines.as_ref().map(Spanned::span)),
    ];
    let given: Vec<(&str, Range<usize>)> = sources
        .into_iter()
        .filter_map(|(name, span)| span.map(|span| (name, span)))
        .collect();
    let (source, source_span) = match given.as_slice() {
        [(source, span)] => (*source, span.clone()),
        _ => {
            let found: Vec<&str> = given.iter().map(|(name, _)| *name).collect();
            let found = if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            };
            return Err(Problem::at(
                raw.span(),
                format!(
                    "[input] needs exactly one source: `range`, `file`, `glob`, `urls` or `lines` (found: {found})"
                ),
            ));
        }
    };
    // Keys that belong to one source only.
    let belongs = [
        ("split", &table.split, "file"),
        ("chunk_bytes", &table.chunk_bytes, "file"),
        ("fetch_concurrency", &table.fetch_concurrency, "urls"),
        ("fetch_timeout", &table.fetch_timeout, "urls"),
        ("fetch_retries", &table.fetch_retries, "urls"),
        ("fetch_retry_backoff", &table.fetch_retry_backoff, "urls"),
        ("max_in_flight_bytes", &table.max_in_flight_bytes, "urls"),
    ];
    for (key, value, owner) in belongs {
        if let Some(value) = value
            && owner != source
        {
            return Err(Problem::at(
                value.span(),
                format!("`{key}` applies only to a `{owner}` input"),
            ));
        }
    }
    let spec = match (&table.range, &table.file, &table.glob, &table.urls, &table.lines) {
        (Some(range), ..) => range_input(range)?,
        (_, Some(file), ..) => InputSpec::File {
            path: dir.join(value::nonempty_text("file", file, "a path such as `data/input.txt`")?),
            split: match &table.split {
                None => Split::Lines,
                Some(split) => value::choice("split", split, &[("lines", Split::Lines), ("none", Split::None)])?,
            },
            chunk_bytes: match &table.chunk_bytes {
                None => DEFAULT_CHUNK_BYTES,
                Some(bytes) => value::size("chunk_bytes", bytes, 1, u64::MAX)?,
            },
        },
        (_, _, Some(glob), ..) => {
            let pattern = value::nonempty_text("glob", glob, "a pattern such as `images/*.jpg`")?;
            let pattern = if Path::new(&pattern).is_absolute() {
                pattern
            } else {
                format!("{}/{pattern}", escape_glob(&dir.to_string_lossy()))
            };
            InputSpec::Glob { pattern }
        }
        (_, _, _, Some(urls), _) => InputSpec::Urls {
            path: dir.join(value::nonempty_text("urls", urls, "a path such as `urls.txt`")?),
            fetch: fetch_spec(table)?,
        },
        (_, _, _, _, Some(lines)) => InputSpec::Lines {
            path: dir.join(value::nonempty_text("lines", lines, "a path such as `data/input.txt`")?),
        },
        (None, None, None, None, None) => {
            return Err(Problem::at(raw.span(), "[input] needs exactly one source"));
        }
    };
    Ok((spec, source_span))
}

/// `range = { start, end, chunk }`: a non-empty range whose items can be numbered.
fn range_input(range: &Spanned<RawRange>) -> Checked<InputSpec> {
    let span = range.span();
    let range = range.get_ref();
    let start = value::whole("range.start", &range.start, 0, u64::MAX)?;
    let end = value::whole("range.end", &range.end, 0, u64::MAX)?;
    let chunk = match &range.chunk {
        None => 1,
        Some(chunk) => value::whole("range.chunk", chunk, 1, u64::MAX)?,
    };
    if end < start {
        return Err(Problem::at(
            span,
            format!("range end {end} is below its start {start}: expected start < end"),
        ));
    }
    if end == start {
        return Err(Problem::at(
            span,
            format!("range {start}..{end} is empty (end = start): expected start < end"),
        ));
    }
    let count = range_item_count(start, end, chunk);
    if count > MAX_RANGE_ITEMS {
        return Err(Problem::at(
            span,
            format!(
                "range {start}..{end} in chunks of {chunk} has {count} items: expected at most 2^53 \
                 ({MAX_RANGE_ITEMS}), so that every item number is exact in the results (use a larger `chunk`)"
            ),
        ));
    }
    Ok(InputSpec::Range { start, end, chunk })
}

/// The fetch settings of a `urls` input, defaults applied.
fn fetch_spec(input: &RawInput) -> Checked<FetchSpec> {
    let duration = |value: &Option<Spanned<Scalar>>, key: &str, default: Duration, zero: Zero| match value {
        None => Ok(default),
        Some(value) => value::duration(key, value, zero),
    };
    Ok(FetchSpec {
        concurrency: match &input.fetch_concurrency {
            None => DEFAULT_FETCH_CONCURRENCY,
            // At most 4096, so the conversion cannot fail.
            Some(n) => usize::try_from(value::whole("fetch_concurrency", n, 1, MAX_FETCH_CONCURRENCY)?)
                .unwrap_or(DEFAULT_FETCH_CONCURRENCY),
        },
        timeout: duration(
            &input.fetch_timeout,
            "fetch_timeout",
            DEFAULT_FETCH_TIMEOUT,
            Zero::Refused,
        )?,
        retries: match &input.fetch_retries {
            None => DEFAULT_FETCH_RETRIES,
            Some(n) => value::whole_u32("fetch_retries", n, 0, super::task::MAX_RETRIES)?,
        },
        retry_backoff: duration(
            &input.fetch_retry_backoff,
            "fetch_retry_backoff",
            DEFAULT_FETCH_RETRY_BACKOFF,
            Zero::Allowed,
        )?,
        max_in_flight_bytes: match &input.max_in_flight_bytes {
            None => DEFAULT_MAX_IN_FLIGHT_BYTES,
            // Bodies are held in memory (a mapped arena): more than a machine has is a mistake.
            Some(bytes) => value::size("max_in_flight_bytes", bytes, MIN_IN_FLIGHT_BYTES, MAX_IN_FLIGHT_BYTES)?,
        },
    })
}

/// Escapes glob metacharacters in a literal path prefix.
fn escape_glob(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len());
    for c in literal.chars() {
        match c {
            '*' | '?' | '[' | ']' => {
                escaped.push('[');
                escaped.push(c);
                escaped.push(']');
            }
            _ => escaped.push(c),
        }
    }
    escaped
}
