//! Starting the user's processes from a worker, and describing how they ended.
//!
//! Every process is started with `PR_SET_PDEATHSIG = SIGKILL` (set in the forked child before `exec`), so that
//! it dies with the worker that started it: when the supervisor kills a worker for a timeout, a limit or a
//! stop, the user's command or persistent process goes with it and nothing is orphaned. The worker is a small
//! process, so the fork path that a `pre_exec` hook forces costs little here.
//!
//! A user's process ends when its main process ends, not when its pipes close: what it started in the background
//! may hold them open for as long as it likes (`sh -c 'sleep 100 & echo done'`). So every wait on a user process
//! also watches a pidfd of its main process ([`Leader`]); once that has ended, its process group is killed and
//! the pipes are read for at most [`DRAIN_AFTER_EXIT`] more (a process that left the group with `setsid` may
//! still hold them).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

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

/// Puts a per-item command in a process group of its own, so that the [`Guard`] (which learns the group right
/// after the spawn) kills it and everything it started when this worker dies, and [`reap_group`] what it leaves
/// running when it ends.
///
/// No `pre_exec` hook: without one, std starts the command with `posix_spawn` (a vfork-style clone) instead of
/// `fork`, which costs about 10% of the whole per-item cost of a trivial command (0.94 s against 1.07 s for
/// 2000 `true` two at a time). So a command gets no `PR_SET_PDEATHSIG` of its own. Should the worker die in the
/// microseconds between the spawn and [`Guard::watch`], the command is orphaned to the supervisor, a child
/// subreaper, whose sweep kills it (after `kill -9` of the supervisor too, it would go to init: the one gap).
pub fn own_group(command: &mut Command) {
    command.process_group(0);
}

/// Makes a persistent worker process die with this worker (`PR_SET_PDEATHSIG`), in a process group of its own
/// (so that the [`Guard`] can kill what it started too). It is started once per worker, so the `fork` that the
/// hook forces costs nothing that matters.
pub fn die_with_worker(command: &mut Command) {
    command.process_group(0);
    // SAFETY: getpid has no preconditions.
    let worker = unsafe { libc::getpid() };
    // SAFETY: the hook runs in the forked child before exec and calls only async-signal-safe functions (prctl,
    // getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The worker may have died before the request was made: then nothing would ever kill this child.
            if libc::getppid() != worker {
                return Err(io::Error::other("the worker is gone"));
            }
            Ok(())
        });
    }
}

/// Clears `FD_CLOEXEC` on `fd` until dropped, so that a command spawned meanwhile inherits it. Only this thread
/// of the worker starts processes (the flusher thread never does), so no other child can inherit it by accident.
#[derive(Debug)]
pub struct Inherited(RawFd);

impl Inherited {
    pub fn new(fd: RawFd) -> io::Result<Inherited> {
        set_cloexec(fd, false)?;
        Ok(Inherited(fd))
    }
}

impl Drop for Inherited {
    fn drop(&mut self) {
        let _ = set_cloexec(self.0, true);
    }
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns; F_GETFD/F_SETFD touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills the process groups of the user's processes when this worker dies, however it dies.
///
/// `PR_SET_PDEATHSIG` kills the process the worker started, but not what that process started in turn (`sh -c
/// 'sleep 1000'` leaves `sleep`; a Python pool leaves its children). So each user process gets a process group
/// of its own, and a small guard process — forked from the worker, holding nothing but the read end of a pipe
/// whose write end only the worker holds — learns each group as it starts. When the worker dies (a timeout kill,
/// a crash, the supervisor going away) the pipe reaches end-of-file and the guard SIGKILLs every group it knows,
/// then exits. When the worker ends normally it drops the guard, which does the same.
#[derive(Debug)]
pub struct Guard {
    /// `None` once closed.
    pipe: Option<File>,
    pid: libc::pid_t,
}

/// Most process groups a guard tracks at once (a worker runs one user process at a time).
const GUARD_GROUPS: usize = 64;

impl Guard {
    pub fn start() -> io::Result<Guard> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the valid two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fds were just created and are owned by nothing else.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        // SAFETY: the forked child runs only async-signal-safe system calls (dup2, close_range, read, kill,
        // _exit) on stack memory: it is safe even though this process may have other threads.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above; this never returns.
            unsafe { guard_main(read.as_raw_fd()) }
        }
        drop(read);
        Ok(Guard { pipe: Some(write), pid })
    }

    /// From now on, kill process group `pgid` when the worker dies.
    pub fn watch(&mut self, pgid: u32) {
        if let Some(pipe) = self.pipe.as_mut() {
            let _ = pipe.write_all(&(pgid as i32).to_ne_bytes());
        }
    }

    /// Process group `pgid` is gone (killed and reaped by the worker): forget it.
    pub fn forget(&mut self, pgid: u32) {
        if let Some(pipe) = self.pipe.as_mut() {
            let _ = pipe.write_all(&(-(pgid as i32)).to_ne_bytes());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe makes the guard kill what it still knows and exit; reap it.
        drop(self.pipe.take());
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing its status into a valid local.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

/// The guard process: reads 4-byte group numbers (negative: forget) until end-of-file, then kills the groups.
///
/// # Safety
/// Must run only in a freshly forked child; it never returns.
unsafe fn guard_main(read: RawFd) -> ! {
    // SAFETY (whole function): only async-signal-safe calls on local memory.
    unsafe {
        // Keep nothing of the worker's open files (ipc-channel sockets above all: holding them would hide the
        // worker's death from the supervisor) but the pipe, as fd 0.
        libc::dup2(read, 0);
        libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
        // Leave the worker's process group: when the worker dies, its group is killed (see `child::isolation`),
        // and the guard must outlive it to kill the user's groups.
        libc::setpgid(0, 0);
        let mut groups = [0i32; GUARD_GROUPS];
        loop {
            let mut bytes = [0u8; 4];
            let n = libc::read(0, bytes.as_mut_ptr().cast(), 4);
            if n == 4 {
                let pgid = i32::from_ne_bytes(bytes);
                if pgid > 0 {
                    if let Some(slot) = groups.iter_mut().find(|slot| **slot == 0) {
                        *slot = pgid;
                    }
                } else if let Some(slot) = groups.iter_mut().find(|slot| **slot == -pgid) {
                    *slot = 0;
                }
            } else if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            } else {
                break;
            }
        }
        for &pgid in groups.iter().filter(|&&pgid| pgid > 0) {
            libc::kill(-pgid, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// Waits for `child` (the leader of its own process group) to end, kills what it leaves running in its group,
/// then reaps it. The leader is reaped last so that the group's id cannot be reused in between.
pub fn reap_group(child: &mut std::process::Child) -> io::Result<ExitStatus> {
    let pid = child.id();
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it through a valid pointer. WNOWAIT leaves the child
        // unreaped.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    // SAFETY: kill(2) touches no memory of ours; the group's leader is our unreaped child, so the id is ours.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    child.wait()
}

/// How long the pipes of a user process are still read once its main process has ended and its process group
/// was killed: long enough for what is already in them, short enough that a process that left the group (and so
/// was not killed) cannot hold the item by keeping them open.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// The main process of a user process group: our unreaped child, leader of its own group, with a pidfd that
/// becomes readable when it ends (so that a wait for it is one more descriptor in a `poll`).
#[derive(Debug)]
pub struct Leader {
    pid: u32,
    pidfd: OwnedFd,
}

impl Leader {
    /// `pid` must be our unreaped child and the leader of its own process group.
    pub fn new(pid: u32) -> io::Result<Leader> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Leader { pid, pidfd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILLs what is left in the group. The leader is our unreaped child (also once it has ended), so its id,
    /// the group's, cannot have been reused.
    pub fn kill_group(&self) {
        // SAFETY: kill(2) touches no memory of ours.
        unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
    }

    /// Whether the leader has ended (without reaping it).
    pub fn has_ended(&self) -> bool {
        has_ended(self.pid)
    }
}

/// The readiness of the descriptors of one [`wait_for`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// For each descriptor asked about: readable, writable or hung up (as asked).
    pub fds: [bool; 2],
    /// The leader has ended.
    pub ended: bool,
}

/// Waits until one of `fds` (each with the `poll` events asked, `None` for none) is ready or, when `leader` is
/// given, the leader ends, or `deadline` passes (then nothing is ready).
pub fn wait_for(
    fds: [Option<(RawFd, i16)>; 2],
    leader: Option<&Leader>,
    deadline: Option<Instant>,
) -> io::Result<Ready> {
    loop {
        let mut polled = [
            pollfd(fds[0]),
            pollfd(fds[1]),
            pollfd(leader.map(|leader| (leader.pidfd.as_raw_fd(), libc::POLLIN))),
        ];
        let timeout = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Ready::default());
                }
                // Rounded up, so that the deadline has passed when poll times out.
                left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: poll reads and writes exactly the three pollfd structs of this live array.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), 3, timeout) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        return Ok(Ready {
            fds: [polled[0].revents != 0, polled[1].revents != 0],
            ended: polled[2].revents != 0,
        });
    }
}

fn pollfd(fd: Option<(RawFd, i16)>) -> libc::pollfd {
    let (fd, events) = fd.unwrap_or((-1, 0));
    libc::pollfd { fd, events, revents: 0 }
}

/// Whether the child `pid` has ended (without reaping it).
pub fn has_ended(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it through a valid pointer and reaps nothing (WNOWAIT).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: after a successful waitid the pid field is initialised (0 when nothing has ended yet).
    rc == 0 && unsafe { info.si_pid() } != 0
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

/// Reads both pipes of a command, in this thread (poll), so that neither can fill up and block it, until both end
/// or, once the command's main process (`leader`) has ended, its group was killed and [`DRAIN_AFTER_EXIT`] has
/// passed: what it left in the background holding the pipes does not hold the item.
pub fn capture(
    mut stdout: impl Read + AsRawFd,
    mut stderr: impl Read + AsRawFd,
    max_stdout: u64,
    leader: &Leader,
) -> io::Result<Captured> {
    let mut captured = Captured::default();
    let mut open = [true, true];
    let mut buffer = vec![0u8; 64 << 10];
    let mut deadline = None;
    while open[0] || open[1] {
        let fds = [
            open[0].then(|| (stdout.as_raw_fd(), libc::POLLIN)),
            open[1].then(|| (stderr.as_raw_fd(), libc::POLLIN)),
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
