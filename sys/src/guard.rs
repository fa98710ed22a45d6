//! A guard process: kills the process groups it was told about when the process that started it dies, however it
//! dies (SIGKILL included), or drops the guard.
//!
//! `PR_SET_PDEATHSIG` kills one process when its parent dies, not what that process started in turn. A guard is a
//! small process forked from its owner, holding nothing but the read end of a pipe whose write end only the owner
//! holds; the owner writes each group to it as the group starts, and again when it is gone. When the owner dies
//! the pipe reaches end-of-file, and the guard SIGKILLs every group it still knows, then exits.
//!
//! Which groups to watch, and when, is the owner's business; this module is the mechanism.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::process::{Pid, ProcessGroup};

/// Most process groups a guard tracks at once (more are not tracked: the owner runs a few processes at a time).
pub const GUARD_GROUPS: usize = 64;

/// The owner's side of a guard process; dropping it makes the guard kill what it still knows, and reaps it.
#[derive(Debug)]
pub struct GroupGuard {
    /// `None` once closed.
    pipe: Option<File>,
    pid: Pid,
}

impl GroupGuard {
    /// Forks the guard. Unlike [`crate::process::fork`], this works in a process with several threads: the
    /// forked guard makes only async-signal-safe system calls and allocates nothing.
    pub fn start() -> io::Result<GroupGuard> {
        let (read, write) = crate::socket::pipe()?;
        // SAFETY: the child runs `guard_main` only, which makes async-signal-safe system calls on stack memory
        // and never returns, so no lock or allocator state inherited from another thread can be touched.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => guard_main(read),
            nix::unistd::ForkResult::Parent { child } => {
                drop(read);
                Ok(GroupGuard {
                    pipe: Some(File::from(write)),
                    pid: child,
                })
            }
        }
    }

    /// From now on, kill `group` when the owner dies.
    pub fn watch(&mut self, group: ProcessGroup) {
        self.send(group.id().as_raw());
    }

    /// `group` is gone (killed and reaped by the owner): forget it, so that its id, once reused, is not killed.
    pub fn forget(&mut self, group: ProcessGroup) {
        self.send(-group.id().as_raw());
    }

    fn send(&mut self, word: i32) {
        if let Some(pipe) = self.pipe.as_mut() {
            // A guard that is gone cannot be told anything; the owner's work goes on without it.
            let _ = pipe.write_all(&word.to_ne_bytes());
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Closing the pipe makes the guard kill what it still knows and exit; reap it.
        drop(self.pipe.take());
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(self.pid, None) {}
    }
}

/// The guard process: reads 4-byte group ids (negative: forget) until end-of-file, then kills the groups.
/// Async-signal-safe throughout (it runs in a child forked from a process that may have other threads).
fn guard_main(read: OwnedFd) -> ! {
    // Keep nothing of the owner's open files (sockets above all: holding one would hide the owner's death from
    // its peer) but the pipe.
    crate::process::close_descriptors_except(read.as_raw_fd());
    // Leave the owner's process group: the owner's group may be killed when the owner dies, and the guard must
    // outlive it to kill the groups it knows.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let mut groups = [0i32; GUARD_GROUPS];
    loop {
        let mut bytes = [0u8; 4];
        match nix::unistd::read(read.as_fd(), &mut bytes) {
            Ok(4) => {
                let id = i32::from_ne_bytes(bytes);
                if id > 0 {
                    if let Some(slot) = groups.iter_mut().find(|slot| **slot == 0) {
                        *slot = id;
                    }
                } else if let Some(slot) = groups.iter_mut().find(|slot| **slot == -id) {
                    *slot = 0;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // End-of-file (the owner is gone or dropped the guard), or a broken pipe: the end either way.
            _ => break,
        }
    }
    for &id in groups.iter().filter(|&&id| id > 0) {
        ProcessGroup::led_by(Pid::from_raw(id)).kill();
    }
    crate::process::exit_now(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Signal, has_exited, wait4};

    #[expect(
        clippy::zombie_processes,
        reason = "the sleeps are reaped by wait4, which clippy does not know"
    )]
    fn sleeper() -> Pid {
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("spawn sleep");
        Pid::from_raw(child.id() as i32)
    }

    /// Dropping the guard kills the groups it watches and not those it forgot.
    #[test]
    fn a_dropped_guard_kills_the_watched_groups_only() {
        let watched = sleeper();
        let forgotten = sleeper();
        let mut guard = GroupGuard::start().expect("guard");
        guard.watch(ProcessGroup::led_by(watched));
        guard.watch(ProcessGroup::led_by(forgotten));
        guard.forget(ProcessGroup::led_by(forgotten));
        drop(guard);
        let info = wait4(watched).expect("reap the watched sleep");
        assert_eq!(info.status, crate::process::ExitStatus::Signal(libc::SIGKILL));
        assert!(!has_exited(forgotten), "the forgotten group was killed");
        crate::process::signal_child(forgotten, Signal::SIGKILL).expect("kill");
        let info = wait4(forgotten).expect("reap");
        assert_eq!(info.status, crate::process::ExitStatus::Signal(libc::SIGKILL));
    }
}
