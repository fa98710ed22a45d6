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

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::linux::{self, ExitInfo, ExitStatus, Forked, Pidfd};

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
    pid: i32,
    replies: Mutex<std_mpsc::Receiver<Received>>,
    exits: Arc<Mutex<ExitBoard>>,
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
const LOST: ExitInfo = ExitInfo {
    status: ExitStatus::Signal(libc::SIGKILL),
    cpu: std::time::Duration::ZERO,
    max_rss: 0,
};

impl ForkServer {
    /// Forks the fork server.
    ///
    /// # Safety
    /// The process must be single-threaded: call this before starting the async runtime or any thread.
    pub unsafe fn start() -> io::Result<ForkServer> {
        let supervisor = std::process::id() as i32;
        let (ours, theirs) = linux::seqpacket_pair()?;
        // SAFETY: the caller guarantees that this process is single-threaded.
        match unsafe { linux::fork() }? {
            Forked::Child => {
                drop(ours);
                let code = match serve(theirs, supervisor) {
                    Ok(()) => 0,
                    Err(error) => {
                        eprintln!("forkserver: {error}");
                        1
                    }
                };
                // SAFETY: _exit ends this process without running the supervisor's exit handlers, which belong
                // to the parent.
                unsafe { libc::_exit(code) }
            }
            Forked::Parent { child } => {
                drop(theirs);
                crate::orphans::register(child);
                let (sender, replies) = std_mpsc::channel();
                let exits = Arc::new(Mutex::new(ExitBoard::default()));
                let reader_socket = ours.try_clone()?;
                let reader_exits = Arc::clone(&exits);
                std::thread::Builder::new()
                    .name("forkserver-reader".into())
                    .spawn(move || read_replies(&reader_socket, &sender, &reader_exits))?;
                Ok(ForkServer {
                    control: ours,
                    pid: child,
                    replies: Mutex::new(replies),
                    exits,
                    reaped: Mutex::new(false),
                })
            }
        }
    }

    /// Asks for a worker with `channel` as its stdin; returns its pid, the read end of its stderr and a pidfd.
    /// Called from one thread at a time (the launcher), so replies come back in request order.
    pub fn fork_worker(&self, channel: BorrowedFd<'_>) -> io::Result<(u32, OwnedFd, Pidfd)> {
        let request = postcard::to_stdvec(&Request::Fork)
            .map_err(|error| io::Error::other(format!("cannot encode request: {error}")))?;
        linux::send_message(self.control.as_fd(), &request, &[channel])?;
        let replies = self
            .replies
            .lock()
            .map_err(|_| io::Error::other("fork server reply queue poisoned"))?;
        match replies.recv() {
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
            Err(_) => Err(io::Error::other("the fork server is gone")),
        }
    }

    /// Blocks until worker `pid` has exited and been reaped by the fork server.
    pub fn wait(&self, pid: u32) -> ExitInfo {
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
        receiver.recv().unwrap_or(LOST)
    }

    /// Tells the fork server to exit and reaps it (its CPU time then counts in the supervisor's).
    pub fn shut_down(&self) {
        let Ok(mut reaped) = self.reaped.lock() else { return };
        if !*reaped {
            // An empty message reads as end of stream to the fork server.
            let _ = linux::send_message(self.control.as_fd(), &[], &[]);
            let _ = linux::wait4(self.pid);
            crate::orphans::forget(self.pid);
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

fn read_replies(socket: &OwnedFd, sender: &std_mpsc::Sender<Received>, exits: &Mutex<ExitBoard>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    while let Ok((len @ 1.., fds)) = linux::recv_message(socket.as_fd(), &mut buffer) {
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
fn serve(control: OwnedFd, supervisor: i32) -> io::Result<()> {
    // SAFETY: prctl/signal calls with constant arguments; this process is single-threaded.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        // Ctrl-C reaches the whole foreground group, and Slurm's SIGTERM every process of the job; the supervisor
        // decides when workers stop.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        if libc::getppid() != supervisor {
            return Ok(());
        }
    }
    let mut workers: Vec<(u32, Pidfd)> = Vec::new();
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let mut fds: Vec<BorrowedFd<'_>> = vec![control.as_fd()];
        fds.extend(workers.iter().map(|(_, pidfd)| {
            // SAFETY: the pidfd outlives this borrow (it is only dropped after the poll below returned).
            unsafe { BorrowedFd::borrow_raw(pidfd.as_raw_fd()) }
        }));
        let ready = linux::poll_readable(&fds)?;
        drop(fds);
        // Exits first, so that a worker's exit report never trails behind a request that follows it.
        let mut index = ready.len();
        while index > 1 {
            index -= 1;
            if ready[index] {
                let (pid, _) = workers.swap_remove(index - 1);
                // The worker is a zombie now (its pidfd is readable): its group id is still its own.
                linux::kill_worker_group(pid as i32);
                let info = linux::wait4(pid as i32).unwrap_or(LOST);
                send(&control, &Reply::Exited { pid, info }, &[])?;
            }
        }
        if ready[0] {
            let (len, mut fds) = linux::recv_message(control.as_fd(), &mut buffer)?;
            if len == 0 {
                return Ok(());
            }
            let Request::Fork = postcard::from_bytes(&buffer[..len])
                .map_err(|error| io::Error::other(format!("bad request: {error}")))?;
            let forked = match (fds.pop(), fds.is_empty()) {
                (Some(channel), true) => fork_worker(&control, channel),
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
    linux::send_message(control.as_fd(), &bytes, fds)
}

/// Forks one worker with `channel` as its stdin; returns its pid, a pidfd to poll for its exit, and the read
/// end of its stderr.
fn fork_worker(control: &OwnedFd, channel: OwnedFd) -> io::Result<(u32, Pidfd, OwnedFd)> {
    let (stderr_read, stderr_write) = linux::pipe()?;
    let server = std::process::id() as i32;
    // SAFETY: the fork server is single-threaded.
    match unsafe { linux::fork() }? {
        Forked::Child => {
            let code = match linux::redirect_and_close_others(channel.as_fd(), stderr_write.as_fd()) {
                Ok(()) => match child::worker::run(Some(server), Box::new(builtins::build)) {
                    Ok(()) => 0,
                    Err(error) => {
                        eprintln!("worker: {error}");
                        shared::exit::INTERNAL
                    }
                },
                Err(_) => shared::exit::INTERNAL,
            };
            let _ = control;
            // SAFETY: leave without running the fork server's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Forked::Parent { child } => {
            drop(stderr_write);
            drop(channel);
            let pidfd = Pidfd::open(child)?;
            Ok((child as u32, pidfd, stderr_read))
        }
    }
}
