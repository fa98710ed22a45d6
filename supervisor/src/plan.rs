//! From a validated job spec to a run plan: the task checked against its input, and the items the dispatcher
//! hands out.
//!
//! Listing the input is the [`input`] module's (one file per kind, behind [`Source`]); [`Items`] is the thin
//! adapter the dispatcher still takes: a listed source, plus the URLs of a `urls` input, whose fetch stage the
//! dispatcher starts itself.

use std::path::Path;
use std::sync::Arc;

use builtins::{InputKind, TaskInfo};
use shared::item::{Batch, InputPlan};
use shared::job::{InputSpec, JobSpec};

use crate::error::Error;
use crate::input::{self, Source};
use crate::results::InputDesc;

/// The items of a job, in input order: the dispatcher's view of the job's [`Source`] until it pulls from the
/// source itself.
#[derive(Debug)]
pub enum Items {
    /// Every input whose items workers read by themselves.
    Listed(Box<dyn Source>),
    /// A `urls` input: item `i` is the body of `urls[i]`, fetched by the supervisor (see [`crate::fetch`]) before
    /// it is handed out, so the dispatcher needs the URLs to start the fetch stage.
    Urls {
        urls: Arc<Vec<String>>,
        source: Box<dyn Source>,
    },
}

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

impl Items {
    /// Lists the items of the job's input (see [`input::list`]).
    pub async fn list(spec: &JobSpec) -> Result<Items, Error> {
        Ok(Items::from(input::list(spec).await?))
    }

    /// The source behind these items.
    pub fn source(&self) -> &dyn Source {
        match self {
            Items::Listed(source) | Items::Urls { source, .. } => source.as_ref(),
        }
    }

    /// Number of items. Every source listed from a job file has a known length; a stream (none yet) counts as
    /// empty here, which is why the dispatcher must pull from the source itself before it takes one.
    pub fn len(&self) -> u64 {
        self.source().known_len().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What every worker is told about the input at start-up. `arena` is the path of the fetched-body arena, for
    /// a `urls` input.
    pub fn input_plan(&self, arena: Option<&Path>) -> InputPlan {
        self.source().plan(arena)
    }

    /// Largest batch for this kind of input: descriptors must keep messages small.
    pub fn batch_cap(&self) -> u64 {
        self.source().batch_cap()
    }

    /// The batch of items `first .. first + len`. For a `urls` input, `body` gives each item's slot in the
    /// arena (the dispatcher knows them; an item without one gets an empty body).
    pub fn batch(&self, id: u64, first: u64, len: u64, body: impl Fn(u64) -> Option<(u64, u64)>) -> Batch {
        Batch {
            id,
            first,
            items: self.source().items(first, len, &body),
        }
    }

    /// The input of item `index`, for its record.
    pub fn describe(&self, index: u64) -> InputDesc {
        self.source().describe(index)
    }
}

impl From<Box<dyn Source>> for Items {
    fn from(source: Box<dyn Source>) -> Items {
        match source.urls() {
            Some(urls) => Items::Urls {
                urls: Arc::clone(urls),
                source,
            },
            None => Items::Listed(source),
        }
    }
}
