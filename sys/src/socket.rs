//! Descriptors between processes: `SOCK_SEQPACKET` pairs (message boundaries kept), messages that carry file
//! descriptors (`SCM_RIGHTS`), pipes, descriptor flags (non-blocking, close-on-exec), and waiting for
//! descriptors with a deadline.
//!
//! What the messages mean is the caller's (the fork server's protocol); this module moves bytes and descriptors.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};

/// A connected pair of close-on-exec `SOCK_SEQPACKET` sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Most file descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// Sends one message with `fds` attached (at most [`MAX_FDS`]). With `deadline`, a peer that does not make room
/// in time (one that is stopped, say) is an error of kind `TimedOut` instead of a wait without end.
pub fn send_message(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<Duration>,
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let control: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if deadline.is_some() {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match socket::sendmsg::<()>(socket.as_raw_fd(), &iov, control, flags, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                let Some(deadline) = deadline else { continue };
                if !poll(&[(socket, Interest::Write)], Some(deadline))?[0] {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took no message for {deadline:?}"),
                    ));
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Receives one message into `buffer`: its length (0 at end of stream) and the fds attached to it, in order
/// (close-on-exec).
pub fn recv_message(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buffer)];
    let (len, raw) = loop {
        match socket::recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
            Ok(message) => {
                let mut raw = Vec::new();
                for cmsg in message.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        raw.extend(fds);
                    }
                }
                break (message.bytes, raw);
            }
        }
    };
    let fds = raw
        .into_iter()
        // SAFETY: each descriptor was just received with SCM_RIGHTS: the kernel installed it in this process for
        // this message, and nothing else owns it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    Ok((len, fds))
}

/// Waits until one of `fds` is readable (or hung up), at most `timeout` (`None`: without limit); returns which,
/// in order (all false when the time ran out).
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let fds: Vec<(BorrowedFd<'_>, Interest)> = fds.iter().map(|&fd| (fd, Interest::Read)).collect();
    poll(&fds, timeout)
}

/// What [`poll`] waits for on one descriptor. A hang-up or an error counts as ready either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

/// Waits until one of `fds` is ready as asked, at most `timeout` (`None`: without limit; zero: only looks);
/// returns which, in order (all false when the time ran out). An interrupted wait goes on for what is left of
/// `timeout`, rounded up to a millisecond, so that the time has passed when nothing is ready.
pub fn poll(fds: &[(BorrowedFd<'_>, Interest)], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, interest)| {
            let events = match interest {
                Interest::Read => PollFlags::POLLIN,
                Interest::Write => PollFlags::POLLOUT,
            };
            PollFd::new(fd.as_fd(), events)
        })
        .collect();
    // Longer than an Instant can reach: the same as no limit.
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let millis = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
                // Longer than poll can say (24 days): the same as no limit for any caller here.
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut polled, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
            Ok(_) => {
                return Ok(polled
                    .iter()
                    .map(|p| p.revents().is_some_and(|revents| !revents.is_empty()))
                    .collect());
            }
        }
    }
}

/// Makes reads and writes on `fd` return `WouldBlock` instead of blocking (`O_NONBLOCK`, set on the open file
/// description: every descriptor of it, in any process, sees the change).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sets or clears `FD_CLOEXEC` on `fd`: whether a program this process starts inherits it.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let mut flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Moves the socket a process was given as its stdin to a close-on-exec descriptor (so that a program it runs
/// does not inherit it), and puts /dev/null in its place. Anything but a socket on fd 0 is refused.
pub fn take_socket_from_stdin() -> io::Result<OwnedFd> {
    let stdin = io::stdin();
    let stat = nix::sys::stat::fstat(stdin.as_fd())?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other(
            "stdin is not a socket (workers are started by the supervisor, not by hand)",
        ));
    }
    // std duplicates with F_DUPFD_CLOEXEC: the copy is close-on-exec and above the standard descriptors.
    let socket = stdin.as_fd().try_clone_to_owned()?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_a_file_descriptor() {
        let (a, b) = seqpacket_pair().expect("pair");
        let (read, write) = pipe().expect("pipe");
        let (other_read, other_write) = pipe().expect("pipe");
        send_message(a.as_fd(), b"hello", &[other_read.as_fd(), read.as_fd()], None).expect("send");
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

    /// A full non-blocking pipe: writing says `WouldBlock`, polling for writing times out, and reading makes
    /// room, after which polling for writing says ready; polling for reading sees what was written.
    #[test]
    fn a_non_blocking_pipe_is_polled_for_writing_and_reading() {
        let (read, write) = pipe().expect("pipe");
        set_nonblocking(write.as_fd()).expect("O_NONBLOCK");
        let mut writer = std::fs::File::from(write);
        let mut written = 0usize;
        let error = loop {
            match std::io::Write::write(&mut writer, &[1u8; 4096]) {
                Ok(n) => written += n,
                Err(error) => break error,
            }
            assert!(written < 1 << 30, "the pipe never filled");
        };
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        let both = [(read.as_fd(), Interest::Read), (writer.as_fd(), Interest::Write)];
        assert_eq!(
            poll(&both, Some(Duration::from_millis(10))).expect("poll"),
            [true, false]
        );
        let mut reader = std::fs::File::from(read);
        let mut buffer = vec![0u8; written];
        std::io::Read::read_exact(&mut reader, &mut buffer).expect("drain");
        assert!(buffer.iter().all(|&b| b == 1));
        let both = [(reader.as_fd(), Interest::Read), (writer.as_fd(), Interest::Write)];
        assert_eq!(poll(&both, None).expect("poll"), [false, true]);
    }

    /// Clearing `FD_CLOEXEC` is what lets a program started meanwhile inherit a descriptor; setting it again
    /// restores close-on-exec.
    #[test]
    fn cloexec_is_cleared_and_set_again() {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let (read, _write) = pipe().expect("pipe");
        let flags = |fd: BorrowedFd<'_>| FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD"));
        assert!(flags(read.as_fd()).contains(FdFlag::FD_CLOEXEC));
        set_cloexec(read.as_fd(), false).expect("clear");
        assert!(!flags(read.as_fd()).contains(FdFlag::FD_CLOEXEC));
        set_cloexec(read.as_fd(), true).expect("set");
        assert!(flags(read.as_fd()).contains(FdFlag::FD_CLOEXEC));
    }

    /// A peer that never reads (a stopped fork server) makes a send with a deadline fail, not block.
    #[test]
    fn a_send_to_a_peer_that_never_reads_times_out() {
        let (a, _b) = seqpacket_pair().expect("pair");
        let message = vec![7u8; 1024];
        let mut sent = 0usize;
        let error = loop {
            match send_message(a.as_fd(), &message, &[], Some(Duration::from_millis(50))) {
                Ok(()) => sent += 1,
                Err(error) => break error,
            }
            assert!(sent < 1_000_000, "the socket buffer never filled");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(sent > 0);
        let ready = poll_readable(&[_b.as_fd()], Some(Duration::ZERO)).expect("poll");
        assert_eq!(ready, [true]);
        let (_c, d) = seqpacket_pair().expect("pair");
        assert_eq!(
            poll_readable(&[d.as_fd()], Some(Duration::from_millis(10))).expect("poll"),
            [false]
        );
    }
}
