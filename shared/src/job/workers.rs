//! `[workers]`: how many workers run the task, in what (processes, threads, one thread), started how, and
//! confined how (resource limits, environment, user and group).
//!
//! Checked here: every value's type and range, and which keys need worker processes. Left to the supervisor:
//! whether a user or group exists and may be switched to (`supervisor::isolation`), and how many CPUs `auto`
//! means (read when the run starts).

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::raw::{RawWorkers, Scalar};
use super::task::TaskSpec;
use super::value::{self, Checked, Problem, Zero};

/// Largest accepted `[workers] count`.
pub const MAX_WORKERS: usize = 1024;
/// Smallest and largest `[workers] open_files`.
pub const OPEN_FILES_RANGE: (u64, u64) = (16, 1 << 20);

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

/// `[workers]` resolved. Whether the keys fit the executor is checked with the task, by the caller.
pub(crate) fn workers(raw: &RawWorkers) -> Checked<WorkersSpec> {
    let auto_or = |key: &str, value: &Option<Spanned<Scalar>>, max: u64| -> Checked<Option<u64>> {
        match value {
            None => Ok(None),
            Some(value) if value.get_ref() == &Scalar::String("auto".into()) => Ok(None),
            Some(value) => value::whole(key, value, 1, max)
                .map_err(|_| value::expected(key, value, &format!("\"auto\" or {}", value::whole_words(1, max))))
                .map(Some),
        }
    };
    let count = match auto_or("count", &raw.count, MAX_WORKERS as u64)? {
        None => WorkerCount::Auto,
        // At most MAX_WORKERS, so the conversion cannot fail.
        Some(n) => WorkerCount::Fixed(usize::try_from(n).unwrap_or(MAX_WORKERS)),
    };
    let batch = match auto_or("batch", &raw.batch, u64::MAX)? {
        None => BatchSize::Auto,
        Some(n) => BatchSize::Fixed(n),
    };
    let flag = |key: &str, value: &Option<Spanned<Scalar>>| {
        value.as_ref().map_or(Ok(false), |value| value::boolean(key, value))
    };
    Ok(WorkersSpec {
        count,
        batch,
        executor: match &raw.executor {
            None => Executor::Process,
            Some(executor) => value::choice(
                "executor",
                executor,
                &[
                    ("process", Executor::Process),
                    ("thread", Executor::Thread),
                    ("serial", Executor::Serial),
                ],
            )?,
        },
        start: match &raw.start {
            None => StartMethod::Spawn,
            Some(start) => value::choice(
                "start",
                start,
                &[("spawn", StartMethod::Spawn), ("forkserver", StartMethod::Forkserver)],
            )?,
        },
        memory_limit: raw
            .memory_limit
            .as_ref()
            .map(|bytes| value::size("memory_limit", bytes, 1 << 20, u64::MAX))
            .transpose()?,
        cpu_limit: raw
            .cpu_limit
            .as_ref()
            .map(|limit| value::duration("cpu_limit", limit, Zero::Refused))
            .transpose()?,
        max_tasks: raw
            .max_tasks
            .as_ref()
            .map(|n| value::whole("max_tasks", n, 1, u64::MAX))
            .transpose()?,
        core_dumps: flag("core_dumps", &raw.core_dumps)?,
        isolation: IsolationSpec {
            open_files: match &raw.open_files {
                None => DEFAULT_OPEN_FILES,
                Some(n) => value::whole("open_files", n, OPEN_FILES_RANGE.0, OPEN_FILES_RANGE.1)?,
            },
            env_clear: flag("env_clear", &raw.env_clear)?,
            env: match &raw.env {
                None => Vec::new(),
                Some(env) => value::env_table("env", env)?,
            },
            user: identity("user", &raw.user)?,
            group: identity("group", &raw.group)?,
        },
    })
}

/// `user` or `group`: a name or a numeric id, kept with its place for the errors of resolving it.
fn identity(key: &str, value: &Option<Spanned<Scalar>>) -> Checked<Option<Spanned<String>>> {
    let Some(value) = value else { return Ok(None) };
    let name = value::nonempty_text(key, value, "a name such as \"nobody\" or an id such as \"1000\"")?;
    Ok(Some(Spanned::new(value.span(), name)))
}

/// The error for a key that needs worker processes under executor `thread` or `serial`, if any.
pub(crate) fn executor_conflict(workers: &WorkersSpec, task: &TaskSpec, raw: &RawWorkers) -> Option<Problem> {
    let key = workers.process_only_conflict(task)?;
    let span = raw.executor.as_ref().map(Spanned::span)?;
    let executor = workers.executor.name();
    Some(Problem::at(
        span,
        format!("{key} needs worker processes; it cannot apply to executor = \"{executor}\""),
    ))
}
