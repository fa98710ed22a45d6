//! Starting worker processes and bridging their channels into the dispatcher's event stream.
//!
//! Every worker is started by one long-lived launcher thread (the worker's `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked it exits, so short-lived threads must never spawn). The launcher execs the current
//! binary in worker mode with the name of a fresh `IpcOneShotServer`, opens a pidfd for it, and starts three
//! threads that live as long as the worker:
//!
//! - the **reader** accepts the worker's connection, starts the writer, then turns every message into an
//!   [`Event`];
//! - the **waiter** blocks in `wait4` on this pid only, so the worker is reaped the moment it dies, and reports
//!   its status, resource usage and stderr tail. If the worker died before connecting, it unblocks the reader's
//!   `accept()` (which has no timeout) by connecting to the server itself;
//! - the **stderr drain** keeps the last few KiB of the worker's stderr, so a chatty worker never blocks.
//!
//! The pool owns no job state: the dispatcher decides what each worker does; this module only moves messages.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread;
use std::time::Duration;

use ipc_channel::IpcError;
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};
use serde::Serialize;
use shared::protocol::{FromWorker, PROTOCOL_VERSION, ToWorker};
use tokio::sync::mpsc;

use crate::forkserver::ForkServer;
use crate::linux::{ExitInfo, Pidfd, wait4};

/// How worker processes are created.
#[derive(Debug, Clone)]
pub enum Starter {
    /// Exec this binary in worker mode.
    Spawn,
    /// Exec the user's own worker binary (`[task] worker_bin`, built on `child::serve`) in worker mode.
    SpawnBin(std::path::PathBuf),
    /// Ask the fork server.
    Fork(Arc<ForkServer>),
    /// Run the worker loop on a thread of this process (the `thread` and `serial` executors): same task code,
    /// same batching, no isolation.
    Thread,
}

impl Starter {
    /// Reaps the fork server, if there is one, once no more workers will be started.
    pub fn shut_down(&self) {
        if let Starter::Fork(server) = self {
            server.shut_down();
        }
    }
}

/// A worker process that exists, with the means to drain its stderr and to learn its exit.
struct Started {
    pid: u32,
    /// A handle on exactly this process, opened before anything could reap it.
    pidfd: Pidfd,
    stderr: File,
    wait: Box<dyn FnOnce() -> ExitInfo + Send>,
}

/// Reported when the exit status cannot be read (only possible if something else reaped our child): a kill, so
/// that the items it held are not lost.
const UNKNOWN_EXIT: ExitInfo = ExitInfo {
    status: crate::linux::ExitStatus::Signal(libc::SIGKILL),
    cpu: Duration::ZERO,
    max_rss: 0,
};

/// First argument that makes the `supervisor` binary run as a worker.
pub const WORKER_ARG: &str = child::worker::WORKER_ARG;

/// Bytes of a worker's stderr kept for failure reports.
const STDERR_TAIL_BYTES: usize = 8 << 10;

/// Identifies one worker process for the whole run (a replacement gets a new id).
pub type WorkerId = u64;

/// What the pool tells the dispatcher.
#[derive(Debug)]
pub enum Event {
    /// The process exists; `pidfd` is how the dispatcher signals it (`None` for a worker thread, which cannot be
    /// killed).
    Spawned {
        id: WorkerId,
        pid: u32,
        pidfd: Option<Pidfd>,
    },
    /// The process could not be started at all.
    SpawnFailed { id: WorkerId, error: String },
    /// The worker said hello with a matching protocol version; `to_worker` feeds its writer thread.
    Connected { id: WorkerId, to_worker: WorkerSender },
    /// A message from a connected worker.
    Message { id: WorkerId, message: FromWorker },
    /// The channel ended: `error` is `None` for a plain disconnect (the worker exited or closed it) and says
    /// what was wrong otherwise (undecodable message, wrong protocol version, bad handshake).
    ChannelClosed { id: WorkerId, error: Option<String> },
    /// The process was reaped.
    Exited {
        id: WorkerId,
        info: ExitInfo,
        stderr_tail: String,
    },
}

/// Sends messages to one worker through its writer thread (ipc-channel's `send` may block, so it never runs on
/// the dispatcher). Dropping it closes the worker's channel, which makes a healthy worker exit.
#[derive(Debug, Clone)]
pub struct WorkerSender(std_mpsc::Sender<ToWorker>);

impl WorkerSender {
    /// Queues `message`; returns false when the writer has stopped (the worker is gone).
    pub fn send(&self, message: ToWorker) -> bool {
        self.0.send(message).is_ok()
    }
}

/// Counts messages and encoded bytes crossing the channels, in both directions.
#[derive(Debug, Default)]
pub struct IpcCounter {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

impl IpcCounter {
    fn count<T: Serialize>(&self, message: &T) {
        let size = postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default()).unwrap_or(0) as u64;
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }
}

/// Handle on the launcher thread. Dropping it stops the thread once pending launches are done.
#[derive(Debug)]
pub struct Launcher {
    requests: std_mpsc::Sender<WorkerId>,
}

impl Launcher {
    /// Starts the launcher thread; all events of all workers go to `events`.
    pub fn start(events: mpsc::Sender<Event>, counter: Arc<IpcCounter>, starter: Starter) -> std::io::Result<Launcher> {
        let exe = std::env::current_exe()?;
        let (requests, receiver) = std_mpsc::channel::<WorkerId>();
        thread::Builder::new().name("launcher".into()).spawn(move || {
            for id in receiver {
                let event = match launch(&exe, &starter, id, &events, &counter) {
                    Ok(event) | Err(event) => event,
                };
                if events.blocking_send(event).is_err() {
                    return;
                }
            }
        })?;
        Ok(Launcher { requests })
    }

    /// Asks for a new worker; its events arrive on the event channel, starting with `Spawned` or `SpawnFailed`.
    pub fn launch(&self, id: WorkerId) {
        // The launcher thread only stops when this handle is dropped, so the send cannot fail while we hold it.
        let _ = self.requests.send(id);
    }
}

/// Starts one worker process connecting to the bootstrap server `name`.
fn start_process(exe: &std::path::Path, starter: &Starter, name: &str) -> std::io::Result<Started> {
    match starter {
        Starter::Spawn | Starter::SpawnBin(_) => {
            let exe = match starter {
                Starter::SpawnBin(bin) => bin.as_path(),
                _ => exe,
            };
            let mut child = Command::new(exe)
                .arg(WORKER_ARG)
                .arg(name)
                .env(child::worker::PARENT_PID_ENV, std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|error| {
                    std::io::Error::new(error.kind(), format!("cannot start {}: {error}", exe.display()))
                })?;
            let pid = child.id();
            // Nothing reaps the child before its waiter starts (after this returns), so the pid still names it.
            let pidfd = match Pidfd::open(pid as i32) {
                Ok(pidfd) => pidfd,
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error);
                }
            };
            let stderr = match child.stderr.take() {
                Some(stderr) => File::from(OwnedFd::from(stderr)),
                None => File::open("/dev/null")?,
            };
            // Only the waiter reaps this pid; never waitpid(-1), which would steal other children's statuses.
            Ok(Started {
                pid,
                pidfd,
                stderr,
                wait: Box::new(move || wait4(pid as i32).unwrap_or(UNKNOWN_EXIT)),
            })
        }
        Starter::Thread => Err(std::io::Error::other("worker threads are not processes")),
        Starter::Fork(server) => {
            // The fork server opened the pidfd in the worker's parent, where it cannot race with reaping.
            let (pid, stderr, pidfd) = server.fork_worker(name)?;
            let server = Arc::clone(server);
            Ok(Started {
                pid,
                pidfd,
                stderr: File::from(stderr),
                wait: Box::new(move || server.wait(pid)),
            })
        }
    }
}

fn launch(
    exe: &std::path::Path,
    starter: &Starter,
    id: WorkerId,
    events: &mpsc::Sender<Event>,
    counter: &Arc<IpcCounter>,
) -> Result<Event, Event> {
    let failed = |what: &str, error: std::io::Error| Event::SpawnFailed {
        id,
        error: format!("{what}: {error}"),
    };
    if let Starter::Thread = starter {
        return launch_thread(id, events).map_err(|e| failed("cannot start worker thread", e));
    }
    let (server, name) = IpcOneShotServer::<FromWorker>::new().map_err(|e| failed("cannot create channel", e))?;
    let Started {
        pid,
        pidfd,
        mut stderr,
        wait,
    } = start_process(exe, starter, &name).map_err(|e| failed("cannot start worker", e))?;

    let tail = Arc::new(Mutex::new(Tail::default()));
    let (eof_sender, eof) = std_mpsc::channel::<()>();
    {
        let tail = Arc::clone(&tail);
        spawn_thread("worker-stderr", move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buffer) {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buffer[..n]);
                }
            }
            let _ = eof_sender.send(());
        });
    }

    {
        let events = events.clone();
        let name = name.clone();
        spawn_thread("worker-waiter", move || {
            let info = wait();
            // The worker is dead: unblock accept() in case it never connected. Fails harmlessly otherwise.
            if let Ok(sender) = IpcSender::<FromWorker>::connect(name) {
                let _ = sender.send(FromWorker::NeverConnected);
            }
            // Give the drain a moment to read the last bytes (a grandchild may hold stderr open forever).
            let _ = eof.recv_timeout(Duration::from_millis(200));
            let stderr_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
            let _ = events.blocking_send(Event::Exited { id, info, stderr_tail });
        });
    }

    {
        let events = events.clone();
        let counter = Arc::clone(counter);
        spawn_thread("worker-reader", move || read_loop(id, server, &events, &counter));
    }
    Ok(Event::Spawned {
        id,
        pid,
        pidfd: Some(pidfd),
    })
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

/// Starts a worker thread: reports it spawned, and returns its `Connected` event.
fn launch_thread(id: WorkerId, events: &mpsc::Sender<Event>) -> std::io::Result<Event> {
    let (sender, queue) = std_mpsc::channel::<ToWorker>();
    let uplink = EventUplink {
        id,
        events: events.clone(),
    };
    let thread_events = events.clone();
    thread::Builder::new().name(format!("worker-{id}")).spawn(move || {
        let error = child::worker::run_in_thread(uplink, &queue)
            .err()
            .map(|error| error.to_string());
        let info = ExitInfo {
            status: crate::linux::ExitStatus::Code(0),
            cpu: crate::linux::thread_cpu_time(),
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
        to_worker: WorkerSender(sender),
    })
}

fn read_loop(
    id: WorkerId,
    server: IpcOneShotServer<FromWorker>,
    events: &mpsc::Sender<Event>,
    counter: &Arc<IpcCounter>,
) {
    let closed = |error: Option<String>| {
        let _ = events.blocking_send(Event::ChannelClosed { id, error });
    };
    let (receiver, first) = match server.accept() {
        Ok(accepted) => accepted,
        Err(error) => return closed(Some(format!("handshake failed: {error}"))),
    };
    match first {
        FromWorker::Hello { version, to_worker, .. } if version == PROTOCOL_VERSION => {
            let (sender, queue) = std_mpsc::channel::<ToWorker>();
            let counter = Arc::clone(counter);
            spawn_thread("worker-writer", move || {
                for message in queue {
                    counter.count(&message);
                    if to_worker.send(message).is_err() {
                        return;
                    }
                }
            });
            if events
                .blocking_send(Event::Connected {
                    id,
                    to_worker: WorkerSender(sender),
                })
                .is_err()
            {
                return;
            }
        }
        FromWorker::Hello { version, .. } => {
            return closed(Some(format!(
                "worker speaks protocol version {version}, the supervisor {PROTOCOL_VERSION}"
            )));
        }
        FromWorker::NeverConnected => return closed(None),
        other => {
            return closed(Some(format!(
                "expected Hello as first message, got {}",
                message_name(&other)
            )));
        }
    }
    loop {
        match receiver.recv() {
            Ok(message) => {
                counter.count(&message);
                if events.blocking_send(Event::Message { id, message }).is_err() {
                    return;
                }
            }
            Err(IpcError::Disconnected) => return closed(None),
            Err(error) => return closed(Some(format!("undecodable message: {error}"))),
        }
    }
}

/// A short name of a message kind, for protocol errors.
pub fn message_name(message: &FromWorker) -> &'static str {
    match message {
        FromWorker::Hello { .. } => "Hello",
        FromWorker::Ready => "Ready",
        FromWorker::InitFailed { .. } => "InitFailed",
        FromWorker::Results { .. } => "Results",
        FromWorker::NeverConnected => "NeverConnected",
    }
}

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) {
    // Failing to start a thread means the process is out of resources; the worker is then lost and reported as
    // such when its channel or exit is never seen — there is no better recovery here.
    let _ = thread::Builder::new().name(name.to_string()).spawn(body);
}

/// The last [`STDERR_TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > STDERR_TAIL_BYTES {
            let excess = self.bytes.len() - STDERR_TAIL_BYTES;
            self.bytes.drain(..excess);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::Tail;

    #[test]
    fn tail_keeps_the_end_of_a_bounded_buffer() {
        let mut tail = Tail::default();
        for i in 0..5000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        assert!(tail.bytes.len() <= super::STDERR_TAIL_BYTES);
        let text = tail.text();
        assert!(text.ends_with("line 4999\n"), "{text}");
        assert!(!text.contains("line 100\n"), "{text}");
    }
}
