//! `[task]`: what runs on each item — a `builtin` with its `args`, or the user's own `command`, `worker` or
//! `worker_bin` with their options — and the per-item `timeout`, `retries` and `retry_backoff`.
//!
//! Checked here: exactly one kind of task, which options go with which kind, placeholders against the input,
//! every value's type and range. Left to others: whether the builtin exists and takes its `args` (the `child`
//! crate owns the tasks; the supervisor asks it), and whether programs, `worker_bin` and `cwd` exist
//! (`supervisor::spec_fs`).

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::input::{InputSpec, Split};
use super::raw::{RawTask, Scalar};
use super::value::{self, Checked, Problem, Zero};
use crate::usertask::{CommandSpec, Parse, PlaceholderInput, ProcessSpec, StdinMode, UserTask};

/// `[task]`.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// `builtin`: the task's name (empty when `user` is set).
    pub builtin: String,
    /// `command`, `worker` or `worker_bin`: the user's own work instead of a builtin.
    pub user: Option<UserTask>,
    /// Where the task is named: `builtin`, or the `command`, `worker` or `worker_bin` that replaces it.
    pub builtin_span: Range<usize>,
    /// `args` converted to JSON (an empty object when omitted).
    pub args: serde_json::Value,
    pub args_span: Range<usize>,
    /// Where `cwd` is written, when it is.
    pub cwd_span: Option<Range<usize>>,
    /// `timeout`: wall time one item may take before its worker is killed and the item fails with `timeout`.
    pub timeout: Option<Duration>,
    /// `retries`: further runs of a failed item (on a fresh worker when its worker died), default 0.
    pub retries: u32,
    /// `retry_backoff`: wait before the first retry, doubled for each further one; default 0.
    pub retry_backoff: Duration,
}

/// Largest `retries` (and `[input] fetch_retries`): more is a mistake (with a backoff, the last retries would
/// wait for years), and a bound a person can read.
pub const MAX_RETRIES: u32 = 1000;

/// The four kinds of task, as their keys.
const KINDS: [&str; 4] = ["builtin", "command", "worker", "worker_bin"];

/// `[task]` resolved: relative paths against `dir`, placeholders checked against `input`.
pub(crate) fn task(raw: &Spanned<RawTask>, input: &InputSpec, dir: &Path) -> Checked<TaskSpec> {
    let table = raw.get_ref();
    let keys = [&table.builtin, &table.command, &table.worker, &table.worker_bin];
    let given: Vec<(&str, &Spanned<Scalar>)> = KINDS
        .into_iter()
        .zip(keys)
        .filter_map(|(kind, value)| value.as_ref().map(|value| (kind, value)))
        .collect();
    let (kind, named) = match given.as_slice() {
        [] => {
            return Err(Problem::at(
                raw.span(),
                "[task] needs exactly one of `builtin`, `command`, `worker` or `worker_bin` (found none)",
            ));
        }
        [(kind, value)] => (*kind, *value),
        [(first, _), (second, value), ..] => {
            return Err(Problem::at(
                value.span(),
                format!(
                    "[task] needs exactly one of `builtin`, `command`, `worker` or `worker_bin` (found `{first}` and `{second}`)"
                ),
            ));
        }
    };
    // Options that only some kinds take.
    let options = [
        ("parse", &table.parse, &["command"][..]),
        ("stdin", &table.stdin, &["command"][..]),
        ("env", &table.env, &["command", "worker"][..]),
        ("cwd", &table.cwd, &["command", "worker"][..]),
        ("max_output", &table.max_output, &["command", "worker"][..]),
        ("args", &table.args, &["builtin"][..]),
    ];
    for (key, value, kinds) in options {
        if let Some(value) = value
            && !kinds.contains(&kind)
        {
            let takes: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
            return Err(Problem::at(
                value.span(),
                format!("`{key}` applies only to a {} task, not to `{kind}`", takes.join(" or ")),
            ));
        }
    }
    let builtin_span = named.span();
    let (builtin, user) = match kind {
        "builtin" => (
            value::nonempty_text("builtin", named, "a task name such as \"sha256\"")?,
            None,
        ),
        "worker_bin" => {
            let path = value::nonempty_text("worker_bin", named, "a path such as \"target/release/my-worker\"")?;
            (String::new(), Some(UserTask::WorkerBin { path: dir.join(path) }))
        }
        "command" => {
            let argv = argv(kind, named, dir)?;
            crate::usertask::check_placeholders(&argv, placeholder_input(input))
                .map_err(|message| Problem::at(named.span(), format!("`command`: {message}")))?;
            let command = CommandSpec {
                process: process(table, argv, dir)?,
                parse: match &table.parse {
                    None => Parse::Text,
                    Some(parse) => value::choice("parse", parse, &[("text", Parse::Text), ("json", Parse::Json)])?,
                },
                stdin: match &table.stdin {
                    None => StdinMode::Item,
                    Some(stdin) => {
                        value::choice("stdin", stdin, &[("item", StdinMode::Item), ("null", StdinMode::Null)])?
                    }
                },
            };
            (String::new(), Some(UserTask::Command(command)))
        }
        _ => {
            let argv = argv(kind, named, dir)?;
            (String::new(), Some(UserTask::Worker(process(table, argv, dir)?)))
        }
    };
    let optional_duration = |value: &Option<Spanned<Scalar>>, key: &str, zero: Zero| {
        value
            .as_ref()
            .map(|value| value::duration(key, value, zero))
            .transpose()
    };
    Ok(TaskSpec {
        builtin,
        user,
        args: match &table.args {
            None => serde_json::Value::Object(Default::default()),
            Some(args) => value::json_table("args", args)?,
        },
        args_span: table.args.as_ref().map_or(builtin_span.clone(), Spanned::span),
        builtin_span,
        cwd_span: table.cwd.as_ref().map(Spanned::span),
        timeout: optional_duration(&table.timeout, "timeout", Zero::Refused)?,
        retries: match &table.retries {
            None => 0,
            Some(n) => value::whole_u32("retries", n, 0, MAX_RETRIES)?,
        },
        retry_backoff: optional_duration(&table.retry_backoff, "retry_backoff", Zero::Allowed)?.unwrap_or_default(),
    })
}

/// The kinds of item, as far as a command's placeholders care.
fn placeholder_input(input: &InputSpec) -> PlaceholderInput {
    match input {
        InputSpec::Range { .. } => PlaceholderInput::Range,
        InputSpec::File {
            split: Split::Lines, ..
        }
        | InputSpec::Lines { .. } => PlaceholderInput::Chunks,
        InputSpec::File { split: Split::None, .. } | InputSpec::Glob { .. } => PlaceholderInput::WholeFiles,
        InputSpec::Urls { .. } => PlaceholderInput::Urls,
    }
}

/// A `command` or `worker` argv: a program and its arguments; a relative program path (one with a `/`) is
/// relative to the job file's folder, like every other path in it.
fn argv(kind: &str, value: &Spanned<Scalar>, dir: &Path) -> Checked<Vec<String>> {
    let mut argv = value::string_array(kind, value)?;
    match argv.first_mut() {
        None => Err(Problem::at(
            value.span(),
            format!(
                "`{kind}` is empty: expected a program and its arguments, e.g. [\"python3\", \"score.py\", \"{{path}}\"]"
            ),
        )),
        Some(program) if program.is_empty() => Err(Problem::at(
            value.span(),
            format!("`{kind}`: the program name is empty"),
        )),
        Some(program) => {
            if program.contains('/') && !Path::new(program.as_str()).is_absolute() {
                *program = dir.join(program.as_str()).to_string_lossy().into_owned();
            }
            Ok(argv)
        }
    }
}

/// The process options of a `command` or `worker`.
fn process(table: &RawTask, argv: Vec<String>, dir: &Path) -> Checked<ProcessSpec> {
    Ok(ProcessSpec {
        argv,
        env: match &table.env {
            None => Default::default(),
            Some(env) => value::env_table("env", env)?.into_iter().collect(),
        },
        cwd: match &table.cwd {
            None => dir.to_path_buf(),
            Some(cwd) => dir.join(value::nonempty_text("cwd", cwd, "a folder such as \"work\"")?),
        },
        max_output: match &table.max_output {
            None => crate::usertask::DEFAULT_MAX_OUTPUT,
            Some(bytes) => value::size("max_output", bytes, 1, u64::MAX)?,
        },
    })
}
