//! What the summary counts: records (ok, failed), runs charged beyond the first, the reduction of the values,
//! the first failures shown, when the first result came and which workers returned results. The state machine
//! decides what happened; this module only adds it up.

use std::time::Duration;

use shared::item::Value;

use crate::journal::Done;
use crate::results::{Failure, Reducer, Status};

/// Failures kept for the summary.
pub(super) const FAILURES_SHOWN: usize = 20;

#[derive(Debug)]
pub(super) struct Tallies {
    /// Items an earlier run recorded (`--resume`).
    pub resumed: u64,
    /// Items with a record, an earlier run's included.
    pub recorded: u64,
    pub ok: u64,
    pub failed: u64,
    /// Runs charged to items beyond their first.
    pub retries: u64,
    pub reducer: Reducer,
    /// The first few failures, in the order they happened.
    pub failures: Vec<(u64, Failure)>,
    pub first_result: Option<Duration>,
    /// Worker pids that returned at least one result, in that order.
    pub pids_with_results: Vec<u32>,
}

impl Tallies {
    /// Starts from what an earlier run recorded.
    /// `reducer` already holds the values of what `prior` recorded (recovery adds them as it reads).
    pub(super) fn new(reducer: Reducer, prior: &mut Done) -> Tallies {
        Tallies {
            resumed: prior.ok + prior.failed,
            recorded: prior.ok + prior.failed,
            ok: prior.ok,
            failed: prior.failed,
            retries: 0,
            reducer,
            failures: std::mem::take(&mut prior.failures)
                .into_iter()
                .take(FAILURES_SHOWN)
                .collect(),
            first_result: None,
            pids_with_results: Vec::new(),
        }
    }

    /// Counts a record of `item`, made `since_start` after the run began.
    /// Counts one record. `since_start` is asked only for the first record: reading the clock for every item
    /// cost a fifth of the dispatcher's time on a million no-op items.
    pub(super) fn record(
        &mut self,
        item: u64,
        status: Status,
        error: Option<&Failure>,
        since_start: impl FnOnce() -> Duration,
    ) {
        self.recorded += 1;
        match status {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
        }
        if let Some(failure) = error
            && self.failures.len() < FAILURES_SHOWN
        {
            self.failures.push((item, failure.clone()));
        }
        if self.first_result.is_none() {
            self.first_result = Some(since_start());
        }
    }

    pub(super) fn value(&mut self, value: &Value) {
        self.reducer.add(value);
    }
}
