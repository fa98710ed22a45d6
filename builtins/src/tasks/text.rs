//! Tasks over bytes (file chunks or whole files): `line-count`, `word-count`, `grep`.
//!
//! File chunks are line-aligned, so counting per chunk and summing gives the whole file's count.

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use shared::item::Value;

use super::no_args;
use child::task::{Item, Task, bytes_of};

use crate::registry::{ArgInfo, parse_args};

struct LineCount;

impl Task for LineCount {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let data = bytes_of("line-count", &item)?;
        Ok(Value::UInt(count_newlines(data) as u128))
    }
}

/// Counts `\n` bytes with memchr's SIMD search (several times faster than a byte loop on long lines).
fn count_newlines(data: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', data).count()
}

pub(super) fn build_line_count(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    no_args("line-count", args)?;
    Ok(Box::new(LineCount))
}

struct WordCount;

impl Task for WordCount {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let data = bytes_of("word-count", &item)?;
        Ok(Value::UInt(count_words(data) as u128))
    }
}

/// Words as GNU `wc -w` counts them in the C locale: a word starts at a printable byte that follows whitespace
/// (or the start); whitespace is space, `\t`, `\n`, `\v`, `\f`, `\r`; other bytes neither start nor end a word.
fn count_words(data: &[u8]) -> usize {
    let mut words = 0;
    let mut in_word = false;
    for &b in data {
        match b {
            b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' => in_word = false,
            0x21..=0x7e => {
                words += usize::from(!in_word);
                in_word = true;
            }
            _ => {}
        }
    }
    words
}

pub(super) fn build_word_count(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    no_args("word-count", args)?;
    Ok(Box::new(WordCount))
}

pub(super) const GREP_ARGS: &[ArgInfo] = &[
    ArgInfo {
        name: "pattern",
        kind: "string",
        default: "(required)",
        help: "regular expression (Rust regex syntax, close to `grep -E`), matched against each line",
    },
    ArgInfo {
        name: "ignore_case",
        kind: "bool",
        default: "false",
        help: "match case-insensitively, as `grep -i`",
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrepArgs {
    pattern: String,
    #[serde(default)]
    ignore_case: bool,
}

struct Grep {
    regex: Regex,
}

impl Task for Grep {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let data = bytes_of("grep", &item)?;
        Ok(Value::UInt(count_matching_lines(&self.regex, data) as u128))
    }
}

/// Lines (split on `\n`; a last line without a newline counts) on which `regex` matches.
fn count_matching_lines(regex: &Regex, data: &[u8]) -> usize {
    // No bytes is no lines; "\n" is one empty line (which `^$` matches), so check before stripping.
    if data.is_empty() {
        return 0;
    }
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.split(|&b| b == b'\n').filter(|line| regex.is_match(line)).count()
}

pub(super) fn build_grep(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    let args: GrepArgs = parse_args("grep", args)?;
    let regex = RegexBuilder::new(&args.pattern)
        .case_insensitive(args.ignore_case)
        .build()
        .map_err(|error| {
            // The regex crate's message spans lines (the pattern, a caret, then `error: …`): keep the reason.
            let text = error.to_string();
            let reason = text
                .lines()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or(&text);
            format!(
                "bad args for task `grep`: `pattern` {:?} is not a valid regex: {reason}",
                args.pattern
            )
        })?;
    Ok(Box::new(Grep { regex }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines() {
        assert_eq!(count_newlines(b""), 0);
        assert_eq!(count_newlines(b"a\nb\n\nc"), 3);
    }

    #[test]
    fn words_follow_wc_in_the_c_locale() {
        assert_eq!(count_words(b""), 0);
        assert_eq!(count_words(b"  one two\tthree\nfour  "), 4);
        // Non-printable bytes neither start nor end a word (checked against `LC_ALL=C wc -w`: 2).
        assert_eq!(count_words(b"\x01 a b\x02c"), 2);
    }

    #[test]
    fn grep_counts_lines_including_an_unterminated_last_one() {
        let regex = Regex::new("ab+").expect("valid");
        assert_eq!(count_matching_lines(&regex, b"abb\nxx\nab\n"), 2);
        assert_eq!(count_matching_lines(&regex, b"abb\nxx\nab"), 2);
        assert_eq!(count_matching_lines(&regex, b""), 0);
        // Regression: a chunk that is exactly one empty line was counted as no lines.
        let empty = Regex::new("^$").expect("valid");
        assert_eq!(count_matching_lines(&empty, b"\n"), 1);
        assert_eq!(count_matching_lines(&empty, b"a\n\nb\n"), 1);
        let anchored = Regex::new("^x$").expect("valid");
        assert_eq!(count_matching_lines(&anchored, b"x\nxx\nx\n"), 2);
    }

    #[test]
    fn grep_rejects_a_bad_pattern_and_unknown_args() {
        assert!(build_grep(&serde_json::json!({"pattern": "("})).is_err());
        assert!(build_grep(&serde_json::json!({"pattern": "a", "colour": 1})).is_err());
        assert!(build_grep(&serde_json::json!({})).is_err());
    }
}
