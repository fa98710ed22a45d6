//! The worker table: every worker the dispatcher started and has not seen exit, each with its lifecycle, the
//! batches it holds and what is known about its death; plus the counts that judge the pool as a whole (start
//! failures in a row, unexpected deaths within the restart window).
//!
//! A worker's [`WorkerState`] is changed only by the methods here, so every transition is in one place. What
//! the transitions mean for the job (which items to requeue, whom to blame) is the state machine's business.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use shared::progress::{ProgressReader, Snapshot};
use shared::protocol::ToWorker;

use super::{Launch, WorkerStats};
use crate::pool::{WorkerId, WorkerSender};
use sys::process::{ExitInfo, Pidfd};

/// One worker's lifecycle. `Ready` with batches queued is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerState {
    /// Launch requested; no process or no hello yet.
    Starting,
    /// Hello received, `Init` sent.
    Initializing,
    Ready,
    /// Told to shut down (or being killed); its exit is expected.
    Stopping,
}

/// Why the dispatcher killed a worker, when it did: it decides what the death means for its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KillCause {
    /// It broke the protocol (or never became ready in time): this becomes the cause of its item's failure, and
    /// its progress slot is no longer trusted.
    Protocol(String),
    /// Its current item ran past the timeout.
    Timeout { item: u64 },
    /// It held work and showed no sign of life for the stall deadline between items: nothing is charged.
    Stalled,
    /// The job is stopping: its death says nothing about its item.
    Stop,
}

#[derive(Debug)]
pub(super) struct Worker {
    id: WorkerId,
    state: WorkerState,
    pub(super) pid: u32,
    pidfd: Option<Pidfd>,
    pub(super) sender: Option<WorkerSender>,
    pub(super) progress: Option<ProgressReader>,
    /// Batch ids in the order the worker will run them.
    pub(super) batches: VecDeque<u64>,
    /// Why the dispatcher killed it, the first time it did.
    pub(super) killed: Option<KillCause>,
    /// Killed to stop the job (perhaps after another cause).
    pub(super) killed_to_stop: bool,
    /// Items handed to it (for `max_tasks`).
    pub(super) assigned: u64,
    pub(super) answered: u64,
    /// The reader thread has delivered everything the worker sent.
    pub(super) channel_closed: bool,
    /// The process was reaped; handled once the channel is closed too, so that no late result is missed.
    pub(super) exit: Option<(ExitInfo, String)>,
    /// When its launch was asked for (for `[supervise] start_timeout`).
    pub(super) launched: Instant,
    /// The last sign of life: a message, a batch handed to it, or a change of its progress slot.
    last_sign: Instant,
    /// The slot as last seen, to notice that it changed.
    last_snapshot: Option<Snapshot>,
}

impl Worker {
    pub(super) fn new(id: WorkerId, progress: Option<ProgressReader>, now: Instant) -> Worker {
        Worker {
            id,
            state: WorkerState::Starting,
            pid: 0,
            pidfd: None,
            sender: None,
            progress,
            batches: VecDeque::new(),
            killed: None,
            killed_to_stop: false,
            assigned: 0,
            answered: 0,
            channel_closed: false,
            exit: None,
            launched: now,
            last_sign: now,
            last_snapshot: None,
        }
    }

    pub(super) fn state(&self) -> WorkerState {
        self.state
    }

    pub(super) fn is_starting(&self) -> bool {
        matches!(self.state, WorkerState::Starting | WorkerState::Initializing)
    }

    /// The process exists.
    pub(super) fn spawned(&mut self, pid: u32, pidfd: Option<Pidfd>) {
        self.pid = pid;
        self.pidfd = pidfd;
    }

    /// Said hello and was sent `Init` through `sender`.
    pub(super) fn initializing(&mut self, sender: WorkerSender) {
        self.sender = Some(sender);
        self.state = WorkerState::Initializing;
    }

    /// Answered `Init` with `Ready`.
    pub(super) fn ready(&mut self, now: Instant) {
        self.state = WorkerState::Ready;
        self.last_sign = now;
    }

    /// Will not be used any more; its exit is expected (a worker that said hello, when the job is over).
    pub(super) fn retire(&mut self) {
        self.state = WorkerState::Stopping;
    }

    /// Kills it, remembering why (the first cause wins: it is what the death means).
    pub(super) fn kill(&mut self, launcher: &mut dyn Launch, cause: KillCause) {
        if self.killed.is_none() {
            self.killed = Some(cause);
        }
        self.signal_kill(launcher);
    }

    fn signal_kill(&self, launcher: &mut dyn Launch) {
        launcher.kill(self.id, self.pidfd.as_ref());
    }

    /// Asks it to shut down after the work it holds (or kills it if it cannot be asked).
    pub(super) fn stop(&mut self, launcher: &mut dyn Launch) {
        self.state = WorkerState::Stopping;
        match self.sender.take() {
            Some(sender) => {
                sender.send(ToWorker::Shutdown);
            }
            // Not connected (or its channel is gone): nothing to ask, so it is killed; that says nothing of it.
            None => self.signal_kill(launcher),
        }
    }

    /// Kills it to stop the job.
    pub(super) fn kill_to_stop(&mut self, launcher: &mut dyn Launch) {
        self.sender = None;
        self.state = WorkerState::Stopping;
        self.killed_to_stop = true;
        self.kill(launcher, KillCause::Stop);
    }

    /// The protocol error it was killed for, if any.
    pub(super) fn protocol_error(&self) -> Option<&str> {
        match &self.killed {
            Some(KillCause::Protocol(error)) => Some(error),
            _ => None,
        }
    }

    /// The item it was killed for running past the timeout, if any.
    pub(super) fn timed_out(&self) -> Option<u64> {
        match self.killed {
            Some(KillCause::Timeout { item }) => Some(item),
            _ => None,
        }
    }

    /// Something it sent or was given: a sign of life.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_sign = now;
    }

    /// Whether it holds work, says it is between items, and has shown no sign of life for `deadline`. Reading
    /// the slot is itself a check for life: a slot that changed since the last look is one.
    pub(super) fn stalled(&mut self, now: Instant, deadline: Duration) -> bool {
        if self.state != WorkerState::Ready || self.batches.is_empty() || self.killed.is_some() {
            return false;
        }
        // A worker thread has no slot, and cannot be stopped on its own.
        let Some(progress) = &self.progress else {
            return false;
        };
        let snapshot = progress.read();
        if snapshot != self.last_snapshot {
            self.last_snapshot = snapshot;
            self.last_sign = now;
            return false;
        }
        let between_items = snapshot.is_none_or(|s| !s.running);
        between_items && now.saturating_duration_since(self.last_sign) > deadline
    }
}

/// Every live worker, and what the pool's history says about the job.
#[derive(Debug, Default)]
pub(super) struct Workers {
    table: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    /// Workers in a row that failed before becoming ready.
    pub(super) start_failures: u32,
    /// When unexpected worker deaths happened, within the restart window.
    deaths: VecDeque<Instant>,
    /// Every worker process that exited, in exit order.
    pub(super) stats: Vec<WorkerStats>,
}

impl Workers {
    /// Adds a worker in `Starting` and returns its id.
    pub(super) fn add(&mut self, progress: Option<ProgressReader>, now: Instant) -> WorkerId {
        let id = self.next_id;
        self.next_id += 1;
        self.table.insert(id, Worker::new(id, progress, now));
        id
    }

    /// Workers started so far, replacements included.
    pub(super) fn started(&self) -> u64 {
        self.next_id
    }

    pub(super) fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.table.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.table.get_mut(&id)
    }

    pub(super) fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        self.table.remove(&id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub(super) fn ids(&self) -> Vec<WorkerId> {
        self.table.keys().copied().collect()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.table.values_mut()
    }

    /// Ids with the number of batches each holds.
    pub(super) fn loads(&self) -> Vec<(usize, WorkerId)> {
        self.table.iter().map(|(id, w)| (w.batches.len(), *id)).collect()
    }

    /// Workers that are or will be of use (not stopping).
    pub(super) fn active(&self) -> usize {
        self.table.values().filter(|w| w.state != WorkerState::Stopping).count()
    }

    /// Counts an unexpected death at `now` and returns how many fell within `within` of it.
    pub(super) fn count_death(&mut self, now: Instant, within: Duration) -> usize {
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) > within)
        {
            self.deaths.pop_front();
        }
        self.deaths.len()
    }
}
