//! Test-only misbehaviour of a worker process: how the tests (`tests/hostile.rs`) get a worker that breaks the
//! protocol, to check that the supervisor survives it.
//!
//! It is chosen by the environment variable [`HOSTILE_ENV`], `MODE` or `MODE@ITEM` (the item at which to
//! misbehave), which no real run sets: the name says what it is for, an unknown mode is refused loudly (the
//! worker exits), and a worker in a hostile mode says so on stderr, which the supervisor keeps in failure
//! records. Only worker processes read it; worker threads (the `thread` and `serial` executors) never do. It is
//! deliberately not in the user documentation; `docs/design.md` ("Hostile workers") lists the modes.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use shared::frame;
use shared::item::{Batch, Value};
use shared::protocol::{FromWorker, Outcome, PROTOCOL_VERSION, TaskError, TaskErrorKind};

/// The environment variable that makes a worker process misbehave, for tests only.
pub const HOSTILE_ENV: &str = "SUPERVISOR_TEST_HOSTILE_WORKER";

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// At the item: a frame whose body does not decode.
    Garbage,
    /// At the item: a frame header declaring 1 GiB, followed by as much of it as the socket takes.
    Giant,
    /// At the item: results for a batch it was never given.
    ForeignBatch,
    /// At the item: a result for the item just past the end of the batch.
    PastEnd,
    /// At the item: more results than the batch has items left.
    TooMany,
    /// After the item: its result again.
    Repeat,
    /// At the item: results as fast as it can write them (frames near the size limit, for items it does not
    /// have).
    Flood,
    /// At the item: a value nested 500 000 levels deep.
    Deep,
    /// At the item: a task error with a 1.5 MiB message (legal but long: the supervisor cuts it).
    LongError,
    /// At the item: a 1.5 MiB value (over the per-value limit, under the frame limit).
    BigValue,
    /// At the item: a second `Hello`.
    SecondHello,
    /// At the item: `InitFailed`, long after `Init` succeeded.
    LateInitFailed,
    /// At start: `Hello` with another protocol version.
    WrongVersion,
    /// At `Init`: results before `Ready`.
    EarlyResults,
    /// At `Init`: `InitFailed` with a 1 MiB message, then exit.
    LongInitFailed,
    /// Ignores SIGTERM, and on `Shutdown` (or end of channel) hangs instead of exiting.
    IgnoreStop,
}

impl Mode {
    fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "garbage" => Mode::Garbage,
            "giant" => Mode::Giant,
            "foreign-batch" => Mode::ForeignBatch,
            "past-end" => Mode::PastEnd,
            "too-many" => Mode::TooMany,
            "repeat" => Mode::Repeat,
            "flood" => Mode::Flood,
            "deep" => Mode::Deep,
            "long-error" => Mode::LongError,
            "big-value" => Mode::BigValue,
            "second-hello" => Mode::SecondHello,
            "late-init-failed" => Mode::LateInitFailed,
            "wrong-version" => Mode::WrongVersion,
            "early-results" => Mode::EarlyResults,
            "long-init-failed" => Mode::LongInitFailed,
            "ignore-stop" => Mode::IgnoreStop,
            _ => return None,
        })
    }
}

/// A worker's chosen misbehaviour, with its own handle on the channel for writing raw bytes.
#[derive(Debug)]
pub struct Hostile {
    mode: Mode,
    item: Option<u64>,
    socket: UnixStream,
}

/// Reads [`HOSTILE_ENV`]; `None` when it is not set (every real run). A value that does not parse ends the
/// process: a test that asked for a misbehaviour must not silently get a well-behaved worker.
pub fn from_env(socket: &UnixStream) -> Option<Hostile> {
    let value = std::env::var(HOSTILE_ENV).ok()?;
    let (name, item) = match value.split_once('@') {
        Some((name, item)) => (name, Some(item)),
        None => (value.as_str(), None),
    };
    let item = item.map(str::parse::<u64>);
    let (Some(mode), None | Some(Ok(_))) = (Mode::parse(name), &item) else {
        eprintln!("worker: bad {HOSTILE_ENV}={value}");
        std::process::exit(shared::exit::USAGE);
    };
    let Ok(socket) = socket.try_clone() else {
        std::process::exit(shared::exit::INTERNAL);
    };
    eprintln!("worker: hostile test mode {value}");
    if mode == Mode::IgnoreStop
        && let Err(error) = sys::process::ignore(sys::process::Signal::SIGTERM)
    {
        eprintln!("worker: cannot ignore SIGTERM: {error}");
        std::process::exit(shared::exit::INTERNAL);
    }
    Some(Hostile {
        mode,
        item: item.and_then(Result::ok),
        socket,
    })
}

impl Hostile {
    /// The protocol version to say hello with.
    pub fn hello_version(&self) -> u32 {
        if self.mode == Mode::WrongVersion {
            99
        } else {
            PROTOCOL_VERSION
        }
    }

    /// Called once `Init` succeeded, before `Ready` is sent.
    pub fn at_init(&self) {
        match self.mode {
            Mode::EarlyResults => {
                self.send(&results(0, 0, vec![ok(Value::Null)]));
                hang()
            }
            Mode::LongInitFailed => {
                self.send(&FromWorker::InitFailed {
                    message: "x".repeat(1 << 20),
                });
                std::process::exit(1)
            }
            _ => {}
        }
    }

    /// Called when told to shut down (or when the channel closed).
    pub fn at_shutdown(&self) {
        if self.mode == Mode::IgnoreStop {
            hang()
        }
    }

    /// Called before item `index` of `batch` runs, with pending results already sent by `flush`. Returns an
    /// outcome to report instead of running the item, or never returns.
    pub fn before_item<E>(&self, batch: &Batch, index: u64, flush: impl FnOnce() -> Result<(), E>) -> Option<Outcome> {
        if self.item.is_some_and(|item| item != index) {
            return None;
        }
        if flush().is_err() {
            hang()
        }
        let left = batch.first + batch.len() - index;
        match self.mode {
            Mode::Garbage => {
                let mut frame = 64u32.to_le_bytes().to_vec();
                frame.extend([0xff; 64]);
                self.write(&frame);
            }
            Mode::Giant => {
                self.write(&(1u32 << 30).to_le_bytes());
                let chunk = vec![0u8; 1 << 20];
                for _ in 0..1024 {
                    self.write(&chunk);
                }
            }
            Mode::ForeignBatch => self.send(&results(batch.id + 1_000_000, index, vec![ok(Value::Null)])),
            Mode::PastEnd => self.send(&results(batch.id, batch.first + batch.len(), vec![ok(Value::Null)])),
            Mode::TooMany => self.send(&results(batch.id, index, vec![ok(Value::Null); left as usize + 1000])),
            Mode::Flood => {
                // ~1.9 MiB per frame: just under the frame limit, so each one is read.
                let outcomes = vec![ok(Value::Null); 600_000];
                let frame = frame::encode(&results(batch.id, index, outcomes)).unwrap_or_default();
                for _ in 0..100_000 {
                    self.write(&frame);
                }
            }
            Mode::Deep => self.write(&deep_results(batch.id, index, 500_000)),
            Mode::LongError => {
                return Some(Outcome {
                    elapsed_us: 0,
                    result: Err(TaskError {
                        kind: TaskErrorKind::Error,
                        message: "e".repeat(3 << 19),
                    }),
                });
            }
            Mode::BigValue => return Some(ok(Value::Text("v".repeat(3 << 19)))),
            Mode::SecondHello => self.send(&FromWorker::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
            }),
            Mode::LateInitFailed => self.send(&FromWorker::InitFailed { message: "late".into() }),
            Mode::Repeat | Mode::WrongVersion | Mode::EarlyResults | Mode::LongInitFailed | Mode::IgnoreStop => {
                return None;
            }
        }
        hang()
    }

    /// Called after item `index` ran and its result was sent (`Repeat` sends it again).
    pub fn after_item(&self, batch: &Batch, index: u64, outcome: &Outcome) {
        if self.mode == Mode::Repeat && self.item == Some(index) {
            self.send(&results(batch.id, index, vec![outcome.clone()]));
            hang()
        }
    }

    fn send(&self, message: &FromWorker) {
        if frame::write(&self.socket, message).is_err() {
            hang()
        }
    }

    fn write(&self, bytes: &[u8]) {
        if (&self.socket).write_all(bytes).is_err() {
            hang()
        }
    }
}

fn ok(value: Value) -> Outcome {
    Outcome {
        elapsed_us: 0,
        result: Ok(value),
    }
}

fn results(batch: u64, first: u64, outcomes: Vec<Outcome>) -> FromWorker {
    FromWorker::Results { batch, first, outcomes }
}

/// A `Results` frame for one item whose value is a list nested `depth` levels deep, encoded by hand (building
/// the value would recurse as deep in this process too).
fn deep_results(batch: u64, first: u64, depth: usize) -> Vec<u8> {
    let mut body = Vec::new();
    // Results is variant 3 of FromWorker; then batch and first as varints; one outcome: elapsed 0, Ok.
    body.push(3);
    body.extend(varint(batch));
    body.extend(varint(first));
    body.extend([1, 0, 0]);
    for _ in 0..depth {
        // Value::List (variant 6) of one element.
        body.extend([6, 1]);
    }
    body.push(0);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend(body);
    frame
}

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Waits to be killed.
fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
