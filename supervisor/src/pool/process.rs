//! Starting worker processes and bridging their channels into the dispatcher's event stream.
//! (The worker threads of the `thread` and `serial` executors are [`super::threads`]' business; the events
//! both send are [`super::event`]'s.)
//!
//! Every worker is started by one long-lived launcher thread (the worker's `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked it exits, so short-lived threads must never spawn). The launcher creates a pair of Unix
//! stream sockets, execs the current binary in worker mode with one end as its stdin, opens a pidfd for it, and
//! starts three threads that live as long as the worker:
//!
//! - the **reader** reads the worker's `Hello`, starts the writer, then passes every further frame to the
//!   dispatcher as an [`Event::Frame`], undecoded. Nothing a worker sends is trusted: a frame's declared size is
//!   checked against [`shared::frame::MAX_FROM_WORKER`] before anything is allocated for it, and the frames a
//!   worker has in the event queue are bounded ([`IN_FLIGHT_BYTES`](super::IN_FLIGHT_BYTES)): a flooding
//!   worker waits for the dispatcher;
//! - the **waiter** blocks in `wait4` on this pid only, so the worker is reaped the moment it dies, and reports
//!   its status, resource usage and stderr tail. It then shuts the socket down, so the reader sees the end
//!   (after what the worker sent) even if something the worker started still holds the worker's end open;
//! - the **stderr drain** keeps the last few KiB of the worker's stderr, so a chatty worker never blocks.
//!
//! A worker whose threads cannot all start (the process is out of threads) is killed and reported as a start
//! failure (`SpawnFailed`, or the end of its channel with the reason), never left for the dispatcher to wait on.
//! The launcher is the dispatcher's [`Launch`](crate::dispatch::Launch) for the `process` executor: it launches
//! and kills (through the worker's pidfd).
//!
//! The pool owns no job state: the dispatcher decides what each worker does; this module only moves messages.

use std::fs::File;
use std::io::Read;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread;
use std::time::Duration;

use shared::frame::{self, FrameError};
use shared::protocol::{FromWorker, PROTOCOL_VERSION, ToWorker};
use tokio::sync::mpsc;

use super::event::{Budget, Event, IpcCounter, LaunchRequests, WorkerId, WorkerSender, message_name};
use crate::forkserver::ForkServer;
use sys::process::{ExitInfo, Pid, Pidfd, reap_and_kill_group};

/// How worker processes are started.
#[derive(Debug, Clone)]
pub enum Starter {
    /// Exec this binary in worker mode.
    Spawn,
    /// Exec the user's own worker binary (`[task] worker_bin`, built on `child::serve`) in worker mode.
    SpawnBin(std::path::PathBuf),
    /// Ask the fork server.
    Fork(Arc<ForkServer>),
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
const UNKNOWN_EXIT: ExitInfo = ExitInfo::KILLED;

/// First argument that makes the `supervisor` binary run as a worker.
pub const WORKER_ARG: &str = child::worker::WORKER_ARG;

/// Bytes of a worker's stderr kept for failure reports.
const STDERR_TAIL_BYTES: usize = 8 << 10;

/// Handle on the launcher thread. Dropping it stops the thread once pending launches are done.
#[derive(Debug)]
pub struct ProcessLauncher {
    requests: LaunchRequests,
}

impl ProcessLauncher {
    /// Starts the launcher thread; all events of all workers go to `events`.
    pub fn start(
        events: mpsc::Sender<Event>,
        counter: Arc<IpcCounter>,
        starter: Starter,
    ) -> std::io::Result<ProcessLauncher> {
        let exe = std::env::current_exe()?;
        let requests = LaunchRequests::serve("launcher", events, move |id, events| {
            match launch(&exe, &starter, id, events, &counter, spawn_thread) {
                Ok(event) | Err(event) => event,
            }
        })?;
        Ok(ProcessLauncher { requests })
    }
}

impl crate::dispatch::Launch for ProcessLauncher {
    fn launch(&mut self, id: WorkerId) {
        self.requests.launch(id);
    }

    fn kill(&mut self, _id: WorkerId, pidfd: Option<&Pidfd>) {
        // SIGKILL ends a stopped process too. Every process this launcher started has a pidfd.
        if let Some(pidfd) = pidfd {
            pidfd.kill();
        }
    }
}

/// Starts one worker process with `channel` (its end of the socket pair) as its stdin.
fn start_process(exe: &std::path::Path, starter: &Starter, channel: OwnedFd) -> std::io::Result<Started> {
    match starter {
        Starter::Spawn | Starter::SpawnBin(_) => {
            let exe = match starter {
                Starter::SpawnBin(bin) => bin.as_path(),
                _ => exe,
            };
            // Registered as it starts, so that a sweep for orphans never takes it for one.
            let mut child = crate::orphans::spawn_registered(|| {
                let child = Command::new(exe)
                    .arg(WORKER_ARG)
                    .env(child::worker::PARENT_PID_ENV, std::process::id().to_string())
                    .stdin(Stdio::from(channel))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|error| {
                        std::io::Error::new(error.kind(), format!("cannot start {}: {error}", exe.display()))
                    })?;
                let pid = child.id() as i32;
                Ok((child, pid))
            })?;
            let pid = child.id();
            // Nothing reaps the child before its waiter starts (after this returns), so the pid still names it.
            let pidfd = match Pidfd::open(Pid::from_raw(pid as i32)) {
                Ok(pidfd) => pidfd,
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    crate::orphans::forget(pid as i32);
                    return Err(error);
                }
            };
            let stderr = match child.stderr.take() {
                Some(stderr) => File::from(OwnedFd::from(stderr)),
                None => File::open("/dev/null")?,
            };
            // Only the waiter reaps this pid; never waitpid(-1), which would steal other children's statuses. Before
            // reaping, it kills what is left of the worker's process group (its task's children).
            Ok(Started {
                pid,
                pidfd,
                stderr,
                wait: Box::new(move || {
                    let info = reap_and_kill_group(Pid::from_raw(pid as i32)).unwrap_or(UNKNOWN_EXIT);
                    crate::orphans::forget(pid as i32);
                    info
                }),
            })
        }
        Starter::Fork(server) => {
            // The fork server opened the pidfd in the worker's parent, where it cannot race with reaping.
            let (pid, stderr, pidfd) = server.fork_worker(channel.as_fd())?;
            // The waiter's own handle: it learns of the exit through it, and then waits for the report with a
            // deadline (see `ForkServer::wait`).
            let exited = match pidfd.try_clone() {
                Ok(exited) => exited,
                Err(error) => {
                    // Not started as far as the dispatcher knows: it must not outlive the failure.
                    pidfd.kill();
                    return Err(error);
                }
            };
            let server = Arc::clone(server);
            Ok(Started {
                pid,
                pidfd,
                stderr: File::from(stderr),
                wait: Box::new(move || server.wait(pid, &exited)),
            })
        }
    }
}

/// Starts a named thread. Passed to [`launch`] so that a test can make it fail.
type SpawnThread = fn(&str, Box<dyn FnOnce() + Send>) -> std::io::Result<()>;

/// A reaping function, held so that the launcher can still reap the worker itself when its waiter thread
/// cannot start.
type Reap = Arc<Mutex<Option<Box<dyn FnOnce() -> ExitInfo + Send>>>>;

fn launch(
    exe: &std::path::Path,
    starter: &Starter,
    id: WorkerId,
    events: &mpsc::Sender<Event>,
    counter: &Arc<IpcCounter>,
    spawn: SpawnThread,
) -> Result<Event, Event> {
    let failed = |what: &str, error: std::io::Error| Event::SpawnFailed {
        id,
        error: format!("{what}: {error}"),
    };
    let (socket, theirs) = UnixStream::pair().map_err(|e| failed("cannot create channel", e))?;
    let shutter = socket.try_clone().map_err(|e| failed("cannot create channel", e))?;
    let Started {
        pid,
        pidfd,
        mut stderr,
        wait,
    } = start_process(exe, starter, OwnedFd::from(theirs)).map_err(|e| failed("cannot start worker", e))?;
    let reap: Reap = Arc::new(Mutex::new(Some(wait)));
    // A worker whose threads cannot all start would leave the dispatcher waiting for events that never come:
    // it is killed, reaped here when its waiter is not running, and reported as a start failure.
    let abandon = |thread: &str, error: std::io::Error, reap_here: bool| {
        pidfd.kill();
        if reap_here && let Some(wait) = reap.lock().ok().and_then(|mut wait| wait.take()) {
            wait();
        }
        failed(&format!("cannot start the worker's {thread} thread"), error)
    };

    let tail = Arc::new(Mutex::new(Tail::default()));
    let (eof_sender, eof) = std_mpsc::channel::<()>();
    {
        let tail = Arc::clone(&tail);
        spawn(
            "worker-stderr",
            Box::new(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut buffer) {
                    if let Ok(mut tail) = tail.lock() {
                        tail.push(&buffer[..n]);
                    }
                }
                let _ = eof_sender.send(());
            }),
        )
        .map_err(|error| abandon("stderr", error, true))?;
    }

    {
        let events = events.clone();
        let reap = Arc::clone(&reap);
        spawn(
            "worker-waiter",
            Box::new(move || {
                let Some(wait) = reap.lock().ok().and_then(|mut wait| wait.take()) else {
                    return;
                };
                let info = wait();
                // The worker is dead, but a process it started may still hold its end of the socket. The reader
                // still reads what the worker sent before it died, then sees the end.
                let _ = shutter.shutdown(Shutdown::Both);
                // Give the drain a moment to read the last bytes (a grandchild may hold stderr open forever).
                let _ = eof.recv_timeout(Duration::from_millis(200));
                let stderr_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
                let _ = events.blocking_send(Event::Exited { id, info, stderr_tail });
                // Children of the task that left the worker's group and were orphaned are now ours: sweep soon,
                // on the sweeper thread, so that nothing waits for it.
                crate::orphans::request_sweep();
            }),
        )
        .map_err(|error| abandon("waiter", error, true))?;
    }

    {
        let events = events.clone();
        let counter = Arc::clone(counter);
        // The waiter reaps the killed worker; its `Exited` for a worker the dispatcher forgot is ignored.
        spawn(
            "worker-reader",
            Box::new(move || read_loop(id, &socket, &events, &counter, spawn)),
        )
        .map_err(|error| abandon("reader", error, false))?;
    }
    Ok(Event::Spawned {
        id,
        pid,
        pidfd: Some(pidfd),
    })
}

fn read_loop(
    id: WorkerId,
    socket: &UnixStream,
    events: &mpsc::Sender<Event>,
    counter: &Arc<IpcCounter>,
    spawn: SpawnThread,
) {
    let closed = |error: Option<String>| {
        let _ = events.blocking_send(Event::ChannelClosed { id, error });
    };
    let mut buffer = Vec::new();
    match frame::read_into(socket, frame::MAX_FROM_WORKER, &mut buffer) {
        Ok(()) => counter.count_bytes(buffer.len()),
        // Died before or while saying hello: a start failure, which its exit status explains.
        Err(FrameError::Closed | FrameError::Io(_)) => return closed(None),
        Err(error) => return closed(Some(format!("broke the handshake: {error}"))),
    }
    match postcard::from_bytes::<FromWorker>(&buffer) {
        Ok(FromWorker::Hello { version, .. }) if version == PROTOCOL_VERSION => {
            let Ok(writer) = socket.try_clone() else {
                return closed(Some("cannot clone its channel".into()));
            };
            let (sender, queue) = std_mpsc::channel::<ToWorker>();
            let counter = Arc::clone(counter);
            let started = spawn(
                "worker-writer",
                Box::new(move || {
                    for message in queue {
                        counter.count(&message);
                        if frame::write(&writer, &message).is_err() {
                            return;
                        }
                    }
                    // The dispatcher dropped the worker's sender: end of stream, and a healthy worker exits.
                    let _ = writer.shutdown(Shutdown::Write);
                }),
            );
            // Without a writer the worker can never be told anything: a start failure, reported as the end of
            // its channel with the reason (the dispatcher kills it and counts it as a failed start).
            if let Err(error) = started {
                return closed(Some(format!("cannot start its writer thread: {error}")));
            }
            if events
                .blocking_send(Event::Connected {
                    id,
                    to_worker: WorkerSender::new(sender),
                })
                .is_err()
            {
                return;
            }
        }
        Ok(FromWorker::Hello { version, .. }) => {
            return closed(Some(format!(
                "speaks protocol version {version}, the supervisor {PROTOCOL_VERSION}"
            )));
        }
        Ok(other) => {
            return closed(Some(format!(
                "sent {} as its first message instead of Hello",
                message_name(&other)
            )));
        }
        Err(error) => return closed(Some(format!("sent an undecodable first message: {error}"))),
    }
    let budget = Arc::new(Budget::default());
    loop {
        budget.wait_for_room();
        let mut bytes = Vec::new();
        match frame::read_into(socket, frame::MAX_FROM_WORKER, &mut bytes) {
            Ok(()) => {
                counter.count_bytes(bytes.len());
                let frame = budget.frame(bytes);
                if events.blocking_send(Event::Frame { id, frame }).is_err() {
                    return;
                }
            }
            Err(FrameError::Closed) => return closed(None),
            // A worker that dies mid-frame (a crash while the flusher writes) is a crash, not a violation: the
            // waiter's report says how it died.
            Err(FrameError::Io(_)) => return closed(None),
            Err(error) => return closed(Some(error.to_string())),
        }
    }
}

fn spawn_thread(name: &str, body: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
    thread::Builder::new().name(name.to_string()).spawn(body).map(drop)
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

    /// Spawns every thread but the one named `NAME`.
    fn all_but<const N: usize>(name: &str, body: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
        let refused = ["worker-stderr", "worker-waiter", "worker-reader"][N];
        if name == refused {
            return Err(std::io::Error::other("out of threads"));
        }
        super::spawn_thread(name, body)
    }

    /// A worker whose stderr drain, waiter or reader thread cannot start is a start failure that names the
    /// thread, never a worker the dispatcher waits for forever.
    #[test]
    fn a_thread_that_fails_to_start_is_a_start_failure_of_its_worker() {
        use std::sync::Arc;
        let spawns: [(super::SpawnThread, &str); 3] = [
            (all_but::<0>, "stderr"),
            (all_but::<1>, "waiter"),
            (all_but::<2>, "reader"),
        ];
        for (spawn, thread) in spawns {
            let (events, mut received) = tokio::sync::mpsc::channel(16);
            let counter = Arc::new(crate::pool::IpcCounter::default());
            let starter = super::Starter::Spawn;
            let exe = std::path::Path::new("/bin/true");
            let result = super::launch(exe, &starter, 7, &events, &counter, spawn);
            match result {
                Err(crate::pool::Event::SpawnFailed { id: 7, error }) => {
                    assert!(error.contains(&format!("worker's {thread} thread")), "{error}");
                }
                other => panic!("without its {thread} thread: {other:?}"),
            }
            drop(events);
            // Whatever the worker's threads still report is about a worker reaped already.
            while let Some(event) = received.blocking_recv() {
                assert!(
                    matches!(
                        event,
                        crate::pool::Event::Exited { id: 7, .. } | crate::pool::Event::ChannelClosed { id: 7, .. }
                    ),
                    "{event:?}"
                );
            }
        }
    }

    /// The waiter shuts the socket down once the worker is dead; what the worker sent before must still be
    /// read, and then the end.
    #[test]
    fn a_shut_down_socket_still_yields_what_was_sent_before() {
        use std::io::Write;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        (&theirs).write_all(b"last words").expect("write");
        // `theirs` stays open, as if a grandchild held it.
        ours.shutdown(std::net::Shutdown::Both).expect("shutdown");
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &ours, &mut got).expect("read");
        assert_eq!(got, b"last words");
        drop(theirs);
    }

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
