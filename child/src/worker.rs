//! The worker loop: what a worker process runs from start to exit.
//!
//! The worker finds its channel to the supervisor (a Unix socket) on stdin, says hello, waits for `Init` (task
//! and input), then runs batches until told to shut down or until the supervisor goes away.
//! It maps a `file` input once and each whole-file item as it comes; only descriptors and results cross the
//! channel. Panics in a task are caught and reported as the item's failure; anything that kills the process
//! (a signal, `exit`, an allocation failure) is for the supervisor to notice and attribute. A worker holds its
//! results to the limits the supervisor enforces (`shared::frame`): an oversized or too deeply nested value
//! fails its item here, long error messages are cut, and pending results are sent before they grow large.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use shared::frame::{self, FrameError, ReadError};
use shared::item::{Batch, BatchItems, InputPlan};
use shared::progress::ProgressWriter;
use shared::protocol::{
    FromWorker, Outcome, PROTOCOL_VERSION, RESULT_FLUSH_INTERVAL_MS, TaskError, TaskErrorKind, ToWorker,
};
use shared::protocol::{Isolation, WorkerLimits};
use shared::region::{MappedFile, SharedPage, SharedView};
use std::path::Path;

use crate::task::{Build, Item, ItemContext, ItemInput, Task};

/// Environment variable through which the supervisor passes its pid to an exec'ed worker (see [`run`]).
pub const PARENT_PID_ENV: &str = "SUPERVISOR_PARENT_PID";

/// The one argument of a worker process: the supervisor starts `supervisor __worker` (for a `worker_bin` job,
/// `PROGRAM __worker`) with its end of the channel socket as stdin and [`PARENT_PID_ENV`] in its environment.
pub const WORKER_ARG: &str = "__worker";

/// Why a worker stopped abnormally (its exit code is then non-zero; the message goes to stderr).
#[derive(Debug)]
pub struct WorkerError(String);

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The worker's way to the supervisor: its socket in a worker process, the dispatcher's event queue
/// for a worker thread (the `thread` and `serial` executors).
pub trait Uplink: Send + 'static {
    fn send(&self, message: FromWorker) -> Result<(), String>;
}

/// The supervisor's way to the worker. `Ok(None)` means the supervisor closed it.
pub trait Downlink {
    fn recv(&self) -> Result<Option<ToWorker>, String>;
}

/// A worker process's end of its socket: framed messages both ways (see `shared::frame`).
struct Socket(UnixStream);

impl Uplink for Socket {
    fn send(&self, message: FromWorker) -> Result<(), String> {
        frame::write(&self.0, &message).map_err(|error| error.to_string())
    }
}

impl Downlink for Socket {
    fn recv(&self) -> Result<Option<ToWorker>, String> {
        match frame::read(&self.0, frame::MAX_TO_WORKER) {
            Ok(message) => Ok(Some(message)),
            Err(ReadError::Frame(FrameError::Closed)) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl Downlink for std::sync::mpsc::Receiver<ToWorker> {
    fn recv(&self) -> Result<Option<ToWorker>, String> {
        Ok(std::sync::mpsc::Receiver::recv(self).ok())
    }
}

/// Where a worker runs. A worker thread shares the supervisor's process: it sets no resource limits (they would
/// apply to the whole process) and has no progress slot (a thread that crashes takes everything with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Process,
    Thread,
}

/// Runs a worker whose channel to the supervisor is its stdin (a Unix stream socket the supervisor or the fork
/// server put there), with the task that `build` makes of `Init`'s task name and arguments. Returns when told to
/// shut down or when the supervisor disconnects.
///
/// `parent` is the pid that must be this process's parent (the supervisor, or the fork server that forked it):
/// if it is already gone, the worker exits at once instead of running orphaned.
pub fn run(parent: Option<i32>, build: Build<'_>) -> Result<(), WorkerError> {
    crate::isolation::at_start(parent).map_err(WorkerError)?;
    ignore_interrupts()?;
    sys::limits::disable_core_dumps().map_err(|error| WorkerError(format!("cannot disable core dumps: {error}")))?;
    install_panic_capture();

    let socket = take_channel_from_stdin()
        .map_err(|error| WorkerError(format!("no channel to the supervisor on stdin: {error}")))?;
    let hostile = hostile_from_env(&socket);
    let uplink = Socket(
        socket
            .try_clone()
            .map_err(|error| WorkerError(format!("cannot clone the channel: {error}")))?,
    );
    let version = hello_version(hostile.as_ref());
    send(
        &uplink,
        FromWorker::Hello {
            version,
            pid: std::process::id(),
        },
    )?;
    let served = serve(uplink, &Socket(socket), Place::Process, hostile, build);
    // A closed channel may mean that the supervisor died: then take the task's children along.
    crate::isolation::leave_if_orphaned();
    served
}

/// Moves the channel off fd 0 to a close-on-exec descriptor (so that a program a task runs does not inherit
/// it) and puts /dev/null in its place.
fn take_channel_from_stdin() -> std::io::Result<UnixStream> {
    Ok(UnixStream::from(sys::socket::take_socket_from_stdin()?))
}

/// Runs a worker on the calling thread, inside the supervisor's process (the `thread` and `serial` executors):
/// the same loop and task code as a worker process, without isolation.
pub fn run_in_thread(
    to: impl Uplink,
    from: &std::sync::mpsc::Receiver<ToWorker>,
    build: Build<'_>,
) -> Result<(), WorkerError> {
    install_panic_capture();
    serve(to, from, Place::Thread, None, build)
}

/// The worker loop after the handshake: `Init`, then batches until `Shutdown` or a closed channel.
fn serve(
    to: impl Uplink,
    from: &impl Downlink,
    place: Place,
    hostile: Option<Hostile>,
    build: Build<'_>,
) -> Result<(), WorkerError> {
    fn received(what: &'static str) -> impl Fn(String) -> WorkerError {
        move |error| WorkerError(format!("cannot receive {what}: {error}"))
    }
    // A message received early (while waiting for the identity a starting task needs), to be handled first.
    let mut pending = None;
    let mut worker = match from.recv().map_err(received("Init"))? {
        Some(ToWorker::Init {
            task,
            args_json,
            input,
            limits,
            progress,
            isolation,
        }) => match Worker::confined(
            &task,
            &args_json,
            input,
            &limits,
            progress.as_deref(),
            &isolation,
            place,
            build,
        )
        .and_then(|mut worker| {
            pending = worker.start(from)?;
            Ok(worker)
        }) {
            Ok(mut worker) => {
                at_init(&mut worker, hostile);
                worker
            }
            Err(message) => {
                send(
                    &to,
                    FromWorker::InitFailed {
                        message: message.clone(),
                    },
                )?;
                return Err(WorkerError(message));
            }
        },
        Some(other) => return Err(WorkerError(format!("expected Init as first message, got {other:?}"))),
        None => return Ok(()),
    };
    send(&to, FromWorker::Ready)?;
    let outbox = Arc::new(Mutex::new(Outbox {
        to: Box::new(to),
        batch: 0,
        first: 0,
        outcomes: Vec::new(),
        pending_bytes: 0,
        last_send: Instant::now(),
        open: true,
    }));
    let _flusher = start_flusher(Arc::clone(&outbox));
    loop {
        let message = match pending.take() {
            Some(message) => message,
            None => from.recv().map_err(received("from the supervisor"))?,
        };
        match message {
            Some(ToWorker::Batch(batch)) => worker.run_batch(&batch, &outbox)?,
            Some(ToWorker::Shutdown) | None => {
                at_shutdown(&worker);
                return Ok(());
            }
            Some(ToWorker::Identity { worker: id }) => worker.context.worker = id,
            Some(ToWorker::Attempt { item, attempt }) => {
                worker.attempts.insert(item, attempt);
            }
            Some(other @ ToWorker::Init { .. }) => {
                return Err(WorkerError(format!("unexpected message after Init: {other:?}")));
            }
        }
    }
}

fn send(to: &(impl Uplink + ?Sized), message: FromWorker) -> Result<(), WorkerError> {
    to.send(message)
        .map_err(|error| WorkerError(format!("cannot send to supervisor: {error}")))
}

/// Results not sent yet, and the channel they go out on. Shared by the worker loop, which adds outcomes, and
/// the flusher thread, which sends what is pending every [`RESULT_FLUSH_INTERVAL_MS`] even while a long item
/// runs: finished results are never held back by the item after them.
struct Outbox {
    to: Box<dyn Uplink>,
    batch: u64,
    /// Index of `outcomes[0]`.
    first: u64,
    outcomes: Vec<Outcome>,
    /// Encoded size of `outcomes`.
    pending_bytes: usize,
    last_send: Instant,
    /// False once the worker loop ended: the flusher thread then ends too (a worker thread of the `thread`
    /// executor lives inside the supervisor, where a leftover flusher would outlive it).
    open: bool,
}

impl Outbox {
    fn start(&mut self, batch: &Batch) {
        self.batch = batch.id;
        self.first = batch.first;
    }

    fn push(&mut self, outcome: Outcome) -> Result<(), WorkerError> {
        // Frames stay well under the supervisor's limit: pending results go out before they would pass
        // RESULT_FLUSH_BYTES (one outcome is at most MAX_RESULT_BYTES plus a short error message).
        let size = outcome_size(&outcome);
        if self.pending_bytes + size > frame::RESULT_FLUSH_BYTES {
            self.flush()?;
        }
        self.pending_bytes += size;
        self.outcomes.push(outcome);
        if self.due() { self.flush() } else { Ok(()) }
    }

    fn due(&self) -> bool {
        !self.outcomes.is_empty() && self.last_send.elapsed() >= Duration::from_millis(RESULT_FLUSH_INTERVAL_MS)
    }

    fn flush(&mut self) -> Result<(), WorkerError> {
        if self.outcomes.is_empty() {
            return Ok(());
        }
        let outcomes = std::mem::take(&mut self.outcomes);
        self.pending_bytes = 0;
        let sent = outcomes.len() as u64;
        send(
            &*self.to,
            FromWorker::Results {
                batch: self.batch,
                first: self.first,
                outcomes,
            },
        )?;
        self.first += sent;
        self.last_send = Instant::now();
        Ok(())
    }
}

/// An upper bound of the bytes a scalar value (not text, a list or a map) takes in postcard; `None` for the others.
fn scalar_size(value: &shared::item::Value) -> Option<usize> {
    use shared::item::Value;
    match value {
        // A variant tag and at most a 19-byte varint of a 128-bit integer.
        Value::Null | Value::Bool(_) | Value::UInt(_) | Value::Int(_) | Value::Float(_) => Some(24),
        Value::Text(_) | Value::List(_) | Value::Map(_) => None,
    }
}

/// An upper bound of the bytes `outcome` takes in postcard: cheap for the common case of a scalar value.
fn outcome_size(outcome: &Outcome) -> usize {
    match &outcome.result {
        // The elapsed time and result tags (at most 12 bytes), plus the value.
        Ok(value) => scalar_size(value).map_or_else(|| encoded_size(outcome), |size| size + 12),
        Err(_) => encoded_size(outcome),
    }
}

/// Bytes `value` takes in postcard.
fn encoded_size<T: serde::Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(usize::MAX)
}

/// Holds a task's result to the limits the supervisor enforces: a value larger than
/// [`frame::MAX_RESULT_BYTES`] or nested deeper than [`frame::MAX_VALUE_DEPTH`] fails the item, and an error
/// message longer than [`frame::MAX_MESSAGE_BYTES`] is cut.
fn within_limits(result: Result<shared::item::Value, TaskError>) -> Result<shared::item::Value, TaskError> {
    match result {
        // Scalars are far within both limits: no need to measure them (this runs once per item).
        Ok(value) if scalar_size(&value).is_some() => Ok(value),
        Ok(value) => {
            let depth = value.depth();
            if depth > frame::MAX_VALUE_DEPTH {
                return Err(TaskError {
                    kind: TaskErrorKind::Error,
                    message: format!(
                        "the task's result is nested {depth} levels deep, more than the limit of {}",
                        frame::MAX_VALUE_DEPTH
                    ),
                });
            }
            let size = encoded_size(&value);
            if size > frame::MAX_RESULT_BYTES {
                return Err(TaskError {
                    kind: TaskErrorKind::Error,
                    message: format!(
                        "the task's result takes {size} bytes encoded, more than the limit of {} bytes",
                        frame::MAX_RESULT_BYTES
                    ),
                });
            }
            Ok(value)
        }
        Err(TaskError { kind, message }) => Err(TaskError {
            kind,
            message: frame::truncate_message(message),
        }),
    }
}

fn lock(outbox: &Mutex<Outbox>) -> Result<std::sync::MutexGuard<'_, Outbox>, WorkerError> {
    outbox
        .lock()
        .map_err(|_| WorkerError("result outbox poisoned".to_string()))
}

/// Closes the outbox when the worker loop ends, however it ends, so that the flusher thread stops.
struct FlusherGuard(Arc<Mutex<Outbox>>);

impl Drop for FlusherGuard {
    fn drop(&mut self) {
        if let Ok(mut outbox) = self.0.lock() {
            outbox.open = false;
        }
    }
}

fn start_flusher(outbox: Arc<Mutex<Outbox>>) -> FlusherGuard {
    let interval = Duration::from_millis(RESULT_FLUSH_INTERVAL_MS);
    let flushed = Arc::clone(&outbox);
    // Without the thread, results are still sent after each item once due and at the end of each batch.
    let _ = std::thread::Builder::new().name("flusher".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            // While an item runs nothing else notices a dead supervisor if the parent-death signal was lost.
            crate::isolation::leave_if_orphaned();
            let Ok(mut outbox) = flushed.lock() else { return };
            if !outbox.open || (outbox.due() && outbox.flush().is_err()) {
                return;
            }
        }
    });
    FlusherGuard(outbox)
}

/// Ctrl-C in a terminal signals the whole foreground process group, and a cluster scheduler stopping a job
/// (Slurm at a time limit, on `scancel` or preemption) sends SIGTERM to every process of it at once; the
/// supervisor decides when its workers stop (it lets them finish their items or kills them), so a worker ignores
/// both. Were it to die of the SIGTERM, its item would be recorded as failed and not run again on `--resume`.
fn ignore_interrupts() -> Result<(), WorkerError> {
    sys::process::ignore_interrupts().map_err(|error| WorkerError(format!("cannot ignore SIGINT and SIGTERM: {error}")))
}

thread_local! {
    /// Set while a task runs on this thread: its panic is captured as the item's failure instead of printed.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// The message of the last captured panic on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that captures panics of tasks and passes every other panic to the
/// hook that was there before (worker threads share the supervisor's process).
fn install_panic_capture() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_TASK.with(Cell::get) {
                return previous(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".to_string());
            let text = match info.location() {
                Some(location) => format!("{message} (at {location})"),
                None => message,
            };
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
        }));
    });
}

/// Runs one item in this process, as a worker would, and returns its outcome: `supervisor replay` uses this to
/// reproduce an item's behaviour in the foreground (a crash then happens here, under a debugger if wanted).
/// Panics are printed by the default hook and reported as the item's failure.
pub fn run_one(
    task_name: &str,
    args_json: &str,
    plan: InputPlan,
    batch: &Batch,
    build: Build<'_>,
) -> Result<Outcome, String> {
    let mut worker = Worker::new(
        task_name,
        args_json,
        plan,
        &WorkerLimits::default(),
        None,
        Place::Process,
        build,
    )?;
    worker.task.start(&worker.context)?;
    Ok(worker.run_item(batch, 0))
}

struct Worker {
    task: Box<dyn Task>,
    plan: InputPlan,
    /// The `file` input, mapped once for the worker's life.
    mapped: Option<MappedFile>,
    /// The arena of fetched bodies (a `urls` input), mapped read-only once for the worker's life: mapped at
    /// `Init`, so that it works even if the worker later gives up the right to open the supervisor's files.
    arena: Option<SharedView>,
    progress: Option<ProgressWriter>,
    cpu_seconds_per_item: Option<u64>,
    /// A test-only misbehaviour (see `crate::hostile`, compiled only with the `hostile` feature); `None` in
    /// every real run.
    #[cfg(feature = "hostile")]
    hostile: Option<Hostile>,
    /// The worker's id and the current item's attempt, for the user's processes.
    context: ItemContext,
    /// Attempt numbers of retried items not yet run (told by `ToWorker::Attempt`).
    attempts: HashMap<u64, u32>,
}

impl Worker {
    /// A worker set up by `Init`: in a worker process, confined as `isolation` says (environment and descriptor
    /// limit first; the switch of user last, once the progress slot and the input are open).
    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of `ToWorker::Init`, where the worker runs, and a task compiled into the binary"
    )]
    fn confined(
        task_name: &str,
        args_json: &str,
        plan: InputPlan,
        limits: &WorkerLimits,
        progress: Option<&Path>,
        isolation: &Isolation,
        place: Place,
        build: Build<'_>,
    ) -> Result<Worker, String> {
        if place == Place::Process {
            crate::isolation::apply_init(isolation)?;
        }
        let worker = Worker::new(task_name, args_json, plan, limits, progress, place, build)?;
        if let (Place::Process, Some(credentials)) = (place, isolation.credentials) {
            crate::isolation::drop_privileges(credentials).map_err(|error| {
                format!(
                    "cannot switch to uid {} gid {}: {error}",
                    credentials.uid, credentials.gid
                )
            })?;
        }
        Ok(worker)
    }

    fn new(
        task_name: &str,
        args_json: &str,
        plan: InputPlan,
        limits: &WorkerLimits,
        progress: Option<&Path>,
        place: Place,
        build: Build<'_>,
    ) -> Result<Worker, String> {
        if place == Place::Process {
            crate::isolation::apply_limits(limits).map_err(|error| format!("cannot apply resource limits: {error}"))?;
        }
        let progress = progress.filter(|_| place == Place::Process);
        let progress = match progress {
            Some(path) => {
                Some(ProgressWriter::new(SharedPage::open(path).map_err(|error| {
                    format!("cannot map progress page {}: {error}", path.display())
                })?))
            }
            None => None,
        };
        let task = build(task_name, args_json)?;
        let mapped = match &plan {
            InputPlan::File { path } => Some(
                MappedFile::open(path).map_err(|error| format!("cannot map input file {}: {error}", path.display()))?,
            ),
            InputPlan::Range { .. } | InputPlan::Files | InputPlan::Arena { .. } => None,
        };
        let arena = match &plan {
            InputPlan::Arena { path } => Some(
                SharedView::open(path)
                    .map_err(|error| format!("cannot map the fetched-body arena {}: {error}", path.display()))?,
            ),
            _ => None,
        };
        let cpu_seconds_per_item = limits.cpu_seconds_per_item.filter(|_| place == Place::Process);
        Ok(Worker {
            task,
            plan,
            mapped,
            arena,
            progress,
            cpu_seconds_per_item,
            #[cfg(feature = "hostile")]
            hostile: None,
            context: ItemContext { worker: 0, attempt: 1 },
            attempts: HashMap::new(),
        })
    }

    /// Runs the task's [`Task::start`], if it has one, with the worker's identity (which the supervisor sends
    /// right after `Init`); returns a message received meanwhile that was not the identity, to be handled next.
    fn start(&mut self, from: &impl Downlink) -> Result<Option<Option<ToWorker>>, String> {
        if !self.task.has_start() {
            return Ok(None);
        }
        let pending = match from
            .recv()
            .map_err(|error| format!("cannot receive from the supervisor: {error}"))?
        {
            Some(ToWorker::Identity { worker }) => {
                self.context.worker = worker;
                None
            }
            other => Some(other),
        };
        self.task.start(&self.context)?;
        Ok(pending)
    }

    fn run_batch(&mut self, batch: &Batch, outbox: &Mutex<Outbox>) -> Result<(), WorkerError> {
        #[cfg(feature = "hostile")]
        if let Some(hostile) = self.hostile.take() {
            let ran = self.run_batch_hostile(&hostile, batch, outbox);
            self.hostile = Some(hostile);
            return ran;
        }
        lock(outbox)?.start(batch);
        for k in 0..batch.len() {
            let outcome = self.run_item(batch, k);
            lock(outbox)?.push(outcome)?;
        }
        lock(outbox)?.flush()
    }

    /// [`Worker::run_batch`] of a worker in a test-only hostile mode: each result goes out at once, so that the
    /// misbehaviour lands at a known point.
    #[cfg(feature = "hostile")]
    fn run_batch_hostile(
        &mut self,
        hostile: &Hostile,
        batch: &Batch,
        outbox: &Mutex<Outbox>,
    ) -> Result<(), WorkerError> {
        lock(outbox)?.start(batch);
        for k in 0..batch.len() {
            let index = batch.first + k;
            let substitute = hostile.before_item(batch, index, || lock(outbox)?.flush());
            let outcome = substitute.unwrap_or_else(|| self.run_item(batch, k));
            let copy = outcome.clone();
            let mut sending = lock(outbox)?;
            sending.push(outcome)?;
            sending.flush()?;
            drop(sending);
            hostile.after_item(batch, index, &copy);
        }
        lock(outbox)?.flush()
    }

    fn run_item(&mut self, batch: &Batch, k: u64) -> Outcome {
        let index = batch.first + k;
        self.context.attempt = if self.attempts.is_empty() {
            1
        } else {
            self.attempts.remove(&index).unwrap_or(1)
        };
        if let Some(seconds) = self.cpu_seconds_per_item {
            // Failing to arm the limit leaves the item without one; the wall-clock timeout still applies.
            let _ = sys::limits::arm_cpu_limit(seconds);
        }
        if let Some(progress) = &self.progress {
            progress.begin(batch.id, index);
        }
        let outcome = self.run_item_inner(batch, k, index);
        if let Some(progress) = &self.progress {
            progress.end(batch.id, index);
        }
        outcome
    }

    fn run_item_inner(&mut self, batch: &Batch, k: u64, index: u64) -> Outcome {
        let started = Instant::now();
        let result = match self.prepare(batch, k) {
            Err(message) => Err(TaskError {
                kind: TaskErrorKind::Error,
                message,
            }),
            Ok(Prepared::Range(lo, hi)) => self.call(Item {
                index,
                input: ItemInput::Range { lo, hi },
            }),
            Ok(Prepared::Chunk(offset, len)) => {
                let mapped = self
                    .mapped
                    .as_ref()
                    .map(|m| (&m[offset..offset + len], m.path().to_path_buf()));
                match mapped {
                    Some((data, path)) => {
                        let input = ItemInput::Bytes {
                            data,
                            path: &path,
                            offset: offset as u64,
                        };
                        call_task(&mut *self.task, Item { index, input }, &self.context)
                    }
                    None => Err(TaskError {
                        kind: TaskErrorKind::Error,
                        message: "no mapped input file".into(),
                    }),
                }
            }
            Ok(Prepared::Fetched(k)) => match (&batch.items, &self.arena) {
                (BatchItems::Fetched(bodies), Some(arena)) => {
                    let body = &bodies[k];
                    match arena.slice(body.offset, body.len) {
                        Some(data) => call_task(
                            &mut *self.task,
                            Item {
                                index,
                                input: ItemInput::Fetched { data, url: &body.url },
                            },
                            &self.context,
                        ),
                        None => Err(TaskError {
                            kind: TaskErrorKind::Error,
                            message: format!("body of {} is outside the fetched-body arena", body.url),
                        }),
                    }
                }
                _ => Err(TaskError {
                    kind: TaskErrorKind::Error,
                    message: "no fetched-body arena mapped".into(),
                }),
            },
            Ok(Prepared::File(file)) => {
                let input = ItemInput::Bytes {
                    data: &file,
                    path: file.path(),
                    offset: 0,
                };
                self.call(Item { index, input })
            }
        };
        Outcome {
            elapsed_us: started.elapsed().as_micros() as u64,
            result: within_limits(result),
        }
    }

    /// Resolves the descriptor of item `k` of `batch` into something the task can read.
    fn prepare(&self, batch: &Batch, k: u64) -> Result<Prepared, String> {
        let index = batch.first + k;
        match &batch.items {
            BatchItems::Range { .. } => self
                .plan
                .range_item(index)
                .map(|(lo, hi)| Prepared::Range(lo, hi))
                .ok_or_else(|| format!("item {index} is outside the range input")),
            BatchItems::Chunks(chunks) => {
                let chunk = chunks[k as usize];
                let size = self.mapped.as_ref().map_or(0, |m| m.len() as u64);
                let path = self
                    .mapped
                    .as_ref()
                    .map(|m| m.path().display().to_string())
                    .unwrap_or_default();
                match chunk.offset.checked_add(chunk.len) {
                    Some(end) if end <= size => Ok(Prepared::Chunk(chunk.offset as usize, chunk.len as usize)),
                    _ => Err(format!(
                        "input file {path} is {size} bytes now, but this item is bytes {}..{} of it: the file \
                         shrank after the job listed it (the input must not change during the job)",
                        chunk.offset,
                        chunk.offset.saturating_add(chunk.len)
                    )),
                }
            }
            BatchItems::Files(paths) => {
                let path = &paths[k as usize];
                MappedFile::open(path)
                    .map(Prepared::File)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))
            }
            BatchItems::Fetched(_) => Ok(Prepared::Fetched(k as usize)),
        }
    }

    fn call(&mut self, item: Item<'_>) -> Result<shared::item::Value, TaskError> {
        call_task(&mut *self.task, item, &self.context)
    }
}

// Test-only hostile modes (`crate::hostile`): compiled only with the `hostile` feature, which the supervisor's
// tests enable; without it a worker has no way to misbehave and the release binary holds none of their code.

#[cfg(feature = "hostile")]
use crate::hostile::Hostile;

/// Without the `hostile` feature no worker misbehaves: this type has no values.
#[cfg(not(feature = "hostile"))]
#[derive(Debug)]
enum Hostile {}

#[cfg(feature = "hostile")]
fn hostile_from_env(socket: &UnixStream) -> Option<Hostile> {
    crate::hostile::from_env(socket)
}

#[cfg(not(feature = "hostile"))]
fn hostile_from_env(_socket: &UnixStream) -> Option<Hostile> {
    None
}

fn hello_version(hostile: Option<&Hostile>) -> u32 {
    #[cfg(feature = "hostile")]
    if let Some(hostile) = hostile {
        return hostile.hello_version();
    }
    #[cfg(not(feature = "hostile"))]
    if let Some(never) = hostile {
        match *never {}
    }
    PROTOCOL_VERSION
}

/// A hostile worker's misbehaviour at `Init`; it keeps its mode for the items.
fn at_init(worker: &mut Worker, hostile: Option<Hostile>) {
    #[cfg(feature = "hostile")]
    if let Some(hostile) = hostile {
        hostile.at_init();
        worker.hostile = Some(hostile);
    }
    #[cfg(not(feature = "hostile"))]
    let _ = (worker, hostile);
}

fn at_shutdown(worker: &Worker) {
    #[cfg(feature = "hostile")]
    if let Some(hostile) = &worker.hostile {
        hostile.at_shutdown();
    }
    #[cfg(not(feature = "hostile"))]
    let _ = worker;
}

enum Prepared {
    Range(u64, u64),
    Chunk(usize, usize),
    File(MappedFile),
    /// The `k`-th body of a batch of fetched bodies.
    Fetched(usize),
}

/// Runs the task on one item, turning a panic into the item's failure.
fn call_task(task: &mut dyn Task, item: Item<'_>, context: &ItemContext) -> Result<shared::item::Value, TaskError> {
    IN_TASK.with(|in_task| in_task.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| task.run_detailed(item, context)));
    IN_TASK.with(|in_task| in_task.set(false));
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error),
        Err(_) => {
            let message = LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| "task panicked".to_string());
            Err(TaskError {
                kind: TaskErrorKind::Panic,
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Arc<Mutex<Vec<FromWorker>>>);

    /// A task that returns null for every item.
    struct Noop;

    impl Task for Noop {
        fn run(&mut self, _item: Item<'_>) -> Result<shared::item::Value, String> {
            Ok(shared::item::Value::Null)
        }
    }

    impl Uplink for Collect {
        fn send(&self, message: FromWorker) -> Result<(), String> {
            self.0.lock().map_err(|_| "poisoned".to_string())?.push(message);
            Ok(())
        }
    }

    fn flusher_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter(|task| {
                        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == "flusher")
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn results_over_the_limits_fail_their_item_and_long_errors_are_cut() {
        use shared::item::Value;
        let big = within_limits(Ok(Value::Text("x".repeat(frame::MAX_RESULT_BYTES))));
        let error = big.expect_err("a value over the limit fails");
        assert_eq!(error.kind, TaskErrorKind::Error);
        assert!(
            error.message.contains("more than the limit of 1048576 bytes"),
            "{}",
            error.message
        );
        let small = Value::Text("x".repeat(frame::MAX_RESULT_BYTES - 16));
        assert_eq!(within_limits(Ok(small.clone())), Ok(small));
        let mut deep = Value::Null;
        for _ in 0..frame::MAX_VALUE_DEPTH {
            deep = Value::List(vec![deep]);
        }
        let error = within_limits(Ok(deep)).expect_err("a value nested too deep fails");
        assert!(error.message.contains("levels deep"), "{}", error.message);
        let long = within_limits(Err(TaskError {
            kind: TaskErrorKind::Panic,
            message: "p".repeat(1 << 20),
        }))
        .expect_err("stays an error");
        assert_eq!(long.kind, TaskErrorKind::Panic);
        assert!(
            long.message.len() < frame::MAX_MESSAGE_BYTES + 64,
            "{}",
            long.message.len()
        );
    }

    #[test]
    fn pending_results_go_out_before_they_pass_the_flush_size() {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let mut outbox = Outbox {
            to: Box::new(Collect(Arc::clone(&messages))),
            batch: 1,
            first: 0,
            outcomes: Vec::new(),
            pending_bytes: 0,
            // Not due by time during this test.
            last_send: Instant::now() + Duration::from_secs(3600),
            open: true,
        };
        let outcome = Outcome {
            elapsed_us: 1,
            result: Ok(shared::item::Value::Text("y".repeat(300 << 10))),
        };
        for _ in 0..10 {
            outbox.push(outcome.clone()).expect("pushed");
        }
        outbox.flush().expect("flushed");
        let sizes: Vec<usize> = messages.lock().expect("lock").iter().map(encoded_size).collect();
        assert!(sizes.len() >= 4, "{sizes:?}");
        assert!(
            sizes.iter().all(|&size| size <= frame::MAX_FROM_WORKER as usize),
            "{sizes:?}"
        );
        let answered: usize = messages
            .lock()
            .expect("lock")
            .iter()
            .map(|m| match m {
                FromWorker::Results { outcomes, .. } => outcomes.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(answered, 10);
    }

    /// Regression: each worker thread left its flusher running forever; a benchmark that started thousands of
    /// worker threads ended with thousands of flushers waking every 20 ms.
    #[test]
    fn a_worker_thread_leaves_no_flusher_behind() {
        for _ in 0..20 {
            let messages = Arc::new(Mutex::new(Vec::new()));
            let (sender, queue) = std::sync::mpsc::channel();
            let init = ToWorker::Init {
                task: "noop".into(),
                args_json: "{}".into(),
                input: InputPlan::Range {
                    start: 0,
                    end: 10,
                    chunk: 1,
                },
                limits: WorkerLimits::default(),
                progress: None,
                isolation: Default::default(),
            };
            sender.send(init).expect("send");
            sender
                .send(ToWorker::Batch(Batch {
                    id: 0,
                    first: 0,
                    items: shared::item::BatchItems::Range { count: 10 },
                }))
                .expect("send");
            sender.send(ToWorker::Shutdown).expect("send");
            let build: Build<'_> = Box::new(|_: &str, _: &str| Ok(Box::new(Noop) as Box<dyn Task>));
            run_in_thread(Collect(Arc::clone(&messages)), &queue, build).expect("worker ran");
            let answered: usize = messages
                .lock()
                .expect("lock")
                .iter()
                .map(|m| {
                    if let FromWorker::Results { outcomes, .. } = m {
                        outcomes.len()
                    } else {
                        0
                    }
                })
                .sum();
            assert_eq!(answered, 10);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while flusher_threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(flusher_threads(), 0);
    }
}
