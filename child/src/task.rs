//! The task API: what a task implements and what it is handed for each item.
//!
//! A task is the code a worker runs once per item: the supervisor's builtins and the user's own processes (the
//! `builtins` crate) or a `worker_bin`'s own code ([`crate::serve()`]). Which tasks exist, their names and
//! arguments, is the business of whoever starts the worker loop, not of this crate.

use std::path::Path;

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

/// A task: the supervisor's builtins, the user's processes, or a `worker_bin`'s own code.
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

    /// Whether the task has set-up to do in [`Task::start`] (the default: none). The worker then waits for its
    /// identity (which follows `Init`) before calling it.
    fn has_start(&self) -> bool {
        false
    }

    /// Set-up that must succeed before the worker says it is ready, called once after `Init` when
    /// [`Task::has_start`]: a task that starts a process of its own starts it here, so that a process that cannot
    /// start fails `Init` (and the dispatcher's start-failure rule ends a run that could never work) instead of
    /// failing every item. An `Err` is the `InitFailed` message.
    fn start(&mut self, context: &ItemContext) -> Result<(), String> {
        let _ = context;
        Ok(())
    }
}

/// Builds the task a worker runs from `Init`'s task name and arguments (JSON text): the registry of whoever
/// starts the worker loop. A `worker_bin` ignores both and hands over its compiled-in task.
pub type Build<'a> = Box<dyn FnOnce(&str, &str) -> Result<Box<dyn Task>, String> + 'a>;

/// Where and how often an item runs: what the user's processes see as `SUPERVISOR_WORKER` and
/// `SUPERVISOR_ATTEMPT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemContext {
    /// The worker's id in this run (0 when the supervisor did not say).
    pub worker: u64,
    /// 1 for the first run of the item, 2 for its first retry, and so on.
    pub attempt: u32,
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
