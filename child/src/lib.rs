//! The worker side of `supervisor`: what every worker process runs, whatever its task.
//!
//! - [`task`]: the [`task::Task`] trait a task implements, and what it is given ([`task::Item`]).
//! - [`worker`]: the loop a worker process runs: say hello to the supervisor on its socket, receive batches, map
//!   the input, run the task on each item, send results back. The caller hands it the task registry (a
//!   [`task::Build`]): the supervisor's own worker passes its builtins (the `builtins` crate), a `worker_bin`
//!   passes its own task.
//! - [`serve()`] / [`serve_task`]: the entry points of your own worker binary (`[task] worker_bin`), see
//!   [`mod@serve`].
//! - [`isolation`]: how a worker process confines itself (`[isolation]`, `[workers]` limits), through the system
//!   calls of the `sys` crate.
//!
//! This crate is kept lean, so that a user's worker binary compiles only what it needs: the builtin tasks and
//! their heavy dependencies live in `builtins`. The test-only misbehaving workers (`hostile`) exist only with the
//! `hostile` feature, which the supervisor's tests enable.
//!
//! A worker never decides policy (retries, timeouts, ordering): it runs what it is given and reports each item.

#![deny(unsafe_code)]

#[cfg(feature = "hostile")]
pub mod hostile;
pub mod isolation;
pub mod serve;
pub mod task;
pub mod worker;

pub use serve::{serve, serve_task};
