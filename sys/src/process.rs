//! Processes: pidfds (signals that cannot hit a recycled pid), reaping one child with its resource usage,
//! process groups as their own type (never `kill(-pgid)`), signal names, and `fork` with what a freshly forked
//! child does before it runs (`redirect_and_close_others`, [`exit_now`]).
//!
//! Which process to start, stop or reap, and when, is the caller's business; this module only makes each call
//! safe and typed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A pidfd: a handle on one process that stays valid (and never names another process) after it is reaped.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens a pidfd for `pid`, which must be our unreaped child (or be known otherwise not to be reaped
    /// meanwhile), so that the pid still names it.
    pub fn open(pid: Pid) -> io::Result<Pidfd> {
        let raw = rustix::process::Pid::from_raw(pid.as_raw())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no process has pid {pid}")))?;
        let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())?;
        Ok(Pidfd(fd))
    }

    /// Adopts a pidfd received from another process.
    pub fn from_owned(fd: OwnedFd) -> Pidfd {
        Pidfd(fd)
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// A second handle on the same process.
    pub fn try_clone(&self) -> io::Result<Pidfd> {
        Ok(Pidfd(self.0.try_clone()?))
    }

    /// Sends `signal` to the process; a process that already exited (even one reaped) is not an error.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let Some(signal) = rustix::process::Signal::from_named_raw(signal as i32) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot send {signal}"),
            ));
        };
        match rustix::process::pidfd_send_signal(&self.0, signal) {
            Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(error) => Err(error.into()),
            Ok(()) => Ok(()),
        }
    }

    /// SIGKILLs the process (nothing to do when it is gone).
    pub fn kill(&self) {
        let _ = self.signal(Signal::SIGKILL);
    }

    /// Waits up to `timeout` for the process to exit; true when it has (it may still be unreaped).
    pub fn wait_exited_for(&self, timeout: Duration) -> io::Result<bool> {
        Ok(crate::socket::poll_readable(&[self.as_fd()], Some(timeout))?[0])
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A process group, named by its leader. Signalling a group is a method of this type, so a group can never be
/// confused with a process, as a negative pid can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(Pid);

impl ProcessGroup {
    /// The group `leader` leads (whose id is the leader's pid).
    pub fn led_by(leader: Pid) -> ProcessGroup {
        ProcessGroup(leader)
    }

    /// The calling process's group.
    pub fn own() -> ProcessGroup {
        ProcessGroup(nix::unistd::getpgrp())
    }

    pub fn id(self) -> Pid {
        self.0
    }

    /// SIGKILLs every member. A group with no member left is not an error.
    pub fn kill(self) {
        let _ = nix::sys::signal::killpg(self.0, Signal::SIGKILL);
    }
}

/// Makes the calling process the leader of a new process group.
pub fn lead_new_group() -> io::Result<ProcessGroup> {
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    Ok(ProcessGroup::own())
}

/// Sends `signal` to process `pid`.
///
/// Only for a pid that cannot have been recycled: an unreaped child of the caller (or the caller itself). For
/// anything else, hold a [`Pidfd`].
pub fn signal_child(pid: Pid, signal: Signal) -> io::Result<()> {
    nix::sys::signal::kill(pid, signal)?;
    Ok(())
}

/// How a child process ended, with its resource usage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub status: ExitStatus,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub max_rss: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// Whether the process exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl ExitInfo {
    /// Reported for a worker whose real status cannot be known (something else reaped it, or the process that
    /// should have reported it is gone): a SIGKILL, so that the items it held are not lost.
    pub const KILLED: ExitInfo = ExitInfo {
        status: ExitStatus::Signal(libc::SIGKILL),
        cpu: Duration::ZERO,
        max_rss: 0,
    };
}

/// Blocks until child `pid` exits and reaps it. Only this pid is waited for: never `waitpid(-1)`, which would
/// steal other children's statuses. (nix's `waitpid` does not return the resource usage, hence `wait4`.)
pub fn wait4(pid: Pid) -> io::Result<ExitInfo> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and usage are valid, exclusively borrowed out-pointers for the call's duration.
        let rc = unsafe { libc::wait4(pid.as_raw(), &mut status, 0, &mut usage) };
        if rc == pid.as_raw() {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    let status = if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(ExitInfo {
        status,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        max_rss: usage.ru_maxrss as u64 * 1024,
    })
}

/// Blocks until child `pid` has exited, without reaping it: it stays a zombie, so its pid (and the process
/// group it leads) cannot be reused until [`wait4`] reaps it.
pub fn wait_exited(pid: Pid) -> io::Result<()> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether child `pid` has exited, without waiting and without reaping it (it stays a zombie until [`wait4`]).
/// An error (no such child) counts as not exited.
pub fn has_exited(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(WaitStatus::StillAlive) | Err(_) => return false,
            Ok(_) => return true,
        }
    }
}

/// Waits for child `pid` (a worker, which leads its own process group) to exit, SIGKILLs what is left of its
/// group (the children its task started that did not leave the group), then reaps it. The group is killed while
/// the worker is a zombie: its id is then still the worker's own pid and cannot name anyone else's group.
pub fn reap_and_kill_group(pid: Pid) -> io::Result<ExitInfo> {
    wait_exited(pid)?;
    ProcessGroup::led_by(pid).kill();
    wait4(pid)
}

/// `SIGSEGV` for 11, and so on; `signal N` for numbers without a name.
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// The two sides of a `fork`.
#[derive(Debug)]
pub enum Forked {
    Parent { child: Pid },
    Child,
}

/// Forks this process, which must be single-threaded: in a multi-threaded process the child may deadlock on a
/// lock another thread held at the time of the fork. That is checked (`/proc/self/task`), and a process with
/// more than one thread gets an error instead of a fork.
pub fn fork() -> io::Result<Forked> {
    if !crate::env::single_threaded() {
        return Err(io::Error::other("cannot fork: the process has more than one thread"));
    }
    // SAFETY: the process is single-threaded (checked above; a thread can only be started by this one, which is
    // here), so no lock can be held by a thread that does not exist in the child.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { child }),
    }
}

/// Ends the calling process at once with `code`, without running exit handlers or destructors: how a forked
/// child leaves (the handlers belong to its parent).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor from `first` up. Call it only where nothing in the process owns any of them (a
/// process that just started, or just forked): an `OwnedFd` left behind would close a number reused later.
pub fn close_descriptors_from(first: RawFd) {
    close_range(first.max(0) as u32, u32::MAX);
}

/// Closes every descriptor but `keep` (the standard ones included), under the same contract as
/// [`close_descriptors_from`]. Async-signal-safe.
pub fn close_descriptors_except(keep: RawFd) {
    let keep = keep.max(0) as u32;
    if keep > 0 {
        close_range(0, keep - 1);
    }
    if keep < u32::MAX {
        close_range(keep + 1, u32::MAX);
    }
}

/// Closes the descriptors `first ..= last`. Async-signal-safe: it makes system calls only.
fn close_range(first: u32, last: u32) {
    // SAFETY: close_range takes integers and touches no memory; by the contract of the public functions no live
    // owner of these descriptors exists in this process. (Neither nix nor rustix wraps close_range.)
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if closed < 0 {
        // Kernels before 5.9: close one by one (closing a descriptor that is not open is harmless).
        for fd in first..=last.min(4095) {
            // SAFETY: as above.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// In a freshly forked child: makes `stdin` its fd 0, /dev/null its fd 1 and `stderr` its fd 2, and closes every
/// other fd.
pub fn redirect_and_close_others(stdin: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> io::Result<()> {
    let null = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdin(stdin)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(stderr)?;
    // The descriptors `null`, `stdin` and `stderr` refer to are closed below; they must not be closed again.
    std::mem::forget(null);
    close_descriptors_from(3);
    Ok(())
}

/// Makes the program `command` starts die (SIGKILL) when the calling thread's process ends: a `pre_exec` hook
/// that sets `PR_SET_PDEATHSIG` in the forked child, then checks that its parent is still the caller (the caller
/// may have died before the request was made, and then nothing would ever kill the child; the spawn fails with
/// `ESRCH` instead).
///
/// A `pre_exec` hook makes std start the command with `fork` instead of `posix_spawn`: use it for processes
/// started rarely, not once per item.
pub fn kill_on_parent_death(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    let hook = move || {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        if nix::unistd::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe calls are allowed (the
    // caller may have other threads): it makes two system calls (prctl, getppid) and allocates nothing (an
    // `io::Error` from an errno is not boxed).
    unsafe { command.pre_exec(hook) };
}

/// The calling process's parent.
pub fn parent() -> Pid {
    nix::unistd::getppid()
}

/// Makes the calling process a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphaned descendants become its
/// children instead of init's.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Asks the kernel for `signal` when the calling thread's parent dies (`PR_SET_PDEATHSIG`).
pub fn signal_on_parent_death(signal: Signal) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(signal)?;
    Ok(())
}

/// Sets `PR_SET_NO_NEW_PRIVS`: nothing this process execs can gain privileges (setuid bits, file capabilities).
pub fn forbid_new_privileges() -> io::Result<()> {
    nix::sys::prctl::set_no_new_privs()?;
    Ok(())
}

/// Ignores SIGINT and SIGTERM: Ctrl-C reaches the whole foreground group, and Slurm's SIGTERM every process of
/// the job; for the processes that call this, the supervisor decides when they stop.
pub fn ignore_interrupts() -> io::Result<()> {
    ignore(Signal::SIGINT)?;
    ignore(Signal::SIGTERM)
}

/// Sets `signal`'s disposition to ignore.
pub fn ignore(signal: Signal) -> io::Result<()> {
    use nix::sys::signal::SigHandler;
    // SAFETY: SIG_IGN installs no handler code, so nothing can run in signal context.
    unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) }?;
    Ok(())
}

/// Installs a handler for `signal` that SIGKILLs the calling process's group (when it leads one) and then the
/// process itself: how a worker takes its task's children down when its parent dies.
pub fn kill_own_group_on(signal: Signal) -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(SigHandler::Handler(kill_own_group), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only calls async-signal-safe functions (getpid, getpgrp, kill).
    unsafe { nix::sys::signal::sigaction(signal, &action) }?;
    Ok(())
}

/// SIGKILLs the calling process's group if it leads one, then the process. Async-signal-safe (it is also the
/// handler installed by [`kill_own_group_on`]).
pub extern "C" fn kill_own_group(_signal: libc::c_int) {
    let me = nix::unistd::getpid();
    if nix::unistd::getpgrp() == me {
        ProcessGroup::led_by(me).kill();
    }
    let _ = nix::sys::signal::kill(me, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(1000), "signal 1000");
    }

    #[test]
    #[expect(
        clippy::zombie_processes,
        reason = "the children are reaped by wait4, which clippy does not know"
    )]
    fn wait4_reports_signal_and_code_and_pidfd_survives_reaping() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = Pid::from_raw(child.id() as i32);
        let pidfd = Pidfd::open(pid).expect("pidfd");
        assert!(
            !pidfd.wait_exited_for(Duration::ZERO).expect("poll"),
            "sleep 30 has not exited"
        );
        pidfd.signal(Signal::SIGKILL).expect("kill");
        assert!(pidfd.wait_exited_for(Duration::from_secs(60)).expect("poll"));
        let info = wait4(pid).expect("wait4");
        assert_eq!(info.status, ExitStatus::Signal(libc::SIGKILL));
        // The process is reaped: signalling through the pidfd is a harmless no-op, not a kill of a reused pid.
        pidfd.signal(Signal::SIGKILL).expect("no error after reaping");

        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let info = wait4(Pid::from_raw(child.id() as i32)).expect("wait4");
        assert_eq!(info.status, ExitStatus::Code(7));
    }
}
