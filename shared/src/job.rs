//! The job file: its schema, and its validation into a resolved [`JobSpec`].
//!
//! Parsing happens in two steps. First the TOML is read into a raw mirror (`Raw*` types: every table denies
//! unknown keys, values that need checking keep their [`toml::Spanned`] location). Then `JobSpec::from_raw`
//! checks the cross-field rules, parses sizes and counts, and resolves relative paths against the job file's
//! folder. Every error names the file, line and column, and what was expected.
//!
//! What this module does not check: whether the builtin task exists and accepts its `args` (the `child` crate
//! owns the tasks; the supervisor calls it and reports through [`JobSpec::error_at`]), and whether a glob matches
//! anything (the supervisor lists inputs).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use std::time::Duration;

use crate::units::{parse_duration, parse_size};
use crate::usertask::{CommandSpec, Parse, PlaceholderInput, ProcessSpec, StdinMode, UserTask};

/// Largest accepted `[workers] count`.
pub const MAX_WORKERS: usize = 1024;
/// Default `[supervise] max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 20;
/// Default `[supervise] within`.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(10);
/// Default `[supervise] start_timeout`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `[supervise] grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Longest accepted duration (`timeout`, `retry_backoff`, `cpu_limit`, `within`, `grace`): a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
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
/// Largest accepted `[input] fetch_concurrency`.
pub const MAX_FETCH_CONCURRENCY: u64 = 4096;

/// A job file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job file {path}: {}", read_reason(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}\n{snippet}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        /// The offending source line with a caret under the column.
        snippet: String,
    },
}

/// Why a job file cannot be read, in words: "stream did not contain valid UTF-8" is about a TOML file here.
fn read_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::InvalidData => "it is not UTF-8 text: expected a TOML file".to_string(),
        std::io::ErrorKind::IsADirectory => "it is a folder: expected a TOML file".to_string(),
        _ => error.to_string(),
    }
}

/// A validated job, with every path absolute and every default applied.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Absolute path of the job file.
    pub path: PathBuf,
    /// `name`, or the job file's stem.
    pub name: String,
    pub input: InputSpec,
    /// Where the input source (`range`, `file` or `glob`) is written, for errors found when listing it.
    pub input_span: Range<usize>,
    pub task: TaskSpec,
    pub workers: WorkersSpec,
    pub supervise: SuperviseSpec,
    pub output: OutputSpec,
    /// `[shard]`: how the job splits over a cluster scheduler's copies.
    pub shard: ShardSpec,
    source: String,
}

/// `[shard]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardSpec {
    /// `count`: the number of shards, for a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` gives only the index).
    pub count: Option<u64>,
}

/// Largest `[shard] count`.
pub const MAX_SHARDS: u64 = 1_000_000;

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

/// `[task]`.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// `builtin`: the task's name (empty when `user` is set).
    pub builtin: String,
    /// `command`, `worker` or `worker_bin`: the user's own work instead of a builtin.
    pub user: Option<UserTask>,
    pub builtin_span: Range<usize>,
    /// `args` converted to JSON (an empty object when omitted).
    pub args: serde_json::Value,
    pub args_span: Range<usize>,
    /// `timeout`: wall time one item may take before its worker is killed and the item fails with `timeout`.
    pub timeout: Option<Duration>,
    /// `retries`: further runs of a failed item (on a fresh worker when its worker died), default 0.
    pub retries: u32,
    /// `retry_backoff`: wait before the first retry, doubled for each further one; default 0.
    pub retry_backoff: Duration,
}

/// `[workers]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersSpec {
    pub count: WorkerCount,
    pub batch: BatchSize,
    pub executor: Executor,
    pub start: StartMethod,
    /// `memory_limit`: the most heap (RLIMIT_DATA) one worker may allocate; exceeding it fails the item with
    /// `memory`. Read-only mapped input does not count.
    pub memory_limit: Option<u64>,
    /// `cpu_limit`: the most CPU time one item may use (RLIMIT_CPU, whole seconds, rounded up).
    pub cpu_limit: Option<Duration>,
    /// `max_tasks`: a worker is replaced after running this many items.
    pub max_tasks: Option<u64>,
    /// `core_dumps`: allow workers to dump core (off by default).
    pub core_dumps: bool,
    /// Isolation keys (`open_files`, `env_clear`, `env`, `user`, `group`): how each worker process is confined.
    pub isolation: IsolationSpec,
}

/// Default `[workers] open_files`.
pub const DEFAULT_OPEN_FILES: u64 = 1024;

/// Variables a worker keeps with `[workers] env_clear = true` (besides `[workers] env` and every `LC_*`).
pub const ENV_ALLOW_LIST: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "SUPERVISOR_PARENT_PID",
];

/// Whether `name` is kept by `env_clear`: on [`ENV_ALLOW_LIST`], or a locale variable `LC_*`.
pub fn env_allowed(name: &str) -> bool {
    ENV_ALLOW_LIST.contains(&name) || name.starts_with("LC_")
}

/// `[workers]` keys that confine worker processes (see docs/job-file.md and the README's security model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationSpec {
    /// `open_files`: RLIMIT_NOFILE (soft and hard) of each worker; default [`DEFAULT_OPEN_FILES`].
    pub open_files: u64,
    /// `env_clear`: workers keep only [`env_allowed`] variables, plus `env`.
    pub env_clear: bool,
    /// `env`: variables set in every worker (after `env_clear`), sorted by name.
    pub env: Vec<(String, String)>,
    /// `user`: the user (name or numeric id) workers switch to after `Init`; needs a root supervisor.
    pub user: Option<Spanned<String>>,
    /// `group`: the group workers switch to; default the user's primary group.
    pub group: Option<Spanned<String>>,
}

impl IsolationSpec {
    /// Whether any key differs from its default (the keys need worker processes).
    pub fn is_set(&self) -> bool {
        self.open_files != DEFAULT_OPEN_FILES
            || self.env_clear
            || !self.env.is_empty()
            || self.user.is_some()
            || self.group.is_some()
    }
}

/// `[workers] executor`: what runs the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Isolated worker processes (the point of this tool).
    Process,
    /// The same task code on threads of the supervisor's process: no isolation, no limits, no timeouts.
    Thread,
    /// One thread, one batch: the baseline.
    Serial,
}

impl Executor {
    pub fn name(self) -> &'static str {
        match self {
            Executor::Process => "process",
            Executor::Thread => "thread",
            Executor::Serial => "serial",
        }
    }
}

impl WorkersSpec {
    /// The first setting that needs worker processes, when the executor is not `process`: threads cannot be
    /// killed on a timeout, and resource limits would apply to the whole supervisor.
    pub fn process_only_conflict(&self, task: &TaskSpec) -> Option<&'static str> {
        if self.executor == Executor::Process {
            return None;
        }
        [
            (task.timeout.is_some(), "[task] timeout"),
            (self.memory_limit.is_some(), "[workers] memory_limit"),
            (self.cpu_limit.is_some(), "[workers] cpu_limit"),
            (self.max_tasks.is_some(), "[workers] max_tasks"),
            (
                self.start == StartMethod::Forkserver,
                "[workers] start = \"forkserver\"",
            ),
            (self.core_dumps, "[workers] core_dumps"),
            (self.isolation.open_files != DEFAULT_OPEN_FILES, "[workers] open_files"),
            (self.isolation.env_clear, "[workers] env_clear"),
            (!self.isolation.env.is_empty(), "[workers] env"),
            (self.isolation.user.is_some(), "[workers] user"),
            (self.isolation.group.is_some(), "[workers] group"),
        ]
        .into_iter()
        .find_map(|(set, key)| set.then_some(key))
    }
}

/// Why `worker_bin` needs spawned worker processes, for errors.
pub const WORKER_BIN_NEEDS: &str = "a worker_bin is its own program, so it runs only as spawned worker processes \
     (executor = \"process\", start = \"spawn\"); the fork server forks copies of the supervisor, and threads run \
     inside it";

impl WorkersSpec {
    /// The setting that rules out a `worker_bin` task, if any.
    pub fn worker_bin_conflict(&self) -> Option<&'static str> {
        if self.executor != Executor::Process {
            Some("executor = \"thread\" or \"serial\"")
        } else if self.start == StartMethod::Forkserver {
            Some("start = \"forkserver\"")
        } else {
            None
        }
    }
}

/// `[workers] start`: how worker processes are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMethod {
    /// Exec the supervisor binary in worker mode for each worker.
    Spawn,
    /// Fork each worker from a single-threaded helper process started before the async runtime.
    Forkserver,
}

/// `[supervise]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SuperviseSpec {
    /// `max_restarts` within `within`: more worker deaths than this in the window stop the job.
    pub max_restarts: u32,
    pub within: Duration,
    pub halt: Halt,
    /// `grace`: time workers get to finish after a stop request, before SIGKILL.
    pub grace: Duration,
    /// `start_timeout`: the longest a worker may take from its launch to `Ready`; one that takes longer is killed
    /// and counts as a start failure.
    pub start_timeout: Duration,
}

/// `[supervise] halt`: when failures stop the job (GNU parallel's `--halt`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halt {
    pub threshold: HaltThreshold,
    /// `now,` prefix: kill work in progress instead of letting it finish.
    pub now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltThreshold {
    Never,
    /// Stop once this many items failed (`first-failure` is 1).
    Count(u64),
    /// Stop once this percentage of all items failed.
    Percent(f64),
}

impl Halt {
    pub const NEVER: Halt = Halt {
        threshold: HaltThreshold::Never,
        now: false,
    };

    /// Parses `never`, `first-failure`, `fail=N`, `fail=P%`, each optionally prefixed by `now,` or `soon,`.
    pub fn parse(text: &str) -> Result<Halt, String> {
        let expected =
            "expected \"never\", \"first-failure\", \"fail=N\" or \"fail=P%\" (optionally prefixed by \"now,\")";
        let (now, rest) = match text.split_once(',') {
            Some(("now", rest)) => (true, rest),
            Some(("soon", rest)) => (false, rest),
            Some(_) => return Err(format!("`halt = \"{text}\"`: {expected}")),
            None => (false, text),
        };
        let threshold = match rest {
            "never" => HaltThreshold::Never,
            "first-failure" => HaltThreshold::Count(1),
            _ => match rest.strip_prefix("fail=") {
                Some(percent) if percent.ends_with('%') => match percent[..percent.len() - 1].parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => HaltThreshold::Percent(p),
                    _ => return Err(format!("`halt = \"{text}\"`: the percentage must be in (0, 100]")),
                },
                Some(count) => match count.parse::<u64>() {
                    Ok(n) if n >= 1 => HaltThreshold::Count(n),
                    _ => return Err(format!("`halt = \"{text}\"`: {expected}")),
                },
                None => return Err(format!("`halt = \"{text}\"`: {expected}")),
            },
        };
        Ok(Halt { threshold, now })
    }

    /// Whether `failed` failures out of `total` items reach the threshold.
    pub fn reached(&self, failed: u64, total: u64) -> bool {
        match self.threshold {
            HaltThreshold::Never => false,
            HaltThreshold::Count(n) => failed >= n,
            HaltThreshold::Percent(p) => failed > 0 && failed as f64 * 100.0 >= p * total as f64,
        }
    }
}

/// `[workers] count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    /// One per CPU this process may use (affinity mask and cgroup quota honoured).
    Auto,
    Fixed(usize),
}

impl WorkerCount {
    /// The number of workers to start.
    pub fn resolve(self) -> usize {
        match self {
            WorkerCount::Auto => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            WorkerCount::Fixed(n) => n,
        }
    }
}

/// `[workers] batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// Sized from measured per-item time so that a batch is worth its round trip.
    Auto,
    Fixed(u64),
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Absolute path of the JSON-lines results file, or `None` for no file.
    pub results: Option<PathBuf>,
    pub order: Order,
    pub reduce: Reduce,
    /// `journal`: record results durably as they finish (see `--resume`); default true.
    pub journal: bool,
}

/// `[output] order`: the order of records in the results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// By item index (records are held back until all earlier items are done).
    Input,
    /// As items finish.
    Completion,
}

/// `[output] reduce`: how the values of ok items are combined for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    Sum,
    Min,
    Max,
    /// Number of ok items.
    Count,
    None,
}

impl fmt::Display for Reduce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Reduce::Sum => "sum",
            Reduce::Min => "min",
            Reduce::Max => "max",
            Reduce::Count => "count",
            Reduce::None => "none",
        };
        f.write_str(name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    input: Spanned<RawInput>,
    task: Spanned<RawTask>,
    workers: Option<RawWorkers>,
    supervise: Option<RawSupervise>,
    output: Option<RawOutput>,
    shard: Option<RawShard>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShard {
    count: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    range: Option<Spanned<RawRange>>,
    file: Option<Spanned<String>>,
    split: Option<Spanned<Split>>,
    chunk_bytes: Option<Spanned<toml::Value>>,
    glob: Option<Spanned<String>>,
    urls: Option<Spanned<String>>,
    lines: Option<Spanned<String>>,
    fetch_concurrency: Option<Spanned<u64>>,
    fetch_timeout: Option<Spanned<String>>,
    fetch_retries: Option<Spanned<u32>>,
    fetch_retry_backoff: Option<Spanned<String>>,
    max_in_flight_bytes: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    start: u64,
    end: u64,
    chunk: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    builtin: Option<Spanned<String>>,
    args: Option<Spanned<toml::Table>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    retry_backoff: Option<Spanned<String>>,
    // The user's own work (see `crate::usertask`): exactly one of `builtin`, `command`, `worker`, `worker_bin`.
    command: Option<Spanned<Vec<String>>>,
    worker: Option<Spanned<Vec<String>>>,
    worker_bin: Option<Spanned<String>>,
    parse: Option<Spanned<Parse>>,
    stdin: Option<Spanned<StdinMode>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    cwd: Option<Spanned<String>>,
    max_output: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    count: Option<Spanned<toml::Value>>,
    batch: Option<Spanned<toml::Value>>,
    start: Option<StartMethod>,
    executor: Option<Spanned<Executor>>,
    memory_limit: Option<Spanned<toml::Value>>,
    cpu_limit: Option<Spanned<String>>,
    max_tasks: Option<Spanned<u64>>,
    core_dumps: Option<bool>,
    open_files: Option<Spanned<u64>>,
    env_clear: Option<bool>,
    env: Option<Spanned<toml::Table>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSupervise {
    max_restarts: Option<u32>,
    within: Option<Spanned<String>>,
    halt: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
    start_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    results: Option<Spanned<String>>,
    order: Option<Order>,
    reduce: Option<Reduce>,
    journal: Option<bool>,
}

impl JobSpec {
    /// Reads and validates the job file at `path`.
    pub fn load(path: &Path) -> Result<JobSpec, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let path = std::path::absolute(path).map_err(|source| JobError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        JobSpec::parse(&path, text)
    }

    /// Validates job-file `text` as if read from `path` (which must be absolute).
    pub fn parse(path: &Path, text: String) -> Result<JobSpec, JobError> {
        let raw: RawJob = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(error) => {
                let span = error.span().unwrap_or(0..0);
                let message = crate::toml_error::explain(&text, &span, error.message());
                return Err(located(path, &text, span, &message));
            }
        };
        JobSpec::from_raw(path, raw, text)
    }

    fn from_raw(path: &Path, raw: RawJob, source: String) -> Result<JobSpec, JobError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let fail = |span: Range<usize>, message: String| located(path, &source, span, &message);

        let input_span = raw.input.span();
        let input = raw.input.into_inner();
        let given: Vec<&str> = [
            input.range.as_ref().map(|_| "range"),
            input.file.as_ref().map(|_| "file"),
            input.glob.as_ref().map(|_| "glob"),
            input.urls.as_ref().map(|_| "urls"),
            input.lines.as_ref().map(|_| "lines"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none".to_string()
            } else {
                given.join(", ")
            };
            return Err(fail(
                input_span,
                format!(
                    "[input] needs exactly one source: `range`, `file`, `glob`, `urls` or `lines` (found: {found})"
                ),
            ));
        }
        if input.file.is_none() {
            if let Some(split) = &input.split {
                return Err(fail(split.span(), "`split` applies only to a `file` input".into()));
            }
            if let Some(chunk_bytes) = &input.chunk_bytes {
                return Err(fail(
                    chunk_bytes.span(),
                    "`chunk_bytes` applies only to a `file` input".into(),
                ));
            }
        }
        if input.urls.is_none()
            && let Some((key, span)) = fetch_key_without_urls(&input)
        {
            return Err(fail(span, format!("`{key}` applies only to a `urls` input")));
        }
        let source_span = [
            input.range.as_ref().map(Spanned::span),
            input.file.as_ref().map(Spanned::span),
            input.glob.as_ref().map(Spanned::span),
            input.urls.as_ref().map(Spanned::span),
            input.lines.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(input_span);
        let input = if let Some(range) = input.range {
            let range_span = range.span();
            let range = range.into_inner();
            if range.end < range.start {
                return Err(fail(
                    range_span,
                    format!(
                        "range end {} is below its start {}: expected start < end",
                        range.end, range.start
                    ),
                ));
            }
            if range.end == range.start {
                return Err(fail(
                    range_span,
                    format!(
                        "range {}..{} is empty (end = start): expected start < end",
                        range.start, range.end
                    ),
                ));
            }
            let chunk = match range.chunk {
                Some(chunk) if *chunk.get_ref() == 0 => {
                    return Err(fail(chunk.span(), "`chunk` must be at least 1".into()));
                }
                Some(chunk) => chunk.into_inner(),
                None => 1,
            };
            InputSpec::Range {
                start: range.start,
                end: range.end,
                chunk,
            }
        } else if let Some(file) = input.file {
            let split = input.split.map_or(Split::Lines, Spanned::into_inner);
            let chunk_bytes = match input.chunk_bytes {
                None => DEFAULT_CHUNK_BYTES,
                Some(value) => match size_value(value.get_ref()) {
                    Ok(0) => {
                        return Err(fail(value.span(), "`chunk_bytes` must be at least 1 byte".into()));
                    }
                    Ok(bytes) => bytes,
                    Err(message) => {
                        return Err(fail(value.span(), format!("`chunk_bytes`: {message}")));
                    }
                },
            };
            InputSpec::File {
                path: regular_input_file(dir, file, "file", &fail)?,
                split,
                chunk_bytes,
            }
        } else if let Some(glob) = input.glob {
            let span = glob.span();
            let pattern = glob.into_inner();
            if pattern.is_empty() {
                return Err(fail(
                    span,
                    "`glob` is empty: expected a pattern such as `images/*.jpg`".into(),
                ));
            }
            let pattern = if Path::new(&pattern).is_absolute() {
                pattern
            } else {
                format!("{}/{pattern}", escape_glob(&dir.to_string_lossy()))
            };
            InputSpec::Glob { pattern }
        } else if let Some(urls) = input.urls.clone() {
            let span = urls.span();
            let urls_path = dir.join(urls.into_inner());
            match std::fs::metadata(&urls_path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(fail(
                        span,
                        format!("urls file {} is not a regular file", urls_path.display()),
                    ));
                }
                Err(error) => {
                    return Err(fail(
                        span,
                        format!("cannot read urls file {}: {error}", urls_path.display()),
                    ));
                }
            }
            InputSpec::Urls {
                path: urls_path,
                fetch: fetch_spec(&input, &fail)?,
            }
        } else if let Some(lines) = input.lines {
            InputSpec::Lines {
                path: regular_input_file(dir, lines, "lines", &fail)?,
            }
        } else {
            unreachable!("exactly one input source was checked above")
        };

        // Capped at a year: longer is a mistake, and would overflow the nanosecond clocks timeouts are kept in.
        let duration = |value: Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, JobError> {
            value
                .map(|value| match parse_duration(value.get_ref()) {
                    Ok(d) if d > MAX_DURATION => Err(fail(
                        value.span(),
                        format!(
                            "`{key}` = \"{}\" is too long: expected at most 8760h (a year)",
                            value.get_ref()
                        ),
                    )),
                    Ok(d) => Ok(d),
                    Err(message) => Err(fail(value.span(), format!("`{key}`: {message}"))),
                })
                .transpose()
        };
        // A duration that must be above zero (a zero timeout would fail every item at random).
        let positive = |value: Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, JobError> {
            let span = value.as_ref().map(Spanned::span);
            match (duration(value, key)?, span) {
                (Some(d), Some(span)) if d.is_zero() => Err(fail(span, format!("`{key}` must be more than 0"))),
                (d, _) => Ok(d),
            }
        };
        let timeout = positive(raw.task.get_ref().timeout.clone(), "timeout")?;
        let retry_backoff =
            duration(raw.task.get_ref().retry_backoff.clone(), "retry_backoff")?.unwrap_or(Duration::ZERO);
        let task_span = raw.task.span();
        let raw_task = raw.task.into_inner();
        let user = user_task(&raw_task, task_span.clone(), &input, dir, &fail)?;
        // Where the task is named: `builtin`, or the `command`, `worker` or `worker_bin` that replaces it.
        let builtin_span = [
            raw_task.builtin.as_ref().map(Spanned::span),
            raw_task.command.as_ref().map(Spanned::span),
            raw_task.worker.as_ref().map(Spanned::span),
            raw_task.worker_bin.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(task_span);
        let task = TaskSpec {
            timeout,
            retries: raw_task.retries.unwrap_or(0),
            retry_backoff,
            builtin: raw_task
                .builtin
                .as_ref()
                .map(|b| b.get_ref().clone())
                .unwrap_or_default(),
            user,
            args_span: raw_task.args.as_ref().map_or(builtin_span.clone(), Spanned::span),
            builtin_span,
            args: match raw_task.args {
                None => serde_json::Value::Object(Default::default()),
                Some(args) => {
                    let span = args.span();
                    serde_json::to_value(args.into_inner())
                        .map_err(|error| fail(span, format!("`args` cannot be represented as JSON: {error}")))?
                }
            },
        };

        let raw_workers = raw.workers.unwrap_or_default();
        let count = match raw_workers.count {
            None => WorkerCount::Auto,
            Some(value) => match value.get_ref() {
                toml::Value::String(s) if s == "auto" => WorkerCount::Auto,
                toml::Value::Integer(n) if (1..=MAX_WORKERS as i64).contains(n) => WorkerCount::Fixed(*n as usize),
                other => {
                    return Err(fail(
                        value.span(),
                        format!("`count` is {other}: expected \"auto\" or an integer from 1 to {MAX_WORKERS}"),
                    ));
                }
            },
        };
        let batch = match raw_workers.batch {
            None => BatchSize::Auto,
            Some(value) => match value.get_ref() {
                toml::Value::String(s) if s == "auto" => BatchSize::Auto,
                toml::Value::Integer(n) if *n >= 1 => BatchSize::Fixed(*n as u64),
                other => {
                    return Err(fail(
                        value.span(),
                        format!("`batch` is {other}: expected \"auto\" or an integer of at least 1"),
                    ));
                }
            },
        };

        let memory_limit = match raw_workers.memory_limit {
            None => None,
            Some(value) => match size_value(value.get_ref()) {
                Ok(bytes) if bytes >= 1 << 20 => Some(bytes),
                Ok(_) => return Err(fail(value.span(), "`memory_limit` must be at least 1MiB".into())),
                Err(message) => return Err(fail(value.span(), format!("`memory_limit`: {message}"))),
            },
        };
        let max_tasks = match raw_workers.max_tasks {
            Some(n) if *n.get_ref() == 0 => return Err(fail(n.span(), "`max_tasks` must be at least 1".into())),
            other => other.map(Spanned::into_inner),
        };
        let executor_span = raw_workers.executor.as_ref().map(Spanned::span);
        let isolation = isolation_spec(
            raw_workers.open_files,
            raw_workers.env_clear,
            raw_workers.env,
            raw_workers.user,
            raw_workers.group,
        )
        .map_err(|(span, message)| fail(span, message))?;
        let workers = WorkersSpec {
            count,
            batch,
            executor: raw_workers.executor.map_or(Executor::Process, Spanned::into_inner),
            start: raw_workers.start.unwrap_or(StartMethod::Spawn),
            memory_limit,
            cpu_limit: positive(raw_workers.cpu_limit, "cpu_limit")?,
            max_tasks,
            core_dumps: raw_workers.core_dumps.unwrap_or(false),
            isolation,
        };
        if let (Some(key), Some(span)) = (workers.process_only_conflict(&task), executor_span) {
            let executor = workers.executor.name();
            return Err(fail(
                span,
                format!("{key} needs worker processes; it cannot apply to executor = \"{executor}\""),
            ));
        }

        if let (Some(UserTask::WorkerBin { .. }), Some(key)) = (&task.user, workers.worker_bin_conflict()) {
            return Err(fail(
                task.builtin_span.clone(),
                format!("`worker_bin` cannot be used with {key}: {WORKER_BIN_NEEDS}"),
            ));
        }

        let raw_supervise = raw.supervise.unwrap_or_default();
        let halt = match raw_supervise.halt {
            None => Halt::NEVER,
            Some(text) => Halt::parse(text.get_ref()).map_err(|message| fail(text.span(), message))?,
        };
        let supervise = SuperviseSpec {
            max_restarts: raw_supervise.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            within: positive(raw_supervise.within, "within")?.unwrap_or(DEFAULT_RESTART_WINDOW),
            halt,
            grace: duration(raw_supervise.grace, "grace")?.unwrap_or(DEFAULT_GRACE),
            start_timeout: positive(raw_supervise.start_timeout, "start_timeout")?.unwrap_or(DEFAULT_START_TIMEOUT),
        };

        let raw_output = raw.output.unwrap_or(RawOutput {
            results: None,
            order: None,
            reduce: None,
            journal: None,
        });
        let results = match raw_output.results {
            None => None,
            Some(results) => {
                Some(results_path(dir, results.get_ref()).map_err(|message| fail(results.span(), message))?)
            }
        };
        let output = OutputSpec {
            results,
            order: raw_output.order.unwrap_or(Order::Input),
            reduce: raw_output.reduce.unwrap_or(Reduce::None),
            journal: raw_output.journal.unwrap_or(true),
        };

        let shard = match raw.shard.unwrap_or_default().count {
            Some(count) if !(1..=MAX_SHARDS).contains(count.get_ref()) => {
                return Err(fail(
                    count.span(),
                    format!(
                        "`count` is {}: expected an integer from 1 to {MAX_SHARDS}",
                        count.get_ref()
                    ),
                ));
            }
            count => ShardSpec {
                count: count.map(Spanned::into_inner),
            },
        };

        let name = raw.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "job".to_string(), |stem| stem.to_string_lossy().into_owned())
        });
        Ok(JobSpec {
            path: path.to_path_buf(),
            name,
            input,
            input_span: source_span,
            task,
            workers,
            supervise,
            output,
            shard,
            source,
        })
    }

    /// The job file's text, as read.
    pub fn source_text(&self) -> &str {
        &self.source
    }

    /// An error located at `span` of this job file (for checks made after loading, such as task arguments).
    pub fn error_at(&self, span: Range<usize>, message: &str) -> JobError {
        located(&self.path, &self.source, span, message)
    }
}

/// `[output] results` resolved against the job's folder: a file path, not an existing folder (the results are
/// written by renaming onto it at the end, which would fail only after the whole job ran).
fn results_path(dir: &Path, results: &str) -> Result<PathBuf, String> {
    if results.is_empty() || results.ends_with('/') {
        return Err(format!(
            "`results = \"{results}\"` is not a file name: expected a path such as `results/out.jsonl`"
        ));
    }
    let path = dir.join(results);
    if path.is_dir() {
        return Err(format!(
            "`results` {} is a folder: expected a file path such as `{}/out.jsonl`",
            path.display(),
            results.trim_end_matches('/')
        ));
    }
    Ok(path)
}

/// "a folder", "a character device"… for messages about a path that should be a regular file.
fn file_type_name(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Validates the isolation keys of `[workers]`; an error is a span and a message.
fn isolation_spec(
    open_files: Option<Spanned<u64>>,
    env_clear: Option<bool>,
    env: Option<Spanned<toml::Table>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
) -> Result<IsolationSpec, (Range<usize>, String)> {
    let open_files = match open_files {
        None => DEFAULT_OPEN_FILES,
        Some(n) if !(16..=1 << 20).contains(n.get_ref()) => {
            return Err((
                n.span(),
                format!(
                    "`open_files` is {}: expected an integer from 16 to 1048576",
                    n.get_ref()
                ),
            ));
        }
        Some(n) => n.into_inner(),
    };
    let mut variables = Vec::new();
    if let Some(table) = env {
        let span = table.span();
        for (name, value) in table.into_inner() {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err((
                    span,
                    format!("`env`: `{name}` is not a variable name (it must be non-empty, without `=` or NUL)"),
                ));
            }
            match value {
                toml::Value::String(text) if !text.contains('\0') => variables.push((name, text)),
                other => {
                    return Err((
                        span,
                        format!("`env.{name}` is {other}: expected a string without NUL characters"),
                    ));
                }
            }
        }
    }
    for (key, name) in [("user", &user), ("group", &group)] {
        if let Some(name) = name
            && (name.get_ref().is_empty() || name.get_ref().contains('\0'))
        {
            return Err((
                name.span(),
                format!("`{key}` is empty: expected a name such as \"nobody\" or an id"),
            ));
        }
    }
    Ok(IsolationSpec {
        open_files,
        env_clear: env_clear.unwrap_or(false),
        env: variables,
        user,
        group,
    })
}

/// Resolves `[task] command`, `worker` or `worker_bin` and their options; `None` for a `builtin` task. Exactly
/// one of the four must be given, and the options must fit the kind chosen.
fn user_task(
    raw: &RawTask,
    task_span: Range<usize>,
    input: &InputSpec,
    dir: &Path,
    fail: &impl Fn(Range<usize>, String) -> JobError,
) -> Result<Option<UserTask>, JobError> {
    let given: Vec<(&str, Range<usize>)> = [
        raw.builtin.as_ref().map(|v| ("builtin", v.span())),
        raw.command.as_ref().map(|v| ("command", v.span())),
        raw.worker.as_ref().map(|v| ("worker", v.span())),
        raw.worker_bin.as_ref().map(|v| ("worker_bin", v.span())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let kind = match given.as_slice() {
        [] => {
            return Err(fail(
                task_span,
                "[task] needs exactly one of `builtin`, `command`, `worker` or `worker_bin` (found none)".into(),
            ));
        }
        [(kind, _)] => *kind,
        [(first, _), (second, span), ..] => {
            return Err(fail(
                span.clone(),
                format!(
                    "[task] needs exactly one of `builtin`, `command`, `worker` or `worker_bin` (found `{first}` and `{second}`)"
                ),
            ));
        }
    };
    // Options that only some kinds take.
    let options = [
        ("parse", raw.parse.as_ref().map(Spanned::span), &["command"][..]),
        ("stdin", raw.stdin.as_ref().map(Spanned::span), &["command"][..]),
        ("env", raw.env.as_ref().map(Spanned::span), &["command", "worker"][..]),
        ("cwd", raw.cwd.as_ref().map(Spanned::span), &["command", "worker"][..]),
        (
            "max_output",
            raw.max_output.as_ref().map(Spanned::span),
            &["command", "worker"][..],
        ),
        ("args", raw.args.as_ref().map(Spanned::span), &["builtin"][..]),
    ];
    for (key, span, kinds) in options {
        if let Some(span) = span
            && !kinds.contains(&kind)
        {
            let takes: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
            return Err(fail(
                span,
                format!("`{key}` applies only to a {} task, not to `{kind}`", takes.join(" or ")),
            ));
        }
    }
    let argv = |value: &Spanned<Vec<String>>| -> Result<Vec<String>, JobError> {
        let argv = value.get_ref().clone();
        let argv = match argv.first() {
            None => Err(fail(
                value.span(),
                format!(
                    "`{kind}` is empty: expected a program and its arguments, e.g. [\"python3\", \"score.py\", \"{{path}}\"]"
                ),
            )),
            Some(program) if program.is_empty() => {
                Err(fail(value.span(), format!("`{kind}`: the program name is empty")))
            }
            // A relative program path is relative to the job file's folder, like every other path in it.
            Some(program) if program.contains('/') && !Path::new(program).is_absolute() => {
                let mut argv = argv.clone();
                argv[0] = dir.join(program).to_string_lossy().into_owned();
                Ok(argv)
            }
            Some(_) => Ok(argv),
        }?;
        // A program that cannot be started would fail every item: say so now, at its place.
        find_program(&argv[0])
            .map_err(|message| fail(value.span(), format!("`{kind}`: program `{}` {message}", argv[0])))?;
        Ok(argv)
    };
    let process = |argv: Vec<String>| -> Result<ProcessSpec, JobError> {
        let max_output = match &raw.max_output {
            None => crate::usertask::DEFAULT_MAX_OUTPUT,
            Some(value) => match size_value(value.get_ref()) {
                Ok(bytes) if bytes >= 1 => bytes,
                Ok(_) => return Err(fail(value.span(), "`max_output` must be at least 1 byte".into())),
                Err(message) => return Err(fail(value.span(), format!("`max_output`: {message}"))),
            },
        };
        let cwd = match &raw.cwd {
            None => dir.to_path_buf(),
            Some(cwd) => {
                let folder = dir.join(cwd.get_ref());
                if !folder.is_dir() {
                    return Err(fail(cwd.span(), format!("`cwd` {} is not a folder", folder.display())));
                }
                folder
            }
        };
        Ok(ProcessSpec {
            argv,
            env: raw.env.as_ref().map(|env| env.get_ref().clone()).unwrap_or_default(),
            cwd,
            max_output,
        })
    };
    Ok(match kind {
        "command" => {
            let Some(command) = &raw.command else { return Ok(None) };
            let placeholder_input = match input {
                InputSpec::Range { .. } => PlaceholderInput::Range,
                InputSpec::File {
                    split: Split::Lines, ..
                }
                | InputSpec::Lines { .. } => PlaceholderInput::Chunks,
                InputSpec::File { split: Split::None, .. } | InputSpec::Glob { .. } => PlaceholderInput::WholeFiles,
                InputSpec::Urls { .. } => PlaceholderInput::Urls,
            };
            crate::usertask::check_placeholders(command.get_ref(), placeholder_input)
                .map_err(|message| fail(command.span(), format!("`command`: {message}")))?;
            Some(UserTask::Command(CommandSpec {
                process: process(argv(command)?)?,
                parse: raw.parse.as_ref().map_or(Parse::Text, |p| *p.get_ref()),
                stdin: raw.stdin.as_ref().map_or(StdinMode::Item, |s| *s.get_ref()),
            }))
        }
        "worker" => {
            let Some(worker) = &raw.worker else { return Ok(None) };
            Some(UserTask::Worker(process(argv(worker)?)?))
        }
        "worker_bin" => {
            let Some(bin) = &raw.worker_bin else { return Ok(None) };
            let path = dir.join(bin.get_ref());
            check_executable(&path)
                .map_err(|message| fail(bin.span(), format!("`worker_bin` {}: {message}", path.display())))?;
            Some(UserTask::WorkerBin { path })
        }
        _ => None,
    })
}

/// Checks that `program` can be executed: a path as given, a bare name through `PATH`.
fn find_program(program: &str) -> Result<(), String> {
    if program.contains('/') {
        return check_executable(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| check_executable(&dir.join(program)).is_ok()) {
        Ok(())
    } else {
        Err("is not found in PATH".into())
    }
}

/// Whether `path` is a regular file someone may execute.
fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err("is not a regular file".into()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Err("is not executable (chmod +x?)".into()),
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "cannot be read: {error} (build it first, e.g. `cargo build --release`)"
        )),
    }
}

/// The regular file that `[input] <key> = "…"` names (`file`, `lines`), relative to the job's folder `dir`.
fn regular_input_file(
    dir: &Path,
    value: Spanned<String>,
    key: &str,
    fail: &impl Fn(Range<usize>, String) -> JobError,
) -> Result<PathBuf, JobError> {
    let span = value.span();
    if value.get_ref().is_empty() {
        return Err(fail(
            span,
            format!("`{key}` is empty: expected a path such as `data/input.txt`"),
        ));
    }
    let path = dir.join(value.into_inner());
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(meta) => Err(fail(
            span,
            format!(
                "input file {} is {}: expected a regular file",
                path.display(),
                file_type_name(&meta.file_type())
            ),
        )),
        Err(error) => Err(fail(
            span,
            format!("cannot read input file {}: {error}", path.display()),
        )),
    }
}

/// The first `fetch_*`/`max_in_flight_bytes` key given, for the error when the input is not `urls`.
fn fetch_key_without_urls(input: &RawInput) -> Option<(&'static str, Range<usize>)> {
    [
        ("fetch_concurrency", input.fetch_concurrency.as_ref().map(Spanned::span)),
        ("fetch_timeout", input.fetch_timeout.as_ref().map(Spanned::span)),
        ("fetch_retries", input.fetch_retries.as_ref().map(Spanned::span)),
        (
            "fetch_retry_backoff",
            input.fetch_retry_backoff.as_ref().map(Spanned::span),
        ),
        (
            "max_in_flight_bytes",
            input.max_in_flight_bytes.as_ref().map(Spanned::span),
        ),
    ]
    .into_iter()
    .find_map(|(key, span)| span.map(|span| (key, span)))
}

/// The fetch settings of a `urls` input, defaults applied.
fn fetch_spec(input: &RawInput, fail: &impl Fn(Range<usize>, String) -> JobError) -> Result<FetchSpec, JobError> {
    let duration = |value: &Option<Spanned<String>>, key: &str, default: Duration, positive: bool| match value {
        None => Ok(default),
        Some(value) => match parse_duration(value.get_ref()) {
            Ok(d) if positive && d.is_zero() => Err(fail(value.span(), format!("`{key}` must be more than 0"))),
            Ok(d) => Ok(d),
            Err(message) => Err(fail(value.span(), format!("`{key}`: {message}"))),
        },
    };
    let concurrency = match &input.fetch_concurrency {
        None => DEFAULT_FETCH_CONCURRENCY,
        Some(n) if (1..=MAX_FETCH_CONCURRENCY).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(fail(
                n.span(),
                format!(
                    "`fetch_concurrency` is {}: expected an integer from 1 to {MAX_FETCH_CONCURRENCY}",
                    n.get_ref()
                ),
            ));
        }
    };
    let max_in_flight_bytes = match &input.max_in_flight_bytes {
        None => DEFAULT_MAX_IN_FLIGHT_BYTES,
        Some(value) => match size_value(value.get_ref()) {
            Ok(bytes) if bytes >= MIN_IN_FLIGHT_BYTES && usize::try_from(bytes).is_ok() => bytes,
            Ok(_) => {
                return Err(fail(
                    value.span(),
                    format!("`max_in_flight_bytes` must be at least {MIN_IN_FLIGHT_BYTES} bytes"),
                ));
            }
            Err(message) => return Err(fail(value.span(), format!("`max_in_flight_bytes`: {message}"))),
        },
    };
    Ok(FetchSpec {
        concurrency,
        timeout: duration(&input.fetch_timeout, "fetch_timeout", DEFAULT_FETCH_TIMEOUT, true)?,
        retries: input
            .fetch_retries
            .as_ref()
            .map_or(DEFAULT_FETCH_RETRIES, |n| *n.get_ref()),
        retry_backoff: duration(
            &input.fetch_retry_backoff,
            "fetch_retry_backoff",
            DEFAULT_FETCH_RETRY_BACKOFF,
            false,
        )?,
        max_in_flight_bytes,
    })
}

/// A size given as an integer number of bytes or a string with a unit.
fn size_value(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative: expected a size")),
        toml::Value::String(s) => parse_size(s),
        other => Err(format!("{other} is not a size: expected e.g. \"4MiB\" or 65536")),
    }
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

fn located(path: &Path, source: &str, span: Range<usize>, message: &str) -> JobError {
    let start = span.start.min(source.len());
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = source[..start].matches('\n').count() + 1;
    let column = source[line_start..start].chars().count() + 1;
    let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
    let text = &source[line_start..line_end];
    let width = source[start..span.end.clamp(start, line_end)].chars().count().max(1);
    let snippet = format!(
        "{line:>4} | {text}\n     | {}{}",
        " ".repeat(column - 1),
        "^".repeat(width)
    );
    JobError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        message: message.to_string(),
        snippet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSpec, JobError> {
        JobSpec::parse(Path::new("/jobs/job.toml"), text.to_string())
    }

    fn error_of(text: &str) -> (usize, usize, String) {
        match parse(text) {
            Err(JobError::Invalid {
                line, column, message, ..
            }) => (line, column, message),
            other => panic!("expected an invalid-job error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_range_job_gets_defaults() {
        let spec =
            parse("[input]\nrange = { start = 0, end = 100, chunk = 7 }\n[task]\nbuiltin = \"noop\"\n").expect("valid");
        assert_eq!(spec.name, "job");
        assert_eq!(
            spec.input,
            InputSpec::Range {
                start: 0,
                end: 100,
                chunk: 7
            }
        );
        assert_eq!(spec.workers.count, WorkerCount::Auto);
        assert_eq!(spec.workers.batch, BatchSize::Auto);
        assert_eq!(spec.workers.start, StartMethod::Spawn);
        assert_eq!(
            (
                spec.workers.memory_limit,
                spec.workers.cpu_limit,
                spec.workers.max_tasks
            ),
            (None, None, None)
        );
        assert!(!spec.workers.core_dumps);
        assert_eq!(
            (spec.task.timeout, spec.task.retries, spec.task.retry_backoff),
            (None, 0, Duration::ZERO)
        );
        assert_eq!(
            spec.supervise,
            SuperviseSpec {
                max_restarts: 20,
                within: Duration::from_secs(10),
                halt: Halt::NEVER,
                grace: Duration::from_secs(5),
                start_timeout: DEFAULT_START_TIMEOUT,
            }
        );
        assert_eq!(
            spec.output,
            OutputSpec {
                results: None,
                order: Order::Input,
                reduce: Reduce::None,
                journal: true
            }
        );
        assert_eq!(spec.task.args, serde_json::json!({}));
    }

    #[test]
    fn paths_resolve_against_the_job_folder() {
        let spec = parse(
            "[input]\nglob = \"img/*.jpg\"\n[task]\nbuiltin = \"sha256\"\nargs = { x = 1 }\n\
             [output]\nresults = \"out/r.jsonl\"\norder = \"completion\"\nreduce = \"sum\"\n\
             [workers]\ncount = 3\nbatch = 16\n",
        )
        .expect("valid");
        assert_eq!(
            spec.input,
            InputSpec::Glob {
                pattern: "/jobs/img/*.jpg".into()
            }
        );
        assert_eq!(spec.output.results, Some(PathBuf::from("/jobs/out/r.jsonl")));
        assert_eq!(spec.output.order, Order::Completion);
        assert_eq!(spec.workers.count, WorkerCount::Fixed(3));
        assert_eq!(spec.workers.batch, BatchSize::Fixed(16));
        assert_eq!(spec.task.args, serde_json::json!({"x": 1}));
    }

    #[test]
    fn supervision_keys_parse() {
        let spec = parse(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"1.5s\"\nretries = 2\n\
             retry_backoff = \"100ms\"\n[workers]\nstart = \"forkserver\"\nmemory_limit = \"256MiB\"\ncpu_limit = \"2s\"\n\
             max_tasks = 50\ncore_dumps = true\n[supervise]\nmax_restarts = 3\nwithin = \"1m\"\nhalt = \"now,fail=5%\"\ngrace = \"2s\"\n",
        )
        .expect("valid");
        assert_eq!(spec.task.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            (spec.task.retries, spec.task.retry_backoff),
            (2, Duration::from_millis(100))
        );
        assert_eq!(spec.workers.start, StartMethod::Forkserver);
        assert_eq!(spec.workers.memory_limit, Some(256 << 20));
        assert_eq!(spec.workers.cpu_limit, Some(Duration::from_secs(2)));
        assert_eq!(spec.workers.max_tasks, Some(50));
        assert!(spec.workers.core_dumps);
        assert_eq!(spec.supervise.max_restarts, 3);
        assert_eq!(spec.supervise.within, Duration::from_secs(60));
        assert_eq!(
            spec.supervise.halt,
            Halt {
                threshold: HaltThreshold::Percent(5.0),
                now: true
            }
        );
        assert_eq!(spec.supervise.grace, Duration::from_secs(2));
    }

    #[test]
    fn shard_count_parses_and_is_checked() {
        let spec = parse("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[shard]\ncount = 16\n")
            .expect("valid");
        assert_eq!(spec.shard.count, Some(16));
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[shard]\ncount = 0\n");
        assert_eq!(line, 6);
        assert!(
            message.contains("`count` is 0: expected an integer from 1 to 1000000"),
            "{message}"
        );
    }

    #[test]
    fn process_only_keys_conflict_with_thread_executors() {
        let spec = parse(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\nexecutor = \"thread\"\n",
        )
        .expect("valid");
        assert_eq!(spec.workers.executor, Executor::Thread);
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"1s\"\n[workers]\nexecutor = \"serial\"\n",
        );
        assert_eq!(line, 7);
        assert!(message.contains("[task] timeout needs worker processes"), "{message}");
    }

    #[test]
    fn isolation_keys_parse_and_bad_ones_are_located() {
        let base = "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\n";
        let spec = parse(base).expect("valid");
        assert_eq!(spec.workers.isolation.open_files, DEFAULT_OPEN_FILES);
        assert!(!spec.workers.isolation.is_set());
        let spec = parse(&format!(
            "{base}open_files = 64\nenv_clear = true\nenv = {{ B = \"2\", A = \"1\" }}\nuser = \"nobody\"\ngroup = \"nogroup\"\n"
        ))
        .expect("valid");
        let isolation = &spec.workers.isolation;
        assert_eq!(isolation.open_files, 64);
        assert!(isolation.env_clear);
        assert_eq!(
            isolation.env,
            vec![("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())]
        );
        assert_eq!(isolation.user.as_ref().map(|u| u.get_ref().as_str()), Some("nobody"));
        assert_eq!(isolation.group.as_ref().map(|g| g.get_ref().as_str()), Some("nogroup"));

        let (line, column, message) = error_of(&format!("{base}open_files = 3\n"));
        assert_eq!((line, column), (6, 14));
        assert!(message.contains("from 16 to 1048576"), "{message}");
        let (line, _, message) = error_of(&format!("{base}env = {{ A = 1 }}\n"));
        assert_eq!(line, 6);
        assert!(message.contains("`env.A` is 1: expected a string"), "{message}");
        let (line, _, message) = error_of(&format!("{base}env = {{ \"A=B\" = \"x\" }}\n"));
        assert_eq!(line, 6);
        assert!(message.contains("not a variable name"), "{message}");
        let (line, _, message) = error_of(&format!("{base}user = \"\"\n"));
        assert_eq!(line, 6);
        assert!(message.contains("`user` is empty"), "{message}");
        let (line, _, message) = error_of(&format!("{base}executor = \"thread\"\nenv_clear = true\n"));
        assert_eq!(line, 6);
        assert!(
            message.contains("[workers] env_clear needs worker processes"),
            "{message}"
        );
        assert!(env_allowed("PATH") && env_allowed("LC_ALL") && !env_allowed("AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn halt_policies() {
        assert_eq!(Halt::parse("never"), Ok(Halt::NEVER));
        let first = Halt::parse("first-failure").expect("valid");
        assert!(!first.reached(0, 10) && first.reached(1, 10) && !first.now);
        let three = Halt::parse("soon,fail=3").expect("valid");
        assert!(!three.reached(2, 10) && three.reached(3, 10));
        let percent = Halt::parse("fail=10%").expect("valid");
        assert!(!percent.reached(9, 100) && percent.reached(10, 100));
        assert!(Halt::parse("fail=0").is_err());
        assert!(Halt::parse("fail=150%").is_err());
        assert!(Halt::parse("later,fail=1").is_err());
        assert!(Halt::parse("sometimes").is_err());
    }

    #[test]
    fn bad_durations_and_limits_are_located() {
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"30\"\n");
        assert_eq!(line, 5);
        assert!(message.contains("`timeout`: duration `30` has no unit"), "{message}");
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ntimeout = \"0s\"\n");
        assert_eq!(line, 5);
        assert!(message.contains("`timeout` must be more than 0"), "{message}");
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\nmemory_limit = \"12\"\n",
        );
        assert_eq!(line, 6);
        assert!(message.contains("at least 1MiB"), "{message}");
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[supervise]\nhalt = \"often\"\n",
        );
        assert_eq!(line, 6);
        assert!(message.contains("first-failure"), "{message}");
    }

    #[test]
    fn unknown_key_is_located() {
        let (line, column, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\ncolour = 3\n");
        assert_eq!((line, column), (5, 1));
        assert!(message.contains("unknown key `colour` in [task]"), "{message}");
    }

    #[test]
    fn two_sources_are_rejected() {
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\nglob = \"*\"\n[task]\nbuiltin = \"noop\"\n");
        assert_eq!(line, 1);
        assert!(message.contains("found: range, glob"), "{message}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[workers]\ncount = \"many\"\n",
        );
        assert_eq!(line, 6);
        assert!(message.contains("expected \"auto\" or an integer"), "{message}");

        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\n[output]\norder = \"random\"\n",
        );
        assert_eq!(line, 6);
        assert!(
            message.contains("`input`") && message.contains("`completion`"),
            "{message}"
        );

        let (line, _, message) = error_of("[input]\nrange = { start = 9, end = 1 }\n[task]\nbuiltin = \"noop\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("below its start"), "{message}");

        let (_, _, message) = error_of("[input]\nrange = { start = -1, end = 1 }\n[task]\nbuiltin = \"noop\"\n");
        assert!(message.contains("-1"), "{message}");
    }

    #[test]
    fn urls_inputs_take_fetch_keys_with_defaults_and_checks() {
        let dir = std::env::temp_dir().join(format!("job-urls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("urls.txt"), "http://127.0.0.1/a\n").expect("write");
        let job = |extra: &str| {
            JobSpec::parse(
                &dir.join("job.toml"),
                format!("[input]\nurls = \"urls.txt\"\n{extra}[task]\nbuiltin = \"sha256\"\n"),
            )
        };
        match job("").expect("valid").input {
            InputSpec::Urls { path, fetch } => {
                assert_eq!(path, dir.join("urls.txt"));
                assert_eq!(
                    fetch,
                    FetchSpec {
                        concurrency: DEFAULT_FETCH_CONCURRENCY,
                        timeout: DEFAULT_FETCH_TIMEOUT,
                        retries: DEFAULT_FETCH_RETRIES,
                        retry_backoff: DEFAULT_FETCH_RETRY_BACKOFF,
                        max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
                    }
                );
            }
            other => panic!("expected a urls input, got {other:?}"),
        }
        let given =
            job("fetch_concurrency = 3\nfetch_timeout = \"2s\"\nfetch_retries = 0\nmax_in_flight_bytes = \"1MiB\"\n");
        let InputSpec::Urls { fetch, .. } = given.expect("valid").input else {
            panic!("expected a urls input")
        };
        assert_eq!(
            (fetch.concurrency, fetch.retries, fetch.max_in_flight_bytes),
            (3, 0, 1 << 20)
        );
        assert_eq!(fetch.timeout, Duration::from_secs(2));
        for (extra, says) in [
            ("fetch_concurrency = 0\n", "`fetch_concurrency` is 0"),
            ("fetch_timeout = \"0s\"\n", "`fetch_timeout` must be more than 0"),
            (
                "max_in_flight_bytes = 100\n",
                "`max_in_flight_bytes` must be at least 4096 bytes",
            ),
        ] {
            match job(extra) {
                Err(JobError::Invalid { line, message, .. }) => {
                    assert_eq!(line, 3, "{extra}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("{extra}: expected an error, got {other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let (line, _, message) = error_of("[input]\nurls = \"no-such-urls.txt\"\n[task]\nbuiltin = \"sha256\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("cannot read urls file"), "{message}");
    }

    #[test]
    fn missing_input_file_is_named() {
        let (line, column, message) = error_of("[input]\nfile = \"no-such.log\"\n[task]\nbuiltin = \"line-count\"\n");
        assert_eq!((line, column), (2, 8));
        assert!(message.contains("/jobs/no-such.log"), "{message}");
    }

    #[test]
    fn user_tasks_resolve_with_defaults() {
        let spec = parse(
            "[input]\nglob = \"in/*.txt\"\n[task]\ncommand = [\"sh\", \"{path}\", \"{{x}}\"]\nenv = { A = \"1\" }\n",
        )
        .expect("valid");
        assert_eq!(spec.task.builtin, "");
        let Some(UserTask::Command(command)) = &spec.task.user else {
            panic!("expected a command task, got {:?}", spec.task.user);
        };
        assert_eq!(command.process.argv, ["sh", "{path}", "{{x}}"]);
        assert_eq!(command.process.cwd, PathBuf::from("/jobs"));
        assert_eq!(command.process.env.get("A").map(String::as_str), Some("1"));
        assert_eq!((command.parse, command.stdin), (Parse::Text, StdinMode::Item));
        assert_eq!(command.process.max_output, crate::usertask::DEFAULT_MAX_OUTPUT);

        let spec = parse(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nworker = [\"sh\", \"w.sh\"]\nmax_output = \"4KiB\"\n",
        )
        .expect("valid");
        assert!(matches!(&spec.task.user, Some(UserTask::Worker(p)) if p.max_output == 4096 && p.argv[0] == "sh"));
    }

    #[test]
    fn user_task_mistakes_are_located() {
        let (line, column, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"cat\", \"{offset}\"]\n");
        assert_eq!((line, column), (4, 11));
        assert!(
            message.contains("`{offset}`") && message.contains("{item}, {start}, {end}"),
            "{message}"
        );
        let (line, _, message) = error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = []\n");
        assert_eq!(line, 4);
        assert!(message.contains("`command` is empty"), "{message}");
        let (line, _, message) = error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nworker_bin = \"/\"\n");
        assert_eq!(line, 4);
        assert!(message.contains("is not a regular file"), "{message}");
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\nbuiltin = \"noop\"\nenv = { A = \"1\" }\n");
        assert_eq!(line, 5);
        assert!(
            message.contains("`env` applies only to a `command` or `worker` task, not to `builtin`"),
            "{message}"
        );
        let (line, _, message) =
            error_of("[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"true\"]\nargs = { x = 1 }\n");
        assert_eq!(line, 5);
        assert!(message.contains("`args` applies only to a `builtin` task"), "{message}");
        let (line, _, message) = error_of(
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nworker_bin = \"/bin/sh\"\n[workers]\nexecutor = \"thread\"\n",
        );
        assert_eq!(line, 4);
        assert!(message.contains("cannot be used with executor"), "{message}");
    }

    #[test]
    fn snippet_points_at_the_column() {
        match parse("[input]\nrange = { start = 0, end = 1, chunk = 0 }\n[task]\nbuiltin = \"noop\"\n") {
            Err(error @ JobError::Invalid { .. }) => {
                let text = error.to_string();
                assert!(
                    text.starts_with("/jobs/job.toml:2:39: `chunk` must be at least 1"),
                    "{text}"
                );
                assert!(text.ends_with("   2 | range = { start = 0, end = 1, chunk = 0 }\n     |                                       ^"), "{text}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
