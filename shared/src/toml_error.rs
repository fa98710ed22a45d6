//! Turning the TOML reader's messages into messages about the job file.
//!
//! serde reports a wrong type as `invalid type: string "3", expected u32` at the right place, but it does not say
//! which key that is, and it speaks Rust (`u32`, `struct RawRange`, `a map`). The span of the error is enough to
//! find the key again: the document is parsed once more into spanned tables ([`toml::de::DeTable`]) and walked
//! down to the innermost key whose value contains the error. The message then names that key (`task.retries`)
//! and says what is expected in TOML words.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The message to show for a TOML reader error `message` located at `span` of `text`.
pub(crate) fn explain(text: &str, span: &Range<usize>, message: &str) -> String {
    let message = message.trim_end();
    let Ok(document) = DeTable::parse(text) else {
        return explain_syntax(text, span, message);
    };
    let (path, on_key) = key_path(document.get_ref(), span.start);
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // The span is the unknown key itself: the table it is in is the path without it.
        let table = if on_key {
            &path[..path.len().saturating_sub(1)]
        } else {
            &path[..]
        };
        let (key, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        let expected = expected.replace("there are no fields", "this table takes no keys");
        let place = match table {
            [] => "at the top level".to_string(),
            _ => format!("in {}", table_name(table)),
        };
        return format!("unknown key {key} {place}: {expected}");
    }
    if let Some(key) = message.strip_prefix("missing field ") {
        // A key missing at the top level is reported with an empty span at the start of the file.
        return match path.is_empty() || span.is_empty() {
            true if key == "`input`" || key == "`task`" => {
                format!("the job file has no [{}] table: it is required", key.trim_matches('`'))
            }
            true => format!("the job file is missing the required key {key}"),
            false => format!("{} is missing the required key {key}", table_name(&path)),
        };
    }
    let expected = plain_words(message, path.last().map(String::as_str));
    match path.is_empty() {
        true => expected,
        false => format!("`{}`: {expected}", path.join(".")),
    }
}

/// Messages of a document that does not even parse: only the text around the span can help.
fn explain_syntax(text: &str, span: &Range<usize>, message: &str) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let at_end_of_line = text[start..].chars().next().is_none_or(|c| c == '\n' || c == '\r');
    if message == "duplicate key" {
        let key = text.get(span.clone()).unwrap_or("").trim();
        return if line.trim_start().starts_with('[') {
            format!("table [{key}] is defined twice: each table may appear once")
        } else {
            format!("duplicate key `{key}`: each key may appear once in a table")
        };
    }
    if at_end_of_line && let Some(key) = line.trim_end().strip_suffix('=') {
        return format!("`{}` has no value after `=`", key.trim());
    }
    message.to_string()
}

/// The keys from the top of `table` down to the innermost value (or key) containing byte `at`, and whether `at`
/// is on the last key itself rather than in its value.
fn key_path(table: &DeTable<'_>, at: usize) -> (Vec<String>, bool) {
    for (key, value) in table.iter() {
        if key.span().contains(&at) {
            return (vec![key.get_ref().to_string()], true);
        }
        if value.span().contains(&at) {
            let (mut rest, on_key) = value_path(value, at);
            rest.insert(0, key.get_ref().to_string());
            return (rest, on_key);
        }
    }
    // Tables written as `[header]` have spans around the header only: find the last header before `at`.
    let mut best: Option<(usize, Vec<String>, bool)> = None;
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref()
            && key.span().start <= at
            && best.as_ref().is_none_or(|(start, ..)| key.span().start > *start)
        {
            let (mut rest, on_key) = key_path(inner, at);
            rest.insert(0, key.get_ref().to_string());
            best = Some((key.span().start, rest, on_key));
        }
    }
    best.map_or((Vec::new(), false), |(_, path, on_key)| (path, on_key))
}

fn value_path(value: &Spanned<DeValue<'_>>, at: usize) -> (Vec<String>, bool) {
    match value.get_ref() {
        DeValue::Table(table) => key_path(table, at),
        DeValue::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                if element.span().contains(&at) {
                    let (mut rest, on_key) = value_path(element, at);
                    rest.insert(0, format!("[{index}]"));
                    return (rest, on_key);
                }
            }
            (Vec::new(), false)
        }
        _ => (Vec::new(), false),
    }
}

/// `[task]`, `` `input.range` `` or "the top level" for a table path.
fn table_name(path: &[String]) -> String {
    match path {
        [] => "the top level".to_string(),
        [one] => format!("[{one}]"),
        _ => format!("`{}`", path.join(".")),
    }
}

/// serde's Rust words replaced by what to write in TOML.
fn plain_words(message: &str, key: Option<&str>) -> String {
    if message.contains("expected struct Raw") {
        let example = match key {
            Some("range") => " such as `{ start = 0, end = 100, chunk = 10 }`",
            _ => "",
        };
        return format!("expected a table{example}");
    }
    message
        .replace(" as i128", "")
        .replace("expected u64", "expected an integer from 0 to 18446744073709551615")
        .replace("expected u32", "expected an integer from 0 to 4294967295")
        .replace("expected a map", "expected a table")
        .replace("expected a sequence", "expected an array")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain_at(text: &str, needle: &str, message: &str) -> String {
        let start = text.find(needle).expect("needle in text");
        explain(text, &(start..start + needle.len()), message)
    }

    #[test]
    fn names_the_key_of_a_wrong_type() {
        let text = "[input]\nrange = { start = \"0\", end = 10 }\n[task]\nbuiltin = \"noop\"\nretries = \"3\"\n";
        assert_eq!(
            explain_at(text, "\"0\"", "invalid type: string \"0\", expected u64"),
            "`input.range.start`: invalid type: string \"0\", expected an integer from 0 to 18446744073709551615"
        );
        assert_eq!(
            explain_at(text, "\"3\"", "invalid type: string \"3\", expected u32"),
            "`task.retries`: invalid type: string \"3\", expected an integer from 0 to 4294967295"
        );
    }

    #[test]
    fn unknown_and_missing_keys_name_their_table() {
        let text = "[input]\nrange = { start = 0, end = 10 }\n[task]\ncolour = 1\n";
        assert_eq!(
            explain_at(
                text,
                "colour",
                "unknown field `colour`, expected one of `builtin`, `args`"
            ),
            "unknown key `colour` in [task]: expected one of `builtin`, `args`"
        );
        assert_eq!(
            explain_at(text, "[task]", "missing field `builtin`"),
            "[task] is missing the required key `builtin`"
        );
        assert_eq!(
            explain("[task]\nbuiltin = \"noop\"\n", &(0..0), "missing field `input`"),
            "the job file has no [input] table: it is required"
        );
    }

    #[test]
    fn syntax_errors_are_explained_from_the_text() {
        let text = "[task]\nbuiltin =\n";
        assert_eq!(
            explain(text, &(16..16), "string values must be quoted, expected literal string"),
            "`builtin` has no value after `=`"
        );
        let text = "[task]\nbuiltin = \"a\"\nbuiltin = \"b\"\n";
        let second = text.rfind("builtin").expect("two keys");
        assert_eq!(
            explain(text, &(second..second + 7), "duplicate key"),
            "duplicate key `builtin`: each key may appear once in a table"
        );
        let text = "[task]\nbuiltin = \"a\"\n[task]\n";
        let second = text.rfind("task").expect("two headers");
        assert_eq!(
            explain(text, &(second..second + 4), "duplicate key"),
            "table [task] is defined twice: each table may appear once"
        );
    }
}
