//! The user's own work: `[task] command`, `[task] worker` and `[task] worker_bin`, as opposed to a `builtin`.
//!
//! This module holds the resolved form of those keys ([`UserTask`]) and the rules that need no process: which
//! placeholders a command may use for which kind of input, and how an argument template expands for one item.
//! Running the command or the persistent process is the worker's job (`child::user`); the supervisor passes a
//! [`UserTask`] to every worker as the JSON `args` of the reserved task [`UserTask::task_name`], so that the
//! protocol's `Init` message needs no change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default `[task] max_output`: the most stdout kept per item (a command's value, or one protocol line).
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;

/// Reserved task name of a `command` task in `Init` (not a valid builtin name, so a job file cannot name it).
pub const COMMAND_TASK: &str = "@command";
/// Reserved task name of a persistent `worker` task in `Init`.
pub const WORKER_TASK: &str = "@worker";
/// Reserved task name of a `worker_bin` task in `Init` (the user's binary ignores it: its task is compiled in).
pub const WORKER_BIN_TASK: &str = "@worker_bin";

/// What `[task]` runs when it is not a builtin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserTask {
    /// `command = [...]`: one process per item.
    Command(CommandSpec),
    /// `worker = [...]`: one long-lived process per worker speaking JSON lines.
    Worker(ProcessSpec),
    /// `worker_bin = "..."`: a Rust binary built on the `child` crate, started instead of `supervisor __worker`.
    WorkerBin { path: PathBuf },
}

impl UserTask {
    /// The reserved task name sent in `Init`.
    pub fn task_name(&self) -> &'static str {
        match self {
            UserTask::Command(_) => COMMAND_TASK,
            UserTask::Worker(_) => WORKER_TASK,
            UserTask::WorkerBin { .. } => WORKER_BIN_TASK,
        }
    }

    /// A short description for `check` and the journal fingerprint, e.g. `command python3 score.py {path}`.
    pub fn describe(&self) -> String {
        match self {
            UserTask::Command(spec) => format!("command {}", spec.process.argv.join(" ")),
            UserTask::Worker(spec) => format!("worker {}", spec.argv.join(" ")),
            UserTask::WorkerBin { path } => format!("worker_bin {}", path.display()),
        }
    }
}

/// A process the worker starts: its argv (placeholders not yet expanded), environment and folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `[task] env`: added to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// `[task] cwd`: absolute; the job file's folder by default.
    pub cwd: PathBuf,
    /// `[task] max_output`: bytes of stdout kept per item; more fails the item.
    pub max_output: u64,
}

/// `command = [...]` with its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub process: ProcessSpec,
    pub parse: Parse,
    pub stdin: StdinMode,
}

/// `[task] parse`: how a command's stdout becomes the item's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parse {
    /// The text, without its trailing newline.
    Text,
    /// One JSON document.
    Json,
}

/// `[task] stdin`: what a command reads on its standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    /// The item's bytes (nothing for a range item).
    Item,
    /// `/dev/null`.
    Null,
}

/// The kinds of items, as far as placeholders care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderInput {
    Range,
    Chunks,
    WholeFiles,
    Urls,
}

impl PlaceholderInput {
    /// The placeholders a command may use with this kind of input.
    pub fn valid(self) -> &'static [&'static str] {
        match self {
            PlaceholderInput::Range => &["item", "start", "end"],
            PlaceholderInput::Chunks => &["item", "path", "offset", "len"],
            PlaceholderInput::WholeFiles => &["item", "path"],
            PlaceholderInput::Urls => &["item", "path", "url", "len"],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            PlaceholderInput::Range => "a range input",
            PlaceholderInput::Chunks => "a file input split into chunks",
            PlaceholderInput::WholeFiles => "whole-file items",
            PlaceholderInput::Urls => "a urls input",
        }
    }
}

/// One part of an argument template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    /// `{name}`.
    Placeholder(&'a str),
    /// `{{` or `}}`: a literal brace.
    Brace(char),
}

/// Splits an argument into text and placeholders. `{{` and `}}` are literal braces.
pub fn pieces(arg: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = arg;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("{{") {
            pieces.push(Piece::Brace('{'));
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            pieces.push(Piece::Brace('}'));
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "`{arg}` has a `{{` without a closing `}}` (write `{{{{` for a literal brace)"
                ));
            };
            pieces.push(Piece::Placeholder(&after[..end]));
            rest = &after[end + 1..];
        } else if rest.starts_with('}') {
            return Err(format!(
                "`{arg}` has a `}}` without an opening `{{` (write `}}}}` for a literal brace)"
            ));
        } else {
            let end = rest.find(['{', '}']).unwrap_or(rest.len());
            pieces.push(Piece::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(pieces)
}

/// Checks every placeholder of `argv` against the input kind; the error names the placeholder and the valid ones.
pub fn check_placeholders(argv: &[String], input: PlaceholderInput) -> Result<(), String> {
    for arg in argv {
        for piece in pieces(arg)? {
            if let Piece::Placeholder(name) = piece
                && !input.valid().contains(&name)
            {
                let valid: Vec<String> = input.valid().iter().map(|name| format!("{{{name}}}")).collect();
                return Err(format!(
                    "unknown placeholder `{{{name}}}` for {}: expected one of {}",
                    input.describe(),
                    valid.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Expands one argument; `value` gives each placeholder's text (`None` for a name it does not know).
pub fn expand(arg: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    for piece in pieces(arg)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Brace(brace) => out.push(brace),
            Piece::Placeholder(name) => match value(name) {
                Some(text) => out.push_str(&text),
                None => return Err(format!("placeholder `{{{name}}}` has no value for this item")),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_with_escaped_braces() {
        let value = |name: &str| (name == "path").then(|| "/tmp/a b".to_string());
        assert_eq!(expand("{path}", value).as_deref(), Ok("/tmp/a b"));
        assert_eq!(expand("x={path};{{y}}", value).as_deref(), Ok("x=/tmp/a b;{y}"));
        assert!(expand("{item}", value).is_err());
        assert!(pieces("{path").is_err());
        assert!(pieces("a}b").is_err());
    }

    #[test]
    fn placeholders_depend_on_the_input() {
        let argv = vec!["wc".to_string(), "-l".to_string(), "{path}".to_string()];
        assert!(check_placeholders(&argv, PlaceholderInput::WholeFiles).is_ok());
        let error = check_placeholders(&argv, PlaceholderInput::Range).expect_err("no path for ranges");
        assert!(
            error.contains("`{path}`") && error.contains("{start}, {end}"),
            "{error}"
        );
        let error =
            check_placeholders(&["{url}".to_string()], PlaceholderInput::Chunks).expect_err("unknown placeholder");
        assert!(error.contains("{url}") && error.contains("{offset}"), "{error}");
    }
}
