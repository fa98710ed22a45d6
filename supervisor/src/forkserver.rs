//! The `forkserver` start method: a single-threaded helper process that forks workers on request.
//!
//! Replacing a crashed worker then costs a `fork` of a small process instead of an `exec` of the supervisor
//! binary. The fork server is forked from the supervisor at start-up, *before* the async runtime or any other
//! thread exists (a fork of a multi-threaded process can deadlock the child), and stays single-threaded.
//!
//! It talks to the supervisor over a `SOCK_SEQPACKET` pair with postcard messages. Each request carries the
//! worker's end of its channel (`SCM_RIGHTS`); the fork server creates a stderr pipe, forks, and the child
//! becomes a worker with the channel as its stdin, like an exec'ed one; the reply carries the pid and, with `SCM_RIGHTS`, the read end of the worker's stderr.
//! Workers are the fork server's children, so it reaps them (it polls a pidfd per worker) and reports each
//! exit with its resource usage. The fork server dies with the supervisor (`PR_SET_PDEATHSIG`), and its
//! workers with it.
//!
//! The supervisor never waits on its fork server without a deadline ([`DEADLINE`]): taking a request, the reply
//! to it, the report of a worker's exit once the worker is gone, its own exit at shut-down. A fork server that
//! misses one (stopped with SIGSTOP, say, or wedged) is treated as failed: it is SIGKILLed, which takes its
//! workers with it (their parent-death signal), every later start fails, and every worker still waited for is
//! reported killed. So a stop signal still ends the run, at most [`DEADLINE`] after the grace period.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sys::process::{self, ExitInfo, Forked, Pid, Pidfd, ProcessGroup};
use sys::socket;

/// Longest the supervisor waits on the fork server for any one thing. A healthy fork server answers in
/// microseconds (it forks a small, single-threaded process); seconds leave room for a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Supervisor → fork server.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a worker; its end of the channel is attached. (Never empty on the wire: an empty message means
    /// end of stream.)
    Fork,
}

/// Fork server → supervisor.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// A worker was forked; the read end of its stderr and a pidfd for it are attached, in that order (the
    /// pidfd is opened by the worker's parent before it can be reaped, so it cannot name a recycled pid).
    Forked {
        pid: u32,
    },
    ForkFailed {
        error: String,
    },
    /// A worker exited and was reaped.
    Exited {
        pid: u32,
        info: ExitInfo,
    },
}

const MAX_MESSAGE: usize = 4096;

/// The supervisor's handle on its fork server.
#[derive(Debug)]
pub struct ForkServer {
    control: OwnedFd,
    pid: Pid,
    /// A handle on the fork server itself, to wait for its exit with a deadline and to kill it.
    pidfd: Pidfd,
    replies: Mutex<std_mpsc::Receiver<Received>>,
    exits: Arc<Mutex<ExitBoard>>,
    /// It missed a deadline and was killed: no more starts.
    failed: AtomicBool,
    reaped: Mutex<bool>,
}

/// Exit reports, matched with the threads waiting for them (either may come first).
#[derive(Debug, Default)]
struct ExitBoard {
    waiting: HashMap<u32, std_mpsc::Sender<ExitInfo>>,
    early: HashMap<u32, ExitInfo>,
    /// The fork server is gone: every worker it had is reported killed.
    gone: bool,
}

/// Reported for a worker whose fork server died before reporting its exit.
const LOST: ExitInfo = ExitInfo::KILLED;

impl ForkServer {
    /// Forks the fork server. The process must be single-threaded (checked): call this before starting the
    /// async runtime or any thread.
    pub fn start() -> io::Result<ForkServer> {
        let supervisor = Pid::this();
        let (ours, theirs) = socket::seqpacket_pair()?;
        match process::fork()? {
            Forked::Child => {
                drop(ours);
                let code = match serve(theirs, supervisor) {
                    Ok(()) => 0,
                    Err(error) => {
                        eprintln!("forkserver: {error}");
                        1
                    }
                };
                // Without the supervisor's exit handlers, which belong to the parent.
                process::exit_now(code)
            }
            Forked::Parent { child } => {
                drop(theirs);
                crate::orphans::register(child.as_raw());
                let started = ForkServer::connect(ours, child);
                if started.is_err() {
                    let _ = process::signal_child(child, process::Signal::SIGKILL);
                    let _ = process::wait4(child);
                    crate::orphans::forget(child.as_raw());
                }
                started
            }
        }
    }

    /// The supervisor's side of a fork server just forked as `pid`, on the socket `ours`.
    fn connect(ours: OwnedFd, pid: Pid) -> io::Result<ForkServer> {
        // Nothing reaps the fork server before `shut_down`, so the pid still names it.
        let pidfd = Pidfd::open(pid)?;
        let (sender, replies) = std_mpsc::channel();
        let exits = Arc::new(Mutex::new(ExitBoard::default()));
        let reader_socket = ours.try_clone()?;
        let reader_exits = Arc::clone(&exits);
        std::thread::Builder::new()
            .name("forkserver-reader".into())
            .spawn(move || read_replies(&reader_socket, &sender, &reader_exits))?;
        Ok(ForkServer {
            control: ours,
            pid,
            pidfd,
            replies: Mutex::new(replies),
            exits,
            failed: AtomicBool::new(false),
            reaped: Mutex::new(false),
        })
    }

    /// Treats the fork server as failed: kills it (its workers die with it, and its reader then wakes every
    /// waiter), so that no start or wait is ever made on it again. Returns the error to report.
    fn fail(&self, what: &str) -> io::Error {
        if !self.failed.swap(true, Ordering::Relaxed) {
            eprintln!("warning: the fork server (pid {}) {what}: killing it", self.pid);
        }
        self.pidfd.kill();
        io::Error::new(io::ErrorKind::TimedOut, format!("the fork server {what}"))
    }

    /// Asks for a worker with `channel` as its stdin; returns its pid, the read end of its stderr and a pidfd.
    /// Called from one thread at a time (the launcher), so replies come back in request order. Fails, instead of
    /// waiting, when the fork server does not take the request or answer it within [`DEADLINE`].
    pub fn fork_worker(&self, channel: BorrowedFd<'_>) -> io::Result<(u32, OwnedFd, Pidfd)> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other("the fork server failed earlier"));
        }
        let request = postcard::to_stdvec(&Request::Fork)
            .map_err(|error| io::Error::other(format!("cannot encode request: {error}")))?;
        let replies = self
            .replies
            .lock()
            .map_err(|_| io::Error::other("fork server reply queue poisoned"))?;
        match socket::send_message(self.control.as_fd(), &request, &[channel], Some(DEADLINE)) {
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                return Err(self.fail(&format!("took no request for {DEADLINE:?}")));
            }
            sent => sent?,
        }
        match replies.recv_timeout(DEADLINE) {
            Ok((Reply::Forked { pid }, fds)) => match <[OwnedFd; 2]>::try_from(fds) {
                Ok([stderr, pidfd]) => Ok((pid, stderr, Pidfd::from_owned(pidfd))),
                Err(_) => Err(io::Error::other(
                    "the fork server sent a worker without its stderr and pidfd",
                )),
            },
            Ok((Reply::ForkFailed { error }, _)) => Err(io::Error::other(format!("fork server: {error}"))),
            Ok(other) => Err(io::Error::other(format!(
                "fork server sent an unexpected reply: {other:?}"
            ))),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                Err(self.fail(&format!("did not answer a fork request within {DEADLINE:?}")))
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other("the fork server is gone")),
        }
    }

    /// Blocks until worker `pid` (`pidfd`: a handle on it) has exited and the fork server reported it reaped. How
    /// long the worker lives is not bounded here (stopping workers is the dispatcher's business); the report must
    /// follow its exit within [`DEADLINE`], or the fork server is failed and the worker reported killed.
    pub fn wait(&self, pid: u32, pidfd: &Pidfd) -> ExitInfo {
        let receiver = {
            let Ok(mut board) = self.exits.lock() else { return LOST };
            if let Some(info) = board.early.remove(&pid) {
                return info;
            }
            if board.gone {
                return LOST;
            }
            let (sender, receiver) = std_mpsc::channel();
            board.waiting.insert(pid, sender);
            receiver
        };
        // The pidfd turns readable when the worker exits (a zombie still unreaped counts), even though it is
        // not this process's child. Should polling fail, the report is still waited for, with the deadline.
        let _ = socket::poll_readable(&[pidfd.as_fd()], None);
        match receiver.recv_timeout(DEADLINE) {
            Ok(info) => info,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => LOST,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                self.fail(&format!("did not report worker {pid}'s exit within {DEADLINE:?}"));
                LOST
            }
        }
    }

    /// Tells the fork server to exit and reaps it (its CPU time then counts in the supervisor's). One that does
    /// not exit within [`DEADLINE`] is killed first.
    pub fn shut_down(&self) {
        let Ok(mut reaped) = self.reaped.lock() else { return };
        if !*reaped {
            // An empty message reads as end of stream to the fork server.
            let _ = socket::send_message(self.control.as_fd(), &[], &[], Some(DEADLINE));
            if !self.pidfd.wait_exited_for(DEADLINE).unwrap_or(false) {
                self.fail(&format!("did not exit within {DEADLINE:?} of being told to"));
            }
            let _ = process::wait4(self.pid);
            crate::orphans::forget(self.pid.as_raw());
            *reaped = true;
        }
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// What the supervisor's reader thread receives: a reply with the fds that came with it.
type Received = (Reply, Vec<OwnedFd>);

fn read_replies(channel: &OwnedFd, sender: &std_mpsc::Sender<Received>, exits: &Mutex<ExitBoard>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    while let Ok((len @ 1.., fds)) = socket::recv_message(channel.as_fd(), &mut buffer) {
        match postcard::from_bytes::<Reply>(&buffer[..len]) {
            Ok(Reply::Exited { pid, info }) => {
                let Ok(mut board) = exits.lock() else { break };
                match board.waiting.remove(&pid) {
                    Some(waiter) => {
                        let _ = waiter.send(info);
                    }
                    None => {
                        board.early.insert(pid, info);
                    }
                }
            }
            Ok(reply) => {
                if sender.send((reply, fds)).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // The fork server is gone (or spoke garbage): its workers died with it. Wake everyone waiting.
    if let Ok(mut board) = exits.lock() {
        board.gone = true;
        for (_, waiter) in board.waiting.drain() {
            let _ = waiter.send(LOST);
        }
    }
}

/// The fork server's loop (in the forked process, single-threaded).
fn serve(control: OwnedFd, supervisor: Pid) -> io::Result<()> {
    process::signal_on_parent_death(process::Signal::SIGKILL)?;
    // The supervisor decides when workers stop.
    process::ignore_interrupts()?;
    if process::parent() != supervisor {
        return Ok(());
    }
    let mut workers: Vec<(u32, Pidfd)> = Vec::new();
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let mut fds: Vec<BorrowedFd<'_>> = vec![control.as_fd()];
        fds.extend(workers.iter().map(|(_, pidfd)| pidfd.as_fd()));
        let ready = socket::poll_readable(&fds, None)?;
        drop(fds);
        // Exits first, so that a worker's exit report never trails behind a request that follows it.
        let mut index = ready.len();
        while index > 1 {
            index -= 1;
            if ready[index] {
                let (pid, _) = workers.swap_remove(index - 1);
                let pid = Pid::from_raw(pid as i32);
                // The worker is a zombie now (its pidfd is readable): its group id is still its own.
                ProcessGroup::led_by(pid).kill();
                let info = process::wait4(pid).unwrap_or(LOST);
                send(
                    &control,
                    &Reply::Exited {
                        pid: pid.as_raw() as u32,
                        info,
                    },
                    &[],
                )?;
            }
        }
        if ready[0] {
            let (len, mut fds) = socket::recv_message(control.as_fd(), &mut buffer)?;
            if len == 0 {
                return Ok(());
            }
            let Request::Fork = postcard::from_bytes(&buffer[..len])
                .map_err(|error| io::Error::other(format!("bad request: {error}")))?;
            let forked = match (fds.pop(), fds.is_empty()) {
                (Some(channel), true) => fork_worker(channel),
                _ => Err(io::Error::other(
                    "a fork request must carry exactly the worker's channel",
                )),
            };
            match forked {
                Ok((pid, pidfd, stderr)) => {
                    let sent = send(&control, &Reply::Forked { pid }, &[stderr.as_fd(), pidfd.as_fd()]);
                    workers.push((pid, pidfd));
                    sent?;
                }
                Err(error) => send(
                    &control,
                    &Reply::ForkFailed {
                        error: error.to_string(),
                    },
                    &[],
                )?,
            }
        }
    }
}

fn send(control: &OwnedFd, reply: &Reply, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes = postcard::to_stdvec(reply).map_err(|error| io::Error::other(format!("cannot encode: {error}")))?;
    // Without a deadline: the fork server may wait for the supervisor, never the other way round.
    socket::send_message(control.as_fd(), &bytes, fds, None)
}

/// Forks one worker with `channel` as its stdin; returns its pid, a pidfd to poll for its exit, and the read
/// end of its stderr.
fn fork_worker(channel: OwnedFd) -> io::Result<(u32, Pidfd, OwnedFd)> {
    let (stderr_read, stderr_write) = socket::pipe()?;
    let server = Pid::this();
    match process::fork()? {
        Forked::Child => {
            let code = match process::redirect_and_close_others(channel.as_fd(), stderr_write.as_fd()) {
                Ok(()) => match child::worker::run(Some(server.as_raw()), Box::new(builtins::build)) {
                    Ok(()) => 0,
                    Err(error) => {
                        eprintln!("worker: {error}");
                        shared::exit::INTERNAL
                    }
                },
                Err(_) => shared::exit::INTERNAL,
            };
            // Without the fork server's exit handlers.
            process::exit_now(code)
        }
        Forked::Parent { child } => {
            drop(stderr_write);
            drop(channel);
            let pidfd = Pidfd::open(child)?;
            Ok((child.as_raw() as u32, pidfd, stderr_read))
        }
    }
}
