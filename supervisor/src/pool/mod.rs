//! The pool: how workers come to exist and how what they do reaches the dispatcher.
//!
//! Two launchers implement the dispatcher's [`Launch`](crate::dispatch::Launch), one per kind of worker, and
//! share nothing but the [`Event`]s they send into the dispatcher's one event channel:
//! - [`process`]: worker processes (the `process` executor), started by a [`Starter`] — spawned, a user's
//!   worker binary, or forked by the fork server — each with its socket, reader, writer, waiter and stderr
//!   drain;
//! - [`threads`]: worker threads of this process (the `thread` and `serial` executors, the baselines users
//!   compare with), which isolate nothing.
//!
//! `run` chooses the launcher from the executor. The pool owns no job state: the dispatcher decides what each
//! worker does.

pub mod event;
pub mod process;
pub mod threads;

pub use event::{Event, Frame, IN_FLIGHT_BYTES, IpcCounter, WorkerId, WorkerSender, message_name};
pub use process::{ProcessLauncher, Starter, WORKER_ARG};
pub use threads::ThreadLauncher;
