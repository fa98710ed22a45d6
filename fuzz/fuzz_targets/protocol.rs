//! Protocol decoding on arbitrary bytes: every message type the supervisor and the workers decode must come out
//! `Ok` or `Err`, never panic. `FromWorker::Hello` (variant 0) is left out: it carries an `IpcSender`, which only
//! decodes inside an ipc-channel receive (outside one, and with a corrupt index inside one, ipc-channel panics;
//! the supervisor catches that with `shared::decode::guarded`, tested in `shared/tests/proptest_protocol.rs`).
//! Whatever decodes must encode again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::item::{Batch, InputPlan, Value};
use shared::protocol::{FromWorker, ToWorker};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = postcard::from_bytes::<ToWorker>(data) {
        postcard::to_stdvec(&message).expect("a decoded ToWorker encodes");
    }
    // The variant index is a varint, which postcard also accepts in a non-canonical form ([0x80, 0x00] is 0):
    // decode it as postcard does rather than looking at the first byte (an earlier version of this target did,
    // and found Hello that way).
    let variant = postcard::take_from_bytes::<u32>(data).map(|(variant, _)| variant);
    if variant.is_ok_and(|variant| variant != 0)
        && let Ok(message) = postcard::from_bytes::<FromWorker>(data)
    {
        postcard::to_stdvec(&message).expect("a decoded FromWorker encodes");
    }
    let _ = postcard::from_bytes::<Batch>(data);
    let _ = postcard::from_bytes::<InputPlan>(data);
    if let Ok(value) = postcard::from_bytes::<Value>(data) {
        let _ = serde_json::to_string(&value.json());
    }
});
