//! Result records (one JSON line per item, in the journal and the results file) and the reduction shown in the
//! summary. Writing them is the journal's job (see [`crate::journal`]).

use std::path::PathBuf;

use serde::Serialize;
use shared::item::Value;
use shared::job::Reduce;

/// One line of the results file.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// 0-based index in input order.
    pub item: u64,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "value_as_json")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// Runs of this item that were charged to it (co-batched re-runs after another item's crash are not).
    pub attempts: u32,
    /// The cause of each failed attempt, in order (for a failed item the last one is `error`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempt_errors: Vec<Failure>,
    /// The worker that ran it (for a crash: the worker that died).
    pub pid: u32,
    /// Time in the task, in milliseconds (for a crash: from dispatch to the worker's death).
    pub elapsed_ms: f64,
    /// What the item is: `{start, end}`, `{offset, len}` or `{path}`.
    pub input: InputDesc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// Why an item failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// For `signal`: the signal's name, e.g. `SIGSEGV`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// For `exit`: the worker's exit code; for `fetch`: the HTTP status, when the server answered with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// For crashes: the last lines the worker wrote to stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            FailureKind::Signal => "signal",
            FailureKind::Exit => "exit",
            FailureKind::Panic => "panic",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Protocol => "protocol",
            FailureKind::Error => "error",
            FailureKind::Fetch => "fetch",
        };
        f.write_str(name)
    }
}

/// The input of one item, as shown in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum InputDesc {
    Range { start: u64, end: u64 },
    Chunk { offset: u64, len: u64 },
    File { path: PathBuf },
    Url { url: String },
}

fn value_as_json<S: serde::Serializer>(value: &Option<Value>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => value.json().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// Folds the values of ok items into the summary's `reduced` value.
#[derive(Debug, Clone)]
pub struct Reducer {
    kind: Reduce,
    acc: Acc,
    /// Set when a value cannot be reduced (e.g. summing text); the reduced value is then null.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Acc {
    Empty,
    UInt(u128),
    Int(i128),
    Float(f64),
    Text(String),
    Count(u64),
}

impl Reducer {
    pub fn new(kind: Reduce) -> Reducer {
        let acc = if kind == Reduce::Count {
            Acc::Count(0)
        } else {
            Acc::Empty
        };
        Reducer {
            kind,
            acc,
            problem: None,
        }
    }

    pub fn add(&mut self, value: &Value) {
        if self.problem.is_some() || self.kind == Reduce::None {
            return;
        }
        if let Acc::Count(n) = &mut self.acc {
            *n += 1;
            return;
        }
        let incoming = match value {
            Value::UInt(n) => Acc::UInt(*n),
            Value::Int(n) => Acc::Int(*n),
            Value::Float(f) => Acc::Float(*f),
            Value::Text(s) if self.kind != Reduce::Sum => Acc::Text(s.clone()),
            other => {
                self.problem = Some(format!("cannot {} a value like {}", self.kind, short_json(other)));
                return;
            }
        };
        let acc = std::mem::replace(&mut self.acc, Acc::Empty);
        self.acc = match combine(self.kind, acc, incoming) {
            Ok(acc) => acc,
            Err(problem) => {
                self.problem = Some(problem);
                Acc::Empty
            }
        };
    }

    /// The reduced value; `None` for `reduce = "none"` or when a value could not be reduced. A sum of no items
    /// is 0; the min or max of no items is `None`.
    pub fn value(&self) -> Option<Value> {
        if self.problem.is_some() {
            return None;
        }
        match &self.acc {
            Acc::Empty if self.kind == Reduce::Sum => Some(Value::UInt(0)),
            Acc::Empty => None,
            Acc::UInt(n) => Some(Value::UInt(*n)),
            Acc::Int(n) => Some(Value::Int(*n)),
            Acc::Float(f) => Some(Value::Float(*f)),
            Acc::Text(s) => Some(Value::Text(s.clone())),
            Acc::Count(n) => Some(Value::UInt(u128::from(*n))),
        }
    }

    pub fn kind(&self) -> Reduce {
        self.kind
    }
}

fn short_json(value: &Value) -> String {
    let text = serde_json::to_string(&value.json()).unwrap_or_default();
    if text.len() > 40 {
        format!("{}…", &text[..text.floor_char_boundary(40)])
    } else {
        text
    }
}

fn combine(kind: Reduce, acc: Acc, incoming: Acc) -> Result<Acc, String> {
    use Acc::*;
    let overflow = || "the sum overflows 128 bits".to_string();
    Ok(match (kind, acc, incoming) {
        (_, Empty, x) => x,
        (Reduce::Sum, UInt(a), UInt(b)) => UInt(a.checked_add(b).ok_or_else(overflow)?),
        (Reduce::Sum, Int(a), Int(b)) => Int(a.checked_add(b).ok_or_else(overflow)?),
        (Reduce::Sum, UInt(a), Int(b)) | (Reduce::Sum, Int(b), UInt(a)) => Int(i128::try_from(a)
            .ok()
            .and_then(|a| a.checked_add(b))
            .ok_or_else(overflow)?),
        (Reduce::Sum, a, b) => Float(as_f64(&a)? + as_f64(&b)?),
        (Reduce::Min | Reduce::Max, Text(a), Text(b)) => {
            let keep_a = (a <= b) == (kind == Reduce::Min);
            Text(if keep_a { a } else { b })
        }
        (Reduce::Min | Reduce::Max, a, b) => {
            let (x, y) = (as_f64(&a)?, as_f64(&b)?);
            let keep_a = if kind == Reduce::Min { x <= y } else { x >= y };
            if keep_a { a } else { b }
        }
        (kind, _, _) => return Err(format!("cannot {kind} these values")),
    })
}

fn as_f64(acc: &Acc) -> Result<f64, String> {
    match acc {
        Acc::UInt(n) => Ok(*n as f64),
        Acc::Int(n) => Ok(*n as f64),
        Acc::Float(f) => Ok(*f),
        _ => Err("cannot compare text with numbers".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reduce(kind: Reduce, values: &[Value]) -> Option<Value> {
        let mut reducer = Reducer::new(kind);
        for value in values {
            reducer.add(value);
        }
        reducer.value()
    }

    #[test]
    fn sums_are_exact_and_empty_sum_is_zero() {
        let big = u128::from(u64::MAX);
        assert_eq!(
            reduce(Reduce::Sum, &[Value::UInt(big), Value::UInt(big)]),
            Some(Value::UInt(2 * big))
        );
        assert_eq!(reduce(Reduce::Sum, &[]), Some(Value::UInt(0)));
        assert_eq!(
            reduce(Reduce::Sum, &[Value::UInt(5), Value::Int(-7)]),
            Some(Value::Int(-2))
        );
        assert_eq!(reduce(Reduce::Sum, &[Value::UInt(u128::MAX), Value::UInt(1)]), None);
        assert_eq!(reduce(Reduce::Sum, &[Value::Text("a".into())]), None);
    }

    #[test]
    fn min_max_count_none() {
        let values = [Value::UInt(5), Value::Int(-3), Value::Float(2.5)];
        assert_eq!(reduce(Reduce::Min, &values), Some(Value::Int(-3)));
        assert_eq!(reduce(Reduce::Max, &values), Some(Value::UInt(5)));
        assert_eq!(reduce(Reduce::Count, &values), Some(Value::UInt(3)));
        assert_eq!(reduce(Reduce::Count, &[]), Some(Value::UInt(0)));
        assert_eq!(reduce(Reduce::None, &values), None);
        assert_eq!(reduce(Reduce::Max, &[]), None);
        let words = [Value::Text("pear".into()), Value::Text("apple".into())];
        assert_eq!(reduce(Reduce::Min, &words), Some(Value::Text("apple".into())));
    }

    #[test]
    fn records_serialize_with_only_the_fields_that_apply() {
        let ok = Record {
            item: 3,
            status: Status::Ok,
            value: Some(Value::UInt(9)),
            error: None,
            attempts: 1,
            attempt_errors: Vec::new(),
            pid: 42,
            elapsed_ms: 0.5,
            input: InputDesc::Range { start: 30, end: 40 },
        };
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
    }
}
