//! The wire format does not change by accident: encoded samples of every message (protocol version 2) are
//! committed under `tests/protocol-v2/`, and this test checks that today's code decodes each into the expected
//! value and encodes that value into the same bytes. After an intended change, bump `PROTOCOL_VERSION`, and
//! write new samples with `BLESS=1 cargo test -p shared --test protocol_samples`.
//!
//! Version 2 changed the transport (framed messages on a socket instead of ipc-channel) and `Hello` (no channel
//! handle, no `NeverConnected`); the encodings of the other messages are those of version 1.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::item::{Batch, BatchItems, Chunk, FetchedBody, InputPlan, Value};
use shared::protocol::{
    Credentials, FromWorker, Isolation, Outcome, PROTOCOL_VERSION, TaskError, TaskErrorKind, ToWorker, WorkerLimits,
};

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protocol-v2")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check<T: Serialize + DeserializeOwned + std::fmt::Debug>(name: &str, value: &T, same: impl Fn(&T, &T) -> bool) {
    let encoded = postcard::to_stdvec(value).expect("encodes");
    let path = samples_dir().join(format!("{name}.hex"));
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(samples_dir()).expect("samples dir");
        std::fs::write(&path, hex(&encoded) + "\n").expect("write sample");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let committed = committed.trim();
    let bytes: Vec<u8> = (0..committed.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&committed[i..i + 2], 16).expect("hex"))
        .collect();
    let decoded: T = postcard::from_bytes(&bytes).unwrap_or_else(|error| panic!("{name}: cannot decode: {error}"));
    assert!(
        same(&decoded, value),
        "{name}: decodes to {decoded:?}, expected {value:?}"
    );
    assert_eq!(
        hex(&encoded),
        committed,
        "{name}: the encoding changed (bump PROTOCOL_VERSION and bless)"
    );
}

fn debug_eq<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn version_two_samples_still_decode_and_encode_identically() {
    assert_eq!(
        PROTOCOL_VERSION, 2,
        "new version: write samples under tests/protocol-v{PROTOCOL_VERSION}"
    );
    let init = ToWorker::Init {
        task: "grep".into(),
        args_json: r#"{"pattern":"a+"}"#.into(),
        input: InputPlan::File {
            path: "/data/big.log".into(),
        },
        limits: WorkerLimits {
            memory_bytes: Some(512 << 20),
            cpu_seconds_per_item: Some(3),
            core_dumps: false,
        },
        progress: Some("/proc/1/fd/7".into()),
        isolation: Isolation {
            open_files: Some(1024),
            env_clear: true,
            env: vec![("LANG".into(), "C.UTF-8".into())],
            credentials: Some(Credentials { uid: 65534, gid: 65534 }),
        },
    };
    check("to-worker-init", &init, debug_eq);
    let init_arena = ToWorker::Init {
        task: "sha256".into(),
        args_json: "{}".into(),
        input: InputPlan::Arena {
            path: "/proc/1/fd/9".into(),
        },
        limits: WorkerLimits::default(),
        progress: Some("/proc/1/fd/7".into()),
        isolation: Isolation::default(),
    };
    check("to-worker-init-arena", &init_arena, debug_eq);
    let batches = [
        (
            "to-worker-batch-range",
            Batch {
                id: 7,
                first: 100,
                items: BatchItems::Range { count: 16 },
            },
        ),
        (
            "to-worker-batch-chunks",
            Batch {
                id: 8,
                first: 3,
                items: BatchItems::Chunks(vec![Chunk { offset: 0, len: 4096 }, Chunk { offset: 4096, len: 17 }]),
            },
        ),
        (
            "to-worker-batch-files",
            Batch {
                id: 9,
                first: 0,
                items: BatchItems::Files(vec!["/a/b.jpg".into()]),
            },
        ),
        (
            "to-worker-batch-fetched",
            Batch {
                id: 10,
                first: 5,
                items: BatchItems::Fetched(vec![
                    FetchedBody {
                        offset: 0,
                        len: 5000,
                        url: "http://127.0.0.1:8000/a.png".into(),
                    },
                    FetchedBody {
                        offset: 8192,
                        len: 0,
                        url: "https://example.org/b".into(),
                    },
                ]),
            },
        ),
    ];
    for (name, batch) in batches {
        check(name, &ToWorker::Batch(batch), debug_eq);
    }
    check("to-worker-shutdown", &ToWorker::Shutdown, debug_eq);
    check("from-worker-ready", &FromWorker::Ready, debug_eq);
    check(
        "from-worker-hello",
        &FromWorker::Hello {
            version: PROTOCOL_VERSION,
            pid: 4242,
        },
        debug_eq,
    );
    check(
        "from-worker-init-failed",
        &FromWorker::InitFailed {
            message: "no such file".into(),
        },
        debug_eq,
    );
    let results = FromWorker::Results {
        batch: 7,
        first: 100,
        outcomes: vec![
            Outcome {
                elapsed_us: 12,
                result: Ok(Value::UInt(u128::from(u64::MAX) + 1)),
            },
            Outcome {
                elapsed_us: 3,
                result: Ok(Value::Map(vec![
                    ("w".into(), Value::Int(-2)),
                    ("t".into(), Value::Text("x".into())),
                ])),
            },
            Outcome {
                elapsed_us: 0,
                result: Err(TaskError {
                    kind: TaskErrorKind::Panic,
                    message: "boom".into(),
                }),
            },
            Outcome {
                elapsed_us: 1,
                result: Ok(Value::List(vec![Value::Float(1.5), Value::Bool(true), Value::Null])),
            },
        ],
    };
    check("from-worker-results", &results, debug_eq);
}

/// Added to version 1 for the user's own work (issue 7): new variants at the end of their enums, so every
/// sample above still encodes identically and an older message still decodes.
#[test]
fn user_work_samples_still_decode_and_encode_identically() {
    check("to-worker-identity", &ToWorker::Identity { worker: 3 }, debug_eq);
    check(
        "to-worker-attempt",
        &ToWorker::Attempt { item: 41, attempt: 2 },
        debug_eq,
    );
    let failures = FromWorker::Results {
        batch: 2,
        first: 40,
        outcomes: vec![
            Outcome {
                elapsed_us: 900,
                result: Err(TaskError {
                    kind: TaskErrorKind::Exit {
                        code: 3,
                        stderr: "bad file\n".into(),
                    },
                    message: "command exited with code 3".into(),
                }),
            },
            Outcome {
                elapsed_us: 800,
                result: Err(TaskError {
                    kind: TaskErrorKind::Signal {
                        signal: 11,
                        stderr: String::new(),
                    },
                    message: "command killed by SIGSEGV".into(),
                }),
            },
            Outcome {
                elapsed_us: 7,
                result: Err(TaskError {
                    kind: TaskErrorKind::Protocol {
                        stderr: "Traceback".into(),
                    },
                    message: "worker answered `hello`, not a JSON line".into(),
                }),
            },
        ],
    };
    check("from-worker-results-user", &failures, debug_eq);
}
