//! The dispatcher's one `select!` loop: the only place that awaits.
//!
//! It reads the pool's events, the fetcher's reports, the stop signals and its timers, hands each to the state
//! machine ([`Dispatcher`]), and after each flushes the records made to the journal writer. The launcher, the
//! signals and the reporter come from the caller ([`Ports`]); the driver builds none of them, so the same loop
//! serves the process and thread executors and could serve another front end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant as TokioInstant, sleep_until};

use super::fetching;
use super::source::Source;
use super::state::Dispatcher;
use super::{DispatchConfig, Launch, Reporter, RunOutcome};
use crate::error::Error;
use crate::input;
use crate::journal::{Done, JournalWriter};
use crate::pool::{Event, IpcCounter};
use crate::results::Reducer;
use crate::signal::StopSignal;

/// Interval of the progress tick, which also checks start timeouts and stalls.
const TICK: Duration = Duration::from_millis(250);

/// What the dispatcher talks to: given by the caller.
pub struct Ports {
    /// Starts and kills workers; their events come on `events`.
    pub launcher: Box<dyn Launch>,
    pub events: mpsc::Receiver<Event>,
    /// Counts the bytes and messages the launcher's workers exchange, for the summary.
    pub counter: Arc<IpcCounter>,
    pub signals: mpsc::UnboundedReceiver<StopSignal>,
    pub reporter: Box<dyn Reporter>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

/// Runs the job to completion (or until stopped) and returns how it went, and the input (whose length is known
/// at the end of a complete run, and which may want to say whether it changed during the job).
pub async fn run(
    input: Box<dyn input::Source>,
    config: DispatchConfig,
    reducer: Reducer,
    writer: Option<JournalWriter>,
    prior: Done,
    ports: Ports,
) -> (Result<RunOutcome, Error>, Box<dyn input::Source>) {
    let Ports {
        launcher,
        mut events,
        counter,
        mut signals,
        reporter,
    } = ports;
    let timeout_check = config
        .timeout
        .map(|t| (t / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    let keep_records = writer.is_some();
    let source = Source::new(input);
    let wake = source.wake();
    let mut dispatcher = match Dispatcher::new(source, config, reducer, prior, launcher, reporter, keep_records) {
        Ok(dispatcher) => dispatcher,
        Err((error, source)) => return (Err(error), source.into_inner()),
    };
    let mut writer = Writer { writer };
    dispatcher.start();

    let mut tick = tokio::time::interval(TICK);
    let mut timeout_tick = tokio::time::interval(timeout_check.unwrap_or(Duration::from_secs(3600)));
    while !dispatcher.is_over() {
        let retry_wake = dispatcher.next_retry().map(TokioInstant::from_std);
        let kill_wake = dispatcher.kill_deadline().map(TokioInstant::from_std);
        let fetching = dispatcher.is_fetching();
        let awaiting_input = dispatcher.is_awaiting_input();
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => dispatcher.handle(event),
                None => break,
            },
            event = fetching::next_event(&mut dispatcher.fetch), if fetching => dispatcher.on_fetch(event),
            () = input_arrived(wake.as_deref()), if awaiting_input => dispatcher.on_input(),
            Some(signal) = signals.recv() => dispatcher.on_signal(signal),
            _ = tick.tick() => dispatcher.on_tick(),
            _ = timeout_tick.tick(), if timeout_check.is_some() => dispatcher.check_timeouts(),
            _ = sleep_until(retry_wake.unwrap_or_else(TokioInstant::now)), if retry_wake.is_some() => {
                dispatcher.on_retry_due();
            }
            _ = sleep_until(kill_wake.unwrap_or_else(TokioInstant::now)), if kill_wake.is_some() => {
                dispatcher.on_kill_deadline();
            }
        }
        writer.flush(&mut dispatcher).await;
        dispatcher.check_complete();
    }
    dispatcher.finish();
    writer.flush(&mut dispatcher).await;
    let finished = match writer.writer.take() {
        Some(writer) => writer.finish(dispatcher.is_complete()).await.map(drop),
        None => Ok(()),
    };
    let (outcome, source) = dispatcher.into_outcome(
        counter.bytes.load(Ordering::Relaxed),
        counter.messages.load(Ordering::Relaxed),
    );
    (finished.and(outcome), source.into_inner())
}

/// A stream that had no item ready has some again (or ended). Notify keeps a wake that came before this wait.
async fn input_arrived(wake: Option<&tokio::sync::Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// The journal writer, while it works.
struct Writer {
    writer: Option<JournalWriter>,
}

impl Writer {
    /// Hands the records made since the last flush to the writer. If the writer stopped on an I/O error, the job
    /// is abandoned with that error.
    async fn flush(&mut self, dispatcher: &mut Dispatcher) {
        let records = dispatcher.take_records();
        if records.is_empty() {
            return;
        }
        let Some(writer) = &self.writer else { return };
        if writer.write(records).await {
            return;
        }
        if let Some(writer) = self.writer.take() {
            let error = writer.finish(false).await.err();
            dispatcher.abandon(error.unwrap_or(Error::Internal {
                message: "results writer stopped".into(),
            }));
        }
    }
}
