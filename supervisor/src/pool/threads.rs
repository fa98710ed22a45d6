//! The worker threads of the `thread` and `serial` executors: the same worker loop as a worker process
//! (`child::worker`, with the builtins), run on threads of the supervisor's own process.
//!
//! They are baselines users compare the process executor with (`supervisor compare`), not a way to isolate
//! anything, so they share none of the process path's machinery: no socket, no reader or writer thread, no
//! encoding, no waiter, no pidfd. A worker thread's messages become [`Event::Message`]s directly and its queue
//! is a plain channel. What is left in common with worker processes is what the dispatcher sees: the
//! [`Event`]s and the [`Launch`](crate::dispatch::Launch) verbs. Which items a worker thread runs, and that a
//! `serial` run is one thread given the whole job as one batch, is the dispatcher's and `run`'s business.

use std::sync::mpsc as std_mpsc;
use std::thread;

use shared::protocol::{FromWorker, ToWorker};
use tokio::sync::mpsc;

use super::event::{Event, LaunchRequests, WorkerId, WorkerSender};
use sys::process::{ExitInfo, ExitStatus, Pidfd};

/// Handle on the thread that starts worker threads. Dropping it stops that thread once pending launches are
/// done; worker threads end when their channel closes.
#[derive(Debug)]
pub struct ThreadLauncher {
    requests: LaunchRequests,
}

impl ThreadLauncher {
    /// Starts the launcher thread; all events of all worker threads go to `events`. A thread of its own, as the
    /// process launcher has, so that a worker thread's first events take the same hops as a process's.
    pub fn start(events: mpsc::Sender<Event>) -> std::io::Result<ThreadLauncher> {
        let requests = LaunchRequests::serve("thread-launcher", events, |id, events| {
            launch(id, events).unwrap_or_else(|error| Event::SpawnFailed {
                id,
                error: format!("cannot start worker thread: {error}"),
            })
        })?;
        Ok(ThreadLauncher { requests })
    }
}

impl crate::dispatch::Launch for ThreadLauncher {
    fn launch(&mut self, id: WorkerId) {
        self.requests.launch(id);
    }

    fn kill(&mut self, _id: WorkerId, _pidfd: Option<&Pidfd>) {
        // A thread cannot be killed, and needs no kill: it ends when the dispatcher drops its sender.
    }
}

/// A worker thread's way to the dispatcher: its messages become events directly (no channel, no reader).
struct EventUplink {
    id: WorkerId,
    events: mpsc::Sender<Event>,
}

impl child::worker::Uplink for EventUplink {
    fn send(&self, message: FromWorker) -> Result<(), String> {
        self.events
            .blocking_send(Event::Message { id: self.id, message })
            .map_err(|_| "dispatcher is gone".to_string())
    }
}

/// Starts worker thread `id`: reports it spawned, and returns its `Connected` event.
fn launch(id: WorkerId, events: &mpsc::Sender<Event>) -> std::io::Result<Event> {
    let (sender, queue) = std_mpsc::channel::<ToWorker>();
    let uplink = EventUplink {
        id,
        events: events.clone(),
    };
    let thread_events = events.clone();
    thread::Builder::new().name(format!("worker-{id}")).spawn(move || {
        // The worker loop waits for `Init` before it sends anything, so its first message follows `Connected`.
        let error = child::worker::run_in_thread(uplink, &queue, Box::new(builtins::build))
            .err()
            .map(|error| error.to_string());
        let info = ExitInfo {
            status: ExitStatus::Code(0),
            cpu: sys::cpu::thread_cpu_time(),
            max_rss: 0,
        };
        let _ = thread_events.blocking_send(Event::ChannelClosed { id, error });
        let _ = thread_events.blocking_send(Event::Exited {
            id,
            info,
            stderr_tail: String::new(),
        });
    })?;
    let pid = std::process::id();
    if events.blocking_send(Event::Spawned { id, pid, pidfd: None }).is_err() {
        return Err(std::io::Error::other("dispatcher is gone"));
    }
    Ok(Event::Connected {
        id,
        to_worker: WorkerSender::new(sender),
    })
}

#[cfg(test)]
mod tests {
    use shared::item::{Batch, BatchItems, InputPlan, Value};
    use shared::protocol::{FromWorker, ToWorker, WorkerLimits};
    use sys::process::ExitStatus;

    use super::{Event, ThreadLauncher};
    use crate::dispatch::Launch;

    /// Σ i² for i in `[lo, hi)`, from the closed form Σ_{i<n} i² = (n−1)n(2n−1)/6.
    fn sum_squares_below(lo: u128, hi: u128) -> u128 {
        let below = |n: u128| if n == 0 { 0 } else { (n - 1) * n * (2 * n - 1) / 6 };
        below(hi) - below(lo)
    }

    /// A worker thread goes through a worker's whole life with the events a worker process sends: `Spawned`
    /// (this process, no pidfd), `Connected`, `Ready` after `Init`, the results of a batch, and, once its
    /// sender is dropped, a clean end of its channel and an exit. A kill does nothing to it.
    #[test]
    fn a_worker_thread_runs_a_batch_and_ends_when_its_sender_is_dropped() {
        let (events, mut received) = tokio::sync::mpsc::channel(64);
        let mut launcher = ThreadLauncher::start(events).expect("start the thread launcher");
        Launch::launch(&mut launcher, 3);
        match received.blocking_recv() {
            Some(Event::Spawned {
                id: 3,
                pid,
                pidfd: None,
            }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Spawned, got {other:?}"),
        }
        let to_worker = match received.blocking_recv() {
            Some(Event::Connected { id: 3, to_worker }) => to_worker,
            other => panic!("expected Connected, got {other:?}"),
        };
        let (start, end, chunk) = (0u64, 1000u64, 100u64);
        assert!(to_worker.send(ToWorker::Init {
            task: "sum-squares".into(),
            args_json: "{}".into(),
            input: InputPlan::Range { start, end, chunk },
            limits: WorkerLimits::default(),
            progress: None,
            isolation: Default::default(),
        }));
        match received.blocking_recv() {
            Some(Event::Message {
                id: 3,
                message: FromWorker::Ready,
            }) => {}
            other => panic!("expected Ready, got {other:?}"),
        }
        let count = (end - start) / chunk;
        assert!(to_worker.send(ToWorker::Batch(Batch {
            id: 1,
            first: 0,
            items: BatchItems::Range { count },
        })));
        let mut values = Vec::new();
        while (values.len() as u64) < count {
            match received.blocking_recv() {
                Some(Event::Message {
                    id: 3,
                    message:
                        FromWorker::Results {
                            batch: 1,
                            first,
                            outcomes,
                        },
                }) => {
                    assert_eq!(first, values.len() as u64, "results arrive in item order");
                    values.extend(outcomes.into_iter().map(|outcome| outcome.result));
                }
                other => panic!("expected Results, got {other:?}"),
            }
        }
        for (item, value) in values.into_iter().enumerate() {
            let lo = u128::from(start + item as u64 * chunk);
            assert_eq!(
                value,
                Ok(Value::UInt(sum_squares_below(lo, lo + u128::from(chunk)))),
                "item {item}"
            );
        }
        Launch::kill(&mut launcher, 3, None);
        drop(to_worker);
        match received.blocking_recv() {
            Some(Event::ChannelClosed { id: 3, error: None }) => {}
            other => panic!("expected a clean end of the channel, got {other:?}"),
        }
        match received.blocking_recv() {
            Some(Event::Exited { id: 3, info, .. }) => assert_eq!(info.status, ExitStatus::Code(0)),
            other => panic!("expected Exited, got {other:?}"),
        }
        drop(launcher);
        // The launcher thread and the worker thread are gone: nothing holds the event channel any more.
        assert!(received.blocking_recv().is_none());
    }
}
