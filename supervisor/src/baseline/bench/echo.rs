//! The far side of the round-trip and hand-off measurements: a child process of the same binary that answers.
//!
//! `supervisor __bench-echo ipc <server-name>` connects to the bench's `IpcOneShotServer`, says hello with the
//! senders of two channels it reads (typed [`Down`] messages, and raw bytes), and then answers every request:
//! a ping with the same number, a hand-off (bytes on the bytes channel, or a shared region the bench just
//! filled) with the sum of the first byte of every 4 KiB page, which proves it saw the new data and touched
//! every page. `supervisor __bench-echo frames` answers framed [`Down::Ping`]s on the Unix socket it gets as
//! stdin, exactly as a worker talks to the supervisor (`shared::frame`: a 4-byte length, then postcard).
//! `supervisor __bench-echo pipe` copies 8-byte words from stdin to stdout: the raw floor that any channel
//! between two processes pays.
//!
//! Both modes exit 0 when the bench closes their input, so a bench that dies takes them with it. Like
//! `__worker`, these modes are dispatched in `main` before the command line is parsed and never start the
//! async runtime.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcBytesSender, IpcSender};
use serde::{Deserialize, Serialize};
use shared::exit;
use shared::region::SharedRegion;

/// First argument that makes the `supervisor` binary run as the echo side of `supervisor bench`.
pub const ECHO_ARG: &str = "__bench-echo";

/// Pages of a hand-off are touched at this stride.
pub const PAGE: usize = 4096;

/// Bench → echo.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    /// Answer [`Up::Pong`] with the same number.
    Ping(u64),
    /// The next `count` messages on the bytes channel are hand-offs: touch each and answer [`Up::Touched`].
    ReceiveBytes { count: u64 },
    /// Map the shared region at this `/proc/<pid>/fd/<n>` path and answer [`Up::Mapped`].
    MapShared { path: PathBuf },
    /// The shared region holds a new hand-off of `len` bytes: touch it and answer [`Up::Touched`].
    SharedFilled { len: u64 },
}

/// Echo → bench.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
    /// First message: where to send requests and bytes.
    Hello {
        down: IpcSender<Down>,
        bytes: IpcBytesSender,
    },
    Pong(u64),
    Mapped,
    /// A hand-off was received: the sum of the first byte of each of its pages.
    Touched {
        sum: u64,
    },
    /// A request could not be served (e.g. the region cannot be mapped); the echo exits after sending this.
    Failed {
        message: String,
    },
    /// Never sent by the echo: the bench sends it to its own bootstrap server when the echo died before
    /// connecting, to unblock `accept()`.
    NeverConnected,
}

/// Sum of the first byte of every page of `bytes`.
pub fn touch_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(PAGE).map(|&byte| u64::from(byte)).sum()
}

/// Sum of the first byte of every page of the first `len` bytes of a shared region.
fn touch_words(words: &[AtomicU64], len: usize) -> u64 {
    // Acquire: the write that filled the region happened before the message that announced it.
    words
        .iter()
        .step_by(PAGE / size_of::<u64>())
        .take(len.div_ceil(PAGE))
        .map(|word| word.load(Ordering::Acquire).to_le_bytes()[0] as u64)
        .sum()
}

/// `supervisor __bench-echo MODE [NAME]`: returns the exit code.
pub fn main(mut args: impl Iterator<Item = OsString>) -> i32 {
    let mode = args.next().and_then(|mode| mode.into_string().ok());
    let result = match mode.as_deref() {
        Some("ipc") => match args.next().and_then(|name| name.into_string().ok()) {
            Some(name) => serve_ipc(&name),
            None => Err("expected the bench's channel name after `ipc`".to_string()),
        },
        Some("pipe") => serve_pipe(),
        Some("frames") => serve_frames(),
        _ => Err("expected `ipc <server-name>`, `frames` or `pipe`".to_string()),
    };
    match result {
        Ok(()) => exit::OK,
        Err(message) => {
            eprintln!("bench echo: {message}");
            exit::INTERNAL
        }
    }
}

fn serve_ipc(server_name: &str) -> Result<(), String> {
    let up = IpcSender::<Up>::connect(server_name.to_string())
        .map_err(|error| format!("cannot connect to {server_name}: {error}"))?;
    let (down, requests) = ipc::channel::<Down>().map_err(|error| format!("cannot create a channel: {error}"))?;
    let (bytes, hand_offs) = ipc::bytes_channel().map_err(|error| format!("cannot create a channel: {error}"))?;
    let send = |message: Up| up.send(message).map_err(|error| format!("cannot answer: {error}"));
    send(Up::Hello { down, bytes })?;
    let mut region: Option<SharedRegion> = None;
    loop {
        let request = match requests.recv() {
            Ok(request) => request,
            Err(IpcError::Disconnected) => return Ok(()),
            Err(error) => return Err(format!("cannot receive a request: {error}")),
        };
        match request {
            Down::Ping(n) => send(Up::Pong(n))?,
            Down::ReceiveBytes { count } => {
                for _ in 0..count {
                    let data = hand_offs
                        .recv()
                        .map_err(|error| format!("cannot receive a hand-off: {error}"))?;
                    send(Up::Touched {
                        sum: touch_bytes(&data),
                    })?;
                }
            }
            Down::MapShared { path } => match SharedRegion::open(&path) {
                Ok(mapped) => {
                    region = Some(mapped);
                    send(Up::Mapped)?;
                }
                Err(error) => {
                    let message = format!("cannot map {}: {error}", path.display());
                    send(Up::Failed {
                        message: message.clone(),
                    })?;
                    return Err(message);
                }
            },
            Down::SharedFilled { len } => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let Some(mapped) = region.as_ref().filter(|mapped| len <= mapped.len()) else {
                    let message = format!("no shared region of {len} bytes is mapped");
                    send(Up::Failed {
                        message: message.clone(),
                    })?;
                    return Err(message);
                };
                send(Up::Touched {
                    sum: touch_words(mapped.words(), len),
                })?;
            }
        }
    }
}

/// Answers each framed `Down::Ping(n)` on stdin (a Unix socket) with a framed `Up::Pong(n)`, until EOF: the
/// supervisor–worker transport (`shared::frame`), with a decode and an encode per message.
fn serve_frames() -> Result<(), String> {
    let socket = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from)
        .map_err(|error| format!("cannot use stdin: {error}"))?;
    let mut buffer = Vec::new();
    loop {
        match shared::frame::read_into(&socket, shared::frame::MAX_TO_WORKER, &mut buffer) {
            Ok(()) => {}
            Err(shared::frame::FrameError::Closed) => return Ok(()),
            Err(error) => return Err(format!("cannot read a frame: {error}")),
        }
        match postcard::from_bytes::<Down>(&buffer) {
            Ok(Down::Ping(n)) => {
                shared::frame::write(&socket, &Up::Pong(n)).map_err(|error| format!("cannot answer: {error}"))?
            }
            Ok(other) => return Err(format!("expected a ping, got {other:?}")),
            Err(error) => return Err(format!("cannot decode a frame: {error}")),
        }
    }
}

/// Copies 8-byte words from stdin to stdout, unbuffered (one `read` and one `write` per word), until EOF.
fn serve_pipe() -> Result<(), String> {
    let own = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|error| format!("cannot use stdin/stdout: {error}"))
    };
    let mut input = own(std::io::stdin().as_fd())?;
    let mut output = own(std::io::stdout().as_fd())?;
    let mut word = [0u8; 8];
    loop {
        match input.read_exact(&mut word) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(format!("cannot read: {error}")),
        }
        output
            .write_all(&word)
            .map_err(|error| format!("cannot write: {error}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_reads_the_first_byte_of_every_page() {
        let mut bytes = vec![0u8; 3 * PAGE + 1];
        for (page, value) in [(0, 1u8), (1, 2), (2, 3), (3, 4)] {
            bytes[page * PAGE] = value;
        }
        bytes[1] = 100; // not the first byte of a page: not read
        assert_eq!(touch_bytes(&bytes), 10);
        let region = SharedRegion::create(4 * PAGE).expect("memfd");
        region.write(0, &bytes).expect("fits");
        assert_eq!(touch_words(region.words(), bytes.len()), 10);
        assert_eq!(
            touch_words(region.words(), 2 * PAGE),
            3,
            "only the pages of the hand-off"
        );
    }
}
