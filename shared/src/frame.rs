//! Framing of protocol messages on a worker's stream socket, with a hard limit on what a peer can make the reader
//! allocate.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of one postcard-encoded message. The
//! reader checks the declared length against its limit *before* allocating anything, so a worker that declares
//! a 1 GiB message costs the supervisor nothing but the 4 header bytes: the frame is refused and the worker is
//! killed. (ipc-channel, which carried these messages before, reserves whatever total size the sender's
//! header declares, then decodes a second copy: a 1 GiB message took the receiver to 2 GiB of peak RSS.)
//!
//! Decoding and validating a frame is the caller's business: the supervisor decodes on its dispatcher, one frame
//! at a time, and the reader thread only ever holds raw bytes.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length header in front of every frame.
pub const HEADER_BYTES: usize = 4;

/// The largest frame the supervisor reads from a worker. An honest worker never comes close: it sends a result
/// value of at most [`MAX_RESULT_BYTES`] and flushes its pending results before they pass
/// [`RESULT_FLUSH_BYTES`], so its frames stay below 1 MiB plus one outcome.
pub const MAX_FROM_WORKER: u32 = 2 << 20;

/// The largest frame a worker reads from the supervisor (a batch of 1024 long paths is about 4 MiB).
pub const MAX_TO_WORKER: u32 = 64 << 20;

/// The largest encoded result value of one item. A task that returns more fails that item (the results file
/// holds one line per item; a value this large belongs in a file of its own).
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// Nesting depth a result value may have (lists and maps inside each other). Deeper values fail their item in
/// the worker, and the supervisor refuses to decode them: recursion that deep could overflow a stack.
pub const MAX_VALUE_DEPTH: usize = 64;

/// Longest task error or `InitFailed` message kept, in bytes; longer ones are cut (at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// A worker sends its pending results once they take this many encoded bytes, without waiting for the
/// flush interval.
pub const RESULT_FLUSH_BYTES: usize = 1 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream between frames: the normal end.
    #[error("end of stream")]
    Closed,
    #[error("sent a message of {declared} bytes, more than the limit of {limit} bytes")]
    TooLarge { declared: u64, limit: u32 },
    #[error("sent an empty message")]
    Empty,
    /// The stream ended in the middle of a frame, or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Encodes `message` as one frame: header and body in one buffer, so one `write_all` sends it.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut frame = postcard::to_extend(message, vec![0u8; HEADER_BYTES])?;
    let len = u32::try_from(frame.len() - HEADER_BYTES).map_err(|_| postcard::Error::SerializeBufferFull)?;
    frame[..HEADER_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Writes `message` as one frame.
pub fn write<T: Serialize>(mut to: impl Write, message: &T) -> io::Result<()> {
    let frame = encode(message).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    to.write_all(&frame)
}

/// Reads the next frame's body into `buffer` (replacing its contents), refusing a declared length above
/// `limit` before allocating for it.
pub fn read_into(mut from: impl Read, limit: u32, buffer: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match from.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(FrameError::Io(error)),
        }
    }
    let len = u32::from_le_bytes(header);
    if len > limit {
        return Err(FrameError::TooLarge {
            declared: u64::from(len),
            limit,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    buffer.clear();
    buffer.resize(len as usize, 0);
    from.read_exact(buffer)?;
    Ok(())
}

/// Reads and decodes the next frame (for the worker side and for small handshake messages).
pub fn read<T: DeserializeOwned>(from: impl Read, limit: u32) -> Result<T, ReadError> {
    let mut buffer = Vec::new();
    read_into(from, limit, &mut buffer)?;
    postcard::from_bytes(&buffer).map_err(ReadError::Decode)
}

/// Why a message could not be read: no frame, or a frame that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("sent an undecodable message: {0}")]
    Decode(postcard::Error),
}

/// `text` cut to at most [`MAX_MESSAGE_BYTES`] bytes, at a character boundary, marked when cut.
pub fn truncate_message(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = text.len() - end;
        text.truncate(end);
        text.push_str(&format!("… ({cut} more bytes cut)"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let frame = encode(&(7u32, "seven".to_string())).expect("encodes");
        assert_eq!(
            u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize,
            frame.len() - 4
        );
        let back: (u32, String) = read(&frame[..], 1024).expect("reads");
        assert_eq!(back, (7, "seven".to_string()));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_reading_it() {
        // Only the header exists: a reader that tried to read (or allocate) the body would fail differently.
        let header = (1u32 << 30).to_le_bytes();
        let mut buffer = Vec::new();
        match read_into(&header[..], MAX_FROM_WORKER, &mut buffer) {
            Err(FrameError::TooLarge { declared, limit }) => {
                assert_eq!((declared, limit), (1 << 30, MAX_FROM_WORKER));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(buffer.capacity(), 0);
    }

    #[test]
    fn end_of_stream_between_frames_is_closed_and_inside_a_frame_is_an_error() {
        let mut buffer = Vec::new();
        assert!(matches!(read_into(&[][..], 16, &mut buffer), Err(FrameError::Closed)));
        assert!(matches!(
            read_into(&[3, 0][..], 16, &mut buffer),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_into(&[3, 0, 0, 0, 1][..], 16, &mut buffer),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_into(&[0, 0, 0, 0][..], 16, &mut buffer),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate_message(long);
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!(
            "… ({} more bytes cut)",
            2 * MAX_MESSAGE_BYTES - MAX_MESSAGE_BYTES
        )));
        assert_eq!(truncate_message("short".into()), "short");
    }
}
