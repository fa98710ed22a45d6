//! Receiving messages that may be corrupt without panicking.
//!
//! ipc-channel decodes a received channel handle (the `IpcSender` in [`crate::protocol::FromWorker::Hello`]) by
//! indexing the file descriptors that came with the message: a message whose bytes name a handle that was not
//! sent (a corrupt or hostile peer) panics inside ipc-channel (`index out of bounds`, ipc-channel 0.23
//! `deserialize_os_ipc_sender`, marked FIXME there). Every other malformed message is an ordinary `Err`. The
//! supervisor receives through [`guarded`], which turns such a panic into an error for that one worker.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `receive` (a `recv()` or `accept()` of ipc-channel); a panic while decoding becomes `Err` with its message.
pub fn guarded<R>(receive: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(receive)).map_err(|payload| {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        format!("undecodable message (decoding it panicked: {text})")
    })
}
