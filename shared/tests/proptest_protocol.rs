//! Property tests of protocol decoding: arbitrary bytes never make the decoder panic.
//!
//! Since protocol v2 every message is plain data in a length-prefixed frame (`shared::frame`): no message carries
//! a channel handle, so `postcard::from_bytes` of any bytes is `Ok` or `Err`, for `Hello` too. (Under ipc-channel,
//! a `Hello` naming a channel handle the message did not carry panicked inside ipc-channel's decoder; the
//! regression test below keeps those inputs.)

use proptest::prelude::*;
use shared::item::{Batch, Value};
use shared::protocol::{FromWorker, PROTOCOL_VERSION, ToWorker};

#[test]
fn former_ipc_channel_panics_are_ordinary_results_now() {
    // The variant index of `Hello`, then version 1 and pid 7, then what was a channel index 0.
    let _ = postcard::from_bytes::<FromWorker>(&[0, 1, 7, 0]);
    // Found by the `protocol` fuzz target: a non-canonical varint for the variant index ([0x80, 0x00] is 0 too).
    let _ = postcard::from_bytes::<FromWorker>(&[0x80, 0x00, 0, 0, 0, 0, 0, 3, 117, 98, 46, 0, 112, 106]);
}

#[test]
fn a_valid_hello_decodes() {
    let hello = FromWorker::Hello {
        version: PROTOCOL_VERSION,
        pid: 7,
    };
    let bytes = postcard::to_stdvec(&hello).expect("encodes");
    match postcard::from_bytes::<FromWorker>(&bytes) {
        Ok(FromWorker::Hello { version, pid }) => assert_eq!((version, pid), (PROTOCOL_VERSION, 7)),
        other => panic!("expected Hello, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn to_worker_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = postcard::from_bytes::<ToWorker>(&bytes);
        let _ = postcard::from_bytes::<Batch>(&bytes);
        let _ = postcard::from_bytes::<Value>(&bytes);
    }

    #[test]
    fn from_worker_decoding_never_panics(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            // Every variant index, followed by arbitrary bytes.
            (0u8..8, prop::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(variant, tail)| [&[variant][..], &tail].concat()),
        ],
    ) {
        let _ = postcard::from_bytes::<FromWorker>(&bytes);
    }
}
