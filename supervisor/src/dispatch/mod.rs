//! The dispatcher: the one owner of job state, split by role.
//!
//! It knows which items are pending, in flight (and on which worker), and done; it reacts to pool events,
//! signals and timers, and nothing else mutates that state. It owns no process, no signal handler and no
//! terminal: the launcher ([`Launch`]), the stop signals and the [`Reporter`] are passed in, so the whole state
//! machine runs in unit tests with a fake launcher and no process at all.
//!
//! ## Who does what
//! - `driver`: the one `select!` loop. It turns pool events, fetch events, signals and timers into calls on
//!   the state machine, flushes records to the journal writer, and returns the outcome. Nothing else awaits.
//! - `state`: the state machine (`Dispatcher::handle(event)` and the timer entry points): what each event
//!   means for the job.
//! - `queue`: the work not handed out yet: fresh items, requeued spans, suspects (run alone), retries (with
//!   their due time), and items an earlier run recorded.
//! - `workers`: the worker table; each worker's lifecycle is one enum changed only by its methods, plus the
//!   start-failure and restart-intensity counts.
//! - `attribution`: a pure function from a dead worker's in-flight batch, its progress-slot snapshot and how it
//!   died to the item to blame (or none).
//! - `tallies`: what the summary counts (ok, failed, retries, the reduction, the failures shown).
//! - `source`: the dispatcher's only view of the input (the job's `input::Source`, owned): pulling fresh items,
//!   batches, descriptions, releasing recorded items, URLs.
//! - `fetching`: the fetch stage of a `urls` input as the dispatcher sees it.
//!
//! ## An item's way
//! Fresh items are pulled from the source as workers need them (never blocking: so many are ready, none yet, or
//! the input ended, which is when a stream's length becomes known; a stream with none ready wakes the driver
//! when more arrive). They are handed out in input order, in batches sized by
//! [`BatchSizer`](crate::batching::BatchSizer), a few batches queued per worker so that a worker never waits for
//! its next one. Once an item is recorded the source is told to release it, so a stream keeps only the items in
//! flight, and the dispatcher itself keeps nothing per item of the job. A worker answers each batch with
//! consecutive results; a batch is done when every item is answered. Every item ends with exactly one record.
//!
//! ## When a worker dies
//! The worker is reaped by the pool and replaced. Before each item a worker stamps its progress slot (a shared
//! page, see `shared::progress`), so the dispatcher knows which item it was running when it died: that item
//! fails (kind `signal`, `exit`, `memory`, `timeout`…, with the worker's stderr tail) or is retried; the other
//! unanswered items of its batches go back to the front of the queue, uncharged. When the slot cannot be
//! trusted (the worker broke the protocol, or died between items), the unanswered items of the batch it was
//! running become *suspects*, each re-run alone, so that a death is still exactly attributable.
//!
//! ## Limits and policies
//! `timeout` is enforced from the progress slot on a timer; `retries` re-run a failed item alone after a
//! backoff; `max_tasks` recycles a worker; more than `max_restarts` deaths `within` the window stop the job;
//! `halt` stops it after enough failures. A worker that holds work, whose slot says it is between items and
//! that has shown no sign of life for the stall deadline (see `state::stall_deadline`) is stopped or stuck
//! (SIGSTOP, a page fault that never ends): it is killed and its work requeued, uncharged.
//!
//! ## Stopping
//! When every item has a record, workers are told to shut down. On the first SIGINT/SIGTERM nothing more is
//! handed out, workers finish what they hold within the grace period, then are killed; items without a record
//! are reported as not run. A second signal kills at once.

mod attribution;
mod driver;
mod fetching;
mod queue;
mod source;
mod state;
mod tallies;
mod workers;

#[cfg(test)]
mod tests;

use std::time::Duration;

use shared::job::SuperviseSpec;
use shared::protocol::{Isolation, WorkerLimits};

pub use driver::{Ports, run};

use crate::pool::WorkerId;
use crate::results::{Failure, Reducer};
use crate::signal::StopSignal;
use sys::process::Pidfd;

/// How the dispatcher gets workers. The pool's launchers ([`crate::pool::ProcessLauncher`] for worker processes,
/// [`crate::pool::ThreadLauncher`] for the worker threads of the `thread`/`serial` executors) and the unit tests'
/// fake implement it; every answer comes back as [`crate::pool::Event`]s on the channel the driver reads.
pub trait Launch: Send {
    /// Asks for worker `id`; its events follow, starting with `Spawned` or `SpawnFailed`.
    fn launch(&mut self, id: WorkerId);
    /// Kills worker `id` at once. `pidfd` is the handle its `Spawned` event carried (`None` for a worker that
    /// cannot be killed, a thread).
    fn kill(&mut self, id: WorkerId, pidfd: Option<&Pidfd>);
}

/// Receives what the user may want to see while a job runs. The dispatcher only reports events; how (and
/// whether) they are shown is the reporter's business ([`crate::report::Progress`] draws a bar or prints lines).
pub trait Reporter: Send {
    /// `done` items of this run's span have a record (an earlier run's included), `failed` of them failed.
    fn progress(&mut self, done: u64, failed: u64);
    /// The input ended: this run has `total` items. Until then (a stream) progress is a count without a total;
    /// an input of known length is told its total at start (the caller knows it) and never through this.
    fn total(&mut self, total: u64);
    /// Items of a `urls` input whose fetch has ended, or that an earlier run recorded (so need no fetch).
    fn fetched(&mut self, fetched: u64);
    /// A line for the user: a worker killed, a stop requested.
    fn message(&mut self, text: &str);
    /// The run is over.
    fn finish(&mut self, done: u64, failed: u64);
}

/// What the dispatcher needs to run a job.
#[derive(Debug)]
pub struct DispatchConfig {
    pub workers: usize,
    /// Give each worker a progress slot (worker processes; worker threads need none).
    pub progress_slots: bool,
    pub task: String,
    pub args_json: String,
    pub batch: Option<u64>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub limits: WorkerLimits,
    /// What each worker process does to itself at `Init` (see `crate::isolation`).
    pub isolation: Isolation,
    pub max_tasks: Option<u64>,
    pub supervise: SuperviseSpec,
    /// The items this run owns: its shard's block of item indices, or every item (`0..u64::MAX` for a stream,
    /// which cannot be sharded).
    pub span: std::ops::Range<u64>,
    /// How to fetch the bodies of a `urls` input (`None` for other inputs).
    pub fetch: Option<shared::job::FetchSpec>,
}

/// Why a run stopped before every item had a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Signal(StopSignal),
    /// The `halt` policy was reached after this many failures.
    Halt {
        failed: u64,
    },
    /// Workers died more than `max_restarts` times within `within`.
    RestartIntensity {
        deaths: usize,
        within: Duration,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Signal(signal) => write!(f, "stopped by {}", signal.name()),
            StopReason::Halt { failed } => write!(f, "halted after {failed} failed items ([supervise] halt)"),
            StopReason::RestartIntensity { deaths, within } => write!(
                f,
                "stopped: workers died {deaths} times within {} — more than [supervise] max_restarts allows; \
                 fix the crashing items or raise max_restarts",
                crate::failure::human_duration(*within)
            ),
        }
    }
}

/// Resource usage of one worker process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStats {
    pub pid: u32,
    /// Items it answered.
    pub items: u64,
    pub cpu_s: f64,
    pub max_rss_bytes: u64,
}

/// How the run went, for the summary.
#[derive(Debug)]
pub struct RunOutcome {
    /// Items of this run (of a stream stopped before it ended: the items seen).
    pub items: u64,
    pub ok: u64,
    pub failed: u64,
    /// Workers the job runs at once.
    pub workers: usize,
    /// Worker processes started, including replacements.
    pub workers_started: u64,
    /// Distinct worker pids that returned at least one result.
    pub worker_pids: Vec<u32>,
    pub wall: Duration,
    pub first_result: Option<Duration>,
    pub ipc_bytes: u64,
    pub ipc_messages: u64,
    pub reducer: Reducer,
    /// The first few failures, in the order they happened.
    pub failures: Vec<(u64, Failure)>,
    pub stopped: Option<StopReason>,
    /// Every worker process that exited, in exit order.
    pub worker_stats: Vec<WorkerStats>,
    pub batches: u64,
    /// Runs charged to items beyond their first.
    pub retries: u64,
    /// Items recorded by an earlier run and skipped (`--resume`).
    pub resumed: u64,
    /// The fetch stage of a `urls` input.
    pub fetch: Option<FetchStats>,
}

/// How the fetch stage of a `urls` input went, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchStats {
    /// Items whose body was fetched by this run.
    pub fetched: u64,
    /// Items that failed to fetch in this run (recorded `failed` with kind `fetch`).
    pub failed: u64,
    /// Items of this run's span an earlier run recorded (`--resume`): not fetched again.
    pub earlier: u64,
    /// Body bytes fetched.
    pub bytes: u64,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// `max_in_flight_bytes`, rounded up to whole pages.
    pub max_in_flight_bytes: u64,
    /// Most body bytes held at once (whole pages).
    pub peak_in_flight_bytes: u64,
}
