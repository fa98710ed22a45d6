//! The registry of the supervisor's tasks: what `supervisor tasks` lists and `supervisor check` validates
//! against ([`TaskInfo`]), and [`build`], the task factory the supervisor's worker hands to the worker loop.

use child::task::Task;
use serde::de::DeserializeOwned;

/// Which kinds of items a task accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Sub-ranges of a `range` input.
    Range,
    /// Line-aligned chunks of a `file` input (`split = "lines"`).
    Chunks,
    /// Whole files: a `glob` input, or a `file` input with `split = "none"`; also the fetched bodies of a `urls`
    /// input, which a task sees as `ItemInput::Fetched` (read them with `child::task::bytes_of`).
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
pub fn all() -> &'static [TaskInfo] {
    crate::tasks::BUILTINS
}

/// The builtin called `name`.
pub fn lookup(name: &str) -> Option<&'static TaskInfo> {
    all().iter().find(|info| info.name == name)
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

/// Builds the task `Init` names: a reserved name of the user's processes (`command`, `worker`), or a builtin
/// from its `args` (JSON text).
pub fn build(task_name: &str, args_json: &str) -> Result<Box<dyn Task>, String> {
    if let Some(task) = crate::user::build(task_name, args_json) {
        return task;
    }
    let info = lookup(task_name).ok_or_else(|| format!("unknown task `{task_name}`"))?;
    let args: serde_json::Value =
        serde_json::from_str(args_json).map_err(|error| format!("task args are not JSON: {error}"))?;
    (info.build)(&args)
}
