//! The raw mirror of the job file: what the TOML says, before any rule is applied.
//!
//! Every table is a struct that denies unknown keys (the reader then names the key and suggests the nearest one,
//! see `crate::toml_error`). Every key is read as a [`Scalar`] with its location: the TOML type is checked by the
//! table's own module (`input`, `task`, …) with the rules of [`super::value`], so that a wrong type, a value out of
//! range and a bad unit are all said in the same words, located at the value. Nothing here looks at the filesystem
//! or decides a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// Every table's keys, for the hint on a key written in the wrong table (`timeout` in `[supervise]` is a key of
/// `[task]`). The test below checks the list against the structs.
pub const TABLE_KEYS: &[(&str, &[&str])] = &[
    (
        "input",
        &[
            "range",
            "file",
            "split",
            "chunk_bytes",
            "glob",
            "urls",
            "lines",
            "fetch_concurrency",
            "fetch_timeout",
            "fetch_retries",
            "fetch_retry_backoff",
            "max_in_flight_bytes",
        ],
    ),
    (
        "task",
        &[
            "builtin",
            "args",
            "timeout",
            "retries",
            "retry_backoff",
            "command",
            "worker",
            "worker_bin",
            "parse",
            "stdin",
            "env",
            "cwd",
            "max_output",
        ],
    ),
    (
        "workers",
        &[
            "count",
            "batch",
            "start",
            "executor",
            "memory_limit",
            "cpu_limit",
            "max_tasks",
            "core_dumps",
            "open_files",
            "env_clear",
            "env",
            "user",
            "group",
        ],
    ),
    (
        "supervise",
        &["max_restarts", "within", "halt", "grace", "start_timeout"],
    ),
    ("output", &["results", "order", "reduce", "journal"]),
    ("shard", &["count"]),
];

/// A key's value.
pub(crate) type Key = Option<Spanned<Scalar>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJob {
    pub name: Key,
    pub input: Spanned<RawInput>,
    pub task: Spanned<RawTask>,
    pub workers: Option<RawWorkers>,
    pub supervise: Option<RawSupervise>,
    pub output: Option<RawOutput>,
    pub shard: Option<RawShard>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShard {
    pub count: Key,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    pub range: Option<Spanned<RawRange>>,
    pub file: Key,
    pub split: Key,
    pub chunk_bytes: Key,
    pub glob: Key,
    pub urls: Key,
    pub lines: Key,
    pub fetch_concurrency: Key,
    pub fetch_timeout: Key,
    pub fetch_retries: Key,
    pub fetch_retry_backoff: Key,
    pub max_in_flight_bytes: Key,
}

/// `range = { start, end, chunk }`. Only a table is accepted: serde would read an array `[0, 10, 1, 5]` into
/// the same struct and ignore what is left over, so the deserializer below asks for a map and nothing else.
pub(crate) struct RawRange {
    pub start: Spanned<Scalar>,
    pub end: Spanned<Scalar>,
    pub chunk: Key,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeKeys {
    start: Spanned<Scalar>,
    end: Spanned<Scalar>,
    chunk: Key,
}

impl<'de> Deserialize<'de> for RawRange {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RangeVisitor;
        impl<'de> Visitor<'de> for RangeVisitor {
            type Value = RawRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table such as `{ start = 0, end = 100, chunk = 10 }`")
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RawRange, M::Error> {
                let keys = RangeKeys::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawRange {
                    start: keys.start,
                    end: keys.end,
                    chunk: keys.chunk,
                })
            }
        }
        deserializer.deserialize_map(RangeVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTask {
    pub builtin: Key,
    pub args: Key,
    pub timeout: Key,
    pub retries: Key,
    pub retry_backoff: Key,
    // The user's own work (see `crate::usertask`): exactly one of `builtin`, `command`, `worker`, `worker_bin`.
    pub command: Key,
    pub worker: Key,
    pub worker_bin: Key,
    pub parse: Key,
    pub stdin: Key,
    pub env: Key,
    pub cwd: Key,
    pub max_output: Key,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkers {
    pub count: Key,
    pub batch: Key,
    pub start: Key,
    pub executor: Key,
    pub memory_limit: Key,
    pub cpu_limit: Key,
    pub max_tasks: Key,
    pub core_dumps: Key,
    pub open_files: Key,
    pub env_clear: Key,
    pub env: Key,
    pub user: Key,
    pub group: Key,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSupervise {
    pub max_restarts: Key,
    pub within: Key,
    pub halt: Key,
    pub grace: Key,
    pub start_timeout: Key,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    pub results: Key,
    pub order: Key,
    pub reduce: Key,
    pub journal: Key,
}

/// Any TOML value, as written: integers keep their full width (a `u64` bound such as `18446744073709551615` is
/// valid TOML for this reader), and a datetime stays a datetime instead of passing for a string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Integer(i128),
    Float(f64),
    Bool(bool),
    String(String),
    Datetime(String),
    Array(Vec<Scalar>),
    Table(BTreeMap<String, Scalar>),
}

/// The key under which the TOML reader hands a datetime to a map visitor.
const DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(value))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Scalar, E> {
        Ok(Scalar::Integer(value.into()))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Scalar, E> {
        Ok(Scalar::Integer(value.into()))
    }
    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Scalar, E> {
        Ok(Scalar::Integer(value))
    }
    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Scalar, E> {
        Ok(Scalar::Integer(i128::try_from(value).unwrap_or(i128::MAX)))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(value))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Scalar, E> {
        Ok(Scalar::String(value.to_string()))
    }
    fn visit_string<E: de::Error>(self, value: String) -> Result<Scalar, E> {
        Ok(Scalar::String(value))
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Scalar, S::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Scalar::Array(elements))
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Scalar, M::Error> {
        let mut table = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == DATETIME_KEY {
                let text: String = map.next_value()?;
                return Ok(Scalar::Datetime(text));
            }
            let value: Scalar = map.next_value()?;
            table.insert(key, value);
        }
        Ok(Scalar::Table(table))
    }
}

impl fmt::Display for Scalar {
    /// The value as it would be written in TOML (long ones shortened), for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Integer(n) => write!(f, "{n}"),
            Scalar::Float(x) if x.is_nan() => f.write_str("nan"),
            Scalar::Float(x) if x.is_infinite() => f.write_str(if *x > 0.0 { "inf" } else { "-inf" }),
            Scalar::Float(x) => write!(f, "{x:?}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::String(s) => {
                let shown: String = s.chars().take(40).collect();
                let more = if shown.len() < s.len() { "…" } else { "" };
                write!(f, "{:?}", format!("{shown}{more}"))
            }
            Scalar::Datetime(d) => write!(f, "the datetime {d}"),
            Scalar::Array(_) => f.write_str("an array"),
            Scalar::Table(_) => f.write_str("a table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde lists for an unknown key of table `T`.
    fn keys_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let message = match toml::from_str::<T>("zzz_unknown = 1\n") {
            Ok(_) => String::new(),
            Err(error) => error.message().to_string(),
        };
        message.split('`').skip(3).step_by(2).map(str::to_string).collect()
    }

    #[test]
    fn table_keys_match_the_raw_tables() {
        let tables = [
            ("input", keys_of::<RawInput>()),
            ("task", keys_of::<RawTask>()),
            ("workers", keys_of::<RawWorkers>()),
            ("supervise", keys_of::<RawSupervise>()),
            ("output", keys_of::<RawOutput>()),
            ("shard", keys_of::<RawShard>()),
        ];
        for (table, keys) in tables {
            let listed = TABLE_KEYS
                .iter()
                .find(|(name, _)| *name == table)
                .map(|(_, keys)| *keys);
            assert_eq!(
                Some(keys.iter().map(String::as_str).collect::<Vec<_>>()),
                listed.map(<[&str]>::to_vec),
                "[{table}]"
            );
        }
    }
}
