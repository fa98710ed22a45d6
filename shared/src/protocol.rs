//! The messages exchanged between the supervisor and a worker (postcard-encoded, framed by [`crate::frame`]).
//!
//! ## Flow
//! 1. The supervisor creates a connected pair of Unix stream sockets and starts the worker with its end as
//!    stdin (fd 0).
//! 2. The worker moves the socket off fd 0 and sends [`FromWorker::Hello`] carrying its [`PROTOCOL_VERSION`].
//! 3. The supervisor sends [`ToWorker::Init`]; the worker answers [`FromWorker::Ready`] or
//!    [`FromWorker::InitFailed`].
//!    [`ToWorker::Identity`] follows `Init`; a batch holding a retried item is preceded by a [`ToWorker::Attempt`]
//!    for it.
//! 4. The supervisor sends [`ToWorker::Batch`]es (at most a few queued per worker). For each batch the worker sends
//!    one or more [`FromWorker::Results`], each covering the next consecutive items of that batch, until every
//!    item of the batch is answered. Finished results are sent at least every [`RESULT_FLUSH_INTERVAL_MS`], also
//!    while a long item runs, so that a worker which dies or hangs mid-batch has already reported what it
//!    finished (except what finished in the last interval).
//! 5. [`ToWorker::Shutdown`] (or the channel closing) ends the worker, which exits 0.
//!
//! A worker that dies is noticed by the channel disconnecting and by `wait4`; the protocol itself has no
//! heartbeat. Nothing a worker sends is trusted: frames have a size limit checked before allocation
//! ([`crate::frame::MAX_FROM_WORKER`]), and the supervisor checks every message against what it gave the worker.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::item::{Batch, InputPlan, Value};

/// Bumped on every incompatible change; the supervisor refuses a worker that says another version.
pub const PROTOCOL_VERSION: u32 = 2;

/// A worker sends the results it has when this much time passed since its last send, even mid-batch.
pub const RESULT_FLUSH_INTERVAL_MS: u64 = 20;

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Configure the task and input; sent once, right after `Hello`.
    Init {
        /// What the worker runs: a builtin's name (`[task] builtin`), or the reserved name of the user's kind of
        /// task (`@command`, `@worker`, `@worker_bin`: see [`crate::usertask`]), whose description is then in
        /// `args_json`.
        task: String,
        /// The task's `[task] args` as JSON text (validated by the supervisor before any worker starts).
        args_json: String,
        input: InputPlan,
        limits: WorkerLimits,
        /// Where to map the progress slot (see [`crate::progress`]); `None` runs without one.
        progress: Option<PathBuf>,
        /// How the worker confines itself before it answers `Ready`.
        isolation: Isolation,
    },
    /// Process these items.
    Batch(Batch),
    /// Finish and exit 0.
    Shutdown,
    /// Sent once after `Init`: the worker's id in this run (`SUPERVISOR_WORKER` for the user's processes).
    Identity { worker: u64 },
    /// Sent before the batch that runs `item` again: this is its attempt number `attempt` (2 for the first
    /// retry). Items without one are on attempt 1 (`SUPERVISOR_ATTEMPT` for the user's processes).
    Attempt { item: u64, attempt: u32 },
}

/// Resource limits a worker applies to itself on `Init` (not in a `pre_exec` hook, which would force the slow
/// fork path for every spawn).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLimits {
    /// RLIMIT_DATA in bytes: heap and other private writable memory. Mapped input does not count.
    pub memory_bytes: Option<u64>,
    /// CPU seconds one item may use (RLIMIT_CPU is re-armed before each item; SIGXCPU when exceeded).
    pub cpu_seconds_per_item: Option<u64>,
    /// Allow core dumps (RLIMIT_CORE raised to its hard limit) instead of turning them off.
    pub core_dumps: bool,
}

/// What a worker process does to itself at `Init`, besides its [`WorkerLimits`]: the `[workers]` keys
/// `open_files`, `env_clear`, `env`, `user` and `group`, with names resolved to ids by the supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// RLIMIT_NOFILE, soft and hard; `None` keeps the inherited limit.
    pub open_files: Option<u64>,
    /// Remove every variable not on the allow-list (`shared::job::env_allowed`) before setting `env`.
    pub env_clear: bool,
    /// Variables to set.
    pub env: Vec<(String, String)>,
    /// Switch to this user and group after `Init` has opened everything it needs.
    pub credentials: Option<Credentials>,
}

/// A user and group to run as (numeric: names were resolved by the supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// First message on the channel.
    Hello { version: u32, pid: u32 },
    /// `Init` succeeded; batches may follow.
    Ready,
    /// `Init` failed (unknown task, input that cannot be mapped); the worker exits after sending this.
    InitFailed { message: String },
    /// Outcomes of the items `first .. first + outcomes.len()` of batch `batch`.
    Results {
        batch: u64,
        first: u64,
        outcomes: Vec<Outcome>,
    },
}

/// The outcome of one item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Time spent in the task for this item, in microseconds.
    pub elapsed_us: u64,
    pub result: Result<Value, TaskError>,
}

/// An item the task could not process, while the worker itself stays healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: TaskErrorKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskErrorKind {
    /// The task returned an error (bad input, unreadable file, arithmetic overflow…).
    Error,
    /// The task panicked; the worker caught the panic and carries on.
    Panic,
    /// The user's process (a `command`, or a persistent `worker`) exited with a non-zero `code`; `stderr` is the
    /// tail of what it wrote there.
    Exit { code: i32, stderr: String },
    /// The user's process was killed by `signal`.
    Signal { signal: i32, stderr: String },
    /// The user's persistent process answered something that is not the protocol; it was replaced.
    Protocol { stderr: String },
}
