//! The state machine's side of handing out work: which worker gets which batch (suspects and retries alone, then
//! requeued spans, then fresh items pulled from the source, or fetched items), recycling spent workers, and launching workers while work is
//! left.

use super::*;

impl Dispatcher {
    /// Like [`Dispatcher::fill_all`], but workers holding fewer batches choose first: when fetched items trickle
    /// in one by one, an idle worker gets the next one before a busy worker queues it behind its current item.
    pub(in crate::dispatch) fn fill_least_loaded_first(&mut self) {
        let mut ids = self.workers.loads();
        ids.sort_unstable();
        for (_, id) in ids {
            self.fill(id);
        }
    }

    pub(in crate::dispatch) fn fill_all(&mut self) {
        for id in self.workers.ids() {
            self.fill(id);
        }
    }

    /// Hands `id` work until it holds enough batches (or one item run alone), if it is ready and work is
    /// left.
    pub(in crate::dispatch) fn fill(&mut self, id: WorkerId) {
        if self.is_stopping() {
            return;
        }
        loop {
            let unassigned = self.unassigned();
            let Some(worker) = self.workers.get(id) else { return };
            let prefetch = self
                .sizer
                .prefetch(self.sizer.next_size(unassigned, self.target_workers));
            if worker.state() != WorkerState::Ready || worker.batches.len() >= prefetch {
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
            if !idle && unassigned < self.target_workers as u64 {
                return;
            }
            let now = Instant::now();
            let (first, len, isolated) = if self.queue.has_single(now) {
                // A single item runs on a worker that holds nothing else, so that its death is attributable.
                if !idle {
                    return;
                }
                let Some(item) = self.queue.take_single(now) else {
                    return;
                };
                (item, 1, true)
            } else {
                let remaining = self.fresh_left().saturating_add(self.queue.requeued_len());
                let size = self.sizer.next_size(remaining, self.target_workers).min(quota);
                if let Some((first, len)) = self.queue.take_requeued(size) {
                    (first, len, false)
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
                    let Some((first, len)) = self.take_fresh(size) else {
                        return;
                    };
                    (first, len, false)
                }
            };
            self.send_batch(id, first, len, isolated);
        }
    }

    /// Replaces a worker that has run its `max_tasks` items, once it has answered them.
    pub(in crate::dispatch) fn recycle_if_spent(&mut self, id: WorkerId) {
        let Some(max) = self.config.max_tasks else { return };
        let Some(worker) = self.workers.get_mut(id) else {
            return;
        };
        if worker.state() == WorkerState::Ready && worker.assigned >= max && worker.batches.is_empty() {
            worker.stop(self.launcher.as_mut());
            self.replenish();
        }
    }

    pub(in crate::dispatch) fn send_batch(&mut self, id: WorkerId, first: u64, len: u64, isolated: bool) {
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let batch = self
            .source
            .batch(batch_id, first, len, self.fetch.as_ref().map(|f| &f.bodies));
        let Some(worker) = self.workers.get_mut(id) else {
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
        let now = Instant::now();
        worker.batches.push_back(batch_id);
        worker.assigned += len;
        worker.heard(now);
        let flight = InFlight {
            worker: id,
            first,
            next: first,
            end: first + len,
            isolated,
            dispatched: now,
            task_micros: 0,
        };
        self.batches.insert(batch_id, flight);
    }

    /// Launches workers until the target count is running, while there is work they could take.
    pub(in crate::dispatch) fn replenish(&mut self) {
        if self.is_stopping() {
            return;
        }
        if self.fresh_left() == 0 && !self.queue.has_queued() {
            return;
        }
        while self.workers.active() < self.target_workers {
            // Without a progress slot, attribution falls back to re-running suspects alone.
            let progress = if self.config.progress_slots {
                SharedPage::create().ok().map(ProgressReader::new)
            } else {
                None
            };
            let id = self.workers.add(progress, Instant::now());
            self.launcher.launch(id);
        }
    }
}
