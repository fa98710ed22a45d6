//! The messages exchanged between the supervisor and a worker over ipc-channel (postcard-encoded).
//!
//! ## Flow
//! 1. The supervisor creates an `IpcOneShotServer<FromWorker>` and execs the worker with the server's name.
//! 2. The worker connects and sends [`FromWorker::Hello`] carrying its [`PROTOCOL_VERSION`] and the sender half
//!    of the channel it reads [`ToWorker`] messages from.
//! 3. The supervisor sends [`ToWorker::Init`] and [`ToWorker::Identity`]; the worker answers
//!    [`FromWorker::Ready`] or [`FromWorker::InitFailed`]. A batch holding a retried item is preceded by a
//!    [`ToWorker::Attempt`] for it. (Both were added to version 1 after its first samples, as new variants at
//!    the end of the enum: older messages encode exactly as before.)
//! 4. The supervisor sends [`ToWorker::Batch`]es (at most a few queued per worker). For each batch the worker sends
//!    one or more [`FromWorker::Results`], each covering the next consecutive items of that batch, until every
//!    item of the batch is answered. Finished results are sent at least every [`RESULT_FLUSH_INTERVAL_MS`], also
//!    while a long item runs, so that a worker which dies or hangs mid-batch has already reported what it
//!    finished (except what finished in the last interval).
//! 5. [`ToWorker::Shutdown`] (or the channel closing) ends the worker, which exits 0.
//!
//! A worker that dies is noticed by the channel disconnecting and by `wait4`; the protocol itself has no
//! heartbeat.

use std::path::PathBuf;

use ipc_channel::ipc::IpcSender;
use serde::{Deserialize, Serialize};

use crate::item::{Batch, InputPlan, Value};

/// Bumped on every incompatible change; the supervisor refuses a worker that says another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// A worker sends the results it has when this much time passed since its last send, even mid-batch.
pub const RESULT_FLUSH_INTERVAL_MS: u64 = 20;

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Configure the task and input; sent once, right after `Hello`.
    Init {
        /// Builtin task name, as in `[task] builtin`.
        task: String,
        /// The task's `[task] args` as JSON text (validated by the supervisor before any worker starts).
        args_json: String,
        input: InputPlan,
        limits: WorkerLimits,
        /// Where to map the progress slot (see [`crate::progress`]); `None` runs without one.
        progress: Option<PathBuf>,
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

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// First message on the bootstrap channel.
    Hello {
        version: u32,
        pid: u32,
        /// Where the supervisor sends [`ToWorker`] messages.
        to_worker: IpcSender<ToWorker>,
    },
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
    /// Never sent by a worker: the supervisor sends it to its own bootstrap server to unblock `accept()` when the
    /// worker died before connecting (ipc-channel's accept has no timeout).
    NeverConnected,
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
