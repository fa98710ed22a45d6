//! Starting the user's processes from a worker, and describing how they ended.
//!
//! Every process is started with `PR_SET_PDEATHSIG = SIGKILL` (set in the forked child before `exec`), so that
//! it dies with the worker that started it: when the supervisor kills a worker for a timeout, a limit or a
//! stop, the user's command or persistent process goes with it and nothing is orphaned. The worker is a small
//! process, so the fork path that a `pre_exec` hook forces costs little here.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use shared::protocol::{TaskError, TaskErrorKind};
use shared::usertask::ProcessSpec;

use crate::task::ItemContext;

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

/// Makes the child die with this worker (and, when `keep_open` is given, inherit that descriptor across exec).
pub fn die_with_worker(command: &mut Command, keep_open: Option<RawFd>) {
    // SAFETY: getpid has no preconditions.
    let worker = unsafe { libc::getpid() };
    // SAFETY: the hook runs in the forked child before exec and calls only async-signal-safe functions (prctl,
    // getppid, fcntl); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The worker may have died before the request was made: then nothing would ever kill this child.
            if libc::getppid() != worker {
                return Err(io::Error::other("the worker is gone"));
            }
            if let Some(fd) = keep_open {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The failure of an item whose process ended with `status` (not a success), with its stderr tail.
pub fn ended(what: &str, status: ExitStatus, stderr: String) -> TaskError {
    match (status.code(), status.signal()) {
        (Some(code), _) => TaskError {
            kind: TaskErrorKind::Exit { code, stderr },
            message: format!("{what} exited with code {code}"),
        },
        (None, Some(signal)) => TaskError {
            kind: TaskErrorKind::Signal { signal, stderr },
            message: format!("{what} was killed by {}", signal_name(signal)),
        },
        (None, None) => TaskError {
            kind: TaskErrorKind::Error,
            message: format!("{what} ended with status {status}"),
        },
    }
}

/// `SIGSEGV` for 11, and so on.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// What a command wrote: stdout up to a limit, and the tail of stderr.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    /// Stdout went past the limit (the rest was read and dropped so that the command could finish).
    pub stdout_overflow: bool,
    pub stderr: Tail,
}

/// Reads both pipes until both end, in this thread (poll), so that neither can fill up and block the command.
pub fn capture(
    mut stdout: impl Read + AsRawFd,
    mut stderr: impl Read + AsRawFd,
    max_stdout: u64,
) -> io::Result<Captured> {
    let mut captured = Captured::default();
    let mut open = [true, true];
    let mut buffer = vec![0u8; 64 << 10];
    while open[0] || open[1] {
        let mut fds = [
            libc::pollfd {
                fd: if open[0] { stdout.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { stderr.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes exactly the two pollfd structs of this live array.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if open[0] && fds[0].revents != 0 {
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
        if open[1] && fds[1].revents != 0 {
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
