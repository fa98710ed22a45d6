//! The builtin tasks. Each file holds a family; [`BUILTINS`] is the registry `supervisor tasks` prints.

mod digest;
mod fault;
mod numeric;
mod text;
mod thumbnail;

use shared::item::Value;

use child::task::{Item, Task};

use crate::registry::{InputKind, TaskInfo, parse_args};

const ANY_INPUT: &[InputKind] = &[InputKind::Range, InputKind::Chunks, InputKind::WholeFiles];
const BYTES_INPUT: &[InputKind] = &[InputKind::Chunks, InputKind::WholeFiles];

/// Every builtin, in listing order.
pub static BUILTINS: &[TaskInfo] = &[
    TaskInfo {
        name: "sum-squares",
        summary: "Σ i² over the item's sub-range, exact in 128 bits (fails the item on overflow)",
        inputs: &[InputKind::Range],
        args: &[],
        build: numeric::build_sum_squares,
    },
    TaskInfo {
        name: "count-primes",
        summary: "number of primes in the item's sub-range (segmented sieve)",
        inputs: &[InputKind::Range],
        args: &[],
        build: numeric::build_count_primes,
    },
    TaskInfo {
        name: "line-count",
        summary: "number of newline bytes, as `wc -l`",
        inputs: BYTES_INPUT,
        args: &[],
        build: text::build_line_count,
    },
    TaskInfo {
        name: "word-count",
        summary: "number of words, as `LC_ALL=C wc -w`",
        inputs: BYTES_INPUT,
        args: &[],
        build: text::build_word_count,
    },
    TaskInfo {
        name: "grep",
        summary: "number of lines matching a regular expression, as `grep -cE`",
        inputs: BYTES_INPUT,
        args: text::GREP_ARGS,
        build: text::build_grep,
    },
    TaskInfo {
        name: "sha256",
        summary: "SHA-256 of a whole file as lowercase hex, as `sha256sum`",
        inputs: &[InputKind::WholeFiles],
        args: &[],
        build: digest::build_sha256,
    },
    TaskInfo {
        name: "thumbnail",
        summary: "decodes a JPEG, PNG, GIF or WebP image and writes a PNG thumbnail to `out_dir`; value {width, height, path}",
        inputs: &[InputKind::WholeFiles],
        args: thumbnail::ARGS,
        build: thumbnail::build,
    },
    TaskInfo {
        name: "noop",
        summary: "does nothing and returns null; for measuring overhead",
        inputs: ANY_INPUT,
        args: &[],
        build: build_noop,
    },
    TaskInfo {
        name: "fault",
        summary: "deterministic fault injection: the listed items crash or misbehave, the rest return their index",
        inputs: ANY_INPUT,
        args: fault::ARGS,
        build: fault::build,
    },
];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// Checks that a task without arguments was given none.
fn no_args(task: &str, args: &serde_json::Value) -> Result<(), String> {
    parse_args::<NoArgs>(task, args).map(|_| ())
}

struct Noop;

impl Task for Noop {
    fn run(&mut self, _item: Item<'_>) -> Result<Value, String> {
        Ok(Value::Null)
    }
}

fn build_noop(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    no_args("noop", args)?;
    Ok(Box::new(Noop))
}
