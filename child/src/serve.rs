//! Your own worker binary: the entry points a `worker_bin` calls from `main`.
//!
//! A job whose `[task]` says `worker_bin = "target/release/my-worker"` starts that binary, instead of the
//! supervisor's own worker, as `my-worker __worker` with its channel to the supervisor as stdin. The binary calls
//! [`serve`] (a closure) or [`serve_task`] (a [`Task`] value) from `main`; from there it is a worker like any
//! other: it says hello to the supervisor, maps the input read-only, and calls your code once per item with an [`Item`] whose bytes are a
//! `&[u8]` straight out of the mapping — nothing is copied. Crashes, timeouts, limits, retries and `--resume`
//! all work as for builtin tasks: your code runs in the supervised process itself.
//!
//! ```no_run
//! use child::task::{Item, ItemInput};
//! use shared::item::Value;
//!
//! fn main() -> std::process::ExitCode {
//!     child::serve(|item: Item<'_>| match item.input {
//!         // A chunk of a `file` input or a whole file (mapped, not copied), or a fetched URL body (in shared
//!         // memory).
//!         ItemInput::Bytes { data, .. } | ItemInput::Fetched { data, .. } => {
//!             Ok(Value::UInt(data.iter().filter(|&&b| b == b'\n').count() as u128))
//!         }
//!         ItemInput::Range { lo, hi } => Ok(Value::UInt(u128::from(hi - lo))),
//!     })
//! }
//! ```
//!
//! An `Err(message)` fails the item with kind `error`; a panic fails it with kind `panic`; a crash (a signal,
//! `exit`, an allocation failure) kills this process, and the supervisor records the item and starts another.

use std::process::ExitCode;

use shared::item::Value;

use crate::task::{Item, Task};
use crate::worker::{PARENT_PID_ENV, WORKER_ARG};

/// Runs this process as a supervisor worker that calls `handler` once per item; returns the exit code for
/// `main`. Started any other way than by the supervisor, it prints what it is and returns exit code 2.
pub fn serve<F>(handler: F) -> ExitCode
where
    F: FnMut(Item<'_>) -> Result<Value, String> + 'static,
{
    serve_task(FnTask(handler))
}

/// [`serve`] with a [`Task`] value (for a task with state or set-up of its own).
pub fn serve_task(task: impl Task + 'static) -> ExitCode {
    if std::env::args_os().nth(1).is_none_or(|mode| mode != WORKER_ARG) {
        eprintln!(
            "this program is a supervisor worker: name it in a job file's [task] worker_bin and run the job with \
             `supervisor run JOB`"
        );
        return ExitCode::from(shared::exit::USAGE as u8);
    }
    let parent = std::env::var(PARENT_PID_ENV).ok().and_then(|pid| pid.parse().ok());
    // A worker_bin runs its own task whatever `Init` names (the supervisor names it `worker_bin`).
    let build: crate::task::Build<'_> = Box::new(move |_: &str, _: &str| Ok(Box::new(task) as Box<dyn Task>));
    match crate::worker::run(parent, build) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker: {error}");
            ExitCode::from(shared::exit::INTERNAL as u8)
        }
    }
}

/// A closure as a [`Task`].
struct FnTask<F>(F);

impl<F> Task for FnTask<F>
where
    F: FnMut(Item<'_>) -> Result<Value, String>,
{
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        (self.0)(item)
    }
}
