//! The dispatcher: the one owner of job state.
//!
//! It knows which items are pending, in flight (and on which worker), and done; it reacts to pool events,
//! signals and timers in one `select!` loop, and nothing else mutates that state.
//!
//! ## An item's way
//! Items are handed out in input order, in batches sized by [`BatchSizer`], a few batches queued per worker
//! ([`BatchSizer::prefetch`]: two, or more when batches are tiny) so that a worker never waits for its next one. A worker answers each batch with consecutive
//! results; a batch is done when every item is answered. Every item ends with exactly one record.
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
//! `halt` stops it after enough failures.
//!
//! ## Stopping
//! When every item has a record, workers are told to shut down. On the first SIGINT/SIGTERM nothing more is
//! handed out, workers finish what they hold within the grace period, then are killed; items without a record
//! are reported as not run. A second signal kills at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shared::item::Value;
use shared::job::SuperviseSpec;
use shared::progress::{ProgressReader, monotonic_ns};
use shared::protocol::{FromWorker, Isolation, Outcome, ToWorker, WorkerLimits};
use shared::region::SharedPage;
use tokio::sync::mpsc;
use tokio::time::{Instant as TokioInstant, sleep_until};

use crate::batching::BatchSizer;
use crate::error::Error;
use crate::failure::{Death, crash_failure, describe_exit};
use crate::fetch::{Arena, FetchCounters, FetchEvent, Slot};
use crate::journal::{Done, JournalWriter};
use crate::plan::Items;
use crate::pool::{Event, IpcCounter, Launcher, Starter, WorkerId, WorkerSender, message_name};
use crate::report::Progress;
use crate::results::{Failure, Record, Reducer, Status};
use crate::signal::{Escalation, StopAction, StopSignal};
use sys::process::{ExitInfo, Pidfd};

/// Workers in a row that fail before becoming ready before the job is abandoned.
const MAX_START_FAILURES: u32 = 3;

/// Failures kept for the summary.
const FAILURES_SHOWN: usize = 20;

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
    /// The items this run owns: its shard's block of item indices, or every item.
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
    /// Items whose body was fetched.
    pub fetched: u64,
    /// Items that failed to fetch (recorded `failed` with kind `fetch`).
    pub failed: u64,
    /// Body bytes fetched.
    pub bytes: u64,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// `max_in_flight_bytes`, rounded up to whole pages.
    pub max_in_flight_bytes: u64,
    /// Most body bytes held at once (whole pages).
    pub peak_in_flight_bytes: u64,
}

/// The fetch stage of a `urls` input, as the dispatcher sees it: bodies in the arena waiting for or being
/// processed by workers. Fetching itself runs in its own task ([`crate::fetch::start`]).
#[derive(Debug)]
struct FetchState {
    arena: Arc<Arena>,
    events: Option<mpsc::Receiver<FetchEvent>>,
    task: Option<tokio::task::JoinHandle<()>>,
    counters: Arc<FetchCounters>,
    /// The arena slot of every fetched item not recorded yet.
    bodies: HashMap<u64, Slot>,
    /// Fetched items never handed out, by number (batches are runs of consecutive ready items).
    ready: BTreeSet<u64>,
    /// Items whose fetch has not reported yet.
    unfetched: u64,
    fetched: u64,
    failed: u64,
}

impl FetchState {
    /// Stops every fetch in progress (the run is stopping or over).
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.events = None;
    }
}

/// One worker's lifecycle. `Busy` is `Ready` with batches queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    /// Launch requested; no process or no hello yet.
    Starting,
    /// Hello received, `Init` sent.
    Initializing,
    Ready,
    /// Told to shut down (or being killed); its exit is expected.
    Stopping,
}

#[derive(Debug)]
struct Worker {
    state: WorkerState,
    pid: u32,
    pidfd: Option<Pidfd>,
    sender: Option<WorkerSender>,
    progress: Option<ProgressReader>,
    /// Batch ids in the order the worker will run them.
    batches: VecDeque<u64>,
    /// Set when the worker broke the protocol; it has been killed and this becomes the items' cause.
    protocol_error: Option<String>,
    /// Set when the dispatcher killed it for running this item past the timeout.
    timed_out: Option<u64>,
    /// Set when the dispatcher killed it to stop the job: its death says nothing about its item.
    killed_to_stop: bool,
    /// Items handed to it (for `max_tasks`).
    assigned: u64,
    answered: u64,
    /// The reader thread has delivered everything the worker sent.
    channel_closed: bool,
    /// The process was reaped; handled once the channel is closed too, so that no late result is missed.
    exit: Option<(ExitInfo, String)>,
    /// When its launch was asked for (for `[supervise] start_timeout`).
    launched: Instant,
}

impl Worker {
    fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            pidfd.kill();
        }
    }

    fn stop(&mut self) {
        self.state = WorkerState::Stopping;
        match self.sender.take() {
            Some(sender) => {
                sender.send(ToWorker::Shutdown);
            }
            None => self.kill(),
        }
    }
}

#[derive(Debug)]
struct InFlight {
    worker: WorkerId,
    first: u64,
    /// Next item expected from the worker.
    next: u64,
    end: u64,
    /// A single item run alone: a death while it runs is its fault.
    isolated: bool,
    dispatched: Instant,
    task_micros: u64,
}

struct Dispatcher {
    items: Arc<Items>,
    config: DispatchConfig,
    launcher: Launcher,
    counter: Arc<IpcCounter>,
    started: Instant,
    /// Items this run owns (the length of its span).
    total: u64,
    /// End of this run's span of item indices.
    end: u64,
    target_workers: usize,

    workers: BTreeMap<WorkerId, Worker>,
    next_worker_id: WorkerId,
    start_failures: u32,
    /// When unexpected worker deaths happened, within the restart window.
    deaths: VecDeque<Instant>,
    worker_stats: Vec<WorkerStats>,

    /// Next item never handed out.
    next_item: u64,
    /// Items recorded by an earlier run (`--resume`), never handed out.
    done_before: Vec<bool>,
    /// Spans `(first, len)` to hand out again before new items (work of a dead worker it never finished).
    requeued: VecDeque<(u64, u64)>,
    /// Items to run alone to find which one kills its worker.
    suspects: VecDeque<u64>,
    /// Failed items waiting for a retry, with when they may run.
    retry_at: Vec<(Instant, u64)>,
    /// Causes of the failed attempts of items that are being retried.
    attempt_errors: HashMap<u64, Vec<Failure>>,
    batches: HashMap<u64, InFlight>,
    next_batch_id: u64,
    sizer: BatchSizer,

    resumed: u64,
    recorded: u64,
    ok: u64,
    failed: u64,
    retries: u64,
    reducer: Reducer,
    failures: Vec<(u64, Failure)>,
    pending_records: Vec<Record>,
    writer: Option<JournalWriter>,
    progress: Progress,
    pids_with_results: Vec<u32>,
    first_result: Option<Duration>,

    escalation: Escalation,
    stopped: Option<StopReason>,
    finishing: bool,
    kill_deadline: Option<TokioInstant>,
    fatal: Option<Error>,
    fetch: Option<FetchState>,
}

/// Runs the job to completion (or until stopped) and returns how it went.
pub async fn run(
    items: Arc<Items>,
    starter: Starter,
    config: DispatchConfig,
    mut reducer: Reducer,
    writer: Option<JournalWriter>,
    progress: Progress,
    prior: Done,
) -> Result<RunOutcome, Error> {
    for value in &prior.values {
        reducer.add(value);
    }
    let (events_sender, mut events) = mpsc::channel(1024);
    let counter = Arc::new(IpcCounter::default());
    let launcher =
        Launcher::start(events_sender, Arc::clone(&counter), starter).map_err(|error| Error::WorkersCannotStart {
            reason: format!("cannot start the launcher: {error}"),
        })?;
    let mut signals = crate::signal::listen().map_err(|error| Error::Internal {
        message: format!("cannot listen for signals: {error}"),
    })?;
    let span = config.span.start.min(items.len())..config.span.end.min(items.len());
    let total = span.end - span.start;
    // No more workers than items: an empty job starts none.
    let target_workers = config.workers.min(usize::try_from(total).unwrap_or(usize::MAX));
    let sizer = BatchSizer::new(config.batch, items.batch_cap());
    let fetch = match (&config.fetch, &*items) {
        (Some(spec), Items::Urls { urls, .. }) => Some(start_fetching(spec, urls, span.clone(), &prior.done)?),
        _ => None,
    };
    let timeout_check = config
        .timeout
        .map(|t| (t / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    let mut dispatcher = Dispatcher {
        items,
        config,
        launcher,
        counter,
        started: Instant::now(),
        total,
        end: span.end,
        target_workers,
        workers: BTreeMap::new(),
        next_worker_id: 0,
        start_failures: 0,
        deaths: VecDeque::new(),
        worker_stats: Vec::new(),
        // A `urls` input hands out fetched items (`FetchState::ready`), not `next_item ..`.
        next_item: if fetch.is_some() { span.end } else { span.start },
        done_before: prior.done,
        requeued: VecDeque::new(),
        suspects: VecDeque::new(),
        retry_at: Vec::new(),
        attempt_errors: HashMap::new(),
        batches: HashMap::new(),
        next_batch_id: 0,
        sizer,
        resumed: prior.ok + prior.failed,
        recorded: prior.ok + prior.failed,
        ok: prior.ok,
        failed: prior.failed,
        retries: 0,
        reducer,
        failures: prior.failures.into_iter().take(FAILURES_SHOWN).collect(),
        pending_records: Vec::new(),
        writer,
        progress,
        pids_with_results: Vec::new(),
        first_result: None,
        escalation: Escalation::default(),
        stopped: None,
        finishing: false,
        kill_deadline: None,
        fatal: None,
        fetch,
    };
    dispatcher.replenish();
    dispatcher.check_complete();

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut timeout_tick = tokio::time::interval(timeout_check.unwrap_or(Duration::from_secs(3600)));
    while !dispatcher.workers.is_empty() {
        let retry_wake = dispatcher.next_retry().map(TokioInstant::from_std);
        let fetching = dispatcher.fetch.as_ref().is_some_and(|f| f.events.is_some());
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => dispatcher.handle(event),
                None => break,
            },
            event = next_fetch_event(&mut dispatcher.fetch), if fetching => dispatcher.on_fetch(event),
            Some(signal) = signals.recv() => dispatcher.on_signal(signal),
            _ = tick.tick() => {
                if let Some(fetch) = &dispatcher.fetch {
                    dispatcher.progress.set_fetched(fetch.fetched + fetch.failed);
                }
                dispatcher.progress.update(dispatcher.recorded, dispatcher.failed);
                dispatcher.check_start_timeouts();
            }
            _ = timeout_tick.tick(), if timeout_check.is_some() => dispatcher.check_timeouts(),
            _ = sleep_until(retry_wake.unwrap_or_else(TokioInstant::now)), if retry_wake.is_some() => {
                dispatcher.fill_all();
            }
            _ = sleep_until(dispatcher.kill_deadline.unwrap_or_else(TokioInstant::now)), if dispatcher.kill_deadline.is_some() => {
                dispatcher.kill_deadline = None;
                dispatcher.kill_all();
            }
        }
        dispatcher.flush_records().await;
        dispatcher.check_complete();
    }
    if let Some(fetch) = &mut dispatcher.fetch {
        fetch.stop();
    }
    dispatcher.flush_records().await;
    dispatcher.progress.finish(dispatcher.recorded, dispatcher.failed);
    dispatcher.into_outcome().await
}

/// Creates the arena and starts fetching every item an earlier run did not record.
fn start_fetching(
    spec: &shared::job::FetchSpec,
    urls: &Arc<Vec<String>>,
    span: std::ops::Range<u64>,
    done: &[bool],
) -> Result<FetchState, Error> {
    let arena = Arena::new(spec.max_in_flight_bytes).map_err(|error| Error::Internal {
        message: format!("cannot create the shared arena for fetched bodies: {error}"),
    })?;
    let todo: Vec<u64> = span
        .filter(|&item| !done.get(item as usize).copied().unwrap_or(false))
        .collect();
    let unfetched = todo.len() as u64;
    let counters = Arc::new(FetchCounters::default());
    // Room for every fetch in progress to report without waiting.
    let (sender, events) = mpsc::channel(spec.concurrency.max(16));
    let task = crate::fetch::start(
        Arc::clone(urls),
        todo,
        spec.clone(),
        Arc::clone(&arena),
        Arc::clone(&counters),
        sender,
    )
    .map_err(|message| Error::Internal { message })?;
    Ok(FetchState {
        arena,
        events: Some(events),
        task: Some(task),
        counters,
        bodies: HashMap::new(),
        ready: BTreeSet::new(),
        unfetched,
        fetched: 0,
        failed: 0,
    })
}

/// The next report of the fetcher; `None` once it has reported every item.
async fn next_fetch_event(fetch: &mut Option<FetchState>) -> Option<FetchEvent> {
    match fetch.as_mut().and_then(|f| f.events.as_mut()) {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

impl Dispatcher {
    /// A fetch finished: the body joins the items ready to hand out, or the item is recorded `failed`.
    fn on_fetch(&mut self, event: Option<FetchEvent>) {
        let stopping = self.is_stopping();
        let Some(fetch) = self.fetch.as_mut() else { return };
        let Some(event) = event else {
            fetch.events = None;
            return;
        };
        fetch.unfetched = fetch.unfetched.saturating_sub(1);
        match event {
            FetchEvent::Fetched { item, slot } => {
                fetch.fetched += 1;
                if stopping {
                    fetch.arena.release(slot);
                    return;
                }
                fetch.bodies.insert(item, slot);
                fetch.ready.insert(item);
                self.fill_least_loaded_first();
            }
            FetchEvent::Failed { item, failure, elapsed } => {
                fetch.failed += 1;
                // Fetch failures were retried by the fetcher (`fetch_retries`), not by `[task] retries`.
                let elapsed_ms = elapsed.as_micros() as f64 / 1000.0;
                self.record(item, Status::Failed, None, Some(failure), Vec::new(), 0, elapsed_ms);
                if self.config.supervise.halt.reached(self.failed, self.total) {
                    self.stop(StopReason::Halt { failed: self.failed });
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Spawned { id, pid, pidfd } => {
                let stopping = self.is_stopping();
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.pid = pid;
                    worker.pidfd = pidfd;
                    if stopping {
                        worker.state = WorkerState::Stopping;
                        worker.kill();
                    }
                }
            }
            Event::SpawnFailed { id, error } => {
                self.workers.remove(&id);
                self.start_failed(error);
                self.replenish();
            }
            Event::Connected { id, to_worker } => {
                let stopping = self.is_stopping();
                let Some(worker) = self.workers.get_mut(&id) else {
                    return;
                };
                if stopping {
                    // Dropping the sender closes the channel: the worker exits without work.
                    worker.state = WorkerState::Stopping;
                    return;
                }
                to_worker.send(ToWorker::Init {
                    task: self.config.task.clone(),
                    args_json: self.config.args_json.clone(),
                    input: self
                        .items
                        .input_plan(self.fetch.as_ref().map(|f| f.arena.proc_path()).as_deref()),
                    limits: self.config.limits,
                    progress: worker.progress.as_ref().map(ProgressReader::path),
                    isolation: self.config.isolation.clone(),
                });
                to_worker.send(ToWorker::Identity { worker: id });
                worker.sender = Some(to_worker);
                worker.state = WorkerState::Initializing;
            }
            Event::Message { id, message } => self.on_message(id, message),
            Event::Frame { id, frame } => {
                if self
                    .workers
                    .get(&id)
                    .is_none_or(|worker| worker.protocol_error.is_some())
                {
                    // Killed for breaking the protocol: what it sent since is not even decoded.
                    return;
                }
                let decoded = frame.decode();
                // The raw bytes go back to the reader's budget before the message is handled.
                drop(frame);
                match decoded {
                    Ok(message) => self.on_message(id, message),
                    Err(error) => self.protocol_violation(id, format!("sent an undecodable message: {error}")),
                }
            }
            // A worker's exit is handled when both its exit status and the end of its channel have arrived: they
            // come from different threads, and results sent just before death must be counted first.
            Event::ChannelClosed { id, error } => {
                let Some(worker) = self.workers.get_mut(&id) else {
                    return;
                };
                worker.channel_closed = true;
                if let Some(error) = error {
                    self.protocol_violation(id, error);
                }
                let Some(worker) = self.workers.get_mut(&id) else {
                    return;
                };
                if worker.exit.is_some() {
                    self.on_exit(id);
                }
            }
            Event::Exited { id, info, stderr_tail } => {
                let Some(worker) = self.workers.get_mut(&id) else {
                    return;
                };
                worker.exit = Some((info, stderr_tail));
                if worker.channel_closed {
                    self.on_exit(id);
                }
            }
        }
    }

    fn on_message(&mut self, id: WorkerId, message: FromWorker) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.protocol_error.is_some() {
            // Killed for breaking the protocol: nothing more it says is believed.
            return;
        }
        match message {
            FromWorker::Ready if worker.state == WorkerState::Initializing => {
                worker.state = WorkerState::Ready;
                self.start_failures = 0;
                self.fill(id);
            }
            FromWorker::InitFailed { message } if worker.state == WorkerState::Initializing => {
                let reason = shared::frame::truncate_message(message);
                self.abandon(Error::WorkersCannotStart { reason });
            }
            // Told to stop while it was starting (the job ended meanwhile): its answer to `Init` comes late.
            FromWorker::Ready | FromWorker::InitFailed { .. }
                if worker.state == WorkerState::Stopping && worker.batches.is_empty() && worker.answered == 0 => {}
            FromWorker::Results { batch, first, outcomes } => self.on_results(id, batch, first, outcomes),
            other => self.protocol_violation(id, format!("sent an unexpected {} message", message_name(&other))),
        }
    }

    fn on_results(&mut self, id: WorkerId, batch_id: u64, first: u64, outcomes: Vec<Outcome>) {
        let count = outcomes.len() as u64;
        let head = self.workers.get(&id).and_then(|worker| worker.batches.front().copied());
        let valid = self.batches.get(&batch_id).is_some_and(|flight| {
            head == Some(batch_id)
                && flight.worker == id
                && first == flight.next
                && count > 0
                && count <= flight.end - flight.next
        });
        if !valid {
            let message = format!(
                "sent results for items {first}..{} of batch {batch_id}, which it was not running",
                first.saturating_add(count)
            );
            return self.protocol_violation(id, message);
        }
        if let Some(message) = oversized_value(first, &outcomes) {
            return self.protocol_violation(id, message);
        }
        let pid = self.workers.get(&id).map_or(0, |worker| worker.pid);
        let mut task_micros = 0;
        for (item, outcome) in (first..).zip(outcomes) {
            task_micros += outcome.elapsed_us;
            let elapsed_ms = outcome.elapsed_us as f64 / 1000.0;
            match outcome.result {
                Ok(value) => self.record_ok(item, value, pid, elapsed_ms),
                Err(error) => {
                    let failure = crate::failure::task_failure(error);
                    self.item_failed(item, failure, pid, elapsed_ms);
                }
            }
        }
        if let Some(worker) = self.workers.get_mut(&id) {
            if worker.answered == 0 {
                self.pids_with_results.push(pid);
            }
            worker.answered += count;
        }
        let Some(flight) = self.batches.get_mut(&batch_id) else {
            return;
        };
        flight.next += count;
        flight.task_micros += task_micros;
        if flight.next == flight.end {
            let (len, micros) = (flight.end - flight.first, flight.task_micros);
            self.batches.remove(&batch_id);
            self.sizer.observe(len, micros);
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.batches.pop_front();
            }
            self.fill(id);
            self.recycle_if_spent(id);
        }
    }

    fn on_exit(&mut self, id: WorkerId) {
        let Some(mut worker) = self.workers.remove(&id) else {
            return;
        };
        let Some((info, stderr_tail)) = worker.exit.take() else {
            return;
        };
        self.worker_stats.push(WorkerStats {
            pid: worker.pid,
            items: worker.answered,
            cpu_s: info.cpu.as_secs_f64(),
            max_rss_bytes: info.max_rss,
        });
        let stopping = self.is_stopping();
        if matches!(worker.state, WorkerState::Starting | WorkerState::Initializing) && !stopping {
            let tail = match crate::failure::last_lines(&stderr_tail) {
                lines if lines.is_empty() => String::new(),
                lines => format!("; stderr: {lines}"),
            };
            let how = match &worker.protocol_error {
                Some(error) => format!("{error}, and was killed"),
                None => format!("worker {} {}", worker.pid, describe_exit(info.status)),
            };
            self.start_failed(format!("{how} before it was ready{tail}"));
        }
        // Counted after the dead worker's item is recorded below: the death that trips the restart limit still
        // charges the item that caused it.
        let unexpected = worker.state != WorkerState::Stopping && !stopping;

        let mut queued = worker
            .batches
            .into_iter()
            .filter_map(|batch| self.batches.remove(&batch).map(|f| (batch, f)));
        let head = queued.next();
        // Batches queued behind the one it was running never started.
        let mut unstarted: Vec<(u64, u64)> = queued
            .map(|(_, flight)| (flight.next, flight.end - flight.next))
            .collect();
        // During a stop, a worker the dispatcher killed says nothing about its item (which stays not run); any
        // other death is still the item's, e.g. a timeout or a crash while a `soon` halt lets work finish.
        let attributable = self.stopped.is_none() || worker.timed_out.is_some() || !worker.killed_to_stop;
        if attributable && let Some((head_id, flight)) = head {
            let snapshot = worker.progress.as_ref().and_then(ProgressReader::read);
            let running = snapshot.filter(|s| {
                s.running
                    && s.batch == head_id
                    && (flight.next..flight.end).contains(&s.item)
                    && worker.protocol_error.is_none()
            });
            let culprit = worker
                .timed_out
                .or(running.map(|s| s.item))
                .or(flight.isolated.then_some(flight.first))
                .filter(|item| (flight.next..flight.end).contains(item));
            match culprit {
                Some(item) => {
                    let death = Death {
                        status: info.status,
                        timed_out: worker.timed_out.and(self.config.timeout),
                        protocol_error: worker.protocol_error.as_deref(),
                        stderr_tail: &stderr_tail,
                    };
                    let elapsed_us = match running {
                        Some(s) => monotonic_ns().saturating_sub(s.started_ns) / 1000,
                        None => flight.dispatched.elapsed().as_micros() as u64,
                    };
                    let elapsed_ms = elapsed_us as f64 / 1000.0;
                    let mut failure = crash_failure(death);
                    if info.status == sys::process::ExitStatus::Signal(libc::SIGBUS)
                        && let Some(cause) = crate::sigbus::explain(&self.items, item)
                    {
                        failure.message = cause;
                    }
                    self.item_failed(item, failure, worker.pid, elapsed_ms);
                    // Items before the culprit finished but their results were not sent yet; items after it never
                    // started. Both run again, uncharged.
                    unstarted.insert(0, (item + 1, flight.end - item - 1));
                    unstarted.insert(0, (flight.next, item - flight.next));
                }
                None => self.suspects.extend(flight.next..flight.end),
            }
        }
        if self.stopped.is_none() {
            for (first, len) in unstarted.into_iter().rev().filter(|(_, len)| *len > 0) {
                self.requeued.push_front((first, len));
            }
        }
        if unexpected {
            self.count_death();
        }
        self.replenish();
        self.fill_all();
    }

    /// Records a worker death that nobody asked for, and stops the job if they come too fast.
    fn count_death(&mut self) {
        let now = Instant::now();
        let SuperviseSpec {
            max_restarts, within, ..
        } = self.config.supervise;
        self.deaths.push_back(now);
        while self.deaths.front().is_some_and(|&at| now.duration_since(at) > within) {
            self.deaths.pop_front();
        }
        if self.deaths.len() > max_restarts as usize {
            self.stop(StopReason::RestartIntensity {
                deaths: self.deaths.len(),
                within,
            });
        }
    }

    /// Kills workers that have not become ready within `[supervise] start_timeout` of their launch (a
    /// `worker_bin` that is not a worker and never says hello, a task whose set-up hangs): a start failure, which
    /// ends the run after a few in a row, instead of a run that waits forever.
    fn check_start_timeouts(&mut self) {
        let limit = self.config.supervise.start_timeout;
        for worker in self.workers.values_mut() {
            let starting = matches!(worker.state, WorkerState::Starting | WorkerState::Initializing);
            if starting && worker.protocol_error.is_none() && worker.launched.elapsed() > limit {
                let said = if worker.state == WorkerState::Starting {
                    "never said hello"
                } else {
                    "never answered Init"
                };
                let error = format!(
                    "worker {} {said} within start_timeout = {}",
                    worker.pid,
                    crate::failure::human_duration(limit)
                );
                worker.kill();
                self.progress.message(&format!("{error}: killed it"));
                worker.protocol_error = Some(error);
            }
        }
    }

    /// Kills workers whose current item has run past the timeout.
    fn check_timeouts(&mut self) {
        let Some(timeout) = self.config.timeout else { return };
        let now = monotonic_ns();
        let limit = timeout.as_nanos() as u64;
        for worker in self.workers.values_mut() {
            // Stopping workers still run the items they hold (a `soon` halt, a graceful stop): timeouts apply.
            if worker.timed_out.is_some() || worker.batches.is_empty() || worker.pidfd.is_none() {
                continue;
            }
            let Some(snapshot) = worker.progress.as_ref().and_then(ProgressReader::read) else {
                continue;
            };
            if snapshot.running && now.saturating_sub(snapshot.started_ns) > limit {
                worker.timed_out = Some(snapshot.item);
                worker.kill();
            }
        }
    }

    /// Like [`Dispatcher::fill_all`], but workers holding fewer batches choose first: when fetched items trickle
    /// in one by one, an idle worker gets the next one before a busy worker queues it behind its current item.
    fn fill_least_loaded_first(&mut self) {
        let mut ids: Vec<(usize, WorkerId)> = self.workers.iter().map(|(id, w)| (w.batches.len(), *id)).collect();
        ids.sort_unstable();
        for (_, id) in ids {
            self.fill(id);
        }
    }

    fn fill_all(&mut self) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.fill(id);
        }
    }

    /// Hands `id` work until it holds enough batches (or one item run alone), if it is ready and work is
    /// left.
    fn fill(&mut self, id: WorkerId) {
        if self.is_stopping() {
            return;
        }
        loop {
            let Some(worker) = self.workers.get(&id) else { return };
            let prefetch = self
                .sizer
                .prefetch(self.sizer.next_size(self.unassigned(), self.target_workers));
            if worker.state != WorkerState::Ready || worker.batches.len() >= prefetch {
                return;
            }
            let quota = self
                .config
                .max_tasks
                .map_or(u64::MAX, |max| max.saturating_sub(worker.assigned));
            let holds_single = worker
                .batches
                .iter()
                .any(|b| self.batches.get(b).is_some_and(|f| f.isolated));
            if quota == 0 || holds_single {
                return;
            }
            let idle = worker.batches.is_empty();
            // A second, prefetched batch only when there is work left for every worker: with few items, one
            // worker must not hold two while another starts up with none.
            if !idle && self.unassigned() < self.target_workers as u64 {
                return;
            }
            let now = Instant::now();
            let ready_retry = self.retry_at.iter().position(|(at, _)| *at <= now);
            let (first, len, isolated) = if !self.suspects.is_empty() || ready_retry.is_some() {
                // A single item runs on a worker that holds nothing else, so that its death is attributable.
                if !idle {
                    return;
                }
                let item = match self.suspects.pop_front() {
                    Some(item) => item,
                    None => match ready_retry {
                        Some(index) => self.retry_at.swap_remove(index).1,
                        None => return,
                    },
                };
                (item, 1, true)
            } else {
                let remaining = self.fresh_left() + self.requeued.iter().map(|(_, len)| len).sum::<u64>();
                let size = self.sizer.next_size(remaining, self.target_workers).min(quota);
                if let Some((first, len)) = self.requeued.front_mut() {
                    let take = size.min(*len);
                    let span = (*first, take, false);
                    *first += take;
                    *len -= take;
                    if *len == 0 {
                        self.requeued.pop_front();
                    }
                    span
                } else if let Some(fetch) = self.fetch.as_mut() {
                    // Fetched items, in runs of consecutive numbers.
                    let Some(&first) = fetch.ready.first() else { return };
                    let mut end = first;
                    while end - first < size && fetch.ready.remove(&end) {
                        end += 1;
                    }
                    (first, end - first, false)
                } else {
                    // Fresh items, skipping those an earlier run recorded: a batch is a run of consecutive items.
                    while self.next_item < self.end && self.is_done_before(self.next_item) {
                        self.next_item += 1;
                    }
                    if self.next_item >= self.end {
                        return;
                    }
                    let first = self.next_item;
                    let mut end = first + 1;
                    while end < self.end && end - first < size && !self.is_done_before(end) {
                        end += 1;
                    }
                    self.next_item = end;
                    (first, end - first, false)
                }
            };
            self.send_batch(id, first, len, isolated);
        }
    }

    /// Replaces a worker that has run its `max_tasks` items, once it has answered them.
    fn recycle_if_spent(&mut self, id: WorkerId) {
        let Some(max) = self.config.max_tasks else { return };
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.state == WorkerState::Ready && worker.assigned >= max && worker.batches.is_empty() {
            worker.stop();
            self.replenish();
        }
    }

    fn send_batch(&mut self, id: WorkerId, first: u64, len: u64, isolated: bool) {
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let bodies = self.fetch.as_ref().map(|f| &f.bodies);
        let batch = self.items.batch(batch_id, first, len, |item| {
            bodies.and_then(|b| b.get(&item)).map(|slot| (slot.offset, slot.len))
        });
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        // If the writer is gone the worker is dying; the batch is then handled as unanswered when it exits.
        if let Some(sender) = &worker.sender {
            // Retried items (few, and usually alone in their batch) are told their attempt number first.
            for (&item, errors) in &self.attempt_errors {
                if (first..first + len).contains(&item) && !errors.is_empty() {
                    let attempt = errors.len() as u32 + 1;
                    sender.send(ToWorker::Attempt { item, attempt });
                }
            }
            sender.send(ToWorker::Batch(batch));
        }
        worker.batches.push_back(batch_id);
        worker.assigned += len;
        let flight = InFlight {
            worker: id,
            first,
            next: first,
            end: first + len,
            isolated,
            dispatched: Instant::now(),
            task_micros: 0,
        };
        self.batches.insert(batch_id, flight);
    }

    /// Launches workers until the target count is running, while there is work they could take.
    fn replenish(&mut self) {
        if self.is_stopping() {
            return;
        }
        while self.next_item < self.end && self.is_done_before(self.next_item) {
            self.next_item += 1;
        }
        let work_left = self.fresh_left() > 0
            || !self.requeued.is_empty()
            || !self.suspects.is_empty()
            || !self.retry_at.is_empty();
        if !work_left {
            return;
        }
        while self
            .workers
            .values()
            .filter(|w| w.state != WorkerState::Stopping)
            .count()
            < self.target_workers
        {
            let id = self.next_worker_id;
            self.next_worker_id += 1;
            let worker = Worker {
                state: WorkerState::Starting,
                pid: 0,
                pidfd: None,
                sender: None,
                // Without a progress slot, attribution falls back to re-running suspects alone.
                progress: if self.config.progress_slots {
                    SharedPage::create().ok().map(ProgressReader::new)
                } else {
                    None
                },
                batches: VecDeque::new(),
                protocol_error: None,
                timed_out: None,
                killed_to_stop: false,
                assigned: 0,
                answered: 0,
                channel_closed: false,
                exit: None,
                launched: Instant::now(),
            };
            self.workers.insert(id, worker);
            self.launcher.launch(id);
        }
    }

    fn start_failed(&mut self, reason: String) {
        self.start_failures += 1;
        if self.start_failures >= MAX_START_FAILURES {
            self.abandon(Error::WorkersCannotStart { reason });
        }
    }

    /// Kills a worker that sent something it should not have. Its items are settled when it exits (see
    /// `on_exit`: its progress slot is no longer trusted); the violation is also said on stderr, since it may
    /// cost no item at all (a repeated result, a violation between items).
    fn protocol_violation(&mut self, id: WorkerId, message: String) {
        if let Some(worker) = self.workers.get_mut(&id)
            && worker.protocol_error.is_none()
        {
            let error = format!("worker {} {message}", worker.pid);
            worker.kill();
            self.progress
                .message(&format!("{error}: killed it (protocol violation)"));
            worker.protocol_error = Some(error);
        }
    }

    /// Gives up on the job: kills every worker and remembers why.
    fn abandon(&mut self, error: Error) {
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        if let Some(fetch) = &mut self.fetch {
            fetch.stop();
        }
        self.kill_all();
    }

    fn on_signal(&mut self, signal: StopSignal) {
        match self.escalation.on_signal(signal) {
            StopAction::Graceful(signal) => {
                self.progress.message(&format!(
                    "{} received: finishing work in progress (up to {}); again to kill now",
                    signal.name(),
                    crate::failure::human_duration(self.config.supervise.grace)
                ));
                if self.stopped.is_some() {
                    // Already stopping (a halt): the signal bounds the wait for work in progress.
                    self.kill_deadline
                        .get_or_insert(TokioInstant::now() + self.config.supervise.grace);
                }
                self.stop(StopReason::Signal(signal));
            }
            StopAction::Kill => self.kill_all(),
        }
    }

    /// Stops handing out work. A signal or a `soon` halt lets workers finish what they hold (a signal within the
    /// grace period); a `now` halt and a restart storm kill them.
    fn stop(&mut self, reason: StopReason) {
        if self.stopped.is_some() {
            return;
        }
        self.stopped = Some(reason);
        if let Some(fetch) = &mut self.fetch {
            fetch.stop();
        }
        match reason {
            StopReason::Signal(_) => {
                self.shut_down_workers();
                self.kill_deadline
                    .get_or_insert(TokioInstant::now() + self.config.supervise.grace);
            }
            StopReason::Halt { .. } if !self.config.supervise.halt.now => self.shut_down_workers(),
            StopReason::Halt { .. } | StopReason::RestartIntensity { .. } => self.kill_all(),
        }
    }

    /// Once every item has a record, tells the workers to exit.
    fn check_complete(&mut self) {
        if !self.finishing && self.recorded == self.total {
            self.finishing = true;
            self.shut_down_workers();
            self.kill_deadline
                .get_or_insert(TokioInstant::now() + self.config.supervise.grace);
        }
    }

    fn shut_down_workers(&mut self) {
        for worker in self.workers.values_mut() {
            worker.stop();
        }
    }

    fn kill_all(&mut self) {
        for worker in self.workers.values_mut() {
            worker.sender = None;
            worker.state = WorkerState::Stopping;
            worker.killed_to_stop = true;
            worker.kill();
        }
    }

    /// New items not handed out yet: `next_item ..`, or for a `urls` input the fetched items not handed out and
    /// the items still being fetched.
    fn fresh_left(&self) -> u64 {
        let fetching = self.fetch.as_ref().map_or(0, |f| f.ready.len() as u64 + f.unfetched);
        self.end - self.next_item + fetching
    }

    /// Items not handed to any worker yet (an upper bound: items an earlier run recorded are counted too).
    fn unassigned(&self) -> u64 {
        self.fresh_left()
            + self.requeued.iter().map(|(_, len)| len).sum::<u64>()
            + self.suspects.len() as u64
            + self.retry_at.len() as u64
    }

    fn is_done_before(&self, item: u64) -> bool {
        self.done_before.get(item as usize).copied().unwrap_or(false)
    }

    fn is_stopping(&self) -> bool {
        self.finishing || self.stopped.is_some() || self.fatal.is_some()
    }

    fn next_retry(&self) -> Option<Instant> {
        if self.is_stopping() {
            return None;
        }
        self.retry_at.iter().map(|(at, _)| *at).min()
    }

    fn record_ok(&mut self, item: u64, value: Value, pid: u32, elapsed_ms: f64) {
        self.reducer.add(&value);
        let attempt_errors = self.attempt_errors.remove(&item).unwrap_or_default();
        self.record(item, Status::Ok, Some(value), None, attempt_errors, pid, elapsed_ms);
    }

    /// An attempt of `item` failed: retry it if it has retries left, record it failed otherwise.
    fn item_failed(&mut self, item: u64, failure: Failure, pid: u32, elapsed_ms: f64) {
        let errors = self.attempt_errors.entry(item).or_default();
        errors.push(failure.clone());
        let attempts = errors.len() as u32;
        if attempts <= self.config.retries && !self.is_stopping() {
            let backoff = self.config.retry_backoff.saturating_mul(1 << (attempts - 1).min(16));
            self.retry_at.push((Instant::now() + backoff, item));
            self.retries += 1;
            self.replenish();
            return;
        }
        let mut attempt_errors = self.attempt_errors.remove(&item).unwrap_or_default();
        if attempt_errors.len() == 1 {
            // One attempt: `error` says it all.
            attempt_errors.clear();
        }
        let failure = Some(failure);
        self.record(item, Status::Failed, None, failure, attempt_errors, pid, elapsed_ms);
        if self.config.supervise.halt.reached(self.failed, self.total) {
            self.stop(StopReason::Halt { failed: self.failed });
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "a record is built from all of these in one place"
    )]
    fn record(
        &mut self,
        item: u64,
        status: Status,
        value: Option<Value>,
        error: Option<Failure>,
        attempt_errors: Vec<Failure>,
        pid: u32,
        elapsed_ms: f64,
    ) {
        self.recorded += 1;
        // The item's body is no longer needed: its memory goes back, and fetching may go on.
        if let Some(fetch) = &mut self.fetch
            && let Some(slot) = fetch.bodies.remove(&item)
        {
            fetch.arena.release(slot);
        }
        match status {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
        }
        if let Some(failure) = &error
            && self.failures.len() < FAILURES_SHOWN
        {
            self.failures.push((item, failure.clone()));
        }
        self.first_result.get_or_insert_with(|| self.started.elapsed());
        if self.writer.is_some() {
            let input = self.items.describe(item);
            let attempts = match status {
                Status::Ok => attempt_errors.len() as u32 + 1,
                Status::Failed => (attempt_errors.len() as u32).max(1),
            };
            let record = Record {
                item,
                status,
                value,
                error,
                attempts,
                attempt_errors,
                pid,
                elapsed_ms,
                input,
            };
            self.pending_records.push(record);
        }
    }

    async fn flush_records(&mut self) {
        if self.pending_records.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.pending_records);
        if let Some(writer) = &self.writer
            && !writer.write(records).await
        {
            // The writer stopped on an I/O error; `finish` reports it. Stop feeding it.
            self.pending_records.clear();
            if let Some(writer) = self.writer.take() {
                let error = writer.finish(false).await.err();
                self.abandon(error.unwrap_or(Error::Internal {
                    message: "results writer stopped".into(),
                }));
            }
        }
    }

    async fn into_outcome(mut self) -> Result<RunOutcome, Error> {
        if let Some(writer) = self.writer.take() {
            let complete = self.recorded == self.total;
            writer.finish(complete).await?;
        }
        if let Some(error) = self.fatal {
            return Err(error);
        }
        Ok(RunOutcome {
            items: self.total,
            ok: self.ok,
            failed: self.failed,
            workers: self.target_workers,
            workers_started: self.next_worker_id,
            worker_pids: self.pids_with_results,
            wall: self.started.elapsed(),
            first_result: self.first_result,
            ipc_bytes: self.counter.bytes.load(Ordering::Relaxed),
            ipc_messages: self.counter.messages.load(Ordering::Relaxed),
            reducer: self.reducer,
            failures: self.failures,
            stopped: self.stopped,
            worker_stats: self.worker_stats,
            batches: self.next_batch_id,
            retries: self.retries,
            resumed: self.resumed,
            fetch: self.fetch.as_ref().map(|f| FetchStats {
                fetched: f.fetched,
                failed: f.failed,
                bytes: f.counters.bytes.load(Ordering::Relaxed),
                requests: f.counters.requests.load(Ordering::Relaxed),
                max_in_flight_bytes: f.arena.budget_bytes(),
                peak_in_flight_bytes: f.arena.peak_in_use(),
            }),
        })
    }
}

/// Names the first value in `outcomes` larger than `shared::frame::MAX_RESULT_BYTES` encoded, if any. An honest
/// worker fails such an item itself, so receiving one is a protocol violation.
fn oversized_value(first: u64, outcomes: &[Outcome]) -> Option<String> {
    outcomes.iter().zip(first..).find_map(|(outcome, item)| {
        let value = outcome.result.as_ref().ok()?;
        let size = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(usize::MAX);
        (size > shared::frame::MAX_RESULT_BYTES).then(|| {
            format!(
                "sent a result of {size} bytes for item {item}, more than the limit of {} bytes",
                shared::frame::MAX_RESULT_BYTES
            )
        })
    })
}
