//! Linux process primitives the pool needs and std/nix do not wrap: pidfds (signals that cannot hit a recycled
//! pid), `wait4` with resource usage, signal names, and the socket and fork calls of the fork server
//! (`SOCK_SEQPACKET` pairs, passing a file descriptor with `SCM_RIGHTS`, `fork`, `close_range`); and CPU
//! affinity, with which `supervisor bench` pins the two ends of a round trip.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Adopts a pidfd received from another process.
    pub fn from_owned(fd: OwnedFd) -> Pidfd {
        Pidfd(fd)
    }

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

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), in increasing order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into `set`, which is valid and
    // exclusively borrowed for the call.
    check(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } as libc::c_long)?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads bit `cpu` of the set, and `cpu` is below CPU_SETSIZE, the bits a set holds.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts thread `tid` (0: the calling thread; a process's pid names its main thread) to `cpus`
/// (`sched_setaffinity`). Threads it starts later inherit the restriction.
pub fn set_affinity(tid: i32, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no CPU {cpu}")));
        }
        // SAFETY: CPU_SET sets bit `cpu` of the set, and `cpu` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from `set`, a valid, initialized set.
    check(unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } as libc::c_long)?;
    Ok(())
}

/// `SIGSEGV` for 11, and so on; `signal N` for numbers without a name.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A connected pair of close-on-exec `SOCK_SEQPACKET` sockets (message boundaries are kept).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the valid two-element array.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } as libc::c_long)?;
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the valid two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most file descriptors one message carries.
const MAX_FDS: usize = 4;

/// Sends one message with `fds` attached (`SCM_RIGHTS`; at most four).
pub fn send_message(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for one control message carrying MAX_FDS fds, aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain old data; all-zero is valid (no name, no control).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = (size_of::<RawFd>() * fds.len()) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space;
        // SAFETY: msg_control points at `control`, which is larger than `space` and aligned; CMSG_FIRSTHDR returns
        // a pointer into it, and the fds are written within the message's data area.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (k, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(k), fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: header points at live buffers for the duration of the call.
        match check(unsafe { libc::sendmsg(socket.as_raw_fd(), &header, libc::MSG_NOSIGNAL) } as libc::c_long) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one message into `buffer`: its length (0 at end of stream) and the fds attached to it, in order.
pub fn recv_message(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = size_of_val(&control);
    let len = loop {
        // SAFETY: header points at live, writable buffers; MSG_CMSG_CLOEXEC makes received fds close-on-exec.
        match check(unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) } as libc::c_long) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
            Ok(len) => break len as usize,
        }
    };
    let mut received = Vec::new();
    // SAFETY: the kernel filled `control` and set msg_controllen; CMSG_FIRSTHDR/NXTHDR stay within it, and the
    // number of fds is derived from the message's own length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for k in 0..count {
                    received.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok((len, received))
}

/// Waits until one of `fds` is readable (or hung up); returns which, in order.
pub fn poll_readable(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: polled is a valid array of pollfd of the given length.
        match check(unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) } as libc::c_long) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
            Ok(_) => return Ok(polled.iter().map(|p| p.revents != 0).collect()),
        }
    }
}

/// The two sides of a `fork`.
#[derive(Debug)]
pub enum Forked {
    Parent { child: i32 },
    Child,
}

/// Forks this process.
///
/// # Safety
/// The calling process must be single-threaded (in a multi-threaded process the child may deadlock on a lock
/// another thread held at the time of the fork).
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded.
    match check(unsafe { libc::fork() } as libc::c_long)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { child: pid as i32 }),
    }
}

/// In a freshly forked child: makes `stdin` its fd 0, /dev/null its fd 1 and `stderr` its fd 2, and closes every
/// other fd.
pub fn redirect_and_close_others(stdin: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> io::Result<()> {
    let null = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    for (from, to) in [(stdin, 0), (null.as_fd(), 1), (stderr, 2)] {
        // SAFETY: dup2 onto the standard fds, which this process owns.
        check(unsafe { libc::dup2(from.as_raw_fd(), to) } as libc::c_long)?;
    }
    // SAFETY: closes fds 3 and up; nothing in this fresh child uses them (their owners were in the parent).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed < 0 {
        for fd in 3..4096 {
            // SAFETY: as above; closing an fd that is not open is harmless (EBADF).
            unsafe { libc::close(fd) };
        }
    }
    // The fds `null`, `stdin` and `stderr` refer to are closed by close_range; do not close them again.
    std::mem::forget(null);
    Ok(())
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

    #[test]
    fn messages_carry_a_file_descriptor() {
        let (a, b) = seqpacket_pair().expect("pair");
        let (read, write) = pipe().expect("pipe");
        let (other_read, other_write) = pipe().expect("pipe");
        send_message(a.as_fd(), b"hello", &[other_read.as_fd(), read.as_fd()]).expect("send");
        drop((read, other_read, other_write));
        let mut buffer = [0u8; 64];
        let (len, mut fds) = recv_message(b.as_fd(), &mut buffer).expect("recv");
        assert_eq!(&buffer[..len], b"hello");
        assert_eq!(fds.len(), 2);
        let mut received = std::fs::File::from(fds.pop().expect("the second fd is the pipe written below"));
        std::io::Write::write_all(&mut std::fs::File::from(write), b"through the pipe").expect("write");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut received, &mut text).expect("read");
        assert_eq!(text, "through the pipe");
        drop(a);
        assert_eq!(recv_message(b.as_fd(), &mut buffer).expect("eof").0, 0);
    }

    #[test]
    fn affinity_pins_a_thread_and_is_restored() {
        // On a thread of its own, so that no other test runs pinned.
        std::thread::spawn(|| {
            let cpus = allowed_cpus().expect("sched_getaffinity");
            assert!(!cpus.is_empty());
            set_affinity(0, &cpus[..1]).expect("pin");
            assert_eq!(allowed_cpus().expect("sched_getaffinity"), &cpus[..1]);
            set_affinity(0, &cpus).expect("restore");
            assert_eq!(allowed_cpus().expect("sched_getaffinity"), cpus);
            assert!(set_affinity(0, &[libc::CPU_SETSIZE as usize]).is_err());
        })
        .join()
        .expect("the test thread");
    }
}
