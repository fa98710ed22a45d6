//! Items: what a worker is asked to process, and the values it returns.
//!
//! Bulk input never crosses the channel. A batch names a contiguous run of item indices and carries only
//! descriptors: a count for range items (the worker derives each sub-range from the [`InputPlan`]), byte ranges
//! of the one mapped input file for chunk items, and paths for file items (each worker maps the file itself).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What every worker needs to know about the input once, at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputPlan {
    /// Item `i` is the half-open sub-range `[start + i*chunk, min(start + (i+1)*chunk, end))`.
    Range { start: u64, end: u64, chunk: u64 },
    /// Items are byte ranges of this one file; every worker maps it read-only once.
    File { path: PathBuf },
    /// Items are whole files named in each batch.
    Files,
    /// Items are bodies the supervisor fetched (a `urls` input) into this shared arena: a memfd the worker opens
    /// by its `/proc/<pid>/fd/<n>` path and maps read-only once, at `Init`. Batches name `(offset, len)` slots.
    Arena { path: PathBuf },
}

impl InputPlan {
    /// The sub-range of range item `index`, or `None` when this is not a range input or the index is past the end.
    pub fn range_item(&self, index: u64) -> Option<(u64, u64)> {
        match *self {
            InputPlan::Range { start, end, chunk } => {
                let lo = start.checked_add(index.checked_mul(chunk)?)?;
                (lo < end).then(|| (lo, lo.saturating_add(chunk).min(end)))
            }
            _ => None,
        }
    }
}

/// Number of items of a range input.
pub fn range_item_count(start: u64, end: u64, chunk: u64) -> u64 {
    end.saturating_sub(start).div_ceil(chunk.max(1))
}

/// A byte range `[offset, offset + len)` of the mapped input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
}

/// A fetched body: `len` bytes at `offset` of the shared arena, and the URL it came from.
///
/// The supervisor writes the body before the batch is sent and frees the slot only after the item is recorded,
/// so the bytes do not change while a worker may read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedBody {
    pub offset: u64,
    pub len: u64,
    pub url: String,
}

/// A unit of dispatch: the items `first .. first + len()` in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique per run; results name the batch they belong to.
    pub id: u64,
    /// Global index of the first item.
    pub first: u64,
    pub items: BatchItems,
}

/// The descriptors of a batch's items, one variant per input kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BatchItems {
    /// `count` consecutive range items; the worker computes each sub-range from the [`InputPlan`].
    Range { count: u64 },
    /// Byte ranges of the mapped input file, one per item.
    Chunks(Vec<Chunk>),
    /// Paths of whole files, one per item.
    Files(Vec<PathBuf>),
    /// Fetched bodies in the shared arena, one per item (a `urls` input).
    Fetched(Vec<FetchedBody>),
}

impl Batch {
    /// Number of items in the batch.
    pub fn len(&self) -> u64 {
        match &self.items {
            BatchItems::Range { count } => *count,
            BatchItems::Chunks(chunks) => chunks.len() as u64,
            BatchItems::Files(paths) => paths.len() as u64,
            BatchItems::Fetched(bodies) => bodies.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A task's result value.
///
/// A closed enum rather than `serde_json::Value` because it must cross the channel in postcard, which cannot
/// decode self-describing data; integers are 128-bit so that sums such as Σ i² stay exact. [`Value::json`] writes
/// it as plain JSON (numbers, strings, arrays, objects).
///
/// Decoding refuses values nested deeper than [`crate::frame::MAX_VALUE_DEPTH`] (a worker is not trusted: a
/// deep enough value would overflow the decoder's stack, and the drop's).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Value {
    Null,
    Bool(bool),
    UInt(u128),
    Int(i128),
    Float(f64),
    Text(String),
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
}

impl Value {
    /// A view that serializes as plain JSON (untagged), e.g. `Value::UInt(3)` as `3`.
    pub fn json(&self) -> JsonValue<'_> {
        JsonValue(self)
    }

    /// How deeply lists and maps nest in this value: 1 for a scalar.
    pub fn depth(&self) -> usize {
        match self {
            Value::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(entries) => 1 + entries.iter().map(|(_, value)| value.depth()).max().unwrap_or(0),
            _ => 1,
        }
    }
}

thread_local! {
    /// Nesting depth of the `Value` being decoded on this thread.
    static DECODE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The decoded shape of a [`Value`] (same variants, same order, so the same encoding); its children go through
/// `Value`'s own `Deserialize`, which counts the depth.
#[derive(Deserialize)]
#[serde(rename = "Value")]
enum ValueNode {
    Null,
    Bool(bool),
    UInt(u128),
    Int(i128),
    Float(f64),
    Text(String),
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
}

/// Leaves one level of nesting when dropped, also when decoding failed.
struct DepthGuard;

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        let level = DECODE_DEPTH.with(|depth| {
            depth.set(depth.get() + 1);
            depth.get()
        });
        let _guard = DepthGuard;
        if level > crate::frame::MAX_VALUE_DEPTH {
            return Err(serde::de::Error::custom(format_args!(
                "value nested deeper than {} levels",
                crate::frame::MAX_VALUE_DEPTH
            )));
        }
        Ok(match ValueNode::deserialize(deserializer)? {
            ValueNode::Null => Value::Null,
            ValueNode::Bool(b) => Value::Bool(b),
            ValueNode::UInt(n) => Value::UInt(n),
            ValueNode::Int(n) => Value::Int(n),
            ValueNode::Float(f) => Value::Float(f),
            ValueNode::Text(s) => Value::Text(s),
            ValueNode::List(items) => Value::List(items),
            ValueNode::Map(entries) => Value::Map(entries),
        })
    }
}

/// Plain-JSON serialization of a [`Value`]; see [`Value::json`].
#[derive(Debug, Clone, Copy)]
pub struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::UInt(n) => match u64::try_from(*n) {
                Ok(small) => serializer.serialize_u64(small),
                Err(_) => serializer.serialize_u128(*n),
            },
            Value::Int(n) => match i64::try_from(*n) {
                Ok(small) => serializer.serialize_i64(small),
                Err(_) => serializer.serialize_i128(*n),
            },
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Text(s) => serializer.serialize_str(s),
            Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&item.json())?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, &value.json())?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_items_cover_the_range_exactly() {
        let plan = InputPlan::Range {
            start: 5,
            end: 28,
            chunk: 10,
        };
        assert_eq!(range_item_count(5, 28, 10), 3);
        assert_eq!(plan.range_item(0), Some((5, 15)));
        assert_eq!(plan.range_item(2), Some((25, 28)));
        assert_eq!(plan.range_item(3), None);
        assert_eq!(range_item_count(7, 7, 10), 0);
        let top = InputPlan::Range {
            start: u64::MAX - 3,
            end: u64::MAX,
            chunk: 2,
        };
        assert_eq!(top.range_item(1), Some((u64::MAX - 1, u64::MAX)));
        assert_eq!(top.range_item(2), None);
    }

    #[test]
    fn values_serialize_as_plain_json() {
        let value = Value::Map(vec![
            ("big".into(), Value::UInt(u128::from(u64::MAX) * 4)),
            (
                "list".into(),
                Value::List(vec![Value::Int(-2), Value::Null, Value::Text("x".into())]),
            ),
        ]);
        let text = serde_json::to_string(&value.json()).expect("serializes");
        assert_eq!(text, r#"{"big":73786976294838206460,"list":[-2,null,"x"]}"#);
    }

    #[test]
    fn values_nested_too_deep_are_refused_without_overflowing_the_stack() {
        fn nested(depth: usize) -> Vec<u8> {
            // List is variant 6, then a length of 1; the innermost value is Null (variant 0).
            let mut bytes: Vec<u8> = std::iter::repeat_n([6u8, 1u8], depth - 1).flatten().collect();
            bytes.push(0);
            bytes
        }
        let limit = crate::frame::MAX_VALUE_DEPTH;
        let ok: Value = postcard::from_bytes(&nested(limit)).expect("at the limit");
        assert_eq!(ok.depth(), limit);
        let error = postcard::from_bytes::<Value>(&nested(limit + 1)).expect_err("past the limit");
        assert!(format!("{error:?}").contains("Custom") || !format!("{error}").is_empty());
        // A million levels: refused at level 65, long before the stack could run out.
        assert!(postcard::from_bytes::<Value>(&nested(1_000_000)).is_err());
        // The depth counter is back at zero: the next value decodes.
        assert_eq!(postcard::from_bytes::<Value>(&[2, 5]).expect("decodes"), Value::UInt(5));
    }

    #[test]
    fn values_round_trip_through_postcard() {
        let value = Value::List(vec![Value::UInt(u128::MAX), Value::Float(1.5), Value::Bool(true)]);
        let bytes = postcard::to_stdvec(&value).expect("encodes");
        assert_eq!(postcard::from_bytes::<Value>(&bytes).expect("decodes"), value);
    }
}
