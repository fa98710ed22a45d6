//! Starting the user's processes from a worker, and describing how they ended.
//!
//! Every process runs in a process group of its own, which the worker's guard process
//! ([`GroupGuard`](sys::guard::GroupGuard)) SIGKILLs when the worker dies: when the supervisor kills a worker for
//! a timeout, a limit or a stop, the user's command or persistent process goes with it, with what it started, and
//! nothing is orphaned. A persistent process also gets `PR_SET_PDEATHSIG = SIGKILL` ([`die_with_worker`]); a
//! per-item command does not, so that it is started by `posix_spawn` ([`own_group`]). Every system call is made
//! through the `sys` crate.
//!
//! A user's process ends when its main process ends, not when its pipes close: what it started in the background
//! may hold them open for as long as it likes (`sh -c 'sleep 100 & echo done'`). So every wait on a user process
//! also watches a pidfd of its main process ([`Leader`]); once that has ended, its process group is killed and
//! the pipes are read for at most [`DRAIN_AFTER_EXIT`] more (a process that left the group with `setsid` may
//! still hold them).

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use sys::process::{ExitStatus, Pid, Pidfd, ProcessGroup, signal_name};
use sys::socket::Interest;

use shared::protocol::{TaskError, TaskErrorKind};
use shared::usertask::ProcessSpec;

use child::task::ItemContext;

/// Bytes of a process's stderr kept for a failure record.
pub const STDERR_TAIL_BYTES: usize = 4 << 10;

/// A command for `argv` with the job's environment and folder, and the supervisor's variables.
pub fn command(spec: &ProcessSpec, argv: &[String], context: &ItemContext, item: Option<u64>) -> Command {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .env("SUPERVISOR_WORKER", context.worker.to_string())
        .env("SUPERVISOR_ATTEMPT", context.attempt.to_string());
    if let Some(item) = item {
        command.env("SUPERVISOR_ITEM", item.to_string());
    }
    command
}

/// Puts a per-item command in a process group of its own, so that the guard (a
/// [`GroupGuard`](sys::guard::GroupGuard), which learns the group right after the spawn) kills it and everything
/// it started when this worker dies, and [`reap_and_kill_group`](sys::process::reap_and_kill_group) what it leaves
/// running when it ends.
///
/// No `pre_exec` hook: without one, std starts the command with `posix_spawn` (a vfork-style clone) instead of
/// `fork`, which costs about 10% of the whole per-item cost of a trivial command (0.94 s against 1.07 s for
/// 2000 `true` two at a time). So a command gets no `PR_SET_PDEATHSIG` of its own. Should the worker die in the
/// microseconds between the spawn and
/// [`GroupGuard::watch`](sys::guard::GroupGuard::watch), the command is orphaned to the supervisor, a child
/// subreaper, whose sweep kills it (after `kill -9` of the supervisor too, it would go to init: the one gap).
pub fn own_group(command: &mut Command) {
    command.process_group(0);
}

/// Makes a persistent worker process die with this worker (`PR_SET_PDEATHSIG`), in a process group of its own
/// (so that the guard, a [`GroupGuard`](sys::guard::GroupGuard), can kill what it started too). It is started
/// once per worker, so the `fork` that the hook forces costs nothing that matters.
pub fn die_with_worker(command: &mut Command) {
    command.process_group(0);
    sys::process::kill_on_parent_death(command);
}

/// Clears `FD_CLOEXEC` on a descriptor until dropped, so that a command spawned meanwhile inherits it. Only this
/// thread of the worker starts processes (the flusher thread never does), so no other child can inherit it by
/// accident.
#[derive(Debug)]
pub struct Inherited<'fd>(BorrowedFd<'fd>);

impl<'fd> Inherited<'fd> {
    pub fn new(fd: BorrowedFd<'fd>) -> io::Result<Inherited<'fd>> {
        sys::socket::set_cloexec(fd, false)?;
        Ok(Inherited(fd))
    }
}

impl Drop for Inherited<'_> {
    fn drop(&mut self) {
        let _ = sys::socket::set_cloexec(self.0, true);
    }
}

/// How long the pipes of a user process are still read once its main process has ended and its process group
/// was killed: long enough for what is already in them, short enough that a process that left the group (and so
/// was not killed) cannot hold the item by keeping them open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// The main process of a user process group: our unreaped child, leader of its own group, with a pidfd that
/// becomes readable when it ends (so that a wait for it is one more descriptor in a `poll`).
#[derive(Debug)]
pub struct Leader {
    pid: Pid,
    pidfd: Pidfd,
}

impl Leader {
    /// `pid` must be our unreaped child and the leader of its own process group.
    pub fn new(pid: Pid) -> io::Result<Leader> {
        Ok(Leader {
            pid,
            pidfd: Pidfd::open(pid)?,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// SIGKILLs what is left in the group. The leader is our unreaped child (also once it has ended), so its id,
    /// the group's, cannot have been reused.
    pub fn kill_group(&self) {
        ProcessGroup::led_by(self.pid).kill();
    }

    /// Whether the leader has ended (without reaping it).
    pub fn has_ended(&self) -> bool {
        sys::process::has_exited(self.pid)
    }
}

/// The readiness of the descriptors of one [`wait_for`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// For each descriptor asked about: ready as asked, or hung up.
    pub fds: [bool; 2],
    /// The leader has ended.
    pub ended: bool,
}

/// Waits until one of `fds` (each with what to wait for, `None` for none) is ready or, when `leader` is given,
/// the leader ends, or `deadline` passes (then nothing is ready, even what would be: a deadline bounds how long
/// the caller goes on).
pub fn wait_for(
    fds: [Option<(BorrowedFd<'_>, Interest)>; 2],
    leader: Option<&Leader>,
    deadline: Option<Instant>,
) -> io::Result<Ready> {
    let timeout = match deadline {
        None => None,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Ready::default());
            }
            Some(left)
        }
    };
    let leader = leader.map(|leader| (leader.pidfd.as_fd(), Interest::Read));
    let polled: Vec<(BorrowedFd<'_>, Interest)> = fds.iter().chain([&leader]).flatten().copied().collect();
    let mut ready = sys::socket::poll(&polled, timeout)?.into_iter();
    let mut next = |asked: bool| asked && ready.next().unwrap_or(false);
    Ok(Ready {
        fds: [next(fds[0].is_some()), next(fds[1].is_some())],
        ended: next(leader.is_some()),
    })
}

/// The failure of an item whose process ended with `status` (not a success), with its stderr tail.
pub fn ended(what: &str, status: ExitStatus, stderr: String) -> TaskError {
    match status {
        ExitStatus::Code(code) => TaskError {
            kind: TaskErrorKind::Exit { code, stderr },
            message: format!("{what} exited with code {code}"),
        },
        ExitStatus::Signal(signal) => TaskError {
            kind: TaskErrorKind::Signal { signal, stderr },
            message: format!("{what} was killed by {}", signal_name(signal)),
        },
    }
}

/// What a command wrote: stdout up to a limit, and the tail of stderr.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    /// Stdout went past the limit (the rest was read and dropped so that the command could finish).
    pub stdout_overflow: bool,
    pub stderr: Tail,
}

/// Reads both pipes of a command, in this thread (poll), so that neither can fill up and block it, until both end
/// or, once the command's main process (`leader`) has ended, its group was killed and [`DRAIN_AFTER_EXIT`] has
/// passed: what it left in the background holding the pipes does not hold the item.
pub fn capture(
    mut stdout: impl Read + AsFd,
    mut stderr: impl Read + AsFd,
    max_stdout: u64,
    leader: &Leader,
) -> io::Result<Captured> {
    let mut captured = Captured::default();
    let mut open = [true, true];
    let mut buffer = vec![0u8; 64 << 10];
    let mut deadline = None;
    while open[0] || open[1] {
        let fds = [
            open[0].then(|| (stdout.as_fd(), Interest::Read)),
            open[1].then(|| (stderr.as_fd(), Interest::Read)),
        ];
        let ready = wait_for(fds, deadline.is_none().then_some(leader), deadline)?;
        if ready == Ready::default() {
            // Drained as long as allowed: what still holds the pipes left the command's group.
            break;
        }
        if ready.ended {
            leader.kill_group();
            deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
        }
        if ready.fds[0] {
            match stdout.read(&mut buffer) {
                Ok(0) => open[0] = false,
                Ok(n) => {
                    let room = (max_stdout as usize).saturating_sub(captured.stdout.len());
                    captured.stdout.extend_from_slice(&buffer[..n.min(room)]);
                    captured.stdout_overflow |= n > room;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        if ready.fds[1] {
            match stderr.read(&mut buffer) {
                Ok(0) => open[1] = false,
                Ok(n) => captured.stderr.push(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(captured)
}

/// The last [`STDERR_TAIL_BYTES`] of a stream.
#[derive(Debug, Default)]
pub struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > STDERR_TAIL_BYTES {
            let excess = self.bytes.len() - STDERR_TAIL_BYTES;
            self.bytes.drain(..excess);
        }
    }

    pub fn take(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        self.bytes.clear();
        text
    }
}
