//! The worker loop: what a worker process runs from start to exit.
//!
//! The worker connects to the supervisor's bootstrap server, says hello with its own receiving channel, waits
//! for `Init` (task and input), then runs batches until told to shut down or until the supervisor goes away.
//! It maps a `file` input once and each whole-file item as it comes; only descriptors and results cross the
//! channel. Panics in a task are caught and reported as the item's failure; anything that kills the process
//! (a signal, `exit`, an allocation failure) is for the supervisor to notice and attribute.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcReceiver, IpcSender};
use shared::item::{Batch, BatchItems, InputPlan};
use shared::progress::ProgressWriter;
use shared::protocol::WorkerLimits;
use shared::protocol::{
    FromWorker, Outcome, PROTOCOL_VERSION, RESULT_FLUSH_INTERVAL_MS, TaskError, TaskErrorKind, ToWorker,
};
use shared::region::{MappedFile, SharedPage, SharedView};
use std::path::Path;

use crate::task::{Item, ItemInput, Task, lookup};

/// Environment variable through which the supervisor passes its pid to an exec'ed worker (see [`run`]).
pub const PARENT_PID_ENV: &str = "SUPERVISOR_PARENT_PID";

/// Why a worker stopped abnormally (its exit code is then non-zero; the message goes to stderr).
#[derive(Debug)]
pub struct WorkerError(String);

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The worker's way to the supervisor: an ipc-channel sender in a worker process, the dispatcher's event queue
/// for a worker thread (the `thread` and `serial` executors).
pub trait Uplink: Send + 'static {
    fn send(&self, message: FromWorker) -> Result<(), String>;
}

/// The supervisor's way to the worker. `Ok(None)` means the supervisor closed it.
pub trait Downlink {
    fn recv(&self) -> Result<Option<ToWorker>, String>;
}

impl Uplink for IpcSender<FromWorker> {
    fn send(&self, message: FromWorker) -> Result<(), String> {
        IpcSender::send(self, message).map_err(|error| error.to_string())
    }
}

impl Downlink for IpcReceiver<ToWorker> {
    fn recv(&self) -> Result<Option<ToWorker>, String> {
        match IpcReceiver::recv(self) {
            Ok(message) => Ok(Some(message)),
            Err(IpcError::Disconnected) => Ok(None),
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

/// Runs a worker connected to the bootstrap server `server_name`. Returns when told to shut down or when the
/// supervisor disconnects.
///
/// `parent` is the pid that must be this process's parent (the supervisor, or the fork server that forked it):
/// if it is already gone, the worker exits at once instead of running orphaned.
pub fn run(server_name: &str, parent: Option<i32>) -> Result<(), WorkerError> {
    die_with_parent(parent)?;
    ignore_interrupts();
    crate::limits::disable_core_dumps().map_err(|error| WorkerError(format!("cannot disable core dumps: {error}")))?;
    install_panic_capture();

    let to_supervisor = IpcSender::<FromWorker>::connect(server_name.to_string())
        .map_err(|error| WorkerError(format!("cannot connect to supervisor at {server_name}: {error}")))?;
    let (to_worker, from_supervisor) =
        ipc::channel::<ToWorker>().map_err(|error| WorkerError(format!("cannot create channel: {error}")))?;
    send(
        &to_supervisor,
        FromWorker::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            to_worker,
        },
    )?;
    serve(to_supervisor, &from_supervisor, Place::Process)
}

/// Runs a worker on the calling thread, inside the supervisor's process (the `thread` and `serial` executors):
/// the same loop and task code as a worker process, without isolation.
pub fn run_in_thread(to: impl Uplink, from: &std::sync::mpsc::Receiver<ToWorker>) -> Result<(), WorkerError> {
    install_panic_capture();
    serve(to, from, Place::Thread)
}

/// The worker loop after the handshake: `Init`, then batches until `Shutdown` or a closed channel.
fn serve(to: impl Uplink, from: &impl Downlink, place: Place) -> Result<(), WorkerError> {
    fn received(what: &'static str) -> impl Fn(String) -> WorkerError {
        move |error| WorkerError(format!("cannot receive {what}: {error}"))
    }
    let mut worker = match from.recv().map_err(received("Init"))? {
        Some(ToWorker::Init {
            task,
            args_json,
            input,
            limits,
            progress,
        }) => match Worker::new(&task, &args_json, input, &limits, progress.as_deref(), place) {
            Ok(worker) => worker,
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
        last_send: Instant::now(),
        open: true,
    }));
    let _flusher = start_flusher(Arc::clone(&outbox));
    loop {
        match from.recv().map_err(received("from the supervisor"))? {
            Some(ToWorker::Batch(batch)) => worker.run_batch(&batch, &outbox)?,
            Some(ToWorker::Shutdown) | None => return Ok(()),
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

/// Asks the kernel to SIGKILL this worker when the supervisor dies, then checks that the supervisor is still
/// the parent (it may have died before the request was made).
fn die_with_parent(expected: Option<i32>) -> Result<(), WorkerError> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(WorkerError(format!(
                "prctl(PR_SET_PDEATHSIG): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    if let Some(expected) = expected {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if expected != parent {
            return Err(WorkerError(format!(
                "supervisor (pid {expected}) is gone before the worker started"
            )));
        }
    }
    Ok(())
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
            let Ok(mut outbox) = flushed.lock() else { return };
            if !outbox.open || (outbox.due() && outbox.flush().is_err()) {
                return;
            }
        }
    });
    FlusherGuard(outbox)
}

/// Ctrl-C in a terminal signals the whole foreground process group; the supervisor decides when its workers
/// stop (it finishes or kills them), so a worker ignores SIGINT.
fn ignore_interrupts() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
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
pub fn run_one(task_name: &str, args_json: &str, plan: InputPlan, batch: &Batch) -> Result<Outcome, String> {
    let mut worker = Worker::new(
        task_name,
        args_json,
        plan,
        &WorkerLimits::default(),
        None,
        Place::Process,
    )?;
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
}

impl Worker {
    fn new(
        task_name: &str,
        args_json: &str,
        plan: InputPlan,
        limits: &WorkerLimits,
        progress: Option<&Path>,
        place: Place,
    ) -> Result<Worker, String> {
        if place == Place::Process {
            crate::limits::apply(limits).map_err(|error| format!("cannot apply resource limits: {error}"))?;
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
        let info = lookup(task_name).ok_or_else(|| format!("unknown task `{task_name}`"))?;
        let args: serde_json::Value =
            serde_json::from_str(args_json).map_err(|error| format!("task args are not JSON: {error}"))?;
        let task = (info.build)(&args)?;
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
        })
    }

    fn run_batch(&mut self, batch: &Batch, outbox: &Mutex<Outbox>) -> Result<(), WorkerError> {
        lock(outbox)?.start(batch);
        for k in 0..batch.len() {
            let outcome = self.run_item(batch, k);
            lock(outbox)?.push(outcome)?;
        }
        lock(outbox)?.flush()
    }

    fn run_item(&mut self, batch: &Batch, k: u64) -> Outcome {
        let index = batch.first + k;
        if let Some(seconds) = self.cpu_seconds_per_item {
            // Failing to arm the limit leaves the item without one; the wall-clock timeout still applies.
            let _ = crate::limits::arm_cpu_limit(seconds);
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
                        call_task(&mut *self.task, Item { index, input })
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
            result,
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
                match chunk.offset.checked_add(chunk.len) {
                    Some(end) if end <= size => Ok(Prepared::Chunk(chunk.offset as usize, chunk.len as usize)),
                    _ => Err(format!(
                        "chunk {}+{} is outside the mapped input ({size} bytes): was the file truncated?",
                        chunk.offset, chunk.len
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
        call_task(&mut *self.task, item)
    }
}

enum Prepared {
    Range(u64, u64),
    Chunk(usize, usize),
    File(MappedFile),
    /// The `k`-th body of a batch of fetched bodies.
    Fetched(usize),
}

/// Runs the task on one item, turning a panic into the item's failure.
fn call_task(task: &mut dyn Task, item: Item<'_>) -> Result<shared::item::Value, TaskError> {
    IN_TASK.with(|in_task| in_task.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| task.run(item)));
    IN_TASK.with(|in_task| in_task.set(false));
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(TaskError {
            kind: TaskErrorKind::Error,
            message,
        }),
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
            run_in_thread(Collect(Arc::clone(&messages)), &queue).expect("worker ran");
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
