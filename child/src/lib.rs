//! The worker side of `supervisor`.
//!
//! - [`task`]: the [`task::Task`] trait a builtin implements, what it is given ([`task::Item`]) and the registry
//!   of builtins with their argument documentation ([`task::builtins`]).
//! - [`tasks`]: the builtin tasks themselves.
//! - [`worker`]: the loop a worker process runs: say hello to the supervisor on its socket, receive batches, map the input, run
//!   the task on each item, send results back.
//! - [`user`]: the user's own work run by a worker: a `command` per item, or a persistent process.
//! - [`serve()`] / [`serve_task`]: the entry points of your own worker binary (`[task] worker_bin`), see
//!   [`mod@serve`].
//!
//! A worker never decides policy (retries, timeouts, ordering): it runs what it is given and reports each item.

#![deny(unsafe_code)]

pub mod hostile;
pub mod isolation;
pub mod serve;
pub mod task;
pub mod tasks;
#[expect(
    unsafe_code,
    reason = "its process spawning moves to the `sys` crate once the builtins split lands"
)]
pub mod user;
pub mod worker;

pub use serve::{serve, serve_task};
