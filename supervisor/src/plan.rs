//! From a validated job spec to a run plan: the task checked against its input (a builtin must accept the kind
//! of items the input gives), and its `path` arguments made absolute.
//!
//! Listing the input is the [`input`] module's (one file per kind, behind [`input::Source`]); the dispatcher
//! owns the listed source and pulls items from it.

use std::path::Path;

use builtins::{InputKind, TaskInfo};
use shared::job::{InputSpec, JobSpec};

use crate::error::Error;
use crate::input;

/// Checks `[task]`: the builtin exists, accepts its `args`, and accepts the job's kind of input.
pub fn check_task(spec: &JobSpec) -> Result<Option<&'static TaskInfo>, Error> {
    let task = &spec.task;
    if task.user.is_some() {
        // Placeholders, programs and options were checked when the job file was loaded.
        return Ok(None);
    }
    let Some(info) = builtins::lookup(&task.builtin) else {
        let names: Vec<&str> = builtins::all().iter().map(|info| info.name).collect();
        return Err(spec
            .error_at(
                task.builtin_span.clone(),
                &format!(
                    "unknown builtin `{}`: expected one of {}",
                    task.builtin,
                    names.join(", ")
                ),
            )
            .into());
    };
    if let Err(message) = (info.build)(&task.args) {
        return Err(spec.error_at(task.args_span.clone(), &message).into());
    }
    let kind = input::task_input(&spec.input);
    if !info.inputs.contains(&kind) {
        let accepted: Vec<&str> = info.inputs.iter().map(|kind| kind.describe()).collect();
        let hint = match (&spec.input, kind) {
            (InputSpec::File { .. }, InputKind::Chunks) if info.inputs.contains(&InputKind::WholeFiles) => {
                " (use a `glob` input, or `split = \"none\"` to make the file one item)"
            }
            _ => "",
        };
        return Err(spec
            .error_at(
                task.builtin_span.clone(),
                &format!(
                    "task `{}` takes {} but this job's input gives {}{hint}",
                    info.name,
                    accepted.join(" or "),
                    kind.describe()
                ),
            )
            .into());
    }
    Ok(Some(info))
}

/// Makes the task's `path` arguments (those an [`ArgInfo`](builtins::ArgInfo) documents with kind `path`)
/// absolute, relative to the job file's folder like every other path in a job file. Workers run in the
/// supervisor's current folder, which need not be the job's, so this is done here, before the args are sent.
pub fn resolve_path_args(spec: &mut JobSpec, info: &TaskInfo) {
    let dir = spec.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let serde_json::Value::Object(args) = &mut spec.task.args else {
        return;
    };
    for arg in info.args.iter().filter(|arg| arg.kind == "path") {
        if let Some(serde_json::Value::String(value)) = args.get_mut(arg.name) {
            let path = Path::new(value.as_str());
            if path.is_relative() && !value.is_empty() {
                *value = dir.join(path).display().to_string();
            }
        }
    }
}
