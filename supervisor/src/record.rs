//! The record: one JSON line per item, the same in the journal, the results file, `merge`'s input and output,
//! `replay`'s output and the tests. This module owns its schema (both directions) and the one conversion from
//! JSON text back to a task's [`Value`]; where records are written and read is [`crate::journal`]'s and
//! [`crate::merge`]'s, and what a failure means is [`crate::failure`]'s.
//!
//! The value is generic so that a reader can take it as the type it expects (`Record<u128>` for sums,
//! `Record<String>` for digests); the supervisor itself uses `Record<Value>`, the default, which reads integers of
//! any size back exactly (`serde_json::Value` would turn those beyond 64 bits into lossy floats).

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use shared::item::Value;

/// One line of the results file (and of the journal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "V: RecordValue", deserialize = "V: RecordValue"))]
pub struct Record<V = Value> {
    /// 0-based index in input order.
    pub item: u64,
    /// Journal only: this attempt failed and the item will be tried again, so the line is not the item's
    /// record. Recovery counts it as a used attempt; the results file never holds one. Written right after
    /// `item`, so that a reader can tell such a line from its first bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retrying: bool,
    pub status: Status,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_value",
        deserialize_with = "deserialize_value"
    )]
    pub value: Option<V>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// Runs of this item that were charged to it (co-batched re-runs after another item's crash are not).
    pub attempts: u32,
    /// The cause of each failed attempt, in order (for a failed item the last one is `error`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_errors: Vec<Failure>,
    /// The worker that ran it (for a crash: the worker that died).
    pub pid: u32,
    /// Time in the task, in milliseconds (for a crash: from dispatch to the worker's death).
    pub elapsed_ms: f64,
    /// What the item is: `{start, end}`, `{offset, len}`, `{path}` or `{url}`.
    pub input: InputDesc,
}

impl Record {
    /// The journal line of a failed attempt of `item` that will be retried (see [`Record::retrying`]).
    pub fn retrying(item: u64, failure: Failure, attempts: u32, pid: u32, elapsed_ms: f64, input: InputDesc) -> Record {
        Record {
            item,
            retrying: true,
            status: Status::Failed,
            value: None,
            error: Some(failure),
            attempts,
            attempt_errors: Vec::new(),
            pid,
            elapsed_ms,
            input,
        }
    }
}

fn is_false(flag: &bool) -> bool {
    !flag
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
        }
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why an item failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// For `signal`: the signal's name, e.g. `SIGSEGV`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// For `exit`: the worker's exit code; for `fetch`: the HTTP status, when the server answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// For crashes: the last lines the worker wrote to stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The worker was killed by a signal while running this item.
    Signal,
    /// The worker exited while running this item.
    Exit,
    /// The task panicked.
    Panic,
    /// The item ran past `[task] timeout` (or its `cpu_limit`).
    Timeout,
    /// The worker ran out of memory under `[workers] memory_limit`.
    Memory,
    /// The worker broke the protocol while running this item.
    Protocol,
    /// The task returned an error.
    Error,
    /// The body of a `urls` item could not be fetched (after `fetch_retries`); `code` holds the HTTP status when
    /// the server answered with one.
    Fetch,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Signal => "signal",
            FailureKind::Exit => "exit",
            FailureKind::Panic => "panic",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Protocol => "protocol",
            FailureKind::Error => "error",
            FailureKind::Fetch => "fetch",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The input of one item, as shown in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputDesc {
    Range { start: u64, end: u64 },
    Chunk { offset: u64, len: u64 },
    File { path: PathBuf },
    Url { url: String },
}

/// How a record's `value` is written and read back: exactly for [`Value`], by serde for the plain types a
/// reader may ask for instead.
pub trait RecordValue: Sized {
    fn write<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

impl RecordValue for Value {
    fn write<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json().serialize(serializer)
    }

    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(value_from_json(raw.get()))
    }
}

/// For readers that only check a record's shape: the value is parsed and dropped.
impl RecordValue for serde::de::IgnoredAny {
    fn write<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_none()
    }

    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)
    }
}

/// Plain serde types as record values.
macro_rules! plain_record_value {
    ($($t:ty),*) => {$(
        impl RecordValue for $t {
            fn write<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.serialize(serializer)
            }

            fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <$t as Deserialize>::deserialize(deserializer)
            }
        }
    )*};
}

plain_record_value!(u64, u128, i64, i128, f64, bool, String, serde_json::Value);

fn serialize_value<V: RecordValue, S: Serializer>(value: &Option<V>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.write(serializer),
        None => serializer.serialize_none(),
    }
}

/// `"value": null` reads as `None`, like a missing value.
fn deserialize_value<'de, V: RecordValue, D: Deserializer<'de>>(deserializer: D) -> Result<Option<V>, D::Error> {
    struct Read<V>(V);
    impl<'de, V: RecordValue> Deserialize<'de> for Read<V> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            V::read(deserializer).map(Read)
        }
    }
    Ok(Option::<Read<V>>::deserialize(deserializer)?.map(|Read(value)| value))
}

/// A record of one line (without or with its newline), for any value type the reader asks for.
pub fn parse<V: RecordValue + DeserializeOwned>(line: &[u8]) -> serde_json::Result<Record<V>> {
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
}

/// A result value read back from JSON text: integers of any size exactly, the rest as JSON says.
pub fn value_from_json(text: &str) -> Value {
    let text = text.trim();
    if let Ok(n) = text.parse::<u128>() {
        return Value::UInt(n);
    }
    if let Ok(n) = text.parse::<i128>() {
        return Value::Int(n);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => from_json_value(value),
        Err(_) => Value::Null,
    }
}

fn from_json_value(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::UInt(u128::from(u)),
            (None, Some(i), _) => Value::Int(i128::from(i)),
            (_, _, Some(f)) => Value::Float(f),
            _ => Value::Null,
        },
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Array(items) => Value::List(items.into_iter().map(from_json_value).collect()),
        serde_json::Value::Object(map) => Value::Map(map.into_iter().map(|(k, v)| (k, from_json_value(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_record() -> Record {
        Record {
            item: 3,
            retrying: false,
            status: Status::Ok,
            value: Some(Value::UInt(9)),
            error: None,
            attempts: 1,
            attempt_errors: Vec::new(),
            pid: 42,
            elapsed_ms: 0.5,
            input: InputDesc::Range { start: 30, end: 40 },
        }
    }

    #[test]
    fn records_serialize_with_only_the_fields_that_apply() {
        let ok = ok_record();
        assert_eq!(
            serde_json::to_string(&ok).expect("json"),
            r#"{"item":3,"status":"ok","value":9,"attempts":1,"pid":42,"elapsed_ms":0.5,"input":{"start":30,"end":40}}"#
        );
        let failed = Record {
            status: Status::Failed,
            value: None,
            error: Some(Failure {
                kind: FailureKind::Signal,
                message: "worker killed by SIGSEGV".into(),
                signal: Some("SIGSEGV".into()),
                code: None,
                stderr: None,
            }),
            input: InputDesc::File { path: "/a b".into() },
            ..ok
        };
        assert_eq!(
            serde_json::to_string(&failed).expect("json"),
            r#"{"item":3,"status":"failed","error":{"kind":"signal","message":"worker killed by SIGSEGV","signal":"SIGSEGV"},"attempts":1,"pid":42,"elapsed_ms":0.5,"input":{"path":"/a b"}}"#
        );
        let retrying = Record::retrying(
            3,
            failed.error.clone().expect("error"),
            1,
            42,
            0.5,
            failed.input.clone(),
        );
        assert!(
            serde_json::to_string(&retrying)
                .expect("json")
                .starts_with(r#"{"item":3,"retrying":true,"status":"failed","#)
        );
    }

    #[test]
    fn records_read_back_as_written_with_big_integers_exact() {
        let big = Record {
            value: Some(Value::UInt(333_333_328_333_333_350_000_000)),
            ..ok_record()
        };
        let line = serde_json::to_string(&big).expect("json");
        let back: Record = parse(line.as_bytes()).expect("parses");
        assert_eq!(back.value, big.value);
        assert_eq!(back.input, big.input);
        let typed: Record<u128> = parse(line.as_bytes()).expect("parses");
        assert_eq!(typed.value, Some(333_333_328_333_333_350_000_000));
        let null: Record = parse(
            br#"{"item":0,"status":"ok","value":null,"attempts":1,"pid":1,"elapsed_ms":0,"input":{"url":"http://x"}}"#,
        )
        .expect("parses");
        assert_eq!(null.value, None);
        assert_eq!(null.input, InputDesc::Url { url: "http://x".into() });
    }

    #[test]
    fn big_integers_are_read_back_exactly() {
        assert_eq!(
            value_from_json("333333328333333350000000"),
            Value::UInt(333_333_328_333_333_350_000_000)
        );
        assert_eq!(value_from_json("-5"), Value::Int(-5));
        assert_eq!(value_from_json("2.5"), Value::Float(2.5));
        assert_eq!(value_from_json("\"abc\""), Value::Text("abc".into()));
        assert_eq!(
            value_from_json("[1,null]"),
            Value::List(vec![Value::UInt(1), Value::Null])
        );
    }
}
