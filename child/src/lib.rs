//! The worker side of `supervisor`.
//!
//! - [`task`]: the [`task::Task`] trait a builtin implements, what it is given ([`task::Item`]) and the registry
//!   of builtins with their argument documentation ([`task::builtins`]).
//! - [`tasks`]: the builtin tasks themselves.
//! - [`worker`]: the loop a worker process runs: say hello to the supervisor on its socket, receive batches, map the input, run
//!   the task on each item, send results back.
//!
//! A worker never decides policy (retries, timeouts, ordering): it runs what it is given and reports each item.

pub mod hostile;
pub mod limits;
pub mod task;
pub mod tasks;
pub mod worker;
