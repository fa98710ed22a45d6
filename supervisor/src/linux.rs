//! Linux process primitives the pool needs and std/nix do not wrap: pidfds (signals that cannot hit a recycled
//! pid), `wait4` with resource usage, and signal names.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A pidfd: a handle on one process that stays valid (and never names another process) after it is reaped.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens a pidfd for `pid`, which must be our unreaped child.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `signal` to the process; a process that already exited is not an error.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a null siginfo and no flags; the fd is owned by self.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(error);
        }
        Ok(())
    }
}

/// How a child process ended, with its resource usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitInfo {
    pub status: ExitStatus,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub max_rss: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Blocks until child `pid` exits and reaps it. Only this pid is waited for: never `waitpid(-1)`, which would
/// steal other children's statuses.
pub fn wait4(pid: i32) -> io::Result<ExitInfo> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and usage are valid, exclusively borrowed out-pointers for the call's duration.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
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

/// `SIGSEGV` for 11, and so on; `signal N` for numbers without a name.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
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
        let pid = child.id() as i32;
        let pidfd = Pidfd::open(pid).expect("pidfd");
        pidfd.signal(libc::SIGKILL).expect("kill");
        let info = wait4(pid).expect("wait4");
        assert_eq!(info.status, ExitStatus::Signal(libc::SIGKILL));
        // The process is reaped: signalling through the pidfd is a harmless no-op, not a kill of a reused pid.
        pidfd.signal(libc::SIGKILL).expect("no error after reaping");

        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let info = wait4(child.id() as i32).expect("wait4");
        assert_eq!(info.status, ExitStatus::Code(7));
    }
}
