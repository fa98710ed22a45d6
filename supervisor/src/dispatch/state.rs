//! The dispatcher's state machine: what each pool event, fetch event, signal and timer means for the job.
//!
//! It owns the job state through its parts (the [`WorkQueue`], the [`Workers`] table, the batches in flight,
//! the [`Tallies`]) and produces records; it never awaits, never prints, and starts or kills workers only
//! through the [`Launch`] it was given. The driver calls it; the unit tests call it the same way, with a fake
//! launcher. Handing out work is in `handout`, a worker's end and the timer kills in `deaths`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shared::item::Value;
use shared::progress::{ProgressReader, monotonic_ns};
use shared::protocol::{FromWorker, Outcome, ToWorker};
use shared::region::SharedPage;

use super::attribution::{Blame, DeathFacts, blame};
use super::fetching::FetchState;
use super::queue::WorkQueue;
use super::source::Source;
use super::tallies::Tallies;
use super::workers::{KillCause, WorkerState, Workers};
use super::{DispatchConfig, Launch, Reporter, RunOutcome, StopReason, WorkerStats};
use crate::batching::BatchSizer;
use crate::error::Error;
use crate::failure::{Death, crash_failure, describe_exit};
use crate::fetch::FetchEvent;
use crate::input::Pulled;
use crate::journal::Done;
use crate::pool::{Event, WorkerId, message_name};
use crate::results::{Failure, Record, Reducer, Status};
use crate::signal::{Escalation, StopAction, StopSignal};

mod deaths;
mod handout;

/// Workers in a row that fail before becoming ready before the job is abandoned.
pub(super) const MAX_START_FAILURES: u32 = 3;

/// The stall deadline: how long a worker that holds work may stay between items without a sign of life before
/// it is taken for stopped or stuck. Between items a healthy worker only moves to its next item (microseconds),
/// so the deadline is generous: `start_timeout` (the time a worker is given to set itself up), or the `timeout`
/// when that is longer. It exists with no `timeout` too: the alternative is a job that waits forever.
pub(super) fn stall_deadline(config: &DispatchConfig) -> Duration {
    let start = config.supervise.start_timeout;
    config.timeout.map_or(start, |timeout| timeout.max(start))
}

/// One batch handed to a worker.
#[derive(Debug)]
pub(super) struct InFlight {
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

/// How the run is ending, if it is.
#[derive(Debug, Default)]
struct Ending {
    escalation: Escalation,
    stopped: Option<StopReason>,
    /// Every item has a record; workers were told to exit.
    finishing: bool,
    /// When to kill the workers that are still there.
    kill_deadline: Option<Instant>,
    fatal: Option<Error>,
}

pub(super) struct Dispatcher {
    source: Source,
    config: DispatchConfig,
    launcher: Box<dyn Launch>,
    reporter: Box<dyn Reporter>,
    started: Instant,
    target_workers: usize,
    workers: Workers,
    queue: WorkQueue,
    batches: HashMap<u64, InFlight>,
    next_batch_id: u64,
    sizer: BatchSizer,
    /// Causes of the failed attempts of items that are being retried.
    attempt_errors: HashMap<u64, Vec<Failure>>,
    tallies: Tallies,
    /// Records made since the driver last took them (kept only when someone wants them: a journal, a test).
    records: Vec<Record>,
    keep_records: bool,
    ending: Ending,
    pub(super) fetch: Option<FetchState>,
    /// The last pull found no item ready in a stream: the driver waits for the source's wake.
    awaiting_input: bool,
}

impl Dispatcher {
    /// A dispatcher for `config.span` of `source`, not started yet (see [`Dispatcher::start`]); on error the
    /// source is given back.
    pub(super) fn new(
        source: Source,
        config: DispatchConfig,
        reducer: Reducer,
        mut prior: Done,
        launcher: Box<dyn Launch>,
        reporter: Box<dyn Reporter>,
        keep_records: bool,
    ) -> Result<Dispatcher, (Error, Source)> {
        let known = source.known_len();
        // A stream's span is `config.span` until it ends (it cannot be sharded: see `run`).
        let len = known.unwrap_or(config.span.end);
        let span = config.span.start.min(len)..config.span.end.min(len);
        // No more workers than items: an empty job starts none.
        let target_workers = match known {
            Some(_) => config
                .workers
                .min(usize::try_from(span.end - span.start).unwrap_or(usize::MAX)),
            None => config.workers,
        };
        let sizer = BatchSizer::new(config.batch, source.batch_cap());
        let tallies = Tallies::new(reducer, &mut prior);
        let fetching = config.fetch.is_some() && source.urls().is_some();
        // A `urls` input hands out fetched items (`FetchState::ready`), not fresh ones.
        let queue = WorkQueue::new(
            span.clone(),
            known.is_some(),
            std::mem::take(&mut prior.done),
            !fetching,
        );
        let fetch = match (&config.fetch, source.urls()) {
            (Some(spec), Some(urls)) => {
                match FetchState::start(spec, urls, span.clone(), |item| !queue.is_done_before(item)) {
                    Ok(fetch) => Some(fetch),
                    Err(error) => return Err((error, source)),
                }
            }
            _ => None,
        };
        let mut source = source;
        if fetching {
            // Never fetched nor handed out: the source may forget them now.
            for item in queue.done_before_in(span) {
                source.release(item);
            }
        }
        Ok(Dispatcher {
            source,
            config,
            launcher,
            reporter,
            started: Instant::now(),
            target_workers,
            workers: Workers::default(),
            queue,
            batches: HashMap::new(),
            next_batch_id: 0,
            sizer,
            attempt_errors: std::mem::take(&mut prior.attempts),
            tallies,
            records: Vec::new(),
            keep_records,
            ending: Ending::default(),
            fetch,
            awaiting_input: false,
        })
    }

    /// Launches the first workers (none for a job with nothing to do, which is then complete).
    pub(super) fn start(&mut self) {
        if self.queue.total().is_none() {
            // A stream that is empty, or has ended already, needs no worker.
            self.pull(1);
        }
        self.replenish();
        self.check_complete();
    }

    /// Whether the run is over: no worker is left.
    pub(super) fn is_over(&self) -> bool {
        self.workers.is_empty()
    }

    /// Whether the last pull found a stream with no item ready: the driver then waits on the source's wake.
    pub(super) fn is_awaiting_input(&self) -> bool {
        self.awaiting_input && !self.is_stopping()
    }

    /// A stream has items again (or has ended): idle workers get them.
    pub(super) fn on_input(&mut self) {
        self.awaiting_input = false;
        if self.pull(1) {
            self.replenish();
            self.fill_least_loaded_first();
        }
        self.check_complete();
    }

    /// Whether the fetcher may still report.
    pub(super) fn is_fetching(&self) -> bool {
        self.fetch.as_ref().is_some_and(|f| f.events.is_some())
    }

    /// Records made since the last call.
    pub(super) fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }

    /// When to kill the workers still there (a stop's grace period, the end of the job).
    pub(super) fn kill_deadline(&self) -> Option<Instant> {
        self.ending.kill_deadline
    }

    /// When the earliest retry is due, if one waits and the job goes on.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        if self.is_stopping() {
            return None;
        }
        self.queue.next_retry()
    }

    /// The periodic tick: reports progress, and kills workers that never became ready or that stalled.
    pub(super) fn on_tick(&mut self) {
        if let Some(fetch) = &self.fetch {
            self.reporter.fetched(fetch.settled());
        }
        self.reporter.progress(self.tallies.recorded, self.tallies.failed);
        self.check_start_timeouts();
        self.check_stalls();
    }

    /// A retry came due.
    pub(super) fn on_retry_due(&mut self) {
        self.fill_all();
    }

    /// The grace period is over: whoever is left is killed.
    pub(super) fn on_kill_deadline(&mut self) {
        self.ending.kill_deadline = None;
        self.kill_all();
    }

    /// The end of the loop: stops fetching and reports the last progress.
    pub(super) fn finish(&mut self) {
        if let Some(fetch) = &mut self.fetch {
            fetch.stop();
        }
        if let Some(fetch) = &self.fetch {
            self.reporter.fetched(fetch.settled());
        }
        self.reporter.finish(self.tallies.recorded, self.tallies.failed);
    }

    /// The writer stopped on an error: the job cannot go on.
    pub(super) fn abandon(&mut self, error: Error) {
        if self.ending.fatal.is_none() {
            self.ending.fatal = Some(error);
        }
        if let Some(fetch) = &mut self.fetch {
            fetch.stop();
        }
        self.kill_all();
    }

    /// Whether every item has a record (a stream's only once it has ended).
    pub(super) fn is_complete(&self) -> bool {
        self.queue.total() == Some(self.tallies.recorded)
    }

    /// How the run went; `Err` if it was abandoned.
    /// The input goes back to the caller either way.
    pub(super) fn into_outcome(self, ipc_bytes: u64, ipc_messages: u64) -> (Result<RunOutcome, Error>, Source) {
        if let Some(error) = self.ending.fatal {
            return (Err(error), self.source);
        }
        let tallies = self.tallies;
        let outcome = RunOutcome {
            // A stream stopped before it ended: the items seen so far.
            items: self.queue.seen(),
            ok: tallies.ok,
            failed: tallies.failed,
            workers: self.target_workers,
            workers_started: self.workers.started(),
            worker_pids: tallies.pids_with_results,
            wall: self.started.elapsed(),
            first_result: tallies.first_result,
            ipc_bytes,
            ipc_messages,
            reducer: tallies.reducer,
            failures: tallies.failures,
            stopped: self.ending.stopped,
            worker_stats: self.workers.stats,
            batches: self.next_batch_id,
            retries: tallies.retries,
            resumed: tallies.resumed,
            fetch: self.fetch.as_ref().map(FetchState::stats),
        };
        (Ok(outcome), self.source)
    }

    /// A fetch finished: the body joins the items ready to hand out, or the item is recorded `failed`.
    pub(super) fn on_fetch(&mut self, event: Option<FetchEvent>) {
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
                self.check_halt();
            }
        }
        self.check_complete();
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Spawned { id, pid, pidfd } => {
                let stopping = self.is_stopping();
                if let Some(worker) = self.workers.get_mut(id) {
                    worker.spawned(pid, pidfd);
                    if stopping {
                        worker.kill_to_stop(self.launcher.as_mut());
                    }
                }
            }
            Event::SpawnFailed { id, error } => {
                self.workers.remove(id);
                self.start_failed(error);
                self.replenish();
            }
            Event::Connected { id, to_worker } => {
                let stopping = self.is_stopping();
                let Some(worker) = self.workers.get_mut(id) else {
                    return;
                };
                if stopping {
                    // Dropping the sender closes the channel: the worker exits without work.
                    worker.retire();
                    return;
                }
                to_worker.send(ToWorker::Init {
                    task: self.config.task.clone(),
                    args_json: self.config.args_json.clone(),
                    input: self
                        .source
                        .input_plan(self.fetch.as_ref().map(|f| f.arena.proc_path()).as_deref()),
                    limits: self.config.limits,
                    progress: worker.progress.as_ref().map(ProgressReader::path),
                    isolation: self.config.isolation.clone(),
                });
                to_worker.send(ToWorker::Identity { worker: id });
                worker.initializing(to_worker);
            }
            Event::Message { id, message } => self.on_message(id, message),
            Event::Frame { id, frame } => {
                if self
                    .workers
                    .get(id)
                    .is_none_or(|worker| worker.protocol_error().is_some())
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
                let Some(worker) = self.workers.get_mut(id) else {
                    return;
                };
                worker.channel_closed = true;
                if let Some(error) = error {
                    self.protocol_violation(id, error);
                }
                if self.workers.get(id).is_some_and(|w| w.exit.is_some()) {
                    self.on_exit(id);
                }
            }
            Event::Exited { id, info, stderr_tail } => {
                let Some(worker) = self.workers.get_mut(id) else {
                    return;
                };
                worker.exit = Some((info, stderr_tail));
                if worker.channel_closed {
                    self.on_exit(id);
                }
            }
        }
        self.check_complete();
    }

    fn on_message(&mut self, id: WorkerId, message: FromWorker) {
        let Some(worker) = self.workers.get_mut(id) else {
            return;
        };
        if worker.protocol_error().is_some() {
            // Killed for breaking the protocol: nothing more it says is believed.
            return;
        }
        worker.heard(Instant::now());
        let state = worker.state();
        match message {
            FromWorker::Ready if state == WorkerState::Initializing => {
                worker.ready(Instant::now());
                self.workers.start_failures = 0;
                self.fill(id);
            }
            FromWorker::InitFailed { message } if state == WorkerState::Initializing => {
                let reason = shared::frame::truncate_message(message);
                self.abandon(Error::WorkersCannotStart { reason });
            }
            // Told to stop while it was starting (the job ended meanwhile): its answer to `Init` comes late.
            FromWorker::Ready | FromWorker::InitFailed { .. }
                if state == WorkerState::Stopping && worker.batches.is_empty() && worker.answered == 0 => {}
            FromWorker::Results { batch, first, outcomes } => self.on_results(id, batch, first, outcomes),
            other => self.protocol_violation(id, format!("sent an unexpected {} message", message_name(&other))),
        }
    }

    fn on_results(&mut self, id: WorkerId, batch_id: u64, first: u64, outcomes: Vec<Outcome>) {
        let count = outcomes.len() as u64;
        let head = self.workers.get(id).and_then(|worker| worker.batches.front().copied());
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
        let pid = self.workers.get(id).map_or(0, |worker| worker.pid);
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
        if let Some(worker) = self.workers.get_mut(id) {
            if worker.answered == 0 {
                self.tallies.pids_with_results.push(pid);
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
            if let Some(worker) = self.workers.get_mut(id) {
                worker.batches.pop_front();
            }
            self.fill(id);
            self.recycle_if_spent(id);
        }
    }

    fn start_failed(&mut self, reason: String) {
        self.workers.start_failures += 1;
        if self.workers.start_failures >= MAX_START_FAILURES {
            self.abandon(Error::WorkersCannotStart { reason });
        }
    }

    /// Kills a worker that sent something it should not have. Its items are settled when it exits (see
    /// `on_exit`: its progress slot is no longer trusted); the violation is also said to the user, since it may
    /// cost no item at all (a repeated result, a violation between items).
    fn protocol_violation(&mut self, id: WorkerId, message: String) {
        if let Some(worker) = self.workers.get_mut(id)
            && worker.protocol_error().is_none()
        {
            let error = format!("worker {} {message}", worker.pid);
            self.reporter
                .message(&format!("{error}: killed it (protocol violation)"));
            worker.kill(self.launcher.as_mut(), KillCause::Protocol(error));
        }
    }

    pub(super) fn on_signal(&mut self, signal: StopSignal) {
        match self.ending.escalation.on_signal(signal) {
            StopAction::Graceful(signal) => {
                let grace = self.config.supervise.grace;
                self.reporter.message(&format!(
                    "{} received: finishing work in progress (up to {}); again to kill now",
                    signal.name(),
                    crate::failure::human_duration(grace)
                ));
                if self.ending.stopped.is_some() {
                    // Already stopping (a halt): the signal bounds the wait for work in progress.
                    self.ending.kill_deadline.get_or_insert(Instant::now() + grace);
                }
                self.stop(StopReason::Signal(signal));
            }
            StopAction::Kill => self.kill_all(),
        }
    }

    /// Stops handing out work. A signal or a `soon` halt lets workers finish what they hold (a signal within the
    /// grace period); a `now` halt and a restart storm kill them.
    fn stop(&mut self, reason: StopReason) {
        if self.ending.stopped.is_some() {
            return;
        }
        self.ending.stopped = Some(reason);
        if let Some(fetch) = &mut self.fetch {
            fetch.stop();
        }
        match reason {
            StopReason::Signal(_) => {
                self.shut_down_workers();
                self.ending
                    .kill_deadline
                    .get_or_insert(Instant::now() + self.config.supervise.grace);
            }
            StopReason::Halt { .. } if !self.config.supervise.halt.now => self.shut_down_workers(),
            StopReason::Halt { .. } | StopReason::RestartIntensity { .. } => self.kill_all(),
        }
    }

    /// Once every item has a record, tells the workers to exit. A stream whose items are all recorded is asked
    /// whether it has ended (or has more, which idle workers then get).
    pub(super) fn check_complete(&mut self) {
        if self.queue.total().is_none()
            && !self.is_stopping()
            && self.queue.fresh_ready() == 0
            && !self.awaiting_input
            && self.pull(1)
        {
            self.replenish();
            self.fill_least_loaded_first();
        }
        if !self.ending.finishing && self.is_complete() {
            self.ending.finishing = true;
            self.shut_down_workers();
            self.ending
                .kill_deadline
                .get_or_insert(Instant::now() + self.config.supervise.grace);
        }
    }

    fn check_halt(&mut self) {
        // Against the whole run; for a stream that has not ended, against the items seen so far.
        if self
            .config
            .supervise
            .halt
            .reached(self.tallies.failed, self.queue.seen())
        {
            self.stop(StopReason::Halt {
                failed: self.tallies.failed,
            });
        }
    }

    fn shut_down_workers(&mut self) {
        for worker in self.workers.iter_mut() {
            worker.stop(self.launcher.as_mut());
        }
    }

    fn kill_all(&mut self) {
        for worker in self.workers.iter_mut() {
            worker.kill_to_stop(self.launcher.as_mut());
        }
    }

    /// New items not handed out yet: fresh items, or for a `urls` input the fetched items not handed out and
    /// the items still being fetched. Unbounded (`u64::MAX`) for a stream that has not ended: then batches get
    /// no tail share and every worker is started.
    fn fresh_left(&mut self) -> u64 {
        let fetching = self.fetch.as_ref().map_or(0, |f| f.ready.len() as u64 + f.unfetched);
        self.queue.fresh_left().map_or(u64::MAX, |fresh| fresh + fetching)
    }

    /// Items not handed to any worker yet.
    fn unassigned(&mut self) -> u64 {
        self.fresh_left().saturating_add(self.queue.queued())
    }

    /// Pulls up to `want` more items from the source; whether any came. When the source says it ended, the
    /// run's length becomes known (and the reporter is told); when a stream has none ready, the driver waits for
    /// its wake. Items an earlier run recorded are released as soon as they are pulled: they are never handed
    /// out.
    pub(super) fn pull(&mut self, want: u64) -> bool {
        let Some((first, max)) = self.queue.to_pull(want) else {
            return false;
        };
        match self.source.pull(first, max) {
            Ok(Pulled::Ready(n)) => {
                self.awaiting_input = false;
                let done_before: Vec<u64> = self.queue.done_before_in(first..first + n).collect();
                for item in done_before {
                    self.source.release(item);
                }
                self.queue.pulled(n);
                true
            }
            Ok(Pulled::NotYet) => {
                self.awaiting_input = true;
                false
            }
            Ok(Pulled::Ended) => {
                self.awaiting_input = false;
                self.queue.ended();
                self.reporter.total(self.queue.seen());
                false
            }
            Err(error) => {
                self.abandon(error);
                false
            }
        }
    }

    /// Up to `size` consecutive fresh items, pulling from the source as needed.
    pub(super) fn take_fresh(&mut self, size: u64) -> Option<(u64, u64)> {
        let want = size.max(1);
        loop {
            // Pulled items an earlier run recorded are skipped here, so a pull may leave nothing ready: pull on.
            let ready = self.queue.fresh_ready();
            if ready >= want || !self.pull(want - ready) {
                return self.queue.take_fresh(want);
            }
        }
    }

    fn is_stopping(&self) -> bool {
        self.ending.finishing || self.ending.stopped.is_some() || self.ending.fatal.is_some()
    }

    fn record_ok(&mut self, item: u64, value: Value, pid: u32, elapsed_ms: f64) {
        self.tallies.value(&value);
        let attempt_errors = self.attempt_errors.remove(&item).unwrap_or_default();
        self.record(item, Status::Ok, Some(value), None, attempt_errors, pid, elapsed_ms);
    }

    /// An attempt of `item` failed: retry it if it has retries left, record it failed otherwise.
    fn item_failed(&mut self, item: u64, failure: Failure, pid: u32, elapsed_ms: f64) {
        let errors = self.attempt_errors.entry(item).or_default();
        errors.push(failure.clone());
        let attempts = errors.len() as u32;
        if attempts <= self.config.retries {
            // Journaled as a used attempt: a stop before the retry runs leaves it for `--resume`, not failed.
            if self.keep_records {
                let input = self.source.describe(item);
                self.records
                    .push(Record::retrying(item, failure, attempts, pid, elapsed_ms, input));
            }
            if !self.is_stopping() {
                self.queue.schedule_retry(Instant::now() + self.backoff(attempts), item);
                self.tallies.retries += 1;
                self.replenish();
            }
            return;
        }
        let mut attempt_errors = self.attempt_errors.remove(&item).unwrap_or_default();
        if attempt_errors.len() == 1 {
            // One attempt: `error` says it all.
            attempt_errors.clear();
        }
        self.record(
            item,
            Status::Failed,
            None,
            Some(failure),
            attempt_errors,
            pid,
            elapsed_ms,
        );
        self.check_halt();
    }

    /// The wait before the retry that follows failed attempt number `attempts`: doubling from `retry_backoff`.
    pub(super) fn backoff(&self, attempts: u32) -> Duration {
        self.config
            .retry_backoff
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
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
        // The item's body is no longer needed: its memory goes back, and fetching may go on.
        if let Some(fetch) = &mut self.fetch {
            fetch.release(item);
        }
        let input = self.keep_records.then(|| self.source.describe(item));
        // Nothing asks about the item again: a stream forgets it.
        self.source.release(item);
        let started = self.started;
        self.tallies.record(item, status, error.as_ref(), || started.elapsed());
        if let Some(input) = input {
            let attempts = match status {
                Status::Ok => attempt_errors.len() as u32 + 1,
                Status::Failed => (attempt_errors.len() as u32).max(1),
            };
            self.records.push(Record {
                item,
                retrying: false,
                status,
                value,
                error,
                attempts,
                attempt_errors,
                pid,
                elapsed_ms,
                input,
            });
        }
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
