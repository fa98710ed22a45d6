//! The task API: what a builtin implements and what it is handed for each item.

use std::path::Path;

use serde::de::DeserializeOwned;
use shared::item::Value;
use shared::protocol::{TaskError, TaskErrorKind};

/// One item, as a task sees it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// 0-based index in input order.
    pub index: u64,
    pub input: ItemInput<'a>,
}

/// The data of one item: either numbers, or bytes that live in a read-only mapping (never copied).
#[derive(Debug, Clone, Copy)]
pub enum ItemInput<'a> {
    /// The half-open sub-range `[lo, hi)` of a range input.
    Range { lo: u64, hi: u64 },
    /// Bytes of a file: a line-aligned chunk of a `file` input, or a whole file.
    Bytes {
        data: &'a [u8],
        path: &'a Path,
        /// Offset of `data` in the file.
        offset: u64,
    },
    /// The body of a URL of a `urls` input, fetched by the supervisor into shared memory (never copied).
    Fetched { data: &'a [u8], url: &'a str },
}

/// Which kinds of items a task accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Sub-ranges of a `range` input.
    Range,
    /// Line-aligned chunks of a `file` input (`split = "lines"`).
    Chunks,
    /// Whole files: a `glob` input, or a `file` input with `split = "none"`; also the fetched bodies of a `urls`
    /// input, which a task sees as [`ItemInput::Fetched`] (read them with [`bytes_of`]).
    WholeFiles,
}

impl InputKind {
    pub fn describe(self) -> &'static str {
        match self {
            InputKind::Range => "range",
            InputKind::Chunks => "file chunks",
            InputKind::WholeFiles => "whole files (or URL bodies)",
        }
    }
}

/// A builtin task, configured from its `args`.
///
/// `run` is called once per item, on one thread; a task may keep state between items. An `Err` fails the item
/// (kind `error`) and the worker carries on; a panic fails the item (kind `panic`) and the worker carries on too.
pub trait Task {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String>;

    /// Like [`Task::run`], with the item's context and a failure that can say more than "error": the tasks that
    /// run the user's own processes report how such a process ended (exit code, signal, stderr tail). The
    /// default calls [`Task::run`].
    fn run_detailed(&mut self, item: Item<'_>, context: &ItemContext) -> Result<Value, TaskError> {
        let _ = context;
        self.run(item).map_err(|message| TaskError {
            kind: TaskErrorKind::Error,
            message,
        })
    }
}

/// Where and how often an item runs: what the user's processes see as `SUPERVISOR_WORKER` and
/// `SUPERVISOR_ATTEMPT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemContext {
    /// The worker's id in this run (0 when the supervisor did not say).
    pub worker: u64,
    /// 1 for the first run of the item, 2 for its first retry, and so on.
    pub attempt: u32,
}

/// Documentation of one task argument, for `supervisor tasks`.
#[derive(Debug, Clone, Copy)]
pub struct ArgInfo {
    pub name: &'static str,
    pub kind: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// A registered builtin.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub inputs: &'static [InputKind],
    pub args: &'static [ArgInfo],
    /// Builds the task from its `args` (a JSON object); an `Err` says which argument is wrong and why.
    pub build: fn(&serde_json::Value) -> Result<Box<dyn Task>, String>,
}

/// All builtin tasks, in the order `supervisor tasks` lists them.
pub fn builtins() -> &'static [TaskInfo] {
    crate::tasks::BUILTINS
}

/// The builtin called `name`.
pub fn lookup(name: &str) -> Option<&'static TaskInfo> {
    builtins().iter().find(|info| info.name == name)
}

/// Deserializes a task's `args` into its typed form (which should deny unknown fields), with a message that
/// names the task.
pub fn parse_args<T: DeserializeOwned>(task: &str, args: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(args).map_err(|error| {
        // Name the argument (`abort[1]`), and say what is expected in TOML words rather than serde's.
        let path = error.path().to_string();
        let message = error
            .inner()
            .to_string()
            .replace("unknown field", "unknown argument")
            .replace("missing field", "missing argument")
            .replace("there are no fields", "this task takes no arguments")
            .replace("expected u64", "expected a whole number (0 or more)")
            .replace("expected u32", "expected a whole number (0 or more)")
            .replace("expected u8", "expected a whole number from 0 to 255")
            .replace("expected i32", "expected a whole number")
            .replace("expected a sequence", "expected an array");
        match path.as_str() {
            // An unknown argument is named by the message already.
            _ if message.starts_with("unknown argument") => format!("bad args for task `{task}`: {message}"),
            "." | "" => format!("bad args for task `{task}`: {message}"),
            _ => format!("bad args for task `{task}`: `{path}`: {message}"),
        }
    })
}

/// The bytes of an item, or an error naming the task that needs them.
pub fn bytes_of<'a>(task: &str, item: &Item<'a>) -> Result<&'a [u8], String> {
    match item.input {
        ItemInput::Bytes { data, .. } | ItemInput::Fetched { data, .. } => Ok(data),
        ItemInput::Range { .. } => Err(format!("task `{task}` needs file input, got a range item")),
    }
}

/// The sub-range of an item, or an error naming the task that needs it.
pub fn range_of(task: &str, item: &Item<'_>) -> Result<(u64, u64), String> {
    match item.input {
        ItemInput::Range { lo, hi } => Ok((lo, hi)),
        ItemInput::Bytes { .. } | ItemInput::Fetched { .. } => {
            Err(format!("task `{task}` needs a range input, got file bytes"))
        }
    }
}
