//! The user's own work, run by a worker: a `command` per item ([`command`]), or a persistent process speaking
//! JSON lines ([`persistent`]). Both are [`Task`]s, so the worker loop, the progress slot, the flusher, limits,
//! timeouts and retries treat them like builtins; [`process`] starts the processes so that they die with the
//! worker.

pub mod command;
pub mod persistent;
pub mod process;

use shared::item::Value;
use shared::usertask::{COMMAND_TASK, UserTask, WORKER_BIN_TASK, WORKER_TASK};

use child::task::Task;

/// Builds the task for a reserved task name of `Init` (`None` when `task_name` is not one).
pub fn build(task_name: &str, args_json: &str) -> Option<Result<Box<dyn Task>, String>> {
    if ![COMMAND_TASK, WORKER_TASK, WORKER_BIN_TASK].contains(&task_name) {
        return None;
    }
    let spec = match serde_json::from_str::<UserTask>(args_json) {
        Ok(spec) => spec,
        Err(error) => return Some(Err(format!("bad {task_name} task description: {error}"))),
    };
    Some(match spec {
        UserTask::Command(spec) => Ok(Box::new(command::CommandTask::new(spec))),
        UserTask::Worker(spec) => Ok(Box::new(persistent::PersistentTask::new(spec))),
        UserTask::WorkerBin { path } => Err(format!(
            "this worker has no task compiled in: a worker_bin job must start {} (built on child::serve), not the \
             supervisor's own worker",
            path.display()
        )),
    })
}

/// A JSON value as a task [`Value`] (integers stay exact up to 64 bits; other numbers become floats).
pub fn json_to_value(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::UInt(u.into())
            } else if let Some(i) = n.as_i64() {
                Value::Int(i.into())
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Array(items) => Value::List(items.into_iter().map(json_to_value).collect()),
        serde_json::Value::Object(map) => Value::Map(map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect()),
    }
}
