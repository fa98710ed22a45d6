//! The fetch stage of a `urls` input, as the dispatcher sees it: bodies in the arena waiting for or being
//! processed by workers. Fetching itself runs in its own task ([`crate::fetch::start`]); what a fetch event
//! means for the job is the state machine's business.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::FetchStats;
use crate::error::Error;
use crate::fetch::{Arena, FetchCounters, FetchEvent, Slot};

#[derive(Debug)]
pub(super) struct FetchState {
    pub arena: Arc<Arena>,
    pub events: Option<mpsc::Receiver<FetchEvent>>,
    task: Option<tokio::task::JoinHandle<()>>,
    counters: Arc<FetchCounters>,
    /// The arena slot of every fetched item not recorded yet.
    pub bodies: HashMap<u64, Slot>,
    /// Fetched items never handed out, by number (batches are runs of consecutive ready items).
    pub ready: BTreeSet<u64>,
    /// Items whose fetch has not reported yet.
    pub unfetched: u64,
    pub fetched: u64,
    pub failed: u64,
    /// Items of the span an earlier run recorded: never fetched, but done.
    pub earlier: u64,
}

impl FetchState {
    /// Creates the arena and starts fetching every item of `span` for which `needed` holds.
    pub(super) fn start(
        spec: &shared::job::FetchSpec,
        urls: &Arc<Vec<String>>,
        span: std::ops::Range<u64>,
        needed: impl Fn(u64) -> bool,
    ) -> Result<FetchState, Error> {
        let arena = Arena::new(spec.max_in_flight_bytes).map_err(|error| Error::Internal {
            message: format!("cannot create the shared arena for fetched bodies: {error}"),
        })?;
        let span_len = span.end - span.start;
        let todo: Vec<u64> = span.filter(|&item| needed(item)).collect();
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
            earlier: span_len - unfetched,
        })
    }

    /// Stops every fetch in progress (the run is stopping or over).
    pub(super) fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.events = None;
    }

    /// Items whose fetch has ended, or that need none (an earlier run recorded them): what progress shows.
    pub(super) fn settled(&self) -> u64 {
        self.fetched + self.failed + self.earlier
    }

    /// Gives the body of a recorded item back to the arena.
    pub(super) fn release(&mut self, item: u64) {
        if let Some(slot) = self.bodies.remove(&item) {
            self.arena.release(slot);
        }
    }

    pub(super) fn stats(&self) -> FetchStats {
        FetchStats {
            fetched: self.fetched,
            failed: self.failed,
            earlier: self.earlier,
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            max_in_flight_bytes: self.arena.budget_bytes(),
            peak_in_flight_bytes: self.arena.peak_in_use(),
        }
    }
}

/// The next report of the fetcher; `None` once it has reported every item.
pub(super) async fn next_event(fetch: &mut Option<FetchState>) -> Option<FetchEvent> {
    match fetch.as_mut().and_then(|f| f.events.as_mut()) {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
