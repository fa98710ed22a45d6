//! Property tests of protocol decoding: arbitrary bytes never make the decoder panic.
//!
//! `ToWorker` and every `FromWorker` but `Hello` are plain data: `postcard::from_bytes` of any bytes is `Ok` or
//! `Err`. `Hello` carries an `IpcSender`, which ipc-channel decodes as an index into the file descriptors that
//! came with the message — outside a receive there are none, and inside one a corrupt index is out of bounds:
//! ipc-channel then panics. So `FromWorker` is tested the way the supervisor receives it: arbitrary bytes are sent
//! as the body of a real ipc-channel message and received as `FromWorker` through `shared::decode::guarded`.

use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcReceiver};
use proptest::prelude::*;
use serde::ser::{Serialize, SerializeTuple, Serializer};
use shared::item::{Batch, Value};
use shared::protocol::{FromWorker, ToWorker};

/// Bytes that postcard writes as they are (a tuple of `u8` has no length prefix): a message body of our choosing.
struct Raw(Vec<u8>);

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Raw is only sent"))
    }
}

/// Sends `bytes` as one message body and receives it as a `FromWorker`, as the supervisor's reader does.
fn receive_as_from_worker(bytes: Vec<u8>) -> Result<Result<FromWorker, IpcError>, String> {
    let (sender, receiver) = ipc::channel::<Raw>().expect("a channel");
    let receiver: IpcReceiver<FromWorker> = receiver.to_opaque().to();
    sender.send(Raw(bytes)).expect("send");
    shared::decode::guarded(|| receiver.recv())
}

/// The variant index postcard gives `FromWorker::Hello` (the first variant), then version 1 and pid 7, then a
/// channel index 0: a Hello naming a channel that the message does not carry.
const HELLO_WITHOUT_CHANNEL: &[u8] = &[0, 1, 7, 0];

#[test]
fn a_hello_naming_a_missing_channel_panics_inside_ipc_channel_and_is_caught() {
    // Unguarded, the decoding panics (this is the ipc-channel behaviour the guard exists for).
    let unguarded = std::panic::catch_unwind(|| postcard::from_bytes::<FromWorker>(HELLO_WITHOUT_CHANNEL));
    assert!(
        unguarded.is_err(),
        "ipc-channel no longer panics here: the guard may be unnecessary"
    );
    // Through a real channel and the guard, it is an error naming the cause.
    match receive_as_from_worker(HELLO_WITHOUT_CHANNEL.to_vec()) {
        Err(message) => assert!(message.contains("undecodable message"), "{message}"),
        Ok(other) => panic!("expected the guard to report the panic, got {other:?}"),
    }
}

/// Found by the `protocol` fuzz target: postcard accepts a non-canonical varint for the variant index, so a Hello
/// need not start with byte 0 ([0x80, 0x00] is 0 too). The guard catches it just the same.
#[test]
fn a_hello_with_a_non_canonical_variant_index_is_caught_too() {
    let bytes = [0x80, 0x00, 0, 0, 0, 0, 0, 3, 117, 98, 46, 0, 112, 106];
    assert!(std::panic::catch_unwind(|| postcard::from_bytes::<FromWorker>(&bytes)).is_err());
    assert!(receive_as_from_worker(bytes.to_vec()).is_err());
}

#[test]
fn a_valid_message_still_decodes_through_the_guard() {
    let bytes = postcard::to_stdvec(&FromWorker::InitFailed { message: "x".into() }).expect("encodes");
    match receive_as_from_worker(bytes) {
        Ok(Ok(FromWorker::InitFailed { message })) => assert_eq!(message, "x"),
        other => panic!("expected InitFailed, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn to_worker_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = postcard::from_bytes::<ToWorker>(&bytes);
        let _ = postcard::from_bytes::<Batch>(&bytes);
        let _ = postcard::from_bytes::<Value>(&bytes);
    }

    /// Every variant but `Hello` (index 0, however its varint is written) decodes from plain bytes without
    /// ipc-channel's context.
    #[test]
    fn from_worker_decoding_never_panics_except_hello(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        if postcard::take_from_bytes::<u32>(&bytes).is_ok_and(|(variant, _)| variant != 0) {
            let _ = postcard::from_bytes::<FromWorker>(&bytes);
        }
    }
}

proptest! {
    // Each case opens a channel (two sockets): fewer cases.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes at all, `Hello` included, received as the supervisor receives them: `Ok` or `Err`, never a
    /// panic that escapes.
    #[test]
    fn from_worker_received_through_the_guard_never_panics(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..96),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(|tail| [&[0u8, 1][..], &tail].concat()),
        ],
    ) {
        let _ = receive_as_from_worker(bytes);
    }
}
