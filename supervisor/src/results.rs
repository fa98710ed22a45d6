//! The reduction shown in the summary: the values of the `ok` records folded into one (`sum`, `min`, `max`,
//! `count`). The records themselves are [`crate::record`]'s; writing them is [`crate::journal`]'s.

use shared::item::Value;
use shared::job::Reduce;

// Where the other modules of this crate have always found the record's types.
pub use crate::record::{Failure, FailureKind, InputDesc, Record, Status};

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
}
