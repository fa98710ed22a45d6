//! The dispatcher: the one owner of job state.
//!
//! It knows which items are pending, in flight (and on which worker), and done; it reacts to pool events,
//! signals and timers in one `select!` loop, and nothing else mutates that state.
//!
//! ## An item's way
//! Items are handed out in input order, in batches sized by [`BatchSizer`], at most [`PREFETCH`] batches queued
//! per worker so that a worker never waits for its next batch. A worker answers each batch with consecutive
//! results; a batch is done when every item is answered.
//!
//! ## When a worker dies
//! The worker is reaped by the pool and replaced. Its queued batches had not started: they go back to the
//! front of the queue, uncharged. The items of the batch it was running that it had not answered are
//! *suspects*: each is run again alone, on a worker holding nothing else, so that a death there is exactly
//! attributable. Only an item whose worker dies while running it alone is recorded `failed` (kind `signal`,
//! `exit` or `protocol`, with the worker's stderr tail); co-batched items end `ok`.
//!
//! ## Stopping
//! When every item has a record, workers are told to shut down. On the first SIGINT/SIGTERM nothing more is
//! handed out, workers finish what they hold within the grace period, then are killed; items without a record
//! are reported as not run. A second signal kills at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shared::item::Value;
use shared::protocol::{FromWorker, Outcome, TaskErrorKind, ToWorker};
use tokio::sync::mpsc;
use tokio::time::{Instant as TokioInstant, sleep_until};

use crate::batching::BatchSizer;
use crate::error::Error;
use crate::linux::{ExitInfo, ExitStatus, Pidfd, signal_name};
use crate::plan::Items;
use crate::pool::{Event, IpcCounter, Launcher, WorkerId, WorkerSender, message_name};
use crate::report::Progress;
use crate::results::{Failure, FailureKind, Record, Reducer, ResultsWriter, Status};
use crate::signal::{Escalation, StopAction, StopSignal};

/// Batches queued per worker: one running, one waiting.
pub const PREFETCH: usize = 2;

/// Time workers get to finish after a stop request or at the end, before they are killed.
pub const GRACE: Duration = Duration::from_secs(5);

/// Workers in a row that fail before becoming ready before the job is abandoned.
const MAX_START_FAILURES: u32 = 3;

/// Failures kept for the summary.
const FAILURES_SHOWN: usize = 20;

/// What the dispatcher needs to run a job.
#[derive(Debug)]
pub struct DispatchConfig {
    pub workers: usize,
    pub task: String,
    pub args_json: String,
    pub batch: Option<u64>,
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
    pub stopped_by: Option<StopSignal>,
    /// CPU time (user + system) of all workers.
    pub worker_cpu: Duration,
    /// Largest peak RSS of any one worker, in bytes.
    pub worker_max_rss: u64,
    pub batches: u64,
}

/// One worker's lifecycle. `Busy` is `Ready` with batches queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    /// Launch requested; no process or no hello yet.
    Starting,
    /// Hello received, `Init` sent.
    Initializing,
    Ready,
    /// Told to shut down (or being killed); waiting for its exit.
    Stopping,
}

#[derive(Debug)]
struct Worker {
    state: WorkerState,
    pid: u32,
    pidfd: Option<Pidfd>,
    sender: Option<WorkerSender>,
    /// Batch ids in the order the worker will run them.
    batches: VecDeque<u64>,
    /// Set when the worker broke the protocol; it has been killed and this becomes the items' cause.
    protocol_error: Option<String>,
    answered: bool,
}

impl Worker {
    fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            let _ = pidfd.signal(libc::SIGKILL);
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
    /// A suspect run alone: a death now is this item's fault.
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
    total: u64,
    target_workers: usize,

    workers: BTreeMap<WorkerId, Worker>,
    next_worker_id: WorkerId,
    start_failures: u32,

    /// Next item never handed out.
    next_item: u64,
    /// Spans `(first, len)` to hand out again before new items (batches of a dead worker that never started).
    requeued: VecDeque<(u64, u64)>,
    /// Items to run alone.
    suspects: VecDeque<u64>,
    batches: HashMap<u64, InFlight>,
    next_batch_id: u64,
    sizer: BatchSizer,

    recorded: u64,
    ok: u64,
    failed: u64,
    reducer: Reducer,
    failures: Vec<(u64, Failure)>,
    pending_records: Vec<Record>,
    writer: Option<ResultsWriter>,
    progress: Progress,
    pids_with_results: Vec<u32>,
    first_result: Option<Duration>,
    worker_cpu: Duration,
    worker_max_rss: u64,

    escalation: Escalation,
    stopped_by: Option<StopSignal>,
    finishing: bool,
    kill_deadline: Option<TokioInstant>,
    fatal: Option<Error>,
}

/// Runs the job to completion (or until stopped) and returns how it went.
pub async fn run(
    items: Arc<Items>,
    config: DispatchConfig,
    reducer: Reducer,
    writer: Option<ResultsWriter>,
    progress: Progress,
) -> Result<RunOutcome, Error> {
    let (events_sender, mut events) = mpsc::channel(1024);
    let counter = Arc::new(IpcCounter::default());
    let launcher = Launcher::start(events_sender, Arc::clone(&counter)).map_err(|error| {
        Error::WorkersCannotStart {
            reason: format!("cannot start the launcher: {error}"),
        }
    })?;
    let mut signals = crate::signal::listen().map_err(|error| Error::Internal {
        message: format!("cannot listen for signals: {error}"),
    })?;
    let total = items.len();
    let target_workers = config
        .workers
        .min(usize::try_from(total).unwrap_or(usize::MAX))
        .max(1);
    let sizer = BatchSizer::new(config.batch, items.batch_cap());
    let mut dispatcher = Dispatcher {
        items,
        config,
        launcher,
        counter,
        started: Instant::now(),
        total,
        target_workers,
        workers: BTreeMap::new(),
        next_worker_id: 0,
        start_failures: 0,
        next_item: 0,
        requeued: VecDeque::new(),
        suspects: VecDeque::new(),
        batches: HashMap::new(),
        next_batch_id: 0,
        sizer,
        recorded: 0,
        ok: 0,
        failed: 0,
        reducer,
        failures: Vec::new(),
        pending_records: Vec::new(),
        writer,
        progress,
        pids_with_results: Vec::new(),
        first_result: None,
        worker_cpu: Duration::ZERO,
        worker_max_rss: 0,
        escalation: Escalation::default(),
        stopped_by: None,
        finishing: false,
        kill_deadline: None,
        fatal: None,
    };
    dispatcher.replenish();
    dispatcher.check_complete();

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !dispatcher.workers.is_empty() {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => dispatcher.handle(event),
                None => break,
            },
            Some(signal) = signals.recv() => dispatcher.on_signal(signal),
            _ = tick.tick() => dispatcher.progress.update(dispatcher.recorded, dispatcher.failed),
            _ = sleep_until(dispatcher.kill_deadline.unwrap_or_else(TokioInstant::now)), if dispatcher.kill_deadline.is_some() => {
                dispatcher.kill_deadline = None;
                dispatcher.kill_all();
            }
        }
        dispatcher.flush_records().await;
        dispatcher.check_complete();
    }
    dispatcher.flush_records().await;
    dispatcher
        .progress
        .finish(dispatcher.recorded, dispatcher.failed);
    dispatcher.into_outcome().await
}

impl Dispatcher {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Spawned { id, pid, pidfd } => {
                let stopping = self.is_stopping();
                if let Some(worker) = self.workers.get_mut(&id) {
                    worker.pid = pid;
                    worker.pidfd = Some(pidfd);
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
                    input: self.items.input_plan(),
                });
                worker.sender = Some(to_worker);
                worker.state = WorkerState::Initializing;
            }
            Event::Message { id, message } => self.on_message(id, message),
            Event::ChannelClosed { id, error } => {
                if let (Some(error), Some(worker)) = (error, self.workers.get_mut(&id)) {
                    worker.protocol_error.get_or_insert(error);
                    worker.kill();
                }
            }
            Event::Exited {
                id,
                info,
                stderr_tail,
            } => self.on_exit(id, info, stderr_tail),
        }
    }

    fn on_message(&mut self, id: WorkerId, message: FromWorker) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        match message {
            FromWorker::Ready if worker.state == WorkerState::Initializing => {
                worker.state = WorkerState::Ready;
                self.start_failures = 0;
                self.fill(id);
            }
            FromWorker::InitFailed { message } => {
                self.abandon(Error::WorkersCannotStart { reason: message });
            }
            FromWorker::Results {
                batch,
                first,
                outcomes,
            } => self.on_results(id, batch, first, outcomes),
            other => {
                self.protocol_violation(id, format!("unexpected {} message", message_name(&other)))
            }
        }
    }

    fn on_results(&mut self, id: WorkerId, batch_id: u64, first: u64, outcomes: Vec<Outcome>) {
        let count = outcomes.len() as u64;
        let head = self
            .workers
            .get(&id)
            .and_then(|worker| worker.batches.front().copied());
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
                first + count
            );
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
                    let kind = match error.kind {
                        TaskErrorKind::Error => FailureKind::Error,
                        TaskErrorKind::Panic => FailureKind::Panic,
                    };
                    let failure = Failure {
                        kind,
                        message: error.message,
                        signal: None,
                        code: None,
                        stderr: None,
                    };
                    self.record(item, Status::Failed, None, Some(failure), pid, elapsed_ms);
                }
            }
        }
        if let Some(worker) = self.workers.get_mut(&id)
            && !worker.answered
        {
            worker.answered = true;
            self.pids_with_results.push(pid);
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
        }
    }

    fn on_exit(&mut self, id: WorkerId, info: ExitInfo, stderr_tail: String) {
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        self.worker_cpu += info.cpu;
        self.worker_max_rss = self.worker_max_rss.max(info.max_rss);
        let never_ready = matches!(
            worker.state,
            WorkerState::Starting | WorkerState::Initializing
        );
        if never_ready && !self.is_stopping() {
            let tail = if stderr_tail.is_empty() {
                String::new()
            } else {
                format!("; stderr: {stderr_tail}")
            };
            self.start_failed(format!(
                "worker {} {} before it was ready{tail}",
                worker.pid,
                describe_exit(info.status)
            ));
        }
        let mut queued = worker.batches.into_iter();
        if let Some(head) = queued.next()
            && let Some(flight) = self.batches.remove(&head)
            && self.stopped_by.is_none()
        {
            if flight.isolated {
                let failure = crash_failure(info.status, worker.protocol_error, &stderr_tail);
                let elapsed_ms = flight.dispatched.elapsed().as_secs_f64() * 1000.0;
                self.record(
                    flight.first,
                    Status::Failed,
                    None,
                    Some(failure),
                    worker.pid,
                    elapsed_ms,
                );
            } else {
                self.suspects.extend(flight.next..flight.end);
            }
        }
        // Batches queued behind the one it was running never started: back to the front of the line, in order.
        let never_started: Vec<(u64, u64)> = queued
            .filter_map(|batch| self.batches.remove(&batch))
            .map(|flight| (flight.next, flight.end - flight.next))
            .collect();
        if self.stopped_by.is_none() {
            for span in never_started.into_iter().rev() {
                self.requeued.push_front(span);
            }
        }
        self.replenish();
        let ready: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ready {
            self.fill(id);
        }
    }

    /// Hands `id` work until it holds [`PREFETCH`] batches (or one suspect), if it is ready and work is left.
    fn fill(&mut self, id: WorkerId) {
        if self.is_stopping() {
            return;
        }
        loop {
            let Some(worker) = self.workers.get(&id) else {
                return;
            };
            if worker.state != WorkerState::Ready || worker.batches.len() >= PREFETCH {
                return;
            }
            let holds_suspect = worker
                .batches
                .iter()
                .any(|b| self.batches.get(b).is_some_and(|f| f.isolated));
            if holds_suspect {
                return;
            }
            let (first, len, isolated) = if !self.suspects.is_empty() {
                if !worker.batches.is_empty() {
                    return;
                }
                let Some(item) = self.suspects.pop_front() else {
                    return;
                };
                (item, 1, true)
            } else {
                let remaining = self.total - self.next_item
                    + self.requeued.iter().map(|(_, len)| len).sum::<u64>();
                let size = self.sizer.next_size(remaining, self.target_workers);
                if let Some((first, len)) = self.requeued.front_mut() {
                    let take = size.min(*len);
                    let span = (*first, take, false);
                    *first += take;
                    *len -= take;
                    if *len == 0 {
                        self.requeued.pop_front();
                    }
                    span
                } else if self.next_item < self.total {
                    let span = (self.next_item, size, false);
                    self.next_item += size;
                    span
                } else {
                    return;
                }
            };
            self.send_batch(id, first, len, isolated);
        }
    }

    fn send_batch(&mut self, id: WorkerId, first: u64, len: u64, isolated: bool) {
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let batch = self.items.batch(batch_id, first, len);
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        // If the writer is gone the worker is dying; the batch is then handled as unanswered when it exits.
        if let Some(sender) = &worker.sender {
            sender.send(ToWorker::Batch(batch));
        }
        worker.batches.push_back(batch_id);
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
        let work_left =
            self.next_item < self.total || !self.requeued.is_empty() || !self.suspects.is_empty();
        if !work_left {
            return;
        }
        while self.workers.len() < self.target_workers {
            let id = self.next_worker_id;
            self.next_worker_id += 1;
            self.workers.insert(
                id,
                Worker {
                    state: WorkerState::Starting,
                    pid: 0,
                    pidfd: None,
                    sender: None,
                    batches: VecDeque::new(),
                    protocol_error: None,
                    answered: false,
                },
            );
            self.launcher.launch(id);
        }
    }

    fn start_failed(&mut self, reason: String) {
        self.start_failures += 1;
        if self.start_failures >= MAX_START_FAILURES {
            self.abandon(Error::WorkersCannotStart { reason });
        }
    }

    fn protocol_violation(&mut self, id: WorkerId, message: String) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker
                .protocol_error
                .get_or_insert(format!("worker {} {message}", worker.pid));
            worker.state = WorkerState::Stopping;
            worker.kill();
        }
    }

    /// Gives up on the job: kills every worker and remembers why.
    fn abandon(&mut self, error: Error) {
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        self.kill_all();
    }

    fn on_signal(&mut self, signal: StopSignal) {
        match self.escalation.on_signal(signal) {
            StopAction::Graceful(signal) => {
                self.stopped_by = Some(signal);
                self.progress.message(&format!(
                    "{} received: finishing work in progress (up to {}s); again to kill now",
                    signal.name(),
                    GRACE.as_secs()
                ));
                self.shut_down_workers();
            }
            StopAction::Kill => self.kill_all(),
        }
    }

    /// Once every item has a record, tells the workers to exit.
    fn check_complete(&mut self) {
        if !self.finishing && self.recorded == self.total {
            self.finishing = true;
            self.shut_down_workers();
        }
    }

    fn shut_down_workers(&mut self) {
        for worker in self.workers.values_mut() {
            match worker.sender.take() {
                Some(sender) => {
                    sender.send(ToWorker::Shutdown);
                }
                None => worker.kill(),
            }
            worker.state = WorkerState::Stopping;
        }
        self.kill_deadline
            .get_or_insert(TokioInstant::now() + GRACE);
    }

    fn kill_all(&mut self) {
        for worker in self.workers.values_mut() {
            worker.sender = None;
            worker.state = WorkerState::Stopping;
            worker.kill();
        }
    }

    fn is_stopping(&self) -> bool {
        self.finishing || self.stopped_by.is_some() || self.fatal.is_some()
    }

    fn record_ok(&mut self, item: u64, value: Value, pid: u32, elapsed_ms: f64) {
        self.reducer.add(&value);
        self.record(item, Status::Ok, Some(value), None, pid, elapsed_ms);
    }

    fn record(
        &mut self,
        item: u64,
        status: Status,
        value: Option<Value>,
        error: Option<Failure>,
        pid: u32,
        elapsed_ms: f64,
    ) {
        self.recorded += 1;
        match status {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
        }
        if let Some(failure) = &error
            && self.failures.len() < FAILURES_SHOWN
        {
            self.failures.push((item, failure.clone()));
        }
        self.first_result
            .get_or_insert_with(|| self.started.elapsed());
        if self.writer.is_some() {
            let input = self.items.describe(item);
            self.pending_records.push(Record {
                item,
                status,
                value,
                error,
                attempts: 1,
                pid,
                elapsed_ms,
                input,
            });
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
                let error = writer.finish().await.err();
                self.abandon(error.unwrap_or(Error::Internal {
                    message: "results writer stopped".into(),
                }));
            }
        }
    }

    async fn into_outcome(mut self) -> Result<RunOutcome, Error> {
        if let Some(writer) = self.writer.take() {
            writer.finish().await?;
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
            stopped_by: self.stopped_by,
            worker_cpu: self.worker_cpu,
            worker_max_rss: self.worker_max_rss,
            batches: self.next_batch_id,
        })
    }
}

/// The failure of an item whose worker died while running it alone.
fn crash_failure(status: ExitStatus, protocol_error: Option<String>, stderr_tail: &str) -> Failure {
    let stderr = (!stderr_tail.is_empty()).then(|| stderr_tail.to_string());
    if let Some(message) = protocol_error {
        return Failure {
            kind: FailureKind::Protocol,
            message,
            signal: None,
            code: None,
            stderr,
        };
    }
    match status {
        ExitStatus::Signal(signal) => {
            let name = signal_name(signal);
            Failure {
                kind: FailureKind::Signal,
                message: format!("worker killed by {name} while running this item"),
                signal: Some(name),
                code: None,
                stderr,
            }
        }
        ExitStatus::Code(code) => Failure {
            kind: FailureKind::Exit,
            message: format!("worker exited with code {code} while running this item"),
            signal: None,
            code: Some(code),
            stderr,
        },
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match status {
        ExitStatus::Signal(signal) => format!("was killed by {}", signal_name(signal)),
        ExitStatus::Code(code) => format!("exited with code {code}"),
    }
}
