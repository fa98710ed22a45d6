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
        let place = match table {
            [] => "at the top level".to_string(),
            _ => format!("in {}", table_name(table)),
        };
        // serde lists the keys as "expected one of `a`, `b`" (or "expected `a`"): the nearest one is the hint.
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let hint = match nearest(key.trim_matches('`'), &known) {
            Some(near) => format!("did you mean `{near}`?"),
            None if let Some((table, near)) = other_table(key.trim_matches('`'), table) => {
                if near == key.trim_matches('`') {
                    format!("`{near}` is a key of [{table}]")
                } else {
                    format!("did you mean `{near}` in [{table}]?")
                }
            }
            None if known.is_empty() => "this table takes no keys".to_string(),
            None => format!(
                "expected one of {}",
                known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ),
        };
        return format!("unknown key {key} {place}: {hint}");
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
    let words = plain_words(message, path.last().map(String::as_str));
    match path.is_empty() {
        true => words,
        false if words.starts_with("is ") => format!("`{}` {words}", path.join(".")),
        false => format!("`{}`: {words}", path.join(".")),
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

/// The table other than `current` (a table path) with a key equal or nearest to `key`, and that key.
fn other_table(key: &str, current: &[String]) -> Option<(&'static str, &'static str)> {
    let current = current.first().map(String::as_str);
    crate::job::raw::TABLE_KEYS
        .iter()
        .filter(|(table, _)| Some(*table) != current)
        .find_map(|(table, keys)| nearest(key, keys).map(|near| (*table, near)))
}

/// The known key closest to `key` by edit distance, when it is close enough to be a typo: at most one edit in a
/// short key, two in a longer one (`timout` → `timeout`, `max_restart` → `max_restarts`).
pub(crate) fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = if key.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two neighbours (`ned` → `end` is
/// one edit), as the optimal-string-alignment variant of Damerau–Levenshtein.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows: the one before the previous (for swaps), the previous, the current.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

/// serde's Rust words replaced by what to write in TOML.
fn plain_words(message: &str, key: Option<&str>) -> String {
    // Keys are read as any TOML value and checked by the job's own rules (`job::value`), so what is left here
    // are whole tables of the wrong type: said as those rules say it, "`KEY` is VALUE: expected WHAT".
    let Some((given, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message.replace("expected a map", "expected a table");
    };
    let given = match given {
        "sequence" => "an array".to_string(),
        "map" => "a table".to_string(),
        other => other
            .split_once(' ')
            .map_or(other, |(_, value)| value)
            .trim_matches('`')
            .to_string(),
    };
    let expected = if expected.starts_with("struct Raw") || expected == "a map" {
        "a table".to_string()
    } else {
        expected.to_string()
    };
    match key {
        Some(_) => format!("is {given}: expected {expected}"),
        None => format!("{given}: expected {expected}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain_at(text: &str, needle: &str, message: &str) -> String {
        let start = text.find(needle).expect("needle in text");
        explain(text, &(start..start + needle.len()), message)
    }

    #[test]
    fn names_the_key_of_a_table_of_the_wrong_type() {
        let text = "[input]\nrange = 3\n[task]\nbuiltin = \"noop\"\n";
        assert_eq!(
            explain_at(text, "3", "invalid type: integer `3`, expected a map"),
            "`input.range` is 3: expected a table"
        );
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_key() {
        let text = "[input]\nrange = { start = 0, end = 10 }\n[task]\ntimout = 1\n";
        assert_eq!(
            explain_at(
                text,
                "timout",
                "unknown field `timout`, expected one of `builtin`, `timeout`, `retries`"
            ),
            "unknown key `timout` in [task]: did you mean `timeout`?"
        );
        assert_eq!(nearest("timout", &["timeout", "retries"]), Some("timeout"));
        let text = "[input]\nrange = { start = 0, end = 10 }\n[supervise]\ntimout = 1\n";
        assert_eq!(
            explain_at(
                text,
                "timout",
                "unknown field `timout`, expected one of `max_restarts`, `within`"
            ),
            "unknown key `timout` in [supervise]: did you mean `timeout` in [task]?"
        );
        assert_eq!(
            nearest("max_restart", &["max_restarts", "within"]),
            Some("max_restarts")
        );
        assert_eq!(nearest("colour", &["builtin", "args"]), None);
        assert_eq!(nearest("cwdd", &["cwd", "env"]), Some("cwd"));
        assert_eq!(nearest("ned", &["start", "end", "chunk"]), Some("end"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
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
