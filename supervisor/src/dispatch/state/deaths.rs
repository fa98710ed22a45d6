//! The state machine's side of a worker's end: what a dead worker's batches become (through attribution), and
//! the kills the dispatcher decides on its timers (start timeouts, item timeouts, stalls) and the restart
//! intensity they count towards.

use super::*;

impl Dispatcher {
    pub(in crate::dispatch) fn on_exit(&mut self, id: WorkerId) {
        let Some(mut worker) = self.workers.remove(id) else {
            return;
        };
        let Some((info, stderr_tail)) = worker.exit.take() else {
            return;
        };
        self.workers.stats.push(WorkerStats {
            pid: worker.pid,
            items: worker.answered,
            cpu_s: info.cpu.as_secs_f64(),
            max_rss_bytes: info.max_rss,
        });
        let stopping = self.is_stopping();
        if worker.is_starting() && !stopping {
            let tail = match crate::failure::last_lines(&stderr_tail) {
                lines if lines.is_empty() => String::new(),
                lines => format!("; stderr: {lines}"),
            };
            let how = match worker.protocol_error() {
                Some(error) => format!("{error}, and was killed"),
                None => format!("worker {} {}", worker.pid, describe_exit(info.status)),
            };
            self.start_failed(format!("{how} before it was ready{tail}"));
        }
        // Counted after the dead worker's item is recorded below: the death that trips the restart limit still
        // charges the item that caused it.
        let unexpected = worker.state() != WorkerState::Stopping && !stopping;

        let mut queued = std::mem::take(&mut worker.batches)
            .into_iter()
            .filter_map(|batch| self.batches.remove(&batch).map(|f| (batch, f)));
        let head = queued.next();
        // Batches queued behind the one it was running never started.
        let mut unstarted: Vec<(u64, u64)> = queued
            .map(|(_, flight)| (flight.next, flight.end - flight.next))
            .collect();
        // During a stop, a worker the dispatcher killed says nothing about its item (which stays not run); any
        // other death is still the item's, e.g. a timeout or a crash while a `soon` halt lets work finish.
        let attributable = self.ending.stopped.is_none() || worker.timed_out().is_some() || !worker.killed_to_stop;
        if attributable && let Some((head_id, flight)) = head {
            let facts = DeathFacts {
                batch: head_id,
                unanswered: flight.next..flight.end,
                isolated: flight.isolated,
                snapshot: worker.progress.as_ref().and_then(ProgressReader::read),
                killed: worker.killed.as_ref(),
            };
            match blame(&facts) {
                Blame::Item { item, slot } => {
                    let death = Death {
                        status: info.status,
                        timed_out: worker.timed_out().and(self.config.timeout),
                        protocol_error: worker.protocol_error(),
                        stderr_tail: &stderr_tail,
                    };
                    let elapsed_us = match slot {
                        Some(s) => monotonic_ns().saturating_sub(s.started_ns) / 1000,
                        None => flight.dispatched.elapsed().as_micros() as u64,
                    };
                    let elapsed_ms = elapsed_us as f64 / 1000.0;
                    let mut failure = crash_failure(death);
                    if info.status == sys::process::ExitStatus::Signal(libc::SIGBUS)
                        && let Some(cause) = self.source.explain_sigbus(item)
                    {
                        failure.message = cause;
                    }
                    self.item_failed(item, failure, worker.pid, elapsed_ms);
                    // Items before the culprit finished but their results were not sent yet; items after it never
                    // started. Both run again, uncharged.
                    unstarted.insert(0, (item + 1, flight.end - item - 1));
                    unstarted.insert(0, (flight.next, item - flight.next));
                }
                Blame::Suspects => self.queue.suspect(flight.next..flight.end),
                Blame::Nobody => unstarted.insert(0, (flight.next, flight.end - flight.next)),
            }
        }
        if self.ending.stopped.is_none() {
            self.queue.requeue_front(unstarted);
        }
        if unexpected {
            self.count_death();
        }
        self.replenish();
        self.fill_all();
    }

    /// Records a worker death that nobody asked for, and stops the job if they come too fast.
    pub(in crate::dispatch) fn count_death(&mut self) {
        let within = self.config.supervise.within;
        let deaths = self.workers.count_death(Instant::now(), within);
        if deaths > self.config.supervise.max_restarts as usize {
            self.stop(StopReason::RestartIntensity { deaths, within });
        }
    }

    /// Kills workers that have not become ready within `[supervise] start_timeout` of their launch (a
    /// `worker_bin` that is not a worker and never says hello, a task whose set-up hangs): a start failure, which
    /// ends the run after a few in a row, instead of a run that waits forever.
    pub(in crate::dispatch) fn check_start_timeouts(&mut self) {
        let limit = self.config.supervise.start_timeout;
        for worker in self.workers.iter_mut() {
            if worker.is_starting() && worker.killed.is_none() && worker.launched.elapsed() > limit {
                let said = if worker.state() == WorkerState::Starting {
                    "never said hello"
                } else {
                    "never answered Init"
                };
                let error = format!(
                    "worker {} {said} within start_timeout = {}",
                    worker.pid,
                    crate::failure::human_duration(limit)
                );
                self.reporter.message(&format!("{error}: killed it"));
                worker.kill(self.launcher.as_mut(), KillCause::Protocol(error));
            }
        }
    }

    /// Kills workers that hold work but stay between items with no sign of life (stopped, or stuck in a page
    /// fault): their work goes back to the queue, uncharged (see [`stall_deadline`]). The death counts towards
    /// the restart intensity, so a machine where workers keep stalling ends the run instead of looping.
    pub(in crate::dispatch) fn check_stalls(&mut self) {
        let deadline = stall_deadline(&self.config);
        let now = Instant::now();
        for worker in self.workers.iter_mut() {
            if worker.stalled(now, deadline) {
                self.reporter.message(&format!(
                    "worker {} held work but showed no sign of life for {}: killed it, its work runs again",
                    worker.pid,
                    crate::failure::human_duration(deadline)
                ));
                worker.kill(self.launcher.as_mut(), KillCause::Stalled);
            }
        }
    }

    /// Kills workers whose current item has run past the timeout.
    pub(in crate::dispatch) fn check_timeouts(&mut self) {
        let Some(timeout) = self.config.timeout else { return };
        let now = monotonic_ns();
        let limit = timeout.as_nanos() as u64;
        for worker in self.workers.iter_mut() {
            // Stopping workers still run the items they hold (a `soon` halt, a graceful stop): timeouts apply.
            if worker.killed.is_some() || worker.batches.is_empty() || worker.pid == 0 {
                continue;
            }
            let Some(snapshot) = worker.progress.as_ref().and_then(ProgressReader::read) else {
                continue;
            };
            if snapshot.running && now.saturating_sub(snapshot.started_ns) > limit {
                worker.kill(self.launcher.as_mut(), KillCause::Timeout { item: snapshot.item });
            }
        }
    }
}
