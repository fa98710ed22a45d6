//! The rules for one value, shared by every table: one rule per kind of value (whole number, duration, size,
//! string, boolean, choice, array of strings, environment table), so that every key of a kind accepts the same
//! things and a mistake of a kind is said in the same words wherever it is made:
//!
//! - a value of the wrong type or out of range: ``` `KEY` is VALUE: expected WHAT ```;
//! - a text that does not read as its kind (a duration without a unit…): ``` `KEY`: WHY ```.
//!
//! `WHAT` is said as a person would ("a whole number of at least 1", "a duration such as \"30s\""), never as a
//! Rust type or its bounds. What the rules leave to the tables: which keys go together, and defaults.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::Scalar;
use crate::units::{parse_duration, parse_size};

/// Longest accepted duration, for every duration key: a year. Longer is a mistake, and would overflow the
/// nanosecond clocks timeouts are kept in.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A broken rule: where, and what was expected.
#[derive(Debug)]
pub(crate) struct Problem {
    pub span: Range<usize>,
    pub message: String,
}

pub(crate) type Checked<T> = Result<T, Problem>;

impl Problem {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Problem {
        Problem {
            span,
            message: message.into(),
        }
    }
}

/// ``` `KEY` is VALUE: expected WHAT ```, at the value.
pub(crate) fn expected(key: &str, value: &Spanned<Scalar>, what: &str) -> Problem {
    Problem::at(value.span(), format!("`{key}` is {}: expected {what}", value.get_ref()))
}

/// "a whole number of at least 1", "a whole number from 16 to 1048576"…
pub(crate) fn whole_words(min: u64, max: u64) -> String {
    match (min, max) {
        (0, u64::MAX) => "a whole number (0 or more)".to_string(),
        (min, u64::MAX) => format!("a whole number of at least {min}"),
        (min, max) => format!("a whole number from {min} to {max}"),
    }
}

/// A whole number in `min..=max`.
pub(crate) fn whole(key: &str, value: &Spanned<Scalar>, min: u64, max: u64) -> Checked<u64> {
    match value.get_ref() {
        Scalar::Integer(n) => match u64::try_from(*n) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Err(_) if *n > 0 => Err(expected(key, value, "a whole number below 2^64")),
            _ => Err(expected(key, value, &whole_words(min, max))),
        },
        _ => Err(expected(key, value, &whole_words(min, max))),
    }
}

/// A whole number in `min..=max` that fits a `u32`.
pub(crate) fn whole_u32(key: &str, value: &Spanned<Scalar>, min: u32, max: u32) -> Checked<u32> {
    // The bounds are u32, so the conversion cannot fail after the check.
    whole(key, value, min.into(), max.into()).map(|n| u32::try_from(n).unwrap_or(max))
}

/// A string without NUL characters (any other type, a datetime included, is refused).
pub(crate) fn text(key: &str, value: &Spanned<Scalar>) -> Checked<String> {
    match value.get_ref() {
        Scalar::String(text) if !text.contains('\0') => Ok(text.clone()),
        Scalar::String(_) => Err(Problem::at(
            value.span(),
            format!("`{key}` contains a NUL character: expected text without one"),
        )),
        _ => Err(expected(key, value, "a string")),
    }
}

/// A non-empty string; `example` completes "expected … such as".
pub(crate) fn nonempty_text(key: &str, value: &Spanned<Scalar>, example: &str) -> Checked<String> {
    let text = text(key, value)?;
    if text.is_empty() {
        return Err(Problem::at(
            value.span(),
            format!("`{key}` is empty: expected {example}"),
        ));
    }
    Ok(text)
}

/// `true` or `false`.
pub(crate) fn boolean(key: &str, value: &Spanned<Scalar>) -> Checked<bool> {
    match value.get_ref() {
        Scalar::Bool(b) => Ok(*b),
        _ => Err(expected(key, value, "true or false")),
    }
}

/// One of a fixed set of strings.
pub(crate) fn choice<T: Copy>(key: &str, value: &Spanned<Scalar>, choices: &[(&str, T)]) -> Checked<T> {
    if let Scalar::String(given) = value.get_ref()
        && let Some((_, chosen)) = choices.iter().find(|(name, _)| name == given)
    {
        return Ok(*chosen);
    }
    let names: Vec<String> = choices.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    let what = match names.as_slice() {
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        [] => "nothing".to_string(),
    };
    Err(expected(key, value, &what))
}

/// How a duration key treats zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    Allowed,
    /// A zero timeout or window would fail every item at random, or restart for ever.
    Refused,
}

/// A duration: a string with a unit, at most [`MAX_DURATION`].
pub(crate) fn duration(key: &str, value: &Spanned<Scalar>, zero: Zero) -> Checked<Duration> {
    let Scalar::String(text) = value.get_ref() else {
        return Err(expected(
            key,
            value,
            "a duration such as \"30s\" (a number and a unit: ms, s, m or h)",
        ));
    };
    let duration = parse_duration(text).map_err(|why| Problem::at(value.span(), format!("`{key}`: {why}")))?;
    if duration > MAX_DURATION {
        return Err(expected(key, value, "a duration of at most 8760h (a year)"));
    }
    if zero == Zero::Refused && duration.is_zero() {
        return Err(expected(key, value, "a duration of more than 0"));
    }
    Ok(duration)
}

/// "4096 bytes", "1MiB (1048576 bytes)": a size bound in words.
fn size_words(bytes: u64) -> String {
    let unit = [(40, "TiB"), (30, "GiB"), (20, "MiB")]
        .into_iter()
        .find(|(shift, _)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift));
    match (bytes, unit) {
        (1, _) => "1 byte".to_string(),
        (n, Some((shift, unit))) => format!("{}{unit} ({n} bytes)", n >> shift),
        (n, None) => format!("{n} bytes"),
    }
}

/// A size in bytes: a whole number of bytes, or a string with a unit (`"4MiB"`), in `min..=max`.
pub(crate) fn size(key: &str, value: &Spanned<Scalar>, min: u64, max: u64) -> Checked<u64> {
    let bytes = match value.get_ref() {
        Scalar::Integer(n) => u64::try_from(*n).ok(),
        Scalar::String(text) => {
            Some(parse_size(text).map_err(|why| Problem::at(value.span(), format!("`{key}`: {why}")))?)
        }
        _ => None,
    };
    match bytes {
        Some(bytes) if (min..=max).contains(&bytes) => Ok(bytes),
        Some(bytes) if bytes < min => Err(expected(key, value, &format!("a size of at least {}", size_words(min)))),
        Some(_) => Err(expected(key, value, &format!("a size of at most {}", size_words(max)))),
        None => Err(expected(
            key,
            value,
            "a size such as \"4MiB\" or a whole number of bytes",
        )),
    }
}

/// An array of strings (a program and its arguments).
pub(crate) fn string_array(key: &str, value: &Spanned<Scalar>) -> Checked<Vec<String>> {
    let Scalar::Array(elements) = value.get_ref() else {
        return Err(expected(
            key,
            value,
            "an array of strings such as [\"python3\", \"score.py\"]",
        ));
    };
    elements
        .iter()
        .enumerate()
        .map(|(index, element)| match element {
            Scalar::String(text) if !text.contains('\0') => Ok(text.clone()),
            other => Err(Problem::at(
                value.span(),
                format!(
                    "element {} of `{key}` is {other}: expected a string without NUL characters",
                    index + 1
                ),
            )),
        })
        .collect()
}

/// An environment table: names without `=` or NUL, string values; sorted by name.
pub(crate) fn env_table(key: &str, value: &Spanned<Scalar>) -> Checked<Vec<(String, String)>> {
    let Scalar::Table(table) = value.get_ref() else {
        return Err(expected(key, value, "a table of strings such as { LANG = \"C\" }"));
    };
    let mut variables = Vec::with_capacity(table.len());
    for (name, variable) in table {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Problem::at(
                value.span(),
                format!("`{key}`: `{name}` is not a variable name (it must be non-empty, without `=` or NUL)"),
            ));
        }
        match variable {
            Scalar::String(text) if !text.contains('\0') => variables.push((name.clone(), text.clone())),
            other => {
                return Err(Problem::at(
                    value.span(),
                    format!("`{key}.{name}` is {other}: expected a string without NUL characters"),
                ));
            }
        }
    }
    Ok(variables)
}

/// A table as JSON (a builtin's `args`). JSON has no NaN, infinity or datetime, and serde_json would turn the
/// first two into `null` (which a task then reads as "not given"): refused instead.
pub(crate) fn json_table(key: &str, value: &Spanned<Scalar>) -> Checked<serde_json::Value> {
    fn convert(path: &str, value: &Scalar) -> Result<serde_json::Value, String> {
        Ok(match value {
            Scalar::Integer(n) => {
                if let Ok(n) = i64::try_from(*n) {
                    n.into()
                } else if let Ok(n) = u64::try_from(*n) {
                    n.into()
                } else {
                    return Err(format!("`{path}` is {n}: expected a whole number that fits 64 bits"));
                }
            }
            Scalar::Float(x) => match serde_json::Number::from_f64(*x) {
                Some(number) => serde_json::Value::Number(number),
                None => return Err(format!("`{path}` is {value}: expected a finite number")),
            },
            Scalar::Bool(b) => (*b).into(),
            Scalar::String(text) => text.clone().into(),
            Scalar::Datetime(_) => {
                return Err(format!(
                    "`{path}` is {value}: task arguments take strings, numbers, booleans, arrays and tables (quote a date)"
                ));
            }
            Scalar::Array(elements) => elements
                .iter()
                .enumerate()
                .map(|(index, element)| convert(&format!("{path}[{index}]"), element))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
            Scalar::Table(table) => serde_json::Value::Object(
                table
                    .iter()
                    .map(|(name, inner)| Ok((name.clone(), convert(&format!("{path}.{name}"), inner)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
    match value.get_ref() {
        Scalar::Table(_) => convert(key, value.get_ref()).map_err(|message| Problem::at(value.span(), message)),
        _ => Err(expected(key, value, "a table such as { pattern = \"error\" }")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(value: Scalar) -> Spanned<Scalar> {
        Spanned::new(0..1, value)
    }

    #[test]
    fn one_wording_for_whole_numbers() {
        let nan = spanned(Scalar::Float(f64::NAN));
        assert_eq!(
            whole("count", &nan, 1, 1024)
                .err()
                .map(|p| p.message)
                .unwrap_or_default(),
            "`count` is nan: expected a whole number from 1 to 1024"
        );
        let big = spanned(Scalar::Integer(1 << 40));
        assert_eq!(
            whole_u32("retries", &big, 0, u32::MAX)
                .err()
                .map(|p| p.message)
                .unwrap_or_default(),
            "`retries` is 1099511627776: expected a whole number from 0 to 4294967295"
        );
        let negative = spanned(Scalar::Integer(-1));
        assert_eq!(
            whole("start", &negative, 0, u64::MAX)
                .err()
                .map(|p| p.message)
                .unwrap_or_default(),
            "`start` is -1: expected a whole number (0 or more)"
        );
        assert_eq!(
            whole("start", &spanned(Scalar::Integer(u64::MAX.into())), 0, u64::MAX).ok(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn datetimes_are_not_strings() {
        let date = spanned(Scalar::Datetime("1979-05-27".into()));
        assert_eq!(
            text("name", &date).err().map(|p| p.message).unwrap_or_default(),
            "`name` is the datetime 1979-05-27: expected a string"
        );
    }

    #[test]
    fn every_duration_is_capped_at_a_year() {
        let long = spanned(Scalar::String("8761h".into()));
        assert!(duration("fetch_timeout", &long, Zero::Refused).is_err_and(|p| p.message.contains("at most 8760h")));
        let year = spanned(Scalar::String("8760h".into()));
        assert_eq!(duration("grace", &year, Zero::Allowed).ok(), Some(MAX_DURATION));
    }

    #[test]
    fn json_refuses_what_json_cannot_hold() {
        let mut table = std::collections::BTreeMap::new();
        table.insert("exit_code".to_string(), Scalar::Float(f64::NAN));
        let args = spanned(Scalar::Table(table));
        assert_eq!(
            json_table("args", &args).err().map(|p| p.message).unwrap_or_default(),
            "`args.exit_code` is nan: expected a finite number"
        );
    }
}
