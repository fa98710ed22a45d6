//! What every launcher tells the dispatcher: the [`Event`]s of a worker's life, the [`WorkerSender`] that talks
//! back to it, and the bound on what a worker may have waiting in the event queue.
//!
//! Both launchers ([`ProcessLauncher`](super::ProcessLauncher) for worker processes,
//! [`ThreadLauncher`](super::ThreadLauncher) for the worker threads of the `thread` and `serial` executors) send
//! these events into the one channel the dispatcher's driver reads, so the dispatcher handles a thread and a
//! process alike. How a worker comes to exist, and how its bytes cross, is each launcher's business; this module
//! owns only the vocabulary they share, and the `LaunchRequests` thread each runs its launches on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc as std_mpsc};
use std::thread;

use serde::Serialize;
use shared::frame;
use shared::protocol::{FromWorker, ToWorker};
use sys::process::{ExitInfo, Pidfd};
use tokio::sync::mpsc;

/// Identifies one worker for the whole run (a replacement gets a new id).
pub type WorkerId = u64;

/// Bytes of frames one worker may have waiting in the event queue. The reader reads another frame only while
/// less than this minus one largest frame is waiting, so a worker that floods the supervisor is slowed down to
/// the dispatcher's pace instead of filling its memory.
pub const IN_FLIGHT_BYTES: usize = 2 * frame::MAX_FROM_WORKER as usize;

/// What a launcher tells the dispatcher.
#[derive(Debug)]
pub enum Event {
    /// The worker exists; `pidfd` is how the dispatcher signals it (`None` for a worker thread, which cannot be
    /// killed).
    Spawned {
        id: WorkerId,
        pid: u32,
        pidfd: Option<Pidfd>,
    },
    /// The worker could not be started at all.
    SpawnFailed { id: WorkerId, error: String },
    /// The worker is ready for `Init` (a process said hello with a matching protocol version); `to_worker`
    /// reaches it.
    Connected { id: WorkerId, to_worker: WorkerSender },
    /// A message from a worker thread (trusted: it is this process's own code).
    Message { id: WorkerId, message: FromWorker },
    /// A frame from a worker process after its `Hello`, not decoded yet (the dispatcher decodes one at a time,
    /// so the memory a hostile worker can cost is its raw frames, bounded by [`IN_FLIGHT_BYTES`]).
    Frame { id: WorkerId, frame: Frame },
    /// The channel ended: `error` is `None` for a plain disconnect (the worker exited or closed it) and says
    /// what was wrong otherwise (undecodable message, wrong protocol version, bad handshake).
    ChannelClosed { id: WorkerId, error: Option<String> },
    /// The worker ended: a process was reaped, a thread returned.
    Exited {
        id: WorkerId,
        info: ExitInfo,
        stderr_tail: String,
    },
}

/// Sends messages to one worker: through a process's writer thread (a write may block, so it never runs on the
/// dispatcher), or straight into a worker thread's queue. Dropping it closes the worker's channel, which makes a
/// healthy worker exit.
#[derive(Debug, Clone)]
pub struct WorkerSender(std_mpsc::Sender<ToWorker>);

impl WorkerSender {
    /// A sender whose messages arrive on `queue`'s receiver (a writer thread's, a worker thread's, or a test's).
    pub fn new(queue: std_mpsc::Sender<ToWorker>) -> WorkerSender {
        WorkerSender(queue)
    }

    /// Queues `message`; returns false when the receiving end has stopped (the worker is gone).
    pub fn send(&self, message: ToWorker) -> bool {
        self.0.send(message).is_ok()
    }
}

/// Handle on a launcher thread, which starts one worker per request. The dispatcher asks for workers from the
/// async runtime, where blocking on the event channel is not allowed, so a launcher runs each launch, and sends
/// its first event, on a thread of its own. Dropping the handle stops the thread once pending launches are done.
#[derive(Debug)]
pub(super) struct LaunchRequests(std_mpsc::Sender<WorkerId>);

impl LaunchRequests {
    /// Starts thread `name`, which calls `launch` for each requested worker and sends the event it returns
    /// (`Spawned`, `Connected` or `SpawnFailed`, after any `launch` sent itself) to `events`.
    pub(super) fn serve(
        name: &str,
        events: mpsc::Sender<Event>,
        mut launch: impl FnMut(WorkerId, &mpsc::Sender<Event>) -> Event + Send + 'static,
    ) -> std::io::Result<LaunchRequests> {
        let (requests, receiver) = std_mpsc::channel::<WorkerId>();
        thread::Builder::new().name(name.into()).spawn(move || {
            for id in receiver {
                let event = launch(id, &events);
                if events.blocking_send(event).is_err() {
                    return;
                }
            }
        })?;
        Ok(LaunchRequests(requests))
    }

    /// Asks for worker `id`; its events arrive on the event channel, starting with `Spawned` or `SpawnFailed`.
    pub(super) fn launch(&self, id: WorkerId) {
        // The thread only stops when this handle is dropped, so the send cannot fail while we hold it.
        let _ = self.0.send(id);
    }
}

/// A short name of a message kind, for protocol errors.
pub fn message_name(message: &FromWorker) -> &'static str {
    match message {
        FromWorker::Hello { .. } => "Hello",
        FromWorker::Ready => "Ready",
        FromWorker::InitFailed { .. } => "InitFailed",
        FromWorker::Results { .. } => "Results",
    }
}

/// Counts messages and encoded bytes crossing worker processes' channels, in both directions (a worker thread's
/// messages are never encoded and count nothing).
#[derive(Debug, Default)]
pub struct IpcCounter {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

impl IpcCounter {
    pub(super) fn count<T: Serialize>(&self, message: &T) {
        let size = postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default()).unwrap_or(0);
        self.count_bytes(size);
    }

    pub(super) fn count_bytes(&self, size: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// The bytes of one worker's frames waiting in the event queue.
#[derive(Debug, Default)]
pub(super) struct Budget {
    waiting: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    /// Blocks until one more frame of the largest size fits.
    pub(super) fn wait_for_room(&self) {
        let limit = IN_FLIGHT_BYTES - frame::MAX_FROM_WORKER as usize;
        if let Ok(waiting) = self.waiting.lock() {
            drop(self.freed.wait_while(waiting, |waiting| *waiting > limit));
        }
    }

    /// Counts `bytes` as waiting and returns the frame that gives them back when dropped.
    pub(super) fn frame(self: &Arc<Budget>, bytes: Vec<u8>) -> Frame {
        self.take(bytes.len());
        Frame {
            bytes,
            budget: Arc::clone(self),
        }
    }

    fn take(&self, bytes: usize) {
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting += bytes;
        }
    }

    fn give_back(&self, bytes: usize) {
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting = waiting.saturating_sub(bytes);
            self.freed.notify_all();
        }
    }
}

/// The body of one frame from a worker process. Dropping it makes room for the next one (see
/// [`IN_FLIGHT_BYTES`]).
#[derive(Debug)]
pub struct Frame {
    bytes: Vec<u8>,
    budget: Arc<Budget>,
}

impl Frame {
    /// Decodes the frame as a message.
    pub fn decode(&self) -> Result<FromWorker, postcard::Error> {
        postcard::from_bytes(&self.bytes)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Budget, IN_FLIGHT_BYTES};

    #[test]
    fn a_reader_waits_while_a_worker_has_too_much_in_flight() {
        let budget = Arc::new(Budget::default());
        budget.take(IN_FLIGHT_BYTES);
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.wait_for_room())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the reader went on with a full budget");
        budget.give_back(IN_FLIGHT_BYTES);
        waiter
            .join()
            .expect("the reader goes on once the dispatcher handled the frames");
    }
}
