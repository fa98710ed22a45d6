//! Protocol decoding on arbitrary bytes: every message type the supervisor and the workers decode must come out
//! `Ok` or `Err`, never panic. Since protocol v2 (length-prefixed frames on a socket) no message carries a channel
//! handle, so every `FromWorker` variant, `Hello` included, is plain data. Whatever decodes must encode again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::item::{Batch, InputPlan, Value};
use shared::protocol::{FromWorker, ToWorker};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = postcard::from_bytes::<ToWorker>(data) {
        postcard::to_stdvec(&message).expect("a decoded ToWorker encodes");
    }
    if let Ok(message) = postcard::from_bytes::<FromWorker>(data) {
        postcard::to_stdvec(&message).expect("a decoded FromWorker encodes");
    }
    let _ = postcard::from_bytes::<Batch>(data);
    let _ = postcard::from_bytes::<InputPlan>(data);
    if let Ok(value) = postcard::from_bytes::<Value>(data) {
        let _ = serde_json::to_string(&value.json());
    }
});
